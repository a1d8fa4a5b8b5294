//! The embedded ledger: redb on local disk. redb takes one writer at a time
//! and fsyncs each commit, so one writer thread commits transactions in
//! groups: every plan queued while the previous commit ran is applied, in
//! order, inside one write transaction (later plans see earlier writes),
//! and all of them are answered after the one fsync.

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::{Key, LedgerError, LedgerStore, Plan, Reads, Write, keys::prefix_end};

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ledger");
/// Most plans one group commit applies.
const GROUP_MAX: usize = 256;

type Reply = oneshot::Sender<Result<(), LedgerError>>;

struct Job {
    keys: Vec<Key>,
    plan: Plan,
    reply: Reply,
}

/// The redb-backed ledger store.
pub struct EmbeddedLedger {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job>,
}

fn io<E: std::fmt::Display>(e: E) -> LedgerError {
    LedgerError::Io(e.to_string())
}

impl EmbeddedLedger {
    /// Opens (or creates) the ledger file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| LedgerError::Io(format!("create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path)
            .map_err(|e| LedgerError::Io(format!("open {}: {e}", path.display())))?;
        {
            let tx = db.begin_write().map_err(io)?;
            tx.open_table(KV).map_err(io)?;
            tx.commit().map_err(io)?;
        }
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel(4096);
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(io)?;
        Ok(EmbeddedLedger { db, jobs })
    }
}

fn writer(db: Arc<Database>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&db, group);
    }
}

fn commit_group(db: &Database, group: Vec<Job>) {
    let mut outcomes: Vec<(Reply, Result<(), LedgerError>)> = Vec::with_capacity(group.len());
    let result = (|| -> Result<(), LedgerError> {
        let tx = db.begin_write().map_err(io)?;
        {
            let mut table = tx.open_table(KV).map_err(io)?;
            for mut job in group {
                let mut reads = Reads::default();
                let mut failed = None;
                for key in job.keys {
                    match table.get(key.as_slice()) {
                        Ok(v) => {
                            reads.0.insert(key, v.map(|g| g.value().to_vec()));
                        }
                        Err(e) => failed = Some(io(e)),
                    }
                }
                if let Some(e) = failed {
                    outcomes.push((job.reply, Err(e)));
                    continue;
                }
                // A plan's error aborts that plan alone: its writes are
                // computed before any is applied.
                match (job.plan)(&reads) {
                    Ok(writes) => {
                        for w in writes {
                            match w {
                                Write::Put(k, v) => {
                                    table.insert(k.as_slice(), v.as_slice()).map_err(io)?;
                                }
                                Write::Delete(k) => {
                                    table.remove(k.as_slice()).map_err(io)?;
                                }
                            }
                        }
                        outcomes.push((job.reply, Ok(())));
                    }
                    Err(e) => outcomes.push((job.reply, Err(e))),
                }
            }
        }
        tx.commit().map_err(io)
    })();
    metrics::histogram!("flashmall_ledger_group_commit_size").record(outcomes.len() as f64);
    for (reply, outcome) in outcomes {
        let answer = match (&result, outcome) {
            (Err(e), _) => Err(LedgerError::Io(format!("group commit failed: {e}"))),
            (Ok(()), outcome) => outcome,
        };
        let _ = reply.send(answer);
    }
}

#[async_trait]
impl LedgerStore for EmbeddedLedger {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn transact(&self, keys: Vec<Key>, plan: Plan) -> Result<(), LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { keys, plan, reply })
            .await
            .map_err(|_| LedgerError::Unavailable("ledger writer stopped".into()))?;
        answer
            .await
            .map_err(|_| LedgerError::Unavailable("ledger writer stopped".into()))?
    }

    async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, LedgerError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(io)?;
            let table = tx.open_table(KV).map_err(io)?;
            let mut reads = Reads::default();
            for key in keys {
                let value = table
                    .get(key.as_slice())
                    .map_err(io)?
                    .map(|g| g.value().to_vec());
                reads.0.insert(key, value);
            }
            Ok(reads)
        })
        .await
        .map_err(io)?
    }

    async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, LedgerError> {
        let db = Arc::clone(&self.db);
        let prefix = prefix.to_vec();
        let after = after.map(<[u8]>::to_vec);
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(io)?;
            let table = tx.open_table(KV).map_err(io)?;
            let end = prefix_end(&prefix);
            let lower = match &after {
                Some(a) if a.as_slice() >= prefix.as_slice() => Bound::Excluded(a.as_slice()),
                _ => Bound::Included(prefix.as_slice()),
            };
            let upper = match &end {
                Some(e) => Bound::Excluded(e.as_slice()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for item in table.range::<&[u8]>((lower, upper)).map_err(io)? {
                let (k, v) = item.map_err(io)?;
                out.push((k.value().to_vec(), v.value().to_vec()));
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
        .map_err(io)?
    }
}
