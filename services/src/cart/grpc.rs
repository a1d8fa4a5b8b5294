//! The cart service's gRPC API (`flashmall.cart.v1.CartService`), always
//! on the verified caller's own cart.

use std::sync::Arc;

use flashmall_mesh::identity::caller_of;
use flashmall_mesh::{ApiError, IdentityKey};
use flashmall_proto::cart as pb;
use pb::cart_service_server::{CartService, CartServiceServer};
use tonic::{Request, Response, Status};

use super::{CartView, Carts, ItemRequest};
use crate::rfc3339_ms;

/// The gRPC routes, to merge into the service's router.
pub fn router(carts: Arc<Carts>, key: IdentityKey) -> axum::Router {
    tonic::service::Routes::new(CartServiceServer::new(CartApi { carts, key })).into_axum_router()
}

struct CartApi {
    carts: Arc<Carts>,
    key: IdentityKey,
}

fn cart_pb(cart: &CartView) -> pb::Cart {
    pb::Cart {
        items: cart
            .items
            .iter()
            .map(|i| pb::CartLine {
                product_id: i.product_id.clone(),
                quantity: i.quantity,
                name: i.name.clone(),
                unit_price: i.unit_price,
                subtotal: i.subtotal,
                available: i.available,
            })
            .collect(),
        total: cart.total,
        updated_at: if cart.updated_at_ms > 0 {
            rfc3339_ms(cart.updated_at_ms)
        } else {
            String::new()
        },
    }
}

fn item(raw: Option<pb::CartItem>) -> Result<ItemRequest, ApiError> {
    let raw = raw.ok_or_else(|| ApiError::invalid("item is required"))?;
    Ok(ItemRequest {
        product_id: raw.product_id,
        quantity: raw.quantity,
    })
}

#[tonic::async_trait]
impl CartService for CartApi {
    async fn add_item(
        &self,
        request: Request<pb::AddItemReq>,
    ) -> Result<Response<pb::Cart>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let item = item(request.into_inner().item)?;
        Ok(Response::new(cart_pb(
            &self.carts.add(&caller, item).await?,
        )))
    }

    async fn update_item(
        &self,
        request: Request<pb::UpdateItemReq>,
    ) -> Result<Response<pb::Cart>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let item = item(request.into_inner().item)?;
        let cart = self
            .carts
            .update(&caller, &item.product_id, item.quantity)
            .await?;
        Ok(Response::new(cart_pb(&cart)))
    }

    async fn remove_item(
        &self,
        request: Request<pb::RemoveItemReq>,
    ) -> Result<Response<pb::Cart>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let product_id = request.into_inner().product_id;
        Ok(Response::new(cart_pb(
            &self.carts.remove(&caller, &product_id).await?,
        )))
    }

    async fn get_cart(
        &self,
        request: Request<pb::GetCartReq>,
    ) -> Result<Response<pb::Cart>, Status> {
        let caller = caller_of(&self.key, &request)?;
        Ok(Response::new(cart_pb(&self.carts.get(&caller).await?)))
    }

    async fn empty_cart(
        &self,
        request: Request<pb::EmptyCartReq>,
    ) -> Result<Response<pb::EmptyCartResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let bought = r
            .items
            .into_iter()
            .map(|i| ItemRequest {
                product_id: i.product_id,
                quantity: i.quantity,
            })
            .collect();
        self.carts.empty(&caller, bought, &r.checkout_id).await?;
        Ok(Response::new(pb::EmptyCartResp {}))
    }
}
