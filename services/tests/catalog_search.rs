//! Catalogue search does bounded work per request (security review #18,
//! finding 7): a search for words few products hold together examines at
//! most `EXAMINED_MAX` index rows, answers what it found (maybe nothing)
//! and a token to go on from, and following the tokens finds everything.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::sync::Arc;

use flashmall_mesh::{Identity, Role, now_ms};
use flashmall_services::config::ProductsConfig;
use flashmall_services::products::{EXAMINED_MAX, NewProduct, PageRequest, Products};
use flashmall_services::store::EmbeddedStore;

fn admin() -> Identity {
    Identity {
        user_id: "admin-1".into(),
        roles: vec![Role::Admin],
        token_id: "t".into(),
        expires_at_ms: now_ms() + 600_000,
    }
}

#[tokio::test]
async fn a_search_examines_a_bounded_number_of_rows_and_gives_a_token_to_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let products = Products::new(store, ProductsConfig::default());
    let new = |name: String| NewProduct {
        name,
        description: String::new(),
        price: 100,
        categories: Vec::new(),
        stock: 1,
    };
    // The one match is the oldest: newest first, it comes last.
    let wanted = products
        .create(&admin(), new("common rare teapot".into()))
        .await
        .unwrap();
    let commons = EXAMINED_MAX + EXAMINED_MAX / 5;
    for n in 0..commons {
        products
            .create(&admin(), new(format!("common item {n}")))
            .await
            .unwrap();
    }
    let mut page = PageRequest {
        size: 20,
        token: None,
        number: None,
    };
    let (mut found, mut requests) = (Vec::new(), 0);
    loop {
        let answer = products.search("common rare", &page).await.unwrap();
        requests += 1;
        assert!(requests <= 10, "the tokens never end");
        found.extend(answer.products.into_iter().map(|p| p.id));
        match answer.next {
            Some(next) => page.token = Some(next),
            None => break,
        }
    }
    assert_eq!(found, vec![wanted.id]);
    // Every request examined at most EXAMINED_MAX rows: the 601 rows of
    // "common" took two requests, the first of which found nothing.
    assert_eq!(requests, (commons + 1).div_ceil(EXAMINED_MAX));
}
