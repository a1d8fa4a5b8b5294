//! The ledger: the durable source of truth for sales, reservations, the
//! units they hold and each buyer's count. Redis is rebuilt from it.
//!
//! Redis filters fast; the ledger decides. The stock front can lose writes
//! (a failover to a replica that lagged, a restart from an older AOF or RDB
//! point) and then grant what it should not: a unit that was already sold,
//! a unit past a buyer's limit, a second reservation for a key it forgot.
//! The settlement transaction checks every reservation against the ledger's
//! own counts and refuses (revokes) any that would hold more than the
//! sale's stock, more than the buyer's limit, or a second reservation for
//! one buyer's Idempotency-Key. A revoked reservation is recorded with its
//! reason, holds nothing and never becomes an order.
//!
//! The boundary (`LedgerStore`) is a small transactional key-value store:
//! read a set of keys, compute writes, commit atomically, retried on
//! conflict. The domain logic (`Ledger`) is written once on top of it, as
//! idempotent plans, so a replayed or retried transaction changes nothing
//! twice. Implementations: `embedded` (redb, the default) and `tikv`
//! (tikv-client). Both run `tests/ledger_conformance.rs`.

mod embedded;
mod keys;
mod tikv;

pub use embedded::EmbeddedLedger;
pub use keys::release_shard;
pub use tikv::TikvLedger;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::front::StreamEntry;
use crate::sale::Sale;

pub use flashmall_embedded_kv::{Key, Reads, Write};

/// A ledger failure.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger unavailable: {0}")]
    Unavailable(String),
    #[error("ledger transaction kept conflicting after {attempts} attempts")]
    Contended { attempts: u32 },
    #[error("ledger record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A reconcile started after this settlement read its batch: the batch
    /// may belong to a stream the rebuild no longer counts.
    #[error("settlement of sale {sale} was fenced by a reconcile")]
    Fenced { sale: Uuid },
    #[error("ledger i/o: {0}")]
    Io(String),
}

/// Computes a transaction's writes from its reads. It may run more than once
/// (conflict retries, undetermined commits), so it must be idempotent: given
/// state it already changed, it returns writes that change nothing more.
pub type Plan = flashmall_embedded_kv::Plan<LedgerError>;

/// The ledger's store boundary.
#[async_trait]
pub trait LedgerStore: Send + Sync + 'static {
    /// A short name for logs and metrics (`embedded`, `tikv`).
    fn kind(&self) -> &'static str;

    /// Reads `keys`, runs `plan`, and commits its writes atomically, retrying
    /// on conflict. An error from `plan` aborts with nothing written. The
    /// plan commits only if none of `keys` changed since it read them.
    async fn transact(&self, keys: Vec<Key>, plan: Plan) -> Result<(), LedgerError> {
        self.transact_unguarded(keys, Vec::new(), plan).await
    }

    /// [`LedgerStore::transact`] that also reads `unguarded` keys, from the
    /// same snapshot, without making the commit depend on them: another
    /// transaction may change one before this one commits (and does not
    /// conflict with it for that). Only for values whose staleness the plan
    /// is right with: a count that can only have moved in the plan's
    /// favour, so a stale read can only make it stricter.
    async fn transact_unguarded(
        &self,
        keys: Vec<Key>,
        unguarded: Vec<Key>,
        plan: Plan,
    ) -> Result<(), LedgerError>;

    /// Reads `keys` from one consistent snapshot.
    async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, LedgerError>;

    /// Up to `limit` pairs whose key starts with `prefix` and sorts after
    /// `after` (when given), in key order.
    async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, LedgerError>;
}

/// Settled counts of one sale, made of its settlement totals and its
/// release totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SaleCounts {
    /// Units held by settled, unreleased reservations.
    pub settled: i64,
    /// Units released since the sale started (returned or returning).
    pub released: i64,
    /// Units released in the ledger whose return to the stock front is not
    /// recorded yet (the front may have them back, and may have sold them).
    pub returning: i64,
    /// Reservations settled.
    pub reservations: i64,
    /// Units of reservations the ledger revoked (the stock front had
    /// granted them from state it lost); they hold nothing.
    pub revoked: i64,
}

