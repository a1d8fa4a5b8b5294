//! The payment service's domain against the embedded store, the provider
//! simulator and a scripted order service: idempotency, cancellation, timed
//! cancellation of stuck charges, refunds when the order can no longer be
//! paid, and captures finished after the order service comes back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use flashmall_mesh::{ApiError, ErrorCode, Identity, Role};
use flashmall_services::config::PaymentsConfig;
use flashmall_services::payments::orders::{MarkPaid, OrderDesk, OrderFacts};
use flashmall_services::payments::provider::{
    ChargeOutcome, PaymentProvider, ProviderError, Simulator, SimulatorConfig,
};
use flashmall_services::payments::{ChargeOrigin, ChargeRequest, PaymentStatus, Payments, sweep};
use flashmall_services::store::EmbeddedStore;
use uuid::Uuid;

/// One order the scripted order service knows.
struct Desk {
    order: Uuid,
    owner: String,
    status: Mutex<String>,
    paid_by: Mutex<Option<Uuid>>,
    down: AtomicBool,
    source: Mutex<&'static str>,
}

#[async_trait]
impl OrderDesk for Desk {
    async fn get_order(&self, buyer: &Identity, order_id: Uuid) -> Result<OrderFacts, ApiError> {
        if order_id != self.order || buyer.user_id != self.owner {
            return Err(ApiError::new(ErrorCode::NotFound, "no such order"));
        }
        Ok(OrderFacts {
            status: self.status.lock().unwrap().clone(),
            total: 1999,
            source: (*self.source.lock().unwrap()).to_owned(),
        })
    }

    async fn mark_paid(&self, _: Uuid, payment_id: Uuid, _: i64) -> Result<MarkPaid, ApiError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ApiError::unavailable("the order service is down"));
        }
        let mut status = self.status.lock().unwrap();
        let mut paid_by = self.paid_by.lock().unwrap();
        Ok(match (status.as_str(), *paid_by) {
            ("pending_payment", _) => {
                *status = "paid".into();
                *paid_by = Some(payment_id);
                MarkPaid::Paid
            }
            ("paid", Some(p)) if p == payment_id => MarkPaid::AlreadyPaid,
            (other, _) => MarkPaid::NotPayable {
                status: other.to_owned(),
            },
        })
    }
}

struct Subject {
    payments: Arc<Payments>,
    desk: Arc<Desk>,
    buyer: Identity,
    _dir: tempfile::TempDir,
}

fn buyer() -> Identity {
    Identity {
        user_id: "buyer-1".into(),
        roles: vec![Role::Customer],
        token_id: "t".into(),
        expires_at_ms: flashmall_mesh::now_ms() + 600_000,
    }
}

/// The simulator behind a provider that does not take the first
/// `failures` charges (no answer: their outcome unknown to the caller).
struct Flaky {
    simulator: Simulator,
    failures: std::sync::atomic::AtomicU32,
}

#[async_trait]
impl PaymentProvider for Flaky {
    fn name(&self) -> &'static str {
        "simulator"
    }

    async fn charge(&self, id: Uuid, amount: i64) -> Result<ChargeOutcome, ProviderError> {
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ProviderError("connection reset".into()));
        }
        self.simulator.charge(id, amount).await
    }

    async fn status(&self, id: Uuid) -> Result<ChargeOutcome, ProviderError> {
        self.simulator.status(id).await
    }

    async fn refund(&self, id: Uuid, amount: i64) -> Result<String, ProviderError> {
        self.simulator.refund(id, amount).await
    }

    async fn cancel(&self, id: Uuid) -> Result<(), ProviderError> {
        self.simulator.cancel(id).await
    }
}

fn subject(simulator: SimulatorConfig) -> Subject {
    subject_with(simulator, 0)
}

/// A subject whose provider does not take the first `failures` charges.
fn subject_with(simulator: SimulatorConfig, failures: u32) -> Subject {
    subject_timed(simulator, failures, Duration::from_millis(300))
}

/// The same, with `pending_timeout` (how long a charge may stay pending
/// at the provider before the timer cancels it).
fn subject_timed(simulator: SimulatorConfig, failures: u32, pending_timeout: Duration) -> Subject {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
    let desk = Arc::new(Desk {
        order: Uuid::now_v7(),
        owner: "buyer-1".into(),
        status: Mutex::new("pending_payment".into()),
        paid_by: Mutex::new(None),
        down: AtomicBool::new(false),
        source: Mutex::new("flash_sale"),
    });
    let (events, callbacks) = tokio::sync::mpsc::unbounded_channel();
    let config = PaymentsConfig {
        pending_timeout,
        capture_retry: Duration::from_millis(100),
        ..PaymentsConfig::default()
    };
    let provider = Flaky {
        simulator: Simulator::new(simulator, events),
        failures: std::sync::atomic::AtomicU32::new(failures),
    };
    let payments = Arc::new(Payments::new(
        store,
        Arc::new(provider),
        Arc::clone(&desk) as Arc<dyn OrderDesk>,
        config,
    ));
    sweep::listen(
        Arc::clone(&payments),
        callbacks,
        flashmall_mesh::Shutdown::new(),
    );
    Subject {
        payments,
        desk,
        buyer: buyer(),
        _dir: dir,
    }
}

