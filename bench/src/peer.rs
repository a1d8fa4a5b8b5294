//! The classic seckill stack as a reference peer: nginx with Debian's Lua
//! module running the engine's own reserve script on redis-server by
//! `EVALSHA`, with no ledger and no token check (`bench/peers/nginx-lua`,
//! whose README says what it does and does not).
//!
//! [`run`] sends a seckill's storm to the peer and checks what the peer
//! can be checked on: no oversell, sold == min(stock, demand), no key
//! granted twice and no buyer past the limit, every 201 recorded in Redis,
//! and the sale's units conserved in Redis. `flashmall bench peer` sends
//! the same storm (same plan, same connections) to flashmall, with durable
//! and with fast acknowledgement, on the same redis-server, and
//! [`Comparison`] reports the three side by side.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use flashmall_engine::config::RedisConfig;
use flashmall_engine::front::{RedisFront, StockFront, reserve_call};
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use uuid::Uuid;

use crate::chart::{Panel, Series};
use crate::http::Endpoint;
use crate::load::Mode;
use crate::phases::{self, Facts, Sale};
use crate::progress::Progress;
use crate::report::{Bucket, Machine, PhaseRates, Summary, latency_cells, timeline};
use crate::seckill::{Check, SeckillOptions, SeckillReport, check, checks_table, tagged_plan};
use crate::servers::{self, Process};

const CONFIG: &str = include_str!("../peers/nginx-lua/nginx.conf.in");
/// The peer's Lua files, written beside its config.
const FILES: [(&str, &str); 2] = [
    (
        "purchase.lua",
        include_str!("../peers/nginx-lua/purchase.lua"),
    ),
    ("resp.lua", include_str!("../peers/nginx-lua/resp.lua")),
];

/// nginx's Lua module, from Debian's `libnginx-mod-http-lua`.
pub const LUA_MODULE: &str = "/usr/lib/nginx/modules/ngx_http_lua_module.so";

/// The key prefix the peer's config gives its handler (the engine's default).
const PREFIX: &str = "fm";

/// The header the peer takes the buyer from (a gateway's, unverified).
const USER_HEADER: HeaderName = HeaderName::from_static("x-user-id");

/// The peer's nginx.conf: the template with its placeholders filled.
pub fn config(dir: &Path, listen: SocketAddr, redis: SocketAddr, workers: usize) -> String {
    let d = dir.display().to_string();
    CONFIG
        .replace("@DIR@", &d)
        .replace("@PEER@", &d)
        .replace("@SCRIPT@", &format!("{d}/reserve.lua"))
        .replace("@PORT@", &listen.port().to_string())
        .replace("@WORKERS@", &workers.to_string())
        .replace("@REDIS_HOST@", &redis.ip().to_string())
        .replace("@REDIS_PORT@", &redis.port().to_string())
}

/// Whether the peer can start here: nginx and its Lua module installed.
pub fn preflight() -> Result<(), String> {
    servers::find_program("nginx").ok_or(
        "nginx is not installed: apt-get install nginx-light (scripts/test installs it when root)",
    )?;
    if !Path::new(LUA_MODULE).is_file() {
        return Err(format!(
            "nginx's Lua module is missing ({LUA_MODULE}): install Debian's libnginx-mod-http-lua (scripts/test installs it when root)"
        ));
    }
    Ok(())
}

/// The peer's nginx on a free loopback port, `workers` worker processes,
/// its sales in the Redis at `redis`; stopped (with its workers) on drop.
pub fn start(redis: SocketAddr, workers: usize) -> Result<Process, String> {
    preflight()?;
    if workers == 0 {
        return Err("the peer needs at least one nginx worker".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    // The paths go into nginx.conf and Lua strings unquoted.
    let path = d.display().to_string();
    if !path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c))
    {
        return Err(format!(
            "the temporary directory {path:?} holds characters nginx.conf cannot take unquoted; set TMPDIR to a plain path"
        ));
    }
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).map_err(|e| format!("cannot write {name}: {e}"))
    };
    for (name, text) in FILES {
        write(name, text)?;
    }
    write("reserve.lua", reserve_call(PREFIX, Uuid::nil()).0)?;
    std::fs::create_dir_all(d.join("tmp")).map_err(|e| e.to_string())?;
    let listen = servers::free_addr()?;
    let conf = d.join("nginx.conf");
    std::fs::write(&conf, config(d, listen, redis, workers)).map_err(|e| e.to_string())?;
    servers::spawn_nginx(dir, &conf, listen, &["-g", "daemon off;"])
}

