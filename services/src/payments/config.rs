//! `[payments]`: the payment service's settings.

use std::net::SocketAddr;
use std::time::Duration;

use flashmall_mesh::config::check_endpoints as endpoints;
use serde::{Deserialize, Serialize};

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
    /// Delay before a pending charge is asked of the provider again
    /// (charged once per payment id), or an unfinished capture (money
    /// taken, order not yet confirmed) or a failed refund is tried again.
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
    pub simulator: super::provider::SimulatorConfig,
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
