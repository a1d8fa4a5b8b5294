//! Settlement (step 11 of the purchase path): per-sale workers read the
//! sale's reservation stream through a consumer group, write each batch in
//! one ledger transaction, then acknowledge it. A crashed worker's entries
//! stay pending in the group: a restarted worker re-reads its own, and any
//! worker claims entries idle longer than `settle_claim_idle`. The ledger
//! write is idempotent by reservation id, so a replay counts nothing twice.
//!
//! Durable acknowledgement: a purchase waits on `Waiters` until the batch
//! holding its reservation committed (or, when another replica settled it,
//! until the ledger shows it), and learns the ledger's verdict: held, or
//! revoked because the stock front had granted from state it lost. A
//! revoke means the front is stale: the worker reconciles the sale.

pub mod orders;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashmall_mesh::{ApiError, trace};
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::engine::Engine;
use crate::front::StreamEntry;
use crate::ledger::{LedgerError, Settled, Verdict};
use crate::sale::LiveSale;

const SHARDS: usize = 32;
/// Settled verdicts remembered per shard (`Waiters::verdict`): 32 × 4,096
/// reservations, a few MB; a full shard starts over.
const SETTLED_PER_SHARD: usize = 4096;

/// What a waiting purchase is woken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Its reservation is in the ledger: the ledger's verdict.
    Settled(Verdict),
    /// A reconcile drained the sale's stream without meeting it: the stock
    /// front lost it before settlement (a restart or a failover).
    Lost,
}

/// A waiting purchase: its sale, its wake-up, its trace.
type Slot = (Uuid, oneshot::Sender<Wake>, Option<String>);

/// Purchases waiting for their reservation to be durable, by reservation id
/// (with the sale), and the verdicts of the reservations this replica's
/// workers settled. Sharded so concurrent purchases rarely meet on one lock.
pub struct Waiters {
    shards: Vec<Mutex<HashMap<Uuid, Slot>>>,
    /// The ledger's verdict for each reservation a batch here committed, so
    /// a replayed key is answered without reading the ledger (a round trip
    /// to TiKV, or a blocking read of the embedded store). A verdict never
    /// changes once committed (a release keeps the reservation held, no
    /// reservation is deleted), so an entry never goes stale; one this
    /// replica did not settle, or has forgotten, is read from the ledger.
    verdicts: Vec<Mutex<HashMap<Uuid, Verdict>>>,
}

