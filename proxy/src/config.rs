//! `[proxy]`: the edge. Routes, public routes, upstream pools, token
//! checks, shared edge state and rate limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A path prefix and the upstream pool that serves it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Requests whose path starts with this go to `upstream` (longest wins).
    pub prefix: String,
    /// A key of `[proxy.upstreams]`.
    pub upstream: String,
}

/// Requests that need no access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PublicRoute {
    /// HTTP method, or `*` for any.
    pub method: String,
    /// Regular expression the whole path must match.
    pub path: String,
}

/// One rate limit: `per_second` on average, bursts up to `burst`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    /// Name, for metrics and logs.
    pub name: String,
    /// What is counted: `ip` (the client address; IPv6 per /64), `net48`
    /// (IPv6 per /48; IPv4 per address), `user` (the verified user;
    /// anonymous requests are not counted), `sale` (the sale in a
    /// `/api/v1/sales/{id}/...` path) or `all` (every request it applies
    /// to, together).
    pub key: String,
    /// HTTP method this limit applies to, or `*`.
    #[serde(default = "any")]
    pub method: String,
    /// Regular expression of the paths this limit applies to (empty: all).
    #[serde(default)]
    pub path: String,
    pub per_second: f64,
    pub burst: u32,
    /// `local` (each replica on its own) or `global` (shared by all replicas
    /// through Redis; needs `proxy.redis_url`).
    #[serde(default = "local")]
    pub scope: String,
}

fn any() -> String {
    "*".into()
}

fn local() -> String {
    "local".into()
}

/// `[proxy]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// The public address: the only port clients need. It answers a
    /// static `GET /healthz` for load balancers; nothing else is served
    /// without the edge's checks. Port 0 takes a free port (tests).
    pub listen: SocketAddr,
    /// The operators' address: `/healthz`, `/readyz` (the edge state's
    /// last background refresh, no store call) and `/metrics`. Keep it off
    /// the public network (loopback by default; in Kubernetes, a port only
    /// the kubelet and Prometheus may reach). Port 0 takes a free port.
    pub admin_listen: SocketAddr,
    /// Worker threads of the proxy.
    pub threads: usize,
    /// How long a stopping proxy keeps serving in-flight requests; keep it
    /// below the pod's terminationGracePeriodSeconds.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Upstream pools: name → `host:port` backends (load balanced, health checked).
    pub upstreams: BTreeMap<String, Vec<String>>,
    /// Path prefix → pool.
    pub routes: Vec<RouteConfig>,
    /// Requests served without an access token.
    pub public: Vec<PublicRoute>,
    /// Accepted `iss` and `aud` of access tokens.
    pub jwt_issuer: String,
    pub jwt_audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// A JWKS file whose RS256/ES256 keys (looked up by `kid`, algorithm
    /// pinned per key) also verify access tokens; empty: none.
    pub jwks_file: String,
    /// A JWKS URL, likewise; empty: none. `https://` (plain `http://` only
    /// to a loopback host).
    pub jwks_url: String,
    /// PEM file of CA certificates trusted for `jwks_url` besides the
    /// system's (a JWKS served under a private CA); empty: the system's only.
    pub jwks_ca_file: String,
    /// How often the JWKS file or URL is read again.
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// Load balancers in front of the proxy (CIDRs). When the connection
    /// comes from one of them, the client is the rightmost address of
    /// `X-Forwarded-For` that is not itself trusted; otherwise the peer.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Continue a client's W3C `traceparent` (its trace id and sampled
    /// flag): only behind a trusted front end that traces. Off, every
    /// request starts a trace of its own at the edge, so the public can
    /// neither pick trace ids nor force sampling. Either way the answer
    /// names the trace in a `traceresponse` header.
    pub accept_traceparent: bool,
    /// Access log: `off`, `sampled` (one request in `access_log_sample`,
    /// and every answer of 500 and up) or `all` (a line per request: at a
    /// flash sale's rate, more work than the checks). Never the public
    /// `/healthz` probe.
    pub access_log: crate::access::AccessLog,
    /// With `access_log = "sampled"`: one request in this many is logged.
    pub access_log_sample: u32,
    /// Redis for state shared by every replica (blacklist, access rules,
    /// logged-out tokens) and global limits; empty: in-process (one replica).
    pub redis_url: String,
    /// How often a replica looks for edge-state changes made through another.
    #[serde(with = "humantime_serde")]
    pub state_poll: Duration,
    /// How often each upstream backend's TCP health check runs.
    #[serde(with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// How often upstream host names are resolved again (a Kubernetes
    /// headless Service name resolves to every ready pod).
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// Deadline to connect to an upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Deadline for an upstream's answer.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// How long a sale the engine announced sold out is answered here.
    #[serde(with = "humantime_serde")]
    pub sold_out_ttl: Duration,
    /// Rate limits, all applied to every request they match.
    pub limits: Vec<LimitConfig>,
    /// Waiting rooms of sales created with `waiting_room`.
    pub waiting_room: WaitingRoomConfig,
}

