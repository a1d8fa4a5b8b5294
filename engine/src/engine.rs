//! The engine itself: its stores, the sales it serves, its workers, and
//! how their errors reach a caller. The purchase path (`reserve`),
//! settlement, release and reconcile act on it; `launch` serves it.

use std::sync::Arc;
use std::time::Duration;

use flashmall_mesh::{ApiError, ErrorCode, IdentityKey, Shutdown};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::config::{EngineConfig, RedisConfig};
use crate::front::{Breaker, FrontError, StockFront};
use crate::ledger::{Ledger, LedgerError, SaleCounts};
use crate::sale::{LiveSale, Sale, SaleRegistry, SaleStatus};
use crate::{reconcile, sale, settle};

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::AlreadyExists(what) => {
                ApiError::new(ErrorCode::Conflict, format!("{what} already exists"))
            }
            LedgerError::Corrupt { .. } => {
                tracing::error!(error = %e, "ledger record corrupt");
                ApiError::internal("the ledger holds a record it cannot read")
            }
            other => {
                tracing::warn!(error = %other, "ledger call failed");
                ApiError::unavailable("the ledger is unavailable, retry shortly")
            }
        }
    }
}

impl From<FrontError> for ApiError {
    fn from(e: FrontError) -> Self {
        tracing::warn!(error = %e, "stock front call failed");
        ApiError::unavailable("the stock front is unavailable, retry shortly")
    }
}

/// A sale with its live counts, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleView {
    pub sale: Sale,
    pub status: SaleStatus,
    pub remaining: i64,
    pub pending: i64,
    pub counts: SaleCounts,
}

/// The running engine: its stores, the sales it serves, and its workers.
pub struct Engine {
    pub config: EngineConfig,
    pub front: Arc<dyn StockFront>,
    pub ledger: Ledger,
    pub sales: SaleRegistry,
    pub breaker: Breaker,
    pub waiters: settle::Waiters,
    /// Deadline of one stock-front call on the purchase path.
    pub front_timeout: Duration,
    /// This replica's settlement consumer name.
    pub consumer: String,
    /// Verifies the identity the edge signed.
    pub identity: IdentityKey,
    /// Settlement workers running in this process.
    pub workers: std::sync::atomic::AtomicUsize,
    /// Wakes the order worker when settlement wrote new reservations.
    pub orders_wake: tokio::sync::Notify,
    /// Stops the engine's background workers. Triggered only after the
    /// server stopped and the streams were drained, so purchases in flight
    /// during a graceful shutdown still get their settlement.
    pub shutdown: Shutdown,
}

