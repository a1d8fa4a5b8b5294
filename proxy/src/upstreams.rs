//! The upstream pools: each pool's `host:port` entries, resolved again every
//! `proxy.dns_refresh`, so a Kubernetes headless Service name yields every
//! ready pod of its component, and pods the autoscaler adds or removes join
//! or leave the pool without a restart. Each backend is health checked over
//! TCP; a name that fails to resolve keeps its last answer. With
//! `[mesh.tls]`, `PeerTls` makes every connection to a pool mutual TLS.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use flashmall_mesh::MeshTls;
use flashmall_mesh::client::discover::Resolver;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::TcpHealthCheck;
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509, parse_x509};

/// A pool's backends, as its entries resolve now.
struct Dns(Resolver);

#[async_trait]
impl ServiceDiscovery for Dns {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let backends = self
            .0
            .resolve()
            .await
            .into_iter()
            .map(|addr| Backend {
                addr: SocketAddr::Inet(addr),
                weight: 1,
                ext: http::Extensions::new(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

/// How a pool finds and checks its backends.
pub struct PoolOptions {
    pub dns_refresh: Duration,
    pub health_check_interval: Duration,
}

/// The load balancer of pool `name`, resolved once before it is returned
/// (a name that does not resolve yet leaves the pool empty until it does).
pub async fn pool(
    name: &str,
    entries: &[String],
    options: &PoolOptions,
) -> Result<LoadBalancer<RoundRobin>, String> {
    let resolver =
        Resolver::new(name, entries).map_err(|e| format!("proxy.upstreams.{name}: {e}"))?;
    let names_to_refresh = !resolver.is_static();
    let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(Dns(resolver))));
    lb.update()
        .await
        .map_err(|e| format!("proxy.upstreams.{name}: {e}"))?;
    if names_to_refresh {
        lb.update_frequency = Some(options.dns_refresh);
    }
    let mut check = TcpHealthCheck::new();
    check.peer_template.options.connection_timeout = Some(Duration::from_secs(1));
    // One slow check on a loaded node must not take a backend out.
    check.consecutive_failure = 3;
    lb.set_health_check(check);
    lb.health_check_frequency = Some(options.health_check_interval);
    Ok(lb)
}

/// Mutual TLS from the edge to the components (`[mesh.tls]`): each peer
/// presents the edge's certificate and accepts only a certificate naming
/// its pool (the component: `engine`, `orders`, …) under the mesh's CA.
/// Pingora takes both as its own types, built again only when the files
/// were reloaded.
pub struct PeerTls {
    tls: MeshTls,
    built: RwLock<Option<Built>>,
}

#[derive(Clone)]
struct Built {
    generation: u64,
    cert: Arc<CertKey>,
    roots: Arc<CaType>,
}

impl PeerTls {
    /// Checks now that Pingora can use the loaded files.
    pub fn new(tls: MeshTls) -> Result<PeerTls, String> {
        let peer = PeerTls {
            tls,
            built: RwLock::new(None),
        };
        peer.built()?;
        Ok(peer)
    }

    /// The mesh's TLS, for the edge's own calls.
    pub fn mesh(&self) -> &MeshTls {
        &self.tls
    }

    fn built(&self) -> Result<Built, String> {
        let material = self.tls.current();
        if let Some(built) = &*self.built.read().unwrap_or_else(PoisonError::into_inner)
            && built.generation == material.generation()
        {
            return Ok(built.clone());
        }
        let chain: Vec<Vec<u8>> = material.chain().iter().map(|c| c.to_vec()).collect();
        let key = material.key().secret_der().to_vec();
        let roots: Vec<Vec<u8>> = material.roots().iter().map(|c| c.to_vec()).collect();
        // Pingora's X.509 parser panics on what it cannot read; rustls read
        // these already, so a panic here is a parser disagreement, refused
        // like a bad file.
        let generation = material.generation();
        let built = std::panic::catch_unwind(move || Built {
            generation,
            cert: Arc::new(CertKey::new(chain, key)),
            roots: roots
                .into_iter()
                .map(|raw| WrappedX509::new(raw, parse_x509))
                .collect::<Vec<_>>()
                .into(),
        })
        .map_err(|_| "mesh.tls: the edge's TLS library cannot read the certificates".to_owned())?;
        *self.built.write().unwrap_or_else(PoisonError::into_inner) = Some(built.clone());
        Ok(built)
    }

    /// Makes `peer` mutual TLS to component `pool`. Keeps the last usable
    /// files if the current ones cannot be read (the reload logged why).
    pub fn secure(&self, peer: &mut HttpPeer, pool: &str) {
        let built = match self.built() {
            Ok(built) => Some(built),
            Err(e) => {
                tracing::warn!(error = %e, "keeping the edge's previous mesh certificates");
                self.built
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone()
            }
        };
        let Some(built) = built else { return };
        peer.scheme = pingora::upstreams::peer::Scheme::HTTPS;
        peer.sni = pool.to_owned();
        peer.options.verify_cert = true;
        peer.options.verify_hostname = true;
        peer.options.ca = Some(built.roots);
        peer.client_cert_key = Some(built.cert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> PoolOptions {
        PoolOptions {
            dns_refresh: Duration::from_millis(50),
            health_check_interval: Duration::from_secs(1),
        }
    }

    fn addrs(lb: &LoadBalancer<RoundRobin>) -> Vec<String> {
        lb.backends()
            .get_backend()
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    }

    #[tokio::test]
    async fn literals_are_the_pool_and_are_not_refreshed() {
        let lb = pool(
            "engine",
            &["10.0.0.7:8081".into(), "[::1]:8081".into()],
            &options(),
        )
        .await
        .unwrap();
        assert_eq!(addrs(&lb), ["10.0.0.7:8081", "[::1]:8081"]);
        assert_eq!(lb.update_frequency, None);
    }

    #[tokio::test]
    async fn names_resolve_to_every_address_and_are_refreshed() {
        let lb = pool("engine", &["localhost:8081".into()], &options())
            .await
            .unwrap();
        let found = addrs(&lb);
        assert!(
            found.iter().any(|a| a == "127.0.0.1:8081"),
            "localhost resolved to {found:?}"
        );
        assert_eq!(lb.update_frequency, Some(Duration::from_millis(50)));
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_yet_leaves_the_pool_empty() {
        let lb = pool("engine", &["no-such-host.invalid:8081".into()], &options())
            .await
            .unwrap();
        assert!(addrs(&lb).is_empty());
        assert!(lb.select(b"", 8).is_none());
    }

    #[tokio::test]
    async fn a_malformed_entry_is_refused_with_its_pool() {
        let e = pool("engine", &["http://engine:8081".into()], &options())
            .await
            .err()
            .unwrap();
        assert!(e.starts_with("proxy.upstreams.engine:"), "{e}");
    }
}
