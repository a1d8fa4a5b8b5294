//! The embedded transactional key-value store that flashmall's embedded
//! store implementations (the ledger, the services' store) sit on: redb on
//! local disk, one file per store.
//!
//! redb takes one writer at a time and fsyncs each commit, so one writer
//! thread commits transactions in groups: every plan queued while the
//! previous commit ran is applied, in order, inside one write transaction
//! (later plans see earlier writes), and all of them are answered after the
//! one fsync. Depends on no flashmall crate.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

pub type Key = Vec<u8>;

/// A store failure, or a plan's own refusal.
#[derive(Debug, thiserror::Error)]
pub enum KvError<E> {
    #[error("embedded store: {0}")]
    Io(String),
    #[error("embedded store writer stopped")]
    Stopped,
    /// The plan refused; nothing was written.
    #[error(transparent)]
    Plan(E),
}

/// Values read by a transaction, by key (`None`: absent).
#[derive(Debug, Default)]
pub struct Reads(pub HashMap<Key, Option<Vec<u8>>>);

impl Reads {
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.0.get(key).and_then(|v| v.as_deref())
    }
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(Key, Vec<u8>),
    Delete(Key),
}

/// Computes a transaction's writes from its reads; an error aborts it.
pub type Plan<E> = Box<dyn FnMut(&Reads) -> Result<Vec<Write>, E> + Send>;

const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Most plans one group commit applies.
const GROUP_MAX: usize = 256;

type Reply<E> = oneshot::Sender<Result<(), KvError<E>>>;
/// A job's reply channel and its answer, sent after the group commits.
type Outcome<E> = (Reply<E>, Result<(), KvError<E>>);

struct Job<E> {
    keys: Vec<Key>,
    plan: Plan<E>,
    reply: Reply<E>,
}

/// The store: a redb file and its writer thread.
pub struct EmbeddedKv<E: Send + 'static> {
    db: Arc<Database>,
    jobs: mpsc::Sender<Job<E>>,
    name: &'static str,
}

fn io<X: std::fmt::Display, E>(e: X) -> KvError<E> {
    KvError::Io(e.to_string())
}

