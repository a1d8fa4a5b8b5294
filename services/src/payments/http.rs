//! The payment service's JSON API:
//! `POST /api/v1/payments` (Idempotency-Key header), `GET
//! /api/v1/payments/{id}`, `POST /api/v1/payments/{id}/cancel`. The payer
//! is the verified caller.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use flashmall_mesh::body::json;
use flashmall_mesh::{ApiError, Caller};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChargeOrigin, ChargeRequest, Payment, PaymentStatus, Payments};
use crate::rfc3339_ms;

/// The JSON routes.
pub fn router(payments: Arc<Payments>) -> Router {
    Router::new()
        .route("/api/v1/payments", post(charge))
        .route("/api/v1/payments/{id}", get(get_one))
        .route("/api/v1/payments/{id}/cancel", post(cancel))
        .with_state(payments)
}

/// A payment as clients see it.
pub fn payment_json(p: &Payment) -> Value {
    json!({
        "id": p.id.to_string(),
        "order_id": p.order_id.to_string(),
        "amount": p.amount,
        "status": p.status.as_str(),
        "provider": p.provider,
        "provider_ref": p.provider_ref,
        "refund_ref": p.refund_ref,
        "reason": p.reason,
        "created_at": rfc3339_ms(p.created_at_ms),
        "updated_at": rfc3339_ms(p.updated_at_ms),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChargeBody {
    order_id: String,
    amount: i64,
}

async fn charge(
    State(payments): State<Arc<Payments>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = flashmall_mesh::body::idempotency_key(&headers)?;
    let b: ChargeBody = json(body, payments.config().max_body_bytes).await?;
    let (payment, replayed) = payments
        .charge(
            &caller,
            ChargeRequest {
                order_id: b.order_id,
                amount: b.amount,
                idempotency_key: key,
                origin: ChargeOrigin::Storefront,
            },
        )
        .await?;
    // 202 while the provider has not decided; 201 once it has.
    let status = match payment.status {
        PaymentStatus::Pending | PaymentStatus::Captured => StatusCode::ACCEPTED,
        _ => StatusCode::CREATED,
    };
    let mut body = payment_json(&payment);
    body["replayed"] = json!(replayed);
    Ok((status, Json(body)))
}

async fn get_one(
    State(payments): State<Arc<Payments>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(payment_json(&payments.get(&caller, &id).await?)))
}

async fn cancel(
    State(payments): State<Arc<Payments>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(payment_json(&payments.cancel(&caller, &id).await?)))
}
