//! `flashmall bench chaos`: the demo's seckill (storm, shop, orders paid or
//! left to expire, returned units sold again) against the cluster
//! `scripts/cluster start DIR` runs, while a schedule of faults strikes it:
//! an engine replica SIGKILLed and restarted, an edge replica SIGKILLed
//! (a load balancer in front sends new connections to the other), a TiKV
//! region split under the sale's keys, the Redis primary SIGKILLed (Sentinel
//! fails over), an order and a payment replica SIGKILLed while orders are
//! paid and expire, and a Cassandra node SIGKILLed for 20 s.
//!
//! Buyers behave as clients do under failure: an attempt that got no
//! answer, or a 502/503/504, is repeated with its Idempotency-Key. Every
//! check of the demo runs, plus: no acknowledged order or payment lost,
//! the sale conserved once every fault healed, and every process serving
//! again. Canary requests (one of each kind every 100 ms) measure how long
//! each fault kept its components from answering.

pub mod balancer;
pub mod cluster;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use flashmall_bench::api::{reconcile_report, steady_json_of};
use flashmall_bench::chart::{Panel, Series};
use flashmall_bench::report::Machine;
use flashmall_bench::seckill::{Check, checks_table};

use crate::demo::{DemoOptions, DemoReport, Opened, Site};
use balancer::Balancer;
use cluster::Manifest;
use flashmall_bench::report::Output;

/// A step time: a duration after the opening, or `off`.
fn step_time(raw: &str) -> Result<Option<Duration>, String> {
    if raw == "off" {
        return Ok(None);
    }
    humantime::parse_duration(raw)
        .map(Some)
        .map_err(|e| format!("{raw:?}: {e} (a duration such as 2s, or off)"))
}

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{raw:?}: {e}"))
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The cluster's directory (`scripts/cluster start DIR`).
    #[arg(long)]
    pub cluster: PathBuf,
    /// Units on sale.
    #[arg(long, default_value_t = 200)]
    pub stock: i64,
    /// Purchase attempts in all.
    #[arg(long, default_value_t = 4_000)]
    pub attempts: usize,
    /// Distinct buyers (registered and logged in first).
    #[arg(long, default_value_t = 1_000)]
    pub buyers: usize,
    /// Connections firing attempts.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Attempts per second from the opening on (the storm lasts
    /// attempts / rate seconds, so the faults strike while it runs).
    #[arg(long, default_value_t = 400.0)]
    pub rate: f64,
    /// Percent of attempts that repeat an earlier attempt's key.
    #[arg(long, default_value_t = 20)]
    pub retry_percent: u64,
    /// Percent of orders their buyers pay; the rest expire.
    #[arg(long, default_value_t = 70)]
    pub pay_percent: u64,
    /// Times a buyer repeats an attempt after no answer or a 502/503/504.
    #[arg(long, default_value_t = 8)]
    pub client_retries: u32,
    /// Seed of the attempt plan.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// When engine-1 is SIGKILLed, after the opening (`off`: never).
    #[arg(long, default_value = "2s", value_parser = step_time)]
    pub engine_kill_at: ::std::option::Option<Duration>,
    /// How long it stays down before it is started again.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub engine_down: Duration,
    /// When the ledger's region holding the sale's reservations is split.
    #[arg(long, default_value = "3s", value_parser = step_time)]
    pub split_at: ::std::option::Option<Duration>,
    /// When edge-1 is SIGKILLed.
    #[arg(long, default_value = "4s", value_parser = step_time)]
    pub edge_kill_at: ::std::option::Option<Duration>,
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub edge_down: Duration,
    /// When the Redis primary is SIGKILLed (Sentinel promotes a replica;
    /// the old primary comes back as a replica).
    #[arg(long, default_value = "6s", value_parser = step_time)]
    pub redis_kill_at: ::std::option::Option<Duration>,
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub redis_down: Duration,
    /// When orders-1 and payments-1 are SIGKILLed (orders are being paid
    /// and expiring).
    #[arg(long, default_value = "9s", value_parser = step_time)]
    pub services_kill_at: ::std::option::Option<Duration>,
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub services_down: Duration,
    /// When Cassandra node 3 is SIGKILLed.
    #[arg(long, default_value = "12s", value_parser = step_time)]
    pub cassandra_stop_at: ::std::option::Option<Duration>,
    #[arg(long, default_value = "20s", value_parser = duration)]
    pub cassandra_down: Duration,
    #[command(flatten)]
    pub output: Output,
}

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    EngineKill,
    RegionSplit,
    EdgeKill,
    RedisPrimaryKill,
    ServicesKill,
    CassandraNodeDown,
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::EngineKill => "engine replica SIGKILL",
            Fault::RegionSplit => "TiKV region split",
            Fault::EdgeKill => "edge replica SIGKILL",
            Fault::RedisPrimaryKill => "Redis primary SIGKILL",
            Fault::ServicesKill => "order + payment replica SIGKILL",
            Fault::CassandraNodeDown => "Cassandra node down",
        }
    }

    /// The canary probes whose path the fault is on.
    fn probes(self) -> &'static [Probe] {
        use Probe::*;
        match self {
            Fault::EngineKill => &[Sale, Reservation],
            Fault::RegionSplit => &[Reservation],
            Fault::EdgeKill => &[Sale, Reservation, Orders, Payment, Product],
            Fault::RedisPrimaryKill => &[Sale],
            Fault::ServicesKill => &[Orders, Payment],
            Fault::CassandraNodeDown => &[Orders, Payment, Product],
        }
    }
}

