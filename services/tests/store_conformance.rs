//! The services' store conformance suite: every `ServiceStore` runs every
//! check. The embedded store always runs it; ScyllaDB (or Cassandra) runs it
//! when `FLASHMALL_TEST_SCYLLA` names a node (`host:port`), in a fresh
//! keyspace per test run (`flashmall_test_<random hex>`, dropped when every
//! check of the run passed). Without the variable each ScyllaDB check says
//! "skipped" on stderr and passes.
//!
//! The checks of one run share that keyspace, so every key and partition a
//! check uses carries the check's name as a prefix (`Subject::key`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use flashmall_services::config::{StoreBackend, StoreConfig};
use flashmall_services::store::records::{self, Step};
use flashmall_services::store::{EmbeddedStore, Row, RowRange, ScyllaStore, ServiceStore, Table};

/// The node of the ScyllaDB variant, `host:port`.
const SCYLLA_ENV: &str = "FLASHMALL_TEST_SCYLLA";

/// One implementation under test, set up for one check.
struct Subject {
    store: Arc<dyn ServiceStore>,
    /// Prefix of the check's keys and partitions.
    prefix: String,
    /// Writers in the racing checks (fewer against a real cluster, where
    /// Paxos contention among many writers of one key ends in timeouts).
    racers: usize,
    /// How long past its TTL a record may still read: the embedded store
    /// expires to the millisecond; ScyllaDB in whole seconds, and the
    /// adapter rounds a TTL up and adds a second (never early).
    expiry_slack: Duration,
    _dir: Option<tempfile::TempDir>,
}

impl Subject {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

fn embedded(_check: &str) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    Subject {
        store: Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap()),
        prefix: String::new(),
        racers: 16,
        expiry_slack: Duration::from_millis(150),
        _dir: Some(dir),
    }
}

fn scylla_node() -> Option<String> {
    std::env::var(SCYLLA_ENV).ok().filter(|n| !n.is_empty())
}

/// This run's keyspace (at most 48 characters).
fn scylla_keyspace() -> &'static str {
    static KEYSPACE: OnceLock<String> = OnceLock::new();
    KEYSPACE.get_or_init(|| format!("flashmall_test_{}", uuid::Uuid::new_v4().simple()))
}

/// Serializes connecting, which creates the schema: concurrent
/// `CREATE TABLE IF NOT EXISTS` of one table can race on Cassandra.
static SCHEMA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn scylla(check: &str) -> Option<Subject> {
    let Some(node) = scylla_node() else {
        eprintln!("skipped: {SCYLLA_ENV} not set (store check {check} on scylla did not run)");
        return None;
    };
    let config = StoreConfig {
        backend: StoreBackend::Scylla,
        scylla_nodes: vec![node.clone()],
        keyspace: scylla_keyspace().to_owned(),
        replication_factor: 1,
        request_timeout: Duration::from_secs(10),
        ..StoreConfig::default()
    };
    let store = {
        let _schema = SCHEMA.lock().await;
        ScyllaStore::connect(&config)
            .await
            .unwrap_or_else(|e| panic!("cannot open the scylla store on {node}: {e}"))
    };
    Some(Subject {
        store: Arc::new(store),
        prefix: format!("{check}/"),
        racers: 8,
        expiry_slack: Duration::from_secs(3),
        _dir: None,
    })
}

