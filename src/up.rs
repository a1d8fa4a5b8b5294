//! `flashmall up`: every component built so far in one process, on the
//! embedded stores unless the config points at real ones.

use flashmall_mesh::Shutdown;

use crate::config::Config;

/// Runs the stack until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> Result<(), String> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let settings = config.engine_settings(config.mesh.key_or_random()?);
    tracing::info!(
        engine = %settings.engine.listen,
        data_dir = %settings.data_dir.display(),
        redis = if settings.redis.url.is_empty() { "in-process" } else { settings.redis.url.as_str() },
        "flashmall up"
    );
    flashmall_engine::run(settings, shutdown).await
}
