//! Reconcile: rebuilds a sale's stock front from the ledger and measures
//! how far the front had drifted from it.
//!
//! Order matters: the front's stock is taken away first, and its counts
//! with it, at one instant (purchases answer 503 and give-backs wait for
//! the few milliseconds a rebuild takes), then every reservation still in
//! the stream is settled (including entries pending in other consumers),
//! then the front is rebuilt from the ledger's reservation records, stock
//! last. With no purchase running and the stream drained, the records are
//! the whole truth, each counted by its own status, so releases that run
//! on meanwhile (on other replicas) move one record at a time and never
//! make the counts disagree. Runs at start-up, on the admin API, on
//! `flashmall engine reconcile`, and by itself when a purchase finds the
//! sale missing from the front (a flush, a failover to an empty replica).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flashmall_mesh::{ApiError, ErrorCode};
use uuid::Uuid;

use crate::engine::Engine;
use crate::front::{IdemRecord, REBUILD_LEASE, Rebuild, StockFront, idempotency_field};
use crate::ledger::{Refusal, ReservationRecord, ReservationStatus};
use crate::sale::LiveSale;
use crate::settle;
use flashmall_mesh::now_ms;

/// What reconcile found and did for one sale.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SaleReport {
    pub sale_id: Uuid,
    pub stock: i64,
    /// False when the front had lost the sale (flushed, never warmed).
    pub front_present: bool,
    pub remaining_before: i64,
    pub pending_before: i64,
    /// stock − what the front and the ledger account for: the front's
    /// `remaining` when the rebuild took it away, plus the units the ledger
    /// holds or is giving back (those the front already counted once). Non-zero
    /// means the front had drifted from the ledger: positive, it had lost
    /// units (granted some the ledger refused, lost a give-back); negative,
    /// it had units too many (lost a sale in a failover).
    pub drift: i64,
    /// Reservations the drain settled (they were still in the stream).
    pub settled_during_reconcile: usize,
    /// What the rebuild put on sale: the stock less the units held.
    pub remaining: i64,
    /// Units of held reservations.
    pub settled: i64,
    /// Units of released reservations (on their way back or back).
    pub released: i64,
    /// Units of releases this reconcile finished (they were on their way back).
    pub returning: i64,
    /// The rebuilt front and the ledger add up to the stock, none of it
    /// oversold (`remaining` + `settled` = `stock`, `remaining` ≥ 0).
    pub conserved: bool,
}

/// Reconciles every sale the ledger knows.
pub async fn reconcile_all(engine: &Arc<Engine>) -> Result<Vec<SaleReport>, ApiError> {
    let mut reports = Vec::new();
    for sale in engine.ledger.sales().await? {
        if let Some(live) = engine.live_sale(sale.id).await? {
            reports.push(reconcile_sale(engine, &live).await?);
        }
    }
    Ok(reports)
}