/// Counts passed ScyllaDB checks; the last of a full run drops the keyspace.
/// A failed or filtered run leaves it for inspection.
async fn scylla_check_passed() {
    static PASSED: AtomicUsize = AtomicUsize::new(0);
    if PASSED.fetch_add(1, Ordering::SeqCst) + 1 != CHECKS {
        return;
    }
    let Some(node) = scylla_node() else { return };
    let keyspace = scylla_keyspace();
    let dropped = async {
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_node(&node)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(e) = dropped.await {
        eprintln!("keyspace {keyspace} left behind: {e}");
    }
}

// ---------------------------------------------------------------- records

async fn insert_only_when_absent(s: &Subject) {
    let st = &*s.store;
    let k = s.key("k");
    assert!(
        st.insert(Table::Users, &k, b"v1".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !st.insert(Table::Users, &k, b"v2".to_vec(), None)
            .await
            .unwrap()
    );
    let got = st.get(Table::Users, &k).await.unwrap().unwrap();
    assert_eq!(got.value, b"v1");
    // Tables are separate key spaces.
    assert!(st.get(Table::Emails, &k).await.unwrap().is_none());
    assert!(
        st.get(Table::Users, &s.key("other"))
            .await
            .unwrap()
            .is_none()
    );
    // An empty value is a value.
    let e = s.key("empty");
    assert!(st.insert(Table::Users, &e, Vec::new(), None).await.unwrap());
    let got = st.get(Table::Users, &e).await.unwrap().unwrap();
    assert!(got.value.is_empty());
}

async fn replace_only_when_unchanged(s: &Subject) {
    let st = &*s.store;
    let k = s.key("k");
    st.insert(Table::Users, &k, b"v1".to_vec(), None)
        .await
        .unwrap();
    let v1 = st.get(Table::Users, &k).await.unwrap().unwrap();
    assert!(
        st.replace(Table::Users, &k, v1.version, b"v2".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        !st.replace(Table::Users, &k, v1.version, b"v3".to_vec(), None)
            .await
            .unwrap(),
        "stale version"
    );
    let v2 = st.get(Table::Users, &k).await.unwrap().unwrap();
    assert_eq!(v2.value, b"v2");
    assert!(v2.version > v1.version);
    assert!(
        !st.replace(Table::Users, &s.key("missing"), 1, b"x".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        st.get(Table::Users, &s.key("missing"))
            .await
            .unwrap()
            .is_none(),
        "a failed replace creates nothing"
    );
}

async fn delete_checks_the_version(s: &Subject) {
    let st = &*s.store;
    let k = s.key("k");
    st.insert(Table::Users, &k, b"v".to_vec(), None)
        .await
        .unwrap();
    let v = st.get(Table::Users, &k).await.unwrap().unwrap();
    assert!(
        !st.delete(Table::Users, &k, Some(v.version + 1))
            .await
            .unwrap()
    );
    assert!(st.delete(Table::Users, &k, Some(v.version)).await.unwrap());
    assert!(st.get(Table::Users, &k).await.unwrap().is_none());
    assert!(!st.delete(Table::Users, &k, None).await.unwrap());
    assert!(
        st.insert(Table::Users, &k, b"again".to_vec(), None)
            .await
            .unwrap()
    );
    assert!(
        st.delete(Table::Users, &k, None).await.unwrap(),
        "any version"
    );
    assert!(st.get(Table::Users, &k).await.unwrap().is_none());
}

/// The linearizable read (`SERIAL` on ScyllaDB/Cassandra) answers what
/// `get` answers once writes have settled: every insert, replace and
/// delete, with the same version, and nothing for a key never written.
async fn a_linearizable_read_sees_every_write(s: &Subject) {
    let st = &*s.store;
    let k = s.key("k");
    assert!(
        st.get_linearizable(Table::Orders, &k)
            .await
            .unwrap()
            .is_none(),
        "never written"
    );
    assert!(
        st.insert(Table::Orders, &k, b"v1".to_vec(), None)
            .await
            .unwrap()
    );
    let v1 = st
        .get_linearizable(Table::Orders, &k)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v1.value, b"v1");
    assert_eq!(
        Some(v1.version),
        st.get(Table::Orders, &k).await.unwrap().map(|v| v.version),
        "both reads name the same version"
    );
    assert!(
        st.replace(Table::Orders, &k, v1.version, b"v2".to_vec(), None)
            .await
            .unwrap()
    );
    let v2 = st
        .get_linearizable(Table::Orders, &k)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v2.value, b"v2");
    assert!(v2.version > v1.version);
    assert!(
        st.get_linearizable(Table::Payments, &k)
            .await
            .unwrap()
            .is_none(),
        "tables are separate"
    );
    assert!(
        st.delete(Table::Orders, &k, Some(v2.version))
            .await
            .unwrap()
    );
    assert!(
        st.get_linearizable(Table::Orders, &k)
            .await
            .unwrap()
            .is_none(),
        "deleted"
    );
}

/// Polls until `key` reads as absent; false if it is still there after
/// `within`. (ScyllaDB expires in whole seconds, so expiry is polled, not
/// timed.)
async fn becomes_absent(st: &dyn ServiceStore, table: Table, key: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if st.get(table, key).await.unwrap().is_none() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn expired_values_are_absent(s: &Subject) {
    let st = &*s.store;
    let k = s.key("k");
    let ttl = Duration::from_secs(1);
    assert!(
        st.insert(Table::LoginFailures, &k, b"v".to_vec(), Some(ttl))
            .await
            .unwrap()
    );
    tokio::time::sleep(ttl / 2).await;
    assert!(
        st.get(Table::LoginFailures, &k).await.unwrap().is_some(),
        "expired before its ttl"
    );
    assert!(
        becomes_absent(st, Table::LoginFailures, &k, ttl / 2 + s.expiry_slack).await,
        "still there long after its ttl"
    );
    assert!(
        !st.replace(Table::LoginFailures, &k, 1, b"x".to_vec(), None)
            .await
            .unwrap(),
        "an expired value cannot be replaced"
    );
    assert!(
        !st.delete(Table::LoginFailures, &k, None).await.unwrap(),
        "an expired value cannot be deleted"
    );
    assert!(
        st.insert(Table::LoginFailures, &k, b"new".to_vec(), None)
            .await
            .unwrap(),
        "an expired key is free"
    );
    let got = st.get(Table::LoginFailures, &k).await.unwrap().unwrap();
    assert_eq!(got.value, b"new");
}

/// A replace sets the record's expiry anew: a shorter TTL than the insert's
/// frees the key when it runs out, and no TTL keeps the record.
async fn a_replace_sets_the_expiry_anew(s: &Subject) {
    let st = &*s.store;
    let ttl = Duration::from_secs(1);
    let start = Instant::now();

    let shortened = s.key("shortened");
    st.insert(Table::RefreshTokens, &shortened, b"v1".to_vec(), None)
        .await
        .unwrap();
    assert!(
        st.replace(
            Table::RefreshTokens,
            &shortened,
            1,
            b"v2".to_vec(),
            Some(ttl)
        )
        .await
        .unwrap()
    );
    let kept = s.key("kept");
    st.insert(Table::RefreshTokens, &kept, b"v1".to_vec(), Some(ttl))
        .await
        .unwrap();
    assert!(
        st.replace(Table::RefreshTokens, &kept, 1, b"v2".to_vec(), None)
            .await
            .unwrap()
    );

    assert!(
        becomes_absent(
            st,
            Table::RefreshTokens,
            &shortened,
            (ttl + s.expiry_slack).saturating_sub(start.elapsed())
        )
        .await,
        "a record given a ttl by replace never expired"
    );
    assert!(
        st.insert(Table::RefreshTokens, &shortened, b"v3".to_vec(), None)
            .await
            .unwrap(),
        "an expired key is free even when its insert had no ttl"
    );
    // Past any expiry the first TTL could have had (ScyllaDB: up to 2 s).
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(start.elapsed())).await;
    let got = st.get(Table::RefreshTokens, &kept).await.unwrap();
    assert_eq!(
        got.map(|v| v.value),
        Some(b"v2".to_vec()),
        "a replace without ttl keeps the record"
    );
}

/// Racing conditional writers of one key with the same expected version:
/// the state advances exactly once (the state transitions of refresh
/// rotation and of orders rely on it). A writer may get an error (unknown
/// outcome); the stored state still shows exactly one applied write, and
/// without errors exactly one writer is told it won.
async fn one_of_racing_replaces_wins(s: &Subject) {
    let k = s.key("t");
    s.store
        .insert(Table::RefreshTokens, &k, b"start".to_vec(), None)
        .await
        .unwrap();
    let v = s
        .store
        .get(Table::RefreshTokens, &k)
        .await
        .unwrap()
        .unwrap()
        .version;
    let mut tasks = Vec::new();
    for i in 0..s.racers {
        let st = Arc::clone(&s.store);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let value = format!("{i}").into_bytes();
            let won = st
                .replace(Table::RefreshTokens, &k, v, value.clone(), None)
                .await;
            (value, won)
        }));
    }
    let outcomes = collect(tasks).await;
    let stored = s
        .store
        .get(Table::RefreshTokens, &k)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, v + 1, "exactly one replace applied");
    assert_one_winner(&outcomes, &stored.value);
}

