//! Plumbing every flashmall component shares: the closed set of error codes
//! and their HTTP/gRPC mapping, serving JSON and gRPC on one port with health
//! and metrics endpoints, request ids and deadlines, verified identities,
//! the client stack components call each other through, logs and graceful
//! shutdown.
//!
//! Owns no business logic and depends on no other flashmall crate.

pub mod body;
pub mod client;
pub mod config;
pub mod context;
pub mod contract;
pub mod error;
pub mod grpc;
pub mod headers;
pub mod identity;
pub mod serve;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod verify;

pub use client::{BreakerState, CallKind, ClientConfig, MeshChannel, MeshClient};
pub use config::MeshConfig;
pub use context::{RequestContext, current_request_id};
pub use error::{ApiError, ErrorCode};
pub use headers::now_ms;
pub use identity::{Identity, IdentityKey, Role, authorize, caller_of, valid_user_id};
pub use serve::{Readiness, serve};
pub use shutdown::Shutdown;
pub use tls::{MeshTls, TlsConfig};
pub use verify::{Caller, verify_identity};
