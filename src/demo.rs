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
//! checkout (`shop_demo.rs`): normal checkout holds stock and cannot
//! oversell either.
//!
//! Then the orders: every winner finds an order; `--pay-percent` of them
//! pay it, the rest let it expire (`--payment-timeout`), their units go
//! back on sale, and buyers who got nothing in the storm buy them.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::stack::Throwaway;
use flashmall_bench::api::json_of;
use flashmall_bench::api::missing_in_ledger;
use flashmall_bench::seckill::{Answered, Attempt, Facts, check, outcome_of};

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
    /// Units the ledger holds as sold.
    pub sold: i64,
    pub remaining: i64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub throughput: f64,
    pub burst_seconds: f64,
    /// From the last answer until nothing was left to settle.
    pub settle_drain_ms: f64,
    /// Registering and logging in every buyer through the edge.
    pub accounts_seconds: f64,
    /// The orders phase, when it ran.
    pub orders: Option<OrdersPhase>,
    /// The normal purchases made beside the storm.
    pub shop: crate::shop_demo::ShopPhase,
    pub checks: Vec<Check>,
}

/// What the orders phase did.
#[derive(Debug, Clone, Default)]
pub struct OrdersPhase {
    /// Orders the winners found.
    pub orders: usize,
    /// Orders paid (payment succeeded).
    pub paid: usize,
    /// Orders left unpaid, expired, units returned.
    pub expired: usize,
    /// Returned units bought again by new buyers.
    pub resold: usize,
    /// From the end of the storm until every winner saw an order.
    pub orders_visible_seconds: f64,
    /// Payment latency.
    pub pay_p50_ms: f64,
    pub pay_p99_ms: f64,
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
        if let Some(p) = &self.orders {
            let rows: [(&str, String); 7] = [
                ("orders made", p.orders.to_string()),
                (
                    "orders visible after storm (s)",
                    format!("{:.2}", p.orders_visible_seconds),
                ),
                ("orders paid", p.paid.to_string()),
                ("payment latency p50 (ms)", format!("{:.2}", p.pay_p50_ms)),
                ("payment latency p99 (ms)", format!("{:.2}", p.pay_p99_ms)),
                ("orders expired, units returned", p.expired.to_string()),
                ("returned units sold again", p.resold.to_string()),
            ];
            for (name, value) in rows {
                let _ = writeln!(t, "{name:<34}{value:>30}");
            }
        }
        let s = &self.shop;
        let rows: [(&str, String); 4] = [
            (
                "checkouts beside the storm",
                format!("{} shoppers, {} scarce units", s.shoppers, s.scarce_stock),
            ),
            (
                "checkouts paid / out of stock",
                format!("{} / {}", s.paid, s.out_of_stock),
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
struct Answer {
    buyer: usize,
    key: String,
    outcome: &'static str,
    reservation_id: Option<String>,
    latency: Duration,
}

/// The demo's accounts: real registrations and logins through the edge.
struct Accounts {
    admin: String,
    /// Access token of buyer `i`.
    buyers: Vec<String>,
}

const DEMO_PASSWORD: &str = "demo password 0123";
const DEMO_ADMIN: &str = "admin@demo.flashmall";

/// Registers and logs in one account through the proxy; its access token.
async fn account(client: &reqwest::Client, base: &str, email: &str) -> Result<String, String> {
    flashmall_bench::api::register(client, base, email, DEMO_PASSWORD).await
}

async fn accounts(
    client: &reqwest::Client,
    base: &str,
    options: &DemoOptions,
) -> Result<Accounts, String> {
    let admin = account(client, base, DEMO_ADMIN).await?;
    let buyers: Vec<Result<String, String>> = futures::stream::iter(0..options.buyers)
        .map(|i| async move { account(client, base, &format!("buyer-{i}@demo.flashmall")).await })
        .buffered(options.concurrency.min(64))
        .collect()
        .await;
    Ok(Accounts {
        admin,
        buyers: buyers.into_iter().collect::<Result<_, _>>()?,
    })
}

async fn fire(client: &reqwest::Client, url: &str, token: &str, attempt: &Attempt) -> Answer {
    let started = Instant::now();
    let result = client
        .post(url)
        .bearer_auth(token)
        .header("idempotency-key", &attempt.key)
        .json(&json!({"quantity": 1}))
        .send()
        .await;
    let (outcome, reservation_id) = match result {
        Ok(response) => {
            let status = response.status().as_u16();
            let replayed = response.headers().contains_key("idempotent-replayed");
            let body = response.bytes().await.unwrap_or_default();
            let outcome = outcome_of(status, replayed, &body);
            let id = (status == 201)
                .then(|| serde_json::from_slice::<Value>(&body).ok())
                .flatten()
                .and_then(|b| b["reservation_id"].as_str().map(str::to_owned));
            (outcome, id)
        }
        Err(_) => ("connection_error", None),
    };
    Answer {
        buyer: attempt.buyer,
        key: attempt.key.clone(),
        outcome,
        reservation_id,
        latency: started.elapsed(),
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
        admin: DEMO_ADMIN.to_owned(),
    }
    .start()
    .await?;
    let front = stack.engine.engine.front.kind();
    let result = storm(options, &stack.base(), front).await;
    stack.stop().await;
    result
}

async fn storm(
    options: &DemoOptions,
    base: &str,
    front: &'static str,
) -> Result<DemoReport, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let accounts_started = Instant::now();
    let accounts = accounts(&client, base, options).await?;
    let accounts_seconds = accounts_started.elapsed().as_secs_f64();
    let admin = |request: reqwest::RequestBuilder| request.bearer_auth(&accounts.admin);
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
    for attempt in &attempts[..early] {
        answers.push(
            fire(
                &client,
                &purchase_url,
                &accounts.buyers[attempt.buyer],
                attempt,
            )
            .await,
        );
    }
    // The shop beside the sale: products and carts ready before it opens.
    let shoppers = &accounts.buyers[..accounts.buyers.len().min(SHOPPERS)];
    let shop = crate::shop_demo::prepare(&client, base, &accounts.admin, shoppers).await?;
    let wait = opens_at - OffsetDateTime::now_utc();
    if wait.is_positive() {
        tokio::time::sleep(Duration::from_micros(wait.whole_microseconds() as u64)).await;
    }
    let started = Instant::now();
    let client = Arc::new(client);
    let url = Arc::new(purchase_url);
    let storm = async {
        let storm: Vec<Answer> = futures::stream::iter(attempts[early..].iter())
            .map(|attempt| {
                let client = Arc::clone(&client);
                let url = Arc::clone(&url);
                let token = accounts.buyers[attempt.buyer].as_str();
                async move { fire(&client, &url, token, attempt).await }
            })
            .buffer_unordered(options.concurrency)
            .collect()
            .await;
        (storm, started.elapsed())
    };
    let ((storm, burst), shopped) =
        tokio::join!(storm, crate::shop_demo::checkout_all(&client, base, shop));
    let (shop, shop_checks) = shopped?;
    answers.extend(storm);

    // Settlement: wait until nothing is pending.
    let drain_started = Instant::now();
    let mut view = Value::Null;
    for _ in 0..500 {
        let (_, v) = json_of(client.get(format!("{base}/api/v1/sales/{sale_id}"))).await?;
        view = v;
        if view["pending"].as_i64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = drain_started.elapsed();
    let (_, reconciled) = json_of(
        admin(client.post(format!("{base}/api/v1/admin/reconcile")))
            .json(&json!({"sale_id": sale_id})),
    )
    .await?;
    let (_, view_after) = json_of(client.get(format!("{base}/api/v1/sales/{sale_id}"))).await?;

    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut granted: HashMap<String, usize> = HashMap::new();
    for a in &answers[early..] {
        let _ = histogram.record(a.latency.as_micros().max(1) as u64);
    }
    for a in &answers {
        *outcomes.entry(a.outcome.to_owned()).or_default() += 1;
        if let Some(id) = &a.reservation_id {
            granted.insert(id.clone(), a.buyer);
        }
    }
    let mut per_buyer: HashMap<usize, i64> = HashMap::new();
    for buyer in granted.values() {
        *per_buyer.entry(*buyer).or_default() += 1;
    }
    let missing = missing_in_ledger(&client, base, &accounts.admin, granted.keys()).await;
    let sold = view_after["settled"].as_i64().unwrap_or(-1);
    let remaining = view_after["remaining"].as_i64().unwrap_or(-1);
    let report = &reconciled["sales"][0];
    // The storm's invariants, as the bench checks them.
    let checks = check(&Facts {
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
        sold,
        remaining,
        pending: view["pending"].as_i64().unwrap_or(-1),
        conserved: report["conserved"] == true,
        drift: report["drift"].as_i64().unwrap_or(i64::MAX),
        missing_in_ledger: missing,
    });
    let mut checks = checks;
    checks.extend(shop_checks);
    let orders = if options.pay_percent > 0 || options.payment_timeout > Duration::ZERO {
        let winners: Vec<(String, usize)> = granted.iter().map(|(r, b)| (r.clone(), *b)).collect();
        let losers: Vec<usize> = (0..options.buyers)
            .filter(|b| !per_buyer.contains_key(b))
            .collect();
        let phase = orders_phase(
            &client, base, &accounts, &sale_id, &winners, &losers, options,
        )
        .await?;
        checks.extend(phase.1);
        Some(phase.0)
    } else {
        None
    };
    let ms = |v: u64| v as f64 / 1000.0;
    Ok(DemoReport {
        orders,
        shop,
        options: options.clone(),
        front,
        outcomes,
        sold,
        remaining,
        p50_ms: ms(histogram.value_at_quantile(0.5)),
        p99_ms: ms(histogram.value_at_quantile(0.99)),
        max_ms: ms(histogram.max()),
        throughput: (answers.len() - early) as f64 / burst.as_secs_f64().max(1e-9),
        burst_seconds: burst.as_secs_f64(),
        settle_drain_ms: drain.as_secs_f64() * 1000.0,
        accounts_seconds,
        checks,
    })
}

/// The orders phase: winners find their orders, some pay, the rest expire,
/// and buyers who got nothing buy the returned units.
async fn orders_phase(
    client: &reqwest::Client,
    base: &str,
    accounts: &Accounts,
    sale_id: &str,
    winners: &[(String, usize)],
    losers: &[usize],
    options: &DemoOptions,
) -> Result<(OrdersPhase, Vec<Check>), String> {
    let started = Instant::now();
    let buyer_token = |b: usize| accounts.buyers[b].as_str();
    // Every winner's order, as the winner sees it (orders are made after
    // settlement, asynchronously).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut orders: HashMap<String, Value> = HashMap::new();
    while orders.len() < winners.len() && Instant::now() < deadline {
        let missing: Vec<&(String, usize)> = winners
            .iter()
            .filter(|(r, _)| !orders.contains_key(r))
            .collect();
        let found: Vec<Option<(String, Value)>> = futures::stream::iter(missing)
            .map(|(reservation, buyer)| async move {
                let (status, list) = json_of(
                    client
                        .get(format!("{base}/api/v1/orders"))
                        .bearer_auth(buyer_token(*buyer)),
                )
                .await
                .ok()?;
                if status != 200 {
                    return None;
                }
                let order = list["orders"]
                    .as_array()?
                    .iter()
                    .find(|o| o["reservation_id"] == reservation.as_str())?
                    .clone();
                Some((reservation.clone(), order))
            })
            .buffer_unordered(64)
            .collect()
            .await;
        orders.extend(found.into_iter().flatten());
        if orders.len() < winners.len() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let orders_visible_seconds = started.elapsed().as_secs_f64();
    let made = orders.len();
    // Pay the first pay_percent of the orders (in reservation order, so the
    // split is reproducible); the rest are left to expire.
    let mut ids: Vec<&String> = orders.keys().collect();
    ids.sort();
    let paying = ids.len() * options.pay_percent.min(100) as usize / 100;
    let buyer_of: HashMap<&str, usize> = winners.iter().map(|(r, b)| (r.as_str(), *b)).collect();
    let pay_answers: Vec<(u16, Value, Duration)> = futures::stream::iter(ids[..paying].iter())
        .map(|reservation| {
            let order = &orders[*reservation];
            let token = buyer_token(buyer_of[reservation.as_str()]);
            async move {
                let t = Instant::now();
                let answer = json_of(
                    client
                        .post(format!("{base}/api/v1/payments"))
                        .bearer_auth(token)
                        .header(
                            "idempotency-key",
                            format!("pay-{}", order["id"].as_str().unwrap_or("")),
                        )
                        .json(&json!({"order_id": order["id"], "amount": order["total"]})),
                )
                .await;
                match answer {
                    Ok((status, body)) => (status, body, t.elapsed()),
                    Err(e) => (0, json!({"error": e}), t.elapsed()),
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut pay_latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    for (_, _, latency) in &pay_answers {
        let _ = pay_latency.record(latency.as_micros().max(1) as u64);
    }
    let paid = pay_answers
        .iter()
        .filter(|(status, body, _)| *status == 201 && body["status"] == "succeeded")
        .count();
    let unpaid = made - paying;
    // The unpaid orders expire and their units return to the sale.
    let stock_deadline = Instant::now() + options.payment_timeout + Duration::from_secs(30);
    let mut view = Value::Null;
    while Instant::now() < stock_deadline {
        let (_, v) = json_of(client.get(format!("{base}/api/v1/sales/{sale_id}"))).await?;
        view = v;
        if view["released"].as_i64() == Some(unpaid as i64)
            && view["remaining"].as_i64() == Some(unpaid as i64)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let returned = view["released"].as_i64().unwrap_or(-1);
    // The edge and the engine trust a sold-out flag briefly; after that the
    // returned units sell again, to buyers who got nothing.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let url = format!("{base}/api/v1/sales/{sale_id}/purchase");
    let second: Vec<u16> = futures::stream::iter(losers.iter().take(unpaid * 2))
        .map(|buyer| {
            let url = url.clone();
            async move {
                client
                    .post(&url)
                    .bearer_auth(buyer_token(*buyer))
                    .header("idempotency-key", format!("second-wave-{buyer}"))
                    .json(&json!({"quantity": 1}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let resold = second.iter().filter(|s| **s == 201).count();
    // Settle, then check conservation once more.
    for _ in 0..500 {
        let (_, v) = json_of(client.get(format!("{base}/api/v1/sales/{sale_id}"))).await?;
        if v["pending"].as_i64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, reconciled) = json_of(
        client
            .post(format!("{base}/api/v1/admin/reconcile"))
            .bearer_auth(&accounts.admin)
            .json(&json!({"sale_id": sale_id})),
    )
    .await?;
    let (_, after) = json_of(client.get(format!("{base}/api/v1/sales/{sale_id}"))).await?;
    let report = &reconciled["sales"][0];
    let settled = after["settled"].as_i64().unwrap_or(-1);
    let remaining = after["remaining"].as_i64().unwrap_or(-1);
    let released = after["released"].as_i64().unwrap_or(-1);
    let expected_resold = unpaid.min(losers.len());
    let checks = vec![
        Check {
            name: "every winner has an order",
            held: made == winners.len(),
            detail: format!("{made} of {} reservations have an order", winners.len()),
        },
        Check {
            name: "payments succeed",
            held: paid == paying,
            detail: format!("{paid} of {paying} orders paid"),
        },
        Check {
            name: "expired units return",
            held: returned == unpaid as i64,
            detail: format!("{returned} units released for {unpaid} unpaid orders"),
        },
        Check {
            name: "returned units sell again",
            held: resold == expected_resold,
            detail: format!("{resold} of {expected_resold} returned units bought by new buyers"),
        },
        Check {
            name: "conservation after expiry",
            held: report["conserved"] == true
                && report["drift"] == 0
                && settled + remaining == options.stock,
            detail: format!(
                "drift {}, {settled} held + {remaining} remaining ({released} released over time)",
                report["drift"]
            ),
        },
    ];
    let ms = |v: u64| v as f64 / 1000.0;
    Ok((
        OrdersPhase {
            orders: made,
            paid,
            expired: unpaid,
            resold,
            orders_visible_seconds,
            pay_p50_ms: ms(pay_latency.value_at_quantile(0.5)),
            pay_p99_ms: ms(pay_latency.value_at_quantile(0.99)),
        },
        checks,
    ))
}
