//! `[cart]`: the cart service's settings.

use std::net::SocketAddr;

use flashmall_mesh::config::check_endpoints as endpoints;
use serde::{Deserialize, Serialize};

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
