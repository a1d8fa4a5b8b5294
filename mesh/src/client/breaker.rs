//! One endpoint's circuit breaker, the innermost layer before the
//! endpoint's connection, so it sees that endpoint's outcomes only.
//!
//! Closed, it counts consecutive failures; at `breaker_failures` it opens
//! and the balancer sends nothing to the endpoint for `breaker_cooldown`.
//! Then it is half-open: exactly one probe call is admitted; the probe's
//! success closes the breaker, its failure opens it again.
//!
//! Failures are what says the endpoint, not the request, is unwell: a
//! transport error (refused or reset connection), an attempt that ran out
//! of time while the endpoint had it, and the answers UNAVAILABLE and
//! DEADLINE_EXCEEDED (and HTTP 502/503/504 without a gRPC status). Every
//! other answer, errors included (INTERNAL, RESOURCE_EXHAUSTED for sold
//! out, NOT_FOUND ...), is a working endpoint answering and counts as a
//! success. A status sent in trailers after a message (never the case for
//! tonic's unary errors) is not seen here.
//!
//! Admission happens in `poll_ready`, as tower intends: the balancer asks an
//! endpoint to be ready, and an open breaker (or a half-open one whose probe
//! is taken) refuses with `BreakerOpen` before the request is handed over.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;
use tower::Service;

use super::timeout::AttemptDeadline;
use super::{BoxError, HttpRequest, HttpResponse, ResponseFuture};
use crate::grpc;

/// The state of an endpoint's circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are kept away until the cooldown ends.
    Open,
    /// The cooldown ended: one probe call decides.
    HalfOpen,
}

/// Refusal of a call because breakers are open; carries the UNAVAILABLE
/// status the caller sees (tonic finds it in the error's source chain).
#[derive(Debug)]
pub(crate) struct BreakerOpen {
    status: tonic::Status,
}

impl BreakerOpen {
    pub(crate) fn new(message: String) -> Self {
        BreakerOpen {
            status: tonic::Status::unavailable(message),
        }
    }
}

impl fmt::Display for BreakerOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.status.message())
    }
}

impl std::error::Error for BreakerOpen {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// Whether an admitted call is an ordinary one or the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    Normal,
    Probe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Success,
    Failure,
    /// The caller gave up before the endpoint had its full time: says
    /// nothing about the endpoint.
    Abandoned,
}

