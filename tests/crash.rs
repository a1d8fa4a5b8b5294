//! Crash safety, on the real `flashmall engine` process and a real Redis:
//! the process dies (SIGKILL, or abort at a failpoint between the Redis
//! script and the ledger commit), restarts, and every invariant holds. The
//! `*_on_tikv` variants keep the ledger in the TiKV-protocol test server
//! (`FLASHMALL_TEST_TIKV_PD`, set by `scripts/test`); without it they say
//! they were skipped and pass.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use flashmall_mesh::identity::IDENTITY_HEADER;

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

use flashmall_testing::{RedisServer, free_port};
use serde_json::{Value, json};
use support::{Flashmall, admin, create_sale, send};

/// Fires purchases for users `range` concurrently; returns user -> answer
/// (None: the connection died with the process).
async fn storm(
    client: &reqwest::Client,
    base: &str,
    sale: &str,
    users: impl IntoIterator<Item = usize>,
) -> HashMap<usize, Option<(u16, Value)>> {
    let client = Arc::new(client.clone());
    let mut tasks = Vec::new();
    for u in users {
        let client = Arc::clone(&client);
        let url = format!("{base}/api/v1/sales/{sale}/purchase");
        tasks.push(tokio::spawn(async move {
            let answer = send(
                client
                    .post(url)
                    .header(IDENTITY_HEADER, support::sign(&format!("u{u}"), false))
                    .header("idempotency-key", format!("key-{u}"))
                    .json(&json!({"quantity": 1})),
            )
            .await;
            (u, answer)
        }));
    }
    let mut out = HashMap::new();
    for t in tasks {
        let (u, a) = t.await.unwrap();
        out.insert(u, a);
    }
    out
}

/// Fires `users`, then asks again with the same key whoever got no verdict
/// (the connection failed, or `503`: the durable acknowledgement timed out
/// while the ledger was slow), as a client does, until every buyer has a
/// verdict or no verdict came for 30 s. A unit reserved without a 201 is
/// then either that buyer's 201 or back on sale.
async fn storm_until_decided(
    client: &reqwest::Client,
    base: &str,
    sale: &str,
    users: std::ops::Range<usize>,
) -> HashMap<usize, Option<(u16, Value)>> {
    let mut answers = storm(client, base, sale, users).await;
    let undecided = |answers: &HashMap<usize, Option<(u16, Value)>>| -> Vec<usize> {
        answers
            .iter()
            .filter(|(_, a)| a.as_ref().is_none_or(|(status, _)| *status >= 500))
            .map(|(u, _)| *u)
            .collect()
    };
    let mut last_progress = std::time::Instant::now();
    let mut open = undecided(&answers);
    while !open.is_empty() && last_progress.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        answers.extend(storm(client, base, sale, open.clone()).await);
        let now = undecided(&answers);
        if now.len() < open.len() {
            last_progress = std::time::Instant::now();
        }
        open = now;
    }
    assert!(
        open.is_empty(),
        "{} buyers got no verdict for 30 s, e.g. {:?}",
        open.len(),
        answers.get(&open[0])
    );
    answers
}

/// How many answers had each status (None: no answer).
fn statuses(answers: &HashMap<usize, Option<(u16, Value)>>) -> HashMap<Option<u16>, usize> {
    let mut by = HashMap::new();
    for a in answers.values() {
        *by.entry(a.as_ref().map(|(s, _)| *s)).or_default() += 1;
    }
    by
}

fn granted(answers: &HashMap<usize, Option<(u16, Value)>>) -> HashMap<usize, String> {
    answers
        .iter()
        .filter_map(|(u, a)| match a {
            Some((201, body)) => Some((*u, body["reservation_id"].as_str()?.to_owned())),
            _ => None,
        })
        .collect()
}

