//! The waiting room: for a sale created with `waiting_room`, the edge lets
//! a purchase through only with an admission token, and hands those out in
//! queue order at the rate the engine can take.
//!
//! - `POST /api/v1/sales/{id}/queue` joins (one place per buyer; again
//!   gives the same place) and answers a queue ticket: signed by the edge,
//!   bound to the buyer and the sale, short-lived.
//! - `GET /api/v1/sales/{id}/queue` with the ticket (`X-Queue-Ticket`)
//!   answers the place, how many are admitted, an estimated wait and a
//!   fresh ticket; `?wait=N` holds the answer up to N seconds until the
//!   buyer's state changes: the room opens, they are admitted, or the
//!   queue closes (a long poll). Once admitted,
//!   the answer carries an admission token, good for `admission_seconds`
//!   from the admission.
//! - A purchase of the sale needs `X-Admission-Token`, checked and spent
//!   here (one admission buys once; its retries with the same
//!   Idempotency-Key pass too) and told to the engine, signed; the engine
//!   refuses a waiting-room purchase the edge did not admit.
//!
//! Everyone who joined before the opening is shuffled once at the opening
//! (seeded, see `store`); later joiners queue in arrival order. Each
//! replica runs a ticker per active room: it opens the room when due,
//! reads the engine's counts (sold out closes admission; units that come
//! back reopen it; the settlement backlog slows it) and advances the
//! shared admission count, never holding more admissions open than units
//! remain: an admitted buyer, whatever their client's speed, finds a unit
//! while their admission lasts. Waiting buyers' long polls wake on each tick.

pub mod store;
pub mod ticket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use flashmall_mesh::contract::rfc3339_ms;
use flashmall_mesh::identity::IDENTITY_HEADER;
use flashmall_mesh::{ApiError, ErrorCode, Identity, IdentityKey, MeshTls};
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, Semaphore, watch};

use crate::config::WaitingRoomConfig;
use crate::state::now_ms;
use store::{Joined, Pace, Progress, QueueStore, Used};
use ticket::{Kind, Ticket};

/// The header a waiting room's ticket travels in.
pub const TICKET_HEADER: &str = "x-queue-ticket";
/// The header a purchase's admission token travels in.
pub const ADMISSION_HEADER: &str = "x-admission-token";

/// How long a room's keys outlive its sale (late polls still read them).
const KEEP_AFTER_END_MS: u64 = 3_600_000;
/// A room no one asked about for this long stops ticking on this replica.
const IDLE: Duration = Duration::from_secs(60);
/// Sales remembered at once (a sale unknown to the engine is forgotten
/// after `UNKNOWN_FOR`).
const MAX_KNOWN: usize = 10_000;
const UNKNOWN_FOR: Duration = Duration::from_secs(1);
/// Deadline of one read of a sale from the engine.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the edge needs of a sale, from the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleInfo {
    pub id: String,
    pub stock: i64,
    pub starts_at_ms: u64,
    pub ends_at_ms: u64,
    pub room: Option<RoomSettings>,
}

/// A sale's `waiting_room`, as the engine stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomSettings {
    pub admit_per_second: f64,
    pub admission_ms: u64,
    pub max_queue: u32,
}

