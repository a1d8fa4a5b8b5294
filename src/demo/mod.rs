//! `flashmall demo`: starts a fresh stack on embedded stores (or a given
//! Redis), opens a flash sale, fires a storm of purchase attempts over real
//! HTTP through the edge, and checks every invariant against the ledger.
//!
//! The storm: a few attempts before the opening instant, then every attempt
//! at once, bounded by `--concurrency` connections. Some attempts repeat an
//! earlier attempt's Idempotency-Key (client retries); buyers come back
//! with new keys past their limit; traffic keeps coming after sell-out.
//!
//! Beside the storm, shoppers buy from the catalogue through cart and
//! checkout (`shop.rs`): normal checkout holds stock and cannot
//! oversell either.
//!
//! Then the orders: every winner finds an order; `--pay-percent` of them
//! pay it, the rest let it expire (`--payment-timeout`), their units go
//! back on sale, and buyers who got nothing in the storm buy them.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::stack::Throwaway;
pub use orders::{OrdersPhase, Told};

mod orders;
pub mod shop;
use flashmall_bench::api::{ledger_states, reconcile_report, steady_json_of};
use flashmall_bench::seckill::{Answered, Attempt, Facts, check, outcome_of, rebuilt_of};

/// Sizes and switches of a demo run.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Units on sale.
    #[arg(long, default_value_t = 1_000)]
    pub stock: i64,
    /// Purchase attempts in total.
    #[arg(long, default_value_t = 20_000)]
    pub attempts: usize,
    /// Distinct buyers.
    #[arg(long, default_value_t = 5_000)]
    pub buyers: usize,
    /// Units one buyer may hold.
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: i64,
    /// Concurrent connections firing attempts.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Percent of attempts that retry an earlier attempt's Idempotency-Key.
    #[arg(long, default_value_t = 20)]
    pub retry_percent: u64,
    /// Attempts fired before the sale opens (answered sale_not_open).
    #[arg(long, default_value_t = 10)]
    pub early: usize,
    /// Redis URL for the stock front; default: the in-process front.
    #[arg(long)]
    pub redis: Option<String>,
    /// Answer purchases right after the Redis script (no durable ack).
    #[arg(long)]
    pub fast_ack: bool,
    /// Seed of the attempt plan (same seed, same plan).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Percent of the orders their buyers pay; the rest expire.
    #[arg(long, default_value_t = 70)]
    pub pay_percent: u64,
    /// How long an order waits for its payment (the demo's short
    /// `[orders] payment_timeout`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub payment_timeout: Duration,
    /// Attempts per second from the opening on (default: each connection
    /// sends its next attempt as soon as answered).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Times a buyer repeats an attempt, with the same Idempotency-Key,
    /// after no answer or a 502/503/504 (a client's retry).
    #[arg(long, default_value_t = 0)]
    pub client_retries: u32,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            stock: 1_000,
            attempts: 20_000,
            buyers: 5_000,
            per_user_limit: 1,
            concurrency: 256,
            retry_percent: 20,
            early: 10,
            redis: None,
            fast_ack: false,
            seed: 7,
            pay_percent: 70,
            payment_timeout: Duration::from_secs(5),
            rate: None,
            client_retries: 0,
        }
    }
}

pub use flashmall_bench::seckill::Check;

/// What a demo run measured and checked.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub options: DemoOptions,
    pub front: &'static str,
    /// Answers by outcome (`reserved`, `replayed`, or the error code).
    pub outcomes: BTreeMap<String, u64>,
    /// Units the ledger holds as sold when the storm was read.
    pub sold: i64,
    pub remaining: i64,
    /// Units given back by orders that expired before the storm was read
    /// (0 unless the storm outlasted the payment window).
    pub released_in_storm: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub throughput: f64,
    pub burst_seconds: f64,
    /// Attempts repeated after no answer or a 502/503/504.
    pub retries: u64,
    /// Every storm attempt's last answer: when (after the opening), what,
    /// how long from the first try, and how many retries.
    pub answers: Vec<(Duration, &'static str, Duration, u32)>,
    /// From the last answer until nothing was left to settle.
    pub settle_drain_ms: f64,
    /// Registering and logging in every buyer through the edge.
    pub accounts_seconds: f64,
    /// The orders phase.
    pub orders: OrdersPhase,
    /// The normal purchases made beside the storm.
    pub shop: shop::ShopPhase,
    pub checks: Vec<Check>,
}

