//! `flashmall bench`: the bench suite's command line. Each bench runs
//! against what it is given, or starts what it needs here: `seckill` a
//! throwaway stack (`--url` for a running one), `proxy` its upstream, the
//! edge and nginx, `peer` a redis-server, two throwaway stacks on it and
//! the nginx + Lua peer, `redis` a redis-server (`--redis` for a running
//! one).
//! Every run prints its Markdown summary and writes JSON, Markdown and SVG
//! into `--out`.

use std::path::PathBuf;

use flashmall_bench::fairness::{FairnessOptions, FairnessReport};
use flashmall_bench::fault::{Fault, FaultyRedis};
use flashmall_bench::peer::{Comparison, Round};
use flashmall_bench::proxy::ProxyOptions;
use flashmall_bench::redis::RedisOptions;
use flashmall_bench::report::{Machine, Output, write_files};
use flashmall_bench::seckill::{FaultPlan, SeckillOptions, SeckillReport, Target};

use crate::stack::Throwaway;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Bench {
    /// A flash sale under load through the edge, checked against the ledger.
    Seckill(SeckillArgs),
    /// One trivial upstream: direct, through the flashmall edge, through nginx.
    Proxy {
        #[command(flatten)]
        options: ProxyOptions,
        #[command(flatten)]
        output: Output,
    },
    /// Serves the proxy bench's trivial upstream on `--listen` until
    /// stopped (to measure running proxies with `bench proxy --direct`).
    Upstream {
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// The demo's seckill against `scripts/cluster`'s cluster while a
    /// schedule of faults strikes it; checks every invariant after.
    Chaos(Box<crate::chaos::ChaosArgs>),
    /// The same seckill storm against flashmall (durable and fast ack) and
    /// against the classic nginx + Lua + Redis stack (bench/peers/nginx-lua)
    /// on one redis-server: the ratios, and every check each is held to.
    Peer(PeerArgs),
    /// The engine's reserve call against redis-benchmark EVALSHA.
    Redis {
        #[command(flatten)]
        options: RedisOptions,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct SeckillArgs {
    #[command(flatten)]
    pub options: SeckillOptions,
    /// A running stack's edge (`http://host:port`); default: a throwaway
    /// stack in this process.
    #[arg(long)]
    pub url: Option<String>,
    /// With `--url`: the edge's admin address (`http://host:port` of
    /// `proxy.admin_listen`), to count the purchases its sold-out gate
    /// answered; without it that count is reported unknown.
    #[arg(long)]
    pub edge_admin: Option<String>,
    /// The admin the bench creates sales as (with `--url`).
    #[arg(long, default_value = "admin@bench.flashmall")]
    pub admin_email: String,
    /// A file holding its password (with `--url`; a mounted Secret, say).
    #[arg(long)]
    pub admin_password_file: Option<PathBuf>,
    /// Throwaway stack: Redis URL of the stock front (default in-process).
    #[arg(long)]
    pub redis: Option<String>,
    /// Throwaway stack: answer purchases right after the Redis script.
    #[arg(long)]
    pub fast_ack: bool,
    /// Throwaway stack on a Redis topology the bench starts, struck by
    /// this fault mid-storm (see `--fault-at`).
    #[arg(long, value_enum)]
    pub fault: Option<Fault>,
    /// When the fault strikes, after the opening (`1.5s`, `800ms`).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub fault_at: std::time::Duration,
    /// Instead of the storm: the same buyers, with fast and slow clients,
    /// against a sale without and one with a waiting room; who wins by
    /// client speed and arrival (`--buyers`, `--stock`, `--per-user-limit`,
    /// `--seed` and the options below shape it).
    #[arg(long)]
    pub waiting_room: bool,
    #[command(flatten)]
    pub fairness: FairnessOptions,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// The storm's shape, the same for every stack (the sold-out gate phase
    /// is left out: the peer has no gate).
    #[command(flatten)]
    pub options: SeckillOptions,
    /// Rounds; each runs flashmall with durable ack, flashmall with fast
    /// ack, then the peer.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// The peer's nginx worker processes (default: one per core, nginx's
    /// `auto`).
    #[arg(long)]
    pub peer_workers: Option<usize>,
    #[command(flatten)]
    pub output: Output,
}

const LOCAL_ADMIN_PASSWORD: &str = "bench admin password 0123";

/// The target of a running stack (`--url`), its admin's password read
/// from `--admin-password-file`.
fn remote_target(args: &SeckillArgs, url: &str) -> Result<Target, String> {
    if args.redis.is_some() || args.fast_ack || args.fault.is_some() {
        return Err("--redis, --fast-ack and --fault shape a throwaway stack; with --url the running stack's config decides".into());
    }
    let file = args
        .admin_password_file
        .as_ref()
        .ok_or("with --url, give the admin's password in --admin-password-file")?;
    let password = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .trim_end_matches(['\r', '\n'])
        .to_owned();
    Ok(Target {
        base: url.to_owned(),
        admin_email: args.admin_email.clone(),
        admin_password: password,
        edge_admin: args.edge_admin.clone(),
    })
}

/// A throwaway stack on `redis` (in-process when `None`), with the bench's
/// admin registered; its target.
async fn throwaway(
    args: &SeckillArgs,
    redis: Option<String>,
) -> Result<(crate::stack::Stack, tempfile::TempDir, Target), String> {
    let (stack, data) = Throwaway {
        redis,
        fast_ack: args.fast_ack,
        max_quantity: args.options.per_user_limit,
        payment_timeout: std::time::Duration::from_secs(900),
    }
    .start()
    .await?;
    stack
        .register_admin(&args.admin_email, LOCAL_ADMIN_PASSWORD)
        .await?;
    let target = Target {
        base: stack.base(),
        admin_email: args.admin_email.clone(),
        admin_password: LOCAL_ADMIN_PASSWORD.to_owned(),
        edge_admin: Some(stack.admin_base()),
    };
    Ok((stack, data, target))
}

/// Runs a seckill bench: against `--url`, or a throwaway stack.
pub async fn seckill(args: &SeckillArgs) -> Result<SeckillReport, String> {
    let visible = !args.output.quiet;
    if let Some(url) = &args.url {
        let target = remote_target(args, url)?;
        return flashmall_bench::seckill::run(&target, &args.options, None, visible).await;
    }
    let faulty = match args.fault {
        Some(_) if args.redis.is_some() => {
            return Err("--fault starts its own Redis topology; leave out --redis".into());
        }
        Some(fault) => Some(FaultyRedis::start(fault).await?),
        None => None,
    };
    let redis = match &faulty {
        Some(f) => Some(f.url().to_owned()),
        None => args.redis.clone(),
    };
    let (stack, _data, target) = throwaway(args, redis).await?;
    let plan = faulty.as_ref().map(|redis| FaultPlan {
        redis,
        at: args.fault_at,
    });
    let report = flashmall_bench::seckill::run(&target, &args.options, plan, visible).await;
    stack.stop().await;
    report
}

/// Runs the waiting-room bench (`seckill --waiting-room`): against
/// `--url`, or a throwaway stack.
pub async fn waiting_room(args: &SeckillArgs) -> Result<FairnessReport, String> {
    let visible = !args.output.quiet;
    if args.fault.is_some() {
        return Err("--waiting-room strikes no fault; leave out --fault".into());
    }
    if let Some(url) = &args.url {
        let target = remote_target(args, url)?;
        return flashmall_bench::fairness::run(&target, &args.options, &args.fairness, visible)
            .await;
    }
    let (stack, _data, target) = throwaway(args, args.redis.clone()).await?;
    let report =
        flashmall_bench::fairness::run(&target, &args.options, &args.fairness, visible).await;
    stack.stop().await;
    report
}

/// Runs the seckill storm against flashmall (durable, then fast ack, each a
/// throwaway stack) and the nginx + Lua peer, on one redis-server started
/// here, `--rounds` times.
pub async fn peer(args: &PeerArgs) -> Result<Comparison, String> {
    if !(1..=20).contains(&args.rounds) {
        return Err("--rounds must be between 1 and 20".into());
    }
    let options = SeckillOptions {
        gate_seconds: 0.0,
        ..args.options.clone()
    };
    options.validate()?;
    let workers = args.peer_workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if !(1..=64).contains(&workers) {
        return Err("--peer-workers must be between 1 and 64".into());
    }
    // Refuse before the long flashmall runs when the peer cannot start.
    flashmall_bench::peer::preflight()?;
    let redis = flashmall_bench::servers::redis_server()?;
    let on_redis = |fast_ack| SeckillArgs {
        options: options.clone(),
        url: None,
        edge_admin: None,
        admin_email: "admin@bench.flashmall".into(),
        admin_password_file: None,
        redis: Some(format!("redis://{}", redis.addr)),
        fast_ack,
        fault: None,
        fault_at: std::time::Duration::from_secs(1),
        waiting_room: false,
        fairness: FairnessOptions::default(),
        output: args.output.clone(),
    };
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        let durable = seckill(&on_redis(false)).await?;
        let fast_ack = seckill(&on_redis(true)).await?;
        let peer =
            flashmall_bench::peer::run(&options, redis.addr, workers, !args.output.quiet).await?;
        rounds.push(Round {
            durable,
            fast_ack,
            peer,
        });
    }
    Ok(Comparison {
        machine: Machine::this(),
        options,
        peer_workers: workers,
        rounds,
    })
}

/// Runs the chosen bench, prints its summary and writes its files; false
/// when an invariant failed.
pub async fn run(bench: &Bench) -> Result<bool, String> {
    let (name, output, json, markdown, svg, held) = match bench {
        Bench::Seckill(args) if args.waiting_room => {
            let r = waiting_room(args).await?;
            (
                "seckill-waiting-room",
                &args.output,
                serde_json::to_value(&r),
                r.markdown(),
                r.svg(),
                r.invariants_hold(),
            )
        }
        Bench::Seckill(args) => {
            let r = seckill(args).await?;
            (
                "seckill",
                &args.output,
                serde_json::to_value(&r),
                r.markdown(),
                r.svg(),
                r.invariants_hold(),
            )
        }
        Bench::Proxy { options, output } => {
            let r = flashmall_bench::proxy::run(options, !output.quiet).await?;
            (
                "proxy",
                output,
                serde_json::to_value(&r),
                r.markdown(),
                r.svg(),
                r.all_answered(),
            )
        }
        Bench::Upstream { listen } => {
            let upstream = flashmall_bench::servers::Upstream::bind(*listen).await?;
            println!("serving the bench upstream on http://{}", upstream.addr);
            let stop = flashmall_mesh::Shutdown::new();
            stop.trigger_on_signals();
            stop.wait().await;
            return Ok(true);
        }
        Bench::Chaos(args) => {
            let r = crate::chaos::run(args).await?;
            (
                "chaos",
                &args.output,
                serde_json::to_value(&r),
                r.markdown(),
                r.svg(),
                r.invariants_hold(),
            )
        }
        Bench::Peer(args) => {
            let r = peer(args).await?;
            (
                "peer",
                &args.output,
                serde_json::to_value(&r),
                r.markdown(),
                r.svg(),
                r.invariants_hold(),
            )
        }
        Bench::Redis { options, output } => {
            let r = flashmall_bench::redis::run(options, !output.quiet).await?;
            (
                "redis",
                output,
                serde_json::to_value(&r),
                r.markdown(),
                r.svg(),
                r.invariants_hold(),
            )
        }
    };
    let json = json.map_err(|e| e.to_string())?;
    let written = write_files(&output.out, name, &json, &markdown, &svg)?;
    println!("{markdown}");
    println!("written: {}", written.join(", "));
    Ok(held)
}