/// Reconciles one sale by id.
pub async fn reconcile_one(engine: &Arc<Engine>, raw_id: &str) -> Result<SaleReport, ApiError> {
    let id = Uuid::try_parse(raw_id)
        .map_err(|_| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
    let live = engine
        .live_sale(id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
    reconcile_sale(engine, &live).await
}

/// Starts a reconcile of `live` in the background unless one runs.
pub fn spawn(engine: &Arc<Engine>, live: &Arc<LiveSale>) {
    if live
        .reconciling
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    let engine = Arc::clone(engine);
    let live = Arc::clone(live);
    tokio::spawn(async move {
        match reconcile_sale(&engine, &live).await {
            Ok(report) => {
                tracing::info!(sale_id = %report.sale_id, drift = report.drift, "sale reconciled")
            }
            Err(e) => {
                tracing::warn!(sale_id = %live.sale.id, error = %e, "background reconcile failed")
            }
        }
    });
}

/// How often the front's generation (Redis `run_id` and replication id)
/// is read. A restart or a failover is then noticed within about this,
/// before any purchase or settlement has to meet what it lost.
pub const GENERATION_POLL: Duration = Duration::from_secs(1);

/// Watches the stock front's generation and reconciles every sale when it
/// changes: a Redis that restarted (from an AOF written every second, an
/// older RDB) or a replica promoted by a failover may have lost writes,
/// and a rebuild from the ledger puts back what it lost (units sold or
/// returned, buyers' counts, keys). The settlement transaction refuses
/// whatever a stale front grants meanwhile.
pub fn watch_generation(engine: &Arc<Engine>) {
    let engine = Arc::clone(engine);
    tokio::spawn(async move {
        // What the engine started on (its start-up reconciled from it).
        let mut known: Option<String> = engine.front.generation().await.ok().flatten();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(GENERATION_POLL) => {}
                _ = engine.shutdown.wait() => return,
            }
            let now = match engine.front.generation().await {
                Ok(Some(now)) => now,
                Ok(None) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "stock front generation not read");
                    continue;
                }
            };
            if let Some(before) = known.as_ref().filter(|before| **before != now) {
                metrics::counter!("flashmall_engine_front_generation_changes_total").increment(1);
                tracing::warn!(before = %before, now = %now, "the stock front restarted or failed over; reconciling every sale");
                // The change counts as handled only once every sale is
                // rebuilt: a rebuild that fails (the new primary still
                // loading, say) is tried again at the next poll.
                let mut rebuilt = true;
                for live in engine.sales.all() {
                    match reconcile_sale(&engine, &live).await {
                        Ok(_) => {}
                        // Another replica's rebuild of this sale stands.
                        Err(e) if e.code == ErrorCode::Conflict => {}
                        Err(e) => {
                            rebuilt = false;
                            tracing::warn!(sale_id = %live.sale.id, error = %e.message, "reconcile after a front change failed; trying again");
                        }
                    }
                }
                if !rebuilt {
                    continue;
                }
            }
            known = Some(now);
        }
    });
}

/// Clears the `reconciling` flag however the rebuild ends.
struct Running<'a>(&'a LiveSale);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.reconciling.store(false, Ordering::Release);
    }
}

/// Stops the lease's renewal when the rebuild ends, however it ends.
struct Keeper(tokio::task::JoinHandle<()>);

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the rebuild `token`'s lease every third of `lease` until it is
/// aborted, or until the lease is found lost (then the rebuild's commit
/// finds it superseded and commits nothing). A failed renewal is tried
/// again at the next turn: the lease outlives two of them.
pub(crate) async fn keep_lease(
    front: Arc<dyn StockFront>,
    sale_id: Uuid,
    token: Uuid,
    lease: Duration,
) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match front.renew(sale_id, token, lease).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(sale_id = %sale_id, "a reconcile's lease lapsed before it finished; its rebuild will commit nothing");
                return;
            }
            Err(e) => {
                tracing::warn!(sale_id = %sale_id, error = %e, "renewing a reconcile's lease failed; trying again");
            }
        }
    }
}

/// Rebuilds one sale's front from the ledger and reports drift.
pub async fn reconcile_sale(
    engine: &Arc<Engine>,
    live: &Arc<LiveSale>,
) -> Result<SaleReport, ApiError> {
    detached(engine, live, false).await
}

/// Writes a new sale's front from the ledger before it opens (a reconcile
/// whose empty front is expected, not drift).
pub async fn warm_up(engine: &Arc<Engine>, live: &Arc<LiveSale>) -> Result<SaleReport, ApiError> {
    detached(engine, live, true).await
}

/// Runs a rebuild in a task of its own: a caller that goes away (an admin
/// request the edge stopped waiting for) must not drop it between taking
/// the stock out of the front and putting it back. Dropped there, the sale
/// stayed off sale until the lease expired, and the next reconcile found no
/// front at all (the chaos run's drift after the storm).
async fn detached(
    engine: &Arc<Engine>,
    live: &Arc<LiveSale>,
    new_sale: bool,
) -> Result<SaleReport, ApiError> {
    let (engine, live) = (Arc::clone(engine), Arc::clone(live));
    tokio::spawn(async move { rebuild(&engine, &live, new_sale).await })
        .await
        .map_err(|e| ApiError::unavailable(format!("the reconcile task failed: {e}")))?
}