impl SaleInfo {
    fn from_json(body: &Value) -> Option<SaleInfo> {
        let instant = |field: &str| {
            time::OffsetDateTime::parse(
                body[field].as_str()?,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
            .map(|t| (t.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        };
        let room = &body["waiting_room"];
        Some(SaleInfo {
            id: body["id"].as_str()?.to_owned(),
            stock: body["stock"].as_i64()?,
            starts_at_ms: instant("starts_at")?,
            ends_at_ms: instant("ends_at")?,
            room: room.is_object().then(|| RoomSettings {
                admit_per_second: room["admit_per_second"].as_f64().unwrap_or(1.0),
                admission_ms: room["admission_seconds"].as_u64().unwrap_or(120) * 1000,
                max_queue: room["max_queue"]
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(u32::MAX),
            }),
        })
    }

    fn expire_at_ms(&self) -> u64 {
        self.ends_at_ms + KEEP_AFTER_END_MS
    }
}

/// A sale as the engine last answered it (or did not know it).
struct Fetched {
    at: Instant,
    /// The sale, `None` when the engine has no such sale, or why it could
    /// not be read.
    info: Result<Option<Arc<SaleInfo>>, String>,
}

impl Fetched {
    /// A sale read is kept for good; an unknown sale and a failed read
    /// for `UNKNOWN_FOR`, so a storm of joins and polls during an engine
    /// outage reads each sale at most once a second per replica.
    fn fresh(&self) -> bool {
        matches!(self.info, Ok(Some(_))) || self.at.elapsed() < UNKNOWN_FOR
    }

    fn live_sale(&self, now_ms: u64) -> bool {
        matches!(&self.info, Ok(Some(info)) if info.expire_at_ms() > now_ms)
    }
}

/// A room's state as this replica's ticker last saw it.
#[derive(Debug, Clone, Default)]
struct Live {
    progress: Progress,
    /// Admissions per second now (after the backlog's slowdown).
    rate: f64,
    ended: bool,
}

/// A room ticking on this replica: a waiting-room sale and its settings.
struct Room {
    info: Arc<SaleInfo>,
    settings: RoomSettings,
    live: watch::Sender<Live>,
    touched: AtomicU64,
}

/// How the edge reaches the engine for sale reads.
pub struct EngineLink {
    pub pool: Arc<LoadBalancer<RoundRobin>>,
    /// The pool's name: the component the identity is signed for.
    pub target: String,
    pub tls: Option<MeshTls>,
}

/// The waiting rooms this replica serves.
pub struct WaitingRooms {
    store: Arc<dyn QueueStore>,
    key: IdentityKey,
    config: WaitingRoomConfig,
    engine: Option<EngineLink>,
    known: RwLock<HashMap<String, Arc<OnceCell<Fetched>>>>,
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    waiters: Arc<Semaphore>,
    started: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "waiting room unavailable");
    retry_shortly()
}

fn retry_shortly() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "the waiting room cannot be reached right now; retry shortly",
    )
    .with_retry_after(1)
}

/// What a buyer's poll says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    WaitingForOpening,
    Waiting,
    Admitted,
    AdmissionExpired,
    SoldOut,
    Ended,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::WaitingForOpening => "waiting_for_opening",
            State::Waiting => "waiting",
            State::Admitted => "admitted",
            State::AdmissionExpired => "admission_expired",
            State::SoldOut => "sold_out",
            State::Ended => "ended",
        }
    }

    /// True when waiting longer cannot change the answer by itself.
    fn settled(self) -> bool {
        !matches!(self, State::WaitingForOpening | State::Waiting)
    }
}

impl WaitingRooms {
    pub fn new(
        store: Arc<dyn QueueStore>,
        key: IdentityKey,
        config: WaitingRoomConfig,
        engine: Option<EngineLink>,
    ) -> Arc<WaitingRooms> {
        Arc::new(WaitingRooms {
            store,
            key,
            waiters: Arc::new(Semaphore::new(config.max_waiters)),
            config,
            engine,
            known: RwLock::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            started: Instant::now(),
        })
    }

    /// The longest a poll may wait.
    pub fn max_wait(&self) -> Duration {
        self.config.max_wait
    }

    /// A sale's GET from the engine: `Ok(None)` when it has no such sale.
    /// A backend that fails is followed by another (a replica that died
    /// before the health check saw it).
    async fn fetch(&self, sale: &str) -> Result<Option<Value>, String> {
        let engine = self.engine.as_ref().ok_or("no engine pool routes sales")?;
        let mut failed = String::new();
        for attempt in 0..2u8 {
            let backend = engine
                .pool
                .select(format!("{sale}{attempt}").as_bytes(), 16)
                .ok_or("no healthy engine")?;
            let addr = *backend.addr.as_inet().ok_or("the engine is not on TCP")?;
            match self.fetch_from(engine, addr, sale).await {
                Ok(answer) => return Ok(answer),
                Err(e) => failed = e,
            }
        }
        Err(failed)
    }

    async fn fetch_from(
        &self,
        engine: &EngineLink,
        addr: std::net::SocketAddr,
        sale: &str,
    ) -> Result<Option<Value>, String> {
        let signed = self.key.sign_for(
            &Identity::service("edge", Duration::from_secs(30)),
            &engine.target,
        );
        let path = format!("/api/v1/sales/{sale}");
        let answer = tokio::time::timeout(
            ENGINE_TIMEOUT,
            flashmall_mesh::tls::get(
                engine.tls.as_ref(),
                &engine.target,
                addr,
                &path,
                &[(IDENTITY_HEADER, &signed)],
                64 * 1024,
            ),
        )
        .await
        .map_err(|_| "the engine did not answer in time".to_owned())??;
        match answer.0.as_u16() {
            404 => Ok(None),
            200 => serde_json::from_slice(&answer.1)
                .map(Some)
                .map_err(|e| e.to_string()),
            status => Err(format!("the engine answered {status}")),
        }
    }

