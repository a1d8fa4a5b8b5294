//! The bench suite at small sizes: each bench runs for real (a throwaway
//! stack, the edge, nginx, redis-server and redis-benchmark) and its report
//! must be complete and its checks must hold. No timing is asserted: these
//! runs check the harness, not the machine.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use flashmall::bench::SeckillArgs;
use flashmall_bench::proxy::ProxyOptions;
use flashmall_bench::redis::RedisOptions;
use flashmall_bench::report::Output;
use flashmall_bench::seckill::{SeckillOptions, SeckillReport};

fn small(options: SeckillOptions) -> SeckillArgs {
    SeckillArgs {
        options,
        url: None,
        edge_admin: None,
        admin_email: "admin@bench.flashmall".into(),
        admin_password_file: None,
        redis: None,
        fast_ack: false,
        fault: None,
        fault_at: std::time::Duration::from_secs(1),
        waiting_room: false,
        fairness: flashmall_bench::fairness::FairnessOptions::default(),
        output: Output {
            out: std::env::temp_dir(),
            quiet: true,
        },
    }
}

fn options() -> SeckillOptions {
    SeckillOptions {
        stock: 40,
        buyers: 400,
        attempts: 1_500,
        connections: 16,
        gate_seconds: 0.5,
        ..SeckillOptions::default()
    }
}

