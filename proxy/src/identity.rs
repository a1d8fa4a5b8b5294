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
    /// Tokens that verified, found by their last bytes (the signature's:
    /// hashing a few bytes, not a token of hundreds), with their whole text
    /// to compare.
    verified: RwLock<HashMap<TokenTail, Remembered>>,
}

/// A verified token's whole text and its claims.
type Remembered = (Box<str>, Arc<AccessClaims>);

/// How many of a token's last bytes find it in the cache.
const TAIL: usize = 32;

/// A token's last [`TAIL`] bytes (zero-padded on the left when shorter).
type TokenTail = [u8; TAIL];

fn tail(token: &str) -> TokenTail {
    let bytes = token.as_bytes();
    let n = bytes.len().min(TAIL);
    let mut key = [0u8; TAIL];
    key[TAIL - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    key
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
        let claims = {
            let verified = self.verified.read().ok()?;
            let (text, claims) = verified.get(&tail(token))?;
            // Another token with the same last bytes is not this one.
            (text.as_ref() == token).then(|| Arc::clone(claims))?
        };
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
            verified.insert(tail(token), (token.into(), Arc::clone(claims)));
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

/// Largest JWKS document read.
const JWKS_MAX_BYTES: usize = 1024 * 1024;

/// How long one fetch of a JWKS URL may take.
const JWKS_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Loads a JWKS from its source; an `https://` URL is verified with `https`
/// (`flashmall_mesh::tls::public_client_config`).
pub async fn load_jwks(
    source: &JwksSource,
    https: &Arc<rustls::ClientConfig>,
) -> Result<JwkSet, String> {
    let bytes = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        JwksSource::Url(url) => {
            let fetched = tokio::time::timeout(
                JWKS_FETCH_TIMEOUT,
                flashmall_mesh::tls::fetch(url, https, JWKS_MAX_BYTES),
            )
            .await
            .map_err(|_| format!("cannot fetch {url}: no answer within {JWKS_FETCH_TIMEOUT:?}"))?
            .map_err(|e| format!("cannot fetch {e}"))?;
            match fetched {
                (status, body) if status.is_success() => body.to_vec(),
                (status, _) => return Err(format!("cannot fetch {url}: {status}")),
            }
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("the JWKS is not valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flashmall_mesh::Role;
    use jsonwebtoken::{EncodingKey, Header};

    const SECRET: &[u8] = b"a test secret of at least thirty-two bytes";

    fn token(secret: &[u8], exp: u64) -> String {
        let now = now_secs();
        let claims = AccessClaims {
            sub: "0190a0a0-0000-7000-8000-000000000001".into(),
            roles: vec![Role::Customer],
            iat: now,
            nbf: now,
            exp,
            iss: "flashmall".into(),
            aud: "flashmall-api".into(),
            jti: "0123456789abcdef0123456789abcdef0123".into(),
        };
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn verifier() -> Verifier {
        Verifier::new(Some(SECRET), "flashmall", "flashmall-api", Duration::ZERO)
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let v = verifier();
        let t = token(SECRET, now_secs() + 2);
        let header = format!("Bearer {t}");
        let first = v.verify_header(Some(&header)).unwrap();
        let again = v.verify_header(Some(&header)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the second check is the remembered one"
        );
        std::thread::sleep(Duration::from_millis(3_100));
        assert!(matches!(
            v.verify_header(Some(&header)),
            Err(Refused::Invalid(_))
        ));
    }

    #[test]
    fn only_the_exact_token_is_remembered() {
        let v = verifier();
        let exp = now_secs() + 600;
        let good = token(SECRET, exp);
        v.verify_header(Some(&format!("Bearer {good}"))).unwrap();
        // The same claims signed with another key, and the good token with
        // its signature altered: neither passes on the strength of the
        // remembered one.
        let forged = token(b"another secret of at least thirty-two bytes", exp);
        assert!(v.verify_header(Some(&format!("Bearer {forged}"))).is_err());
        let mut altered = good.clone();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(v.verify_header(Some(&format!("Bearer {altered}"))).is_err());
        // The good token's signature (its last bytes, which find it in the
        // cache) under other claims: found, compared, verified, refused.
        let (payload_at, _) = good.match_indices('.').next().unwrap();
        let mut borrowed = good.clone();
        let swapped = if &good[payload_at + 1..payload_at + 2] == "e" {
            "f"
        } else {
            "e"
        };
        borrowed.replace_range(payload_at + 1..payload_at + 2, swapped);
        assert_eq!(super::tail(&borrowed), super::tail(&good));
        assert!(
            v.verify_header(Some(&format!("Bearer {borrowed}")))
                .is_err()
        );
        assert!(v.verify_header(Some(&format!("Bearer {good}"))).is_ok());
    }

    #[test]
    fn new_keys_forget_every_remembered_token() {
        let v = verifier();
        let header = format!("Bearer {}", token(SECRET, now_secs() + 600));
        let first = v.verify_header(Some(&header)).unwrap();
        v.set_jwks(&JwkSet { keys: Vec::new() });
        let again = v.verify_header(Some(&header)).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &again),
            "verified afresh after new keys"
        );
    }
}