/// A record as the order and payment services keep one: a state that moves
/// forward, and a count of the moves made.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
struct Doc {
    state: String,
    moves: u64,
}

type Moved = Result<(&'static str, Doc, bool), records::RecordError>;

/// `s.racers` writers, each moving the pending record at `k` to `paid` or
/// `expired` (alternately) if it is still pending.
fn race_to_final_states(s: &Subject, k: &str) -> Vec<tokio::task::JoinHandle<Moved>> {
    (0..s.racers)
        .map(|i| {
            let st = Arc::clone(&s.store);
            let k = k.to_owned();
            let target = if i % 2 == 0 { "paid" } else { "expired" };
            tokio::spawn(async move {
                records::move_record::<Doc>(&*st, Table::Orders, &k, |d| {
                    if d.state == "pending" {
                        Step::Write(Doc {
                            state: target.into(),
                            moves: d.moves + 1,
                        })
                    } else {
                        Step::Keep
                    }
                })
                .await
                .map(|(doc, wrote)| (target, doc, wrote))
            })
        })
        .collect()
}

/// State moves through `records::move_record` under concurrency, as orders
/// and payments make them: of writers racing to move a pending record to
/// different final states, exactly one moves it and the others see its
/// state; writers that all move it (a counter) lose no move to a conflict.
async fn state_moves_apply_once_under_concurrency(s: &Subject) {
    let k = s.key("doc");
    let start = Doc {
        state: "pending".into(),
        moves: 0,
    };
    assert!(
        s.store
            .insert(Table::Orders, &k, serde_json::to_vec(&start).unwrap(), None)
            .await
            .unwrap()
    );
    let (_, inserted) = records::load::<Doc>(&*s.store, Table::Orders, &k)
        .await
        .unwrap()
        .expect("inserted");
    let tasks = race_to_final_states(s, &k);
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    for t in tasks {
        let (target, doc, wrote) = t.await.unwrap().expect("every move settles");
        if wrote {
            winners.push(target);
        }
        seen.push(doc);
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one writer moves a pending record"
    );
    let (stored, version) = records::load::<Doc>(&*s.store, Table::Orders, &k)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, winners[0], "the winner's state is stored");
    assert_eq!(stored.moves, 1);
    assert_eq!(version, inserted + 1, "one write after the insert");
    assert!(
        seen.iter().all(|d| *d == stored),
        "every writer answers the state that won: {seen:?}"
    );

    // Every writer moves it once more: no move is lost to a conflict.
    let mut tasks = Vec::new();
    for _ in 0..s.racers {
        let st = Arc::clone(&s.store);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            records::move_record::<Doc>(&*st, Table::Orders, &k, |d| {
                Step::Write(Doc {
                    state: d.state.clone(),
                    moves: d.moves + 1,
                })
            })
            .await
        }));
    }
    for t in tasks {
        let (_, wrote) = t.await.unwrap().expect("every move settles");
        assert!(wrote);
    }
    let (stored, version) = records::load::<Doc>(&*s.store, Table::Orders, &k)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.moves, 1 + s.racers as u64, "no move lost");
    assert_eq!(version, inserted + 1 + s.racers as u64);
}

