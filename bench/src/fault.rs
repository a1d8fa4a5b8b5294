//! `flashmall bench seckill --fault`: a Redis topology the bench starts
//! itself on loopback (from Debian's `redis-server` and `redis-cli`), and
//! the fault it suffers at a chosen instant of the storm. Each fault loses
//! whatever Redis had not made durable or replicated:
//!
//! - `redis-restart`: one `redis-server`; a snapshot (`SAVE`) is taken
//!   halfway to the fault, and at the fault the server is killed (SIGKILL)
//!   and started again from that snapshot. Every purchase between the two
//!   is gone from Redis, as after a restart from an older RDB or AOF point.
//! - `redis-failover`: a primary with an asynchronous replica behind one
//!   Sentinel (`redis-sentinel://`); at the fault the primary is killed and
//!   Sentinel promotes the replica (down after 1 s).
//! - `cluster-failover`: a Redis Cluster of three primaries and three
//!   replicas (`redis-cluster://`); at the fault the primary serving the
//!   sale's slot is killed and its replica takes over (node timeout 1 s).
//!
//! The report ([`FaultReport`]) says when the fault struck, how long until a
//! purchase sent after it was served again, and what buyers were answered
//! meanwhile; the run's invariant checks are the same as without a fault.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flashmall_testing::{RedisCluster, RedisServer, SentinelSet, Snapshot};
use serde::Serialize;
use uuid::Uuid;

use crate::load::Recording;
use crate::servers::find_program;

/// What happens to Redis mid-storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Kill the one redis-server and restart it from a snapshot taken
    /// halfway to the fault.
    RedisRestart,
    /// Kill the Sentinel-watched primary; Sentinel promotes its replica.
    RedisFailover,
    /// Kill the cluster primary serving the sale's slot; its replica
    /// takes over.
    ClusterFailover,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::RedisRestart => "redis-restart",
            Fault::RedisFailover => "redis-failover",
            Fault::ClusterFailover => "cluster-failover",
        }
    }
}

enum Topology {
    Single {
        server: RedisServer,
        snapshot: Option<Snapshot>,
    },
    Sentinel(Box<SentinelSet>),
    Cluster(RedisCluster),
}

/// A Redis topology under the bench's control.
pub struct FaultyRedis {
    fault: Fault,
    url: String,
    topology: Arc<Mutex<Topology>>,
}

/// Runs blocking process work off the runtime; a panic in it (a server
/// that never came up) becomes an error.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        let reason = e
            .try_into_panic()
            .ok()
            .and_then(|p| {
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            })
            .unwrap_or_else(|| "cancelled".into());
        format!("{what}: {reason}")
    })
}

impl FaultyRedis {
    /// Starts the topology `fault` strikes; ready when this returns.
    pub async fn start(fault: Fault) -> Result<FaultyRedis, String> {
        let mut programs = vec!["redis-server"];
        if fault == Fault::ClusterFailover {
            programs.push("redis-cli");
        }
        for program in programs {
            if find_program(program).is_none() {
                return Err(format!(
                    "--fault {} needs {program}: apt-get install redis-server redis-tools (scripts/test installs them when root)",
                    fault.name()
                ));
            }
        }
        let topology = blocking("cannot start the Redis topology", move || match fault {
            Fault::RedisRestart => Topology::Single {
                server: RedisServer::start(),
                snapshot: None,
            },
            Fault::RedisFailover => Topology::Sentinel(Box::new(SentinelSet::start())),
            Fault::ClusterFailover => Topology::Cluster(RedisCluster::start()),
        })
        .await?;
        let url = match &topology {
            Topology::Single { server, .. } => server.url(),
            Topology::Sentinel(set) => set.url(),
            Topology::Cluster(cluster) => cluster.url(),
        };
        Ok(FaultyRedis {
            fault,
            url,
            topology: Arc::new(Mutex::new(topology)),
        })
    }

    pub fn fault(&self) -> Fault {
        self.fault
    }

