//! The whole stack in this test process: engine (in-process stock front or
//! a real redis-server; embedded or TiKV ledger), the auth, order and payment
//! services and the edge proxy in front, each on its own loopback port,
//! talking over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use flashmall::stack::{Stack, StackConfig};
use flashmall_engine::config::{EngineConfig, LedgerConfig, RedisConfig};
use flashmall_mesh::ClientConfig;
use flashmall_proxy::RunningProxy;
use flashmall_proxy::config::ProxyConfig;
use flashmall_services::config::{AuthConfig, OrdersConfig, PaymentsConfig, StoreConfig};
use flashmall_services::payments::provider::SimulatorConfig;
use serde_json::{Value, json};

pub const JWT_SECRET: &[u8] = b"edge-tests-jwt-secret-0123456789abcdef";
pub const ADMIN_EMAIL: &str = "root@example.com";
pub const PASSWORD: &str = "correct horse battery";

pub struct EdgeStack {
    pub base: String,
    pub client: reqwest::Client,
    /// The proxy's address (the first replica).
    pub proxy_addr: SocketAddr,
    stack: Option<Stack>,
    _dir: tempfile::TempDir,
}

/// Tokens of a logged-in user.
#[derive(Debug, Clone)]
pub struct Login {
    pub user_id: String,
    pub access: String,
    pub refresh: String,
}

/// What a test changes in the stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// A real Redis for the stock front; `None`: in-process.
    pub redis_url: Option<String>,
    pub payment_timeout: Duration,
    pub simulator: SimulatorConfig,
    pub pending_timeout: Duration,
    /// The engine's ledger (default: embedded, in the stack's temp dir).
    pub ledger: LedgerConfig,
    /// The services' store (default: embedded, in the stack's temp dir).
    pub store: StoreConfig,
    /// How long an access token lives.
    pub access_ttl: Duration,
    /// Mutual TLS per component (see `StackConfig::tls`); empty: plain.
    pub tls: std::collections::HashMap<String, flashmall_mesh::TlsConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redis_url: None,
            payment_timeout: Duration::from_secs(15 * 60),
            simulator: SimulatorConfig {
                latency: Duration::from_millis(1),
                latency_jitter: Duration::ZERO,
                ..SimulatorConfig::default()
            },
            pending_timeout: Duration::from_secs(600),
            ledger: LedgerConfig::default(),
            store: StoreConfig::default(),
            access_ttl: AuthConfig::default().access_ttl,
            tls: Default::default(),
        }
    }
}

/// The services' store on the Cassandra/ScyllaDB node `FLASHMALL_TEST_SCYLLA`
/// names, in a keyspace of its own (`flashmall_<tag>_<random>`), or `None`
/// when no node is named.
pub fn scylla_store(tag: &str) -> Option<StoreConfig> {
    use flashmall_services::config::StoreBackend;
    let node = std::env::var("FLASHMALL_TEST_SCYLLA")
        .ok()
        .filter(|n| !n.is_empty())?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    Some(StoreConfig {
        backend: StoreBackend::Scylla,
        scylla_nodes: vec![node],
        keyspace: format!("flashmall_{tag}_{}", &run[run.len() - 16..]),
        replication_factor: 1,
        request_timeout: Duration::from_secs(10),
        ..StoreConfig::default()
    })
}

/// Drops a test's keyspace (a failed test leaves it, for a look).
pub async fn drop_keyspace(store: &StoreConfig) {
    let Some(node) = store.scylla_nodes.first() else {
        return;
    };
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_node(node)
        .build()
        .await;
    if let Ok(session) = session {
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", store.keyspace), ())
            .await;
    }
}

impl EdgeStack {
    /// Starts the components and a proxy configured by `tweak`.
    pub async fn start(tweak: impl FnOnce(&mut ProxyConfig)) -> EdgeStack {
        EdgeStack::start_with(Options::default(), tweak).await
    }