/// Loads a sale into the peer's Redis: `stock` units, at most `limit` per
/// buyer (`scripts/peer sale`, for a sale id never used before).
pub fn load_sale(redis: SocketAddr, sale: Uuid, stock: i64, limit: i64) -> Result<(), String> {
    let (_, _, keys) = reserve_call(PREFIX, sale);
    let stock_key = keys.first().ok_or("the reserve call names no keys")?;
    servers::redis_command(redis, &["SET", stock_key, &stock.to_string()])?;
    servers::redis_command(
        redis,
        &["SET", &format!("peer:{{{sale}}}:limit"), &limit.to_string()],
    )?;
    Ok(())
}

/// What a storm against the peer measured and checked.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub machine: Machine,
    pub target: String,
    pub workers: usize,
    pub mode: Mode,
    pub storm: Summary,
    pub phases: PhaseRates,
    pub timeline: Vec<Bucket>,
    /// Units the sale's Redis counts as taken.
    pub sold: i64,
    pub remaining: i64,
    pub checks: Vec<Check>,
}

impl PeerReport {
    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.held)
    }
}

/// The checks the peer can be held to, from what its clients were told and
/// what its Redis holds: the seckill's own checks, except the two that need
/// a ledger ("every 201 in the ledger" becomes "every 201 in Redis"; the
/// peer settles nothing), and conservation read from Redis.
pub fn peer_checks(f: &Facts, idem_units: i64) -> Vec<Check> {
    let granted: HashSet<&String> = f
        .answers
        .iter()
        .filter_map(|a| a.reservation_id.as_ref())
        .collect();
    check(f)
        .into_iter()
        .filter_map(|c| match c.name {
            "settled" => None,
            "every 201 in the ledger" => Some(Check {
                name: "every 201 in Redis",
                held: f.missing_in_ledger.is_empty(),
                detail: format!(
                    "{} of {} acknowledged reservations have no idempotency record in Redis (the peer has no ledger){}",
                    f.missing_in_ledger.len(),
                    granted.len(),
                    f.missing_in_ledger
                        .first()
                        .map(|id| format!(" (e.g. {id})"))
                        .unwrap_or_default()
                ),
            }),
            "conservation" => Some(Check {
                name: "conservation",
                held: f.remaining >= 0
                    && f.remaining + f.sold == f.stock
                    && idem_units == f.sold,
                detail: format!(
                    "Redis: {} units left + {} taken = {} of {}; {idem_units} units in the idempotency records",
                    f.remaining,
                    f.sold,
                    f.remaining + f.sold,
                    f.stock
                ),
            }),
            _ => Some(c),
        })
        .collect()
}

/// A storm of `options`' shape against a peer started here on the Redis
/// at `redis` (`workers` nginx workers): the plan's attempts after its
/// early ones (the peer has no opening time), each buyer named by
/// `X-User-Id`, then the checks against Redis.
pub async fn run(
    options: &SeckillOptions,
    redis: SocketAddr,
    workers: usize,
    visible: bool,
) -> Result<PeerReport, String> {
    options.validate()?;
    let nginx = start(redis, workers)?;
    let endpoint = Endpoint::local(nginx.addr);
    let uuid = Uuid::now_v7();
    load_sale(redis, uuid, options.stock, options.per_user_limit)?;
    let sale = Sale::at(
        &endpoint.base,
        uuid.to_string(),
        Instant::now() + phases::lead(options.connections),
    )?;
    let (run_tag, attempts) = tagged_plan(options);
    let early = options.early.min(attempts.len());
    let users: Arc<Vec<HeaderValue>> = Arc::new(
        (0..options.buyers)
            .map(|i| HeaderValue::from_str(&format!("b{i}.{run_tag}")).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
    );
    let progress = Progress::start("peer", (attempts.len() - early) as u64, visible);
    let stormed = phases::storm(
        phases::Storm {
            endpoint: &endpoint,
            sale: &sale,
            identity: USER_HEADER,
            tokens: &users,
            attempts: &attempts[early..],
            mode: options.mode(),
            retries: 0,
            wins: None,
        },
        &progress,
    )
    .await;
    progress.finish();
    let stormed = stormed?;

    let front = RedisFront::connect(&RedisConfig {
        url: format!("redis://{redis}"),
        ..RedisConfig::default()
    })
    .await
    .map_err(|e| format!("cannot read the peer's Redis: {e}"))?;
    let read = async {
        let counts = front.counts(uuid).await.map_err(|e| e.to_string())?;
        let records = front
            .idempotency_records(uuid)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((counts, records))
    }
    .await;
    front.close().await;
    let (counts, records) = read?;
    let counts = counts.ok_or("the peer's sale has no stock in Redis after the storm")?;
    let recorded: HashSet<Uuid> = records.values().map(|r| r.reservation_id).collect();
    let idem_units = records.values().map(|r| r.quantity).sum();
    let mut missing: Vec<String> = stormed
        .granted()
        .filter(|id| !Uuid::try_parse(id).is_ok_and(|u| recorded.contains(&u)))
        .cloned()
        .collect();
    missing.sort();
    missing.dedup();
    let facts = Facts {
        stock: options.stock,
        per_user_limit: options.per_user_limit,
        answers: stormed.answers.clone(),
        sold: counts.pending,
        remaining: counts.remaining,
        missing_in_ledger: missing,
        ..Facts::default()
    };
    let recording = &stormed.recording;
    Ok(PeerReport {
        machine: Machine::this(),
        target: endpoint.base.clone(),
        workers,
        mode: options.mode(),
        storm: Summary::of(recording),
        phases: PhaseRates::of(recording),
        timeline: timeline(&recording.samples, recording.elapsed.as_micros() as u64),
        sold: counts.pending,
        remaining: counts.remaining,
        checks: peer_checks(&facts, idem_units),
    })
}

/// One round of the comparison: the same storm against each stack.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub durable: SeckillReport,
    pub fast_ack: SeckillReport,
    pub peer: PeerReport,
}

