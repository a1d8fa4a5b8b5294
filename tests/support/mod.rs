//! Runs the real `flashmall` binary for black-box tests, with small HTTP
//! helpers. Configuration reaches the child through its own environment
//! (`FLASHMALL_*`); the test process's environment is never changed.

#![allow(dead_code)]

pub mod stack;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use flashmall_mesh::identity::IDENTITY_HEADER;
use flashmall_mesh::{Identity, IdentityKey, Role};
use flashmall_testing::RedisServer;
use serde_json::{Value, json};
use time::OffsetDateTime;

/// The mesh identity key the test processes are given.
pub const TEST_KEY: &str = "flashmall-tests-identity-key-0123456789abcdef";

/// A signed identity header value for `user` (an admin when `admin`),
/// for the engine (these tests call it directly).
pub fn sign(user: &str, admin: bool) -> String {
    let roles = if admin {
        vec![Role::Admin]
    } else {
        vec![Role::Customer]
    };
    IdentityKey::new(TEST_KEY.as_bytes())
        .expect("test key")
        .sign_for(
            &Identity {
                user_id: user.to_owned(),
                roles,
                token_id: uuid::Uuid::now_v7().to_string(),
                expires_at_ms: flashmall_engine::now_ms() + 600_000,
            },
            "engine",
        )
}

/// Polls `f` until it returns `Some`, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A loopback address drawn at random (127.X.Y.Z, clear of 127.0.0.0/16
/// where the stores and the engines under test listen) and seven ports
/// free on it, distinct from each other.
fn private_loopback_ports() -> (std::net::Ipv4Addr, Vec<u16>) {
    loop {
        let [x, y, z, ..] = *uuid::Uuid::new_v4().as_bytes();
        let ip = std::net::Ipv4Addr::new(127, x.clamp(1, 254), y.clamp(1, 254), z.clamp(1, 254));
        // Held until all are found, so no two are the same.
        let listeners: Vec<std::net::TcpListener> = (0..7)
            .map_while(|_| std::net::TcpListener::bind((ip, 0)).ok())
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
            .collect();
        if ports.len() == 7 {
            return (ip, ports);
        }
    }
}

/// One `flashmall` process, killed on drop.
pub struct Flashmall {
    child: Child,
    pub base: String,
}

impl Flashmall {
    /// Runs `flashmall ARGS` with the engine on `port` and `envs` set.
    pub fn spawn(args: &[&str], port: u16, envs: &[(&str, String)]) -> Flashmall {
        let mut cmd = flashmall_testing::flashmall_command(env!("CARGO_BIN_EXE_flashmall"));
        cmd.args(args)
            .env("FLASHMALL_ENGINE__LISTEN", format!("127.0.0.1:{port}"));
        // Every other component on a loopback address of this spawn's own,
        // each on its own port: two of these run at once in one suite, and
        // a port found free and let go can be taken by anyone before the
        // child binds it (once, another spawn's service answered this
        // one's requests with 404).
        let (ip, ports) = private_loopback_ports();
        for (component, port) in [
            "AUTH", "PROXY", "ORDERS", "PAYMENTS", "PRODUCTS", "CART", "CHECKOUT",
        ]
        .iter()
        .zip(ports)
        {
            cmd.env(
                format!("FLASHMALL_{component}__LISTEN"),
                format!("{ip}:{port}"),
            );
        }
        cmd.env("FLASHMALL_PROXY__ADMIN_LISTEN", format!("{ip}:0"))
            .env("FLASHMALL_PROXY__GRACE_PERIOD", "0s")
            .env("FLASHMALL_LOG__LEVEL", "warn")
            .env("FLASHMALL_MESH__IDENTITY_KEY", TEST_KEY)
            .env_remove("FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Flashmall {
            child: cmd.spawn().expect("spawn flashmall"),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `flashmall engine run` on a real Redis, data in `data`, a stable
    /// replica name, optional failpoints, and `more` variables (another
    /// ledger, say).
    pub fn engine(
        redis: &RedisServer,
        data: &Path,
        port: u16,
        failpoints: Option<&str>,
        durable: bool,
        more: &[(&str, String)],
    ) -> Flashmall {
        let mut envs = vec![
            ("FLASHMALL_ENGINE__INSTANCE_ID", "engine-a".to_owned()),
            ("FLASHMALL_ENGINE__SETTLE_CLAIM_IDLE", "300ms".to_owned()),
            // No order service runs here: settled sales stay in the outbox.
            ("FLASHMALL_ENGINE__ORDER_ENDPOINTS", String::new()),
            ("FLASHMALL_ENGINE__DURABLE_ACK", durable.to_string()),
            ("FLASHMALL_ENGINE__DURABLE_ACK_TIMEOUT", "2s".to_owned()),
            ("FLASHMALL_REDIS__URL", redis.url()),
            ("FLASHMALL_DATA__DIR", data.display().to_string()),
        ];
        if let Some(fp) = failpoints {
            envs.push(("FAILPOINTS", fp.to_owned()));
        }
        envs.extend(more.iter().cloned());
        Flashmall::spawn(&["engine", "run"], port, &envs)
    }

    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("flashmall exited during start-up: {status}");
            }
            if let Ok(r) = client.get(format!("{}/readyz", self.base)).send().await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("flashmall not ready after 15 s");
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit.
    pub async fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for flashmall") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "flashmall still running {limit:?} after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the process to die by itself (a failpoint abort).
    pub async fn wait_exit(&mut self) {
        for _ in 0..200 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("flashmall did not die at the failpoint");
    }
}

impl Drop for Flashmall {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP client with a deadline, so a test never hangs on a dead process.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// Sends a request; `None` when the connection failed (the process died).
pub async fn send(request: reqwest::RequestBuilder) -> Option<(u16, Value)> {
    let response = request.send().await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.json().await.unwrap_or(Value::Null)))
}

pub fn admin(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    r.header(IDENTITY_HEADER, sign("admin-1", true))
}

/// Creates an open sale (limit 1 per buyer) and returns its id.
pub async fn create_sale(client: &reqwest::Client, base: &str, stock: i64) -> String {
    let now = OffsetDateTime::now_utc();
    let (status, body) = send(
        admin(client.post(format!("{base}/api/v1/sales"))).json(&json!({
            "product_id": "p-1", "price": 100, "stock": stock, "per_user_limit": 1,
            "starts_at": flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
            "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
        })),
    )
    .await
    .expect("create sale");
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// One purchase of one unit.
pub async fn purchase(
    client: &reqwest::Client,
    base: &str,
    sale: &str,
    user: &str,
    key: &str,
) -> Option<(u16, Value)> {
    send(
        client
            .post(format!("{base}/api/v1/sales/{sale}/purchase"))
            .header(IDENTITY_HEADER, sign(user, false))
            .header("idempotency-key", key)
            .json(&json!({"quantity": 1})),
    )
    .await
}
