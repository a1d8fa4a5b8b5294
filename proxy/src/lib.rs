//! flashmall's edge proxy, on Pingora: the only public entry point.
//!
//! A request meets, in order (`edge.rs`): a request id; identity (a
//! verified access token, required off the public routes); the blacklist;
//! the access rules; the rate limits; the sold-out gate; then a healthy
//! upstream of its route's pool, with the verified identity signed for the
//! services. Edge state shared by replicas lives in `state/`.
//!
//! Depends on `flashmall-mesh` only (identity, errors, metrics); never on a
//! component crate.

pub mod access;
mod admin;
pub mod config;
mod edge;
pub mod gate;
pub mod identity;
pub mod limits;
mod meters;
mod openapi;
mod paths;
pub mod respond;
pub mod state;
mod upstreams;
pub mod waiting;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use flashmall_mesh::{IdentityKey, MeshTls, Shutdown};
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::GenBackgroundService;
use pingora::services::background::background_service;
use tokio::sync::watch;

use config::ProxyConfig;
use edge::Edge;
use gate::Gate;
use identity::{JwksSource, Verifier};
use limits::{Limiter, Limits};
use paths::PathRules;
use state::{EdgeStore, LocalEdgeStore, RedisEdgeStore, View};

/// An upstream pool, and the service that health-checks and re-resolves it.
type Pool = Arc<LoadBalancer<RoundRobin>>;
type PoolService = GenBackgroundService<LoadBalancer<RoundRobin>>;

/// Everything the proxy needs to run.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub proxy: ProxyConfig,
    /// The auth service's HS256 secret: access tokens are verified with it.
    pub jwt_secret: Vec<u8>,
    /// Signs the identity forwarded to the services.
    pub identity: IdentityKey,
    /// Mutual TLS to the components (`[mesh.tls]`).
    pub tls: Option<MeshTls>,
}

