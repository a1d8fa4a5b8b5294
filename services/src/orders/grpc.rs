//! The order service's gRPC API (`flashmall.order.v1.OrderService`).

use std::sync::Arc;

use flashmall_mesh::identity::caller_of;
use flashmall_mesh::{ApiError, IdentityKey};
use flashmall_proto::order as pb;
use pb::order_service_server::{OrderService, OrderServiceServer};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Order, OrderItem, Orders, PaidOutcome, SaleOrder};
use crate::rfc3339_ms;

/// The gRPC routes, to merge into the service's router.
pub fn router(orders: Arc<Orders>, key: IdentityKey) -> axum::Router {
    tonic::service::Routes::new(OrderServiceServer::new(OrderApi { orders, key }))
        .into_axum_router()
}

struct OrderApi {
    orders: Arc<Orders>,
    key: IdentityKey,
}

/// An order as the gRPC API shows it.
pub fn order_pb(o: &Order) -> pb::Order {
    pb::Order {
        id: o.id.to_string(),
        user_id: o.user_id.clone(),
        status: o.status.as_str().to_owned(),
        total: o.total,
        items: o
            .items
            .iter()
            .map(|i| pb::OrderItem {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
                unit_price: i.unit_price,
            })
            .collect(),
        source: o.source.as_str().to_owned(),
        sale_id: o.sale_id.map(|s| s.to_string()).unwrap_or_default(),
        reservation_id: o.reservation_id.map(|r| r.to_string()).unwrap_or_default(),
        created_at: rfc3339_ms(o.created_at_ms),
        expires_at: rfc3339_ms(o.expires_at_ms),
        paid_at: o.paid_at_ms.map(rfc3339_ms).unwrap_or_default(),
        payment_id: o.payment_id.clone().unwrap_or_default(),
        closed_at: o.closed_at_ms.map(rfc3339_ms).unwrap_or_default(),
        released: o.released,
        stock_held: o.stock_held(),
    }
}

fn uuid_field(name: &str, raw: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(raw).map_err(|_| ApiError::invalid(format!("{name} is not a valid id")))
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    async fn create_sale_orders(
        &self,
        request: Request<pb::CreateSaleOrdersReq>,
    ) -> Result<Response<pb::CreateSaleOrdersResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let orders = request
            .into_inner()
            .orders
            .into_iter()
            .map(|o| {
                Ok(SaleOrder {
                    order_id: uuid_field("order_id", &o.order_id)?,
                    reservation_id: uuid_field("reservation_id", &o.reservation_id)?,
                    sale_id: uuid_field("sale_id", &o.sale_id)?,
                    user_id: o.user_id,
                    product_id: o.product_id,
                    quantity: o.quantity,
                    unit_price: o.unit_price,
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let created = self.orders.create_sale_orders(&caller, orders).await?;
        Ok(Response::new(pb::CreateSaleOrdersResp {
            created: created.created,
            existing: created.existing,
        }))
    }

    async fn list_order(
        &self,
        request: Request<pb::ListOrderReq>,
    ) -> Result<Response<pb::ListOrderResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let token = Some(r.page_token.as_str()).filter(|t| !t.is_empty());
        let page = self.orders.list(&caller, r.page_size, token).await?;
        Ok(Response::new(pb::ListOrderResp {
            orders: page.orders.iter().map(order_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderReq>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let order = self
            .orders
            .get(&caller, &request.into_inner().order_id)
            .await?;
        Ok(Response::new(order_pb(&order)))
    }

    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderReq>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let order = self
            .orders
            .cancel(&caller, &request.into_inner().order_id)
            .await?;
        Ok(Response::new(order_pb(&order)))
    }

    async fn mark_order_paid(
        &self,
        request: Request<pb::MarkOrderPaidReq>,
    ) -> Result<Response<pb::MarkOrderPaidResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let outcome = self
            .orders
            .mark_paid(&caller, &r.order_id, &r.payment_id, r.amount)
            .await?;
        let (outcome, order) = match outcome {
            PaidOutcome::Paid(o) => ("paid", o),
            PaidOutcome::AlreadyPaid(o) => ("already_paid", o),
            PaidOutcome::NotPayable(o) => ("not_payable", o),
        };
        Ok(Response::new(pb::MarkOrderPaidResp {
            outcome: outcome.to_owned(),
            order: Some(order_pb(&order)),
        }))
    }

    async fn hold_order_stock(
        &self,
        request: Request<pb::HoldOrderStockReq>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let order = self
            .orders
            .hold_stock(&caller, &request.into_inner().order_id)
            .await?;
        Ok(Response::new(order_pb(&order)))
    }

    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderReq>,
    ) -> Result<Response<pb::PlaceOrderResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let items = r
            .items
            .into_iter()
            .map(|i| OrderItem {
                product_id: i.product_id,
                quantity: i.quantity,
                unit_price: i.unit_price,
            })
            .collect();
        let (order, created) = self.orders.place(&caller, &r.order_id, items).await?;
        Ok(Response::new(pb::PlaceOrderResp {
            order: Some(order_pb(&order)),
            created,
            expires_at_ms: order.expires_at_ms,
        }))
    }
}
