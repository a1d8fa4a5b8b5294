//! Rate limits: GCRA (the generic cell rate algorithm) per key. A limit of
//! `r` per second with burst `b` admits a request when its key's theoretical
//! arrival time is at most `(b - 1) / r` ahead of now, and pushes it `1 / r`
//! further. Local limits live in this replica's memory (sharded maps);
//! global limits run the same algorithm in one Redis script, so all
//! replicas share them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::config::LimitConfig;
use crate::paths::PathRules;

const SHARDS: usize = 64;
/// A shard is swept of idle keys when it grows past this.
const SWEEP_AT: usize = 10_000;

/// What a limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ip,
    /// The client's IPv6 /48 (a site); an IPv4 client's address.
    Net48,
    User,
    Sale,
    /// One bucket for every request the limit applies to.
    All,
}

/// One configured limit.
pub struct Limit {
    pub name: String,
    pub kind: KeyKind,
    /// Microseconds between admitted requests on average.
    emission_us: u64,
    /// How far ahead the arrival time may run (the burst), microseconds.
    tolerance_us: u64,
    global: bool,
    /// `flashmall_proxy_rate_limited_total{limit}`, registered once.
    pub refused: metrics::Counter,
}

impl Limit {
    pub fn from_config(c: &LimitConfig) -> Result<Limit, String> {
        let kind = match c.key.as_str() {
            "ip" => KeyKind::Ip,
            "net48" => KeyKind::Net48,
            "user" => KeyKind::User,
            "sale" => KeyKind::Sale,
            "all" => KeyKind::All,
            other => return Err(format!("limit {}: unknown key {other}", c.name)),
        };
        let emission_us = (1_000_000.0 / c.per_second).max(1.0) as u64;
        Ok(Limit {
            name: c.name.clone(),
            kind,
            emission_us,
            tolerance_us: emission_us * u64::from(c.burst.saturating_sub(1)),
            global: c.scope == "global",
            refused: metrics::counter!("flashmall_proxy_rate_limited_total", "limit" => c.name.clone()),
        })
    }
}

/// The configured limits, each with the requests it applies to.
pub struct Limits(PathRules<Limit>);

impl Limits {
    pub fn from_config(configs: &[LimitConfig]) -> Result<Limits, String> {
        let rules = configs
            .iter()
            .map(|c| Limit::from_config(c).map(|l| (c.method.as_str(), c.path.as_str(), l)))
            .collect::<Result<Vec<_>, _>>()?;
        PathRules::new(rules)
            .map(Limits)
            .map_err(|e| format!("proxy.limits: bad path regex: {e}"))
    }

    /// The limits that apply to a request, in their configured order
    /// (`HEAD` counts as `GET`).
    pub fn applying<'a>(
        &'a self,
        method: &'a str,
        path: &'a str,
    ) -> impl Iterator<Item = &'a Limit> + 'a {
        self.0.matching(path, move |m| {
            m == "*" || crate::state::same_method(m, method)
        })
    }
}

/// The local limiter's memory: theoretical arrival times by key.
pub struct Limiter {
    shards: Vec<Mutex<HashMap<String, u64>>>,
    epoch: Instant,
    redis: Option<Client>,
}

const GCRA: &str = r#"
-- KEYS[1]: the limit's key; ARGV: 1 emission (us), 2 tolerance (us)
-- Returns 0 when admitted, else microseconds until a retry can be.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local ahead = tat - now
if ahead > tonumber(ARGV[2]) then return ahead - tonumber(ARGV[2]) end
local new_tat = tat + tonumber(ARGV[1])
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1000)
return 0
"#;

