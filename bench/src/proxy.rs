//! `flashmall bench proxy`: what the edge costs. One trivial upstream,
//! reached three ways with the same load in one run, one after the other:
//!
//! - **direct**: the load generator to the upstream;
//! - **flashmall**: through the edge with every check on: a JWT verified on
//!   each request, the blacklist (with entries) and access rules consulted,
//!   both rate limits counted (set high enough never to refuse), the mesh
//!   identity signed for the upstream;
//! - **nginx**: through Debian's nginx with a plain `proxy_pass`.
//!
//! Without `--edge`, the bench starts all three here (the upstream, the
//! edge in front of it, nginx in front of it). With `--direct`, `--edge`,
//! `--nginx` and `--token-file` it measures running ones instead: an
//! upstream (`flashmall bench upstream` serves the same trivial answer),
//! an edge routing `--path` to it, an nginx proxying to it.
//!
//! The three take turns for `--rounds` rounds, so a drift of the machine
//! (another process, a frequency change) falls on all three alike; each
//! turn warms up for half a second, unrecorded, and a path's figures are
//! over all its turns. The ratios compare flashmall with nginx (throughput
//! and p99) and both with direct.
//!
//! Then `wrk` (when installed) takes the same turns on the same paths with
//! the same connections, so the driver's ratios stand beside those of a
//! client the project did not write.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flashmall_mesh::{IdentityKey, Role};
use flashmall_proxy::config::{LimitConfig, ProxyConfig, RouteConfig};
use flashmall_proxy::state::{AccessRule, BlacklistEntry, Effect};
use flashmall_proxy::{ProxySettings, RunningProxy};
use http::{HeaderValue, Method};
use serde::Serialize;

use crate::chart::{Panel, Series};
use crate::http::{Conn, Endpoint};
use crate::load::{self, Job, Mode, Recording};
use crate::progress::Progress;
use crate::report::{Bucket, Machine, Summary, latency_cells, timeline};
use crate::servers::{Process, Upstream, free_addr, nginx};
use crate::wrk::{self, WrkRun};

/// The shape of a proxy run.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ProxyOptions {
    /// Connections, the same for every phase (closed loop).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds each phase is measured.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Worker threads of the flashmall edge, and worker processes of nginx.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Turns each path gets, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// A running upstream (`http://host:port`); with --edge and --nginx.
    #[arg(long)]
    pub direct: Option<String>,
    /// A running flashmall edge routing --path to that upstream.
    #[arg(long)]
    pub edge: Option<String>,
    /// A running nginx proxying to that upstream.
    #[arg(long)]
    pub nginx: Option<String>,
    /// A file holding an access token the running edge accepts.
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// The path requested on every path.
    #[arg(long, default_value = "/bench/item")]
    pub path: String,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connections: 64,
            seconds: 5.0,
            workers: 2,
            rounds: 3,
            direct: None,
            edge: None,
            nginx: None,
            token_file: None,
            path: "/bench/item".into(),
        }
    }
}

/// One way to the upstream.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: &'static str,
    pub summary: Summary,
    pub timeline: Vec<Bucket>,
}

/// What a proxy run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyReport {
    pub machine: Machine,
    pub options: ProxyOptions,
    pub phases: Vec<Phase>,
    /// flashmall answers/s ÷ nginx answers/s (target ≥ 1.0).
    pub throughput_vs_nginx: f64,
    /// flashmall p99 ÷ nginx p99 (target ≤ 1.2).
    pub p99_vs_nginx: f64,
    /// Each proxy's answers/s ÷ direct answers/s.
    pub flashmall_vs_direct: f64,
    pub nginx_vs_direct: f64,
    /// The same paths measured by `wrk`; `None` when it is not installed.
    pub wrk: Option<WrkPaths>,
}

