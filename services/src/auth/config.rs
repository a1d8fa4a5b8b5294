//! `[auth]`: the auth service's settings.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[auth]`: the auth and user service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Address the service serves JSON and gRPC on.
    pub listen: SocketAddr,
    /// HS256 secret signing access tokens (32+ characters), shared with the
    /// edge proxy that verifies them. Empty: `flashmall up` makes a random
    /// one; the service run on its own refuses to start without it.
    pub jwt_secret: String,
    /// `iss` of issued access tokens.
    pub issuer: String,
    /// `aud` of issued access tokens.
    pub audience: String,
    /// Lifetime of an access token.
    #[serde(with = "humantime_serde")]
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (each refresh issues a new one).
    #[serde(with = "humantime_serde")]
    pub refresh_ttl: Duration,
    /// Emails whose existing accounts are made admins when the auth
    /// service starts (register first, then start or restart it; or run
    /// `flashmall grant-admin EMAIL`). Registering never makes an admin.
    pub bootstrap_admins: Vec<String>,
    /// Shortest accepted password, in characters.
    pub password_min_length: usize,
    /// Argon2id memory cost, KiB (OWASP: 19456).
    pub argon2_memory_kib: u32,
    /// Argon2id passes (OWASP: 2).
    pub argon2_iterations: u32,
    /// Failed logins of one account from one client address (IPv6: its
    /// /64) before that address backs off on that account (doubling from
    /// `login_backoff`); the account's owner elsewhere is not affected.
    pub login_account_failures: u32,
    /// Failed logins of one account from all addresses together before
    /// each address that has already failed on it waits `login_backoff`
    /// per further attempt (an address with no failure on the account is
    /// never held back).
    pub login_account_ceiling: u32,
    /// First back-off; doubles with every further failure.
    #[serde(with = "humantime_serde")]
    pub login_backoff: Duration,
    /// Longest back-off.
    #[serde(with = "humantime_serde")]
    pub login_backoff_max: Duration,
    /// How long failures are remembered.
    #[serde(with = "humantime_serde")]
    pub login_window: Duration,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            jwt_secret: String::new(),
            issuer: "flashmall".to_owned(),
            audience: "flashmall-api".to_owned(),
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            bootstrap_admins: Vec::new(),
            password_min_length: 10,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            login_account_failures: 5,
            login_account_ceiling: 100,
            login_backoff: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(15 * 60),
            login_window: Duration::from_secs(15 * 60),
            max_body_bytes: 16 * 1024,
        }
    }
}

/// Shortest accepted JWT secret, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "auth.jwt_secret must be at least {MIN_SECRET_LEN} characters"
            ));
        }
        if self.issuer.is_empty() || self.audience.is_empty() {
            return Err("auth.issuer and auth.audience must not be empty".into());
        }
        if self.access_ttl < Duration::from_secs(10)
            || self.access_ttl > flashmall_mesh::contract::MAX_ACCESS_TOKEN_LIFE
        {
            return Err("auth.access_ttl must be between 10s and 24h".into());
        }
        if self.refresh_ttl <= self.access_ttl {
            return Err("auth.refresh_ttl must be longer than auth.access_ttl".into());
        }
        if !(8..=64).contains(&self.password_min_length) {
            return Err("auth.password_min_length must be between 8 and 64".into());
        }
        if self.argon2_memory_kib < 8 || self.argon2_iterations < 1 {
            return Err(
                "auth.argon2_memory_kib must be at least 8 and auth.argon2_iterations at least 1"
                    .into(),
            );
        }
        if self.login_account_failures == 0 || self.login_account_ceiling == 0 {
            return Err(
                "auth.login_account_failures and auth.login_account_ceiling must be at least 1"
                    .into(),
            );
        }
        if self.login_backoff.is_zero() || self.login_backoff_max < self.login_backoff {
            return Err(
                "auth.login_backoff must be above zero and at most auth.login_backoff_max".into(),
            );
        }
        if self.bootstrap_admins.iter().any(|e| !e.contains('@')) {
            return Err("auth.bootstrap_admins must list email addresses".into());
        }
        Ok(())
    }
}
