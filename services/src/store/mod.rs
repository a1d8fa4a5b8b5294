//! The services' store boundary. Two kinds of table:
//!
//! - record tables: small records under string keys, with the conditional
//!   writes state transitions need (insert if absent, replace if unchanged:
//!   ScyllaDB's lightweight transactions) and optional expiry;
//! - index tables: rows under a partition, sorted by a sort key, written
//!   unconditionally (one table per access path: orders by user, timers by
//!   due bucket). An index row points at a record; the record is the truth.
//!
//! Implementations: `embedded` (the embedded KV, the default) and `scylla`
//! (ScyllaDB or Cassandra). Both run `tests/store_conformance.rs`.

pub mod config;
mod embedded;
pub mod records;
mod scylla;

pub use embedded::EmbeddedStore;
pub use scylla::ScyllaStore;

use std::time::Duration;

use async_trait::async_trait;

/// The tables of the services' data, one per access path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// User id → user.
    Users,
    /// Normalized email → user id (uniqueness of emails).
    Emails,
    /// Refresh token id → refresh token.
    RefreshTokens,
    /// Token family id → family (revocation of a whole login).
    TokenFamilies,
    /// `pair:<email>|<address>`, `acct:<email>` or `own:<user id>` →
    /// recent failed password checks.
    LoginFailures,
    /// Unused since admins are granted out of band (it recorded one-time
    /// bootstrap grants); kept so existing keyspaces stay as they are.
    Grants,
    /// Order id → order.
    Orders,
    /// Index: user id → that user's orders, by creation time.
    OrdersByUser,
    /// Index: due bucket → order timers (expiry, release retries).
    OrderTimers,
    /// Payment id → payment.
    Payments,
    /// Index: due bucket → payment timers (stuck pending, unfinished capture).
    PaymentTimers,
    /// Timer sweep cursors: timer table name → first bucket not yet swept.
    Cursors,
    /// Product id → product.
    Products,
    /// Category name → category.
    Categories,
    /// Index: `*` (every product) or `c/<category>` → product ids, newest
    /// last (UUIDv7 sort keys).
    ProductIndex,
    /// Index: a word of a product's name or description → product ids.
    ProductTerms,
    /// User id → that user's cart.
    Carts,
    /// Checkout id (derived from the buyer and the Idempotency-Key) →
    /// checkout.
    Checkouts,
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
            Table::Orders => "orders",
            Table::OrdersByUser => "orders_by_user",
            Table::OrderTimers => "order_timers",
            Table::Payments => "payments",
            Table::PaymentTimers => "payment_timers",
            Table::Cursors => "cursors",
            Table::Products => "products",
            Table::Categories => "categories",
            Table::ProductIndex => "product_index",
            Table::ProductTerms => "product_terms",
            Table::Carts => "carts",
            Table::Checkouts => "checkouts",
        }
    }

    /// Whether the table holds index rows (partition + sort key, written
    /// unconditionally) rather than versioned records.
    pub fn is_index(self) -> bool {
        matches!(
            self,
            Table::OrdersByUser
                | Table::OrderTimers
                | Table::PaymentTimers
                | Table::ProductIndex
                | Table::ProductTerms
        )
    }

    /// Every table, for schema creation.
    pub const ALL: [Table; 18] = [
        Table::Users,
        Table::Emails,
        Table::RefreshTokens,
        Table::TokenFamilies,
        Table::LoginFailures,
        Table::Grants,
        Table::Orders,
        Table::OrdersByUser,
        Table::OrderTimers,
        Table::Payments,
        Table::PaymentTimers,
        Table::Cursors,
        Table::Products,
        Table::Categories,
        Table::ProductIndex,
        Table::ProductTerms,
        Table::Carts,
        Table::Checkouts,
    ];
}

/// One row of an index table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub sort: String,
    pub value: Vec<u8>,
}

/// Which rows of a partition to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRange {
    /// Only rows whose sort key comes after this one in the reading order
    /// (above it ascending, below it descending): the previous page's last.
    pub after: Option<String>,
    /// Only rows whose sort key is at most this (ascending reads: due timers).
    pub up_to: Option<String>,
    /// Most rows returned.
    pub limit: usize,
    /// Newest first (sort keys descending).
    pub descending: bool,
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

    /// [`ServiceStore::get`] that also sees a conditional write whose
    /// outcome its writer never learned (a timeout): on ScyllaDB/Cassandra a
    /// `SERIAL` read, which finishes any Paxos round in progress on the key
    /// before it answers, where a quorum read can miss a proposal accepted
    /// but not yet committed. A decision to write nothing is made on it
    /// (`records::move_record`). Costs a Paxos round; the embedded store,
    /// whose writes apply one at a time, reads as `get`.
    async fn get_linearizable(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<Versioned>, StoreError> {
        self.get(table, key).await
    }

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

    /// Writes an index row (creates or overwrites it).
    async fn put_row(
        &self,
        table: Table,
        partition: &str,
        sort: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError>;

    /// Deletes an index row (nothing happens when it is absent).
    async fn delete_row(&self, table: Table, partition: &str, sort: &str)
    -> Result<(), StoreError>;

    /// Rows of one partition of an index table, in sort-key order.
    async fn rows(
        &self,
        table: Table,
        partition: &str,
        range: RowRange,
    ) -> Result<Vec<Row>, StoreError>;
}
