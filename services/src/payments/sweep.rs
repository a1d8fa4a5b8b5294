//! The payment service's background work: the timer sweep (stuck pending
//! charges, unfinished captures) and the listener that applies provider
//! callbacks. Both are idempotent: replicas may race on one payment and
//! its conditional moves let exactly one apply each step.

use std::sync::Arc;

use flashmall_mesh::{Shutdown, now_ms};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::Payments;
use super::provider::ProviderEvent;
use crate::timers::Timer;

/// Runs the timer sweep until `shutdown`.
pub fn spawn(payments: Arc<Payments>, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = payments.config().sweep_interval;
        loop {
            match sweep_once(&payments).await {
                Ok(n) if n >= payments.config().sweep_batch => {
                    if shutdown.is_triggered() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "payment sweep failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait() => return,
            }
        }
    })
}

/// One pass over the due payment timers; returns how many it saw.
pub async fn sweep_once(payments: &Payments) -> Result<usize, String> {
    let due = payments
        .timers()
        .due(now_ms(), payments.config().sweep_batch)
        .await
        .map_err(|e| e.to_string())?;
    let seen = due.len();
    futures::future::join_all(due.into_iter().map(|t| handle(payments, t))).await;
    Ok(seen)
}

async fn handle(payments: &Payments, timer: Timer) {
    let result = match Uuid::try_parse(&timer.id) {
        Ok(id) => payments.finish(id).await,
        Err(_) => Ok(true),
    };
    let retry = || async {
        let due = now_ms() + payments.config().capture_retry.as_millis() as u64;
        match payments.timers().schedule(due, &timer.id).await {
            Ok(_) => payments.timers().remove(&timer).await,
            Err(e) => Err(e),
        }
    };
    let outcome = match result {
        Ok(true) => payments.timers().remove(&timer).await,
        // Still pending (at the provider, or its charge did not go
        // through): asked again later, until its deadline gives it up.
        Ok(false) => retry().await,
        Err(e) => {
            tracing::warn!(payment_id = %timer.id, error = %e.message, "payment timer failed; retrying later");
            retry().await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(payment_id = %timer.id, error = %e, "cannot update a payment timer");
    }
}

/// Applies provider callbacks as they arrive, until the channel closes or
/// `shutdown`.
pub fn listen(
    payments: Arc<Payments>,
    mut events: mpsc::UnboundedReceiver<ProviderEvent>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.wait() => return,
            };
            let Some(event) = event else { return };
            let payments = Arc::clone(&payments);
            tokio::spawn(async move {
                if let Err(e) = payments.apply(event.payment_id, event.outcome).await {
                    // The payment's timer finishes it later.
                    tracing::warn!(payment_id = %event.payment_id, error = %e.message, "provider callback not applied");
                }
            });
        }
    })
}
