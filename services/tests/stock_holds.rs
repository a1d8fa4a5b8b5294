//! Normal checkout's stock holds on the product record (embedded store):
//! a hold takes units once however often it is retried, all lines or none;
//! a settled hold is never taken again, not even by a hold that arrives
//! after its release; racing holds of the last units never oversell.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::sync::Arc;
use std::time::Duration;

use flashmall_mesh::{ErrorCode, Identity, Role, now_ms};
use flashmall_services::config::ProductsConfig;
use flashmall_services::products::stock::{Settle, StockLine};
use flashmall_services::products::{NewProduct, Products};
use flashmall_services::store::EmbeddedStore;

fn component() -> Identity {
    Identity::service("checkout", Duration::from_secs(60))
}

fn admin() -> Identity {
    Identity {
        user_id: "admin-1".into(),
        roles: vec![Role::Admin],
        token_id: "t".into(),
        expires_at_ms: now_ms() + 60_000,
    }
}

struct Shop {
    products: Arc<Products>,
    _dir: tempfile::TempDir,
}

async fn shop() -> Shop {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    Shop {
        products: Arc::new(Products::new(store, ProductsConfig::default())),
        _dir: dir,
    }
}

async fn product(shop: &Shop, stock: i64) -> String {
    let p = shop
        .products
        .create(
            &admin(),
            NewProduct {
                name: "Teapot".into(),
                description: String::new(),
                price: 2_000,
                categories: Vec::new(),
                stock,
            },
        )
        .await
        .unwrap();
    p.id.to_string()
}

async fn stock(shop: &Shop, id: &str) -> i64 {
    shop.products.get(id).await.unwrap().stock
}

fn line(id: &str, quantity: i64) -> Vec<StockLine> {
    vec![StockLine {
        product_id: id.to_owned(),
        quantity,
    }]
}

fn hold_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn deadline() -> u64 {
    now_ms() + 60_000
}