/// Racing moves of one pending record (key `name`) while a replica crashes
/// or is down: a writer may be told its outcome is unknown (`Unavailable`,
/// a Paxos round that timed out), but exactly one
/// move applies, at most one writer is told it moved the record, and
/// every writer told an outcome answers the state that is stored.
async fn state_moves_apply_exactly_once_when_some_time_out(s: &Subject, name: &str) {
    let k = s.key(name);
    let start = Doc {
        state: "pending".into(),
        moves: 0,
    };
    let value = serde_json::to_vec(&start).unwrap();
    let inserted = loop {
        // The insert itself may meet the crash: re-read decides.
        let _ = s.store.insert(Table::Orders, &k, value.clone(), None).await;
        if let Ok(Some((_, version))) = records::load::<Doc>(&*s.store, Table::Orders, &k).await {
            break version;
        }
    };
    let tasks = race_to_final_states(s, &k);
    let mut winners = Vec::new();
    let mut seen = Vec::new();
    let mut unknown = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok((target, doc, wrote)) => {
                if wrote {
                    winners.push(target);
                }
                seen.push(doc);
            }
            Err(e) => unknown.push(e.to_string()),
        }
    }
    let (stored, version) = loop {
        if let Ok(Some(found)) = records::load::<Doc>(&*s.store, Table::Orders, &k).await
            && (found.0.state != "pending" || unknown.is_empty())
        {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(winners.len() <= 1, "several writers moved it: {winners:?}");
    if unknown.is_empty() {
        assert_eq!(winners.len(), 1, "no writer moved it");
    } else {
        eprintln!("moves with unknown outcomes: {unknown:?}");
    }
    if let Some(winner) = winners.first() {
        assert_eq!(stored.state, *winner, "the winner's state is stored");
    }
    assert_eq!(stored.moves, 1, "exactly one move applied: {stored:?}");
    assert_eq!(version, inserted + 1, "one write after the insert");
    assert!(
        seen.iter().all(|d| *d == stored),
        "every writer told an outcome answers the state that won: {seen:?}"
    );
}

/// Racing inserts of one absent key: exactly one creates it.
async fn one_of_racing_inserts_wins(s: &Subject) {
    let k = s.key("new");
    let mut tasks = Vec::new();
    for i in 0..s.racers {
        let st = Arc::clone(&s.store);
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            let value = format!("{i}").into_bytes();
            let won = st.insert(Table::Orders, &k, value.clone(), None).await;
            (value, won)
        }));
    }
    let outcomes = collect(tasks).await;
    let stored = s.store.get(Table::Orders, &k).await.unwrap().unwrap();
    assert_eq!(stored.version, 1, "only the first insert wrote");
    assert_one_winner(&outcomes, &stored.value);
}

type Outcome = (Vec<u8>, Result<bool, flashmall_services::store::StoreError>);

async fn collect(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes
}