impl Engine {
    /// Starts the engine on the given stores: loads every sale, reconciles
    /// them (when configured) and starts their settlement workers.
    pub async fn start(
        config: EngineConfig,
        redis: &RedisConfig,
        front: Arc<dyn StockFront>,
        ledger: Ledger,
        identity: IdentityKey,
        shutdown: Shutdown,
    ) -> Result<Arc<Engine>, String> {
        let consumer = if config.instance_id.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "engine".to_owned());
            format!("{host}-{}", std::process::id())
        } else {
            config.instance_id.clone()
        };
        front
            .warm_up()
            .await
            .map_err(|e| format!("stock front warm-up failed: {e}"))?;
        let engine = Arc::new(Engine {
            breaker: Breaker::new(redis.breaker_failures, redis.breaker_cooldown),
            front_timeout: redis.command_timeout.max(Duration::from_millis(50)),
            config,
            front,
            ledger,
            sales: SaleRegistry::default(),
            waiters: settle::Waiters::default(),
            consumer,
            identity,
            workers: std::sync::atomic::AtomicUsize::new(0),
            orders_wake: tokio::sync::Notify::new(),
            shutdown,
        });
        let sales = engine
            .ledger
            .sales()
            .await
            .map_err(|e| format!("cannot list sales: {e}"))?;
        for sale in sales {
            let (live, _) = engine.sales.insert(sale);
            settle::spawn_worker(Arc::clone(&engine), Arc::clone(&live));
            // A sale the front still holds is left alone (a replica starting
            // mid-sale must not pause it); one it lost is rebuilt now.
            let lost = engine
                .front
                .counts(live.sale.id)
                .await
                .map_err(|e| format!("stock front: {e}"))?
                .is_none();
            if engine.config.reconcile_on_start && lost {
                match reconcile::reconcile_sale(&engine, &live).await {
                    Ok(_) => {}
                    Err(e) if e.code == ErrorCode::Conflict => {
                        tracing::info!(sale_id = %live.sale.id, "another replica is reconciling this sale")
                    }
                    Err(e) => {
                        return Err(format!(
                            "start-up reconcile of sale {} failed: {}",
                            live.sale.id, e.message
                        ));
                    }
                }
            }
        }
        reconcile::watch_generation(&engine);
        tracing::info!(
            front = engine.front.kind(),
            ledger = engine.ledger.kind(),
            consumer = %engine.consumer,
            durable_ack = engine.config.durable_ack,
            "engine started"
        );
        Ok(engine)
    }

    /// The live state of a sale, loading it from the ledger on first sight
    /// (a sale created by another replica).
    pub async fn live_sale(self: &Arc<Self>, id: Uuid) -> Result<Option<Arc<LiveSale>>, ApiError> {
        if let Some(live) = self.sales.get(&id) {
            return Ok(Some(live));
        }
        let Some((sale, _)) = self.ledger.sale(id).await? else {
            return Ok(None);
        };
        let (live, new) = self.sales.insert(sale);
        if new {
            // The worker first: it creates the stream itself and retries,
            // so a failure below cannot leave the sale without settlement.
            settle::spawn_worker(Arc::clone(self), Arc::clone(&live));
            self.front.ensure_stream(id).await?;
        }
        Ok(Some(live))
    }

    /// Creates a sale: ledger first, then the front is warmed from it, so
    /// the sale's first second does no cold work.
    pub async fn create_sale(self: &Arc<Self>, new: sale::NewSale) -> Result<SaleView, ApiError> {
        let sale = new.into_sale(OffsetDateTime::now_utc())?;
        self.ledger.create_sale(&sale).await?;
        let (live, _) = self.sales.insert(sale);
        settle::spawn_worker(Arc::clone(self), Arc::clone(&live));
        reconcile::warm_up(self, &live).await?;
        metrics::counter!("flashmall_engine_sales_created_total").increment(1);
        tracing::info!(sale_id = %live.sale.id, stock = live.sale.stock, "sale created");
        self.view(&live).await
    }

    /// Rebuilds `live`'s front from the ledger in the background, unless a
    /// rebuild of it runs here already: a revoke at settlement showed the
    /// front stale.
    pub fn reconcile_soon(self: &Arc<Self>, live: &Arc<LiveSale>) {
        reconcile::spawn(self, live);
    }

    /// A sale with live counts from the front and the ledger.
    pub async fn view(&self, live: &LiveSale) -> Result<SaleView, ApiError> {
        // The front first, the ledger second: settlement commits a batch
        // before it acknowledges it, so every unit that has left `pending`
        // by the first read is in the ledger by the second. (The other order
        // can miss a batch settled in between: `pending` 0 with `settled`
        // short.) A batch settled between the reads counts in both for that
        // one answer; it is never missing from both.
        let front = tokio::time::timeout(self.front_timeout, self.front.counts(live.sale.id))
            .await
            .map_err(|_| ApiError::unavailable("the stock front timed out"))??;
        let (sale, counts) = self
            .ledger
            .sale(live.sale.id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
        // Without the front (flushed, being rebuilt) the ledger's view
        // stands: units returning are not back on sale until it is rebuilt
        // (and a unit already resold while its release finishes is counted
        // both held and returning for that moment, hence the floor).
        let (remaining, pending) = match front {
            Some(c) => (c.remaining, c.pending),
            None => ((sale.stock - counts.settled - counts.returning).max(0), 0),
        };
        let status = sale.status(OffsetDateTime::now_utc(), remaining);
        Ok(SaleView {
            sale,
            status,
            remaining,
            pending,
            counts,
        })
    }

    /// Checks both stores answer (for `/readyz`).
    pub async fn ready(&self) -> Result<(), String> {
        tokio::time::timeout(Duration::from_secs(1), self.front.ping())
            .await
            .map_err(|_| "stock front timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            Duration::from_secs(2),
            self.ledger.store().get_many(vec![b"ready".to_vec()]),
        )
        .await
        .map_err(|_| "ledger timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}
