//! Server side of the signed identity: `verify_identity` checks the
//! `x-flashmall-identity` header once per request, before any handler, and
//! leaves the verified `Identity` in the request's extensions. JSON handlers
//! take it with the `Caller` extractor, gRPC handlers with
//! `identity::caller_of`.
//!
//! A request without the header passes (public routes); one with an
//! invalid or expired header is answered 401 at once (UNAUTHENTICATED for
//! gRPC), so no handler ever sees an identity that did not verify.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::error::{ApiError, ErrorCode};
use crate::identity::{IDENTITY_HEADER, Identity, IdentityKey, unauthenticated};

/// Adds identity verification to every route of `router` (apply it before
/// `serve`, after adding the routes: axum layers wrap the routes present).
pub fn verify_identity(router: Router, key: IdentityKey) -> Router {
    router.layer(middleware::from_fn_with_state(Arc::new(key), verify))
}

async fn verify(State(key): State<Arc<IdentityKey>>, mut request: Request, next: Next) -> Response {
    let mut values = request.headers().get_all(IDENTITY_HEADER).iter();
    let Some(value) = values.next() else {
        return next.run(request).await;
    };
    let invalid = || {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "the request's identity is not valid",
        )
    };
    let verified = if values.next().is_some() {
        Err(invalid())
    } else {
        value
            .to_str()
            .map_err(|_| invalid())
            .and_then(|v| key.verify_value(v, crate::headers::now_ms()))
    };
    match verified {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(err) => {
            tracing::debug!(path = %request.uri().path(), error = %err.message, "identity refused");
            let grpc = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
            if grpc {
                tonic::Status::from(err).into_http()
            } else {
                err.into_response()
            }
        }
    }
}

/// The verified caller of a JSON request (`verify_identity` must wrap the
/// route); 401 `unauthenticated` when the request carries no identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Identity);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Identity>()
            .cloned()
            .map(Caller)
            .ok_or_else(unauthenticated)
    }
}