/// What settlement writes of a sale, once per batch (`keys::settle_totals`).
/// Releases never write it: on TiKV two transactions conflict only when
/// they write one key, and a release between a settlement's read and its
/// commit would otherwise send the whole batch round again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct SettleTotals {
    /// Units ever settled held (released ones included).
    settled: i64,
    reservations: i64,
    revoked: i64,
}

/// What releases write of a sale, one shard per key (`keys::release_totals`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
struct ReleaseTotals {
    /// Units released since the sale started (returned or returning).
    released: i64,
    /// Of those, units whose return to the front is not recorded yet.
    returning: i64,
}

impl SaleCounts {
    fn of(settle: SettleTotals, release: ReleaseTotals) -> Self {
        SaleCounts {
            settled: settle.settled - release.released,
            released: release.released,
            returning: release.returning,
            reservations: settle.reservations,
            revoked: settle.revoked,
        }
    }
}

/// Where a settled reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    /// The units are the buyer's.
    Held,
    /// Released in the ledger; the units are on their way back to the front.
    Releasing,
    /// Released; the units are back on sale.
    Released,
    /// Refused by the ledger at settlement (`refusal` says why): it never
    /// held a unit and never becomes an order.
    Revoked,
}

/// What the ledger decided for a reservation at settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Settled: the units were the buyer's (they may be released since).
    Held,
    /// Revoked, for this reason.
    Revoked(Refusal),
}

/// Why the ledger revoked a reservation the stock front had granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Refusal {
    /// It would have held more units than the sale has.
    SoldOut,
    /// It would have given its buyer more than the per-user limit.
    LimitExceeded,
    /// Its buyer's Idempotency-Key already has a reservation, `first`:
    /// that one is the key's answer.
    DuplicateKey { first: Uuid },
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::SoldOut => "sold_out",
            Refusal::LimitExceeded => "limit_exceeded",
            Refusal::DuplicateKey { .. } => "duplicate_key",
        }
    }
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Held => "held",
            ReservationStatus::Releasing => "releasing",
            ReservationStatus::Released => "released",
            ReservationStatus::Revoked => "revoked",
        }
    }
}

/// A settled reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub user_id: String,
    pub quantity: i64,
    pub idempotency_key: String,
    pub status: ReservationStatus,
    pub created_at_ms: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub settled_at: OffsetDateTime,
    /// Why the ledger revoked it (status `revoked` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// The purchase's trace, when spans were exported (`StreamEntry`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl ReservationRecord {
    /// What the ledger decided for this reservation.
    pub fn verdict(&self) -> Verdict {
        match self.status {
            ReservationStatus::Revoked => {
                Verdict::Revoked(self.refusal.unwrap_or(Refusal::SoldOut))
            }
            _ => Verdict::Held,
        }
    }

    /// The order this reservation becomes: derived from the reservation id,
    /// so creating it again is idempotent.
    pub fn order_id(&self) -> Uuid {
        order_id_for(self.id)
    }
}

/// The order id of a reservation (UUIDv5 over the reservation id).
pub fn order_id_for(reservation_id: Uuid) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7273_2e66_6c61_7368_6d61_6c6c);
    Uuid::new_v5(&NAMESPACE, reservation_id.as_bytes())
}

/// What one settlement transaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Reservations written by this transaction (held).
    pub new: usize,
    /// Units they hold.
    pub units: i64,
    /// Entries already in the ledger (replays after a crash or a claim).
    pub replayed: usize,
    /// Reservations this transaction revoked, and why.
    pub revoked: Vec<(Uuid, Refusal)>,
    /// Replayed entries an earlier transaction revoked, and why.
    pub revoked_earlier: Vec<(Uuid, Refusal)>,
}

/// What releasing in the ledger found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseStep {
    /// Now releasing (or still, after an interrupted release): return the
    /// units to the front, then `finish_release`.
    Releasing(ReservationRecord),
    /// Released earlier; nothing to do.
    AlreadyReleased(ReservationRecord),
    /// Revoked at settlement: it holds nothing to release.
    Revoked(ReservationRecord),
    NotFound,
}