/// `[proxy.waiting_room]`: how the edge runs the waiting rooms of sales
/// created with `waiting_room` (each sale sets its own admission rate,
/// admission window and queue size). The queues live in `proxy.redis_url`
/// when set (one queue for every replica), else in this process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WaitingRoomConfig {
    /// How long a queue ticket is good for; every poll answers a fresh one.
    #[serde(with = "humantime_serde")]
    pub ticket_ttl: Duration,
    /// How often each replica advances admission, reads the engine's
    /// counts (sold out closes the queue, returned units reopen it) and
    /// wakes its long polls.
    #[serde(with = "humantime_serde")]
    pub tick: Duration,
    /// The longest a poll may wait (`?wait=N`).
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Polls waiting at once on one replica; past it, polls answer at once.
    pub max_waiters: usize,
    /// A settlement backlog worth this long of admissions (the engine's
    /// `pending` units at the sale's admission rate) stops admission until
    /// the ledger catches up; below it, admission slows in proportion.
    #[serde(with = "humantime_serde")]
    pub backlog: Duration,
}

impl Default for WaitingRoomConfig {
    fn default() -> Self {
        WaitingRoomConfig {
            ticket_ttl: Duration::from_secs(600),
            tick: Duration::from_millis(100),
            max_wait: Duration::from_secs(30),
            max_waiters: 100_000,
            backlog: Duration::from_secs(2),
        }
    }
}

