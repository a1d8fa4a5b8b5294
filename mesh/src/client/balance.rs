//! Load balancing over the endpoints of one target service: power of two
//! choices on in-flight calls, among the endpoints whose breaker admits a
//! call. When every breaker is open the call fails at once (UNAVAILABLE)
//! instead of waiting on endpoints known to be failing.
//!
//! The endpoint set changes under the balancer (DNS answers change): each
//! call works on a snapshot, and an endpoint that stays keeps its
//! connection and its breaker.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::tls::TlsConnector;

use super::breaker::{Breaker, BreakerOpen, BreakerService, BreakerState};
use super::{BoxError, ClientConfig, HttpRequest, HttpResponse, ResponseFuture};

/// One endpoint: its connection behind its breaker, and its load.
pub(crate) struct Endpoint {
    addr: SocketAddr,
    breaker: Arc<Breaker>,
    service: BreakerService<Channel>,
    in_flight: AtomicUsize,
}

/// Counts a call in flight on an endpoint until dropped.
struct Load<'a>(&'a AtomicUsize);

impl<'a> Load<'a> {
    fn start(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Load(counter)
    }
}

impl Drop for Load<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Snapshot = Arc<[Arc<Endpoint>]>;

/// The endpoints of one target service, as last discovered.
pub(crate) struct EndpointSet {
    service: &'static str,
    config: ClientConfig,
    /// Mutual TLS to the service, when configured.
    tls: Option<TlsConnector>,
    current: RwLock<Snapshot>,
    /// True once discovery answered at least once (static addresses: at once).
    discovered: watch::Sender<bool>,
}

