//! Calls from one component to another: a tower stack over every endpoint
//! of the target service, and `MeshClient::call`, which retries idempotent
//! calls. Generated tonic clients run on it: `FooClient::new(client.channel())`.
//!
//! An attempt goes through, from the outside in:
//!
//! 1. `metrics`: counts and times every attempt; outermost, so breaker
//!    refusals, timeouts and transport errors are counted with the answers;
//! 2. `propagate`: the request id and deadline of the request being served
//!    (`crate::context`), before the attempt's deadline is computed from it;
//! 3. `timeout`: the attempt's deadline (`call_timeout`, or what the caller
//!    has left if less), sent on as `grpc-timeout`; above the balancer so
//!    that waiting for endpoints is bounded too;
//! 4. `balance`: picks an endpoint whose breaker admits the call;
//! 5. `breaker`: the endpoint's circuit breaker, next to the connection so
//!    it judges that endpoint alone;
//! 6. one lazily connecting tonic `Channel` per endpoint (HTTP/2, plain or
//!    over mutual TLS with `[mesh.tls]`).
//!
//! Retries sit above the stack, in `MeshClient::call`, because only the
//! caller can build a request again (a gRPC body is a stream, sent once).
//! Each attempt runs through the whole stack and may land on another
//! endpoint. Endpoints come from `discover`.

mod balance;
mod breaker;
mod config;
pub mod discover;
mod metrics;
mod propagate;
mod retry;
mod timeout;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

pub use breaker::BreakerState;
pub use config::{ClientConfig, RETRY_BUDGET_MIN_PER_SECOND};

use crate::context::{self, RequestContext};
use crate::tls::MeshTls;
use balance::{Balance, EndpointSet};
use discover::Resolver;
use retry::RetryBudget;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

/// Whether a call may be sent again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// Sending it twice has the effect of sending it once (reads; writes
    /// keyed by an idempotency key or a derived id).
    Idempotent,
    /// Sent exactly once, whatever happens.
    NotIdempotent,
}

type Stack = metrics::Metrics<propagate::Propagate<timeout::Timeout<Balance>>>;

/// The client stack as a tonic transport: `FooClient::new(channel)`.
/// Cheap to clone; clones share endpoints, connections and breakers.
#[derive(Clone)]
pub struct MeshChannel {
    stack: Stack,
}

impl Service<HttpRequest> for MeshChannel {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.stack.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> ResponseFuture {
        self.stack.call(request)
    }
}

impl std::fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshChannel(..)")
    }
}

/// A client of one target service (all its endpoints). Cheap to clone.
#[derive(Clone)]
pub struct MeshClient {
    inner: Arc<Inner>,
}

struct Inner {
    service: &'static str,
    config: ClientConfig,
    budget: RetryBudget,
    endpoints: Arc<EndpointSet>,
    channel: MeshChannel,
}

impl std::fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshClient")
            .field("service", &self.inner.service)
            .field("endpoints", &self.endpoints())
            .finish()
    }
}

