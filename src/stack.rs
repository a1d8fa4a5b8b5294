//! The whole stack in this process on loopback ports: the engine and the
//! auth service on ports the OS picks, and the edge proxy in front with
//! its pools pointed at them. The demo and the black-box tests run on it;
//! `flashmall up` runs the same components on configured ports instead.

use std::net::SocketAddr;
use std::path::PathBuf;

use flashmall_engine::config::{EngineConfig, LedgerConfig, RedisConfig};
use flashmall_mesh::{IdentityKey, Shutdown};
use flashmall_proxy::config::ProxyConfig;
use flashmall_proxy::{ProxySettings, RunningProxy};
use flashmall_services::AuthSettings;
use flashmall_services::config::AuthConfig;
use tokio::net::TcpListener;

/// What the stack runs with.
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub engine: EngineConfig,
    pub redis: RedisConfig,
    pub ledger: LedgerConfig,
    pub auth: AuthConfig,
    pub data_dir: PathBuf,
    pub jwt_secret: Vec<u8>,
}

/// A running stack.
pub struct Stack {
    pub engine: flashmall_engine::Running,
    pub auth: flashmall_services::Running,
    pub proxy: RunningProxy,
    /// What the proxy runs with (another replica can be started from it).
    pub proxy_settings: ProxySettings,
    pub shutdown: Shutdown,
}

/// A free loopback address (Pingora binds by address, not by listener).
pub fn free_loopback_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

impl Stack {
    /// Starts the components, then the proxy: on a free loopback port, with
    /// no grace period, its pools pointed at the components, and then
    /// adjusted by `tweak` (which may add pools, routes or limits).
    pub async fn start(
        config: StackConfig,
        tweak: impl FnOnce(&mut ProxyConfig),
    ) -> Result<Stack, String> {
        let identity = IdentityKey::random();
        let shutdown = Shutdown::new();
        let bind = || async {
            TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())
        };
        let engine_settings = flashmall_engine::Settings {
            engine: config.engine,
            redis: config.redis,
            ledger: config.ledger,
            data_dir: config.data_dir.clone(),
            identity: identity.clone(),
        };
        let engine =
            flashmall_engine::launch(&engine_settings, bind().await?, shutdown.clone()).await?;
        let auth_settings = AuthSettings {
            auth: config.auth,
            data_dir: config.data_dir,
            identity: identity.clone(),
            jwt_secret: config.jwt_secret.clone(),
        };
        let auth = flashmall_services::launch_auth(&auth_settings, bind().await?, shutdown.clone())
            .await?;
        let mut proxy = ProxyConfig {
            listen: free_loopback_addr()?,
            grace_period: std::time::Duration::ZERO,
            ..ProxyConfig::default()
        };
        proxy
            .upstreams
            .insert("engine".into(), vec![engine.addr.to_string()]);
        proxy
            .upstreams
            .insert("auth".into(), vec![auth.addr.to_string()]);
        tweak(&mut proxy);
        let proxy_settings = ProxySettings {
            proxy,
            jwt_secret: config.jwt_secret,
            identity,
        };
        let proxy = flashmall_proxy::launch(&proxy_settings).await?;
        Ok(Stack {
            engine,
            auth,
            proxy,
            proxy_settings,
            shutdown,
        })
    }

    /// The edge's base URL.
    pub fn base(&self) -> String {
        format!("http://{}", self.proxy.addr)
    }

    /// Stops the proxy, then the components, and waits for them.
    pub async fn stop(self) {
        self.proxy.stop().await;
        self.shutdown.trigger();
        let _ = self.engine.served.await;
        let _ = self.auth.served.await;
    }
}
