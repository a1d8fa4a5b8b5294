//! `[checkout]`: the checkout service's settings.

use std::net::SocketAddr;

use flashmall_mesh::config::check_endpoints as endpoints;
use serde::{Deserialize, Serialize};

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
