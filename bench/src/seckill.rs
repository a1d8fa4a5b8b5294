//! `flashmall bench seckill`: a flash sale under load through the edge,
//! checked against the ledger afterwards.
//!
//! The phases are [`crate::phases`]'s, which the demo and the chaos run
//! share; this module runs them in a row and measures them.
//!
//! 1. Set-up: registers and logs in the buyers, creates a sale that opens
//!    a moment later, opens every connection.
//! 2. Load, from the opening instant: a burst (every connection at once in
//!    closed loop; `--burst` attempts due at the opening in open loop),
//!    retries of earlier attempts' Idempotency-Keys, buyers coming back past
//!    their limit with new keys, and attempts long after the sale sold out.
//!    A few attempts come before the opening (answered `sale_not_open`).
//! 3. Settlement: the sale's pending units are watched until they are 0.
//! 4. Checks against the ledger (reconcile, reservations): sold ==
//!    min(stock, distinct demand), no oversell, no duplicates, every 201 in
//!    the ledger, conservation.
//! 5. The sold-out gate: purchases of the sold-out sale against the edge's
//!    static `/healthz`, same connections, one after the other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method};
use serde::Serialize;

use crate::api::{login, metric};
use crate::chart::{Panel, Series};
use crate::cpu::{EDGE_THREADS, EdgeCpu, Meter};
use crate::fault::{FaultReport, FaultyRedis};
use crate::http::{Conn, Endpoint};
use crate::load::{self, Job, Mode};
use crate::phases::{self, Purchases, Sale};
pub use crate::phases::{Answered, Attempt, Facts, outcome_of, rebuilt_of, refusal_of};
use crate::progress::Progress;
use crate::report::{Bucket, Machine, PhaseRates, Summary, latency_cells, timeline};
use crate::wrk::{self, WrkRun};

/// The shape of a seckill run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SeckillOptions {
    /// Units on sale.
    #[arg(long, default_value_t = 1_000)]
    pub stock: i64,
    /// Distinct buyers (each registered and logged in first).
    #[arg(long, default_value_t = 5_000)]
    pub buyers: usize,
    /// Units one buyer may hold.
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: i64,
    /// Purchase attempts in all.
    #[arg(long, default_value_t = 20_000)]
    pub attempts: usize,
    /// Connections (closed loop: each sends as soon as answered).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Open loop: attempts per second after the burst (omit for closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: attempts due at the opening instant.
    #[arg(long, default_value_t = 2_000)]
    pub burst: usize,
    /// Percent of attempts that repeat the buyer's last Idempotency-Key.
    #[arg(long, default_value_t = 20)]
    pub retry_percent: u64,
    /// Attempts sent before the opening.
    #[arg(long, default_value_t = 10)]
    pub early: usize,
    /// Seed of the attempt plan (same seed, same plan).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Seconds of each phase of the sold-out gate against /healthz (0: skip).
    #[arg(long, default_value_t = 3.0)]
    pub gate_seconds: f64,
}

impl Default for SeckillOptions {
    fn default() -> Self {
        SeckillOptions {
            stock: 1_000,
            buyers: 5_000,
            per_user_limit: 1,
            attempts: 20_000,
            connections: 256,
            rate: None,
            burst: 2_000,
            retry_percent: 20,
            early: 10,
            seed: 7,
            gate_seconds: 3.0,
        }
    }
}

impl SeckillOptions {
    pub fn mode(&self) -> Mode {
        match self.rate {
            None => Mode::Closed {
                connections: self.connections,
            },
            Some(rate) => Mode::Open {
                rate,
                burst: self.burst,
                connections: self.connections,
            },
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.stock < 1 || self.buyers < 1 || self.per_user_limit < 1 || self.attempts < 1 {
            return Err("stock, buyers, per-user-limit and attempts must be at least 1".into());
        }
        if self.retry_percent > 100 {
            return Err("retry-percent must be at most 100".into());
        }
        if !self.gate_seconds.is_finite() || self.gate_seconds < 0.0 {
            return Err("gate-seconds must be 0 or more".into());
        }
        self.mode().validate()
    }
}

/// Where the bench sends its load, and the admin it creates sales as.
#[derive(Debug, Clone)]
pub struct Target {
    /// The edge's base URL (`http://host:port`).
    pub base: String,
    /// An existing admin account (a fresh local stack registers and grants
    /// it first: `Stack::register_admin`).
    pub admin_email: String,
    pub admin_password: String,
    /// The edge's admin base URL (`proxy.admin_listen`), whose `/metrics`
    /// counts the purchases the sold-out gate answered; `None`: not read.
    pub edge_admin: Option<String>,
}

/// One invariant and whether it held.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub held: bool,
    pub detail: String,
}

/// The checks as a Markdown table.
pub fn checks_table(checks: &[Check]) -> String {
    let mut t = String::from("| check | held | detail |\n|---|---|---|\n");
    for c in checks {
        let held = if c.held { "yes" } else { "**NO**" };
        let _ = writeln!(t, "| {} | {held} | {} |", c.name, c.detail);
    }
    t
}

