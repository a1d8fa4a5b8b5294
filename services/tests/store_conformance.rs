//! The services' store conformance suite: every `ServiceStore` runs it.
//! Runs against the embedded store (ScyllaDB joins with the orders issue).

use std::sync::Arc;
use std::time::Duration;

use flashmall_services::store::{EmbeddedStore, ServiceStore, Table};

struct Subject {
    store: Arc<dyn ServiceStore>,
    _dir: tempfile::TempDir,
}

fn embedded() -> Subject {
    let dir = tempfile::tempdir().unwrap();
    Subject {
        store: Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap()),
        _dir: dir,
    }
}

async fn insert_only_when_absent(s: &dyn ServiceStore) {
    assert!(
        s.insert(Table::Users, "k", b"v1".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !s.insert(Table::Users, "k", b"v2".to_vec(), None)
            .await
            .unwrap()
    );
    let got = s.get(Table::Users, "k").await.unwrap().unwrap();
    assert_eq!(got.value, b"v1");
    // Tables are separate key spaces.
    assert!(s.get(Table::Emails, "k").await.unwrap().is_none());
}

async fn replace_only_when_unchanged(s: &dyn ServiceStore) {
    s.insert(Table::Users, "k", b"v1".to_vec(), None)
        .await
        .unwrap();
    let v1 = s.get(Table::Users, "k").await.unwrap().unwrap();
    assert!(
        s.replace(Table::Users, "k", v1.version, b"v2".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !s.replace(Table::Users, "k", v1.version, b"v3".to_vec(), None)
            .await
            .unwrap(),
        "stale version"
    );
    let v2 = s.get(Table::Users, "k").await.unwrap().unwrap();
    assert_eq!(v2.value, b"v2");
    assert!(v2.version > v1.version);
    assert!(
        !s.replace(Table::Users, "missing", 1, b"x".to_vec(), None)
            .await
            .unwrap()
    );
}

async fn delete_checks_the_version(s: &dyn ServiceStore) {
    s.insert(Table::Users, "k", b"v".to_vec(), None)
        .await
        .unwrap();
    let v = s.get(Table::Users, "k").await.unwrap().unwrap();
    assert!(
        !s.delete(Table::Users, "k", Some(v.version + 1))
            .await
            .unwrap()
    );
    assert!(s.delete(Table::Users, "k", Some(v.version)).await.unwrap());
    assert!(s.get(Table::Users, "k").await.unwrap().is_none());
    assert!(!s.delete(Table::Users, "k", None).await.unwrap());
    assert!(
        s.insert(Table::Users, "k", b"again".to_vec(), None)
            .await
            .unwrap()
    );
}

async fn expired_values_are_absent(s: &dyn ServiceStore) {
    s.insert(
        Table::LoginFailures,
        "k",
        b"v".to_vec(),
        Some(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    assert!(s.get(Table::LoginFailures, "k").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(s.get(Table::LoginFailures, "k").await.unwrap().is_none());
    assert!(
        s.insert(Table::LoginFailures, "k", b"new".to_vec(), None)
            .await
            .unwrap(),
        "an expired key is free"
    );
}

/// Concurrent conditional writers: exactly one wins each round (the state
/// transitions of refresh rotation rely on it).
async fn one_of_racing_replaces_wins(s: Arc<dyn ServiceStore>) {
    s.insert(Table::RefreshTokens, "t", b"0".to_vec(), None)
        .await
        .unwrap();
    let v = s
        .get(Table::RefreshTokens, "t")
        .await
        .unwrap()
        .unwrap()
        .version;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.replace(
                Table::RefreshTokens,
                "t",
                v,
                format!("{i}").into_bytes(),
                None,
            )
            .await
            .unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
}

macro_rules! conformance {
    ($name:ident, $make:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn insert_only_when_absent() {
                let s = $make();
                super::insert_only_when_absent(&*s.store).await;
            }
            #[tokio::test]
            async fn replace_only_when_unchanged() {
                let s = $make();
                super::replace_only_when_unchanged(&*s.store).await;
            }
            #[tokio::test]
            async fn delete_checks_the_version() {
                let s = $make();
                super::delete_checks_the_version(&*s.store).await;
            }
            #[tokio::test]
            async fn expired_values_are_absent() {
                let s = $make();
                super::expired_values_are_absent(&*s.store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_of_racing_replaces_wins() {
                let s = $make();
                super::one_of_racing_replaces_wins(Arc::clone(&s.store)).await;
            }
        }
    };
}

conformance!(on_embedded, embedded);
