//! The load driver: open or closed loop over keep-alive connections.
//!
//! - **Closed loop** (`connections`): each connection sends its next
//!   request as soon as the last one is answered. Latency is each request's
//!   own time; the offered load falls when the server slows down, which is
//!   what closed loops hide (coordinated omission).
//! - **Open loop** (`rate`): request `i` is due at a fixed instant (`burst`
//!   requests at the start, then `rate` per second), whatever the server
//!   does. Latency is measured from the instant the request was *due*, so
//!   time spent waiting for a free connection counts (the correction for
//!   coordinated omission); the uncorrected service time is kept beside it.
//!
//! Every connection is opened before the start instant, so a burst measures
//! the server, not TCP handshakes.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::http::{Conn, Endpoint};
use crate::progress::Progress;

/// How the load is offered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "loop", rename_all = "snake_case")]
pub enum Mode {
    Closed {
        connections: usize,
    },
    Open {
        /// Requests per second after the burst.
        rate: f64,
        /// Requests due at the start instant.
        burst: usize,
        connections: usize,
    },
}

impl Mode {
    pub fn connections(&self) -> usize {
        match *self {
            Mode::Closed { connections } | Mode::Open { connections, .. } => connections,
        }
    }

    /// When request `i` is due, after the start (open loop only).
    fn due(&self, i: usize) -> Option<Duration> {
        match *self {
            Mode::Closed { .. } => None,
            Mode::Open { rate, burst, .. } => Some(if i < burst {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((i - burst) as f64 / rate)
            }),
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            Mode::Closed { connections } => format!("closed loop, {connections} connections"),
            Mode::Open {
                rate,
                burst,
                connections,
            } => format!("open loop, {burst} at once then {rate:.0}/s, {connections} connections"),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let connections = self.connections();
        if connections == 0 || connections > 10_000 {
            return Err("connections must be between 1 and 10000".into());
        }
        if let Mode::Open { rate, .. } = *self
            && (!rate.is_finite() || rate <= 0.0)
        {
            return Err("the open-loop rate must be above zero".into());
        }
        Ok(())
    }
}

/// One answered request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Which request (the job's `i`).
    pub index: usize,
    /// When the answer arrived, since the start.
    pub done_us: u64,
    /// From when the request was due (open loop) or sent (closed loop).
    pub latency_us: u64,
    /// From when it was sent.
    pub service_us: u64,
    pub outcome: &'static str,
}

/// The outcome recorded when a connection broke; the driver reconnects.
pub const CONNECTION_ERROR: &str = "connection_error";

/// What a run recorded.
#[derive(Debug, Clone)]
pub struct Recording {
    pub mode: Mode,
    /// Every sample, in no particular order.
    pub samples: Vec<Sample>,
    /// From the start instant until the last answer.
    pub elapsed: Duration,
    /// Connections opened again: closed by the server or broken.
    pub reconnects: u64,
}

/// Turns of one kind of load as one recording: each turn's samples
/// shifted to follow the last, so throughput is answers over the time
/// measured.
pub fn join(turns: Vec<Recording>) -> Option<Recording> {
    let mut turns = turns.into_iter();
    let mut all = turns.next()?;
    for t in turns {
        let offset = all.elapsed.as_micros() as u64;
        all.samples.extend(t.samples.into_iter().map(|s| Sample {
            done_us: s.done_us + offset,
            ..s
        }));
        all.elapsed += t.elapsed;
        all.reconnects += t.reconnects;
    }
    Some(all)
}

/// One kind of request: what request `i` is and how its answer counts.
pub trait Job: Send + Sync + 'static {
    /// Sends request `i` on `conn`; the outcome's label, or an error when
    /// the connection broke.
    fn call(
        &self,
        conn: &mut Conn,
        i: usize,
    ) -> impl Future<Output = Result<&'static str, String>> + Send;
}

/// How much load, and when.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub mode: Mode,
    /// At most this many requests.
    pub requests: usize,
    /// Start at this instant (connections are open by then); default now.
    pub start: Option<Instant>,
    /// Stop sending after this long, even below `requests`.
    pub duration: Option<Duration>,
}

