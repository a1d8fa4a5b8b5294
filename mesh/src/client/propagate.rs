//! Carries the request being served on to the calls it makes: the same
//! `x-request-id`, the current span as the `traceparent` (`crate::trace`),
//! and its deadline for the timeout layer below (which sends
//! the time left as `grpc-timeout`). It reads the task-local context in
//! `call`, which tonic runs inside the caller's task.

use std::task::{Context, Poll};

use http::HeaderValue;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::HttpRequest;
use crate::context;
use crate::serve::REQUEST_ID;

/// The deadline of the request being served, for the timeout layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PropagatedDeadline(pub(crate) Instant);

#[derive(Debug, Clone)]
pub(crate) struct PropagateLayer;

impl<S> Layer<S> for PropagateLayer {
    type Service = Propagate<S>;

    fn layer(&self, inner: S) -> Propagate<S> {
        Propagate { inner }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Propagate<S> {
    inner: S,
}

impl<S> Service<HttpRequest> for Propagate<S>
where
    S: Service<HttpRequest>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: HttpRequest) -> S::Future {
        context::with_current(|current| {
            if !request.headers().contains_key(REQUEST_ID)
                && let Ok(id) = HeaderValue::from_str(&current.request_id)
            {
                request.headers_mut().insert(REQUEST_ID, id);
            }
            if let Some(deadline) = current.deadline {
                request
                    .extensions_mut()
                    .insert(PropagatedDeadline(deadline));
            }
        });
        crate::trace::inject_current(request.headers_mut());
        self.inner.call(request)
    }
}
