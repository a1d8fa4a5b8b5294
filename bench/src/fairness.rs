//! `flashmall bench seckill --waiting-room`: is winning a flash sale a
//! matter of how fast the buyer's client is? The same buyers, each with
//! its own client delay (slept before every request: a slow script, a
//! distant network), go after two sales on one stack: one without a
//! waiting room (everyone fires at the opening, retrying until decided)
//! and one with (everyone joins, long-polls, and buys when admitted).
//!
//! Most buyers arrive before the opening; the rest arrive spread over the
//! first seconds. Reported per sale: outcomes by arrival time, and the
//! fairness figure: among the buyers who arrived before the opening, the
//! share of winners in the fastest and in the slowest quarter of clients.
//! Each sale is checked against the ledger like every seckill run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{json_of, login};
use crate::phases::{self, Answered, Sale};
use crate::report::Machine;
use crate::seckill::{Check, SeckillOptions, Target, check, checks_table};

/// What a waiting-room run adds to the seckill's options.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FairnessOptions {
    /// The waiting room's admission rate (buyers per second).
    #[arg(long, default_value_t = 200)]
    pub admit_per_second: u32,
    /// The slowest client's delay before each of its requests, in ms;
    /// each buyer's is drawn uniformly from 0 to this.
    #[arg(long, default_value_t = 200)]
    pub client_delay_ms: u64,
    /// Percent of buyers who arrive after the opening.
    #[arg(long, default_value_t = 25)]
    pub late_percent: u64,
    /// Late buyers arrive spread over this many seconds after the opening.
    #[arg(long, default_value_t = 2.0)]
    pub arrival_seconds: f64,
}

impl Default for FairnessOptions {
    fn default() -> Self {
        FairnessOptions {
            admit_per_second: 200,
            client_delay_ms: 200,
            late_percent: 25,
            arrival_seconds: 2.0,
        }
    }
}

impl FairnessOptions {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=100_000).contains(&self.admit_per_second) {
            return Err("admit-per-second must be between 1 and 100000".into());
        }
        if self.client_delay_ms > 10_000 {
            return Err("client-delay-ms must be at most 10000".into());
        }
        if self.late_percent > 100 {
            return Err("late-percent must be at most 100".into());
        }
        if !self.arrival_seconds.is_finite() || !(0.0..=60.0).contains(&self.arrival_seconds) {
            return Err("arrival-seconds must be between 0 and 60".into());
        }
        Ok(())
    }
}

/// One buyer's client: when it arrives and how slow it is.
#[derive(Debug, Clone, Copy)]
struct Client {
    /// After the opening; `None`: before it.
    arrives_after: Option<Duration>,
    delay: Duration,
}

/// The buyers' clients, drawn from `seed`.
fn clients(options: &SeckillOptions, fairness: &FairnessOptions) -> Vec<Client> {
    let mut state = options.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..options.buyers)
        .map(|_| {
            let delay = Duration::from_millis(next() % (fairness.client_delay_ms + 1));
            let late = next() % 100 < fairness.late_percent;
            let unit = (next() % 1_000_000) as f64 / 1_000_000.0;
            Client {
                arrives_after: late
                    .then(|| Duration::from_secs_f64(unit * fairness.arrival_seconds)),
                delay,
            }
        })
        .collect()
}

/// What happened to one buyer.
#[derive(Debug, Clone)]
struct Fate {
    /// `won`, or the answer that decided the buyer's loss.
    outcome: String,
    /// Every purchase answer (for the ledger checks).
    answers: Vec<Answered>,
    /// From the opening (or their later arrival) until admitted.
    waited: Option<Duration>,
}

