//! The edge-store conformance suite: every `EdgeStore` runs it. Runs
//! against the in-process store and against a real `redis-server`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::sync::Arc;

use flashmall_proxy::state::{
    AccessRule, BlacklistEntry, EdgeStore, Effect, LocalEdgeStore, REVOCATIONS_PER_READ,
    RedisEdgeStore, Revocation, StoreError, View, now_ms,
};
use flashmall_testing::acl::ProductionAcl;
use flashmall_testing::{RedisServer, SentinelSet};

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

/// A redis-server with the edge's Redis user exactly as the production
/// overlay defines it (`k8s/overlays/production/redis.yaml`: its own keys,
/// `fm:edge:*`, no dangerous commands), and the store connected as it.
async fn edge_acl_store() -> (RedisServer, RedisEdgeStore) {
    let mut args = vec![
        "--user".to_owned(),
        "edge".to_owned(),
        "on".to_owned(),
        ">edge-secret-0123456789".to_owned(),
    ];
    args.extend(ProductionAcl::load().redis_rules("edge"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with_args(&args);
    let url = format!(
        "redis://edge:edge-secret-0123456789@127.0.0.1:{}",
        server.port()
    );
    let store = RedisEdgeStore::connect(&url, std::time::Duration::from_secs(2))
        .await
        .expect("connect as the edge's ACL user");
    (server, store)
}

async fn redis_as_edge_user() -> Subject {
    let (server, store) = edge_acl_store().await;
    Subject {
        store: Arc::new(store),
        _redis: Some(server),
    }
}

/// Security review #18, finding 9: the edge needs nothing beyond its own
/// keys, so a Redis ACL can confine it there. As the `fm:edge:*` user, the
/// whole store conformance suite passes (above) and a global rate limit
/// still limits, while the engine's keys are out of its reach.
#[tokio::test]
async fn the_edge_works_confined_to_its_own_keys() {
    use flashmall_proxy::config::LimitConfig;
    use flashmall_proxy::limits::{Limit, Limiter};
    let (_server, store) = edge_acl_store().await;
    let limiter = Limiter::new(Some(store.client().clone()));
    let limit = Limit::from_config(&LimitConfig {
        name: "global-test".into(),
        key: "user".into(),
        method: "*".into(),
        path: String::new(),
        per_second: 0.001,
        burst: 2,
        scope: "global".into(),
    })
    .unwrap();
    assert!(limiter.check(&limit, "u1").await.is_ok());
    assert!(limiter.check(&limit, "u1").await.is_ok());
    assert!(
        limiter.check(&limit, "u1").await.is_err(),
        "the global limit holds under the ACL"
    );
    // Another component's keys are refused to the edge's user.
    use fred::prelude::KeysInterface;
    let refused = store
        .client()
        .get::<Option<String>, _>("fm:sale:{00000000-0000-7000-8000-000000000001}:stock")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("NOPERM"), "{refused}");
    // The waiting rooms' scripts run as the edge's user too.
    use flashmall_proxy::waiting::store::{Joined, Pace, QueueStore, RedisQueueStore, Used};
    let rooms = RedisQueueStore::new(store.client().clone());
    let sale = "0199abcd-0000-7000-8000-000000000001";
    let far = flashmall_proxy::state::now_ms() + 3_600_000;
    assert!(matches!(
        rooms.join(sale, "u1", 10, far).await.unwrap(),
        Joined::New(_)
    ));
    assert_eq!(rooms.open(sale, "seed", far).await.unwrap(), "seed");
    rooms.set_closed(sale, false).await.unwrap();
    let pace = Pace {
        per_second: 1_000_000.0,
        remaining: 1,
        window_ms: 60_000,
    };
    let mut progress = rooms.advance(sale, pace, far).await.unwrap();
    while progress.admitted < 1 {
        progress = rooms.advance(sale, pace, far).await.unwrap();
    }
    let place = rooms.place(sale, "u1").await.unwrap().unwrap();
    assert_eq!(place.rank, Some(0));
    assert!(place.granted_ms.is_some(), "{place:?}");
    assert!(matches!(
        rooms.use_admission(sale, "u1", "k", far).await.unwrap(),
        Used::First { .. }
    ));
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

fn revocation(key: &str, not_before_ms: Option<u64>, until_ms: u64) -> Revocation {
    Revocation {
        key: key.into(),
        not_before_ms,
        until_ms,
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
    // Revocations are versioned apart: the snapshot is not reloaded for them.
    s.revoke(&revocation("f:a", None, u64::MAX / 4), 1)
        .await
        .unwrap();
    assert_eq!(s.version().await.unwrap(), v2);
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
    let mut listed = s.load().await.unwrap().blacklist;
    listed.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], entry("a", "u1"));
    assert_eq!(listed[1].cidr, Some("10.0.0.0/8".parse().unwrap()));
    assert!(s.remove_blacklist("a").await.unwrap());
    assert!(!s.remove_blacklist("a").await.unwrap(), "removed once");
    assert_eq!(s.load().await.unwrap().blacklist.len(), 1);
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
    assert_eq!(s.load().await.unwrap().rules, vec![rule("admin")]);
}

fn keys(found: &[(u64, Revocation)]) -> Vec<&str> {
    found.iter().map(|(_, r)| r.key.as_str()).collect()
}

async fn revocations_are_read_once_in_order_and_last_until_they_expire(s: &dyn EdgeStore) {
    s.revoke(&revocation("f:a", None, 10_000), 1_000)
        .await
        .unwrap();
    s.revoke(&revocation("u:bob", Some(3_000), 10_000), 1_000)
        .await
        .unwrap();
    let all = s.revocations_after(0).await.unwrap();
    assert_eq!(keys(&all), ["f:a", "u:bob"]);
    assert!(all[0].0 < all[1].0, "numbered in order");
    assert_eq!(all[1].1, revocation("u:bob", Some(3_000), 10_000));
    let last = all[1].0;
    assert!(s.revocations_after(last).await.unwrap().is_empty());
    // The same key again: merged (the stricter wins) and new to readers.
    s.revoke(&revocation("u:bob", Some(2_000), 20_000), 2_000)
        .await
        .unwrap();
    let new = s.revocations_after(last).await.unwrap();
    assert_eq!(keys(&new), ["u:bob"]);
    assert_eq!(new[0].1, revocation("u:bob", Some(3_000), 20_000));
    s.revoke(&revocation("u:bob", None, 5_000), 2_000)
        .await
        .unwrap();
    let all = s.revocations_after(0).await.unwrap();
    assert_eq!(all.last().unwrap().1, revocation("u:bob", None, 20_000));
    // Recording one drops the expired: the store holds only live ones.
    s.revoke(&revocation("t:x", None, 30_000), 15_000)
        .await
        .unwrap();
    assert_eq!(
        keys(&s.revocations_after(0).await.unwrap()),
        ["u:bob", "t:x"]
    );
    // Many: read a page at a time, each once.
    let many = REVOCATIONS_PER_READ * 2 + 10;
    for n in 0..many {
        s.revoke(&revocation(&format!("f:{n}"), None, 40_000), 16_000)
            .await
            .unwrap();
    }
    let (mut after, mut read) = (0, 0);
    loop {
        let page = s.revocations_after(after).await.unwrap();
        assert!(page.len() <= REVOCATIONS_PER_READ);
        let Some(&(last, _)) = page.last() else { break };
        assert!(page.windows(2).all(|w| w[0].0 < w[1].0));
        read += page.len();
        after = last;
    }
    assert_eq!(read, many + 2);
    // All of them expire together, and the next record drops them.
    for _ in 0..many / 100 + 1 {
        s.revoke(&revocation("t:late", None, 90_000), 50_000)
            .await
            .unwrap();
    }
    assert_eq!(keys(&s.revocations_after(0).await.unwrap()), ["t:late"]);
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
            async fn revocations_are_read_once_in_order_and_last_until_they_expire() {
                let s = $make().await;
                super::revocations_are_read_once_in_order_and_last_until_they_expire(&*s.store)
                    .await;
            }
        }
    };
}

