//! The TiKV ledger: `tikv-client` optimistic transactions. A write conflict
//! restarts the whole transaction (fresh reads, plan again); an undetermined
//! commit is retried the same way, which is safe because every plan is
//! idempotent: re-reading shows whether the first commit landed. A
//! transaction is always committed or rolled back, never dropped open.

use std::time::Duration;

use async_trait::async_trait;
use tikv_client::{CheckLevel, Error as TikvError, KvPair, TransactionClient, TransactionOptions};

use super::{Key, LedgerError, LedgerStore, Plan, Reads, Write, keys::prefix_end};
use crate::config::LedgerConfig;

/// The tikv-client-backed ledger store.
#[derive(Clone)]
pub struct TikvLedger {
    client: TransactionClient,
    prefix: Vec<u8>,
    max_retries: u32,
}

/// True for errors that a fresh transaction may not hit again.
fn is_conflict(e: &TikvError) -> bool {
    match e {
        TikvError::KeyError(ke) => {
            ke.conflict.is_some() || ke.deadlock.is_some() || !ke.retryable.is_empty()
        }
        TikvError::MultipleKeyErrors(errs) | TikvError::ExtractedErrors(errs) => {
            errs.iter().any(is_conflict)
        }
        TikvError::PessimisticLockError { inner, .. } => is_conflict(inner),
        TikvError::ResolveLockError(_) => true,
        _ => false,
    }
}

fn unavailable(e: TikvError) -> LedgerError {
    LedgerError::Unavailable(e.to_string())
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

    async fn attempt(&self, keys: &[Key], plan: &mut Plan) -> Result<Attempt, LedgerError> {
        let mut txn = self
            .client
            .begin_with_options(Self::options())
            .await
            .map_err(unavailable)?;
        let pairs = match txn
            .batch_get(keys.iter().map(|k| self.full(k)).collect::<Vec<_>>())
            .await
        {
            Ok(pairs) => pairs.collect::<Vec<KvPair>>(),
            Err(e) => {
                let _ = txn.rollback().await;
                return if is_conflict(&e) {
                    Ok(Attempt::Retry(e.to_string()))
                } else {
                    Err(unavailable(e))
                };
            }
        };
        let mut reads = Reads::default();
        for key in keys {
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
        match txn.commit().await {
            Ok(_) => Ok(Attempt::Done),
            Err(TikvError::UndeterminedError(e)) => {
                // The commit may or may not have landed: plan again on fresh
                // reads, which see it if it did.
                Ok(Attempt::Retry(format!("undetermined commit: {e}")))
            }
            Err(e) if is_conflict(&e) => {
                let _ = txn.rollback().await;
                Ok(Attempt::Retry(e.to_string()))
            }
            Err(e) => {
                let _ = txn.rollback().await;
                Err(unavailable(e))
            }
        }
    }
}

impl TikvLedger {
    /// Runs a transaction with retries (see `transact`).
    async fn run(&self, keys: Vec<Key>, mut plan: Plan) -> Result<(), LedgerError> {
        let mut backoff = Duration::from_millis(2);
        for attempt in 1..=self.max_retries {
            match self.attempt(&keys, &mut plan).await? {
                Attempt::Done => return Ok(()),
                Attempt::Retry(reason) => {
                    metrics::counter!("flashmall_ledger_retries_total", "backend" => "tikv")
                        .increment(1);
                    tracing::debug!(attempt, reason, "ledger transaction retried");
                    // Jitter from the clock's nanoseconds keeps racing writers apart.
                    let jitter = u64::from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.subsec_nanos())
                            .unwrap_or(0),
                    ) % (backoff.as_micros() as u64 + 1);
                    tokio::time::sleep(backoff + Duration::from_micros(jitter)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
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

    async fn transact(&self, keys: Vec<Key>, plan: Plan) -> Result<(), LedgerError> {
        // In its own task: a cancelled caller (a client hanging up) must not
        // drop a transaction between prewrite and commit, leaving locks.
        let this = self.clone();
        tokio::spawn(async move { this.run(keys, plan).await })
            .await
            .map_err(|e| LedgerError::Unavailable(format!("ledger task failed: {e}")))?
    }

    async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, LedgerError> {
        let ts = self.client.current_timestamp().await.map_err(unavailable)?;
        let mut snapshot = self
            .client
            .snapshot(ts, TransactionOptions::new_optimistic());
        let pairs = snapshot
            .batch_get(keys.iter().map(|k| self.full(k)).collect::<Vec<_>>())
            .await
            .map_err(unavailable)?;
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
        let ts = self.client.current_timestamp().await.map_err(unavailable)?;
        let mut snapshot = self
            .client
            .snapshot(ts, TransactionOptions::new_optimistic());
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
        let pairs = snapshot
            .scan((start, end), limit.min(u32::MAX as usize) as u32)
            .await
            .map_err(unavailable)?;
        Ok(pairs
            .filter_map(|KvPair(k, v)| {
                let k: Vec<u8> = k.into();
                k.strip_prefix(self.prefix.as_slice())
                    .map(|s| (s.to_vec(), v))
            })
            .collect())
    }
}