/// Sends `job`'s requests to `endpoint` as `run` says and records every answer.
pub async fn drive<J: Job>(
    job: Arc<J>,
    endpoint: &Endpoint,
    run: Run,
    progress: &Progress,
) -> Result<Recording, String> {
    run.mode.validate()?;
    let mut conns = Vec::with_capacity(run.mode.connections());
    for _ in 0..run.mode.connections().min(run.requests.max(1)) {
        conns.push(Conn::open(endpoint).await?);
    }
    if let Some(start) = run.start {
        tokio::time::sleep_until(start.into()).await;
    }
    let start = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let done = progress.counter();
    let reconnects = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conns.len());
    for conn in conns {
        let job = Arc::clone(&job);
        let next = Arc::clone(&next);
        let done = Arc::clone(&done);
        let reconnects = Arc::clone(&reconnects);
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            connection_loop(job, conn, &endpoint, run, start, &next, &done, &reconnects).await
        }));
    }
    let mut samples = Vec::with_capacity(run.requests.min(10_000_000));
    for task in tasks {
        samples.extend(task.await.map_err(|e| format!("a load task failed: {e}"))?);
    }
    let elapsed = samples
        .iter()
        .map(|s| Duration::from_micros(s.done_us))
        .max()
        .unwrap_or_default();
    Ok(Recording {
        mode: run.mode,
        samples,
        elapsed,
        reconnects: reconnects.load(Ordering::Relaxed),
    })
}

#[allow(clippy::too_many_arguments)]
async fn connection_loop<J: Job>(
    job: Arc<J>,
    mut conn: Conn,
    endpoint: &Endpoint,
    run: Run,
    start: Instant,
    next: &AtomicUsize,
    done: &AtomicU64,
    reconnects: &AtomicU64,
) -> Vec<Sample> {
    let stop = run.duration.map(|d| start + d);
    let mut samples =
        Vec::with_capacity((run.requests / run.mode.connections().max(1)).min(1 << 20) + 16);
    loop {
        if stop.is_some_and(|stop| Instant::now() >= stop) {
            return samples;
        }
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= run.requests {
            return samples;
        }
        let due = run.mode.due(i).map(|d| start + d);
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        if conn.is_closed() {
            // The server ended the connection after an answer: a new one,
            // counted, its time part of this request's latency.
            reconnects.fetch_add(1, Ordering::Relaxed);
            match reopen(endpoint).await {
                Some(fresh) => conn = fresh,
                None => return samples,
            }
        }
        let sent = Instant::now();
        let result = job.call(&mut conn, i).await;
        let answered = Instant::now();
        let from = due.unwrap_or(sent);
        samples.push(Sample {
            index: i,
            done_us: micros(answered.saturating_duration_since(start)),
            latency_us: micros(answered.saturating_duration_since(from)),
            service_us: micros(answered.saturating_duration_since(sent)),
            outcome: result.as_ref().map_or(CONNECTION_ERROR, |o| o),
        });
        done.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            // The connection broke: reconnect, or give this connection up
            // when the server stays away.
            reconnects.fetch_add(1, Ordering::Relaxed);
            match reopen(endpoint).await {
                Some(fresh) => conn = fresh,
                None => return samples,
            }
        }
    }
}

/// A new connection within five seconds, pausing between tries so a dead
/// server is not hammered in a tight loop.
async fn reopen(endpoint: &Endpoint) -> Option<Conn> {
    for _ in 0..100 {
        if let Ok(conn) = Conn::open(endpoint).await {
            return Some(conn);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_requests_are_due_on_a_fixed_schedule() {
        let mode = Mode::Open {
            rate: 1000.0,
            burst: 10,
            connections: 4,
        };
        assert_eq!(mode.due(0), Some(Duration::ZERO));
        assert_eq!(mode.due(9), Some(Duration::ZERO));
        assert_eq!(mode.due(10), Some(Duration::ZERO));
        assert_eq!(mode.due(11), Some(Duration::from_millis(1)));
        assert_eq!(mode.due(1010), Some(Duration::from_secs(1)));
        assert_eq!(Mode::Closed { connections: 3 }.due(5), None);
    }

    #[test]
    fn turns_join_end_to_end() {
        let turn = |n: u64, reconnects| Recording {
            mode: Mode::Closed { connections: 1 },
            samples: (1..=n)
                .map(|i| Sample {
                    index: i as usize,
                    done_us: i * 100,
                    latency_us: 10,
                    service_us: 10,
                    outcome: "ok",
                })
                .collect(),
            elapsed: Duration::from_micros(n * 100),
            reconnects,
        };
        let all = join(vec![turn(3, 1), turn(2, 2)]).unwrap();
        assert_eq!(all.samples.len(), 5);
        assert_eq!(all.elapsed, Duration::from_micros(500));
        assert_eq!(all.reconnects, 3);
        let done: Vec<u64> = all.samples.iter().map(|s| s.done_us).collect();
        assert_eq!(done, [100, 200, 300, 400, 500]);
        assert!(join(Vec::new()).is_none());
    }

    #[test]
    fn bad_modes_are_refused() {
        assert!(Mode::Closed { connections: 0 }.validate().is_err());
        assert!(
            Mode::Open {
                rate: 0.0,
                burst: 0,
                connections: 1
            }
            .validate()
            .is_err()
        );
        assert!(
            Mode::Open {
                rate: f64::NAN,
                burst: 0,
                connections: 1
            }
            .validate()
            .is_err()
        );
    }
}