fn assert_one_winner(outcomes: &[Outcome], stored: &[u8]) {
    let winners: Vec<&Vec<u8>> = outcomes
        .iter()
        .filter(|(_, won)| matches!(won, Ok(true)))
        .map(|(value, _)| value)
        .collect();
    let errors: Vec<String> = outcomes
        .iter()
        .filter_map(|(_, won)| won.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(winners.len() <= 1, "several writers won: {winners:?}");
    if let Some(winner) = winners.first() {
        assert_eq!(winner.as_slice(), stored, "the winner's value is stored");
    }
    if errors.is_empty() {
        assert_eq!(winners.len(), 1, "no writer won");
    } else {
        eprintln!("racing writers with unknown outcomes: {errors:?}");
    }
}

// ---------------------------------------------------------------- index rows

fn all(limit: usize) -> RowRange {
    RowRange {
        after: None,
        up_to: None,
        limit,
        descending: false,
    }
}

fn sorts(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.sort.as_str()).collect()
}

/// Sort keys `r00`, `r01`, … (zero-padded, so their order is numeric).
fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i:02}")).collect()
}

/// Writes `sorts` into one partition, in a scrambled order, each with its
/// sort key as the value.
async fn put_all(st: &dyn ServiceStore, table: Table, partition: &str, sorts: &[String]) {
    let n = sorts.len();
    for i in 0..n {
        // 7 is coprime to every n used here, so this visits each index once.
        let sort = &sorts[(i * 7) % n];
        st.put_row(table, partition, sort, sort.clone().into_bytes())
            .await
            .unwrap();
    }
}

