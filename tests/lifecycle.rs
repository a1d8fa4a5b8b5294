//! The `flashmall` process's life: `up` on embedded stores keeps its data
//! across a restart, stops cleanly on SIGTERM (settling what it holds), and
//! `flashmall engine reconcile` rebuilds and checks the sales offline.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::time::Duration;

use flashmall_testing::free_port;
use support::{Flashmall, create_sale, eventually, purchase, send};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_keeps_its_data_across_restarts_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let port = free_port();
    let client = support::client();

    let mut up = Flashmall::spawn(&["up", "--data-dir", &dir], port, &[]);
    up.wait_ready().await;
    let sale = create_sale(&client, &up.base, 5).await;
    let mut first = Vec::new();
    for u in 0..3 {
        let (status, body) = purchase(&client, &up.base, &sale, &format!("u{u}"), "k")
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        first.push(body["reservation_id"].as_str().unwrap().to_owned());
    }
    let status = up.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "SIGTERM exits cleanly, got {status}");

    // The in-process front is rebuilt from the embedded ledger at start-up.
    let mut up = Flashmall::spawn(&["up", "--data-dir", &dir], port, &[]);
    up.wait_ready().await;
    let (_, view) = send(client.get(format!("{}/api/v1/sales/{sale}", up.base)))
        .await
        .unwrap();
    assert_eq!(
        (view["settled"].as_i64(), view["remaining"].as_i64()),
        (Some(3), Some(2)),
        "{view}"
    );
    // Retries after the restart get their original answers; limits hold.
    for (u, id) in first.iter().enumerate() {
        let (status, body) = purchase(&client, &up.base, &sale, &format!("u{u}"), "k")
            .await
            .unwrap();
        assert_eq!(status, 201);
        assert_eq!(body["reservation_id"].as_str(), Some(id.as_str()));
        let (status, body) = purchase(&client, &up.base, &sale, &format!("u{u}"), "k2")
            .await
            .unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("limit_exceeded"))
        );
    }
    let mut sold = 0;
    for u in 3..10 {
        if purchase(&client, &up.base, &sale, &format!("u{u}"), "k")
            .await
            .unwrap()
            .0
            == 201
        {
            sold += 1;
        }
    }
    assert_eq!(sold, 2, "exactly the units left");
    assert!(up.terminate(Duration::from_secs(15)).await.success());

    // Offline reconcile over the same data finds every sale conserved.
    let output = flashmall_testing::flashmall_command(env!("CARGO_BIN_EXE_flashmall"))
        .args(["engine", "reconcile"])
        .env("FLASHMALL_DATA__DIR", &dir)
        .env("FLASHMALL_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = &reports[0];
    assert_eq!(report["sale_id"].as_str(), Some(sale.as_str()));
    assert_eq!(
        (report["settled"].as_i64(), report["remaining"].as_i64()),
        (Some(5), Some(0)),
        "{report}"
    );
    assert_eq!(
        (report["drift"].as_i64(), report["conserved"].as_bool()),
        (Some(0), Some(true)),
        "{report}"
    );
}

