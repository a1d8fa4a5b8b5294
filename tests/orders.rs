//! Orders and payments through the edge, on the whole stack in this
//! process (real sockets, a real redis-server where named): buying makes an
//! order, paying it marks it paid, an unpaid order expires and its unit
//! sells again; pay-versus-expire races never sell a unit twice; an order
//! service that is down holds up nothing but the orders.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]
#![allow(dead_code)]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use flashmall_testing::RedisServer;
use serde_json::{Value, json};
use support::eventually;
use support::stack::{EdgeStack, Login, Options};

async fn order(s: &EdgeStack, who: &Login, id: &str) -> (u16, Value) {
    s.call(
        s.client
            .get(s.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(&who.access),
    )
    .await
}

async fn pay(s: &EdgeStack, who: &Login, order_id: &str, amount: i64, key: &str) -> (u16, Value) {
    s.call(
        s.client
            .post(s.url("/api/v1/payments"))
            .bearer_auth(&who.access)
            .header("idempotency-key", key)
            .json(&json!({"order_id": order_id, "amount": amount})),
    )
    .await
}

async fn sale_view(s: &EdgeStack, sale: &str) -> Value {
    s.call(s.client.get(s.url(&format!("/api/v1/sales/{sale}"))))
        .await
        .1
}

async fn reconcile(s: &EdgeStack, admin: &Login, sale: &str) -> Value {
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/admin/reconcile"))
                .bearer_auth(&admin.access)
                .json(&json!({"sale_id": sale})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["sales"][0].clone()
}

/// Waits until the order exists (orders are made after settlement).
async fn order_of(s: &EdgeStack, who: &Login, id: &str) -> Value {
    eventually(Duration::from_secs(20), "the order is made", || async {
        let (status, body) = order(s, who, id).await;
        (status == 200).then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buy_pay_expire_and_resell_through_the_edge_on_redis() {
    let redis = RedisServer::start();
    let s = EdgeStack::start_with(
        Options {
            redis_url: Some(redis.url()),
            payment_timeout: Duration::from_secs(2),
            ..Options::default()
        },
        |_| {},
    )
    .await;
    let admin = s.admin().await;
    let (alice, bob, carol) = (
        s.login("alice@example.com").await,
        s.login("bob@example.com").await,
        s.login("carol@example.com").await,
    );
    let sale = s.sale(&admin, 2).await;

    let (status, a) = s.purchase(&alice, &sale, "a-1").await;
    assert_eq!(status, 201, "{a}");
    let (status, b) = s.purchase(&bob, &sale, "b-1").await;
    assert_eq!(status, 201, "{b}");
    let (status, c) = s.purchase(&carol, &sale, "c-1").await;
    assert_eq!(
        (status, c["error"]["code"].as_str()),
        (409, Some("sold_out"))
    );

    // Alice sees her order pending, with the sale's price as its total.
    let a_order = a["order_id"].as_str().unwrap().to_owned();
    let seen = order_of(&s, &alice, &a_order).await;
    assert_eq!(seen["status"], "pending_payment");
    assert_eq!(seen["total"], 1999);
    assert_eq!(seen["reservation_id"], a["reservation_id"]);
    let (status, list) = s
        .call(
            s.client
                .get(s.url("/api/v1/orders"))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["orders"].as_array().map(Vec::len), Some(1));

    // Nobody else sees, pays or cancels it.
    assert_eq!(order(&s, &carol, &a_order).await.0, 404);
    let (status, body) = pay(&s, &carol, &a_order, 1999, "steal").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, _) = s
        .call(
            s.client
                .post(s.url(&format!("/api/v1/orders/{a_order}/cancel")))
                .bearer_auth(&carol.access),
        )
        .await;
    assert_eq!(status, 404);
    // A wrong amount is refused and charges nothing.
    let (status, body) = pay(&s, &alice, &a_order, 1, "a-pay-wrong").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    // No Idempotency-Key, no payment.
    let (status, _) = s
        .call(
            s.client
                .post(s.url("/api/v1/payments"))
                .bearer_auth(&alice.access)
                .json(&json!({"order_id": a_order, "amount": 1999})),
        )
        .await;
    assert_eq!(status, 400);

    // Alice pays; her order is paid.
    let (status, payment) = pay(&s, &alice, &a_order, 1999, "a-pay").await;
    assert_eq!(status, 201, "{payment}");
    assert_eq!(payment["status"], "succeeded");
    assert_eq!(payment["provider"], "simulator");
    assert_eq!(order(&s, &alice, &a_order).await.1["status"], "paid");
    // The same key again: the same payment, nothing charged twice.
    let (status, again) = pay(&s, &alice, &a_order, 1999, "a-pay").await;
    assert_eq!(status, 201);
    assert_eq!(
        (again["id"].clone(), again["replayed"].clone()),
        (payment["id"].clone(), json!(true))
    );
    // Another key for a paid order: refused.
    let (status, body) = pay(&s, &alice, &a_order, 1999, "a-pay-2").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, mine) = s
        .call(
            s.client
                .get(s.url(&format!(
                    "/api/v1/payments/{}",
                    payment["id"].as_str().unwrap()
                )))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!((status, mine["status"].as_str()), (200, Some("succeeded")));

    // Bob does not pay: his order expires and its unit goes back on sale.
    let b_order = b["order_id"].as_str().unwrap().to_owned();
    order_of(&s, &bob, &b_order).await;
    let expired = eventually(
        Duration::from_secs(20),
        "bob's order expires and is released",
        || async {
            let (_, o) = order(&s, &bob, &b_order).await;
            (o["status"] == "expired" && o["released"] == true).then_some(o)
        },
    )
    .await;
    assert!(expired["closed_at"].is_string());
    let (status, body) = pay(&s, &bob, &b_order, 1999, "b-late").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let view = sale_view(&s, &sale).await;
    assert_eq!(
        (view["remaining"].as_i64(), view["released"].as_i64()),
        (Some(1), Some(1)),
        "{view}"
    );

    // Carol gets the returned unit (once the sold-out flags lapse).
    let c2 = eventually(
        Duration::from_secs(10),
        "carol buys the returned unit",
        || async {
            let (status, body) = s.purchase(&carol, &sale, "c-2").await;
            (status == 201).then_some(body)
        },
    )
    .await;
    let c_order = c2["order_id"].as_str().unwrap().to_owned();
    assert_eq!(
        order_of(&s, &carol, &c_order).await["status"],
        "pending_payment"
    );

    // Carol cancels: the unit is back at once.
    let (status, cancelled) = s
        .call(
            s.client
                .post(s.url(&format!("/api/v1/orders/{c_order}/cancel")))
                .bearer_auth(&carol.access),
        )
        .await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    assert_eq!(cancelled["released"], true);
    let (status, body) = s
        .call(
            s.client
                .post(s.url(&format!("/api/v1/orders/{a_order}/cancel")))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "a paid order stays paid"
    );

    // Conservation: 1 paid + 1 remaining (bob's and carol's units returned).
    let report = reconcile(&s, &admin, &sale).await;
    assert_eq!(report["conserved"], true, "{report}");
    assert_eq!(report["drift"], 0);
    let view = sale_view(&s, &sale).await;
    assert_eq!(
        (
            view["settled"].as_i64(),
            view["remaining"].as_i64(),
            view["released"].as_i64()
        ),
        (Some(1), Some(1), Some(2)),
        "{view}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pay_versus_expire_races_never_sell_a_unit_twice() {
    // Every order ends paid (its unit kept, one payment succeeded) or
    // expired (its unit released once, any money refunded), with two
    // order-service replicas sweeping.
    const ORDERS: usize = 100;
    let s = EdgeStack::start_with(
        Options {
            payment_timeout: Duration::from_secs(3),
            simulator: flashmall_services::payments::provider::SimulatorConfig {
                latency: Duration::from_millis(1),
                latency_jitter: Duration::from_millis(600),
                ..Default::default()
            },
            ..Options::default()
        },
        |proxy| proxy.limits.clear(),
    )
    .await;
    // A second order-service replica on the same store: both sweep the
    // same timers, so every expiry is contended too.
    let stack = s.stack();
    let second = flashmall_services::launch_orders(
        &stack.orders_settings,
        std::sync::Arc::clone(&stack.store),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        stack.shutdown.clone(),
    )
    .unwrap();
    let admin = s.admin().await;
    let buyer = s.login("racer@example.com").await;
    let now = time::OffsetDateTime::now_utc();
    let (status, sale) = s
        .call(
            s.client
                .post(s.url("/api/v1/sales"))
                .bearer_auth(&admin.access)
                .json(&json!({
                    "product_id": "p-race", "price": 500, "stock": ORDERS, "per_user_limit": ORDERS,
                    "starts_at": flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
                    "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
                })),
        )
        .await;
    assert_eq!(status, 201, "{sale}");
    let sale = sale["id"].as_str().unwrap().to_owned();
    let mut order_ids = Vec::new();
    for i in 0..ORDERS {
        let (status, body) = s.purchase(&buyer, &sale, &format!("race-{i}")).await;
        assert_eq!(status, 201, "{body}");
        order_ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let mut expires = HashMap::new();
    for id in &order_ids {
        let o = order_of(&s, &buyer, id).await;
        let at = time::OffsetDateTime::parse(
            o["expires_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        expires.insert(id.clone(), at);
    }
    // Every payment starts shortly before its order's expiry; the
    // provider takes 0–600 ms, so some captures land before the expiry
    // and some after.
    let races = order_ids.iter().enumerate().map(|(i, id)| {
        let s = &s;
        let buyer = &buyer;
        let at = expires[id] - time::Duration::milliseconds(300 + (i as i64 % 5) * 20);
        async move {
            let wait = at - time::OffsetDateTime::now_utc();
            if wait.is_positive() {
                tokio::time::sleep(Duration::from_micros(wait.whole_microseconds() as u64)).await;
            }
            pay(s, buyer, id, 500, &format!("race-pay-{id}")).await
        }
    });
    let answers = futures::future::join_all(races).await;

    let (mut paid, mut expired_refunded, mut expired_unpaid) = (0, 0, 0);
    for (id, (status, payment)) in order_ids.iter().zip(&answers) {
        let o = eventually(Duration::from_secs(20), "the order settles", || async {
            let (_, o) = order(&s, &buyer, id).await;
            let done = o["status"] == "paid" || (o["status"] == "expired" && o["released"] == true);
            done.then_some(o)
        })
        .await;
        // The payment's final state (it may still be finishing).
        let final_payment = if *status == 201 || *status == 202 {
            let pid = payment["id"].as_str().unwrap().to_owned();
            Some(
                eventually(Duration::from_secs(20), "the payment is final", || async {
                    let (_, p) = s
                        .call(
                            s.client
                                .get(s.url(&format!("/api/v1/payments/{pid}")))
                                .bearer_auth(&buyer.access),
                        )
                        .await;
                    let st = p["status"].as_str().unwrap_or("").to_owned();
                    (st != "pending" && st != "captured").then_some(p)
                })
                .await,
            )
        } else {
            assert_eq!(
                *status, 409,
                "a refused payment is refused as a conflict: {payment}"
            );
            None
        };
        match o["status"].as_str() {
            Some("paid") => {
                let p = final_payment.expect("a paid order has a payment");
                assert_eq!(p["status"], "succeeded", "order {id} paid by {p}");
                assert_eq!(o["payment_id"], p["id"]);
                assert_eq!(o["released"], false, "a paid order keeps its unit");
                paid += 1;
            }
            Some("expired") => match final_payment {
                Some(p) => {
                    assert_eq!(
                        p["status"], "refunded",
                        "money taken for expired order {id}: {p}"
                    );
                    assert!(p["refund_ref"].is_string());
                    expired_refunded += 1;
                }
                None => expired_unpaid += 1,
            },
            other => panic!("order {id} ended {other:?}"),
        }
    }
    eprintln!(
        "races: {paid} paid, {expired_refunded} expired and refunded, {expired_unpaid} expired before the charge began"
    );
    assert_eq!(paid + expired_refunded + expired_unpaid, ORDERS);
    assert!(
        paid > 0 && expired_refunded > 0,
        "the races went both ways (else this test exercised no race)"
    );
    let view = sale_view(&s, &sale).await;
    assert_eq!(
        view["settled"].as_i64(),
        Some(paid as i64),
        "units held == orders paid: {view}"
    );
    assert_eq!(
        view["released"].as_i64(),
        Some((expired_refunded + expired_unpaid) as i64),
        "units released == orders expired: {view}"
    );
    let report = reconcile(&s, &admin, &sale).await;
    assert_eq!(
        (report["conserved"].clone(), report["drift"].clone()),
        (json!(true), json!(0)),
        "{report}"
    );
    s.stop().await;
    let _ = second.served.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purchases_go_on_while_the_order_service_is_down() {
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    let admin = s.admin().await;
    let buyer = s.login("patient@example.com").await;
    let now = time::OffsetDateTime::now_utc();
    let (_, sale) = s
        .call(
            s.client
                .post(s.url("/api/v1/sales"))
                .bearer_auth(&admin.access)
                .json(&json!({
                    "product_id": "p-down", "price": 700, "stock": 50, "per_user_limit": 50,
                    "starts_at": flashmall_engine::sale::rfc3339(now - time::Duration::seconds(1)),
                    "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
                })),
        )
        .await;
    let sale = sale["id"].as_str().unwrap().to_owned();
    let stack = s.stack();
    let orders_addr = stack.orders.addr;
    // Stop the order service.
    stack.orders_shutdown.trigger();
    eventually(
        Duration::from_secs(10),
        "the order service stops",
        || async {
            tokio::net::TcpStream::connect(orders_addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // Purchases are answered (durably) all the same; orders wait in the outbox.
    let mut order_ids = Vec::new();
    for i in 0..20 {
        let (status, body) = s.purchase(&buyer, &sale, &format!("down-{i}")).await;
        assert_eq!(status, 201, "{body}");
        order_ids.push(body["order_id"].as_str().unwrap().to_owned());
    }
    let outbox = stack.engine.engine.ledger.order_outbox(1000).await.unwrap();
    assert_eq!(outbox.len(), 20, "every reservation waits for its order");
    let (status, _) = order(&s, &buyer, &order_ids[0]).await;
    assert!(status == 502 || status == 503, "no order service: {status}");

    // It comes back on the same address: the engine catches up.
    let listener = tokio::net::TcpListener::bind(orders_addr).await.unwrap();
    let shutdown = stack.shutdown.child();
    let restarted = flashmall_services::launch_orders(
        &stack.orders_settings,
        std::sync::Arc::clone(&stack.store),
        listener,
        shutdown.clone(),
    )
    .unwrap();
    eventually(Duration::from_secs(30), "the outbox drains", || async {
        stack
            .engine
            .engine
            .ledger
            .order_outbox(1000)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    for id in &order_ids {
        assert_eq!(order_of(&s, &buyer, id).await["status"], "pending_payment");
    }
    shutdown.trigger();
    let _ = restarted.served.await;
    s.stop().await;
}
