//! `[orders]`: the order service's settings.

use std::net::SocketAddr;
use std::time::Duration;

use flashmall_mesh::config::check_endpoints as endpoints;
use serde::{Deserialize, Serialize};

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
