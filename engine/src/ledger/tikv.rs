//! The TiKV ledger: `tikv-client` optimistic transactions. A write conflict
//! restarts the whole transaction (fresh reads, plan again); an undetermined
//! commit is retried the same way, which is safe because every plan is
//! idempotent: re-reading shows whether the first commit landed. A
//! transaction is always committed or rolled back, never dropped open.
//!
//! Two things TiKV does not give by itself, and this adapter adds:
//! - Serializable plans. TiKV's optimistic transactions are snapshot
//!   isolation: a commit fails only if a key it *writes* changed since it
//!   began. The keys a plan read are locked too (`lock_keys`, an `Op_Lock`
//!   in the prewrite), so a plan commits only if nothing it read changed,
//!   as on the embedded ledger, where plans run one at a time. (Except the
//!   keys a plan reads unguarded: `LedgerStore::transact_unguarded`.)
//! - Waiting out locks. A reader or writer that meets the lock of a
//!   transaction between prewrite and commit (or one that died there) can
//!   only roll it back once its TTL (3 s and up) has passed; tikv-client
//!   gives up after about 1.5 s. Reads and transactions retry on a newer
//!   snapshot instead of failing.
//! - Rolling back a writer that died mid-prewrite without its primary. A
//!   transaction across regions prewrites them in parallel; a writer killed
//!   then can leave locks in one region and none, not even the primary, in
//!   the other. TiKV answers such a transaction's status with TxnNotFound,
//!   and tikv-client 0.4 would roll it back once its lock expired, but it
//!   takes the answer for another error (it looks for `ExtractedErrors`
//!   and gets `MultipleKeyErrors`), so those keys stayed locked for good.
//!   The ledger rolls such a transaction back itself (`roll_back_orphans`).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tikv_client::transaction::ResolveLocksOptions;
use tikv_client::{
    BoundRange, CheckLevel, Error as TikvError, KvPair, Snapshot, Timestamp, TimestampExt,
    TransactionClient, TransactionOptions,
};

use super::{Key, LedgerError, LedgerStore, Plan, Reads, Write, keys::prefix_end};
use crate::config::LedgerConfig;

/// The tikv-client-backed ledger store.
#[derive(Clone)]
pub struct TikvLedger {
    client: TransactionClient,
    prefix: Vec<u8>,
    max_retries: u32,
    /// Held while `roll_back_orphans` looks for locks.
    looking: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// True for errors that a fresh transaction may not hit again: write
/// conflicts, locks not resolvable yet, transactions found rolled back
/// (this one's locks cleaned up by another client, or the one whose lock
/// was met), and region errors tikv-client gave up on after its own
/// region backoff (regions splitting faster than it caught up: a request
/// that met one was not applied; the next attempt plans again on fresh
/// reads, so one that did land is seen).
fn is_conflict(e: &TikvError) -> bool {
    match e {
        TikvError::RegionError(_) => true,
        TikvError::KeyError(ke) => {
            ke.conflict.is_some()
                || ke.deadlock.is_some()
                || ke.txn_not_found.is_some()
                || !ke.retryable.is_empty()
        }
        TikvError::MultipleKeyErrors(errs) | TikvError::ExtractedErrors(errs) => {
            errs.iter().any(is_conflict)
        }
        TikvError::PessimisticLockError { inner, .. } => is_conflict(inner),
        TikvError::ResolveLockError(_) | TikvError::TxnNotFound(_) => true,
        _ => false,
    }
}

/// How old a transaction without a primary lock must be before the ledger
/// looks for its locks to roll it back (`roll_back_orphans`). Its locks
/// cannot expire sooner than tikv-client's least TTL (3 s), and a look
/// scans every region under the operation's keys: under load, young
/// transactions whose other regions' prewrites are still in flight are met
/// often, and looking at each of them slowed everything down until nothing
/// finished (the splitting ledger suite beside two CPU burners, when every
/// meeting looked). One look at a time per process keeps that bounded, so
/// the age is just past the least TTL: every writer queued behind an
/// orphan's locks on a sale's hot counts key waits that long (at 10 s, a
/// chaos run's settlement stalled for minutes behind two dozen of them).
/// The splitting suite beside two burners: 27 s, 43 s, 27 s.
const ORPHAN_AGE: Duration = Duration::from_secs(4);

/// The start timestamps of the transactions `e` found without a primary
/// lock or a commit or rollback record (TiKV's TxnNotFound, however
/// tikv-client wrapped it), each once.
fn orphans_of(e: &TikvError) -> Vec<u64> {
    let mut found = Vec::new();
    collect_orphans(e, &mut found);
    found.sort_unstable();
    found.dedup();
    found
}

fn collect_orphans(e: &TikvError, found: &mut Vec<u64>) {
    match e {
        TikvError::TxnNotFound(t) => found.push(t.start_ts),
        TikvError::KeyError(ke) => found.extend(ke.txn_not_found.as_ref().map(|t| t.start_ts)),
        TikvError::MultipleKeyErrors(errs) | TikvError::ExtractedErrors(errs) => {
            for e in errs {
                collect_orphans(e, found);
            }
        }
        TikvError::PessimisticLockError { inner, .. } => collect_orphans(inner, found),
        _ => {}
    }
}

/// The smallest range holding every key of `keys`.
fn span_of(keys: &[Vec<u8>]) -> Option<BoundRange> {
    let low = keys.iter().min()?.clone();
    let high = keys.iter().max()?.clone();
    Some((low..=high).into())
}

fn unavailable(e: TikvError) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
}

