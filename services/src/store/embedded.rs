//! The embedded services store: records in the embedded transactional KV
//! (`flashmall-embedded-kv`), one file. A record is its version, its expiry
//! (Unix ms, 0: none) and its value; an expired record reads as absent.

use flashmall_mesh::now_ms;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use flashmall_embedded_kv::{EmbeddedKv, KvError, Reads, Write};

use super::{Row, RowRange, ServiceStore, StoreError, Table, Versioned};

/// The embedded services store.
pub struct EmbeddedStore {
    kv: EmbeddedKv<StoreError>,
}

fn store_error(e: KvError<StoreError>) -> StoreError {
    match e {
        KvError::Plan(e) => e,
        KvError::Stopped => StoreError::Unavailable("store writer stopped".into()),
        KvError::Io(e) => StoreError::Io(e),
    }
}

fn key_of(table: Table, key: &str) -> Vec<u8> {
    format!("{}/{key}", table.name()).into_bytes()
}

/// An index row's key: `{table}/{partition}\0{sort}`. The NUL ends the
/// partition, so partition `a` never lists rows of partition `ab`.
fn partition_prefix(table: Table, partition: &str) -> Vec<u8> {
    format!("{}/{partition}\0", table.name()).into_bytes()
}

fn row_key(table: Table, partition: &str, sort: &str) -> Vec<u8> {
    let mut key = partition_prefix(table, partition);
    key.extend_from_slice(sort.as_bytes());
    key
}

fn check_partition(partition: &str) -> Result<(), StoreError> {
    if partition.contains('\0') {
        return Err(StoreError::Io(
            "index partition keys cannot hold NUL".into(),
        ));
    }
    Ok(())
}

struct Record {
    version: u64,
    expires_at_ms: u64,
    value: Vec<u8>,
}

impl Record {
    fn decode(raw: &[u8]) -> Option<Record> {
        let version = u64::from_be_bytes(raw.get(0..8)?.try_into().ok()?);
        let expires_at_ms = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
        Some(Record {
            version,
            expires_at_ms,
            value: raw[16..].to_vec(),
        })
    }

    fn encode(version: u64, ttl: Option<Duration>, value: &[u8]) -> Vec<u8> {
        let expires = ttl
            .map(|t| now_ms().saturating_add(t.as_millis() as u64))
            .unwrap_or(0);
        let mut out = Vec::with_capacity(16 + value.len());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&expires.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    fn live(self) -> Option<Record> {
        (self.expires_at_ms == 0 || self.expires_at_ms > now_ms()).then_some(self)
    }
}

fn live(reads: &Reads, key: &[u8]) -> Option<Record> {
    reads
        .get(key)
        .and_then(Record::decode)
        .and_then(Record::live)
}

impl EmbeddedStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(EmbeddedStore {
            kv: EmbeddedKv::open(path, "services").map_err(store_error)?,
        })
    }

    /// Runs a conditional write on one key; `decide` sees the live record
    /// and returns the write (if any) and whether the condition held.
    async fn conditional(
        &self,
        key: Vec<u8>,
        decide: impl Fn(Option<Record>) -> (Option<Write>, bool) + Send + 'static,
    ) -> Result<bool, StoreError> {
        let held = Arc::new(AtomicBool::new(false));
        let out = Arc::clone(&held);
        let k = key.clone();
        self.kv
            .transact(
                vec![key],
                Box::new(move |reads| {
                    let (write, ok) = decide(live(reads, &k));
                    out.store(ok, Ordering::Release);
                    Ok(write.into_iter().collect())
                }),
            )
            .await
            .map_err(store_error)?;
        Ok(held.load(Ordering::Acquire))
    }
}

#[async_trait]
impl ServiceStore for EmbeddedStore {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn get(&self, table: Table, key: &str) -> Result<Option<Versioned>, StoreError> {
        let k = key_of(table, key);
        let reads = self
            .kv
            .get_many(vec![k.clone()])
            .await
            .map_err(store_error)?;
        Ok(live(&reads, &k).map(|r| Versioned {
            value: r.value,
            version: r.version,
        }))
    }

    async fn insert(
        &self,
        table: Table,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let k = key_of(table, key);
        let k2 = k.clone();
        self.conditional(k, move |current| match current {
            Some(_) => (None, false),
            None => (
                Some(Write::Put(k2.clone(), Record::encode(1, ttl, &value))),
                true,
            ),
        })
        .await
    }

    async fn replace(
        &self,
        table: Table,
        key: &str,
        version: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StoreError> {
        let k = key_of(table, key);
        let k2 = k.clone();
        self.conditional(k, move |current| match current {
            Some(r) if r.version == version => (
                Some(Write::Put(
                    k2.clone(),
                    Record::encode(version + 1, ttl, &value),
                )),
                true,
            ),
            _ => (None, false),
        })
        .await
    }

    async fn delete(
        &self,
        table: Table,
        key: &str,
        version: Option<u64>,
    ) -> Result<bool, StoreError> {
        let k = key_of(table, key);
        let k2 = k.clone();
        self.conditional(k, move |current| match current {
            Some(r) if version.is_none_or(|v| v == r.version) => {
                (Some(Write::Delete(k2.clone())), true)
            }
            _ => (None, false),
        })
        .await
    }

    async fn put_row(
        &self,
        table: Table,
        partition: &str,
        sort: &str,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        check_partition(partition)?;
        let key = row_key(table, partition, sort);
        self.kv
            .transact(
                Vec::new(),
                Box::new(move |_| Ok(vec![Write::Put(key.clone(), value.clone())])),
            )
            .await
            .map_err(store_error)
    }

    async fn delete_row(
        &self,
        table: Table,
        partition: &str,
        sort: &str,
    ) -> Result<(), StoreError> {
        check_partition(partition)?;
        let key = row_key(table, partition, sort);
        self.kv
            .transact(
                Vec::new(),
                Box::new(move |_| Ok(vec![Write::Delete(key.clone())])),
            )
            .await
            .map_err(store_error)
    }

    async fn rows(
        &self,
        table: Table,
        partition: &str,
        range: RowRange,
    ) -> Result<Vec<Row>, StoreError> {
        check_partition(partition)?;
        let prefix = partition_prefix(table, partition);
        let after = range.after.as_deref().map(|a| row_key(table, partition, a));
        let pairs = if range.descending {
            self.kv
                .scan_rev(&prefix, after.as_deref(), range.limit)
                .await
        } else {
            self.kv.scan(&prefix, after.as_deref(), range.limit).await
        }
        .map_err(store_error)?;
        Ok(pairs
            .into_iter()
            .filter_map(|(key, value)| {
                let sort = String::from_utf8(key.get(prefix.len()..)?.to_vec()).ok()?;
                Some(Row { sort, value })
            })
            .filter(|row| {
                range
                    .up_to
                    .as_deref()
                    .is_none_or(|up| row.sort.as_str() <= up)
            })
            .collect())
    }
}
