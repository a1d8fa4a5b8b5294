//! The Redis stock front (`fred`). Each sale's keys share one `{hash tag}`
//! (the sale id), so every script runs on Redis Cluster. Scripts are loaded
//! with SCRIPT LOAD at warm-up and called with EVALSHA; a `NOSCRIPT` reply
//! (failover, SCRIPT FLUSH) falls back to EVAL, which also reloads the cache.
//!
//! Hot path: `reserve` is one EVALSHA round trip; no allocation beyond the
//! command's arguments, no logging above debug.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::*;
use fred::types::{ClusterHash, CustomCommand, InfoKind};
use uuid::Uuid;

use super::{
    FrontCounts, FrontError, IdemRecord, Rebuild, ReserveCall, ReserveOutcome, ReturnOutcome,
    StockFront, StreamEntry, Suspended, idempotency_field,
};
use crate::config::RedisConfig;

const RESERVE: &str = include_str!("scripts/reserve.lua");
const GIVE_BACK: &str = include_str!("scripts/give_back.lua");
const ACK: &str = include_str!("scripts/ack.lua");
const SUSPEND: &str = include_str!("scripts/suspend.lua");
const RENEW: &str = include_str!("scripts/renew.lua");
const ABANDON: &str = include_str!("scripts/abandon.lua");
const REBUILD: &str = include_str!("scripts/rebuild.lua");

/// The settlement consumer group of every sale stream.
pub const GROUP: &str = "settle";

/// A Lua script and its SHA1 (what SCRIPT LOAD returns).
struct Script {
    body: &'static str,
    sha: String,
}

impl Script {
    fn new(body: &'static str) -> Self {
        Script {
            body,
            sha: sha1_hex(body),
        }
    }
}

/// The keys of one sale, all under the sale's hash tag.
struct SaleKeys {
    stock: String,
    buyers: String,
    idempotency: String,
    stream: String,
    pending: String,
    returned: String,
    rebuild_marker: String,
    tag: String,
}

impl SaleKeys {
    /// A rebuild's own temporary key (two rebuilds never share one).
    fn staging(&self, token: Uuid, what: &str) -> String {
        format!("{}:rebuild:{token}:{what}", self.tag)
    }

    /// The reserve script's KEYS, in its order.
    fn reserve_keys(&self) -> [&str; 6] {
        [
            self.stock.as_str(),
            self.buyers.as_str(),
            self.idempotency.as_str(),
            self.stream.as_str(),
            self.pending.as_str(),
            self.rebuild_marker.as_str(),
        ]
    }

    fn new(prefix: &str, sale: Uuid) -> Self {
        let tag = format!("{prefix}:{{{sale}}}");
        SaleKeys {
            stock: format!("{tag}:stock"),
            buyers: format!("{tag}:buyers"),
            idempotency: format!("{tag}:idem"),
            stream: format!("{tag}:stream"),
            pending: format!("{tag}:pending"),
            returned: format!("{tag}:returned"),
            rebuild_marker: format!("{tag}:rebuild"),
            tag,
        }
    }
}

/// The reserve script exactly as the engine calls it: its body, its SHA1
/// (for EVALSHA) and the KEYS of a sale, so a reference client (the bench's
/// `redis-benchmark`) can run the same call.
pub fn reserve_call(prefix: &str, sale: Uuid) -> (&'static str, String, Vec<String>) {
    let keys = SaleKeys::new(prefix, sale);
    (
        RESERVE,
        sha1_hex(RESERVE),
        keys.reserve_keys().map(str::to_owned).to_vec(),
    )
}

/// A lease in whole milliseconds, at least one (Redis refuses `PX 0`).
fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// The Redis stock front.
pub struct RedisFront {
    pool: Pool,
    options: Options,
    prefix: String,
    reserve: Script,
    give_back: Script,
    ack: Script,
    suspend: Script,
    renew: Script,
    abandon: Script,
    rebuild: Script,
}

fn unavailable(e: Error) -> FrontError {
    FrontError::Unavailable(e.to_string())
}

