//! Brute-force protection for logins: failures are counted per account and
//! per client IP address; past a threshold, logins for that key back off
//! (doubling, capped), and while backing off even a correct password is
//! refused, so guessing cannot continue until the right one slips through.

use std::time::Duration;

use flashmall_mesh::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};

use crate::store::{ServiceStore, Table};

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Failures {
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Refuses with 429 while `key` backs off.
pub async fn check(store: &dyn ServiceStore, key: &str) -> Result<(), ApiError> {
    let Some(current) = store.get(Table::LoginFailures, key).await? else {
        return Ok(());
    };
    let f: Failures = serde_json::from_slice(&current.value).unwrap_or_default();
    let now = now_ms();
    if f.locked_until_ms > now {
        let seconds = (f.locked_until_ms - now).div_ceil(1000);
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            format!("too many failed logins; try again in {seconds} s"),
        )
        .with_retry_after(seconds));
    }
    Ok(())
}

/// Counts a failure for `key`, starting or extending its back-off.
pub async fn record_failure(
    store: &dyn ServiceStore,
    key: &str,
    limit: Limit,
) -> Result<(), ApiError> {
    for _ in 0..8 {
        let current = store.get(Table::LoginFailures, key).await?;
        let mut f: Failures = current
            .as_ref()
            .and_then(|c| serde_json::from_slice(&c.value).ok())
            .unwrap_or_default();
        f.count = f.count.saturating_add(1);
        if f.count >= limit.failures {
            let doublings = (f.count - limit.failures).min(20);
            let backoff = limit
                .backoff
                .saturating_mul(1 << doublings)
                .min(limit.backoff_max);
            f.locked_until_ms = now_ms() + backoff.as_millis() as u64;
        }
        let value = serde_json::to_vec(&f).unwrap_or_default();
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
        "login bookkeeping is contended, retry shortly",
    ))
}

/// Forgets an account's failures after a successful login.
pub async fn clear(store: &dyn ServiceStore, key: &str) -> Result<(), ApiError> {
    store.delete(Table::LoginFailures, key, None).await?;
    Ok(())
}
