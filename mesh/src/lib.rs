//! Plumbing every flashmall component shares: the closed set of error codes
//! and their HTTP/gRPC mapping, serving JSON and gRPC on one port with health
//! and metrics endpoints, request ids, logs and graceful shutdown.
//!
//! Owns no business logic and depends on no other flashmall crate.

#![forbid(unsafe_code)]

pub mod body;
pub mod config;
pub mod error;
pub mod headers;
pub mod identity;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use config::MeshConfig;
pub use error::{ApiError, ErrorCode};
pub use headers::now_ms;
pub use identity::{Identity, IdentityKey, Role, valid_user_id};
pub use serve::{Readiness, serve};
pub use shutdown::Shutdown;