impl Default for Waiters {
    fn default() -> Self {
        Waiters {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            verdicts: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn shard_of(id: &Uuid) -> usize {
    (id.as_u128() as usize) % SHARDS
}

impl Waiters {
    fn shard(&self, id: &Uuid) -> std::sync::MutexGuard<'_, HashMap<Uuid, Slot>> {
        self.shards[shard_of(id)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The verdict of a reservation a batch here committed, if remembered.
    pub fn verdict(&self, id: Uuid) -> Option<Verdict> {
        self.verdicts[shard_of(&id)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }

    fn remember(&self, id: Uuid, verdict: Verdict) {
        let mut shard = self.verdicts[shard_of(&id)]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if shard.len() >= SETTLED_PER_SHARD {
            shard.clear();
        }
        shard.insert(id, verdict);
    }

    /// Registers the purchase of reservation `id`; `traceparent` names
    /// its span, for the settlement span to link to.
    pub fn register(
        &self,
        sale_id: Uuid,
        id: Uuid,
        traceparent: Option<String>,
    ) -> oneshot::Receiver<Wake> {
        let (tx, rx) = oneshot::channel();
        self.shard(&id).insert(id, (sale_id, tx, traceparent));
        rx
    }

    /// The trace of the purchase waiting on `id`, if it waits here.
    pub fn traceparent(&self, id: Uuid) -> Option<String> {
        self.shard(&id).get(&id).and_then(|(_, _, t)| t.clone())
    }

    /// Wakes, as lost, every purchase of `sale_id` still waiting here: to
    /// be called by a reconcile once it drained the sale's stream while
    /// purchases were suspended, when whatever is still awaited can no
    /// longer reach the ledger. Returns how many.
    pub fn lose_sale(&self, sale_id: Uuid) -> usize {
        let mut lost = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<Uuid> = shard
                .iter()
                .filter(|(_, (sale, _, _))| *sale == sale_id)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some((_, tx, _)) = shard.remove(&id) {
                    lost += usize::from(tx.send(Wake::Lost).is_ok());
                }
            }
        }
        lost
    }

    pub fn forget(&self, id: Uuid) {
        self.shard(&id).remove(&id);
    }

    /// Records the verdicts of a batch of `sale_id` the ledger committed and
    /// wakes the purchases waiting on them, each with its verdict (recorded
    /// first: a replay arriving after the answer finds it).
    pub fn notify(&self, sale_id: Uuid, batch: &[StreamEntry], settled: &Settled) {
        for e in batch {
            let verdict = settled
                .revoked
                .iter()
                .chain(&settled.revoked_earlier)
                .find(|(id, _)| *id == e.reservation_id)
                .map_or(Verdict::Held, |(_, refusal)| Verdict::Revoked(*refusal));
            // The ledger settles a sale's own entries only.
            if e.sale_id == sale_id {
                self.remember(e.reservation_id, verdict);
            }
            if let Some((_, tx, _)) = self.shard(&e.reservation_id).remove(&e.reservation_id) {
                let _ = tx.send(Wake::Settled(verdict));
            }
        }
    }
}

/// Forgets a waiter when the purchase that registered it ends, however it
/// ends (a client that disconnects cancels the request future).
pub struct ForgetOnDrop<'a> {
    pub waiters: &'a Waiters,
    pub id: Uuid,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.waiters.forget(self.id);
    }
}

/// The ledger's verdict on a reservation, once it has one: remembered
/// from a batch this replica committed, or read from the ledger.
pub async fn decided(engine: &Engine, id: Uuid) -> Result<Option<Verdict>, LedgerError> {
    if let Some(verdict) = engine.waiters.verdict(id) {
        return Ok(Some(verdict));
    }
    Ok(engine.ledger.reservation(id).await?.map(|r| r.verdict()))
}

/// How often a waiting purchase also asks the ledger (for a reservation
/// that another replica's worker settles).
const LEDGER_POLL: Duration = Duration::from_millis(200);

/// Waits until a reservation this request just made is in the ledger;
/// the ledger's verdict.
pub async fn wait_durable(
    engine: &Engine,
    id: Uuid,
    mut notified: oneshot::Receiver<Wake>,
) -> Result<Verdict, ApiError> {
    let deadline = tokio::time::Instant::now() + engine.config.durable_ack_timeout;
    loop {
        tokio::select! {
            result = &mut notified => {
                match result {
                    Ok(Wake::Settled(verdict)) => return Ok(verdict),
                    // Another replica may have settled it just before
                    // the drain: the ledger says.
                    Ok(Wake::Lost) => return decided(engine, id).await?.ok_or_else(lost),
                    // The sender went away (a claim by another replica): poll.
                    Err(_) => return wait_durable_existing(engine, id).await,
                }
            }
            _ = tokio::time::sleep(LEDGER_POLL) => {
                if let Some(verdict) = decided(engine, id).await? {
                    engine.waiters.forget(id);
                    return Ok(verdict);
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                engine.waiters.forget(id);
                return Err(not_durable_yet());
            }
        }
    }
}

/// Waits until an earlier reservation (a replayed key) is in the ledger;
/// the ledger's verdict.
pub async fn wait_durable_existing(engine: &Engine, id: Uuid) -> Result<Verdict, ApiError> {
    let deadline = Instant::now() + engine.config.durable_ack_timeout;
    loop {
        if let Some(verdict) = decided(engine, id).await? {
            return Ok(verdict);
        }
        if Instant::now() >= deadline {
            return Err(not_durable_yet());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lost() -> ApiError {
    ApiError::unavailable(
        "the stock front lost this reservation before it reached the ledger (Redis restarted or failed over); retry with the same Idempotency-Key",
    )
}

fn not_durable_yet() -> ApiError {
    ApiError::unavailable(
        "the reservation is made but not yet durable; retry with the same Idempotency-Key",
    )
}

/// Settles one batch: ledger transaction, then acknowledgement, then the
/// waiting purchases are answered.
/// `epoch` is the sale's settlement epoch read before `batch` was read
/// from the stream.
pub async fn settle_batch(
    engine: &Engine,
    sale_id: Uuid,
    batch: &[StreamEntry],
    epoch: u64,
) -> Result<Settled, String> {
    if batch.is_empty() {
        return Ok(Settled::default());
    }
    let started = Instant::now();
    // One span per batch, linked to the purchases it settles (a batch
    // serves many traces, so it is a child of none).
    let span = tracing::info_span!(
        "settle",
        otel.name = "engine settle",
        sale_id = %sale_id,
        reservations = batch.len(),
    );
    let traced: Vec<StreamEntry>;
    let batch = if trace::enabled() {
        traced = batch
            .iter()
            .map(|e| StreamEntry {
                traceparent: engine.waiters.traceparent(e.reservation_id),
                ..e.clone()
            })
            .collect();
        for e in &traced {
            if let Some(parent) = &e.traceparent {
                trace::link(
                    &span,
                    parent,
                    "reservation_id",
                    e.reservation_id.to_string(),
                );
            }
        }
        &traced[..]
    } else {
        batch
    };
    // A crash here leaves the batch in the stream, pending: it is replayed.
    crash_point("settle-before-commit");
    let settled = engine
        .ledger
        .settle(sale_id, batch, epoch)
        .instrument(span.clone())
        .await
        .map_err(|e| e.to_string())?;
    // A crash here replays a committed batch: the ledger skips it.
    crash_point("settle-before-ack");
    engine
        .front
        .ack(sale_id, batch)
        .instrument(span)
        .await
        .map_err(|e| e.to_string())?;
    engine.waiters.notify(sale_id, batch, &settled);
    if settled.new > 0 {
        engine.orders_wake.notify_one();
    }
    for (id, refusal) in &settled.revoked {
        metrics::counter!("flashmall_engine_revoked_reservations_total", "reason" => refusal.as_str())
            .increment(1);
        tracing::warn!(sale_id = %sale_id, reservation_id = %id, reason = refusal.as_str(), "the ledger revoked a reservation the stock front granted");
    }
    metrics::histogram!("flashmall_engine_settle_batch_size").record(batch.len() as f64);
    metrics::histogram!("flashmall_engine_settle_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("flashmall_engine_settled_reservations_total").increment(settled.new as u64);
    if let Some(oldest) = batch.iter().map(|e| e.created_at_ms).min() {
        let lag = flashmall_mesh::now_ms().saturating_sub(oldest) as f64 / 1000.0;
        metrics::histogram!("flashmall_engine_settle_lag_seconds").record(lag);
    }
    Ok(settled)
}

/// Aborts the process when the named failpoint is configured (crash tests
/// set `FAILPOINTS=settle-before-commit=return`). Compiled only with the
/// `failpoints` feature; without it, nothing.
#[cfg(feature = "failpoints")]
fn crash_point(name: &str) {
    if fail::eval(name, |_| ()).is_some() {
        // Straight to stderr: the log writer's queue dies with the process.
        eprintln!("failpoint {name} hit, aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
fn crash_point(_name: &str) {}

/// Starts the settlement worker of one sale.
pub fn spawn_worker(engine: Arc<Engine>, live: Arc<LiveSale>) {
    tokio::spawn(async move {
        let _running = Running::new(&engine);
        worker(Arc::clone(&engine), live).await
    });
}

/// Counts a running worker (for metrics and tests).
struct Running<'a>(&'a Engine);

impl<'a> Running<'a> {
    fn new(engine: &'a Engine) -> Self {
        let n = engine
            .workers
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        metrics::gauge!("flashmall_engine_settlement_workers").set(n as f64);
        Running(engine)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let n = self
            .0
            .workers
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
            - 1;
        metrics::gauge!("flashmall_engine_settlement_workers").set(n as f64);
    }
}

/// True once the sale ended long enough ago and its stream is empty: no
/// reservation can come any more, so its worker may stop.
async fn retired(engine: &Engine, live: &LiveSale) -> bool {
    let over =
        time::OffsetDateTime::now_utc() >= live.sale.ends_at + engine.config.settle_retire_after;
    over && engine
        .front
        .backlog(live.sale.id)
        .await
        .is_ok_and(|n| n == 0)
}

async fn worker(engine: Arc<Engine>, live: Arc<LiveSale>) {
    let sale_id = live.sale.id;
    let batch_size = engine.config.settle_batch_size;
    let mut own_pending_done = false;
    let mut last_claim = Instant::now();
    let mut failures: u32 = 0;
    // Read once, and again after any failed round: a reconcile's new epoch
    // fences the next batch (a failed round), which makes the worker read
    // it anew before it reads the stream again.
    let mut epoch: Option<u64> = None;
    loop {
        if engine.shutdown.is_triggered() {
            return;
        }
        let round = async {
            let _guard = live.settle_lock.lock().await;
            // The epoch (and the stream) before any batch: a reconcile that
            // starts after this read fences the batch off.
            let epoch = match epoch {
                Some(e) => e,
                None => {
                    engine
                        .front
                        .ensure_stream(sale_id)
                        .await
                        .map_err(|e| e.to_string())?;
                    let e = engine
                        .ledger
                        .epoch(sale_id)
                        .await
                        .map_err(|e| e.to_string())?;
                    epoch = Some(e);
                    e
                }
            };
            let batch = if !own_pending_done {
                let own = engine
                    .front
                    .read_own_pending(sale_id, &engine.consumer, batch_size)
                    .await
                    .map_err(|e| e.to_string())?;
                if own.is_empty() {
                    own_pending_done = true;
                }
                own
            } else {
                let mut batch = engine
                    .front
                    .read_new(sale_id, &engine.consumer, batch_size)
                    .await
                    .map_err(|e| e.to_string())?;
                if batch.is_empty() && last_claim.elapsed() >= engine.config.settle_claim_idle / 2 {
                    last_claim = Instant::now();
                    batch = engine
                        .front
                        .claim_idle(
                            sale_id,
                            &engine.consumer,
                            engine.config.settle_claim_idle,
                            batch_size,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                batch
            };
            let settled = settle_batch(&engine, sale_id, &batch, epoch).await?;
            if !settled.revoked.is_empty() {
                // The front granted from state it lost: rebuild it from the
                // ledger (purchases answer 503 meanwhile).
                engine.reconcile_soon(&live);
            }
            if let Ok(backlog) = engine.front.backlog(sale_id).await {
                metrics::gauge!("flashmall_engine_settlement_backlog", "sale" => sale_id.to_string()).set(backlog as f64);
            }
            Ok::<usize, String>(batch.len())
        };
        match round.await {
            Ok(n) => {
                failures = 0;
                if n == 0 && own_pending_done {
                    if retired(&engine, &live).await {
                        tracing::debug!(sale_id = %sale_id, "sale ended and settled; worker stops");
                        metrics::gauge!("flashmall_engine_settlement_backlog", "sale" => sale_id.to_string()).set(0.0);
                        return;
                    }
                    tokio::select! {
                        _ = live.settle_wake.notified() => {}
                        _ = tokio::time::sleep(engine.config.settle_idle_poll) => {}
                        _ = engine.shutdown.wait() => return,
                    }
                }
            }
            Err(e) => {
                // The failed batch stays pending under this consumer: read
                // it again first, rather than waiting for the idle claim.
                own_pending_done = false;
                epoch = None;
                failures = failures.saturating_add(1);
                metrics::counter!("flashmall_engine_settle_failures_total").increment(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(sale_id = %sale_id, error = %e, failures, "settlement round failed; retrying");
                }
                let backoff = Duration::from_millis(10u64 << failures.min(7));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = engine.shutdown.wait() => return,
                }
            }
        }
    }
}

/// On shutdown: settles what this replica's sales still have in their
/// streams, so a clean stop leaves no backlog (a crash is covered by replay).
pub async fn drain_on_shutdown(engine: &Engine) {
    for live in engine.sales.all() {
        let _guard = live.settle_lock.lock().await;
        let Ok(epoch) = engine.ledger.epoch(live.sale.id).await else {
            continue;
        };
        for _ in 0..64 {
            let batch = match engine
                .front
                .read_new(
                    live.sale.id,
                    &engine.consumer,
                    engine.config.settle_batch_size,
                )
                .await
            {
                Ok(batch) if !batch.is_empty() => batch,
                _ => break,
            };
            if let Err(e) = settle_batch(engine, live.sale.id, &batch, epoch).await {
                tracing::warn!(sale_id = %live.sale.id, error = %e, "shutdown drain stopped");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Refusal;

    fn entry(sale_id: Uuid) -> StreamEntry {
        StreamEntry {
            entry_id: "1-0".into(),
            reservation_id: Uuid::now_v7(),
            sale_id,
            user_id: "u".into(),
            quantity: 1,
            idempotency_key: "k".into(),
            created_at_ms: 0,
            traceparent: None,
        }
    }

    #[test]
    fn a_committed_batch_wakes_its_waiters_and_its_verdicts_stay_known() {
        let waiters = Waiters::default();
        let sale = Uuid::now_v7();
        let (held, revoked, foreign) = (entry(sale), entry(sale), entry(Uuid::now_v7()));
        let mut woken = waiters.register(sale, held.reservation_id, None);
        let settled = Settled {
            new: 1,
            units: 1,
            revoked: vec![(revoked.reservation_id, Refusal::SoldOut)],
            ..Settled::default()
        };
        let batch = [held.clone(), revoked.clone(), foreign.clone()];
        assert_eq!(waiters.verdict(held.reservation_id), None);
        waiters.notify(sale, &batch, &settled);
        assert_eq!(woken.try_recv(), Ok(Wake::Settled(Verdict::Held)));
        assert_eq!(waiters.verdict(held.reservation_id), Some(Verdict::Held));
        assert_eq!(
            waiters.verdict(revoked.reservation_id),
            Some(Verdict::Revoked(Refusal::SoldOut))
        );
        // Another sale's entry is not this batch's to decide.
        assert_eq!(waiters.verdict(foreign.reservation_id), None);
    }

    #[test]
    fn remembered_verdicts_stay_bounded() {
        let waiters = Waiters::default();
        let sale = Uuid::now_v7();
        let batch: Vec<StreamEntry> = (0..SHARDS * SETTLED_PER_SHARD * 2)
            .map(|_| entry(sale))
            .collect();
        waiters.notify(sale, &batch, &Settled::default());
        let held: usize = waiters
            .verdicts
            .iter()
            .map(|s| s.lock().unwrap().len())
            .sum();
        assert!(held <= SHARDS * SETTLED_PER_SHARD, "{held} verdicts held");
        // The last one settled is always known.
        let last = batch.last().unwrap().reservation_id;
        assert_eq!(waiters.verdict(last), Some(Verdict::Held));
    }
}