/// Stops Pingora when the watch flips.
struct Stop(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for Stop {
    async fn recv(&self) -> ShutdownSignal {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|stop| *stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

/// A running proxy.
pub struct RunningProxy {
    pub addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    admin: Shutdown,
    thread: std::thread::JoinHandle<()>,
    /// The edge state this replica enforces.
    pub state: Arc<View>,
}

impl RunningProxy {
    /// Stops serving (in-flight requests get the grace period) and waits.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.admin.trigger();
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Starts the proxy: edge state, limits, pools with health checks, and
/// Pingora on its own thread. Must run inside a tokio runtime, which keeps
/// the edge state fresh and serves the Redis connection.
pub async fn launch(settings: &ProxySettings) -> Result<RunningProxy, String> {
    let config = &settings.proxy;
    config.validate()?;
    // First, so a taken admin port fails the start before anything runs.
    let admin_listener = flashmall_mesh::serve::listen(config.admin_listen)
        .map_err(|e| format!("proxy.admin_listen {}: {e}", config.admin_listen))?;
    let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
    let (view, redis) = edge_state(config).await?;
    let (stop, stop_rx) = watch::channel(false);
    let mut poll_stop = stop_rx.clone();
    tokio::spawn(Arc::clone(&view).keep_fresh(config.state_poll, async move {
        let _ = poll_stop.wait_for(|s| *s).await;
    }));
    let admin = Shutdown::new();
    tokio::spawn(flashmall_mesh::serve::serve_probes(
        "proxy",
        admin_listener,
        readiness(Arc::clone(&view), config.state_poll),
        admin.clone(),
    ));

    let conf = ServerConf {
        threads: config.threads,
        grace_period_seconds: Some(config.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let (pools, checks) = upstream_pools(config).await?;
    let verifier = token_verifier(settings, stop_rx.clone()).await?;
    // The process's recorder before the edge makes its metric handles
    // (`meters`): a handle made earlier would count into nothing.
    let _ = flashmall_mesh::telemetry::metrics_handle();
    let edge = Edge {
        routes: routes(config),
        public: public_routes(config)?,
        verifier,
        identity: settings.identity.clone(),
        state: Arc::clone(&view),
        limits: Limits::from_config(&config.limits)?,
        limiter: Limiter::new(redis.clone()),
        waiting: waiting_rooms(settings, &pools, redis),
        gate: Arc::new(Gate::new(config.sold_out_ttl)),
        tls: settings
            .tls
            .clone()
            .map(upstreams::PeerTls::new)
            .transpose()?
            .map(Arc::new),
        trusted_proxies: config.trusted_proxies.clone(),
        accept_traceparent: config.accept_traceparent,
        connect_timeout: config.connect_timeout,
        read_timeout: config.read_timeout,
        jwt_leeway: config.jwt_leeway,
        access_log: access::AccessLogger::new(config.access_log, config.access_log_sample),
        in_flight: edge::in_flight_gauge(),
        pools,
    };
    let (listen, thread) = serve_pingora(server, edge, config.listen, checks, stop_rx)?;
    let running = RunningProxy {
        addr: listen,
        admin_addr,
        stop,
        admin,
        thread,
        state: view,
    };
    running.wait_listening().await
}

/// Runs Pingora on its own thread: the edge on `listen`, the pools'
/// health checks beside it, until `stop` flips. Returns the address it
/// binds (port 0 resolved).
fn serve_pingora(
    mut server: Server,
    edge: Edge,
    listen: SocketAddr,
    checks: Vec<PoolService>,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), String> {
    // Pingora binds in its own thread and reports a failure only in its
    // log, and a port another process listens on answers a connect just as
    // the edge would: so try the port here first, as Pingora will bind it
    // (SO_REUSEADDR, which still refuses a port someone listens on). Port 0
    // takes the free port this finds, just before Pingora binds it.
    let listen = claimable(listen).map_err(|e| format!("proxy.listen {listen}: {e}"))?;
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, edge);
    if listen.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) {
        // `[::]` serves IPv4 clients too, whatever the OS default: they
        // arrive as IPv4-mapped addresses, which the edge canonicalizes.
        let mut dual_stack = pingora::listeners::TcpSocketOptions::default();
        dual_stack.ipv6_only = Some(false);
        proxy.add_tcp_with_settings(&listen.to_string(), dual_stack);
    } else {
        proxy.add_tcp(&listen.to_string());
    }
    for check in checks {
        server.add_service(check);
    }
    server.add_service(proxy);
    let thread = std::thread::Builder::new()
        .name("proxy".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(Stop(stop)),
            })
        })
        .map_err(|e| e.to_string())?;
    Ok((listen, thread))
}

/// The edge state (blacklist, rules, revocations) loaded once, from Redis
/// when `redis_url` is set (then also the rate limiter's client) or this
/// process.
async fn edge_state(
    config: &ProxyConfig,
) -> Result<(Arc<View>, Option<fred::prelude::Client>), String> {
    let (store, redis): (Arc<dyn EdgeStore>, _) = if config.redis_url.is_empty() {
        (Arc::new(LocalEdgeStore::default()), None)
    } else {
        let store = RedisEdgeStore::connect(&config.redis_url, Duration::from_secs(2))
            .await
            .map_err(|e| format!("proxy edge store: {e}"))?;
        let client = store.client().clone();
        (Arc::new(store), Some(client))
    };
    let view = View::new(store);
    view.refresh()
        .await
        .map_err(|e| format!("cannot load the edge state: {e}"))?;
    Ok((view, redis))
}

/// The waiting rooms: queues in Redis when the edge has one (shared by
/// every replica), else in this process; sales read from the pool that
/// serves `/api/v1/sales/`.
fn waiting_rooms(
    settings: &ProxySettings,
    pools: &HashMap<String, Pool>,
    redis: Option<fred::prelude::Client>,
) -> Arc<waiting::WaitingRooms> {
    let store: Arc<dyn waiting::store::QueueStore> = match redis {
        Some(client) => Arc::new(waiting::store::RedisQueueStore::new(client)),
        None => Arc::new(waiting::store::LocalQueueStore::default()),
    };
    let engine = routes(&settings.proxy)
        .into_iter()
        .find(|(prefix, _)| "/api/v1/sales/".starts_with(prefix.as_str()))
        .and_then(|(_, name)| {
            pools.get(&name).map(|pool| waiting::EngineLink {
                pool: Arc::clone(pool),
                target: name,
                tls: settings.tls.clone(),
            })
        });
    waiting::WaitingRooms::new(
        store,
        settings.identity.clone(),
        settings.proxy.waiting_room.clone(),
        engine,
    )
}

/// Each upstream pool, resolved, with its health-check service.
async fn upstream_pools(
    config: &ProxyConfig,
) -> Result<(HashMap<String, Pool>, Vec<PoolService>), String> {
    let mut pools = HashMap::new();
    let mut checks = Vec::new();
    let pool_options = upstreams::PoolOptions {
        dns_refresh: config.dns_refresh,
        health_check_interval: config.health_check_interval,
    };
    for (name, entries) in &config.upstreams {
        let lb = upstreams::pool(name, entries, &pool_options).await?;
        let service = background_service(&format!("upstream pool {name}"), lb);
        pools.insert(name.clone(), service.task());
        checks.push(service);
    }
    Ok((pools, checks))
}

/// The routes, longest prefix first.
fn routes(config: &ProxyConfig) -> Vec<(String, String)> {
    let mut routes: Vec<(String, String)> = config
        .routes
        .iter()
        .map(|r| (r.prefix.clone(), r.upstream.clone()))
        .collect();
    routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
    routes
}

fn public_routes(config: &ProxyConfig) -> Result<PathRules<()>, String> {
    PathRules::new(
        config
            .public
            .iter()
            .map(|p| (p.method.as_str(), p.path.as_str(), ())),
    )
    .map_err(|e| format!("proxy.public: bad path regex: {e}"))
}

/// The access-token verifier: the HS256 secret, and the JWKS keys when a
/// file or URL is configured (a file must load now; a URL is retried in
/// the background, as is every refresh, until `stop`).
async fn token_verifier(
    settings: &ProxySettings,
    stop: watch::Receiver<bool>,
) -> Result<Arc<Verifier>, String> {
    let config = &settings.proxy;
    let https = flashmall_mesh::tls::public_client_config(
        (!config.jwks_ca_file.is_empty()).then(|| std::path::Path::new(&config.jwks_ca_file)),
    )
    .map_err(|e| format!("proxy.jwks_ca_file: {e}"))?;
    let secret = (!settings.jwt_secret.is_empty()).then_some(settings.jwt_secret.as_slice());
    let verifier = Arc::new(Verifier::new(
        secret,
        &config.jwt_issuer,
        &config.jwt_audience,
        config.jwt_leeway,
    ));
    let source = if !config.jwks_file.is_empty() {
        JwksSource::File(config.jwks_file.clone().into())
    } else if !config.jwks_url.is_empty() {
        JwksSource::Url(config.jwks_url.clone())
    } else {
        return Ok(verifier);
    };
    match identity::load_jwks(&source, &https).await {
        Ok(set) => {
            let n = verifier.set_jwks(&set);
            tracing::info!(keys = n, "jwks loaded");
        }
        // A file is configuration: wrong at start-up, wrong for good.
        Err(e) if matches!(source, JwksSource::File(_)) => {
            return Err(format!("proxy.jwks_file: {e}"));
        }
        Err(e) => tracing::warn!(error = %e, "jwks not loaded yet; retrying in the background"),
    }
    let (refreshed, every) = (Arc::clone(&verifier), config.jwks_refresh);
    let mut stop = stop;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            match identity::load_jwks(&source, &https).await {
                Ok(set) => {
                    refreshed.set_jwks(&set);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "jwks refresh failed; keeping the last keys")
                }
            }
        }
    });
    Ok(verifier)
}