    /// Starts the components as `options` says, and a proxy configured by `tweak`.
    pub async fn start_with(options: Options, tweak: impl FnOnce(&mut ProxyConfig)) -> EdgeStack {
        let dir = tempfile::tempdir().unwrap();
        let stack = Stack::start(
            StackConfig {
                engine: EngineConfig::default(),
                redis: RedisConfig {
                    url: options.redis_url.unwrap_or_default(),
                    ..RedisConfig::default()
                },
                ledger: options.ledger,
                store: options.store,
                orders: OrdersConfig {
                    payment_timeout: options.payment_timeout,
                    sweep_interval: Duration::from_millis(50),
                    release_retry: Duration::from_millis(200),
                    ..OrdersConfig::default()
                },
                payments: PaymentsConfig {
                    simulator: options.simulator,
                    pending_timeout: options.pending_timeout,
                    sweep_interval: Duration::from_millis(50),
                    capture_retry: Duration::from_millis(200),
                    ..PaymentsConfig::default()
                },
                products: flashmall_services::config::ProductsConfig::default(),
                cart: flashmall_services::config::CartConfig::default(),
                checkout: flashmall_services::config::CheckoutConfig::default(),
                client: ClientConfig::default(),
                auth: AuthConfig {
                    argon2_memory_kib: 64,
                    argon2_iterations: 1,
                    access_ttl: options.access_ttl,
                    ..AuthConfig::default()
                },
                data_dir: dir.path().to_owned(),
                jwt_secret: JWT_SECRET.to_vec(),
                tls: options.tls,
            },
            tweak,
        )
        .await
        .expect("the stack starts");
        EdgeStack {
            base: stack.base(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            proxy_addr: stack.proxy.addr,
            stack: Some(stack),
            _dir: dir,
        }
    }

    /// Another proxy replica in front of the same components.
    pub async fn replica(&self) -> RunningProxy {
        let mut settings = self.stack.as_ref().expect("running").proxy_settings.clone();
        settings.proxy.listen = "127.0.0.1:0".parse().unwrap();
        settings.proxy.admin_listen = "127.0.0.1:0".parse().unwrap();
        flashmall_proxy::launch(&settings)
            .await
            .expect("replica starts")
    }

    /// The running components (for tests that stop or inspect one).
    pub fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A URL on the edge's admin port (probes and metrics).
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.stack().admin_base())
    }

    /// Sold-out answers the edge gave without asking the engine (its
    /// `flashmall_proxy_rejections_total{reason="sold_out_gate"}`; the
    /// registry is the test process's, shared by its stacks).
    pub async fn gate_answers(&self) -> f64 {
        let metrics = self
            .client
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("the admin port answers")
            .text()
            .await
            .unwrap_or_default();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("flashmall_proxy_rejections_total") && l.contains("sold_out_gate")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    pub async fn call(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("the proxy answers");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Registers (if needed) and logs in through the proxy.
    pub async fn login(&self, email: &str) -> Login {
        let (status, body) = self
            .call(
                self.client
                    .post(self.url("/api/v1/auth/register"))
                    .json(&json!({"email": email, "password": PASSWORD})),
            )
            .await;
        assert!(
            status == 201 || status == 409,
            "register {email}: {status} {body}"
        );
        let (status, tokens) = self
            .call(
                self.client
                    .post(self.url("/api/v1/auth/login"))
                    .json(&json!({"email": email, "password": PASSWORD})),
            )
            .await;
        assert_eq!(status, 200, "login {email}: {tokens}");
        let access = tokens["access_token"].as_str().unwrap().to_owned();
        let (_, me) = self
            .call(
                self.client
                    .get(self.url("/api/v1/users/me"))
                    .bearer_auth(&access),
            )
            .await;
        Login {
            user_id: me["id"].as_str().unwrap_or_default().to_owned(),
            access,
            refresh: tokens["refresh_token"].as_str().unwrap().to_owned(),
        }
    }

    /// The admin: registered, granted admin as an operator would
    /// (`flashmall grant-admin`), logged in.
    pub async fn admin(&self) -> Login {
        self.stack()
            .register_admin(ADMIN_EMAIL, PASSWORD)
            .await
            .expect("the admin is registered and granted");
        self.login(ADMIN_EMAIL).await
    }

    /// Logs `email` in as a merchant (the admin grants the role; a new
    /// login carries it).
    pub async fn merchant(&self, admin: &Login, email: &str) -> Login {
        let user = self.login(email).await;
        let (status, body) = self
            .call(
                self.client
                    .put(self.url(&format!("/api/v1/admin/users/{}/roles", user.user_id)))
                    .bearer_auth(&admin.access)
                    .json(&json!({"roles": ["merchant"]})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        self.login(email).await
    }

    /// Creates an open sale as the admin; returns its id.
    pub async fn sale(&self, admin: &Login, stock: i64) -> String {
        let now = time::OffsetDateTime::now_utc();
        let (status, body) = self
            .call(self.client.post(self.url("/api/v1/sales")).bearer_auth(&admin.access).json(&json!({
                "product_id": "p-1", "price": 1999, "stock": stock, "per_user_limit": 1,
                "starts_at": flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
                "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
            })))
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn purchase(&self, login: &Login, sale: &str, key: &str) -> (u16, Value) {
        self.call(
            self.client
                .post(self.url(&format!("/api/v1/sales/{sale}/purchase")))
                .bearer_auth(&login.access)
                .header("idempotency-key", key)
                .json(&json!({"quantity": 1})),
        )
        .await
    }

    pub async fn stop(mut self) {
        if let Some(stack) = self.stack.take() {
            stack.stop().await;
        }
    }
}

impl Drop for EdgeStack {
    fn drop(&mut self) {
        if let Some(stack) = self.stack.take() {
            stack.shutdown.trigger();
            // Stopping waits for the proxy thread; do not block a runtime thread.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(stack.stop());
                }
            });
        }
    }
}
