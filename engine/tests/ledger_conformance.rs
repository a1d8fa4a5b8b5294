//! The ledger conformance suite: every `LedgerStore` implementation runs it
//! under the same domain logic. Runs against the embedded ledger (redb in a
//! temp dir) and, when `FLASHMALL_TEST_TIKV_PD` names PD endpoints
//! (comma-separated), against TiKV through tikv-client.

use std::sync::Arc;

use flashmall_engine::config::LedgerConfig;
use flashmall_engine::front::StreamEntry;
use flashmall_engine::ledger::{
    EmbeddedLedger, Ledger, LedgerError, ReleaseStep, ReservationStatus, TikvLedger, Write,
};
use flashmall_engine::sale::Sale;
use time::OffsetDateTime;
use uuid::Uuid;

struct Subject {
    ledger: Ledger,
    _dir: Option<tempfile::TempDir>,
}

async fn embedded() -> Option<Subject> {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedLedger::open(&dir.path().join("ledger.redb")).unwrap();
    Some(Subject {
        ledger: Ledger::new(Arc::new(store)),
        _dir: Some(dir),
    })
}

/// TiKV when the environment names PD endpoints; each test gets its own
/// key prefix, so tests never see each other's data.
async fn tikv() -> Option<Subject> {
    let Ok(pd) = std::env::var("FLASHMALL_TEST_TIKV_PD") else {
        eprintln!("skipped: FLASHMALL_TEST_TIKV_PD is not set, so no TiKV to test against");
        return None;
    };
    let config = LedgerConfig {
        pd_endpoints: pd.split(',').map(|s| s.trim().to_owned()).collect(),
        key_prefix: format!("test-{}/", Uuid::now_v7()),
        ..LedgerConfig::default()
    };
    let store = TikvLedger::connect(&config).await.expect("connect to TiKV");
    Some(Subject {
        ledger: Ledger::new(Arc::new(store)),
        _dir: None,
    })
}

fn sale(stock: i64) -> Sale {
    let now = OffsetDateTime::now_utc();
    Sale {
        id: Uuid::now_v7(),
        product_id: "p-1".into(),
        price: 1999,
        stock,
        per_user_limit: 5,
        starts_at: now,
        ends_at: now + time::Duration::hours(1),
        created_at: now,
    }
}

fn entry(sale: Uuid, user: &str, quantity: i64) -> StreamEntry {
    StreamEntry {
        entry_id: format!("{}-0", Uuid::now_v7().as_u128() % 1_000_000),
        reservation_id: Uuid::now_v7(),
        sale_id: sale,
        user_id: user.to_owned(),
        quantity,
        idempotency_key: format!("key-{}", Uuid::now_v7()),
        created_at_ms: 1,
    }
}

async fn sales_are_created_once(l: &Ledger) {
    let s = sale(10);
    l.create_sale(&s).await.unwrap();
    let (got, counts) = l.sale(s.id).await.unwrap().unwrap();
    assert_eq!(got, s);
    assert_eq!(counts.settled, 0);
    let other = Sale {
        price: 1,
        ..s.clone()
    };
    assert!(matches!(
        l.create_sale(&other).await,
        Err(LedgerError::AlreadyExists(_))
    ));
    assert!(l.sales().await.unwrap().iter().any(|x| x.id == s.id));
    assert!(l.sale(Uuid::now_v7()).await.unwrap().is_none());
}

async fn settle_writes_records_and_counts_once(l: &Ledger) {
    let s = sale(10);
    l.create_sale(&s).await.unwrap();
    let batch = vec![
        entry(s.id, "u1", 2),
        entry(s.id, "u2", 1),
        entry(s.id, "u1", 1),
    ];
    let first = l.settle(s.id, &batch, 0).await.unwrap();
    assert_eq!((first.new, first.units, first.replayed), (3, 4, 0));
    // A replayed batch (crash before the acknowledgement) changes nothing.
    let again = l.settle(s.id, &batch, 0).await.unwrap();
    assert_eq!((again.new, again.units, again.replayed), (0, 0, 3));
    // Duplicates inside one batch count once.
    let dup = entry(s.id, "u3", 1);
    let with_dup = l
        .settle(s.id, &[dup.clone(), dup.clone()], 0)
        .await
        .unwrap();
    assert_eq!((with_dup.new, with_dup.replayed), (1, 1));
    let (_, counts) = l.sale(s.id).await.unwrap().unwrap();
    assert_eq!((counts.settled, counts.reservations), (5, 4));
    let r = l
        .reservation(batch[0].reservation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.user_id.as_str(), r.quantity, r.status),
        ("u1", 2, ReservationStatus::Held)
    );
    assert_eq!(r.idempotency_key, batch[0].idempotency_key);
    let snap = l.snapshot(s.id).await.unwrap().unwrap();
    let mut buyers = snap.buyers.clone();
    buyers.sort();
    assert_eq!(
        buyers,
        vec![
            ("u1".to_owned(), 3),
            ("u2".to_owned(), 1),
            ("u3".to_owned(), 1)
        ]
    );
    assert_eq!(snap.reservations.len(), 4);
}

