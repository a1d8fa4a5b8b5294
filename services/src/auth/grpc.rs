//! The auth and user service's gRPC API (`flashmall.user.v1.UserService`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use flashmall_mesh::{ApiError, Identity, IdentityKey};
use flashmall_proto::user as pb;
use pb::user_service_server::{UserService, UserServiceServer};
use tonic::{Request, Response, Status};

use super::{Auth, TokenPair};

/// The gRPC routes, to merge into the service's router.
pub fn router(auth: Arc<Auth>, identity: IdentityKey) -> axum::Router {
    tonic::service::Routes::new(UserServiceServer::new(Users { auth, identity })).into_axum_router()
}

struct Users {
    auth: Arc<Auth>,
    identity: IdentityKey,
}

impl Users {
    fn caller<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        flashmall_mesh::caller_of(&self.identity, request)
    }
}

/// The client's address: the one the edge signed for this service, else
/// the connection's peer (a component calling directly). A caller-supplied
/// address is never taken.
fn client_ip<T>(key: &IdentityKey, request: &Request<T>) -> IpAddr {
    request
        .metadata()
        .get(flashmall_mesh::identity::CLIENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| key.verify_client(v, flashmall_mesh::now_ms()))
        .or_else(|| {
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .to_canonical()
}

fn tokens(pair: TokenPair) -> pb::LoginResp {
    pb::LoginResp {
        user_id: pair.user_id,
        access_token: pair.access_token,
        refresh_token: pair.refresh_token,
        expires_in: pair.expires_in as i64,
    }
}

#[tonic::async_trait]
impl UserService for Users {
    async fn register(
        &self,
        request: Request<pb::RegisterReq>,
    ) -> Result<Response<pb::RegisterResp>, Status> {
        let r = request.into_inner();
        if !r.confirm_password.is_empty() && r.confirm_password != r.password {
            return Err(ApiError::invalid("password and confirm_password differ").into());
        }
        let user_id = self.auth.register(&r.email, &r.password).await?;
        Ok(Response::new(pb::RegisterResp { user_id }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginReq>,
    ) -> Result<Response<pb::LoginResp>, Status> {
        let ip = client_ip(&self.identity, &request);
        let r = request.into_inner();
        let pair = self.auth.login(&r.email, &r.password, ip).await?;
        Ok(Response::new(tokens(pair)))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshReq>,
    ) -> Result<Response<pb::LoginResp>, Status> {
        let pair = self
            .auth
            .refresh(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(tokens(pair)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutReq>,
    ) -> Result<Response<pb::LogoutResp>, Status> {
        let caller = self.caller(&request)?;
        self.auth.logout(&caller).await?;
        Ok(Response::new(pb::LogoutResp {}))
    }

    async fn get_me(&self, request: Request<pb::GetMeReq>) -> Result<Response<pb::User>, Status> {
        let caller = self.caller(&request)?;
        let me = self.auth.me(&caller).await?;
        Ok(Response::new(pb::User {
            id: me.id,
            email: me.email,
            roles: me.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            created_at: me.created_at,
        }))
    }
}
