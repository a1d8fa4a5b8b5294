//! The client stack and the server layers against real gRPC servers on
//! 127.0.0.1: a small `UserService` whose behaviour each test controls
//! (fail N times, fail always, answer slowly) and which records what
//! reached it, served by `flashmall_mesh::serve` like every component.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flashmall_mesh::client::BreakerState;
use flashmall_mesh::{
    CallKind, Caller, ClientConfig, Identity, IdentityKey, MeshClient, Readiness, RequestContext,
    Role, Shutdown, authorize, caller_of, verify_identity,
};
use flashmall_proto::user as pb;
use pb::user_service_client::UserServiceClient;
use pb::user_service_server::{UserService, UserServiceServer};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};

/// What one request showed the upstream.
#[derive(Debug, Clone)]
struct Seen {
    method: &'static str,
    request_id: Option<String>,
    grpc_timeout: Option<Duration>,
    /// The upstream's own request context, as `serve` set it.
    context_id: Option<String>,
    context_left: Option<Duration>,
}

/// The upstream's behaviour, set by the test, and what it saw.
struct Behaviour {
    calls: AtomicUsize,
    /// Answer `fail_code` to this many calls, then succeed.
    fail_next: AtomicUsize,
    fail_always: AtomicBool,
    fail_code: Mutex<Code>,
    delay_ms: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            calls: AtomicUsize::new(0),
            fail_next: AtomicUsize::new(0),
            fail_always: AtomicBool::new(false),
            fail_code: Mutex::new(Code::Unavailable),
            delay_ms: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
        }
    }
}