/// Rolls back a transaction whose commit failed after some of its
/// prewrites may have landed. When the roll-back fails too, those locks
/// stay until a reader resolves them; without a primary lock (the primary's
/// prewrite is the one that failed) only `roll_back_orphans` can, so the
/// failure is counted and logged.
async fn roll_back_prewritten(txn: &mut tikv_client::Transaction) {
    if let Err(e) = txn.rollback().await {
        metrics::counter!("flashmall_ledger_rollback_failures_total", "backend" => "tikv")
            .increment(1);
        tracing::warn!(start_ts = txn.start_timestamp().version(), error = %e, "rolling back a failed commit failed; its locks stay until resolved");
    }
}

/// The wait before each retry: doubling from 2 ms up to 200 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(2))
    }

    async fn wait(&mut self, attempt: u32, reason: &str) {
        metrics::counter!("flashmall_ledger_retries_total", "backend" => "tikv").increment(1);
        tracing::debug!(attempt, reason, "ledger operation retried");
        // Jitter from the clock's nanoseconds keeps racing writers apart.
        let jitter = u64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        ) % (self.0.as_micros() as u64 + 1);
        tokio::time::sleep(self.0 + Duration::from_micros(jitter)).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(200));
    }
}

enum Attempt {
    Done,
    Retry(String),
}

impl TikvLedger {
    /// Connects to the cluster through its PD endpoints.
    pub async fn connect(config: &LedgerConfig) -> Result<Self, LedgerError> {
        let client = tokio::time::timeout(
            Duration::from_secs(10),
            TransactionClient::new(config.pd_endpoints.clone()),
        )
        .await
        .map_err(|_| {
            LedgerError::Unavailable(format!(
                "no answer from PD {:?} within 10s",
                config.pd_endpoints
            ))
        })?
        .map_err(unavailable)?;
        Ok(TikvLedger {
            client,
            prefix: config.key_prefix.clone().into_bytes(),
            max_retries: config.max_retries.max(1),
            looking: Default::default(),
        })
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn options() -> TransactionOptions {
        // Dropping an open transaction must never panic the engine; every
        // path below commits or rolls back explicitly anyway.
        TransactionOptions::new_optimistic().drop_check(CheckLevel::Warn)
    }

    async fn attempt(
        &self,
        keys: &[Key],
        unguarded: &[Key],
        plan: &mut Plan,
    ) -> Result<Attempt, LedgerError> {
        let mut txn = self
            .client
            .begin_with_options(Self::options())
            .await
            .map_err(unavailable)?;
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.full(k)).collect();
        let mut read: Vec<Vec<u8>> = full.clone();
        read.extend(unguarded.iter().map(|k| self.full(k)));
        let pairs = match txn.batch_get(read.clone()).await {
            Ok(pairs) => pairs.collect::<Vec<KvPair>>(),
            Err(e) => {
                let _ = txn.rollback().await;
                return if is_conflict(&e) {
                    self.roll_back_orphans(&e, span_of(&read)).await;
                    Ok(Attempt::Retry(e.to_string()))
                } else {
                    Err(unavailable(e))
                };
            }
        };
        let mut reads = Reads::default();
        for key in keys.iter().chain(unguarded) {
            reads.0.insert(key.clone(), None);
        }
        for KvPair(k, v) in pairs {
            let k: Vec<u8> = k.into();
            if let Some(short) = k.strip_prefix(self.prefix.as_slice()) {
                reads.0.insert(short.to_vec(), Some(v));
            }
        }
        let writes = match plan(&reads) {
            Ok(writes) => writes,
            Err(e) => {
                let _ = txn.rollback().await;
                return Err(e);
            }
        };
        if writes.is_empty() {
            let _ = txn.rollback().await;
            return Ok(Attempt::Done);
        }
        for w in writes {
            let result = match w {
                Write::Put(k, v) => txn.put(self.full(&k), v).await,
                Write::Delete(k) => txn.delete(self.full(&k)).await,
            };
            if let Err(e) = result {
                let _ = txn.rollback().await;
                return Err(unavailable(e));
            }
        }
        // After the writes, so the primary is a written key; keys written
        // stay writes. The read-only ones become `Op_Lock`s: the prewrite
        // then fails with a write conflict if one changed since `begin`.
        // Unguarded keys are not locked (unless written).
        if let Err(e) = txn.lock_keys(full.clone()).await {
            let _ = txn.rollback().await;
            return Err(unavailable(e));
        }
        match txn.commit().await {
            Ok(_) => Ok(Attempt::Done),
            Err(TikvError::UndeterminedError(e)) => {
                // The commit may or may not have landed: plan again on fresh
                // reads, which see it if it did.
                Ok(Attempt::Retry(format!("undetermined commit: {e}")))
            }
            Err(e) if is_conflict(&e) => {
                roll_back_prewritten(&mut txn).await;
                self.roll_back_orphans(&e, span_of(&full)).await;
                Ok(Attempt::Retry(e.to_string()))
            }
            Err(e) => {
                roll_back_prewritten(&mut txn).await;
                Err(unavailable(e))
            }
        }
    }