conformance!(on_local, local);
conformance!(on_redis, redis);
conformance!(on_redis_as_the_edge_acl_user, redis_as_edge_user);

/// The production overlay's Redis, locked down (every default user off,
/// replication and Sentinel under their own users): the edge logs in as its
/// user through the sentinel, finds the primary, and after the primary
/// dies finds the promoted replica and keeps working there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_user_follows_a_failover_through_a_locked_down_sentinel() {
    let mut set = SentinelSet::start_secured(&ProductionAcl::load());
    let url = format!(
        "redis-sentinel://edge:{}@127.0.0.1:{}?sentinelServiceName={}",
        SentinelSet::password("edge"),
        set.sentinel_port(),
        SentinelSet::SERVICE
    );
    let store = RedisEdgeStore::connect(&url, std::time::Duration::from_secs(2))
        .await
        .expect("the edge logs in through the sentinel");
    let rule = |path: &str| AccessRule {
        role: "customer".into(),
        effect: Effect::Deny,
        method: "GET".into(),
        path: path.into(),
    };
    store
        .set_rules(vec![rule("^/before$")])
        .await
        .expect("writes as the edge");
    set.kill_primary();
    assert!(
        set.wait_promoted(std::time::Duration::from_secs(30)),
        "the sentinel promoted the replica"
    );
    // Other pooled connections may still be on their way to the new
    // primary: a call can fail until they arrive. What must hold is that
    // the edge writes and reads there again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let state = loop {
        if store.set_rules(vec![rule("^/after$")]).await.is_ok()
            && let Ok(state) = store.load().await
        {
            break state;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edge never wrote and read on the promoted replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(state.rules, vec![rule("^/after$")]);
}

/// A Redis server, the edge store on it, and a replica's view of it.
async fn replica_on_its_own_redis() -> (RedisServer, Arc<RedisEdgeStore>, Arc<View>) {
    let server = RedisServer::start();
    let store = Arc::new(
        RedisEdgeStore::connect(&server.url(), std::time::Duration::from_secs(2))
            .await
            .expect("connect"),
    );
    let view = View::new(store.clone());
    (server, store, view)
}