fn reply_error(e: Error) -> FrontError {
    match e.kind() {
        ErrorKind::IO | ErrorKind::Canceled | ErrorKind::Timeout | ErrorKind::Backpressure => {
            unavailable(e)
        }
        _ if e.details().starts_with("Client is not initialized")
            || e.details().starts_with("Failed to send command") =>
        {
            unavailable(e)
        }
        _ => FrontError::Protocol(e.to_string()),
    }
}

impl RedisFront {
    /// Connects a pool to `config.url` and waits for the first connection,
    /// trying again until `config.connect_timeout` has passed: while
    /// Sentinel fails over, it names a primary that is gone, and a process
    /// (re)started then would otherwise exit on the first refusal.
    pub async fn connect(config: &RedisConfig) -> Result<Self, FrontError> {
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
        let deadline = tokio::time::Instant::now() + config.connect_timeout;
        loop {
            match Self::connect_once(config, deadline).await {
                Err(e) if tokio::time::Instant::now() + PAUSE < deadline => {
                    tracing::warn!(error = %e, "redis not reachable yet; trying again");
                    tokio::time::sleep(PAUSE).await;
                }
                result => return result,
            }
        }
    }

    async fn connect_once(
        config: &RedisConfig,
        deadline: tokio::time::Instant,
    ) -> Result<Self, FrontError> {
        let redis_config = Config::from_url(&config.url)
            .map_err(|e| FrontError::Unavailable(format!("bad redis url: {e}")))?;
        let mut builder = Builder::from_config(redis_config);
        let connect_timeout = config.connect_timeout;
        let command_timeout = config.command_timeout;
        builder
            .with_config(|c| c.fail_fast = true)
            .with_connection_config(|c| {
                c.connection_timeout = connect_timeout;
                c.internal_command_timeout = connect_timeout;
                // A command whose connection dropped is failed, not replayed:
                // the caller decides (a purchase retries with its own key).
                c.max_command_attempts = 1;
            })
            .with_performance_config(|p| p.default_command_timeout = command_timeout)
            // Reconnect within half a second of a Redis (or a promoted
            // replica) being back: each attempt is one connect on the
            // network, and every second without a connection is a second
            // of purchases answered 503.
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 500, 2));
        let pool = builder.build_pool(config.pool_size).map_err(unavailable)?;
        let connected = match tokio::time::timeout_at(deadline, pool.init()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(FrontError::Unavailable(format!(
                "no connection to {} within {connect_timeout:?}",
                config.url
            ))),
        };
        if let Err(e) = connected {
            // Stop its reconnection tasks: the next attempt builds anew.
            let _ = pool.quit().await;
            return Err(e);
        }
        Ok(RedisFront {
            pool,
            options: Options {
                fail_fast: true,
                timeout: Some(command_timeout),
                ..Default::default()
            },
            prefix: config.key_prefix.clone(),
            reserve: Script::new(RESERVE),
            give_back: Script::new(GIVE_BACK),
            ack: Script::new(ACK),
            suspend: Script::new(SUSPEND),
            renew: Script::new(RENEW),
            abandon: Script::new(ABANDON),
            rebuild: Script::new(REBUILD),
        })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        let _ = self.pool.quit().await;
    }

    fn keys(&self, sale: Uuid) -> SaleKeys {
        SaleKeys::new(&self.prefix, sale)
    }

    fn client(&self) -> fred::clients::WithOptions<Client> {
        self.pool.next().with_options(&self.options)
    }

    /// EVALSHA, falling back to EVAL on NOSCRIPT (which caches the script again).
    async fn run(
        &self,
        script: &Script,
        keys: &[&str],
        args: Vec<Value>,
    ) -> Result<Value, FrontError> {
        // EVALSHA sha numkeys keys.. args..; on NOSCRIPT the same with the body.
        let command = |head: Value, args: Vec<Value>| {
            let mut call: Vec<Value> = Vec::with_capacity(2 + keys.len() + args.len());
            call.push(head);
            call.push(Value::from(keys.len() as i64));
            call.extend(keys.iter().map(|k| Value::from(*k)));
            call.extend(args);
            call
        };
        // Route by the first key, which carries the sale's hash tag. The
        // slot is computed here: fred routes a custom command by its first
        // string argument (the SHA) unless it is given the slot itself.
        let slot = || ClusterHash::from(keys.first().copied().unwrap_or_default());
        let evalsha = CustomCommand::new("EVALSHA", slot(), false);
        // Argument values share their buffers, so keeping a copy for the
        // fallback copies no bytes.
        let fallback = args.clone();
        match self
            .client()
            .custom::<Value, Value>(evalsha, command(Value::from(script.sha.as_str()), args))
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                tracing::debug!(sha = %script.sha, "script not cached, falling back to eval");
                let eval = CustomCommand::new("EVAL", slot(), false);
                self.client()
                    .custom(eval, command(Value::from(script.body), fallback))
                    .await
                    .map_err(reply_error)
            }
            result => result.map_err(reply_error),
        }
    }

    fn entries(raw: Value, sale: Uuid) -> Result<Vec<StreamEntry>, FrontError> {
        // [[id, [field, value, ...]], ...]; a deleted pending entry is [id, nil].
        let mut out = Vec::new();
        for item in raw.into_array() {
            let mut parts = item.into_array().into_iter();
            let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(entry_id) = id.as_string() else {
                continue;
            };
            if fields.is_null() {
                continue;
            }
            let fields = fields.into_array();
            let mut map: HashMap<String, String> = HashMap::with_capacity(5);
            for pair in fields.chunks(2) {
                if let [k, v] = pair
                    && let (Some(k), Some(v)) = (k.as_string(), v.as_string())
                {
                    map.insert(k, v);
                }
            }
            let parse = || -> Option<StreamEntry> {
                Some(StreamEntry {
                    entry_id: entry_id.clone(),
                    reservation_id: Uuid::try_parse(map.get("r")?).ok()?,
                    sale_id: sale,
                    user_id: map.get("u")?.clone(),
                    quantity: map.get("q")?.parse().ok()?,
                    idempotency_key: map.get("k")?.clone(),
                    created_at_ms: map.get("t")?.parse().ok()?,
                    traceparent: None,
                })
            };
            out.push(parse().ok_or_else(|| {
                FrontError::Protocol(format!("malformed stream entry {entry_id}"))
            })?);
        }
        Ok(out)
    }

    fn read_reply(raw: Value, sale: Uuid) -> Result<Vec<StreamEntry>, FrontError> {
        // XREADGROUP: nil, or [[stream key, entries]].
        let mut out = Vec::new();
        for stream in raw.into_array() {
            if stream.is_null() {
                continue;
            }
            let mut parts = stream.into_array().into_iter();
            let _key = parts.next();
            if let Some(entries) = parts.next() {
                out.extend(Self::entries(entries, sale)?);
            }
        }
        Ok(out)
    }

    async fn ensure_group(&self, keys: &SaleKeys) -> Result<(), FrontError> {
        match self
            .client()
            .xgroup_create::<Value, _, _, _>(keys.stream.as_str(), GROUP, "0", true)
            .await
        {
            Err(e) if e.details().starts_with("BUSYGROUP") => Ok(()),
            Err(e) => Err(reply_error(e)),
            Ok(_) => Ok(()),
        }
    }

    /// XREADGROUP, recreating the group once when Redis lost it (flush).
    async fn read_group(
        &self,
        sale: Uuid,
        consumer: &str,
        count: usize,
        id: &str,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        let keys = self.keys(sale);
        for attempt in 0..2 {
            let result = self
                .client()
                .xreadgroup::<Value, _, _, _, _>(
                    GROUP,
                    consumer,
                    Some(count as u64),
                    None,
                    false,
                    keys.stream.as_str(),
                    id,
                )
                .await;
            match result {
                Err(e) if e.details().starts_with("NOGROUP") && attempt == 0 => {
                    self.ensure_group(&keys).await?
                }
                Err(e) => return Err(reply_error(e)),
                Ok(raw) => return Self::read_reply(raw, sale),
            }
        }
        Ok(Vec::new())
    }
}