    /// After an attempt met `e`: when `e` names a transaction without a
    /// primary lock whose locks in `range` have all expired, rolls it back
    /// there, key by key, and nothing else. Expired as tikv-client itself
    /// judges a lock: its TTL, counted from its transaction's start, has
    /// passed (tikv-client sets it to 3 s plus the time the transaction
    /// took to reach its prewrite, so a slow writer still prewriting is
    /// left alone). The roll-back is tikv-client's GC clean-up, which asks
    /// each lock's transaction status with `rollback_if_not_exist` (as its
    /// own resolver never gets to) and rolls back whatever it finds, even a
    /// transaction at work: so it is given the orphan's own keys only. It
    /// was once given the whole range with every older lock in it, and
    /// rolled back live transactions whose primaries their heartbeats kept
    /// alive (a secondary lock's TTL is never extended): a reconcile's long
    /// transaction, rolled back over and over, held its sale off the front
    /// for minutes (tikv-client's "While sending heartbeat ... lock doesn't
    /// exist"). Rolling back the orphan itself while its writer is still
    /// alive is safe: its primary's prewrite then meets the rollback record
    /// and fails, and it retries. A failure is logged: the next attempt
    /// tries again.
    async fn roll_back_orphans(&self, e: &TikvError, range: Option<BoundRange>) {
        let Some(range) = range else {
            return;
        };
        // Every orphan the attempt met, not only the first: a young one
        // reported first must not hide an old one behind it for good.
        let old: Vec<u64> = orphans_of(e)
            .into_iter()
            .filter(|ts| {
                let started = std::time::UNIX_EPOCH + Duration::from_millis(ts >> 18);
                started.elapsed().unwrap_or_default() >= ORPHAN_AGE
            })
            .collect();
        if old.is_empty() {
            return;
        }
        // One look at a time in this process: the others retry meanwhile.
        let Ok(_looking) = self.looking.try_lock() else {
            return;
        };
        for start_ts in old {
            self.roll_back_orphan(start_ts, range.clone()).await;
        }
    }

    /// Rolls back the orphan `start_ts`'s own locks in `range`, when they
    /// have all expired (see `roll_back_orphans`).
    async fn roll_back_orphan(&self, start_ts: u64, range: BoundRange) {
        // Locks up to and including `start_ts` (unistore's lock scan takes
        // only those below its bound).
        let safepoint = Timestamp::from_version(start_ts + 1);
        let (now, locks) = match async {
            let now = self.client.current_timestamp().await?;
            let locks = self.client.scan_locks(&safepoint, range, 1024).await?;
            Ok::<_, TikvError>((now, locks))
        }
        .await
        {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(start_ts, error = %e, "cannot look at the locks of a transaction without a primary lock");
                return;
            }
        };
        let expired = |l: &tikv_client::ProtoLockInfo| {
            let started_ms = i64::try_from(l.lock_version >> 18).unwrap_or(i64::MAX);
            let ttl_ms = i64::try_from(l.lock_ttl).unwrap_or(i64::MAX);
            now.physical.saturating_sub(started_ms) >= ttl_ms
        };
        let orphan: Vec<&tikv_client::ProtoLockInfo> = locks
            .iter()
            .filter(|l| l.lock_version == start_ts)
            .collect();
        if orphan.is_empty() || !orphan.iter().all(|l| expired(l)) {
            // Gone already, or a writer that may still be at work.
            return;
        }
        let age_ms = now
            .physical
            .saturating_sub(i64::try_from(start_ts >> 18).unwrap_or(i64::MAX));
        let mut resolved = 0;
        for lock in orphan {
            // A key holds one lock at a time: this range holds the orphan's.
            let key: BoundRange = (lock.key.clone()..=lock.key.clone()).into();
            match self
                .client
                .cleanup_locks(key, &safepoint, ResolveLocksOptions::default())
                .await
            {
                Ok(done) => resolved += done.resolved_locks,
                Err(e) => {
                    tracing::warn!(start_ts, error = %e, "rolling back a transaction without a primary lock failed");
                    return;
                }
            }
        }
        metrics::counter!("flashmall_ledger_orphans_rolled_back_total", "backend" => "tikv")
            .increment(1);
        tracing::warn!(
            start_ts,
            locks = resolved,
            age_ms,
            "rolled back a transaction that left locks but no primary lock (a writer that died mid-prewrite)"
        );
    }
}