async fn release_moves_units_once(l: &Ledger) {
    let s = sale(10);
    l.create_sale(&s).await.unwrap();
    let e = entry(s.id, "u1", 2);
    l.settle(s.id, std::slice::from_ref(&e), 0).await.unwrap();
    let ReleaseStep::Releasing(r) = l.begin_release(e.reservation_id).await.unwrap() else {
        panic!("expected releasing")
    };
    assert_eq!(r.status, ReservationStatus::Releasing);
    let (_, c) = l.sale(s.id).await.unwrap().unwrap();
    assert_eq!((c.settled, c.released, c.returning), (0, 2, 2));
    // An interrupted release resumes without moving units again.
    assert!(matches!(
        l.begin_release(e.reservation_id).await.unwrap(),
        ReleaseStep::Releasing(_)
    ));
    let (_, c) = l.sale(s.id).await.unwrap().unwrap();
    assert_eq!((c.settled, c.released, c.returning), (0, 2, 2));
    l.finish_release(e.reservation_id, s.id).await.unwrap();
    l.finish_release(e.reservation_id, s.id).await.unwrap();
    let (_, c) = l.sale(s.id).await.unwrap().unwrap();
    assert_eq!((c.settled, c.released, c.returning), (0, 2, 0));
    assert!(matches!(
        l.begin_release(e.reservation_id).await.unwrap(),
        ReleaseStep::AlreadyReleased(_)
    ));
    assert_eq!(
        l.begin_release(Uuid::now_v7()).await.unwrap(),
        ReleaseStep::NotFound
    );
    let snap = l.snapshot(s.id).await.unwrap().unwrap();
    assert!(
        snap.buyers.is_empty(),
        "the buyer holds nothing after the release"
    );
}

async fn failed_plans_write_nothing(l: &Ledger) {
    let key = format!("t/{}", Uuid::now_v7()).into_bytes();
    let k = key.clone();
    let result = l
        .store()
        .transact(
            vec![key.clone()],
            Box::new(move |_| {
                let _ = Write::Put(k.clone(), b"x".to_vec());
                Err(LedgerError::AlreadyExists("test".into()))
            }),
        )
        .await;
    assert!(result.is_err());
    let reads = l.store().get_many(vec![key.clone()]).await.unwrap();
    assert_eq!(reads.get(&key), None);
    let k = key.clone();
    l.store()
        .transact(
            vec![key.clone()],
            Box::new(move |_| Ok(vec![Write::Put(k.clone(), b"v".to_vec())])),
        )
        .await
        .unwrap();
    let reads = l.store().get_many(vec![key.clone()]).await.unwrap();
    assert_eq!(reads.get(&key), Some(&b"v"[..]));
}

async fn scans_page_through_large_sales(l: &Ledger) {
    let s = sale(5_000);
    l.create_sale(&s).await.unwrap();
    let batch: Vec<StreamEntry> = (0..2_500)
        .map(|i| entry(s.id, &format!("u{i}"), 1))
        .collect();
    for chunk in batch.chunks(500) {
        l.settle(s.id, chunk, 0).await.unwrap();
    }
    let snap = l.snapshot(s.id).await.unwrap().unwrap();
    assert_eq!(snap.reservations.len(), 2_500);
    assert_eq!(snap.buyers.len(), 2_500);
    assert_eq!(snap.counts.settled, 2_500);
}

