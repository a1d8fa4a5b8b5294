//! Edge state in Redis, shared by every proxy replica. Every write of the
//! blacklist or the rules bumps a version key that replicas poll.
//!
//! Revocations live under one hash tag (Redis Cluster: one slot, so the
//! scripts below touch them atomically): a sorted set of keys by expiry, a
//! hash of their watermarks, and a sorted set of keys by sequence number
//! (the log replicas read from their last number). Recording one drops up
//! to 100 expired ones, so the three hold only live revocations.

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand};
use std::collections::HashMap;

use super::{
    AccessRule, BlacklistEntry, EdgeState, EdgeStore, REVOCATIONS_PER_READ, Revocation, StoreError,
};

/// KEYS: expiries, watermarks, log, sequence. ARGV: key, watermark (`all`
/// or Unix ms), until (Unix ms), now (Unix ms).
///
/// A sequence number is the server's clock in microseconds (or the last
/// number plus one, if greater), never a bare counter: Redis may come back
/// with less than it acknowledged (a restart from an older RDB or AOF
/// point, a failover to a replica that lagged), and a counter would then
/// hand out again numbers replicas have read past, so the revocations
/// recorded after the loss would never reach them. The clock has moved on
/// since any number the lost data held (a failover alone takes seconds
/// longer than the clocks of two Redis hosts differ).
const REVOKE: &str = r#"
local nb = ARGV[2]
local old_nb = redis.call('HGET', KEYS[2], ARGV[1])
if old_nb == 'all' then nb = 'all'
elseif old_nb and nb ~= 'all' and tonumber(old_nb) > tonumber(nb) then nb = old_nb end
local untl = tonumber(ARGV[3])
local old_until = redis.call('ZSCORE', KEYS[1], ARGV[1])
if old_until and tonumber(old_until) > untl then untl = tonumber(old_until) end
redis.call('ZADD', KEYS[1], untl, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], nb)
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local seq = math.max(tonumber(redis.call('GET', KEYS[4]) or '0') + 1, now_us)
redis.call('SET', KEYS[4], string.format('%.0f', seq))
redis.call('ZADD', KEYS[3], seq, ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[4], 'LIMIT', 0, 100)
for _, k in ipairs(gone) do
  redis.call('ZREM', KEYS[1], k)
  redis.call('ZREM', KEYS[3], k)
  redis.call('HDEL', KEYS[2], k)
end
return string.format('%.0f', seq)
"#;

/// KEYS: the version. Moves it to the server's clock in microseconds (or
/// one past it, if greater), for the reason [`REVOKE`] gives: after Redis
/// lost writes, a counter could come back to a version a replica has seen
/// with other contents, and the replica would never reload.
const BUMP: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local v = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') + 1, now_us)
redis.call('SET', KEYS[1], string.format('%.0f', v))
return 1
"#;

