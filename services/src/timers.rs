//! Durable timers over the services store: "look at record X at instant T".
//! Orders use them to expire unpaid orders and to retry releases; payments
//! to cancel charges stuck pending and to finish interrupted captures.
//!
//! A timer is one index row: partition = the due instant's bucket (one
//! minute), sort key = `<due ms, 13 digits>/<record id>`. A sweep reads the
//! buckets from a durable cursor up to now, hands every due timer to the
//! owner's handler, and deletes the rows the handler finished. The cursor
//! moves past a bucket only once the bucket lies wholly in the past (by
//! more than `CLOCK_SKEW`) and is empty, so no timer is skipped.
//!
//! Several replicas may sweep at once: each may see the same timer, so
//! every handler must be idempotent (the records' conditional writes make
//! them so). Nothing here decides what a timer means.

use std::sync::Arc;

use flashmall_mesh::now_ms;

use crate::store::{RowRange, ServiceStore, StoreError, Table};

/// Width of one bucket, ms.
const BUCKET_MS: u64 = 60_000;

/// Tolerated clock difference between replicas: a bucket is closed only
/// this long after it ended, so a replica whose clock runs behind cannot
/// still be adding timers to it.
const CLOCK_SKEW: u64 = 10_000;

/// How far back the first sweep of an empty store looks.
const FIRST_LOOKBACK: u64 = 24 * 3600 * 1000;

/// One due timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub due_ms: u64,
    pub id: String,
}

impl Timer {
    fn bucket(&self) -> u64 {
        self.due_ms / BUCKET_MS
    }

    fn sort(&self) -> String {
        format!("{:013}/{}", self.due_ms, self.id)
    }

    fn parse(sort: &str) -> Option<Timer> {
        let (due, id) = sort.split_once('/')?;
        Some(Timer {
            due_ms: due.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

/// The timers of one record kind (one index table).
#[derive(Clone)]
pub struct Timers {
    store: Arc<dyn ServiceStore>,
    table: Table,
}

impl Timers {
    pub fn new(store: Arc<dyn ServiceStore>, table: Table) -> Self {
        debug_assert!(table.is_index());
        Timers { store, table }
    }

    /// Schedules a look at `id` at `due_ms` (never earlier than now, so the
    /// timer lands in a bucket no sweep has closed).
    pub async fn schedule(&self, due_ms: u64, id: &str) -> Result<Timer, StoreError> {
        let timer = Timer {
            due_ms: due_ms.max(now_ms()),
            id: id.to_owned(),
        };
        self.store
            .put_row(
                self.table,
                &timer.bucket().to_string(),
                &timer.sort(),
                Vec::new(),
            )
            .await?;
        Ok(timer)
    }

    /// Removes a timer (done, or replaced by another).
    pub async fn remove(&self, timer: &Timer) -> Result<(), StoreError> {
        self.store
            .delete_row(self.table, &timer.bucket().to_string(), &timer.sort())
            .await
    }

    /// Up to `limit` timers due by `now`, oldest first; moves the cursor
    /// past buckets that are closed and empty.
    pub async fn due(&self, now: u64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let cursor_key = self.table.name();
        let stored = self.store.get(Table::Cursors, cursor_key).await?;
        let (mut cursor, version) = match &stored {
            Some(v) => (
                std::str::from_utf8(&v.value)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0),
                Some(v.version),
            ),
            None => (now.saturating_sub(FIRST_LOOKBACK) / BUCKET_MS, None),
        };
        let start = cursor;
        let last = now / BUCKET_MS;
        let up_to = format!("{now:013}/\u{10FFFF}");
        let mut out = Vec::new();
        let mut bucket = cursor;
        while bucket <= last && out.len() < limit {
            let rows = self
                .store
                .rows(
                    self.table,
                    &bucket.to_string(),
                    RowRange {
                        after: None,
                        up_to: Some(up_to.clone()),
                        limit: limit - out.len(),
                        descending: false,
                    },
                )
                .await?;
            let closed = (bucket + 1) * BUCKET_MS + CLOCK_SKEW <= now;
            if rows.is_empty() && closed && bucket == cursor {
                cursor = bucket + 1;
            }
            out.extend(rows.iter().filter_map(|r| Timer::parse(&r.sort)));
            bucket += 1;
        }
        if cursor != start {
            self.save_cursor(cursor, version).await?;
        }
        Ok(out)
    }

    async fn save_cursor(&self, cursor: u64, version: Option<u64>) -> Result<(), StoreError> {
        let value = cursor.to_string().into_bytes();
        let key = self.table.name();
        // A lost race means another replica moved it: either way it moved.
        match version {
            Some(v) => {
                self.store
                    .replace(Table::Cursors, key, v, value, None)
                    .await?
            }
            None => self.store.insert(Table::Cursors, key, value, None).await?,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_keys_order_by_due_and_round_trip() {
        let a = Timer {
            due_ms: 999,
            id: "b".into(),
        };
        let b = Timer {
            due_ms: 1_000,
            id: "a".into(),
        };
        assert!(a.sort() < b.sort());
        assert_eq!(Timer::parse(&a.sort()), Some(a));
    }
}
