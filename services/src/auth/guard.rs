//! Brute-force protection for password checks. Per account, attempts are
//! counted *before* the password is checked, so a burst of parallel
//! guesses is counted as it arrives; a success clears the count. Per client
//! address, failures are counted after the check (many people behind one
//! address log in at once; they must not lock each other out). Past a
//! threshold a key backs off (doubling, capped), and while it backs off even
//! a correct password is refused.

use flashmall_mesh::now_ms;
use std::net::IpAddr;
use std::time::Duration;

use flashmall_mesh::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::store::{ServiceStore, Table};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Attempts {
    count: u32,
    locked_until_ms: u64,
}

/// Thresholds and back-off of one kind of key.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub failures: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub window: Duration,
}

/// The address key: IPv6 clients are counted per /64 (one subscriber's
/// allocation), IPv4 per address (an IPv4-mapped IPv6 address, as a
/// dual-stack listener reports IPv4 clients, is IPv4).
pub fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

fn backing_off(a: &Attempts, now: u64) -> Option<ApiError> {
    (a.locked_until_ms > now).then(|| {
        let seconds = (a.locked_until_ms - now).div_ceil(1000);
        ApiError::new(
            ErrorCode::RateLimited,
            format!("too many failed attempts; try again in {seconds} s"),
        )
        .with_retry_after(seconds)
    })
}

/// Counts one attempt for `key` before the password is checked; refuses
/// with 429 while the key backs off, and with 503 when the count cannot be
/// written (an uncounted attempt never goes ahead).
pub async fn admit(store: &dyn ServiceStore, key: &str, limit: Limit) -> Result<(), ApiError> {
    for _ in 0..16 {
        let current = store.get(Table::LoginFailures, key).await?;
        let mut a: Attempts = current
            .as_ref()
            .and_then(|c| serde_json::from_slice(&c.value).ok())
            .unwrap_or_default();
        let now = now_ms();
        if let Some(refused) = backing_off(&a, now) {
            return Err(refused);
        }
        a.count = a.count.saturating_add(1);
        if a.count >= limit.failures {
            let doublings = (a.count - limit.failures).min(20);
            let backoff = limit
                .backoff
                .saturating_mul(1 << doublings)
                .min(limit.backoff_max);
            a.locked_until_ms = now + backoff.as_millis() as u64;
        }
        let value = serde_json::to_vec(&a).unwrap_or_default();
        let ttl = Some(limit.window.max(limit.backoff_max));
        let written = match current {
            Some(c) => {
                store
                    .replace(Table::LoginFailures, key, c.version, value, ttl)
                    .await?
            }
            None => store.insert(Table::LoginFailures, key, value, ttl).await?,
        };
        if written {
            return Ok(());
        }
    }
    Err(ApiError::unavailable(
        "too many attempts at once; retry shortly",
    ))
}

/// After a correct password: the account's count is cleared.
pub async fn clear(store: &dyn ServiceStore, key: &str) -> Result<(), ApiError> {
    store.delete(Table::LoginFailures, key, None).await?;
    Ok(())
}

/// Refuses with 429 while `key` backs off (counts nothing).
pub async fn check(store: &dyn ServiceStore, key: &str) -> Result<(), ApiError> {
    let Some(current) = store.get(Table::LoginFailures, key).await? else {
        return Ok(());
    };
    let a: Attempts = serde_json::from_slice(&current.value).unwrap_or_default();
    match backing_off(&a, now_ms()) {
        Some(refused) => Err(refused),
        None => Ok(()),
    }
}

/// Counts a failure for `key` after the password check.
pub async fn record_failure(
    store: &dyn ServiceStore,
    key: &str,
    limit: Limit,
) -> Result<(), ApiError> {
    match admit(store, key, limit).await {
        // Already backing off: the failure needs no further count.
        Err(e) if e.code == ErrorCode::RateLimited => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_clients_are_counted_per_ipv4_address() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("::ffff:198.51.100.1"), key("198.51.100.1"));
        assert_ne!(key("::ffff:198.51.100.1"), key("::ffff:198.51.100.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2::ffff"));
    }
}