/// xorshift64*: a tiny deterministic generator for the attempt plan.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The attempts, reproducible from the seed: random buyers, and
/// `retry_percent` of them repeating the buyer's last key.
pub fn plan(
    seed: u64,
    attempts: usize,
    buyers: usize,
    retry_percent: u64,
    prefix: &str,
) -> Vec<Attempt> {
    let mut rng = Rng(seed.max(1));
    let mut last_key: HashMap<usize, String> = HashMap::new();
    let mut out = Vec::with_capacity(attempts);
    for i in 0..attempts {
        let buyer = (rng.next() % buyers.max(1) as u64) as usize;
        let retry = rng.next() % 100 < retry_percent;
        let key = match (retry, last_key.get(&buyer)) {
            (true, Some(key)) => key.clone(),
            _ => format!("{prefix}{i}"),
        };
        last_key.insert(buyer, key.clone());
        out.push(Attempt { buyer, key });
    }
    out
}

/// A run's tag (the last characters of a UUIDv7: run-unique accounts,
/// sales and keys, so a bench can run again on one stack) and its plan of
/// attempts, whose keys carry the tag.
pub fn tagged_plan(options: &SeckillOptions) -> (String, Vec<Attempt>) {
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let run_tag = run_id[run_id.len() - 10..].to_owned();
    let attempts = plan(
        options.seed,
        options.attempts,
        options.buyers,
        options.retry_percent,
        &format!("{run_tag}-"),
    );
    (run_tag, attempts)
}

/// Outcomes the engine (or the gate, on its behalf) decided: the attempt
/// counted as demand.
const DECIDED: [&str; 4] = ["reserved", "replayed", "sold_out", "limit_exceeded"];

/// The run's invariants, checked from the facts alone.
pub fn check(f: &Facts) -> Vec<Check> {
    let mut ids_by_key: HashMap<(usize, &str), HashSet<&str>> = HashMap::new();
    let mut keys_by_id: HashMap<&str, HashSet<(usize, &str)>> = HashMap::new();
    let mut decided_keys: HashMap<usize, HashSet<&str>> = HashMap::new();
    for a in &f.answers {
        if DECIDED.contains(&a.outcome) {
            decided_keys.entry(a.buyer).or_default().insert(&a.key);
        }
        if let Some(id) = &a.reservation_id {
            ids_by_key.entry((a.buyer, &a.key)).or_default().insert(id);
            keys_by_id.entry(id).or_default().insert((a.buyer, &a.key));
        }
    }
    // A buyer's limit counts the units they hold: a released reservation
    // (its order expired or was cancelled) frees the allowance.
    let released_ids: HashSet<&str> = f.released_ids.iter().map(String::as_str).collect();
    let revoked_ids: HashSet<&str> = f.revoked_ids.iter().map(String::as_str).collect();
    let mut per_buyer: HashMap<usize, i64> = HashMap::new();
    for (id, keys) in &keys_by_id {
        if !released_ids.contains(id) && !revoked_ids.contains(id) {
            for (buyer, _) in keys {
                *per_buyer.entry(*buyer).or_default() += 1;
            }
        }
    }
    let granted = keys_by_id.len() as i64;
    let released_granted = keys_by_id
        .keys()
        .filter(|id| released_ids.contains(*id))
        .count() as i64;
    let revoked_granted = keys_by_id
        .keys()
        .filter(|id| revoked_ids.contains(*id))
        .count() as i64;
    let demand: i64 = decided_keys
        .values()
        .map(|keys| (keys.len() as i64).min(f.per_user_limit))
        .sum();
    let expected = demand.min(f.stock);
    let key_twice = ids_by_key.values().filter(|ids| ids.len() > 1).count();
    let id_twice = keys_by_id.values().filter(|keys| keys.len() > 1).count();
    let over_limit = per_buyer
        .values()
        .filter(|n| **n > f.per_user_limit)
        .count();
    // Units that came back during the run (expired orders) may be sold
    // again: then every unit of the stock was still sold at least once
    // (held now or released since), and a returned unit left unsold is
    // not an undersell. With nothing released, the count is exact.
    let undersold = if f.released == 0 {
        Check {
            name: "sold == min(stock, demand)",
            held: f.sold == expected,
            detail: format!(
                "{} sold, min(stock {}, distinct demand {demand}) = {expected}",
                f.sold, f.stock
            ),
        }
    } else {
        Check {
            name: "sold == min(stock, demand)",
            held: f.sold + f.released >= expected,
            detail: format!(
                "{} sold + {} released since (orders closed during the run) >= min(stock {}, distinct demand {demand}) = {expected}",
                f.sold, f.released, f.stock
            ),
        }
    };
    vec![
        Check {
            name: "no oversell",
            held: f.sold <= f.stock
                && granted - released_granted - revoked_granted <= f.stock
                && granted - revoked_granted <= f.stock + f.released.max(0),
            detail: format!(
                "{} sold, {granted} granted to clients ({released_granted} released since, {revoked_granted} revoked by the ledger), stock {} (+{} returned)",
                f.sold, f.stock, f.released
            ),
        },
        undersold,
        Check {
            name: "no duplicates",
            held: key_twice == 0 && id_twice == 0 && over_limit == 0,
            detail: format!(
                "{} keys granted; {key_twice} keys with two reservations, {id_twice} reservations for two keys, {over_limit} buyers past the limit of {}",
                ids_by_key.len(),
                f.per_user_limit
            ),
        },
        Check {
            name: "every 201 in the ledger",
            held: f.missing_in_ledger.is_empty() && revoked_granted == 0,
            detail: format!(
                "{} of {granted} acknowledged reservations missing, {revoked_granted} revoked by the ledger (fast ack){}",
                f.missing_in_ledger.len(),
                f.missing_in_ledger
                    .first()
                    .map(|id| format!(" (e.g. {id})"))
                    .unwrap_or_default()
            ),
        },
        Check {
            name: "conservation",
            held: f.conserved && f.drift == 0 && f.rebuilt.0 + f.rebuilt.1 == f.stock,
            detail: format!(
                "reconcile conserved={}, drift {}, {} held + {} remaining of {}",
                f.conserved, f.drift, f.rebuilt.0, f.rebuilt.1, f.stock
            ),
        },
        Check {
            name: "settled",
            held: f.pending == 0,
            detail: format!("{} units pending settlement at the end", f.pending),
        },
    ]
}