/// One step of the schedule.
#[derive(Debug, Clone, Copy)]
struct Step {
    fault: Fault,
    at: Duration,
    down: Duration,
}

impl ChaosArgs {
    fn schedule(&self) -> Vec<Step> {
        let steps = [
            (Fault::EngineKill, self.engine_kill_at, self.engine_down),
            (Fault::RegionSplit, self.split_at, Duration::ZERO),
            (Fault::EdgeKill, self.edge_kill_at, self.edge_down),
            (Fault::RedisPrimaryKill, self.redis_kill_at, self.redis_down),
            (
                Fault::ServicesKill,
                self.services_kill_at,
                self.services_down,
            ),
            (
                Fault::CassandraNodeDown,
                self.cassandra_stop_at,
                self.cassandra_down,
            ),
        ];
        let mut steps: Vec<Step> = steps
            .into_iter()
            .filter_map(|(fault, at, down)| at.map(|at| Step { fault, at, down }))
            .collect();
        steps.sort_by_key(|s| s.at);
        steps
    }

    fn demo_options(&self) -> DemoOptions {
        DemoOptions {
            stock: self.stock,
            attempts: self.attempts,
            buyers: self.buyers,
            per_user_limit: 1,
            concurrency: self.concurrency,
            retry_percent: self.retry_percent,
            early: 5,
            redis: None,
            fast_ack: false,
            seed: self.seed,
            pay_percent: self.pay_percent,
            payment_timeout: DemoOptions::default().payment_timeout,
            rate: Some(self.rate),
            client_retries: self.client_retries,
        }
    }
}

/// A canary request kind, and the components (and stores) it crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Probe {
    /// `GET /api/v1/sales/{id}`: edge, engine, Redis.
    Sale,
    /// `GET /api/v1/reservations/{unknown}` as the admin: engine, TiKV.
    Reservation,
    /// `GET /api/v1/orders` as a buyer: orders, Cassandra.
    Orders,
    /// `GET /api/v1/payments/{unknown}` as a buyer: payments, Cassandra.
    Payment,
    /// `GET /api/v1/products?page_size=1`: products, Cassandra.
    Product,
}

const PROBES: [Probe; 5] = [
    Probe::Sale,
    Probe::Reservation,
    Probe::Orders,
    Probe::Payment,
    Probe::Product,
];

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::Sale => "sale",
            Probe::Reservation => "reservation",
            Probe::Orders => "orders",
            Probe::Payment => "payment",
            Probe::Product => "product",
        }
    }
}

/// One canary answer: when it was sent (after the opening), whether it was
/// answered (any status below 500), and how long it took.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    probe: Probe,
    ok: bool,
    took: Duration,
}

