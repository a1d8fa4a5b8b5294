//! The stock front: the fast, rebuildable copy of each sale's stock, buyers
//! and idempotency records that the purchase path decides on, and the stream
//! of reservations that settlement drains into the ledger.
//!
//! Two implementations pass one conformance suite (`tests/front_conformance.rs`):
//! Redis (`redis.rs`, Lua scripts, Redis Cluster-safe) and an in-process one
//! (`local.rs`, same semantics, for a single process without Redis).
//! The front never decides anything the ledger cannot rebuild.

mod breaker;
mod local;
mod redis;

pub use breaker::Breaker;
pub use local::LocalFront;
pub use redis::{RedisFront, reserve_call};

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

/// A stock-front failure: the store is unreachable, timed out, or answered
/// something unexpected. Purchase outcomes are never errors.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("stock front unavailable: {0}")]
    Unavailable(String),
    #[error("stock front protocol error: {0}")]
    Protocol(String),
}

/// One purchase attempt as the front sees it.
#[derive(Debug, Clone)]
pub struct ReserveCall<'a> {
    pub sale_id: Uuid,
    pub user_id: &'a str,
    pub idempotency_key: &'a str,
    pub quantity: i64,
    pub per_user_limit: i64,
    /// The id the reservation gets if this call makes one.
    pub reservation_id: Uuid,
    pub now_ms: u64,
}

/// What the front decided. Rejections are values, not errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Units reserved; `remaining` is the stock left after this call.
    Reserved { remaining: i64 },
    /// The idempotency key was seen before: the original reservation.
    Replayed(IdemRecord),
    /// The buyer already holds `held` units; this call would pass the limit.
    LimitExceeded { held: i64 },
    /// Fewer than the asked units are left. `idempotency_records` counts the
    /// sale's idempotency records (for the local sold-out snapshot).
    SoldOut {
        remaining: i64,
        idempotency_records: i64,
    },
    /// The sale's stock is not in the front (never warmed, or flushed):
    /// reconcile must run before it can sell.
    NotReady,
    /// A reconcile is rebuilding the sale's stock right now.
    Rebuilding,
}

/// A successful purchase's idempotency record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdemRecord {
    pub reservation_id: Uuid,
    pub quantity: i64,
}

impl IdemRecord {
    pub fn encode(&self) -> String {
        format!("{}|{}", self.reservation_id, self.quantity)
    }

    pub fn decode(raw: &str) -> Option<IdemRecord> {
        // "reservation id|quantity"
        let (id, qty) = raw.split_once('|')?;
        Some(IdemRecord {
            reservation_id: Uuid::try_parse(id).ok()?,
            quantity: qty.parse().ok()?,
        })
    }
}

/// The field an idempotency record is stored under: the key is scoped to
/// its user, and the user's length prefix keeps `(a:b, c)` and `(a, b:c)` apart.
pub fn idempotency_field(user_id: &str, key: &str) -> String {
    format!("{}:{}:{}", user_id.len(), user_id, key)
}

/// The user an idempotency field belongs to.
pub fn user_of_field(field: &str) -> Option<&str> {
    let (len, rest) = field.split_once(':')?;
    rest.get(..len.parse::<usize>().ok()?)
}

/// A reservation read from the sale's stream, not yet settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The stream entry id (acknowledged after settlement).
    pub entry_id: String,
    pub reservation_id: Uuid,
    pub sale_id: Uuid,
    pub user_id: String,
    pub quantity: i64,
    pub idempotency_key: String,
    pub created_at_ms: u64,
    /// The purchase's trace (`traceparent`), when spans are exported:
    /// settlement takes it from the waiting purchase, never from the
    /// stream, and keeps it in the ledger record for the order worker.
    pub traceparent: Option<String>,
}

/// What giving units back did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnOutcome {
    Returned,
    /// An earlier call already returned this reservation's units.
    AlreadyReturned,
    /// The sale's stock is not in the front; reconcile will count the units.
    NotReady,
}

/// The front's live counts of one sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrontCounts {
    pub remaining: i64,
    /// Units reserved and not yet acknowledged by settlement.
    pub pending: i64,
}

/// A sale taken out of the front for a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspended {
    /// Only this token's rebuild may put the stock back.
    pub token: Uuid,
    /// The counts the front had when the stock was taken out (`None`: it
    /// was not loaded). Nothing sells or comes back from then until the
    /// rebuild, so a rebuild compares the ledger with this one instant.
    pub counts: Option<FrontCounts>,
}

/// The state a rebuild writes, computed from the ledger.
#[derive(Debug, Clone, Default)]
pub struct Rebuild {
    pub remaining: i64,
    /// Units held per buyer.
    pub buyers: Vec<(String, i64)>,
    /// Idempotency records of the sale's reservations, by field.
    pub idempotency: Vec<(String, IdemRecord)>,
    /// Reservations whose units are already back in `remaining` (released
    /// or releasing): a late give-back for them must return nothing.
    pub returned: Vec<Uuid>,
}

/// How long a rebuild may hold a sale's stock out of the front without
/// renewing its lease before another may take over (a crashed reconcile's
/// lease expires; a live one renews it every third of it).
pub const REBUILD_LEASE: Duration = Duration::from_secs(30);

