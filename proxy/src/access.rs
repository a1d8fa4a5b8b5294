//! The edge's access log (`[proxy] access_log`): one line per request is a
//! formatted write per request, which at a flash sale's rate costs more than
//! the checks. Off, sampled (one request in `access_log_sample`, and every
//! answer of 500 and up), or every request; never the load balancer's probe.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Which requests the edge logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLog {
    /// None.
    Off,
    /// One request in `access_log_sample`, and every 5xx answer.
    #[default]
    Sampled,
    /// Every request.
    All,
}

/// Decides, per request, whether it gets an access-log line.
#[derive(Debug)]
pub(crate) struct AccessLogger {
    mode: AccessLog,
    sample: u64,
    seen: AtomicU64,
}

impl AccessLogger {
    pub(crate) fn new(mode: AccessLog, sample: u32) -> Self {
        AccessLogger {
            mode,
            sample: u64::from(sample.max(1)),
            seen: AtomicU64::new(0),
        }
    }

    /// Whether a request of `route` answered `status` is logged.
    pub(crate) fn keeps(&self, route: &str, status: u16) -> bool {
        if route == "health" {
            return false;
        }
        match self.mode {
            AccessLog::Off => false,
            AccessLog::All => true,
            AccessLog::Sampled => {
                status >= 500
                    || self
                        .seen
                        .fetch_add(1, Ordering::Relaxed)
                        .is_multiple_of(self.sample)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_keeps_one_in_n_and_every_server_error_never_a_probe() {
        let log = AccessLogger::new(AccessLog::Sampled, 10);
        let kept = (0..100).filter(|_| log.keeps("sales", 200)).count();
        assert_eq!(kept, 10);
        assert!((0..5).all(|_| log.keeps("sales", 503)));
        assert!(!log.keeps("health", 500));
        let all = AccessLogger::new(AccessLog::All, 10);
        assert!((0..20).all(|_| all.keeps("purchase", 409)));
        assert!(!all.keeps("health", 200));
        let off = AccessLogger::new(AccessLog::Off, 1);
        assert!(!off.keeps("purchase", 500));
    }
}