impl RunningProxy {
    /// Waits until Pingora serves the port (it reports a failed bind only
    /// in its own thread); stops everything if it never does.
    async fn wait_listening(self) -> Result<RunningProxy, String> {
        let addr = self.addr;
        for _ in 0..100 {
            if self.thread.is_finished() {
                break;
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                tracing::info!(%addr, "proxy serving");
                return Ok(self);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop.send(true);
        self.admin.trigger();
        Err(format!(
            "the proxy did not start listening on {addr} (is the port taken?)"
        ))
    }
}

/// `addr` (with the port the OS picks for port 0) when it can be bound the
/// way Pingora binds it; `Err` when another socket listens there. The probe
/// socket is closed at once.
fn claimable(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1)?.local_addr()
}

/// The edge is ready while its view of the shared edge state (blacklist,
/// rules, logged-out tokens) is recent: the background refresh read the
/// store within ten polls (at least 5 s). Answered from an atomic, with no
/// lock and no store call, so a flood of probes costs nothing; the reason
/// names no store error (the refresh's warnings log it).
fn readiness(view: Arc<View>, poll: Duration) -> flashmall_mesh::serve::Readiness {
    let limit = (poll * 10).max(Duration::from_secs(5));
    flashmall_mesh::serve::Readiness::new(move || {
        let staleness = view.staleness();
        async move {
            match staleness {
                Some(age) if age <= limit => Ok(()),
                Some(age) => Err(format!(
                    "the edge state was last refreshed {} ms ago (limit {} ms)",
                    age.as_millis(),
                    limit.as_millis()
                )),
                None => Err("the edge state was never loaded".to_owned()),
            }
        }
    })
}

/// Runs the proxy until `shutdown`.
pub async fn run(settings: ProxySettings, shutdown: Shutdown) -> Result<(), String> {
    let running = launch(&settings).await?;
    shutdown.wait().await;
    running.stop().await;
    Ok(())
}
