//! The expiry worker: every `sweep_interval` it takes the order timers that
//! are due and acts on each order as it stands now:
//!
//! - unpaid and past its expiry: expire it, then give its units back;
//! - unpaid and not yet due (a timer left from before): wait for its own;
//! - cancelled or expired, units not yet back: give them back (a retry);
//! - a paid checkout order whose stock hold is not committed: commit it;
//! - otherwise: nothing left to do.
//!
//! Several replicas may sweep the same timers: expiring is a conditional
//! move (one replica wins) and the engine's release is idempotent, so a
//! unit is never given back twice.

use std::sync::Arc;

use flashmall_mesh::{ErrorCode, Shutdown, now_ms};
use uuid::Uuid;

use super::{OrderSource, OrderStatus, Orders};
use crate::timers::Timer;

/// Runs the sweeper until `shutdown`.
pub fn spawn(orders: Arc<Orders>, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = orders.config().sweep_interval;
        loop {
            let swept = sweep_once(&orders).await;
            if let Err(e) = &swept {
                tracing::warn!(error = %e, "order sweep failed; retrying");
            }
            // A full batch means more are due: go again at once.
            let full = swept.is_ok_and(|n| n >= orders.config().sweep_batch);
            if !full {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = shutdown.wait() => return,
                }
            } else if shutdown.is_triggered() {
                return;
            }
        }
    })
}

/// One pass over the due timers; returns how many it saw.
pub async fn sweep_once(orders: &Orders) -> Result<usize, String> {
    let due = orders
        .timers()
        .due(now_ms(), orders.config().sweep_batch)
        .await
        .map_err(|e| e.to_string())?;
    let seen = due.len();
    let results = futures::future::join_all(due.into_iter().map(|t| handle(orders, t))).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    metrics::counter!("flashmall_orders_timers_fired_total").increment(seen as u64);
    if failed > 0 {
        metrics::counter!("flashmall_orders_timer_failures_total").increment(failed as u64);
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            tracing::warn!(failed, error = %e, "some order timers failed; they are retried");
        }
    }
    Ok(seen)
}

/// Acts on one due timer; the timer row goes once the order needs nothing
/// more from it (on failure it stays, or a later retry replaces it).
async fn handle(orders: &Orders, timer: Timer) -> Result<(), String> {
    let timers = orders.timers();
    let done = || async { timers.remove(&timer).await.map_err(|e| e.to_string()) };
    let Ok(id) = Uuid::try_parse(&timer.id) else {
        tracing::warn!(timer = %timer.id, "order timer names no order id; dropped");
        return done().await;
    };
    // Expiring reads the order once: it moves an unpaid order past its
    // time, and answers any other order as it stands.
    let order = match orders.expire(id).await {
        Ok(order) => order,
        Err(e) if e.code == ErrorCode::NotFound => return done().await,
        Err(e) => return Err(e.message),
    };
    if order.status == OrderStatus::PendingPayment {
        // Not due yet: its own timer at expires_at (written with the
        // order) stays; an earlier one is dropped.
        if timer.due_ms != order.expires_at_ms {
            done().await?;
        }
        return Ok(());
    }
    if order.status == OrderStatus::Paid
        && order.source == OrderSource::Checkout
        && !order.committed
    {
        if !orders.commit(&order).await.committed {
            retry_later(orders, &timer).await?;
            return Err(format!("stock commit of order {id} failed"));
        }
        return done().await;
    }
    if order.status.is_closed()
        && !order.released
        && let Err(e) = orders.release(&order).await
    {
        retry_later(orders, &timer).await?;
        return Err(format!("release of order {id} failed: {}", e.message));
    }
    done().await
}

/// Replaces `timer` by one `release_retry` from now: a failed release or
/// commit is tried again later rather than on every sweep.
async fn retry_later(orders: &Orders, timer: &Timer) -> Result<(), String> {
    let timers = orders.timers();
    let due = now_ms() + orders.release_retry().as_millis() as u64;
    timers
        .schedule(due, &timer.id)
        .await
        .map_err(|e| e.to_string())?;
    timers.remove(timer).await.map_err(|e| e.to_string())
}