/// A trace collector that takes connections and never answers: purchases
/// go on at full service (spans are exported off the request path and
/// dropped when the collector cannot take them), and SIGTERM still stops
/// the process (its last export gives up at the exporter's 5 s timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_changes_nothing_for_buyers() {
    let collector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", collector.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((socket, _)) = collector.accept().await {
            connections.push(socket);
        }
    });
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let client = support::client();
    let mut up = Flashmall::spawn(
        &["up", "--data-dir", &dir],
        free_port(),
        &[("FLASHMALL_LOG__OTLP_ENDPOINT", endpoint)],
    );
    up.wait_ready().await;
    let sale = create_sale(&client, &up.base, 20).await;
    for u in 0..20 {
        let (status, body) = purchase(&client, &up.base, &sale, &format!("u{u}"), "k")
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = purchase(&client, &up.base, &sale, "u20", "k")
        .await
        .unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sold_out"))
    );
    let status = up.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "SIGTERM exits cleanly, got {status}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_stops_start_up_with_a_clear_message() {
    let output = flashmall_testing::flashmall_command(env!("CARGO_BIN_EXE_flashmall"))
        .args(["engine", "run"])
        .env("FLASHMALL_ENGINE__SETTLE_BATCH_SIZE", "0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("engine.settle_batch_size"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_the_storefront_through_the_proxy() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().display().to_string();
    let proxy_port = free_port();
    let client = support::client();
    let envs = [
        ("FLASHMALL_PROXY__LISTEN", format!("127.0.0.1:{proxy_port}")),
        (
            "FLASHMALL_AUTH__BOOTSTRAP_ADMINS",
            "ops@example.com".to_owned(),
        ),
        ("FLASHMALL_AUTH__ARGON2_MEMORY_KIB", "64".to_owned()),
        ("FLASHMALL_AUTH__ARGON2_ITERATIONS", "1".to_owned()),
    ];
    let edge = format!("http://127.0.0.1:{proxy_port}");
    let start = || async {
        let mut up = Flashmall::spawn(&["up", "--data-dir", &dir], free_port(), &envs);
        up.wait_ready().await;
        let mut ready = false;
        for _ in 0..100 {
            if client
                .get(format!("{edge}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ready, "the proxy answers");
        up
    };
    let mut up = start().await;
    let creds =
        |email: &str| serde_json::json!({"email": email, "password": "correct horse battery"});
    let login = |email: &'static str| {
        let (client, edge) = (client.clone(), edge.clone());
        async move {
            let (status, tokens) = send(
                client
                    .post(format!("{edge}/api/v1/auth/login"))
                    .json(&creds(email)),
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "{tokens}");
            tokens["access_token"].as_str().unwrap().to_owned()
        }
    };
    let token = |email: &'static str| {
        let (client, edge) = (client.clone(), edge.clone());
        async move {
            let (status, _) = send(
                client
                    .post(format!("{edge}/api/v1/auth/register"))
                    .json(&creds(email)),
            )
            .await
            .unwrap();
            assert_eq!(status, 201);
            login(email).await
        }
    };
    // Registering a bootstrap admin's email grants nothing: whoever is
    // first would get it. The next start grants it to the existing account.
    let ops = token("ops@example.com").await;
    token("buyer@example.com").await;
    let (status, _) = send(
        client
            .post(format!("{edge}/api/v1/sales"))
            .bearer_auth(&ops)
            .json(&serde_json::json!({})),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "registration made no admin");
    assert!(up.terminate(Duration::from_secs(15)).await.success());
    let mut up = start().await;
    // A fresh start has a fresh token secret here: log in again.
    let buyer = login("buyer@example.com").await;
    let ops = eventually(
        Duration::from_secs(10),
        "the bootstrap admin is granted",
        || async {
            let token = login("ops@example.com").await;
            let (_, me) = send(
                client
                    .get(format!("{edge}/api/v1/users/me"))
                    .bearer_auth(&token),
            )
            .await
            .unwrap();
            me["roles"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "admin"))
                .then_some(token)
        },
    )
    .await;
    let now = time::OffsetDateTime::now_utc();
    let (status, sale) = send(
        client
            .post(format!("{edge}/api/v1/sales"))
            .bearer_auth(&ops)
            .json(&serde_json::json!({
                "product_id": "p-1", "price": 100, "stock": 2, "per_user_limit": 1,
                "starts_at": flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
                "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
            })),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{sale}");
    let sale = sale["id"].as_str().unwrap();
    let (status, _) = send(
        client
            .post(format!("{edge}/api/v1/sales"))
            .bearer_auth(&buyer)
            .json(&serde_json::json!({})),
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "customers cannot create sales");
    let (status, body) = send(
        client
            .post(format!("{edge}/api/v1/sales/{sale}/purchase"))
            .bearer_auth(&buyer)
            .header("idempotency-key", "k")
            .json(&serde_json::json!({"quantity": 1})),
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    let (_, view) = send(client.get(format!("{edge}/api/v1/sales/{sale}")))
        .await
        .unwrap();
    assert_eq!(view["remaining"], 1);
    assert!(up.terminate(Duration::from_secs(15)).await.success());
}
