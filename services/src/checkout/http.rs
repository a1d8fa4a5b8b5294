//! The checkout service's JSON API: `POST /api/v1/checkout` with an
//! `Idempotency-Key` header and an empty body (or `{}`), on the verified
//! caller's own cart.
//!
//! Answers: `201` paid; `202` the payment provider has not decided yet
//! (the same key later reports the outcome); a failed checkout answers its
//! error (`409 out_of_stock`, `402 payment_declined`, `409 conflict`) with
//! the checkout beside it. A repeated key answers the same, with the
//! header `idempotent-replayed: true`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use flashmall_mesh::{ApiError, Caller};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, CheckoutStatus, Checkouts};

/// The JSON routes.
pub fn router(checkouts: Arc<Checkouts>) -> Router {
    Router::new()
        .route("/api/v1/checkout", post(checkout))
        .with_state(checkouts)
}

/// A checkout as clients see it.
pub fn checkout_json(answer: &Answer) -> Value {
    let c = &answer.checkout;
    json!({
        "checkout_id": c.id.to_string(),
        "status": answer.status(),
        "order_id": c.order_id.to_string(),
        "payment_id": c.payment_id,
        "total": c.total,
        "items": c.lines.iter().map(|l| json!({
            "product_id": l.product_id,
            "quantity": l.quantity,
            "unit_price": l.unit_price,
        })).collect::<Vec<_>>(),
        "reason": c.failure.as_ref().map(|(_, m)| m),
    })
}

/// Checkout takes no fields: the buyer is the caller, the items are the
/// cart's, the prices the catalogue's.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoFields {}

async fn checkout(
    State(checkouts): State<Arc<Checkouts>>,
    Caller(caller): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = flashmall_mesh::body::idempotency_key(&headers)?;
    let NoFields {} = flashmall_mesh::body::optional_json(body, checkouts.max_body_bytes())
        .await
        .map_err(|e| ApiError {
            message: format!(
                "checkout takes no fields (the items are your cart's): {}",
                e.message
            ),
            ..e
        })?;
    let answer = checkouts.checkout(&caller, &key).await?;
    let mut body = checkout_json(&answer);
    let (status, mut response) = match answer.error() {
        Some(e) if answer.checkout.status == CheckoutStatus::Failed => {
            let status = e.code.http_status();
            let mut error = e.body();
            error["checkout"] = body;
            (status, Json(error).into_response())
        }
        _ => {
            let status = match answer.checkout.status {
                CheckoutStatus::Paid => StatusCode::CREATED,
                _ => StatusCode::ACCEPTED,
            };
            body["replayed"] = json!(answer.replayed);
            (status, Json(body).into_response())
        }
    };
    *response.status_mut() = status;
    if answer.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
