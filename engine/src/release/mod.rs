//! Release (step 13 of the purchase path): gives a reservation's units back
//! to its sale. The ledger moves first (held → releasing), then the stock
//! front gets the units (idempotent by reservation id), then the ledger
//! records the return (releasing → released). A crash between steps, or a
//! sale out of the front (being rebuilt), is finished by the next release
//! call or by a reconcile that reads the release.

use std::sync::Arc;

use flashmall_mesh::{ApiError, ErrorCode};
use uuid::Uuid;

use crate::engine::Engine;
use crate::front::ReturnOutcome;
use crate::ledger::ReleaseStep;
use crate::reconcile;
use flashmall_mesh::Identity as Caller;

/// What a release call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// This call released the units.
    Released { quantity: i64 },
    /// An earlier call did.
    AlreadyReleased { quantity: i64 },
}

/// Releases a reservation for `caller`: a component (the order service,
/// when an order is cancelled or expires) or an admin. Buyers cancel their
/// order instead, so a released unit never leaves an order payable.
pub async fn release(
    engine: &Arc<Engine>,
    caller: &Caller,
    raw_id: &str,
) -> Result<Released, ApiError> {
    if !caller.is_service() && !caller.is_admin() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "reservations are released by cancelling their order (POST /api/v1/orders/{id}/cancel)",
        ));
    }
    let id = Uuid::try_parse(raw_id)
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "no such reservation"))?;
    let outcome = match engine.ledger.begin_release(id).await? {
        ReleaseStep::NotFound => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                "no such settled reservation",
            ));
        }
        ReleaseStep::Revoked(_) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the ledger revoked this reservation at settlement; it holds no units",
            ));
        }
        ReleaseStep::AlreadyReleased(r) => Released::AlreadyReleased {
            quantity: r.quantity,
        },
        ReleaseStep::Releasing(r) => {
            let back = engine
                .front
                .give_back(r.sale_id, r.id, &r.user_id, r.quantity)
                .await?;
            match back {
                ReturnOutcome::Returned | ReturnOutcome::AlreadyReturned => {
                    engine.ledger.finish_release(r.id, r.sale_id).await?;
                    if let Some(live) = engine.sales.get(&r.sale_id) {
                        live.clear_sold_out();
                        live.settle_wake.notify_one();
                    }
                }
                ReturnOutcome::NotReady => {
                    // The sale is out of the front (being rebuilt, or lost).
                    // A rebuild that read the ledger before this release
                    // began does not count these units, so the caller asks
                    // again (the order service's timer does) until the units
                    // are back: the ledger keeps the release meanwhile, and
                    // the next call gives them back or finds it finished.
                    if let Some(live) = engine.live_sale(r.sale_id).await? {
                        reconcile::spawn(engine, &live);
                    }
                    return Err(ApiError::unavailable(
                        "the sale's stock is being rebuilt; the release is recorded, ask again to finish it",
                    ));
                }
            }
            metrics::counter!("flashmall_engine_released_units_total").increment(r.quantity as u64);
            tracing::info!(reservation_id = %r.id, sale_id = %r.sale_id, quantity = r.quantity, "reservation released");
            Released::Released {
                quantity: r.quantity,
            }
        }
    };
    Ok(outcome)
}
