//! Edge state in Redis, shared by every proxy replica. Every write bumps a
//! version key that replicas poll.

use async_trait::async_trait;
use fred::prelude::*;
use std::collections::HashMap;

use super::{AccessRule, BlacklistEntry, EdgeState, EdgeStore};

/// The Redis edge store.
pub struct RedisEdgeStore {
    client: Client,
    version: String,
    blacklist: String,
    rules: String,
    denied: String,
}

fn err(e: Error) -> String {
    format!("redis: {e}")
}

impl RedisEdgeStore {
    pub async fn connect(url: &str, timeout: std::time::Duration) -> Result<Self, String> {
        let config = Config::from_url(url).map_err(|e| format!("bad redis url: {e}"))?;
        let client = Builder::from_config(config)
            .with_connection_config(|c| c.connection_timeout = timeout)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build()
            .map_err(err)?;
        tokio::time::timeout(timeout, client.init())
            .await
            .map_err(|_| format!("no connection to {url}"))?
            .map_err(err)?;
        Ok(RedisEdgeStore {
            client,
            version: "fm:edge:version".into(),
            blacklist: "fm:edge:blacklist".into(),
            rules: "fm:edge:rules".into(),
            denied: "fm:edge:denied".into(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn bump(&self) -> Result<(), String> {
        self.client
            .incr::<i64, _>(self.version.as_str())
            .await
            .map_err(err)?;
        Ok(())
    }
}

#[async_trait]
impl EdgeStore for RedisEdgeStore {
    async fn version(&self) -> Result<u64, String> {
        let v: Option<u64> = self.client.get(self.version.as_str()).await.map_err(err)?;
        Ok(v.unwrap_or(0))
    }

    async fn load(&self, now_ms: u64) -> Result<EdgeState, String> {
        let entries: HashMap<String, String> = self
            .client
            .hgetall(self.blacklist.as_str())
            .await
            .map_err(err)?;
        let rules: Option<String> = self.client.get(self.rules.as_str()).await.map_err(err)?;
        let _: i64 = self
            .client
            .zremrangebyscore(self.denied.as_str(), f64::NEG_INFINITY, now_ms as f64)
            .await
            .map_err(err)?;
        let denied: Vec<(String, f64)> = self
            .client
            .zrangebyscore(self.denied.as_str(), "-inf", "+inf", true, None)
            .await
            .map_err(err)?;
        Ok(EdgeState {
            blacklist: entries
                .values()
                .filter_map(|v| serde_json::from_str(v).ok())
                .collect(),
            rules: match rules {
                Some(r) => serde_json::from_str(&r)
                    .map_err(|e| format!("stored access rules are corrupt: {e}"))?,
                None => Vec::new(),
            },
            denied: denied
                .into_iter()
                .map(|(jti, exp)| (jti, exp as u64))
                .collect(),
        })
    }

    async fn add_blacklist(&self, entry: BlacklistEntry) -> Result<(), String> {
        let value = serde_json::to_string(&entry).map_err(|e| e.to_string())?;
        self.client
            .hset::<i64, _, _>(self.blacklist.as_str(), (entry.id.as_str(), value))
            .await
            .map_err(err)?;
        self.bump().await
    }

    async fn remove_blacklist(&self, id: &str) -> Result<bool, String> {
        let removed: i64 = self
            .client
            .hdel(self.blacklist.as_str(), id)
            .await
            .map_err(err)?;
        self.bump().await?;
        Ok(removed > 0)
    }

    async fn set_rules(&self, rules: Vec<AccessRule>) -> Result<(), String> {
        let value = serde_json::to_string(&rules).map_err(|e| e.to_string())?;
        self.client
            .set::<(), _, _>(self.rules.as_str(), value, None, None, false)
            .await
            .map_err(err)?;
        self.bump().await
    }

    async fn deny_token(&self, jti: &str, expires_at_ms: u64) -> Result<(), String> {
        self.client
            .zadd::<i64, _, _>(
                self.denied.as_str(),
                None,
                None,
                false,
                false,
                (expires_at_ms as f64, jti),
            )
            .await
            .map_err(err)?;
        self.bump().await
    }
}
