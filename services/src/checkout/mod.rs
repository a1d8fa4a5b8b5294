//! The checkout service: the caller's cart becomes a paid order.
//!
//! One checkout, keyed by the buyer and the Idempotency-Key, runs these
//! steps; each is idempotent, and the checkout record (`Table::Checkouts`)
//! remembers how far it got, so the same key again finishes an interrupted
//! checkout or answers a finished one without doing anything twice:
//!
//! 1. read the cart, and the catalogue's current prices (never a client's);
//! 2. record the checkout: its lines, total and derived order id;
//! 3. place the order (`PlaceOrder`, idempotent by that id). From here the
//!    order's expiry covers every failure: an order nobody pays expires,
//!    and its stock hold is released;
//! 4. hold the stock (the order service's `HoldOrderStock`, all lines or
//!    none): when a product is short, the order is cancelled and the
//!    checkout fails `out_of_stock`. Until this step has answered, the
//!    order cannot be paid, however its buyer tries: the order service
//!    pays a checkout order only once all its stock is held, and the
//!    payment API refuses a checkout order outright (it is paid here);
//! 5. charge the order through the payment service (`Charge`, idempotent
//!    by a key derived from the checkout). Succeeded: the order is paid
//!    (the order service commits the hold). Declined: the order is
//!    cancelled (its units come back), the cart is left as it was, and the
//!    checkout fails `payment_declined`. Pending at the provider: the
//!    answer says so (202); the same key later reports the outcome;
//! 6. take what was bought out of the cart (once per checkout; items added
//!    meanwhile stay).
//!
//! A payment captured after its order expired is refunded by the payment
//! service, so no money is kept for an unpaid order.
//!
//! - `peers.rs`: the cart, order and payment clients.
//! - `http.rs`: `POST /api/v1/checkout`; `grpc.rs`: `CheckoutService`.

pub mod config;
pub mod grpc;
pub mod http;
pub mod peers;

use std::collections::HashMap;
use std::sync::Arc;

use flashmall_mesh::{ApiError, ErrorCode, Identity, now_ms};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::products::client::CatalogClient;
use crate::store::records::{self, Step};
use crate::store::{ServiceStore, Table};
use peers::Peers;

/// Where a checkout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutStatus {
    /// Under way, or waiting for the payment provider.
    Open,
    /// The order is paid.
    Paid,
    /// It ended without a paid order (`failure` says why).
    Failed,
}

/// One bought product at the catalogue's price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: String,
    pub quantity: i64,
    /// Minor units.
    pub unit_price: i64,
}

/// A stored checkout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    pub id: Uuid,
    pub user_id: String,
    pub order_id: Uuid,
    pub lines: Vec<Line>,
    /// Minor units.
    pub total: i64,
    pub status: CheckoutStatus,
    pub payment_id: Option<String>,
    /// Why it failed: a stable error code and a message.
    pub failure: Option<(String, String)>,
    /// True once the bought items are out of the cart.
    pub cart_cleared: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

/// What a checkout call answers.
#[derive(Debug, Clone)]
pub struct Answer {
    pub checkout: Checkout,
    /// The same Idempotency-Key was used before.
    pub replayed: bool,
}

impl Answer {
    /// `paid`, `payment_pending` or `failed`.
    pub fn status(&self) -> &'static str {
        match self.checkout.status {
            CheckoutStatus::Paid => "paid",
            CheckoutStatus::Open => "payment_pending",
            CheckoutStatus::Failed => "failed",
        }
    }

    /// The error a failed checkout answers with.
    pub fn error(&self) -> Option<ApiError> {
        let (code, message) = self.checkout.failure.as_ref()?;
        Some(ApiError::new(
            ErrorCode::parse(code).unwrap_or(ErrorCode::Conflict),
            message.clone(),
        ))
    }
}

/// The checkout id of a buyer's Idempotency-Key.
pub fn checkout_id_for(user_id: &str, idempotency_key: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6368_6563_6b6f_7574_2e66_6c61_7368_6d6c);
    Uuid::new_v5(
        &NAMESPACE,
        format!("{user_id}\n{idempotency_key}").as_bytes(),
    )
}

/// The order id of a checkout.
pub fn order_id_for(checkout_id: Uuid) -> Uuid {
    Uuid::new_v5(&checkout_id, b"order")
}

/// The checkout service.
pub struct Checkouts {
    store: Arc<dyn ServiceStore>,
    catalog: CatalogClient,
    peers: Peers,
    max_body_bytes: usize,
}

fn record_error(id: Uuid, e: records::RecordError) -> ApiError {
    e.answer("checkout", &id.to_string())
}