/// One sale's results.
#[derive(Debug, Clone, Serialize)]
pub struct SaleRun {
    pub name: &'static str,
    pub sale_id: String,
    /// Buyers by arrival (`before the opening`, `0-0.5 s`, ...) and outcome.
    pub by_arrival: BTreeMap<String, BTreeMap<String, u64>>,
    /// Among buyers who arrived before the opening: winners' share in the
    /// fastest and the slowest quarter of clients (percent).
    pub fastest_quarter_won_pct: f64,
    pub slowest_quarter_won_pct: f64,
    /// Winners' share per quarter of clients, fastest first (percent).
    pub quarters_won_pct: [f64; 4],
    /// Waiting room only: from the opening (or a later arrival) until
    /// admitted, p50 / p90 / max, seconds.
    pub wait_seconds: Option<[f64; 3]>,
    pub seconds: f64,
    pub checks: Vec<Check>,
}

/// The run: the same buyers against both sales.
#[derive(Debug, Clone, Serialize)]
pub struct FairnessReport {
    pub machine: Machine,
    pub options: SeckillOptions,
    pub fairness: FairnessOptions,
    pub without_room: SaleRun,
    pub with_room: SaleRun,
}

const STATES_LOST: [&str; 3] = ["sold_out", "ended", "admission_expired"];

/// Gives up a buyer after this many answers that decided nothing.
const MAX_TRIES: usize = 200;

/// One purchase try: the answer, recorded for the checks.
async fn purchase(
    client: &reqwest::Client,
    base: &str,
    sale: &Sale,
    (buyer, token): (usize, &str),
    admission: Option<&str>,
) -> Result<(u16, Value, Answered), String> {
    let key = format!("fair-{buyer}");
    let mut request = client
        .post(format!("{base}{}", sale.purchase_path))
        .bearer_auth(token)
        .header("idempotency-key", &key)
        .json(&json!({"quantity": 1}));
    if let Some(admission) = admission {
        request = request.header("x-admission-token", admission);
    }
    let (status, body) = json_of(request).await?;
    let outcome = phases::outcome_of(
        status,
        body["replayed"].as_bool().unwrap_or(false),
        body.to_string().as_bytes(),
    );
    let answered = Answered {
        buyer,
        key,
        outcome,
        reservation_id: (status == 201)
            .then(|| body["reservation_id"].as_str().map(str::to_owned))
            .flatten(),
    };
    Ok((status, body, answered))
}

/// A buyer without a waiting room: fires at arrival, again until decided.
async fn plain_buyer(
    client: &reqwest::Client,
    base: &str,
    sale: &Sale,
    (buyer, token): (usize, &str),
    who: Client,
) -> Result<Fate, String> {
    tokio::time::sleep_until((sale.opening + who.arrives_after.unwrap_or_default()).into()).await;
    let mut answers = Vec::new();
    for _ in 0..MAX_TRIES {
        tokio::time::sleep(who.delay).await;
        let (status, body, answered) = purchase(client, base, sale, (buyer, token), None).await?;
        let outcome = answered.outcome;
        answers.push(answered);
        if status == 201 {
            return Ok(fate("won", answers, None));
        }
        if matches!(outcome, "sold_out" | "limit_exceeded" | "sale_closed") {
            return Ok(fate(outcome, answers, None));
        }
        if status == 429 {
            let wait = body["error"]["retry_after"].as_u64().unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(wait.min(5))).await;
        }
    }
    Ok(fate("gave up", answers, None))
}

fn fate(outcome: &str, answers: Vec<Answered>, waited: Option<Duration>) -> Fate {
    Fate {
        outcome: outcome.to_owned(),
        answers,
        waited,
    }
}