/// Settlement during and after the run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Settlement {
    /// From the last reservation until nothing was pending (None: it never
    /// reached 0 within the wait).
    pub lag_ms: Option<f64>,
    /// How often the sale was read (the lag's resolution).
    pub poll_ms: f64,
    pub max_pending: i64,
    /// (seconds since the opening, pending units, remaining units).
    pub series: Vec<(f64, i64, i64)>,
}

/// The sold-out gate against the edge's static answer.
#[derive(Debug, Clone, Serialize)]
pub struct GateReport {
    /// `GET /healthz` at the edge.
    pub static_answer: Summary,
    /// `POST /healthz` with a purchase's headers and body: the static
    /// answer to a request of the purchase's size.
    pub purchase_shaped: Summary,
    /// Purchases of the sold-out sale by buyers who hold nothing.
    pub sold_out_purchases: Summary,
    /// sold-out purchases per second / static answers per second.
    pub ratio: f64,
    /// Purchases the edge's gate answered (its rejection counter, read
    /// from the edge's admin port; `None` without one).
    pub answered_at_gate: Option<f64>,
    /// The edge's own CPU per answer in the same turns (`None` when the
    /// stack runs in another process).
    pub edge_cpu: Option<EdgeCpu>,
    /// The same two, measured by `wrk`; `None` when it is not installed.
    pub wrk: Option<WrkGate>,
}

/// The sold-out gate against the static answer, as `wrk` measured them
/// (the same connections, three alternating turns of whole seconds).
#[derive(Debug, Clone, Serialize)]
pub struct WrkGate {
    pub static_answer: WrkRun,
    pub purchase_shaped: WrkRun,
    pub sold_out_purchases: WrkRun,
    pub ratio: f64,
    /// The edge's own CPU per answer in wrk's turns.
    pub edge_cpu: Option<EdgeCpu>,
}

/// What a seckill run measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct SeckillReport {
    pub machine: Machine,
    pub target: String,
    pub options: SeckillOptions,
    pub mode: Mode,
    pub accounts_seconds: f64,
    pub storm: Summary,
    /// The storm while units remained and after the sell-out.
    pub phases: PhaseRates,
    pub timeline: Vec<Bucket>,
    pub sold: i64,
    pub remaining: i64,
    /// From the opening until the last unit was reserved (None: not sold out).
    pub sold_out_after_s: Option<f64>,
    pub settlement: Settlement,
    pub gate: Option<GateReport>,
    /// What a fault struck mid-storm cost (`--fault`).
    pub fault: Option<FaultReport>,
    pub checks: Vec<Check>,
}