/// The circuit breaker of one endpoint.
pub(crate) struct Breaker {
    service: &'static str,
    endpoint: String,
    failures_to_open: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

impl Breaker {
    pub(crate) fn new(
        service: &'static str,
        endpoint: String,
        failures_to_open: u32,
        cooldown: Duration,
    ) -> Arc<Breaker> {
        let breaker = Breaker {
            service,
            endpoint,
            failures_to_open,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        breaker.gauge(false);
        Arc::new(breaker)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Held for a few comparisons, never across an await; a poisoned
        // lock still holds a valid state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state as reported to operators and tests.
    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match *self.lock() {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a call would be admitted now (without admitting it).
    pub(crate) fn admits(&self, now: Instant) -> bool {
        match *self.lock() {
            State::Closed { .. } => true,
            State::Open { until } => now >= until,
            State::HalfOpen { probing } => !probing,
        }
    }

    /// Admits a call, or refuses it while the breaker is open or its probe
    /// is taken. The admission must be settled (or dropped).
    pub(crate) fn admit(self: &Arc<Self>, now: Instant) -> Option<Admission> {
        let mut state = self.lock();
        let pass = match *state {
            State::Closed { .. } => Pass::Normal,
            State::Open { until } if now < until => return None,
            State::HalfOpen { probing: true } => return None,
            State::Open { .. } | State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                tracing::debug!(
                    service = self.service,
                    endpoint = %self.endpoint,
                    "circuit breaker half-open, sending a probe"
                );
                Pass::Probe
            }
        };
        Some(Admission {
            breaker: self.clone(),
            pass,
            deadline: None,
            settled: false,
        })
    }

    fn record(&self, pass: Pass, verdict: Verdict, now: Instant) {
        let mut state = self.lock();
        match (pass, verdict, *state) {
            (Pass::Probe, Verdict::Success, _) => {
                *state = State::Closed { failures: 0 };
                self.gauge(false);
                tracing::info!(service = self.service, endpoint = %self.endpoint, "circuit breaker closed");
            }
            (Pass::Probe, Verdict::Failure, _) => {
                *state = State::Open {
                    until: now + self.cooldown,
                };
                tracing::warn!(service = self.service, endpoint = %self.endpoint, "circuit breaker probe failed, open again");
            }
            (Pass::Probe, Verdict::Abandoned, _) => {
                *state = State::HalfOpen { probing: false };
            }
            (Pass::Normal, Verdict::Success, State::Closed { .. }) => {
                *state = State::Closed { failures: 0 };
            }
            (Pass::Normal, Verdict::Failure, State::Closed { failures }) => {
                let failures = failures + 1;
                if failures >= self.failures_to_open {
                    *state = State::Open {
                        until: now + self.cooldown,
                    };
                    self.gauge(true);
                    tracing::warn!(
                        service = self.service,
                        endpoint = %self.endpoint,
                        failures,
                        cooldown_ms = self.cooldown.as_millis() as u64,
                        "circuit breaker open"
                    );
                } else {
                    *state = State::Closed { failures };
                }
            }
            // A call admitted before the breaker opened: the probe decides
            // when it closes, not stragglers.
            (Pass::Normal, _, _) => {}
        }
    }

    fn gauge(&self, open: bool) {
        metrics::gauge!(
            "flashmall_mesh_client_breaker_open",
            "service" => self.service,
            "endpoint" => self.endpoint.clone()
        )
        .set(if open { 1.0 } else { 0.0 });
    }

    /// The endpoint left the service (DNS no longer lists it).
    pub(crate) fn retire(&self) {
        self.gauge(false);
    }
}

/// An admitted call. Settled with the call's outcome; dropped unsettled
/// (the caller gave up), it counts as a timeout failure if the attempt's
/// deadline had passed, and otherwise as nothing (a probe is handed back).
pub(crate) struct Admission {
    breaker: Arc<Breaker>,
    pass: Pass,
    deadline: Option<Instant>,
    settled: bool,
}

impl Admission {
    /// Test helper: the attempt's deadline has passed.
    #[cfg(test)]
    pub(crate) fn expire_now(&mut self) {
        self.deadline = Some(Instant::now());
    }

    fn settle(mut self, verdict: Verdict, now: Instant) {
        self.settled = true;
        self.breaker.record(self.pass, verdict, now);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let now = Instant::now();
        let timed_out = self.deadline.is_some_and(|d| now >= d);
        let verdict = if timed_out {
            Verdict::Failure
        } else {
            Verdict::Abandoned
        };
        self.breaker.record(self.pass, verdict, now);
    }
}

fn failed(response: &HttpResponse) -> bool {
    match grpc::status_code(response.headers()) {
        Some(code) => matches!(
            code,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        None => matches!(
            response.status(),
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ),
    }
}

/// The breaker layer over one endpoint's connection `S`.
pub(crate) struct BreakerService<S> {
    breaker: Arc<Breaker>,
    inner: S,
    /// Taken in `poll_ready`, spent by `call`.
    admission: Option<Admission>,
}

impl<S: Clone> Clone for BreakerService<S> {
    fn clone(&self) -> Self {
        // An admission is one call's: a clone must be made ready itself.
        BreakerService {
            breaker: self.breaker.clone(),
            inner: self.inner.clone(),
            admission: None,
        }
    }
}

impl<S> BreakerService<S> {
    pub(crate) fn new(breaker: Arc<Breaker>, inner: S) -> Self {
        BreakerService {
            breaker,
            inner,
            admission: None,
        }
    }

    fn refusal(&self) -> BoxError {
        Box::new(BreakerOpen::new(format!(
            "the circuit breaker of {} endpoint {} is open",
            self.breaker.service, self.breaker.endpoint
        )))
    }
}

impl<S> Service<HttpRequest> for BreakerService<S>
where
    S: Service<HttpRequest, Response = HttpResponse>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.admission.is_none() {
            match self.breaker.admit(Instant::now()) {
                Some(admission) => self.admission = Some(admission),
                None => return Poll::Ready(Err(self.refusal())),
            }
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(e)) => {
                if let Some(admission) = self.admission.take() {
                    admission.settle(Verdict::Failure, Instant::now());
                }
                Poll::Ready(Err(e.into()))
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, request: HttpRequest) -> ResponseFuture {
        let Some(mut admission) = self.admission.take() else {
            // `call` without `poll_ready` breaks tower's contract; refuse
            // rather than let a call past the breaker.
            let refusal = self.refusal();
            return Box::pin(async move { Err(refusal) });
        };
        admission.deadline = request.extensions().get::<AttemptDeadline>().map(|d| d.0);
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    let verdict = if failed(&response) {
                        Verdict::Failure
                    } else {
                        Verdict::Success
                    };
                    admission.settle(verdict, Instant::now());
                    Ok(response)
                }
                Err(e) => {
                    admission.settle(Verdict::Failure, Instant::now());
                    Err(e.into())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(2);

    fn breaker() -> Arc<Breaker> {
        Breaker::new("test", "127.0.0.1:1".into(), 3, COOLDOWN)
    }

    fn fail(b: &Arc<Breaker>, now: Instant) {
        b.admit(now)
            .expect("admitted")
            .settle(Verdict::Failure, now);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t0 = Instant::now();
        fail(&b, t0);
        fail(&b, t0);
        b.admit(t0).unwrap().settle(Verdict::Success, t0);
        fail(&b, t0);
        fail(&b, t0);
        assert_eq!(
            b.state(t0),
            BreakerState::Closed,
            "a success resets the count"
        );
        fail(&b, t0);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert!(b.admit(t0 + COOLDOWN / 2).is_none());
        assert!(!b.admits(t0 + COOLDOWN / 2));
    }

    #[test]
    fn half_open_admits_one_probe_that_decides() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&b, t0);
        }
        let later = t0 + COOLDOWN;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        let probe = b.admit(later).expect("one probe");
        assert!(b.admit(later).is_none(), "only one probe at a time");
        assert!(!b.admits(later));
        probe.settle(Verdict::Failure, later);
        assert_eq!(
            b.state(later),
            BreakerState::Open,
            "a failed probe re-opens"
        );

        let much_later = later + COOLDOWN;
        let probe = b.admit(much_later).expect("a new probe after the cooldown");
        drop(probe);
        assert!(
            b.admit(much_later).is_some(),
            "an abandoned probe is handed back"
        );
    }

    #[test]
    fn a_successful_probe_closes() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            fail(&b, t0);
        }
        b.admit(t0 + COOLDOWN)
            .unwrap()
            .settle(Verdict::Success, t0 + COOLDOWN);
        assert_eq!(b.state(t0 + COOLDOWN), BreakerState::Closed);
        assert!(b.admit(t0 + COOLDOWN).is_some());
    }

    #[test]
    fn dropped_calls_count_as_failures_only_past_their_deadline() {
        let b = breaker();
        let now = Instant::now();
        for _ in 0..5 {
            let mut a = b.admit(now).unwrap();
            a.deadline = Some(now + Duration::from_secs(60));
            drop(a);
        }
        assert_eq!(
            b.state(now),
            BreakerState::Closed,
            "abandoned calls say nothing"
        );
        for _ in 0..3 {
            let mut a = b.admit(now).unwrap();
            a.deadline = Some(now);
            drop(a);
        }
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open,
            "timeouts are failures"
        );
    }
}
