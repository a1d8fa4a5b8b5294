//! The phases of a seckill, each usable on its own. `flashmall bench
//! seckill` runs them in a row and measures them; `flashmall demo` and
//! `flashmall bench chaos` run the same phases with the shop and the orders
//! beside the storm.
//!
//! 1. [`buyers`]: accounts registered and logged in through the edge.
//! 2. [`open_sale`]: a sale that opens once every connection can be open.
//! 3. [`before_opening`]: attempts sent before the opening, one at a time.
//! 4. [`storm`]: the plan's attempts from the opening instant on the load
//!    driver, each new reservation told to a hook the moment it arrives
//!    (the demo's buyers go to their orders while the storm still runs).
//! 5. [`Watch`]: the sale's pending and remaining units, read from the
//!    opening; [`Watch::settled`] waits until nothing is pending.
//! 6. [`verify`]: the reconcile, the ledger's state of every reservation a
//!    client was told about, and the facts the checks are made of.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderName, HeaderValue, Method};
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{create_sale, ledger_states, reconcile_report, register, steady_json_of};
use crate::http::{Conn, Endpoint};
use crate::load::{self, Job, Mode, Recording};
use crate::progress::Progress;
use flashmall_mesh::ErrorCode;

/// One planned attempt: who, with which Idempotency-Key.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub buyer: usize,
    pub key: String,
}

/// The label of an answer: `reserved`, `replayed`, or the error code.
/// Refusals are read without parsing their JSON (most answers of a storm
/// are refusals, and the generator shares the CPU with the server).
pub fn outcome_of(status: u16, replayed: bool, body: &[u8]) -> &'static str {
    match (status, replayed) {
        (201, true) => "replayed",
        (201, false) => "reserved",
        _ => refusal_of(body),
    }
}

/// The error code of a refusal body `{"error":{"code":"...",...}}`, read
/// without parsing the JSON; `http_error` when there is none.
pub fn refusal_of(body: &[u8]) -> &'static str {
    const KEY: &[u8] = b"\"code\"";
    let value = body
        .windows(KEY.len())
        .position(|w| w == KEY)
        .map(|at| body[at + KEY.len()..].trim_ascii_start())
        .and_then(|rest| rest.strip_prefix(b":"))
        .and_then(|rest| rest.trim_ascii_start().strip_prefix(b"\""))
        .and_then(|rest| rest.iter().position(|b| *b == b'"').map(|end| &rest[..end]));
    value
        .and_then(|code| {
            ErrorCode::ALL
                .iter()
                .map(|c| c.as_str())
                .find(|c| c.as_bytes() == code)
        })
        .unwrap_or("http_error")
}

/// What one attempt got.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered {
    pub buyer: usize,
    pub key: String,
    pub outcome: &'static str,
    pub reservation_id: Option<String>,
}

/// What the ledger says after the run, beside what the clients were told.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub stock: i64,
    pub per_user_limit: i64,
    /// Every attempt made after the opening.
    pub answers: Vec<Answered>,
    /// Units the ledger holds as sold.
    pub sold: i64,
    pub remaining: i64,
    pub pending: i64,
    /// The reconcile report: conservation and the front's drift.
    pub conserved: bool,
    pub drift: i64,
    /// What the reconcile rebuilt from the ledger: units held, and units
    /// put on sale. (The sale's view can be read while orders expire and
    /// give units back, and its counts then move between reads; these do
    /// not.)
    pub rebuilt: (i64, i64),
    /// Reservation ids answered 201 that the ledger does not hold.
    pub missing_in_ledger: Vec<String>,
    /// Units the sale had given back when the facts were read (orders that
    /// expired or were cancelled during the run; 0 when none could).
    pub released: i64,
    /// Reservation ids answered 201 that the ledger holds as released since.
    pub released_ids: Vec<String>,
    /// Reservation ids answered 201 that the ledger refused (a fast
    /// acknowledgement the ledger revoked): no unit, no order.
    pub revoked_ids: Vec<String>,
}