impl DemoReport {
    pub fn invariants_hold(&self) -> bool {
        self.checks.iter().all(|c| c.held)
    }

    /// The printed table.
    pub fn table(&self) -> String {
        let o = &self.options;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "flashmall demo: {} units, {} attempts from {} logged-in buyers (limit {} each) through the edge, {} connections, front={}, ack={}",
            o.stock,
            o.attempts,
            o.buyers,
            o.per_user_limit,
            o.concurrency,
            self.front,
            if o.fast_ack { "fast" } else { "durable" }
        );
        let _ = writeln!(t, "{:-<64}", "");
        let _ = writeln!(t, "{:<34}{:>30}", "sold (ledger)", self.sold);
        let _ = writeln!(t, "{:<34}{:>30}", "remaining", self.remaining);
        for (outcome, n) in &self.outcomes {
            let _ = writeln!(t, "{:<34}{:>30}", format!("answers: {outcome}"), n);
        }
        let _ = writeln!(t, "{:<34}{:>30.2}", "latency p50 (ms)", self.p50_ms);
        let _ = writeln!(t, "{:<34}{:>30.2}", "latency p99 (ms)", self.p99_ms);
        let _ = writeln!(t, "{:<34}{:>30.2}", "latency max (ms)", self.max_ms);
        let _ = writeln!(
            t,
            "{:<34}{:>30.0}",
            "throughput (attempts/s)", self.throughput
        );
        let _ = writeln!(
            t,
            "{:<34}{:>30.3}",
            "storm duration (s)", self.burst_seconds
        );
        if o.client_retries > 0 {
            let _ = writeln!(t, "{:<34}{:>30}", "client retries", self.retries);
        }
        let _ = writeln!(
            t,
            "{:<34}{:>30.1}",
            "settlement drain after storm (ms)", self.settle_drain_ms
        );
        let _ = writeln!(
            t,
            "{:<34}{:>30.2}",
            "buyer accounts ready in (s)", self.accounts_seconds
        );
        let p = &self.orders;
        let rows: [(&str, String); 9] = [
            ("orders made", p.orders.to_string()),
            (
                "order visible after 201 p50/p99 (ms)",
                format!("{:.1} / {:.1}", p.visible_p50_ms, p.visible_p99_ms),
            ),
            ("orders paid / paying", format!("{} / {}", p.paid, p.paying)),
            ("payments too late, not charged", p.paid_late.to_string()),
            ("payment latency p50 (ms)", format!("{:.2}", p.pay_p50_ms)),
            ("payment latency p99 (ms)", format!("{:.2}", p.pay_p99_ms)),
            ("orders expired, units returned", p.expired.to_string()),
            (
                "units returned during the storm",
                self.released_in_storm.to_string(),
            ),
            ("returned units sold again", p.resold.to_string()),
        ];
        for (name, value) in rows {
            let _ = writeln!(t, "{name:<34}{value:>30}");
        }
        let s = &self.shop;
        let rows: [(&str, String); 4] = [
            (
                "checkouts beside the storm",
                format!("{} shoppers, {} scarce units", s.shoppers, s.scarce_stock),
            ),
            (
                "checkouts paid / sold out / late",
                format!("{} / {} / {}", s.paid, s.out_of_stock, s.too_late),
            ),
            (
                "checkout latency p50 (ms)",
                format!("{:.2}", s.checkout_p50_ms),
            ),
            (
                "checkout latency p99 (ms)",
                format!("{:.2}", s.checkout_p99_ms),
            ),
        ];
        for (name, value) in rows {
            let _ = writeln!(t, "{name:<34}{value:>30}");
        }
        let _ = writeln!(t, "{:-<64}", "");
        for c in &self.checks {
            let _ = writeln!(
                t,
                "{:<6}{:<28}{}",
                if c.held { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        let _ = write!(
            t,
            "{}",
            if self.invariants_hold() {
                "all invariants hold"
            } else {
                "INVARIANT VIOLATED"
            }
        );
        t
    }
}

/// Buyers who also shop the catalogue beside the storm.
const SHOPPERS: usize = 20;

fn plan(options: &DemoOptions) -> Vec<Attempt> {
    flashmall_bench::seckill::plan(
        options.seed,
        options.attempts,
        options.buyers,
        options.retry_percent,
        "demo-",
    )
}

/// An answer to one attempt.
pub(crate) struct Answer {
    pub buyer: usize,
    pub key: String,
    pub outcome: &'static str,
    pub reservation_id: Option<String>,
    /// From the first try until the last answer.
    pub latency: Duration,
    /// Tries after the first (see `--client-retries`).
    pub retries: u32,
    /// The last answer, after the opening.
    pub at: Duration,
}

/// The demo's accounts: real registrations and logins through the edge.
struct Accounts {
    admin: String,
    /// Access token of buyer `i`.
    buyers: Vec<String>,
}

const DEMO_PASSWORD: &str = "demo password 0123";
const DEMO_ADMIN: &str = "admin@demo.flashmall";

/// Where a storm runs and as whom: the demo's own stack, or a running one
/// (`flashmall bench chaos`).
pub(crate) struct Site<'a> {
    /// The edge's base URL.
    pub base: &'a str,
    /// The engine's stock front, for the table (`local`, `redis`).
    pub front: &'static str,
    /// An admin account of the stack.
    pub admin_email: &'a str,
    pub admin_password: &'a str,
    /// Buyers register as `buyer-{i}@{buyer_domain}` (unique per run on a
    /// stack that outlives it).
    pub buyer_domain: &'a str,
    /// Told the sale and its opening instant, once the sale is made.
    pub opened: Option<tokio::sync::oneshot::Sender<Opened>>,
}

/// The sale a storm opened, for what runs beside it.
pub(crate) struct Opened {
    pub sale_id: String,
    /// The opening instant.
    pub at: Instant,
    /// The admin's access token and every buyer's.
    pub admin: String,
    pub buyers: Vec<String>,
}

/// Registers and logs in one account through the proxy; its access token.
async fn account(client: &reqwest::Client, base: &str, email: &str) -> Result<String, String> {
    flashmall_bench::api::register(client, base, email, DEMO_PASSWORD).await
}

async fn accounts(
    client: &reqwest::Client,
    site: &Site<'_>,
    options: &DemoOptions,
) -> Result<Accounts, String> {
    let base = site.base;
    let admin =
        flashmall_bench::api::login(client, base, site.admin_email, site.admin_password).await?;
    let domain = site.buyer_domain;
    let buyers: Vec<Result<String, String>> = futures::stream::iter(0..options.buyers)
        .map(|i| async move { account(client, base, &format!("buyer-{i}@{domain}")).await })
        .buffered(options.concurrency.min(64))
        .collect()
        .await;
    Ok(Accounts {
        admin,
        buyers: buyers.into_iter().collect::<Result<_, _>>()?,
    })
}

/// One attempt, repeated with its Idempotency-Key up to `retries` times
/// after no answer or a 502/503/504 (50 ms, then doubling to 1 s, apart).
async fn fire(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    attempt: &Attempt,
    retries: u32,
    opening: Instant,
) -> Answer {
    let started = Instant::now();
    let mut tries = 0;
    let mut backoff = Duration::from_millis(50);
    loop {
        let (status, outcome, reservation_id) = fire_once(client, url, token, attempt).await;
        if tries < retries && (status == 0 || (502..=504).contains(&status)) {
            tries += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            continue;
        }
        return Answer {
            buyer: attempt.buyer,
            key: attempt.key.clone(),
            outcome,
            reservation_id,
            latency: started.elapsed(),
            retries: tries,
            at: opening.elapsed(),
        };
    }
}

/// One try: the status (0: no answer), the outcome and the reservation.
async fn fire_once(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    attempt: &Attempt,
) -> (u16, &'static str, Option<String>) {
    let result = client
        .post(url)
        .bearer_auth(token)
        .header("idempotency-key", &attempt.key)
        .json(&json!({"quantity": 1}))
        .send()
        .await;
    match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = response.bytes().await.unwrap_or_default();
            let outcome = outcome_of(status, replayed, &body);
            let id = (status == 201)
                .then(|| serde_json::from_slice::<Value>(&body).ok())
                .flatten()
                .and_then(|b| b["reservation_id"].as_str().map(str::to_owned));
            (status, outcome, id)
        }
        Err(_) => (0, "connection_error", None),
    }
}

