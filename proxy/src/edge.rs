//! The edge's request path, in the order a request meets it (purchase path
//! steps 1–7 of docs/ARCHITECTURE.md). Everything that rejects a request does so
//! in `request_filter`, before any upstream work, and writes the answer
//! itself so the client's connection stays open.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use flashmall_mesh::identity::{
    AccessClaims, CLIENT_HEADER, CLIENT_IDENTITY_HEADERS, IDENTITY_HEADER,
};
use flashmall_mesh::{ApiError, ErrorCode, Identity, IdentityKey, Role, trace};
use pingora::lb::LoadBalancer;
use pingora::lb::selection::RoundRobin;
use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use crate::gate::{self, Gate};
use crate::identity::{Refused, Verifier};
use crate::limits::{KeyKind, Limiter, Limits};
use crate::paths::PathRules;
use crate::state::{Revocation, Snapshot, View, now_ms};
use crate::waiting::{self, WaitingRooms};
use crate::{admin, meters, openapi, respond};

/// The longest an access token can live (the auth service caps it).
const MAX_ACCESS_TOKEN_LIFE_MS: u64 =
    flashmall_mesh::contract::MAX_ACCESS_TOKEN_LIFE.as_millis() as u64;

pub use flashmall_mesh::headers::REVOKE_USER as REVOKE_USER_HEADER;
pub use flashmall_mesh::headers::SOLD_OUT as SOLD_OUT_HEADER;

/// Counts a request in `flashmall_proxy_requests_in_flight` from its
/// first phase until its context is dropped: answered, failed or
/// abandoned by the client. The autoscaler's signal for the edge.
pub struct InFlight(metrics::Gauge);

impl InFlight {
    /// `gauge` is the edge's `flashmall_proxy_requests_in_flight`,
    /// registered once ([`in_flight_gauge`]).
    fn enter(gauge: &metrics::Gauge) -> InFlight {
        gauge.increment(1.0);
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// The edge's in-flight gauge, registered once with the process's recorder.
pub fn in_flight_gauge() -> metrics::Gauge {
    metrics::gauge!("flashmall_proxy_requests_in_flight")
}

/// One request's state across the proxy phases.
#[derive(Default)]
pub struct Ctx {
    /// Held for its drop: the request leaves the in-flight gauge.
    _in_flight: Option<InFlight>,
    request_id: String,
    started: Option<Instant>,
    client_ip: Option<IpAddr>,
    claims: Option<Arc<AccessClaims>>,
    pool: Option<String>,
    route: &'static str,
    idempotent: bool,
    tries: u32,
    sold_out_sale: Option<String>,
    /// The edge's signed word for the engine that this purchase holds an
    /// admission (a waiting-room sale).
    admitted: Option<String>,
    /// The request's root span at the edge (`flashmall_mesh::trace`),
    /// closed when the context drops after `logging`.
    span: Option<tracing::Span>,
    /// That span as a `traceparent` (while spans are exported): sent
    /// upstream and named in the answer's `traceresponse`.
    traceparent: Option<String>,
}

/// How long the edge waits for a sold-out sale's holders.
const HOLDERS_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest holders answer read (a sale's winners: ids of 36 characters).
const HOLDERS_MAX_BYTES: usize = 64 * 1024 * 1024;

/// The edge proxy.
pub struct Edge {
    pub(crate) routes: Vec<(String, String)>,
    pub(crate) pools: HashMap<String, Arc<LoadBalancer<RoundRobin>>>,
    pub(crate) public: PathRules<()>,
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) identity: IdentityKey,
    pub(crate) state: Arc<View>,
    pub(crate) limits: Limits,
    pub(crate) limiter: Limiter,
    pub(crate) gate: Arc<Gate>,
    /// Mutual TLS to the components, when configured.
    pub(crate) tls: Option<Arc<crate::upstreams::PeerTls>>,
    pub(crate) trusted_proxies: Vec<ipnet::IpNet>,
    /// Continue a client's `traceparent` (`proxy.accept_traceparent`).
    pub(crate) accept_traceparent: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    /// Clock skew tolerated on `exp`: a revoked token is refused this long
    /// past its expiry too.
    pub(crate) jwt_leeway: Duration,
    /// Which requests get an access-log line (`proxy.access_log`).
    pub(crate) access_log: crate::access::AccessLogger,
    /// Waiting rooms of the sales that have one.
    pub(crate) waiting: Arc<WaitingRooms>,
    /// `flashmall_proxy_requests_in_flight`, registered once.
    pub(crate) in_flight: metrics::Gauge,
}

/// The route family of `path`, the `route` label of the edge's metrics:
/// bounded, never the raw path. Every family the edge routes has its own;
/// `other` is a path no component serves.
pub(crate) fn route_label(path: &str) -> &'static str {
    if gate::purchase_sale(path).is_some() {
        return "purchase";
    }
    if path == "/healthz" {
        return "health";
    }
    let family = path
        .strip_prefix("/api/v1/")
        .and_then(|rest| rest.split('/').next());
    match family {
        Some("sales") => "sales",
        Some("auth") => "auth",
        Some("users") => "users",
        Some("admin") => "admin",
        Some("reservations") => "reservations",
        Some("orders") => "orders",
        Some("payments") => "payments",
        Some("products") => "products",
        Some("categories") => "categories",
        Some("cart") => "cart",
        Some("checkout") => "checkout",
        Some("openapi.json") => "openapi",
        _ => "other",
    }
}

/// The client's address: the peer, unless the peer is a trusted load
/// balancer, then the rightmost untrusted `X-Forwarded-For` entry (entries
/// left of it were written by the client and prove nothing). Every
/// address is canonical: an IPv4 client of a dual-stack (`[::]`) listener
/// arrives as `::ffff:a.b.c.d` and is taken as `a.b.c.d`, so IPv4
/// blacklist entries, trusted proxies and per-address limits apply to it.
fn client_address(peer: IpAddr, forwarded: &[&str], trusted: &[ipnet::IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Every X-Forwarded-For line, in order, read from the right: the first
    // address a trusted hop did not add is the client. An entry that does
    // not parse ends the walk: nothing left of it can be trusted.
    for entry in forwarded
        .iter()
        .flat_map(|line| line.split(','))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        match entry.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            Err(_) => return peer,
        }
    }
    peer
}