fn assert_complete(r: &SeckillReport) {
    let md = r.markdown();
    assert!(r.invariants_hold(), "{md}");
    assert_eq!(r.checks.len(), 6, "{md}");
    assert_eq!(r.sold, r.options.stock, "{md}");
    assert_eq!(r.remaining, 0, "{md}");
    // Every attempt after the opening was answered, and the mix happened:
    // retries, traffic after the sell-out (buyers past their limit below).
    let answered: u64 = r
        .storm
        .outcomes
        .iter()
        .filter(|(k, _)| !k.ends_with("(before the opening)"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        answered,
        (r.options.attempts - r.options.early) as u64,
        "{md}"
    );
    assert_eq!(r.storm.requests, answered, "{md}");
    assert_eq!(
        r.storm.outcomes.get("reserved"),
        Some(&(r.options.stock as u64)),
        "{md}"
    );
    for mix in ["replayed", "sold_out"] {
        assert!(
            r.storm.outcomes.get(mix).is_some_and(|n| *n > 0),
            "no {mix}: {md}"
        );
    }
    // Buyers come back with new keys: while units remain the engine
    // answers them `limit_exceeded`, once the sale is sold out `sold_out`
    // (its sold-out flag comes first). Which one they meet depends on how
    // fast the burst is decided, so the plan is checked for them, and every
    // answer for being a decision; "no duplicates" holds no buyer past the
    // limit either way.
    let o = &r.options;
    let plan = flashmall_bench::seckill::plan(o.seed, o.attempts, o.buyers, o.retry_percent, "");
    let mut keys: std::collections::HashMap<usize, std::collections::HashSet<&str>> =
        std::collections::HashMap::new();
    let mut returning = 0;
    for a in &plan[o.early..] {
        let seen = keys.entry(a.buyer).or_default();
        if !seen.is_empty() && !seen.contains(a.key.as_str()) {
            returning += 1;
        }
        seen.insert(&a.key);
    }
    assert!(
        returning > 0,
        "the plan has no buyer coming back with a new key"
    );
    assert!(
        r.storm
            .outcomes
            .keys()
            .all(|k| k.ends_with("(before the opening)")
                || ["reserved", "replayed", "sold_out", "limit_exceeded"].contains(&k.as_str())),
        "{md}"
    );
    assert_eq!(
        r.storm.outcomes.get("sale_not_open (before the opening)"),
        Some(&(r.options.early as u64)),
        "{md}"
    );
    let l = r.storm.latency;
    assert!(
        l.p50_ms > 0.0
            && l.p50_ms <= l.p90_ms
            && l.p90_ms <= l.p99_ms
            && l.p99_ms <= l.p999_ms
            && l.p999_ms <= l.max_ms,
        "{l:?}"
    );
    assert!(r.sold_out_after_s.is_some(), "{md}");
    assert!(r.settlement.lag_ms.is_some(), "{md}");
    assert!(
        !r.settlement.series.is_empty() && !r.timeline.is_empty(),
        "{md}"
    );
    let timeline_answers: f64 = r.timeline.iter().map(|b| b.per_second).sum::<f64>()
        * (r.timeline.get(1).map_or(1.0, |b| b.t_s));
    assert!(
        (timeline_answers - answered as f64).abs() < 1.0,
        "{timeline_answers} vs {answered}"
    );
    // The gate turned every purchase of the sold-out sale away.
    let gate = r.gate.as_ref().expect("the gate phase ran");
    assert!(
        gate.static_answer.requests > 0 && gate.sold_out_purchases.requests > 0,
        "{md}"
    );
    assert!(
        gate.sold_out_purchases
            .outcomes
            .keys()
            .all(|k| k == "sold_out" || k == "rate_limited"),
        "{md}"
    );
    assert!(gate.answered_at_gate.is_some_and(|n| n > 0.0), "{md}");
    // wrk (installed by scripts/test) measured both too: every static
    // answer a 200, no purchase granted (a 2xx fails the run itself).
    if flashmall_bench::wrk::program().is_some() {
        let w = gate.wrk.as_ref().expect("wrk measured the gate");
        assert!(
            w.static_answer.requests > 0 && w.static_answer.non_2xx == 0,
            "{md}"
        );
        assert!(
            w.sold_out_purchases.requests > 0
                && w.sold_out_purchases.non_2xx == w.sold_out_purchases.requests,
            "{md}"
        );
        assert!(w.ratio.is_finite() && w.ratio > 0.0, "{md}");
    }
    assert!(r.svg().matches("<polyline").count() >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_seckill_bench_holds_every_check() {
    let report = flashmall::bench::seckill(&small(options())).await.unwrap();
    assert_complete(&report);
    assert!(
        report.storm.service_time.is_none(),
        "closed loop has no separate service time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seckill_bench_with_a_redis_restart_mid_storm_holds_every_check() {
    // Open loop, so the storm lasts its schedule however fast the machine
    // is: 1_450 attempts at 1_000/s after a burst of 50 run past the fault
    // at 300 ms, and the sale (600 units) cannot sell out before it.
    let mut args = small(SeckillOptions {
        stock: 600,
        buyers: 1_200,
        attempts: 1_500,
        rate: Some(1_000.0),
        burst: 50,
        gate_seconds: 0.0,
        ..options()
    });
    args.fault = Some(flashmall_bench::fault::Fault::RedisRestart);
    args.fault_at = std::time::Duration::from_millis(300);
    let report = flashmall::bench::seckill(&args).await.unwrap();
    let md = report.markdown();
    assert!(report.invariants_hold(), "{md}");
    let fault = report.fault.as_ref().expect("the fault struck");
    assert_eq!(fault.fault, flashmall_bench::fault::Fault::RedisRestart);
    assert!(fault.injected_at_s >= 0.3, "{md}");
    assert!(
        fault.snapshot_at_s.is_some_and(|s| s < fault.injected_at_s),
        "{md}"
    );
    // Purchases were served again after the restart, and the report says
    // when: a decision comes no later than the first new reservation.
    let served = fault.served_again_after_ms.expect("served again");
    assert!(
        fault.decided_again_after_ms.is_some_and(|d| d <= served),
        "{md}"
    );
    assert!(md.contains("fault struck at"), "{md}");
    assert_eq!(report.sold, 600, "{md}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_seckill_bench_corrects_for_coordinated_omission() {
    let report = flashmall::bench::seckill(&small(SeckillOptions {
        rate: Some(3_000.0),
        burst: 300,
        ..options()
    }))
    .await
    .unwrap();
    assert_complete(&report);
    // Latency counts from when each attempt was due, so it is never below
    // the time the server took.
    let service = report
        .storm
        .service_time
        .expect("open loop keeps the service time");
    assert!(report.storm.latency.max_ms >= service.max_ms);
    assert!(report.storm.latency.p50_ms >= service.p50_ms);
    assert!(
        report
            .markdown()
            .contains("corrected for coordinated omission")
    );
}

#[test]
fn the_bench_command_writes_json_markdown_and_svg() {
    let out = tempfile::tempdir().unwrap();
    let result = flashmall_testing::flashmall_command(env!("CARGO_BIN_EXE_flashmall"))
        .args([
            "bench",
            "seckill",
            "--quiet",
            "--stock",
            "20",
            "--buyers",
            "200",
            "--attempts",
            "600",
        ])
        .args(["--connections", "8", "--gate-seconds", "0"])
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert!(stdout.contains("| no oversell | yes |"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("seckill.json")).unwrap())
            .unwrap();
    assert_eq!(json["sold"], 20);
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["held"] == true),
        "{json}"
    );
    assert!(json["storm"]["latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    let md = std::fs::read_to_string(out.path().join("seckill.md")).unwrap();
    assert!(md.starts_with("## seckill"));
    let svg = std::fs::read_to_string(out.path().join("seckill.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
}

#[test]
fn bad_bench_arguments_are_refused_with_a_message() {
    for args in [
        vec!["bench", "seckill", "--stock", "0"],
        vec!["bench", "seckill", "--rate", "0"],
        vec!["bench", "seckill", "--url", "https://example.com"],
        vec!["bench", "seckill", "--url", "http://127.0.0.1:1"],
        vec!["bench", "proxy", "--connections", "0"],
        vec!["bench", "redis", "--redis", "redis://user:pw@h:1"],
    ] {
        let result = flashmall_testing::flashmall_command(env!("CARGO_BIN_EXE_flashmall"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success(), "{args:?} succeeded");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_bench_measures_three_paths_to_one_upstream() {
    let report = flashmall_bench::proxy::run(
        &ProxyOptions {
            connections: 8,
            seconds: 0.3,
            workers: 1,
            rounds: 2,
            ..ProxyOptions::default()
        },
        false,
    )
    .await
    .unwrap();
    let md = report.markdown();
    let names: Vec<&str> = report.phases.iter().map(|p| p.name).collect();
    assert_eq!(names, ["direct", "flashmall", "nginx"]);
    // Every answer on every path was the upstream's 200, on kept connections.
    assert!(report.all_answered(), "{md}");
    for p in &report.phases {
        assert!(p.summary.requests > 0 && p.summary.reconnects == 0, "{md}");
    }
    for ratio in [
        report.throughput_vs_nginx,
        report.p99_vs_nginx,
        report.flashmall_vs_direct,
        report.nginx_vs_direct,
    ] {
        assert!(ratio.is_finite() && ratio > 0.0, "{md}");
    }
    // wrk (installed by scripts/test) took the same turns on every path.
    if flashmall_bench::wrk::program().is_some() {
        let w = report.wrk.as_ref().expect("wrk measured the paths");
        let names: Vec<&str> = w.phases.iter().map(|p| p.name).collect();
        assert_eq!(names, ["direct", "flashmall", "nginx"], "{md}");
        assert!(
            w.throughput_vs_nginx.is_finite() && w.throughput_vs_nginx > 0.0,
            "{md}"
        );
        assert!(w.p99_vs_nginx.is_finite() && w.p99_vs_nginx > 0.0, "{md}");
    }
    assert_eq!(report.svg().matches("<polyline").count(), 6);
}

/// The pids of the processes in process group `group` (from /proc).
fn group_members(group: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Fields after the command's closing parenthesis: state, ppid, pgrp.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat
                        .rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .collect::<Vec<_>>();
                    Some(after.get(2)?.parse::<u32>().ok()? == group && after.first()? != &"Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn the_bench_nginx_leaves_no_worker_behind() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let nginx = flashmall_bench::servers::nginx(upstream, 2).unwrap();
    let group = nginx.pid();
    // The master and its two workers (they start just after it listens).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while group_members(group).len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            group_members(group)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(nginx);
    // SIGKILL is delivered before kill(2) returns; reaping the orphaned
    // workers (by init) may take a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !group_members(group).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: {:?}",
            group_members(group)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_bench_measures_running_paths_when_given_them() {
    // One running upstream stands for all three paths: the bench must
    // measure exactly the addresses it was given, with the given token.
    let upstream = flashmall_bench::servers::Upstream::start().await.unwrap();
    let url = format!("http://{}", upstream.addr);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "a.b.c\n").unwrap();
    let options = ProxyOptions {
        connections: 4,
        seconds: 0.2,
        rounds: 1,
        direct: Some(url.clone()),
        edge: Some(url.clone()),
        nginx: Some(url.clone()),
        token_file: Some(token),
        ..ProxyOptions::default()
    };
    let report = flashmall_bench::proxy::run(&options, false).await.unwrap();
    assert!(report.all_answered(), "{}", report.markdown());
    assert_eq!(report.phases.len(), 3);
    // Only some of the running paths: refused, with what is missing.
    let err = flashmall_bench::proxy::run(
        &ProxyOptions {
            nginx: None,
            ..options
        },
        false,
    )
    .await
    .unwrap_err();
    assert!(err.contains("--nginx"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bench_runs_the_same_script_on_both_sides_and_conserves() {
    let report = flashmall_bench::redis::run(
        &RedisOptions {
            concurrency: 8,
            requests: 3_000,
            ..RedisOptions::default()
        },
        false,
    )
    .await
    .unwrap();
    let md = report.markdown();
    assert!(report.invariants_hold(), "{md}");
    assert_eq!(report.engine.requests, 3_000);
    assert!(
        report.redis_benchmark.rps > 0.0 && report.ratio > 0.0,
        "{md}"
    );
    assert!(report.redis_benchmark_command.contains(" EVALSHA "), "{md}");
    assert!(
        report.redis_benchmark_command.contains(" -c 8 -n 3000 "),
        "{md}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seckill_bench_runs_twice_against_one_running_stack() {
    // A running stack, as `--url` finds it: its admin already registered.
    let (stack, _data) = flashmall::stack::Throwaway {
        redis: None,
        fast_ack: false,
        max_quantity: 1,
        payment_timeout: std::time::Duration::from_secs(900),
    }
    .start()
    .await
    .unwrap();
    let password = "ops password 0123456";
    stack
        .register_admin("ops@bench.flashmall", password)
        .await
        .unwrap();
    let target = flashmall_bench::seckill::Target {
        base: stack.base(),
        admin_email: "ops@bench.flashmall".into(),
        admin_password: password.into(),
        edge_admin: None,
    };
    let options = SeckillOptions {
        gate_seconds: 0.0,
        ..options()
    };
    // Each run brings its own buyers and sale, so a second run holds too.
    for _ in 0..2 {
        let report = flashmall_bench::seckill::run(&target, &options, None, false)
            .await
            .unwrap();
        assert!(report.invariants_hold(), "{}", report.markdown());
        assert_eq!(report.sold, options.stock);
        assert!(report.gate.is_none());
    }
    // A wrong admin password is a clear error, not a run.
    let err = flashmall_bench::seckill::run(
        &flashmall_bench::seckill::Target {
            admin_password: "wrong password 000".into(),
            ..target
        },
        &options,
        None,
        false,
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("logging in ops@bench.flashmall failed: 401"),
        "{err}"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_lua_peer_answers_purchases_as_the_engine_does() {
    use flashmall_bench::peer;
    let redis = flashmall_bench::servers::redis_server().unwrap();
    let nginx = peer::start(redis.addr, 1).unwrap();
    let sale = uuid::Uuid::now_v7();
    peer::load_sale(redis.addr, sale, 2, 1).unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/sales/{sale}/purchase", nginx.addr);
    let buy = |user: Option<&str>, key: Option<&str>, body: &str| {
        let mut r = client.post(&url).body(body.to_owned());
        if let Some(user) = user {
            r = r.header("x-user-id", user);
        }
        if let Some(key) = key {
            r = r.header("idempotency-key", key);
        }
        async move {
            let answer = r.send().await.unwrap();
            let status = answer.status().as_u16();
            let replayed = answer.headers().contains_key("idempotent-replayed");
            let body: serde_json::Value = answer.json().await.unwrap();
            (status, replayed, body)
        }
    };
    let one = r#"{"quantity":1}"#;
    // A grant, then its key again: the same reservation, marked replayed.
    let (status, replayed, first) = buy(Some("alice"), Some("k1"), one).await;
    assert_eq!((status, replayed), (201, false), "{first}");
    let id = first["reservation_id"].as_str().unwrap().to_owned();
    let (status, replayed, again) = buy(Some("alice"), Some("k1"), one).await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again["reservation_id"], id.as_str());
    // Past the limit with a new key; bad input, each with the engine's code.
    for (user, key, body, want) in [
        (Some("alice"), Some("k2"), one, (409, "limit_exceeded")),
        (None, Some("k3"), one, (401, "unauthenticated")),
        (Some("bob"), None, one, (400, "invalid_request")),
        (
            Some("bob"),
            Some("k4"),
            r#"{"quantity":"one"}"#,
            (400, "invalid_request"),
        ),
        (
            Some("bob"),
            Some("k5"),
            r#"{"quantity":0}"#,
            (400, "invalid_request"),
        ),
        (
            Some("bob"),
            Some("k6"),
            r#"{"quantity":2}"#,
            (409, "limit_exceeded"),
        ),
    ] {
        let (status, _, body) = buy(user, key, body).await;
        assert_eq!(
            (status, body["error"]["code"].as_str().unwrap()),
            want,
            "{body}"
        );
    }
    let (status, _, _) = buy(Some("bob"), Some("k7"), one).await;
    assert_eq!(status, 201);
    let (status, _, body) = buy(Some("carol"), Some("k8"), one).await;
    assert_eq!(
        (status, body["error"]["code"].as_str().unwrap()),
        (409, "sold_out")
    );
    // An unknown sale.
    let unknown = format!(
        "http://{}/api/v1/sales/{}/purchase",
        nginx.addr,
        uuid::Uuid::now_v7()
    );
    let answer = client
        .post(unknown)
        .header("x-user-id", "dave")
        .header("idempotency-key", "k9")
        .body(one)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_bench_runs_one_storm_on_flashmall_and_on_the_nginx_lua_peer() {
    let args = flashmall::bench::PeerArgs {
        options: SeckillOptions {
            stock: 40,
            buyers: 300,
            attempts: 1_200,
            connections: 16,
            ..SeckillOptions::default()
        },
        rounds: 1,
        peer_workers: Some(2),
        output: Output {
            out: std::env::temp_dir(),
            quiet: true,
        },
    };
    let c = flashmall::bench::peer(&args).await.unwrap();
    let md = c.markdown();
    assert!(c.invariants_hold(), "{md}");
    let r = &c.rounds[0];
    let after_opening = (args.options.attempts - args.options.early) as u64;
    // The same storm on each: every attempt answered, the stock sold out.
    for (sold, storm) in [
        (r.durable.sold, &r.durable.storm),
        (r.fast_ack.sold, &r.fast_ack.storm),
        (r.peer.sold, &r.peer.storm),
    ] {
        assert_eq!(sold, 40, "{md}");
        let answered: u64 = storm
            .outcomes
            .iter()
            .filter(|(k, _)| !k.ends_with("(before the opening)"))
            .map(|(_, n)| n)
            .sum();
        assert_eq!(answered, after_opening, "{md}");
    }
    // The peer is held to every check it can be, and it saw the whole mix.
    assert_eq!(r.peer.checks.len(), 5, "{md}");
    for outcome in ["reserved", "replayed", "sold_out", "limit_exceeded"] {
        assert!(
            r.peer.storm.outcomes.contains_key(outcome),
            "{outcome}: {md}"
        );
    }
    assert!(r.peer.phases.selling_per_second.is_some(), "{md}");
    assert!(md.contains("| 1 | durable ack |"), "{md}");
    assert_eq!(c.svg().matches("<polyline").count(), 6);
    // No gate phase: the peer has none.
    assert!(r.durable.gate.is_none() && r.fast_ack.gate.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_room_bench_runs_the_same_buyers_with_and_without_a_room() {
    let args = SeckillArgs {
        waiting_room: true,
        fairness: flashmall_bench::fairness::FairnessOptions {
            admit_per_second: 100,
            client_delay_ms: 100,
            ..Default::default()
        },
        ..small(SeckillOptions {
            stock: 20,
            buyers: 200,
            ..options()
        })
    };
    let r = flashmall::bench::waiting_room(&args).await.unwrap();
    let md = r.markdown();
    assert!(r.invariants_hold(), "{md}");
    for run in [&r.without_room, &r.with_room] {
        assert_eq!(run.checks.len(), 6, "{md}");
        // Every buyer has one fate, under their arrival.
        let fates: u64 = run.by_arrival.values().flat_map(|o| o.values()).sum();
        assert_eq!(fates, 200, "{md}");
        let won: u64 = run.by_arrival.values().filter_map(|o| o.get("won")).sum();
        assert_eq!(won, 20, "exactly the stock is won: {md}");
        assert!(run.by_arrival.contains_key("0: before the opening"), "{md}");
    }
    assert!(r.with_room.wait_seconds.is_some(), "{md}");
    assert!(r.without_room.wait_seconds.is_none(), "{md}");
    assert!(r.svg().starts_with("<svg"), "{md}");
}