impl EndpointSet {
    pub(crate) fn new(
        service: &'static str,
        config: &ClientConfig,
        tls: Option<TlsConnector>,
    ) -> Self {
        EndpointSet {
            service,
            config: config.clone(),
            tls,
            current: RwLock::new(Arc::from(Vec::new())),
            discovered: watch::Sender::new(false),
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every endpoint and the state of its breaker.
    pub(crate) fn states(&self) -> Vec<(SocketAddr, BreakerState)> {
        let now = Instant::now();
        self.snapshot()
            .iter()
            .map(|e| (e.addr, e.breaker.state(now)))
            .collect()
    }

    /// Replaces the endpoints with `addrs`. Endpoints that stay keep their
    /// connection and breaker; new ones connect on their first call.
    pub(crate) fn update(&self, addrs: &BTreeSet<SocketAddr>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = Vec::with_capacity(addrs.len());
        for addr in addrs {
            match current.iter().find(|e| e.addr == *addr) {
                Some(kept) => next.push(kept.clone()),
                None => match self.connect(*addr) {
                    Ok(endpoint) => {
                        tracing::info!(service = self.service, endpoint = %addr, "endpoint added");
                        next.push(Arc::new(endpoint));
                    }
                    Err(e) => {
                        tracing::warn!(service = self.service, endpoint = %addr, error = %e, "endpoint not usable")
                    }
                },
            }
        }
        for gone in current.iter().filter(|e| !addrs.contains(&e.addr)) {
            tracing::info!(service = self.service, endpoint = %gone.addr, "endpoint removed");
            gone.breaker.retire();
        }
        *current = Arc::from(next);
    }

    /// Marks discovery as having answered (calls stop waiting for it).
    pub(crate) fn mark_discovered(&self) {
        self.discovered.send_replace(true);
    }

    /// A lazily connecting HTTP/2 channel to `addr` behind a new breaker.
    fn connect(&self, addr: SocketAddr) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true);
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(tls.clone()),
        };
        let breaker = Breaker::new(
            self.service,
            addr.to_string(),
            self.config.breaker_failures,
            self.config.breaker_cooldown,
        );
        Ok(Endpoint {
            addr,
            service: BreakerService::new(breaker.clone(), channel),
            breaker,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// Sends `request` to one endpoint.
    async fn dispatch(&self, request: HttpRequest) -> Result<HttpResponse, BoxError> {
        let mut endpoints = self.snapshot();
        if endpoints.is_empty() && !*self.discovered.borrow() {
            // The first DNS answer is on its way; the timeout layer above
            // bounds this wait.
            let mut discovered = self.discovered.subscribe();
            let _ = discovered.wait_for(|done| *done).await;
            endpoints = self.snapshot();
        }
        if endpoints.is_empty() {
            return Err(Box::new(tonic::Status::unavailable(format!(
                "no endpoint of {} is known (dns returned no address)",
                self.service
            ))));
        }
        let now = Instant::now();
        let mut candidates: Vec<&Arc<Endpoint>> =
            endpoints.iter().filter(|e| e.breaker.admits(now)).collect();
        while let Some(at) = pick(&candidates) {
            let endpoint = candidates.swap_remove(at);
            let mut service = endpoint.service.clone();
            match service.ready().await {
                Ok(_) => {
                    let _load = Load::start(&endpoint.in_flight);
                    return service.call(request).await;
                }
                // Another call took the half-open probe since the filter
                // above: try the others.
                Err(e) if e.is::<BreakerOpen>() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Box::new(BreakerOpen::new(format!(
            "the circuit breaker of every endpoint of {} is open ({} endpoints)",
            self.service,
            endpoints.len()
        ))))
    }
}

/// Power of two choices: of two endpoints drawn at random, the one with
/// fewer calls in flight (the first drawn on a tie).
fn pick(candidates: &[&Arc<Endpoint>]) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(0),
        n => {
            let a = super::random_below(n as u64) as usize;
            let mut b = super::random_below(n as u64 - 1) as usize;
            if b >= a {
                b += 1;
            }
            let load = |i: usize| candidates[i].in_flight.load(Ordering::Relaxed);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

/// The balancer as a tower service.
#[derive(Clone)]
pub(crate) struct Balance {
    endpoints: Arc<EndpointSet>,
}

impl Balance {
    pub(crate) fn new(endpoints: Arc<EndpointSet>) -> Self {
        Balance { endpoints }
    }
}

impl Service<HttpRequest> for Balance {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: readiness is a per-endpoint matter, settled in `call`.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> ResponseFuture {
        let endpoints = self.endpoints.clone();
        Box::pin(async move { endpoints.dispatch(request).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(ports: &[u16]) -> BTreeSet<SocketAddr> {
        ports
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect()
    }

    #[tokio::test]
    async fn updates_keep_the_endpoints_that_stay() {
        let set = EndpointSet::new("test", &ClientConfig::default(), None);
        set.update(&addrs(&[1, 2]));
        let before = set.snapshot();
        set.update(&addrs(&[2, 3]));
        let after = set.snapshot();
        let ports: Vec<u16> = after.iter().map(|e| e.addr.port()).collect();
        assert_eq!(ports, vec![2, 3]);
        assert!(Arc::ptr_eq(&before[1], &after[0]), "port 2 kept its state");
        set.update(&BTreeSet::new());
        assert!(set.states().is_empty());
    }

    #[tokio::test]
    async fn every_breaker_open_fails_fast() {
        let config = ClientConfig {
            breaker_failures: 1,
            ..ClientConfig::default()
        };
        let set = EndpointSet::new("test", &config, None);
        set.update(&addrs(&[1, 2]));
        set.mark_discovered();
        for endpoint in set.snapshot().iter() {
            drop(endpoint.breaker.admit(Instant::now()).map(|mut a| {
                a.expire_now();
                a
            }));
        }
        let error = set
            .dispatch(http::Request::new(tonic::body::Body::empty()))
            .await
            .unwrap_err();
        assert!(error.is::<BreakerOpen>(), "{error}");
        assert!(error.to_string().contains("every endpoint"), "{error}");
    }
}