impl Limiter {
    pub fn new(redis: Option<Client>) -> Limiter {
        Limiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            epoch: Instant::now(),
            redis,
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// `Ok` when admitted, else how long until a retry can be.
    fn local(&self, limit: &Limit, key: &str) -> Result<(), Duration> {
        // The map's key, "limit|key", is written into this thread's buffer:
        // a known key (every request of a busy client) allocates nothing.
        thread_local! {
            static FULL: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        FULL.with_borrow_mut(|full| {
            full.clear();
            full.push_str(&limit.name);
            full.push('|');
            full.push_str(key);
            let shard = (hash(full) as usize) % SHARDS;
            let mut map = self.shards[shard].lock().unwrap_or_else(|p| p.into_inner());
            let now = self.now_us();
            if map.len() > SWEEP_AT {
                map.retain(|_, tat| *tat > now);
            }
            let admit = |tat: u64| {
                let ahead = tat.max(now) - now;
                if ahead > limit.tolerance_us {
                    Err(Duration::from_micros(ahead - limit.tolerance_us))
                } else {
                    Ok(tat.max(now) + limit.emission_us)
                }
            };
            match map.get_mut(full.as_str()) {
                Some(tat) => *tat = admit(*tat)?,
                None => {
                    let next = admit(now)?;
                    map.insert(full.clone(), next);
                }
            }
            Ok(())
        })
    }

    async fn global(&self, client: &Client, limit: &Limit, key: &str) -> Result<(), Duration> {
        let redis_key = format!("fm:edge:limit:{}:{key}", limit.name);
        let args = vec![
            limit.emission_us.to_string(),
            limit.tolerance_us.to_string(),
        ];
        match client
            .eval::<i64, _, _, _>(GCRA, vec![redis_key], args)
            .await
        {
            Ok(0) => Ok(()),
            Ok(wait_us) => Err(Duration::from_micros(wait_us.max(1) as u64)),
            Err(e) => {
                // A shared limit that cannot be checked falls back to this
                // replica's own count rather than failing open or closed.
                tracing::debug!(error = %e, limit = %limit.name, "global limit unavailable, using the local one");
                self.local(limit, key)
            }
        }
    }

    /// Checks `limit` for `key`.
    pub async fn check(&self, limit: &Limit, key: &str) -> Result<(), Duration> {
        match (&self.redis, limit.global) {
            (Some(client), true) => self.global(client, limit, key).await,
            _ => self.local(limit, key),
        }
    }
}

fn hash(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> Limit {
        Limit::from_config(&LimitConfig {
            name: "t".into(),
            key: "ip".into(),
            method: "*".into(),
            path: String::new(),
            per_second,
            burst,
            scope: "local".into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn admits_the_burst_then_the_rate() {
        let limiter = Limiter::new(None);
        let l = limit(10.0, 5);
        for i in 0..5 {
            assert!(limiter.check(&l, "k").await.is_ok(), "burst request {i}");
        }
        let wait = limiter.check(&l, "k").await.unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert!(
            limiter.check(&l, "other").await.is_ok(),
            "keys are separate"
        );
        tokio::time::sleep(wait + Duration::from_millis(5)).await;
        assert!(limiter.check(&l, "k").await.is_ok());
    }
}

#[cfg(test)]
mod applying {
    use super::*;

    #[tokio::test]
    async fn the_default_limits_apply_to_the_requests_their_rules_name() {
        let config = crate::config::ProxyConfig::default();
        let limits = Limits::from_config(&config.limits).unwrap();
        let names = |method: &'static str, path: &'static str| -> Vec<String> {
            limits
                .applying(method, path)
                .map(|l| l.name.clone())
                .collect()
        };
        let purchase = "/api/v1/sales/0193a0b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b/purchase";
        assert_eq!(names("POST", purchase), ["per-ip", "purchases-per-user"]);
        assert_eq!(names("GET", purchase), ["per-ip"]);
        assert_eq!(
            names("POST", "/api/v1/auth/login"),
            ["per-ip", "login-per-address", "auth-per-site", "auth-all"]
        );
        assert_eq!(
            names("HEAD", "/api/v1/sales/x/queue"),
            ["per-ip", "queue-per-user"]
        );
        // A purchase past its limit is refused; another buyer is not.
        let limiter = Limiter::new(None);
        let per_user = limits
            .applying("POST", purchase)
            .find(|l| l.kind == KeyKind::User)
            .unwrap();
        let admitted = |key: &'static str| {
            let (limiter, per_user) = (&limiter, per_user);
            async move { limiter.check(per_user, key).await.is_ok() }
        };
        let mut refused = false;
        for _ in 0..100 {
            refused |= !admitted("buyer-1").await;
        }
        assert!(
            refused,
            "100 purchases at once by one buyer passed the limit"
        );
        assert!(admitted("buyer-2").await);
    }
}