/// How often each canary probe is sent.
const CANARY_EVERY: Duration = Duration::from_millis(100);
/// How long after a fault healed its window still counts answers.
const AFTERMATH: Duration = Duration::from_secs(5);

async fn canary(
    client: reqwest::Client,
    base: String,
    opened: Arc<Opened>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let buyer = opened.buyers.first().cloned().unwrap_or_default();
    let mut tick = tokio::time::interval(CANARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for probe in PROBES {
            let unknown = uuid::Uuid::now_v7();
            let request = match probe {
                Probe::Sale => client.get(format!("{base}/api/v1/sales/{}", opened.sale_id)),
                Probe::Reservation => client
                    .get(format!("{base}/api/v1/reservations/{unknown}"))
                    .bearer_auth(&opened.admin),
                Probe::Orders => client
                    .get(format!("{base}/api/v1/orders?page_size=1"))
                    .bearer_auth(&buyer),
                Probe::Payment => client
                    .get(format!("{base}/api/v1/payments/{unknown}"))
                    .bearer_auth(&buyer),
                Probe::Product => client.get(format!("{base}/api/v1/products?page_size=1")),
            };
            let samples = Arc::clone(&samples);
            let at = opened.at.elapsed();
            tokio::spawn(async move {
                let started = Instant::now();
                let ok = request
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().as_u16() < 500);
                if let Ok(mut s) = samples.lock() {
                    s.push(Sample {
                        at,
                        probe,
                        ok,
                        took: started.elapsed(),
                    });
                }
            });
        }
    }
}

/// What one step did, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Struck {
    pub fault: Fault,
    pub name: &'static str,
    /// The process, node or keys it struck.
    pub target: String,
    /// After the opening, seconds.
    pub at_s: f64,
    /// How long the target was left down.
    pub down_s: f64,
    /// From the strike until the target served again (restarted and
    /// ready, the node listening, Sentinel naming a new primary).
    pub back_after_s: Option<f64>,
    pub detail: String,
    /// Canary probes on the fault's path in its window, and how many got
    /// no answer or a 5xx.
    pub probes: u64,
    pub probes_failed: u64,
    /// From the strike until the last failed probe on its path came back
    /// (0: none failed).
    pub recovered_after_s: f64,
    /// Storm answers in the window, those that were still refused after
    /// the client's retries (no answer, 5xx), retries made, and p99.
    pub storm_answers: u64,
    pub storm_refused: u64,
    pub storm_retries: u64,
    pub storm_p99_ms: f64,
}

impl Struck {
    fn window(&self) -> (f64, f64) {
        (
            self.at_s,
            self.at_s
                + self.back_after_s.unwrap_or(self.down_s).max(self.down_s)
                + AFTERMATH.as_secs_f64(),
        )
    }
}

/// Carries out one step; what it did (the costs are filled in later).
/// What a restart took, for the report.
fn restarted(down: Duration, crashes: u32) -> String {
    match crashes {
        0 => format!("restarted after {down:?}"),
        n => format!("restarted after {down:?}; {n} start(s) exited first and were started again"),
    }
}