async fn rebuild(
    engine: &Arc<Engine>,
    live: &LiveSale,
    new_sale: bool,
) -> Result<SaleReport, ApiError> {
    // One rebuild per sale at a time here; this process's settlement waits.
    let _settling = live.settle_lock.lock().await;
    live.reconciling.store(true, Ordering::Release);
    let _running = Running(live);
    let sale_id = live.sale.id;
    let stock = live.sale.stock;
    let front = &engine.front;

    // 1. No purchase may run while the front is rebuilt, and no unit comes
    //    back: the counts taken away here are the front at one instant.
    let Some(suspended) = front.suspend(sale_id).await? else {
        // Another replica is rebuilding this sale right now; its rebuild
        // stands, and a second one would only prolong the pause.
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "a reconcile of this sale is running elsewhere; retry for a report",
        ));
    };
    let token = suspended.token;
    // The lease is renewed while this rebuild runs: one slower than a lease
    // (a loaded ledger) would otherwise lose it mid-way, be superseded, and
    // leave the next one to do the same, the sale off sale meanwhile.
    let _keeper = Keeper(tokio::spawn(keep_lease(
        Arc::clone(&engine.front),
        sale_id,
        token,
        REBUILD_LEASE,
    )));
    // Whatever fails from here on gives the lease up, so the sale is not
    // left suspended until it expires: the next purchase reconciles again.
    let rebuilt = async {
        // Batches other replicas read before this point may belong to a stream
        // that is gone (a flush): a new epoch keeps them from committing.
        let epoch = engine.ledger.bump_epoch(sale_id).await?;
        front.ensure_stream(sale_id).await?;
        // 2. Settle everything still in the stream, whoever it was delivered to.
        let mut drained = 0usize;
        let batch_size = engine.config.settle_batch_size;
        loop {
            let mut batch = front
                .claim_idle(sale_id, &engine.consumer, Duration::ZERO, batch_size)
                .await?;
            if batch.is_empty() {
                batch = front
                    .read_new(sale_id, &engine.consumer, batch_size)
                    .await?;
            }
            if batch.is_empty() {
                break;
            }
            let settled = settle::settle_batch(engine, sale_id, &batch, epoch)
                .await
                .map_err(|e| {
                    ApiError::unavailable(format!("reconcile could not settle the stream: {e}"))
                })?;
            drained += settled.new;
        }
        // Purchases here still waiting on this sale made reservations the
        // stream no longer holds (the front lost them): tell them now rather
        // than at their deadline. New purchases wait on the rebuilt front.
        let lost = engine.waiters.lose_sale(sale_id);
        if lost > 0 {
            tracing::warn!(sale_id = %sale_id, lost, "purchases whose reservations the stock front lost were told to retry");
        }
        // 3. Rebuild from the ledger's reservations, stock last.
        let snapshot = engine
            .ledger
            .snapshot(sale_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
        let holdings = Holdings::of(&snapshot.reservations);
        // Releases run on (an order expires on another replica): those
        // begun since the suspension could not give their units back, and
        // those begun before may have. Which did is the front's to say.
        let given_back = front.given_back(sale_id, &holdings.releasing).await?;
        let given_back_units: i64 = snapshot
            .reservations
            .iter()
            .filter(|r| given_back.contains(&r.id))
            .map(|r| r.quantity)
            .sum();
        let remaining = stock - holdings.held;
        // One record per key: a reservation revoked as a key's second one is
        // not that key's answer (its first is).
        let idempotency = snapshot
            .reservations
            .iter()
            .filter(|r| !matches!(r.refusal, Some(Refusal::DuplicateKey { .. })))
            .map(|r| {
                (
                    idempotency_field(&r.user_id, &r.idempotency_key),
                    IdemRecord {
                        reservation_id: r.id,
                        quantity: r.quantity,
                    },
                )
            })
            .collect();
        let rebuild = Rebuild {
            remaining,
            buyers: holdings.buyers.clone(),
            idempotency,
            returned: holdings.returned.clone(),
        };
        if !front.rebuild(sale_id, token, &rebuild).await? {
            // Another replica suspended the sale after us: its rebuild, from a
            // later snapshot, is the one that counts.
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "another reconcile of this sale started meanwhile and superseded this one; retry for a report",
            ));
        }
        Ok::<_, ApiError>((rebuild, drained, holdings, given_back_units))
    }
    .await;
    let (rebuild, drained, holdings, given_back_units) = match rebuilt {
        Ok(done) => done,
        Err(e) => {
            if let Err(abandon) = front.abandon(sale_id, token).await {
                tracing::warn!(sale_id = %sale_id, error = %abandon, "a failed reconcile could not give up its lease; it expires");
            }
            return Err(e);
        }
    };
    // Units of interrupted releases are in `remaining` now: record them returned.
    engine
        .ledger
        .finish_releases(sale_id, holdings.releasing.clone())
        .await?;

    // The front at the suspension against the ledger after the drain: a
    // unit counts once whether it was on sale (`remaining`), held, or on its
    // way back; `pending` is left out, as the drain settled every entry it
    // counted (held now, or refused: a unit the front had lost). Units of
    // releases the front had already counted are counted there only.
    let (remaining_before, pending_before) = suspended
        .counts
        .map_or((0, 0), |c| (c.remaining, c.pending));
    let drift =
        stock - (remaining_before + holdings.held + holdings.releasing_units - given_back_units);
    let conserved = rebuild.remaining >= 0 && rebuild.remaining + holdings.held == stock;
    if rebuild.remaining > 0 {
        live.clear_sold_out();
    } else {
        live.mark_sold_out(now_ms(), engine.config.sold_out_recheck);
        live.finish_refresh(Some(
            rebuild
                .idempotency
                .iter()
                .map(|(f, r)| (f.clone(), *r))
                .collect(),
        ));
    }
    let front_present = suspended.counts.is_some();
    if !new_sale && (drift != 0 || !front_present) {
        tracing::warn!(sale_id = %sale_id, drift, front_present, drained, "reconcile rebuilt a drifted front");
    }
    if !new_sale {
        metrics::counter!("flashmall_engine_reconciles_total").increment(1);
    }
    Ok(SaleReport {
        sale_id,
        stock,
        front_present,
        remaining_before,
        pending_before,
        drift,
        settled_during_reconcile: drained,
        remaining: rebuild.remaining,
        settled: holdings.held,
        released: holdings.released_units,
        returning: holdings.releasing_units,
        conserved,
    })
}