    /// What the edge knows of `sale` (read once from the engine; a sale
    /// never changes its waiting room).
    pub async fn sale(&self, sale: &str) -> Result<Option<Arc<SaleInfo>>, ApiError> {
        let fresh = |c: &Arc<OnceCell<Fetched>>| c.get().is_none_or(Fetched::fresh);
        let known = {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            known.get(sale).filter(|c| fresh(c)).cloned()
        };
        let cell = match known {
            Some(cell) => cell,
            None => {
                let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
                if known.len() >= MAX_KNOWN {
                    let now = now_ms();
                    known.retain(|_, c| c.get().is_some_and(|f| f.live_sale(now)));
                }
                match known.get(sale) {
                    Some(c) if fresh(c) => Arc::clone(c),
                    _ => {
                        let c = Arc::new(OnceCell::new());
                        known.insert(sale.to_owned(), Arc::clone(&c));
                        c
                    }
                }
            }
        };
        let fetched = cell
            .get_or_init(|| async {
                let info = self.fetch(sale).await.and_then(|body| {
                    body.map(|body| {
                        SaleInfo::from_json(&body)
                            .map(Arc::new)
                            .ok_or_else(|| "the engine's sale is unreadable".to_owned())
                    })
                    .transpose()
                });
                if let Err(e) = &info {
                    tracing::warn!(error = %e, sale, "could not read a sale from the engine");
                }
                Fetched {
                    at: Instant::now(),
                    info,
                }
            })
            .await;
        // Logged once per read above, not once per request.
        fetched.info.clone().map_err(|_| retry_shortly())
    }