    /// The stock front's URL for the stack under test.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Halfway to the fault: the restart's snapshot (nothing for the
    /// failovers, whose replica is as far behind as replication left it).
    pub async fn prepare(&self) -> Result<(), String> {
        let topology = Arc::clone(&self.topology);
        blocking("cannot take the snapshot", move || {
            if let Ok(mut t) = topology.lock()
                && let Topology::Single { server, snapshot } = &mut *t
            {
                *snapshot = Some(server.snapshot());
            }
        })
        .await
    }

    /// Strikes: kills the primary (SIGKILL) and, for a restart, starts it
    /// again from the snapshot. Returns what was done.
    pub async fn inject(&self, sale: Uuid) -> Result<String, String> {
        let topology = Arc::clone(&self.topology);
        blocking("the fault failed", move || {
            let mut t = topology.lock().map_err(|_| "poisoned".to_owned())?;
            Ok(match &mut *t {
                Topology::Single { server, snapshot } => {
                    let snapshot = snapshot.take().ok_or("no snapshot was taken")?;
                    let started = Instant::now();
                    server.restart_from(&snapshot);
                    format!(
                        "redis-server killed and restarted from the snapshot in {:.0} ms",
                        started.elapsed().as_secs_f64() * 1000.0
                    )
                }
                Topology::Sentinel(set) => {
                    let port = set.primary.port();
                    set.kill_primary();
                    format!("primary on port {port} killed; Sentinel promotes the replica")
                }
                Topology::Cluster(cluster) => {
                    let port = cluster.kill_primary_of(&format!("{{{sale}}}"));
                    format!(
                        "cluster primary on port {port} (the sale's slot) killed; its replica takes over"
                    )
                }
            })
        })
        .await?
    }
}

/// What a fault cost, read from the storm's answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultReport {
    pub fault: Fault,
    /// Seconds after the opening: the snapshot (restart only) and the kill.
    pub snapshot_at_s: Option<f64>,
    pub injected_at_s: f64,
    pub detail: String,
    /// From the kill until the first purchase sent after it was answered
    /// 201 (a new reservation). None: none was.
    pub served_again_after_ms: Option<f64>,
    /// From the kill until the first purchase sent after it got a decision
    /// (reserved, replayed, sold out, limit exceeded).
    pub decided_again_after_ms: Option<f64>,
    /// Purchases answered `503 unavailable` from the kill until a decision
    /// came again.
    pub unavailable_meanwhile: u64,
    /// Other failures meanwhile (timeouts, broken connections, 5xx).
    pub failed_meanwhile: u64,
    /// `503 unavailable` answers after the kill, in all: besides the
    /// outage itself, the rebuild that follows once the engine notices the
    /// lost writes.
    pub unavailable_after: u64,
    /// From the kill until the last `503 unavailable` answer (None: none).
    pub last_unavailable_after_ms: Option<f64>,
}

/// Outcomes that are a purchase decision.
const DECISIONS: [&str; 4] = ["reserved", "replayed", "sold_out", "limit_exceeded"];

impl FaultReport {
    /// Reads the fault's cost from `recording` (times since the opening).
    pub fn measure(
        fault: Fault,
        snapshot_at: Option<Duration>,
        injected_at: Duration,
        detail: String,
        recording: &Recording,
    ) -> FaultReport {
        let at = injected_at.as_micros() as u64;
        let sent = |s: &crate::load::Sample| s.done_us.saturating_sub(s.service_us);
        let first_after = |accept: &dyn Fn(&str) -> bool| {
            recording
                .samples
                .iter()
                .filter(|s| sent(s) >= at && accept(s.outcome))
                .map(|s| s.done_us - at)
                .min()
        };
        let served = first_after(&|o| o == "reserved");
        let decided = first_after(&|o| DECISIONS.contains(&o));
        let window_end = decided.map_or(u64::MAX, |d| at + d);
        let meanwhile = |s: &&crate::load::Sample| s.done_us >= at && s.done_us <= window_end;
        let count = |pred: &dyn Fn(&str) -> bool, window: bool| {
            recording
                .samples
                .iter()
                .filter(|s| {
                    if window {
                        meanwhile(s)
                    } else {
                        s.done_us >= at
                    }
                })
                .filter(|s| pred(s.outcome))
                .count() as u64
        };
        let ms = |us: u64| us as f64 / 1000.0;
        FaultReport {
            fault,
            snapshot_at_s: snapshot_at.map(|d| d.as_secs_f64()),
            injected_at_s: injected_at.as_secs_f64(),
            detail,
            served_again_after_ms: served.map(ms),
            decided_again_after_ms: decided.map(ms),
            unavailable_meanwhile: count(&|o| o == "unavailable", true),
            failed_meanwhile: count(&|o| o != "unavailable" && !DECISIONS.contains(&o), true),
            unavailable_after: count(&|o| o == "unavailable", false),
            last_unavailable_after_ms: recording
                .samples
                .iter()
                .filter(|s| s.done_us >= at && s.outcome == "unavailable")
                .map(|s| ms(s.done_us - at))
                .reduce(f64::max),
        }
    }

