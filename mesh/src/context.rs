//! The context of the request being served: its id and its deadline. The
//! server middleware (`serve`) sets it around every handler; the mesh
//! client reads it, so the calls a handler makes to other components carry
//! the same `x-request-id` and at most the time its own caller has left.
//!
//! The context lives in a task-local: it applies only to code that runs
//! inside the request's future. A task the handler spawns does not inherit
//! it; to keep it, take `current()` before spawning and run the task inside
//! `RequestContext::scope`.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: RequestContext;
}

/// The id and deadline of the request a piece of code works for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// The request id (`x-request-id`), shared by every hop of one request.
    pub request_id: String,
    /// When the caller stops waiting (from its `grpc-timeout`); `None`: the
    /// caller set no deadline.
    pub deadline: Option<Instant>,
}

impl RequestContext {
    /// A context with `request_id` and no deadline.
    pub fn new(request_id: impl Into<String>) -> Self {
        RequestContext {
            request_id: request_id.into(),
            deadline: None,
        }
    }

    /// This context with `deadline`.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Time left before the deadline (zero once it passed); `None` without
    /// a deadline.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs `future` with this context as the current one.
    pub fn scope<F: Future>(self, future: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, future)
    }
}

/// The context of the request being served, if any.
pub fn current() -> Option<RequestContext> {
    CURRENT.try_with(Clone::clone).ok()
}

/// The id of the request being served, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|c| c.request_id.clone()).ok()
}

/// Runs `f` on the current context without copying it.
pub(crate) fn with_current<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    CURRENT.try_with(f).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_context_applies_inside_its_scope_only() {
        assert_eq!(current_request_id(), None);
        let deadline = Instant::now() + Duration::from_secs(5);
        let seen = RequestContext::new("req-1")
            .with_deadline(deadline)
            .scope(async {
                tokio::task::yield_now().await;
                (current_request_id(), current().and_then(|c| c.deadline))
            })
            .await;
        assert_eq!(seen, (Some("req-1".to_owned()), Some(deadline)));
        assert_eq!(current(), None);
        let spawned = RequestContext::new("req-2")
            .scope(async { tokio::spawn(async { current_request_id() }).await })
            .await
            .unwrap();
        assert_eq!(spawned, None, "spawned tasks do not inherit the context");
    }
}
