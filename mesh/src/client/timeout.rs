//! The deadline of one attempt: `call_timeout`, or less when the request
//! being served (or the caller's own `grpc-timeout`) leaves less. It sits
//! outside the balancer so that waiting for endpoints (the first DNS
//! answer) is bounded too, and sends the deadline on as `grpc-timeout` so
//! the endpoint and whatever it calls next know it.

use std::task::{Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::propagate::PropagatedDeadline;
use super::{BoxError, HttpRequest, HttpResponse, ResponseFuture};
use crate::grpc;

/// When the current attempt stops waiting; read by the breaker to tell a
/// timeout from a caller that gave up early.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttemptDeadline(pub(crate) Instant);

#[derive(Debug, Clone)]
pub(crate) struct TimeoutLayer {
    pub(crate) service: &'static str,
    pub(crate) call_timeout: Duration,
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            service: self.service,
            call_timeout: self.call_timeout,
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Timeout<S> {
    service: &'static str,
    call_timeout: Duration,
    inner: S,
}

impl<S> Service<HttpRequest> for Timeout<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = BoxError, Future = ResponseFuture>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> ResponseFuture {
        let now = Instant::now();
        let mut deadline = now + self.call_timeout;
        if let Some(PropagatedDeadline(propagated)) = request.extensions().get() {
            deadline = deadline.min(*propagated);
        }
        // A deadline the caller set on this very request (tonic's
        // `Request::set_timeout`).
        if let Some(own) = request
            .headers()
            .get(grpc::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc::parse_timeout)
        {
            deadline = deadline.min(now + own);
        }
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            let status = tonic::Status::deadline_exceeded(format!(
                "the deadline passed before the call to {} was sent",
                self.service
            ));
            return Box::pin(async move { Err(Box::new(status) as BoxError) });
        }
        if let Ok(value) = HeaderValue::try_from(grpc::format_timeout(left)) {
            request.headers_mut().insert(grpc::GRPC_TIMEOUT, value);
        }
        request.extensions_mut().insert(AttemptDeadline(deadline));
        let response = self.inner.call(request);
        let service = self.service;
        Box::pin(async move {
            let timed_out = || {
                Box::new(tonic::Status::deadline_exceeded(format!(
                    "{service} did not answer within {} ms",
                    left.as_millis()
                ))) as BoxError
            };
            match tokio::time::timeout_at(deadline, response).await {
                // tonic's channel enforces the `grpc-timeout` sent above as
                // well (it may fire first: the header is rounded down) and
                // reports it as CANCELLED; it is this deadline expiring.
                Ok(Err(e)) if expired(&*e) => Err(timed_out()),
                Ok(result) => result,
                Err(_) => Err(timed_out()),
            }
        })
    }
}

/// True when tonic's own `grpc-timeout` enforcement ended the call.
fn expired(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}
