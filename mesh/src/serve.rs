//! Serves one component on one port: its JSON routes and gRPC services (the
//! caller merges them into one router), plus `/healthz`, `/readyz` and
//! `/metrics`, a request id and context (`crate::context`) on every
//! request, and graceful shutdown. Identity verification is the
//! component's choice of routes: `crate::verify::verify_identity`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use http::{HeaderValue, StatusCode};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::context::RequestContext;
use crate::error::{ApiError, ErrorCode};
use crate::grpc::{self, StatusBody};
use crate::shutdown::Shutdown;
use crate::tls::MeshTls;

/// The accept queue of every port a component listens on. A flash sale's
/// opening brings hundreds of connections at once (the edge's pool to the
/// engine grows by one per purchase in flight); past the queue the kernel
/// drops the SYN and the caller waits its one-second retransmission.
/// std's and tokio's `bind` ask for 128; the kernel caps this at
/// `net.core.somaxconn` (4096 by default since Linux 5.4).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with an accept queue of [`LISTEN_BACKLOG`]
/// (`SO_REUSEADDR` set, as `TcpListener::bind` does). Inside a tokio
/// runtime.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Header carrying the request id, taken from the caller or made here.
pub const REQUEST_ID: &str = "x-request-id";

/// Largest request body read ahead of any handler (handlers apply their
/// own, smaller limits).
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;

type ReadyFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A component's readiness check, run on every `GET /readyz`.
#[derive(Clone)]
pub struct Readiness(Arc<dyn Fn() -> ReadyFuture + Send + Sync>);

impl Readiness {
    pub fn new<F, Fut>(check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Readiness(Arc::new(move || Box::pin(check())))
    }

    /// Always ready.
    pub fn always() -> Self {
        Readiness::new(|| async { Ok(()) })
    }
}

#[derive(Clone)]
struct Served {
    component: &'static str,
}

/// Serves `app` on `listener` until `shutdown` triggers, then drains
/// in-flight requests and returns. With `tls`, only callers presenting a
/// component certificate get past the handshake (`crate::tls`).
pub async fn serve(
    component: &'static str,
    listener: TcpListener,
    tls: Option<MeshTls>,
    app: Router,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    let ready = readiness;
    let served = Served { component };
    let router = app
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move { readyz(ready).await }
            }),
        )
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(served, observe));
    spawn_metrics_upkeep(shutdown.clone());
    let addr = listener.local_addr()?;
    tracing::info!(component, %addr, mutual_tls = tls.is_some(), "serving");
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let stopped = async move { shutdown.wait().await };
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
        Some(tls) => {
            // `tap_io` gives the TLS listener axum's connect info (the
            // caller's address) without a type of its own.
            let listener = tls.listener(component, listener).tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    }
}

/// Serves only `/healthz`, `/readyz` and `/metrics` on `listener` (a
/// component whose API is served elsewhere: the edge's admin port).
pub async fn serve_probes(
    component: &'static str,
    listener: TcpListener,
    readiness: Readiness,
    shutdown: Shutdown,
) -> std::io::Result<()> {
    serve(
        component,
        listener,
        None,
        Router::new(),
        readiness,
        shutdown,
    )
    .await
}

async fn readyz(readiness: Readiness) -> Response {
    match (readiness.0)().await {
        Ok(()) => "ready".into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
            .into_response(),
    }
}

/// The Prometheus recorder needs periodic upkeep (histogram rotation).
fn spawn_metrics_upkeep(shutdown: Shutdown) {
    if let Some(handle) = crate::telemetry::metrics_handle() {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => handle.run_upkeep(),
                    _ = shutdown.wait() => return,
                }
            }
        });
    }
}