/// Redis may come back with less than it acknowledged: a restart from an
/// older RDB or AOF point, a failover to a replica that lagged. A replica
/// that had read the lost revocations keeps enforcing them, and the
/// revocations recorded after the loss still reach it: their sequence
/// numbers never repeat numbers it has read already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_recorded_after_redis_lost_some_still_reach_every_replica() {
    let (mut server, store, view) = replica_on_its_own_redis().await;
    let until = now_ms() + 600_000;
    let family = |c: char| c.to_string().repeat(32);
    let jti = |c: char| format!("{}{}", family(c), "0".repeat(32));
    store
        .revoke(
            &revocation(&format!("f:{}", family('a')), None, until),
            now_ms(),
        )
        .await
        .unwrap();
    let older = server.snapshot();
    for c in ['b', 'c', 'd'] {
        store
            .revoke(
                &revocation(&format!("f:{}", family(c)), None, until),
                now_ms(),
            )
            .await
            .unwrap();
    }
    view.refresh().await.unwrap();
    assert!(view.token_revoked(&jti('d'), "u", 0, now_ms()));

    // Redis comes back without b, c and d; two logouts follow.
    server.restart_from(&older);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for c in ['e', 'f'] {
        let revoked = revocation(&format!("f:{}", family(c)), None, until);
        while store.revoke(&revoked, now_ms()).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis never came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    view.refresh().await.unwrap();
    for c in ['e', 'f'] {
        assert!(
            view.token_revoked(&jti(c), "u", 0, now_ms()),
            "the logout of {c}, recorded after Redis lost data, never reached the replica"
        );
    }
    // What this replica had read, it still enforces.
    for c in ['a', 'b', 'c', 'd'] {
        assert!(view.token_revoked(&jti(c), "u", 0, now_ms()), "{c}");
    }
    // A replica starting now reads what Redis still has.
    let fresh = View::new(store.clone());
    fresh.refresh().await.unwrap();
    for c in ['a', 'e', 'f'] {
        assert!(fresh.token_revoked(&jti(c), "u", 0, now_ms()), "{c}");
    }
}

/// The same loss, for the blacklist and the rules: after Redis comes back
/// with less than it acknowledged, the writes that follow still reach a
/// replica that had read a version as high as theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blacklist_writes_after_redis_lost_some_still_reach_every_replica() {
    let (mut server, store, view) = replica_on_its_own_redis().await;
    store.add_blacklist(entry("a", "ua")).await.unwrap();
    let older = server.snapshot();
    store.add_blacklist(entry("b", "ub")).await.unwrap();
    store.add_blacklist(entry("c", "uc")).await.unwrap();
    view.refresh().await.unwrap();
    assert!(view.current().blacklisted(Some("uc"), None, now_ms()));

    // Redis comes back without b and c; as many writes follow.
    server.restart_from(&older);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (id, user) in [("d", "ud"), ("e", "ue")] {
        while store.add_blacklist(entry(id, user)).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis never came back"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    view.refresh().await.unwrap();
    let now = view.current();
    for user in ["ua", "ud", "ue"] {
        assert!(
            now.blacklisted(Some(user), None, now_ms()),
            "{user}'s entry, in Redis now, is not enforced by the replica"
        );
    }
}

/// An edge (re)started while Sentinel fails over: the sentinel still names
/// the primary that just died. The store keeps trying within its timeout
/// and comes up on the promoted replica instead of failing the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connects_through_a_failover_in_progress() {
    let mut set = SentinelSet::start();
    set.kill_primary();
    let store = RedisEdgeStore::connect(&set.url(), std::time::Duration::from_secs(60))
        .await
        .expect("connected once Sentinel promoted the replica");
    let rule = AccessRule {
        role: "customer".into(),
        effect: Effect::Deny,
        method: "GET".into(),
        path: "^/after-failover$".into(),
    };
    store
        .set_rules(vec![rule])
        .await
        .expect("writes on the promoted replica");
}

/// A store that does not answer and a store that holds what the edge cannot
/// read fail differently: the first may work when tried again (the admin
/// API answers 503), the second will not (500, and the log says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_and_an_unreadable_one_are_told_apart() {
    let mut server = RedisServer::start();
    let store = RedisEdgeStore::connect(&server.url(), std::time::Duration::from_secs(2))
        .await
        .expect("connect to the test redis");
    server.command(&["SET", "fm:edge:rules", "not json"]);
    match store.load().await {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("rules"), "{why}"),
        other => panic!("unreadable rules are Corrupt, not {other:?}"),
    }
    let view = View::new(Arc::new(store));
    assert!(matches!(view.refresh().await, Err(StoreError::Corrupt(_))));
    let store = Arc::clone(&view.store);
    server.kill();
    match store.version().await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("redis"), "{why}"),
        other => panic!("a dead store is Unavailable, not {other:?}"),
    }
}
