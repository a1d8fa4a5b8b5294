//! A running engine for black-box tests: real sockets on 127.0.0.1, a real
//! `redis-server` (or the in-process front), an embedded ledger in a temp
//! dir, and small HTTP helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use flashmall_engine::config::{EngineConfig, LedgerConfig, RedisConfig};
use flashmall_engine::{Engine, Settings};
use flashmall_mesh::identity::IDENTITY_HEADER;
use flashmall_mesh::{Identity, IdentityKey, Role, Shutdown};
use flashmall_testing::RedisServer;
use serde_json::{Value, json};
use time::OffsetDateTime;
use tokio::net::TcpListener;

pub struct Stack {
    pub base: String,
    pub client: reqwest::Client,
    pub redis: Option<RedisServer>,
    pub engine: Arc<Engine>,
    pub settings: Settings,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

pub enum Front {
    Redis,
    Local,
}

impl Stack {
    pub async fn start(front: Front) -> Stack {
        Self::start_with(front, |_| {}).await
    }

    pub async fn start_with(front: Front, tweak: impl FnOnce(&mut Settings)) -> Stack {
        let redis = match front {
            Front::Redis => Some(RedisServer::start()),
            Front::Local => None,
        };
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            engine: EngineConfig {
                settle_claim_idle: Duration::from_millis(500),
                // The engine alone: orders wait in the ledger's outbox.
                order_endpoints: Vec::new(),
                ..EngineConfig::default()
            },
            redis: RedisConfig {
                url: redis.as_ref().map(RedisServer::url).unwrap_or_default(),
                ..RedisConfig::default()
            },
            ledger: LedgerConfig::default(),
            data_dir: dir.path().to_owned(),
            identity: IdentityKey::random(),
            client: Default::default(),
            tls: None,
            admin_listen: None,
        };
        tweak(&mut settings);
        let shutdown = Shutdown::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = flashmall_engine::launch(&settings, listener, shutdown.clone())
            .await
            .expect("engine starts");
        Stack {
            base: format!("http://{}", running.addr),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            redis,
            engine: running.engine,
            settings,
            shutdown,
            _dir: dir,
        }
    }

    pub fn redis(&self) -> &RedisServer {
        self.redis.as_ref().expect("this stack runs on redis")
    }

    /// The signed identity header value for `user` (roles: customer).
    pub fn sign(&self, user: &str) -> String {
        self.sign_with(user, vec![Role::Customer])
    }

    pub fn sign_with(&self, user: &str, roles: Vec<Role>) -> String {
        self.settings.identity.sign_for(
            &Identity {
                user_id: user.to_owned(),
                roles,
                token_id: uuid::Uuid::now_v7().to_string(),
                expires_at_ms: flashmall_engine::now_ms() + 600_000,
            },
            "engine",
        )
    }

    /// Sends `request` as an admin.
    pub fn admin(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.header(
            IDENTITY_HEADER,
            self.sign_with("admin-1", vec![Role::Admin]),
        )
    }

    /// Sends `request` as `user`.
    pub fn as_user(&self, request: reqwest::RequestBuilder, user: &str) -> reqwest::RequestBuilder {
        request.header(IDENTITY_HEADER, self.sign(user))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a sale (as an admin) that opened a second ago.
    pub async fn create_sale(&self, stock: i64, per_user_limit: i64) -> String {
        let now = OffsetDateTime::now_utc();
        self.create_sale_at(
            stock,
            per_user_limit,
            now - time::Duration::seconds(1),
            now + time::Duration::hours(1),
        )
        .await
    }

    pub async fn create_sale_at(
        &self,
        stock: i64,
        per_user_limit: i64,
        starts_at: OffsetDateTime,
        ends_at: OffsetDateTime,
    ) -> String {
        let (status, body) = send(
            self.admin(self.client.post(self.url("/api/v1/sales")))
                .json(&json!({
                    "product_id": "p-1",
                    "price": 1999,
                    "stock": stock,
                    "per_user_limit": per_user_limit,
                    "starts_at": flashmall_engine::sale::rfc3339(starts_at),
                    "ends_at": flashmall_engine::sale::rfc3339(ends_at),
                })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn purchase(&self, sale: &str, user: &str, key: &str, quantity: i64) -> (u16, Value) {
        send(
            self.client
                .post(self.url(&format!("/api/v1/sales/{sale}/purchase")))
                .header(IDENTITY_HEADER, self.sign(user))
                .header("idempotency-key", key)
                .json(&json!({ "quantity": quantity })),
        )
        .await
    }

    pub async fn sale(&self, sale: &str) -> Value {
        let (status, body) =
            send(self.client.get(self.url(&format!("/api/v1/sales/{sale}")))).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    pub async fn reconcile(&self, sale: &str) -> Value {
        let (status, body) = send(
            self.admin(self.client.post(self.url("/api/v1/admin/reconcile")))
                .json(&json!({ "sale_id": sale })),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["sales"][0].clone()
    }

    pub async fn reservation(&self, id: &str, user: &str) -> (u16, Value) {
        send(
            self.client
                .get(self.url(&format!("/api/v1/reservations/{id}")))
                .header(IDENTITY_HEADER, self.sign(user)),
        )
        .await
    }

    /// Waits until nothing of the sale is pending settlement.
    pub async fn wait_settled(&self, sale: &str) -> Value {
        for _ in 0..500 {
            let view = self.sale(sale).await;
            if view["pending"] == 0 {
                return view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "sale {sale} did not settle within 5 s: {}",
            self.sale(sale).await
        );
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request reaches the engine");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}