/// KEYS: expiries, watermarks, log. ARGV: after (sequence number), limit.
/// Returns key, sequence, until, watermark for each.
const REVOCATIONS_AFTER: &str = r#"
local rows = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf', 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #rows, 2 do
  out[#out + 1] = rows[i]
  out[#out + 1] = rows[i + 1]
  out[#out + 1] = redis.call('ZSCORE', KEYS[1], rows[i]) or '0'
  out[#out + 1] = redis.call('HGET', KEYS[2], rows[i]) or 'all'
end
return out
"#;

/// The Redis edge store.
pub struct RedisEdgeStore {
    client: Client,
    version: String,
    blacklist: String,
    rules: String,
    /// Expiries, watermarks, log, sequence (one hash tag).
    revocations: [String; 4],
}

fn err(e: Error) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisEdgeStore {
    /// Connects to `url`, trying again until `timeout` has passed (during
    /// a Sentinel failover the primary it names may be gone).
    pub async fn connect(url: &str, timeout: std::time::Duration) -> Result<Self, String> {
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
        let config = Config::from_url(url).map_err(|e| format!("bad redis url: {e}"))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let client = loop {
            let client = Builder::from_config(config.clone())
                .with_connection_config(|c| c.connection_timeout = timeout)
                .with_performance_config(|p| p.default_command_timeout = timeout)
                .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
                .build()
                .map_err(|e| format!("redis: {e}"))?;
            match tokio::time::timeout_at(deadline, client.init()).await {
                Ok(Ok(_)) => break client,
                Ok(Err(e)) if tokio::time::Instant::now() + PAUSE < deadline => {
                    tracing::warn!(error = %e, "redis not reachable yet; trying again");
                    let _ = client.quit().await;
                    tokio::time::sleep(PAUSE).await;
                }
                Ok(Err(e)) => return Err(format!("redis: {e}")),
                Err(_) => return Err(format!("no connection to {url} within {timeout:?}")),
            }
        };
        Ok(RedisEdgeStore {
            client,
            version: "fm:edge:version".into(),
            blacklist: "fm:edge:blacklist".into(),
            rules: "fm:edge:rules".into(),
            revocations: [
                "fm:edge:{rv}:until".into(),
                "fm:edge:{rv}:not-before".into(),
                "fm:edge:{rv}:log".into(),
                "fm:edge:{rv}:seq".into(),
            ],
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// EVAL of a script over `keys` (all under one hash tag).
    async fn eval(
        &self,
        script: &str,
        keys: &[String],
        args: Vec<Value>,
    ) -> Result<Value, StoreError> {
        let mut call: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
        call.push(Value::from(script));
        call.push(Value::from(keys.len() as i64));
        call.extend(keys.iter().map(|k| Value::from(k.as_str())));
        call.extend(args);
        let command = CustomCommand::new("EVAL", ClusterHash::from(keys[0].as_str()), false);
        self.client.custom(command, call).await.map_err(err)
    }

    /// Moves the version past every value it has had (see [`BUMP`]).
    async fn bump(&self) -> Result<(), StoreError> {
        self.eval(BUMP, std::slice::from_ref(&self.version), Vec::new())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl EdgeStore for RedisEdgeStore {
    async fn version(&self) -> Result<u64, StoreError> {
        let v: Option<u64> = self.client.get(self.version.as_str()).await.map_err(err)?;
        Ok(v.unwrap_or(0))
    }

    async fn load(&self) -> Result<EdgeState, StoreError> {
        let entries: HashMap<String, String> = self
            .client
            .hgetall(self.blacklist.as_str())
            .await
            .map_err(err)?;
        let rules: Option<String> = self.client.get(self.rules.as_str()).await.map_err(err)?;
        Ok(EdgeState {
            blacklist: entries
                .values()
                .filter_map(|v| serde_json::from_str(v).ok())
                .collect(),
            rules: match rules {
                Some(r) => serde_json::from_str(&r)
                    .map_err(|e| StoreError::Corrupt(format!("stored access rules: {e}")))?,
                None => Vec::new(),
            },
        })
    }

    async fn add_blacklist(&self, entry: BlacklistEntry) -> Result<(), StoreError> {
        let value =
            serde_json::to_string(&entry).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client
            .hset::<i64, _, _>(self.blacklist.as_str(), (entry.id.as_str(), value))
            .await
            .map_err(err)?;
        self.bump().await
    }

    async fn remove_blacklist(&self, id: &str) -> Result<bool, StoreError> {
        let removed: i64 = self
            .client
            .hdel(self.blacklist.as_str(), id)
            .await
            .map_err(err)?;
        self.bump().await?;
        Ok(removed > 0)
    }

    async fn set_rules(&self, rules: Vec<AccessRule>) -> Result<(), StoreError> {
        let value =
            serde_json::to_string(&rules).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.client
            .set::<(), _, _>(self.rules.as_str(), value, None, None, false)
            .await
            .map_err(err)?;
        self.bump().await
    }

    async fn revoke(&self, revocation: &Revocation, now_ms: u64) -> Result<(), StoreError> {
        let not_before = match revocation.not_before_ms {
            Some(ms) => Value::from(ms as i64),
            None => Value::from("all"),
        };
        self.eval(
            REVOKE,
            &self.revocations,
            vec![
                Value::from(revocation.key.as_str()),
                not_before,
                Value::from(revocation.until_ms as i64),
                Value::from(now_ms as i64),
            ],
        )
        .await?;
        Ok(())
    }

    async fn revocations_after(&self, after: u64) -> Result<Vec<(u64, Revocation)>, StoreError> {
        let reply = self
            .eval(
                REVOCATIONS_AFTER,
                &self.revocations[..3],
                vec![
                    Value::from(after as i64),
                    Value::from(REVOCATIONS_PER_READ as i64),
                ],
            )
            .await?;
        let fields: Vec<String> = reply.convert().map_err(err)?;
        let number = |s: &str| {
            s.parse::<f64>()
                .map(|n| n as u64)
                .map_err(|_| StoreError::Corrupt(format!("a stored revocation: {s:?}")))
        };
        fields
            .chunks_exact(4)
            .map(|row| {
                Ok((
                    number(&row[1])?,
                    Revocation {
                        key: row[0].clone(),
                        not_before_ms: match row[3].as_str() {
                            "all" => None,
                            ms => Some(number(ms)?),
                        },
                        until_ms: number(&row[2])?,
                    },
                ))
            })
            .collect()
    }
}
