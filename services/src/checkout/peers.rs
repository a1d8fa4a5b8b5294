//! The services checkout calls, over gRPC through the mesh. Calls about
//! the buyer's own things (cart, order, payment) carry the buyer's
//! verified identity, forwarded, so each service checks ownership itself
//! (the order service then holds the stock with its own identity).

use flashmall_mesh::{ApiError, CallKind, Identity, IdentityKey, MeshClient};
use flashmall_proto::{cart, order, payment};

use super::Line;

/// The cart, order and payment services, as checkout calls them.
pub struct Peers {
    pub cart: MeshClient,
    pub orders: MeshClient,
    pub payments: MeshClient,
    pub key: IdentityKey,
}

/// An order as checkout needs it.
pub struct PlacedOrder {
    pub status: String,
}

/// A payment as checkout needs it.
pub struct PaymentFacts {
    pub id: String,
    pub status: String,
    pub reason: String,
}

impl Peers {
    /// The cart's items (product id, quantity).
    pub async fn cart(&self, buyer: &Identity) -> Result<Vec<(String, i64)>, ApiError> {
        use cart::cart_service_client::CartServiceClient as Client;
        let found = self
            .cart
            .call_as(
                "GetCart",
                CallKind::Idempotent,
                &self.key.sign_for(buyer, "cart"),
                &cart::GetCartReq {},
                |channel, call| async move { Client::new(channel).get_cart(call).await },
            )
            .await?;
        Ok(found
            .items
            .into_iter()
            .map(|i| (i.product_id, i.quantity))
            .collect())
    }

    /// Takes what a checkout bought out of the cart (once per checkout).
    pub async fn take_from_cart(
        &self,
        buyer: &Identity,
        checkout_id: &str,
        lines: &[Line],
    ) -> Result<(), ApiError> {
        use cart::cart_service_client::CartServiceClient as Client;
        let request = cart::EmptyCartReq {
            items: lines
                .iter()
                .map(|l| cart::CartItem {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                })
                .collect(),
            checkout_id: checkout_id.to_owned(),
        };
        self.cart
            .call_as(
                "EmptyCart",
                CallKind::Idempotent,
                &self.key.sign_for(buyer, "cart"),
                &request,
                |channel, call| async move { Client::new(channel).empty_cart(call).await },
            )
            .await
            .map(|_| ())
    }

    /// Places the order (idempotent by its id).
    pub async fn place(
        &self,
        buyer: &Identity,
        order_id: &str,
        lines: &[Line],
    ) -> Result<PlacedOrder, ApiError> {
        use order::order_service_client::OrderServiceClient as Client;
        let request = order::PlaceOrderReq {
            order_id: order_id.to_owned(),
            items: lines
                .iter()
                .map(|l| order::OrderItem {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                    unit_price: l.unit_price,
                })
                .collect(),
        };
        let placed = self
            .orders
            .call_as(
                "PlaceOrder",
                CallKind::Idempotent,
                &self.key.sign_for(buyer, "orders"),
                &request,
                |channel, call| async move { Client::new(channel).place_order(call).await },
            )
            .await?;
        Ok(PlacedOrder {
            status: placed.order.map(|o| o.status).unwrap_or_default(),
        })
    }

    /// Holds the order's stock, every line or none (idempotent); only then
    /// can the order be paid.
    pub async fn hold_stock(&self, buyer: &Identity, order_id: &str) -> Result<(), ApiError> {
        use order::order_service_client::OrderServiceClient as Client;
        let request = order::HoldOrderStockReq {
            order_id: order_id.to_owned(),
        };
        self.orders
            .call_as(
                "HoldOrderStock",
                CallKind::Idempotent,
                &self.key.sign_for(buyer, "orders"),
                &request,
                |channel, call| async move { Client::new(channel).hold_order_stock(call).await },
            )
            .await
            .map(|_| ())
    }

    /// Cancels the buyer's unpaid order (its stock hold is released).
    pub async fn cancel(&self, buyer: &Identity, order_id: &str) -> Result<(), ApiError> {
        use order::order_service_client::OrderServiceClient as Client;
        let request = order::CancelOrderReq {
            order_id: order_id.to_owned(),
        };
        self.orders
            .call_as(
                "CancelOrder",
                CallKind::Idempotent,
                &self.key.sign_for(buyer, "orders"),
                &request,
                |channel, call| async move { Client::new(channel).cancel_order(call).await },
            )
            .await
            .map(|_| ())
    }

    /// Charges the order (idempotent by `idempotency_key`).
    pub async fn charge(
        &self,
        buyer: &Identity,
        order_id: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<PaymentFacts, ApiError> {
        use payment::payment_service_client::PaymentServiceClient as Client;
        let request = payment::ChargeReq {
            order_id: order_id.to_owned(),
            amount,
            idempotency_key: idempotency_key.to_owned(),
        };
        let answer = self
            .payments
            .call_as(
                "Charge",
                CallKind::Idempotent,
                &self.key.sign_for(buyer, "payments"),
                &request,
                |channel, call| async move { Client::new(channel).charge(call).await },
            )
            .await?;
        let p = answer
            .payment
            .ok_or_else(|| ApiError::internal("the payment service answered no payment"))?;
        Ok(PaymentFacts {
            id: p.id,
            status: p.status,
            reason: p.reason,
        })
    }
}
