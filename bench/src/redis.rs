//! `flashmall bench redis`: the engine's reserve call against
//! `redis-benchmark` running EVALSHA of the same script, on the same keys
//! layout, at the same concurrency, against the same redis-server, in one
//! run.
//!
//! - **engine**: `concurrency` tasks, each calling the engine's
//!   `RedisFront::reserve` (fred, a pool of `--pool` connections, its
//!   commands pipelined per connection) as soon as the last call returned;
//!   every call a new buyer and key, so every call reserves.
//! - **redis-benchmark**: `-c concurrency` connections, one call in flight
//!   each, random buyer and key per call (`-r`), so every call reserves too.
//!
//! Each side gets a fresh sale with stock beyond reach; afterwards both
//! sales must conserve their units (remaining + pending == stock), and the
//! engine's must have reserved exactly one unit per call.

use std::fmt::Write as _;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use flashmall_engine::config::RedisConfig;
use flashmall_engine::front::{
    Rebuild, RedisFront, ReserveCall, ReserveOutcome, StockFront, reserve_call,
};
use serde::Serialize;
use uuid::Uuid;

use crate::chart::{Panel, Series};
use crate::load::{Mode, Recording, Sample};
use crate::progress::Progress;
use crate::report::{Bucket, Machine, Summary, timeline};
use crate::seckill::Check;
use crate::servers::{Process, find_program, redis_server};

/// Stock of each bench sale: never sold out.
const STOCK: i64 = 1_000_000_000_000;

/// The shape of a redis run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct RedisOptions {
    /// A running Redis (`redis://host:port`); default: start redis-server.
    #[arg(long)]
    pub redis: Option<String>,
    /// Calls in flight: engine tasks, and redis-benchmark's `-c`.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// Calls on each side.
    #[arg(long, default_value_t = 200_000)]
    pub requests: usize,
    /// The engine's Redis connections (`[redis] pool_size`).
    #[arg(long, default_value_t = 8)]
    pub pool: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            redis: None,
            concurrency: 50,
            requests: 200_000,
            pool: 8,
        }
    }
}

/// What redis-benchmark printed (`--csv`).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct BenchmarkFigures {
    pub rps: f64,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Reads redis-benchmark's `--csv` output: a header line, then one line
/// per test.
pub fn parse_csv(out: &str) -> Result<BenchmarkFigures, String> {
    let line = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('"') && !l.starts_with("\"test\""))
        .ok_or_else(|| format!("redis-benchmark printed no result line: {out:?}"))?;
    let fields: Vec<f64> = line
        .split("\",\"")
        .skip(1)
        .map(|f| f.trim_matches('"').parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad redis-benchmark line {line:?}: {e}"))?;
    // rps, avg, min, p50, p95, p99, max
    match fields[..] {
        [rps, avg_ms, _, p50_ms, p95_ms, p99_ms, max_ms, ..] => Ok(BenchmarkFigures {
            rps,
            avg_ms,
            p50_ms,
            p95_ms,
            p99_ms,
            max_ms,
        }),
        _ => Err(format!("bad redis-benchmark line {line:?}")),
    }
}

/// What a redis run measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct RedisReport {
    pub machine: Machine,
    pub options: RedisOptions,
    pub engine: Summary,
    pub timeline: Vec<Bucket>,
    pub redis_benchmark: BenchmarkFigures,
    /// The command redis-benchmark ran.
    pub redis_benchmark_command: String,
    /// engine calls/s ÷ redis-benchmark calls/s (target ≥ 1.0).
    pub ratio: f64,
    pub checks: Vec<Check>,
}

