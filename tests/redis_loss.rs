//! Redis loses writes; the ledger decides. The real `flashmall engine`
//! process on a real `redis-server` that restarts from an older snapshot
//! mid-sale: the state an asynchronous replica has when Sentinel promotes
//! it, or a restart from an AOF written every second. Units the snapshot
//! forgot were sold look free again, keys it forgot look new, buyers it
//! forgot look empty-handed. Through the engine's public API: no more than
//! the stock is ever held, no buyer past the limit, one reservation per
//! key (a retried key answers its original reservation), every 201 in the
//! ledger, and once the front is rebuilt, exactly the stock sold.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use flashmall_testing::{RedisCluster, RedisServer, SentinelSet, free_port};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{Flashmall, admin, create_sale, purchase, send};

/// Buyer `u` buys one unit with key `key-{u}`, asking again with the same
/// key while the answer is no verdict (503 while the sale is rebuilt, a
/// dropped connection), until it has one or none came for 30 s.
async fn buy_until_decided(
    client: &reqwest::Client,
    base: &str,
    sale: &str,
    users: std::ops::Range<usize>,
) -> HashMap<usize, (u16, Value)> {
    let answers: Vec<(usize, Option<(u16, Value)>)> = futures::stream::iter(users)
        .map(|u| async move {
            let mut last = Instant::now();
            loop {
                let answer =
                    purchase(client, base, sale, &format!("u{u}"), &format!("key-{u}")).await;
                match answer {
                    Some((status, body)) if status < 500 => return (u, Some((status, body))),
                    _ if last.elapsed() > Duration::from_secs(30) => return (u, answer),
                    Some(_) => last = Instant::now(),
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    answers
        .into_iter()
        .map(|(u, a)| {
            (
                u,
                a.unwrap_or_else(|| panic!("u{u} got no verdict for 30 s")),
            )
        })
        .collect()
}

fn reservation(answer: &(u16, Value)) -> Option<String> {
    (answer.0 == 201).then(|| answer.1["reservation_id"].as_str().map(str::to_owned))?
}

/// A reservation as the ledger has it (read as an admin): status and body.
async fn ledger_view(client: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    send(
        client
            .get(format!("{base}/api/v1/reservations/{id}"))
            .header(
                flashmall_mesh::identity::IDENTITY_HEADER,
                support::sign("admin-1", true),
            ),
    )
    .await
    .expect("the engine answers")
}

/// One sale after its storm (`answers`: buyer → verdict), through the
/// engine's API: no buyer past the limit of 1, exactly `stock` granted,
/// every 201 a held reservation in the ledger, and a reconcile (once one
/// already running is done) that finds the sale conserved with nothing
/// left on sale. Returns the reconcile report.
async fn assert_sale_holds(
    client: &reqwest::Client,
    base: &str,
    sale: &str,
    stock: usize,
    answers: &HashMap<usize, (u16, Value)>,
) -> Value {
    let mut by_buyer: HashMap<usize, HashSet<String>> = HashMap::new();
    for (u, a) in answers {
        if let Some(id) = reservation(a) {
            by_buyer.entry(*u).or_default().insert(id);
        }
    }
    let outcomes: HashMap<u16, usize> = answers.values().fold(HashMap::new(), |mut m, (s, _)| {
        *m.entry(*s).or_default() += 1;
        m
    });
    assert!(
        by_buyer.values().all(|ids| ids.len() == 1),
        "a buyer past the limit in {sale}"
    );
    let granted: HashSet<&String> = by_buyer.values().flatten().collect();
    assert_eq!(
        granted.len(),
        stock,
        "exactly the stock granted in {sale}; answers by status {outcomes:?}"
    );
    for id in &granted {
        let (status, r) = ledger_view(client, base, id).await;
        assert_eq!((status, r["status"].as_str()), (200, Some("held")), "{r}");
    }
    let report = support::eventually(Duration::from_secs(30), "a reconcile report", || async {
        let (status, report) = send(
            admin(client.post(format!("{base}/api/v1/admin/reconcile")))
                .json(&json!({"sale_id": sale})),
        )
        .await?;
        if status != 200 {
            eprintln!("reconcile of {sale}: {status} {report}");
        }
        (status == 200).then_some(report)
    })
    .await;
    let report = report["sales"][0].clone();
    assert_eq!(
        (
            report["conserved"].as_bool(),
            report["remaining"].as_i64(),
            report["settled"].as_i64()
        ),
        (Some(true), Some(0), Some(stock as i64)),
        "{sale}: {report}"
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_from_an_older_snapshot_oversells_nothing() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut engine = Flashmall::engine(&redis, data.path(), free_port(), None, true, &[]);
    engine.wait_ready().await;
    let client = support::client();
    let base = engine.base.clone();
    let sale = create_sale(&client, &base, 100).await;

    // 40 buyers buy; Redis takes a snapshot; 40 more buy.
    let first = buy_until_decided(&client, &base, &sale, 0..40).await;
    let snapshot = redis.snapshot();
    let second = buy_until_decided(&client, &base, &sale, 40..80).await;
    for (u, a) in first.iter().chain(&second) {
        assert_eq!(a.0, 201, "u{u} before the loss: {}", a.1);
    }
    // Redis dies and comes back from the snapshot: it forgot the second 40.
    redis.restart_from(&snapshot);

    // The second 40 retry with their keys; 100 new buyers arrive.
    let retried = buy_until_decided(&client, &base, &sale, 40..80).await;
    let fresh = buy_until_decided(&client, &base, &sale, 80..180).await;

    for u in 40..80 {
        assert_eq!(
            reservation(&retried[&u]),
            reservation(&second[&u]),
            "u{u}'s retry must answer its original reservation: {:?}",
            retried[&u]
        );
    }
    let mut by_buyer: HashMap<usize, HashSet<String>> = HashMap::new();
    for (u, a) in first.iter().chain(&second).chain(&retried).chain(&fresh) {
        if let Some(id) = reservation(a) {
            by_buyer.entry(*u).or_default().insert(id);
        }
    }
    let granted: HashSet<&String> = by_buyer.values().flatten().collect();
    let past_limit: Vec<_> = by_buyer.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        past_limit.is_empty(),
        "buyers past the limit of 1: {past_limit:?}"
    );
    let refusals: HashMap<&str, usize> = fresh.values().fold(HashMap::new(), |mut m, (s, b)| {
        if *s != 201 {
            *m.entry(b["error"]["code"].as_str().unwrap_or("?"))
                .or_default() += 1;
        }
        m
    });
    assert_eq!(
        granted.len(),
        100,
        "exactly the stock granted across the loss; new buyers' refusals {refusals:?}"
    );
    assert_eq!(refusals.get("sold_out"), Some(&80), "{refusals:?}");

    // Every 201 is a held reservation in the ledger.
    for id in &granted {
        let (status, r) = ledger_view(&client, &base, id).await;
        assert_eq!((status, r["status"].as_str()), (200, Some("held")), "{r}");
    }
    // The ledger revoked what the stale front granted, and the rebuilt
    // front agrees with it.
    let (_, view) = send(client.get(format!("{base}/api/v1/sales/{sale}")))
        .await
        .unwrap();
    assert_eq!(view["settled"], 100, "{view}");
    assert!(view["revoked"].as_i64().unwrap_or(0) > 0, "{view}");
    let (_, report) = send(
        admin(client.post(format!("{base}/api/v1/admin/reconcile")))
            .json(&json!({"sale_id": sale})),
    )
    .await
    .unwrap();
    let report = &report["sales"][0];
    assert_eq!(
        (
            report["drift"].as_i64(),
            report["conserved"].as_bool(),
            report["remaining"].as_i64()
        ),
        (Some(0), Some(true), Some(0)),
        "{report}"
    );
}

/// The same loss under fast acknowledgement (201 right after the Redis
/// script). What fast ack costs: a 201 whose reservation had not reached
/// the ledger when Redis lost it is gone (its buyer's retry buys again),
/// and a retried key may be answered a new reservation that the ledger then
/// revokes in favour of the key's first. It never costs a unit or a limit:
/// the ledger holds exactly the stock, at most one per buyer, one per key,
/// and every other 201 is in the ledger, held or revoked with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_ack_after_a_redis_loss_revokes_instead_of_overselling() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut engine = Flashmall::engine(&redis, data.path(), free_port(), None, false, &[]);
    engine.wait_ready().await;
    let client = support::client();
    let base = engine.base.clone();
    let sale = create_sale(&client, &base, 100).await;
    let first = buy_until_decided(&client, &base, &sale, 0..40).await;
    // The first 40 reach the ledger before the snapshot.
    support::eventually(Duration::from_secs(30), "the first 40 settle", || async {
        let (_, v) = send(client.get(format!("{base}/api/v1/sales/{sale}"))).await?;
        (v["settled"] == 40).then_some(())
    })
    .await;
    let snapshot = redis.snapshot();
    let second = buy_until_decided(&client, &base, &sale, 40..80).await;
    redis.restart_from(&snapshot);
    let retried = buy_until_decided(&client, &base, &sale, 40..80).await;
    let fresh = buy_until_decided(&client, &base, &sale, 80..180).await;

    // Recovered: a reconcile settles whatever the stream still holds and
    // rebuilds the front (it waits for one already running).
    support::eventually(Duration::from_secs(30), "a reconcile report", || async {
        let (status, _) = send(
            admin(client.post(format!("{base}/api/v1/admin/reconcile")))
                .json(&json!({"sale_id": sale})),
        )
        .await?;
        (status == 200).then_some(())
    })
    .await;
    let (_, view) = send(client.get(format!("{base}/api/v1/sales/{sale}")))
        .await
        .unwrap();
    let mut held_by: HashMap<String, usize> = HashMap::new();
    let (mut revoked, mut lost) = (0, 0);
    // A retry may replay the original reservation: each id counts once.
    let mut seen = HashSet::new();
    for (wave, answers) in [
        ("first", &first),
        ("second", &second),
        ("retried", &retried),
        ("fresh", &fresh),
    ] {
        for id in answers
            .values()
            .filter_map(reservation)
            .filter(|id| seen.insert(id.clone()))
        {
            let (status, r) = ledger_view(&client, &base, &id).await;
            match (status, r["status"].as_str()) {
                (200, Some("held")) => {
                    *held_by
                        .entry(r["user_id"].as_str().unwrap().to_owned())
                        .or_default() += 1
                }
                (200, Some("revoked")) => {
                    revoked += 1;
                    assert!(
                        r["order_id"].is_null(),
                        "a revoked reservation has no order: {r}"
                    );
                    assert!(r["revoked"]["reason"].is_string(), "{r}");
                }
                // Only a 201 answered between the snapshot and the loss
                // can be gone.
                (404, _) if wave == "second" => lost += 1,
                _ => panic!("{wave} 201 {id}: {status} {r}"),
            }
        }
    }
    let statuses = |answers: &HashMap<usize, (u16, Value)>| {
        answers
            .values()
            .fold(HashMap::new(), |mut m: HashMap<String, usize>, (s, b)| {
                *m.entry(format!("{s} {}", b["error"]["code"].as_str().unwrap_or("")))
                    .or_default() += 1;
                m
            })
    };
    eprintln!(
        "fast ack across the loss: {lost} acknowledged reservations lost, {revoked} revoked; retried {:?}, fresh {:?}",
        statuses(&retried),
        statuses(&fresh)
    );
    assert_eq!(view["settled"], 100, "{view}");
    assert_eq!(held_by.values().sum::<usize>(), 100);
    assert!(held_by.values().all(|n| *n == 1), "a buyer holds two");
    for u in 0..80 {
        assert_eq!(
            held_by.get(&format!("u{u}")),
            Some(&1),
            "u{u} holds its unit after retrying"
        );
    }
    assert_eq!(revoked as i64, view["revoked"].as_i64().unwrap(), "{view}");
}

/// A primary with an asynchronous replica behind Redis Sentinel, the
/// engine connected through `redis-sentinel://`: the primary is killed
/// mid-sale and Sentinel promotes the replica, which lacks the writes the
/// primary had not replicated. Buyers keep coming through the failover
/// (503 meanwhile, then retried with the same key): no more than the stock
/// is held, no buyer past the limit, every 201 in the ledger, and once
/// recovered, exactly the stock sold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_sale_oversells_nothing() {
    let mut set = SentinelSet::start();
    let data = tempfile::tempdir().unwrap();
    let mut engine = Flashmall::engine(
        &set.primary,
        data.path(),
        free_port(),
        None,
        true,
        &[("FLASHMALL_REDIS__URL", set.url())],
    );
    engine.wait_ready().await;
    let client = support::client();
    let base = engine.base.clone();
    let sale = create_sale(&client, &base, 100).await;
    let storm = {
        let (client, base, sale) = (client.clone(), base.clone(), sale.clone());
        tokio::spawn(async move { buy_until_decided(&client, &base, &sale, 0..300).await })
    };
    // Kill the primary with the storm in flight, a third of the stock sold.
    support::eventually(
        Duration::from_secs(30),
        "a third of the stock sells",
        || async {
            let (_, v) = send(client.get(format!("{base}/api/v1/sales/{sale}"))).await?;
            (v["remaining"].as_i64()? <= 66).then_some(())
        },
    )
    .await;
    set.kill_primary();
    let killed = Instant::now();
    assert!(
        set.wait_promoted(Duration::from_secs(30)),
        "sentinel did not promote the replica"
    );
    let promoted = killed.elapsed();
    let answers = storm.await.unwrap();
    eprintln!("sentinel failover: promoted after {promoted:?}");
    assert_sale_holds(&client, &base, &sale, 100, &answers).await;
}

/// Releases a reservation as the order service does (gRPC, signed).
async fn release(base: &str, reservation: &str) {
    use flashmall_proto::inventory::ReleaseRequest;
    use flashmall_proto::inventory::inventory_service_client::InventoryServiceClient;
    let channel = tonic::transport::Channel::from_shared(base.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = InventoryServiceClient::new(channel);
    let mut call = tonic::Request::new(ReleaseRequest {
        reservation_id: reservation.to_owned(),
    });
    flashmall_mesh::authorize(&mut call, &support::sign("admin-1", true)).unwrap();
    client.release(call).await.unwrap();
}

/// A loss nothing in the purchase path would meet: a released unit's
/// return to Redis is lost with a restart from an older snapshot, so the
/// unit is stranded (Redis says sold out, the ledger says one is free).
/// The engine notices the new Redis `run_id` by itself, reconciles, and the
/// unit sells again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_return_is_found_by_the_restart_and_sells_again() {
    let mut redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut engine = Flashmall::engine(&redis, data.path(), free_port(), None, true, &[]);
    engine.wait_ready().await;
    let client = support::client();
    let base = engine.base.clone();
    let sale = create_sale(&client, &base, 10).await;
    let sold = buy_until_decided(&client, &base, &sale, 0..10).await;
    let snapshot = redis.snapshot();
    let first = reservation(&sold[&0]).unwrap();
    release(&base, &first).await;
    redis.restart_from(&snapshot);
    // A buyer who got nothing keeps asking; the returned unit is theirs
    // once the engine has rebuilt the front.
    let got = support::eventually(
        Duration::from_secs(30),
        "the returned unit sells again",
        || async {
            let (status, body) = purchase(&client, &base, &sale, "u10", "key-10").await?;
            (status == 201).then_some(body)
        },
    )
    .await;
    assert!(got["reservation_id"].is_string(), "{got}");
    let (_, view) = send(client.get(format!("{base}/api/v1/sales/{sale}")))
        .await
        .unwrap();
    assert_eq!(
        (
            view["settled"].as_i64(),
            view["released"].as_i64(),
            view["remaining"].as_i64()
        ),
        (Some(10), Some(1), Some(0)),
        "{view}"
    );
}

/// A Redis Cluster of three primaries and three replicas, the engine
/// connected through `redis-cluster://`, four sales whose keys live on
/// different slots, storming at once: every script reaches the node that
/// serves its sale (the engine routes by the sale's hash tag), and for
/// every sale exactly the stock is granted, no buyer past the limit, every
/// 201 held in the ledger, conserved after reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_on_a_redis_cluster_keep_every_invariant() {
    let cluster = RedisCluster::start();
    let data = tempfile::tempdir().unwrap();
    let mut engine = Flashmall::engine(
        &cluster.nodes[0],
        data.path(),
        free_port(),
        None,
        true,
        &[("FLASHMALL_REDIS__URL", cluster.url())],
    );
    engine.wait_ready().await;
    let client = support::client();
    let base = engine.base.clone();
    let mut sales = Vec::new();
    let mut slots = HashSet::new();
    while slots.len() < 3 || sales.len() < 4 {
        let sale = create_sale(&client, &base, 50).await;
        slots.insert(cluster.node_serving(&format!("{{{sale}}}")));
        sales.push(sale);
        assert!(sales.len() < 40, "sales keep landing on one node");
    }
    let storms: Vec<_> = sales
        .iter()
        .map(|sale| {
            let (client, base, sale) = (client.clone(), base.clone(), sale.clone());
            tokio::spawn(async move { buy_until_decided(&client, &base, &sale, 0..80).await })
        })
        .collect();
    for (sale, storm) in sales.iter().zip(storms) {
        let answers = storm.await.unwrap();
        let report = assert_sale_holds(&client, &base, sale, 50, &answers).await;
        assert_eq!(report["drift"], 0, "{sale}: {report}");
    }
}

/// The same cluster, the primary serving the first sale killed mid-storm:
/// the cluster promotes its replica (which lacks what was not replicated),
/// the engine sees a new primary `run_id` and reconciles every sale, and
/// buyers asking again with their keys get their verdicts.
/// For every sale: exactly the stock granted, no buyer past the limit,
/// every 201 held in the ledger, conserved after reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_failover_mid_sale_oversells_nothing() {
    let mut cluster = RedisCluster::start();
    let data = tempfile::tempdir().unwrap();
    let mut engine = Flashmall::engine(
        &cluster.nodes[0],
        data.path(),
        free_port(),
        None,
        true,
        &[("FLASHMALL_REDIS__URL", cluster.url())],
    );
    engine.wait_ready().await;
    let client = support::client();
    let base = engine.base.clone();
    let mut sales = Vec::new();
    for _ in 0..3 {
        sales.push(create_sale(&client, &base, 50).await);
    }
    let storms: Vec<_> = sales
        .iter()
        .map(|sale| {
            let (client, base, sale) = (client.clone(), base.clone(), sale.clone());
            tokio::spawn(async move { buy_until_decided(&client, &base, &sale, 0..120).await })
        })
        .collect();
    support::eventually(
        Duration::from_secs(30),
        "a third of the first sale sells",
        || async {
            let (_, v) = send(client.get(format!("{base}/api/v1/sales/{}", sales[0]))).await?;
            (v["remaining"].as_i64()? <= 33).then_some(())
        },
    )
    .await;
    let tag = format!("{{{}}}", sales[0]);
    let killed_at = Instant::now();
    let port = cluster.kill_primary_of(&tag);
    assert!(
        cluster.wait_served(&tag, Duration::from_secs(30)),
        "the cluster did not promote a replica for the slot of :{port}"
    );
    eprintln!(
        "cluster failover: the primary on :{port} replaced after {:?}",
        killed_at.elapsed()
    );
    for (sale, storm) in sales.iter().zip(storms) {
        let answers = storm.await.unwrap();
        assert_sale_holds(&client, &base, sale, 50, &answers).await;
    }
}
