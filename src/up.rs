//! `flashmall up`: every component built so far in one process, on the
//! embedded stores unless the config points at real ones, behind the edge
//! proxy (the only port a client needs). The mesh key and the JWT secret
//! are random per process unless configured.

use flashmall_mesh::Shutdown;

use crate::config::Config;

/// Runs the stack until SIGTERM or Ctrl-C; the first component to fail
/// stops the others.
pub async fn run(mut config: Config) -> Result<(), String> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let identity = config.mesh.key_or_random()?;
    let jwt_secret = config.jwt_secret_or_random();
    // The proxy's pools point at the components of this process.
    config
        .proxy
        .upstreams
        .insert("engine".into(), vec![config.engine.listen.to_string()]);
    config
        .proxy
        .upstreams
        .insert("auth".into(), vec![config.auth.listen.to_string()]);
    let engine = config.engine_settings(identity.clone());
    let auth = config.auth_settings(identity.clone(), jwt_secret.clone());
    let proxy = config.proxy_settings(identity, jwt_secret);
    tracing::info!(
        proxy = %proxy.proxy.listen,
        engine = %engine.engine.listen,
        auth = %auth.auth.listen,
        data_dir = %engine.data_dir.display(),
        redis = if engine.redis.url.is_empty() { "in-process" } else { engine.redis.url.as_str() },
        "flashmall up"
    );
    let (engine_result, auth_result, proxy_result) = tokio::join!(
        stop_all_on_exit(flashmall_engine::run(engine, shutdown.clone()), &shutdown),
        stop_all_on_exit(
            flashmall_services::run_auth(auth, shutdown.clone()),
            &shutdown
        ),
        stop_all_on_exit(flashmall_proxy::run(proxy, shutdown.clone()), &shutdown),
    );
    engine_result.and(auth_result).and(proxy_result)
}

async fn stop_all_on_exit(
    component: impl std::future::Future<Output = Result<(), String>>,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let result = component.await;
    shutdown.trigger();
    result
}
