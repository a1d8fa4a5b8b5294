//! flashmall's shop services. Each service is a module with its domain,
//! its JSON API and its gRPC API, served on one port; all keep their data
//! behind the services' store boundary (`store/`).
//!
//! - `auth/`: accounts, logins, token rotation, logout, roles.
//!
//! Depends on `flashmall-mesh` (identity, errors, serving), on
//! `flashmall-proto`, and on the embedded KV for the embedded store; never on
//! the engine.

#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use flashmall_mesh::{IdentityKey, Readiness, Shutdown};
use tokio::net::TcpListener;

use auth::Auth;
use config::AuthConfig;
use store::{EmbeddedStore, ServiceStore};

/// Everything the auth service needs to run.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub auth: AuthConfig,
    pub data_dir: PathBuf,
    /// Verifies the identity the edge signs.
    pub identity: IdentityKey,
    /// Signs access tokens (HS256), shared with the edge.
    pub jwt_secret: Vec<u8>,
}

/// Opens the services' store under the data dir.
pub fn open_store(
    path: &std::path::Path,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn ServiceStore>, String> {
    let path = if path.is_absolute() {
        path.to_owned()
    } else {
        data_dir.join(path)
    };
    Ok(Arc::new(
        EmbeddedStore::open(&path).map_err(|e| e.to_string())?,
    ))
}

/// A started service.
pub struct Running {
    pub addr: SocketAddr,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Starts the auth service on `listener` until `shutdown`.
pub async fn launch_auth(
    settings: &AuthSettings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let store = open_store(&settings.auth.store_path, &settings.data_dir)?;
    let auth = Arc::new(Auth::new(
        store,
        settings.auth.clone(),
        &settings.jwt_secret,
    )?);
    let app = auth::http::router(Arc::clone(&auth), settings.identity.clone())
        .merge(auth::grpc::router(auth, settings.identity.clone()));
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let served = tokio::spawn(flashmall_mesh::serve(
        "auth",
        listener,
        app,
        Readiness::always(),
        shutdown,
    ));
    Ok(Running { addr, served })
}

/// Runs the auth service until SIGTERM or `shutdown`.
pub async fn run_auth(settings: AuthSettings, shutdown: Shutdown) -> Result<(), String> {
    let listener = TcpListener::bind(settings.auth.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.auth.listen))?;
    let running = launch_auth(&settings, listener, shutdown).await?;
    running
        .served
        .await
        .map_err(|e| format!("auth server task failed: {e}"))?
        .map_err(|e| format!("auth server failed: {e}"))
}