impl Checkouts {
    pub fn new(
        store: Arc<dyn ServiceStore>,
        catalog: CatalogClient,
        peers: Peers,
        max_body_bytes: usize,
    ) -> Self {
        Checkouts {
            store,
            catalog,
            peers,
            max_body_bytes,
        }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    /// Checks out the caller's cart under `idempotency_key`.
    pub async fn checkout(
        &self,
        caller: &Identity,
        idempotency_key: &str,
    ) -> Result<Answer, ApiError> {
        if caller.is_service() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "checkout is for buyers; call with a buyer's identity",
            ));
        }
        let key = idempotency_key;
        if key.is_empty() || key.len() > 128 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::invalid(
                "the Idempotency-Key header must be 1 to 128 visible ASCII characters",
            ));
        }
        let id = checkout_id_for(&caller.user_id, key);
        if let Some((existing, _)) =
            records::load::<Checkout>(&*self.store, Table::Checkouts, &id.to_string())
                .await
                .map_err(|e| record_error(id, e))?
        {
            return self.resume(caller, existing, true).await;
        }
        let lines = self.priced_cart(caller).await?;
        let total = crate::orders::total_of(lines.iter().map(|l| (l.unit_price, l.quantity)))
            .ok_or_else(|| ApiError::invalid("the cart's total overflows"))?;
        let now = now_ms();
        let checkout = Checkout {
            id,
            user_id: caller.user_id.clone(),
            order_id: order_id_for(id),
            lines,
            total,
            status: CheckoutStatus::Open,
            payment_id: None,
            failure: None,
            cart_cleared: false,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let value = serde_json::to_vec(&checkout)
            .map_err(|e| ApiError::internal(format!("a checkout does not encode: {e}")))?;
        let created = self
            .store
            .insert(Table::Checkouts, &id.to_string(), value, None)
            .await?;
        if !created {
            // The same key, concurrently: go on from what that call stored.
            let (existing, _) =
                records::load::<Checkout>(&*self.store, Table::Checkouts, &id.to_string())
                    .await
                    .map_err(|e| record_error(id, e))?
                    .ok_or_else(|| ApiError::internal("a checkout vanished"))?;
            return self.resume(caller, existing, true).await;
        }
        metrics::counter!("flashmall_checkouts_started_total").increment(1);
        self.resume(caller, checkout, false).await
    }

    /// The cart's lines at the catalogue's current prices.
    async fn priced_cart(&self, caller: &Identity) -> Result<Vec<Line>, ApiError> {
        let items = self.peers.cart(caller).await?;
        if items.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "your cart is empty; add items before checking out",
            ));
        }
        let ids: Vec<String> = items.iter().map(|(id, _)| id.clone()).collect();
        let found = self.catalog.batch_get(&ids).await?;
        let prices: HashMap<&str, i64> = found.iter().map(|p| (p.id.as_str(), p.price)).collect();
        items
            .into_iter()
            .map(
                |(product_id, quantity)| match prices.get(product_id.as_str()) {
                    Some(&unit_price) => Ok(Line {
                        product_id,
                        quantity,
                        unit_price,
                    }),
                    None => Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!("product {product_id} is no longer sold; remove it from your cart"),
                    )),
                },
            )
            .collect()
    }

    /// Moves the checkout record; returns it as it stands after.
    async fn moved(
        &self,
        id: Uuid,
        decide: impl Fn(&Checkout) -> Step<Checkout>,
    ) -> Result<Checkout, ApiError> {
        let stamped = |c: &Checkout| match decide(c) {
            Step::Write(next) => Step::Write(Checkout {
                updated_at_ms: now_ms(),
                ..next
            }),
            Step::Keep => Step::Keep,
        };
        records::move_record(&*self.store, Table::Checkouts, &id.to_string(), stamped)
            .await
            .map(|(c, _)| c)
            .map_err(|e| record_error(id, e))
    }

    /// Ends an open checkout as failed with `error`.
    async fn fail(&self, checkout: &Checkout, error: &ApiError) -> Result<Checkout, ApiError> {
        let failure = (error.code.as_str().to_owned(), error.message.clone());
        let after = self
            .moved(checkout.id, |c| match c.status {
                CheckoutStatus::Open => Step::Write(Checkout {
                    status: CheckoutStatus::Failed,
                    failure: Some(failure.clone()),
                    ..c.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        metrics::counter!("flashmall_checkouts_finished_total", "status" => "failed", "code" => error.code.as_str()).increment(1);
        Ok(after)
    }

    /// Runs a checkout's remaining steps (see the module's docs).
    async fn resume(
        &self,
        caller: &Identity,
        checkout: Checkout,
        replayed: bool,
    ) -> Result<Answer, ApiError> {
        if checkout.user_id != caller.user_id {
            return Err(ApiError::internal(
                "a checkout id names another buyer's checkout",
            ));
        }
        let answer = |checkout| Ok(Answer { checkout, replayed });
        let checkout = match checkout.status {
            CheckoutStatus::Failed => return answer(checkout),
            CheckoutStatus::Paid => checkout,
            CheckoutStatus::Open => self.advance(caller, checkout).await?,
        };
        if checkout.status == CheckoutStatus::Paid && !checkout.cart_cleared {
            return answer(self.clear_cart(caller, checkout).await);
        }
        answer(checkout)
    }

    /// Steps 3 to 5 of an open checkout.
    async fn advance(&self, caller: &Identity, checkout: Checkout) -> Result<Checkout, ApiError> {
        let order_id = checkout.order_id.to_string();
        let order = self.peers.place(caller, &order_id, &checkout.lines).await?;
        match order.status.as_str() {
            "pending_payment" => {}
            "paid" => return self.mark_paid(&checkout, None).await,
            closed => {
                let e = ApiError::new(
                    ErrorCode::Conflict,
                    format!("the checkout's order is {closed}; check out again with a new key"),
                );
                return self.fail(&checkout, &e).await;
            }
        }
        if let Err(e) = self.peers.hold_stock(caller, &order_id).await {
            if matches!(e.code, ErrorCode::OutOfStock | ErrorCode::Conflict) {
                self.close_order(caller, &order_id).await;
                return self.fail(&checkout, &e).await;
            }
            return Err(e);
        }
        let charge_key = format!("checkout:{}", checkout.id);
        let payment = self
            .peers
            .charge(caller, &order_id, checkout.total, &charge_key)
            .await?;
        match payment.status.as_str() {
            "succeeded" => self.mark_paid(&checkout, Some(payment.id)).await,
            "failed" | "cancelled" => {
                self.close_order(caller, &order_id).await;
                let reason = if payment.reason.is_empty() {
                    "the payment was declined".to_owned()
                } else {
                    payment.reason
                };
                let e = ApiError::new(
                    ErrorCode::PaymentDeclined,
                    format!("{reason}; your cart is unchanged and the order is cancelled"),
                );
                let failed = self.with_payment(&checkout, payment.id).await?;
                self.fail(&failed, &e).await
            }
            "refunded" => {
                let e = ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "the order closed before the payment completed; it was refunded ({})",
                        payment.reason
                    ),
                );
                self.fail(&checkout, &e).await
            }
            // pending or captured: the provider or the order service has
            // not decided yet; the same key later reports the outcome.
            _ => self.with_payment(&checkout, payment.id).await,
        }
    }

    async fn with_payment(
        &self,
        checkout: &Checkout,
        payment_id: String,
    ) -> Result<Checkout, ApiError> {
        self.moved(checkout.id, |c| {
            if c.payment_id.as_deref() == Some(payment_id.as_str()) {
                Step::Keep
            } else {
                Step::Write(Checkout {
                    payment_id: Some(payment_id.clone()),
                    ..c.clone()
                })
            }
        })
        .await
    }

    async fn mark_paid(
        &self,
        checkout: &Checkout,
        payment_id: Option<String>,
    ) -> Result<Checkout, ApiError> {
        let after = self
            .moved(checkout.id, |c| match c.status {
                CheckoutStatus::Open => Step::Write(Checkout {
                    status: CheckoutStatus::Paid,
                    payment_id: payment_id.clone().or_else(|| c.payment_id.clone()),
                    ..c.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        metrics::counter!("flashmall_checkouts_finished_total", "status" => "paid", "code" => "")
            .increment(1);
        Ok(after)
    }

    /// Cancels the checkout's unpaid order so its units come back at once;
    /// when that fails the order expires and they come back then.
    async fn close_order(&self, caller: &Identity, order_id: &str) {
        if let Err(e) = self.peers.cancel(caller, order_id).await {
            tracing::warn!(order_id, error = %e, "cancelling a failed checkout's order failed; it expires instead");
        }
    }

    /// Step 6: takes what was bought out of the cart; on failure the paid
    /// answer stands and the same key retries it.
    async fn clear_cart(&self, caller: &Identity, checkout: Checkout) -> Checkout {
        let id = checkout.id.to_string();
        if let Err(e) = self
            .peers
            .take_from_cart(caller, &id, &checkout.lines)
            .await
        {
            tracing::warn!(checkout_id = %id, error = %e, "clearing the cart after checkout failed");
            return checkout;
        }
        match self
            .moved(checkout.id, |c| {
                if c.cart_cleared {
                    Step::Keep
                } else {
                    Step::Write(Checkout {
                        cart_cleared: true,
                        ..c.clone()
                    })
                }
            })
            .await
        {
            Ok(after) => after,
            Err(e) => {
                tracing::warn!(checkout_id = %id, error = %e, "recording the cleared cart failed");
                checkout
            }
        }
    }
}