impl WaitingRoomConfig {
    fn validate(&self) -> Result<(), String> {
        if self.ticket_ttl < Duration::from_secs(1) || self.ticket_ttl > Duration::from_secs(86_400)
        {
            return Err("proxy.waiting_room.ticket_ttl must be between 1s and 24h".into());
        }
        if self.tick < Duration::from_millis(10) || self.tick > Duration::from_millis(500) {
            return Err(
                "proxy.waiting_room.tick must be between 10ms and 500ms (sold out closes the queue within a second)".into(),
            );
        }
        if self.max_wait > Duration::from_secs(120) {
            return Err("proxy.waiting_room.max_wait must be at most 2m".into());
        }
        if self.max_waiters == 0 || self.max_waiters > 10_000_000 {
            return Err("proxy.waiting_room.max_waiters must be between 1 and 10000000".into());
        }
        if self.backlog < Duration::from_millis(100) {
            return Err("proxy.waiting_room.backlog must be at least 100ms".into());
        }
        Ok(())
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let route = |prefix: &str, upstream: &str| RouteConfig {
            prefix: prefix.into(),
            upstream: upstream.into(),
        };
        let public = |method: &str, path: &str| PublicRoute {
            method: method.into(),
            path: path.into(),
        };
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9080)),
            threads: 2,
            grace_period: Duration::from_secs(5),
            upstreams: BTreeMap::from([
                ("engine".to_owned(), vec!["127.0.0.1:8081".to_owned()]),
                ("auth".to_owned(), vec!["127.0.0.1:8082".to_owned()]),
                ("orders".to_owned(), vec!["127.0.0.1:8083".to_owned()]),
                ("payments".to_owned(), vec!["127.0.0.1:8084".to_owned()]),
                ("products".to_owned(), vec!["127.0.0.1:8085".to_owned()]),
                ("cart".to_owned(), vec!["127.0.0.1:8086".to_owned()]),
                ("checkout".to_owned(), vec!["127.0.0.1:8087".to_owned()]),
            ]),
            routes: vec![
                route("/api/v1/auth/", "auth"),
                route("/api/v1/users/", "auth"),
                route("/api/v1/admin/users/", "auth"),
                route("/api/v1/sales", "engine"),
                route("/api/v1/reservations/", "engine"),
                route("/api/v1/admin/reconcile", "engine"),
                route("/api/v1/orders", "orders"),
                route("/api/v1/payments", "payments"),
                route("/api/v1/products", "products"),
                route("/api/v1/categories", "products"),
                route("/api/v1/cart", "cart"),
                route("/api/v1/checkout", "checkout"),
            ],
            public: vec![
                public("POST", "^/api/v1/auth/(register|login|refresh)$"),
                public("GET", "^/api/v1/sales/[^/]+$"),
                public("GET", "^/api/v1/products(/.*)?$"),
                public("GET", "^/api/v1/categories$"),
                public("GET", "^/api/v1/openapi\\.json$"),
            ],
            jwt_issuer: "flashmall".into(),
            jwt_audience: "flashmall-api".into(),
            jwt_leeway: Duration::from_secs(30),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_ca_file: String::new(),
            jwks_refresh: Duration::from_secs(300),
            trusted_proxies: Vec::new(),
            accept_traceparent: false,
            access_log: crate::access::AccessLog::Sampled,
            access_log_sample: 100,
            redis_url: String::new(),
            state_poll: Duration::from_millis(200),
            health_check_interval: Duration::from_secs(1),
            dns_refresh: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(10),
            sold_out_ttl: Duration::from_secs(1),
            limits: vec![
                LimitConfig {
                    name: "per-ip".into(),
                    key: "ip".into(),
                    method: "*".into(),
                    path: String::new(),
                    per_second: 500.0,
                    burst: 1000,
                    scope: "local".into(),
                },
                // Logging in and registering hash a password (argon2id):
                // strict limits, refused before the auth service hashes.
                LimitConfig {
                    name: "login-per-address".into(),
                    key: "ip".into(),
                    method: "POST".into(),
                    path: "^/api/v1/auth/login$".into(),
                    per_second: 5.0,
                    burst: 20,
                    scope: "local".into(),
                },
                LimitConfig {
                    name: "register-per-address".into(),
                    key: "ip".into(),
                    method: "POST".into(),
                    path: "^/api/v1/auth/register$".into(),
                    per_second: 2.0,
                    burst: 20,
                    scope: "local".into(),
                },
                LimitConfig {
                    name: "auth-per-site".into(),
                    key: "net48".into(),
                    method: "POST".into(),
                    path: "^/api/v1/auth/(login|register)$".into(),
                    per_second: 20.0,
                    burst: 60,
                    scope: "local".into(),
                },
                LimitConfig {
                    name: "auth-all".into(),
                    key: "all".into(),
                    method: "POST".into(),
                    path: "^/api/v1/auth/(login|register)$".into(),
                    per_second: 100.0,
                    burst: 200,
                    scope: "local".into(),
                },
                // A waiting room's joins and polls: a storefront long-polls
                // (`?wait=`), so a buyer needs few.
                LimitConfig {
                    name: "queue-per-user".into(),
                    key: "user".into(),
                    method: "*".into(),
                    path: "^/api/v1/sales/[^/]+/queue$".into(),
                    per_second: 2.0,
                    burst: 10,
                    scope: "local".into(),
                },
                LimitConfig {
                    name: "purchases-per-user".into(),
                    key: "user".into(),
                    method: "POST".into(),
                    path: "^/api/v1/sales/[^/]+/purchase$".into(),
                    per_second: 10.0,
                    burst: 10,
                    scope: "local".into(),
                },
            ],
            waiting_room: WaitingRoomConfig::default(),
        }
    }
}

