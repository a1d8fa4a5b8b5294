//! flashmall's inventory engine: decides who gets a unit of a flash sale.
//!
//! The purchase path, in the order a request meets it:
//! - `reserve/`: the hot path: sale window, quantity, local sold-out flag,
//!   then one stock-front script; by default the answer waits until
//!   settlement made the reservation durable.
//! - `settle/`: per-sale workers drain the reservation stream into the
//!   ledger in batches, one transaction per batch, then acknowledge; the
//!   order worker makes an order of every settled reservation.
//! - `release/`: gives a reservation's units back: ledger first, then front.
//! - `reconcile/`: rebuilds the front from the ledger and checks
//!   conservation for every sale.
//!
//! Store boundaries: `front/` (Redis or in-process) and `ledger/` (redb or
//! TiKV), each a trait with one conformance suite. `api/` serves JSON and
//! gRPC on one port. Depends on `flashmall-proto` and `flashmall-mesh` only.

pub mod api;
pub mod config;
pub mod engine;
pub mod front;
pub mod identity;
pub mod ledger;
pub mod reconcile;
pub mod release;
pub mod reserve;
pub mod sale;
pub mod settle;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use engine::{Engine, SaleView};
pub use flashmall_mesh::now_ms;
use flashmall_mesh::{ClientConfig, IdentityKey, MeshClient, MeshTls, Shutdown};
use tokio::net::TcpListener;

use config::{EngineConfig, LedgerBackend, LedgerConfig, RedisConfig};
use front::{LocalFront, RedisFront, StockFront};
use ledger::{EmbeddedLedger, Ledger, LedgerStore, TikvLedger};

/// Opens the configured stock front: Redis when `redis.url` is set,
/// otherwise the in-process front.
pub async fn open_front(redis: &RedisConfig) -> Result<Arc<dyn StockFront>, String> {
    if redis.url.is_empty() {
        return Ok(Arc::new(LocalFront::new()));
    }
    let front = RedisFront::connect(redis)
        .await
        .map_err(|e| format!("cannot connect to redis at {}: {e}", redis.url))?;
    Ok(Arc::new(front))
}

/// Opens the configured ledger; `data_dir` anchors a relative embedded path.
pub async fn open_ledger(config: &LedgerConfig, data_dir: &Path) -> Result<Ledger, String> {
    let store: Arc<dyn LedgerStore> = match config.backend {
        LedgerBackend::Embedded => {
            let path = if config.path.is_absolute() {
                config.path.clone()
            } else {
                data_dir.join(&config.path)
            };
            Arc::new(EmbeddedLedger::open(&path).map_err(|e| e.to_string())?)
        }
        LedgerBackend::Tikv => Arc::new(
            TikvLedger::connect(config)
                .await
                .map_err(|e| e.to_string())?,
        ),
    };
    Ok(Ledger::new(store))
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub engine: EngineConfig,
    pub redis: RedisConfig,
    pub ledger: LedgerConfig,
    pub data_dir: std::path::PathBuf,
    /// Verifies the identity the edge forwards, and signs the engine's own.
    pub identity: IdentityKey,
    /// The client stack for calls to the order service.
    pub client: ClientConfig,
    /// Mutual TLS on the engine's port and its calls (`[mesh.tls]`).
    pub tls: Option<MeshTls>,
    /// Plain probes and metrics port when run on its own (`mesh.admin_listen`).
    pub admin_listen: Option<SocketAddr>,
}

/// A started engine: its address and its state.
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Opens the stores, starts the engine and serves it on `listener` until
/// `shutdown` triggers; then in-flight requests finish, the streams are
/// drained into the ledger, and the workers stop.
pub async fn launch(
    settings: &Settings,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<Running, String> {
    let front = open_front(&settings.redis).await?;
    let ledger = open_ledger(&settings.ledger, &settings.data_dir).await?;
    let workers = Shutdown::new();
    let engine = Engine::start(
        settings.engine.clone(),
        &settings.redis,
        front,
        ledger,
        settings.identity.for_component("engine"),
        workers,
    )
    .await?;
    if !settings.engine.order_endpoints.is_empty() {
        let client = MeshClient::new(
            "orders",
            &settings.engine.order_endpoints,
            &settings.client,
            settings.tls.as_ref(),
        )?;
        settle::orders::spawn(Arc::clone(&engine), client);
    }
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let serving = Arc::clone(&engine);
    let tls = settings.tls.clone();
    let served = tokio::spawn(async move {
        let result = api::serve(Arc::clone(&serving), listener, tls, shutdown).await;
        settle::drain_on_shutdown(&serving).await;
        serving.shutdown.trigger();
        tracing::info!("engine stopped");
        result
    });
    Ok(Running {
        addr,
        engine,
        served,
    })
}

/// Runs the engine component until SIGTERM or `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> Result<(), String> {
    let listener = flashmall_mesh::serve::listen(settings.engine.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.engine.listen))?;
    let running = launch(&settings, listener, shutdown.clone()).await?;
    if let Some(admin) = settings.admin_listen {
        let probes = flashmall_mesh::serve::listen(admin)
            .map_err(|e| format!("cannot listen on {admin} (mesh.admin_listen): {e}"))?;
        tokio::spawn(flashmall_mesh::serve::serve_probes(
            "engine",
            probes,
            api::readiness(&running.engine),
            shutdown.clone(),
        ));
    }
    match running.served.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("engine server failed: {e}")),
        Err(e) => Err(format!("engine server task failed: {e}")),
    }
}

/// `flashmall engine reconcile`: opens the stores, rebuilds the front of
/// every sale from the ledger, and returns the reports (no server runs).
pub async fn reconcile_offline(settings: &Settings) -> Result<Vec<reconcile::SaleReport>, String> {
    let shutdown = Shutdown::new();
    let front = open_front(&settings.redis).await?;
    let ledger = open_ledger(&settings.ledger, &settings.data_dir).await?;
    let mut engine_config = settings.engine.clone();
    engine_config.reconcile_on_start = false;
    let engine = Engine::start(
        engine_config,
        &settings.redis,
        front,
        ledger,
        settings.identity.for_component("engine"),
        shutdown.clone(),
    )
    .await?;
    let reports = reconcile::reconcile_all(&engine)
        .await
        .map_err(|e| e.message);
    shutdown.trigger();
    reports
}