/// What a reconcile report says it rebuilt: (units held, units on sale).
pub fn rebuilt_of(report: &Value) -> (i64, i64) {
    (
        report["settled"].as_i64().unwrap_or(-1),
        report["remaining"].as_i64().unwrap_or(-1),
    )
}

/// Registrations in flight at once.
const REGISTERING: usize = 64;

/// How long one try of a purchase waits for its answer (a client's
/// timeout): past it the connection is given up.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a wait for settlement goes on while nothing pending moves.
pub const STALL: Duration = Duration::from_secs(30);

/// How often the sale is read from the opening on (the resolution of the
/// settlement lag).
pub const POLL: Duration = Duration::from_millis(20);

/// Registers and logs in `count` buyers through the edge (buyer `i` as
/// `email(i)`); their access tokens, in order.
pub async fn buyers(
    client: &reqwest::Client,
    base: &str,
    count: usize,
    email: impl Fn(usize) -> String,
    password: &str,
    visible: bool,
) -> Result<Vec<String>, String> {
    let progress = Progress::start("accounts", count as u64, visible);
    let counter = progress.counter();
    let tokens: Vec<Result<String, String>> = futures::stream::iter(0..count)
        .map(|i| {
            let (email, counter) = (email(i), &counter);
            async move {
                let token = register(client, base, &email, password).await;
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                token
            }
        })
        .buffered(REGISTERING)
        .collect()
        .await;
    progress.finish();
    tokens.into_iter().collect()
}

/// Each token as an `Authorization` header value.
pub fn bearers(tokens: &[String]) -> Result<Arc<Vec<HeaderValue>>, String> {
    tokens
        .iter()
        .map(|t| {
            HeaderValue::from_str(&format!("Bearer {t}")).map_err(|e| format!("bad token: {e}"))
        })
        .collect::<Result<_, _>>()
        .map(Arc::new)
}

/// A sale made for a run.
#[derive(Debug, Clone)]
pub struct Sale {
    pub id: String,
    pub uuid: uuid::Uuid,
    /// `{base}/api/v1/sales/{id}`.
    pub url: String,
    /// `/api/v1/sales/{id}/purchase`.
    pub purchase_path: String,
    /// The opening instant.
    pub opening: Instant,
}

/// How long before its opening a sale is made, so that `connections`
/// connections can be open by then.
pub fn lead(connections: usize) -> Duration {
    Duration::from_millis(1_000 + connections as u64 * 4)
}

/// Makes a sale of `stock` units (at most `limit` per buyer) that opens
/// `lead` from now.
pub async fn open_sale(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    product: &str,
    (stock, limit): (i64, i64),
    lead: Duration,
) -> Result<Sale, String> {
    let opens_at = OffsetDateTime::now_utc() + lead;
    let opening = Instant::now() + lead;
    let id = create_sale(client, base, admin, product, stock, limit, opens_at).await?;
    Sale::at(base, id, opening)
}

impl Sale {
    /// The sale `id` the edge at `base` serves, opening at `opening`.
    pub fn at(base: &str, id: String, opening: Instant) -> Result<Sale, String> {
        let uuid = uuid::Uuid::try_parse(&id)
            .map_err(|e| format!("the sale id {id} is not a UUID: {e}"))?;
        Ok(Sale {
            url: format!("{base}/api/v1/sales/{id}"),
            purchase_path: format!("/api/v1/sales/{id}/purchase"),
            id,
            uuid,
            opening,
        })
    }
}

/// A reservation a buyer was granted (a 201), told once however many
/// answers named it.
#[derive(Debug, Clone)]
pub struct Win {
    pub reservation_id: String,
    pub buyer: usize,
    /// When the 201 arrived.
    pub at: Instant,
}

