//! The services' configuration: `[store]`, and a section per service
//! (`[auth]`, `[orders]`, `[payments]`, `[products]`, `[cart]`,
//! `[checkout]`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which implementation holds the services' data.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded KV in one local file (one process).
    Embedded,
    /// ScyllaDB or Cassandra.
    Scylla,
}

/// `[store]`: where the services (auth, orders, payments) keep their data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (a local file, the default) or `scylla`.
    pub backend: StoreBackend,
    /// File of the embedded store; relative paths are under the data dir.
    pub path: PathBuf,
    /// ScyllaDB (or Cassandra) contact points, `host:port`.
    pub scylla_nodes: Vec<String>,
    /// Keyspace of the services' tables; created at start-up when missing.
    pub keyspace: String,
    /// Replication factor used when the keyspace is created
    /// (NetworkTopologyStrategy in every datacenter the cluster reports as
    /// `datacenter`, or SimpleStrategy when `datacenter` is empty).
    pub replication_factor: u32,
    /// The local datacenter: requests prefer its nodes; empty: any node.
    pub datacenter: String,
    /// Username and password for ScyllaDB's password authenticator; empty: none.
    pub username: String,
    pub password: String,
    /// Deadline of one store request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("services.redb"),
            scylla_nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "flashmall".to_owned(),
            replication_factor: 1,
            datacenter: String::new(),
            username: String::new(),
            password: String::new(),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == StoreBackend::Embedded && self.path.as_os_str().is_empty() {
            return Err("store.path must not be empty".into());
        }
        if self.backend == StoreBackend::Scylla {
            endpoints("store.scylla_nodes", &self.scylla_nodes)?;
        }
        let valid_keyspace = !self.keyspace.is_empty()
            && self.keyspace.len() <= 48
            && self.keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            && self
                .keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_keyspace {
            return Err(
                "store.keyspace must be 1 to 48 letters, digits or _, starting with a letter"
                    .into(),
            );
        }
        if self.replication_factor == 0 {
            return Err("store.replication_factor must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return Err("store.request_timeout must be above zero".into());
        }
        Ok(())
    }
}

/// `[auth]`: the auth and user service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// HS256 secret signing access tokens (32+ characters), shared with the
    /// edge proxy that verifies them. Empty: `flashmall up` makes a random
    /// one; the service run on its own refuses to start without it.
    pub jwt_secret: String,
    /// `iss` of issued access tokens.
    pub issuer: String,
    /// `aud` of issued access tokens.
    pub audience: String,
    /// Lifetime of an access token.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one).
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Emails whose existing accounts are made admins when the auth
    /// service starts (register first, then start or restart it; or run
    /// `flashmall grant-admin EMAIL`). Registering never makes an admin.
    pub bootstrap_admins: Vec<String>,
    /// Shortest accepted password, in characters.
    pub password_min_length: usize,
    /// Argon2id memory cost, KiB (OWASP: 19456).
    pub argon2_memory_kib: u32,
    /// Argon2id passes (OWASP: 2).
    pub argon2_iterations: u32,
    /// Failed logins of one account from one client address (IPv6: its
    /// /64) before that address backs off on that account (doubling from
    /// `login_backoff`); the account's owner elsewhere is not affected.
    pub login_account_failures: u32,
    /// Failed logins of one account from all addresses together before
    /// each address that has already failed on it waits `login_backoff`
    /// per further attempt (an address with no failure on the account is
    /// never held back).
    pub login_account_ceiling: u32,
    /// First back-off; doubles with every further failure.
    #[serde(with = "humantime_serde")]
    pub login_backoff: Duration,
    /// Longest back-off.
    #[serde(with = "humantime_serde")]
    pub login_backoff_max: Duration,
    /// How long failures are remembered.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            jwt_secret: String::new(),
            issuer: "flashmall".to_owned(),
            audience: "flashmall-api".to_owned(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            bootstrap_admins: Vec::new(),
            password_min_length: 10,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            login_account_failures: 5,
            login_account_ceiling: 100,
            login_backoff: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(15 * 60),
            login_window: Duration::from_secs(15 * 60),
            max_body_bytes: 16 * 1024,
        }
    }
}