/// Everything reconcile needs of one sale.
#[derive(Debug, Clone)]
pub struct SaleSnapshot {
    pub sale: Sale,
    pub counts: SaleCounts,
    /// Units held per buyer (non-zero only).
    pub buyers: Vec<(String, i64)>,
    pub reservations: Vec<ReservationRecord>,
}

/// The ledger's domain operations over any `LedgerStore`.
#[derive(Clone)]
pub struct Ledger {
    store: Arc<dyn LedgerStore>,
}

const SCAN_PAGE: usize = 1024;

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], raw: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(raw).map_err(|e| LedgerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn read<T: for<'de> Deserialize<'de>>(reads: &Reads, key: &[u8]) -> Result<Option<T>, LedgerError> {
    reads.get(key).map(|raw| decode(key, raw)).transpose()
}

/// A sale's settlement totals: written with the sale, so a sale without
/// them was written by an older layout (`keys.rs`) and is not read as zero.
fn settle_totals(reads: &Reads, key: &[u8]) -> Result<SettleTotals, LedgerError> {
    read::<SettleTotals>(reads, key)?.ok_or_else(|| LedgerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: "the sale has no settlement totals: written by a flashmall before 2026-12 (`c/` counts); recreate the ledger".into(),
    })
}

/// A sale's release totals, summed over their shards.
fn summed_release_totals(reads: &Reads, shards: &[Key]) -> Result<ReleaseTotals, LedgerError> {
    let mut sum = ReleaseTotals::default();
    for shard in shards {
        let one = read::<ReleaseTotals>(reads, shard)?.unwrap_or_default();
        sum.released += one.released;
        sum.returning += one.returning;
    }
    Ok(sum)
}

fn read_i64(reads: &Reads, key: &[u8]) -> Result<i64, LedgerError> {
    Ok(read::<i64>(reads, key)?.unwrap_or(0))
}

/// Runs a plan that also produces a value, returned after the commit.
async fn transact_with<T: Send + 'static>(
    store: &dyn LedgerStore,
    keys: Vec<Key>,
    plan: impl FnMut(&Reads) -> Result<(Vec<Write>, T), LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    transact_unguarded_with(store, keys, Vec::new(), plan).await
}

/// [`transact_with`] that also reads `unguarded` keys
/// ([`LedgerStore::transact_unguarded`]).
async fn transact_unguarded_with<T: Send + 'static>(
    store: &dyn LedgerStore,
    keys: Vec<Key>,
    unguarded: Vec<Key>,
    mut plan: impl FnMut(&Reads) -> Result<(Vec<Write>, T), LedgerError> + Send + 'static,
) -> Result<T, LedgerError> {
    let slot = Arc::new(Mutex::new(None));
    let out = Arc::clone(&slot);
    store
        .transact_unguarded(
            keys,
            unguarded,
            Box::new(move |reads| {
                let (writes, value) = plan(reads)?;
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
                Ok(writes)
            }),
        )
        .await?;
    let value = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
    value.ok_or_else(|| LedgerError::Io("transaction committed without running its plan".into()))
}

impl Ledger {
    pub fn new(store: Arc<dyn LedgerStore>) -> Self {
        Ledger { store }
    }