/// The paths as `wrk` measured them (whole seconds per turn, wrk's unit).
#[derive(Debug, Clone, Serialize)]
pub struct WrkPaths {
    pub phases: Vec<WrkPhase>,
    /// flashmall answers/s ÷ nginx answers/s, as wrk counted them.
    pub throughput_vs_nginx: f64,
    /// flashmall p99 ÷ nginx p99 (each the mean of its turns' p99).
    pub p99_vs_nginx: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WrkPhase {
    pub name: &'static str,
    pub run: WrkRun,
}

impl ProxyReport {
    /// True when every phase answered only 200s, for wrk too.
    pub fn all_answered(&self) -> bool {
        self.phases
            .iter()
            .all(|p| p.summary.requests > 0 && p.summary.outcomes.keys().all(|k| k == "ok"))
            && self
                .wrk
                .iter()
                .flat_map(|w| &w.phases)
                .all(|p| p.run.requests > 0 && p.run.non_2xx == 0)
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "## proxy: one trivial upstream, {} connections, {} rounds of {:.0} s per path, {} edge threads / nginx workers\n",
            o.connections, o.rounds, o.seconds, o.workers
        );
        let _ = writeln!(
            t,
            "{} cores, {} build.\n",
            self.machine.cores, self.machine.build
        );
        let _ = writeln!(
            t,
            "| path | answers/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | outcomes |\n|---|---|---|---|---|---|---|---|"
        );
        for p in &self.phases {
            let outcomes: Vec<String> = p
                .summary
                .outcomes
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            let _ = writeln!(
                t,
                "| {} | {:.0} | {} | {} |",
                p.name,
                p.summary.throughput,
                latency_cells(&p.summary.latency),
                outcomes.join(", ")
            );
        }
        let _ = writeln!(
            t,
            "\nflashmall ÷ nginx: throughput {:.2} (target ≥ 1.0), p99 {:.2} (target ≤ 1.2). Against direct: flashmall {:.2}, nginx {:.2}.",
            self.throughput_vs_nginx,
            self.p99_vs_nginx,
            self.flashmall_vs_direct,
            self.nginx_vs_direct
        );
        match &self.wrk {
            Some(w) => {
                let _ = writeln!(
                    t,
                    "\nThe same paths with `wrk -t2 -c{} --latency` (a Lua request per call), {} rounds of {:.0} s:\n\n| path | answers/s | p50 ms | p99 ms | not 2xx | socket errors |\n|---|---|---|---|---|---|",
                    o.connections,
                    o.rounds,
                    o.seconds.ceil().max(1.0)
                );
                for p in &w.phases {
                    let r = &p.run;
                    let _ = writeln!(
                        t,
                        "| {} | {:.0} | {:.2} | {:.2} | {} | {} |",
                        p.name, r.per_second, r.p50_ms, r.p99_ms, r.non_2xx, r.socket_errors
                    );
                }
                let _ = writeln!(
                    t,
                    "\nwrk: flashmall ÷ nginx: throughput {:.2}, p99 {:.2}.",
                    w.throughput_vs_nginx, w.p99_vs_nginx
                );
            }
            None => t.push_str("\nwrk is not installed: the independent client did not run.\n"),
        }
        t
    }

    pub fn svg(&self) -> String {
        let mut throughput = Vec::new();
        let mut p99 = Vec::new();
        for p in &self.phases {
            throughput.push(Series {
                name: p.name.into(),
                points: p.timeline.iter().map(|b| (b.t_s, b.per_second)).collect(),
            });
            p99.push(Series {
                name: format!("{} p99", p.name),
                points: p.timeline.iter().map(|b| (b.t_s, b.p99_ms)).collect(),
            });
        }
        crate::chart::svg(
            &format!(
                "proxy: {} connections, same load on each path",
                self.options.connections
            ),
            &[
                Panel {
                    title: "answers per second".into(),
                    series: throughput,
                },
                Panel {
                    title: "latency p99 (ms)".into(),
                    series: p99,
                },
            ],
        )
    }
}

/// `GET path` with a token; the answer must be the upstream's 200.
struct Fetch {
    path: String,
    authorization: HeaderValue,
}

impl Job for Fetch {
    async fn call(&self, conn: &mut Conn, _: usize) -> Result<&'static str, String> {
        let answer = conn
            .send(
                Method::GET,
                &self.path,
                &[(http::header::AUTHORIZATION, self.authorization.clone())],
                Bytes::new(),
            )
            .await?;
        Ok(if answer.status == 200 {
            "ok"
        } else if answer.status == 429 {
            "rate_limited"
        } else {
            "http_error"
        })
    }
}