impl SeckillReport {
    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.held)
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let s = &self.storm;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## seckill: {} units, {} attempts, {} buyers (limit {})\n",
            o.stock, o.attempts, o.buyers, o.per_user_limit
        );
        let _ = writeln!(
            t,
            "Target {}; {}; {} cores, {} build.\n",
            self.target,
            self.mode.describe(),
            self.machine.cores,
            self.machine.build
        );
        let _ = writeln!(t, "| figure | value |\n|---|---|");
        let (selling, sold_out) = self.phases.cells();
        let rows = [
            ("attempts answered", s.requests.to_string()),
            (
                "connections the server closed, reopened",
                s.reconnects.to_string(),
            ),
            ("throughput (answers/s)", format!("{:.0}", s.throughput)),
            ("answers/s while units remained", selling),
            ("answers/s after the last reservation", sold_out),
            ("storm duration (s)", format!("{:.3}", s.seconds)),
            ("sold (ledger)", self.sold.to_string()),
            ("remaining", self.remaining.to_string()),
            (
                "sold out after (s)",
                self.sold_out_after_s
                    .map_or("not sold out".into(), |v| format!("{v:.3}")),
            ),
            (
                "settlement lag after the last reservation (ms)",
                self.settlement.lag_ms.map_or("did not drain".into(), |v| {
                    format!("{v:.0} (polled every {:.0} ms)", self.settlement.poll_ms)
                }),
            ),
            (
                "most units pending settlement",
                self.settlement.max_pending.to_string(),
            ),
            (
                "buyer accounts ready in (s)",
                format!("{:.2}", self.accounts_seconds),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(t, "| {name} | {value} |");
        }
        if let Some(f) = &self.fault {
            for (name, value) in f.rows() {
                let _ = writeln!(t, "| {name} | {value} |");
            }
        }
        let corrected = if matches!(self.mode, Mode::Open { .. }) {
            " (from the due instant: corrected for coordinated omission)"
        } else {
            ""
        };
        let _ = writeln!(
            t,
            "\nLatency{corrected}, ms:\n\n| | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|"
        );
        let _ = writeln!(t, "| purchase | {} |", latency_cells(&s.latency));
        if let Some(service) = &s.service_time {
            let _ = writeln!(
                t,
                "| purchase, service time only | {} |",
                latency_cells(service)
            );
        }
        let _ = writeln!(t, "\n| outcome | answers |\n|---|---|");
        for (outcome, n) in &s.outcomes {
            let _ = writeln!(t, "| {outcome} | {n} |");
        }
        if let Some(g) = &self.gate {
            let _ = writeln!(
                t,
                "\nSold-out gate, {} connections, {:.0} s each in three alternating turns:\n\n| | answers/s | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|",
                o.connections, o.gate_seconds
            );
            let _ = writeln!(
                t,
                "| `GET /healthz` (static) | {:.0} | {} |",
                g.static_answer.throughput,
                latency_cells(&g.static_answer.latency)
            );
            let _ = writeln!(
                t,
                "| `POST /healthz` with a purchase's headers and body (static) | {:.0} | {} |",
                g.purchase_shaped.throughput,
                latency_cells(&g.purchase_shaped.latency)
            );
            let _ = writeln!(
                t,
                "| purchase of the sold-out sale | {:.0} | {} |",
                g.sold_out_purchases.throughput,
                latency_cells(&g.sold_out_purchases.latency)
            );
            let outcomes: Vec<String> = g
                .sold_out_purchases
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                t,
                "\nRatio {:.2} (target ≥ 0.9); {} of {} purchases answered by the gate (answers: {}; reconnects: static {}, purchases {}).",
                g.ratio,
                g.answered_at_gate
                    .map_or("unknown (no edge admin URL)".to_owned(), |n| format!(
                        "{n:.0}"
                    )),
                g.sold_out_purchases.requests,
                outcomes.join(", "),
                g.static_answer.reconnects,
                g.sold_out_purchases.reconnects
            );
            if let Some(cpu) = &g.edge_cpu {
                let _ = writeln!(t, "{}", edge_cpu_line(cpu));
            }
            match &g.wrk {
                Some(w) => {
                    let _ = writeln!(
                        t,
                        "\nThe same with `wrk -t2 -c{} --latency` (a Lua request per call), three turns of {:.0} s each:\n\n| | answers/s | p50 ms | p99 ms | not 2xx | socket errors |\n|---|---|---|---|---|---|",
                        o.connections.max(2),
                        (o.gate_seconds / 3.0).ceil().max(1.0)
                    );
                    for (name, r) in [
                        ("`GET /healthz` (static)", &w.static_answer),
                        (
                            "`POST /healthz`, purchase-shaped (static)",
                            &w.purchase_shaped,
                        ),
                        ("purchase of the sold-out sale", &w.sold_out_purchases),
                    ] {
                        let _ = writeln!(
                            t,
                            "| {name} | {:.0} | {:.2} | {:.2} | {} | {} |",
                            r.per_second, r.p50_ms, r.p99_ms, r.non_2xx, r.socket_errors
                        );
                    }
                    let _ = writeln!(t, "\nwrk's ratio {:.2} (target ≥ 0.9).", w.ratio);
                    if let Some(cpu) = &w.edge_cpu {
                        let _ = writeln!(t, "{}", edge_cpu_line(cpu));
                    }
                }
                None => t.push_str(
                    "\nwrk is not installed: the independent client did not measure the gate.\n",
                ),
            }
        }
        t.push('\n');
        t.push_str(&checks_table(&self.checks));
        t
    }

    pub fn svg(&self) -> String {
        let panels = vec![
            Panel {
                title: "purchase answers per second".into(),
                series: vec![Series {
                    name: "answers/s".into(),
                    points: self
                        .timeline
                        .iter()
                        .map(|b| (b.t_s, b.per_second))
                        .collect(),
                }],
            },
            Panel {
                title: "purchase latency (ms)".into(),
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
            Panel {
                title: "units".into(),
                series: vec![
                    Series {
                        name: "pending settlement".into(),
                        points: self
                            .settlement
                            .series
                            .iter()
                            .map(|(t, p, _)| (*t, *p as f64))
                            .collect(),
                    },
                    Series {
                        name: "remaining".into(),
                        points: self
                            .settlement
                            .series
                            .iter()
                            .map(|(t, _, r)| (*t, *r as f64))
                            .collect(),
                    },
                ],
            },
        ];
        crate::chart::svg(
            &format!(
                "seckill: {} units, {} attempts, {}",
                self.options.stock,
                self.options.attempts,
                self.mode.describe()
            ),
            &panels,
        )
    }
}

pub(crate) const PASSWORD: &str = "bench password 0123";

// The edge's static answer.
struct Static;

impl Job for Static {
    async fn call(&self, conn: &mut Conn, _: usize) -> Result<&'static str, String> {
        let answer = conn
            .send(Method::GET, "/healthz", &[], Bytes::new())
            .await?;
        Ok(if answer.status == 200 {
            "ok"
        } else {
            "http_error"
        })
    }
}

/// A fault to strike the stack's Redis with, `at` after the opening.
pub struct FaultPlan<'a> {
    pub redis: &'a FaultyRedis,
    pub at: Duration,
}

