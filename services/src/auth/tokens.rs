//! Tokens: short-lived access JWTs and opaque, rotating refresh tokens.
//!
//! An access token's `jti` starts with its login's family id (32 hex
//! digits), so logout can revoke the family from the access token alone.
//! A refresh token is `rt.<id>.<secret>`; only the secret's SHA-256 is stored.

use flashmall_mesh::Role;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use flashmall_mesh::identity::AccessClaims as Claims;

/// Signs access tokens (HS256).
#[derive(Clone)]
pub struct Issuer {
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

impl Issuer {
    pub fn new(secret: &[u8], issuer: &str, audience: &str, ttl: std::time::Duration) -> Issuer {
        Issuer {
            key: EncodingKey::from_secret(secret),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl_secs: ttl.as_secs(),
        }
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// A signed access token for `user` in login `family`.
    pub fn access_token(
        &self,
        user: &str,
        roles: &[Role],
        family: Uuid,
    ) -> Result<(String, Claims), String> {
        let now = now_secs();
        let claims = Claims {
            sub: user.to_owned(),
            roles: roles.to_vec(),
            iat: now,
            nbf: now,
            exp: now + self.ttl_secs,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: format!("{}{}", family.simple(), Uuid::now_v7().simple()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key)
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok((token, claims))
    }
}

/// The login family an access token's `jti` belongs to.
pub fn family_of(jti: &str) -> Option<Uuid> {
    Uuid::try_parse(flashmall_mesh::contract::login_family(jti)?).ok()
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An opaque refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub id: Uuid,
    secret: String,
}

impl RefreshToken {
    pub fn generate() -> RefreshToken {
        RefreshToken {
            id: Uuid::now_v7(),
            secret: format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple()),
        }
    }

    pub fn encode(&self) -> String {
        format!("rt.{}.{}", self.id.simple(), self.secret)
    }

    pub fn parse(raw: &str) -> Option<RefreshToken> {
        let mut parts = raw.split('.');
        let (Some("rt"), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(RefreshToken {
            id: Uuid::try_parse(id).ok()?,
            secret: secret.to_owned(),
        })
    }

    /// What is stored: the secret's SHA-256, hex.
    pub fn secret_hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_round_trip_and_reject_junk() {
        let t = RefreshToken::generate();
        assert_eq!(RefreshToken::parse(&t.encode()), Some(t.clone()));
        for junk in [
            "",
            "rt",
            "rt.x.y",
            "rt..",
            &format!("rt.{}.zz", t.id.simple()),
            &format!("{}.extra", t.encode()),
        ] {
            assert_eq!(RefreshToken::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn jti_names_its_family() {
        let issuer = Issuer::new(&[1; 32], "i", "a", std::time::Duration::from_secs(60));
        let family = Uuid::now_v7();
        let (_, claims) = issuer.access_token("u", &[Role::Customer], family).unwrap();
        assert_eq!(family_of(&claims.jti), Some(family));
    }
}