async fn rows_are_put_overwritten_and_deleted(s: &Subject) {
    let st = &*s.store;
    let p = s.key("p");
    st.put_row(Table::OrdersByUser, &p, "s1", b"v1".to_vec())
        .await
        .unwrap();
    st.put_row(Table::OrdersByUser, &p, "s2", Vec::new())
        .await
        .unwrap();
    st.put_row(Table::OrdersByUser, &p, "s1", b"v2".to_vec())
        .await
        .unwrap();
    let rows = st.rows(Table::OrdersByUser, &p, all(100)).await.unwrap();
    assert_eq!(
        rows,
        vec![
            Row {
                sort: "s1".into(),
                value: b"v2".to_vec()
            },
            Row {
                sort: "s2".into(),
                value: Vec::new()
            },
        ],
        "an overwrite replaces the row, an empty value is kept"
    );
    st.delete_row(Table::OrdersByUser, &p, "s1").await.unwrap();
    st.delete_row(Table::OrdersByUser, &p, "s1")
        .await
        .expect("deleting an absent row is fine");
    let rows = st.rows(Table::OrdersByUser, &p, all(100)).await.unwrap();
    assert_eq!(sorts(&rows), ["s2"]);
    st.delete_row(Table::OrdersByUser, &p, "s2").await.unwrap();
    assert!(
        st.rows(Table::OrdersByUser, &p, all(100))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn partitions_and_tables_are_separate(s: &Subject) {
    let st = &*s.store;
    let (a, ab) = (s.key("a"), s.key("ab"));
    st.put_row(Table::OrderTimers, &a, "1", b"a1".to_vec())
        .await
        .unwrap();
    st.put_row(Table::OrderTimers, &ab, "0", b"ab0".to_vec())
        .await
        .unwrap();
    st.put_row(Table::OrderTimers, &ab, "2", b"ab2".to_vec())
        .await
        .unwrap();
    st.put_row(Table::PaymentTimers, &a, "3", b"pa3".to_vec())
        .await
        .unwrap();

    let rows = st.rows(Table::OrderTimers, &a, all(100)).await.unwrap();
    assert_eq!(sorts(&rows), ["1"], "partition a never lists rows of ab");
    let mut descending = all(100);
    descending.descending = true;
    let rows = st.rows(Table::OrderTimers, &a, descending).await.unwrap();
    assert_eq!(sorts(&rows), ["1"], "nor when read descending");
    let rows = st.rows(Table::OrderTimers, &ab, all(100)).await.unwrap();
    assert_eq!(sorts(&rows), ["0", "2"]);
    let rows = st.rows(Table::PaymentTimers, &a, all(100)).await.unwrap();
    assert_eq!(sorts(&rows), ["3"], "tables are separate");
    assert!(
        st.rows(Table::OrderTimers, &s.key("b"), all(100))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Every table of `Table::ALL` (the catalogue's included) holds its own
/// kind of data, apart from every other table: a record table stores
/// versioned records, an index table rows.
async fn every_table_keeps_its_own_data(s: &Subject) {
    let st = &*s.store;
    let k = s.key("same-key");
    for table in Table::ALL {
        let value = table.name().as_bytes().to_vec();
        if table.is_index() {
            st.put_row(table, &k, "sort", value).await.unwrap();
        } else {
            assert!(
                st.insert(table, &k, value, None).await.unwrap(),
                "{table:?}"
            );
        }
    }
    for table in Table::ALL {
        if table.is_index() {
            let rows = st.rows(table, &k, all(10)).await.unwrap();
            assert_eq!(rows.len(), 1, "{table:?}");
            assert_eq!(rows[0].value, table.name().as_bytes(), "{table:?}");
        } else {
            let got = st.get(table, &k).await.unwrap().expect("stored");
            assert_eq!(got.value, table.name().as_bytes(), "{table:?}");
        }
    }
}

async fn rows_come_in_sort_order(s: &Subject) {
    let st = &*s.store;
    let p = s.key("p");
    // Byte order of UTF-8: capitals before small letters, a prefix before
    // its extensions, non-ASCII last.
    let keys = [
        "b",
        "ä",
        "aa",
        "B",
        "a-1",
        "a",
        "2024-01-02T00:00",
        "2024-01-01T23:59",
    ];
    for k in keys {
        st.put_row(Table::OrdersByUser, &p, k, k.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut expected: Vec<&str> = keys.to_vec();
    expected.sort_unstable();
    let rows = st.rows(Table::OrdersByUser, &p, all(100)).await.unwrap();
    assert_eq!(sorts(&rows), expected, "ascending");
    assert!(rows.iter().all(|r| r.value == r.sort.as_bytes()));
    let mut range = all(100);
    range.descending = true;
    let rows = st.rows(Table::OrdersByUser, &p, range).await.unwrap();
    expected.reverse();
    assert_eq!(sorts(&rows), expected, "descending");
}

/// Reads a whole partition page by page, each page after the last row of
/// the previous one.
async fn read_in_pages(
    st: &dyn ServiceStore,
    table: Table,
    partition: &str,
    page: usize,
    descending: bool,
) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::new();
    loop {
        let range = RowRange {
            after: out.last().map(|r| r.sort.clone()),
            up_to: None,
            limit: page,
            descending,
        };
        let rows = st.rows(table, partition, range).await.unwrap();
        assert!(rows.len() <= page, "a page holds at most its limit");
        let done = rows.len() < page;
        out.extend(rows);
        if done {
            return out;
        }
    }
}

async fn paging_with_after_reaches_every_row_once(s: &Subject) {
    let st = &*s.store;
    let p = s.key("p");
    let expected = numbered(23);
    put_all(st, Table::OrderTimers, &p, &expected).await;

    let ascending = read_in_pages(st, Table::OrderTimers, &p, 5, false).await;
    assert_eq!(sorts(&ascending), expected, "ascending pages");
    assert!(ascending.iter().all(|r| r.value == r.sort.as_bytes()));

    let descending = read_in_pages(st, Table::OrderTimers, &p, 5, true).await;
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(sorts(&descending), reversed, "descending pages");

    // A page size that divides the row count ends on an empty page.
    let exact = read_in_pages(st, Table::OrderTimers, &p, 23, false).await;
    assert_eq!(sorts(&exact), expected);

    // `after` need not be a stored key.
    let range = RowRange {
        after: Some("r10a".into()),
        up_to: None,
        limit: 3,
        descending: false,
    };
    let rows = st.rows(Table::OrderTimers, &p, range).await.unwrap();
    assert_eq!(sorts(&rows), ["r11", "r12", "r13"]);
    let range = RowRange {
        after: Some("r10a".into()),
        up_to: None,
        limit: 3,
        descending: true,
    };
    let rows = st.rows(Table::OrderTimers, &p, range).await.unwrap();
    assert_eq!(sorts(&rows), ["r10", "r09", "r08"]);
}

async fn up_to_bounds_ascending_reads(s: &Subject) {
    let st = &*s.store;
    let p = s.key("p");
    put_all(st, Table::PaymentTimers, &p, &numbered(10)).await;
    let read = |after: Option<&str>, up_to: &str, limit: usize| RowRange {
        after: after.map(str::to_owned),
        up_to: Some(up_to.to_owned()),
        limit,
        descending: false,
    };

    let rows = st
        .rows(Table::PaymentTimers, &p, read(None, "r04", 100))
        .await
        .unwrap();
    assert_eq!(
        sorts(&rows),
        ["r00", "r01", "r02", "r03", "r04"],
        "inclusive"
    );
    let rows = st
        .rows(Table::PaymentTimers, &p, read(None, "r04a", 100))
        .await
        .unwrap();
    assert_eq!(
        sorts(&rows),
        ["r00", "r01", "r02", "r03", "r04"],
        "between keys"
    );
    let rows = st
        .rows(Table::PaymentTimers, &p, read(None, "r04", 2))
        .await
        .unwrap();
    assert_eq!(sorts(&rows), ["r00", "r01"], "with a limit");
    let rows = st
        .rows(Table::PaymentTimers, &p, read(Some("r02"), "r06", 2))
        .await
        .unwrap();
    assert_eq!(sorts(&rows), ["r03", "r04"], "with after and a limit");
    let rows = st
        .rows(Table::PaymentTimers, &p, read(Some("r05"), "r06", 100))
        .await
        .unwrap();
    assert_eq!(sorts(&rows), ["r06"]);
    let rows = st
        .rows(Table::PaymentTimers, &p, read(None, "a", 100))
        .await
        .unwrap();
    assert!(rows.is_empty(), "below every key");
    let rows = st
        .rows(Table::PaymentTimers, &p, read(Some("r06"), "r06", 100))
        .await
        .unwrap();
    assert!(rows.is_empty(), "after the bound");
}

async fn limit_caps_the_rows(s: &Subject) {
    let st = &*s.store;
    let p = s.key("p");
    put_all(st, Table::OrdersByUser, &p, &numbered(10)).await;
    let read = |limit: usize, descending: bool| RowRange {
        after: None,
        up_to: None,
        limit,
        descending,
    };
    let rows = st
        .rows(Table::OrdersByUser, &p, read(3, false))
        .await
        .unwrap();
    assert_eq!(sorts(&rows), ["r00", "r01", "r02"], "first rows ascending");
    let rows = st
        .rows(Table::OrdersByUser, &p, read(3, true))
        .await
        .unwrap();
    assert_eq!(sorts(&rows), ["r09", "r08", "r07"], "last rows descending");
    let rows = st
        .rows(Table::OrdersByUser, &p, read(1, true))
        .await
        .unwrap();
    assert_eq!(sorts(&rows), ["r09"]);
    let rows = st
        .rows(Table::OrdersByUser, &p, read(1000, false))
        .await
        .unwrap();
    assert_eq!(rows.len(), 10, "a limit above the row count returns all");
}

// ---------------------------------------------------------------- runs

/// Runs every listed check against every implementation: `on_embedded::*`
/// and `on_scylla::*`.
macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        /// Checks per implementation.
        const CHECKS: usize = [$(stringify!($check)),*].len();

        mod on_embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let s = super::embedded(stringify!($check));
                    super::$check(&s).await;
                }
            )*
        }

        mod on_scylla {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let Some(s) = super::scylla(stringify!($check)).await else {
                        return;
                    };
                    super::$check(&s).await;
                    super::scylla_check_passed().await;
                }
            )*
        }
    };
}