/// A buyer at a waiting room: joins, long-polls, buys once admitted.
async fn room_buyer(
    client: &reqwest::Client,
    base: &str,
    sale: &Sale,
    (buyer, token): (usize, &str),
    who: Client,
) -> Result<Fate, String> {
    let arrival = match who.arrives_after {
        Some(after) => sale.opening + after,
        None => sale.opening - Duration::from_millis(500),
    };
    tokio::time::sleep_until(arrival.into()).await;
    let queue = format!("{}/queue", sale.url);
    let mut answer = Value::Null;
    for _ in 0..MAX_TRIES {
        tokio::time::sleep(who.delay).await;
        let request = if answer.is_null() {
            client.post(&queue).bearer_auth(token)
        } else {
            let ticket = answer["ticket"].as_str().unwrap_or_default();
            client
                .get(format!("{queue}?wait=10"))
                .bearer_auth(token)
                .header("x-queue-ticket", ticket)
        };
        let (status, body) = json_of(request).await?;
        match status {
            200 | 201 => answer = body,
            429 => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            _ if answer.is_null() => {
                return Ok(fate(
                    phases::refusal_of(body.to_string().as_bytes()),
                    Vec::new(),
                    None,
                ));
            }
            _ => continue,
        }
        let state = answer["state"].as_str().unwrap_or_default().to_owned();
        if STATES_LOST.contains(&state.as_str()) {
            return Ok(fate(&format!("queue: {state}"), Vec::new(), None));
        }
        if state != "admitted" {
            continue;
        }
        let waited = Instant::now().saturating_duration_since(sale.opening.max(arrival));
        let admission = answer["admission_token"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut answers = Vec::new();
        for _ in 0..MAX_TRIES {
            tokio::time::sleep(who.delay).await;
            let (status, _, answered) =
                purchase(client, base, sale, (buyer, token), Some(&admission)).await?;
            let outcome = answered.outcome;
            answers.push(answered);
            if status == 201 {
                return Ok(fate("won", answers, Some(waited)));
            }
            if !matches!(status, 429 | 502..=504) {
                return Ok(fate(outcome, answers, Some(waited)));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        return Ok(fate("gave up", answers, Some(waited)));
    }
    Ok(fate("gave up", Vec::new(), None))
}

fn arrival_bucket(who: &Client) -> String {
    match who.arrives_after {
        None => "0: before the opening".to_owned(),
        Some(after) => {
            let half = (after.as_secs_f64() * 2.0).floor() / 2.0;
            format!("{:.1}-{:.1} s after", half, half + 0.5)
        }
    }
}

/// Creates a sale opening `lead` from now, with a waiting room when given.
async fn create(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    (stock, limit): (i64, i64),
    lead: Duration,
    room: Option<Value>,
) -> Result<Sale, String> {
    let opens_at = time::OffsetDateTime::now_utc() + lead;
    let opening = Instant::now() + lead;
    let (status, body) = json_of(
        client
            .post(format!("{base}/api/v1/sales"))
            .bearer_auth(admin)
            .json(&json!({
                "product_id": "bench-fairness",
                "price": 1999,
                "stock": stock,
                "per_user_limit": limit,
                "starts_at": flashmall_engine::sale::rfc3339(opens_at),
                "ends_at": flashmall_engine::sale::rfc3339(opens_at + time::Duration::hours(1)),
                "waiting_room": room,
            })),
    )
    .await?;
    if status != 201 {
        return Err(format!("creating the sale failed: {status} {body}"));
    }
    let id = body["id"].as_str().ok_or("the sale has no id")?.to_owned();
    Sale::at(base, id, opening)
}

/// Runs both sales with the same buyers.
pub async fn run(
    target: &Target,
    options: &SeckillOptions,
    fairness: &FairnessOptions,
    visible: bool,
) -> Result<FairnessReport, String> {
    options.validate()?;
    fairness.validate()?;
    let base = target.base.trim_end_matches('/').to_owned();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| e.to_string())?;
    let admin = login(&client, &base, &target.admin_email, &target.admin_password).await?;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 8..];
    let tokens = phases::buyers(
        &client,
        &base,
        options.buyers,
        |i| format!("f{i}.{tag}@bench.flashmall"),
        crate::seckill::PASSWORD,
        visible,
    )
    .await?;
    let clients = clients(options, fairness);
    let limits = (options.stock, options.per_user_limit);
    let lead = Duration::from_millis(1_500 + options.buyers as u64 / 2);
    let mut runs = Vec::new();
    for (name, room) in [
        ("without a waiting room", None),
        (
            "with a waiting room",
            Some(json!({"admit_per_second": fairness.admit_per_second, "admission_seconds": 300})),
        ),
    ] {
        let with_room = room.is_some();
        let sale = create(&client, &base, &admin, limits, lead, room).await?;
        let started = Instant::now();
        let fates: Vec<Result<Fate, String>> = futures::stream::iter(clients.iter().enumerate())
            .map(|(i, who)| {
                let (client, base, sale, token) = (&client, &base, &sale, tokens[i].as_str());
                async move {
                    if with_room {
                        room_buyer(client, base, sale, (i, token), *who).await
                    } else {
                        plain_buyer(client, base, sale, (i, token), *who).await
                    }
                }
            })
            // Every buyer at once, answers in buyer order.
            .buffered(clients.len().max(1))
            .collect()
            .await;
        let seconds = started.elapsed().as_secs_f64();
        let fates: Vec<Fate> = fates.into_iter().collect::<Result<_, _>>()?;
        let answers: Vec<Answered> = fates
            .iter()
            .flat_map(|f| f.answers.iter().cloned())
            .collect();
        watch_settled(&client, &sale).await?;
        let facts = phases::verify(&client, &base, &admin, &sale, limits, answers).await?;
        let checks = check(&facts);
        runs.push(summarize(name, &sale, &clients, &fates, seconds, checks));
    }
    let with_room = runs.pop().ok_or("no run")?;
    let without_room = runs.pop().ok_or("no run")?;
    Ok(FairnessReport {
        machine: Machine::this(),
        options: options.clone(),
        fairness: fairness.clone(),
        without_room,
        with_room,
    })
}

/// Waits until the sale has nothing pending settlement.
async fn watch_settled(client: &reqwest::Client, sale: &Sale) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, view) = crate::api::steady_json_of(client.get(&sale.url)).await?;
        if view["pending"].as_i64() == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the sale never settled: {view}"));
        }
        tokio::time::sleep(phases::POLL).await;
    }
}

