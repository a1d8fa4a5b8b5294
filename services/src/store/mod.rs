//! The services' store boundary: small records under string keys in named
//! tables, with the conditional writes state transitions need (insert if
//! absent, replace if unchanged: ScyllaDB's lightweight transactions) and
//! optional expiry. Implementations: `embedded` (the embedded KV, the
//! default); ScyllaDB arrives with the orders issue. Both run
//! `tests/store_conformance.rs`.

mod embedded;

pub use embedded::EmbeddedStore;

use std::time::Duration;

use async_trait::async_trait;

/// The tables of the services' data, one per access path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// User id → user.
    Users,
    /// Normalized email → user id (uniqueness of emails).
    Emails,
    /// Refresh token id → refresh token.
    RefreshTokens,
    /// Token family id → family (revocation of a whole login).
    TokenFamilies,
    /// `acct:<email>` or `ip:<address>` → recent failed logins.
    LoginFailures,
    /// One-time grants (`bootstrap-admin/<email>`).
    Grants,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Emails => "emails",
            Table::RefreshTokens => "refresh_tokens",
            Table::TokenFamilies => "token_families",
            Table::LoginFailures => "login_failures",
            Table::Grants => "grants",
        }
    }
}

/// A stored value and its version (bumped by every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Vec<u8>,
    pub version: u64,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("service store unavailable: {0}")]
    Unavailable(String),
    #[error("service store i/o: {0}")]
    Io(String),
}

impl From<StoreError> for flashmall_mesh::ApiError {
    fn from(e: StoreError) -> Self {
        tracing::warn!(error = %e, "service store call failed");
        flashmall_mesh::ApiError::unavailable("the service store is unavailable, retry shortly")
    }
}

/// The services' store boundary.
#[async_trait]
pub trait ServiceStore: Send + Sync + 'static {
    /// A short name for logs (`embedded`, `scylla`).
    fn kind(&self) -> &'static str;

    /// The live (unexpired) value under `key`.
    async fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes `value` if `key` holds no live value; false if it does.
    async fn insert(
        &self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError>;

    /// Replaces the value if its version is still `version`; false if it
    /// changed, expired or is gone.
    async fn replace(
        &self,
        table: Table,
        key: &str,
        version: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError>;

    /// Deletes the value if its version is `version` (any version: `None`);
    /// false when nothing matched.
    async fn delete(
        &self,
        table: Table,
        key: &str,
        version: Option<u64>,
    ) -> Result<bool, StoreError>;
}