impl ProxyConfig {
    pub fn validate(&self) -> Result<(), String> {
        self.waiting_room.validate()?;
        flashmall_mesh::config::check_redis_url("proxy.redis_url", &self.redis_url)?;
        if self.admin_listen.port() != 0 && self.admin_listen.port() == self.listen.port() {
            return Err(format!(
                "proxy.admin_listen ({}) must be another port than proxy.listen ({}): probes and metrics stay off the public port",
                self.admin_listen, self.listen
            ));
        }
        if self.access_log_sample == 0 {
            return Err(
                "proxy.access_log_sample must be at least 1 (one request in N is logged)".into(),
            );
        }
        if self.threads == 0 || self.threads > 256 {
            return Err("proxy.threads must be between 1 and 256".into());
        }
        for route in &self.routes {
            if !route.prefix.starts_with('/') {
                return Err(format!(
                    "proxy.routes: prefix {:?} must start with /",
                    route.prefix
                ));
            }
            let Some(pool) = self.upstreams.get(&route.upstream) else {
                return Err(format!(
                    "proxy.routes: {:?} names no upstream in proxy.upstreams",
                    route.upstream
                ));
            };
            if pool.is_empty() {
                return Err(format!(
                    "proxy.upstreams.{} lists no backend",
                    route.upstream
                ));
            }
        }
        for (name, pool) in &self.upstreams {
            flashmall_mesh::client::discover::Resolver::new(name, pool)
                .map_err(|e| format!("proxy.upstreams.{name}: {e}"))?;
        }
        if self.dns_refresh < Duration::from_millis(100)
            || self.dns_refresh > Duration::from_secs(300)
        {
            return Err("proxy.dns_refresh must be between 100ms and 5m".into());
        }
        for p in &self.public {
            regex::Regex::new(&p.path)
                .map_err(|e| format!("proxy.public: bad path regex {:?}: {e}", p.path))?;
        }
        for l in &self.limits {
            if !["ip", "net48", "user", "sale", "all"].contains(&l.key.as_str()) {
                return Err(format!(
                    "proxy.limits.{}: key must be ip, user or sale",
                    l.name
                ));
            }
            if !l.per_second.is_finite() || l.per_second <= 0.0 || l.burst == 0 {
                return Err(format!(
                    "proxy.limits.{}: per_second and burst must be above zero",
                    l.name
                ));
            }
            match l.scope.as_str() {
                "local" => {}
                "global" if !self.redis_url.is_empty() => {}
                "global" => {
                    return Err(format!(
                        "proxy.limits.{}: scope global needs proxy.redis_url",
                        l.name
                    ));
                }
                other => {
                    return Err(format!(
                        "proxy.limits.{}: scope {other:?} is not local or global",
                        l.name
                    ));
                }
            }
            if !l.path.is_empty() {
                regex::Regex::new(&l.path)
                    .map_err(|e| format!("proxy.limits.{}: bad path regex: {e}", l.name))?;
            }
        }
        if !self.jwks_file.is_empty() && !self.jwks_url.is_empty() {
            return Err("proxy.jwks_file and proxy.jwks_url: set at most one".into());
        }
        if !self.jwks_url.is_empty() && !jwks_url_is_safe(&self.jwks_url) {
            return Err(
                "proxy.jwks_url must be an https:// URL (plain http:// only to a loopback host: \
                 the keys that verify every token must not be read or replaced on the way)"
                    .into(),
            );
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            return Err("proxy.jwks_refresh must be at least 1s".into());
        }
        if self.health_check_interval < Duration::from_millis(100) {
            return Err("proxy.health_check_interval must be at least 100ms".into());
        }
        if self.grace_period > Duration::from_secs(600) {
            return Err("proxy.grace_period must be at most 10m".into());
        }
        if self.state_poll.is_zero() || self.state_poll > Duration::from_secs(1) {
            return Err("proxy.state_poll must be above zero and at most 1s (changes must reach every replica within 1 s)".into());
        }
        Ok(())
    }
}

/// `https://` anywhere; plain `http://` only to a loopback host (a sidecar
/// or a test server on the same machine).
fn jwks_url_is_safe(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod jwks_url_tests {
    use super::jwks_url_is_safe;

    #[test]
    fn jwks_urls_need_https_except_to_loopback() {
        for ok in [
            "https://idp.example.com/.well-known/jwks.json",
            "http://127.0.0.1:8900/jwks.json",
            "http://localhost/jwks.json",
            "http://[::1]:80/jwks",
        ] {
            assert!(jwks_url_is_safe(ok), "{ok}");
        }
        for bad in [
            "http://idp.example.com/jwks.json",
            "http://10.0.0.5/jwks.json",
            "http://127.0.0.1.evil.example/jwks",
            "http://user@evil.example/x@127.0.0.1",
            "ftp://127.0.0.1/jwks",
        ] {
            assert!(!jwks_url_is_safe(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod admin_listen_tests {
    use super::ProxyConfig;

    #[test]
    fn the_admin_port_is_never_the_public_port() {
        let config = ProxyConfig {
            admin_listen: "0.0.0.0:8080".parse().unwrap(),
            ..ProxyConfig::default()
        };
        let e = config.validate().unwrap_err();
        assert!(e.contains("proxy.admin_listen"), "{e}");
        assert!(ProxyConfig::default().validate().is_ok());
        let any = ProxyConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..ProxyConfig::default()
        };
        assert!(
            any.validate().is_ok(),
            "port 0: each takes its own free port"
        );
    }
}
