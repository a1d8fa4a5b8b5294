//! Verifies access tokens at the edge. A token without `kid` is checked
//! with the auth service's HS256 secret; a token with `kid` with that key
//! of the JWKS (a file or a URL, refreshed in the background). The
//! algorithm is pinned per key: a token whose header names another (or
//! `none`) is refused. `exp`, `nbf`, `iss` and `aud` are checked with a
//! small leeway.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashmall_mesh::identity::AccessClaims;
use flashmall_mesh::valid_user_id;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Why a token was refused (for logs and metrics; clients get one answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Missing,
    Malformed,
    Invalid(String),
}

type KeyRing = HashMap<String, (Arc<DecodingKey>, Algorithm)>;

/// How many verified tokens are remembered.
pub const VERIFIED_CAPACITY: usize = 65_536;

/// Checks access tokens.
pub struct Verifier {
    hs256: Option<Arc<DecodingKey>>,
    keys: RwLock<Arc<KeyRing>>,
    validation: Validation,
    /// Tokens that verified, by their text.
    verified: RwLock<HashMap<Box<str>, Arc<AccessClaims>>>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The algorithm a JWK is pinned to: its `alg`, or the one its key type implies.
fn pinned(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        return Algorithm::try_from(alg).ok();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        _ => None,
    }
}

impl Verifier {
    /// `secret`: the HS256 secret (none: only JWKS keys are accepted).
    pub fn new(secret: Option<&[u8]>, issuer: &str, audience: &str, leeway: Duration) -> Verifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        Verifier {
            hs256: secret.map(|s| Arc::new(DecodingKey::from_secret(s))),
            keys: RwLock::new(Arc::new(HashMap::new())),
            validation,
            verified: RwLock::new(HashMap::new()),
        }
    }

    /// A remembered token's claims, while its time window still holds.
    fn remembered(&self, token: &str) -> Option<Arc<AccessClaims>> {
        let claims = self.verified.read().ok()?.get(token).cloned()?;
        let now = now_secs();
        let leeway = self.validation.leeway;
        (claims.exp.saturating_add(leeway) > now && claims.nbf <= now.saturating_add(leeway))
            .then_some(claims)
    }

    fn remember(&self, token: &str, claims: &Arc<AccessClaims>) {
        if let Ok(mut verified) = self.verified.write() {
            if verified.len() >= VERIFIED_CAPACITY {
                // Bounded memory: start over (expired entries go too).
                verified.clear();
            }
            verified.insert(token.into(), Arc::clone(claims));
        }
    }

    /// Replaces the JWKS keys; keys without `kid` or a usable algorithm are
    /// skipped. Returns how many keys are installed.
    pub fn set_jwks(&self, set: &JwkSet) -> usize {
        let mut ring = KeyRing::new();
        for jwk in &set.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), pinned(jwk)) else {
                continue;
            };
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                // Shared secrets never come from a published key set.
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                ring.insert(kid, (Arc::new(key), alg));
            }
        }
        let n = ring.len();
        if let Ok(mut slot) = self.keys.write() {
            *slot = Arc::new(ring);
        }
        // A token verified with a key that is gone must not stay valid.
        if let Ok(mut verified) = self.verified.write() {
            verified.clear();
        }
        n
    }

    /// The claims of a bearer token from an `Authorization` header value.
    pub fn verify_header(&self, authorization: Option<&str>) -> Result<Arc<AccessClaims>, Refused> {
        let value = authorization.ok_or(Refused::Missing)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(Refused::Malformed)?
            .trim();
        if token.is_empty() || token.len() > 8 * 1024 {
            return Err(Refused::Malformed);
        }
        if let Some(claims) = self.remembered(token) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refused::Malformed)?;
        let (key, alg) = match &header.kid {
            Some(kid) => {
                let ring = self
                    .keys
                    .read()
                    .map(|r| Arc::clone(&r))
                    .map_err(|_| Refused::Malformed)?;
                let (key, alg) = ring
                    .get(kid)
                    .ok_or_else(|| Refused::Invalid(format!("unknown key id {kid:?}")))?;
                (Arc::clone(key), *alg)
            }
            None => (
                self.hs256
                    .clone()
                    .ok_or_else(|| Refused::Invalid("tokens must name a key (kid)".into()))?,
                Algorithm::HS256,
            ),
        };
        if header.alg != alg {
            return Err(Refused::Invalid(format!(
                "algorithm {:?} is not the key's {alg:?}",
                header.alg
            )));
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![alg];
        let claims = jsonwebtoken::decode::<AccessClaims>(token, &key, &validation)
            .map_err(|e| Refused::Invalid(e.to_string()))?
            .claims;
        if !valid_user_id(&claims.sub)
            || claims.jti.is_empty()
            || claims.jti.len() > 128
            || claims.jti.contains('.')
        {
            return Err(Refused::Invalid("claims out of shape".into()));
        }
        let claims = Arc::new(claims);
        self.remember(token, &claims);
        Ok(claims)
    }
}

/// Where the JWKS comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    File(std::path::PathBuf),
    Url(String),
}

/// Loads a JWKS from its source.
pub async fn load_jwks(source: &JwksSource, http: &reqwest::Client) -> Result<JwkSet, String> {
    let text = match source {
        JwksSource::File(path) => tokio::fs::read_to_string(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        JwksSource::Url(url) => http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("cannot fetch {url}: {e}"))?
            .text()
            .await
            .map_err(|e| format!("cannot read {url}: {e}"))?,
    };
    serde_json::from_str(&text).map_err(|e| format!("the JWKS is not valid: {e}"))
}
