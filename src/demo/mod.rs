//! `flashmall demo`: starts a fresh stack on embedded stores (or a given
//! Redis), opens a flash sale, fires a storm of purchase attempts over real
//! HTTP through the edge, and checks every invariant against the ledger.
//! The sale runs the bench's seckill phases (`flashmall_bench::phases`:
//! accounts, sale, attempts before the opening, the storm on the load
//! driver, settlement, verification); the demo adds the shop and the
//! orders around them.
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

use flashmall_bench::http::Endpoint;
use flashmall_bench::load::Mode;
use flashmall_bench::phases::{self, Storm, Win};
use flashmall_bench::progress::Progress;
use flashmall_bench::report::Summary;
use flashmall_bench::seckill::{Attempt, check};

use crate::stack::Throwaway;
pub use orders::{OrdersPhase, Told};

mod orders;
pub mod shop;

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
    /// Told the sale and its opening instant, at that instant.
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
    let connections = options.concurrency;
    let mode = match options.rate {
        None => Mode::Closed { connections },
        Some(rate) => Mode::Open {
            rate,
            burst: 0,
            connections,
        },
    };
    mode.validate()?;
    let base = site.base;
    let endpoint = Endpoint::resolve(base).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let accounts_started = Instant::now();
    let admin =
        flashmall_bench::api::login(&client, base, site.admin_email, site.admin_password).await?;
    let domain = site.buyer_domain;
    let email = |i| format!("buyer-{i}@{domain}");
    let buyers = phases::buyers(&client, base, options.buyers, email, DEMO_PASSWORD, false).await?;
    let tokens = phases::bearers(&buyers)?;
    let accounts_seconds = accounts_started.elapsed().as_secs_f64();
    let limits = (options.stock, options.per_user_limit);
    let lead = phases::lead(connections);
    let sale = phases::open_sale(&client, base, &admin, "demo-product", limits, lead).await?;
    let attempts = plan(options);
    let early = options.early.min(attempts.len());
    let early_outcomes =
        phases::before_opening(&endpoint, &sale, &tokens, &attempts[..early]).await?;
    // The shop beside the sale: products and carts ready before it opens.
    let shoppers = &buyers[..buyers.len().min(SHOPPERS)];
    let shop = shop::prepare(&client, base, &admin, shoppers).await?;
    let watch = phases::Watch::start(&client, &sale);
    let opened = async {
        if let Some(opened) = site.opened {
            tokio::time::sleep_until(sale.opening.into()).await;
            let _ = opened.send(Opened {
                sale_id: sale.id.clone(),
                at: sale.opening,
                admin: admin.clone(),
                buyers: buyers.clone(),
            });
        }
    };
    // Winners go to their orders (and pay) while the storm still runs.
    let (wins_tx, mut wins_rx) = tokio::sync::mpsc::unbounded_channel::<Win>();
    let progress = Progress::start("storm", 0, false);
    let storm = phases::storm(
        Storm {
            endpoint: &endpoint,
            sale: &sale,
            identity: phases::BEARER,
            tokens: &tokens,
            attempts: &attempts[early..],
            mode,
            retries: options.client_retries,
            wins: Some(wins_tx),
        },
        &progress,
    );
    let wins = futures::stream::poll_fn(move |cx| wins_rx.poll_recv(cx));
    let checked = async {
        let (stormed, shopped, ()) =
            tokio::join!(storm, shop::checkout_all(&client, base, shop), opened);
        let stormed = stormed?;
        let waited = Instant::now();
        let settled = watch.settled(stormed.recording.elapsed).await?;
        let drain = settled.map_or(waited.elapsed().as_secs_f64(), |t| {
            (t - stormed.recording.elapsed.as_secs_f64()).max(0.0)
        });
        let answers = stormed.answers.clone();
        let facts = phases::verify(&client, base, &admin, &sale, limits, answers).await?;
        Ok::<_, String>((stormed, shopped?, drain, facts))
    };
    let (checked, fates) = tokio::join!(
        checked,
        orders::follow(&client, base, &buyers, wins, options.pay_percent)
    );
    progress.finish();
    watch.stop()?;
    let (stormed, (shop, shop_checks), drain, facts) = checked?;
    let mut checks = check(&facts);
    checks.extend(shop_checks);

    let recording = &stormed.recording;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for outcome in early_outcomes {
        *outcomes.entry(outcome.to_owned()).or_default() += 1;
    }
    for a in &stormed.answers {
        *outcomes.entry(a.outcome.to_owned()).or_default() += 1;
    }
    let winners: HashSet<usize> = stormed
        .answers
        .iter()
        .filter(|a| a.reservation_id.is_some())
        .map(|a| a.buyer)
        .collect();
    let losers: Vec<usize> = (0..options.buyers)
        .filter(|b| !winners.contains(b))
        .collect();
    let sale = orders::Sale {
        base,
        id: &sale.id,
        stock: options.stock,
        admin: &admin,
        buyers: &buyers,
    };
    let (orders, order_checks) = orders::finish(&client, &sale, fates, &losers).await?;
    checks.extend(order_checks);
    let summary = Summary::of(recording);
    let retries_of = |i: &usize| stormed.retries.get(i).copied().unwrap_or(0);
    Ok(DemoReport {
        orders,
        shop,
        options: options.clone(),
        front: site.front,
        outcomes,
        sold: facts.sold,
        remaining: facts.remaining,
        released_in_storm: facts.released,
        p50_ms: summary.latency.p50_ms,
        p99_ms: summary.latency.p99_ms,
        max_ms: summary.latency.max_ms,
        throughput: summary.throughput,
        burst_seconds: summary.seconds,
        retries: stormed.retries.values().map(|n| u64::from(*n)).sum(),
        answers: recording
            .samples
            .iter()
            .map(|s| {
                (
                    Duration::from_micros(s.done_us),
                    s.outcome,
                    Duration::from_micros(s.latency_us),
                    retries_of(&s.index),
                )
            })
            .collect(),
        settle_drain_ms: drain * 1000.0,
        accounts_seconds,
        checks,
    })
}