async fn strike(
    manifest: &Manifest,
    client: &reqwest::Client,
    opened: &Opened,
    step: Step,
) -> Result<Struck, String> {
    tokio::time::sleep_until((opened.at + step.at).into()).await;
    let struck_at = Instant::now();
    let since = |t: Instant| (t - struck_at).as_secs_f64();
    let (target, back, detail) = match step.fault {
        Fault::EngineKill | Fault::EdgeKill => {
            let name = if step.fault == Fault::EngineKill {
                "engine-1"
            } else {
                "edge-1"
            };
            let process = manifest.process(name)?;
            cluster::kill(&process.dir).await?;
            tokio::time::sleep(step.down).await;
            let (_, crashes) = cluster::restart(client, &process.dir, &process.ready).await?;
            (
                name.to_owned(),
                Some(since(Instant::now())),
                restarted(step.down, crashes),
            )
        }
        Fault::ServicesKill => {
            let names = ["orders-1", "payments-1"];
            for name in names {
                cluster::kill(&manifest.process(name)?.dir).await?;
            }
            tokio::time::sleep(step.down).await;
            let mut crashes = 0;
            for name in names {
                let process = manifest.process(name)?;
                crashes += cluster::restart(client, &process.dir, &process.ready)
                    .await?
                    .1;
            }
            (
                names.join(" + "),
                Some(since(Instant::now())),
                restarted(step.down, crashes),
            )
        }
        Fault::CassandraNodeDown => {
            let node = manifest
                .cassandra
                .last()
                .ok_or("the cluster has no Cassandra node")?;
            cluster::kill(&node.dir).await?;
            tokio::time::sleep(step.down).await;
            drop(cluster::launch(&node.dir)?);
            cluster::wait_listening(node).await?;
            (
                format!("node {}", node.address),
                Some(since(Instant::now())),
                format!("SIGKILL, started again after {:?}", step.down),
            )
        }
        Fault::RedisPrimaryKill => {
            let primary = cluster::redis_primary(&manifest.redis).await?;
            let dir =
                manifest.redis.servers.get(&primary).ok_or_else(|| {
                    format!("Sentinel names {primary}, not a server of the cluster")
                })?;
            cluster::kill(dir).await?;
            let deadline = Instant::now() + cluster::RESTART_WITHIN;
            let promoted = loop {
                match cluster::redis_primary(&manifest.redis).await {
                    Ok(now) if now != primary => break now,
                    _ if Instant::now() > deadline => {
                        return Err(format!("Sentinel promoted no replica of {primary} in time"));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            };
            let failed_over = since(Instant::now());
            let rest = step.down.saturating_sub(struck_at.elapsed());
            tokio::time::sleep(rest).await;
            drop(cluster::launch(dir)?);
            while !cluster::redis_pings(&primary).await {
                if Instant::now() > deadline {
                    return Err(format!("{primary} did not come back"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (
                format!("primary {primary}"),
                Some(failed_over),
                format!(
                    "Sentinel promoted {promoted} after {failed_over:.1} s; {primary} back as a replica after {:.1} s",
                    since(Instant::now())
                ),
            )
        }
        Fault::RegionSplit => {
            let prefix = &manifest.tikv.key_prefix;
            let now = uuid::Uuid::now_v7();
            // Keys of this sale written before and after this instant land
            // in different regions: its reservation index, its records and
            // their order outbox entries.
            let keys = [
                format!("{prefix}x/{}/{now}", opened.sale_id),
                format!("{prefix}r/{now}"),
                format!("{prefix}o/{now}"),
            ];
            let answer = client
                .post(format!("{}/split", manifest.tikv.admin))
                .body(keys.join("\n"))
                .send()
                .await
                .map_err(|e| format!("splitting regions: {e}"))?;
            let status = answer.status();
            let body: serde_json::Value = answer.json().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!(
                    "the TiKV server refused the split: {status} {body}"
                ));
            }
            (
                keys.join(", "),
                Some(since(Instant::now())),
                format!(
                    "{} regions after the split",
                    body.as_array().map_or(0, Vec::len)
                ),
            )
        }
    };
    Ok(Struck {
        fault: step.fault,
        name: step.fault.name(),
        target,
        at_s: step.at.as_secs_f64(),
        down_s: step.down.as_secs_f64(),
        back_after_s: back,
        detail,
        probes: 0,
        probes_failed: 0,
        recovered_after_s: 0.0,
        storm_answers: 0,
        storm_refused: 0,
        storm_retries: 0,
        storm_p99_ms: 0.0,
    })
}

/// Fills in what each fault cost: canary probes on its path and storm
/// answers in its window.
fn measure(struck: &mut Struck, samples: &[Sample], storm: &DemoReport) {
    let (from, to) = struck.window();
    let in_window = |at: Duration| (from..=to).contains(&at.as_secs_f64());
    let on_path = struck.fault.probes();
    let mut recovered: f64 = 0.0;
    for s in samples
        .iter()
        .filter(|s| in_window(s.at) && on_path.contains(&s.probe))
    {
        struck.probes += 1;
        if !s.ok {
            struck.probes_failed += 1;
            recovered = recovered.max((s.at + s.took).as_secs_f64() - from);
        }
    }
    struck.recovered_after_s = recovered;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).ok();
    for (at, outcome, took, retries) in &storm.answers {
        if !in_window(*at) {
            continue;
        }
        struck.storm_answers += 1;
        struck.storm_retries += u64::from(*retries);
        if REFUSED.contains(outcome) {
            struck.storm_refused += 1;
        }
        if let Some(h) = latency.as_mut() {
            let _ = h.record(took.as_micros().max(1) as u64);
        }
    }
    struck.storm_p99_ms = latency.map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0);
}

/// Outcomes that decided nothing: the client gave up on them.
const REFUSED: [&str; 3] = ["connection_error", "unavailable", "http_error"];

/// What the chaos run measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub machine: Machine,
    pub cluster: String,
    pub stock: i64,
    pub attempts: usize,
    pub buyers: usize,
    pub rate: f64,
    pub outcomes: std::collections::BTreeMap<String, u64>,
    pub retries: u64,
    pub sold: i64,
    pub orders: usize,
    pub paid: usize,
    pub expired: usize,
    pub resold: usize,
    pub checkouts_paid: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub steps: Vec<Struck>,
    pub checks: Vec<Check>,
    #[serde(skip)]
    pub demo_table: String,
    #[serde(skip)]
    samples: Vec<(f64, Probe, bool)>,
    #[serde(skip)]
    answers: Vec<(f64, &'static str)>,
}

impl ChaosReport {
    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.held)
    }

    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(
            m,
            "## flashmall bench chaos\n\n{} units, {} attempts from {} buyers at {:.0}/s through two edges behind a load balancer; cluster `{}`; {} cores, {} build\n",
            self.stock,
            self.attempts,
            self.buyers,
            self.rate,
            self.cluster,
            self.machine.cores,
            self.machine.build
        );
        let _ = writeln!(
            m,
            "| fault | target | at (s) | down (s) | back after (s) | canary failed / sent | recovered after (s) | storm answers / refused / retries | storm p99 (ms) | detail |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for s in &self.steps {
            let _ = writeln!(
                m,
                "| {} | {} | {:.1} | {:.1} | {} | {} / {} | {:.2} | {} / {} / {} | {:.1} | {} |",
                s.name,
                s.target,
                s.at_s,
                s.down_s,
                s.back_after_s.map_or("-".into(), |b| format!("{b:.1}")),
                s.probes_failed,
                s.probes,
                s.recovered_after_s,
                s.storm_answers,
                s.storm_refused,
                s.storm_retries,
                s.storm_p99_ms,
                s.detail
            );
        }
        let _ = writeln!(m, "\n```\n{}\n```\n", self.demo_table);
        let _ = writeln!(m, "{}", checks_table(&self.checks));
        m
    }

    pub fn svg(&self) -> String {
        const BUCKET: f64 = 0.5;
        let end = self
            .samples
            .iter()
            .map(|s| s.0)
            .chain(self.answers.iter().map(|a| a.0))
            .fold(0.0, f64::max);
        let buckets = (end / BUCKET).ceil() as usize + 1;
        let count = |hits: Vec<f64>| -> Vec<(f64, f64)> {
            let mut n = vec![0.0; buckets];
            for t in hits {
                n[((t / BUCKET) as usize).min(buckets - 1)] += 1.0;
            }
            n.into_iter()
                .enumerate()
                .map(|(i, v)| (i as f64 * BUCKET, v))
                .collect()
        };
        let probes = PROBES
            .iter()
            .map(|p| Series {
                name: p.name().to_owned(),
                points: count(
                    self.samples
                        .iter()
                        .filter(|s| s.1 == *p && !s.2)
                        .map(|s| s.0)
                        .collect(),
                ),
            })
            .collect();
        let outcome = |name: &str, pick: &dyn Fn(&str) -> bool| Series {
            name: name.to_owned(),
            points: count(
                self.answers
                    .iter()
                    .filter(|a| pick(a.1))
                    .map(|a| a.0)
                    .collect(),
            ),
        };
        let storm = vec![
            outcome("reserved", &|o| o == "reserved"),
            outcome("sold_out", &|o| o == "sold_out"),
            outcome("refused after retries", &|o| REFUSED.contains(&o)),
            outcome("other", &|o| {
                !matches!(o, "reserved" | "sold_out") && !REFUSED.contains(&o)
            }),
        ];
        let faults = self
            .steps
            .iter()
            .map(|s| {
                let back = s.at_s + s.back_after_s.unwrap_or(s.down_s);
                Series {
                    name: s.name.to_owned(),
                    points: vec![
                        (0.0, 0.0),
                        (s.at_s, 0.0),
                        (s.at_s, 1.0),
                        (back, 1.0),
                        (back, 0.0),
                        (end, 0.0),
                    ],
                }
            })
            .collect();
        flashmall_bench::chart::svg(
            "flashmall bench chaos: faults, canary probes failing, storm answers (per 0.5 s)",
            &[
                Panel {
                    title: "faults (1: struck until back)".into(),
                    series: faults,
                },
                Panel {
                    title: "canary probes failing".into(),
                    series: probes,
                },
                Panel {
                    title: "storm answers".into(),
                    series: storm,
                },
            ],
        )
    }
}