fn instant() -> SimulatorConfig {
    SimulatorConfig {
        latency: Duration::ZERO,
        latency_jitter: Duration::ZERO,
        ..SimulatorConfig::default()
    }
}

fn charge(s: &Subject, key: &str, amount: i64) -> ChargeRequest {
    ChargeRequest {
        order_id: s.desk.order.to_string(),
        amount,
        idempotency_key: key.into(),
        origin: ChargeOrigin::Storefront,
    }
}

/// Sweeps until the payment is no longer `status`, or gives up.
async fn sweep_until_not(s: &Subject, id: Uuid, status: PaymentStatus) -> PaymentStatus {
    for _ in 0..100 {
        sweep::sweep_once(&s.payments).await.unwrap();
        let p = s.payments.get(&s.buyer, &id.to_string()).await.unwrap();
        if p.status != status {
            return p.status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    status
}

#[tokio::test]
async fn a_key_charges_once_and_only_for_its_first_request() {
    let s = subject(instant());
    let (first, replayed) = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1999))
        .await
        .unwrap();
    assert_eq!((first.status, replayed), (PaymentStatus::Succeeded, false));
    let (again, replayed) = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1999))
        .await
        .unwrap();
    assert_eq!((again.id, replayed), (first.id, true));
    let reused = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1000))
        .await
        .unwrap_err();
    assert_eq!(reused.code, ErrorCode::Conflict);
    let wrong = s
        .payments
        .charge(&s.buyer, charge(&s, "other", 5))
        .await
        .unwrap_err();
    assert_eq!(
        wrong.code,
        ErrorCode::Conflict,
        "the order is paid: {}",
        wrong.message
    );
    let stranger = Identity {
        user_id: "someone-else".into(),
        ..buyer()
    };
    let hidden = s
        .payments
        .get(&stranger, &first.id.to_string())
        .await
        .unwrap_err();
    assert_eq!(hidden.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn a_wrong_amount_is_refused_and_charges_nothing() {
    let s = subject(instant());
    let e = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1998))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest);
    assert!(e.message.contains("1999"), "{}", e.message);
    // The key is still free: nothing was recorded.
    let (p, replayed) = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1999))
        .await
        .unwrap();
    assert_eq!((p.status, replayed), (PaymentStatus::Succeeded, false));
}

#[tokio::test]
async fn a_checkout_order_is_paid_only_by_its_checkout() {
    let s = subject(instant());
    *s.desk.source.lock().unwrap() = "checkout";
    let e = s
        .payments
        .charge(&s.buyer, charge(&s, "early", 1999))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict, "{}", e.message);
    assert!(e.message.contains("checkout"), "{}", e.message);
    assert_eq!(*s.desk.paid_by.lock().unwrap(), None, "nothing was paid");
    // Checkout itself, over the mesh, pays it.
    let (p, _) = s
        .payments
        .charge(
            &s.buyer,
            ChargeRequest {
                origin: ChargeOrigin::Component,
                ..charge(&s, "checkout:1", 1999)
            },
        )
        .await
        .unwrap();
    assert_eq!(p.status, PaymentStatus::Succeeded);
    // The refused key was never recorded.
    let e = s
        .payments
        .charge(&s.buyer, charge(&s, "early", 1999))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
}

#[tokio::test]
async fn money_taken_for_an_expired_order_is_refunded() {
    let s = subject(SimulatorConfig {
        latency: Duration::from_millis(200),
        ..instant()
    });
    let payments = Arc::clone(&s.payments);
    let buyer = s.buyer.clone();
    let request = charge(&s, "k", 1999);
    let paying = tokio::spawn(async move { payments.charge(&buyer, request).await });
    // The order expires while the provider takes the money.
    tokio::time::sleep(Duration::from_millis(50)).await;
    *s.desk.status.lock().unwrap() = "expired".into();
    let (p, _) = paying.await.unwrap().unwrap();
    assert_eq!(p.status, PaymentStatus::Refunded);
    assert!(p.refund_ref.is_some());
    assert!(
        p.reason.as_deref().unwrap_or("").contains("expired"),
        "{:?}",
        p.reason
    );
}

