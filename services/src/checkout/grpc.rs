//! The checkout service's gRPC API (`flashmall.checkout.v1.CheckoutService`).
//! A failed checkout is an answer (`status: failed`, `reason`), not an
//! error: the caller still learns the order and payment ids.

use std::sync::Arc;

use flashmall_mesh::IdentityKey;
use flashmall_mesh::identity::caller_of;
use flashmall_proto::checkout as pb;
use pb::checkout_service_server::{CheckoutService, CheckoutServiceServer};
use tonic::{Request, Response, Status};

use super::Checkouts;

/// The gRPC routes, to merge into the service's router.
pub fn router(checkouts: Arc<Checkouts>, key: IdentityKey) -> axum::Router {
    tonic::service::Routes::new(CheckoutServiceServer::new(CheckoutApi { checkouts, key }))
        .into_axum_router()
}

struct CheckoutApi {
    checkouts: Arc<Checkouts>,
    key: IdentityKey,
}

#[tonic::async_trait]
impl CheckoutService for CheckoutApi {
    async fn checkout(
        &self,
        request: Request<pb::CheckoutReq>,
    ) -> Result<Response<pb::CheckoutResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let key = request.into_inner().idempotency_key;
        let answer = self.checkouts.checkout(&caller, &key).await?;
        let c = &answer.checkout;
        Ok(Response::new(pb::CheckoutResp {
            checkout_id: c.id.to_string(),
            status: answer.status().to_owned(),
            order_id: c.order_id.to_string(),
            payment_id: c.payment_id.clone().unwrap_or_default(),
            total: c.total,
            items: c
                .lines
                .iter()
                .map(|l| pb::CheckoutLine {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
            reason: c.failure.clone().map(|(_, m)| m).unwrap_or_default(),
            replayed: answer.replayed,
        }))
    }
}
