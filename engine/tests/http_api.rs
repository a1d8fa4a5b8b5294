//! The engine's HTTP and gRPC API, black-box, on a real `redis-server` and
//! an embedded ledger: races, limits, retries, bad input, Redis failures.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flashmall_mesh::Role;
use flashmall_mesh::identity::IDENTITY_HEADER;
use flashmall_proto::inventory as pb;
use serde_json::json;
use support::{Front, Stack, send};
use time::OffsetDateTime;

/// Fires one purchase per (user, key) concurrently; returns the answers.
async fn storm(
    stack: &Arc<Stack>,
    sale: &str,
    buyers: Vec<(String, String)>,
) -> Vec<(String, String, u16, serde_json::Value)> {
    let mut tasks = Vec::new();
    for (user, key) in buyers {
        let stack = Arc::clone(stack);
        let sale = sale.to_owned();
        tasks.push(tokio::spawn(async move {
            let (status, body) = stack.purchase(&sale, &user, &key, 1).await;
            (user, key, status, body)
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_buyers_get_exactly_the_stock() {
    let stack = Arc::new(Stack::start(Front::Redis).await);
    let sale = stack.create_sale(100, 1).await;
    let buyers = (0..250)
        .map(|i| (format!("u{i}"), format!("k{i}")))
        .collect();
    let answers = storm(&stack, &sale, buyers).await;
    let won: Vec<_> = answers.iter().filter(|a| a.2 == 201).collect();
    let lost = answers
        .iter()
        .filter(|a| a.2 == 409 && a.3["error"]["code"] == "sold_out")
        .count();
    assert_eq!(won.len(), 100, "exactly the stock is reserved");
    assert_eq!(lost, 150, "everyone else hears sold_out");
    let ids: HashSet<_> = won
        .iter()
        .map(|a| a.3["reservation_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 100);
    // Durable ack: every 201 is already in the ledger.
    for (user, _, _, body) in &won {
        let (status, r) = stack
            .reservation(body["reservation_id"].as_str().unwrap(), user)
            .await;
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["status"], "held");
        assert_eq!(r["order_id"], body["order_id"]);
    }
    let view = stack.wait_settled(&sale).await;
    assert_eq!(
        (view["settled"].as_i64(), view["remaining"].as_i64()),
        (Some(100), Some(0))
    );
    assert_eq!(view["status"], "sold_out");
    let report = stack.reconcile(&sale).await;
    assert_eq!(
        (report["drift"].as_i64(), report["conserved"].as_bool()),
        (Some(0), Some(true)),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limit_holds_under_concurrency() {
    let stack = Arc::new(Stack::start(Front::Redis).await);
    let sale = stack.create_sale(1_000, 2).await;
    let mut attempts = Vec::new();
    for u in 0..20 {
        for k in 0..5 {
            attempts.push((format!("u{u}"), format!("k{k}")));
        }
    }
    let answers = storm(&stack, &sale, attempts).await;
    let mut per_user: HashMap<&str, (usize, usize)> = HashMap::new();
    for (user, _, status, body) in &answers {
        let e = per_user.entry(user.as_str()).or_default();
        match status {
            201 => e.0 += 1,
            409 if body["error"]["code"] == "limit_exceeded" => e.1 += 1,
            other => panic!("unexpected answer {other} {body}"),
        }
    }
    for (user, (won, refused)) in per_user {
        assert_eq!((won, refused), (2, 3), "user {user}");
    }
    assert_eq!(stack.wait_settled(&sale).await["settled"], 40);
    // Asking for more than the limit in one request is refused outright.
    let (status, body) = stack.purchase(&sale, "u-new", "big", 3).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("limit_exceeded"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_with_the_same_key_return_the_original() {
    let stack = Arc::new(Stack::start(Front::Redis).await);
    let sale = stack.create_sale(3, 1).await;
    let answers = storm(
        &stack,
        &sale,
        (0..20)
            .map(|_| ("u1".to_owned(), "same".to_owned()))
            .collect(),
    )
    .await;
    let ids: HashSet<_> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.2, 201, "{}", a.3);
            a.3["reservation_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "one reservation for one key");
    let original = ids.into_iter().next().unwrap();
    // Sell out the rest, then retry: the sold-out flag still answers the original.
    stack.purchase(&sale, "u2", "a", 1).await;
    stack.purchase(&sale, "u3", "a", 1).await;
    let (status, body) = stack.purchase(&sale, "u4", "a", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sold_out"))
    );
    for _ in 0..3 {
        let (status, body) = stack.purchase(&sale, "u1", "same", 1).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["reservation_id"].as_str(), Some(original.as_str()));
    }
    let view = stack.wait_settled(&sale).await;
    assert_eq!(view["settled"], 3);
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let stack = Stack::start(Front::Redis).await;
    let sale = stack.create_sale(10, 2).await;
    let url = stack.url(&format!("/api/v1/sales/{sale}/purchase"));
    let post = |body: String| {
        stack
            .client
            .post(&url)
            .header(IDENTITY_HEADER, stack.sign("u1"))
            .header("idempotency-key", "k1")
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "zero quantity",
            post(r#"{"quantity":0}"#.into()),
            400,
            "invalid_request",
        ),
        (
            "negative quantity",
            post(r#"{"quantity":-1}"#.into()),
            400,
            "invalid_request",
        ),
        (
            "huge quantity",
            post(r#"{"quantity":1000000000000}"#.into()),
            400,
            "invalid_request",
        ),
        (
            "overflowing quantity",
            post(r#"{"quantity":99999999999999999999999}"#.into()),
            400,
            "invalid_request",
        ),
        (
            "fractional quantity",
            post(r#"{"quantity":1.5}"#.into()),
            400,
            "invalid_request",
        ),
        (
            "string quantity",
            post(r#"{"quantity":"1"}"#.into()),
            400,
            "invalid_request",
        ),
        (
            "malformed json",
            post(r#"{"quantity":"#.into()),
            400,
            "invalid_request",
        ),
        (
            "unknown field",
            post(r#"{"quantity":1,"user_id":"u2"}"#.into()),
            400,
            "invalid_request",
        ),
        ("empty body", post(String::new()), 400, "invalid_request"),
        (
            "oversize body",
            post(format!(
                r#"{{"quantity":1,"pad":"{}"}}"#,
                "x".repeat(64 * 1024)
            )),
            413,
            "payload_too_large",
        ),
        (
            "missing idempotency key",
            stack
                .client
                .post(&url)
                .header(IDENTITY_HEADER, stack.sign("u1"))
                .json(&json!({"quantity": 1})),
            400,
            "invalid_request",
        ),
        (
            "overlong idempotency key",
            stack
                .client
                .post(&url)
                .header(IDENTITY_HEADER, stack.sign("u1"))
                .header("idempotency-key", "k".repeat(200))
                .json(&json!({"quantity": 1})),
            400,
            "invalid_request",
        ),
        (
            "no identity",
            stack
                .client
                .post(&url)
                .header("idempotency-key", "k")
                .json(&json!({"quantity": 1})),
            401,
            "unauthenticated",
        ),
        (
            "unknown sale",
            stack
                .client
                .post(stack.url(&format!("/api/v1/sales/{}/purchase", uuid::Uuid::now_v7())))
                .header(IDENTITY_HEADER, stack.sign("u1"))
                .header("idempotency-key", "k")
                .json(&json!({"quantity": 1})),
            404,
            "sale_not_found",
        ),
        (
            "malformed sale id",
            stack
                .client
                .post(stack.url("/api/v1/sales/not-a-sale/purchase"))
                .header(IDENTITY_HEADER, stack.sign("u1"))
                .header("idempotency-key", "k")
                .json(&json!({"quantity": 1})),
            404,
            "sale_not_found",
        ),
    ];
    for (name, request, status, code) in cases {
        let (got, body) = send(request).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}: {body}"
        );
    }
    let view = stack.sale(&sale).await;
    assert_eq!(
        (
            view["remaining"].as_i64(),
            view["pending"].as_i64(),
            view["settled"].as_i64()
        ),
        (Some(10), Some(0), Some(0))
    );
    // Bad sale definitions are refused too.
    for bad in [
        json!({"product_id": "p", "price": 1, "stock": 0, "per_user_limit": 1, "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}),
        json!({"product_id": "p", "price": -5, "stock": 5, "per_user_limit": 1, "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}),
        json!({"product_id": "p", "price": 1, "stock": 5, "per_user_limit": 1, "starts_at": "soon", "ends_at": "2099-01-01T00:00:00Z"}),
        json!({"product_id": "p", "price": 1.5, "stock": 5, "per_user_limit": 1, "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2099-01-01T00:00:00Z"}),
    ] {
        let (status, body) = send(
            stack
                .admin(stack.client.post(stack.url("/api/v1/sales")))
                .json(&bad),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}: {body}"
        );
    }
}

/// A sale's holders are for components (the edge's gate, with its own
/// service identity) and admins; a buyer is refused.
#[tokio::test]
async fn a_sales_holders_are_for_components_and_admins() {
    let stack = Stack::start(Front::Local).await;
    let sale = stack.create_sale(5, 1).await;
    let url = stack.url(&format!("/api/v1/sales/{sale}/holders"));
    let edge = stack.settings.identity.sign_for(
        &flashmall_mesh::Identity::service("edge", Duration::from_secs(30)),
        "engine",
    );
    let (status, body) = send(stack.client.get(&url).header(IDENTITY_HEADER, edge)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(stack.admin(stack.client.get(&url))).await;
    assert_eq!(status, 200, "{body}");
    let buyer = stack.sign("u1");
    let (status, body) = send(stack.client.get(&url).header(IDENTITY_HEADER, buyer)).await;
    assert_eq!(status, 403, "{body}");
}

#[tokio::test]
async fn identity_is_only_taken_from_a_valid_signature() {
    let stack = Stack::start(Front::Local).await;
    let sale = stack.create_sale(5, 1).await;
    let url = stack.url(&format!("/api/v1/sales/{sale}/purchase"));
    let foreign = flashmall_mesh::IdentityKey::random().sign_for(
        &flashmall_mesh::Identity {
            user_id: "u1".into(),
            roles: vec![Role::Admin],
            token_id: "t".into(),
            expires_at_ms: flashmall_engine::now_ms() + 60_000,
        },
        "engine",
    );
    let expired = stack.settings.identity.sign_for(
        &flashmall_mesh::Identity {
            user_id: "u1".into(),
            roles: vec![Role::Customer],
            token_id: "t".into(),
            expires_at_ms: flashmall_engine::now_ms() - 1,
        },
        "engine",
    );
    // A valid signature for another component: not the engine's to accept.
    let for_orders = stack.settings.identity.sign_for(
        &flashmall_mesh::Identity {
            user_id: "u1".into(),
            roles: vec![Role::Customer],
            token_id: "t".into(),
            expires_at_ms: flashmall_engine::now_ms() + 60_000,
        },
        "orders",
    );
    let attempts = [
        ("x-user-id", "u1".to_owned()),
        ("x-user-roles", "admin".to_owned()),
        (IDENTITY_HEADER, foreign),
        (IDENTITY_HEADER, for_orders),
        (IDENTITY_HEADER, expired),
        (IDENTITY_HEADER, stack.sign("u1").replacen("u1", "u2", 1)),
    ];
    for (header, value) in attempts {
        let (status, body) = send(
            stack
                .client
                .post(&url)
                .header(header, value)
                .header("idempotency-key", "k")
                .json(&json!({"quantity": 1})),
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthenticated")),
            "{header}"
        );
    }
    assert_eq!(stack.sale(&sale).await["remaining"], 5);
}

#[tokio::test]
async fn admin_calls_need_the_admin_role() {
    let stack = Stack::start(Front::Local).await;
    let (status, body) = send(
        stack
            .client
            .post(stack.url("/api/v1/sales"))
            .header(IDENTITY_HEADER, stack.sign("u1"))
            .json(&json!({"product_id": "p"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = send(
        stack
            .client
            .post(stack.url("/api/v1/admin/reconcile"))
            .header(IDENTITY_HEADER, stack.sign("u1")),
    )
    .await;
    assert_eq!(status, 403);
    // Another user's reservation is as invisible as a missing one.
    let sale = stack.create_sale(5, 1).await;
    let (_, body) = stack.purchase(&sale, "owner", "k", 1).await;
    let id = body["reservation_id"].as_str().unwrap();
    assert_eq!(stack.reservation(id, "owner").await.0, 200);
    assert_eq!(stack.reservation(id, "someone-else").await.0, 404);
}

#[tokio::test]
async fn the_sale_window_is_enforced() {
    let stack = Stack::start(Front::Redis).await;
    let now = OffsetDateTime::now_utc();
    let later = stack
        .create_sale_at(
            5,
            1,
            now + time::Duration::hours(1),
            now + time::Duration::hours(2),
        )
        .await;
    let (status, body) = stack.purchase(&later, "u1", "k", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sale_not_open"))
    );
    assert_eq!(stack.sale(&later).await["status"], "scheduled");
    assert_eq!(
        stack.sale(&later).await["remaining"],
        5,
        "warmed up before it opens"
    );
    let ending = stack
        .create_sale_at(
            5,
            1,
            now - time::Duration::seconds(5),
            now + time::Duration::milliseconds(1_000),
        )
        .await;
    let (status, before) = stack.purchase(&ending, "u1", "k", 1).await;
    assert_eq!(status, 201, "{before}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, body) = stack.purchase(&ending, "u2", "k", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sale_closed"))
    );
    // A purchase made before the end and retried after it keeps its answer.
    let (status, again) = stack.purchase(&ending, "u1", "k", 1).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["reservation_id"], before["reservation_id"]);
    assert_eq!(stack.sale(&ending).await["status"], "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_sale_is_rebuilt_from_the_ledger() {
    let stack = Arc::new(Stack::start(Front::Redis).await);
    let sale = stack.create_sale(100, 1).await;
    let first = storm(
        &stack,
        &sale,
        (0..40)
            .map(|i| (format!("u{i}"), format!("k{i}")))
            .collect(),
    )
    .await;
    assert!(first.iter().all(|a| a.2 == 201));
    stack.redis().command(&["FLUSHALL"]);
    // The front lost everything: purchases answer 503 (never a wrong 201)
    // until reconcile rebuilds it, which a NotReady answer also triggers.
    let report = stack.reconcile(&sale).await;
    assert_eq!(report["front_present"], false, "{report}");
    assert_eq!(report["remaining"], 60, "{report}");
    assert_eq!(report["conserved"], true, "{report}");
    // A retry of an acknowledged purchase still gets its original answer.
    let (status, body) = stack.purchase(&sale, "u0", "k0", 1).await;
    assert_eq!(status, 201);
    assert_eq!(
        body["reservation_id"],
        first.iter().find(|a| a.0 == "u0").unwrap().3["reservation_id"]
    );
    // Earlier buyers are still at their limit.
    let (status, body) = stack.purchase(&sale, "u1", "again", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("limit_exceeded"))
    );
    let second = storm(
        &stack,
        &sale,
        (40..200)
            .map(|i| (format!("u{i}"), format!("k{i}")))
            .collect(),
    )
    .await;
    assert_eq!(
        second.iter().filter(|a| a.2 == 201).count(),
        60,
        "the sale goes on, without oversell"
    );
    let view = stack.wait_settled(&sale).await;
    assert_eq!(view["settled"], 100);
    assert_eq!(stack.reconcile(&sale).await["drift"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_survive_script_flush_mid_sale() {
    let stack = Arc::new(Stack::start(Front::Redis).await);
    let sale = stack.create_sale(50, 1).await;
    let first = storm(
        &stack,
        &sale,
        (0..25)
            .map(|i| (format!("u{i}"), format!("k{i}")))
            .collect(),
    )
    .await;
    stack.redis().command(&["SCRIPT", "FLUSH"]);
    let second = storm(
        &stack,
        &sale,
        (25..80)
            .map(|i| (format!("u{i}"), format!("k{i}")))
            .collect(),
    )
    .await;
    let won = first.iter().chain(&second).filter(|a| a.2 == 201).count();
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|a| a.2 == 201 || a.3["error"]["code"] == "sold_out")
    );
    assert_eq!(won, 50);
    assert_eq!(stack.wait_settled(&sale).await["settled"], 50);
}

#[tokio::test]
async fn redis_down_answers_503_fast_and_sells_nothing_twice() {
    let mut stack = Stack::start_with(Front::Redis, |s| {
        s.redis.command_timeout = Duration::from_millis(300);
        s.redis.breaker_failures = 2;
        s.redis.breaker_cooldown = Duration::from_secs(30);
    })
    .await;
    let sale = stack.create_sale(10, 1).await;
    assert_eq!(stack.purchase(&sale, "u1", "k1", 1).await.0, 201);
    stack.redis.as_mut().unwrap().kill();
    for i in 0..4 {
        let started = Instant::now();
        let (status, body) = stack.purchase(&sale, "u2", "k2", 1).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (503, Some("unavailable")),
            "attempt {i}: {body}"
        );
        // A bound on "never a hang", far above the 300 ms command deadline.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "attempt {i} hung for {:?}",
            started.elapsed()
        );
    }
    // The ledger still holds exactly the one acknowledged unit.
    let (_, counts) = stack
        .engine
        .ledger
        .sale(sale.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counts.settled, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_ack_mode_answers_before_settlement_and_still_settles() {
    let stack = Arc::new(
        Stack::start_with(Front::Redis, |s| {
            s.engine.durable_ack = false;
        })
        .await,
    );
    let sale = stack.create_sale(30, 1).await;
    let answers = storm(
        &stack,
        &sale,
        (0..60)
            .map(|i| (format!("u{i}"), format!("k{i}")))
            .collect(),
    )
    .await;
    assert_eq!(answers.iter().filter(|a| a.2 == 201).count(), 30);
    let view = stack.wait_settled(&sale).await;
    assert_eq!(view["settled"], 30);
    for (user, _, status, body) in &answers {
        if *status == 201 {
            assert_eq!(
                stack
                    .reservation(body["reservation_id"].as_str().unwrap(), user)
                    .await
                    .0,
                200
            );
        }
    }
}

async fn grpc(
    stack: &Stack,
) -> pb::inventory_service_client::InventoryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(stack.base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    pb::inventory_service_client::InventoryServiceClient::new(channel)
}

fn as_user<T>(stack: &Stack, message: T, user: &str, admin: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let roles = if admin {
        vec![Role::Admin]
    } else {
        vec![Role::Customer]
    };
    let signed = stack.sign_with(user, roles);
    request
        .metadata_mut()
        .insert(IDENTITY_HEADER, signed.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_release_puts_units_back_on_sale() {
    let stack = Stack::start(Front::Redis).await;
    let mut client = grpc(&stack).await;
    let now = OffsetDateTime::now_utc();
    let sale = client
        .create_sale(as_user(
            &stack,
            pb::CreateSaleRequest {
                product_id: "p-9".into(),
                price: 500,
                stock: 2,
                per_user_limit: 1,
                starts_at: flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
                ends_at: flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
            },
            "admin-1",
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    let reserve = |user: &str, key: &str| {
        as_user(
            &stack,
            pb::ReserveRequest {
                sale_id: sale.id.clone(),
                quantity: 1,
                idempotency_key: key.into(),
            },
            user,
            false,
        )
    };
    let a = client
        .reserve(reserve("a", "1"))
        .await
        .unwrap()
        .into_inner();
    client.reserve(reserve("b", "1")).await.unwrap();
    let sold_out = client.reserve(reserve("c", "1")).await.unwrap_err();
    assert_eq!(sold_out.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        flashmall_mesh::ApiError::from_status(&sold_out).code,
        flashmall_mesh::ErrorCode::SoldOut
    );
    // Buyers cancel their order instead: a buyer, even the owner, may not
    // release a reservation (its order would stay payable).
    for user in ["b", "a"] {
        let denied = client
            .release(as_user(
                &stack,
                pb::ReleaseRequest {
                    reservation_id: a.reservation_id.clone(),
                },
                user,
                false,
            ))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{user}");
    }
    // The order service releases, with its service identity.
    let mut as_orders = tonic::Request::new(pb::ReleaseRequest {
        reservation_id: a.reservation_id.clone(),
    });
    let signed = stack.settings.identity.sign_for(
        &flashmall_mesh::Identity::service("orders", Duration::from_secs(60)),
        "engine",
    );
    as_orders
        .metadata_mut()
        .insert(IDENTITY_HEADER, signed.parse().unwrap());
    let released = client.release(as_orders).await.unwrap().into_inner();
    assert_eq!(
        (released.outcome.as_str(), released.quantity),
        ("released", 1)
    );
    let again = client
        .release(as_user(
            &stack,
            pb::ReleaseRequest {
                reservation_id: a.reservation_id.clone(),
            },
            "admin-1",
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.outcome, "already_released");
    // The unit is on sale again, for someone else (the flag is re-checked).
    tokio::time::sleep(stack.settings.engine.sold_out_recheck).await;
    client
        .reserve(reserve("c", "2"))
        .await
        .expect("the released unit sells again");
    let view = client
        .get_sale(tonic::Request::new(pb::GetSaleRequest {
            sale_id: sale.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((view.remaining, view.released), (0, 1));
    let r = client
        .get_reservation(as_user(
            &stack,
            pb::GetReservationRequest {
                reservation_id: a.reservation_id,
            },
            "a",
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, "released");
    let report = client
        .reconcile(as_user(
            &stack,
            pb::ReconcileRequest {
                sale_id: sale.id.clone(),
            },
            "admin-1",
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            report.sales[0].drift,
            report.sales[0].conserved,
            report.sales[0].settled
        ),
        (0, true, 2)
    );
}

#[tokio::test]
async fn health_ready_and_metrics_are_served() {
    let stack = Stack::start(Front::Redis).await;
    let sale = stack.create_sale(1, 1).await;
    stack.purchase(&sale, "u1", "k", 1).await;
    for path in ["/healthz", "/readyz"] {
        let response = stack.client.get(stack.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers().contains_key("x-request-id"));
    }
    let metrics = stack
        .client
        .get(stack.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "flashmall_engine_purchases_total",
        "flashmall_engine_purchase_duration_seconds",
        "flashmall_engine_settle_batch_size",
        "flashmall_http_request_duration_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let (status, body) = send(stack.client.get(stack.url("/api/v1/nowhere"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    // Readiness follows the stock front.
    let mut stack = stack;
    stack.redis.as_mut().unwrap().kill();
    assert_eq!(
        stack
            .client
            .get(stack.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_workers_stop_once_their_sale_ended_and_settled() {
    let stack = Stack::start_with(Front::Redis, |s| {
        s.engine.settle_retire_after = Duration::ZERO;
    })
    .await;
    let workers = || {
        stack
            .engine
            .workers
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let _open = stack.create_sale(5, 1).await;
    let now = OffsetDateTime::now_utc();
    let ending = stack
        .create_sale_at(
            5,
            1,
            now - time::Duration::seconds(5),
            now + time::Duration::milliseconds(600),
        )
        .await;
    let (status, body) = stack.purchase(&ending, "u1", "k", 1).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(workers(), 2);
    let started = Instant::now();
    while workers() != 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ended sale's worker did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It stopped only after settling what the sale sold.
    let (status, r) = stack
        .reservation(body["reservation_id"].as_str().unwrap(), "u1")
        .await;
    assert_eq!((status, r["status"].as_str()), (200, Some("held")));
}

/// Releases the order service would make: an expired order's reservation,
/// by the engine's own release step (the order service's gRPC call).
async fn release_as_orders(
    stack: &Stack,
    reservation_id: &str,
) -> Result<flashmall_engine::release::Released, flashmall_mesh::ApiError> {
    let orders = flashmall_mesh::Identity::service("orders", Duration::from_secs(60));
    flashmall_engine::release::release(&stack.engine, &orders, reservation_id).await
}

/// Buys `n` units of a fresh sale of `stock` (one per buyer) and waits for
/// settlement; their reservation ids.
async fn bought(stack: &Stack, stock: i64, n: usize) -> (String, Vec<String>) {
    let sale = stack.create_sale(stock, 1).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let (status, body) = stack.purchase(&sale, &format!("u{i}"), "k", 1).await;
        assert_eq!(status, 201, "{body}");
        ids.push(body["reservation_id"].as_str().unwrap().to_owned());
    }
    stack.wait_settled(&sale).await;
    (sale, ids)
}

/// A release begun in the ledger and given back to the front, whose last
/// ledger step has not run (its caller slow, or dead there).
async fn given_back_unrecorded(stack: &Stack, sale_id: uuid::Uuid, reservation_id: &str) {
    let r = match stack
        .engine
        .ledger
        .begin_release(reservation_id.parse().unwrap())
        .await
        .unwrap()
    {
        flashmall_engine::ledger::ReleaseStep::Releasing(r) => r,
        other => panic!("{other:?}"),
    };
    stack
        .engine
        .front
        .give_back(sale_id, r.id, &r.user_id, r.quantity)
        .await
        .unwrap();
}

/// A release that meets the sale out of the front (a reconcile on another
/// replica is rebuilding it, from a ledger read that may predate the
/// release) must not report success: its units are not back. It answers
/// `unavailable`, keeps the release in the ledger, and the caller's next
/// call finishes it. It once answered `released`: the order service
/// recorded the units returned and never asked again, and they stayed off
/// sale until some later reconcile (the chaos run's lost units).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_while_the_sale_is_rebuilt_is_not_done_until_asked_again() {
    let stack = Stack::start(Front::Redis).await;
    let (sale, ids) = bought(&stack, 3, 2).await;
    let sale_id: uuid::Uuid = sale.parse().unwrap();
    // Another replica's rebuild holds the sale.
    let held = stack
        .engine
        .front
        .suspend(sale_id)
        .await
        .unwrap()
        .expect("the lease is free");
    let refused = release_as_orders(&stack, &ids[0])
        .await
        .expect_err("no success while the units are not back");
    assert_eq!(refused.code, flashmall_mesh::ErrorCode::Unavailable);
    let (_, r) = stack.reservation(&ids[0], "u0").await;
    assert_eq!(r["status"], "releasing", "the ledger keeps the release");
    // That rebuild commits what it read before the release began: the
    // units are not on sale, and the ledger says they are on their way.
    use flashmall_engine::front::{IdemRecord, Rebuild, idempotency_field};
    let before = Rebuild {
        remaining: 1,
        buyers: vec![("u0".into(), 1), ("u1".into(), 1)],
        idempotency: ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                (
                    idempotency_field(&format!("u{i}"), "k"),
                    IdemRecord {
                        reservation_id: id.parse().unwrap(),
                        quantity: 1,
                    },
                )
            })
            .collect(),
        returned: Vec::new(),
    };
    assert!(
        stack
            .engine
            .front
            .rebuild(sale_id, held.token, &before)
            .await
            .unwrap()
    );
    assert_eq!(stack.sale(&sale).await["remaining"], 1);
    // Asked again (the order service's timer): the units come back, once.
    assert_eq!(
        release_as_orders(&stack, &ids[0]).await.unwrap(),
        flashmall_engine::release::Released::Released { quantity: 1 }
    );
    assert_eq!(
        release_as_orders(&stack, &ids[0]).await.unwrap(),
        flashmall_engine::release::Released::AlreadyReleased { quantity: 1 }
    );
    let view = stack.sale(&sale).await;
    assert_eq!(
        (view["remaining"].as_i64(), view["settled"].as_i64()),
        (Some(2), Some(1)),
        "{view}"
    );
    let report = stack.reconcile(&sale).await;
    assert_eq!(
        (report["drift"].as_i64(), report["remaining"].as_i64()),
        (Some(0), Some(2)),
        "{report}"
    );
}

/// Drift is measured at one instant, not from counts read while releases
/// run: a release between its give-back and its last ledger step counts
/// its units in the front and in the ledger's `returning`, and a release
/// begun but not given back counts them in the ledger only. Neither is
/// drift (the old measure, front + settled + returning, called the first
/// one -1 per such release: the chaos run's negative drifts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_half_done_are_not_drift() {
    let stack = Stack::start(Front::Redis).await;
    let (sale, ids) = bought(&stack, 5, 3).await;
    let sale_id: uuid::Uuid = sale.parse().unwrap();
    let ledger = &stack.engine.ledger;
    // Given back, not yet recorded returned (its caller died there).
    given_back_unrecorded(&stack, sale_id, &ids[0]).await;
    // Begun in the ledger only.
    ledger.begin_release(ids[1].parse().unwrap()).await.unwrap();
    let report = stack.reconcile(&sale).await;
    assert_eq!(
        (
            report["drift"].as_i64(),
            report["conserved"].as_bool(),
            report["settled"].as_i64(),
            report["remaining"].as_i64(),
            report["returning"].as_i64()
        ),
        (Some(0), Some(true), Some(1), Some(4), Some(2)),
        "{report}"
    );
    // Both releases are finished: asked again, each says so.
    for id in &ids[..2] {
        assert!(matches!(
            release_as_orders(&stack, id).await.unwrap(),
            flashmall_engine::release::Released::AlreadyReleased { .. }
        ));
    }
    let view = stack.sale(&sale).await;
    assert_eq!(
        (view["remaining"].as_i64(), view["settled"].as_i64()),
        (Some(4), Some(1)),
        "{view}"
    );
    // A front that lost a unit (a give-back recorded in the ledger that
    // the front never counted) is drift, and the rebuild puts it back.
    let r2 = match ledger.begin_release(ids[2].parse().unwrap()).await.unwrap() {
        flashmall_engine::ledger::ReleaseStep::Releasing(r) => r,
        other => panic!("{other:?}"),
    };
    ledger.finish_release(r2.id, sale_id).await.unwrap();
    let report = stack.reconcile(&sale).await;
    assert_eq!(
        (report["drift"].as_i64(), report["remaining"].as_i64()),
        (Some(1), Some(5)),
        "{report}"
    );
}

/// A unit a release gave back to the front is on sale, even before the
/// release's last ledger step (its caller slow, or dead there). The ledger
/// once refused it (`settled + returning + quantity > stock`): the buyer
/// the front granted it to heard `sold_out`, the revoke set off a reconcile
/// (purchases answering 503 meanwhile), and the front was a unit short
/// until it ended: the chaos run's drift right after the storm, with
/// orders expiring while buyers still bought.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_given_back_sells_again_before_its_release_is_recorded() {
    let stack = Stack::start(Front::Redis).await;
    let (sale, ids) = bought(&stack, 1, 1).await;
    let sale_id: uuid::Uuid = sale.parse().unwrap();
    let ledger = &stack.engine.ledger;
    given_back_unrecorded(&stack, sale_id, &ids[0]).await;
    // The release's last step has not run: the ledger still counts the
    // unit returning. A buyer gets it, and the ledger holds it.
    let (status, body) = stack.purchase(&sale, "u1", "k", 1).await;
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().unwrap().to_owned();
    stack.wait_settled(&sale).await;
    let (_, r) = stack.reservation(&id, "u1").await;
    assert_eq!(r["status"], "held", "{r}");
    // The release is asked again and finishes; nothing was lost or sold
    // twice.
    assert_eq!(
        release_as_orders(&stack, &ids[0]).await.unwrap(),
        flashmall_engine::release::Released::Released { quantity: 1 }
    );
    let report = stack.reconcile(&sale).await;
    assert_eq!(
        (
            report["drift"].as_i64(),
            report["conserved"].as_bool(),
            report["settled"].as_i64(),
            report["remaining"].as_i64()
        ),
        (Some(0), Some(true), Some(1), Some(0)),
        "{report}"
    );
    let (_, counts) = ledger.sale(sale_id).await.unwrap().unwrap();
    assert_eq!(
        (counts.settled, counts.returning, counts.revoked),
        (1, 0, 0)
    );
    // The stock still holds: one more buyer finds it sold out.
    let (status, body) = stack.purchase(&sale, "u2", "k", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sold_out")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_room_sale_sells_only_to_buyers_the_edge_admitted() {
    let stack = Stack::start(Front::Local).await;
    let now = time::OffsetDateTime::now_utc();
    let (status, body) = send(
        stack
            .admin(stack.client.post(stack.url("/api/v1/sales")))
            .json(&serde_json::json!({
                "product_id": "p-1", "price": 1999, "stock": 5, "per_user_limit": 1,
                "starts_at": flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
                "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
                "waiting_room": {"admit_per_second": 10},
            })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let sale = body["id"].as_str().unwrap().to_owned();
    let buy = |user: &str, admitted: Option<String>| {
        let mut request = stack
            .client
            .post(stack.url(&format!("/api/v1/sales/{sale}/purchase")))
            .header(IDENTITY_HEADER, stack.sign(user))
            .header("idempotency-key", "k")
            .json(&serde_json::json!({"quantity": 1}));
        if let Some(value) = admitted {
            request = request.header(flashmall_mesh::headers::ADMITTED, value);
        }
        send(request)
    };
    let key = &stack.settings.identity;
    let (status, body) = buy("u1", None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("admission_required")),
        "{body}"
    );
    // The edge's word for another buyer or another sale is no admission.
    for wrong in [
        key.sign_admitted(&sale, "u2"),
        key.sign_admitted("another-sale", "u1"),
    ] {
        let (status, body) = buy("u1", Some(wrong)).await;
        assert_eq!(status, 403, "{body}");
    }
    let (status, body) = buy("u1", Some(key.sign_admitted(&sale, "u1"))).await;
    assert_eq!(status, 201, "{body}");
    // A sale without a waiting room needs none.
    let plain = stack.create_sale(5, 1).await;
    let (status, body) = stack.purchase(&plain, "u1", "k", 1).await;
    assert_eq!(status, 201, "{body}");
    stack.stop().await;
}