/// Purchases of a list of attempts: attempt `i` on request `i`.
pub(crate) struct Purchases {
    path: String,
    /// The header that names the buyer: `Authorization` (a bearer token)
    /// at flashmall's edge, `X-User-Id` at the nginx + Lua peer.
    identity: HeaderName,
    tokens: Arc<Vec<HeaderValue>>,
    attempts: Vec<(usize, HeaderValue)>,
    body: Bytes,
    /// Tries after the first, after no answer or a 502/503/504.
    retries: u32,
    /// Where a retry opens a new connection.
    endpoint: Endpoint,
    /// (request, reservation id) of every 201.
    pub(crate) granted: Mutex<Vec<(usize, String)>>,
    /// (request, tries after the first) of every request that retried.
    retried: Mutex<Vec<(usize, u32)>>,
    /// Told of every reservation once, the first time a 201 names it.
    wins: Option<(UnboundedSender<Win>, Mutex<HashSet<String>>)>,
}

impl Purchases {
    pub(crate) fn new(
        sale: &Sale,
        endpoint: &Endpoint,
        tokens: &Arc<Vec<HeaderValue>>,
        attempts: impl IntoIterator<Item = (usize, String)>,
    ) -> Result<Purchases, String> {
        Ok(Purchases {
            path: sale.purchase_path.clone(),
            identity: BEARER,
            tokens: Arc::clone(tokens),
            attempts: attempts
                .into_iter()
                .map(|(buyer, key)| {
                    Ok((
                        buyer,
                        HeaderValue::from_str(&key).map_err(|e| e.to_string())?,
                    ))
                })
                .collect::<Result<_, String>>()?,
            body: Bytes::from_static(br#"{"quantity":1}"#),
            retries: 0,
            endpoint: endpoint.clone(),
            granted: Mutex::new(Vec::new()),
            retried: Mutex::new(Vec::new()),
            wins: None,
        })
    }

    /// The same requests sent to `path` instead of the sale's purchase
    /// path (the static answer to a purchase-shaped request).
    pub(crate) fn sent_to(mut self, path: &str) -> Purchases {
        self.path = path.to_owned();
        self
    }

    fn of_plan(
        sale: &Sale,
        endpoint: &Endpoint,
        tokens: &Arc<Vec<HeaderValue>>,
        attempts: &[Attempt],
    ) -> Result<Purchases, String> {
        Purchases::new(
            sale,
            endpoint,
            tokens,
            attempts.iter().map(|a| (a.buyer, a.key.clone())),
        )
    }

    /// One try on `conn`, within [`ATTEMPT_TIMEOUT`].
    async fn try_once(
        &self,
        conn: &mut Conn,
        buyer: usize,
        key: &HeaderValue,
    ) -> Result<crate::http::Answer, String> {
        let headers = [
            (self.identity.clone(), self.tokens[buyer].clone()),
            (HeaderName::from_static("idempotency-key"), key.clone()),
        ];
        let sent = conn.send(Method::POST, &self.path, &headers, self.body.clone());
        tokio::time::timeout(ATTEMPT_TIMEOUT, sent)
            .await
            .map_err(|_| format!("no answer within {ATTEMPT_TIMEOUT:?}"))?
    }
}

impl Job for Purchases {
    /// Attempt `i`, repeated with its Idempotency-Key up to `retries` times
    /// after no answer or a 502/503/504 (50 ms, then doubling to 1 s,
    /// apart), on a new connection when the last one broke.
    async fn call(&self, conn: &mut Conn, i: usize) -> Result<&'static str, String> {
        let (buyer, key) = &self.attempts[i];
        let mut tries = 0;
        let mut backoff = Duration::from_millis(50);
        let answer = loop {
            let answer = self.try_once(conn, *buyer, key).await;
            let transient = match &answer {
                Ok(a) => (502..=504).contains(&a.status.as_u16()),
                Err(_) => true,
            };
            if tries >= self.retries || !transient {
                break answer;
            }
            tries += 1;
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
            if answer.is_err() || conn.is_closed() {
                match Conn::open(&self.endpoint).await {
                    Ok(fresh) => *conn = fresh,
                    Err(e) if tries >= self.retries => break Err(e),
                    Err(_) => {}
                }
            }
        };
        if tries > 0 {
            self.retried
                .lock()
                .map_err(|_| "poisoned")?
                .push((i, tries));
        }
        let answer = answer?;
        let outcome = outcome_of(answer.status.as_u16(), answer.replayed, &answer.body);
        if answer.status == 201 {
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            if let Some(id) = body["reservation_id"].as_str() {
                self.granted
                    .lock()
                    .map_err(|_| "poisoned")?
                    .push((i, id.to_owned()));
                // A replayed answer is a win too when the client never got
                // the first (it timed out and asked again with the key).
                if let Some((wins, told)) = &self.wins
                    && told.lock().map_err(|_| "poisoned")?.insert(id.to_owned())
                {
                    let _ = wins.send(Win {
                        reservation_id: id.to_owned(),
                        buyer: *buyer,
                        at: Instant::now(),
                    });
                }
            }
        }
        Ok(outcome)
    }
}