/// Shortest accepted JWT secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "auth.jwt_secret must be at least {MIN_SECRET_LEN} characters"
            ));
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("auth.issuer and auth.audience must not be empty".into());
        }
        if self.access_ttl < Duration::from_secs(10)
            || self.access_ttl > flashmall_mesh::contract::MAX_ACCESS_TOKEN_LIFE
        {
            return Err("auth.access_ttl must be between 10s and 24h".into());
        }
        if self.refresh_ttl <= self.access_ttl {
            return Err("auth.refresh_ttl must be longer than auth.access_ttl".into());
        }
        if !(8..=64).contains(&self.password_min_length) {
            return Err("auth.password_min_length must be between 8 and 64".into());
        }
        if self.argon2_memory_kib < 8 || self.argon2_iterations < 1 {
            return Err(
                "auth.argon2_memory_kib must be at least 8 and auth.argon2_iterations at least 1"
                    .into(),
            );
        }
        if self.login_account_failures == 0 || self.login_account_ceiling == 0 {
            return Err(
                "auth.login_account_failures and auth.login_account_ceiling must be at least 1"
                    .into(),
            );
        }
        if self.login_backoff.is_zero() || self.login_backoff_max < self.login_backoff {
            return Err(
                "auth.login_backoff must be above zero and at most auth.login_backoff_max".into(),
            );
        }
        if self.bootstrap_admins.iter().any(|e| !e.contains('@')) {
            return Err("auth.bootstrap_admins must list email addresses".into());
        }
        Ok(())
    }
}

/// `[orders]`: the order service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// How long an order waits for its payment before it expires and its
    /// units go back on sale (`FLASHMALL_ORDERS__PAYMENT_TIMEOUT`).
    #[serde(with = "humantime_serde")]
    pub payment_timeout: Duration,
    /// The engine's gRPC endpoints (`host:port`; a host name is resolved
    /// by DNS again and again, e.g. a Kubernetes headless Service), used to
    /// give the units of cancelled and expired orders back.
    pub engine_endpoints: Vec<String>,
    /// The product service's gRPC endpoints, used to release the stock
    /// holds of cancelled and expired checkout orders and to commit those
    /// of paid ones.
    pub product_endpoints: Vec<String>,
    /// How often the expiry worker looks for due timers.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most timers handled per sweep.
    pub sweep_batch: usize,
    /// Delay before a failed release is tried again.
    #[serde(with = "humantime_serde")]
    pub release_retry: Duration,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        OrdersConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            payment_timeout: Duration::from_secs(15 * 60),
            engine_endpoints: vec!["127.0.0.1:8081".to_owned()],
            product_endpoints: vec!["127.0.0.1:8085".to_owned()],
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 256,
            release_retry: Duration::from_secs(5),
        }
    }
}

impl OrdersConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.payment_timeout < Duration::from_secs(1)
            || self.payment_timeout > Duration::from_secs(7 * 24 * 3600)
        {
            return Err("orders.payment_timeout must be between 1s and 7 days".into());
        }
        endpoints("orders.engine_endpoints", &self.engine_endpoints)?;
        endpoints("orders.product_endpoints", &self.product_endpoints)?;
        if self.sweep_interval < Duration::from_millis(10) {
            return Err("orders.sweep_interval must be at least 10ms".into());
        }
        if !(1..=10_000).contains(&self.sweep_batch) {
            return Err("orders.sweep_batch must be between 1 and 10000".into());
        }
        if self.release_retry.is_zero() {
            return Err("orders.release_retry must be above zero".into());
        }
        Ok(())
    }
}

/// Which payment provider the payment service uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// The built-in simulator: takes no real money (`[payments.simulator]`).
    Simulator,
}

/// `[payments]`: the payment service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// The order service's gRPC endpoints (`host:port`, DNS names allowed).
    pub order_endpoints: Vec<String>,
    /// The payment provider. Only `simulator` exists so far.
    pub provider: ProviderKind,
    /// A charge the provider has not decided within this time is cancelled.
    #[serde(with = "humantime_serde")]
    pub pending_timeout: Duration,
    /// Delay before an unfinished capture (money taken, order not yet
    /// confirmed) or a failed refund is tried again.
    #[serde(with = "humantime_serde")]
    pub capture_retry: Duration,
    /// How often the timer worker looks for due timers.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most timers handled per sweep.
    pub sweep_batch: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How the simulator behaves (`provider = "simulator"`).
    pub simulator: crate::payments::provider::SimulatorConfig,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8084)),
            order_endpoints: vec!["127.0.0.1:8083".to_owned()],
            provider: ProviderKind::Simulator,
            pending_timeout: Duration::from_secs(10 * 60),
            capture_retry: Duration::from_secs(5),
            sweep_interval: Duration::from_secs(1),
            sweep_batch: 256,
            max_body_bytes: 16 * 1024,
            simulator: Default::default(),
        }
    }
}

