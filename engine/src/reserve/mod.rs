//! The purchase hot path (step 8–10 of the purchase path).
//!
//! Performance-critical: no blocking calls, no info-level logging, no lock
//! but the sale registry's read lock; normal outcomes (sold out, over the
//! limit) are values mapped to answers, never boxed errors.

use std::sync::Arc;
use std::time::Instant;

use flashmall_mesh::contract::sold_out;
use flashmall_mesh::{ApiError, ErrorCode};
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

use crate::engine::Engine;
use crate::front::{IdemRecord, ReserveCall, ReserveOutcome, idempotency_field};
use crate::ledger::{Refusal, Verdict, order_id_for};
use crate::sale::{LiveSale, parse_sale_id};
use crate::{reconcile, settle};
use flashmall_mesh::Identity as Caller;
use flashmall_mesh::now_ms;

/// Longest accepted Idempotency-Key.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// A granted purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Purchase {
    pub sale_id: Uuid,
    pub reservation_id: Uuid,
    pub order_id: Uuid,
    pub quantity: i64,
    /// True when this answers a repeated Idempotency-Key.
    pub replayed: bool,
}

/// Checks an Idempotency-Key: 1 to 128 visible ASCII characters.
pub fn check_idempotency_key(key: Option<&str>) -> Result<&str, ApiError> {
    let key = key.ok_or_else(|| ApiError::invalid("the Idempotency-Key header is required"))?;
    if key.is_empty()
        || key.len() > MAX_IDEMPOTENCY_KEY
        || !key.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::invalid(format!(
            "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(key)
}

fn outcome_metric(outcome: &'static str, started: Instant) {
    metrics::counter!("flashmall_engine_purchases_total", "outcome" => outcome).increment(1);
    metrics::histogram!("flashmall_engine_purchase_duration_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

/// Reserves `quantity` units of a sale for `caller`, idempotently by `key`;
/// a sale with a waiting room only when the edge `admitted` the caller.
pub async fn purchase(
    engine: &Arc<Engine>,
    caller: &Caller,
    sale_id: &str,
    quantity: i64,
    key: &str,
    admitted: bool,
) -> Result<Purchase, ApiError> {
    let started = Instant::now();
    let result = decide(engine, caller, sale_id, quantity, key, admitted).await;
    let label = match &result {
        Ok(p) if p.replayed => "replayed",
        Ok(_) => "reserved",
        Err(e) => e.code.as_str(),
    };
    outcome_metric(label, started);
    result
}

async fn decide(
    engine: &Arc<Engine>,
    caller: &Caller,
    raw_sale_id: &str,
    quantity: i64,
    key: &str,
    admitted: bool,
) -> Result<Purchase, ApiError> {
    // Cheap checks first: nothing below costs a store call.
    if quantity < 1 || quantity > engine.config.max_quantity {
        return Err(ApiError::invalid(format!(
            "quantity must be an integer from 1 to {}",
            engine.config.max_quantity
        )));
    }
    let sale_id = parse_sale_id(raw_sale_id)
        .ok_or_else(|| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
    let live = engine
        .live_sale(sale_id)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
    let sale = &live.sale;
    let now = OffsetDateTime::now_utc();
    if now < sale.starts_at {
        return Err(ApiError::new(
            ErrorCode::SaleNotOpen,
            "the sale has not started yet",
        ));
    }
    if now >= sale.ends_at {
        // A purchase made just before the end and retried after it still
        // gets its original answer.
        let field = idempotency_field(&caller.user_id, key);
        let earlier = tokio::time::timeout(
            engine.front_timeout,
            engine.front.idempotency_record(sale_id, &field),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
        return match earlier {
            Some(record) => durable_answer(engine, &live, record, true).await,
            None => Err(ApiError::new(ErrorCode::SaleClosed, "the sale has ended")),
        };
    }
    // A waiting-room sale sells only to buyers the edge admitted (it
    // checks and spends the admission; this is the engine's own check).
    if sale.waiting_room.is_some() && !admitted {
        return Err(ApiError::new(
            ErrorCode::AdmissionRequired,
            format!(
                "this sale has a waiting room: join it (POST /api/v1/sales/{sale_id}/queue) and purchase with the admission token (X-Admission-Token) it gives you"
            ),
        ));
    }
    if quantity > sale.per_user_limit {
        return Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!("at most {} units per buyer", sale.per_user_limit),
        ));
    }
    let now_ms = now_ms();
    // The local sold-out flag answers without calling the front; a retry of
    // a purchase that succeeded still gets its original answer. (Only this
    // branch needs the idempotency field here; the front builds its own.)
    if live.sold_out_here(now_ms) {
        if let Some(record) = live.replay(&idempotency_field(&caller.user_id, key)) {
            return durable_answer(engine, &live, record, true).await;
        }
        // While the snapshot reloads, a miss may be a success it lacks yet:
        // let the front answer.
        if !live.refreshing() {
            return Err(sold_out());
        }
    }
    if !engine.breaker.allows(now_ms) {
        return Err(ApiError::unavailable(
            "the stock front is unavailable, retry shortly",
        ));
    }

    let reservation_id = Uuid::now_v7();
    // Registered before the script so a fast settlement cannot be missed.
    let waiter = engine.config.durable_ack.then(|| {
        let parent = flashmall_mesh::trace::traceparent(&tracing::Span::current());
        engine
            .waiters
            .register(live.sale.id, reservation_id, parent)
    });
    let _forget = settle::ForgetOnDrop {
        waiters: &engine.waiters,
        id: reservation_id,
    };
    let call = ReserveCall {
        sale_id,
        user_id: &caller.user_id,
        idempotency_key: key,
        quantity,
        per_user_limit: sale.per_user_limit,
        reservation_id,
        now_ms,
    };
    let reserve = engine.front.reserve(&call).instrument(tracing::info_span!(
        "reserve",
        otel.name = "engine reserve (stock front)"
    ));
    let outcome = match tokio::time::timeout(engine.front_timeout, reserve).await {
        Ok(Ok(outcome)) => {
            engine.breaker.record_success();
            outcome
        }
        Ok(Err(e)) => {
            engine.breaker.record_failure(now_ms);
            tracing::debug!(error = %e, "reserve failed");
            // The script may have run: a retry with the same key finds it.
            return Err(ApiError::unavailable(
                "the stock front is unavailable, retry with the same Idempotency-Key",
            ));
        }
        Err(_) => {
            engine.breaker.record_failure(now_ms);
            return Err(ApiError::unavailable(
                "the stock front timed out, retry with the same Idempotency-Key",
            ));
        }
    };
    match outcome {
        ReserveOutcome::Reserved { remaining } => {
            live.settle_wake.notify_one();
            // The flag is set by the next sold-out answer, which also counts
            // the idempotency records its snapshot must hold.
            let _ = remaining;
            let record = IdemRecord {
                reservation_id,
                quantity,
            };
            match waiter {
                Some(waiter) => {
                    let verdict = settle::wait_durable(engine, reservation_id, waiter)
                        .instrument(tracing::info_span!(
                            "durable",
                            otel.name = "engine await settlement"
                        ))
                        .await?;
                    verdict_answer(engine, &live, record, verdict, false).await
                }
                None => Ok(answer(sale_id, record, false)),
            }
        }
        ReserveOutcome::Replayed(record) => durable_answer(engine, &live, record, true).await,
        ReserveOutcome::LimitExceeded { held } => Err(ApiError::new(
            ErrorCode::LimitExceeded,
            format!(
                "you hold {held} of at most {} units in this sale",
                sale.per_user_limit
            ),
        )),
        ReserveOutcome::SoldOut {
            remaining,
            idempotency_records,
        } => {
            if remaining == 0 {
                // The flag stands only on a snapshot holding every record
                // this answer counted; otherwise it is set once one does.
                if live.snapshot_covers(idempotency_records) {
                    live.mark_sold_out(now_ms, engine.config.sold_out_recheck);
                } else {
                    refresh_snapshot(engine, &live, idempotency_records);
                }
                Err(sold_out())
            } else {
                Err(ApiError::new(
                    ErrorCode::SoldOut,
                    format!("only {remaining} units are left"),
                ))
            }
        }
        ReserveOutcome::Rebuilding => Err(ApiError::unavailable(
            "the sale is being reconciled, retry shortly",
        )),
        ReserveOutcome::NotReady => {
            reconcile::spawn(engine, &live);
            Err(ApiError::unavailable(
                "the sale is being loaded, retry shortly",
            ))
        }
    }
}

fn answer(sale_id: Uuid, record: IdemRecord, replayed: bool) -> Purchase {
    Purchase {
        sale_id,
        reservation_id: record.reservation_id,
        order_id: order_id_for(record.reservation_id),
        quantity: record.quantity,
        replayed,
    }
}

/// The original answer of a repeated key, once its reservation is durable.
async fn durable_answer(
    engine: &Arc<Engine>,
    live: &LiveSale,
    record: IdemRecord,
    replayed: bool,
) -> Result<Purchase, ApiError> {
    let verdict = if engine.config.durable_ack {
        settle::wait_durable_existing(engine, record.reservation_id).await?
    } else {
        // Fast acknowledgement answers before the ledger; once the ledger
        // has decided, its verdict is the key's answer.
        match settle::decided(engine, record.reservation_id).await {
            Ok(Some(verdict)) => verdict,
            _ => Verdict::Held,
        }
    };
    verdict_answer(engine, live, record, verdict, replayed).await
}

/// The answer for a reservation the ledger decided: the reservation, or
/// the refusal the ledger found for it (the stock front had granted it from
/// state it lost). A second reservation for a key answers the key's first.
async fn verdict_answer(
    engine: &Arc<Engine>,
    live: &LiveSale,
    record: IdemRecord,
    verdict: Verdict,
    replayed: bool,
) -> Result<Purchase, ApiError> {
    let first = match verdict {
        Verdict::Held => return Ok(answer(live.sale.id, record, replayed)),
        Verdict::Revoked(Refusal::DuplicateKey { first }) => first,
        Verdict::Revoked(refusal) => return Err(refused(live, refusal)),
    };
    let earlier = engine.ledger.reservation(first).await?.ok_or_else(|| {
        ApiError::unavailable("the key's first reservation is not readable yet, retry shortly")
    })?;
    match earlier.verdict() {
        Verdict::Held => Ok(answer(
            live.sale.id,
            IdemRecord {
                reservation_id: first,
                quantity: earlier.quantity,
            },
            true,
        )),
        Verdict::Revoked(refusal) => Err(refused(live, refusal)),
    }
}

/// The refusal a revoked reservation answers with.
fn refused(live: &LiveSale, refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::LimitExceeded => ApiError::new(
            ErrorCode::LimitExceeded,
            format!("at most {} units per buyer", live.sale.per_user_limit),
        ),
        Refusal::SoldOut | Refusal::DuplicateKey { .. } => sold_out(),
    }
}

/// Reloads the sold-out snapshot of idempotency records when it is stale
/// (in the background: this request already has its answer).
fn refresh_snapshot(engine: &Arc<Engine>, live: &Arc<LiveSale>, records: i64) {
    if !live.begin_refresh(records) {
        return;
    }
    let engine = Arc::clone(engine);
    let live = Arc::clone(live);
    tokio::spawn(async move {
        let loaded = engine.front.idempotency_records(live.sale.id).await;
        if let Err(e) = &loaded {
            tracing::debug!(error = %e, "sold-out snapshot not refreshed");
        }
        let covers = loaded
            .as_ref()
            .is_ok_and(|r| r.len() as i64 >= records && live.covers_wanted(r.len() as i64));
        live.finish_refresh(loaded.ok());
        if covers {
            live.mark_sold_out(flashmall_mesh::now_ms(), engine.config.sold_out_recheck);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(check_idempotency_key(Some("abc-123")).is_ok());
        assert!(check_idempotency_key(None).is_err());
        assert!(check_idempotency_key(Some("")).is_err());
        assert!(check_idempotency_key(Some("a b")).is_err());
        assert!(check_idempotency_key(Some(&"k".repeat(129))).is_err());
    }
}
