//! The product service's gRPC API
//! (`flashmall.product.v1.ProductCatalogService`). Reads need no caller;
//! writes act as the verified caller.

use std::sync::Arc;

use flashmall_mesh::IdentityKey;
use flashmall_mesh::identity::caller_of;
use flashmall_proto::product as pb;
use pb::product_catalog_service_server::{ProductCatalogService, ProductCatalogServiceServer};
use tonic::{Request, Response, Status};

use super::stock::{Settle, StockLine};
use super::{Category, NewCategory, NewProduct, PageRequest, Product, ProductPatch, Products};
use crate::rfc3339_ms;

/// The gRPC routes, to merge into the service's router.
pub fn router(products: Arc<Products>, key: IdentityKey) -> axum::Router {
    tonic::service::Routes::new(ProductCatalogServiceServer::new(CatalogApi {
        products,
        key,
    }))
    .into_axum_router()
}

struct CatalogApi {
    products: Arc<Products>,
    key: IdentityKey,
}

/// A product as the gRPC API shows it.
pub fn product_pb(p: &Product) -> pb::Product {
    pb::Product {
        id: p.id.to_string(),
        name: p.name.clone(),
        description: p.description.clone(),
        price: p.price,
        categories: p.categories.clone(),
        stock: p.stock,
        merchant_id: p.merchant_id.clone(),
        created_at: rfc3339_ms(p.created_at_ms),
        updated_at: rfc3339_ms(p.updated_at_ms),
    }
}

fn category_pb(c: &Category) -> pb::Category {
    pb::Category {
        name: c.name.clone(),
        description: c.description.clone(),
        created_at: rfc3339_ms(c.created_at_ms),
    }
}

fn page(size: u32, token: String) -> PageRequest {
    PageRequest {
        size,
        token: Some(token).filter(|t| !t.is_empty()),
        number: None,
    }
}

#[tonic::async_trait]
impl ProductCatalogService for CatalogApi {
    async fn list_products(
        &self,
        request: Request<pb::ListProductsReq>,
    ) -> Result<Response<pb::ListProductsResp>, Status> {
        let r = request.into_inner();
        let category = Some(r.category.as_str()).filter(|c| !c.is_empty());
        let found = self
            .products
            .list(category, &page(r.page_size, r.page_token))
            .await?;
        Ok(Response::new(pb::ListProductsResp {
            products: found.products.iter().map(product_pb).collect(),
            next_page_token: found.next.unwrap_or_default(),
        }))
    }

    async fn get_product(
        &self,
        request: Request<pb::GetProductReq>,
    ) -> Result<Response<pb::GetProductResp>, Status> {
        let product = self.products.get(&request.into_inner().id).await?;
        Ok(Response::new(pb::GetProductResp {
            product: Some(product_pb(&product)),
        }))
    }

    async fn batch_get_products(
        &self,
        request: Request<pb::BatchGetProductsReq>,
    ) -> Result<Response<pb::BatchGetProductsResp>, Status> {
        let found = self.products.batch_get(&request.into_inner().ids).await?;
        Ok(Response::new(pb::BatchGetProductsResp {
            products: found.iter().map(product_pb).collect(),
        }))
    }

    async fn search_products(
        &self,
        request: Request<pb::SearchProductsReq>,
    ) -> Result<Response<pb::SearchProductsResp>, Status> {
        let r = request.into_inner();
        let found = self
            .products
            .search(&r.query, &page(r.page_size, r.page_token))
            .await?;
        Ok(Response::new(pb::SearchProductsResp {
            results: found.products.iter().map(product_pb).collect(),
            next_page_token: found.next.unwrap_or_default(),
        }))
    }

    async fn create_product(
        &self,
        request: Request<pb::CreateProductReq>,
    ) -> Result<Response<pb::Product>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let new = NewProduct {
            name: r.name,
            description: r.description,
            price: r.price,
            categories: r.categories,
            stock: r.stock,
        };
        let product = self.products.create(&caller, new).await?;
        Ok(Response::new(product_pb(&product)))
    }

    async fn update_product(
        &self,
        request: Request<pb::UpdateProductReq>,
    ) -> Result<Response<pb::Product>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let patch = ProductPatch {
            name: r.name,
            description: r.description,
            price: r.price,
            categories: r.set_categories.then_some(r.categories),
            stock: r.stock,
        };
        let product = self.products.update(&caller, &r.id, patch).await?;
        Ok(Response::new(product_pb(&product)))
    }

    async fn delete_product(
        &self,
        request: Request<pb::DeleteProductReq>,
    ) -> Result<Response<pb::DeleteProductResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        self.products
            .delete(&caller, &request.into_inner().id)
            .await?;
        Ok(Response::new(pb::DeleteProductResp {}))
    }

    async fn list_categories(
        &self,
        _request: Request<pb::ListCategoriesReq>,
    ) -> Result<Response<pb::ListCategoriesResp>, Status> {
        let all = self.products.categories().await?;
        Ok(Response::new(pb::ListCategoriesResp {
            categories: all.iter().map(category_pb).collect(),
        }))
    }

    async fn create_category(
        &self,
        request: Request<pb::CreateCategoryReq>,
    ) -> Result<Response<pb::Category>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        let category = self
            .products
            .create_category(
                &caller,
                NewCategory {
                    name: r.name,
                    description: r.description,
                },
            )
            .await?;
        Ok(Response::new(category_pb(&category)))
    }

    async fn hold_stock(
        &self,
        request: Request<pb::HoldStockReq>,
    ) -> Result<Response<pb::HoldStockResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        self.products
            .hold(&caller, &r.hold_id, &stock_lines(r.lines), r.deadline_ms)
            .await?;
        Ok(Response::new(pb::HoldStockResp {}))
    }

    async fn commit_stock(
        &self,
        request: Request<pb::SettleStockReq>,
    ) -> Result<Response<pb::SettleStockResp>, Status> {
        self.settle(request, Settle::Commit).await
    }

    async fn release_stock(
        &self,
        request: Request<pb::SettleStockReq>,
    ) -> Result<Response<pb::SettleStockResp>, Status> {
        self.settle(request, Settle::Release).await
    }
}

impl CatalogApi {
    async fn settle(
        &self,
        request: Request<pb::SettleStockReq>,
        how: Settle,
    ) -> Result<Response<pb::SettleStockResp>, Status> {
        let caller = caller_of(&self.key, &request)?;
        let r = request.into_inner();
        self.products
            .settle(
                &caller,
                &r.hold_id,
                &stock_lines(r.lines),
                r.deadline_ms,
                how,
            )
            .await?;
        Ok(Response::new(pb::SettleStockResp {}))
    }
}

fn stock_lines(lines: Vec<pb::StockLine>) -> Vec<StockLine> {
    lines
        .into_iter()
        .map(|l| StockLine {
            product_id: l.product_id,
            quantity: l.quantity,
        })
        .collect()
}