/// Runs the bench against `target` (whose admin may create sales), with
/// `fault` striking its Redis mid-storm when given: the phases of
/// [`crate::phases`] in a row, measured.
pub async fn run(
    target: &Target,
    options: &SeckillOptions,
    fault: Option<FaultPlan<'_>>,
    visible: bool,
) -> Result<SeckillReport, String> {
    options.validate()?;
    let endpoint = Endpoint::resolve(&target.base).await?;
    let base = endpoint.base.clone();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let admin = login(&client, &base, &target.admin_email, &target.admin_password).await?;

    // Buyers: run-unique accounts, so the bench can run again on one stack.
    let (run_tag, attempts) = tagged_plan(options);
    let run_tag = run_tag.as_str();
    let accounts_started = Instant::now();
    let tokens = phases::buyers(
        &client,
        &base,
        options.buyers,
        |i| format!("b{i}.{run_tag}@bench.flashmall"),
        PASSWORD,
        visible,
    )
    .await?;
    let tokens = phases::bearers(&tokens)?;
    let accounts_seconds = accounts_started.elapsed().as_secs_f64();

    let sale = phases::open_sale(
        &client,
        &base,
        &admin,
        &format!("bench-{run_tag}"),
        (options.stock, options.per_user_limit),
        phases::lead(options.connections),
    )
    .await?;
    let opening = sale.opening;
    let early = options.early.min(attempts.len());
    let mut early_outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for outcome in phases::before_opening(&endpoint, &sale, &tokens, &attempts[..early]).await? {
        *early_outcomes
            .entry(format!("{outcome} (before the opening)"))
            .or_default() += 1;
    }

    let watch = phases::Watch::start(&client, &sale);
    let progress = Progress::start("seckill", (attempts.len() - early) as u64, visible);
    let drive = phases::storm(
        phases::Storm {
            endpoint: &endpoint,
            sale: &sale,
            identity: phases::BEARER,
            tokens: &tokens,
            attempts: &attempts[early..],
            mode: options.mode(),
            retries: 0,
            wins: None,
        },
        &progress,
    );
    let strike = async {
        let Some(plan) = &fault else {
            return std::future::pending().await;
        };
        let mut snapshot_at = None;
        if plan.redis.fault() == crate::fault::Fault::RedisRestart {
            tokio::time::sleep_until((opening + plan.at / 2).into()).await;
            plan.redis.prepare().await?;
            snapshot_at = Some(opening.elapsed());
        }
        tokio::time::sleep_until((opening + plan.at).into()).await;
        let injected_at = opening.elapsed();
        let detail = plan.redis.inject(sale.uuid).await?;
        Ok::<_, String>((snapshot_at, injected_at, detail))
    };
    let (stormed, struck) = {
        tokio::pin!(drive, strike);
        let mut struck = None;
        loop {
            tokio::select! {
                stormed = &mut drive => break (stormed, struck),
                done = &mut strike, if struck.is_none() => struck = Some(done?),
            }
        }
    };
    progress.finish();
    let stormed = stormed?;
    let recording = &stormed.recording;
    let fault_report = match (&fault, struck) {
        (None, _) => None,
        (Some(plan), Some((snapshot_at, injected_at, detail))) => Some(FaultReport::measure(
            plan.redis.fault(),
            snapshot_at,
            injected_at,
            detail,
            recording,
        )),
        (Some(plan), None) => {
            return Err(format!(
                "the storm ended {:.3} s after the opening, before the fault at {:.3} s: choose an earlier --fault-at or a longer storm (--rate, --attempts)",
                recording.elapsed.as_secs_f64(),
                plan.at.as_secs_f64()
            ));
        }
    };

    // Settlement: until nothing is pending (or nothing moves for a while).
    let last_reserved_us = recording
        .samples
        .iter()
        .filter(|s| s.outcome == "reserved")
        .map(|s| s.done_us)
        .max();
    watch.settled(recording.elapsed).await?;
    let series = watch.stop()?;
    let lag_ms = last_reserved_us.and_then(|last| {
        let last = last as f64 / 1e6;
        series
            .iter()
            .find(|(t, p, _)| *t >= last && *p == 0)
            .map(|(t, _, _)| (t - last) * 1000.0)
    });

    let limits = (options.stock, options.per_user_limit);
    let facts = phases::verify(
        &client,
        &base,
        &admin,
        &sale,
        limits,
        stormed.answers.clone(),
    )
    .await?;
    let checks = check(&facts);

    let gate = if options.gate_seconds > 0.0 && facts.remaining == 0 {
        let holders: HashSet<usize> = facts
            .answers
            .iter()
            .filter(|a| a.reservation_id.is_some())
            .map(|a| a.buyer)
            .collect();
        Some(
            gate_phase(
                &client,
                &endpoint,
                target.edge_admin.as_deref(),
                options,
                &sale,
                &tokens,
                &holders,
                run_tag,
                visible,
            )
            .await?,
        )
    } else {
        None
    };

    let mut storm = Summary::of(recording);
    for (outcome, n) in early_outcomes {
        storm.outcomes.insert(outcome, n);
    }
    let sold_out_after_s = (facts.sold == options.stock)
        .then_some(last_reserved_us)
        .flatten()
        .map(|us| us as f64 / 1e6);
    Ok(SeckillReport {
        machine: Machine::this(),
        target: base,
        options: options.clone(),
        mode: options.mode(),
        accounts_seconds,
        timeline: timeline(&recording.samples, recording.elapsed.as_micros() as u64),
        phases: PhaseRates::of(recording),
        storm,
        sold: facts.sold,
        remaining: facts.remaining,
        sold_out_after_s,
        settlement: Settlement {
            lag_ms,
            poll_ms: phases::POLL.as_secs_f64() * 1000.0,
            max_pending: series.iter().map(|s| s.1).max().unwrap_or(0),
            series,
        },
        gate,
        fault: fault_report,
        checks,
    })
}

