//! The edge's own admin API: the blacklist and the access rules. Changes go
//! to the edge store and reach every replica within `state_poll`.
//!
//! - `GET /api/v1/admin/blacklist` · `POST` `{user_id}` or `{cidr}` with an
//!   optional `expires_at` → 201 `{id}` · `DELETE /api/v1/admin/blacklist/{id}`
//! - `GET /api/v1/admin/access-rules` · `PUT` `{rules: [...]}` (an invalid
//!   rule is refused with a message naming it; the old rules stay)

use bytes::Bytes;
use flashmall_mesh::contract::rfc3339_ms;
use flashmall_mesh::{ApiError, ErrorCode};
use ipnet::IpNet;
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::json;

use crate::state::{AccessRule, BlacklistEntry, StoreError, View, check_rules, now_ms};

/// Largest admin request body.
const MAX_BODY: usize = 64 * 1024;

pub const BLACKLIST: &str = "/api/v1/admin/blacklist";
pub const ACCESS_RULES: &str = "/api/v1/admin/access-rules";

/// True for paths this module answers.
pub fn owns(path: &str) -> bool {
    path == BLACKLIST || path.starts_with("/api/v1/admin/blacklist/") || path == ACCESS_RULES
}

/// A status and a JSON body (None: 204).
pub type Answer = (u16, Option<serde_json::Value>);

async fn body<T: for<'de> Deserialize<'de>>(session: &mut Session) -> Result<T, ApiError> {
    let mut buf = Vec::new();
    loop {
        let chunk: Option<Bytes> = session
            .read_request_body()
            .await
            .map_err(|e| ApiError::invalid(format!("the request body could not be read: {e}")))?;
        let Some(chunk) = chunk else { break };
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!("the request body is larger than {MAX_BODY} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&buf)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid: {e}")))
}

fn store_error(e: StoreError) -> ApiError {
    tracing::warn!(error = %e, "edge store call failed");
    match e {
        StoreError::Unavailable(_) => {
            ApiError::unavailable("the edge store is unavailable, retry shortly")
        }
        StoreError::Corrupt(_) => {
            ApiError::internal("the edge store holds data this edge cannot read; see its log")
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEntry {
    user_id: Option<String>,
    cidr: Option<String>,
    expires_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    rules: Vec<AccessRule>,
}

fn entry_json(e: &BlacklistEntry) -> serde_json::Value {
    json!({
        "id": e.id,
        "user_id": e.user_id,
        "cidr": e.cidr.map(|c| c.to_string()),
        "expires_at": e.expires_at_ms.map(rfc3339_ms),
        "created_at": rfc3339_ms(e.created_at_ms),
    })
}

/// Answers an admin request (the caller is already known to be an admin).
pub async fn handle(
    session: &mut Session,
    view: &View,
    method: &str,
    path: &str,
) -> Result<Answer, ApiError> {
    let now = now_ms();
    match (method, path) {
        ("GET", BLACKLIST) => {
            let snapshot = view.current();
            let entries: Vec<_> = snapshot
                .state
                .blacklist
                .iter()
                .filter(|e| e.expires_at_ms.is_none_or(|x| x > now))
                .map(entry_json)
                .collect();
            Ok((200, Some(json!({ "entries": entries }))))
        }
        ("POST", BLACKLIST) => {
            let new: NewEntry = body(session).await?;
            let cidr = match &new.cidr {
                Some(raw) => Some(parse_cidr(raw)?),
                None => None,
            };
            if new.user_id.is_some() == cidr.is_some() {
                return Err(ApiError::invalid("give exactly one of user_id and cidr"));
            }
            if let Some(u) = &new.user_id
                && !flashmall_mesh::valid_user_id(u)
            {
                return Err(ApiError::invalid("user_id is not a user id"));
            }
            let expires_at_ms = match &new.expires_at {
                Some(raw) => {
                    let t = time::OffsetDateTime::parse(
                        raw,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map_err(|_| ApiError::invalid("expires_at must be an RFC 3339 instant"))?;
                    // An instant before 1970 has no u64 form; it is in the
                    // past all the same, never "no expiry".
                    match u64::try_from(t.unix_timestamp_nanos() / 1_000_000) {
                        Ok(ms) if ms > now => Some(ms),
                        _ => {
                            return Err(ApiError::invalid("expires_at must be in the future"));
                        }
                    }
                }
                None => None,
            };
            let entry = BlacklistEntry {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: new.user_id,
                cidr,
                expires_at_ms,
                created_at_ms: now,
            };
            let id = entry.id.clone();
            view.store.add_blacklist(entry).await.map_err(store_error)?;
            view.refresh().await.map_err(store_error)?;
            tracing::info!(id, "blacklist entry added");
            Ok((201, Some(json!({ "id": id }))))
        }
        ("DELETE", p) if p.starts_with("/api/v1/admin/blacklist/") => {
            let id = &p["/api/v1/admin/blacklist/".len()..];
            if !view.store.remove_blacklist(id).await.map_err(store_error)? {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    "no such blacklist entry",
                ));
            }
            view.refresh().await.map_err(store_error)?;
            tracing::info!(id, "blacklist entry removed");
            Ok((204, None))
        }
        ("GET", ACCESS_RULES) => Ok((200, Some(json!({ "rules": view.current().state.rules })))),
        ("PUT", ACCESS_RULES) => {
            let rules: Rules = body(session).await?;
            check_rules(&rules.rules).map_err(ApiError::invalid)?;
            view.store
                .set_rules(rules.rules.clone())
                .await
                .map_err(store_error)?;
            view.refresh().await.map_err(store_error)?;
            tracing::info!(count = rules.rules.len(), "access rules replaced");
            Ok((200, Some(json!({ "rules": rules.rules }))))
        }
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            "no such admin route or method",
        )),
    }
}

fn parse_cidr(raw: &str) -> Result<IpNet, ApiError> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| {
            ApiError::invalid("cidr must be an address range such as 203.0.113.0/24, or an address")
        })
}
