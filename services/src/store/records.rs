//! Typed records over the store: a JSON value under a key, read with its
//! version, and moved from one state to the next with a conditional write.
//! This is how orders and payments change state: a move is applied only to
//! the version it was decided on, so two replicas (or a retry) can never
//! both apply a move from the same state.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ServiceStore, StoreError, Table};

/// What a move decided for the record it read.
pub enum Step<T> {
    /// Write this next state.
    Write(T),
    /// Leave the record as it is.
    Keep,
}

/// Why a read or a move failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the stored record does not decode: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("the record is gone")]
    Missing,
    #[error("the record kept changing under {attempts} attempts")]
    Contended { attempts: usize },
}

impl RecordError {
    /// The client's answer for this failure on the record `id` of a `what`
    /// (`order`, `payment`).
    pub fn answer(self, what: &str, id: &str) -> flashmall_mesh::ApiError {
        use flashmall_mesh::{ApiError, ErrorCode};
        match self {
            RecordError::Store(e) => e.into(),
            RecordError::Corrupt(e) => {
                tracing::error!(record = what, id, error = %e, "stored record does not decode");
                ApiError::internal(format!("a stored {what} cannot be read"))
            }
            RecordError::Missing => ApiError::new(ErrorCode::NotFound, format!("no such {what}")),
            RecordError::Contended { .. } => ApiError::new(
                ErrorCode::Conflict,
                format!("the {what} is changing too often; retry"),
            ),
        }
    }
}

/// Most attempts of one move; each failed attempt means another writer
/// moved the record in between.
pub const MOVE_ATTEMPTS: usize = 16;

/// The record under `key` and its version.
pub async fn load<T: DeserializeOwned>(
    store: &dyn ServiceStore,
    table: Table,
    key: &str,
) -> Result<Option<(T, u64)>, RecordError> {
    match store.get(table, key).await? {
        Some(v) => Ok(Some((serde_json::from_slice(&v.value)?, v.version))),
        None => Ok(None),
    }
}

/// The record under `key` and its version, read linearizably
/// ([`ServiceStore::get_linearizable`]).
async fn load_linearizable<T: DeserializeOwned>(
    store: &dyn ServiceStore,
    table: Table,
    key: &str,
) -> Result<Option<(T, u64)>, RecordError> {
    match store.get_linearizable(table, key).await? {
        Some(v) => Ok(Some((serde_json::from_slice(&v.value)?, v.version))),
        None => Ok(None),
    }
}

/// Applies `decide` to the record's current state with a conditional
/// write, reading and deciding again whenever another writer moved it
/// first. Returns the record as it stands after, and whether this call
/// wrote it.
///
/// A decision to write nothing stands only on a linearizable read: a
/// quorum read can miss a conditional write whose writer timed out (its
/// Paxos proposal accepted, not yet committed), and "this order is past
/// its expiry, not payable" decided on such a read refunded a payment
/// whose own earlier attempt then paid the order (the chaos run, a
/// Cassandra node down).
pub async fn move_record<T: Serialize + DeserializeOwned>(
    store: &dyn ServiceStore,
    table: Table,
    key: &str,
    decide: impl Fn(&T) -> Step<T>,
) -> Result<(T, bool), RecordError> {
    let mut linearizable = false;
    for _ in 0..MOVE_ATTEMPTS {
        let read = if linearizable {
            load_linearizable::<T>(store, table, key).await?
        } else {
            load::<T>(store, table, key).await?
        };
        let (current, version) = read.ok_or(RecordError::Missing)?;
        match decide(&current) {
            Step::Keep if linearizable => return Ok((current, false)),
            Step::Keep => linearizable = true,
            Step::Write(next) => {
                let value = serde_json::to_vec(&next)?;
                if store.replace(table, key, version, value, None).await? {
                    return Ok((next, true));
                }
                metrics::counter!("flashmall_store_move_conflicts_total", "table" => table.name())
                    .increment(1);
            }
        }
    }
    Err(RecordError::Contended {
        attempts: MOVE_ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a test's failed step panics the test"
    )]

    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::store::{EmbeddedStore, Row, RowRange, Versioned};

    /// A store whose plain reads answer the record as it was before the
    /// last write, as a quorum read can after a conditional write whose
    /// writer timed out (its Paxos proposal accepted, not yet committed);
    /// linearizable reads see the write.
    struct BehindByOneWrite {
        inner: EmbeddedStore,
        before: Versioned,
    }

    #[async_trait]
    impl ServiceStore for BehindByOneWrite {
        fn kind(&self) -> &'static str {
            "behind"
        }
        async fn get(&self, _: Table, _: &str) -> Result<Option<Versioned>, StoreError> {
            Ok(Some(self.before.clone()))
        }
        async fn get_linearizable(
            &self,
            table: Table,
            key: &str,
        ) -> Result<Option<Versioned>, StoreError> {
            self.inner.get(table, key).await
        }
        async fn insert(
            &self,
            table: Table,
            key: &str,
            value: Vec<u8>,
            ttl: Option<Duration>,
        ) -> Result<bool, StoreError> {
            self.inner.insert(table, key, value, ttl).await
        }
        async fn replace(
            &self,
            table: Table,
            key: &str,
            version: u64,
            value: Vec<u8>,
            ttl: Option<Duration>,
        ) -> Result<bool, StoreError> {
            self.inner.replace(table, key, version, value, ttl).await
        }
        async fn delete(
            &self,
            table: Table,
            key: &str,
            version: Option<u64>,
        ) -> Result<bool, StoreError> {
            self.inner.delete(table, key, version).await
        }
        async fn put_row(
            &self,
            table: Table,
            partition: &str,
            sort: &str,
            value: Vec<u8>,
        ) -> Result<(), StoreError> {
            self.inner.put_row(table, partition, sort, value).await
        }
        async fn delete_row(
            &self,
            table: Table,
            partition: &str,
            sort: &str,
        ) -> Result<(), StoreError> {
            self.inner.delete_row(table, partition, sort).await
        }
        async fn rows(
            &self,
            table: Table,
            partition: &str,
            range: RowRange,
        ) -> Result<Vec<Row>, StoreError> {
            self.inner.rows(table, partition, range).await
        }
    }

    /// A move that would write nothing on a stale read ("still pending,
    /// but past its expiry: not payable") decides again on a linearizable
    /// read and answers the state the earlier write left ("paid").
    #[tokio::test]
    async fn a_move_that_writes_nothing_decides_on_a_linearizable_read() {
        let dir = tempfile::tempdir().unwrap();
        let inner = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        assert!(
            inner
                .insert(Table::Orders, "o-1", b"\"pending\"".to_vec(), None)
                .await
                .unwrap()
        );
        let before = inner.get(Table::Orders, "o-1").await.unwrap().unwrap();
        assert!(
            inner
                .replace(
                    Table::Orders,
                    "o-1",
                    before.version,
                    b"\"paid\"".to_vec(),
                    None
                )
                .await
                .unwrap()
        );
        let store = BehindByOneWrite { inner, before };
        let (order, wrote) = move_record::<String>(&store, Table::Orders, "o-1", |_| Step::Keep)
            .await
            .unwrap();
        assert_eq!((order.as_str(), wrote), ("paid", false));
    }
}