/// Runs the demo and returns its report (the caller decides the exit code).
pub async fn run(options: &DemoOptions) -> Result<DemoReport, String> {
    if options.stock < 1
        || options.buyers < 1
        || options.concurrency < 1
        || options.per_user_limit < 1
    {
        return Err("stock, buyers, concurrency and per-user-limit must be at least 1".into());
    }
    let (stack, _data) = Throwaway {
        redis: options.redis.clone(),
        fast_ack: options.fast_ack,
        max_quantity: options.per_user_limit,
        payment_timeout: options.payment_timeout,
    }
    .start()
    .await?;
    stack.register_admin(DEMO_ADMIN, DEMO_PASSWORD).await?;
    let base = stack.base();
    let site = Site {
        base: &base,
        front: stack.engine.engine.front.kind(),
        admin_email: DEMO_ADMIN,
        admin_password: DEMO_PASSWORD,
        buyer_domain: "demo.flashmall",
        opened: None,
    };
    let result = storm(options, site).await;
    stack.stop().await;
    result
}

/// The storm, the shop beside it and the orders phase, on `site`.
pub(crate) async fn storm(options: &DemoOptions, site: Site<'_>) -> Result<DemoReport, String> {
    if let Some(rate) = options.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err("rate must be a positive number of attempts per second".into());
    }
    let base = site.base;
    let front = site.front;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let accounts_started = Instant::now();
    let accounts = accounts(&client, &site, options).await?;
    let accounts_seconds = accounts_started.elapsed().as_secs_f64();
    let opens_at = OffsetDateTime::now_utc() + time::Duration::milliseconds(800);
    let sale_id = flashmall_bench::api::create_sale(
        &client,
        base,
        &accounts.admin,
        "demo-product",
        options.stock,
        options.per_user_limit,
        opens_at,
    )
    .await?;
    let purchase_url = format!("{base}/api/v1/sales/{sale_id}/purchase");
    let attempts = plan(options);
    let early = options.early.min(attempts.len());

    let mut answers = Vec::with_capacity(attempts.len());
    let before = Instant::now();
    for attempt in &attempts[..early] {
        answers.push(
            fire(
                &client,
                &purchase_url,
                &accounts.buyers[attempt.buyer],
                attempt,
                0,
                before,
            )
            .await,
        );
    }
    // The shop beside the sale: products and carts ready before it opens.
    let shoppers = &accounts.buyers[..accounts.buyers.len().min(SHOPPERS)];
    let shop = shop::prepare(&client, base, &accounts.admin, shoppers).await?;
    let wait = opens_at - OffsetDateTime::now_utc();
    if wait.is_positive() {
        tokio::time::sleep(Duration::from_micros(wait.whole_microseconds() as u64)).await;
    }
    let started = Instant::now();
    if let Some(opened) = site.opened {
        let _ = opened.send(Opened {
            sale_id: sale_id.clone(),
            at: started,
            admin: accounts.admin.clone(),
            buyers: accounts.buyers.clone(),
        });
    }
    // Winners go to their orders (and pay) while the storm still runs.
    let (wins_tx, mut wins_rx) = tokio::sync::mpsc::unbounded_channel::<orders::Win>();
    // Each reservation is followed once, whichever 201 told of it first: a
    // replayed answer is a win too when the client never got the first
    // (it timed out and asked again with the same Idempotency-Key).
    let followed: std::sync::Mutex<HashSet<String>> = std::sync::Mutex::default();
    let storm = async {
        let wins_tx = wins_tx;
        let storm: Vec<Answer> = futures::stream::iter(attempts[early..].iter().enumerate())
            .map(|(i, attempt)| {
                let token = accounts.buyers[attempt.buyer].as_str();
                let (client, url, wins, followed) = (&client, &purchase_url, &wins_tx, &followed);
                let due = options
                    .rate
                    .map(|rate| started + Duration::from_secs_f64(i as f64 / rate));
                async move {
                    if let Some(due) = due {
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let retries = options.client_retries;
                    let answer = fire(client, url, token, attempt, retries, started).await;
                    let new_win = answer.reservation_id.as_ref().is_some_and(|id| {
                        matches!(answer.outcome, "reserved" | "replayed")
                            && followed
                                .lock()
                                .map(|mut seen| seen.insert(id.clone()))
                                .unwrap_or(false)
                    });
                    if let (Some(id), true) = (&answer.reservation_id, new_win) {
                        let _ = wins.send(orders::Win {
                            reservation_id: id.clone(),
                            buyer: answer.buyer,
                            at: Instant::now(),
                        });
                    }
                    answer
                }
            })
            .buffer_unordered(options.concurrency)
            .collect()
            .await;
        (storm, started.elapsed())
    };
    let wins = futures::stream::poll_fn(move |cx| wins_rx.poll_recv(cx));
    let checked = async {
        let ((storm, burst), shopped) =
            tokio::join!(storm, shop::checkout_all(&client, base, shop));
        answers.extend(storm);
        let checked =
            check_storm(&client, base, &accounts.admin, &sale_id, options, &answers).await;
        (burst, shopped, checked)
    };
    let ((burst, shopped, checked), fates) = tokio::join!(
        checked,
        orders::follow(&client, base, &accounts.buyers, wins, options.pay_percent)
    );
    let (shop, shop_checks) = shopped?;
    let storm_facts = checked?;
    let mut checks = storm_facts.checks;
    checks.extend(shop_checks);

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut winners: HashSet<usize> = HashSet::new();
    for a in &answers[early..] {
        let _ = histogram.record(a.latency.as_micros().max(1) as u64);
    }
    for a in &answers {
        *outcomes.entry(a.outcome.to_owned()).or_default() += 1;
        if a.reservation_id.is_some() {
            winners.insert(a.buyer);
        }
    }
    let losers: Vec<usize> = (0..options.buyers)
        .filter(|b| !winners.contains(b))
        .collect();
    let sale = orders::Sale {
        base,
        id: &sale_id,
        stock: options.stock,
        admin: &accounts.admin,
        buyers: &accounts.buyers,
    };
    let (orders, order_checks) = orders::finish(&client, &sale, fates, &losers).await?;
    checks.extend(order_checks);
    let ms = |v: u64| v as f64 / 1000.0;
    Ok(DemoReport {
        orders,
        shop,
        options: options.clone(),
        front,
        outcomes,
        sold: storm_facts.sold,
        remaining: storm_facts.remaining,
        released_in_storm: storm_facts.released,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
        throughput: (answers.len() - early) as f64 / burst.as_secs_f64().max(1e-9),
        burst_seconds: burst.as_secs_f64(),
        retries: answers.iter().map(|a| u64::from(a.retries)).sum(),
        answers: answers[early..]
            .iter()
            .map(|a| (a.at, a.outcome, a.latency, a.retries))
            .collect(),
        settle_drain_ms: storm_facts.drain_ms,
        accounts_seconds,
        checks,
    })
}

