//! Graceful shutdown: one token every task of a component watches, flipped by
//! SIGTERM, Ctrl-C, or the embedding process (tests, `flashmall up`).

use tokio_util::sync::CancellationToken;

/// A shutdown signal shared by every task of a component.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down everything that watches this signal.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown has been triggered.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A child signal: triggered with this one, or on its own.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// Triggers this signal on SIGTERM or Ctrl-C (spawns a watcher task).
    pub fn trigger_on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            let ctrl_c = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut term = match tokio::signal::unix::signal(
                    tokio::signal::unix::SignalKind::terminate(),
                ) {
                    Ok(term) => term,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot watch SIGTERM; only ctrl-c stops the process");
                        let _ = ctrl_c.await;
                        me.trigger();
                        return;
                    }
                };
                tokio::select! {
                    _ = ctrl_c => tracing::info!("ctrl-c received, shutting down"),
                    _ = term.recv() => tracing::info!("sigterm received, shutting down"),
                    _ = me.wait() => return,
                }
            }
            #[cfg(not(unix))]
            {
                let _ = ctrl_c.await;
            }
            me.trigger();
        });
    }
}
