//! The auth and user service: accounts, passwords, logins, token rotation,
//! logout, and roles. Every operation on an account acts for the verified
//! caller (`flashmall_mesh::Identity`); no user id is taken from a body.
//!
//! - `password.rs`: the policy and argon2id hashing.
//! - `tokens.rs`: access JWTs and rotating refresh tokens.
//! - `guard.rs`: brute-force back-off per account and per IP.
//! - `http.rs`: the JSON API; `grpc.rs`: the gRPC API.

pub mod config;
pub mod grpc;
pub mod guard;
pub mod http;
pub mod password;
pub mod tokens;

use flashmall_mesh::now_ms;
use std::net::IpAddr;
use std::sync::Arc;

use flashmall_mesh::{ApiError, ErrorCode, Identity, Role};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::store::{ServiceStore, Table, Versioned};
use config::AuthConfig;
use guard::Limit;
use password::Hasher;
use tokens::{Issuer, RefreshToken};

/// A stored account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub roles: Vec<Role>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Logins started before this instant (Unix ms) can no longer refresh:
    /// set when the password changes.
    #[serde(default)]
    pub sessions_after_ms: u64,
}

/// A stored refresh token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshRecord {
    family: Uuid,
    user_id: String,
    secret_sha256: String,
    used: bool,
}

/// A stored login family (one login and all its refreshes).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FamilyRecord {
    user_id: String,
    revoked: bool,
    #[serde(default)]
    created_at_ms: u64,
}

/// What a login or refresh answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenPair {
    pub user_id: String,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub token_type: &'static str,
}

/// An account as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub roles: Vec<Role>,
    pub created_at: String,
}

impl From<&UserRecord> for UserView {
    fn from(u: &UserRecord) -> Self {
        UserView {
            id: u.id.clone(),
            email: u.email.clone(),
            roles: u.roles.clone(),
            created_at: flashmall_mesh::contract::rfc3339(u.created_at),
        }
    }
}

/// Longest accepted email address.
pub const MAX_EMAIL: usize = 254;

/// Normalizes and checks an email address.
pub fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let bad = || ApiError::invalid("email must be an address such as alice@example.com");
    if email.is_empty()
        || email.len() > MAX_EMAIL
        || email.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    let (local, domain) = email.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(bad());
    }
    Ok(email)
}

fn invalid_credentials() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the email or the password is wrong",
    )
}

fn invalid_refresh() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "the refresh token is not valid; log in again",
    )
}

fn decode<T: for<'de> Deserialize<'de>>(v: &Versioned) -> Result<T, ApiError> {
    serde_json::from_slice(&v.value)
        .map_err(|e| ApiError::internal(format!("a stored record is corrupt: {e}")))
}

/// Makes the existing account of `email` an admin (the operator's act:
/// `flashmall grant-admin`, or `[auth] bootstrap_admins` at start-up; never
/// a registration). `true` when granted now, `false` when it was an admin
/// already; `not_found` when no account has the email.
pub async fn grant_admin(store: &dyn ServiceStore, email: &str) -> Result<bool, ApiError> {
    let email = normalize_email(email)?;
    for _ in 0..8 {
        let Some(id) = store.get(Table::Emails, &email).await? else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("no account has the email {email}; register it first"),
            ));
        };
        let id = String::from_utf8_lossy(&id.value).into_owned();
        let Some(current) = store.get(Table::Users, &id).await? else {
            return Err(ApiError::new(ErrorCode::NotFound, "the account is gone"));
        };
        let mut user: UserRecord = decode(&current)?;
        if user.roles.contains(&Role::Admin) {
            return Ok(false);
        }
        user.roles.push(Role::Admin);
        user.roles.sort();
        if store
            .replace(Table::Users, &id, current.version, encode(&user), None)
            .await?
        {
            tracing::info!(user_id = %id, "admin granted");
            return Ok(true);
        }
    }
    Err(ApiError::unavailable(
        "the account is contended, retry shortly",
    ))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// The auth and user service.
pub struct Auth {
    store: Arc<dyn ServiceStore>,
    config: AuthConfig,
    issuer: Issuer,
    hasher: Hasher,
}