/// The storm as the ledger saw it, and its checks.
struct StormFacts {
    sold: i64,
    remaining: i64,
    /// Units given back by orders that expired before the storm was read.
    released: i64,
    drain_ms: f64,
    checks: Vec<Check>,
}

/// Waits until nothing is pending settlement, reconciles the sale, and
/// checks the storm's answers against the ledger, as the bench does.
async fn check_storm(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    sale_id: &str,
    options: &DemoOptions,
    answers: &[Answer],
) -> Result<StormFacts, String> {
    let early = options.early.min(answers.len());
    let sale_url = format!("{base}/api/v1/sales/{sale_id}");
    let drain_started = Instant::now();
    let progress = orders::Progress::new();
    let mut view;
    let mut last_pending = None;
    loop {
        view = steady_json_of(client.get(&sale_url)).await?.1;
        let pending = view["pending"].as_i64();
        if pending == Some(0) || progress.stalled() {
            break;
        }
        if pending != last_pending {
            progress.moved();
            last_pending = pending;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = drain_started.elapsed();
    let report = reconcile_report(client, base, admin, sale_id).await?;
    let (_, after) = steady_json_of(client.get(&sale_url)).await?;
    let granted: HashSet<&String> = answers
        .iter()
        .filter_map(|a| a.reservation_id.as_ref())
        .collect();
    let states = ledger_states(client, base, admin, granted).await;
    let facts = Facts {
        stock: options.stock,
        per_user_limit: options.per_user_limit,
        answers: answers[early..]
            .iter()
            .map(|a| Answered {
                buyer: a.buyer,
                key: a.key.clone(),
                outcome: a.outcome,
                reservation_id: a.reservation_id.clone(),
            })
            .collect(),
        sold: after["settled"].as_i64().unwrap_or(-1),
        remaining: after["remaining"].as_i64().unwrap_or(-1),
        pending: view["pending"].as_i64().unwrap_or(-1),
        conserved: report["conserved"] == true,
        drift: report["drift"].as_i64().unwrap_or(i64::MAX),
        rebuilt: rebuilt_of(&report),
        missing_in_ledger: states.missing,
        released: after["released"].as_i64().unwrap_or(-1),
        released_ids: states.released,
        revoked_ids: states.revoked,
    };
    Ok(StormFacts {
        sold: facts.sold,
        remaining: facts.remaining,
        released: facts.released,
        drain_ms: drain.as_secs_f64() * 1000.0,
        checks: check(&facts),
    })
}