/// After the restart: every 201 seen is in the ledger, retries give the
/// original answers, the rest of the stock sells exactly, and reconcile
/// finds no drift.
async fn check_after_restart(
    client: &reqwest::Client,
    base: &str,
    sale: &str,
    stock: i64,
    before: &HashMap<usize, String>,
    tried: usize,
) {
    // Reservations a crash left in the stream settle moments after the
    // restart (fast-ack purchases were answered before they were durable).
    for _ in 0..250 {
        let view = send(client.get(format!("{base}/api/v1/sales/{sale}"))).await;
        if view.is_some_and(|(_, v)| v["pending"] == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (u, id) in before {
        let (status, r) = send(
            client
                .get(format!("{base}/api/v1/reservations/{id}"))
                .header(IDENTITY_HEADER, support::sign(&format!("u{u}"), false)),
        )
        .await
        .unwrap();
        assert_eq!(
            status, 200,
            "acknowledged reservation {id} of u{u} lost: {r}"
        );
    }
    // Everyone retries with the same key, and new buyers come; each asks
    // until they have a verdict.
    let retried = storm_until_decided(client, base, sale, 0..tried).await;
    let after = granted(&retried);
    for (u, id) in before {
        assert_eq!(after.get(u), Some(id), "u{u}'s retry changed its answer");
    }
    let fresh = storm_until_decided(client, base, sale, tried..tried + stock as usize * 2).await;
    let all: HashSet<String> = after
        .values()
        .chain(granted(&fresh).values())
        .cloned()
        .collect();
    assert_eq!(
        all.len() as i64,
        stock,
        "exactly the stock is sold across the crash; retries {:?}, new buyers {:?}",
        statuses(&retried),
        statuses(&fresh)
    );
    let (_, view) = send(client.get(format!("{base}/api/v1/sales/{sale}")))
        .await
        .unwrap();
    let mut view = view;
    for _ in 0..200 {
        if view["pending"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        view = send(client.get(format!("{base}/api/v1/sales/{sale}")))
            .await
            .unwrap()
            .1;
    }
    assert_eq!(view["settled"].as_i64(), Some(stock), "{view}");
    let (_, report) = send(
        admin(client.post(format!("{base}/api/v1/admin/reconcile")))
            .json(&json!({"sale_id": sale})),
    )
    .await
    .unwrap();
    let report = &report["sales"][0];
    assert_eq!(
        (report["drift"].as_i64(), report["conserved"].as_bool()),
        (Some(0), Some(true)),
        "{report}"
    );
}

/// Where the engine keeps its ledger in a test.
enum LedgerAt {
    /// The embedded ledger, in the test's data dir.
    Embedded,
    /// The TiKV-protocol test server, under a key prefix of this test's own.
    Tikv(String),
}

impl LedgerAt {
    /// The TiKV ledger, or `None` (and a note) when no server is named.
    fn tikv() -> Option<LedgerAt> {
        match std::env::var("FLASHMALL_TEST_TIKV_PD") {
            Ok(pd) if !pd.is_empty() => Some(LedgerAt::Tikv(pd)),
            _ => {
                eprintln!("skipped: FLASHMALL_TEST_TIKV_PD is not set, so no TiKV to crash on");
                None
            }
        }
    }

    /// The engine's variables for this ledger; one prefix per test, kept
    /// across the restart.
    fn envs(&self, prefix: &str) -> Vec<(&'static str, String)> {
        match self {
            LedgerAt::Embedded => Vec::new(),
            LedgerAt::Tikv(pd) => vec![
                ("FLASHMALL_LEDGER__BACKEND", "tikv".to_owned()),
                ("FLASHMALL_LEDGER__PD_ENDPOINTS", pd.clone()),
                ("FLASHMALL_LEDGER__KEY_PREFIX", prefix.to_owned()),
            ],
        }
    }
}

#[cfg(feature = "failpoints")]
async fn crash_at_failpoint_then_restart(failpoint: &str, durable: bool, ledger: LedgerAt) {
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = support::client();
    let ledger = ledger.envs(&format!("crash-{}/", uuid::Uuid::now_v7()));
    let mut engine = Flashmall::engine(
        &redis,
        data.path(),
        port,
        Some(&format!("{failpoint}=return")),
        durable,
        &ledger,
    );
    engine.wait_ready().await;
    let sale = create_sale(&client, &engine.base, 40).await;
    let first = storm(&client, &engine.base, &sale, 0..30).await;
    engine.wait_exit().await;
    let before = granted(&first);
    if durable && failpoint == "settle-before-commit" {
        assert!(
            before.is_empty(),
            "nothing was durable, so nothing may have been acknowledged"
        );
    }
    let mut engine = Flashmall::engine(&redis, data.path(), port, None, durable, &ledger);
    engine.wait_ready().await;
    check_after_restart(&client, &engine.base, &sale, 40, &before, 30).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_script_and_ledger_commit() {
    crash_at_failpoint_then_restart("settle-before-commit", true, LedgerAt::Embedded).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_ledger_commit_and_ack() {
    crash_at_failpoint_then_restart("settle-before-ack", true, LedgerAt::Embedded).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_ack_crash_before_commit_loses_no_acknowledged_purchase() {
    crash_at_failpoint_then_restart("settle-before-commit", false, LedgerAt::Embedded).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_script_and_ledger_commit_on_tikv() {
    let Some(ledger) = LedgerAt::tikv() else {
        return;
    };
    crash_at_failpoint_then_restart("settle-before-commit", true, ledger).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_ledger_commit_and_ack_on_tikv() {
    let Some(ledger) = LedgerAt::tikv() else {
        return;
    };
    crash_at_failpoint_then_restart("settle-before-ack", true, ledger).await;
}

/// The failpoint tests need the engine's crash points, which only the
/// `failpoints` feature compiles (release builds leave them out). Without
/// it this says so, rather than letting them pass unrun.
#[cfg(not(feature = "failpoints"))]
#[test]
fn the_crash_tests_need_the_failpoints_feature() {
    panic!(
        "tests/crash.rs aborts the engine at failpoints: run scripts/test \
         (cargo test --workspace --features flashmall/failpoints)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_storm_then_restart() {
    sigkill_mid_storm(LedgerAt::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_storm_then_restart_on_tikv() {
    let Some(ledger) = LedgerAt::tikv() else {
        return;
    };
    sigkill_mid_storm(ledger).await;
}

async fn sigkill_mid_storm(ledger: LedgerAt) {
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let client = support::client();
    let ledger = ledger.envs(&format!("sigkill-{}/", uuid::Uuid::now_v7()));
    let mut engine = Flashmall::engine(&redis, data.path(), port, None, true, &ledger);
    engine.wait_ready().await;
    let sale = create_sale(&client, &engine.base, 100).await;
    let storming = {
        let client = client.clone();
        let base = engine.base.clone();
        let sale = sale.clone();
        // Paced (16 in flight over 1,000 buyers), so the storm outlasts the
        // moment the kill lands.
        tokio::spawn(async move {
            futures::stream::iter(0..1_000usize)
                .map(|u| {
                    let (client, base, sale) = (client.clone(), base.clone(), sale.clone());
                    async move {
                        (
                            u,
                            support::purchase(
                                &client,
                                &base,
                                &sale,
                                &format!("u{u}"),
                                &format!("key-{u}"),
                            )
                            .await,
                        )
                    }
                })
                .buffer_unordered(16)
                .collect::<HashMap<_, _>>()
                .await
        })
    };
    // Kill as soon as the first units are reserved, with the storm in flight.
    for _ in 0..1_000 {
        let view = send(client.get(format!("{}/api/v1/sales/{sale}", engine.base))).await;
        if view.is_some_and(|(_, v)| v["remaining"].as_i64().is_some_and(|r| r < 100)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    engine.kill();
    let first = storming.await.unwrap();
    assert!(
        first.values().any(Option::is_none),
        "the kill must interrupt requests in flight"
    );
    let before = granted(&first);
    eprintln!(
        "sigkill: {} purchases acknowledged before the kill",
        before.len()
    );
    let mut engine = Flashmall::engine(&redis, data.path(), port, None, true, &ledger);
    engine.wait_ready().await;
    check_after_restart(&client, &engine.base, &sale, 100, &before, 1_000).await;
}