impl Auth {
    pub fn new(
        store: Arc<dyn ServiceStore>,
        config: AuthConfig,
        jwt_secret: &[u8],
    ) -> Result<Auth, String> {
        let hasher = Hasher::new(config.argon2_memory_kib, config.argon2_iterations)?;
        let issuer = Issuer::new(
            jwt_secret,
            &config.issuer,
            &config.audience,
            config.access_ttl,
        );
        Ok(Auth {
            store,
            config,
            issuer,
            hasher,
        })
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// One account from one address (and a caller checking their own
    /// password): doubling back-off.
    fn pair_limit(&self) -> Limit {
        Limit {
            failures: self.config.login_account_failures,
            backoff: self.config.login_backoff,
            backoff_max: self.config.login_backoff_max,
            window: self.config.login_window,
        }
    }

    /// One account from every address: past the ceiling, a fixed back-off
    /// per further attempt (for addresses that failed on it before).
    fn ceiling_limit(&self) -> Limit {
        Limit {
            failures: self.config.login_account_ceiling,
            backoff_max: self.config.login_backoff,
            ..self.pair_limit()
        }
    }

    async fn user(&self, id: &str) -> Result<Option<(UserRecord, u64)>, ApiError> {
        match self.store.get(Table::Users, id).await? {
            Some(v) => Ok(Some((decode(&v)?, v.version))),
            None => Ok(None),
        }
    }

    /// Grants admin to the existing accounts of `[auth] bootstrap_admins`
    /// (at start-up): an email nobody registered yet is skipped, so whoever
    /// registers it later gets nothing. Returns the emails granted now.
    pub async fn grant_bootstrap_admins(&self) -> Vec<String> {
        let mut granted = Vec::new();
        for email in &self.config.bootstrap_admins {
            match grant_admin(&*self.store, email).await {
                Ok(true) => granted.push(email.clone()),
                Ok(false) => {}
                Err(e) if e.code == ErrorCode::NotFound => tracing::info!(
                    email = %email,
                    "bootstrap admin not registered yet: register it, then restart auth or run flashmall grant-admin"
                ),
                Err(e) => {
                    tracing::warn!(email = %email, error = %e, "granting a bootstrap admin failed")
                }
            }
        }
        granted
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<(UserRecord, u64)>, ApiError> {
        let Some(id) = self.store.get(Table::Emails, email).await? else {
            return Ok(None);
        };
        let id = String::from_utf8_lossy(&id.value).into_owned();
        self.user(&id).await
    }

    /// Creates an account, a customer's: registering never makes an admin
    /// (`grant_admin` does, out of band).
    pub async fn register(&self, email: &str, password: &str) -> Result<String, ApiError> {
        let email = normalize_email(email)?;
        password::check_policy(password, &email, self.config.password_min_length)?;
        let user = UserRecord {
            id: Uuid::now_v7().to_string(),
            email: email.clone(),
            password_hash: self.hasher.hash(password).await?,
            roles: vec![Role::Customer],
            created_at: OffsetDateTime::now_utc(),
            sessions_after_ms: 0,
        };
        // The account first, then the email claim: a crash between leaves an
        // unreachable account, never an email pointing nowhere.
        self.store
            .insert(Table::Users, &user.id, encode(&user), None)
            .await?;
        if !self
            .store
            .insert(Table::Emails, &email, user.id.clone().into_bytes(), None)
            .await?
        {
            self.store.delete(Table::Users, &user.id, None).await?;
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "an account with this email exists",
            ));
        }
        metrics::counter!("flashmall_auth_registrations_total").increment(1);
        tracing::info!(user_id = %user.id, "account registered");
        Ok(user.id)
    }

