//! The order service (steps 12–13 of the purchase path): orders made from
//! settled flash-sale reservations and from normal checkout, their
//! payment, their cancellation and their timed expiry.
//!
//! An order moves `pending_payment → paid | cancelled | expired`, and every
//! move is a conditional write on the order's version (a lightweight
//! transaction on ScyllaDB), so two replicas, or a retry, can never apply
//! two moves from one state: paying and expiring an order race, and exactly
//! one wins. A cancelled or expired order gives its units back (the
//! engine's Release for a flash-sale order, the product service's
//! ReleaseStock for a checkout order; both idempotent) and then records
//! `released`. A paid checkout order commits its stock hold and records
//! `committed`.
//!
//! A checkout order is payable only once all its stock is held: checkout
//! places it, then asks this service to hold its lines (`hold_stock`,
//! which records `stock_held` with the same conditional write as every
//! other move), and `mark_paid` refuses a checkout order without it. So a
//! payment that lands while the holds are still being taken (the order id
//! is derivable by its buyer) pays nothing, and a commit always finds
//! every hold it makes final.
//!
//! - `sweep.rs`: the expiry worker over durable timers (`crate::timers`).
//! - `stock.rs`: the engine and product clients that settle units.
//! - `http.rs`: the JSON API; `grpc.rs`: the gRPC API.
//!
//! Tables: `orders` (by id), `orders_by_user` (a user's orders, newest
//! first), `order_timers` (by due bucket).

pub mod config;
pub mod grpc;
pub mod http;
pub mod stock;
pub mod sweep;

use std::sync::Arc;
use std::time::Duration;

use flashmall_mesh::{ApiError, ErrorCode, Identity, now_ms};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::records::{self, RecordError, Step};
use crate::store::{RowRange, ServiceStore, Table};
use crate::timers::Timers;
use config::OrdersConfig;
use stock::StockKeeper;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    PendingPayment,
    Paid,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingPayment => "pending_payment",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    /// Cancelled or expired: the units go back on sale.
    pub fn is_closed(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Expired)
    }
}

/// Where an order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderSource {
    /// A flash-sale reservation, settled by the engine.
    FlashSale,
    /// Normal checkout of a cart, its stock held by the product service.
    Checkout,
}

impl OrderSource {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderSource::FlashSale => "flash_sale",
            OrderSource::Checkout => "checkout",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: String,
    pub quantity: i64,
    /// Minor units.
    pub unit_price: i64,
}

/// A stored order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: Uuid,
    pub user_id: String,
    pub status: OrderStatus,
    /// Minor units: the sum of the items.
    pub total: i64,
    pub items: Vec<OrderItem>,
    pub source: OrderSource,
    pub sale_id: Option<Uuid>,
    pub reservation_id: Option<Uuid>,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub paid_at_ms: Option<u64>,
    pub payment_id: Option<String>,
    pub closed_at_ms: Option<u64>,
    /// True once a cancelled or expired order's units are back on sale.
    pub released: bool,
    /// True once a paid checkout order's stock hold is committed.
    #[serde(default)]
    pub committed: bool,
    /// Checkout orders: true once every line's stock is held, which makes
    /// the order payable (flash-sale orders: see `stock_held()`).
    #[serde(default)]
    pub held: bool,
}

impl Order {
    /// Every unit of the order is held or settled for it: a flash-sale
    /// order's always (the engine settled them before the order existed),
    /// a checkout order's once `hold_stock` has held every line.
    pub fn stock_held(&self) -> bool {
        self.source == OrderSource::FlashSale || self.held
    }
}

/// A settled reservation to make an order of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleOrder {
    pub order_id: Uuid,
    pub reservation_id: Uuid,
    pub sale_id: Uuid,
    pub user_id: String,
    pub product_id: String,
    pub quantity: i64,
    pub unit_price: i64,
}

/// What `create_sale_orders` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Created {
    pub created: u32,
    pub existing: u32,
}

/// What marking an order paid found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaidOutcome {
    /// This call paid the order.
    Paid(Order),
    /// This payment had paid it already.
    AlreadyPaid(Order),
    /// Expired, cancelled, or paid by another payment: refund.
    NotPayable(Order),
}

/// One page of a user's orders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub orders: Vec<Order>,
    pub next: Option<String>,
}

