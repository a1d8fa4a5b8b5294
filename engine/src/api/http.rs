//! The engine's JSON API (the storefront paths the proxy forwards here).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flashmall_mesh::{ApiError, Role};
use serde::Deserialize;
use serde_json::json;

use crate::engine::{Engine, SaleView};
use crate::identity;
use crate::ledger::{Refusal, ReservationRecord};
use crate::sale::{NewSale, rfc3339};
use crate::{reconcile, reserve};

/// The JSON routes.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/api/v1/sales", post(create_sale))
        .route("/api/v1/sales/{id}", get(get_sale))
        .route("/api/v1/sales/{id}/purchase", post(purchase))
        .route("/api/v1/sales/{id}/holders", get(holders))
        .route("/api/v1/reservations/{id}", get(get_reservation))
        .route("/api/v1/admin/reconcile", post(reconcile_sales))
        .with_state(engine)
}

pub(crate) fn sale_json(view: &SaleView) -> serde_json::Value {
    let s = &view.sale;
    json!({
        "id": s.id.to_string(),
        "product_id": s.product_id,
        "price": s.price,
        "stock": s.stock,
        "per_user_limit": s.per_user_limit,
        "starts_at": rfc3339(s.starts_at),
        "ends_at": rfc3339(s.ends_at),
        "created_at": rfc3339(s.created_at),
        "waiting_room": s.waiting_room,
        "status": view.status.as_str(),
        "remaining": view.remaining,
        "pending": view.pending,
        "settled": view.counts.settled,
        "released": view.counts.released,
        "revoked": view.counts.revoked,
    })
}

pub(crate) fn reservation_json(r: &ReservationRecord) -> serde_json::Value {
    json!({
        "id": r.id.to_string(),
        "sale_id": r.sale_id.to_string(),
        "user_id": r.user_id,
        "quantity": r.quantity,
        // A revoked reservation never becomes an order.
        "order_id": r.refusal.is_none().then(|| r.order_id().to_string()),
        "status": r.status.as_str(),
        "settled_at": rfc3339(r.settled_at),
        "revoked": r.refusal.map(|refusal| json!({
            "reason": refusal.as_str(),
            "message": match refusal {
                Refusal::SoldOut => "the ledger found every unit of the sale already held",
                Refusal::LimitExceeded => "the ledger found the buyer already at the per-user limit",
                Refusal::DuplicateKey { .. } => "the ledger already has a reservation for this Idempotency-Key",
            },
            "first_reservation_id": match refusal {
                Refusal::DuplicateKey { first } => Some(first.to_string()),
                _ => None,
            },
        })),
    })
}

async fn create_sale(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    identity::caller(&engine, &headers)?.require(Role::Admin)?;
    let new: NewSale = flashmall_mesh::body::json(body, engine.config.max_body_bytes).await?;
    let view = engine.create_sale(new).await?;
    Ok((StatusCode::CREATED, Json(sale_json(&view))).into_response())
}

async fn get_sale(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let not_found = || ApiError::new(flashmall_mesh::ErrorCode::SaleNotFound, "no such sale");
    let id = crate::sale::parse_sale_id(&id).ok_or_else(not_found)?;
    let live = engine.live_sale(id).await?.ok_or_else(not_found)?;
    Ok(Json(sale_json(&engine.view(&live).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PurchaseBody {
    quantity: i64,
}

async fn purchase(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = identity::caller(&engine, &headers)?;
    let key = reserve::check_idempotency_key(
        headers.get("idempotency-key").and_then(|v| v.to_str().ok()),
    )?;
    // The edge's word that the caller holds an admission (waiting rooms).
    let admitted = headers
        .get(flashmall_mesh::headers::ADMITTED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            engine
                .identity
                .verify_admitted(v, &id, &caller.user_id, flashmall_mesh::now_ms())
        });
    let body: PurchaseBody = flashmall_mesh::body::json(body, engine.config.max_body_bytes).await?;
    let p = match reserve::purchase(&engine, &caller, &id, body.quantity, key, admitted).await {
        Ok(p) => p,
        Err(e) => return Ok(announce_sold_out(&engine, &id, e)),
    };
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "reservation_id": p.reservation_id.to_string(),
            "order_id": p.order_id.to_string(),
            "sale_id": p.sale_id.to_string(),
            "quantity": p.quantity,
            "status": "reserved",
        })),
    )
        .into_response();
    if p.replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

use flashmall_mesh::headers::SOLD_OUT as SOLD_OUT_HEADER;

/// Answers an error; a sold-out answer for a fully sold-out sale carries
/// the announcement the edge's gate listens for.
fn announce_sold_out(engine: &Engine, raw_id: &str, e: ApiError) -> Response {
    let sold_out = e.code == flashmall_mesh::ErrorCode::SoldOut
        && crate::sale::parse_sale_id(raw_id)
            .and_then(|id| engine.sales.get(&id))
            .is_some_and(|live| live.sold_out_here(flashmall_mesh::now_ms()));
    let mut response = e.into_response();
    if sold_out {
        response.headers_mut().insert(
            SOLD_OUT_HEADER,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    response
}

/// The users holding units of a sale (components and admins: the edge's
/// sold-out gate lets them through, so their retries get their original
/// answers; the edge asks with its own service identity).
async fn holders(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    identity::caller(&engine, &headers)?.require(Role::Service)?;
    let not_found = || ApiError::new(flashmall_mesh::ErrorCode::SaleNotFound, "no such sale");
    let id = crate::sale::parse_sale_id(&id).ok_or_else(not_found)?;
    let live = engine.live_sale(id).await?.ok_or_else(not_found)?;
    let counts = engine.front.counts(id).await?;
    let records = engine.front.idempotency_records(id).await?;
    let mut users: Vec<&str> = records
        .keys()
        .filter_map(|f| crate::front::user_of_field(f))
        .collect();
    users.sort_unstable();
    users.dedup();
    Ok(Json(json!({
        "sale_id": live.sale.id.to_string(),
        "sold_out": counts.is_some_and(|c| c.remaining == 0),
        "holders": users,
    })))
}

async fn get_reservation(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = identity::caller(&engine, &headers)?;
    let not_found = || ApiError::new(flashmall_mesh::ErrorCode::NotFound, "no such reservation");
    let id = uuid::Uuid::try_parse(&id).map_err(|_| not_found())?;
    let record = engine.ledger.reservation(id).await?.ok_or_else(not_found)?;
    // Another user's reservation looks exactly like a missing one.
    if record.user_id != caller.user_id && !caller.is_admin() {
        return Err(not_found());
    }
    Ok(Json(reservation_json(&record)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReconcileBody {
    #[serde(default)]
    sale_id: Option<String>,
}

async fn reconcile_sales(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    identity::caller(&engine, &headers)?.require(Role::Admin)?;
    let request: ReconcileBody =
        flashmall_mesh::body::optional_json(body, engine.config.max_body_bytes).await?;
    let reports = match request.sale_id {
        Some(id) => vec![reconcile::reconcile_one(&engine, &id).await?],
        None => reconcile::reconcile_all(&engine).await?,
    };
    Ok(Json(json!({ "sales": reports })))
}
