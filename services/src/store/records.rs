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

/// Applies `decide` to the record's current state with a conditional
/// write, reading and deciding again whenever another writer moved it
/// first. Returns the record as it stands after, and whether this call
/// wrote it.
pub async fn move_record<T: Serialize + DeserializeOwned>(
    store: &dyn ServiceStore,
    table: Table,
    key: &str,
    decide: impl Fn(&T) -> Step<T>,
) -> Result<(T, bool), RecordError> {
    for _ in 0..MOVE_ATTEMPTS {
        let (current, version) = load::<T>(store, table, key)
            .await?
            .ok_or(RecordError::Missing)?;
        match decide(&current) {
            Step::Keep => return Ok((current, false)),
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