/// Runs the chaos seckill against the cluster in `args.cluster`.
pub async fn run(args: &ChaosArgs) -> Result<ChaosReport, String> {
    let manifest = Manifest::load(&args.cluster)?;
    let steps = args.schedule();
    let balancer = Balancer::start(manifest.edge_addrs()?).await?;
    let base = format!("http://{}", balancer.addr);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let domain = format!("{}.chaos.flashmall", &run_id[run_id.len() - 10..]);
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let site = Site {
        base: &base,
        front: "redis",
        admin_email: &manifest.admin.email,
        admin_password: &manifest.admin.password,
        buyer_domain: &domain,
        opened: Some(opened_tx),
    };
    let options = args.demo_options();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let chaos = async {
        let opened = Arc::new(
            opened_rx
                .await
                .map_err(|_| "the storm ended before the sale opened".to_owned())?,
        );
        let probe = tokio::spawn(canary(
            client.clone(),
            base.clone(),
            Arc::clone(&opened),
            Arc::clone(&samples),
        ));
        let struck = futures::stream::iter(steps.iter().copied())
            .map(|step| strike(&manifest, &client, &opened, step))
            .buffered(steps.len().max(1))
            .collect::<Vec<_>>()
            .await;
        tokio::time::sleep(AFTERMATH).await;
        probe.abort();
        let struck: Vec<Struck> = struck.into_iter().collect::<Result<_, _>>()?;
        Ok::<_, String>((opened, struck))
    };
    let (report, chaos) = tokio::join!(crate::demo::storm(&options, site), chaos);
    let report = report?;
    let (opened, mut struck) = chaos?;
    let samples = samples.lock().map_err(|_| "poisoned")?.clone();
    for s in &mut struck {
        measure(s, &samples, &report);
    }

    // Once every fault healed: every process serves, nothing a client was
    // told about is gone, and the sale is conserved.
    let mut checks = report.checks.clone();
    checks.push(whole_again(&manifest, &client).await);
    checks.push(acknowledged_writes_kept(&client, &base, &opened, &report).await);
    checks.push(conserved(&client, &base, &opened, args.stock).await?);

    Ok(ChaosReport {
        machine: Machine::this(),
        cluster: args.cluster.display().to_string(),
        stock: args.stock,
        attempts: args.attempts,
        buyers: args.buyers,
        rate: args.rate,
        outcomes: report.outcomes.clone(),
        retries: report.retries,
        sold: report.sold,
        orders: report.orders.orders,
        paid: report.orders.paid,
        expired: report.orders.expired,
        resold: report.orders.resold,
        checkouts_paid: report.shop.paid,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        steps: struck,
        checks,
        demo_table: report.table(),
        samples: samples
            .iter()
            .map(|s| (s.at.as_secs_f64(), s.probe, s.ok))
            .collect(),
        answers: report
            .answers
            .iter()
            .map(|a| (a.0.as_secs_f64(), a.1))
            .collect(),
    })
}

