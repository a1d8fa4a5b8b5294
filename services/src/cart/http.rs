//! The cart service's JSON API, always on the verified caller's own cart:
//! `GET|DELETE /api/v1/cart`, `POST /api/v1/cart/items`,
//! `PATCH|DELETE /api/v1/cart/items/{product_id}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use flashmall_mesh::{ApiError, Caller};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{CartView, Carts, ItemRequest};
use crate::rfc3339_ms;

/// The JSON routes.
pub fn router(carts: Arc<Carts>) -> Router {
    Router::new()
        .route("/api/v1/cart", get(show).delete(empty))
        .route("/api/v1/cart/items", post(add))
        .route(
            "/api/v1/cart/items/{product_id}",
            patch(update).delete(remove),
        )
        .with_state(carts)
}

/// A cart as clients see it.
pub fn cart_json(cart: &CartView) -> Value {
    json!({
        "items": cart.items.iter().map(|i| json!({
            "product_id": i.product_id,
            "quantity": i.quantity,
            "name": i.name,
            "unit_price": i.unit_price,
            "subtotal": i.subtotal,
            "available": i.available,
        })).collect::<Vec<_>>(),
        "total": cart.total,
        "updated_at": (cart.updated_at_ms > 0).then(|| rfc3339_ms(cart.updated_at_ms)),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuantityBody {
    quantity: i64,
}

async fn show(
    State(carts): State<Arc<Carts>>,
    Caller(caller): Caller,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(cart_json(&carts.get(&caller).await?)))
}

async fn add(
    State(carts): State<Arc<Carts>>,
    Caller(caller): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let item: ItemRequest = flashmall_mesh::body::json(body, carts.max_body_bytes()).await?;
    Ok(Json(cart_json(&carts.add(&caller, item).await?)))
}

async fn update(
    State(carts): State<Arc<Carts>>,
    Caller(caller): Caller,
    Path(product_id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let QuantityBody { quantity } =
        flashmall_mesh::body::json(body, carts.max_body_bytes()).await?;
    Ok(Json(cart_json(
        &carts.update(&caller, &product_id, quantity).await?,
    )))
}

async fn remove(
    State(carts): State<Arc<Carts>>,
    Caller(caller): Caller,
    Path(product_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(cart_json(&carts.remove(&caller, &product_id).await?)))
}

async fn empty(
    State(carts): State<Arc<Carts>>,
    Caller(caller): Caller,
) -> Result<StatusCode, ApiError> {
    carts.empty(&caller, Vec::new(), "").await?;
    Ok(StatusCode::NO_CONTENT)
}