impl TikvLedger {
    /// Runs a transaction with retries (see `transact`).
    async fn run(
        &self,
        keys: Vec<Key>,
        unguarded: Vec<Key>,
        mut plan: Plan,
    ) -> Result<(), LedgerError> {
        let mut backoff = Backoff::new();
        for attempt in 1..=self.max_retries {
            match self.attempt(&keys, &unguarded, &mut plan).await? {
                Attempt::Done => return Ok(()),
                Attempt::Retry(reason) => backoff.wait(attempt, &reason).await,
            }
        }
        Err(LedgerError::Contended {
            attempts: self.max_retries,
        })
    }

    /// Runs a read on a snapshot at a fresh timestamp, and again on a newer
    /// one while it meets locks that cannot be resolved yet.
    async fn read<T, F, Fut>(&self, range: Option<BoundRange>, mut op: F) -> Result<T, LedgerError>
    where
        F: FnMut(Snapshot) -> Fut,
        Fut: Future<Output = Result<T, TikvError>>,
    {
        let mut backoff = Backoff::new();
        for attempt in 1..=self.max_retries {
            let ts = self.client.current_timestamp().await.map_err(unavailable)?;
            let snapshot = self
                .client
                .snapshot(ts, TransactionOptions::new_optimistic());
            match op(snapshot).await {
                Ok(value) => return Ok(value),
                Err(e) if is_conflict(&e) => {
                    self.roll_back_orphans(&e, range.clone()).await;
                    backoff.wait(attempt, &e.to_string()).await
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(LedgerError::Contended {
            attempts: self.max_retries,
        })
    }
}

#[async_trait]
impl LedgerStore for TikvLedger {
    fn kind(&self) -> &'static str {
        "tikv"
    }

    async fn transact_unguarded(
        &self,
        keys: Vec<Key>,
        unguarded: Vec<Key>,
        plan: Plan,
    ) -> Result<(), LedgerError> {
        // In its own task: a cancelled caller (a client hanging up) must not
        // drop a transaction between prewrite and commit, leaving locks.
        let this = self.clone();
        tokio::spawn(async move { this.run(keys, unguarded, plan).await })
            .await
            .map_err(|e| LedgerError::Unavailable(format!("ledger task failed: {e}")))?
    }

    async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, LedgerError> {
        let full: Vec<Vec<u8>> = keys.iter().map(|k| self.full(k)).collect();
        let pairs = self
            .read(span_of(&full), |mut snapshot| {
                let full = full.clone();
                async move { Ok(snapshot.batch_get(full).await?.collect::<Vec<KvPair>>()) }
            })
            .await?;
        let mut reads = Reads::default();
        for key in keys {
            reads.0.insert(key, None);
        }
        for KvPair(k, v) in pairs {
            let k: Vec<u8> = k.into();
            if let Some(short) = k.strip_prefix(self.prefix.as_slice()) {
                reads.0.insert(short.to_vec(), Some(v));
            }
        }
        Ok(reads)
    }

    async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, LedgerError> {
        let full_prefix = self.full(prefix);
        let start = match after {
            // The smallest key after `a`.
            Some(a) => {
                let mut k = self.full(a);
                k.push(0);
                k
            }
            None => full_prefix.clone(),
        };
        let end = prefix_end(&full_prefix).unwrap_or_default();
        let limit = limit.min(u32::MAX as usize) as u32;
        let span: BoundRange = if end.is_empty() {
            (start.clone()..).into()
        } else {
            (start.clone()..end.clone()).into()
        };
        let pairs = self
            .read(Some(span), |mut snapshot| {
                let range = (start.clone(), end.clone());
                async move { Ok(snapshot.scan(range, limit).await?.collect::<Vec<KvPair>>()) }
            })
            .await?;
        Ok(pairs
            .into_iter()
            .filter_map(|KvPair(k, v)| {
                let k: Vec<u8> = k.into();
                k.strip_prefix(self.prefix.as_slice())
                    .map(|s| (s.to_vec(), v))
            })
            .collect())
    }
}