/// The rate-limit key of an address: IPv6 per /64 (one subscriber's
/// allocation), IPv4 per address (an IPv4-mapped IPv6 address is IPv4).
fn address_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// The rate-limit key of an address's site: IPv6 per /48, IPv4 per
/// address.
fn site_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// True for an id in the one form the edge accepts: a lower-case,
/// hyphenated UUID. Other spellings of the same thing (upper case, no
/// hyphens, braces, a URN, percent-encoding) would dodge the access rules,
/// limits and gate written for it, so they are refused.
fn canonical_id(id: &str) -> bool {
    id.len() == 36 && uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id)
}

/// The paths whose segment after the prefix is an id, and what a
/// non-canonical one answers. Longest prefixes first; `except` lists
/// segments there that are routes, not ids.
const ID_PATHS: [(&str, &[&str], ErrorCode, &str); 8] = [
    (
        "/api/v1/admin/users/",
        &[],
        ErrorCode::NotFound,
        "no such user",
    ),
    (
        "/api/v1/admin/blacklist/",
        &[],
        ErrorCode::NotFound,
        "no such blacklist entry",
    ),
    (
        "/api/v1/reservations/",
        &[],
        ErrorCode::NotFound,
        "no such reservation",
    ),
    (
        "/api/v1/cart/items/",
        &[],
        ErrorCode::NotFound,
        "no such product in the cart",
    ),
    (
        "/api/v1/products/",
        &["search"],
        ErrorCode::NotFound,
        "no such product",
    ),
    (
        "/api/v1/payments/",
        &[],
        ErrorCode::NotFound,
        "no such payment",
    ),
    ("/api/v1/orders/", &[], ErrorCode::NotFound, "no such order"),
    (
        "/api/v1/sales/",
        &[],
        ErrorCode::SaleNotFound,
        "no such sale",
    ),
];

/// The refusal of a path whose id is not canonical (see `canonical_id`).
fn non_canonical_id(path: &str) -> Option<ApiError> {
    ID_PATHS.iter().find_map(|(prefix, except, code, message)| {
        let id = path.strip_prefix(prefix)?.split('/').next()?;
        (!except.contains(&id) && !canonical_id(id)).then(|| ApiError::new(*code, *message))
    })
}

/// A new request id: a UUIDv7 whose random bits come from a per-thread
/// generator seeded once from the OS, instead of a `getrandom` system call
/// per request (about 1% of the edge's time under load). Request ids
/// correlate logs; nothing relies on them being unguessable.
fn request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }
    let mut random = [0u8; 10];
    STATE.with(|state| {
        // xorshift64*
        let mut x = state.get();
        for chunk in random.chunks_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let bytes = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        state.set(x);
    });
    uuid::Builder::from_unix_timestamp_millis(now_ms(), &random)
        .into_uuid()
        .to_string()
}