/// flashmall (durable and fast acknowledgement) beside the nginx + Lua peer,
/// the same storms on the same redis-server, in rounds of alternating turns.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub machine: Machine,
    pub options: SeckillOptions,
    pub peer_workers: usize,
    pub rounds: Vec<Round>,
}

/// One stack's storm in one round, for the report's tables.
struct StackRun<'a> {
    round: usize,
    name: &'static str,
    storm: &'a Summary,
    phases: &'a PhaseRates,
    sold: i64,
    checks: &'a [Check],
}

/// A ratio's cell: `a ÷ b` to two places, `-` without both.
fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

impl Comparison {
    pub fn invariants_hold(&self) -> bool {
        self.rounds.iter().all(|r| {
            r.durable.invariants_hold() && r.fast_ack.invariants_hold() && r.peer.invariants_hold()
        })
    }

    /// Each stack of each round, in the order they ran.
    fn runs(&self) -> Vec<StackRun<'_>> {
        let mut out = Vec::new();
        for (n, r) in self.rounds.iter().enumerate() {
            let round = n + 1;
            for (name, f) in [
                ("flashmall, durable ack", &r.durable),
                ("flashmall, fast ack", &r.fast_ack),
            ] {
                out.push(StackRun {
                    round,
                    name,
                    storm: &f.storm,
                    phases: &f.phases,
                    sold: f.sold,
                    checks: &f.checks,
                });
            }
            out.push(StackRun {
                round,
                name: "nginx + Lua peer",
                storm: &r.peer.storm,
                phases: &r.peer.phases,
                sold: r.peer.sold,
                checks: &r.peer.checks,
            });
        }
        out
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## seckill against the nginx + Lua peer: {} units, {} attempts, {} buyers (limit {})\n",
            o.stock,
            o.attempts.saturating_sub(o.early),
            o.buyers,
            o.per_user_limit
        );
        let _ = writeln!(
            t,
            "{}; one redis-server for all three; the peer with {} nginx workers; {} cores, {} build. The same plan of attempts (seed {}, {}% retries of a key) against each, in turns.\n",
            o.mode().describe(),
            self.peer_workers,
            self.machine.cores,
            self.machine.build,
            o.seed,
            o.retry_percent
        );
        let _ = writeln!(
            t,
            "| round | stack | answers/s | while units remained | after the last reservation | p50 / p90 / p99 / p99.9 / max (ms) | sold | checks |\n|---|---|---|---|---|---|---|---|"
        );
        for run in self.runs() {
            let (selling, sold_out) = run.phases.cells();
            let held = run.checks.iter().filter(|c| c.held).count();
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} | {selling} | {sold_out} | {} | {} | {held} of {} held |",
                run.round,
                run.name,
                run.storm.throughput,
                latency_cells(&run.storm.latency).replace(" | ", " / "),
                run.sold,
                run.checks.len()
            );
        }
        let _ = writeln!(
            t,
            "\nRatios, flashmall ÷ peer (throughput: above 1 is faster; p99: above 1 is slower):\n\n| round | flashmall | answers/s | while units remained | after the last reservation | p99 |\n|---|---|---|---|---|---|"
        );
        for (n, r) in self.rounds.iter().enumerate() {
            let p = &r.peer;
            for (name, f) in [("durable ack", &r.durable), ("fast ack", &r.fast_ack)] {
                let _ = writeln!(
                    t,
                    "| {} | {name} | {} | {} | {} | {} |",
                    n + 1,
                    ratio(Some(f.storm.throughput), Some(p.storm.throughput)),
                    ratio(f.phases.selling_per_second, p.phases.selling_per_second),
                    ratio(f.phases.sold_out_per_second, p.phases.sold_out_per_second),
                    ratio(Some(f.storm.latency.p99_ms), Some(p.storm.latency.p99_ms)),
                );
            }
        }
        t.push_str(
            "\nflashmall verifies a JWT per purchase and, with durable ack, answers 201 only once the reservation is in its ledger; fast ack answers after the Redis script, as the peer does, and settles behind. The peer checks no token (a gateway's header names the buyer) and keeps nothing but Redis: it cannot be checked on \"every 201 in the ledger\" or \"settled\", and a Redis failover or restart loses its grants.\n",
        );
        for run in self.runs() {
            let _ = writeln!(t, "\n### Round {}, {}\n", run.round, run.name);
            t.push_str(&checks_table(run.checks));
        }
        t
    }

    /// Answers per second and p99 over the storm, the three stacks of the
    /// first round on one time axis.
    pub fn svg(&self) -> String {
        let Some(r) = self.rounds.first() else {
            return crate::chart::svg("no round ran", &[]);
        };
        let stacks = [
            ("flashmall, durable ack", &r.durable.timeline),
            ("flashmall, fast ack", &r.fast_ack.timeline),
            ("nginx + Lua peer", &r.peer.timeline),
        ];
        let panel = |title: &str, value: fn(&Bucket) -> f64| Panel {
            title: title.into(),
            series: stacks
                .iter()
                .map(|(name, timeline)| Series {
                    name: (*name).into(),
                    points: timeline.iter().map(|b| (b.t_s, value(b))).collect(),
                })
                .collect(),
        };
        crate::chart::svg(
            &format!(
                "seckill storm, {} units: flashmall beside the nginx + Lua peer",
                self.options.stock
            ),
            &[
                panel("purchase answers per second", |b| b.per_second),
                panel("purchase p99 (ms)", |b| b.p99_ms),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phases::Answered;

    #[test]
    fn the_peer_config_has_every_placeholder_filled() {
        let c = config(
            Path::new("/tmp/peer"),
            "127.0.0.1:18080".parse().unwrap(),
            "127.0.0.1:6399".parse().unwrap(),
            2,
        );
        let active: Vec<&str> = c
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect();
        assert!(
            active
                .iter()
                .all(|l| !l.contains('@') || l.contains("@too_large")),
            "{c}"
        );
        assert!(c.contains("worker_processes 2;"));
        assert!(c.contains("listen 127.0.0.1:18080 backlog=4096;"));
        assert!(c.contains("redis_port = 6399,") && c.contains("redis_host = \"127.0.0.1\""));
        assert!(c.contains("script = \"/tmp/peer/reserve.lua\""));
        assert!(!c.contains("daemon"), "the bench passes daemon off itself");
    }

    fn answer(buyer: usize, key: &str, outcome: &'static str, id: Option<&str>) -> Answered {
        Answered {
            buyer,
            key: key.into(),
            outcome,
            reservation_id: id.map(str::to_owned),
        }
    }

    #[test]
    fn the_peer_is_held_to_what_redis_shows() {
        let id = Uuid::now_v7().to_string();
        let facts = Facts {
            stock: 1,
            per_user_limit: 1,
            answers: vec![
                answer(0, "k0", "reserved", Some(&id)),
                answer(0, "k0", "replayed", Some(&id)),
                answer(1, "k1", "sold_out", None),
            ],
            sold: 1,
            remaining: 0,
            ..Facts::default()
        };
        let checks = peer_checks(&facts, 1);
        let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
        assert_eq!(
            names,
            [
                "no oversell",
                "sold == min(stock, demand)",
                "no duplicates",
                "every 201 in Redis",
                "conservation"
            ]
        );
        assert!(checks.iter().all(|c| c.held), "{checks:?}");

        // A grant Redis does not record, and a unit Redis lost.
        let lost = Facts {
            missing_in_ledger: vec![id.clone()],
            remaining: 1,
            ..facts
        };
        let checks = peer_checks(&lost, 1);
        let failed: Vec<&str> = checks.iter().filter(|c| !c.held).map(|c| c.name).collect();
        assert_eq!(failed, ["every 201 in Redis", "conservation"], "{checks:?}");
    }
}
