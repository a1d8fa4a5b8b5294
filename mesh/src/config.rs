//! `[mesh]`: settings every component shares.

use serde::{Deserialize, Serialize};

use crate::client::ClientConfig;
use crate::identity::IdentityKey;

/// `[mesh]`: how components trust and call each other.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Shared secret (32 characters or more) that signs the verified
    /// identity the edge forwards to every component. Empty: `flashmall up`
    /// and `flashmall demo` make a random one for their process; components
    /// run separately refuse to start without it.
    pub identity_key: String,
    /// `[mesh.client]`: how a component calls the others.
    pub client: ClientConfig,
}

impl MeshConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.identity_key.is_empty() {
            IdentityKey::new(self.identity_key.as_bytes())
                .map_err(|e| format!("mesh.identity_key: {e}"))?;
        }
        self.client.validate()
    }

    /// The configured key; for a component run on its own it is required.
    pub fn key(&self) -> Result<IdentityKey, String> {
        if self.identity_key.is_empty() {
            return Err("mesh.identity_key must be set (32+ characters, e.g. FLASHMALL_MESH__IDENTITY_KEY) \
                        when a component runs on its own"
                .into());
        }
        IdentityKey::new(self.identity_key.as_bytes())
            .map_err(|e| format!("mesh.identity_key: {e}"))
    }

    /// The configured key, or a random one for a single-process stack.
    pub fn key_or_random(&self) -> Result<IdentityKey, String> {
        if self.identity_key.is_empty() {
            Ok(IdentityKey::random())
        } else {
            self.key()
        }
    }
}