/// A request the edge answers with an error instead of passing it on.
struct Refusal {
    /// The `reason` of `flashmall_proxy_rejections_total`; `None` for an
    /// answer that is no rejection (a path nothing serves).
    reason: Option<&'static str>,
    error: ApiError,
}

impl Refusal {
    fn counted(reason: &'static str, error: ApiError) -> Refusal {
        Refusal {
            reason: Some(reason),
            error,
        }
    }

    fn uncounted(error: ApiError) -> Refusal {
        Refusal {
            reason: None,
            error,
        }
    }
}

fn reject(reason: &'static str) {
    meters::rejection(reason);
}

impl Edge {
    fn is_public(&self, method: &str, path: &str) -> bool {
        self.public
            .matching(path, |m| m == "*" || m.eq_ignore_ascii_case(method))
            .next()
            .is_some()
    }

    fn pool_for(&self, path: &str) -> Option<&str> {
        // Routes are sorted longest prefix first.
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, pool)| pool.as_str())
    }

    async fn answer(&self, session: &mut Session, ctx: &Ctx, err: ApiError) -> Result<bool> {
        respond::error(session, &err, &ctx.request_id).await?;
        Ok(true)
    }

    /// A load balancer's liveness check: a static answer before any check
    /// (it reads nothing and says nothing). Readiness and metrics are on
    /// the admin port (`proxy.admin_listen`), never here.
    async fn local(&self, session: &mut Session, ctx: &Ctx, path: &str) -> Result<Option<bool>> {
        if path != "/healthz" {
            return Ok(None);
        }
        let body = Bytes::from_static(b"ok");
        respond::write(session, 200, "text/plain", body, &ctx.request_id, &[]).await?;
        Ok(Some(true))
    }

    /// Writes a refusal, counted under its reason when it has one.
    async fn refuse(&self, session: &mut Session, ctx: &Ctx, refusal: Refusal) -> Result<bool> {
        if let Some(reason) = refusal.reason {
            reject(reason);
        }
        self.answer(session, ctx, refusal.error).await
    }

    /// Step 1: the request id (the client's when well-formed), the client's
    /// address, the route family and whether a retry is safe. Returns the
    /// method and path.
    fn arrive(&self, session: &mut Session, ctx: &mut Ctx) -> (String, String) {
        ctx.started = Some(Instant::now());
        // Whatever the edge answers itself keeps a small request's
        // connection (its body is drained); proxied requests keep
        // Pingora's own rule.
        respond::keep_alive_when_drainable(session);
        let header = session.req_header();
        ctx.request_id = header
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_owned)
            .unwrap_or_else(request_id);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = peer.map(|peer| {
            // X-Forwarded-For is read only when a load balancer is trusted.
            if self.trusted_proxies.is_empty() {
                return peer.to_canonical();
            }
            let forwarded: Vec<&str> = header
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            client_address(peer, &forwarded, &self.trusted_proxies)
        });
        let method = header.method.as_str().to_owned();
        let path = header.uri.path().to_owned();
        ctx.route = route_label(&path);
        let span = tracing::info_span!(
            "edge",
            otel.name = %format!("edge {method} {}", ctx.route),
            otel.kind = "server",
            request_id = %ctx.request_id,
            method = %method,
            path = %path,
            status = tracing::field::Empty,
        );
        if self.accept_traceparent {
            trace::continue_from(&span, &header.headers);
        }
        ctx.traceparent = trace::traceparent(&span);
        ctx.span = Some(span);
        ctx.idempotent = matches!(
            method.as_str(),
            "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
        ) || header.headers.contains_key("idempotency-key");
        (method, path)
    }

    /// Step 2: identity, a verified access token that is not revoked,
    /// required off the public routes (kept in `ctx.claims`).
    fn identify(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        method: &str,
        path: &str,
        now: u64,
    ) -> Option<Refusal> {
        let public = self.is_public(method, path);
        let authorization = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match self.verifier.verify_header(authorization) {
            Ok(claims)
                if self
                    .state
                    .token_revoked(&claims.jti, &claims.sub, claims.iat, now) =>
            {
                (!public).then(|| {
                    Refusal::counted(
                        "token_revoked",
                        ApiError::new(ErrorCode::Unauthenticated, "the access token was revoked"),
                    )
                })
            }
            Ok(claims) => {
                ctx.claims = Some(claims);
                None
            }
            Err(refused) if !public => {
                let message = match refused {
                    Refused::Missing => {
                        "this request needs an access token (Authorization: Bearer ...)"
                    }
                    Refused::Malformed | Refused::Invalid(_) => "the access token is not valid",
                };
                Some(Refusal::counted(
                    "unauthenticated",
                    ApiError::new(ErrorCode::Unauthenticated, message),
                ))
            }
            Err(_) => None,
        }
    }

    /// Step 3: banned users and addresses get nothing further.
    fn blacklisted(&self, snapshot: &Snapshot, ctx: &Ctx, now: u64) -> Option<Refusal> {
        let user = ctx.claims.as_ref().map(|c| c.sub.as_str());
        snapshot.blacklisted(user, ctx.client_ip, now).then(|| {
            Refusal::counted(
                "blacklisted",
                ApiError::new(ErrorCode::Forbidden, "access denied"),
            )
        })
    }

    /// Step 4: the access rules, by role.
    fn ruled_out(
        &self,
        snapshot: &Snapshot,
        ctx: &Ctx,
        method: &str,
        path: &str,
    ) -> Option<Refusal> {
        let allowed = match &ctx.claims {
            Some(c) => snapshot.allowed(c.roles.iter().map(|r| r.as_str()), method, path),
            None => snapshot.allowed(["anonymous"].into_iter(), method, path),
        };
        (!allowed).then(|| {
            Refusal::counted(
                "access_rule",
                ApiError::new(ErrorCode::Forbidden, "an access rule denies this request"),
            )
        })
    }

    /// The edge's own document and admin API, answered here.
    async fn own(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        method: &str,
        path: &str,
    ) -> Result<Option<bool>> {
        if path == "/api/v1/openapi.json" {
            let document = openapi::document();
            respond::write(
                session,
                200,
                "application/json",
                document,
                &ctx.request_id,
                &[],
            )
            .await?;
            return Ok(Some(true));
        }
        if let Some(sale) = waiting::queue_sale(path) {
            return self.queue(session, ctx, method, sale).await.map(Some);
        }
        if !admin::owns(path) {
            return Ok(None);
        }
        let admin = ctx
            .claims
            .as_ref()
            .is_some_and(|c| c.roles.contains(&Role::Admin));
        if !admin {
            let refused = ApiError::new(ErrorCode::Forbidden, "this action needs the admin role");
            return self.answer(session, ctx, refused).await.map(Some);
        }
        match admin::handle(session, &self.state, method, path).await {
            Ok((status, Some(body))) => {
                respond::json(session, status, &body, &ctx.request_id).await?
            }
            Ok((status, None)) => {
                respond::write(
                    session,
                    status,
                    "application/json",
                    Bytes::new(),
                    &ctx.request_id,
                    &[],
                )
                .await?
            }
            Err(e) => respond::error(session, &e, &ctx.request_id).await?,
        }
        Ok(Some(true))
    }

    /// Step 6: the sold-out gate; purchases of a sold-out sale end here.
    fn gated(&self, ctx: &Ctx, method: &str, path: &str) -> Option<Refusal> {
        let user = ctx.claims.as_ref().map(|c| c.sub.as_str())?;
        let sale = gate::purchase_sale(path)?;
        (method == "POST" && self.gate.closed_for(sale, user))
            .then(|| Refusal::counted("sold_out_gate", flashmall_mesh::contract::sold_out()))
    }

    /// A waiting room's queue: joined (POST) or polled (GET), answered here.
    async fn queue(
        &self,
        session: &mut Session,
        ctx: &Ctx,
        method: &str,
        sale: &str,
    ) -> Result<bool> {
        // Identity is required on this path (it is not public).
        let user = ctx
            .claims
            .as_ref()
            .map(|c| c.sub.clone())
            .unwrap_or_default();
        let answer = match method {
            "POST" => self.waiting.join(sale, &user).await,
            "GET" => {
                let header = session.req_header();
                let ticket = header
                    .headers
                    .get(waiting::TICKET_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match waiting::wait_of(header.uri.query(), self.waiting.max_wait()) {
                    Ok(wait) => self
                        .waiting
                        .poll(sale, &user, ticket.as_deref(), wait)
                        .await
                        .map(|body| (200, body)),
                    Err(e) => Err(e),
                }
            }
            _ => Err(ApiError::invalid(
                "a waiting room is joined with POST and polled with GET",
            )),
        };
        match answer {
            Ok((status, body)) => respond::json(session, status, &body, &ctx.request_id).await?,
            Err(e) => {
                if e.code == ErrorCode::InvalidTicket {
                    reject("invalid_ticket");
                }
                respond::error(session, &e, &ctx.request_id).await?
            }
        }
        Ok(true)
    }

    /// Step 6b: a purchase carrying an admission token (a waiting-room
    /// sale): checked and spent here, and told to the engine signed (kept
    /// in `ctx.admitted`). Without a token the engine decides: it refuses
    /// a waiting-room sale's purchase that the edge did not admit.
    async fn admission(
        &self,
        session: &Session,
        ctx: &mut Ctx,
        method: &str,
        path: &str,
    ) -> Option<Refusal> {
        // Most purchases carry no token: nothing below runs for them.
        let headers = &session.req_header().headers;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let token = header(waiting::ADMISSION_HEADER).filter(|_| method == "POST")?;
        let sale = gate::purchase_sale(path)?;
        let user = ctx.claims.as_ref().map(|c| c.sub.clone())?;
        match self
            .waiting
            .admit_purchase(sale, &user, token, header("idempotency-key"))
            .await
        {
            Ok(admitted) => {
                ctx.admitted = Some(admitted);
                None
            }
            Err(e) => {
                let reason = match e.code {
                    ErrorCode::InvalidTicket => "invalid_ticket",
                    ErrorCode::AdmissionUsed => "admission_used",
                    _ => "waiting_room_unavailable",
                };
                Some(Refusal::counted(reason, e))
            }
        }
    }

    /// Step 7: the upstream pool that serves `path` (kept in `ctx.pool`).
    fn route(&self, ctx: &mut Ctx, path: &str) -> Option<Refusal> {
        match self.pool_for(path) {
            Some(pool) => {
                ctx.pool = Some(pool.to_owned());
                None
            }
            None => Some(Refusal::uncounted(ApiError::new(
                ErrorCode::NotFound,
                "no such route",
            ))),
        }
    }

    /// Step 5: the rate limits that apply; the first exceeded one refuses.
    async fn limited(&self, ctx: &Ctx, method: &str, path: &str) -> Option<Refusal> {
        for limit in self.limits.applying(method, path) {
            let key = match limit.kind {
                KeyKind::Ip => ctx.client_ip.map(address_key).map(Cow::Owned),
                KeyKind::Net48 => ctx.client_ip.map(site_key).map(Cow::Owned),
                KeyKind::All => Some(Cow::Borrowed("")),
                KeyKind::User => ctx.claims.as_ref().map(|c| Cow::Borrowed(c.sub.as_str())),
                KeyKind::Sale => gate::sale_of(path).map(Cow::Borrowed),
            };
            let Some(key) = key else { continue };
            if let Err(wait) = self.limiter.check(limit, &key).await {
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                limit.refused.increment(1);
                return Some(Refusal::counted(
                    "rate_limited",
                    ApiError::new(
                        ErrorCode::RateLimited,
                        format!("too many requests ({}); slow down", limit.name),
                    )
                    .with_retry_after(seconds),
                ));
            }
        }
        None
    }

    /// Records a user watermark the auth service announced: the user's
    /// tokens issued before it are refused, for as long as a token lives.
    async fn revoke_user(&self, value: &str) {
        let Some((user, before_ms)) = flashmall_mesh::headers::parse_revoke_user(value) else {
            tracing::error!(value, "the auth service announced an unreadable revocation");
            return;
        };
        let now = now_ms();
        let revocation = Revocation {
            key: format!("u:{user}"),
            not_before_ms: Some(before_ms),
            until_ms: before_ms.max(now)
                + MAX_ACCESS_TOKEN_LIFE_MS
                + self.jwt_leeway.as_millis() as u64,
        };
        if let Err(e) = self.state.store.revoke(&revocation, now).await {
            tracing::error!(error = %e, user, "could not record a user's token watermark");
        }
        let _ = self.state.refresh().await;
    }

    /// Fetches the holders of a sold-out sale from the engine and closes the gate.
    fn learn_sold_out(&self, sale: String, pool: Option<String>) {
        // One fetch per sale at a time, however many sold-out answers pass.
        if !self.gate.needs(&sale) || !self.gate.begin_fetch(&sale) {
            return;
        }
        let Some(backend) = pool.and_then(|p| self.pools.get(&p).and_then(|lb| lb.select(b"", 16)))
        else {
            self.gate.end_fetch(&sale);
            return;
        };
        let Some(addr) = backend.addr.as_inet().copied() else {
            self.gate.end_fetch(&sale);
            return;
        };
        // The edge's own identity: a component, not an admin.
        let signed = self.identity.sign_for(
            &Identity::service("edge", Duration::from_secs(30)),
            "engine",
        );
        let tls = self.tls.as_ref().map(|t| t.mesh().clone());
        let gate = Arc::clone(&self.gate);
        tokio::spawn(async move {
            let _fetching = gate::Fetching::new(&gate, &sale);
            let path = format!("/api/v1/sales/{sale}/holders");
            let answer = tokio::time::timeout(
                HOLDERS_TIMEOUT,
                flashmall_mesh::tls::get(
                    tls.as_ref(),
                    "engine",
                    addr,
                    &path,
                    &[(IDENTITY_HEADER, &signed)],
                    HOLDERS_MAX_BYTES,
                ),
            )
            .await;
            let body: serde_json::Value = match answer {
                Ok(Ok((status, body))) if status.is_success() => {
                    serde_json::from_slice(&body).unwrap_or_default()
                }
                _ => return,
            };
            if body["sold_out"] != true {
                return;
            }
            let holders = body["holders"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            gate.close(&sale, holders);
        });
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    /// No downstream modules: the edge compresses nothing, and Pingora's
    /// default (a disabled compression module) costs every request a
    /// module context and its filter calls.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            _in_flight: Some(InFlight::enter(&self.in_flight)),
            ..Ctx::default()
        }
    }

    /// Steps 1–7 of the purchase path (docs/ARCHITECTURE.md), one call
    /// each: a step refuses the request (one `refuse` counts and answers
    /// it), answers it itself, or lets it on to the next.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let (method, path) = self.arrive(session, ctx);
        if let Some(done) = self.local(session, ctx, &path).await? {
            return Ok(done);
        }
        let refused = {
            // The snapshot's guard is released before any `.await`.
            let snapshot = self.state.current();
            let now = now_ms();
            self.identify(session, ctx, &method, &path, now)
                .or_else(|| self.blacklisted(&snapshot, ctx, now))
                .or_else(|| {
                    non_canonical_id(&path).map(|e| Refusal::counted("non_canonical_id", e))
                })
                .or_else(|| self.ruled_out(&snapshot, ctx, &method, &path))
        };
        if let Some(refusal) = refused {
            return self.refuse(session, ctx, refusal).await;
        }
        if let Some(refusal) = self.limited(ctx, &method, &path).await {
            return self.refuse(session, ctx, refusal).await;
        }
        if let Some(done) = self.own(session, ctx, &method, &path).await? {
            return Ok(done);
        }
        if let Some(refusal) = self.gated(ctx, &method, &path) {
            return self.refuse(session, ctx, refusal).await;
        }
        if let Some(refusal) = self.admission(session, ctx, &method, &path).await {
            return self.refuse(session, ctx, refusal).await;
        }
        if let Some(refusal) = self.route(ctx, &path) {
            return self.refuse(session, ctx, refusal).await;
        }
        // Proxied from here on: back to Pingora's rule for a response that
        // comes before the body was read (the upstream's early answer, or
        // an error after an upstream attempt began reading it).
        session.set_close_on_response_before_downstream_finish(true);
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.tries += 1;
        let pool = ctx.pool.as_deref().unwrap_or_default();
        let backend = self
            .pools
            .get(pool)
            .and_then(|lb| lb.select(ctx.request_id.as_bytes(), 32))
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no healthy upstream"))?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        if let Some(tls) = &self.tls {
            tls.secure(&mut peer, pool);
        }
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Identity reaches the services only as the edge's signature.
        for name in CLIENT_IDENTITY_HEADERS {
            upstream.remove_header(name);
        }
        upstream.remove_header("authorization");
        if let Some(claims) = &ctx.claims {
            let mut identity = claims.identity();
            // No access token grants the components' own role, whoever issued it.
            identity
                .roles
                .retain(|r| *r != flashmall_mesh::Role::Service);
            // For the component this request goes to (its pool's name).
            let target = ctx.pool.as_deref().unwrap_or_default();
            upstream.insert_header(IDENTITY_HEADER, self.identity.sign_for(&identity, target))?;
        }
        if let Some(ip) = ctx.client_ip {
            // Signed, for this component, short-lived: the only client
            // address a component trusts (the auth service's back-off).
            let target = ctx.pool.as_deref().unwrap_or_default();
            upstream.insert_header(CLIENT_HEADER, self.identity.sign_client(ip, target))?;
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(admitted) = &ctx.admitted {
            upstream.insert_header(flashmall_mesh::headers::ADMITTED, admitted.as_str())?;
        }
        // The upstream's span is a child of the edge's; a client's trace
        // context goes no further unless the edge accepts it.
        if !self.accept_traceparent {
            upstream.remove_header(trace::TRACEPARENT);
            upstream.remove_header("tracestate");
        }
        if let Some(parent) = &ctx.traceparent {
            upstream.insert_header(trace::TRACEPARENT, parent.as_str())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response.insert_header("x-request-id", ctx.request_id.as_str())?;
        // The trace this request is, for a storefront's support ticket.
        if let Some(trace) = &ctx.traceparent {
            response.insert_header(trace::TRACERESPONSE, trace.as_str())?;
        }
        if response.remove_header(SOLD_OUT_HEADER).is_some()
            && let Some(sale) = gate::purchase_sale(session.req_header().uri.path())
        {
            ctx.sold_out_sale = Some(sale.to_owned());
        }
        // Changed password or roles, or a deleted account: the auth service
        // voids the user's older tokens; recorded here, before the client
        // hears back, for every replica. Only from an upstream's answer to
        // a request the edge let through; a client never sends a response.
        if let Some(value) = response.remove_header(REVOKE_USER_HEADER)
            && response.status.is_success()
        {
            self.revoke_user(value.to_str().unwrap_or_default()).await;
        }
        // A logout ends the access token here, before the client hears
        // back, on every replica.
        let path = session.req_header().uri.path();
        let method = session.req_header().method.as_str();
        let ends_token =
            response.status.as_u16() == 204 && method == "POST" && path == "/api/v1/auth/logout";
        if ends_token && let Some(claims) = &ctx.claims {
            // The whole login family: every access token of this login, not
            // only the one presented. The auth service issues the family no
            // token after this, so the last one it issued expires at the
            // latest one token lifetime (this token's) from now.
            let now = now_ms();
            let life_ms = claims
                .exp
                .saturating_sub(claims.iat)
                .saturating_mul(1000)
                .min(MAX_ACCESS_TOKEN_LIFE_MS);
            let until = now + life_ms + self.jwt_leeway.as_millis() as u64;
            let revocation = Revocation::login(&claims.jti, until);
            if let Err(e) = self.state.store.revoke(&revocation, now).await {
                tracing::error!(error = %e, "could not revoke a logged-out token");
            }
            let _ = self.state.refresh().await;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Another backend may answer; only a request safe to repeat goes again.
        if ctx.idempotent && ctx.tries < 3 {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("peer: {peer}"));
        // A pooled connection the upstream had closed fails before the
        // request reaches it: a request safe to repeat (an idempotent
        // method, or one carrying an Idempotency-Key) goes again.
        if ctx.idempotent && !session.as_ref().retry_buffer_truncated() {
            e.retry.decide_reuse(client_reused);
        } else {
            e.set_retry(false);
        }
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, message) = match e.etype() {
            ErrorType::HTTPStatus(503) => (503, "no healthy upstream, retry shortly"),
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, "the upstream did not answer in time")
            }
            ErrorType::HTTPStatus(code) if (400..500).contains(code) => {
                (*code, "the request is malformed")
            }
            _ if e.esource() == &ErrorSource::Downstream => (400, "the request is malformed"),
            _ => (502, "the upstream failed"),
        };
        let code = if status >= 500 {
            ErrorCode::Unavailable
        } else {
            ErrorCode::InvalidRequest
        };
        let body = serde_json::to_vec(
            &serde_json::json!({"error": {"code": code.as_str(), "message": message}}),
        )
        .unwrap_or_default();
        // After an upstream was tried, Pingora closes the client's
        // connection whatever this returns: say so, or a keep-alive client
        // reuses a connection that is about to close.
        let closing = ctx.tries > 0;
        let extra = if closing {
            vec![("connection", "close".to_owned())]
        } else {
            Vec::new()
        };
        let written = respond::write(
            session,
            status,
            "application/json",
            Bytes::from(body),
            &ctx.request_id,
            &extra,
        )
        .await
        .is_ok();
        FailToProxy {
            error_code: status,
            can_reuse_downstream: written && !closing,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let elapsed = ctx
            .started
            .map(|s| s.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        if let Some(span) = &ctx.span {
            span.record("status", status);
        }
        meters::request(ctx.route, status, elapsed);
        if self.access_log.keeps(ctx.route, status) {
            tracing::info!(
                target: "flashmall_proxy::access",
                request_id = %ctx.request_id,
                method = %session.req_header().method,
                path = %session.req_header().uri.path(),
                status,
                duration_ms = elapsed * 1000.0,
                user = ctx.claims.as_ref().map(|c| c.sub.as_str()).unwrap_or("-"),
                error = e.map(|e| e.to_string()).unwrap_or_default(),
                "request"
            );
        }
        if let Some(sale) = ctx.sold_out_sale.take() {
            self.learn_sold_out(sale, ctx.pool.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_in_flight_until_its_context_is_dropped() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let gauge = || {
            handle
                .render()
                .lines()
                .find_map(|l| l.strip_prefix("flashmall_proxy_requests_in_flight "))
                .map(|v| v.trim().to_owned())
        };
        metrics::with_local_recorder(&recorder, || {
            let in_flight = in_flight_gauge();
            let first = InFlight::enter(&in_flight);
            let second = InFlight::enter(&in_flight);
            assert_eq!(gauge().as_deref(), Some("2"));
            drop(first);
            assert_eq!(gauge().as_deref(), Some("1"));
            drop(second);
            assert_eq!(gauge().as_deref(), Some("0"));
        });
    }

    #[test]
    fn request_ids_are_distinct_uuid_v7s() {
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| super::request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(10) {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
        }
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        // Two IPv4 clients of a dual-stack listener are two keys, not one /64.
        assert_eq!(address_key(mapped), address_key(v4));
        assert_ne!(
            address_key(mapped),
            address_key("::ffff:203.0.113.8".parse().unwrap())
        );
        let lb: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // No trusted proxy: the peer itself, canonical.
        assert_eq!(client_address(mapped, &[], &[]), v4);
        // A mapped load balancer is trusted by its IPv4 range, and a mapped
        // X-Forwarded-For entry is the IPv4 client.
        let mapped_lb: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            client_address(mapped_lb, &["::ffff:203.0.113.7, ::ffff:10.9.9.9"], &lb),
            v4
        );
    }

    #[test]
    fn forwarded_for_counts_only_behind_trusted_proxies() {
        let lb: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let header = ["1.2.3.4, 203.0.113.7, 10.0.0.9"];
        let from_lb: IpAddr = "10.0.0.2".parse().unwrap();
        let direct: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_address(from_lb, &header, &lb),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_address(direct, &header, &lb),
            direct,
            "a client cannot claim an address"
        );
        assert_eq!(client_address(from_lb, &[], &lb), from_lb);
        // A second header line (a balancer appending its own) counts last;
        // an unreadable entry ends the walk at the peer.
        let lines = ["6.6.6.6", "203.0.113.8"];
        assert_eq!(
            client_address(from_lb, &lines, &lb),
            "203.0.113.8".parse::<IpAddr>().unwrap()
        );
        let garbled = ["6.6.6.6, not-an-ip"];
        assert_eq!(client_address(from_lb, &garbled, &lb), from_lb);
        assert_eq!(
            address_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            site_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            site_key("2001:db8:1:ffff::1".parse().unwrap()),
            "one /48"
        );
        assert_ne!(
            site_key("2001:db8:1::1".parse().unwrap()),
            site_key("2001:db8:2::1".parse().unwrap())
        );
        assert_eq!(
            site_key("::ffff:203.0.113.8".parse().unwrap()),
            site_key("203.0.113.8".parse().unwrap())
        );
        assert!(canonical_id("0199abcd-0000-7000-8000-000000000001"));
        assert!(!canonical_id("0199ABCD-0000-7000-8000-000000000001"));
        assert!(!canonical_id("0199abcd000070008000000000000001"));
        assert!(!canonical_id("{0199abcd-0000-7000-8000-000000000001}"));
        assert!(!canonical_id(
            "urn:uuid:0199abcd-0000-7000-8000-000000000001"
        ));
        assert!(!canonical_id("%30199abcd-0000-7000-8000-00000000001"));
        let id = "0199abcd-0000-7000-8000-000000000001";
        for family in [
            "orders",
            "payments",
            "products",
            "reservations",
            "sales",
            "cart/items",
        ] {
            assert!(non_canonical_id(&format!("/api/v1/{family}/{id}")).is_none());
            assert!(non_canonical_id(&format!("/api/v1/{family}/{id}/cancel")).is_none());
            let upper = format!("/api/v1/{family}/{}", id.to_uppercase());
            assert!(non_canonical_id(&upper).is_some(), "{upper}");
        }
        assert!(non_canonical_id("/api/v1/products/search").is_none());
        assert!(non_canonical_id("/api/v1/products").is_none());
        assert_eq!(
            non_canonical_id("/api/v1/sales/X").map(|e| e.code),
            Some(ErrorCode::SaleNotFound)
        );
        assert_eq!(
            client_address(from_lb, &header, &[]),
            from_lb,
            "nothing trusted by default"
        );
    }
}
