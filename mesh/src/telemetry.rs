//! Logs (`tracing`, text or JSON) and the process-wide Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::trace::TraceSettings;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global Prometheus recorder once per process and returns its
/// handle; later calls (several components in one process) share it.
pub fn metrics_handle() -> Option<PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ])
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(err) => {
                    tracing::warn!(error = %err, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (the default for a terminal).
    #[default]
    Text,
    /// One JSON object per line (for production log pipelines).
    Json,
}

/// Keeps the log writer's thread: dropped at exit, it writes out the lines
/// still queued.
#[must_use = "logs queued when it drops are written then; hold it until exit"]
pub struct LogGuard(
    // Held for its drop only.
    #[allow(dead_code, reason = "held for its drop, which flushes the queue")]
    Option<tracing_appender::non_blocking::WorkerGuard>,
);

/// Installs the global `tracing` subscriber; `filter` is an env-filter
/// directive such as `info` or `flashmall_engine=debug,info`. With
/// `traces`, flashmall's spans are exported over OTLP too (`crate::trace`),
/// whatever the log filter.
///
/// Lines go to stderr through a writer thread, so a request never waits on
/// a `write` (when the thread falls 128,000 lines behind, new lines are
/// dropped rather than waited for). Text is coloured only on a terminal.
pub fn init_logs(
    format: LogFormat,
    filter: &str,
    traces: Option<&TraceSettings>,
) -> Result<LogGuard, String> {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_new(filter).map_err(|e| format!("invalid log filter {filter:?}: {e}"))?;
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(writer)
            .boxed(),
    };
    let spans = match traces {
        Some(settings) => crate::trace::layer(settings)?,
        None => None,
    };
    // A second init in one process (tests) keeps the first subscriber.
    let installed = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init()
        .is_ok();
    Ok(LogGuard(installed.then_some(guard)))
}
