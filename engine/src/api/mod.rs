//! The engine's API: JSON over HTTP (`http.rs`) and gRPC (`grpc.rs`) on one
//! port, with `/healthz`, `/readyz` and `/metrics` from the mesh.

mod grpc;
mod http;

use std::sync::Arc;

use flashmall_mesh::{MeshTls, Readiness, Shutdown};
use tokio::net::TcpListener;

use crate::engine::Engine;

pub use http::router;

/// The engine is ready when its stores answer.
pub fn readiness(engine: &Arc<Engine>) -> Readiness {
    let engine = Arc::clone(engine);
    Readiness::new(move || {
        let engine = Arc::clone(&engine);
        async move { engine.ready().await }
    })
}

/// Serves the engine's JSON and gRPC APIs on `listener` (over mutual TLS
/// with `tls`) until shutdown.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<MeshTls>,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let readiness = readiness(&engine);
    let app = http::router(Arc::clone(&engine)).merge(grpc::router(engine));
    flashmall_mesh::serve("engine", listener, tls, app, readiness, shutdown).await
}