/// The stock-front boundary. Every implementation runs the conformance suite.
#[async_trait]
pub trait StockFront: Send + Sync + 'static {
    /// A short name for logs and metrics (`redis`, `local`).
    fn kind(&self) -> &'static str;

    /// Loads scripts so the first purchase does no cold work.
    async fn warm_up(&self) -> Result<(), FrontError>;

    /// Checks the store answers.
    async fn ping(&self) -> Result<(), FrontError>;

    /// Names the store's current life: for Redis its `run_id` (new on every
    /// restart, whatever it reloaded) and `master_replid` (new when a
    /// replica is promoted; on Redis Cluster, every primary's `run_id`). A
    /// change means the front may have lost writes. `None` where there is
    /// nothing to watch (the in-process front, whose loss is a restart of
    /// the engine itself).
    async fn generation(&self) -> Result<Option<String>, FrontError> {
        Ok(None)
    }

    /// The purchase decision, atomically: idempotency, limit, stock,
    /// decrement, buyer record, stream append.
    async fn reserve(&self, call: &ReserveCall<'_>) -> Result<ReserveOutcome, FrontError>;

    /// Returns a released reservation's units to the sale; idempotent by
    /// reservation id.
    async fn give_back(
        &self,
        sale_id: Uuid,
        reservation_id: Uuid,
        user_id: &str,
        quantity: i64,
    ) -> Result<ReturnOutcome, FrontError>;

    /// Live counts; `None` when the sale's stock is not in the front.
    async fn counts(&self, sale_id: Uuid) -> Result<Option<FrontCounts>, FrontError>;

    /// One idempotency record of a sale.
    async fn idempotency_record(
        &self,
        sale_id: Uuid,
        field: &str,
    ) -> Result<Option<IdemRecord>, FrontError>;

    /// Every idempotency record of a sale, by field.
    async fn idempotency_records(
        &self,
        sale_id: Uuid,
    ) -> Result<HashMap<String, IdemRecord>, FrontError>;

    /// Creates the sale's stream and settlement consumer group if missing.
    async fn ensure_stream(&self, sale_id: Uuid) -> Result<(), FrontError>;

    /// Reads up to `count` entries never delivered to any consumer.
    async fn read_new(
        &self,
        sale_id: Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError>;

    /// Re-reads entries delivered to `consumer` and not acknowledged (after a restart).
    async fn read_own_pending(
        &self,
        sale_id: Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError>;

    /// Claims for `consumer` up to `count` entries idle at least `min_idle`
    /// in other consumers (a crashed replica's).
    async fn claim_idle(
        &self,
        sale_id: Uuid,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError>;

    /// Acknowledges settled entries and drops them from the stream; each
    /// entry's units leave `pending` exactly once.
    async fn ack(&self, sale_id: Uuid, entries: &[StreamEntry]) -> Result<(), FrontError>;

    /// Entries in the stream (the settlement backlog).
    async fn backlog(&self, sale_id: Uuid) -> Result<u64, FrontError>;

    /// Takes the sale's stock out of the front under a lease of
    /// [`REBUILD_LEASE`]: purchases answer `Rebuilding` until the rebuild
    /// puts it back. Returns the rebuild's token and the counts it took
    /// away, or `None` while another rebuild holds the lease.
    async fn suspend(&self, sale_id: Uuid) -> Result<Option<Suspended>, FrontError> {
        self.suspend_for(sale_id, REBUILD_LEASE).await
    }

    /// [`StockFront::suspend`] under a lease of `lease`.
    async fn suspend_for(
        &self,
        sale_id: Uuid,
        lease: Duration,
    ) -> Result<Option<Suspended>, FrontError>;

    /// Extends the lease of the rebuild `token` to `lease` from now, while
    /// it still holds it; false once it lapsed or another rebuild took it.
    /// A rebuild renews its lease while it runs, so one slower than a lease
    /// is not taken over (and then superseded, over and over) while alive.
    async fn renew(&self, sale_id: Uuid, token: Uuid, lease: Duration) -> Result<bool, FrontError>;

    /// Which of `ids` the front has given back (`give_back` counted their
    /// units). While the sale is suspended nothing is given back, so the
    /// answer holds until the rebuild.
    async fn given_back(&self, sale_id: Uuid, ids: &[Uuid]) -> Result<HashSet<Uuid>, FrontError>;

    /// Gives up a rebuild that failed after `suspend`: drops its lease (if
    /// still held) and leaves the stock out, so the next purchase finds
    /// the sale not loaded and starts a fresh reconcile at once instead of
    /// answering `Rebuilding` until the lease expires.
    async fn abandon(&self, sale_id: Uuid, token: Uuid) -> Result<(), FrontError>;

    /// Writes buyers, idempotency records, zero pending and the stock, the
    /// last step atomic, so purchases resume only on a complete state.
    /// Commits nothing and returns false when a newer `suspend` of the same
    /// sale (another replica's reconcile) superseded `token`.
    async fn rebuild(
        &self,
        sale_id: Uuid,
        token: Uuid,
        state: &Rebuild,
    ) -> Result<bool, FrontError>;
}
