//! `flashmall up`: every component built so far in one process, on the
//! embedded stores unless the config points at real ones. The mesh key and
//! the JWT secret are random per process unless configured.

use flashmall_mesh::Shutdown;

use crate::config::Config;

/// Runs the stack until SIGTERM or Ctrl-C; the first component to fail
/// stops the others.
pub async fn run(config: Config) -> Result<(), String> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let identity = config.mesh.key_or_random()?;
    let engine = config.engine_settings(identity.clone());
    let auth = config.auth_settings(identity, config.jwt_secret_or_random());
    tracing::info!(
        engine = %engine.engine.listen,
        auth = %auth.auth.listen,
        data_dir = %engine.data_dir.display(),
        redis = if engine.redis.url.is_empty() { "in-process" } else { engine.redis.url.as_str() },
        "flashmall up"
    );
    let (engine_result, auth_result) = tokio::join!(
        stop_all_on_exit(flashmall_engine::run(engine, shutdown.clone()), &shutdown),
        stop_all_on_exit(
            flashmall_services::run_auth(auth, shutdown.clone()),
            &shutdown
        ),
    );
    engine_result.and(auth_result)
}

async fn stop_all_on_exit(
    component: impl std::future::Future<Output = Result<(), String>>,
    shutdown: &Shutdown,
) -> Result<(), String> {
    let result = component.await;
    shutdown.trigger();
    result
}
