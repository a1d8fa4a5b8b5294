//! The cart and checkout through the edge, on the whole stack in this
//! process: a cart is always its caller's own; bad input gets a clear 4xx
//! and changes nothing; checkout pays at catalogue prices, once per
//! Idempotency-Key; concurrent checkouts of the last units never oversell;
//! a declined payment leaves the cart as it was and the order cancelled;
//! an unpaid order expires and its units come back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::time::Duration;

use flashmall_services::payments::provider::SimulatorConfig;
use serde_json::{Value, json};
use support::eventually;
use support::stack::{EdgeStack, Login, Options, drop_keyspace, scylla_store};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

async fn product(s: &EdgeStack, seller: &Login, name: &str, price: i64, stock: i64) -> String {
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/products"))
                .bearer_auth(&seller.access)
                .json(&json!({"name": name, "price": price, "stock": stock})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn stock_of(s: &EdgeStack, id: &str) -> i64 {
    let (status, body) = s
        .call(s.client.get(s.url(&format!("/api/v1/products/{id}"))))
        .await;
    assert_eq!(status, 200, "{body}");
    body["stock"].as_i64().unwrap()
}

async fn cart(s: &EdgeStack, who: &Login) -> Value {
    let (status, body) = s
        .call(s.client.get(s.url("/api/v1/cart")).bearer_auth(&who.access))
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

/// The cart's items as (product id, quantity).
fn items(cart: &Value) -> Vec<(String, i64)> {
    cart["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["product_id"].as_str().unwrap().to_owned(),
                i["quantity"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn add(s: &EdgeStack, who: &Login, body: Value) -> (u16, Value) {
    s.call(
        s.client
            .post(s.url("/api/v1/cart/items"))
            .bearer_auth(&who.access)
            .json(&body),
    )
    .await
}

async fn checkout(s: &EdgeStack, who: &Login, key: &str) -> (u16, Value, bool) {
    let response = s
        .client
        .post(s.url("/api/v1/checkout"))
        .bearer_auth(&who.access)
        .header("idempotency-key", key)
        .send()
        .await
        .expect("the proxy answers");
    let status = response.status().as_u16();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, replayed)
}

async fn order(s: &EdgeStack, who: &Login, id: &str) -> (u16, Value) {
    s.call(
        s.client
            .get(s.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(&who.access),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cart_is_the_callers_own_and_refuses_bad_input() {
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    let alice = s.login("alice@example.com").await;
    let bob = s.login("bob@example.com").await;
    let tea = product(&s, &shop, "Green tea", 1250, 5).await;
    let cup = product(&s, &shop, "Cup", 300, 100).await;

    // A customer cannot create products; nobody reaches a cart without a token.
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/products"))
                .bearer_auth(&alice.access)
                .json(&json!({"name": "x", "price": 1})),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, _) = s.call(s.client.get(s.url("/api/v1/cart"))).await;
    assert_eq!(status, 401);
    let (status, _) = s.call(s.client.post(s.url("/api/v1/checkout"))).await;
    assert_eq!(status, 401);

    // Adding merges quantities and shows the catalogue's prices.
    let (status, body) = add(&s, &alice, json!({"product_id": tea, "quantity": 2})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = add(&s, &alice, json!({"product_id": tea, "quantity": 1})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(items(&body), [(tea.clone(), 3)]);
    assert_eq!(body["items"][0]["name"], "Green tea");
    assert_eq!(body["items"][0]["unit_price"], 1250);
    assert_eq!(body["total"], 3750);
    add(&s, &alice, json!({"product_id": cup, "quantity": 2})).await;
    let before = cart(&s, &alice).await;
    assert_eq!(before["total"], 3750 + 600);

    // Bad input: a clear 4xx, and the cart stays as it was.
    let long = "x".repeat(300);
    let unknown = uuid::Uuid::now_v7().to_string();
    let bad: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": unknown, "quantity": 1})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": "nope", "quantity": 1})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": long, "quantity": 1})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": tea, "quantity": 0})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": tea, "quantity": -2})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": tea, "quantity": 1.5})),
            400,
            "invalid_request",
        ),
        (
            // 3 in the cart + 97 is over the 99 a cart holds of one product.
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": tea, "quantity": 97})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .json(&json!({"product_id": tea, "quantity": 1, "price": 1})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .post(s.url("/api/v1/cart/items"))
                .header("content-type", "application/json")
                .body("{\"product_id\": "),
            400,
            "invalid_request",
        ),
        (
            s.client
                .patch(s.url(&format!("/api/v1/cart/items/{tea}")))
                .json(&json!({"quantity": 0})),
            400,
            "invalid_request",
        ),
        (
            s.client
                .patch(s.url(&format!("/api/v1/cart/items/{unknown}")))
                .json(&json!({"quantity": 1})),
            404,
            "not_found",
        ),
        (
            s.client
                .delete(s.url(&format!("/api/v1/cart/items/{unknown}"))),
            404,
            "not_found",
        ),
    ];
    for (request, status, expected) in bad {
        let (got, body) = s.call(request.bearer_auth(&alice.access)).await;
        assert_eq!((got, code(&body)), (status, expected), "{body}");
        assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    assert_eq!(cart(&s, &alice).await, before);

    // Bob sees his own (empty) cart and cannot touch Alice's items.
    let bobs = cart(&s, &bob).await;
    assert!(items(&bobs).is_empty());
    assert_eq!(bobs["total"], 0);
    for request in [
        s.client
            .patch(s.url(&format!("/api/v1/cart/items/{tea}")))
            .json(&json!({"quantity": 1})),
        s.client.delete(s.url(&format!("/api/v1/cart/items/{tea}"))),
    ] {
        let (status, body) = s.call(request.bearer_auth(&bob.access)).await;
        assert_eq!((status, code(&body)), (404, "not_found"), "{body}");
    }
    let (status, _) = s
        .call(
            s.client
                .delete(s.url("/api/v1/cart"))
                .bearer_auth(&bob.access),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(cart(&s, &alice).await, before);

    // Change a quantity; a price change shows at once; remove; empty.
    let (status, body) = s
        .call(
            s.client
                .patch(s.url(&format!("/api/v1/cart/items/{tea}")))
                .bearer_auth(&alice.access)
                .json(&json!({"quantity": 5})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s
        .call(
            s.client
                .patch(s.url(&format!("/api/v1/products/{cup}")))
                .bearer_auth(&shop.access)
                .json(&json!({"price": 350})),
        )
        .await;
    assert_eq!(status, 200);
    let now = cart(&s, &alice).await;
    assert_eq!(items(&now), [(tea.clone(), 5), (cup.clone(), 2)]);
    assert_eq!(now["total"], 5 * 1250 + 2 * 350);
    let (status, body) = s
        .call(
            s.client
                .delete(s.url(&format!("/api/v1/cart/items/{tea}")))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(items(&body), [(cup.clone(), 2)]);
    // A product leaving the catalogue shows as unavailable, outside the total.
    let (status, _) = s
        .call(
            s.client
                .delete(s.url(&format!("/api/v1/products/{cup}")))
                .bearer_auth(&shop.access),
        )
        .await;
    assert_eq!(status, 204);
    let now = cart(&s, &alice).await;
    assert_eq!(now["items"][0]["available"], false);
    assert_eq!(now["total"], 0);
    let (status, body, _) = checkout(&s, &alice, "with-a-gone-product").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    let (status, _) = s
        .call(
            s.client
                .delete(s.url("/api/v1/cart"))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!(status, 204);
    assert!(items(&cart(&s, &alice).await).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkout_pays_at_catalogue_prices_once_per_key() {
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    let alice = s.login("alice@example.com").await;
    let bob = s.login("bob@example.com").await;
    let tea = product(&s, &shop, "Green tea", 1250, 5).await;
    let cup = product(&s, &shop, "Cup", 300, 100).await;

    let (status, body, _) = checkout(&s, &alice, "empty-cart").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    add(&s, &alice, json!({"product_id": tea, "quantity": 2})).await;
    add(&s, &alice, json!({"product_id": cup, "quantity": 1})).await;

    // No key, a body with fields: refused, nothing happens.
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/checkout"))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/checkout"))
                .bearer_auth(&alice.access)
                .header("idempotency-key", "with-a-price")
                .json(&json!({"total": 1})),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    assert_eq!(stock_of(&s, &tea).await, 5);

    let (status, paid, replayed) = checkout(&s, &alice, "k-1").await;
    assert_eq!(status, 201, "{paid}");
    assert!(!replayed);
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["total"], 2 * 1250 + 300);
    assert_eq!(paid["items"][0]["unit_price"], 1250);
    let order_id = paid["order_id"].as_str().unwrap().to_owned();
    let (status, o) = order(&s, &alice, &order_id).await;
    assert_eq!(status, 200, "{o}");
    assert_eq!(o["status"], "paid");
    assert_eq!(o["source"], "checkout");
    assert_eq!(o["total"], 2800);
    assert_eq!(stock_of(&s, &tea).await, 3);
    assert_eq!(stock_of(&s, &cup).await, 99);
    assert!(items(&cart(&s, &alice).await).is_empty());
    let (status, payment) = s
        .call(
            s.client
                .get(s.url(&format!(
                    "/api/v1/payments/{}",
                    paid["payment_id"].as_str().unwrap()
                )))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!(status, 200, "{payment}");
    assert_eq!(
        (payment["status"].as_str(), payment["amount"].as_i64()),
        (Some("succeeded"), Some(2800))
    );

    // The same key again: the same answer, nothing charged, held or taken
    // out of the cart twice (an item added meanwhile stays).
    add(&s, &alice, json!({"product_id": cup, "quantity": 1})).await;
    let (status, again, replayed) = checkout(&s, &alice, "k-1").await;
    assert_eq!(status, 201, "{again}");
    assert!(replayed);
    assert_eq!(again["order_id"], paid["order_id"]);
    assert_eq!(again["payment_id"], paid["payment_id"]);
    assert_eq!(stock_of(&s, &tea).await, 3);
    assert_eq!(items(&cart(&s, &alice).await), [(cup.clone(), 1)]);

    // Bob cannot see, pay or cancel Alice's order; the same key string is
    // his own checkout (of his own empty cart).
    let (status, _) = order(&s, &bob, &order_id).await;
    assert_eq!(status, 404);
    let (status, _) = s
        .call(
            s.client
                .post(s.url(&format!("/api/v1/orders/{order_id}/cancel")))
                .bearer_auth(&bob.access),
        )
        .await;
    assert_eq!(status, 404);
    let (status, body, _) = checkout(&s, &bob, "k-1").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");

    // More than the stock: out_of_stock, the order cancelled, the cart and
    // the stock as they were.
    s.call(
        s.client
            .patch(s.url(&format!("/api/v1/cart/items/{cup}")))
            .bearer_auth(&alice.access)
            .json(&json!({"quantity": 2})),
    )
    .await;
    add(&s, &alice, json!({"product_id": tea, "quantity": 4})).await;
    let (status, body, _) = checkout(&s, &alice, "k-2").await;
    assert_eq!((status, code(&body)), (409, "out_of_stock"), "{body}");
    let failed_order = body["checkout"]["order_id"].as_str().unwrap().to_owned();
    let (_, o) = order(&s, &alice, &failed_order).await;
    assert_eq!(o["status"], "cancelled");
    assert_eq!(stock_of(&s, &tea).await, 3);
    assert_eq!(stock_of(&s, &cup).await, 99);
    assert_eq!(
        items(&cart(&s, &alice).await),
        [(cup.clone(), 2), (tea.clone(), 4)]
    );
    let (status, body, replayed) = checkout(&s, &alice, "k-2").await;
    assert_eq!((status, code(&body), replayed), (409, "out_of_stock", true));
    s.stop().await;
}

async fn last_units_race(s: &EdgeStack, tag: &str) {
    let admin = s.admin().await;
    let shop = s.merchant(&admin, &format!("shop-{tag}@example.com")).await;
    const STOCK: i64 = 5;
    const BUYERS: usize = 12;
    let item = product(s, &shop, "Last units", 990, STOCK).await;
    let mut buyers = Vec::new();
    for n in 0..BUYERS {
        let b = s.login(&format!("buyer{n}-{tag}@example.com")).await;
        let (status, body) = add(s, &b, json!({"product_id": item, "quantity": 1})).await;
        assert_eq!(status, 200, "{body}");
        buyers.push(b);
    }
    let answers = futures::future::join_all(
        buyers
            .iter()
            .map(|b| async move { (b, checkout(s, b, "last").await) }),
    )
    .await;
    let mut paid = 0;
    for (buyer, (status, body, _)) in &answers {
        match status {
            201 => {
                paid += 1;
                assert!(items(&cart(s, buyer).await).is_empty());
            }
            409 => {
                assert_eq!(code(body), "out_of_stock", "{body}");
                assert_eq!(items(&cart(s, buyer).await), [(item.clone(), 1)]);
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(paid, STOCK, "exactly the stock is sold, never more");
    assert_eq!(stock_of(s, &item).await, 0);
    // Each paid order holds one unit; the failed ones hold none.
    let mut sold = 0;
    for (buyer, (status, body, _)) in &answers {
        let id = body["order_id"]
            .as_str()
            .or(body["checkout"]["order_id"].as_str())
            .unwrap();
        let (_, o) = order(s, buyer, id).await;
        let expected = if *status == 201 { "paid" } else { "cancelled" };
        assert_eq!(o["status"], expected, "{o}");
        if *status == 201 {
            sold += o["items"][0]["quantity"].as_i64().unwrap();
        }
    }
    assert_eq!(sold, STOCK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checkouts_of_the_last_units_never_oversell() {
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    last_units_race(&s, "embedded").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checkouts_never_oversell_on_cassandra() {
    let Some(store) = scylla_store("shop") else {
        eprintln!("SKIPPED: FLASHMALL_TEST_SCYLLA is not set");
        return;
    };
    let s = EdgeStack::start_with(
        Options {
            store: store.clone(),
            ..Options::default()
        },
        |proxy| proxy.limits.clear(),
    )
    .await;
    last_units_race(&s, "scylla").await;
    s.stop().await;
    drop_keyspace(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_payment_leaves_the_cart_and_never_pays_the_order() {
    let s = EdgeStack::start_with(
        Options {
            simulator: SimulatorConfig {
                latency: Duration::from_millis(1),
                latency_jitter: Duration::ZERO,
                failure_rate: 1.0,
                ..SimulatorConfig::default()
            },
            ..Options::default()
        },
        |proxy| proxy.limits.clear(),
    )
    .await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    let alice = s.login("alice@example.com").await;
    let tea = product(&s, &shop, "Green tea", 1250, 5).await;
    add(&s, &alice, json!({"product_id": tea, "quantity": 2})).await;
    let before = cart(&s, &alice).await;

    let (status, body, _) = checkout(&s, &alice, "declined").await;
    assert_eq!((status, code(&body)), (402, "payment_declined"), "{body}");
    let c = &body["checkout"];
    assert_eq!(c["status"], "failed");
    let order_id = c["order_id"].as_str().unwrap().to_owned();
    let (_, o) = order(&s, &alice, &order_id).await;
    assert_eq!(o["status"], "cancelled", "{o}");
    let (status, payment) = s
        .call(
            s.client
                .get(s.url(&format!(
                    "/api/v1/payments/{}",
                    c["payment_id"].as_str().unwrap()
                )))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!((status, payment["status"].as_str()), (200, Some("failed")));
    assert_eq!(cart(&s, &alice).await, before, "the cart is left as it was");
    eventually(
        Duration::from_secs(5),
        "the held units come back",
        || async { (stock_of(&s, &tea).await == 5).then_some(()) },
    )
    .await;
    // The same key again: the same failure, nothing charged again.
    let (status, body, replayed) = checkout(&s, &alice, "declined").await;
    assert_eq!(
        (status, code(&body), replayed),
        (402, "payment_declined", true)
    );
    assert_eq!(body["checkout"]["payment_id"], c["payment_id"]);
    let (_, o) = order(&s, &alice, &order_id).await;
    assert_eq!(o["status"], "cancelled");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unpaid_checkout_order_expires_and_its_units_come_back() {
    let s = EdgeStack::start_with(
        Options {
            payment_timeout: Duration::from_secs(2),
            simulator: SimulatorConfig {
                latency: Duration::from_millis(1),
                latency_jitter: Duration::ZERO,
                pending_rate: 1.0,
                callback_delay: Duration::from_secs(60),
                ..SimulatorConfig::default()
            },
            ..Options::default()
        },
        |proxy| proxy.limits.clear(),
    )
    .await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    let alice = s.login("alice@example.com").await;
    let tea = product(&s, &shop, "Green tea", 1250, 5).await;
    add(&s, &alice, json!({"product_id": tea, "quantity": 3})).await;

    let (status, body, _) = checkout(&s, &alice, "slow").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "payment_pending");
    assert_eq!(stock_of(&s, &tea).await, 2, "three units held");
    let order_id = body["order_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(10), "the order expires", || async {
        let (_, o) = order(&s, &alice, &order_id).await;
        (o["status"] == "expired" && o["released"] == true).then_some(())
    })
    .await;
    assert_eq!(stock_of(&s, &tea).await, 5, "the held units are back");
    // The same key now learns the order expired; the cart still holds the
    // items for a new checkout.
    let (status, body, _) = checkout(&s, &alice, "slow").await;
    assert_eq!((status, code(&body)), (409, "conflict"), "{body}");
    assert_eq!(items(&cart(&s, &alice).await), [(tea.clone(), 3)]);
    s.stop().await;
}

/// A component identity signed as the mesh signs it.
fn as_component<T>(s: &EdgeStack, component: &str, target: &str, message: T) -> tonic::Request<T> {
    let identity = flashmall_mesh::Identity::service(component, Duration::from_secs(60));
    signed_request(s, &identity, target, message)
}

/// A gRPC request carrying `identity`, signed for `target` with the mesh key.
fn signed_request<T>(
    s: &EdgeStack,
    identity: &flashmall_mesh::Identity,
    target: &str,
    message: T,
) -> tonic::Request<T> {
    let signed = s.stack().proxy_settings.identity.sign_for(identity, target);
    let mut request = tonic::Request::new(message);
    flashmall_mesh::authorize(&mut request, &signed).unwrap();
    request
}

/// Security review #18, finding 1: a buyer who knows their checkout's
/// order id (it is derived from their own Idempotency-Key) pays it while
/// checkout is still holding a long cart line by line. The payment is
/// fired continuously from three clients through the edge, and straight
/// at the order service as the payment service would (`MarkOrderPaid`),
/// so it lands at every step of the hold. The last line is short, so the
/// checkout must fail `out_of_stock`, the order must never be paid, and
/// every unit held on the way must come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_checkout_order_cannot_be_paid_before_all_its_stock_is_held() {
    use flashmall_proto::order::order_service_client::OrderServiceClient;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    const ROUNDS: usize = 10;
    const PLENTIFUL_LINES: usize = 49;
    const PLENTY: i64 = 1_000_000;
    const SCARCE: i64 = 5;
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    // Held in id order: the scarce product, created last, is held last.
    let mut plentiful = Vec::new();
    for n in 0..PLENTIFUL_LINES {
        plentiful.push(product(&s, &shop, &format!("Plenty {n}"), 100, PLENTY).await);
    }
    let scarce = product(&s, &shop, "Scarce", 700, SCARCE).await;
    let total = 100 * PLENTIFUL_LINES as i64 + 700 * 99;
    let orders = channel(&s, "orders").await;

    let mut landed_mid_hold = 0;
    for round in 0..ROUNDS {
        let buyer = s.login(&format!("racer{round}@example.com")).await;
        for p in &plentiful {
            let (status, body) = add(&s, &buyer, json!({"product_id": p, "quantity": 1})).await;
            assert_eq!(status, 200, "{body}");
        }
        let (status, body) = add(&s, &buyer, json!({"product_id": scarce, "quantity": 99})).await;
        assert_eq!(status, 200, "{body}");
        let key = format!("race-{round}");
        let checkout_id = flashmall_services::checkout::checkout_id_for(&buyer.user_id, &key);
        let order_id = flashmall_services::checkout::order_id_for(checkout_id).to_string();

        let done = Arc::new(AtomicBool::new(false));
        let payer = |n: usize| {
            let (s, buyer, order_id, done) = (&s, &buyer, order_id.clone(), done.clone());
            async move {
                let mut answers = Vec::new();
                let mut attempt = 0;
                while !done.load(Ordering::Relaxed) {
                    attempt += 1;
                    let (status, body) = s
                        .call(
                            s.client
                                .post(s.url("/api/v1/payments"))
                                .bearer_auth(&buyer.access)
                                .header("idempotency-key", format!("early-{n}-{attempt}"))
                                .json(&json!({"order_id": order_id, "amount": total})),
                        )
                        .await;
                    answers.push((status, body));
                }
                answers
            }
        };
        let marker = {
            let (s, order_id, done, orders) = (&s, order_id.clone(), done.clone(), orders.clone());
            async move {
                let mut outcomes = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let request = as_component(
                        s,
                        "payments",
                        "orders",
                        flashmall_proto::order::MarkOrderPaidReq {
                            order_id: order_id.clone(),
                            payment_id: uuid::Uuid::now_v7().to_string(),
                            amount: total,
                        },
                    );
                    match OrderServiceClient::new(orders.clone())
                        .mark_order_paid(request)
                        .await
                    {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            let order = answer.order.unwrap_or_default();
                            let mid_hold = order.status == "pending_payment" && !order.stock_held;
                            outcomes.push((answer.outcome, mid_hold));
                        }
                        // Not placed yet.
                        Err(status) if status.code() == tonic::Code::NotFound => {}
                        Err(status) => panic!("MarkOrderPaid failed: {status}"),
                    }
                }
                outcomes
            }
        };
        let checkout = async {
            let answer = checkout(&s, &buyer, &key).await;
            done.store(true, Ordering::Relaxed);
            answer
        };
        let ((status, body, _), a, b, c, marked) =
            tokio::join!(checkout, payer(1), payer(2), payer(3), marker);

        assert_eq!(
            (status, code(&body)),
            (409, "out_of_stock"),
            "round {round}: {body}"
        );
        for (status, body) in a.iter().chain(&b).chain(&c) {
            assert!(
                !(200..300).contains(status),
                "round {round}: an early payment of a checkout order went through: {status} {body}"
            );
        }
        assert!(
            !marked.iter().any(|(o, _)| o == "paid"),
            "round {round}: the order was marked paid before its stock was held: {marked:?}"
        );
        landed_mid_hold += marked.iter().filter(|(_, mid)| *mid).count();
        let (_, o) = order(&s, &buyer, &order_id).await;
        assert!(
            o["status"] == "cancelled" || o["status"] == "expired",
            "round {round}: {o}"
        );
    }
    // The race was run: payments reached the order while it was placed
    // and its lines were still being held.
    eprintln!("{landed_mid_hold} MarkOrderPaid calls landed mid-hold");
    assert!(
        landed_mid_hold > 0,
        "no payment landed while the stock was being held"
    );
    eventually(
        Duration::from_secs(10),
        "every held unit comes back",
        || async {
            for p in &plentiful {
                if stock_of(&s, p).await != PLENTY {
                    return None;
                }
            }
            (stock_of(&s, &scarce).await == SCARCE).then_some(())
        },
    )
    .await;
    s.stop().await;
}

/// A gRPC channel to one of the stack's services.
async fn channel(s: &EdgeStack, service: &str) -> tonic::transport::Channel {
    let addr = s
        .stack()
        .services
        .iter()
        .find(|(name, _)| *name == service)
        .map(|(_, running)| running.addr)
        .unwrap_or_else(|| s.stack().orders.addr);
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A request carrying `who`'s identity, signed as the edge signs it.
fn as_user<T>(s: &EdgeStack, who: &Login, target: &str, message: T) -> tonic::Request<T> {
    let identity = flashmall_mesh::Identity {
        user_id: who.user_id.clone(),
        roles: vec![flashmall_mesh::Role::Customer],
        token_id: "grpc-test".into(),
        expires_at_ms: flashmall_mesh::now_ms() + 60_000,
    };
    signed_request(s, &identity, target, message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_reference_grpc_names_serve_the_same_shop() {
    use flashmall_proto::cart::cart_service_client::CartServiceClient;
    use flashmall_proto::checkout::checkout_service_client::CheckoutServiceClient;
    use flashmall_proto::order::order_service_client::OrderServiceClient;
    use flashmall_proto::product::product_catalog_service_client::ProductCatalogServiceClient;
    use flashmall_proto::{cart, checkout, order, product};

    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    let alice = s.login("alice@example.com").await;
    let bob = s.login("bob@example.com").await;
    let tea = product(&s, &shop, "Green tea leaves", 1250, 5).await;

    let mut catalog = ProductCatalogServiceClient::new(channel(&s, "products").await);
    let listed = catalog
        .list_products(product::ListProductsReq::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.products.len(), 1);
    let got = catalog
        .get_product(product::GetProductReq { id: tea.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.product.unwrap().price, 1250);
    let found = catalog
        .search_products(product::SearchProductsReq {
            query: "tea".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.results.len(), 1);
    // A buyer cannot hold stock.
    let held = catalog
        .hold_stock(as_user(
            &s,
            &alice,
            "products",
            product::HoldStockReq {
                hold_id: uuid::Uuid::now_v7().to_string(),
                lines: vec![product::StockLine {
                    product_id: tea.clone(),
                    quantity: 5,
                }],
                deadline_ms: flashmall_mesh::now_ms() + 60_000,
            },
        ))
        .await;
    assert_eq!(held.unwrap_err().code(), tonic::Code::PermissionDenied);

    let mut carts = CartServiceClient::new(channel(&s, "cart").await);
    let added = carts
        .add_item(as_user(
            &s,
            &alice,
            "cart",
            cart::AddItemReq {
                item: Some(cart::CartItem {
                    product_id: tea.clone(),
                    quantity: 2,
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(added.total, 2500);
    let zero = carts
        .add_item(as_user(
            &s,
            &alice,
            "cart",
            cart::AddItemReq {
                item: Some(cart::CartItem {
                    product_id: tea.clone(),
                    quantity: 0,
                }),
            },
        ))
        .await;
    assert_eq!(zero.unwrap_err().code(), tonic::Code::InvalidArgument);
    // Without an identity there is no cart.
    let anonymous = carts.get_cart(cart::GetCartReq {}).await;
    assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
    let bobs = carts
        .get_cart(as_user(&s, &bob, "cart", cart::GetCartReq {}))
        .await
        .unwrap()
        .into_inner();
    assert!(bobs.items.is_empty(), "Bob's cart is his own");

    let mut checkouts = CheckoutServiceClient::new(channel(&s, "checkout").await);
    let paid = checkouts
        .checkout(as_user(
            &s,
            &alice,
            "checkout",
            checkout::CheckoutReq {
                idempotency_key: "grpc-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((paid.status.as_str(), paid.total), ("paid", 2500));
    let cart_after = carts
        .get_cart(as_user(&s, &alice, "cart", cart::GetCartReq {}))
        .await
        .unwrap()
        .into_inner();
    assert!(cart_after.items.is_empty());
    carts
        .empty_cart(as_user(&s, &alice, "cart", cart::EmptyCartReq::default()))
        .await
        .unwrap();

    let mut orders = OrderServiceClient::new(channel(&s, "orders").await);
    let mine = orders
        .get_order(as_user(
            &s,
            &alice,
            "orders",
            order::GetOrderReq {
                order_id: paid.order_id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (mine.status.as_str(), mine.source.as_str()),
        ("paid", "checkout")
    );
    let theirs = orders
        .get_order(as_user(
            &s,
            &bob,
            "orders",
            order::GetOrderReq {
                order_id: paid.order_id.clone(),
            },
        ))
        .await;
    assert_eq!(theirs.unwrap_err().code(), tonic::Code::NotFound);
    // PlaceOrder under Bob's identity cannot take Alice's order id.
    let stolen = orders
        .place_order(as_user(
            &s,
            &bob,
            "orders",
            order::PlaceOrderReq {
                order_id: paid.order_id.clone(),
                items: vec![order::OrderItem {
                    product_id: tea.clone(),
                    quantity: 1,
                    unit_price: 1,
                }],
            },
        ))
        .await;
    assert_eq!(stolen.unwrap_err().code(), tonic::Code::Aborted);
    assert_eq!(stock_of(&s, &tea).await, 3);
    s.stop().await;
}