impl PaymentsConfig {
    pub fn validate(&self) -> Result<(), String> {
        endpoints("payments.order_endpoints", &self.order_endpoints)?;
        if self.pending_timeout < Duration::from_secs(1) {
            return Err("payments.pending_timeout must be at least 1s".into());
        }
        if self.capture_retry.is_zero() {
            return Err("payments.capture_retry must be above zero".into());
        }
        if self.sweep_interval < Duration::from_millis(10) {
            return Err("payments.sweep_interval must be at least 10ms".into());
        }
        if !(1..=10_000).contains(&self.sweep_batch) {
            return Err("payments.sweep_batch must be between 1 and 10000".into());
        }
        if self.max_body_bytes < 256 {
            return Err("payments.max_body_bytes must be at least 256".into());
        }
        self.simulator.validate()
    }
}

/// `[products]`: the product catalogue service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProductsConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for ProductsConfig {
    fn default() -> Self {
        ProductsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8085)),
            max_body_bytes: 64 * 1024,
        }
    }
}

impl ProductsConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err("products.max_body_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

/// `[cart]`: the cart service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CartConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// The product service's gRPC endpoints (products must exist; prices).
    pub product_endpoints: Vec<String>,
    /// Most distinct products in one cart.
    pub max_items: usize,
    /// Most units of one product in a cart.
    pub max_quantity: i64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for CartConfig {
    fn default() -> Self {
        CartConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8086)),
            product_endpoints: vec!["127.0.0.1:8085".to_owned()],
            max_items: 50,
            max_quantity: 99,
            max_body_bytes: 16 * 1024,
        }
    }
}

impl CartConfig {
    pub fn validate(&self) -> Result<(), String> {
        endpoints("cart.product_endpoints", &self.product_endpoints)?;
        if !(1..=crate::products::stock::HOLD_LINES_MAX).contains(&self.max_items) {
            return Err(format!(
                "cart.max_items must be between 1 and {}",
                crate::products::stock::HOLD_LINES_MAX
            ));
        }
        if !(1..=1_000_000).contains(&self.max_quantity) {
            return Err("cart.max_quantity must be between 1 and 1000000".into());
        }
        if self.max_body_bytes < 256 {
            return Err("cart.max_body_bytes must be at least 256".into());
        }
        Ok(())
    }
}

/// `[checkout]`: the checkout service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CheckoutConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// The gRPC endpoints of the services checkout calls.
    pub cart_endpoints: Vec<String>,
    pub product_endpoints: Vec<String>,
    pub order_endpoints: Vec<String>,
    pub payment_endpoints: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        CheckoutConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8087)),
            cart_endpoints: vec!["127.0.0.1:8086".to_owned()],
            product_endpoints: vec!["127.0.0.1:8085".to_owned()],
            order_endpoints: vec!["127.0.0.1:8083".to_owned()],
            payment_endpoints: vec!["127.0.0.1:8084".to_owned()],
            max_body_bytes: 16 * 1024,
        }
    }
}

impl CheckoutConfig {
    pub fn validate(&self) -> Result<(), String> {
        endpoints("checkout.cart_endpoints", &self.cart_endpoints)?;
        endpoints("checkout.product_endpoints", &self.product_endpoints)?;
        endpoints("checkout.order_endpoints", &self.order_endpoints)?;
        endpoints("checkout.payment_endpoints", &self.payment_endpoints)?;
        if self.max_body_bytes < 256 {
            return Err("checkout.max_body_bytes must be at least 256".into());
        }
        Ok(())
    }
}

/// Checks a list of `host:port` endpoints.
fn endpoints(field: &str, list: &[String]) -> Result<(), String> {
    if list.is_empty() {
        return Err(format!("{field} must list at least one host:port"));
    }
    for e in list {
        let ok = e
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("{field}: {e:?} is not host:port"));
        }
    }
    Ok(())
}
