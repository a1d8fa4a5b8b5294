//! The product catalogue through the edge, on the whole stack in this
//! process: who may create, change and delete products and categories;
//! reads without a token; bad input answered with clear 4xx codes; listing
//! by category, offset and cursor paging, batch reads and word search that
//! follow every change.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::HashSet;

use serde_json::{Value, json};
use support::stack::{EdgeStack, Login, Options, drop_keyspace, scylla_store};

async fn post(s: &EdgeStack, who: Option<&Login>, path: &str, body: Value) -> (u16, Value) {
    let mut request = s.client.post(s.url(path)).json(&body);
    if let Some(who) = who {
        request = request.bearer_auth(&who.access);
    }
    s.call(request).await
}

async fn patch(s: &EdgeStack, who: &Login, path: &str, body: Value) -> (u16, Value) {
    s.call(
        s.client
            .patch(s.url(path))
            .bearer_auth(&who.access)
            .json(&body),
    )
    .await
}

async fn get(s: &EdgeStack, path: &str) -> (u16, Value) {
    s.call(s.client.get(s.url(path))).await
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn names(body: &Value) -> Vec<String> {
    body["products"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["name"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catalogue_roles_changes_and_bad_input_through_the_edge() {
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    let admin = s.admin().await;
    let shop = s.merchant(&admin, "shop@example.com").await;
    let rival = s.merchant(&admin, "rival@example.com").await;
    let customer = s.login("customer@example.com").await;

    // Categories: admins only, slugs, once each.
    for (who, status) in [(&customer, 403), (&shop, 403)] {
        let (got, body) = post(
            &s,
            Some(who),
            "/api/v1/categories",
            json!({"name": "books"}),
        )
        .await;
        assert_eq!((got, code(&body)), (status, "forbidden"), "{body}");
    }
    for name in ["books", "garden"] {
        let (status, body) = post(
            &s,
            Some(&admin),
            "/api/v1/categories",
            json!({"name": name}),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = post(
        &s,
        Some(&admin),
        "/api/v1/categories",
        json!({"name": "books"}),
    )
    .await;
    assert_eq!((status, code(&body)), (409, "conflict"));
    let (status, body) = post(
        &s,
        Some(&admin),
        "/api/v1/categories",
        json!({"name": "Bad Name"}),
    )
    .await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = get(&s, "/api/v1/categories").await;
    assert_eq!(status, 200);
    let cats: Vec<&str> = body["categories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cats, ["books", "garden"]);

    // Creating: merchants and admins; a customer or nobody cannot.
    let book = json!({"name": "The Rust Programming Language", "description": "Learn Rust, the systems language.",
        "price": 3999, "categories": ["books"], "stock": 5});
    let (status, body) = post(&s, Some(&customer), "/api/v1/products", book.clone()).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");
    let (status, _) = post(&s, None, "/api/v1/products", book.clone()).await;
    assert_eq!(status, 401);
    let (status, created) = post(&s, Some(&shop), "/api/v1/products", book.clone()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (
            created["price"].as_i64(),
            created["stock"].as_i64(),
            created["merchant_id"].as_str()
        ),
        (Some(3999), Some(5), Some(shop.user_id.as_str()))
    );

    // Bad input: each a 4xx with a stable code, and nothing created.
    let bad = [
        (json!({"name": "x", "price": 0}), 400, "invalid_request"),
        (json!({"name": "x", "price": -5}), 400, "invalid_request"),
        (json!({"name": "x", "price": 19.99}), 400, "invalid_request"),
        (json!({"name": "", "price": 100}), 400, "invalid_request"),
        (
            json!({"name": "n".repeat(201), "price": 100}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "price": 100, "description": "d".repeat(5001)}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "price": 100, "stock": -1}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "price": 100, "categories": ["nope"]}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "price": 100, "user_id": "someone"}),
            400,
            "invalid_request",
        ),
    ];
    for (body, status, want) in bad {
        let (got, answer) = post(&s, Some(&shop), "/api/v1/products", body.clone()).await;
        assert_eq!((got, code(&answer)), (status, want), "{body} -> {answer}");
    }
    let (status, answer) = s
        .call(
            s.client
                .post(s.url("/api/v1/products"))
                .bearer_auth(&shop.access)
                .header("content-type", "application/json")
                .body("{\"name\": \"broken\", "),
        )
        .await;
    assert_eq!(
        (status, code(&answer)),
        (400, "invalid_request"),
        "{answer}"
    );

    // Reads need no token; unknown and malformed ids are 404.
    let (status, got) = get(&s, &format!("/api/v1/products/{id}")).await;
    assert_eq!(
        (status, got["name"].as_str()),
        (200, Some("The Rust Programming Language"))
    );
    for missing in [uuid::Uuid::now_v7().to_string(), "not-an-id".to_owned()] {
        let (status, body) = get(&s, &format!("/api/v1/products/{missing}")).await;
        assert_eq!((status, code(&body)), (404, "not_found"));
    }
    assert_eq!(
        names(&get(&s, "/api/v1/products?category=books").await.1).len(),
        1
    );
    let (status, body) = get(&s, "/api/v1/products?category=Bad%20Name").await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = get(&s, "/api/v1/products?page_size=101").await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));
    let (status, body) = get(&s, "/api/v1/products?colour=red").await;
    assert_eq!((status, code(&body)), (400, "invalid_request"));

    // Changes: the owner and admins; another merchant or a customer cannot.
    for (who, change, status, want) in [
        (&rival, json!({"price": 1}), 403, "forbidden"),
        (&customer, json!({"price": 1}), 403, "forbidden"),
        (&shop, json!({"price": 0}), 400, "invalid_request"),
        (&shop, json!({"merchant_id": "me"}), 400, "invalid_request"),
    ] {
        let (got, body) = patch(&s, who, &format!("/api/v1/products/{id}"), change).await;
        assert_eq!((got, code(&body)), (status, want), "{body}");
    }
    assert_eq!(
        get(&s, &format!("/api/v1/products/{id}")).await.1["price"],
        3999
    );
    let (status, moved) = patch(
        &s,
        &shop,
        &format!("/api/v1/products/{id}"),
        json!({"name": "Gardening with Rust", "categories": ["garden"], "price": 2999}),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(moved["categories"], json!(["garden"]));
    let (status, _) = patch(
        &s,
        &admin,
        &format!("/api/v1/products/{id}"),
        json!({"stock": 9}),
    )
    .await;
    assert_eq!(status, 200);
    // Listings and search follow the change.
    assert!(names(&get(&s, "/api/v1/products?category=books").await.1).is_empty());
    assert_eq!(
        names(&get(&s, "/api/v1/products?category=garden").await.1),
        ["Gardening with Rust"]
    );
    let found = |q: &'static str| {
        let s = &s;
        async move {
            let (status, body) = get(s, &format!("/api/v1/products/search?q={q}")).await;
            assert_eq!(status, 200, "{body}");
            names(&body)
        }
    };
    assert_eq!(found("gardening").await, ["Gardening with Rust"]);
    assert_eq!(found("RUST%20systems").await, ["Gardening with Rust"]);
    assert!(
        found("programming").await.is_empty(),
        "the old name's word is gone"
    );
    assert!(
        found("rust%20cooking").await.is_empty(),
        "every word must match"
    );
    for q in ["", "%20--%20", &"q".repeat(201)] {
        let (status, body) = get(&s, &format!("/api/v1/products/search?q={q}")).await;
        assert_eq!((status, code(&body)), (400, "invalid_request"), "q={q}");
    }

    // Deleting: the owner (or an admin); it leaves every listing.
    let (status, body) = s
        .call(
            s.client
                .delete(s.url(&format!("/api/v1/products/{id}")))
                .bearer_auth(&rival.access),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "forbidden"));
    let (status, _) = s
        .call(
            s.client
                .delete(s.url(&format!("/api/v1/products/{id}")))
                .bearer_auth(&shop.access),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(get(&s, &format!("/api/v1/products/{id}")).await.0, 404);
    assert!(found("gardening").await.is_empty());
    assert!(names(&get(&s, "/api/v1/products").await.1).is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_page_through_every_product_once() {
    let s = EdgeStack::start(|proxy| proxy.limits.clear()).await;
    listings(&s).await;
    s.stop().await;
}

/// The same on Cassandra (`FLASHMALL_TEST_SCYLLA`, set by `scripts/test`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_page_through_every_product_once_on_cassandra() {
    let Some(store) = scylla_store("catalog") else {
        eprintln!("skipped: FLASHMALL_TEST_SCYLLA is not set");
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
    listings(&s).await;
    s.stop().await;
    drop_keyspace(&store).await;
}

async fn listings(s: &EdgeStack) {
    let admin = s.admin().await;
    let (status, _) = post(
        s,
        Some(&admin),
        "/api/v1/categories",
        json!({"name": "tools"}),
    )
    .await;
    assert_eq!(status, 201);
    let mut ids = Vec::new();
    for i in 0..25 {
        let categories = if i % 2 == 0 {
            json!(["tools"])
        } else {
            json!([])
        };
        let (status, p) = post(
            s,
            Some(&admin),
            "/api/v1/products",
            json!({"name": format!("Hammer {i}"), "description": "steel", "price": 100 + i, "categories": categories}),
        )
        .await;
        assert_eq!(status, 201, "{p}");
        ids.push(p["id"].as_str().unwrap().to_owned());
    }

    // Cursor paging, newest first: every product exactly once.
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => format!("/api/v1/products?page_size=10&page_token={t}"),
            None => "/api/v1/products?page_size=10".to_owned(),
        };
        let (status, page) = get(s, &path).await;
        assert_eq!(status, 200, "{page}");
        for p in page["products"].as_array().unwrap() {
            seen.push(p["id"].as_str().unwrap().to_owned());
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    // Offset pages: page 3 of 10 holds the last five.
    let (_, page3) = get(s, "/api/v1/products?page=3&page_size=10").await;
    let page3: Vec<String> = page3["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(page3, newest_first[20..]);
    let (_, page9) = get(s, "/api/v1/products?page=9&page_size=10").await;
    assert!(page9["products"].as_array().unwrap().is_empty());
    let (status, _) = get(s, "/api/v1/products?page=0").await;
    assert_eq!(status, 400);

    // A category's listing and the word search page the same way.
    let (_, tools) = get(s, "/api/v1/products?category=tools&page_size=100").await;
    assert_eq!(tools["products"].as_array().unwrap().len(), 13);
    let mut found = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(t) => {
                format!("/api/v1/products/search?q=steel%20hammer&page_size=7&page_token={t}")
            }
            None => "/api/v1/products/search?q=steel%20hammer&page_size=7".to_owned(),
        };
        let (_, page) = get(s, &path).await;
        for p in page["products"].as_array().unwrap() {
            assert!(found.insert(p["id"].as_str().unwrap().to_owned()), "twice");
        }
        match page["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(found.len(), 25);

    // Batch reads: in the order asked, unknown and malformed ids left out.
    let ask = format!(
        "{},{},{},junk,{}",
        ids[3],
        uuid::Uuid::now_v7(),
        ids[1],
        ids[3]
    );
    let (status, batch) = get(s, &format!("/api/v1/products?ids={ask}")).await;
    assert_eq!(status, 200, "{batch}");
    let got: Vec<&str> = batch["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[3].as_str(), ids[1].as_str()]);
    let many = vec![ids[0].clone(); 101].join(",");
    let (status, _) = get(s, &format!("/api/v1/products?ids={many}")).await;
    assert_eq!(status, 400);
}