impl MeshClient {
    /// A client of `service` (its name in metrics and logs, e.g. "order")
    /// at `endpoints`, `host:port` entries. IP literals are used as they
    /// are; host names are resolved now and every `dns_refresh` (a
    /// Kubernetes headless Service name yields every pod). Fails on an empty
    /// list, a malformed entry, an invalid config, or outside a tokio
    /// runtime. Nothing connects until the first call.
    ///
    /// The refresh task stops once this client, its clones and every
    /// channel taken from them are dropped.
    ///
    /// With `tls`, every connection is mutual TLS and the callee must hold
    /// a certificate naming `service` (`crate::tls`).
    pub fn new(
        service: &'static str,
        endpoints: &[String],
        config: &ClientConfig,
        tls: Option<&MeshTls>,
    ) -> Result<MeshClient, String> {
        config.validate()?;
        let fail = |why: String| format!("mesh client of {service}: {why}");
        if endpoints.is_empty() {
            return Err(fail("no endpoints configured".into()));
        }
        let resolver = Resolver::new(service, endpoints).map_err(fail)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(fail("it must be created inside a tokio runtime".into()));
        }
        let connector = tls
            .map(|t| t.connector(service))
            .transpose()
            .map_err(fail)?;
        let set = Arc::new(EndpointSet::new(service, config, connector));
        set.update(&resolver.literal_addrs());
        if resolver.is_static() {
            set.mark_discovered();
        } else {
            tokio::spawn(discover::refresh(
                Arc::downgrade(&set),
                resolver,
                config.dns_refresh,
            ));
        }
        let stack = metrics::MetricsLayer { service }.layer(
            propagate::PropagateLayer.layer(
                timeout::TimeoutLayer {
                    service,
                    call_timeout: config.call_timeout,
                }
                .layer(Balance::new(set.clone())),
            ),
        );
        Ok(MeshClient {
            inner: Arc::new(Inner {
                service,
                config: config.clone(),
                budget: RetryBudget::new(config.retry_budget_percent, RETRY_BUDGET_MIN_PER_SECOND),
                endpoints: set,
                channel: MeshChannel { stack },
            }),
        })
    }

    /// The stack as a tonic transport, for generated clients. Calls made
    /// through it directly are not retried (only `call` retries).
    pub fn channel(&self) -> MeshChannel {
        self.inner.channel.clone()
    }

    /// The endpoints known now and the state of their breakers.
    pub fn endpoints(&self) -> Vec<(SocketAddr, BreakerState)> {
        self.inner.endpoints.states()
    }

    /// Runs one call through the stack. `f` builds and sends the request on
    /// each attempt (for example `|ch| async move { FooClient::new(ch).get(req).await }`
    /// with the request cloned inside). `method` names the call in the
    /// retry metrics and logs; give the gRPC method name ("GetSale") so
    /// they line up with the per-attempt metrics.
    ///
    /// `CallKind::NotIdempotent` calls are sent exactly once. Idempotent
    /// calls are sent again, at most `retries` times, after a retryable
    /// failure (UNAVAILABLE, DEADLINE_EXCEEDED, a transport error, open
    /// breakers), after a backoff, while the retry budget allows and the
    /// request being served still has time. Every attempt of one call
    /// carries the same request id (a new one outside any request).
    pub async fn call<T, F, Fut>(
        &self,
        method: &'static str,
        kind: CallKind,
        mut f: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(MeshChannel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &*self.inner;
        let outer = context::current();
        let caller_deadline = outer.as_ref().and_then(|c| c.deadline);
        let request_id = outer
            .map(|c| c.request_id)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        inner.budget.deposit(Instant::now());
        let mut retry = 0;
        loop {
            let started = Instant::now();
            let mut deadline = started + inner.config.call_timeout;
            if let Some(caller) = caller_deadline {
                deadline = deadline.min(caller);
            }
            // The attempt runs in a context holding its own deadline, so
            // the stack's timeout and this one are the same instant.
            let attempt = RequestContext {
                request_id: request_id.clone(),
                deadline: Some(deadline),
            }
            .scope(f(self.channel()));
            let status = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                // The answer's body did not arrive in time.
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "{} did not answer within {} ms",
                    inner.service,
                    deadline.saturating_duration_since(started).as_millis()
                )),
            };
            if kind == CallKind::NotIdempotent
                || retry >= inner.config.retries
                || !retry::retryable(&status)
            {
                return Err(status);
            }
            let wait = retry::backoff(inner.config.retry_backoff, retry);
            if caller_deadline.is_some_and(|d| Instant::now() + wait >= d) {
                return Err(status);
            }
            if !inner.budget.withdraw(Instant::now()) {
                ::metrics::counter!(
                    "flashmall_mesh_client_retry_budget_exhausted_total",
                    "service" => inner.service
                )
                .increment(1);
                tracing::debug!(
                    service = inner.service,
                    method,
                    code = ?status.code(),
                    "retry budget exhausted, not retrying"
                );
                return Err(status);
            }
            retry += 1;
            ::metrics::counter!(
                "flashmall_mesh_client_retries_total",
                "service" => inner.service,
                "method" => method
            )
            .increment(1);
            tracing::debug!(
                service = inner.service,
                method,
                retry,
                code = ?status.code(),
                error = %status.message(),
                wait_ms = wait.as_millis() as u64,
                "retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// [`call`](Self::call) under a signed identity: each attempt sends a
    /// fresh `request` (cloned) carrying `signed` (a buyer's identity,
    /// forwarded, or the caller's own service identity), and a failure
    /// comes back as the callee's error, code and message.
    pub async fn call_as<Req, T, F, Fut>(
        &self,
        method: &'static str,
        kind: CallKind,
        signed: &str,
        request: &Req,
        send: F,
    ) -> Result<T, crate::error::ApiError>
    where
        Req: Clone,
        F: Fn(MeshChannel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call(method, kind, |channel| {
            let mut call = tonic::Request::new(request.clone());
            let sent = crate::identity::authorize(&mut call, signed)
                .map_err(tonic::Status::from)
                .map(|()| send(channel, call));
            async move { sent?.await }
        })
        .await
        .map_err(|status| crate::error::ApiError::from_status(&status))
    }
}

/// A random number below `n` (0 when `n` is 0), for load balancing and
/// jitter; not for anything secret. Each `RandomState` is seeded afresh.
fn random_below(n: u64) -> u64 {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if n == 0 {
        return 0;
    }
    std::hash::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed)) % n
}
