//! How the order service settles an order's units, by where they came
//! from:
//!
//! - a flash-sale order's units go back through the engine's Release;
//! - a checkout order's stock is held (before it can be paid), then
//!   released (closed order) or committed (paid order) through the product
//!   service.
//!
//! Every call goes through the mesh with the order service's own identity,
//! and every one is idempotent at the other end (the engine's ledger moves
//! once; a hold is settled once), so they are retried freely.

use async_trait::async_trait;
use flashmall_mesh::contract::SERVICE_CALL_IDENTITY_LIFE;
use flashmall_mesh::{ApiError, CallKind, Identity, IdentityKey, MeshClient};
use flashmall_proto::inventory as inv;
use inv::inventory_service_client::InventoryServiceClient;

use super::{Order, OrderSource};
use crate::products::client::CatalogClient;
use crate::products::stock::{Settle, StockLine};

/// Settles an order's units.
#[async_trait]
pub trait StockKeeper: Send + Sync + 'static {
    /// Holds a checkout order's units, every line or none (its release
    /// gives them back; a release that came first leaves nothing to take).
    async fn hold(&self, order: &Order) -> Result<(), ApiError>;
    /// Gives a cancelled or expired order's units back.
    async fn release(&self, order: &Order) -> Result<(), ApiError>;
    /// Makes a paid order's held units final (nothing for a flash-sale
    /// order: its units were sold when the engine settled it).
    async fn commit(&self, order: &Order) -> Result<(), ApiError>;
}

/// The engine and the product service over gRPC.
pub struct MeshStock {
    engine: MeshClient,
    products: CatalogClient,
    key: IdentityKey,
}

impl MeshStock {
    pub fn new(engine: MeshClient, products: MeshClient, key: IdentityKey) -> Self {
        MeshStock {
            engine,
            products: CatalogClient::new(products, key.clone(), "orders"),
            key,
        }
    }

    async fn settle_hold(&self, order: &Order, how: Settle) -> Result<(), ApiError> {
        self.products
            .settle(
                &order.id.to_string(),
                &stock_lines(order),
                order.expires_at_ms,
                how,
            )
            .await
    }
}

fn stock_lines(order: &Order) -> Vec<StockLine> {
    order
        .items
        .iter()
        .map(|i| StockLine {
            product_id: i.product_id.clone(),
            quantity: i.quantity,
        })
        .collect()
}

#[async_trait]
impl StockKeeper for MeshStock {
    async fn hold(&self, order: &Order) -> Result<(), ApiError> {
        self.products
            .hold(
                &order.id.to_string(),
                &stock_lines(order),
                order.expires_at_ms,
            )
            .await
    }

    async fn release(&self, order: &Order) -> Result<(), ApiError> {
        match (order.source, order.reservation_id) {
            (OrderSource::FlashSale, Some(reservation)) => {
                let signed = self.key.sign_for(
                    &Identity::service("orders", SERVICE_CALL_IDENTITY_LIFE),
                    "engine",
                );
                let request = inv::ReleaseRequest {
                    reservation_id: reservation.to_string(),
                };
                self.engine
                    .call_as(
                        "Release",
                        CallKind::Idempotent,
                        &signed,
                        &request,
                        |channel, call| async move {
                            InventoryServiceClient::new(channel).release(call).await
                        },
                    )
                    .await
                    .map(|_| ())
            }
            (OrderSource::FlashSale, None) => Ok(()),
            (OrderSource::Checkout, _) => self.settle_hold(order, Settle::Release).await,
        }
    }

    async fn commit(&self, order: &Order) -> Result<(), ApiError> {
        match order.source {
            OrderSource::FlashSale => Ok(()),
            OrderSource::Checkout => self.settle_hold(order, Settle::Commit).await,
        }
    }
}
