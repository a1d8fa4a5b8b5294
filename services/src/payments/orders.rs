//! What the payment service needs from the order service: an order as its
//! buyer sees it (GetOrder, called with the buyer's identity, so another
//! buyer's order is simply not found) and MarkOrderPaid (called with the
//! payment service's own identity). Both go through the mesh client.

use async_trait::async_trait;
use flashmall_mesh::contract::SERVICE_CALL_IDENTITY_LIFE;
use flashmall_mesh::{ApiError, CallKind, Identity, IdentityKey, MeshClient};
use flashmall_proto::order as pb;
use pb::order_service_client::OrderServiceClient;
use uuid::Uuid;

/// The facts of an order a charge checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub status: String,
    pub total: i64,
    /// `flash_sale` or `checkout`.
    pub source: String,
}

/// What MarkOrderPaid answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MarkPaid {
    Paid,
    AlreadyPaid,
    /// The order is `status` and was not paid by this payment.
    NotPayable {
        status: String,
    },
}

/// The order service, as payments use it.
#[async_trait]
pub trait OrderDesk: Send + Sync + 'static {
    async fn get_order(&self, buyer: &Identity, order_id: Uuid) -> Result<OrderFacts, ApiError>;
    async fn mark_paid(
        &self,
        order_id: Uuid,
        payment_id: Uuid,
        amount: i64,
    ) -> Result<MarkPaid, ApiError>;
}

/// The order service over gRPC.
pub struct GrpcOrders {
    client: MeshClient,
    key: IdentityKey,
}

impl GrpcOrders {
    pub fn new(client: MeshClient, key: IdentityKey) -> Self {
        GrpcOrders { client, key }
    }
}

#[async_trait]
impl OrderDesk for GrpcOrders {
    async fn get_order(&self, buyer: &Identity, order_id: Uuid) -> Result<OrderFacts, ApiError> {
        // The buyer's verified identity goes on: the order service checks
        // ownership itself.
        let signed = self.key.sign_for(buyer, "orders");
        let request = pb::GetOrderReq {
            order_id: order_id.to_string(),
        };
        let order =
            self.client
                .call_as(
                    "GetOrder",
                    CallKind::Idempotent,
                    &signed,
                    &request,
                    |channel, call| async move {
                        OrderServiceClient::new(channel).get_order(call).await
                    },
                )
                .await?;
        Ok(OrderFacts {
            status: order.status,
            total: order.total,
            source: order.source,
        })
    }

    async fn mark_paid(
        &self,
        order_id: Uuid,
        payment_id: Uuid,
        amount: i64,
    ) -> Result<MarkPaid, ApiError> {
        let signed = self.key.sign_for(
            &Identity::service("payments", SERVICE_CALL_IDENTITY_LIFE),
            "orders",
        );
        let request = pb::MarkOrderPaidReq {
            order_id: order_id.to_string(),
            payment_id: payment_id.to_string(),
            amount,
        };
        // Idempotent: the same payment marking the same order again answers
        // already_paid.
        let answer = self
            .client
            .call_as(
                "MarkOrderPaid",
                CallKind::Idempotent,
                &signed,
                &request,
                |channel, call| async move {
                    OrderServiceClient::new(channel).mark_order_paid(call).await
                },
            )
            .await?;
        Ok(match answer.outcome.as_str() {
            "paid" => MarkPaid::Paid,
            "already_paid" => MarkPaid::AlreadyPaid,
            _ => MarkPaid::NotPayable {
                status: answer.order.map(|o| o.status).unwrap_or_default(),
            },
        })
    }
}
