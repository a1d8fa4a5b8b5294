//! Stock holds of normal checkout: the documented conditional-write path
//! that keeps normal checkout from overselling (the flash sale has the
//! engine's ledger; regular stock lives on the product record).
//!
//! A hold takes units off a product's `stock` for one order, with a
//! conditional write of the product record that also records the hold in
//! the record's `holds` map. Because the count and the hold change in the
//! same write, a hold is applied once however often it is retried, and
//! two checkouts of the last unit cannot both take it: one write wins, the
//! other reads the new count and finds it short.
//!
//! A hold is then settled once: committed (the order was paid: the units
//! stay sold) or released (the order was cancelled or expired: the units
//! come back). Committing a hold that was never taken, or was released,
//! is an error: it would sell units nobody holds. A settled hold stays in the map, as a tombstone, until its
//! deadline (the order's expiry) plus a margin, and no hold is taken past
//! its deadline, so a late or repeated hold request after a release finds
//! the tombstone and takes nothing. A release that arrives before its hold
//! (an order cancelled while checkout was still holding) leaves a tombstone
//! too, for the same reason.
//!
//! A multi-item hold is all or nothing: when one product is short, the
//! lines already held are released and the caller learns which product
//! was short.

use flashmall_mesh::{ApiError, ErrorCode, Identity, now_ms};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Product, Products, record_error};
use crate::store::Table;
use crate::store::records::{self, RecordError, Step};

/// Most lines of one hold (the cart's item limit).
pub const HOLD_LINES_MAX: usize = 100;
/// A hold must leave at least this much time before its deadline.
const DEADLINE_LEAD_MS: u64 = 1_000;
/// How long past its deadline a settled hold is remembered (clock skew
/// between replicas).
const MEMORY_MARGIN_MS: u64 = 60_000;

/// Where a hold is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// The units are off `stock`, for the order to pay.
    Held,
    /// The order was paid: the units are sold.
    Committed,
    /// The units came back (or never left: released before held).
    Released,
}

/// One order's hold on a product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub quantity: i64,
    pub state: HoldState,
    /// The deadline it was taken with; a settled hold is forgotten after.
    pub until_ms: u64,
}

/// One product's units in a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLine {
    pub product_id: String,
    pub quantity: i64,
}

/// How a hold is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Commit,
    Release,
}

/// A checked hold request.
struct Lines(Vec<(Uuid, i64)>);

fn check(hold_id: &str, lines: &[StockLine]) -> Result<Lines, ApiError> {
    Uuid::try_parse(hold_id).map_err(|_| ApiError::invalid("hold_id must be a UUID"))?;
    if lines.is_empty() || lines.len() > HOLD_LINES_MAX {
        return Err(ApiError::invalid(format!(
            "a hold has 1 to {HOLD_LINES_MAX} lines"
        )));
    }
    let mut parsed: Vec<(Uuid, i64)> = Vec::with_capacity(lines.len());
    for line in lines {
        let id = Uuid::try_parse(&line.product_id)
            .map_err(|_| ApiError::invalid(format!("{:?} is not a product id", line.product_id)))?;
        if !(1..=super::STOCK_MAX).contains(&line.quantity) {
            return Err(ApiError::invalid(format!(
                "the quantity of {id} must be 1 to {}",
                super::STOCK_MAX
            )));
        }
        if parsed.iter().any(|(p, _)| *p == id) {
            return Err(ApiError::invalid(format!("{id} appears twice in the hold")));
        }
        parsed.push((id, line.quantity));
    }
    // One order of moves for every hold: fewer crossed waits on the locks.
    parsed.sort();
    Ok(Lines(parsed))
}

fn require_component(caller: &Identity) -> Result<(), ApiError> {
    if caller.is_service() {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "only flashmall components hold and settle stock",
        ))
    }
}

/// Drops settled holds whose memory has run out.
fn prune(p: &mut Product, now: u64) {
    p.holds.retain(|_, h| {
        h.state == HoldState::Held || h.until_ms.saturating_add(MEMORY_MARGIN_MS) > now
    });
}

