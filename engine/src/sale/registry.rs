//! The engine's in-memory view of the sales it serves: per-sale hot-path
//! state that must not cost a store round trip (the local sold-out flag and
//! its idempotency snapshot, the settlement worker's wake-up).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Mutex, Notify};
use uuid::Uuid;

use super::Sale;
use crate::front::IdemRecord;

/// One sale's live, process-local state.
pub struct LiveSale {
    pub sale: Sale,
    /// Unix milliseconds until which the sale is known sold out here.
    sold_out_until_ms: AtomicU64,
    /// Idempotency records seen when the flag was set, so a retry of a
    /// successful purchase still gets its original answer from the flag.
    idempotency: RwLock<Arc<HashMap<String, IdemRecord>>>,
    idempotency_len: AtomicI64,
    /// The most records any sold-out answer has counted.
    wanted: AtomicI64,
    refreshing: AtomicBool,
    /// Wakes this sale's settlement worker when a reservation was made here.
    pub settle_wake: Notify,
    /// Held by the settlement worker for one batch and by reconcile for the
    /// whole rebuild, so a rebuild never races this process's settlement.
    pub settle_lock: Mutex<()>,
    /// Set while a reconcile of this sale runs (one at a time per process).
    pub reconciling: AtomicBool,
}

impl LiveSale {
    pub fn new(sale: Sale) -> Self {
        LiveSale {
            sale,
            sold_out_until_ms: AtomicU64::new(0),
            idempotency: RwLock::new(Arc::new(HashMap::new())),
            idempotency_len: AtomicI64::new(-1),
            wanted: AtomicI64::new(0),
            refreshing: AtomicBool::new(false),
            settle_wake: Notify::new(),
            settle_lock: Mutex::new(()),
            reconciling: AtomicBool::new(false),
        }
    }

    /// True while the local sold-out flag is fresh.
    pub fn sold_out_here(&self, now_ms: u64) -> bool {
        now_ms < self.sold_out_until_ms.load(Ordering::Relaxed)
    }

    /// Marks the sale sold out here for `ttl`.
    pub fn mark_sold_out(&self, now_ms: u64, ttl: Duration) {
        self.sold_out_until_ms.store(
            now_ms.saturating_add(ttl.as_millis() as u64),
            Ordering::Relaxed,
        );
    }

    /// Forgets the sold-out flag (units came back).
    pub fn clear_sold_out(&self) {
        self.sold_out_until_ms.store(0, Ordering::Relaxed);
    }

    /// The original answer for an idempotency field, from the snapshot.
    pub fn replay(&self, field: &str) -> Option<IdemRecord> {
        let snapshot = self.idempotency.read().map(|s| Arc::clone(&s)).ok()?;
        snapshot.get(field).copied()
    }

    /// True when the snapshot does not hold `len` records and no refresh runs;
    /// the caller then refreshes it and calls `finish_refresh`.
    pub fn begin_refresh(&self, len: i64) -> bool {
        self.idempotency_len.load(Ordering::Acquire) != len
            && self
                .refreshing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// True when the snapshot holds at least `records` records and no
    /// reload runs: a sold-out flag may stand on it.
    pub fn snapshot_covers(&self, records: i64) -> bool {
        self.wanted.fetch_max(records, Ordering::AcqRel);
        !self.refreshing() && self.idempotency_len.load(Ordering::Acquire) >= records
    }

    /// True when a snapshot of `len` records holds every record any
    /// sold-out answer has counted so far.
    pub fn covers_wanted(&self, len: i64) -> bool {
        len >= self.wanted.load(Ordering::Acquire)
    }

    /// True while the snapshot is being reloaded.
    pub fn refreshing(&self) -> bool {
        self.refreshing.load(Ordering::Acquire)
    }

    /// Installs a reloaded snapshot; without one (the load failed) the flag
    /// is dropped, since a stale snapshot could deny a replay its answer.
    pub fn finish_refresh(&self, records: Option<HashMap<String, IdemRecord>>) {
        if records.is_none() {
            self.clear_sold_out();
        }
        if let Some(records) = records {
            let len = records.len() as i64;
            if let Ok(mut slot) = self.idempotency.write() {
                *slot = Arc::new(records);
            }
            self.idempotency_len.store(len, Ordering::Release);
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

/// The sales this process knows, by id.
#[derive(Default)]
pub struct SaleRegistry {
    // A read lock per lookup: writers only add sales, which is rare.
    sales: RwLock<HashMap<Uuid, Arc<LiveSale>>>,
}

impl SaleRegistry {
    pub fn get(&self, id: &Uuid) -> Option<Arc<LiveSale>> {
        self.sales.read().ok()?.get(id).cloned()
    }

    /// Adds a sale; returns the registered entry and whether it is new.
    pub fn insert(&self, sale: Sale) -> (Arc<LiveSale>, bool) {
        let mut sales = match self.sales.write() {
            Ok(sales) => sales,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(live) = sales.get(&sale.id) {
            return (Arc::clone(live), false);
        }
        let live = Arc::new(LiveSale::new(sale));
        sales.insert(live.sale.id, Arc::clone(&live));
        (live, true)
    }

    pub fn all(&self) -> Vec<Arc<LiveSale>> {
        self.sales
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }
}