/// Sends `attempts` one at a time on one connection (before the sale
/// opens: each is answered `sale_not_open`); the outcomes, in order.
pub async fn before_opening(
    endpoint: &Endpoint,
    sale: &Sale,
    tokens: &Arc<Vec<HeaderValue>>,
    attempts: &[Attempt],
) -> Result<Vec<&'static str>, String> {
    let job = Purchases::of_plan(sale, endpoint, tokens, attempts)?;
    let mut outcomes = Vec::with_capacity(attempts.len());
    if attempts.is_empty() {
        return Ok(outcomes);
    }
    let mut conn = Conn::open(endpoint).await?;
    for i in 0..attempts.len() {
        outcomes.push(job.call(&mut conn, i).await?);
    }
    Ok(outcomes)
}

/// The header a buyer's access token goes in at flashmall's edge.
pub const BEARER: HeaderName = http::header::AUTHORIZATION;

/// The storm: how the attempts are sent.
pub struct Storm<'a> {
    pub endpoint: &'a Endpoint,
    pub sale: &'a Sale,
    /// The header `tokens` go in ([`BEARER`] at flashmall's edge).
    pub identity: HeaderName,
    /// Buyer `i`'s identity: `Bearer <access token>` at flashmall's edge.
    pub tokens: &'a Arc<Vec<HeaderValue>>,
    pub attempts: &'a [Attempt],
    pub mode: Mode,
    /// Tries after the first, with the same Idempotency-Key, after no
    /// answer or a 502/503/504 (a client's retry).
    pub retries: u32,
    /// Told of every reservation granted, as it arrives.
    pub wins: Option<UnboundedSender<Win>>,
}

/// What the storm recorded: every answer (request `i` is attempt `i`).
pub struct Stormed {
    pub recording: Recording,
    /// Each attempt's last answer, with the reservation a 201 named.
    pub answers: Vec<Answered>,
    /// Tries after the first, by request.
    pub retries: HashMap<usize, u32>,
}

impl Stormed {
    /// The reservations clients were told about.
    pub fn granted(&self) -> impl Iterator<Item = &String> {
        self.answers
            .iter()
            .filter_map(|a| a.reservation_id.as_ref())
    }
}

