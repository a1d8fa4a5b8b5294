//! The stock-front conformance suite: every `StockFront` implementation
//! must pass it. Runs against a real `redis-server` (started on a free
//! port) and against the in-process front.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flashmall_engine::config::RedisConfig;
use flashmall_engine::front::{
    FrontCounts, IdemRecord, LocalFront, Rebuild, RedisFront, ReserveCall, ReserveOutcome,
    ReturnOutcome, StockFront, idempotency_field,
};
use flashmall_testing::acl::ProductionAcl;
use flashmall_testing::{RedisServer, SentinelSet};
use uuid::Uuid;

/// A front under test, and the server behind it (kept alive).
struct Subject {
    front: Arc<dyn StockFront>,
    _redis: Option<RedisServer>,
}

async fn local() -> Subject {
    Subject {
        front: Arc::new(LocalFront::new()),
        _redis: None,
    }
}

async fn redis() -> Subject {
    let server = RedisServer::start();
    let config = RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    };
    let front = RedisFront::connect(&config)
        .await
        .expect("connect to the test redis");
    front.warm_up().await.expect("warm up");
    Subject {
        front: Arc::new(front),
        _redis: Some(server),
    }
}

/// A redis-server with the engine's Redis user exactly as the production
/// overlay defines it (`k8s/overlays/production/redis.yaml`), and the front
/// connected as it.
async fn redis_as_engine_user() -> Subject {
    let password = SentinelSet::password("engine");
    let mut args = vec![
        "--user".to_owned(),
        "engine".to_owned(),
        "on".to_owned(),
        format!(">{password}"),
    ];
    args.extend(ProductionAcl::load().redis_rules("engine"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = RedisServer::start_with_args(&args);
    let config = RedisConfig {
        url: format!("redis://engine:{password}@127.0.0.1:{}", server.port()),
        ..RedisConfig::default()
    };
    let front = RedisFront::connect(&config)
        .await
        .expect("connect as the engine's user");
    front.warm_up().await.expect("warm up");
    Subject {
        front: Arc::new(front),
        _redis: Some(server),
    }
}

fn call<'a>(sale: Uuid, user: &'a str, key: &'a str, quantity: i64, limit: i64) -> ReserveCall<'a> {
    ReserveCall {
        sale_id: sale,
        user_id: user,
        idempotency_key: key,
        quantity,
        per_user_limit: limit,
        reservation_id: Uuid::now_v7(),
        now_ms: 1_700_000_000_000,
    }
}

async fn open_sale(front: &dyn StockFront, stock: i64) -> Uuid {
    let sale = Uuid::now_v7();
    front.ensure_stream(sale).await.unwrap();
    let token = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("no rebuild holds the lease")
        .token;
    front
        .rebuild(
            sale,
            token,
            &Rebuild {
                remaining: stock,
                ..Rebuild::default()
            },
        )
        .await
        .unwrap();
    sale
}

async fn reserve_decrements_and_counts(front: &dyn StockFront) {
    let sale = open_sale(front, 10).await;
    let outcome = front.reserve(&call(sale, "u1", "k1", 2, 5)).await.unwrap();
    assert_eq!(outcome, ReserveOutcome::Reserved { remaining: 8 });
    let counts = front.counts(sale).await.unwrap().unwrap();
    assert_eq!((counts.remaining, counts.pending), (8, 2));
}

async fn same_key_replays_the_original(front: &dyn StockFront) {
    let sale = open_sale(front, 10).await;
    let first = call(sale, "u1", "k1", 1, 5);
    assert!(matches!(
        front.reserve(&first).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
    let again = front.reserve(&call(sale, "u1", "k1", 1, 5)).await.unwrap();
    assert_eq!(
        again,
        ReserveOutcome::Replayed(IdemRecord {
            reservation_id: first.reservation_id,
            quantity: 1
        })
    );
    // The same key from another user is another purchase.
    assert!(matches!(
        front.reserve(&call(sale, "u2", "k1", 1, 5)).await.unwrap(),
        ReserveOutcome::Reserved { remaining: 8 }
    ));
    let counts = front.counts(sale).await.unwrap().unwrap();
    assert_eq!(counts.remaining, 8, "a replay takes no unit");
    let records = front.idempotency_records(sale).await.unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[&idempotency_field("u1", "k1")].reservation_id,
        first.reservation_id
    );
}

async fn per_user_limit_holds(front: &dyn StockFront) {
    let sale = open_sale(front, 10).await;
    assert!(matches!(
        front.reserve(&call(sale, "u1", "a", 2, 2)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
    assert_eq!(
        front.reserve(&call(sale, "u1", "b", 1, 2)).await.unwrap(),
        ReserveOutcome::LimitExceeded { held: 2 }
    );
    assert_eq!(front.counts(sale).await.unwrap().unwrap().remaining, 8);
}

async fn sold_out_is_a_value(front: &dyn StockFront) {
    let sale = open_sale(front, 2).await;
    assert!(matches!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
    assert_eq!(
        front.reserve(&call(sale, "u2", "a", 2, 5)).await.unwrap(),
        ReserveOutcome::SoldOut {
            remaining: 1,
            idempotency_records: 1
        }
    );
    assert!(matches!(
        front.reserve(&call(sale, "u2", "b", 1, 5)).await.unwrap(),
        ReserveOutcome::Reserved { remaining: 0 }
    ));
    assert_eq!(
        front.reserve(&call(sale, "u3", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::SoldOut {
            remaining: 0,
            idempotency_records: 2
        }
    );
}

/// Commits a rebuild of 5 units under `token`; a purchase then reserves.
async fn rebuild_and_sell(front: &dyn StockFront, sale: Uuid, token: Uuid) {
    let rebuild = Rebuild {
        remaining: 5,
        ..Rebuild::default()
    };
    assert!(front.rebuild(sale, token, &rebuild).await.unwrap());
    assert!(matches!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
}

async fn missing_or_suspended_stock_is_not_ready(front: &dyn StockFront) {
    let unknown = Uuid::now_v7();
    assert_eq!(
        front
            .reserve(&call(unknown, "u1", "a", 1, 5))
            .await
            .unwrap(),
        ReserveOutcome::NotReady
    );
    assert_eq!(front.counts(unknown).await.unwrap(), None);
    let sale = open_sale(front, 5).await;
    let token = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("no rebuild holds the lease")
        .token;
    assert_eq!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Rebuilding,
        "a suspended sale is being rebuilt, not lost"
    );
    assert_eq!(
        front
            .give_back(sale, Uuid::now_v7(), "u1", 1)
            .await
            .unwrap(),
        ReturnOutcome::NotReady
    );
    rebuild_and_sell(front, sale, token).await;
}

/// Two rebuilds of one sale at once (two replicas reconciling): the lease
/// admits one; the other is refused, and a foreign token commits nothing.
async fn a_superseded_rebuild_commits_nothing(front: &dyn StockFront) {
    let sale = open_sale(front, 5).await;
    let holder = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("the lease is free")
        .token;
    assert_eq!(
        front.suspend(sale).await.unwrap(),
        None,
        "one rebuild at a time"
    );
    assert_eq!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Rebuilding,
        "purchases know a rebuild runs"
    );
    let stale = Rebuild {
        remaining: 99,
        buyers: vec![("u1".into(), 1)],
        ..Rebuild::default()
    };
    assert!(
        !front.rebuild(sale, Uuid::now_v7(), &stale).await.unwrap(),
        "a foreign token"
    );
    assert_eq!(front.counts(sale).await.unwrap(), None, "still suspended");
    let fresh = Rebuild {
        remaining: 4,
        ..Rebuild::default()
    };
    assert!(front.rebuild(sale, holder, &fresh).await.unwrap());
    assert_eq!(front.counts(sale).await.unwrap().unwrap().remaining, 4);
    assert!(
        !front.rebuild(sale, holder, &stale).await.unwrap(),
        "a token commits once"
    );
    assert_eq!(front.counts(sale).await.unwrap().unwrap().remaining, 4);
    assert!(
        matches!(
            front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
            ReserveOutcome::Reserved { .. }
        ),
        "purchases are served again after the rebuild"
    );
    assert!(
        front.suspend(sale).await.unwrap().is_some(),
        "the lease is free again"
    );
}

/// A suspension takes the sale's counts away at one instant, and the front
/// says which releases it has given back: a rebuild measures drift from
/// these, not from counts read while units move.
async fn a_suspension_takes_the_counts_at_one_instant(front: &dyn StockFront) {
    let sale = open_sale(front, 5).await;
    for user in ["u1", "u2"] {
        assert!(matches!(
            front.reserve(&call(sale, user, "a", 1, 5)).await.unwrap(),
            ReserveOutcome::Reserved { .. }
        ));
    }
    let (given, other) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(
        front.give_back(sale, given, "u1", 1).await.unwrap(),
        ReturnOutcome::Returned
    );
    let suspended = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("the lease is free");
    assert_eq!(
        suspended.counts,
        Some(FrontCounts {
            remaining: 4,
            pending: 2
        })
    );
    assert_eq!(
        front.given_back(sale, &[given, other]).await.unwrap(),
        HashSet::from([given])
    );
    assert!(front.given_back(sale, &[]).await.unwrap().is_empty());
    // Given up, the stock stays out: the next suspension finds none.
    front.abandon(sale, suspended.token).await.unwrap();
    let again = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("the lease was given up");
    assert_eq!(again.counts, None);
}

/// Units a rebuild counted back into `remaining` are never given back twice.
async fn rebuilt_returns_are_not_given_back_again(front: &dyn StockFront) {
    let sale = open_sale(front, 5).await;
    let released = Uuid::now_v7();
    let token = front.suspend(sale).await.unwrap().unwrap().token;
    let state = Rebuild {
        remaining: 5,
        returned: vec![released],
        ..Rebuild::default()
    };
    assert!(front.rebuild(sale, token, &state).await.unwrap());
    assert_eq!(
        front.give_back(sale, released, "u1", 1).await.unwrap(),
        ReturnOutcome::AlreadyReturned
    );
    assert_eq!(front.counts(sale).await.unwrap().unwrap().remaining, 5);
}

async fn stream_delivers_acks_once(front: &dyn StockFront) {
    let sale = open_sale(front, 10).await;
    let mut ids = Vec::new();
    for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
        let c = call(sale, user, "k", i as i64 + 1, 5);
        ids.push(c.reservation_id);
        front.reserve(&c).await.unwrap();
    }
    let batch = front.read_new(sale, "c1", 10).await.unwrap();
    assert_eq!(
        batch.iter().map(|e| e.reservation_id).collect::<Vec<_>>(),
        ids,
        "stream order"
    );
    assert_eq!(batch[1].user_id, "u2");
    assert_eq!(batch[1].quantity, 2);
    assert_eq!(batch[1].idempotency_key, "k");
    assert_eq!(batch[1].sale_id, sale);
    assert!(
        front.read_new(sale, "c1", 10).await.unwrap().is_empty(),
        "delivered once"
    );
    assert_eq!(
        front.read_own_pending(sale, "c1", 10).await.unwrap().len(),
        3,
        "unacked entries stay pending"
    );
    assert_eq!(front.backlog(sale).await.unwrap(), 3);
    front.ack(sale, &batch[..2]).await.unwrap();
    assert_eq!(front.counts(sale).await.unwrap().unwrap().pending, 3);
    front.ack(sale, &batch).await.unwrap();
    front.ack(sale, &batch).await.unwrap();
    let counts = front.counts(sale).await.unwrap().unwrap();
    assert_eq!(counts.pending, 0, "each entry leaves pending exactly once");
    assert_eq!(counts.remaining, 4);
    assert_eq!(front.backlog(sale).await.unwrap(), 0);
    assert!(
        front
            .read_own_pending(sale, "c1", 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn idle_entries_are_claimed(front: &dyn StockFront) {
    let sale = open_sale(front, 10).await;
    for user in ["u1", "u2"] {
        front.reserve(&call(sale, user, "k", 1, 5)).await.unwrap();
    }
    let crashed = front.read_new(sale, "crashed", 10).await.unwrap();
    assert_eq!(crashed.len(), 2);
    assert!(
        front
            .claim_idle(sale, "alive", Duration::from_secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let claimed = front
        .claim_idle(sale, "alive", Duration::from_millis(10), 10)
        .await
        .unwrap();
    assert_eq!(
        claimed, crashed,
        "the same entries, now the live consumer's"
    );
    assert_eq!(
        front
            .read_own_pending(sale, "alive", 10)
            .await
            .unwrap()
            .len(),
        2
    );
    front.ack(sale, &claimed).await.unwrap();
    assert_eq!(front.counts(sale).await.unwrap().unwrap().pending, 0);
}

async fn give_back_is_idempotent(front: &dyn StockFront) {
    let sale = open_sale(front, 1).await;
    let c = call(sale, "u1", "a", 1, 1);
    front.reserve(&c).await.unwrap();
    assert_eq!(
        front
            .give_back(sale, c.reservation_id, "u1", 1)
            .await
            .unwrap(),
        ReturnOutcome::Returned
    );
    assert_eq!(
        front
            .give_back(sale, c.reservation_id, "u1", 1)
            .await
            .unwrap(),
        ReturnOutcome::AlreadyReturned
    );
    assert_eq!(front.counts(sale).await.unwrap().unwrap().remaining, 1);
    // The buyer's units went back too: within the limit again.
    assert!(matches!(
        front.reserve(&call(sale, "u1", "b", 1, 1)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
}

async fn rebuild_restores_buyers_and_keys(front: &dyn StockFront) {
    let sale = open_sale(front, 10).await;
    let rid = Uuid::now_v7();
    let token = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("no rebuild holds the lease")
        .token;
    front
        .rebuild(
            sale,
            token,
            &Rebuild {
                remaining: 7,
                buyers: vec![("u1".into(), 2), ("u2".into(), 1)],
                idempotency: vec![(
                    idempotency_field("u1", "k"),
                    IdemRecord {
                        reservation_id: rid,
                        quantity: 2,
                    },
                )],
                returned: Vec::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        front.reserve(&call(sale, "u1", "k", 2, 2)).await.unwrap(),
        ReserveOutcome::Replayed(IdemRecord {
            reservation_id: rid,
            quantity: 2
        })
    );
    assert_eq!(
        front
            .reserve(&call(sale, "u1", "other", 1, 2))
            .await
            .unwrap(),
        ReserveOutcome::LimitExceeded { held: 2 }
    );
    let counts = front.counts(sale).await.unwrap().unwrap();
    assert_eq!((counts.remaining, counts.pending), (7, 0));
}

async fn concurrent_buyers_never_oversell(front: Arc<dyn StockFront>) {
    let sale = open_sale(&*front, 50).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let front = Arc::clone(&front);
        tasks.push(tokio::spawn(async move {
            let user = format!("u{i}");
            front.reserve(&call(sale, &user, "k", 1, 1)).await.unwrap()
        }));
    }
    let mut reserved = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), ReserveOutcome::Reserved { .. }) {
            reserved += 1;
        }
    }
    assert_eq!(reserved, 50);
    let counts = front.counts(sale).await.unwrap().unwrap();
    assert_eq!((counts.remaining, counts.pending), (0, 50));
    assert_eq!(front.backlog(sale).await.unwrap(), 50);
}

/// The store's generation names one life of it: it does not change while
/// the store lives (a change makes the engine rebuild every sale).
async fn the_generation_holds_while_the_store_lives(front: &dyn StockFront) {
    let first = front.generation().await.unwrap();
    open_sale(front, 3).await;
    assert_eq!(front.generation().await.unwrap(), first);
}

/// A rebuild that fails after suspending gives its lease up: the sale is
/// then not loaded (a purchase starts a fresh reconcile) instead of being
/// rebuilt for the rest of the lease, and a new rebuild may start at once.
/// Another rebuild's token abandons nothing.
async fn an_abandoned_rebuild_frees_the_lease(front: &dyn StockFront) {
    let sale = open_sale(front, 5).await;
    let token = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("lease free")
        .token;
    front.abandon(sale, Uuid::now_v7()).await.unwrap();
    assert_eq!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Rebuilding,
        "a foreign token abandons nothing"
    );
    front.abandon(sale, token).await.unwrap();
    assert_eq!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::NotReady
    );
    let again = front
        .suspend(sale)
        .await
        .unwrap()
        .expect("the lease is free again")
        .token;
    rebuild_and_sell(front, sale, again).await;
}

/// A rebuild's lease holds past its first term while it is renewed, and
/// lapses when it is not: another rebuild then takes it over, and the first
/// can neither renew nor commit. (Without renewal a reconcile slower than
/// one lease lost it mid-way, every time, and its sale stayed off sale:
/// the chaos run's reconciles answered `409` for minutes.)
async fn a_renewed_lease_holds_and_a_lapsed_one_is_taken_over(front: &dyn StockFront) {
    let sale = open_sale(front, 5).await;
    // Renewed every 100 ms: a lease of 3 s leaves a loaded machine
    // nearly 3 s of slack between two renewals.
    let lease = Duration::from_secs(3);
    let first = front
        .suspend_for(sale, lease)
        .await
        .unwrap()
        .expect("the lease is free")
        .token;
    let renewed = std::time::Instant::now();
    while renewed.elapsed() < lease * 2 {
        assert!(
            front.renew(sale, first, lease).await.unwrap(),
            "renewed in time"
        );
        assert!(
            front.suspend_for(sale, lease).await.unwrap().is_none(),
            "a renewed lease is not taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !front.renew(sale, Uuid::now_v7(), lease).await.unwrap(),
        "a foreign token renews nothing"
    );
    // Left alone, it lapses: another rebuild takes the sale over.
    let mut second = None;
    for _ in 0..400 {
        if let Some(s) = front.suspend_for(sale, lease).await.unwrap() {
            second = Some(s.token);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = second.expect("a lapsed lease is taken over");
    assert!(!front.renew(sale, first, lease).await.unwrap());
    let rebuild = Rebuild {
        remaining: 5,
        ..Rebuild::default()
    };
    assert!(!front.rebuild(sale, first, &rebuild).await.unwrap());
    rebuild_and_sell(front, sale, second).await;
}

macro_rules! conformance {
    ($name:ident, $make:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn the_generation_holds_while_the_store_lives() {
                let s = $make().await;
                super::the_generation_holds_while_the_store_lives(&*s.front).await;
            }
            #[tokio::test]
            async fn reserve_decrements_and_counts() {
                let s = $make().await;
                super::reserve_decrements_and_counts(&*s.front).await;
            }
            #[tokio::test]
            async fn same_key_replays_the_original() {
                let s = $make().await;
                super::same_key_replays_the_original(&*s.front).await;
            }
            #[tokio::test]
            async fn per_user_limit_holds() {
                let s = $make().await;
                super::per_user_limit_holds(&*s.front).await;
            }
            #[tokio::test]
            async fn sold_out_is_a_value() {
                let s = $make().await;
                super::sold_out_is_a_value(&*s.front).await;
            }
            #[tokio::test]
            async fn missing_or_suspended_stock_is_not_ready() {
                let s = $make().await;
                super::missing_or_suspended_stock_is_not_ready(&*s.front).await;
            }
            #[tokio::test]
            async fn an_abandoned_rebuild_frees_the_lease() {
                let s = $make().await;
                super::an_abandoned_rebuild_frees_the_lease(&*s.front).await;
            }
            #[tokio::test]
            async fn stream_delivers_acks_once() {
                let s = $make().await;
                super::stream_delivers_acks_once(&*s.front).await;
            }
            #[tokio::test]
            async fn idle_entries_are_claimed() {
                let s = $make().await;
                super::idle_entries_are_claimed(&*s.front).await;
            }
            #[tokio::test]
            async fn give_back_is_idempotent() {
                let s = $make().await;
                super::give_back_is_idempotent(&*s.front).await;
            }
            #[tokio::test]
            async fn a_superseded_rebuild_commits_nothing() {
                let s = $make().await;
                super::a_superseded_rebuild_commits_nothing(&*s.front).await;
            }
            #[tokio::test]
            async fn a_renewed_lease_holds_and_a_lapsed_one_is_taken_over() {
                let s = $make().await;
                super::a_renewed_lease_holds_and_a_lapsed_one_is_taken_over(&*s.front).await;
            }
            #[tokio::test]
            async fn a_suspension_takes_the_counts_at_one_instant() {
                let s = $make().await;
                super::a_suspension_takes_the_counts_at_one_instant(&*s.front).await;
            }
            #[tokio::test]
            async fn rebuilt_returns_are_not_given_back_again() {
                let s = $make().await;
                super::rebuilt_returns_are_not_given_back_again(&*s.front).await;
            }
            #[tokio::test]
            async fn rebuild_restores_buyers_and_keys() {
                let s = $make().await;
                super::rebuild_restores_buyers_and_keys(&*s.front).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_buyers_never_oversell() {
                let s = $make().await;
                super::concurrent_buyers_never_oversell(Arc::clone(&s.front)).await;
            }
        }
    };
}

conformance!(on_local, local);
conformance!(on_redis, redis);
conformance!(on_redis_as_the_production_engine_user, redis_as_engine_user);

/// The production overlay's Redis, locked down (every default user off,
/// replication and Sentinel under their own users): the engine logs in as
/// its user through the sentinel, sells, and after the primary dies finds
/// the promoted replica, sees a new generation (so it rebuilds from the
/// ledger) and sells there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_user_follows_a_failover_through_a_locked_down_sentinel() {
    let mut set = SentinelSet::start_secured(&ProductionAcl::load());
    let config = RedisConfig {
        url: format!(
            "redis-sentinel://engine:{}@127.0.0.1:{}?sentinelServiceName={}",
            SentinelSet::password("engine"),
            set.sentinel_port(),
            SentinelSet::SERVICE
        ),
        ..RedisConfig::default()
    };
    let front = RedisFront::connect(&config)
        .await
        .expect("the engine logs in through the sentinel");
    front.warm_up().await.expect("warm up");
    let before = front.generation().await.expect("generation");
    let sale = open_sale(&front, 5).await;
    assert!(matches!(
        front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
    set.kill_primary();
    assert!(
        set.wait_promoted(Duration::from_secs(30)),
        "the sentinel promoted the replica"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        match front.generation().await {
            Ok(now) if now != before => break now,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never reached the promoted replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(after.is_some());
    // Other pooled connections may still be on their way to the new
    // primary: a call can fail until they arrive (the engine answers 503
    // meanwhile). What must hold is that selling works again.
    let sells = || async {
        let sale = Uuid::now_v7();
        front.ensure_stream(sale).await.ok()?;
        let token = front.suspend(sale).await.ok()??.token;
        let stock = Rebuild {
            remaining: 5,
            ..Rebuild::default()
        };
        front.rebuild(sale, token, &stock).await.ok()?;
        front.reserve(&call(sale, "u2", "b", 1, 5)).await.ok()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        if let Some(outcome) = sells().await {
            break outcome;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never sold on the promoted replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(outcome, ReserveOutcome::Reserved { .. }),
        "{outcome:?}"
    );
}

/// Redis only: a flushed script cache (failover, SCRIPT FLUSH) does not
/// fail a purchase.
#[tokio::test]
async fn redis_survives_script_flush() {
    let s = redis().await;
    let sale = open_sale(&*s.front, 5).await;
    let server = s._redis.as_ref().unwrap();
    server.command(&["SCRIPT", "FLUSH"]);
    assert!(matches!(
        s.front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
    server.command(&["SCRIPT", "FLUSH"]);
    assert_eq!(
        s.front
            .give_back(sale, Uuid::now_v7(), "u1", 1)
            .await
            .unwrap(),
        ReturnOutcome::Returned
    );
}

/// Redis only: every key of a sale shares the sale's hash tag (Cluster-safe).
#[tokio::test]
async fn redis_keys_share_one_hash_tag() {
    let s = redis().await;
    let sale = open_sale(&*s.front, 5).await;
    s.front.reserve(&call(sale, "u1", "a", 1, 5)).await.unwrap();
    let server = s._redis.as_ref().unwrap();
    let flashmall_testing::redis_reply::Reply::Array(keys) = server.command(&["KEYS", "*"]) else {
        panic!("KEYS did not answer an array")
    };
    assert!(keys.len() >= 5, "{keys:?}");
    let tag = format!("{{{sale}}}");
    for key in keys {
        let flashmall_testing::redis_reply::Reply::Bulk(Some(key)) = key else {
            panic!("bad key")
        };
        assert!(key.contains(&tag), "{key} lacks the hash tag {tag}");
    }
}

/// A restart (here from an older snapshot) is a new generation of the
/// Redis front, whatever it reloaded.
#[tokio::test]
async fn redis_generation_changes_with_a_restart() {
    let mut server = RedisServer::start();
    let config = RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    };
    let front = RedisFront::connect(&config).await.expect("connect");
    let before = front.generation().await.unwrap();
    assert!(before.is_some());
    let snapshot = server.snapshot();
    server.restart_from(&snapshot);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let after = loop {
        if let Ok(now) = front.generation().await {
            break now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the front never reconnected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_ne!(after, before);
}

/// An engine (re)started while Sentinel fails over: the sentinel still
/// names the primary that just died, and the first connection is refused.
/// The front keeps trying within `connect_timeout` and comes up on the
/// promoted replica, instead of exiting (found by `flashmall bench chaos`:
/// an engine restarted a second after the primary's crash never served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_front_connects_through_a_failover_in_progress() {
    let mut set = SentinelSet::start();
    set.kill_primary();
    let config = RedisConfig {
        url: set.url(),
        connect_timeout: Duration::from_secs(60),
        ..RedisConfig::default()
    };
    let front = RedisFront::connect(&config)
        .await
        .expect("connected once Sentinel promoted the replica");
    assert!(
        set.wait_promoted(Duration::from_secs(30)),
        "the sentinel promoted the replica"
    );
    front.warm_up().await.expect("warm up");
    let sale = open_sale(&front, 2).await;
    assert!(matches!(
        front.reserve(&call(sale, "u1", "a", 1, 2)).await.unwrap(),
        ReserveOutcome::Reserved { .. }
    ));
}
