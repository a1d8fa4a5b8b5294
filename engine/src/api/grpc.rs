//! The engine's gRPC API (`flashmall.inventory.v1.InventoryService`).

use std::sync::Arc;

use flashmall_mesh::ApiError;
use flashmall_proto::inventory as pb;
use pb::inventory_service_server::{InventoryService, InventoryServiceServer};
use tonic::{Request, Response, Status};

use crate::engine::{Engine, SaleView};
use crate::identity;
use crate::reconcile::SaleReport;
use crate::release::{self, Released};
use crate::sale::{NewSale, rfc3339};
use crate::{reconcile, reserve};
use flashmall_mesh::{Identity, Role};

/// The gRPC routes, to merge into the component's router.
pub fn router(engine: Arc<Engine>) -> axum::Router {
    tonic::service::Routes::new(InventoryServiceServer::new(Inventory { engine }))
        .into_axum_router()
}

struct Inventory {
    engine: Arc<Engine>,
}

impl Inventory {
    fn caller<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        let headers = request.metadata().clone().into_headers();
        Ok(identity::caller(&self.engine, &headers)?)
    }
}

fn sale_pb(view: SaleView) -> pb::Sale {
    let s = view.sale;
    pb::Sale {
        id: s.id.to_string(),
        product_id: s.product_id,
        price: s.price,
        stock: s.stock,
        per_user_limit: s.per_user_limit,
        starts_at: rfc3339(s.starts_at),
        ends_at: rfc3339(s.ends_at),
        status: view.status.as_str().to_owned(),
        remaining: view.remaining,
        pending: view.pending,
        settled: view.counts.settled,
        released: view.counts.released,
        created_at: rfc3339(s.created_at),
    }
}

fn report_pb(r: SaleReport) -> pb::SaleReconcile {
    pb::SaleReconcile {
        sale_id: r.sale_id.to_string(),
        stock: r.stock,
        remaining_before: r.remaining_before,
        pending_before: r.pending_before,
        drift: r.drift,
        remaining: r.remaining,
        settled: r.settled,
        released: r.released,
        settled_during_reconcile: r.settled_during_reconcile as i64,
        conserved: r.conserved,
    }
}

fn not_found_sale() -> ApiError {
    ApiError::new(flashmall_mesh::ErrorCode::SaleNotFound, "no such sale")
}

#[tonic::async_trait]
impl InventoryService for Inventory {
    async fn create_sale(
        &self,
        request: Request<pb::CreateSaleRequest>,
    ) -> Result<Response<pb::Sale>, Status> {
        self.caller(&request)?.require(Role::Admin)?;
        let r = request.into_inner();
        let view = self
            .engine
            .create_sale(NewSale {
                product_id: r.product_id,
                price: r.price,
                stock: r.stock,
                per_user_limit: r.per_user_limit,
                starts_at: r.starts_at,
                ends_at: r.ends_at,
                waiting_room: None,
            })
            .await?;
        Ok(Response::new(sale_pb(view)))
    }

    async fn get_sale(
        &self,
        request: Request<pb::GetSaleRequest>,
    ) -> Result<Response<pb::Sale>, Status> {
        let id =
            crate::sale::parse_sale_id(&request.get_ref().sale_id).ok_or_else(not_found_sale)?;
        let live = self
            .engine
            .live_sale(id)
            .await?
            .ok_or_else(not_found_sale)?;
        Ok(Response::new(sale_pb(self.engine.view(&live).await?)))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let caller = self.caller(&request)?;
        let r = request.into_inner();
        let key = reserve::check_idempotency_key(Some(r.idempotency_key.as_str()))?;
        // A waiting-room sale is bought over JSON, through the edge's
        // admission; gRPC carries none.
        let p =
            reserve::purchase(&self.engine, &caller, &r.sale_id, r.quantity, key, false).await?;
        Ok(Response::new(pb::ReserveResponse {
            reservation_id: p.reservation_id.to_string(),
            order_id: p.order_id.to_string(),
            status: "reserved".to_owned(),
            quantity: p.quantity,
            replayed: p.replayed,
        }))
    }

    async fn get_reservation(
        &self,
        request: Request<pb::GetReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let caller = self.caller(&request)?;
        let not_found =
            || ApiError::new(flashmall_mesh::ErrorCode::NotFound, "no such reservation");
        let id =
            uuid::Uuid::try_parse(&request.get_ref().reservation_id).map_err(|_| not_found())?;
        let r = self
            .engine
            .ledger
            .reservation(id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(not_found)?;
        if r.user_id != caller.user_id && !caller.is_admin() {
            return Err(not_found().into());
        }
        Ok(Response::new(pb::Reservation {
            id: r.id.to_string(),
            sale_id: r.sale_id.to_string(),
            user_id: r.user_id.clone(),
            quantity: r.quantity,
            order_id: r.order_id().to_string(),
            status: r.status.as_str().to_owned(),
            created_at: r.created_at_ms.to_string(),
            settled_at: rfc3339(r.settled_at),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = self.caller(&request)?;
        let id = request.into_inner().reservation_id;
        let (outcome, quantity) = match release::release(&self.engine, &caller, &id).await? {
            Released::Released { quantity } => ("released", quantity),
            Released::AlreadyReleased { quantity } => ("already_released", quantity),
        };
        Ok(Response::new(pb::ReleaseResponse {
            reservation_id: id,
            outcome: outcome.to_owned(),
            quantity,
        }))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileReport>, Status> {
        self.caller(&request)?.require(Role::Admin)?;
        let sale_id = request.into_inner().sale_id;
        let reports = if sale_id.is_empty() {
            reconcile::reconcile_all(&self.engine).await?
        } else {
            vec![reconcile::reconcile_one(&self.engine, &sale_id).await?]
        };
        Ok(Response::new(pb::ReconcileReport {
            sales: reports.into_iter().map(report_pb).collect(),
        }))
    }
}
