//! The edge-store conformance suite: every `EdgeStore` runs it. Runs
//! against the in-process store and against a real `redis-server`.

use std::sync::Arc;

use flashmall_proxy::state::{
    AccessRule, BlacklistEntry, EdgeStore, Effect, LocalEdgeStore, RedisEdgeStore,
};
use flashmall_testing::RedisServer;

struct Subject {
    store: Arc<dyn EdgeStore>,
    _redis: Option<RedisServer>,
}

async fn local() -> Subject {
    Subject {
        store: Arc::new(LocalEdgeStore::default()),
        _redis: None,
    }
}

async fn redis() -> Subject {
    let server = RedisServer::start();
    let store = RedisEdgeStore::connect(&server.url(), std::time::Duration::from_secs(2))
        .await
        .expect("connect to the test redis");
    Subject {
        store: Arc::new(store),
        _redis: Some(server),
    }
}

fn entry(id: &str, user: &str) -> BlacklistEntry {
    BlacklistEntry {
        id: id.into(),
        user_id: Some(user.into()),
        cidr: None,
        expires_at_ms: None,
        created_at_ms: 1,
    }
}

async fn every_write_moves_the_version(s: &dyn EdgeStore) {
    let v0 = s.version().await.unwrap();
    s.add_blacklist(entry("a", "u1")).await.unwrap();
    let v1 = s.version().await.unwrap();
    assert_ne!(v1, v0);
    s.set_rules(Vec::new()).await.unwrap();
    let v2 = s.version().await.unwrap();
    assert_ne!(v2, v1);
    s.deny_token("jti", u64::MAX / 2).await.unwrap();
    assert_ne!(s.version().await.unwrap(), v2);
}

async fn blacklist_entries_are_added_and_removed(s: &dyn EdgeStore) {
    s.add_blacklist(entry("a", "u1")).await.unwrap();
    s.add_blacklist(BlacklistEntry {
        id: "b".into(),
        user_id: None,
        cidr: Some("10.0.0.0/8".parse().unwrap()),
        expires_at_ms: Some(5_000),
        created_at_ms: 2,
    })
    .await
    .unwrap();
    let mut listed = s.load(0).await.unwrap().blacklist;
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], entry("a", "u1"));
    assert_eq!(listed[1].cidr, Some("10.0.0.0/8".parse().unwrap()));
    assert!(s.remove_blacklist("a").await.unwrap());
    assert!(!s.remove_blacklist("a").await.unwrap(), "removed once");
    assert_eq!(s.load(0).await.unwrap().blacklist.len(), 1);
}

async fn rules_are_replaced_whole(s: &dyn EdgeStore) {
    let rule = |role: &str| AccessRule {
        role: role.into(),
        effect: Effect::Deny,
        method: "GET".into(),
        path: "^/x$".into(),
    };
    s.set_rules(vec![rule("customer"), rule("merchant")])
        .await
        .unwrap();
    s.set_rules(vec![rule("admin")]).await.unwrap();
    assert_eq!(s.load(0).await.unwrap().rules, vec![rule("admin")]);
}

async fn denied_tokens_last_until_they_expire(s: &dyn EdgeStore) {
    s.deny_token("old", 1_000).await.unwrap();
    s.deny_token("new", 10_000).await.unwrap();
    let state = s.load(5_000).await.unwrap();
    assert!(state.denied.contains_key("new"));
    assert!(
        !state.denied.contains_key("old"),
        "expired denials are dropped"
    );
}

macro_rules! conformance {
    ($name:ident, $make:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn every_write_moves_the_version() {
                let s = $make().await;
                super::every_write_moves_the_version(&*s.store).await;
            }
            #[tokio::test]
            async fn blacklist_entries_are_added_and_removed() {
                let s = $make().await;
                super::blacklist_entries_are_added_and_removed(&*s.store).await;
            }
            #[tokio::test]
            async fn rules_are_replaced_whole() {
                let s = $make().await;
                super::rules_are_replaced_whole(&*s.store).await;
            }
            #[tokio::test]
            async fn denied_tokens_last_until_they_expire() {
                let s = $make().await;
                super::denied_tokens_last_until_they_expire(&*s.store).await;
            }
        }
    };
}

conformance!(on_local, local);
conformance!(on_redis, redis);