    /// The room of a waiting-room sale, ticking on this replica from now.
    fn room(self: &Arc<Self>, info: &Arc<SaleInfo>, settings: RoomSettings) -> Arc<Room> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let touched = self.started.elapsed().as_millis() as u64;
        if let Some(room) = rooms.get(&info.id) {
            room.touched.store(touched, Ordering::Relaxed);
            return Arc::clone(room);
        }
        let room = Arc::new(Room {
            info: Arc::clone(info),
            settings,
            live: watch::channel(Live::default()).0,
            touched: AtomicU64::new(touched),
        });
        rooms.insert(info.id.clone(), Arc::clone(&room));
        tokio::spawn(Arc::clone(self).tick(Arc::clone(&room)));
        room
    }

    /// The engine's `remaining` and `pending` of a sale, when it answers.
    async fn counts(&self, sale: &str) -> Option<(i64, i64)> {
        match self.fetch(sale).await {
            Ok(Some(body)) => Some((
                body["remaining"].as_i64().unwrap_or(0),
                body["pending"].as_i64().unwrap_or(0),
            )),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!(error = %e, sale, "waiting room: engine counts unavailable");
                None
            }
        }
    }

    /// One room's ticker on this replica, until its sale ends or no one
    /// asked about it for a while.
    async fn tick(self: Arc<Self>, room: Arc<Room>) {
        let (info, settings) = (&room.info, room.settings);
        let mut every = tokio::time::interval(self.config.tick);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pace = Pace {
            per_second: settings.admit_per_second,
            remaining: info.stock,
            window_ms: settings.admission_ms,
        };
        loop {
            every.tick().await;
            let now = now_ms();
            let idle = self.started.elapsed().as_millis() as u64
                > room.touched.load(Ordering::Relaxed) + IDLE.as_millis() as u64;
            if now >= info.ends_at_ms || idle {
                room.live
                    .send_modify(|live| live.ended = now >= info.ends_at_ms);
                break;
            }
            if let Err(e) = self.step(info, settings, now, &mut pace, &room).await {
                tracing::warn!(error = %e, sale = %info.id, "waiting room tick failed");
            }
        }
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(&info.id).is_some_and(|r| Arc::ptr_eq(r, &room)) {
            rooms.remove(&info.id);
        }
    }

    async fn step(
        &self,
        info: &SaleInfo,
        settings: RoomSettings,
        now: u64,
        pace: &mut Pace,
        room: &Room,
    ) -> Result<(), store::StoreError> {
        let expire = info.expire_at_ms();
        let closed = room.live.borrow().progress.closed;
        if now >= info.starts_at_ms {
            if room.live.borrow().progress.seed.is_none() {
                let seed = uuid::Uuid::new_v4().simple().to_string();
                let seed = self.store.open(&info.id, &seed, expire).await?;
                tracing::info!(sale = %info.id, seed, "waiting room opened");
            }
            if let Some((remaining, pending)) = self.counts(&info.id).await {
                let sold_out = remaining <= 0;
                if sold_out != closed {
                    self.store.set_closed(&info.id, sold_out).await?;
                }
                *pace = pace_for(settings, self.config.backlog, remaining, pending);
            }
        }
        let progress = self.store.advance(&info.id, *pace, expire).await?;
        let sale = info.id.clone();
        metrics::gauge!("flashmall_waiting_room_queue_length", "sale" => sale.clone())
            .set(progress.joined.saturating_sub(progress.admitted) as f64);
        metrics::gauge!("flashmall_waiting_room_admitted", "sale" => sale.clone())
            .set(progress.admitted as f64);
        metrics::counter!("flashmall_waiting_room_admissions_total", "sale" => sale.clone())
            .increment(progress.granted);
        // What this call admitted is a count, not the room's state.
        let progress = Progress {
            granted: 0,
            ..progress
        };
        metrics::gauge!("flashmall_waiting_room_open_admissions", "sale" => sale.clone())
            .set(progress.open as f64);
        metrics::gauge!("flashmall_waiting_room_admission_rate", "sale" => sale)
            .set(pace.per_second);
        let rate = pace.per_second;
        room.live.send_if_modified(|live| {
            let changed = live.progress != progress || live.rate != rate;
            live.progress = progress;
            live.rate = rate;
            changed
        });
        Ok(())
    }

    /// `POST /api/v1/sales/{id}/queue`.
    pub async fn join(self: &Arc<Self>, sale: &str, user: &str) -> Result<(u16, Value), ApiError> {
        let (info, settings) = self.room_sale(sale).await?;
        if now_ms() >= info.ends_at_ms {
            return Err(ApiError::new(ErrorCode::SaleClosed, "the sale has ended"));
        }
        let joined = self
            .store
            .join(sale, user, settings.max_queue, info.expire_at_ms())
            .await
            .map_err(unavailable)?;
        let status = match joined {
            Joined::New(_) => {
                metrics::counter!("flashmall_waiting_room_joins_total").increment(1);
                201
            }
            Joined::Again(_) => 200,
            Joined::Full => {
                return Err(ApiError::new(
                    ErrorCode::QueueFull,
                    "the sale's waiting room is full; no more buyers can join",
                ));
            }
        };
        let room = self.room(&info, settings);
        let answer = self.answer(&room, user).await?;
        Ok((status, answer))
    }

    /// `GET /api/v1/sales/{id}/queue`, holding the answer up to `wait`.
    pub async fn poll(
        self: &Arc<Self>,
        sale: &str,
        user: &str,
        ticket: Option<&str>,
        wait: Duration,
    ) -> Result<Value, ApiError> {
        let ticket = ticket.ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidTicket,
                format!(
                    "send the queue ticket (X-Queue-Ticket) POST /api/v1/sales/{sale}/queue gave"
                ),
            )
        })?;
        ticket::verify(&self.key, ticket, Kind::Queue, sale, user, now_ms())?;
        let (info, settings) = self.room_sale(sale).await?;
        let room = self.room(&info, settings);
        if !wait.is_zero()
            && let Ok(_permit) = Arc::clone(&self.waiters).try_acquire_owned()
        {
            self.wait(&room, user, wait).await?;
        }
        self.answer(&room, user).await
    }

    /// Waits until the buyer's state changes (admitted, the queue closed,
    /// the room opened) or `wait` passes.
    async fn wait(&self, room: &Room, user: &str, wait: Duration) -> Result<(), ApiError> {
        let info = &room.info;
        let deadline = tokio::time::Instant::now() + wait;
        let mut live = room.live.subscribe();
        // Where the buyer stands now, by the store (this replica's ticker
        // may not have ticked yet).
        let place = self.place(room, user).await?;
        let mut rank = place.rank;
        let mut seen = live.borrow_and_update().clone();
        seen.progress = place.progress;
        let first = state_of(info, &seen, rank, now_ms());
        if first.settled() {
            return Ok(());
        }
        loop {
            match tokio::time::timeout_at(deadline, live.changed()).await {
                Ok(Ok(())) => {}
                _ => return Ok(()),
            }
            let seen = live.borrow_and_update().clone();
            if rank.is_none() && seen.progress.seed.is_some() {
                rank = self.place(room, user).await?.rank;
            }
            // Settled, or moved on (the opening gave the buyer a place).
            let state = state_of(info, &seen, rank, now_ms());
            if state != first || state.settled() {
                return Ok(());
            }
        }
    }

    /// The buyer's place; joined again when the store lost it (see
    /// `store`: a Redis that lost writes).
    async fn place(&self, room: &Room, user: &str) -> Result<store::Place, ApiError> {
        let info = &room.info;
        if let Some(place) = self
            .store
            .place(&info.id, user)
            .await
            .map_err(unavailable)?
        {
            return Ok(place);
        }
        self.store
            .join(&info.id, user, room.settings.max_queue, info.expire_at_ms())
            .await
            .map_err(unavailable)?;
        self.store
            .place(&info.id, user)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| ApiError::new(ErrorCode::QueueFull, "the sale's waiting room is full"))
    }

    /// A waiting-room sale and its settings, or the error its queue answers.
    async fn room_sale(&self, sale: &str) -> Result<(Arc<SaleInfo>, RoomSettings), ApiError> {
        let info = self
            .sale(sale)
            .await?
            .ok_or_else(|| ApiError::new(ErrorCode::SaleNotFound, "no such sale"))?;
        let settings = info.room.ok_or_else(|| {
            ApiError::new(
                ErrorCode::Conflict,
                "this sale has no waiting room: purchase it directly",
            )
        })?;
        Ok((info, settings))
    }

    /// The answer to a join or a poll.
    async fn answer(&self, room: &Room, user: &str) -> Result<Value, ApiError> {
        let (info, settings) = (&room.info, room.settings);
        let place = self.place(room, user).await?;
        let now = now_ms();
        let mut live = room.live.borrow().clone();
        // The store's figures are the newest; the ticker's rate and end.
        live.progress = place.progress.clone();
        let mut state = state_of(info, &live, place.rank, now);
        let mut admission = None;
        if state == State::Admitted {
            // Open, or used (its retries need the token): the window runs
            // from the grant. Neither: it lapsed.
            match place.used_granted_ms.or(place.granted_ms) {
                Some(granted) => {
                    let expires = if granted == 0 {
                        now + settings.admission_ms
                    } else {
                        granted + settings.admission_ms
                    };
                    if now >= expires {
                        state = State::AdmissionExpired;
                    } else {
                        let token = ticket::sign(
                            &self.key,
                            &Ticket {
                                kind: Kind::Admit,
                                sale: info.id.clone(),
                                user: user.to_owned(),
                                expires_ms: expires,
                            },
                        );
                        admission = Some((token, expires));
                    }
                }
                None => state = State::AdmissionExpired,
            }
        }
        let ticket_expires = now + self.config.ticket_ttl.as_millis() as u64;
        let ticket = ticket::sign(
            &self.key,
            &Ticket {
                kind: Kind::Queue,
                sale: info.id.clone(),
                user: user.to_owned(),
                expires_ms: ticket_expires,
            },
        );
        let admitted = live.progress.admitted;
        let ahead = place.rank.map(|r| r.saturating_sub(admitted));
        let estimate = match (state, ahead) {
            (State::Waiting, Some(ahead)) if live.rate > 0.0 => {
                Some((ahead as f64 / live.rate).ceil() as u64)
            }
            (State::Admitted, _) => Some(0),
            _ => None,
        };
        Ok(json!({
            "sale_id": info.id,
            "state": state.as_str(),
            "position": place.rank.map(|r| r + 1),
            "ahead": ahead,
            "admitted": admitted,
            "queue_length": live.progress.joined,
            "estimated_wait_seconds": estimate,
            "joined_at": rfc3339_ms(place.joined_ms),
            "opens_at": rfc3339_ms(info.starts_at_ms),
            "shuffle_seed": live.progress.seed,
            "ticket": ticket,
            "ticket_expires_at": rfc3339_ms(ticket_expires),
            "admission_used": place.used_granted_ms.is_some(),
            "admission_token": admission.as_ref().map(|(t, _)| t),
            "admission_expires_at": admission.map(|(_, e)| rfc3339_ms(e)),
        }))
    }

    /// A purchase of `sale` carrying an admission `token`: checks it and
    /// spends it on the purchase's key; the value of the header that tells
    /// the engine the buyer is admitted. A purchase without a token is not
    /// looked at here: the engine refuses it if the sale has a waiting room,
    /// so the purchase path reads no sale and no store.
    pub async fn admit_purchase(
        &self,
        sale: &str,
        user: &str,
        token: &str,
        idempotency_key: Option<&str>,
    ) -> Result<String, ApiError> {
        let admission = ticket::verify(&self.key, token, Kind::Admit, sale, user, now_ms())?;
        let admitted = self.key.sign_admitted(sale, user);
        // Without a key the engine refuses the purchase; nothing to spend.
        let Some(key) = idempotency_key else {
            return Ok(admitted);
        };
        // The spent admission is kept past any use of its token.
        let keep_until = admission.expires_ms + KEEP_AFTER_END_MS;
        let used = self
            .store
            .use_admission(sale, user, key, keep_until)
            .await
            .map_err(unavailable)?;
        match used {
            Used::First { waited_ms } => {
                if let Some(waited) = waited_ms {
                    metrics::histogram!("flashmall_waiting_room_wait_seconds")
                        .record(waited as f64 / 1000.0);
                }
                Ok(admitted)
            }
            Used::Again => Ok(admitted),
            Used::Other => Err(ApiError::new(
                ErrorCode::AdmissionUsed,
                "this admission was used for another purchase (another Idempotency-Key): one purchase per admission",
            )),
        }
    }
}