/// The order service.
pub struct Orders {
    store: Arc<dyn ServiceStore>,
    timers: Timers,
    stock: Arc<dyn StockKeeper>,
    config: OrdersConfig,
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such order")
}

fn corrupt(id: &str, e: serde_json::Error) -> ApiError {
    tracing::error!(order_id = id, error = %e, "stored order does not decode");
    ApiError::internal("a stored order cannot be read")
}

fn record_error(id: Uuid, e: RecordError) -> ApiError {
    e.answer("order", &id.to_string())
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    // Same answer as a missing order: a malformed id names no order.
    Uuid::try_parse(raw).map_err(|_| not_found())
}

/// The index row of an order in its buyer's list: newest first by
/// creation time, ties broken by id.
fn by_user_sort(order: &Order) -> String {
    format!("{:013}/{}", order.created_at_ms, order.id)
}

impl Orders {
    pub fn new(
        store: Arc<dyn ServiceStore>,
        stock: Arc<dyn StockKeeper>,
        config: OrdersConfig,
    ) -> Self {
        Orders {
            timers: Timers::new(Arc::clone(&store), Table::OrderTimers),
            store,
            stock,
            config,
        }
    }

    pub fn config(&self) -> &OrdersConfig {
        &self.config
    }

    async fn load(&self, id: Uuid) -> Result<Option<(Order, u64)>, ApiError> {
        records::load(&*self.store, Table::Orders, &id.to_string())
            .await
            .map_err(|e| record_error(id, e))
    }

    /// Moves the order with a conditional write (`store::records`).
    /// Returns the order as it stands after, and whether this call wrote it.
    async fn moved(
        &self,
        id: Uuid,
        decide: impl Fn(&Order) -> Step<Order>,
    ) -> Result<(Order, bool), ApiError> {
        records::move_record(&*self.store, Table::Orders, &id.to_string(), decide)
            .await
            .map_err(|e| record_error(id, e))
    }

    /// Creates the orders of settled reservations (service callers only).
    /// Idempotent: an existing order is left as it is, and its index rows
    /// and expiry timer are written again (they may be what an interrupted
    /// earlier call did not write).
    pub async fn create_sale_orders(
        &self,
        caller: &Identity,
        orders: Vec<SaleOrder>,
    ) -> Result<Created, ApiError> {
        require_service(caller)?;
        for o in &orders {
            if o.quantity <= 0 || o.unit_price < 0 || !flashmall_mesh::valid_user_id(&o.user_id) {
                return Err(ApiError::invalid(format!(
                    "sale order {} is not valid: quantity must be positive, price not negative, and the buyer a valid user id",
                    o.order_id
                )));
            }
        }
        let results =
            futures::future::join_all(orders.into_iter().map(|o| self.create_one(o))).await;
        let mut created = Created::default();
        for r in results {
            if r? {
                created.created += 1;
            } else {
                created.existing += 1;
            }
        }
        metrics::counter!("flashmall_orders_created_total").increment(created.created as u64);
        Ok(created)
    }

    async fn create_one(&self, o: SaleOrder) -> Result<bool, ApiError> {
        let now = now_ms();
        let total = total_of([(o.unit_price, o.quantity)])
            .ok_or_else(|| ApiError::invalid("the order total overflows"))?;
        let order = Order {
            id: o.order_id,
            user_id: o.user_id,
            status: OrderStatus::PendingPayment,
            total,
            items: vec![OrderItem {
                product_id: o.product_id,
                quantity: o.quantity,
                unit_price: o.unit_price,
            }],
            source: OrderSource::FlashSale,
            sale_id: Some(o.sale_id),
            reservation_id: Some(o.reservation_id),
            created_at_ms: now,
            // The time to pay counts from the order's creation: a buyer
            // cannot pay an order that does not exist yet.
            expires_at_ms: now + self.config.payment_timeout.as_millis() as u64,
            paid_at_ms: None,
            payment_id: None,
            closed_at_ms: None,
            released: false,
            committed: false,
            held: false,
        };
        Ok(self.store_new(order).await?.1)
    }

