//! The payment service (step 14 of the purchase path): charges against
//! orders through a payment provider, cancellation, timed cancellation of
//! charges stuck pending, and automatic refunds.
//!
//! A payment moves `pending → captured → succeeded | refunded`, or
//! `pending → failed | cancelled`; every move is a conditional write on the
//! payment's version. `captured` means the provider took the money and the
//! order has not confirmed it yet: the order service's MarkOrderPaid then
//! decides, with the same conditional write that expiry uses, whether this
//! payment paid the order. If it did not (the order expired or was
//! cancelled first, or another payment paid it), the money goes back at
//! once and the refund is recorded. No unit is ever sold twice: an order
//! is paid by exactly one payment, or closed with its units released.
//!
//! A crash between two steps leaves a timer (`crate::timers`) that finishes
//! the payment later: a captured payment is confirmed or refunded, a
//! pending one is asked about and cancelled when its time is up.
//!
//! - `provider.rs`: the provider boundary and the simulator.
//! - `orders.rs`: the order service client.
//! - `sweep.rs`: the timer worker and the provider-callback listener.
//! - `http.rs`: the JSON API; `grpc.rs`: the gRPC API.

pub mod config;
pub mod grpc;
pub mod http;
pub mod orders;
pub mod provider;
pub mod sweep;

use std::sync::Arc;

use flashmall_mesh::{ApiError, ErrorCode, Identity, now_ms};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::records::{self, RecordError, Step};
use crate::store::{ServiceStore, Table};
use crate::timers::Timers;
use config::PaymentsConfig;
use orders::{MarkPaid, OrderDesk};
use provider::{ChargeOutcome, PaymentProvider};

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Sent to the provider, no answer yet.
    Pending,
    /// Money taken; the order has not confirmed it yet.
    Captured,
    /// The order is paid by this payment.
    Succeeded,
    /// The provider declined.
    Failed,
    /// Abandoned before the provider took money.
    Cancelled,
    /// Money taken and given back.
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Cancelled => "cancelled",
            PaymentStatus::Refunded => "refunded",
        }
    }

    /// No further move is possible.
    pub fn is_final(self) -> bool {
        !matches!(self, PaymentStatus::Pending | PaymentStatus::Captured)
    }
}

/// A stored payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: String,
    /// Minor units.
    pub amount: i64,
    pub status: PaymentStatus,
    pub provider: String,
    pub provider_ref: Option<String>,
    pub refund_ref: Option<String>,
    /// Why it failed, was cancelled or was refunded.
    pub reason: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// A charge as the caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    pub order_id: String,
    pub amount: i64,
    pub idempotency_key: String,
    pub origin: ChargeOrigin,
}

/// Where a charge request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeOrigin {
    /// The public JSON API (`POST /api/v1/payments`), through the edge: a
    /// buyer paying a flash-sale order.
    Storefront,
    /// Another component over the mesh: checkout paying the order it
    /// placed, once it has held the order's stock.
    Component,
}

/// The payment id of a charge: derived from the payer and the
/// Idempotency-Key, so a retried charge finds its first attempt.
pub fn payment_id_for(user_id: &str, idempotency_key: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x7061_796d_656e_7473_2e66_6c61_7368_6d6c);
    Uuid::new_v5(
        &NAMESPACE,
        format!("{user_id}\n{idempotency_key}").as_bytes(),
    )
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such payment")
}

fn corrupt(id: &str, e: serde_json::Error) -> ApiError {
    tracing::error!(payment_id = id, error = %e, "stored payment does not decode");
    ApiError::internal("a stored payment cannot be read")
}

fn record_error(id: Uuid, e: RecordError) -> ApiError {
    e.answer("payment", &id.to_string())
}

/// The payment service.
pub struct Payments {
    store: Arc<dyn ServiceStore>,
    timers: Timers,
    provider: Arc<dyn PaymentProvider>,
    orders: Arc<dyn OrderDesk>,
    config: PaymentsConfig,
}

impl Payments {
    pub fn new(
        store: Arc<dyn ServiceStore>,
        provider: Arc<dyn PaymentProvider>,
        orders: Arc<dyn OrderDesk>,
        config: PaymentsConfig,
    ) -> Self {
        Payments {
            timers: Timers::new(Arc::clone(&store), Table::PaymentTimers),
            store,
            provider,
            orders,
            config,
        }
    }