async fn metrics() -> Response {
    match crate::telemetry::metrics_handle() {
        Some(handle) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::unavailable("metrics recorder is not installed").into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// Gives every request an id (echoed in the response), a span, a context
/// for the calls its handler makes (`crate::context`: the id and the
/// deadline from `grpc-timeout`), and a duration sample labelled by route
/// and status; gRPC requests also count in
/// `flashmall_grpc_server_requests_total{component,method,code}`.
///
/// The deadline is passed on, not enforced here: a handler stopped halfway
/// could leave work half done, and the caller stops waiting on its own.
async fn observe(State(served): State<Served>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let header = HeaderValue::from_str(&request_id).unwrap_or(HeaderValue::from_static("invalid"));
    request.headers_mut().insert(REQUEST_ID, header.clone());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // Every body is read before the handler runs, so a handler that
    // answers early (401, 403) never leaves a half-read request on the
    // connection: the edge pools these connections and must be able to
    // reuse them. gRPC bodies stream, and are left alone.
    let grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    // The server span of this hop, a child of the caller's (`crate::trace`);
    // probes are not traced (a kubelet asks every few seconds).
    let probe = matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics");
    let span = if probe {
        tracing::Span::none()
    } else {
        tracing::info_span!(
        "request",
        otel.name = %format!("{} {}", served.component, span_route(&route, request.uri().path(), grpc)),
        otel.kind = "server",
        component = served.component,
        request_id = %request_id,
        method = %request.method(),
        route = %route,
        status = tracing::field::Empty,
        )
    };
    crate::trace::continue_from(&span, request.headers());
    let request = if grpc {
        request
    } else {
        let (parts, body) = request.into_parts();
        match axum::body::to_bytes(body, MAX_BUFFERED_BODY).await {
            Ok(bytes) => Request::from_parts(parts, axum::body::Body::from(bytes)),
            Err(_) => {
                let mut response = ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the request body is larger than {MAX_BUFFERED_BODY} bytes"),
                )
                .into_response();
                response.headers_mut().insert(REQUEST_ID, header);
                return response;
            }
        }
    };
    let started = Instant::now();
    let deadline = request
        .headers()
        .get(grpc::GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(grpc::parse_timeout)
        .and_then(|t| tokio::time::Instant::now().checked_add(t));
    // Paths no route matched are labelled `unknown`: a client's made-up
    // paths must not add label values.
    let grpc_method = grpc.then(|| match route.as_str() {
        "unmatched" => "unknown".to_owned(),
        _ => grpc::method_name(request.uri().path()).to_owned(),
    });
    // The span recorded the id already; the context takes it over.
    let context = RequestContext {
        request_id,
        deadline,
    };
    let mut response = context
        .scope(next.run(request))
        .instrument(span.clone())
        .await;
    span.record("status", response.status().as_u16());
    if let Some(method) = grpc_method {
        response = count_grpc(served.component, method, response);
    }
    metrics::histogram!(
        "flashmall_http_request_duration_seconds",
        "component" => served.component,
        "route" => route,
        "status" => response.status().as_u16().to_string()
    )
    .record(started.elapsed().as_secs_f64());
    response.headers_mut().insert(REQUEST_ID, header);
    response
}

/// What a span calls a route: a gRPC method as `Service/Method`, a JSON
/// route by its pattern; paths no route matched, `unmatched`.
fn span_route(route: &str, path: &str, grpc: bool) -> String {
    if route == "unmatched" || !grpc {
        return route.to_owned();
    }
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or(("", path));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}/{method}")
}

/// Counts a gRPC request once its status is known: from the headers of a
/// trailers-only answer (how errors are sent), else from the trailers. A
/// method the service does not have (UNIMPLEMENTED) is labelled `unknown`
/// too.
fn count_grpc(component: &'static str, method: String, response: Response) -> Response {
    let count = move |code: &'static str| {
        let method = if code == "Unimplemented" {
            "unknown".to_owned()
        } else {
            method
        };
        metrics::counter!(
            "flashmall_grpc_server_requests_total",
            "component" => component,
            "method" => method,
            "code" => code
        )
        .increment(1);
    };
    match grpc::status_code(response.headers()) {
        Some(code) => {
            count(grpc::code_name(code));
            response
        }
        None => response.map(|body| axum::body::Body::new(StatusBody::new(body, count))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// Connections a burst opens before the component accepts any: more
    /// than the 128 std's `bind` queues, fewer than any `somaxconn` since
    /// Linux 5.4.
    const BURST: usize = 600;

    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_queue_not_for_a_syn_retransmission() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        // Nothing accepts: every connection must complete its handshake
        // into the accept queue. With a queue of 128 the kernel drops the
        // SYNs past it and these connects never finish while nothing is
        // accepted (the timeout only bounds a failing run).
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            connects.spawn(tokio::time::timeout(
                Duration::from_secs(30),
                tokio::net::TcpStream::connect(addr),
            ));
        }
        let mut streams = Vec::new();
        while let Some(done) = connects.join_next().await {
            if let Ok(Ok(Ok(stream))) = done {
                streams.push(stream);
            }
        }
        assert_eq!(
            streams.len(),
            BURST,
            "connections that reached the accept queue"
        );
        drop(listener);
    }
}
