//! The auth and user JSON API.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use flashmall_mesh::body::json;
use flashmall_mesh::{ApiError, Caller};
use serde::Deserialize;
use serde_json::json as body;

use super::Auth;

#[derive(Clone)]
struct AuthApi {
    auth: Arc<Auth>,
    /// Verifies the client address the edge signs.
    key: flashmall_mesh::IdentityKey,
}

impl AuthApi {
    fn limit(&self) -> usize {
        self.auth.config().max_body_bytes
    }
}

/// The JSON routes; the caller comes from `flashmall_mesh::verify_identity`.
/// `key` verifies the client address the edge signs (`client_ip`).
pub fn router(auth: Arc<Auth>, key: flashmall_mesh::IdentityKey) -> Router {
    Router::new()
        .route("/api/v1/auth/register", post(register))
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/refresh", post(refresh))
        .route("/api/v1/auth/logout", post(logout))
        .route(
            "/api/v1/users/me",
            get(me).patch(update_me).delete(delete_me),
        )
        .route("/api/v1/admin/users/{id}/roles", put(set_roles))
        .with_state(AuthApi { auth, key })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

async fn register(State(api): State<AuthApi>, b: Body) -> Result<Response, ApiError> {
    let c: Credentials = json(b, api.limit()).await?;
    let user_id = api.auth.register(&c.email, &c.password).await?;
    Ok((StatusCode::CREATED, Json(body!({ "user_id": user_id }))).into_response())
}

/// The client's address: the one the edge signed for this service, else
/// the connection's peer. A caller-supplied address is never taken.
fn client_ip(key: &flashmall_mesh::IdentityKey, headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    headers
        .get(flashmall_mesh::identity::CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| key.verify_client(v, flashmall_mesh::now_ms()))
        .unwrap_or(peer.ip())
        .to_canonical()
}

async fn login(
    State(api): State<AuthApi>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    b: Body,
) -> Result<Response, ApiError> {
    let c: Credentials = json(b, api.limit()).await?;
    let pair = api
        .auth
        .login(&c.email, &c.password, client_ip(&api.key, &headers, peer))
        .await?;
    Ok(Json(pair).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(State(api): State<AuthApi>, b: Body) -> Result<Response, ApiError> {
    let r: RefreshBody = json(b, api.limit()).await?;
    Ok(Json(api.auth.refresh(&r.refresh_token).await?).into_response())
}

async fn logout(
    State(api): State<AuthApi>,
    Caller(caller): Caller,
) -> Result<StatusCode, ApiError> {
    api.auth.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(State(api): State<AuthApi>, Caller(caller): Caller) -> Result<Response, ApiError> {
    Ok(Json(api.auth.me(&caller).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateMe {
    email: Option<String>,
    password: Option<String>,
    current_password: String,
}

async fn update_me(
    State(api): State<AuthApi>,
    Caller(caller): Caller,
    b: Body,
) -> Result<Response, ApiError> {
    let u: UpdateMe = json(b, api.limit()).await?;
    let view = api
        .auth
        .update_me(
            &caller,
            u.email.as_deref(),
            u.password.as_deref(),
            &u.current_password,
        )
        .await?;
    let response = Json(view).into_response();
    // A new password voids every access token issued with the old one.
    Ok(match u.password {
        Some(_) => with_revocation(response, &caller.user_id),
        None => response,
    })
}

/// Announces to the edge that `user_id`'s access tokens issued until now
/// are void (`flashmall_mesh::headers::REVOKE_USER`).
fn with_revocation(mut response: Response, user_id: &str) -> Response {
    let value = flashmall_mesh::headers::revoke_user_value(user_id, flashmall_mesh::now_ms());
    if let Ok(value) = axum::http::HeaderValue::from_str(&value) {
        response
            .headers_mut()
            .insert(flashmall_mesh::headers::REVOKE_USER, value);
    }
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteMe {
    password: String,
}

async fn delete_me(
    State(api): State<AuthApi>,
    Caller(caller): Caller,
    b: Body,
) -> Result<Response, ApiError> {
    let d: DeleteMe = json(b, api.limit()).await?;
    api.auth.delete_me(&caller, &d.password).await?;
    Ok(with_revocation(
        StatusCode::NO_CONTENT.into_response(),
        &caller.user_id,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Roles {
    roles: Vec<String>,
}

async fn set_roles(
    State(api): State<AuthApi>,
    Path(id): Path<String>,
    Caller(caller): Caller,
    b: Body,
) -> Result<Response, ApiError> {
    let r: Roles = json(b, api.limit()).await?;
    let view = api.auth.set_roles(&caller, &id, &r.roles).await?;
    // Tokens carry roles: the old ones must not outlive the change.
    Ok(with_revocation(Json(view).into_response(), &id))
}
