//! Brute-force protection for password checks, shaped so that nobody can
//! lock another person out:
//!
//! - per account *and* client address (IPv6: its /64), attempts are
//!   counted as they arrive, before the password is checked (a burst of
//!   parallel guesses is counted at once), and a correct password clears
//!   the count, so only failures remain. Past a threshold that pair backs
//!   off (doubling, capped) and is refused before any hashing, the correct
//!   password included: a guesser locks out only their own address, never
//!   the account's owner elsewhere, nor others behind the same NAT;
//! - per account, failures from every address are counted after the
//!   check. Past a softer, account-wide ceiling, an address that has
//!   already failed on the account waits a fixed back-off per further
//!   attempt, so a botnet guesses slowly while an address with no failure
//!   on the account (its owner's) is never held back.
//!
//! Refusals come before the password hash is computed, so they cost no
//! hashing slot; the edge's strict limits on the login and register routes
//! keep one client from filling the slots in the first place.

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

/// Attempts counted for `key` and not cleared (0: none).
pub async fn attempts(store: &dyn ServiceStore, key: &str) -> Result<u32, ApiError> {
    Ok(store
        .get(Table::LoginFailures, key)
        .await?
        .and_then(|c| serde_json::from_slice::<Attempts>(&c.value).ok())
        .map_or(0, |a| a.count))
}

/// The key of one account's attempts from one client address.
pub fn pair_key(account: &str, ip: IpAddr) -> String {
    format!("pair:{account}|{}", address_key(ip))
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