    pub fn kind(&self) -> &'static str {
        self.store.kind()
    }

    pub fn store(&self) -> &Arc<dyn LedgerStore> {
        &self.store
    }

    /// Records a new sale with zero counts; fails if the id exists.
    pub async fn create_sale(&self, sale: &Sale) -> Result<(), LedgerError> {
        let sale_key = keys::sale(sale.id);
        let totals_key = keys::settle_totals(sale.id);
        let value = encode(sale);
        let id = sale.id;
        let existing_same = encode(sale);
        transact_with(
            &*self.store,
            vec![sale_key.clone()],
            move |reads| match reads.get(&sale_key) {
                // A retried commit of this very sale is not a conflict.
                Some(raw) if raw == existing_same.as_slice() => Ok((Vec::new(), ())),
                Some(_) => Err(LedgerError::AlreadyExists(format!("sale {id}"))),
                None => Ok((
                    vec![
                        Write::Put(sale_key.clone(), value.clone()),
                        Write::Put(totals_key.clone(), encode(&SettleTotals::default())),
                    ],
                    (),
                )),
            },
        )
        .await
    }

    /// A sale and its settled counts.
    pub async fn sale(&self, id: Uuid) -> Result<Option<(Sale, SaleCounts)>, LedgerError> {
        let (sale_key, totals_key) = (keys::sale(id), keys::settle_totals(id));
        let releases_keys = keys::all_release_totals(id);
        let mut read_keys = vec![sale_key.clone(), totals_key.clone()];
        read_keys.extend(releases_keys.iter().cloned());
        let reads = self.store.get_many(read_keys).await?;
        let Some(sale) = read::<Sale>(&reads, &sale_key)? else {
            return Ok(None);
        };
        let settle = settle_totals(&reads, &totals_key)?;
        let release = summed_release_totals(&reads, &releases_keys)?;
        Ok(Some((sale, SaleCounts::of(settle, release))))
    }

    /// Every sale, oldest id first.
    pub async fn sales(&self) -> Result<Vec<Sale>, LedgerError> {
        let mut out = Vec::new();
        self.scan_all(keys::SALE_PREFIX, |k, v| {
            out.push(decode::<Sale>(k, v)?);
            Ok(())
        })
        .await?;
        Ok(out)
    }

    /// The sale's settlement epoch (0 until the first reconcile).
    pub async fn epoch(&self, sale_id: Uuid) -> Result<u64, LedgerError> {
        let key = keys::epoch(sale_id);
        let reads = self.store.get_many(vec![key.clone()]).await?;
        Ok(read::<u64>(&reads, &key)?.unwrap_or(0))
    }

    /// Starts a new settlement epoch: batches read under an older one can
    /// no longer commit. Returns the new epoch.
    pub async fn bump_epoch(&self, sale_id: Uuid) -> Result<u64, LedgerError> {
        let key = keys::epoch(sale_id);
        transact_with(&*self.store, vec![key.clone()], move |reads| {
            let next = read::<u64>(reads, &key)?.unwrap_or(0) + 1;
            Ok((vec![Write::Put(key.clone(), encode(&next))], next))
        })
        .await
    }

    /// Settles a batch of one sale's reservations in one transaction:
    /// reservation records (skipping ids already present), per-buyer counts,
    /// the buyers' idempotency records and the sale's settlement totals
    /// written once.
    /// A reservation that would break the sale's stock, its buyer's limit
    /// or one-reservation-per-key is written revoked instead (see the module
    /// comment). `epoch` is the settlement epoch read before the batch was
    /// read from the stream; if a reconcile has started a newer one since,
    /// nothing is written (`Fenced`).
    pub async fn settle(
        &self,
        sale_id: Uuid,
        batch: &[StreamEntry],
        epoch: u64,
    ) -> Result<Settled, LedgerError> {
        let mut entries: Vec<StreamEntry> = Vec::with_capacity(batch.len());
        for e in batch {
            if e.sale_id == sale_id && !entries.iter().any(|x| x.reservation_id == e.reservation_id)
            {
                entries.push(e.clone());
            }
        }
        let sale_key = keys::sale(sale_id);
        let totals_key = keys::settle_totals(sale_id);
        let releases_keys = keys::all_release_totals(sale_id);
        let epoch_key = keys::epoch(sale_id);
        let mut read_keys = vec![sale_key.clone(), totals_key.clone(), epoch_key.clone()];
        read_keys.extend(entries.iter().map(|e| keys::reservation(e.reservation_id)));
        read_keys.extend(
            entries
                .iter()
                .map(|e| keys::idempotency(sale_id, &e.user_id, &e.idempotency_key)),
        );
        let mut users: Vec<&str> = entries.iter().map(|e| e.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        read_keys.extend(users.iter().map(|u| keys::buyer(sale_id, u)));
        read_keys.sort_unstable();
        read_keys.dedup();
        let replays_in_batch = batch.len() - entries.len();
        // The release totals are read unguarded: see `sale_held` below.
        let unguarded = releases_keys.clone();
        transact_unguarded_with(&*self.store, read_keys, unguarded, move |reads| {
            if read::<u64>(reads, &epoch_key)?.unwrap_or(0) != epoch {
                return Err(LedgerError::Fenced { sale: sale_id });
            }
            let sale = read::<Sale>(reads, &sale_key)?.ok_or_else(|| LedgerError::Corrupt {
                key: String::from_utf8_lossy(&sale_key).into_owned(),
                reason: "reservations of a sale the ledger does not have".into(),
            })?;
            let mut totals = settle_totals(reads, &totals_key)?;
            // Read unguarded and never written here, so a release does not
            // conflict with a settlement. A release committed after this
            // read leaves `sale_held` higher than it is, which can only
            // refuse more, never let more through; and a released unit is
            // on sale again only once its release committed, so a
            // reservation of it is settled by a transaction that began after
            // that commit and reads it.
            let released = summed_release_totals(reads, &releases_keys)?.released;
            let mut sale_held = totals.settled - released;
            let mut held: HashMap<&str, i64> = HashMap::new();
            // Keys given a reservation by this batch, before its writes land.
            let mut keyed: HashMap<Key, Uuid> = HashMap::new();
            let mut writes = Vec::new();
            let mut settled = Settled {
                replayed: replays_in_batch,
                ..Settled::default()
            };
            let now = OffsetDateTime::now_utc();
            for e in &entries {
                let rkey = keys::reservation(e.reservation_id);
                if let Some(earlier) = read::<ReservationRecord>(reads, &rkey)? {
                    settled.replayed += 1;
                    if let Some(refusal) = earlier.refusal {
                        settled.revoked_earlier.push((e.reservation_id, refusal));
                    }
                    continue;
                }
                let ikey = keys::idempotency(sale_id, &e.user_id, &e.idempotency_key);
                let first = match keyed.get(&ikey) {
                    Some(id) => Some(*id),
                    None => read::<Uuid>(reads, &ikey)?,
                };
                let user_held = match held.get(e.user_id.as_str()) {
                    Some(h) => *h,
                    None => read_i64(reads, &keys::buyer(sale_id, &e.user_id))?,
                };
                // Held units never exceed the stock. Units on their way
                // back (`returning`) are nobody's: the front may have them
                // on sale already (a release gives them back before its
                // last ledger step), so a buyer it granted one to holds it.
                let refusal = match first {
                    Some(first) if first != e.reservation_id => {
                        Some(Refusal::DuplicateKey { first })
                    }
                    _ if sale_held + e.quantity > sale.stock => Some(Refusal::SoldOut),
                    _ if user_held + e.quantity > sale.per_user_limit => {
                        Some(Refusal::LimitExceeded)
                    }
                    _ => None,
                };
                let record = ReservationRecord {
                    id: e.reservation_id,
                    sale_id,
                    user_id: e.user_id.clone(),
                    quantity: e.quantity,
                    idempotency_key: e.idempotency_key.clone(),
                    status: if refusal.is_some() {
                        ReservationStatus::Revoked
                    } else {
                        ReservationStatus::Held
                    },
                    created_at_ms: e.created_at_ms,
                    settled_at: now,
                    refusal,
                    traceparent: e.traceparent.clone(),
                };
                writes.push(Write::Put(rkey, encode(&record)));
                writes.push(Write::Put(
                    keys::sale_reservation(sale_id, e.reservation_id),
                    Vec::new(),
                ));
                if first.is_none() {
                    // The key's answer from now on, whatever the front forgets:
                    // this reservation, held or revoked.
                    writes.push(Write::Put(ikey.clone(), encode(&e.reservation_id)));
                    keyed.insert(ikey, e.reservation_id);
                }
                if let Some(refusal) = refusal {
                    totals.revoked += e.quantity;
                    settled.revoked.push((e.reservation_id, refusal));
                    continue;
                }
                // The order is made from the outbox after the commit
                // (step 12), so a slow or absent order service never
                // holds settlement up.
                writes.push(Write::Put(keys::order_outbox(e.reservation_id), Vec::new()));
                held.insert(e.user_id.as_str(), user_held + e.quantity);
                sale_held += e.quantity;
                totals.settled += e.quantity;
                totals.reservations += 1;
                settled.new += 1;
                settled.units += e.quantity;
            }
            if settled.new > 0 || !settled.revoked.is_empty() {
                for (user, units) in &held {
                    writes.push(Write::Put(keys::buyer(sale_id, user), encode(units)));
                }
                writes.push(Write::Put(totals_key.clone(), encode(&totals)));
                // Written back unchanged, so on TiKV a concurrent bump is a
                // write conflict, and the retry sees the new epoch.
                writes.push(Write::Put(epoch_key.clone(), encode(&epoch)));
            }
            Ok((writes, settled))
        })
        .await
    }

    /// Up to `limit` settled reservations whose orders are not made yet,
    /// oldest id first.
    pub async fn order_outbox(&self, limit: usize) -> Result<Vec<ReservationRecord>, LedgerError> {
        let pairs = self
            .store
            .scan(keys::ORDER_OUTBOX_PREFIX, None, limit)
            .await?;
        let ids: Vec<Uuid> = pairs
            .iter()
            .filter_map(|(k, _)| keys::reservation_of(keys::ORDER_OUTBOX_PREFIX, k))
            .collect();
        let record_keys: Vec<Key> = ids.iter().map(|id| keys::reservation(*id)).collect();
        let reads = self.store.get_many(record_keys.clone()).await?;
        let mut out = Vec::with_capacity(ids.len());
        for key in &record_keys {
            if let Some(record) = read::<ReservationRecord>(&reads, key)? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Takes reservations out of the order outbox (their orders exist).
    pub async fn orders_made(&self, ids: &[Uuid]) -> Result<(), LedgerError> {
        let deletes: Vec<Key> = ids.iter().map(|id| keys::order_outbox(*id)).collect();
        transact_with(&*self.store, Vec::new(), move |_| {
            Ok((deletes.iter().cloned().map(Write::Delete).collect(), ()))
        })
        .await
    }

    pub async fn reservation(&self, id: Uuid) -> Result<Option<ReservationRecord>, LedgerError> {
        let key = keys::reservation(id);
        let reads = self.store.get_many(vec![key.clone()]).await?;
        read(&reads, &key)
    }

    /// First step of a release: marks a held reservation releasing and moves
    /// its units out of the buyer's and the sale's held counts.
    pub async fn begin_release(&self, id: Uuid) -> Result<ReleaseStep, LedgerError> {
        let Some(found) = self.reservation(id).await? else {
            return Ok(ReleaseStep::NotFound);
        };
        let rkey = keys::reservation(id);
        let releases_key = keys::release_totals(found.sale_id, id);
        let buyer_key = keys::buyer(found.sale_id, &found.user_id);
        let read_keys = vec![rkey.clone(), releases_key.clone(), buyer_key.clone()];
        transact_with(&*self.store, read_keys, move |reads| {
            let Some(mut record) = read::<ReservationRecord>(reads, &rkey)? else {
                return Ok((Vec::new(), ReleaseStep::NotFound));
            };
            match record.status {
                ReservationStatus::Released => {
                    Ok((Vec::new(), ReleaseStep::AlreadyReleased(record)))
                }
                ReservationStatus::Releasing => Ok((Vec::new(), ReleaseStep::Releasing(record))),
                ReservationStatus::Revoked => Ok((Vec::new(), ReleaseStep::Revoked(record))),
                ReservationStatus::Held => {
                    let mut totals =
                        read::<ReleaseTotals>(reads, &releases_key)?.unwrap_or_default();
                    let held = read_i64(reads, &buyer_key)? - record.quantity;
                    totals.released += record.quantity;
                    totals.returning += record.quantity;
                    record.status = ReservationStatus::Releasing;
                    let buyer_write = if held > 0 {
                        Write::Put(buyer_key.clone(), encode(&held))
                    } else {
                        Write::Delete(buyer_key.clone())
                    };
                    let writes = vec![
                        Write::Put(rkey.clone(), encode(&record)),
                        Write::Put(releases_key.clone(), encode(&totals)),
                        buyer_write,
                    ];
                    Ok((writes, ReleaseStep::Releasing(record)))
                }
            }
        })
        .await
    }

    /// Last step of a release, once the units are back in the front.
    pub async fn finish_release(&self, id: Uuid, sale_id: Uuid) -> Result<(), LedgerError> {
        self.finish_releases(sale_id, vec![id]).await
    }

    /// Marks releasing reservations released (their units are back on sale).
    pub async fn finish_releases(&self, sale_id: Uuid, ids: Vec<Uuid>) -> Result<(), LedgerError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut read_keys: Vec<Key> = ids
            .iter()
            .map(|id| keys::release_totals(sale_id, *id))
            .collect();
        read_keys.sort_unstable();
        read_keys.dedup();
        read_keys.extend(ids.iter().map(|id| keys::reservation(*id)));
        transact_with(&*self.store, read_keys, move |reads| {
            // Units now back on sale, per shard of the release totals.
            let mut returned: HashMap<Key, i64> = HashMap::new();
            let mut writes = Vec::new();
            for id in &ids {
                let rkey = keys::reservation(*id);
                if let Some(mut record) = read::<ReservationRecord>(reads, &rkey)?
                    && record.status == ReservationStatus::Releasing
                    && record.sale_id == sale_id
                {
                    record.status = ReservationStatus::Released;
                    *returned
                        .entry(keys::release_totals(sale_id, *id))
                        .or_default() += record.quantity;
                    writes.push(Write::Put(rkey, encode(&record)));
                }
            }
            for (shard, units) in returned {
                let mut totals = read::<ReleaseTotals>(reads, &shard)?.unwrap_or_default();
                totals.returning -= units;
                writes.push(Write::Put(shard, encode(&totals)));
            }
            Ok((writes, ()))
        })
        .await
    }

    /// Everything reconcile rebuilds the front from.
    pub async fn snapshot(&self, sale_id: Uuid) -> Result<Option<SaleSnapshot>, LedgerError> {
        let Some((sale, counts)) = self.sale(sale_id).await? else {
            return Ok(None);
        };
        let mut buyers = Vec::new();
        let buyer_prefix = keys::buyer_prefix(sale_id);
        self.scan_all(&buyer_prefix, |k, v| {
            let units: i64 = decode(k, v)?;
            if units > 0 {
                buyers.push((keys::buyer_of(&buyer_prefix, k), units));
            }
            Ok(())
        })
        .await?;
        let mut ids = Vec::new();
        let index_prefix = keys::sale_reservation_prefix(sale_id);
        self.scan_all(&index_prefix, |k, _| {
            if let Some(id) = keys::reservation_of(&index_prefix, k) {
                ids.push(id);
            }
            Ok(())
        })
        .await?;
        let mut reservations = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(SCAN_PAGE) {
            let chunk_keys: Vec<Key> = chunk.iter().map(|id| keys::reservation(*id)).collect();
            let reads = self.store.get_many(chunk_keys.clone()).await?;
            for key in &chunk_keys {
                if let Some(r) = read::<ReservationRecord>(&reads, key)? {
                    reservations.push(r);
                }
            }
        }
        Ok(Some(SaleSnapshot {
            sale,
            counts,
            buyers,
            reservations,
        }))
    }

    async fn scan_all(
        &self,
        prefix: &[u8],
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), LedgerError>,
    ) -> Result<(), LedgerError> {
        let mut after: Option<Key> = None;
        loop {
            let page = self.store.scan(prefix, after.as_deref(), SCAN_PAGE).await?;
            for (k, v) in &page {
                each(k, v)?;
            }
            if page.len() < SCAN_PAGE {
                return Ok(());
            }
            after = page.last().map(|(k, _)| k.clone());
        }
    }
}