/// Runs the storm from the sale's opening instant (every connection open
/// by then) until every attempt is answered.
pub async fn storm(storm: Storm<'_>, progress: &Progress) -> Result<Stormed, String> {
    let mut job = Purchases::of_plan(storm.sale, storm.endpoint, storm.tokens, storm.attempts)?;
    job.retries = storm.retries;
    job.identity = storm.identity;
    job.wins = storm.wins.map(|tx| (tx, Mutex::default()));
    let job = Arc::new(job);
    let recording = load::drive(
        Arc::clone(&job),
        storm.endpoint,
        load::Run {
            mode: storm.mode,
            requests: storm.attempts.len(),
            start: Some(storm.sale.opening),
            duration: None,
        },
        progress,
    )
    .await?;
    let granted: HashMap<usize, String> = job
        .granted
        .lock()
        .map_err(|_| "poisoned")?
        .iter()
        .cloned()
        .collect();
    let retries = job
        .retried
        .lock()
        .map_err(|_| "poisoned")?
        .iter()
        .copied()
        .collect();
    let answers = recording
        .samples
        .iter()
        .filter_map(|s| {
            let a = storm.attempts.get(s.index)?;
            Some(Answered {
                buyer: a.buyer,
                key: a.key.clone(),
                outcome: s.outcome,
                reservation_id: granted.get(&s.index).cloned(),
            })
        })
        .collect();
    Ok(Stormed {
        recording,
        answers,
        retries,
    })
}

/// (seconds since the opening, pending units, remaining units).
pub type Reading = (f64, i64, i64);

/// The sale read every [`POLL`] from its opening on.
pub struct Watch {
    series: Arc<Mutex<Vec<Reading>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub fn start(client: &reqwest::Client, sale: &Sale) -> Watch {
        let series = Arc::new(Mutex::new(Vec::<Reading>::new()));
        let (client, url, opening) = (client.clone(), sale.url.clone(), sale.opening);
        let task = {
            let series = Arc::clone(&series);
            tokio::spawn(async move {
                tokio::time::sleep_until(opening.into()).await;
                loop {
                    if let Ok((200, view)) = crate::api::json_of(client.get(&url)).await {
                        let t = opening.elapsed().as_secs_f64();
                        let entry = (
                            t,
                            view["pending"].as_i64().unwrap_or(-1),
                            view["remaining"].as_i64().unwrap_or(-1),
                        );
                        if let Ok(mut s) = series.lock() {
                            s.push(entry);
                        }
                    }
                    tokio::time::sleep(POLL).await;
                }
            })
        };
        Watch { series, task }
    }

