//! The product service as other services call it: catalogue reads (the
//! cart, checkout) and stock holds (checkout holds, the order service
//! settles). Reads go out under the caller's identity; holds under the
//! calling component's own.

use flashmall_mesh::contract::SERVICE_CALL_IDENTITY_LIFE;
use flashmall_mesh::{ApiError, CallKind, Identity, IdentityKey, MeshClient};
use flashmall_proto::product as pb;
use pb::product_catalog_service_client::ProductCatalogServiceClient as Client;

use super::stock::{Settle, StockLine};

/// A product as callers need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductFacts {
    pub id: String,
    pub name: String,
    /// Minor units.
    pub price: i64,
    pub stock: i64,
}

/// The product service over gRPC.
pub struct CatalogClient {
    client: MeshClient,
    key: IdentityKey,
    /// The calling component, named in its own identity.
    component: &'static str,
}

fn lines_pb(lines: &[StockLine]) -> Vec<pb::StockLine> {
    lines
        .iter()
        .map(|l| pb::StockLine {
            product_id: l.product_id.clone(),
            quantity: l.quantity,
        })
        .collect()
}

impl CatalogClient {
    pub fn new(client: MeshClient, key: IdentityKey, component: &'static str) -> Self {
        CatalogClient {
            client,
            key,
            component,
        }
    }

    fn own_identity(&self) -> String {
        self.key.sign_for(
            &Identity::service(self.component, SERVICE_CALL_IDENTITY_LIFE),
            "products",
        )
    }

    /// The products among `ids` that exist, in the order asked.
    pub async fn batch_get(&self, ids: &[String]) -> Result<Vec<ProductFacts>, ApiError> {
        let request = pb::BatchGetProductsReq { ids: ids.to_vec() };
        let found = self
            .client
            .call_as(
                "BatchGetProducts",
                CallKind::Idempotent,
                &self.own_identity(),
                &request,
                |channel, call| async move { Client::new(channel).batch_get_products(call).await },
            )
            .await?;
        Ok(found
            .products
            .into_iter()
            .map(|p| ProductFacts {
                id: p.id,
                name: p.name,
                price: p.price,
                stock: p.stock,
            })
            .collect())
    }

    /// Holds every line's units for `hold_id`, or none.
    pub async fn hold(
        &self,
        hold_id: &str,
        lines: &[StockLine],
        deadline_ms: u64,
    ) -> Result<(), ApiError> {
        let request = pb::HoldStockReq {
            hold_id: hold_id.to_owned(),
            lines: lines_pb(lines),
            deadline_ms,
        };
        self.client
            .call_as(
                "HoldStock",
                CallKind::Idempotent,
                &self.own_identity(),
                &request,
                |channel, call| async move { Client::new(channel).hold_stock(call).await },
            )
            .await
            .map(|_| ())
    }

    /// Commits or releases a hold.
    pub async fn settle(
        &self,
        hold_id: &str,
        lines: &[StockLine],
        deadline_ms: u64,
        how: Settle,
    ) -> Result<(), ApiError> {
        let request = pb::SettleStockReq {
            hold_id: hold_id.to_owned(),
            lines: lines_pb(lines),
            deadline_ms,
        };
        let (method, commit) = match how {
            Settle::Commit => ("CommitStock", true),
            Settle::Release => ("ReleaseStock", false),
        };
        self.client
            .call_as(
                method,
                CallKind::Idempotent,
                &self.own_identity(),
                &request,
                |channel, call| async move {
                    let mut client = Client::new(channel);
                    if commit {
                        client.commit_stock(call).await
                    } else {
                        client.release_stock(call).await
                    }
                },
            )
            .await
            .map(|_| ())
    }
}
