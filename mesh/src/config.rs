//! `[mesh]`: settings every component shares.

use serde::{Deserialize, Serialize};

use crate::client::ClientConfig;
use crate::identity::IdentityKey;
use crate::tls::TlsConfig;

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
    /// Plain-HTTP address (`host:port`) serving only `/healthz`, `/readyz`
    /// and `/metrics` of a component run on its own (engine, services), for
    /// the kubelet and Prometheus, which hold no component certificate.
    /// Empty: none (the component's own port answers them too). The edge
    /// has its own, `proxy.admin_listen`.
    pub admin_listen: String,
    /// `[mesh.tls]`: mutual TLS between components.
    pub tls: TlsConfig,
}

impl MeshConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !self.identity_key.is_empty() {
            IdentityKey::new(self.identity_key.as_bytes())
                .map_err(|e| format!("mesh.identity_key: {e}"))?;
        }
        self.admin_addr()?;
        self.tls.validate()?;
        self.client.validate()
    }

    /// The parsed `admin_listen`; `None` when empty.
    pub fn admin_addr(&self) -> Result<Option<std::net::SocketAddr>, String> {
        if self.admin_listen.is_empty() {
            return Ok(None);
        }
        self.admin_listen.parse().map(Some).map_err(|_| {
            format!(
                "mesh.admin_listen must be host:port (e.g. 0.0.0.0:9090), got {:?}",
                self.admin_listen
            )
        })
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

/// The Redis URL schemes the engine and the edge accept: one server, a
/// Redis Cluster, or a primary found through Redis Sentinel (`?sentinelServiceName=NAME`
/// names the monitored primary), each with or without TLS.
pub const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
    "rediss-sentinel://",
];

/// Checks a list of `host:port` endpoints (`field` names it in the error):
/// at least one, each a host and a port.
pub fn check_endpoints(field: &str, list: &[String]) -> Result<(), String> {
    if list.is_empty() {
        return Err(format!("{field} must list at least one host:port"));
    }
    for e in list {
        let ok = e
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(format!("{field}: {e:?} is not host:port"));
        }
    }
    Ok(())
}

/// Checks a Redis URL field (`field` names it in the error); empty passes.
pub fn check_redis_url(field: &str, url: &str) -> Result<(), String> {
    if !url.is_empty() && !REDIS_SCHEMES.iter().any(|s| url.starts_with(s)) {
        return Err(format!(
            "{field} must start with one of {}, got {url:?}",
            REDIS_SCHEMES.join(", ")
        ));
    }
    if url.contains("-sentinel://") && !url.contains("sentinelServiceName=") {
        return Err(format!(
            "{field}: a redis-sentinel:// URL names the primary with ?sentinelServiceName=NAME, got {url:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod redis_url_tests {
    use super::check_redis_url;

    #[test]
    fn redis_urls_are_checked_by_scheme() {
        for ok in [
            "",
            "redis://127.0.0.1:6379",
            "redis-cluster://10.0.0.1:7000",
            "redis-sentinel://127.0.0.1:26379?sentinelServiceName=mymaster",
        ] {
            assert!(check_redis_url("redis.url", ok).is_ok(), "{ok}");
        }
        let e = check_redis_url("redis.url", "http://nope").unwrap_err();
        assert!(
            e.contains("redis.url") && e.contains("redis-sentinel://"),
            "{e}"
        );
        let e = check_redis_url("proxy.redis_url", "redis-sentinel://127.0.0.1:26379").unwrap_err();
        assert!(e.contains("sentinelServiceName"), "{e}");
    }
}
