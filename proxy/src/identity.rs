//! Verifies access tokens at the edge: HS256 (the auth service's secret),
//! the algorithm pinned, `exp`/`nbf`/`iss`/`aud` checked with a small
//! leeway. `alg: none` and any other algorithm are refused.

use std::time::Duration;

use flashmall_mesh::identity::AccessClaims;
use flashmall_mesh::valid_user_id;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Checks access tokens.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

/// Why a token was refused (for logs and metrics; clients get one answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    Invalid(String),
}

impl Verifier {
    pub fn new(secret: &[u8], issuer: &str, audience: &str, leeway: Duration) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        Verifier {
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// The claims of a bearer token from an `Authorization` header value.
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<AccessClaims, Refused> {
        let value = authorization.ok_or(Refused::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(Refused::Malformed)?
            .trim();
        if token.is_empty() || token.len() > 8 * 1024 {
            return Err(Refused::Malformed);
        }
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &self.key, &self.validation)
            .map_err(|e| Refused::Invalid(e.to_string()))?
            .claims;
        if !valid_user_id(&claims.sub)
            || claims.jti.is_empty()
            || claims.jti.len() > 128
            || claims.jti.contains('.')
        {
            return Err(Refused::Invalid("claims out of shape".into()));
        }
        Ok(claims)
    }
}