/// Every process of the cluster serves again.
async fn whole_again(manifest: &Manifest, client: &reqwest::Client) -> Check {
    let mut down = Vec::new();
    for (name, process) in &manifest.processes {
        if cluster::wait_ready(client, &process.ready).await.is_err() {
            down.push(name.clone());
        }
    }
    for node in &manifest.cassandra {
        if cluster::wait_listening(node).await.is_err() {
            down.push(node.address.clone());
        }
    }
    Check {
        name: "cluster whole again",
        held: down.is_empty(),
        detail: format!(
            "{} processes and {} Cassandra nodes serving after the faults{}",
            manifest.processes.len(),
            manifest.cassandra.len(),
            if down.is_empty() {
                String::new()
            } else {
                format!("; not serving: {}", down.join(", "))
            }
        ),
    }
}

/// Every order a buyer saw and every payment a buyer was answered still
/// exists, read after every fault healed (at LOCAL_QUORUM).
async fn acknowledged_writes_kept(
    client: &reqwest::Client,
    base: &str,
    opened: &Opened,
    report: &DemoReport,
) -> Check {
    let told = &report.orders.told;
    let lost: Vec<String> = futures::stream::iter(told)
        .map(|t| async move {
            let token = opened.buyers.get(t.buyer).map_or("", String::as_str);
            let mut lost = Vec::new();
            let order = steady_json_of(
                client
                    .get(format!("{base}/api/v1/orders/{}", t.order_id))
                    .bearer_auth(token),
            )
            .await;
            if !matches!(order, Ok((200, _))) {
                lost.push(format!("order {}", t.order_id));
            }
            if let Some(payment) = &t.payment_id {
                let answer = steady_json_of(
                    client
                        .get(format!("{base}/api/v1/payments/{payment}"))
                        .bearer_auth(token),
                )
                .await;
                if !matches!(answer, Ok((200, _))) {
                    lost.push(format!("payment {payment}"));
                }
            }
            lost
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .flatten()
        .collect();
    let payments = told.iter().filter(|t| t.payment_id.is_some()).count();
    Check {
        name: "no acknowledged write lost",
        held: lost.is_empty(),
        detail: format!(
            "{} of {} orders and {payments} payments clients were told about missing{}",
            lost.len(),
            told.len(),
            lost.first()
                .map_or(String::new(), |l| format!(" (first: {l})"))
        ),
    }
}

/// The ledger, reconciled once more after every fault: drift 0, conserved,
/// and the sale's view adds up (nothing moves any more by then).
async fn conserved(
    client: &reqwest::Client,
    base: &str,
    opened: &Opened,
    stock: i64,
) -> Result<Check, String> {
    let report = reconcile_report(client, base, &opened.admin, &opened.sale_id).await?;
    let (_, view) =
        steady_json_of(client.get(format!("{base}/api/v1/sales/{}", opened.sale_id))).await?;
    let settled = view["settled"].as_i64().unwrap_or(-1);
    let remaining = view["remaining"].as_i64().unwrap_or(-1);
    Ok(Check {
        name: "conserved after the faults",
        held: report["conserved"] == true && report["drift"] == 0 && settled + remaining == stock,
        detail: format!(
            "reconcile: drift {}, {settled} held + {remaining} remaining of {stock}",
            report["drift"]
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        chaos: ChaosArgs,
    }

    /// The schedule flags parse, `off` included (an `Option` field with a
    /// parser that returns `Option` once panicked at the first run).
    #[test]
    fn the_schedule_parses_with_defaults_and_off() {
        let cli = Cli::try_parse_from(["chaos", "--cluster", "dir"]).expect("defaults parse");
        assert_eq!(cli.chaos.engine_kill_at, Some(Duration::from_secs(2)));
        assert_eq!(cli.chaos.cassandra_down, Duration::from_secs(20));
        let cli = Cli::try_parse_from(["chaos", "--cluster", "dir", "--split-at", "off"])
            .expect("off parses");
        assert_eq!(cli.chaos.split_at, None);
        assert!(
            Cli::try_parse_from(["chaos", "--cluster", "dir", "--edge-kill-at", "soon"]).is_err()
        );
    }
}