    /// Stores a new order with its index row and expiry timer; an order
    /// already under its id is kept as it is (its row and timer are
    /// written again). Returns the order as stored and whether this call
    /// created it.
    async fn store_new(&self, order: Order) -> Result<(Order, bool), ApiError> {
        let key = order.id.to_string();
        let value = serde_json::to_vec(&order).map_err(|e| corrupt(&key, e))?;
        // The record first: an index row or a timer never points at nothing
        // for long, and the record decides everything.
        let created = self.store.insert(Table::Orders, &key, value, None).await?;
        let order = if created {
            order
        } else {
            self.load(order.id).await?.ok_or_else(not_found)?.0
        };
        self.store
            .put_row(
                Table::OrdersByUser,
                &order.user_id,
                &by_user_sort(&order),
                key.into_bytes(),
            )
            .await?;
        if order.status == OrderStatus::PendingPayment
            || (order.status.is_closed() && !order.released)
        {
            self.timers
                .schedule(order.expires_at_ms, &order.id.to_string())
                .await?;
        }
        Ok((order, created))
    }

    /// Places a normal-checkout order for the caller (the checkout service
    /// calls with the buyer's identity). Idempotent by `order_id`: an
    /// existing order of the caller's answers as it stands.
    pub async fn place(
        &self,
        caller: &Identity,
        order_id: &str,
        items: Vec<OrderItem>,
    ) -> Result<(Order, bool), ApiError> {
        if caller.is_service() || !flashmall_mesh::valid_user_id(&caller.user_id) {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "an order is placed for a buyer's verified identity",
            ));
        }
        let id =
            Uuid::try_parse(order_id).map_err(|_| ApiError::invalid("order_id must be a UUID"))?;
        if items.is_empty() || items.len() > PLACE_ITEMS_MAX {
            return Err(ApiError::invalid(format!(
                "an order has 1 to {PLACE_ITEMS_MAX} items"
            )));
        }
        if items.iter().any(|item| {
            Uuid::try_parse(&item.product_id).is_err() || item.quantity <= 0 || item.unit_price <= 0
        }) {
            return Err(ApiError::invalid(
                "every item needs a product id, a positive quantity and a positive unit price",
            ));
        }
        let total = total_of(items.iter().map(|i| (i.unit_price, i.quantity)))
            .ok_or_else(|| ApiError::invalid("the order total overflows"))?;
        let now = now_ms();
        let order = Order {
            id,
            user_id: caller.user_id.clone(),
            status: OrderStatus::PendingPayment,
            total,
            items,
            source: OrderSource::Checkout,
            sale_id: None,
            reservation_id: None,
            created_at_ms: now,
            expires_at_ms: now + self.config.payment_timeout.as_millis() as u64,
            paid_at_ms: None,
            payment_id: None,
            closed_at_ms: None,
            released: false,
            committed: false,
            held: false,
        };
        let (order, created) = self.store_new(order).await?;
        if order.user_id != caller.user_id || order.source != OrderSource::Checkout {
            // An id derived from another buyer's checkout: not this one's.
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "this order id belongs to another order",
            ));
        }
        if created {
            metrics::counter!("flashmall_orders_created_total").increment(1);
        }
        Ok((order, created))
    }

    /// Holds the stock of the caller's pending checkout order, every line
    /// or none, and records it: from then on the order can be paid.
    /// Idempotent (the product service takes a hold once per order).
    pub async fn hold_stock(&self, caller: &Identity, raw_id: &str) -> Result<Order, ApiError> {
        let id = parse_id(raw_id)?;
        let (order, _) = self.load(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        if order.source != OrderSource::Checkout {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "only a checkout order's stock is held; a flash-sale order's units are settled",
            ));
        }
        if order.held {
            return Ok(order);
        }
        if order.status != OrderStatus::PendingPayment {
            return Err(closed_for_hold(&order));
        }
        // A hold racing this order's close is safe both ways: a release
        // before the hold leaves a tombstone the hold finds, and a release
        // after it gives the held units back.
        self.stock.hold(&order).await?;
        let (order, _) = self
            .moved(id, |o| match o.status {
                OrderStatus::PendingPayment if !o.held => Step::Write(Order {
                    held: true,
                    ..o.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        if !order.held {
            // Closed while the hold was taken: its release gives the
            // units back (or has already).
            return Err(closed_for_hold(&order));
        }
        Ok(order)
    }

    /// One order, for its buyer, an admin or a service.
    pub async fn get(&self, caller: &Identity, raw_id: &str) -> Result<Order, ApiError> {
        let id = parse_id(raw_id)?;
        let (order, _) = self.load(id).await?.ok_or_else(not_found)?;
        visible(caller, &order)?;
        Ok(order)
    }

    /// The caller's orders, newest first.
    pub async fn list(
        &self,
        caller: &Identity,
        page_size: u32,
        token: Option<&str>,
    ) -> Result<Page, ApiError> {
        let size = match page_size {
            0 => 20,
            1..=100 => page_size as usize,
            _ => return Err(ApiError::invalid("page_size must be between 1 and 100")),
        };
        if let Some(t) = token
            && (t.len() > 64
                || t.split_once('/')
                    .is_none_or(|(ms, _)| ms.parse::<u64>().is_err()))
        {
            return Err(ApiError::invalid(
                "page_token is not one this service issued",
            ));
        }
        let rows = self
            .store
            .rows(
                Table::OrdersByUser,
                &caller.user_id,
                RowRange {
                    after: token.map(str::to_owned),
                    up_to: None,
                    limit: size,
                    descending: true,
                },
            )
            .await?;
        let next = (rows.len() == size)
            .then(|| rows.last().map(|r| r.sort.clone()))
            .flatten();
        let loads = rows.iter().map(|row| async move {
            let id = std::str::from_utf8(&row.value)
                .ok()
                .and_then(|s| Uuid::try_parse(s).ok());
            match id {
                Some(id) => self.load(id).await,
                None => Ok(None),
            }
        });
        let mut orders = Vec::with_capacity(rows.len());
        for loaded in futures::future::join_all(loads).await {
            if let Some((order, _)) = loaded?
                && order.user_id == caller.user_id
            {
                orders.push(order);
            }
        }
        Ok(Page { orders, next })
    }

    /// Cancels the caller's unpaid order and gives its units back.
    pub async fn cancel(&self, caller: &Identity, raw_id: &str) -> Result<Order, ApiError> {
        let id = parse_id(raw_id)?;
        let now = now_ms();
        // Ownership is decided on the state the move reads: one read, and
        // another buyer's order is never written.
        let (order, _) = self
            .moved(id, |o| match o.status {
                OrderStatus::PendingPayment if visible(caller, o).is_ok() => Step::Write(Order {
                    status: OrderStatus::Cancelled,
                    closed_at_ms: Some(now),
                    ..o.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        visible(caller, &order)?;
        match order.status {
            OrderStatus::Cancelled => {}
            OrderStatus::Paid => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the order is paid and can no longer be cancelled",
                ));
            }
            OrderStatus::Expired => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    "the order has expired; its units are already back on sale",
                ));
            }
            OrderStatus::PendingPayment => {
                return Err(ApiError::internal("the order did not move"));
            }
        }
        metrics::counter!("flashmall_orders_closed_total", "status" => "cancelled").increment(1);
        Ok(self.release_or_schedule(order).await)
    }

    /// Marks an order paid by `payment_id` (service callers only). Paying
    /// and expiring race through the same conditional write: one wins.
    pub async fn mark_paid(
        &self,
        caller: &Identity,
        raw_id: &str,
        payment_id: &str,
        amount: i64,
    ) -> Result<PaidOutcome, ApiError> {
        require_service(caller)?;
        if payment_id.is_empty() || payment_id.len() > 64 {
            return Err(ApiError::invalid("payment_id must be 1 to 64 characters"));
        }
        let id = parse_id(raw_id)?;
        let now = now_ms();
        let (order, wrote) = self
            .moved(id, |o| match o.status {
                // A wrong amount writes nothing.
                OrderStatus::PendingPayment if amount != o.total => Step::Keep,
                // An order past its expiry is not payable, even when the
                // sweeper has not come by yet: it is expired here, by the
                // same conditional write as paying. Answering "not payable"
                // without writing would let another call of this payment,
                // one that decided to pay before the deadline and whose
                // write is still on its way (a timeout, a retry), pay the
                // order after this answer had the payment refunded.
                OrderStatus::PendingPayment if o.expires_at_ms <= now => {
                    Step::Write(expired(o, now))
                }
                // Nor is one whose stock is not all held yet.
                OrderStatus::PendingPayment if o.stock_held() => Step::Write(Order {
                    status: OrderStatus::Paid,
                    paid_at_ms: Some(now),
                    payment_id: Some(payment_id.to_owned()),
                    ..o.clone()
                }),
                _ => Step::Keep,
            })
            .await?;
        if amount != order.total {
            return Err(ApiError::invalid(format!(
                "the amount {amount} does not equal the order total {}",
                order.total
            )));
        }
        if wrote && order.status == OrderStatus::Expired {
            // Its expiry timer (still there: only paying removes it) gives
            // the units back.
            metrics::counter!("flashmall_orders_closed_total", "status" => "expired").increment(1);
            tracing::debug!(order_id = %id, "order expired when a payment came after its time");
            return Ok(PaidOutcome::NotPayable(order));
        }
        if wrote {
            metrics::counter!("flashmall_orders_paid_total").increment(1);
            if order.source == OrderSource::Checkout {
                // The expiry timer stays until the hold is committed: it
                // retries the commit when this one fails.
                return Ok(PaidOutcome::Paid(self.commit(&order).await));
            }
            // The expiry timer finds a paid order and drops itself; removing
            // it here only saves the sweeper a read.
            let _ = self
                .timers
                .remove(&crate::timers::Timer {
                    due_ms: order.expires_at_ms,
                    id: order.id.to_string(),
                })
                .await;
            return Ok(PaidOutcome::Paid(order));
        }
        Ok(
            if order.status == OrderStatus::Paid && order.payment_id.as_deref() == Some(payment_id)
            {
                PaidOutcome::AlreadyPaid(order)
            } else {
                PaidOutcome::NotPayable(order)
            },
        )
    }

    /// Expires an unpaid order whose time is up (the sweeper; `release`
    /// then gives its units back). Returns the order as it stands, moved
    /// or not.
    pub async fn expire(&self, id: Uuid) -> Result<Order, ApiError> {
        let now = now_ms();
        let (order, wrote) = self
            .moved(id, |o| match o.status {
                OrderStatus::PendingPayment if o.expires_at_ms <= now => {
                    Step::Write(expired(o, now))
                }
                _ => Step::Keep,
            })
            .await?;
        if wrote {
            metrics::counter!("flashmall_orders_closed_total", "status" => "expired").increment(1);
            tracing::debug!(order_id = %id, "order expired");
        }
        Ok(order)
    }

    /// Gives a closed order's units back through the engine and records it.
    pub async fn release(&self, order: &Order) -> Result<Order, ApiError> {
        if !order.status.is_closed() || order.released {
            return Ok(order.clone());
        }
        self.stock.release(order).await?;
        let (order, _) = self
            .moved(order.id, |o| {
                if o.status.is_closed() && !o.released {
                    Step::Write(Order {
                        released: true,
                        ..o.clone()
                    })
                } else {
                    Step::Keep
                }
            })
            .await?;
        Ok(order)
    }

    /// Commits a paid checkout order's stock hold and records it; on
    /// failure the order's timer retries (the units stay held either way,
    /// so nothing is oversold meanwhile).
    pub async fn commit(&self, order: &Order) -> Order {
        if order.status != OrderStatus::Paid
            || order.source != OrderSource::Checkout
            || order.committed
        {
            return order.clone();
        }
        let committed = async {
            self.stock.commit(order).await?;
            let (order, _) = self
                .moved(order.id, |o| {
                    if o.committed {
                        Step::Keep
                    } else {
                        Step::Write(Order {
                            committed: true,
                            ..o.clone()
                        })
                    }
                })
                .await?;
            let _ = self
                .timers
                .remove(&crate::timers::Timer {
                    due_ms: order.expires_at_ms,
                    id: order.id.to_string(),
                })
                .await;
            Ok::<Order, ApiError>(order)
        };
        match committed.await {
            Ok(order) => order,
            Err(e) => {
                tracing::warn!(order_id = %order.id, error = %e.message, "stock commit failed; the order's timer retries");
                order.clone()
            }
        }
    }

    /// Releases now; when the engine cannot be reached, a timer retries
    /// later (the order stays closed either way: the buyer's cancel holds).
    async fn release_or_schedule(&self, order: Order) -> Order {
        match self.release(&order).await {
            Ok(released) => released,
            Err(e) => {
                tracing::warn!(order_id = %order.id, error = %e.message, "release failed; retrying later");
                let due = now_ms() + self.config.release_retry.as_millis() as u64;
                if let Err(e) = self.timers.schedule(due, &order.id.to_string()).await {
                    // The expiry timer is still in place and retries too.
                    tracing::warn!(order_id = %order.id, error = %e, "cannot schedule the release retry");
                }
                order
            }
        }
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    pub fn release_retry(&self) -> Duration {
        self.config.release_retry
    }
}

/// The total of `(unit_price, quantity)` lines in minor units; `None`
/// when it overflows.
pub fn total_of(lines: impl IntoIterator<Item = (i64, i64)>) -> Option<i64> {
    lines.into_iter().try_fold(0i64, |sum, (price, quantity)| {
        price
            .checked_mul(quantity)
            .and_then(|line| sum.checked_add(line))
    })
}

fn closed_for_hold(order: &Order) -> ApiError {
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "the order is {}; its stock can no longer be held",
            order.status.as_str()
        ),
    )
}