conformance!(
    insert_only_when_absent,
    replace_only_when_unchanged,
    delete_checks_the_version,
    a_linearizable_read_sees_every_write,
    expired_values_are_absent,
    a_replace_sets_the_expiry_anew,
    one_of_racing_replaces_wins,
    one_of_racing_inserts_wins,
    state_moves_apply_once_under_concurrency,
    rows_are_put_overwritten_and_deleted,
    partitions_and_tables_are_separate,
    every_table_keeps_its_own_data,
    rows_come_in_sort_order,
    paging_with_after_reaches_every_row_once,
    up_to_bounds_ascending_reads,
    limit_caps_the_rows,
);

// ---------------------------------------------------------------- a ring

/// The 3-node ring of `testing/cassandra/cassandra ring-start DIR`, named
/// by its DIR: the distributed checks run on it when set (each node's
/// `run`, `pid` and `address` are in `DIR/nodeI/`).
const RING_ENV: &str = "FLASHMALL_TEST_SCYLLA_RING";

#[derive(Clone, Copy)]
enum Seen {
    Up,
    Down,
}

struct Ring {
    dir: std::path::PathBuf,
    nodes: Vec<String>,
}

impl Ring {
    fn from_env() -> Option<Ring> {
        let dir = std::path::PathBuf::from(std::env::var(RING_ENV).ok().filter(|d| !d.is_empty())?);
        let nodes = (1..=3)
            .map(|i| {
                let file = dir.join(format!("node{i}/address"));
                std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                    .trim()
                    .to_owned()
            })
            .collect();
        Some(Ring { dir, nodes })
    }

    fn node_dir(&self, i: usize) -> std::path::PathBuf {
        self.dir.join(format!("node{i}"))
    }

    /// Starts every node a previous run left down (a failed check stops
    /// midway), and waits until the ring sees it up.
    async fn ensure_up(&self) {
        for i in 1..=3 {
            if !self.running(i) {
                self.start(i).await;
                self.await_seen(i, Seen::Up, if i == 1 { 2 } else { 1 })
                    .await;
            }
        }
    }

    fn running(&self, i: usize) -> bool {
        std::fs::read_to_string(self.node_dir(i).join("pid"))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    }

