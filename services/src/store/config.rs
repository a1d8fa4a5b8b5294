//! `[store]`: where the services keep their data (embedded or ScyllaDB).

use std::path::PathBuf;
use std::time::Duration;

use flashmall_mesh::config::check_endpoints as endpoints;
use serde::{Deserialize, Serialize};

/// Which implementation holds the services' data.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// The embedded KV in one local file (one process).
    Embedded,
    /// ScyllaDB or Cassandra.
    Scylla,
}

/// `[store]`: where the services (auth, orders, payments) keep their data.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (a local file, the default) or `scylla`.
    pub backend: StoreBackend,
    /// File of the embedded store; relative paths are under the data dir.
    pub path: PathBuf,
    /// ScyllaDB (or Cassandra) contact points, `host:port`.
    pub scylla_nodes: Vec<String>,
    /// Keyspace of the services' tables; created at start-up when missing.
    pub keyspace: String,
    /// Replication factor used when the keyspace is created
    /// (NetworkTopologyStrategy in every datacenter the cluster reports as
    /// `datacenter`, or SimpleStrategy when `datacenter` is empty).
    pub replication_factor: u32,
    /// The local datacenter: requests prefer its nodes; empty: any node.
    pub datacenter: String,
    /// Username and password for ScyllaDB's password authenticator; empty: none.
    pub username: String,
    pub password: String,
    /// Deadline of one store request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: StoreBackend::Embedded,
            path: PathBuf::from("services.redb"),
            scylla_nodes: vec!["127.0.0.1:9042".to_owned()],
            keyspace: "flashmall".to_owned(),
            replication_factor: 1,
            datacenter: String::new(),
            username: String::new(),
            password: String::new(),
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == StoreBackend::Embedded && self.path.as_os_str().is_empty() {
            return Err("store.path must not be empty".into());
        }
        if self.backend == StoreBackend::Scylla {
            endpoints("store.scylla_nodes", &self.scylla_nodes)?;
        }
        let valid_keyspace = !self.keyspace.is_empty()
            && self.keyspace.len() <= 48
            && self.keyspace.starts_with(|c: char| c.is_ascii_alphabetic())
            && self
                .keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_keyspace {
            return Err(
                "store.keyspace must be 1 to 48 letters, digits or _, starting with a letter"
                    .into(),
            );
        }
        if self.replication_factor == 0 {
            return Err("store.replication_factor must be at least 1".into());
        }
        if self.request_timeout.is_zero() {
            return Err("store.request_timeout must be above zero".into());
        }
        Ok(())
    }
}
