//! `flashmall demo` at small sizes: the in-process front, a real Redis, and
//! the real binary; each run must report every invariant holding.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use flashmall::demo::{DemoOptions, run};
use flashmall_testing::RedisServer;

fn small() -> DemoOptions {
    DemoOptions {
        stock: 150,
        attempts: 3_000,
        buyers: 600,
        concurrency: 64,
        ..DemoOptions::default()
    }
}

fn assert_holds(report: &flashmall::demo::DemoReport) {
    assert!(report.invariants_hold(), "{}", report.table());
    // Exactly the stock was granted, unless orders expired while the storm
    // still ran (a storm longer than the payment window): their units were
    // sold again, and the checks above count them.
    if report.released_in_storm == 0 {
        assert_eq!(report.sold, report.options.stock, "{}", report.table());
        assert_eq!(
            report.outcomes.get("reserved").copied(),
            Some(report.options.stock as u64),
            "{}",
            report.table()
        );
    }
    // The orders phase showed both paths: orders paid, orders expired
    // and their units sold again (the checks say every one was right).
    let orders = &report.orders;
    assert!(
        orders.paying > 0 && orders.expired > 0,
        "{}",
        report.table()
    );
    assert!(orders.resold > 0, "{}", report.table());
    assert!(
        report.outcomes.get("sold_out").copied().unwrap_or(0) > 0,
        "traffic after sell-out"
    );
    assert!(
        report.outcomes.get("replayed").copied().unwrap_or(0) > 0,
        "retries with the same key"
    );
    assert!(
        report.outcomes.get("limit_exceeded").copied().unwrap_or(0) > 0,
        "buyers over their limit"
    );
    assert_eq!(
        report.outcomes.get("sale_not_open").copied(),
        Some(report.options.early as u64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_holds_its_invariants_in_process() {
    let report = run(&small()).await.unwrap();
    assert_eq!(report.front, "local");
    assert_holds(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_holds_its_invariants_on_redis() {
    let redis = RedisServer::start();
    let report = run(&DemoOptions {
        redis: Some(redis.url()),
        ..small()
    })
    .await
    .unwrap();
    assert_eq!(report.front, "redis");
    assert_holds(&report);
}

#[test]
fn demo_command_exits_zero_and_prints_the_table() {
    let output = flashmall_testing::flashmall_command(env!("CARGO_BIN_EXE_flashmall"))
        .args([
            "demo",
            "--stock",
            "40",
            "--attempts",
            "800",
            "--buyers",
            "200",
            "--concurrency",
            "32",
        ])
        .env("FLASHMALL_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "sold (ledger)",
        "no oversell",
        "conservation",
        "latency p99 (ms)",
        "all invariants hold",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
}

#[test]
fn check_config_accepts_the_example_and_rejects_a_bad_file() {
    let bin = env!("CARGO_BIN_EXE_flashmall");
    let example = flashmall_testing::package_dir().join("flashmall.example.toml");
    let ok = flashmall_testing::flashmall_command(bin)
        .arg("check-config")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Secrets are never printed: the JWT secret, the identity key, the
    // store password and a Redis URL's password show as redacted.
    let secrets = [
        (
            "FLASHMALL_AUTH__JWT_SECRET",
            "jwt-secret-0123456789abcdef0123456789",
        ),
        (
            "FLASHMALL_MESH__IDENTITY_KEY",
            "identity-key-0123456789abcdef01234567",
        ),
        ("FLASHMALL_STORE__PASSWORD", "store-password-4711"),
        (
            "FLASHMALL_REDIS__URL",
            "redis://user:redis-password-4711@127.0.0.1:6379",
        ),
    ];
    let shown = flashmall_testing::flashmall_command(bin)
        .arg("check-config")
        .arg(&example)
        .envs(secrets)
        .output()
        .unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let stdout = String::from_utf8_lossy(&shown.stdout);
    for hidden in [
        secrets[0].1,
        secrets[1].1,
        secrets[2].1,
        "redis-password-4711",
    ] {
        assert!(!stdout.contains(hidden), "{hidden} printed:\n{stdout}");
    }
    assert!(
        stdout.contains("redis://user:<redacted>@127.0.0.1:6379"),
        "{stdout}"
    );
    assert!(stdout.matches("\"<redacted>\"").count() >= 3, "{stdout}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[redis]\nurl = \"http://nope\"\n").unwrap();
    let out = flashmall_testing::flashmall_command(bin)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("redis.url"));
}