/// Most items of one placed order.
pub const PLACE_ITEMS_MAX: usize = 100;

fn require_service(caller: &Identity) -> Result<(), ApiError> {
    if caller.is_service() || caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "only flashmall components may call this",
        ))
    }
}

/// Buyers see their own orders; admins and components see every order.
/// Another buyer's order answers as missing, so ids leak nothing.
/// `o` expired at `now`: the move the sweeper makes, and a payment that
/// comes after the order's time.
fn expired(o: &Order, now: u64) -> Order {
    Order {
        status: OrderStatus::Expired,
        closed_at_ms: Some(now),
        ..o.clone()
    }
}

fn visible(caller: &Identity, order: &Order) -> Result<(), ApiError> {
    if order.user_id == caller.user_id || caller.is_admin() || caller.is_service() {
        Ok(())
    } else {
        Err(not_found())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EmbeddedStore;

    /// Gives back and commits nothing: these tests look at the order only.
    struct NoStock;

    #[async_trait::async_trait]
    impl StockKeeper for NoStock {
        async fn hold(&self, _: &Order) -> Result<(), ApiError> {
            Ok(())
        }
        async fn release(&self, _: &Order) -> Result<(), ApiError> {
            Ok(())
        }
        async fn commit(&self, _: &Order) -> Result<(), ApiError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_payment_after_the_deadline_expires_the_order_so_no_earlier_decision_pays_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("services.redb")).unwrap());
        let orders = Orders::new(
            store,
            Arc::new(NoStock),
            OrdersConfig {
                payment_timeout: Duration::from_millis(50),
                ..OrdersConfig::default()
            },
        );
        let engine = Identity::service("engine", Duration::from_secs(60));
        let order_id = Uuid::now_v7();
        let sale_order = SaleOrder {
            order_id,
            reservation_id: Uuid::now_v7(),
            sale_id: Uuid::now_v7(),
            user_id: Uuid::now_v7().to_string(),
            product_id: "p1".into(),
            quantity: 1,
            unit_price: 500,
        };
        orders
            .create_sale_orders(&engine, vec![sale_order])
            .await
            .unwrap();
        let payments = Identity::service("payments", Duration::from_secs(60));
        let id = order_id.to_string();
        let deadline = orders
            .load(order_id)
            .await
            .unwrap()
            .unwrap()
            .0
            .expires_at_ms;
        while now_ms() <= deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Past its time, before the sweeper came: not payable, and expired
        // by this call, so the order can no longer move to paid.
        let first = orders
            .mark_paid(&payments, &id, "pay-1", 500)
            .await
            .unwrap();
        let PaidOutcome::NotPayable(order) = first else {
            panic!("a payment past the deadline was taken: {first:?}");
        };
        assert_eq!(order.status, OrderStatus::Expired);
        let (stored, _) = orders.load(order_id).await.unwrap().unwrap();
        assert_eq!(stored.status, OrderStatus::Expired);
        // The same payment asking again (its other call, late) is refused
        // on the order as it now stands.
        let again = orders
            .mark_paid(&payments, &id, "pay-1", 500)
            .await
            .unwrap();
        assert!(
            matches!(&again, PaidOutcome::NotPayable(o) if o.status == OrderStatus::Expired),
            "{again:?}"
        );
    }
}