impl RedisReport {
    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.held)
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let e = &self.engine.latency;
        let b = &self.redis_benchmark;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## redis: the reserve script, {} calls in flight, {} calls each\n",
            o.concurrency, o.requests
        );
        let _ = writeln!(
            t,
            "{} cores, {} build; engine pool {} connections.\n",
            self.machine.cores, self.machine.build, o.pool
        );
        let _ = writeln!(
            t,
            "| client | calls/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|"
        );
        let _ = writeln!(
            t,
            "| engine `RedisFront::reserve` | {:.0} | {:.3} | {:.3} | {:.3} |",
            self.engine.throughput, e.p50_ms, e.p99_ms, e.max_ms
        );
        let _ = writeln!(
            t,
            "| redis-benchmark EVALSHA | {:.0} | {:.3} | {:.3} | {:.3} |",
            b.rps, b.p50_ms, b.p99_ms, b.max_ms
        );
        let _ = writeln!(
            t,
            "\nRatio {:.2} (target ≥ 1.0).\n\n`{}`\n",
            self.ratio, self.redis_benchmark_command
        );
        t.push_str(&crate::seckill::checks_table(&self.checks));
        t
    }

    pub fn svg(&self) -> String {
        let end = self.timeline.last().map_or(1.0, |b| b.t_s);
        crate::chart::svg(
            &format!(
                "redis: reserve script, {} in flight",
                self.options.concurrency
            ),
            &[
                Panel {
                    title: "calls per second".into(),
                    series: vec![
                        Series {
                            name: "engine".into(),
                            points: self
                                .timeline
                                .iter()
                                .map(|b| (b.t_s, b.per_second))
                                .collect(),
                        },
                        Series {
                            name: "redis-benchmark (mean)".into(),
                            points: vec![
                                (0.0, self.redis_benchmark.rps),
                                (end, self.redis_benchmark.rps),
                            ],
                        },
                    ],
                },
                Panel {
                    title: "engine call latency (ms)".into(),
                    series: vec![
                        Series {
                            name: "p50".into(),
                            points: self.timeline.iter().map(|b| (b.t_s, b.p50_ms)).collect(),
                        },
                        Series {
                            name: "p99".into(),
                            points: self.timeline.iter().map(|b| (b.t_s, b.p99_ms)).collect(),
                        },
                    ],
                },
            ],
        )
    }
}

/// `host` and `port` of a `redis://host:port` URL (what redis-benchmark takes).
fn host_port(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("{url:?}: give redis://host:port"))?;
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') || rest.contains('/') {
        return Err(format!(
            "{url:?}: the bench takes redis://host:port, without credentials or database"
        ));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: give redis://host:port"))?;
    Ok((
        host.to_owned(),
        port.parse().map_err(|_| format!("{url:?}: bad port"))?,
    ))
}