#[allow(clippy::too_many_arguments)]
async fn gate_phase(
    client: &reqwest::Client,
    endpoint: &Endpoint,
    edge_admin: Option<&str>,
    options: &SeckillOptions,
    sale: &Sale,
    tokens: &Arc<Vec<HeaderValue>>,
    holders: &HashSet<usize>,
    run_tag: &str,
    visible: bool,
) -> Result<GateReport, String> {
    let gate_series = "flashmall_proxy_rejections_total{reason=\"sold_out_gate\"}";
    let metrics_url = edge_admin.map(|admin| format!("{}/metrics", admin.trim_end_matches('/')));
    let read_gate = || async {
        let text = client
            .get(metrics_url.as_deref()?)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(metric(&text, gate_series))
    };
    let buyers: Vec<usize> = (0..tokens.len()).filter(|b| !holders.contains(b)).collect();
    if buyers.is_empty() {
        return Err("every buyer holds units: no one left to be turned away by the gate".into());
    }
    // The static answer and the gate take turns, so a drift of the machine
    // falls on both alike.
    const TURNS: u32 = 3;
    let run = load::Run {
        mode: Mode::Closed {
            connections: options.connections,
        },
        requests: usize::MAX,
        start: None,
        duration: Some(Duration::from_secs_f64(options.gate_seconds) / TURNS),
    };
    let before = read_gate().await;
    let (mut statics, mut shaped, mut gated) = (Vec::new(), Vec::new(), Vec::new());
    let (mut static_cpu, mut shaped_cpu, mut gate_cpu) = <(Meter, Meter, Meter)>::default();
    for turn in 0..TURNS {
        let recording = metered_turn(
            &mut static_cpu,
            "static",
            Arc::new(Static),
            endpoint,
            run,
            visible,
        );
        statics.push(recording.await?);
        // Attempts cycle over the buyers who hold nothing, each with a new
        // key; more than the edge can answer in the turn.
        let count = (400_000.0 * options.gate_seconds / f64::from(TURNS)).ceil() as usize + 1_000;
        let buyers = &buyers;
        let attempts = |kind: &'static str| {
            (0..count).map(move |i| {
                (
                    buyers[i % buyers.len()],
                    format!("{run_tag}-{kind}-{turn}-{i}"),
                )
            })
        };
        let run = load::Run {
            requests: count,
            ..run
        };
        // The same requests answered statically: what their size costs the
        // edge apart from its checks.
        let job = Purchases::new(sale, endpoint, tokens, attempts("shaped"))?.sent_to("/healthz");
        let label = "static, purchase-shaped";
        let recording = metered_turn(
            &mut shaped_cpu,
            label,
            Arc::new(job),
            endpoint,
            run,
            visible,
        );
        shaped.push(recording.await?);
        let job = Arc::new(Purchases::new(sale, endpoint, tokens, attempts("gate"))?);
        let recording = metered_turn(
            &mut gate_cpu,
            "sold-out gate",
            Arc::clone(&job),
            endpoint,
            run,
            visible,
        );
        gated.push(recording.await?);
        if !job.granted.lock().map_err(|_| "poisoned")?.is_empty() {
            return Err("a purchase of the sold-out sale was granted".into());
        }
    }
    let after = read_gate().await;
    let static_answer = Summary::of(&load::join(statics).ok_or("no static turn ran")?);
    let purchase_shaped = Summary::of(&load::join(shaped).ok_or("no purchase-shaped turn ran")?);
    let sold_out_purchases = Summary::of(&load::join(gated).ok_or("no gate turn ran")?);
    let wrk = match wrk::program() {
        Some(program) => {
            let tokens = buyers
                .iter()
                .map(|&b| tokens[b].to_str().map(str::to_owned))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("a token is not text: {e}"))?;
            Some(wrk_gate(program, endpoint, options, sale, tokens, run_tag, TURNS).await?)
        }
        None => None,
    };
    Ok(GateReport {
        ratio: sold_out_purchases.throughput / static_answer.throughput.max(1e-9),
        edge_cpu: EdgeCpu::of(&static_cpu, &shaped_cpu, &gate_cpu),
        answered_at_gate: after.zip(before).map(|(a, b)| a - b),
        static_answer,
        purchase_shaped,
        sold_out_purchases,
        wrk,
    })
}

/// One turn of `job` by the driver, with the edge's CPU in it counted on
/// `meter`.
async fn metered_turn<J: Job>(
    meter: &mut Meter,
    label: &str,
    job: Arc<J>,
    endpoint: &Endpoint,
    run: load::Run,
    visible: bool,
) -> Result<load::Recording, String> {
    let progress = Progress::start(label, 0, visible);
    let answered = |r: &load::Recording| r.samples.len() as u64;
    let recording = meter
        .turn(
            EDGE_THREADS,
            answered,
            load::drive(job, endpoint, run, &progress),
        )
        .await;
    progress.finish();
    recording
}