fn int(v: Option<&Value>) -> Result<i64, FrontError> {
    v.and_then(Value::as_i64)
        .ok_or_else(|| FrontError::Protocol("script returned a non-integer".into()))
}

#[async_trait]
impl StockFront for RedisFront {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn warm_up(&self) -> Result<(), FrontError> {
        for script in [
            &self.reserve,
            &self.give_back,
            &self.ack,
            &self.suspend,
            &self.renew,
            &self.abandon,
            &self.rebuild,
        ] {
            // Load on every pooled connection's node (one node unless clustered).
            for client in self.pool.clients() {
                let sha: String = client.script_load(script.body).await.map_err(reply_error)?;
                if sha != script.sha {
                    return Err(FrontError::Protocol(format!(
                        "script sha mismatch: {sha} != {}",
                        script.sha
                    )));
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), FrontError> {
        self.client().ping::<()>(None).await.map_err(reply_error)
    }

    async fn generation(&self) -> Result<Option<String>, FrontError> {
        let field = |text: &str, name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        let node = self.pool.next();
        if node.is_clustered() {
            // Every primary's run_id: a failover puts a promoted replica
            // (another run_id) in a dead primary's place.
            let mut servers = node.active_connections();
            servers.sort_by_key(|s| s.to_string());
            let mut parts = Vec::with_capacity(servers.len());
            for server in servers {
                let info: String = node
                    .with_cluster_node(server.clone())
                    .info(Some(InfoKind::Server))
                    .await
                    .map_err(reply_error)?;
                parts.push(format!("{server}={}", field(&info, "run_id")));
            }
            return Ok(Some(parts.join(",")));
        }
        let client = self.client();
        let server: String = client
            .info(Some(InfoKind::Server))
            .await
            .map_err(reply_error)?;
        let replication: String = client
            .info(Some(InfoKind::Replication))
            .await
            .map_err(reply_error)?;
        Ok(Some(format!(
            "{}/{}",
            field(&server, "run_id"),
            field(&replication, "master_replid")
        )))
    }

    async fn reserve(&self, call: &ReserveCall<'_>) -> Result<ReserveOutcome, FrontError> {
        let keys = self.keys(call.sale_id);
        let field = idempotency_field(call.user_id, call.idempotency_key);
        let args = vec![
            Value::from(call.user_id),
            Value::from(field),
            Value::from(call.quantity),
            Value::from(call.per_user_limit),
            Value::from(call.reservation_id.to_string()),
            Value::from(call.now_ms as i64),
            Value::from(call.idempotency_key),
        ];
        let reply = self
            .run(&self.reserve, &keys.reserve_keys(), args)
            .await?
            .into_array();
        match int(reply.first())? {
            0 => Ok(ReserveOutcome::Reserved {
                remaining: int(reply.get(1))?,
            }),
            1 => reply
                .get(1)
                .and_then(Value::as_string)
                .and_then(|raw| IdemRecord::decode(&raw))
                .map(ReserveOutcome::Replayed)
                .ok_or_else(|| FrontError::Protocol("malformed idempotency record".into())),
            2 => Ok(ReserveOutcome::LimitExceeded {
                held: int(reply.get(1))?,
            }),
            3 => Ok(ReserveOutcome::SoldOut {
                remaining: int(reply.get(1))?,
                idempotency_records: int(reply.get(2))?,
            }),
            4 => Ok(ReserveOutcome::NotReady),
            5 => Ok(ReserveOutcome::Rebuilding),
            other => Err(FrontError::Protocol(format!(
                "reserve script returned {other}"
            ))),
        }
    }

    async fn give_back(
        &self,
        sale_id: Uuid,
        reservation_id: Uuid,
        user_id: &str,
        quantity: i64,
    ) -> Result<ReturnOutcome, FrontError> {
        let keys = self.keys(sale_id);
        let args = vec![
            Value::from(reservation_id.to_string()),
            Value::from(user_id),
            Value::from(quantity),
        ];
        let key_list = [
            keys.stock.as_str(),
            keys.buyers.as_str(),
            keys.returned.as_str(),
        ];
        match self.run(&self.give_back, &key_list, args).await?.as_i64() {
            Some(0) => Ok(ReturnOutcome::Returned),
            Some(1) => Ok(ReturnOutcome::AlreadyReturned),
            Some(2) => Ok(ReturnOutcome::NotReady),
            other => Err(FrontError::Protocol(format!(
                "give-back script returned {other:?}"
            ))),
        }
    }

    async fn counts(&self, sale_id: Uuid) -> Result<Option<FrontCounts>, FrontError> {
        let keys = self.keys(sale_id);
        let values: Vec<Option<i64>> = self
            .client()
            .mget(vec![keys.stock.as_str(), keys.pending.as_str()])
            .await
            .map_err(reply_error)?;
        Ok(values
            .first()
            .copied()
            .flatten()
            .map(|remaining| FrontCounts {
                remaining,
                pending: values.get(1).copied().flatten().unwrap_or(0),
            }))
    }

    async fn idempotency_record(
        &self,
        sale_id: Uuid,
        field: &str,
    ) -> Result<Option<IdemRecord>, FrontError> {
        let keys = self.keys(sale_id);
        let raw: Option<String> = self
            .client()
            .hget(keys.idempotency.as_str(), field)
            .await
            .map_err(reply_error)?;
        Ok(raw.as_deref().and_then(IdemRecord::decode))
    }

    async fn idempotency_records(
        &self,
        sale_id: Uuid,
    ) -> Result<HashMap<String, IdemRecord>, FrontError> {
        let keys = self.keys(sale_id);
        let raw: HashMap<String, String> = self
            .client()
            .hgetall(keys.idempotency.as_str())
            .await
            .map_err(reply_error)?;
        Ok(raw
            .into_iter()
            .filter_map(|(field, value)| IdemRecord::decode(&value).map(|r| (field, r)))
            .collect())
    }

    async fn ensure_stream(&self, sale_id: Uuid) -> Result<(), FrontError> {
        self.ensure_group(&self.keys(sale_id)).await
    }

    async fn read_new(
        &self,
        sale_id: Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        self.read_group(sale_id, consumer, count, ">").await
    }

    async fn read_own_pending(
        &self,
        sale_id: Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        self.read_group(sale_id, consumer, count, "0").await
    }

    async fn claim_idle(
        &self,
        sale_id: Uuid,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        let keys = self.keys(sale_id);
        let result = self
            .client()
            .xautoclaim::<Value, _, _, _, _>(
                keys.stream.as_str(),
                GROUP,
                consumer,
                min_idle.as_millis() as u64,
                "0-0",
                Some(count as u64),
                false,
            )
            .await;
        let raw = match result {
            Err(e) if e.details().starts_with("NOGROUP") => {
                self.ensure_group(&keys).await?;
                return Ok(Vec::new());
            }
            other => other.map_err(reply_error)?,
        };
        // [next start id, [entries], [deleted ids]]
        let mut parts = raw.into_array().into_iter();
        let _next = parts.next();
        match parts.next() {
            Some(entries) => Self::entries(entries, sale_id),
            None => Ok(Vec::new()),
        }
    }

    async fn ack(&self, sale_id: Uuid, entries: &[StreamEntry]) -> Result<(), FrontError> {
        if entries.is_empty() {
            return Ok(());
        }
        let keys = self.keys(sale_id);
        let mut args = Vec::with_capacity(1 + 2 * entries.len());
        args.push(Value::from(GROUP));
        for e in entries {
            args.push(Value::from(e.entry_id.as_str()));
            args.push(Value::from(e.quantity));
        }
        self.run(
            &self.ack,
            &[keys.stream.as_str(), keys.pending.as_str()],
            args,
        )
        .await
        .map(|_| ())
    }

    async fn backlog(&self, sale_id: Uuid) -> Result<u64, FrontError> {
        let keys = self.keys(sale_id);
        self.client()
            .xlen(keys.stream.as_str())
            .await
            .map_err(reply_error)
    }

    async fn suspend_for(
        &self,
        sale_id: Uuid,
        lease: Duration,
    ) -> Result<Option<Suspended>, FrontError> {
        let keys = self.keys(sale_id);
        let token = Uuid::now_v7();
        let lease_ms = lease_ms(lease);
        let answer = self
            .run(
                &self.suspend,
                &[
                    keys.stock.as_str(),
                    keys.rebuild_marker.as_str(),
                    keys.pending.as_str(),
                ],
                vec![Value::from(token.to_string()), Value::from(lease_ms)],
            )
            .await?;
        let fields: Vec<i64> = answer
            .into_array()
            .iter()
            .map(|v| v.as_i64())
            .collect::<Option<_>>()
            .ok_or_else(|| FrontError::Protocol("suspend script returned a non-integer".into()))?;
        match fields.as_slice() {
            [0] => Ok(None),
            [1] => Ok(Some(Suspended {
                token,
                counts: None,
            })),
            [1, remaining, pending] => Ok(Some(Suspended {
                token,
                counts: Some(FrontCounts {
                    remaining: *remaining,
                    pending: *pending,
                }),
            })),
            other => Err(FrontError::Protocol(format!(
                "suspend script returned {other:?}"
            ))),
        }
    }

    async fn given_back(&self, sale_id: Uuid, ids: &[Uuid]) -> Result<HashSet<Uuid>, FrontError> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let keys = self.keys(sale_id);
        let members: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let found: Vec<bool> = self
            .client()
            .smismember(keys.returned.as_str(), members)
            .await
            .map_err(reply_error)?;
        Ok(ids
            .iter()
            .zip(found)
            .filter(|(_, given)| *given)
            .map(|(id, _)| *id)
            .collect())
    }

    async fn renew(&self, sale_id: Uuid, token: Uuid, lease: Duration) -> Result<bool, FrontError> {
        let keys = self.keys(sale_id);
        let answer = self
            .run(
                &self.renew,
                &[keys.rebuild_marker.as_str()],
                vec![Value::from(token.to_string()), Value::from(lease_ms(lease))],
            )
            .await?;
        match answer.as_i64() {
            Some(held) => Ok(held == 1),
            None => Err(FrontError::Protocol(
                "renew script returned a non-integer".into(),
            )),
        }
    }

    async fn abandon(&self, sale_id: Uuid, token: Uuid) -> Result<(), FrontError> {
        let keys = self.keys(sale_id);
        self.run(
            &self.abandon,
            &[keys.rebuild_marker.as_str()],
            vec![Value::from(token.to_string())],
        )
        .await
        .map(|_| ())
    }

    async fn rebuild(
        &self,
        sale_id: Uuid,
        token: Uuid,
        state: &Rebuild,
    ) -> Result<bool, FrontError> {
        let keys = self.keys(sale_id);
        let client = self.client();
        let (new_buyers, new_idempotency, new_returned) = (
            keys.staging(token, "buyers"),
            keys.staging(token, "idem"),
            keys.staging(token, "returned"),
        );
        // The new state goes to this rebuild's own temporary keys; the
        // commit script swaps them in atomically, if the lease still holds.
        for chunk in state.buyers.chunks(1000) {
            let pairs: Vec<(&str, i64)> = chunk.iter().map(|(u, n)| (u.as_str(), *n)).collect();
            client
                .hset::<i64, _, _>(new_buyers.as_str(), pairs)
                .await
                .map_err(reply_error)?;
        }
        for chunk in state.idempotency.chunks(1000) {
            let pairs: Vec<(&str, String)> = chunk
                .iter()
                .map(|(f, r)| (f.as_str(), r.encode()))
                .collect();
            client
                .hset::<i64, _, _>(new_idempotency.as_str(), pairs)
                .await
                .map_err(reply_error)?;
        }
        for chunk in state.returned.chunks(1000) {
            let ids: Vec<String> = chunk.iter().map(Uuid::to_string).collect();
            client
                .sadd::<i64, _, _>(new_returned.as_str(), ids)
                .await
                .map_err(reply_error)?;
        }
        self.ensure_group(&keys).await?;
        let key_list = [
            keys.stock.as_str(),
            keys.rebuild_marker.as_str(),
            keys.buyers.as_str(),
            keys.idempotency.as_str(),
            keys.pending.as_str(),
            keys.returned.as_str(),
            new_buyers.as_str(),
            new_idempotency.as_str(),
            new_returned.as_str(),
        ];
        let args = vec![Value::from(token.to_string()), Value::from(state.remaining)];
        Ok(self.run(&self.rebuild, &key_list, args).await?.as_i64() == Some(1))
    }
}

/// SHA1 of a script, as Redis names it.
fn sha1_hex(body: &str) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}