async fn fresh_sale(front: &RedisFront) -> Result<Uuid, String> {
    let sale = Uuid::now_v7();
    let token = front
        .suspend(sale)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("a new sale was already being rebuilt")?
        .token;
    let written = front
        .rebuild(
            sale,
            token,
            &Rebuild {
                remaining: STOCK,
                ..Rebuild::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    if !written {
        return Err("loading the bench sale's stock was superseded".into());
    }
    Ok(sale)
}

/// The engine side: `concurrency` tasks calling reserve back to back.
async fn engine_side(
    front: &Arc<RedisFront>,
    sale: Uuid,
    options: &RedisOptions,
    visible: bool,
) -> Recording {
    let next = Arc::new(AtomicUsize::new(0));
    let progress = Progress::start("engine", options.requests as u64, visible);
    let done = progress.counter();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.concurrency {
        let front = Arc::clone(front);
        let next = Arc::clone(&next);
        let done = Arc::clone(&done);
        let requests = options.requests;
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return samples;
                }
                let user = format!("u{i}");
                let key = format!("k{i}");
                let sent = Instant::now();
                let outcome = front
                    .reserve(&ReserveCall {
                        sale_id: sale,
                        user_id: &user,
                        idempotency_key: &key,
                        quantity: 1,
                        per_user_limit: 1,
                        reservation_id: Uuid::now_v7(),
                        now_ms: flashmall_mesh::now_ms(),
                    })
                    .await;
                let answered = Instant::now();
                let us = |d: Duration| d.as_micros() as u64;
                samples.push(Sample {
                    index: i,
                    done_us: us(answered - start),
                    latency_us: us(answered - sent),
                    service_us: us(answered - sent),
                    outcome: match outcome {
                        Ok(ReserveOutcome::Reserved { .. }) => "reserved",
                        Ok(_) => "not_reserved",
                        Err(_) => "error",
                    },
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut samples = Vec::with_capacity(options.requests);
    for task in tasks {
        if let Ok(s) = task.await {
            samples.extend(s);
        }
    }
    progress.finish();
    let elapsed = Duration::from_micros(samples.iter().map(|s| s.done_us).max().unwrap_or(0));
    Recording {
        mode: Mode::Closed {
            connections: options.concurrency,
        },
        samples,
        elapsed,
        reconnects: 0,
    }
}

/// Runs both sides and checks both sales.
pub async fn run(options: &RedisOptions, visible: bool) -> Result<RedisReport, String> {
    if options.concurrency == 0 || options.concurrency > 10_000 || options.requests == 0 {
        return Err("concurrency must be 1 to 10000 and requests at least 1".into());
    }
    if options.pool == 0 || options.pool > 256 {
        return Err("pool must be between 1 and 256".into());
    }
    let benchmark = find_program("redis-benchmark")
        .ok_or("redis-benchmark is not installed: apt-get install redis-tools (it comes with redis-server)")?;
    let mut _server: Option<Process> = None;
    let url = match &options.redis {
        Some(url) => url.clone(),
        None => {
            let server = redis_server()?;
            let url = format!("redis://{}", server.addr);
            _server = Some(server);
            url
        }
    };
    let (host, port) = host_port(&url)?;
    let config = RedisConfig {
        url: url.clone(),
        pool_size: options.pool,
        ..RedisConfig::default()
    };
    let front = Arc::new(
        RedisFront::connect(&config)
            .await
            .map_err(|e| e.to_string())?,
    );
    front.warm_up().await.map_err(|e| e.to_string())?;

    // redis-benchmark first, on its own sale.
    let reference_sale = fresh_sale(&front).await?;
    let (_, sha, keys) = reserve_call(&config.key_prefix, reference_sale);
    let mut args: Vec<String> = vec![
        "-h".into(),
        host,
        "-p".into(),
        port.to_string(),
        "-c".into(),
        options.concurrency.to_string(),
        "-n".into(),
        options.requests.to_string(),
        "-r".into(),
        "1000000000".into(),
        "--csv".into(),
        "EVALSHA".into(),
        sha,
        "6".into(),
    ];
    args.extend(keys);
    // ARGV: buyer, idempotency field, quantity, limit, reservation id, now, key.
    args.extend(
        [
            "u__rand_int__",
            "f__rand_int__",
            "1",
            "1",
            &Uuid::now_v7().to_string(),
            &flashmall_mesh::now_ms().to_string(),
            "k__rand_int__",
        ]
        .map(str::to_owned),
    );
    let progress = Progress::start("redis-benchmark", 0, visible);
    let output = tokio::task::spawn_blocking({
        let args = args.clone();
        move || Command::new(benchmark).args(&args).output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("cannot run redis-benchmark: {e}"))?;
    progress.finish();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() || stdout.contains("ERR") || stdout.contains("NOSCRIPT") {
        return Err(format!(
            "redis-benchmark failed ({}): {stdout} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let redis_benchmark = parse_csv(&stdout)?;

    let engine_sale = fresh_sale(&front).await?;
    let recording = engine_side(&front, engine_sale, options, visible).await;
    let engine = Summary::of(&recording);

    let counts = |sale| {
        let front = Arc::clone(&front);
        async move {
            front
                .counts(sale)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("sale {sale} lost its stock"))
        }
    };
    let theirs = counts(reference_sale).await?;
    let ours = counts(engine_sale).await?;
    let reserved = engine.outcomes.get("reserved").copied().unwrap_or(0) as i64;
    let n = options.requests as i64;
    let checks = vec![
        Check {
            name: "every engine call reserved",
            held: reserved == n,
            detail: format!("{reserved} of {n} calls reserved ({:?})", engine.outcomes),
        },
        Check {
            name: "engine sale conserved",
            held: ours.remaining == STOCK - n && ours.pending == n,
            detail: format!(
                "{} remaining + {} pending of {STOCK}",
                ours.remaining, ours.pending
            ),
        },
        Check {
            name: "redis-benchmark sale conserved",
            held: theirs.remaining + theirs.pending == STOCK && theirs.pending > 0,
            detail: format!(
                "{} remaining + {} pending of {STOCK}",
                theirs.remaining, theirs.pending
            ),
        },
    ];
    front.close().await;
    Ok(RedisReport {
        machine: Machine::this(),
        options: options.clone(),
        ratio: engine.throughput / redis_benchmark.rps.max(1e-9),
        timeline: timeline(&recording.samples, recording.elapsed.as_micros() as u64),
        engine,
        redis_benchmark,
        redis_benchmark_command: format!("redis-benchmark {}", args.join(" ")),
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"EVALSHA abc 6 k\",\"41666.67\",\"1.104\",\"0.200\",\"1.047\",\"1.535\",\"2.015\",\"5.031\"\n";
        let f = parse_csv(out).unwrap();
        assert_eq!(f.rps, 41666.67);
        assert_eq!(f.p50_ms, 1.047);
        assert_eq!(f.p99_ms, 2.015);
        assert_eq!(f.max_ms, 5.031);
        assert!(parse_csv("").is_err());
    }

    #[test]
    fn redis_urls_give_host_and_port() {
        assert_eq!(
            host_port("redis://127.0.0.1:6390").unwrap(),
            ("127.0.0.1".into(), 6390)
        );
        assert!(host_port("redis://:pw@h:1").is_err());
        assert!(host_port("http://h:1").is_err());
    }
}
