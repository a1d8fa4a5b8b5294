//! CPU time spent by this process's threads, by thread name: what the
//! edge itself paid per answer, apart from the load generator that shares
//! the cores with it. Throughput ratios on two shared cores mix the
//! server's cost with the client's (a purchase costs the client more to
//! build and to read than `GET /healthz`); the edge's own CPU per answer
//! does not.
//!
//! Read from Linux's `/proc/self/task/*/schedstat` (nanoseconds on a CPU,
//! first field). Elsewhere, or when the stack runs in another process
//! (`--url`), the figure is `None`.

use serde::Serialize;

/// The name Pingora's runtime gives the edge's worker threads
/// (`comm` keeps 15 bytes of "Pingora HTTP Proxy Service").
pub const EDGE_THREADS: &str = "Pingora HTTP";

/// Nanoseconds on a CPU so far, summed over this process's threads whose
/// name starts with `prefix`; `None` when the kernel does not say or no
/// such thread runs.
pub fn thread_ns(prefix: &str) -> Option<u64> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    let mut total = 0u64;
    let mut found = false;
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if !name.starts_with(prefix) {
            continue;
        }
        let Some(ns) = std::fs::read_to_string(dir.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        else {
            continue;
        };
        total += ns;
        found = true;
    }
    found.then_some(total)
}

/// CPU time a set of threads spent across measured turns, and the answers
/// given in them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Meter {
    ns: u64,
    answers: u64,
    unknown: bool,
}

impl Meter {
    /// Measures `turn` (which returns the answers it got) on the threads
    /// named `prefix`.
    pub async fn turn<T, E, F>(
        &mut self,
        prefix: &str,
        answers: impl Fn(&T) -> u64,
        turn: F,
    ) -> Result<T, E>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        let before = thread_ns(prefix);
        let result = turn.await?;
        match (before, thread_ns(prefix)) {
            (Some(b), Some(a)) => {
                self.ns += a.saturating_sub(b);
                self.answers += answers(&result);
            }
            _ => self.unknown = true,
        }
        Ok(result)
    }

    /// Microseconds of CPU per answer; `None` when a turn could not be
    /// measured or nothing was answered.
    pub fn per_answer_us(&self) -> Option<f64> {
        (!self.unknown && self.answers > 0).then(|| self.ns as f64 / 1_000.0 / self.answers as f64)
    }
}

/// The edge's CPU per answer on the gate's three paths, measured in the
/// same alternating turns.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EdgeCpu {
    /// Microseconds of the edge's threads per static answer (`GET /healthz`).
    pub static_us: f64,
    /// Per static answer to a request shaped like a purchase (`POST
    /// /healthz` with its token, key and body).
    pub shaped_us: f64,
    /// Per refused purchase.
    pub gate_us: f64,
}

impl EdgeCpu {
    pub fn of(statics: &Meter, shaped: &Meter, gated: &Meter) -> Option<EdgeCpu> {
        Some(EdgeCpu {
            static_us: statics.per_answer_us()?,
            shaped_us: shaped.per_answer_us()?,
            gate_us: gated.per_answer_us()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_ns() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(u64::MAX)
    }

    #[tokio::test]
    async fn the_cpu_a_named_thread_spent_in_a_turn_is_counted_per_answer() {
        if thread_ns("").is_none() {
            return; // no /proc: nothing to measure (not Linux)
        }
        let (go, started) = std::sync::mpsc::channel::<()>();
        let (finished, done) = tokio::sync::oneshot::channel::<()>();
        let (leave, exit) = std::sync::mpsc::channel::<()>();
        let (up, running) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::Builder::new()
            .name("cpu-meter-test".into())
            .spawn(move || {
                // The thread names itself as it starts: measure after.
                up.send(()).unwrap();
                started.recv().unwrap();
                // Busy until this thread itself has run 20 ms, however
                // long that takes on a loaded machine.
                let from = own_ns();
                while own_ns().saturating_sub(from) < 20_000_000 {
                    std::hint::black_box(own_ns());
                }
                finished.send(()).unwrap();
                exit.recv().unwrap();
            })
            .unwrap();
        running.recv().unwrap();
        let mut meter = Meter::default();
        meter
            .turn("cpu-meter-test", |n: &u64| *n, async {
                go.send(()).unwrap();
                done.await.map(|_| 10u64)
            })
            .await
            .unwrap();
        leave.send(()).unwrap();
        worker.join().unwrap();
        let per_answer = meter.per_answer_us().expect("measured");
        assert!(per_answer >= 2_000.0, "{per_answer} µs per answer");
        assert!(thread_ns("no-such-thread-name").is_none());
        let mut unseen = Meter::default();
        unseen
            .turn("no-such-thread-name", |n: &u64| *n, async {
                Ok::<_, ()>(1)
            })
            .await
            .unwrap();
        assert_eq!(unseen.per_answer_us(), None);
    }
}