    /// Waits for a reading taken `after` the opening or later that shows
    /// nothing pending, and returns its time since the opening; `None`
    /// when the pending count stopped moving for [`STALL`] above 0.
    pub async fn settled(&self, after: Duration) -> Result<Option<f64>, String> {
        let after = after.as_secs_f64();
        let mut last: Option<i64> = None;
        let mut moved = Instant::now();
        loop {
            let reading = self.series.lock().map_err(|_| "poisoned")?.last().copied();
            if let Some((t, pending, _)) = reading {
                if pending == 0 && t >= after {
                    return Ok(Some(t));
                }
                if last != Some(pending) {
                    last = Some(pending);
                    moved = Instant::now();
                }
            }
            if moved.elapsed() > STALL {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops reading; every reading taken.
    pub fn stop(self) -> Result<Vec<Reading>, String> {
        self.task.abort();
        let series = self.series.lock().map_err(|_| "poisoned")?;
        Ok(series.clone())
    }
}

/// The ledger's view of the sale after a storm, beside what `answers`
/// (every attempt made after the opening) told the clients: what was left
/// pending (read before the reconcile, which would settle it), the
/// reconcile's report, the sale, and every reservation a client was told
/// about.
pub async fn verify(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    sale: &Sale,
    (stock, per_user_limit): (i64, i64),
    answers: Vec<Answered>,
) -> Result<Facts, String> {
    let (_, before) = steady_json_of(client.get(&sale.url)).await?;
    let report = reconcile_report(client, base, admin, &sale.id).await?;
    let (_, view) = steady_json_of(client.get(&sale.url)).await?;
    let granted: HashSet<&String> = answers
        .iter()
        .filter_map(|a| a.reservation_id.as_ref())
        .collect();
    let states = ledger_states(client, base, admin, granted).await;
    Ok(Facts {
        stock,
        per_user_limit,
        sold: view["settled"].as_i64().unwrap_or(-1),
        remaining: view["remaining"].as_i64().unwrap_or(-1),
        pending: before["pending"].as_i64().unwrap_or(-1),
        conserved: report["conserved"] == true,
        drift: report["drift"].as_i64().unwrap_or(i64::MAX),
        rebuilt: rebuilt_of(&report),
        missing_in_ledger: states.missing,
        released: view["released"].as_i64().unwrap_or(-1),
        released_ids: states.released,
        revoked_ids: states.revoked,
        answers,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        reason = "a test's failed step panics the test"
    )]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// A purchase endpoint whose `n`-th request (from 0) gets `answer(n)`:
    /// `None` drops the connection without an answer.
    async fn server(answer: fn(usize) -> Option<(u16, &'static str)>) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::local(listener.local_addr().unwrap());
        let calls = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let calls = Arc::clone(&calls);
                tokio::spawn(async move {
                    let service = service_fn(move |_request| {
                        let n = calls.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let Some((status, body)) = answer(n) else {
                                return Err(std::io::Error::other("dropped"));
                            };
                            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = http::StatusCode::from_u16(status)
                                .map_err(std::io::Error::other)?;
                            if n > 2 {
                                response.headers_mut().insert(
                                    "idempotent-replayed",
                                    HeaderValue::from_static("true"),
                                );
                            }
                            Ok::<_, std::io::Error>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        endpoint
    }

    fn sale() -> Sale {
        Sale {
            id: "s".into(),
            uuid: uuid::Uuid::nil(),
            url: String::new(),
            purchase_path: "/api/v1/sales/s/purchase".into(),
            opening: Instant::now(),
        }
    }

    const UNAVAILABLE: &str = r#"{"error":{"code":"unavailable","message":"later"}}"#;
    const GRANTED: &str = r#"{"reservation_id":"r-1"}"#;

    #[tokio::test]
    async fn a_retry_repeats_the_key_on_a_new_connection_and_a_win_is_told_once() {
        let endpoint = server(|n| match n {
            0 => None,
            1 => Some((503, UNAVAILABLE)),
            _ => Some((201, GRANTED)),
        })
        .await;
        let tokens = bearers(&["t".into()]).unwrap();
        let attempts = [(0, "k".to_owned()), (0, "k".to_owned())];
        let mut job = Purchases::new(&sale(), &endpoint, &tokens, attempts).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        job.retries = 2;
        job.wins = Some((tx, Mutex::default()));
        let mut conn = Conn::open(&endpoint).await.unwrap();
        // No answer, then 503, then the reservation: two retries.
        assert_eq!(job.call(&mut conn, 0).await.unwrap(), "reserved");
        // The same key again: a replay of the same reservation.
        assert_eq!(job.call(&mut conn, 1).await.unwrap(), "replayed");
        assert_eq!(*job.retried.lock().unwrap(), [(0, 2)]);
        assert_eq!(
            *job.granted.lock().unwrap(),
            [(0, "r-1".to_owned()), (1, "r-1".to_owned())]
        );
        drop(job);
        let win = rx.recv().await.unwrap();
        assert_eq!((win.reservation_id.as_str(), win.buyer), ("r-1", 0));
        assert!(rx.recv().await.is_none(), "a reservation is told once");
    }

    #[tokio::test]
    async fn without_retries_the_first_answer_is_the_outcome() {
        let endpoint = server(|_| Some((503, UNAVAILABLE))).await;
        let tokens = bearers(&["t".into()]).unwrap();
        let job = Purchases::new(&sale(), &endpoint, &tokens, [(0, "k".to_owned())]).unwrap();
        let mut conn = Conn::open(&endpoint).await.unwrap();
        assert_eq!(job.call(&mut conn, 0).await.unwrap(), "unavailable");
        assert!(job.retried.lock().unwrap().is_empty());
        assert!(job.granted.lock().unwrap().is_empty());
    }
}
