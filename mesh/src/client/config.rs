//! `[mesh.client]`: how a component calls the others (timeouts, retries,
//! circuit breakers, endpoint discovery).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retries the budget allows every second whatever the traffic, so a client
/// that makes few calls can still retry a few of them.
pub const RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;

/// `[mesh.client]`: settings of every client a component uses to call
/// another component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Deadline of one attempt of a call. When the request being served has
    /// less time left (its caller's `grpc-timeout`), that shorter deadline
    /// wins; the attempt's deadline is sent on as `grpc-timeout`.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Deadline to open a connection to one endpoint.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Most extra attempts of an idempotent call after a retryable failure
    /// (UNAVAILABLE, DEADLINE_EXCEEDED, a transport error, open breakers).
    /// Calls that are not idempotent are never sent twice.
    pub retries: u32,
    /// Wait before the first retry; it doubles with each further retry, and
    /// each wait is drawn at random between half of it and all of it.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Retries may add at most this percentage of first attempts (counted
    /// over the last 10 seconds), plus 10 retries a second, so a failing
    /// service is not buried under retries.
    pub retry_budget_percent: u32,
    /// Consecutive failures (transport errors, timeouts, UNAVAILABLE or
    /// DEADLINE_EXCEEDED answers) that open an endpoint's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps calls away from its endpoint; then one
    /// probe call is let through: success closes the breaker, failure opens
    /// it again.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// How often endpoint host names are resolved again (a Kubernetes
    /// headless Service name resolves to every ready pod).
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            call_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            retries: 2,
            retry_backoff: Duration::from_millis(20),
            retry_budget_percent: 20,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(2),
            dns_refresh: Duration::from_secs(5),
        }
    }
}

impl ClientConfig {
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("call_timeout", self.call_timeout),
            ("connect_timeout", self.connect_timeout),
            ("breaker_cooldown", self.breaker_cooldown),
        ];
        for (field, value) in positive {
            if value.is_zero() {
                return Err(format!("mesh.client.{field} must be longer than zero"));
            }
        }
        if self.dns_refresh < Duration::from_millis(10) {
            return Err("mesh.client.dns_refresh must be at least 10ms".into());
        }
        if self.retries > 10 {
            return Err("mesh.client.retries must be at most 10".into());
        }
        if self.retry_backoff > Duration::from_secs(60) {
            return Err("mesh.client.retry_backoff must be at most 1m".into());
        }
        if self.retry_budget_percent > 1000 {
            return Err("mesh.client.retry_budget_percent must be at most 1000".into());
        }
        if self.breaker_failures == 0 {
            return Err("mesh.client.breaker_failures must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_field() {
        ClientConfig::default().validate().unwrap();
        let bad = [
            ClientConfig {
                call_timeout: Duration::ZERO,
                ..Default::default()
            },
            ClientConfig {
                breaker_failures: 0,
                ..Default::default()
            },
            ClientConfig {
                retry_budget_percent: 5000,
                ..Default::default()
            },
            ClientConfig {
                dns_refresh: Duration::ZERO,
                ..Default::default()
            },
        ];
        for (config, field) in bad.iter().zip([
            "mesh.client.call_timeout",
            "mesh.client.breaker_failures",
            "mesh.client.retry_budget_percent",
            "mesh.client.dns_refresh",
        ]) {
            let e = config.validate().unwrap_err();
            assert!(e.contains(field), "{e}");
        }
    }
}
