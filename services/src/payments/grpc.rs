//! The payment service's gRPC API (`flashmall.payment.v1.PaymentService`).

use std::sync::Arc;

use flashmall_mesh::IdentityKey;
use flashmall_mesh::identity::caller_of;
use flashmall_proto::payment as pb;
use pb::payment_service_server::{PaymentService, PaymentServiceServer};
use tonic::{Request, Response, Status};

use super::{ChargeOrigin, ChargeRequest, Payment, Payments};
use crate::rfc3339_ms;

/// The gRPC routes, to merge into the service's router.
pub fn router(payments: Arc<Payments>, key: IdentityKey) -> axum::Router {
    tonic::service::Routes::new(PaymentServiceServer::new(PaymentApi { payments, key }))
        .into_axum_router()
}

struct PaymentApi {
    payments: Arc<Payments>,
    key: IdentityKey,
}

fn payment_pb(p: &Payment) -> pb::Payment {
    pb::Payment {
        id: p.id.to_string(),
        order_id: p.order_id.to_string(),
        user_id: p.user_id.clone(),
        amount: p.amount,
        status: p.status.as_str().to_owned(),
        provider: p.provider.clone(),
        provider_ref: p.provider_ref.clone().unwrap_or_default(),
        reason: p.reason.clone().unwrap_or_default(),
        created_at: rfc3339_ms(p.created_at_ms),
        updated_at: rfc3339_ms(p.updated_at_ms),
        refund_ref: p.refund_ref.clone().unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl PaymentService for PaymentApi {
    async fn charge(
        &self,
        request: Request<pb::ChargeReq>,
    ) -> Result<Response<pb::ChargeResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let (payment, replayed) = self
            .payments
            .charge(
                &caller,
                ChargeRequest {
                    order_id: r.order_id,
                    amount: r.amount,
                    idempotency_key: r.idempotency_key,
                    origin: ChargeOrigin::Component,
                },
            )
            .await?;
        Ok(Response::new(pb::ChargeResp {
            payment: Some(payment_pb(&payment)),
            replayed,
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentReq>,
    ) -> Result<Response<pb::Payment>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let payment = self
            .payments
            .get(&caller, &request.into_inner().payment_id)
            .await?;
        Ok(Response::new(payment_pb(&payment)))
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentReq>,
    ) -> Result<Response<pb::Payment>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let payment = self
            .payments
            .cancel(&caller, &request.into_inner().payment_id)
            .await?;
        Ok(Response::new(payment_pb(&payment)))
    }
}