/// Admission's pace given the engine's counts: the sale's rate, slowed in
/// proportion to the settlement backlog (`pending` units) and stopped
/// while it is worth `backlog` of admissions, until the ledger catches up.
fn pace_for(settings: RoomSettings, backlog: Duration, remaining: i64, pending: i64) -> Pace {
    let worth = settings.admit_per_second * backlog.as_secs_f64();
    let factor = (1.0 - pending.max(0) as f64 / worth.max(1.0)).clamp(0.0, 1.0);
    Pace {
        per_second: settings.admit_per_second * factor,
        remaining,
        window_ms: settings.admission_ms,
    }
}

/// A buyer's state given the room and their 0-based rank.
fn state_of(info: &SaleInfo, live: &Live, rank: Option<u64>, now: u64) -> State {
    if live.ended || now >= info.ends_at_ms {
        return State::Ended;
    }
    if live.progress.closed {
        return State::SoldOut;
    }
    match rank {
        _ if live.progress.seed.is_none() => State::WaitingForOpening,
        Some(rank) if rank < live.progress.admitted => State::Admitted,
        _ => State::Waiting,
    }
}

/// The `wait` of a poll's query (`wait=N` seconds), at most `max`.
pub fn wait_of(query: Option<&str>, max: Duration) -> Result<Duration, ApiError> {
    let Some(value) = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("wait="))
    else {
        return Ok(Duration::ZERO);
    };
    let seconds: u64 = value.parse().map_err(|_| {
        ApiError::invalid(format!(
            "wait must be a whole number of seconds from 0 to {}",
            max.as_secs()
        ))
    })?;
    if seconds > max.as_secs() {
        return Err(ApiError::invalid(format!(
            "wait must be a whole number of seconds from 0 to {}",
            max.as_secs()
        )));
    }
    Ok(Duration::from_secs(seconds))
}