#[tokio::test]
async fn a_hold_takes_units_once_and_settles_once() {
    let s = shop().await;
    let p = product(&s, 10).await;
    let h = hold_id();
    let d = deadline();
    for _ in 0..3 {
        s.products
            .hold(&component(), &h, &line(&p, 4), d)
            .await
            .unwrap();
    }
    assert_eq!(stock(&s, &p).await, 6, "retries take nothing more");
    for _ in 0..2 {
        s.products
            .settle(&component(), &h, &line(&p, 4), d, Settle::Commit)
            .await
            .unwrap();
    }
    assert_eq!(stock(&s, &p).await, 6, "committed units stay sold");
    // A release after the commit gives nothing back; a hold again takes nothing.
    s.products
        .settle(&component(), &h, &line(&p, 4), d, Settle::Release)
        .await
        .unwrap();
    s.products
        .hold(&component(), &h, &line(&p, 4), d)
        .await
        .unwrap();
    assert_eq!(stock(&s, &p).await, 6);

    let h2 = hold_id();
    s.products
        .hold(&component(), &h2, &line(&p, 5), d)
        .await
        .unwrap();
    assert_eq!(stock(&s, &p).await, 1);
    for _ in 0..2 {
        s.products
            .settle(&component(), &h2, &line(&p, 5), d, Settle::Release)
            .await
            .unwrap();
    }
    assert_eq!(stock(&s, &p).await, 6, "released once");
    let again = s.products.hold(&component(), &h2, &line(&p, 5), d).await;
    assert_eq!(again.unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(
        stock(&s, &p).await,
        6,
        "a released hold is never taken again"
    );
}

#[tokio::test]
async fn a_commit_without_its_hold_is_an_error_and_sells_nothing() {
    let s = shop().await;
    let p = product(&s, 3).await;
    let d = deadline();
    // Never held.
    let never = hold_id();
    let e = s
        .products
        .settle(&component(), &never, &line(&p, 2), d, Settle::Commit)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
    assert_eq!(stock(&s, &p).await, 3);
    // And the hold can still be taken later: the failed commit left no mark.
    s.products
        .hold(&component(), &never, &line(&p, 2), d)
        .await
        .unwrap();
    assert_eq!(stock(&s, &p).await, 1);
    // Released, then committed: an error, and the units stay back.
    let released = hold_id();
    s.products
        .hold(&component(), &released, &line(&p, 1), d)
        .await
        .unwrap();
    s.products
        .settle(&component(), &released, &line(&p, 1), d, Settle::Release)
        .await
        .unwrap();
    let e = s
        .products
        .settle(&component(), &released, &line(&p, 1), d, Settle::Commit)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
    assert!(e.message.contains("released"), "{}", e.message);
    assert_eq!(stock(&s, &p).await, 1);
}

#[tokio::test]
async fn a_release_before_its_hold_leaves_the_hold_nothing_to_take() {
    let s = shop().await;
    let p = product(&s, 3).await;
    let h = hold_id();
    let d = deadline();
    s.products
        .settle(&component(), &h, &line(&p, 2), d, Settle::Release)
        .await
        .unwrap();
    assert_eq!(stock(&s, &p).await, 3);
    let late = s.products.hold(&component(), &h, &line(&p, 2), d).await;
    assert_eq!(late.unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(stock(&s, &p).await, 3);
    // A hold past its deadline is refused outright.
    let stale = s
        .products
        .hold(&component(), &hold_id(), &line(&p, 1), now_ms())
        .await;
    assert_eq!(stale.unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(stock(&s, &p).await, 3);
}

#[tokio::test]
async fn a_hold_is_all_lines_or_none() {
    let s = shop().await;
    let plenty = product(&s, 100).await;
    let scarce = product(&s, 1).await;
    let h = hold_id();
    let lines = [line(&plenty, 5), line(&scarce, 2)].concat();
    let short = s.products.hold(&component(), &h, &lines, deadline()).await;
    assert_eq!(short.unwrap_err().code, ErrorCode::OutOfStock);
    assert_eq!(stock(&s, &plenty).await, 100, "the held line came back");
    assert_eq!(stock(&s, &scarce).await, 1);
    // Buyers cannot hold or settle stock themselves.
    let refused = s
        .products
        .hold(&admin(), &hold_id(), &line(&plenty, 1), deadline())
        .await;
    assert_eq!(refused.unwrap_err().code, ErrorCode::Forbidden);
    // Bad lines change nothing.
    for bad in [
        line(&plenty, 0),
        line(&plenty, -1),
        line("nope", 1),
        Vec::new(),
    ] {
        let e = s
            .products
            .hold(&component(), &hold_id(), &bad, deadline())
            .await;
        assert_eq!(e.unwrap_err().code, ErrorCode::InvalidRequest);
    }
    assert_eq!(stock(&s, &plenty).await, 100);
}

/// A caller that timed out retries the same hold after the first attempt
/// failed and gave its units back: the retry gets the same answer (out of
/// stock), not "released already", and takes nothing; once stock came, the
/// same hold succeeds. (Found by `tests/shop.rs` beside two CPU burners,
/// where a 50-line hold outlived the mesh client's 2 s attempt.)
#[tokio::test]
async fn a_retried_hold_that_failed_gets_the_same_answer() {
    let s = shop().await;
    let plenty = product(&s, 100).await;
    let scarce = product(&s, 1).await;
    let h = hold_id();
    let lines = [line(&plenty, 5), line(&scarce, 2)].concat();
    for attempt in 0..3 {
        let retry = s.products.hold(&component(), &h, &lines, deadline()).await;
        assert_eq!(
            retry.unwrap_err().code,
            ErrorCode::OutOfStock,
            "attempt {attempt}"
        );
        assert_eq!(stock(&s, &plenty).await, 100, "attempt {attempt}");
        assert_eq!(stock(&s, &scarce).await, 1, "attempt {attempt}");
    }
    // A release of the order (it closed) still makes the hold final.
    let closed = hold_id();
    let short = s
        .products
        .hold(&component(), &closed, &lines, deadline())
        .await;
    assert_eq!(short.unwrap_err().code, ErrorCode::OutOfStock);
    s.products
        .settle(&component(), &closed, &lines, deadline(), Settle::Release)
        .await
        .unwrap();
    let restocked = s
        .products
        .hold(&component(), &closed, &line(&plenty, 5), deadline())
        .await;
    assert_eq!(restocked.unwrap_err().code, ErrorCode::Conflict);
    assert_eq!(stock(&s, &plenty).await, 100);
    // Stock came: the failed hold, asked again, now holds every line.
    let patch = flashmall_services::products::ProductPatch {
        stock: Some(5),
        ..Default::default()
    };
    s.products.update(&admin(), &scarce, patch).await.unwrap();
    s.products
        .hold(&component(), &h, &lines, deadline())
        .await
        .unwrap();
    assert_eq!(stock(&s, &plenty).await, 95);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_holds_of_the_last_units_never_oversell() {
    let s = shop().await;
    let p = product(&s, 7).await;
    let d = deadline();
    let tasks: Vec<_> = (0..40)
        .map(|n| {
            let products = Arc::clone(&s.products);
            let p = p.clone();
            tokio::spawn(async move {
                let quantity = 1 + n % 2;
                let held = products
                    .hold(&component(), &hold_id(), &line(&p, quantity), d)
                    .await;
                match held {
                    Ok(()) => quantity,
                    Err(e) => {
                        assert_eq!(e.code, ErrorCode::OutOfStock, "{e}");
                        0
                    }
                }
            })
        })
        .collect();
    let mut taken = 0;
    for t in tasks {
        taken += t.await.unwrap();
    }
    let left = stock(&s, &p).await;
    assert!(
        (0..=1).contains(&left),
        "{left} left: a hold of 1 would have fit"
    );
    assert_eq!(taken + left, 7, "units held + units left = the stock");
}