    /// Waits until node `by` sees node `i` in state `seen` (its gossip, as
    /// `nodetool status` reports it): the point from which coordinators
    /// route around a dead node, or count a returned one again.
    async fn await_seen(&self, i: usize, seen: Seen, by: usize) {
        let address = self.nodes[i - 1].split(':').next().unwrap().to_owned();
        let want = match seen {
            Seen::Up => "UN",
            Seen::Down => "DN",
        };
        let script = flashmall_testing::package_dir().join("../testing/cassandra/cassandra");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = tokio::process::Command::new(&script)
                .arg("nodetool")
                .arg(&self.dir)
                .arg(by.to_string())
                .arg("status")
                .output()
                .await
                .unwrap();
            let status = String::from_utf8_lossy(&out.stdout);
            let state = status.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                let state = words.next()?;
                (words.next()? == address).then(|| state.to_owned())
            });
            if state.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {by} does not see node {i} {want} (it sees {state:?})"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// SIGKILLs node `i` (1-based): a crash, not a drain.
    fn kill(&self, i: usize) {
        let pid = std::fs::read_to_string(self.node_dir(i).join("pid")).unwrap();
        let status = std::process::Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .unwrap();
        assert!(status.success(), "kill node {i}");
    }

    /// Starts node `i` again on its data and waits until it answers CQL.
    /// The node belongs to the ring, not to this test: it outlives it.
    #[allow(clippy::zombie_processes)]
    async fn start(&self, i: usize) {
        use std::os::unix::process::CommandExt;
        let dir = self.node_dir(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("logs/stdout.log"))
            .unwrap();
        let child = std::process::Command::new(dir.join("run"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        std::fs::write(dir.join("pid"), child.id().to_string()).unwrap();
        let address = &self.nodes[i - 1];
        let deadline = Instant::now() + Duration::from_secs(240);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            assert!(Instant::now() < deadline, "node {i} did not come back");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One check at a time on the ring: they take nodes down.
static RING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Records moved while a node is down, then read while another is down:
/// with replication factor 3, writes at LOCAL_QUORUM and conditions at
/// SERIAL, a crashed node loses no acknowledged write and no state move
/// applies twice; a node that comes back catches up (hints, read repair).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_ring_state_moves_stay_exactly_once_with_a_node_down() {
    let Some(ring) = Ring::from_env() else {
        eprintln!("skipped: {RING_ENV} not set (the store checks with a node down did not run)");
        return;
    };
    let _one = RING.lock().await;
    let config = StoreConfig {
        backend: StoreBackend::Scylla,
        scylla_nodes: ring.nodes.clone(),
        keyspace: format!("flashmall_ring_{}", uuid::Uuid::new_v4().simple()),
        replication_factor: 3,
        datacenter: "datacenter1".to_owned(),
        request_timeout: Duration::from_secs(10),
        ..StoreConfig::default()
    };
    let store = ScyllaStore::connect(&config)
        .await
        .unwrap_or_else(|e| panic!("cannot open the store on the ring {:?}: {e}", ring.nodes));
    let s = Subject {
        store: Arc::new(store),
        prefix: "node-down/".to_owned(),
        racers: 8,
        expiry_slack: Duration::from_secs(3),
        _dir: None,
    };

    ring.ensure_up().await;

    // The crash itself: until the survivors' failure detector convicts
    // node 3 (seconds), coordinators still send it Paxos rounds, and a
    // conditional write may time out with an unknown outcome, which the
    // services answer as 503 and re-read. Still, exactly one move applies.
    ring.kill(3);
    state_moves_apply_exactly_once_when_some_time_out(&s, "crash").await;

    // Node 3 known down, by both survivors (either may coordinate): the
    // checks hold with two replicas of three. A Paxos round can still time
    // out when a live replica answers late (beside two CPU burners one did,
    // after both had convicted node 3): an unknown outcome, as above, and
    // exactly one move still applies.
    ring.await_seen(3, Seen::Down, 1).await;
    ring.await_seen(3, Seen::Down, 2).await;
    insert_only_when_absent(&s).await;
    // A SERIAL read needs 2 of the 3 replicas, as a Paxos round does.
    a_linearizable_read_sees_every_write(&s).await;
    one_of_racing_inserts_wins(&s).await;
    state_moves_apply_exactly_once_when_some_time_out(&s, "doc").await;
    rows_are_put_overwritten_and_deleted(&s).await;
    ring.start(3).await;
    ring.await_seen(3, Seen::Up, 2).await;

    // Another node down: what was written without node 3 is still there,
    // read from node 3 and the one left (a quorum).
    ring.kill(1);
    ring.await_seen(1, Seen::Down, 2).await;
    ring.await_seen(1, Seen::Down, 3).await;
    let (doc, _) = records::load::<Doc>(&*s.store, Table::Orders, &s.key("doc"))
        .await
        .expect("a quorum answers with node 1 down")
        .expect("the record moved while node 3 was down is kept");
    assert_eq!(doc.moves, 1, "the one move is kept: {doc:?}");
    ring.start(1).await;
    ring.await_seen(1, Seen::Up, 2).await;
}
