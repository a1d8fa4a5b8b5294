//! Request bodies: read with a size bound and parsed with clear errors, so
//! every component answers bad input the same way.

use axum::body::Body;
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};

/// Reads a JSON body of at most `limit` bytes into `T`: 413
/// `payload_too_large` past the limit, 400 `invalid_request` when it does
/// not parse (the message says why).
pub async fn json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid: {e}")))
}

/// Like `json`, but an empty (or all-whitespace) body reads as
/// `T::default()`: for requests whose fields are all optional.
pub async fn optional_json<T: DeserializeOwned + Default>(
    body: Body,
    limit: usize,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is larger than {limit} bytes"),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid: {e}")))
}

/// The `Idempotency-Key` header's value: 400 `invalid_request` when it is
/// missing or not visible ASCII (callers bound its length).
pub fn idempotency_key(headers: &http::HeaderMap) -> Result<String, ApiError> {
    headers
        .get("idempotency-key")
        .ok_or_else(|| ApiError::invalid("the Idempotency-Key header is required"))?
        .to_str()
        .map_err(|_| ApiError::invalid("the Idempotency-Key header must be visible ASCII"))
        .map(str::to_owned)
}