/// The edge in front of `upstream`, every check on.
async fn edge(
    upstream: std::net::SocketAddr,
    workers: usize,
    secret: &[u8],
) -> Result<RunningProxy, String> {
    let limit = |name: &str, key: &str| LimitConfig {
        name: name.into(),
        key: key.into(),
        method: "*".into(),
        path: String::new(),
        // Counted on every request, never refusing one.
        per_second: 1e9,
        burst: u32::MAX,
        scope: "local".into(),
    };
    let proxy = ProxyConfig {
        listen: free_addr()?,
        admin_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        threads: workers,
        grace_period: Duration::ZERO,
        upstreams: [("bench".to_owned(), vec![upstream.to_string()])].into(),
        routes: vec![RouteConfig {
            prefix: "/bench/".into(),
            upstream: "bench".into(),
        }],
        public: Vec::new(),
        limits: vec![limit("per-ip", "ip"), limit("per-user", "user")],
        ..ProxyConfig::default()
    };
    let running = flashmall_proxy::launch(&ProxySettings {
        proxy,
        jwt_secret: secret.to_vec(),
        identity: IdentityKey::random(),
        tls: None,
    })
    .await?;
    // A blacklist and access rules with entries, as in production.
    let store = &running.state.store;
    for i in 0..100 {
        store
            .add_blacklist(BlacklistEntry {
                id: format!("user-{i}"),
                user_id: Some(format!("banned-{i}")),
                cidr: None,
                expires_at_ms: None,
                created_at_ms: 0,
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    store
        .add_blacklist(BlacklistEntry {
            id: "net".into(),
            user_id: None,
            cidr: Some("203.0.113.0/24".parse().map_err(|e| format!("{e}"))?),
            expires_at_ms: None,
            created_at_ms: 0,
        })
        .await
        .map_err(|e| e.to_string())?;
    store
        .set_rules(vec![AccessRule {
            role: "customer".into(),
            effect: Effect::Deny,
            method: "*".into(),
            path: "^/bench/private".into(),
        }])
        .await
        .map_err(|e| e.to_string())?;
    running.state.refresh().await.map_err(|e| e.to_string())?;
    Ok(running)
}

/// One measured turn of a path (after an unrecorded warm-up).
async fn turn(
    name: &'static str,
    endpoint: &Endpoint,
    job: &Arc<Fetch>,
    options: &ProxyOptions,
    visible: bool,
) -> Result<Recording, String> {
    let mode = Mode::Closed {
        connections: options.connections,
    };
    let warm = load::Run {
        mode,
        requests: usize::MAX,
        start: None,
        duration: Some(Duration::from_millis(500)),
    };
    load::drive(
        Arc::clone(job),
        endpoint,
        warm,
        &Progress::start(name, 0, false),
    )
    .await?;
    let progress = Progress::start(name, 0, visible);
    let recording = load::drive(
        Arc::clone(job),
        endpoint,
        load::Run {
            duration: Some(Duration::from_secs_f64(options.seconds)),
            ..warm
        },
        &progress,
    )
    .await;
    progress.finish();
    recording
}

/// The three paths started here.
struct Local {
    upstream: Upstream,
    nginx: Process,
    edge: RunningProxy,
}

impl Local {
    /// Starts them, and mints a token the edge accepts.
    async fn start(workers: usize) -> Result<(Local, String), String> {
        let upstream = Upstream::start().await?;
        let nginx = nginx(upstream.addr, workers)?;
        let secret: Vec<u8> = uuid::Uuid::new_v4().as_bytes().repeat(2);
        let edge = edge(upstream.addr, workers, &secret).await?;
        let issuer = flashmall_services::auth::tokens::Issuer::new(
            &secret,
            "flashmall",
            "flashmall-api",
            Duration::from_secs(3600),
        );
        let (token, _) =
            issuer.access_token("bench-user", &[Role::Customer], uuid::Uuid::new_v4())?;
        Ok((
            Local {
                upstream,
                nginx,
                edge,
            },
            token,
        ))
    }
}

/// Runs the three phases.
pub async fn run(options: &ProxyOptions, visible: bool) -> Result<ProxyReport, String> {
    if options.connections == 0 || !(options.seconds > 0.0 && options.seconds <= 3600.0) {
        return Err("connections must be at least 1 and seconds between 0 and 3600".into());
    }
    if options.workers == 0 || options.workers > 64 {
        return Err("workers must be between 1 and 64".into());
    }
    if options.rounds == 0 || options.rounds > 100 {
        return Err("rounds must be between 1 and 100".into());
    }
    if !options.path.starts_with('/') {
        return Err("--path must start with /".into());
    }
    let running = [&options.direct, &options.edge, &options.nginx];
    let (local, token, endpoints) = if running.iter().all(|u| u.is_none()) {
        let (local, token) = Local::start(options.workers).await?;
        let endpoints = [
            Endpoint::local(local.upstream.addr),
            Endpoint::local(local.edge.addr),
            Endpoint::local(local.nginx.addr),
        ];
        (Some(local), token, endpoints)
    } else {
        let (Some(direct), Some(edge), Some(nginx), Some(file)) = (
            &options.direct,
            &options.edge,
            &options.nginx,
            &options.token_file,
        ) else {
            return Err(
                "running paths need all of --direct, --edge, --nginx and --token-file".into(),
            );
        };
        let token = std::fs::read_to_string(file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?
            .trim()
            .to_owned();
        let endpoints = [
            Endpoint::resolve(direct).await?,
            Endpoint::resolve(edge).await?,
            Endpoint::resolve(nginx).await?,
        ];
        (None, token, endpoints)
    };
    let job = Arc::new(Fetch {
        path: options.path.clone(),
        authorization: HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| format!("the token is not a header value: {e}"))?,
    });
    let paths: Vec<(&'static str, Endpoint)> = ["direct", "flashmall", "nginx"]
        .into_iter()
        .zip(endpoints)
        .collect();
    let mut turns: Vec<Vec<Recording>> = paths.iter().map(|_| Vec::new()).collect();
    let mut result = Ok(());
    'rounds: for _ in 0..options.rounds {
        for (i, (name, endpoint)) in paths.iter().enumerate() {
            match turn(name, endpoint, &job, options, visible).await {
                Ok(r) => turns[i].push(r),
                Err(e) => {
                    result = Err(format!("{name}: {e}"));
                    break 'rounds;
                }
            }
        }
    }
    let wrk = match (&result, wrk::program()) {
        (Ok(()), Some(program)) => {
            let request = wrk::Request::get(&options.path, Some(&token));
            match wrk_turns(&program, &paths, &request, options).await {
                Ok(w) => Some(w),
                Err(e) => {
                    result = Err(e);
                    None
                }
            }
        }
        _ => None,
    };
    if let Some(local) = local {
        local.edge.stop().await;
    }
    result?;
    let phases: Vec<Phase> = paths
        .iter()
        .map(|(name, _)| *name)
        .zip(turns)
        .filter_map(|(name, turns)| {
            let r = load::join(turns)?;
            Some(Phase {
                name,
                summary: Summary::of(&r),
                timeline: timeline(&r.samples, r.elapsed.as_micros() as u64),
            })
        })
        .collect();
    let rate = |name: &str| {
        phases
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| p.summary.throughput)
    };
    let p99 = |name: &str| {
        phases
            .iter()
            .find(|p| p.name == name)
            .map_or(0.0, |p| p.summary.latency.p99_ms)
    };
    Ok(ProxyReport {
        machine: Machine::this(),
        options: options.clone(),
        throughput_vs_nginx: rate("flashmall") / rate("nginx").max(1e-9),
        p99_vs_nginx: p99("flashmall") / p99("nginx").max(1e-9),
        flashmall_vs_direct: rate("flashmall") / rate("direct").max(1e-9),
        nginx_vs_direct: rate("nginx") / rate("direct").max(1e-9),
        phases,
        wrk,
    })
}

/// wrk's turns on every path, alternating as the driver's did.
async fn wrk_turns(
    program: &std::path::Path,
    paths: &[(&'static str, Endpoint)],
    request: &wrk::Request,
    options: &ProxyOptions,
) -> Result<WrkPaths, String> {
    let mut turns: Vec<Vec<WrkRun>> = paths.iter().map(|_| Vec::new()).collect();
    for _ in 0..options.rounds {
        for (i, (name, endpoint)) in paths.iter().enumerate() {
            let run = wrk::measure(
                program.to_owned(),
                endpoint.base.clone(),
                request.clone(),
                options.connections,
                options.seconds,
            )
            .await
            .map_err(|e| format!("{name} (wrk): {e}"))?;
            turns[i].push(run);
        }
    }
    let phases: Vec<WrkPhase> = paths
        .iter()
        .zip(turns)
        .filter_map(|((name, _), turns)| {
            Some(WrkPhase {
                name,
                run: WrkRun::joined(&turns)?,
            })
        })
        .collect();
    let of = |name: &str| phases.iter().find(|p| p.name == name).map(|p| &p.run);
    let (Some(edge), Some(nginx)) = (of("flashmall"), of("nginx")) else {
        return Err("wrk measured no turn".into());
    };
    Ok(WrkPaths {
        throughput_vs_nginx: edge.per_second / nginx.per_second.max(1e-9),
        p99_vs_nginx: edge.p99_ms / nginx.p99_ms.max(1e-9),
        phases,
    })
}
