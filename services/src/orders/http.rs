//! The order service's JSON API:
//! `GET /api/v1/orders`, `GET /api/v1/orders/{id}`,
//! `POST /api/v1/orders/{id}/cancel`. The caller is the verified identity
//! (`Caller`); no user id is read from a path, query or body.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use flashmall_mesh::{ApiError, Caller};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Order, Orders};
use crate::rfc3339_ms;

/// The JSON routes.
pub fn router(orders: Arc<Orders>) -> Router {
    Router::new()
        .route("/api/v1/orders", get(list))
        .route("/api/v1/orders/{id}", get(get_one))
        .route("/api/v1/orders/{id}/cancel", post(cancel))
        .with_state(orders)
}

/// An order as clients see it.
pub fn order_json(o: &Order) -> Value {
    json!({
        "id": o.id.to_string(),
        "user_id": o.user_id,
        "status": o.status.as_str(),
        "total": o.total,
        "items": o.items.iter().map(|i| json!({
            "product_id": i.product_id,
            "quantity": i.quantity,
            "unit_price": i.unit_price,
        })).collect::<Vec<_>>(),
        "source": o.source.as_str(),
        "sale_id": o.sale_id.map(|s| s.to_string()),
        "reservation_id": o.reservation_id.map(|r| r.to_string()),
        "created_at": rfc3339_ms(o.created_at_ms),
        "expires_at": rfc3339_ms(o.expires_at_ms),
        "paid_at": o.paid_at_ms.map(rfc3339_ms),
        "payment_id": o.payment_id,
        "closed_at": o.closed_at_ms.map(rfc3339_ms),
        "released": o.released,
        "stock_held": o.stock_held(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    page_size: Option<u32>,
    #[serde(default)]
    page_token: Option<String>,
}

async fn list(
    State(orders): State<Arc<Orders>>,
    Caller(caller): Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(format!(
            "the query is not valid ({}); use page_size (1-100) and page_token",
            e.body_text()
        ))
    })?;
    let token = q.page_token.as_deref().filter(|t| !t.is_empty());
    let page = orders
        .list(&caller, q.page_size.unwrap_or(0), token)
        .await?;
    Ok(Json(json!({
        "orders": page.orders.iter().map(order_json).collect::<Vec<_>>(),
        "next_page_token": page.next,
    })))
}

async fn get_one(
    State(orders): State<Arc<Orders>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(order_json(&orders.get(&caller, &id).await?)))
}

async fn cancel(
    State(orders): State<Arc<Orders>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(order_json(&orders.cancel(&caller, &id).await?)))
}