    pub fn config(&self) -> &PaymentsConfig {
        &self.config
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    async fn load(&self, id: Uuid) -> Result<Option<(Payment, u64)>, ApiError> {
        records::load(&*self.store, Table::Payments, &id.to_string())
            .await
            .map_err(|e| record_error(id, e))
    }

    /// Moves the payment with a conditional write (`store::records`),
    /// stamping `updated_at` on every write.
    async fn moved(
        &self,
        id: Uuid,
        decide: impl Fn(&Payment) -> Step<Payment>,
    ) -> Result<(Payment, bool), ApiError> {
        let stamped = |p: &Payment| match decide(p) {
            Step::Write(next) => Step::Write(Payment {
                updated_at_ms: now_ms(),
                ..next
            }),
            Step::Keep => Step::Keep,
        };
        records::move_record(&*self.store, Table::Payments, &id.to_string(), stamped)
            .await
            .map_err(|e| record_error(id, e))
    }

    /// Charges the caller's order. The same Idempotency-Key again answers
    /// the payment it made (`true`: a replay) and charges nothing.
    pub async fn charge(
        &self,
        caller: &Identity,
        request: ChargeRequest,
    ) -> Result<(Payment, bool), ApiError> {
        let key = request.idempotency_key.as_str();
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::invalid(
                "the Idempotency-Key must be 1 to 128 visible ASCII characters",
            ));
        }
        if request.amount <= 0 {
            return Err(ApiError::invalid(
                "amount must be a positive number of minor units",
            ));
        }
        let order_id = Uuid::try_parse(&request.order_id)
            .map_err(|_| ApiError::new(ErrorCode::NotFound, "no such order"))?;
        let id = payment_id_for(&caller.user_id, key);
        if let Some((existing, _)) = self.load(id).await? {
            let existing = same_request(existing, order_id, request.amount)?;
            return Ok((self.resume(existing).await?, true));
        }
        // The order as its buyer sees it: another buyer's order is "no such order".
        let order = self.orders.get_order(caller, order_id).await?;
        if order.status != "pending_payment" {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the order is {}; only an unpaid order can be paid",
                    order.status
                ),
            ));
        }
        if order.source == "checkout" && request.origin == ChargeOrigin::Storefront {
            // Checkout pays its own order once the stock is held; paid
            // from here it could be paid while its lines are still held.
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this order is paid by its checkout: repeat POST /api/v1/checkout with the same Idempotency-Key",
            ));
        }
        if request.amount != order.total {
            return Err(ApiError::invalid(format!(
                "the amount {} does not equal the order total {}",
                request.amount, order.total
            )));
        }
        let now = now_ms();
        let payment = Payment {
            id,
            order_id,
            user_id: caller.user_id.clone(),
            amount: request.amount,
            status: PaymentStatus::Pending,
            provider: self.provider.name().to_owned(),
            provider_ref: None,
            refund_ref: None,
            reason: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let value = serde_json::to_vec(&payment).map_err(|e| corrupt(&id.to_string(), e))?;
        // The timer before the record: a crash (or a lost answer) from here
        // on is finished by the sweeper, whatever became of the insert (a
        // timer for a payment never written is dropped when it comes due).
        self.timers
            .schedule(self.first_retry(&payment), &id.to_string())
            .await?;
        if !self
            .store
            .insert(Table::Payments, &id.to_string(), value, None)
            .await?
        {
            // The same key, concurrently: that call owns the charge.
            let (existing, _) = self.load(id).await?.ok_or_else(not_found)?;
            return same_request(existing, order_id, request.amount).map(|p| (p, true));
        }
        metrics::counter!("flashmall_payments_started_total").increment(1);
        Ok((self.charge_pending(payment).await?, false))
    }

    /// When a payment still pending is given up.
    fn pending_deadline(&self, payment: &Payment) -> u64 {
        payment.created_at_ms + self.config.pending_timeout.as_millis() as u64
    }

    /// A pending payment's first timer: `capture_retry` after it was made
    /// (then every `capture_retry` while it pends), so one whose call
    /// stopped before charging is charged within seconds.
    fn first_retry(&self, payment: &Payment) -> u64 {
        (payment.created_at_ms + self.config.capture_retry.as_millis() as u64)
            .min(self.pending_deadline(payment))
    }

    /// Asks the provider to charge a pending payment (idempotent by the
    /// payment id) and applies its answer.
    async fn charge_pending(&self, payment: Payment) -> Result<Payment, ApiError> {
        match self.provider.charge(payment.id, payment.amount).await {
            Ok(outcome) => self.apply(payment.id, outcome).await,
            Err(e) => {
                // Unknown at the provider: the payment stays pending and the
                // timer asks the provider again.
                tracing::warn!(payment_id = %payment.id, error = %e, "provider call failed; left pending");
                Ok(payment)
            }
        }
    }

    /// The same key again, for a payment still pending: the call that
    /// wrote it may have stopped before it charged (a replica killed, an
    /// insert whose answer was lost), so the charge is made now, as the
    /// retrying payer asks, rather than left to the pending timer. The
    /// provider charges a payment id once, so a first call still running
    /// charges nothing twice.
    async fn resume(&self, payment: Payment) -> Result<Payment, ApiError> {
        if payment.status != PaymentStatus::Pending {
            return Ok(payment);
        }
        self.timers
            .schedule(self.first_retry(&payment), &payment.id.to_string())
            .await?;
        self.charge_pending(payment).await
    }

    /// Applies a provider's answer (at once or by callback).
    pub async fn apply(&self, id: Uuid, outcome: ChargeOutcome) -> Result<Payment, ApiError> {
        match outcome {
            ChargeOutcome::Pending => Ok(self.load(id).await?.ok_or_else(not_found)?.0),
            ChargeOutcome::Declined { reason } => {
                let (payment, wrote) = self
                    .moved(id, |p| match p.status {
                        PaymentStatus::Pending => Step::Write(Payment {
                            status: PaymentStatus::Failed,
                            reason: Some(reason.clone()),
                            ..p.clone()
                        }),
                        _ => Step::Keep,
                    })
                    .await?;
                if wrote {
                    metrics::counter!("flashmall_payments_finished_total", "status" => "failed")
                        .increment(1);
                }
                Ok(payment)
            }
            ChargeOutcome::Captured { provider_ref } => {
                let (payment, _) = self
                    .moved(id, |p| match p.status {
                        PaymentStatus::Pending => Step::Write(Payment {
                            status: PaymentStatus::Captured,
                            provider_ref: Some(provider_ref.clone()),
                            ..p.clone()
                        }),
                        _ => Step::Keep,
                    })
                    .await?;
                match payment.status {
                    PaymentStatus::Captured => self.confirm(payment).await,
                    // Cancelled or timed out while the provider decided, yet
                    // the money was taken: give it back.
                    PaymentStatus::Cancelled => {
                        self.refund(
                            payment,
                            "the payment was cancelled before the provider captured it",
                        )
                        .await
                    }
                    _ => Ok(payment),
                }
            }
        }
    }

    /// Asks the order service to take a captured payment; refunds when
    /// the order can no longer be paid by it.
    pub async fn confirm(&self, payment: Payment) -> Result<Payment, ApiError> {
        if payment.status != PaymentStatus::Captured {
            return Ok(payment);
        }
        // A crash from here is finished by this timer.
        let retry = now_ms() + self.config.capture_retry.as_millis() as u64;
        self.timers.schedule(retry, &payment.id.to_string()).await?;
        let answer = self
            .orders
            .mark_paid(payment.order_id, payment.id, payment.amount)
            .await?;
        match answer {
            MarkPaid::Paid | MarkPaid::AlreadyPaid => {
                let (payment, wrote) = self
                    .moved(payment.id, |p| match p.status {
                        PaymentStatus::Captured => Step::Write(Payment {
                            status: PaymentStatus::Succeeded,
                            ..p.clone()
                        }),
                        _ => Step::Keep,
                    })
                    .await?;
                if wrote {
                    metrics::counter!("flashmall_payments_finished_total", "status" => "succeeded")
                        .increment(1);
                }
                Ok(payment)
            }
            MarkPaid::NotPayable { status } => {
                let reason = match status.as_str() {
                    "expired" => "the order expired before the payment completed",
                    "cancelled" => "the order was cancelled before the payment completed",
                    "paid" => "the order was already paid by another payment",
                    _ => "the order could not be paid",
                };
                self.refund(payment, reason).await
            }
        }
    }

    /// Gives a captured payment's money back and records why.
    async fn refund(&self, payment: Payment, reason: &str) -> Result<Payment, ApiError> {
        let refund_ref = self
            .provider
            .refund(payment.id, payment.amount)
            .await
            .map_err(|e| {
                tracing::warn!(payment_id = %payment.id, error = %e, "refund failed; retried by the timer");
                ApiError::unavailable("the payment provider did not take the refund; it is retried")
            })?;
        let (payment, wrote) = self
            .moved(payment.id, |p| match p.status {
                PaymentStatus::Captured | PaymentStatus::Cancelled => Step::Write(Payment {
                    status: PaymentStatus::Refunded,
                    refund_ref: Some(refund_ref.clone()),
                    reason: Some(reason.to_owned()),
                    ..p.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        if wrote {
            metrics::counter!("flashmall_payments_finished_total", "status" => "refunded")
                .increment(1);
            tracing::info!(payment_id = %payment.id, order_id = %payment.order_id, reason, "payment refunded");
        }
        Ok(payment)
    }

    /// One of the caller's payments (admins: any).
    pub async fn get(&self, caller: &Identity, raw_id: &str) -> Result<Payment, ApiError> {
        let id = Uuid::try_parse(raw_id).map_err(|_| not_found())?;
        let (payment, _) = self.load(id).await?.ok_or_else(not_found)?;
        if payment.user_id != caller.user_id && !caller.is_admin() {
            return Err(not_found());
        }
        Ok(payment)
    }

    /// Cancels one of the caller's pending payments.
    pub async fn cancel(&self, caller: &Identity, raw_id: &str) -> Result<Payment, ApiError> {
        let payment = self.get(caller, raw_id).await?;
        if payment.status != PaymentStatus::Pending {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the payment is {}; only a pending payment can be cancelled",
                    payment.status.as_str()
                ),
            ));
        }
        self.abandon(payment.id, "cancelled by the payer").await
    }

    /// Stops a pending payment at the provider, then records it cancelled.
    /// When the provider already took the money, the payment goes on as
    /// captured instead.
    async fn abandon(&self, id: Uuid, reason: &str) -> Result<Payment, ApiError> {
        if self.provider.cancel(id).await.is_err() {
            let outcome = self.provider.status(id).await.map_err(|e| {
                tracing::warn!(payment_id = %id, error = %e, "provider status failed");
                ApiError::unavailable("the payment provider cannot be reached; retry")
            })?;
            let payment = self.apply(id, outcome).await?;
            if !payment.status.is_final() && payment.status != PaymentStatus::Pending {
                return Ok(payment);
            }
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the provider has already decided: the payment is {}",
                    payment.status.as_str()
                ),
            ));
        }
        let (payment, wrote) = self
            .moved(id, |p| match p.status {
                PaymentStatus::Pending => Step::Write(Payment {
                    status: PaymentStatus::Cancelled,
                    reason: Some(reason.to_owned()),
                    ..p.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        if wrote {
            metrics::counter!("flashmall_payments_finished_total", "status" => "cancelled")
                .increment(1);
        }
        Ok(payment)
    }

    /// Finishes what a due timer points at; `true` when the payment needs
    /// no timer any more.
    pub async fn finish(&self, id: Uuid) -> Result<bool, ApiError> {
        let Some((payment, _)) = self.load(id).await? else {
            return Ok(true);
        };
        match payment.status {
            PaymentStatus::Captured => {
                let payment = self.confirm(payment).await?;
                Ok(payment.status.is_final())
            }
            // The call that wrote it may have stopped before it charged
            // (a replica killed, a lost answer): charged now (the provider
            // charges a payment id once), until its deadline.
            PaymentStatus::Pending if now_ms() < self.pending_deadline(&payment) => {
                let payment = self.charge_pending(payment).await?;
                Ok(payment.status.is_final())
            }
            PaymentStatus::Pending => {
                let outcome = self.provider.status(id).await.map_err(|e| {
                    ApiError::unavailable(format!("the payment provider cannot be reached: {e}"))
                })?;
                let payment = match outcome {
                    ChargeOutcome::Pending => {
                        self.abandon(id, "timed out waiting for the payment provider")
                            .await?
                    }
                    decided => self.apply(id, decided).await?,
                };
                Ok(payment.status.is_final())
            }
            _ => Ok(true),
        }
    }
}

/// A repeated Idempotency-Key must repeat the request it was first used for.
fn same_request(existing: Payment, order_id: Uuid, amount: i64) -> Result<Payment, ApiError> {
    if existing.order_id == order_id && existing.amount == amount {
        Ok(existing)
    } else {
        Err(ApiError::new(
            ErrorCode::Conflict,
            "this Idempotency-Key was already used for a different payment",
        ))
    }
}