/// The edge's own CPU per answer on the three paths, one line of the
/// report.
fn edge_cpu_line(cpu: &EdgeCpu) -> String {
    format!(
        "The edge's threads spent, per answer, {:.1} µs of CPU on `GET /healthz`, {:.1} µs on the purchase's request answered statically, and {:.1} µs on a refused purchase: the request's size costs {:.1} µs, the checks and the refusal {:.1} µs. The static answer's cost ÷ the refusal's: {:.2}; with checks that cost nothing it would be {:.2}.",
        cpu.static_us,
        cpu.shaped_us,
        cpu.gate_us,
        cpu.shaped_us - cpu.static_us,
        cpu.gate_us - cpu.shaped_us,
        cpu.static_us / cpu.gate_us.max(1e-9),
        cpu.static_us / cpu.shaped_us.max(1e-9),
    )
}

/// The gate and the static answer, measured by `wrk` in alternating turns.
async fn wrk_gate(
    program: std::path::PathBuf,
    endpoint: &Endpoint,
    options: &SeckillOptions,
    sale: &Sale,
    tokens: Vec<String>,
    run_tag: &str,
    turns: u32,
) -> Result<WrkGate, String> {
    let seconds = options.gate_seconds / f64::from(turns);
    let (mut statics, mut shaped, mut gated) = (Vec::new(), Vec::new(), Vec::new());
    let (mut static_cpu, mut shaped_cpu, mut gate_cpu) = <(Meter, Meter, Meter)>::default();
    let answered = |r: &WrkRun| r.requests;
    let measure = |request: wrk::Request| {
        wrk::measure(
            program.clone(),
            endpoint.base.clone(),
            request,
            options.connections,
            seconds,
        )
    };
    // A purchase's request (the buyers' tokens, a key each, its body) to `path`.
    let purchase = |path: &str, kind: &str, turn: u32| wrk::Request {
        method: "POST",
        path: path.to_owned(),
        tokens: tokens.clone(),
        body: Some(r#"{"quantity":1}"#.into()),
        key_prefix: Some(format!("{run_tag}-wrk-{kind}-{turn}")),
    };
    for turn in 0..turns {
        let measured = measure(wrk::Request::get("/healthz", None));
        statics.push(static_cpu.turn(EDGE_THREADS, answered, measured).await?);
        let measured = measure(purchase("/healthz", "shaped", turn));
        shaped.push(shaped_cpu.turn(EDGE_THREADS, answered, measured).await?);
        let measured = measure(purchase(&sale.purchase_path, "gate", turn));
        let run = gate_cpu.turn(EDGE_THREADS, answered, measured).await?;
        if run.succeeded() > 0 {
            return Err(format!(
                "{} purchases of the sold-out sale were granted (wrk)",
                run.succeeded()
            ));
        }
        gated.push(run);
    }
    let static_answer = WrkRun::joined(&statics).ok_or("no static turn ran (wrk)")?;
    let purchase_shaped = WrkRun::joined(&shaped).ok_or("no purchase-shaped turn ran (wrk)")?;
    let sold_out_purchases = WrkRun::joined(&gated).ok_or("no gate turn ran (wrk)")?;
    Ok(WrkGate {
        ratio: sold_out_purchases.per_second / static_answer.per_second.max(1e-9),
        edge_cpu: EdgeCpu::of(&static_cpu, &shaped_cpu, &gate_cpu),
        static_answer,
        purchase_shaped,
        sold_out_purchases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(buyer: usize, key: &str, outcome: &'static str, id: Option<&str>) -> Answered {
        Answered {
            buyer,
            key: key.into(),
            outcome,
            reservation_id: id.map(str::to_owned),
        }
    }

    /// A clean run: 2 units, 3 buyers, one buyer retried, one turned away.
    fn clean() -> Facts {
        Facts {
            stock: 2,
            per_user_limit: 1,
            answers: vec![
                answer(0, "k0", "reserved", Some("r0")),
                answer(0, "k0", "replayed", Some("r0")),
                answer(1, "k1", "reserved", Some("r1")),
                answer(2, "k2", "sold_out", None),
                answer(0, "k3", "limit_exceeded", None),
                answer(2, "k4", "unavailable", None),
            ],
            sold: 2,
            remaining: 0,
            pending: 0,
            conserved: true,
            drift: 0,
            rebuilt: (2, 0),
            missing_in_ledger: vec![],
            released: 0,
            released_ids: vec![],
            revoked_ids: vec![],
        }
    }

    fn failed(facts: &Facts) -> Vec<&'static str> {
        check(facts)
            .into_iter()
            .filter(|c| !c.held)
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn a_clean_run_passes_every_check() {
        assert_eq!(failed(&clean()), Vec::<&str>::new());
    }

    #[test]
    fn an_oversell_is_caught() {
        let mut f = clean();
        f.answers.push(answer(2, "k5", "reserved", Some("r2")));
        f.sold = 3;
        f.remaining = -1;
        let failed = failed(&f);
        assert!(failed.contains(&"no oversell"), "{failed:?}");
        assert!(failed.contains(&"sold == min(stock, demand)"), "{failed:?}");
    }

    #[test]
    fn an_undersell_is_caught() {
        let mut f = clean();
        f.stock = 3;
        f.remaining = 1;
        f.rebuilt = (2, 1);
        // Buyer 2 asked (sold_out) while a unit was left.
        assert_eq!(failed(&f), vec!["sold == min(stock, demand)"]);
    }

    #[test]
    fn duplicates_are_caught() {
        // One key answered with two reservations.
        let mut f = clean();
        f.answers[1].reservation_id = Some("r9".into());
        assert!(failed(&f).contains(&"no duplicates"));
        // One reservation answered to two keys.
        let mut f = clean();
        f.answers[2].reservation_id = Some("r0".into());
        assert!(failed(&f).contains(&"no duplicates"));
        // A buyer past the limit.
        let mut f = clean();
        f.answers[4] = answer(0, "k3", "reserved", Some("r3"));
        assert!(failed(&f).contains(&"no duplicates"));
    }

    #[test]
    fn an_acknowledgement_missing_from_the_ledger_is_caught() {
        let mut f = clean();
        f.missing_in_ledger = vec!["r1".into()];
        assert_eq!(failed(&f), vec!["every 201 in the ledger"]);
    }

    #[test]
    fn a_revoked_fast_acknowledgement_is_caught_and_is_no_unit() {
        // r1 was answered 201 before the ledger refused it: the promise to
        // the client broke, yet the unit was not granted twice.
        let mut f = clean();
        f.revoked_ids = vec!["r1".into()];
        f.answers.push(answer(2, "k5", "reserved", Some("r2")));
        assert_eq!(failed(&f), vec!["every 201 in the ledger"]);
    }

    #[test]
    fn units_returned_during_the_run_are_neither_oversell_nor_undersell() {
        // r0's order expired; its unit came back and buyer 2 bought it.
        let mut f = clean();
        f.answers[3] = answer(2, "k2", "reserved", Some("r2"));
        f.released = 1;
        f.released_ids = vec!["r0".into()];
        assert_eq!(failed(&f), Vec::<&str>::new());
        // The same, and buyer 0 bought again within the allowance r0 freed.
        let mut g = f.clone();
        g.stock = 3;
        g.answers[4] = answer(0, "k3", "reserved", Some("r3"));
        g.sold = 3;
        g.rebuilt = (3, 0);
        assert_eq!(failed(&g), Vec::<&str>::new());
        // A unit came back and was left unsold after the last buyer asked:
        // the stock was still sold once.
        let mut h = clean();
        h.sold = 1;
        h.remaining = 1;
        h.rebuilt = (1, 1);
        h.released = 1;
        h.released_ids = vec!["r0".into()];
        assert_eq!(failed(&h), Vec::<&str>::new());
    }

    #[test]
    fn returned_units_do_not_hide_an_oversell_or_an_undersell() {
        // Three grants of two units with one returned: fine; a fourth
        // grant held at the same time is one more than exists.
        let mut f = clean();
        f.answers[3] = answer(2, "k2", "reserved", Some("r2"));
        f.answers.push(answer(3, "k5", "reserved", Some("r4")));
        f.released = 1;
        f.released_ids = vec!["r0".into()];
        assert!(failed(&f).contains(&"no oversell"), "{:?}", failed(&f));
        // A released reservation frees its buyer's allowance, a held one
        // does not.
        let mut g = clean();
        g.answers[4] = answer(0, "k3", "reserved", Some("r3"));
        g.released = 1;
        g.released_ids = vec!["r1".into()];
        assert!(failed(&g).contains(&"no duplicates"), "{:?}", failed(&g));
        // A unit of the stock never sold while buyers were turned away.
        let mut h = clean();
        h.stock = 3;
        h.remaining = 1;
        h.released = 1;
        h.sold = 1;
        h.released_ids = vec!["r1".into()];
        assert!(
            failed(&h).contains(&"sold == min(stock, demand)"),
            "{:?}",
            failed(&h)
        );
    }

    #[test]
    fn drift_and_pending_are_caught() {
        let mut f = clean();
        f.drift = 1;
        assert_eq!(failed(&f), vec!["conservation"]);
        let mut f = clean();
        f.pending = 1;
        assert_eq!(failed(&f), vec!["settled"]);
        // A rebuild that does not add up to the stock.
        let mut f = clean();
        f.rebuilt = (2, 1);
        assert_eq!(failed(&f), vec!["conservation"]);
    }

    #[test]
    fn the_plan_is_reproducible_and_retries_keys() {
        let a = plan(7, 1000, 100, 20, "p-");
        assert_eq!(a, plan(7, 1000, 100, 20, "p-"));
        let distinct: HashSet<&str> = a.iter().map(|x| x.key.as_str()).collect();
        assert!(
            distinct.len() < 1000 && distinct.len() > 600,
            "{}",
            distinct.len()
        );
        assert!(a.iter().all(|x| x.buyer < 100));
    }

    #[test]
    fn answers_are_labelled_by_status_and_code() {
        assert_eq!(outcome_of(201, false, b""), "reserved");
        assert_eq!(outcome_of(201, true, b""), "replayed");
        assert_eq!(
            outcome_of(409, false, br#"{"error": {"code": "sold_out"}}"#),
            "sold_out"
        );
        assert_eq!(outcome_of(502, false, b"<html>"), "http_error");
        assert_eq!(
            refusal_of(br#"{"error":{"code":"sold_out","message":"x"}}"#),
            "sold_out"
        );
        assert_eq!(refusal_of(br#"{"error":{"code":"nope"}}"#), "http_error");
        assert_eq!(refusal_of(b"<html>"), "http_error");
        assert_eq!(refusal_of(br#"{"error":{"code":"#), "http_error");
    }
}
