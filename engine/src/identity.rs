//! Where the caller's identity enters the engine: the signed identity the
//! edge forwards, verified with the mesh key (`flashmall_mesh::identity`).
//! No handler reads a user id from a body, a query or an unsigned header.

use flashmall_mesh::{ApiError, Identity};
use http::HeaderMap;

use crate::engine::Engine;

/// The verified caller of a request; 401 without a valid signed identity.
pub fn caller(engine: &Engine, headers: &HeaderMap) -> Result<Identity, ApiError> {
    engine.identity.caller(headers)
}
