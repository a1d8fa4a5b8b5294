//! `[products]`: the product catalogue's settings.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

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
