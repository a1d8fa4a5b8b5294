//! The embedded ledger: the embedded transactional KV (redb with group
//! commit, `flashmall-embedded-kv`) on local disk.

use std::path::Path;

use async_trait::async_trait;
use flashmall_embedded_kv::{EmbeddedKv, KvError};

use super::{Key, LedgerError, LedgerStore, Plan, Reads};

/// The redb-backed ledger store.
pub struct EmbeddedLedger {
    kv: EmbeddedKv<LedgerError>,
}

fn ledger_error(e: KvError<LedgerError>) -> LedgerError {
    match e {
        KvError::Plan(e) => e,
        KvError::Stopped => LedgerError::Unavailable("ledger writer stopped".into()),
        KvError::Io(e) => LedgerError::Io(e),
    }
}

impl EmbeddedLedger {
    /// Opens (or creates) the ledger file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Ok(EmbeddedLedger {
            kv: EmbeddedKv::open(path, "ledger").map_err(ledger_error)?,
        })
    }
}

#[async_trait]
impl LedgerStore for EmbeddedLedger {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    async fn transact_unguarded(
        &self,
        mut keys: Vec<Key>,
        unguarded: Vec<Key>,
        plan: Plan,
    ) -> Result<(), LedgerError> {
        // Plans run one at a time here: nothing changes under a read.
        keys.extend(unguarded);
        self.kv.transact(keys, plan).await.map_err(ledger_error)
    }

    async fn get_many(&self, keys: Vec<Key>) -> Result<Reads, LedgerError> {
        self.kv.get_many(keys).await.map_err(ledger_error)
    }

    async fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, LedgerError> {
        self.kv
            .scan(prefix, after, limit)
            .await
            .map_err(ledger_error)
    }
}