/// What a sale's reservation records hold, each counted by its own status:
/// records read at different moments still add up, one reservation at a
/// time (a release that starts between two reads moves one record, and the
/// counters, read once, could disagree with it).
struct Holdings {
    /// Units of `held` reservations.
    held: i64,
    /// Units held per buyer (non-zero only).
    buyers: Vec<(String, i64)>,
    /// Reservations whose units are back or on their way (not `held`).
    returned: Vec<Uuid>,
    /// Reservations released in the ledger whose units may not be back yet.
    releasing: Vec<Uuid>,
    releasing_units: i64,
    /// Units of `releasing` and `released` reservations.
    released_units: i64,
}

impl Holdings {
    fn of(reservations: &[ReservationRecord]) -> Self {
        let mut buyers: std::collections::BTreeMap<&str, i64> = Default::default();
        let mut h = Holdings {
            held: 0,
            buyers: Vec::new(),
            returned: Vec::new(),
            releasing: Vec::new(),
            releasing_units: 0,
            released_units: 0,
        };
        for r in reservations {
            match r.status {
                ReservationStatus::Held => {
                    h.held += r.quantity;
                    *buyers.entry(&r.user_id).or_default() += r.quantity;
                    continue;
                }
                ReservationStatus::Releasing => {
                    h.releasing.push(r.id);
                    h.releasing_units += r.quantity;
                    h.released_units += r.quantity;
                }
                ReservationStatus::Released => h.released_units += r.quantity,
                ReservationStatus::Revoked => {}
            }
            h.returned.push(r.id);
        }
        h.buyers = buyers
            .into_iter()
            .map(|(user, units)| (user.to_owned(), units))
            .collect();
        h
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a test's failed step panics the test"
    )]

    use super::*;
    use crate::config::{EngineConfig, RedisConfig};
    use crate::front::LocalFront;
    use crate::ledger::{EmbeddedLedger, Key, Ledger, LedgerError, LedgerStore, Plan, Reads};
    use crate::sale::NewSale;
    use flashmall_mesh::{IdentityKey, Shutdown};
    use std::sync::atomic::AtomicBool;
    use time::OffsetDateTime;

    /// An embedded ledger whose scans wait at a gate while it is shut: a
    /// rebuild held between taking the stock out and putting it back.
    struct GatedScans {
        inner: EmbeddedLedger,
        shut: AtomicBool,
        reached: tokio::sync::Notify,
        open: tokio::sync::Notify,
    }

    #[async_trait::async_trait]
    impl LedgerStore for GatedScans {
        fn kind(&self) -> &'static str {
            "gated"
        }

        async fn transact_unguarded(
            &self,
            keys: Vec<Key>,
            unguarded: Vec<Key>,
            plan: Plan,
        ) -> Result<(), LedgerError> {
            self.inner.transact_unguarded(keys, unguarded, plan).await
        }

        async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, LedgerError> {
            self.inner.get_many(keys).await
        }

        async fn scan(
            &self,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<(Key, Vec<u8>)>, LedgerError> {
            if self.shut.load(Ordering::Acquire) {
                let opened = self.open.notified();
                self.reached.notify_one();
                opened.await;
            }
            self.inner.scan(prefix, after, limit).await
        }
    }

    /// A reconcile whose caller goes away mid-rebuild (an admin request the
    /// edge stopped waiting for after 10 s, in the chaos run) still puts
    /// the stock back and gives its lease up. Dropped with its caller, it
    /// left the sale off sale until the lease lapsed, and the next
    /// reconcile found no front at all and reported the stock as drift.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reconcile_whose_caller_goes_away_still_puts_the_stock_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(GatedScans {
            inner: EmbeddedLedger::open(&dir.path().join("ledger.redb")).unwrap(),
            shut: AtomicBool::new(false),
            reached: tokio::sync::Notify::new(),
            open: tokio::sync::Notify::new(),
        });
        let engine = Engine::start(
            EngineConfig::default(),
            &RedisConfig::default(),
            Arc::new(LocalFront::new()),
            Ledger::new(store.clone()),
            IdentityKey::random().for_component("engine"),
            Shutdown::new(),
        )
        .await
        .unwrap();
        let now = OffsetDateTime::now_utc();
        let view = engine
            .create_sale(NewSale {
                product_id: "p-1".into(),
                price: 100,
                stock: 7,
                per_user_limit: 1,
                starts_at: crate::sale::rfc3339(now - time::Duration::seconds(1)),
                ends_at: crate::sale::rfc3339(now + time::Duration::hours(1)),
                waiting_room: None,
            })
            .await
            .unwrap();
        let live = engine.live_sale(view.sale.id).await.unwrap().unwrap();

        // The caller goes away while the rebuild waits at the gate, the
        // stock out of the front.
        store.shut.store(true, Ordering::Release);
        let reached = store.reached.notified();
        tokio::select! {
            _ = reconcile_sale(&engine, &live) => panic!("the rebuild passed a shut gate"),
            () = reached => {}
        }
        store.shut.store(false, Ordering::Release);
        store.open.notify_waiters();

        // The next reconcile runs once the first one ended (never because
        // its lease lapsed: 30 s) and finds the stock back in the front.
        let report = loop {
            match reconcile_sale(&engine, &live).await {
                Err(e) if e.code == ErrorCode::Conflict => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                done => break done.unwrap(),
            }
        };
        assert!(report.front_present, "{report:?}");
        assert_eq!(
            (report.drift, report.remaining_before),
            (0, 7),
            "{report:?}"
        );
        let lease_kept = engine.front.suspend_for(live.sale.id, REBUILD_LEASE).await;
        assert!(lease_kept.unwrap().is_some(), "the lease was given up");
    }

    /// The keeper holds a lease past its term while it runs; stopped (its
    /// reconcile ended, or crashed with its process), the lease lapses.
    #[tokio::test]
    async fn the_keeper_holds_the_lease_until_it_is_stopped() {
        let front: Arc<dyn StockFront> = Arc::new(LocalFront::new());
        let sale = Uuid::now_v7();
        // Renewed every second: 2 s of slack between two renewals.
        let lease = Duration::from_secs(3);
        let token = front
            .suspend_for(sale, lease)
            .await
            .unwrap()
            .expect("the lease is free")
            .token;
        let keeper = Keeper(tokio::spawn(keep_lease(
            Arc::clone(&front),
            sale,
            token,
            lease,
        )));
        let kept = std::time::Instant::now();
        while kept.elapsed() < lease * 2 {
            assert!(
                front.suspend_for(sale, lease).await.unwrap().is_none(),
                "taken over while its keeper ran"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(keeper);
        let mut taken = false;
        for _ in 0..400 {
            if front.suspend_for(sale, lease).await.unwrap().is_some() {
                taken = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(taken, "a lease nobody renews lapses");
        assert!(!front.renew(sale, token, lease).await.unwrap());
    }
}