    /// Logs in: an access token and a refresh token of a new family.
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        ip: IpAddr,
    ) -> Result<TokenPair, ApiError> {
        let email = normalize_email(email).map_err(|_| invalid_credentials())?;
        if password.chars().count() > password::MAX_PASSWORD {
            return Err(invalid_credentials());
        }
        // `guard`'s module docs: this address on this account counts as it
        // arrives (and backs off past a few failures); the account-wide
        // ceiling holds back only addresses that failed on it before. Both
        // refuse before hashing.
        let pair_key = guard::pair_key(&email, ip);
        let account_key = format!("acct:{email}");
        guard::admit(&*self.store, &pair_key, self.pair_limit()).await?;
        if guard::attempts(&*self.store, &pair_key).await? > 1 {
            guard::check(&*self.store, &account_key).await?;
        }
        let found = self.user_by_email(&email).await?;
        let hash = found.as_ref().map(|(u, _)| u.password_hash.as_str());
        if !self.hasher.verify(password, hash).await? {
            guard::record_failure(&*self.store, &account_key, self.ceiling_limit()).await?;
            metrics::counter!("flashmall_auth_logins_total", "outcome" => "failed").increment(1);
            return Err(invalid_credentials());
        }
        let Some((user, _)) = found else {
            return Err(invalid_credentials());
        };
        guard::clear(&*self.store, &pair_key).await?;
        let family = Uuid::now_v7();
        let record = FamilyRecord {
            user_id: user.id.clone(),
            revoked: false,
            created_at_ms: now_ms(),
        };
        self.store
            .insert(
                Table::TokenFamilies,
                &family.to_string(),
                encode(&record),
                Some(self.config.refresh_ttl),
            )
            .await?;
        metrics::counter!("flashmall_auth_logins_total", "outcome" => "ok").increment(1);
        self.issue(&user, family).await
    }

    async fn issue(&self, user: &UserRecord, family: Uuid) -> Result<TokenPair, ApiError> {
        let (access_token, _) = self
            .issuer
            .access_token(&user.id, &user.roles, family)
            .map_err(ApiError::internal)?;
        let refresh = RefreshToken::generate();
        let record = RefreshRecord {
            family,
            user_id: user.id.clone(),
            secret_sha256: refresh.secret_hash(),
            used: false,
        };
        self.store
            .insert(
                Table::RefreshTokens,
                &refresh.id.to_string(),
                encode(&record),
                Some(self.config.refresh_ttl),
            )
            .await?;
        Ok(TokenPair {
            user_id: user.id.clone(),
            access_token,
            refresh_token: refresh.encode(),
            expires_in: self.issuer.ttl_secs(),
            token_type: "Bearer",
        })
    }

    /// Rotates a refresh token. Presenting one that was already rotated is
    /// taken as theft: the whole family is revoked.
    pub async fn refresh(&self, raw: &str) -> Result<TokenPair, ApiError> {
        let token = RefreshToken::parse(raw.trim()).ok_or_else(invalid_refresh)?;
        let key = token.id.to_string();
        let stored = self
            .store
            .get(Table::RefreshTokens, &key)
            .await?
            .ok_or_else(invalid_refresh)?;
        let mut record: RefreshRecord = decode(&stored)?;
        if record.secret_sha256 != token.secret_hash() {
            return Err(invalid_refresh());
        }
        let family = self
            .store
            .get(Table::TokenFamilies, &record.family.to_string())
            .await?
            .ok_or_else(invalid_refresh)?;
        let family: FamilyRecord = decode(&family)?;
        if family.revoked {
            return Err(invalid_refresh());
        }
        if record.used {
            self.revoke_family(record.family).await?;
            metrics::counter!("flashmall_auth_refresh_reuse_total").increment(1);
            tracing::warn!(user_id = %record.user_id, family = %record.family, "refresh token reused, family revoked");
            return Err(invalid_refresh());
        }
        record.used = true;
        // Two refreshes racing with one token: one wins, the other is reuse.
        if !self
            .store
            .replace(
                Table::RefreshTokens,
                &key,
                stored.version,
                encode(&record),
                Some(self.config.refresh_ttl),
            )
            .await?
        {
            self.revoke_family(record.family).await?;
            return Err(invalid_refresh());
        }
        let (user, _) = self
            .user(&record.user_id)
            .await?
            .ok_or_else(invalid_refresh)?;
        if family.created_at_ms < user.sessions_after_ms {
            // The password changed after this login began.
            return Err(invalid_refresh());
        }
        self.issue(&user, record.family).await
    }

    async fn revoke_family(&self, family: Uuid) -> Result<(), ApiError> {
        let key = family.to_string();
        for _ in 0..8 {
            let Some(stored) = self.store.get(Table::TokenFamilies, &key).await? else {
                return Ok(());
            };
            let mut record: FamilyRecord = decode(&stored)?;
            if record.revoked {
                return Ok(());
            }
            record.revoked = true;
            if self
                .store
                .replace(
                    Table::TokenFamilies,
                    &key,
                    stored.version,
                    encode(&record),
                    Some(self.config.refresh_ttl),
                )
                .await?
            {
                return Ok(());
            }
        }
        Err(ApiError::unavailable(
            "token revocation is contended, retry shortly",
        ))
    }

    /// Logs out: the caller's login family can no longer refresh. (The edge
    /// denies the access token itself until it expires.)
    pub async fn logout(&self, caller: &Identity) -> Result<(), ApiError> {
        if let Some(family) = tokens::family_of(&caller.token_id) {
            self.revoke_family(family).await?;
        }
        Ok(())
    }

    /// The caller's own account.
    pub async fn me(&self, caller: &Identity) -> Result<UserView, ApiError> {
        let (user, _) = self
            .user(&caller.user_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the account no longer exists"))?;
        Ok(UserView::from(&user))
    }

    /// Changes the caller's email and/or password; both need the current password.
    pub async fn update_me(
        &self,
        caller: &Identity,
        email: Option<&str>,
        new_password: Option<&str>,
        current_password: &str,
    ) -> Result<UserView, ApiError> {
        if email.is_none() && new_password.is_none() {
            return Err(ApiError::invalid(
                "nothing to change: give email and/or password",
            ));
        }
        let (mut user, version) = self
            .user(&caller.user_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the account no longer exists"))?;
        self.check_password(&user, current_password, "the current password is wrong")
            .await?;
        let old_email = user.email.clone();
        if let Some(email) = email {
            user.email = normalize_email(email)?;
        }
        if let Some(password) = new_password {
            password::check_policy(password, &user.email, self.config.password_min_length)?;
            user.password_hash = self.hasher.hash(password).await?;
            // Every login made with the old password stops refreshing.
            user.sessions_after_ms = now_ms();
        }
        let email_changed = user.email != old_email;
        if email_changed
            && !self
                .store
                .insert(
                    Table::Emails,
                    &user.email,
                    user.id.clone().into_bytes(),
                    None,
                )
                .await?
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "an account with this email exists",
            ));
        }
        if !self
            .store
            .replace(Table::Users, &user.id, version, encode(&user), None)
            .await?
        {
            if email_changed {
                self.store.delete(Table::Emails, &user.email, None).await?;
            }
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the account changed meanwhile; retry",
            ));
        }
        if email_changed {
            self.store.delete(Table::Emails, &old_email, None).await?;
        }
        Ok(UserView::from(&user))
    }

    /// Deletes the caller's account; needs the password.
    pub async fn delete_me(&self, caller: &Identity, password: &str) -> Result<(), ApiError> {
        let (user, version) = self
            .user(&caller.user_id)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "the account no longer exists"))?;
        self.check_password(&user, password, "the password is wrong")
            .await?;
        if !self
            .store
            .delete(Table::Users, &user.id, Some(version))
            .await?
        {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the account changed meanwhile; retry",
            ));
        }
        self.store.delete(Table::Emails, &user.email, None).await?;
        self.logout(caller).await?;
        tracing::info!(user_id = %user.id, "account deleted");
        Ok(())
    }

    /// Checks the account's own password (changing or deleting it), under
    /// the same back-off as logins, so a stolen token cannot guess it.
    async fn check_password(
        &self,
        user: &UserRecord,
        password: &str,
        wrong: &str,
    ) -> Result<(), ApiError> {
        let key = format!("own:{}", user.id);
        guard::admit(&*self.store, &key, self.pair_limit()).await?;
        if !self
            .hasher
            .verify(password, Some(&user.password_hash))
            .await?
        {
            return Err(ApiError::new(ErrorCode::Forbidden, wrong));
        }
        guard::clear(&*self.store, &key).await
    }

    /// Sets a user's roles (admins only).
    pub async fn set_roles(
        &self,
        caller: &Identity,
        user_id: &str,
        roles: &[String],
    ) -> Result<UserView, ApiError> {
        caller.require(Role::Admin)?;
        let mut parsed = roles
            .iter()
            .map(|r| {
                Role::parse(r.trim()).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "unknown role {r:?}: roles are customer, merchant and admin"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        parsed.sort();
        parsed.dedup();
        if parsed.is_empty() {
            return Err(ApiError::invalid("roles must name at least one role"));
        }
        for _ in 0..8 {
            let (mut user, version) = self
                .user(user_id)
                .await?
                .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no such user"))?;
            user.roles = parsed.clone();
            if self
                .store
                .replace(Table::Users, user_id, version, encode(&user), None)
                .await?
            {
                tracing::info!(user_id, by = %caller.user_id, roles = ?parsed, "roles changed");
                return Ok(UserView::from(&user));
            }
        }
        Err(ApiError::unavailable(
            "the account is contended, retry shortly",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(
            normalize_email("  Alice@Example.COM ").unwrap(),
            "alice@example.com"
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@@b.com",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
        assert!(normalize_email(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
