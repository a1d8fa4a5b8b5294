//! The services' configuration sections (`[store]`, `[auth]`, `[orders]`,
//! `[payments]`, `[products]`, `[cart]`, `[checkout]`), gathered for the
//! one TOML file; each is defined beside its component.

pub use crate::auth::config::AuthConfig;
pub use crate::cart::config::CartConfig;
pub use crate::checkout::config::CheckoutConfig;
pub use crate::orders::config::OrdersConfig;
pub use crate::payments::config::{PaymentsConfig, ProviderKind};
pub use crate::products::config::ProductsConfig;
pub use crate::store::config::{StoreBackend, StoreConfig};