fn summarize(
    name: &'static str,
    sale: &Sale,
    clients: &[Client],
    fates: &[Fate],
    seconds: f64,
    checks: Vec<Check>,
) -> SaleRun {
    let mut by_arrival: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut early: Vec<(Duration, bool)> = Vec::new();
    let mut waits: Vec<f64> = Vec::new();
    for (who, fate) in clients.iter().zip(fates) {
        *by_arrival
            .entry(arrival_bucket(who))
            .or_default()
            .entry(fate.outcome.clone())
            .or_default() += 1;
        if who.arrives_after.is_none() {
            early.push((who.delay, fate.outcome == "won"));
        }
        if let Some(w) = fate.waited {
            waits.push(w.as_secs_f64());
        }
    }
    early.sort_by_key(|(delay, _)| *delay);
    let quarter = |q: usize| {
        let n = early.len();
        let part = &early[n * q / 4..n * (q + 1) / 4];
        if part.is_empty() {
            0.0
        } else {
            100.0 * part.iter().filter(|(_, won)| *won).count() as f64 / part.len() as f64
        }
    };
    let quarters = [quarter(0), quarter(1), quarter(2), quarter(3)];
    waits.sort_by(f64::total_cmp);
    let at = |q: f64| waits[((waits.len() - 1) as f64 * q).round() as usize];
    SaleRun {
        name,
        sale_id: sale.id.clone(),
        by_arrival,
        fastest_quarter_won_pct: quarters[0],
        slowest_quarter_won_pct: quarters[3],
        quarters_won_pct: quarters,
        wait_seconds: (!waits.is_empty()).then(|| [at(0.5), at(0.9), at(1.0)]),
        seconds,
        checks,
    }
}

impl FairnessReport {
    pub fn invariants_hold(&self) -> bool {
        [&self.without_room, &self.with_room]
            .iter()
            .all(|r| r.checks.iter().all(|c| c.held))
    }