#[tokio::test]
async fn a_capture_the_order_service_missed_is_finished_later() {
    let s = subject(instant());
    s.desk.down.store(true, Ordering::SeqCst);
    let e = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1999))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    let id = flashmall_services::payments::payment_id_for("buyer-1", "k");
    let p = s.payments.get(&s.buyer, &id.to_string()).await.unwrap();
    assert_eq!(
        p.status,
        PaymentStatus::Captured,
        "money taken, order not yet told"
    );
    s.desk.down.store(false, Ordering::SeqCst);
    assert_eq!(
        sweep_until_not(&s, id, PaymentStatus::Captured).await,
        PaymentStatus::Succeeded
    );
    assert_eq!(*s.desk.paid_by.lock().unwrap(), Some(id));
}

#[tokio::test]
async fn pending_charges_are_decided_by_callback_cancelled_or_timed_out() {
    // Every charge pends; callbacks come after 150 ms.
    let s = subject(SimulatorConfig {
        pending_rate: 1.0,
        callback_delay: Duration::from_millis(150),
        ..instant()
    });
    let (p, _) = s
        .payments
        .charge(&s.buyer, charge(&s, "a", 1999))
        .await
        .unwrap();
    assert_eq!(p.status, PaymentStatus::Pending);
    // Until the payment is decided: `captured` is the step between the
    // provider's capture and the order's payment.
    let mut status = p.status;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        status = s
            .payments
            .get(&s.buyer, &p.id.to_string())
            .await
            .unwrap()
            .status;
        if !matches!(status, PaymentStatus::Pending | PaymentStatus::Captured) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        status,
        PaymentStatus::Succeeded,
        "the callback captured and paid"
    );

    // Cancelled by the payer before the provider decides.
    let s = subject(SimulatorConfig {
        pending_rate: 1.0,
        callback_delay: Duration::from_millis(150),
        ..instant()
    });
    let (p, _) = s
        .payments
        .charge(&s.buyer, charge(&s, "b", 1999))
        .await
        .unwrap();
    let cancelled = s
        .payments
        .cancel(&s.buyer, &p.id.to_string())
        .await
        .unwrap();
    assert_eq!(cancelled.status, PaymentStatus::Cancelled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let p = s.payments.get(&s.buyer, &p.id.to_string()).await.unwrap();
    assert_eq!(
        p.status,
        PaymentStatus::Cancelled,
        "no capture after a cancel"
    );
    assert_eq!(*s.desk.status.lock().unwrap(), "pending_payment");
    let again = s
        .payments
        .cancel(&s.buyer, &p.id.to_string())
        .await
        .unwrap_err();
    assert_eq!(again.code, ErrorCode::Conflict);

    // Stuck pending past pending_timeout (300 ms): the sweeper cancels it.
    let s = subject(SimulatorConfig {
        pending_rate: 1.0,
        callback_delay: Duration::from_secs(3600),
        ..instant()
    });
    let (p, _) = s
        .payments
        .charge(&s.buyer, charge(&s, "c", 1999))
        .await
        .unwrap();
    // Sweeps until the deadline has passed and the timer has cancelled it.
    assert_eq!(
        sweep_until_not(&s, p.id, PaymentStatus::Pending).await,
        PaymentStatus::Cancelled
    );
    let p = s.payments.get(&s.buyer, &p.id.to_string()).await.unwrap();
    assert!(
        p.reason.as_deref().unwrap_or("").contains("timed out"),
        "{:?}",
        p.reason
    );
}

/// A payment whose first call wrote it but whose charge got no answer
/// (as when the replica is killed between the two): pending. Its pending
/// deadline (a minute) is far past the timer's retry (100 ms), so the
/// timer's charge comes first at any machine speed.
async fn a_charge_left_pending() -> (Subject, flashmall_services::payments::Payment) {
    let s = subject_timed(instant(), 1, Duration::from_secs(60));
    let (first, _) = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1999))
        .await
        .unwrap();
    assert_eq!(first.status, PaymentStatus::Pending);
    (s, first)
}

#[tokio::test]
async fn a_charge_that_did_not_go_through_is_made_when_the_key_comes_again() {
    let (s, first) = a_charge_left_pending().await;
    // The payer asks again with the same key: the charge is made now.
    let (again, replayed) = s
        .payments
        .charge(&s.buyer, charge(&s, "k", 1999))
        .await
        .unwrap();
    assert_eq!((again.id, replayed), (first.id, true));
    assert_eq!(again.status, PaymentStatus::Succeeded);
    assert_eq!(*s.desk.paid_by.lock().unwrap(), Some(first.id));
}

#[tokio::test]
async fn a_charge_that_did_not_go_through_is_made_by_the_timer_not_cancelled() {
    // No second call from the payer: the timer charges it (after
    // capture_retry, 100 ms), well before its pending deadline (a minute)
    // would cancel it as stuck at the provider.
    let (s, first) = a_charge_left_pending().await;
    assert_eq!(
        sweep_until_not(&s, first.id, PaymentStatus::Pending).await,
        PaymentStatus::Succeeded
    );
    assert_eq!(*s.desk.paid_by.lock().unwrap(), Some(first.id));
}
