//! How the order service gives units back: the engine's Release, called
//! through the mesh with the order service's own identity. Release is
//! idempotent in the engine (the ledger moves first, the stock front
//! returns each reservation once), so it is retried freely.

use std::time::Duration;

use async_trait::async_trait;
use flashmall_mesh::identity::authorize;
use flashmall_mesh::{ApiError, CallKind, Identity, IdentityKey, MeshClient};
use flashmall_proto::inventory as pb;
use pb::inventory_service_client::InventoryServiceClient;
use uuid::Uuid;

/// Gives a reservation's units back to its sale.
#[async_trait]
pub trait Releaser: Send + Sync + 'static {
    async fn release(&self, reservation_id: Uuid) -> Result<(), ApiError>;
}

/// The engine over gRPC.
pub struct EngineReleaser {
    client: MeshClient,
    key: IdentityKey,
}

/// Lifetime of the service identity signed for one call.
const CALL_IDENTITY_TTL: Duration = Duration::from_secs(60);

impl EngineReleaser {
    pub fn new(client: MeshClient, key: IdentityKey) -> Self {
        EngineReleaser { client, key }
    }
}

#[async_trait]
impl Releaser for EngineReleaser {
    async fn release(&self, reservation_id: Uuid) -> Result<(), ApiError> {
        let signed = self
            .key
            .sign(&Identity::service("orders", CALL_IDENTITY_TTL));
        let request = pb::ReleaseRequest {
            reservation_id: reservation_id.to_string(),
        };
        let answer = self
            .client
            .call("Release", CallKind::Idempotent, |channel| {
                let mut call = tonic::Request::new(request.clone());
                let authorized = authorize(&mut call, &signed).map_err(tonic::Status::from);
                async move {
                    authorized?;
                    InventoryServiceClient::new(channel).release(call).await
                }
            })
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(status) => Err(ApiError::from_status(&status)),
        }
    }
}