impl Behaviour {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

struct Upstream {
    behaviour: Arc<Behaviour>,
    key: IdentityKey,
}

impl Upstream {
    async fn handle<T>(&self, method: &'static str, request: &Request<T>) -> Result<(), Status> {
        let text = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let context = flashmall_mesh::context::current();
        self.behaviour.seen.lock().unwrap().push(Seen {
            method,
            request_id: text("x-request-id"),
            grpc_timeout: text("grpc-timeout")
                .and_then(|t| flashmall_mesh::grpc::parse_timeout(&t)),
            context_id: context.as_ref().map(|c| c.request_id.clone()),
            context_left: context.and_then(|c| c.remaining()),
        });
        self.behaviour.calls.fetch_add(1, Ordering::SeqCst);
        let delay = self.behaviour.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let fail = self.behaviour.fail_always.load(Ordering::SeqCst)
            || self
                .behaviour
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if fail {
            let code = *self.behaviour.fail_code.lock().unwrap();
            return Err(Status::new(code, "the test upstream fails on purpose"));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl UserService for Upstream {
    async fn register(
        &self,
        request: Request<pb::RegisterReq>,
    ) -> Result<Response<pb::RegisterResp>, Status> {
        self.handle("Register", &request).await?;
        Ok(Response::new(pb::RegisterResp {
            user_id: "u-1".into(),
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginReq>,
    ) -> Result<Response<pb::LoginResp>, Status> {
        self.handle("Login", &request).await?;
        Ok(Response::new(pb::LoginResp {
            user_id: request.into_inner().email,
            ..Default::default()
        }))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshReq>,
    ) -> Result<Response<pb::LoginResp>, Status> {
        self.handle("Refresh", &request).await?;
        Ok(Response::new(pb::LoginResp::default()))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutReq>,
    ) -> Result<Response<pb::LogoutResp>, Status> {
        self.handle("Logout", &request).await?;
        Ok(Response::new(pb::LogoutResp {}))
    }

    async fn get_me(&self, request: Request<pb::GetMeReq>) -> Result<Response<pb::User>, Status> {
        self.handle("GetMe", &request).await?;
        let caller = caller_of(&self.key, &request)?;
        Ok(Response::new(pb::User {
            id: caller.user_id,
            roles: caller.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            ..Default::default()
        }))
    }
}

/// A test upstream serving on a fresh port, with identity verification.
struct Server {
    addr: SocketAddr,
    behaviour: Arc<Behaviour>,
    key: IdentityKey,
    _shutdown: ShutdownOnDrop,
}

struct ShutdownOnDrop(Shutdown);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        self.0.trigger();
    }
}

async fn upstream() -> Server {
    let key = IdentityKey::random();
    let behaviour = Arc::new(Behaviour::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc = tonic::service::Routes::new(UserServiceServer::new(Upstream {
        behaviour: behaviour.clone(),
        key: key.clone(),
    }))
    .into_axum_router();
    let shutdown = Shutdown::new();
    tokio::spawn(flashmall_mesh::serve(
        "test-upstream",
        listener,
        None,
        verify_identity(grpc, key.clone()),
        Readiness::always(),
        shutdown.clone(),
    ));
    Server {
        addr,
        behaviour,
        key,
        _shutdown: ShutdownOnDrop(shutdown),
    }
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn config() -> ClientConfig {
    ClientConfig {
        call_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(1),
        retries: 2,
        retry_backoff: Duration::from_millis(5),
        retry_budget_percent: 20,
        breaker_failures: 5,
        breaker_cooldown: Duration::from_secs(2),
        dns_refresh: Duration::from_secs(5),
    }
}

fn client(service: &'static str, addrs: &[SocketAddr], config: &ClientConfig) -> MeshClient {
    let endpoints: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    MeshClient::new(service, &endpoints, config, None).unwrap()
}

/// An idempotent-in-spirit read.
async fn login(client: &MeshClient, kind: CallKind) -> Result<pb::LoginResp, Status> {
    client
        .call("Login", kind, |channel| async move {
            UserServiceClient::new(channel)
                .login(pb::LoginReq {
                    email: "buyer@example.com".into(),
                    password: "secret".into(),
                })
                .await
        })
        .await
}

/// A write that must not happen twice.
async fn register(client: &MeshClient, kind: CallKind) -> Result<pb::RegisterResp, Status> {
    client
        .call("Register", kind, |channel| async move {
            UserServiceClient::new(channel)
                .register(pb::RegisterReq::default())
                .await
        })
        .await
}

/// Waits until `check` holds, failing the test after 15 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn state(client: &MeshClient, addr: SocketAddr) -> BreakerState {
    client
        .endpoints()
        .into_iter()
        .find(|(a, _)| *a == addr)
        .map(|(_, s)| s)
        .expect("a known endpoint")
}

fn breaker_refusal(status: &Status) -> bool {
    status.code() == Code::Unavailable && status.message().contains("circuit breaker")
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_probes_once_and_closes() {
    let metrics = flashmall_mesh::telemetry::metrics_handle();
    let up = upstream().await;
    up.behaviour.fail_always.store(true, Ordering::SeqCst);
    let cfg = ClientConfig {
        retries: 0,
        breaker_failures: 3,
        breaker_cooldown: Duration::from_secs(2),
        ..config()
    };
    let client = client("breaker-test", &[up.addr], &cfg);

    // Three consecutive failures reach the upstream and open the breaker.
    for _ in 0..3 {
        let e = login(&client, CallKind::Idempotent).await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(!breaker_refusal(&e), "{e:?}");
    }
    assert_eq!(up.behaviour.calls(), 3);
    assert_eq!(state(&client, up.addr), BreakerState::Open);

    // Open: calls fail at once and the upstream sees none of them.
    up.behaviour.delay_ms.store(300, Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..5 {
        let e = login(&client, CallKind::Idempotent).await.unwrap_err();
        assert!(breaker_refusal(&e), "{e:?}");
    }
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "refusals took {:?}",
        started.elapsed()
    );
    assert_eq!(
        up.behaviour.calls(),
        3,
        "an open breaker lets nothing through"
    );

    // After the cooldown, exactly one probe of several concurrent calls
    // reaches the (still failing, slow) upstream; its failure re-opens.
    eventually("the breaker is half-open", || {
        state(&client, up.addr) == BreakerState::HalfOpen
    })
    .await;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let client = client.clone();
        calls.spawn(async move { login(&client, CallKind::NotIdempotent).await });
    }
    let results: Vec<_> = calls.join_all().await;
    assert_eq!(up.behaviour.calls(), 4, "one probe, not five");
    let refused = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(breaker_refusal))
        .count();
    assert_eq!(refused, 4, "{results:?}");
    assert_eq!(
        state(&client, up.addr),
        BreakerState::Open,
        "a failed probe re-opens"
    );

    // The upstream recovers: the next probe closes the breaker, calls flow.
    up.behaviour.fail_always.store(false, Ordering::SeqCst);
    up.behaviour.delay_ms.store(0, Ordering::SeqCst);
    eventually("the breaker is half-open again", || {
        state(&client, up.addr) == BreakerState::HalfOpen
    })
    .await;
    login(&client, CallKind::NotIdempotent).await.unwrap();
    assert_eq!(state(&client, up.addr), BreakerState::Closed);
    for _ in 0..5 {
        login(&client, CallKind::NotIdempotent).await.unwrap();
    }
    assert_eq!(up.behaviour.calls(), 10);

    if let Some(metrics) = metrics {
        let text = metrics.render();
        for wanted in [
            r#"outcome="breaker_open""#,
            r#"outcome="Unavailable""#,
            r#"outcome="OK""#,
        ] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with("flashmall_mesh_client_calls_total")
                        && l.contains(r#"service="breaker-test""#)
                        && l.contains(r#"method="Login""#)
                        && l.contains(wanted)),
                "no call counter with {wanted}"
            );
        }
        assert!(text.contains("flashmall_mesh_client_breaker_open"));
        assert!(
            text.lines()
                .any(|l| l.starts_with("flashmall_grpc_server_requests_total")
                    && l.contains(r#"method="Login""#)
                    && l.contains(r#"code="OK""#))
        );
    }
}

#[tokio::test]
async fn idempotent_calls_are_retried_and_other_calls_never() {
    let up = upstream().await;
    let client = client("retry-test", &[up.addr], &config());

    // Two UNAVAILABLE answers, then success: three attempts, one request id.
    up.behaviour.fail_next.store(2, Ordering::SeqCst);
    let answer = login(&client, CallKind::Idempotent).await.unwrap();
    assert_eq!(answer.user_id, "buyer@example.com");
    assert_eq!(up.behaviour.calls(), 3);
    let ids: Vec<_> = up
        .behaviour
        .seen()
        .into_iter()
        .map(|s| s.request_id)
        .collect();
    assert!(
        ids[0].is_some() && ids.iter().all(|id| *id == ids[0]),
        "{ids:?}"
    );

    // More failures than retries: retries + 1 attempts, then the error.
    up.behaviour.fail_next.store(10, Ordering::SeqCst);
    let e = login(&client, CallKind::Idempotent).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(up.behaviour.calls(), 6);
    up.behaviour.fail_next.store(0, Ordering::SeqCst);

    // An answer that is not retryable is not retried, idempotent or not.
    *up.behaviour.fail_code.lock().unwrap() = Code::InvalidArgument;
    up.behaviour.fail_next.store(1, Ordering::SeqCst);
    let e = login(&client, CallKind::Idempotent).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(up.behaviour.calls(), 7);
    *up.behaviour.fail_code.lock().unwrap() = Code::Unavailable;

    // A call that is not idempotent and fails UNAVAILABLE is sent once.
    up.behaviour.fail_next.store(1, Ordering::SeqCst);
    let e = register(&client, CallKind::NotIdempotent)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(up.behaviour.calls(), 8);

    // One that times out is sent once too; an idempotent one is retried.
    let slow = MeshClient::new(
        "retry-test-slow",
        &[up.addr.to_string()],
        &ClientConfig {
            call_timeout: Duration::from_millis(200),
            ..config()
        },
        None,
    )
    .unwrap();
    // Connected first, so the slow calls below reach the upstream at once.
    login(&slow, CallKind::NotIdempotent).await.unwrap();
    assert_eq!(up.behaviour.calls(), 9);
    up.behaviour.delay_ms.store(1000, Ordering::SeqCst);
    let e = register(&slow, CallKind::NotIdempotent).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    eventually("the call arrives", || up.behaviour.calls() >= 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        up.behaviour.calls(),
        10,
        "the timed out call was not sent again"
    );
    let e = login(&slow, CallKind::Idempotent).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    eventually("the idempotent call's attempts arrive", || {
        up.behaviour.calls() >= 13
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        up.behaviour.calls(),
        13,
        "timeouts of idempotent calls are retried"
    );
    let seen = up.behaviour.seen();
    assert_eq!(seen.iter().filter(|s| s.method == "Register").count(), 2);
}

#[tokio::test]
async fn retries_stay_within_the_budget() {
    let up = upstream().await;
    up.behaviour.fail_always.store(true, Ordering::SeqCst);
    let cfg = ClientConfig {
        retries: 2,
        retry_backoff: Duration::from_millis(1),
        retry_budget_percent: 20,
        breaker_failures: 1_000_000,
        ..config()
    };
    let client = client("budget-test", &[up.addr], &cfg);
    let first_attempts = 100;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..first_attempts {
        let client = client.clone();
        calls.spawn(async move { login(&client, CallKind::Idempotent).await });
    }
    let results = calls.join_all().await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(|r| r.is_err()));
    let retries = up.behaviour.calls() - first_attempts;
    println!("{retries} retries of {first_attempts} failing calls in {elapsed:?}");
    // 20% of the first attempts, plus the allowance of every second the
    // run touched (at most its whole seconds plus two partial ones).
    let seconds = elapsed.as_secs() as usize + 2;
    let bound = first_attempts * 20 / 100
        + flashmall_mesh::client::RETRY_BUDGET_MIN_PER_SECOND as usize * seconds;
    assert!(
        retries <= bound,
        "{retries} retries in {elapsed:?}, the budget allows {bound}"
    );
    assert!(retries >= 20, "the budget allows at least 20% ({retries})");
    assert!(
        retries < first_attempts * 2,
        "without a budget there would be {} retries",
        first_attempts * 2
    );
}

#[tokio::test]
async fn calls_are_balanced_and_skip_a_dead_endpoint() {
    let a = upstream().await;
    let b = upstream().await;
    let both = client("balance-test", &[a.addr, b.addr], &config());
    for _ in 0..40 {
        login(&both, CallKind::NotIdempotent).await.unwrap();
    }
    assert_eq!(a.behaviour.calls() + b.behaviour.calls(), 40);
    assert!(
        a.behaviour.calls() > 0 && b.behaviour.calls() > 0,
        "{} / {}",
        a.behaviour.calls(),
        b.behaviour.calls()
    );

    // One endpoint refuses connections: its breaker opens after two
    // failures, which the retries absorb, and every call succeeds.
    let dead = closed_port().await;
    let cfg = ClientConfig {
        retries: 2,
        breaker_failures: 2,
        breaker_cooldown: Duration::from_secs(60),
        ..config()
    };
    let before = a.behaviour.calls();
    let half = client("balance-dead-test", &[dead, a.addr], &cfg);
    for _ in 0..20 {
        login(&half, CallKind::Idempotent).await.unwrap();
    }
    assert_eq!(a.behaviour.calls() - before, 20);
    assert_eq!(state(&half, dead), BreakerState::Open);
    assert_eq!(state(&half, a.addr), BreakerState::Closed);
}

#[tokio::test]
async fn timeouts_and_deadlines_are_enforced_and_propagated() {
    let up = upstream().await;
    let cfg = ClientConfig {
        call_timeout: Duration::from_millis(300),
        retries: 0,
        ..config()
    };
    let client = client("deadline-test", &[up.addr], &cfg);

    // A slow upstream: the call ends with DEADLINE_EXCEEDED near the timeout.
    up.behaviour.delay_ms.store(3000, Ordering::SeqCst);
    let started = Instant::now();
    let e = login(&client, CallKind::NotIdempotent).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    up.behaviour.delay_ms.store(0, Ordering::SeqCst);

    // The upstream is told the configured timeout, at most.
    let roomy = MeshClient::new(
        "deadline-test-roomy",
        &[up.addr.to_string()],
        &ClientConfig {
            call_timeout: Duration::from_secs(5),
            ..cfg.clone()
        },
        None,
    )
    .unwrap();
    login(&roomy, CallKind::NotIdempotent).await.unwrap();
    let seen = up.behaviour.seen().pop().unwrap();
    let told = seen.grpc_timeout.expect("a grpc-timeout header");
    assert!(
        told <= Duration::from_secs(5) && told > Duration::from_secs(4),
        "{told:?}"
    );

    // Inside a request: the same request id, and at most the time left,
    // which the upstream's own context (set by `serve`) carries on.
    let context = RequestContext::new("req-propagated")
        .with_deadline(Instant::now() + Duration::from_secs(1));
    context
        .scope(login(&roomy, CallKind::NotIdempotent))
        .await
        .unwrap();
    let seen = up.behaviour.seen().pop().unwrap();
    assert_eq!(seen.request_id.as_deref(), Some("req-propagated"));
    assert_eq!(seen.context_id.as_deref(), Some("req-propagated"));
    let told = seen.grpc_timeout.expect("a grpc-timeout header");
    assert!(told <= Duration::from_secs(1), "{told:?}");
    let left = seen
        .context_left
        .expect("the upstream's context has a deadline");
    assert!(left <= Duration::from_secs(1), "{left:?}");

    // A request whose deadline already passed sends nothing.
    let calls = up.behaviour.calls();
    let expired = RequestContext::new("req-late").with_deadline(Instant::now());
    let e = expired
        .scope(login(&client, CallKind::Idempotent))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.behaviour.calls(), calls);
}

#[tokio::test]
async fn host_names_resolve() {
    let up = upstream().await;
    let cfg = ClientConfig {
        retries: 3,
        // "localhost" may also resolve to ::1, where nothing listens: one
        // refused connection takes that endpoint out.
        breaker_failures: 1,
        breaker_cooldown: Duration::from_secs(60),
        ..config()
    };
    let client = MeshClient::new(
        "dns-test",
        &[format!("localhost:{}", up.addr.port())],
        &cfg,
        None,
    )
    .unwrap();
    for _ in 0..5 {
        login(&client, CallKind::Idempotent).await.unwrap();
    }
    assert!(
        client.endpoints().iter().any(|(a, _)| *a == up.addr),
        "{:?}",
        client.endpoints()
    );
    assert_eq!(up.behaviour.calls(), 5);

    for bad in [
        vec![],
        vec!["localhost".to_owned()],
        vec!["http://a:1".to_owned()],
    ] {
        assert!(
            MeshClient::new("dns-test", &bad, &cfg, None).is_err(),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn grpc_identities_are_verified_once_and_reach_the_handler() {
    let up = upstream().await;
    let client = client("identity-test", &[up.addr], &config());
    let get_me = |signed: Option<String>| {
        let client = client.clone();
        async move {
            client
                .call("GetMe", CallKind::Idempotent, move |channel| {
                    let mut request = Request::new(pb::GetMeReq {});
                    if let Some(signed) = &signed {
                        authorize(&mut request, signed).unwrap();
                    }
                    async move { UserServiceClient::new(channel).get_me(request).await }
                })
                .await
        }
    };
    let service = Identity::service("order", Duration::from_secs(60));
    let me = get_me(Some(up.key.sign_for(&service, "test")))
        .await
        .unwrap();
    assert_eq!(me.id, "svc-order");
    assert_eq!(me.roles, vec!["service"]);

    let e = get_me(None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A bad signature is refused by the layer before the handler runs.
    let calls = up.behaviour.calls();
    let forged = IdentityKey::random().sign_for(&service, "test");
    let e = get_me(Some(forged)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(
        e.metadata()
            .get(flashmall_mesh::error::GRPC_ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("unauthenticated")
    );
    assert_eq!(up.behaviour.calls(), calls, "the handler never ran");
}

#[tokio::test]
async fn http_identities_are_verified_once_and_extracted() {
    use axum::routing::get;
    use tower::ServiceExt;

    let key = IdentityKey::random();
    let app = verify_identity(
        axum::Router::new()
            .route("/public", get(|| async { "public" }))
            .route("/me", get(|Caller(me): Caller| async move { me.user_id })),
        key.clone(),
    );
    let send = |path: &str, identity: Option<String>| {
        let mut request = http::Request::get(path);
        if let Some(identity) = identity {
            request = request.header("x-flashmall-identity", identity);
        }
        let request = request.body(axum::body::Body::empty()).unwrap();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let alice = Identity {
        user_id: "0199-alice".into(),
        roles: vec![Role::Customer],
        token_id: "jti-1".into(),
        expires_at_ms: flashmall_mesh::now_ms() + 60_000,
    };

    assert_eq!(
        send("/public", None).await,
        (http::StatusCode::OK, "public".into())
    );
    let (status, body) = send("/me", None).await;
    assert_eq!(status, http::StatusCode::UNAUTHORIZED);
    assert!(body.contains(r#""code":"unauthenticated""#), "{body}");

    let valid = key.sign_for(&alice, "test");
    assert_eq!(
        send("/me", Some(valid.clone())).await,
        (http::StatusCode::OK, "0199-alice".into())
    );
    let forged = IdentityKey::random().sign_for(&alice, "test");
    let expired = key.sign_for(
        &Identity {
            expires_at_ms: 1,
            ..alice.clone()
        },
        "test",
    );
    for bad in [forged, expired, valid.replacen("customer", "admin", 1)] {
        for path in ["/me", "/public"] {
            let (status, body) = send(path, Some(bad.clone())).await;
            assert_eq!(status, http::StatusCode::UNAUTHORIZED, "{path} {bad}");
            assert!(body.contains("unauthenticated"), "{body}");
        }
    }
}

#[test]
fn channels_are_shareable_transports() {
    fn assert_transport<T: Clone + Send + Sync + 'static>() {}
    assert_transport::<flashmall_mesh::MeshChannel>();
    assert_transport::<MeshClient>();
    let _: fn(flashmall_mesh::MeshChannel) -> UserServiceClient<flashmall_mesh::MeshChannel> =
        UserServiceClient::new;
}

#[test]
fn new_needs_a_runtime() {
    let e =
        MeshClient::new("no-runtime", &["127.0.0.1:1".to_owned()], &config(), None).unwrap_err();
    assert!(e.contains("tokio runtime"), "{e}");
}
