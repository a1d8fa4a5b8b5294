//! The product service's JSON API: `GET /api/v1/products` (by category,
//! paged, or `?ids=`), `GET /api/v1/products/search?q=`,
//! `GET /api/v1/products/{id}`, `POST /api/v1/products`,
//! `PATCH|DELETE /api/v1/products/{id}`, `GET|POST /api/v1/categories`.
//! Reads are public; writes act as the verified caller (`Caller`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flashmall_mesh::{ApiError, Caller};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Category, NewCategory, NewProduct, Page, PageRequest, Product, ProductPatch, Products,
};
use crate::rfc3339_ms;

/// The JSON routes.
pub fn router(products: Arc<Products>) -> Router {
    Router::new()
        .route("/api/v1/products", get(list).post(create))
        .route("/api/v1/products/search", get(search))
        .route(
            "/api/v1/products/{id}",
            get(get_one).patch(update).delete(remove),
        )
        .route("/api/v1/categories", get(categories).post(create_category))
        .with_state(products)
}

/// A product as clients see it.
pub fn product_json(p: &Product) -> Value {
    json!({
        "id": p.id.to_string(),
        "name": p.name,
        "description": p.description,
        "price": p.price,
        "categories": p.categories,
        "stock": p.stock,
        "merchant_id": p.merchant_id,
        "created_at": rfc3339_ms(p.created_at_ms),
        "updated_at": rfc3339_ms(p.updated_at_ms),
    })
}

fn category_json(c: &Category) -> Value {
    json!({
        "name": c.name,
        "description": c.description,
        "created_at": rfc3339_ms(c.created_at_ms),
    })
}

fn page_json(page: Page, field: &str) -> Json<Value> {
    Json(json!({
        field: page.products.iter().map(product_json).collect::<Vec<_>>(),
        "next_page_token": page.next,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    category: Option<String>,
    ids: Option<String>,
    page: Option<u32>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
    page: Option<u32>,
    page_size: Option<u32>,
    page_token: Option<String>,
}

fn query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
    help: &str,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        ApiError::invalid(format!(
            "the query is not valid ({}); {help}",
            e.body_text()
        ))
    })
}

fn page_request(size: Option<u32>, token: Option<String>, number: Option<u32>) -> PageRequest {
    PageRequest {
        size: size.unwrap_or(0),
        token: token.filter(|t| !t.is_empty()),
        number,
    }
}

async fn list(
    State(products): State<Arc<Products>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(
        q,
        "use category, ids, page (from 1), page_size (1-100) and page_token",
    )?;
    if let Some(ids) = q.ids {
        if q.category.is_some() || q.page.is_some() || q.page_token.is_some() {
            return Err(ApiError::invalid(
                "ids reads those products; it takes no category or paging",
            ));
        }
        let ids: Vec<String> = ids.split(',').map(str::to_owned).collect();
        let found = products.batch_get(&ids).await?;
        return Ok(Json(json!({
            "products": found.iter().map(product_json).collect::<Vec<_>>(),
            "next_page_token": null,
        })));
    }
    let page = page_request(q.page_size, q.page_token, q.page);
    Ok(page_json(
        products.list(q.category.as_deref(), &page).await?,
        "products",
    ))
}

async fn search(
    State(products): State<Arc<Products>>,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(
        q,
        "use q (the words to find), page, page_size and page_token",
    )?;
    let page = page_request(q.page_size, q.page_token, q.page);
    Ok(page_json(products.search(&q.q, &page).await?, "products"))
}

async fn get_one(
    State(products): State<Arc<Products>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(product_json(&products.get(&id).await?)))
}

async fn create(
    State(products): State<Arc<Products>>,
    Caller(caller): Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let new: NewProduct = flashmall_mesh::body::json(body, products.max_body_bytes()).await?;
    let product = products.create(&caller, new).await?;
    Ok((StatusCode::CREATED, Json(product_json(&product))).into_response())
}

async fn update(
    State(products): State<Arc<Products>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let patch: ProductPatch = flashmall_mesh::body::json(body, products.max_body_bytes()).await?;
    Ok(Json(product_json(
        &products.update(&caller, &id, patch).await?,
    )))
}

async fn remove(
    State(products): State<Arc<Products>>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    products.delete(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn categories(State(products): State<Arc<Products>>) -> Result<Json<Value>, ApiError> {
    let all = products.categories().await?;
    Ok(Json(json!({
        "categories": all.iter().map(category_json).collect::<Vec<_>>(),
    })))
}

async fn create_category(
    State(products): State<Arc<Products>>,
    Caller(caller): Caller,
    body: Body,
) -> Result<Response, ApiError> {
    let new: NewCategory = flashmall_mesh::body::json(body, products.max_body_bytes()).await?;
    let category = products.create_category(&caller, new).await?;
    Ok((StatusCode::CREATED, Json(category_json(&category))).into_response())
}
