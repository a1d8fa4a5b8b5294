//! Where the caller's identity enters the engine: the one function every
//! HTTP and gRPC handler calls.
//!
//! For now the trusted caller (the edge proxy, in front of which nothing
//! else can reach the engine) states the user in `x-user-id` and the roles
//! in `x-user-roles`. The edge issue replaces this function's body with
//! verified identity; no handler reads these headers itself.

use flashmall_mesh::{ApiError, ErrorCode};
use http::HeaderMap;

/// Header naming the calling user (stand-in until verified identity lands).
pub const USER_HEADER: &str = "x-user-id";
/// Header listing the caller's roles, comma-separated.
pub const ROLES_HEADER: &str = "x-user-roles";

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub roles: Vec<String>,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.roles.iter().any(|r| r == "admin")
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "this action needs the admin role",
            ))
        }
    }
}

/// Reads the caller from request headers; 401 when there is none.
pub fn caller(headers: &HeaderMap) -> Result<Caller, ApiError> {
    let user_id = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "this request needs an authenticated user",
            )
        })?;
    if user_id.len() > 64
        || !user_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "the caller's user id is malformed",
        ));
    }
    let roles = headers
        .get(ROLES_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(|r| r.trim().to_owned())
                .filter(|r| !r.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Caller {
        user_id: user_id.to_owned(),
        roles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_roles() {
        let mut h = HeaderMap::new();
        h.insert(USER_HEADER, "u-1".parse().unwrap());
        h.insert(ROLES_HEADER, "customer, admin".parse().unwrap());
        let c = caller(&h).unwrap();
        assert_eq!(c.user_id, "u-1");
        assert!(c.is_admin());
    }

    #[test]
    fn rejects_missing_or_malformed_user() {
        let mut h = HeaderMap::new();
        assert_eq!(caller(&h).unwrap_err().code, ErrorCode::Unauthenticated);
        h.insert(USER_HEADER, "a b".parse().unwrap());
        assert_eq!(caller(&h).unwrap_err().code, ErrorCode::Unauthenticated);
    }
}
