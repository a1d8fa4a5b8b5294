//! The engine's configuration: the `[engine]`, `[redis]` and `[ledger]`
//! sections of the flashmall config file. Every field has a default and a
//! doc comment; `validate` runs right after loading.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[engine]`: the inventory engine component.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Address the engine serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// Answer a purchase only after its reservation is committed in the
    /// ledger (true, the default), or right after the Redis script (false:
    /// faster, but a Redis loss before settlement loses acknowledged units).
    pub durable_ack: bool,
    /// How long a durable purchase waits for its ledger commit before it is
    /// answered 503 (the client retries with the same Idempotency-Key).
    #[serde(with = "humantime_serde")]
    pub durable_ack_timeout: Duration,
    /// Most reservations settled in one ledger transaction.
    pub settle_batch_size: usize,
    /// How often an idle settlement worker looks for reservations made by
    /// other engine replicas (local ones wake it at once).
    #[serde(with = "humantime_serde")]
    pub settle_idle_poll: Duration,
    /// Pending stream entries idle this long are claimed from a consumer
    /// that stopped (a crashed replica).
    #[serde(with = "humantime_serde")]
    pub settle_claim_idle: Duration,
    /// A sale's settlement worker stops this long after the sale ended,
    /// once its stream is empty (nothing can be reserved after the end).
    #[serde(with = "humantime_serde")]
    pub settle_retire_after: Duration,
    /// Name of this replica's settlement consumer; empty: the host name and
    /// process id. Keep it stable across restarts (e.g. the pod name) so a
    /// restarted replica re-reads its own unacknowledged entries at once.
    pub instance_id: String,
    /// How long a replica trusts its local sold-out flag before asking Redis
    /// again (released units come back on sale after at most this long).
    #[serde(with = "humantime_serde")]
    pub sold_out_recheck: Duration,
    /// Largest quantity one purchase request may ask for.
    pub max_quantity: i64,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Run reconcile for every sale when the engine starts.
    pub reconcile_on_start: bool,
    /// The order service's gRPC endpoints (`host:port`; a host name is
    /// resolved by DNS again and again, e.g. a Kubernetes headless Service).
    /// Settlement makes an order of every reservation through them. Empty:
    /// no orders are made; the ledger keeps them in its outbox until an
    /// order service is configured.
    pub order_endpoints: Vec<String>,
    /// Most orders created in one call to the order service.
    pub order_batch_size: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            durable_ack: true,
            durable_ack_timeout: Duration::from_secs(5),
            settle_batch_size: 512,
            settle_idle_poll: Duration::from_millis(50),
            settle_claim_idle: Duration::from_secs(5),
            settle_retire_after: Duration::from_secs(10),
            instance_id: String::new(),
            sold_out_recheck: Duration::from_millis(500),
            max_quantity: 100,
            max_body_bytes: 16 * 1024,
            reconcile_on_start: true,
            order_endpoints: vec!["127.0.0.1:8083".to_owned()],
            order_batch_size: 256,
        }
    }
}

/// `[redis]`: the stock front. Empty `url` runs the in-process front.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`; empty: the in-process stock front (one
    /// process only, nothing survives a restart but what the ledger holds).
    pub url: String,
    /// Connections in the pool used by the purchase path.
    pub pool_size: usize,
    /// Deadline of one Redis command; past it the purchase answers 503.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Deadline to open a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// The longest an open breaker answers 503 without calling Redis: it
    /// opens for a sixteenth of this first and doubles after each failed probe.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Prefix of every key flashmall writes (several deployments can share
    /// one Redis).
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            pool_size: 4,
            command_timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(2),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_millis(250),
            key_prefix: "fm".to_owned(),
        }
    }
}

/// Which ledger implementation holds the truth.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LedgerBackend {
    /// redb on local disk (one process).
    #[default]
    Embedded,
    /// TiKV through its placement driver (PD) endpoints.
    Tikv,
}

/// `[ledger]`: the source of truth for stock and reservations.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// `embedded` or `tikv`.
    pub backend: LedgerBackend,
    /// File of the embedded ledger; relative paths are under the data dir.
    pub path: PathBuf,
    /// PD endpoints (`host:port`) of the TiKV cluster, for `backend = "tikv"`.
    pub pd_endpoints: Vec<String>,
    /// Key prefix inside TiKV (several deployments can share one cluster).
    pub key_prefix: String,
    /// Times a conflicting or undetermined ledger transaction is retried.
    pub max_retries: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            backend: LedgerBackend::Embedded,
            path: PathBuf::from("ledger.redb"),
            pd_endpoints: Vec::new(),
            key_prefix: "flashmall/".to_owned(),
            max_retries: 32,
        }
    }
}

impl EngineConfig {
    /// Checks the section; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.settle_batch_size == 0 || self.settle_batch_size > 10_000 {
            return Err("engine.settle_batch_size must be between 1 and 10000".into());
        }
        if self.max_quantity < 1 {
            return Err("engine.max_quantity must be at least 1".into());
        }
        if self.max_body_bytes < 64 {
            return Err("engine.max_body_bytes must be at least 64".into());
        }
        if self.durable_ack_timeout.is_zero() {
            return Err("engine.durable_ack_timeout must be above zero".into());
        }
        if self.settle_idle_poll.is_zero() || self.settle_claim_idle.is_zero() {
            return Err(
                "engine.settle_idle_poll and engine.settle_claim_idle must be above zero".into(),
            );
        }
        if self.order_batch_size == 0 || self.order_batch_size > 10_000 {
            return Err("engine.order_batch_size must be between 1 and 10000".into());
        }
        if let Some(bad) = self.order_endpoints.iter().find(|e| {
            e.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return Err(format!("engine.order_endpoints: {bad:?} is not host:port"));
        }
        Ok(())
    }
}

impl RedisConfig {
    pub fn validate(&self) -> Result<(), String> {
        flashmall_mesh::config::check_redis_url("redis.url", &self.url)?;
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err("redis.pool_size must be between 1 and 256".into());
        }
        if self.command_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(
                "redis.command_timeout and redis.connect_timeout must be above zero".into(),
            );
        }
        if self.breaker_failures == 0 {
            return Err("redis.breaker_failures must be at least 1".into());
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}', ' ']) {
            return Err("redis.key_prefix must be non-empty, without braces or spaces".into());
        }
        Ok(())
    }
}

impl LedgerConfig {
    pub fn validate(&self) -> Result<(), String> {
        match self.backend {
            LedgerBackend::Embedded if self.path.as_os_str().is_empty() => {
                Err("ledger.path must be set for the embedded ledger".into())
            }
            LedgerBackend::Tikv if self.pd_endpoints.is_empty() => Err(
                "ledger.pd_endpoints must list at least one PD endpoint for backend = \"tikv\""
                    .into(),
            ),
            _ => Ok(()),
        }
    }
}
