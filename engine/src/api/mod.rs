//! The engine's API: JSON over HTTP (`http.rs`) and gRPC (`grpc.rs`) on one
//! port, with `/healthz`, `/readyz` and `/metrics` from the mesh.

mod grpc;
mod http;

use std::sync::Arc;

use flashmall_mesh::{Readiness, Shutdown};
use tokio::net::TcpListener;

use crate::Engine;

pub use http::router;

/// Serves the engine's JSON and gRPC APIs on `listener` until shutdown.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let ready_engine = Arc::clone(&engine);
    let readiness = Readiness::new(move || {
        let engine = Arc::clone(&ready_engine);
        async move { engine.ready().await }
    });
    let app = http::router(Arc::clone(&engine)).merge(grpc::router(engine));
    flashmall_mesh::serve("engine", listener, app, readiness, shutdown).await
}