    /// The report's rows for the run's Markdown table.
    pub fn rows(&self) -> Vec<(String, String)> {
        let ms = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.0}"));
        let mut rows = vec![(
            "fault".to_owned(),
            format!("{}: {}", self.fault.name(), self.detail),
        )];
        if let Some(s) = self.snapshot_at_s {
            rows.push((
                "snapshot taken at (s after the opening)".into(),
                format!("{s:.3}"),
            ));
        }
        rows.extend([
            (
                "fault struck at (s after the opening)".into(),
                format!("{:.3}", self.injected_at_s),
            ),
            (
                "first purchase sent after the fault served 201 after (ms)".into(),
                ms(self.served_again_after_ms),
            ),
            (
                "first purchase sent after the fault decided after (ms)".into(),
                ms(self.decided_again_after_ms),
            ),
            (
                "answered 503 unavailable meanwhile".into(),
                self.unavailable_meanwhile.to_string(),
            ),
            (
                "other failures meanwhile".into(),
                self.failed_meanwhile.to_string(),
            ),
            (
                "answered 503 unavailable after the fault, in all".into(),
                self.unavailable_after.to_string(),
            ),
            (
                "last 503 unavailable after the fault (ms)".into(),
                ms(self.last_unavailable_after_ms),
            ),
        ]);
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Mode, Sample};

    fn sample(done_ms: u64, service_ms: u64, outcome: &'static str) -> Sample {
        Sample {
            index: 0,
            done_us: done_ms * 1000,
            latency_us: service_ms * 1000,
            service_us: service_ms * 1000,
            outcome,
        }
    }

    #[test]
    fn the_outage_runs_from_the_kill_to_the_first_purchase_sent_after_it() {
        let recording = Recording {
            mode: Mode::Closed { connections: 1 },
            samples: vec![
                // Before the fault.
                sample(900, 1, "reserved"),
                sample(990, 1, "unavailable"),
                // Sent before the fault, answered after: not recovery.
                sample(1_010, 20, "reserved"),
                sample(1_100, 5, "unavailable"),
                sample(1_500, 5, "connection_error"),
                sample(2_000, 5, "sold_out"),
                sample(2_400, 5, "reserved"),
                sample(2_500, 5, "unavailable"),
            ],
            elapsed: Duration::from_secs(3),
            reconnects: 0,
        };
        let r = FaultReport::measure(
            Fault::RedisFailover,
            None,
            Duration::from_secs(1),
            "killed".into(),
            &recording,
        );
        assert_eq!(r.served_again_after_ms, Some(1_400.0));
        assert_eq!(r.decided_again_after_ms, Some(1_000.0));
        // 1_010 (sent at 990) is a decision but not a recovery; in the
        // window from 1_000 to 2_000: one 503 and one connection error.
        assert_eq!(r.unavailable_meanwhile, 1);
        assert_eq!(r.failed_meanwhile, 1);
        assert_eq!(r.unavailable_after, 2);
        assert_eq!(r.last_unavailable_after_ms, Some(1_500.0));
    }
}
