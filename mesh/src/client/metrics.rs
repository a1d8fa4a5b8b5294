//! Metrics of every attempt, the outermost layer so that breaker refusals,
//! timeouts and transport errors are counted with the answers:
//!
//! - `flashmall_mesh_client_calls_total{service,method,outcome}`: `outcome`
//!   is the gRPC code name (`OK`, `Unavailable`, ...), `transport` (no
//!   answer: refused or reset connection) or `breaker_open`;
//! - `flashmall_mesh_client_call_duration_seconds{service,method}`: until
//!   the status is known (the end of the response, for a successful call).
//!
//! A call `MeshClient::call` retries counts once per attempt; the retries
//! themselves are counted by `flashmall_mesh_client_retries_total`. `method`
//! is the gRPC method name, the last segment of the request path.

use std::task::{Context, Poll};

use tokio::time::Instant;
use tower::{Layer, Service};

use super::breaker::BreakerOpen;
use super::{BoxError, HttpRequest, HttpResponse, ResponseFuture};
use crate::grpc::{self, StatusBody};

#[derive(Debug, Clone)]
pub(crate) struct MetricsLayer {
    pub(crate) service: &'static str,
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            service: self.service,
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Metrics<S> {
    service: &'static str,
    inner: S,
}

fn outcome_of_error(error: &BoxError) -> &'static str {
    if error.is::<BreakerOpen>() {
        "breaker_open"
    } else if let Some(status) = error.downcast_ref::<tonic::Status>() {
        grpc::code_name(status.code())
    } else {
        "transport"
    }
}

fn record(service: &'static str, method: String, outcome: &'static str, started: Instant) {
    metrics::counter!(
        "flashmall_mesh_client_calls_total",
        "service" => service,
        "method" => method.clone(),
        "outcome" => outcome
    )
    .increment(1);
    metrics::histogram!(
        "flashmall_mesh_client_call_duration_seconds",
        "service" => service,
        "method" => method
    )
    .record(started.elapsed().as_secs_f64());
}

impl<S> Service<HttpRequest> for Metrics<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = BoxError, Future = ResponseFuture>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> ResponseFuture {
        let service = self.service;
        let method = grpc::method_name(request.uri().path()).to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => match grpc::status_code(response.headers()) {
                    Some(code) => {
                        record(service, method, grpc::code_name(code), started);
                        Ok(response)
                    }
                    None => Ok(response.map(|body| {
                        tonic::body::Body::new(StatusBody::new(body, move |outcome| {
                            record(service, method, outcome, started)
                        }))
                    })),
                },
                Err(error) => {
                    record(service, method, outcome_of_error(&error), started);
                    Err(error)
                }
            }
        })
    }
}