/// A batch read before a reconcile started a new epoch commits nothing: it
/// may come from a stream the rebuild no longer counts (a flush).
async fn a_reconcile_fences_older_batches(l: &Ledger) {
    let s = sale(10);
    l.create_sale(&s).await.unwrap();
    let before = l.epoch(s.id).await.unwrap();
    let e = entry(s.id, "u1", 1);
    let newer = l.bump_epoch(s.id).await.unwrap();
    assert!(newer > before);
    assert!(matches!(
        l.settle(s.id, std::slice::from_ref(&e), before).await,
        Err(LedgerError::Fenced { .. })
    ));
    assert_eq!(
        l.sale(s.id).await.unwrap().unwrap().1.settled,
        0,
        "nothing written"
    );
    assert!(l.reservation(e.reservation_id).await.unwrap().is_none());
    assert_eq!(
        l.settle(s.id, std::slice::from_ref(&e), newer)
            .await
            .unwrap()
            .new,
        1
    );
}

/// Two settlement workers racing over overlapping batches of one sale (a
/// claim after a stall): write conflicts are retried, nothing counts twice.
async fn concurrent_settlers_count_once(l: &Ledger) {
    let s = sale(1_000);
    l.create_sale(&s).await.unwrap();
    let entries: Vec<StreamEntry> = (0..200)
        .map(|i| entry(s.id, &format!("u{}", i % 37), 1))
        .collect();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let l = l.clone();
        let entries = entries.clone();
        tasks.push(tokio::spawn(async move {
            // Each worker settles every entry, in its own batch order.
            let mut order: Vec<StreamEntry> = entries;
            order.rotate_left(worker * 50);
            for chunk in order.chunks(25) {
                l.settle(s.id, chunk, 0).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let snap = l.snapshot(s.id).await.unwrap().unwrap();
    assert_eq!(snap.counts.settled, 200);
    assert_eq!(snap.counts.reservations, 200);
    assert_eq!(snap.reservations.len(), 200);
    assert_eq!(snap.buyers.iter().map(|(_, n)| n).sum::<i64>(), 200);
}

macro_rules! conformance {
    ($name:ident, $make:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sales_are_created_once() {
                let Some(s) = $make().await else { return };
                super::sales_are_created_once(&s.ledger).await;
            }
            #[tokio::test]
            async fn settle_writes_records_and_counts_once() {
                let Some(s) = $make().await else { return };
                super::settle_writes_records_and_counts_once(&s.ledger).await;
            }
            #[tokio::test]
            async fn release_moves_units_once() {
                let Some(s) = $make().await else { return };
                super::release_moves_units_once(&s.ledger).await;
            }
            #[tokio::test]
            async fn failed_plans_write_nothing() {
                let Some(s) = $make().await else { return };
                super::failed_plans_write_nothing(&s.ledger).await;
            }
            #[tokio::test]
            async fn scans_page_through_large_sales() {
                let Some(s) = $make().await else { return };
                super::scans_page_through_large_sales(&s.ledger).await;
            }
            #[tokio::test]
            async fn a_reconcile_fences_older_batches() {
                let Some(s) = $make().await else { return };
                super::a_reconcile_fences_older_batches(&s.ledger).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_settlers_count_once() {
                let Some(s) = $make().await else { return };
                super::concurrent_settlers_count_once(&s.ledger).await;
            }
        }
    };
}

conformance!(on_embedded, embedded);
conformance!(on_tikv, tikv);

/// Embedded only: what was committed survives closing and reopening the file.
#[tokio::test]
async fn embedded_ledger_is_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let s = sale(3);
    let e = entry(s.id, "u1", 1);
    {
        let l = Ledger::new(Arc::new(EmbeddedLedger::open(&path).unwrap()));
        l.create_sale(&s).await.unwrap();
        l.settle(s.id, std::slice::from_ref(&e), 0).await.unwrap();
    }
    // The writer thread exits when its queue closes; give it a moment.
    let mut reopened = None;
    for _ in 0..50 {
        match EmbeddedLedger::open(&path) {
            Ok(store) => {
                reopened = Some(store);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let l = Ledger::new(Arc::new(reopened.expect("ledger reopens")));
    assert!(l.reservation(e.reservation_id).await.unwrap().is_some());
    assert_eq!(l.sale(s.id).await.unwrap().unwrap().1.settled, 1);
}