impl<E: Send + 'static> EmbeddedKv<E> {
    /// Opens (or creates) the file and starts its writer thread; `name`
    /// labels the group-commit metric.
    pub fn open(path: &Path, name: &'static str) -> Result<Self, KvError<E>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir).map_err(|e| KvError::Io(format!("create {}: {e}", dir.display())))?;
        }
        private_file(path).map_err(|e| KvError::Io(format!("create {}: {e}", path.display())))?;
        let db = Database::create(path)
            .map_err(|e| KvError::Io(format!("open {}: {e}", path.display())))?;
        {
            let tx = db.begin_write().map_err(io)?;
            tx.open_table(KV).map_err(io)?;
            tx.commit().map_err(io)?;
        }
        let db = Arc::new(db);
        let (jobs, rx) = mpsc::channel(4096);
        let writer_db = Arc::clone(&db);
        std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || writer(writer_db, rx, name))
            .map_err(io)?;
        Ok(EmbeddedKv { db, jobs, name })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Reads `keys`, runs `plan`, and commits its writes atomically (in the
    /// next group commit).
    pub async fn transact(&self, keys: Vec<Key>, plan: Plan<E>) -> Result<(), KvError<E>> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { keys, plan, reply })
            .await
            .map_err(|_| KvError::Stopped)?;
        answer.await.map_err(|_| KvError::Stopped)?
    }

    /// Reads `keys` from one consistent snapshot.
    pub async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, KvError<E>> {
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

    /// Up to `limit` pairs whose key starts with `prefix` and sorts after
    /// `after` (when given), in key order.
    pub async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, KvError<E>> {
        self.scan_dir(prefix, after, limit, false).await
    }

    /// Up to `limit` pairs whose key starts with `prefix` and sorts before
    /// `before` (when given), in descending key order.
    pub async fn scan_rev(
        &self,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, KvError<E>> {
        self.scan_dir(prefix, before, limit, true).await
    }

    /// A prefix scan from `from` (exclusive, when given) in either
    /// direction: ascending from above `from`, or descending from below it.
    async fn scan_dir(
        &self,
        prefix: &[u8],
        from: Option<&[u8]>,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<(Key, Vec<u8>)>, KvError<E>> {
        let db = Arc::clone(&self.db);
        let prefix = prefix.to_vec();
        let from = from.map(<[u8]>::to_vec);
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read().map_err(io)?;
            let table = tx.open_table(KV).map_err(io)?;
            let end = prefix_end(&prefix);
            let mut lower = Bound::Included(prefix.as_slice());
            let mut upper = match &end {
                Some(e) => Bound::Excluded(e.as_slice()),
                None => Bound::Unbounded,
            };
            match &from {
                // Nothing of the prefix lies below a key at or under it.
                Some(f) if descending && f.as_slice() <= prefix.as_slice() => {
                    return Ok(Vec::new());
                }
                Some(f) if descending && end.as_ref().is_none_or(|e| f < e) => {
                    upper = Bound::Excluded(f.as_slice());
                }
                Some(f) if !descending && f.as_slice() >= prefix.as_slice() => {
                    lower = Bound::Excluded(f.as_slice());
                }
                _ => {}
            }
            let range = table.range::<&[u8]>((lower, upper)).map_err(io)?;
            let items: Box<dyn Iterator<Item = _>> = if descending {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            let mut out = Vec::new();
            for item in items.take(limit) {
                let (k, v) = item.map_err(io)?;
                out.push((k.value().to_vec(), v.value().to_vec()));
            }
            Ok(out)
        })
        .await
        .map_err(io)?
    }
}

/// The smallest key above every key that starts with `prefix` (`None`: no
/// such key, the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Key> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn writer<E: Send + 'static>(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<Job<E>>,
    name: &'static str,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(&db, group, name);
    }
}

fn commit_group<E: Send + 'static>(db: &Database, group: Vec<Job<E>>, name: &'static str) {
    let mut outcomes: Vec<Outcome<E>> = Vec::with_capacity(group.len());
    let result = (|| -> Result<(), String> {
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut table = tx.open_table(KV).map_err(|e| e.to_string())?;
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
                                    table
                                        .insert(k.as_slice(), v.as_slice())
                                        .map_err(|e| e.to_string())?;
                                }
                                Write::Delete(k) => {
                                    table.remove(k.as_slice()).map_err(|e| e.to_string())?;
                                }
                            }
                        }
                        outcomes.push((job.reply, Ok(())));
                    }
                    Err(e) => outcomes.push((job.reply, Err(KvError::Plan(e)))),
                }
            }
        }
        tx.commit().map_err(|e| e.to_string())
    })();
    metrics::histogram!("flashmall_embedded_group_commit_size", "store" => name)
        .record(outcomes.len() as f64);
    for (reply, outcome) in outcomes {
        let answer = match (&result, outcome) {
            (Err(e), _) => Err(KvError::Io(format!("group commit failed: {e}"))),
            (Ok(()), outcome) => outcome,
        };
        let _ = reply.send(answer);
    }
}

/// Creates `dir` (and its parents) readable by the owner only, when it
/// does not exist; an existing directory is left as its owner made it.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes the store's file readable and writable by its owner only (it
/// holds accounts, orders and the ledger): created so when new, and
/// narrowed when an older run left it wider.
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?;
    #[cfg(unix)]
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_store_file_and_its_new_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("fm-kv-{}", std::process::id()));
        let dir = root.join("data");
        let path = dir.join("store.redb");
        private_dir(&dir).unwrap();
        private_file(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir), 0o700);
        // A file an older run left readable by all is narrowed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"x/"), Some(b"x0".to_vec()));
        assert_eq!(prefix_end(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