    pub fn markdown(&self) -> String {
        let o = &self.options;
        let f = &self.fairness;
        let mut md = format!(
            "## Fairness: the same buyers with and without a waiting room\n\n\
             {} buyers for {} units (at most {} each); each client sleeps its own delay, \
             0-{} ms drawn per buyer, before every request; {}% arrive after the opening, \
             spread over {} s. Waiting room: {} admissions/s. {} cores, {} build.\n\n\
             | | fastest quarter won | 2nd | 3rd | slowest quarter won | wait p50 / p90 / max | run |\n|---|---|---|---|---|---|---|\n",
            o.buyers,
            o.stock,
            o.per_user_limit,
            f.client_delay_ms,
            f.late_percent,
            f.arrival_seconds,
            f.admit_per_second,
            self.machine.cores,
            self.machine.build
        );
        for r in [&self.without_room, &self.with_room] {
            let q = r.quarters_won_pct;
            let waits = r
                .wait_seconds
                .map(|[p50, p90, max]| format!("{p50:.2} / {p90:.2} / {max:.2} s"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                md,
                "| {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {waits} | {:.1} s |",
                r.name, q[0], q[1], q[2], q[3], r.seconds
            );
        }
        md.push_str(
            "\n(Quarters of the buyers who arrived before the opening, by client delay.)\n",
        );
        for r in [&self.without_room, &self.with_room] {
            let _ = write!(
                md,
                "\n### {}: outcomes by arrival\n\n| arrival | outcomes |\n|---|---|\n",
                r.name
            );
            for (bucket, outcomes) in &r.by_arrival {
                let cells: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
                let _ = writeln!(md, "| {bucket} | {} |", cells.join(", "));
            }
            let _ = write!(md, "\n{}", checks_table(&r.checks));
        }
        md
    }

    /// Winners' share per quarter of clients, both sales side by side.
    pub fn svg(&self) -> String {
        let (w, h, left, top, bottom) = (640.0, 320.0, 60.0, 50.0, 50.0);
        let plot = h - top - bottom;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"{left}\" y=\"24\" font-size=\"15\">Winners per quarter of clients (fastest first), buyers who arrived before the opening</text>\n"
        );
        let max = self
            .without_room
            .quarters_won_pct
            .iter()
            .chain(&self.with_room.quarters_won_pct)
            .fold(1.0f64, |m, v| m.max(*v));
        for (q, label) in ["fastest", "2nd", "3rd", "slowest"].iter().enumerate() {
            let x0 = left + q as f64 * 140.0;
            for (k, (r, color)) in [
                (&self.without_room, "#d62728"),
                (&self.with_room, "#1f77b4"),
            ]
            .into_iter()
            .enumerate()
            {
                let v = r.quarters_won_pct[q];
                let bar = plot * v / max;
                let x = x0 + k as f64 * 50.0;
                let y = top + plot - bar;
                let _ = writeln!(
                    svg,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"45\" height=\"{bar:.1}\" fill=\"{color}\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.0}%</text>",
                    x + 22.5,
                    y - 4.0
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>",
                x0 + 47.5,
                h - bottom + 18.0
            );
        }
        let _ = writeln!(
            svg,
            "<rect x=\"{left}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"#d62728\"/><text x=\"{:.1}\" y=\"{:.1}\">without a waiting room</text>\
             <rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"#1f77b4\"/><text x=\"{:.1}\" y=\"{:.1}\">with a waiting room</text>\n</svg>",
            h - 18.0,
            left + 14.0,
            h - 9.0,
            left + 200.0,
            h - 18.0,
            left + 214.0,
            h - 9.0
        );
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_drawn_from_the_seed_within_the_options() {
        let options = SeckillOptions {
            buyers: 1_000,
            ..SeckillOptions::default()
        };
        let fairness = FairnessOptions::default();
        let a = clients(&options, &fairness);
        let b = clients(&options, &fairness);
        assert_eq!(a.len(), 1_000);
        assert!(
            a.iter()
                .zip(&b)
                .all(|(x, y)| x.delay == y.delay && x.arrives_after == y.arrives_after)
        );
        assert!(a.iter().all(|c| c.delay <= Duration::from_millis(200)));
        let late = a.iter().filter(|c| c.arrives_after.is_some()).count();
        assert!((150..350).contains(&late), "about a quarter late: {late}");
        assert!(
            a.iter()
                .filter_map(|c| c.arrives_after)
                .all(|d| d <= Duration::from_secs(2))
        );
    }
}
