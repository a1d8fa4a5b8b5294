//! Where the endpoints of a target service are: `host:port` entries from
//! the configuration. IP literals are used as they are; host names are
//! resolved with the system resolver at start and every `dns_refresh`, so a
//! Kubernetes headless Service name yields every ready pod, and pods that
//! come and go are added and removed.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError, Weak};
use std::time::Duration;

use super::balance::EndpointSet;

/// One configured endpoint entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Name { host: String, port: u16 },
}

impl Target {
    /// Parses a `host:port` entry (`[v6]:port` for an IPv6 literal).
    pub fn parse(entry: &str) -> Result<Target, String> {
        let bad = |why: &str| format!("endpoint {entry:?} is not host:port ({why})");
        let entry = entry.trim();
        if let Ok(addr) = entry.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        if entry.contains("://") {
            return Err(bad("no scheme"));
        }
        let (host, port) = entry.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !host_ok {
            return Err(bad("the host is not a host name or an ip address"));
        }
        Ok(Target::Name {
            host: host.to_owned(),
            port,
        })
    }
}

/// Resolves a service's configured entries to socket addresses, again on
/// each call. A name whose lookup fails keeps its last answer: a resolver
/// hiccup must not empty a healthy service.
pub struct Resolver {
    service: String,
    targets: Vec<Target>,
    last: Mutex<HashMap<(String, u16), Vec<SocketAddr>>>,
}

impl Resolver {
    /// Parses every entry; `service` names the service in logs.
    pub fn new(service: &str, entries: &[String]) -> Result<Resolver, String> {
        let targets = entries
            .iter()
            .map(|e| Target::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Resolver {
            service: service.to_owned(),
            targets,
            last: Mutex::new(HashMap::new()),
        })
    }

    /// The addresses given as IP literals, known without a lookup.
    pub fn literal_addrs(&self) -> BTreeSet<SocketAddr> {
        self.targets
            .iter()
            .filter_map(|t| match t {
                Target::Addr(addr) => Some(*addr),
                Target::Name { .. } => None,
            })
            .collect()
    }

    /// True when every entry is an IP literal, so nothing ever changes.
    pub fn is_static(&self) -> bool {
        self.targets.iter().all(|t| matches!(t, Target::Addr(_)))
    }

    /// Every address the entries stand for now.
    pub async fn resolve(&self) -> BTreeSet<SocketAddr> {
        let service = self.service.as_str();
        let mut addrs = self.literal_addrs();
        for target in &self.targets {
            let Target::Name { host, port } = target else {
                continue;
            };
            let key = (host.clone(), *port);
            match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(found) => {
                    let found: Vec<SocketAddr> = found.collect();
                    if found.is_empty() {
                        tracing::warn!(service, host = %host, "dns returned no address");
                    }
                    addrs.extend(found.iter().copied());
                    self.last
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key, found);
                }
                Err(e) => {
                    tracing::warn!(service, host = %host, error = %e, "dns lookup failed, keeping the last answer");
                    let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
                    addrs.extend(last.get(&key).into_iter().flatten().copied());
                }
            }
        }
        addrs
    }
}

/// Resolves `resolver` now and every `every`, updating `set`, until the set
/// is dropped (every client and channel using it is gone).
pub(crate) async fn refresh(set: Weak<EndpointSet>, resolver: Resolver, every: Duration) {
    loop {
        if set.strong_count() == 0 {
            return;
        }
        let addrs = resolver.resolve().await;
        let Some(set_now) = set.upgrade() else {
            return;
        };
        set_now.update(&addrs);
        set_now.mark_discovered();
        drop(set_now);
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_as_addresses_or_names() {
        assert_eq!(
            Target::parse("10.0.0.5:50051").unwrap(),
            Target::Addr("10.0.0.5:50051".parse().unwrap())
        );
        assert_eq!(
            Target::parse("[::1]:8081").unwrap(),
            Target::Addr("[::1]:8081".parse().unwrap())
        );
        assert_eq!(
            Target::parse(" order.flashmall.svc.cluster.local:8083 ").unwrap(),
            Target::Name {
                host: "order.flashmall.svc.cluster.local".into(),
                port: 8083
            }
        );
        for bad in [
            "",
            "order",
            "order:",
            ":80",
            "order:http",
            "order:70000",
            "order:0",
            "http://order:80",
            "ord er:80",
            "::1:80",
        ] {
            let e = Target::parse(bad).unwrap_err();
            assert!(e.contains("is not host:port"), "{bad:?}: {e}");
        }
    }
}