/// The sale of a queue path `/api/v1/sales/{id}/queue`.
pub fn queue_sale(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/api/v1/sales/")?
        .strip_suffix("/queue")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> SaleInfo {
        SaleInfo {
            id: "s".into(),
            stock: 10,
            starts_at_ms: 1_000,
            ends_at_ms: 10_000,
            room: None,
        }
    }

    #[test]
    fn a_buyer_is_admitted_when_the_head_reaches_them_unless_closed() {
        let mut live = Live::default();
        assert_eq!(
            state_of(&info(), &live, None, 500),
            State::WaitingForOpening
        );
        live.progress.seed = Some("x".into());
        live.progress.admitted = 3;
        assert_eq!(state_of(&info(), &live, Some(2), 2_000), State::Admitted);
        assert_eq!(state_of(&info(), &live, Some(3), 2_000), State::Waiting);
        live.progress.closed = true;
        assert_eq!(state_of(&info(), &live, Some(2), 2_000), State::SoldOut);
        assert_eq!(state_of(&info(), &live, Some(2), 10_000), State::Ended);
    }

    #[tokio::test]
    async fn an_engine_that_cannot_answer_is_asked_about_a_sale_at_most_once_a_second() {
        // An "engine" that takes each connection and drops it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                drop(socket);
            }
        });
        let pool = Arc::new(LoadBalancer::try_from_iter([addr.to_string()]).unwrap());
        let rooms = WaitingRooms::new(
            Arc::new(store::LocalQueueStore::default()),
            IdentityKey::random(),
            WaitingRoomConfig::default(),
            Some(EngineLink {
                pool,
                target: "engine".into(),
                tls: None,
            }),
        );
        let sale = "0199abcd-0000-7000-8000-000000000001";
        let started = Instant::now();
        for _ in 0..50 {
            let refused = rooms.sale(sale).await.unwrap_err();
            assert_eq!(refused.code, ErrorCode::Unavailable);
            assert_eq!(refused.retry_after, Some(1));
        }
        // One read (two backends tried) per second at most, however many
        // purchases ask.
        let reads_allowed = 2 * (1 + started.elapsed().as_secs());
        let reads = accepted.load(Ordering::Relaxed);
        assert!(
            (1..=reads_allowed).contains(&reads),
            "{reads} connections for 50 purchases"
        );
        // A failed read is not kept for good.
        tokio::time::sleep(UNKNOWN_FOR).await;
        assert!(rooms.sale(sale).await.is_err());
        assert!(accepted.load(Ordering::Relaxed) > reads, "read again");
    }

    #[test]
    fn a_settlement_backlog_slows_admission_and_stops_it() {
        let settings = RoomSettings {
            admit_per_second: 100.0,
            admission_ms: 60_000,
            max_queue: 10,
        };
        let backlog = Duration::from_secs(2);
        let pace = |pending| pace_for(settings, backlog, 50, pending).per_second;
        assert_eq!(pace(0), 100.0);
        assert_eq!(pace(100), 50.0, "a second's worth pending halves it");
        assert_eq!(pace(200), 0.0, "two seconds' worth stops it");
        assert_eq!(pace(10_000), 0.0);
        assert_eq!(pace(-5), 100.0);
        assert_eq!(pace_for(settings, backlog, 50, 0).remaining, 50);
    }

    #[test]
    fn waits_are_whole_seconds_within_the_maximum() {
        let max = Duration::from_secs(30);
        assert_eq!(wait_of(None, max).unwrap(), Duration::ZERO);
        assert_eq!(
            wait_of(Some("wait=5"), max).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            wait_of(Some("x=1&wait=30"), max).unwrap(),
            Duration::from_secs(30)
        );
        for bad in ["wait=31", "wait=-1", "wait=1.5", "wait="] {
            assert_eq!(
                wait_of(Some(bad), max).unwrap_err().code,
                ErrorCode::InvalidRequest,
                "{bad}"
            );
        }
        assert_eq!(queue_sale("/api/v1/sales/abc/queue"), Some("abc"));
        assert_eq!(queue_sale("/api/v1/sales/abc/purchase"), None);
    }

    #[test]
    fn a_sale_is_read_from_the_engine_answer() {
        let body = json!({
            "id": "s", "stock": 10, "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2026-01-01T01:00:00Z",
            "waiting_room": {"admit_per_second": 50, "admission_seconds": 30, "max_queue": 1000},
        });
        let info = SaleInfo::from_json(&body).unwrap();
        assert_eq!(info.ends_at_ms - info.starts_at_ms, 3_600_000);
        assert_eq!(
            info.room,
            Some(RoomSettings {
                admit_per_second: 50.0,
                admission_ms: 30_000,
                max_queue: 1000
            })
        );
        let plain = json!({"id": "s", "stock": 10, "starts_at": "2026-01-01T00:00:00Z",
            "ends_at": "2026-01-01T01:00:00Z", "waiting_room": null});
        assert_eq!(SaleInfo::from_json(&plain).unwrap().room, None);
    }
}