impl Products {
    fn stock_lock(&self, id: Uuid) -> &tokio::sync::Mutex<()> {
        let n = self.stock_locks.len();
        &self.stock_locks[(id.as_u128() % n as u128) as usize]
    }

    /// Moves one product's record under its stock lock.
    async fn stock_move(
        &self,
        id: Uuid,
        decide: impl Fn(&Product) -> Step<Product>,
    ) -> Result<Option<Product>, ApiError> {
        let _serial = self.stock_lock(id).lock().await;
        match records::move_record::<Product>(
            &*self.store,
            Table::Products,
            &id.to_string(),
            decide,
        )
        .await
        {
            Ok((p, _)) => Ok(Some(p)),
            Err(RecordError::Missing) => Ok(None),
            Err(e) => Err(record_error(id, e)),
        }
    }

    /// Holds every line's units for `hold_id`, or none (service callers).
    pub async fn hold(
        &self,
        caller: &Identity,
        hold_id: &str,
        lines: &[StockLine],
        deadline_ms: u64,
    ) -> Result<(), ApiError> {
        require_component(caller)?;
        let Lines(lines) = check(hold_id, lines)?;
        let now = now_ms();
        if deadline_ms < now.saturating_add(DEADLINE_LEAD_MS) {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the hold's deadline has passed; the order can no longer be held",
            ));
        }
        for (k, &(id, quantity)) in lines.iter().enumerate() {
            let after = self
                .stock_move(id, |p| {
                    if p.holds.contains_key(hold_id) {
                        return Step::Keep;
                    }
                    if p.stock < quantity {
                        return Step::Keep;
                    }
                    let mut next = p.clone();
                    prune(&mut next, now);
                    next.stock -= quantity;
                    next.holds.insert(
                        hold_id.to_owned(),
                        Hold {
                            quantity,
                            state: HoldState::Held,
                            until_ms: deadline_ms,
                        },
                    );
                    Step::Write(next)
                })
                .await;
            let failure = match &after {
                Ok(Some(p)) => match p.holds.get(hold_id).map(|h| h.state) {
                    Some(HoldState::Held | HoldState::Committed) => None,
                    Some(HoldState::Released) => Some(ApiError::new(
                        ErrorCode::Conflict,
                        "this hold was released already; the order is closed",
                    )),
                    None => Some(ApiError::new(
                        ErrorCode::OutOfStock,
                        format!(
                            "only {} of {:?} left, {quantity} asked",
                            p.stock.max(0),
                            p.name
                        ),
                    )),
                },
                Ok(None) => Some(ApiError::new(
                    ErrorCode::OutOfStock,
                    format!("product {id} is no longer in the catalogue"),
                )),
                Err(e) => Some(e.clone()),
            };
            if let Some(e) = failure {
                // All or nothing: give back what this call (or an earlier
                // try of it) held. If this fails too, the order's release
                // gives them back when it closes.
                let held = lines[..k].iter().map(|&(id, _)| id);
                if let Err(undo) = self.undo_lines(hold_id, held).await {
                    tracing::warn!(hold_id, error = %undo, "undoing a partial hold failed; the order's release retries");
                }
                return Err(e);
            }
        }
        metrics::counter!("flashmall_stock_holds_total", "outcome" => "held").increment(1);
        Ok(())
    }

    /// Commits or releases a hold (service callers). Idempotent; a release
    /// of a hold never taken leaves a tombstone so it is never taken later.
    pub async fn settle(
        &self,
        caller: &Identity,
        hold_id: &str,
        lines: &[StockLine],
        deadline_ms: u64,
        how: Settle,
    ) -> Result<(), ApiError> {
        require_component(caller)?;
        let Lines(lines) = check(hold_id, lines)?;
        self.settle_lines(hold_id, lines.into_iter(), deadline_ms, how)
            .await?;
        let outcome = match how {
            Settle::Commit => "committed",
            Settle::Release => "released",
        };
        metrics::counter!("flashmall_stock_holds_total", "outcome" => outcome).increment(1);
        Ok(())
    }

    /// Gives back the units a failed hold took on `lines` and forgets
    /// the hold there, leaving no released mark: the caller's retry of the
    /// same hold (its first answer lost to a timeout) starts afresh and
    /// gets the same answer, not "released already". A hold an order's
    /// release settled meanwhile stays settled.
    async fn undo_lines(
        &self,
        hold_id: &str,
        lines: impl Iterator<Item = Uuid>,
    ) -> Result<(), ApiError> {
        let now = now_ms();
        for id in lines {
            self.stock_move(id, |p| match p.holds.get(hold_id) {
                Some(h) if h.state == HoldState::Held => {
                    let mut next = p.clone();
                    prune(&mut next, now);
                    next.stock += h.quantity;
                    next.holds.remove(hold_id);
                    Step::Write(next)
                }
                _ => Step::Keep,
            })
            .await?;
        }
        Ok(())
    }

    async fn settle_lines(
        &self,
        hold_id: &str,
        lines: impl Iterator<Item = (Uuid, i64)>,
        deadline_ms: u64,
        how: Settle,
    ) -> Result<(), ApiError> {
        let now = now_ms();
        for (id, _) in lines {
            // A product that left the catalogue has nothing to settle.
            let after = self
                .stock_move(id, |p| {
                    let mut next = p.clone();
                    prune(&mut next, now);
                    match (p.holds.get(hold_id), how) {
                        (Some(h), _) if h.state != HoldState::Held => return Step::Keep,
                        (Some(h), Settle::Release) => {
                            next.stock += h.quantity;
                            next.holds.insert(
                                hold_id.to_owned(),
                                Hold {
                                    state: HoldState::Released,
                                    until_ms: h.until_ms.max(deadline_ms),
                                    ..h.clone()
                                },
                            );
                        }
                        (Some(h), Settle::Commit) => {
                            next.holds.insert(
                                hold_id.to_owned(),
                                Hold {
                                    state: HoldState::Committed,
                                    until_ms: h.until_ms.max(deadline_ms),
                                    ..h.clone()
                                },
                            );
                        }
                        (None, Settle::Release)
                            if deadline_ms.saturating_add(MEMORY_MARGIN_MS) > now =>
                        {
                            // Released before held: remember it so the hold,
                            // should it still come, takes nothing.
                            next.holds.insert(
                                hold_id.to_owned(),
                                Hold {
                                    quantity: 0,
                                    state: HoldState::Released,
                                    until_ms: deadline_ms,
                                },
                            );
                        }
                        (None, _) => return Step::Keep,
                    }
                    Step::Write(next)
                })
                .await?;
            // A commit makes held units sold: with no hold to commit (never
            // taken, or released), committing would sell units nobody
            // holds. The order service never pays an order before all its
            // holds are in place, so this is a broken invariant, loudly.
            if let (Some(p), Settle::Commit) = (&after, how) {
                let state = p.holds.get(hold_id).map(|h| h.state);
                if state != Some(HoldState::Committed) {
                    tracing::error!(hold_id, product_id = %id, ?state, "a commit found no hold to commit");
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        format!(
                            "product {id} has no units held for {hold_id} ({}); nothing to commit",
                            match state {
                                Some(HoldState::Released) => "the hold was released",
                                _ => "no hold was taken",
                            }
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_checked_and_ordered() {
        let id = Uuid::now_v7().to_string();
        let a = Uuid::now_v7().to_string();
        let b = Uuid::now_v7().to_string();
        let line = |p: &str, q| StockLine {
            product_id: p.to_owned(),
            quantity: q,
        };
        let Lines(ok) = check(&id, &[line(&b, 2), line(&a, 1)]).unwrap();
        assert_eq!(ok[0].0.to_string(), a);
        assert!(check("x", &[line(&a, 1)]).is_err());
        assert!(check(&id, &[]).is_err());
        assert!(check(&id, &[line(&a, 0)]).is_err());
        assert!(check(&id, &[line(&a, -1)]).is_err());
        assert!(check(&id, &[line(&a, 1), line(&a, 2)]).is_err());
        assert!(check(&id, &[line("nope", 1)]).is_err());
    }
}
