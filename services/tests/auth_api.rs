//! The auth and user service, black-box over HTTP. The tests play the edge
//! where it matters: they verify the issued JWT and forward its identity
//! signed with the mesh key, as the proxy does.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use std::time::Duration;

use flashmall_mesh::identity::IDENTITY_HEADER;
use flashmall_mesh::{Identity, IdentityKey, Role, Shutdown};
use flashmall_services::auth::tokens::Claims;
use flashmall_services::config::AuthConfig;
use flashmall_services::{AuthSettings, launch_auth};
use serde_json::{Value, json};

const SECRET: &[u8] = b"test-jwt-secret-0123456789abcdef0123456789";

struct Service {
    base: String,
    client: reqwest::Client,
    key: IdentityKey,
    store: std::sync::Arc<dyn flashmall_services::store::ServiceStore>,
    config: AuthConfig,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

async fn start(tweak: impl FnOnce(&mut AuthConfig)) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let mut auth = AuthConfig {
        argon2_memory_kib: 64,
        argon2_iterations: 1,
        bootstrap_admins: vec!["root@example.com".into()],
        ..AuthConfig::default()
    };
    tweak(&mut auth);
    let key = IdentityKey::random();
    let settings = AuthSettings {
        auth,
        common: flashmall_services::Common {
            store: Default::default(),
            data_dir: dir.path().to_owned(),
            identity: key.clone(),
            client: Default::default(),
            tls: None,
            admin_listen: None,
        },
        jwt_secret: SECRET.to_vec(),
    };
    let store = flashmall_services::open_store(&settings.common.store, dir.path())
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = launch_auth(&settings, store.clone(), listener, shutdown.clone()).unwrap();
    Service {
        base: format!("http://{}", running.addr),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        key,
        store,
        config: settings.auth.clone(),
        shutdown,
        _dir: dir,
    }
}

async fn read(response: reqwest::Response) -> (u16, Value, Option<String>) {
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        retry,
    )
}

impl Service {
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, b, _) = read(
            self.client
                .post(format!("{}{path}", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await;
        (s, b)
    }

    async fn register(&self, email: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/auth/register",
                json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["user_id"].as_str().unwrap().to_owned()
    }

    async fn login(&self, email: &str, password: &str) -> (u16, Value) {
        self.post(
            "/api/v1/auth/login",
            json!({"email": email, "password": password}),
        )
        .await
    }

    /// What the edge does with an access token: verify it, sign its identity.
    fn identity_of(&self, access_token: &str) -> String {
        let claims = verify(access_token);
        self.key.sign_for(
            &Identity {
                user_id: claims.sub,
                roles: claims.roles,
                token_id: claims.jti,
                expires_at_ms: claims.exp * 1000,
            },
            "auth",
        )
    }

    fn as_token(
        &self,
        request: reqwest::RequestBuilder,
        tokens: &Value,
    ) -> reqwest::RequestBuilder {
        request.header(
            IDENTITY_HEADER,
            self.identity_of(tokens["access_token"].as_str().unwrap()),
        )
    }
}

fn verify(token: &str) -> Claims {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_audience(&["flashmall-api"]);
    validation.set_issuer(&["flashmall"]);
    jsonwebtoken::decode::<Claims>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET),
        &validation,
    )
    .expect("a valid access token")
    .claims
}

#[tokio::test]
async fn register_then_login_issues_verifiable_tokens() {
    let s = start(|_| {}).await;
    let id = s.register("Alice@Example.com").await;
    let (status, tokens) = s.login("alice@example.com", "correct horse battery").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 900);
    let claims = verify(tokens["access_token"].as_str().unwrap());
    assert_eq!(claims.sub, id);
    assert_eq!(claims.roles, vec![Role::Customer]);
    assert_eq!(claims.exp - claims.iat, 900);
    let (status, me, _) = read(
        s.as_token(s.client.get(format!("{}/api/v1/users/me", s.base)), &tokens)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["id"].as_str(), me["email"].as_str()),
        (Some(id.as_str()), Some("alice@example.com"))
    );
    assert!(me.get("password_hash").is_none(), "never shown");
    let (status, body) = s.login("alice@example.com", "wrong horse battery").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (status, _) = s.login("nobody@example.com", "correct horse battery").await;
    assert_eq!(status, 401, "same answer for unknown accounts");
}

#[tokio::test]
async fn bad_registrations_are_refused_clearly() {
    let s = start(|_| {}).await;
    s.register("bob@example.com").await;
    let cases = [
        (
            json!({"email": "bob@example.com", "password": "another good one"}),
            409,
            "conflict",
        ),
        (
            json!({"email": "BOB@example.com ", "password": "another good one"}),
            409,
            "conflict",
        ),
        (
            json!({"email": "not-an-email", "password": "correct horse battery"}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": "c@example.com", "password": "short"}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": "c@example.com", "password": "x".repeat(200)}),
            400,
            "invalid_request",
        ),
        (json!({"email": "c@example.com"}), 400, "invalid_request"),
        (
            json!({"email": "c@example.com", "password": "correct horse battery", "roles": ["admin"]}),
            400,
            "invalid_request",
        ),
        (
            json!({"email": "c@example.com", "password": "y".repeat(20_000)}),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = s.post("/api/v1/auth/register", body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (status, _, _) = read(
        s.client
            .post(format!("{}/api/v1/auth/register", s.base))
            .header("content-type", "application/json")
            .body("{\"email\":")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_family() {
    let s = start(|_| {}).await;
    s.register("carol@example.com").await;
    let (_, first) = s.login("carol@example.com", "correct horse battery").await;
    let old = first["refresh_token"].as_str().unwrap();
    let (status, second) = s
        .post("/api/v1/auth/refresh", json!({"refresh_token": old}))
        .await;
    assert_eq!(status, 200, "{second}");
    let new = second["refresh_token"].as_str().unwrap();
    assert_ne!(old, new, "rotated");
    assert_eq!(
        verify(second["access_token"].as_str().unwrap()).sub,
        verify(first["access_token"].as_str().unwrap()).sub
    );
    // The old one again: theft is assumed, the whole family dies.
    let (status, _) = s
        .post("/api/v1/auth/refresh", json!({"refresh_token": old}))
        .await;
    assert_eq!(status, 401);
    let (status, _) = s
        .post("/api/v1/auth/refresh", json!({"refresh_token": new}))
        .await;
    assert_eq!(status, 401, "the family is revoked");
    // A new login starts a new family.
    let (_, fresh) = s.login("carol@example.com", "correct horse battery").await;
    let (status, _) = s
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": fresh["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 200);
    for junk in ["", "rt.x.y", "garbage"] {
        let (status, _) = s
            .post("/api/v1/auth/refresh", json!({"refresh_token": junk}))
            .await;
        assert_eq!(status, 401, "{junk}");
    }
}

#[tokio::test]
async fn logout_ends_the_login_family() {
    let s = start(|_| {}).await;
    s.register("dave@example.com").await;
    let (_, tokens) = s.login("dave@example.com", "correct horse battery").await;
    let (status, _, _) = read(
        s.as_token(
            s.client.post(format!("{}/api/v1/auth/logout", s.base)),
            &tokens,
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = s
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, _, _) = read(
        s.client
            .post(format!("{}/api/v1/auth/logout", s.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "logout needs an identity");
}

impl Service {
    /// A login as the edge forwards it from client address `ip`.
    async fn login_from(
        &self,
        ip: &str,
        email: &str,
        password: &str,
    ) -> (u16, Value, Option<String>) {
        read(
            self.client
                .post(format!("{}/api/v1/auth/login", self.base))
                // As the edge sends it: the address signed for auth.
                .header(
                    flashmall_mesh::identity::CLIENT_HEADER,
                    self.key.sign_client(ip.parse().unwrap(), "auth"),
                )
                .json(&json!({"email": email, "password": password}))
                .send()
                .await
                .unwrap(),
        )
        .await
    }
}

/// Security review #18, finding 4: failures back off the address that
/// made them on that account only; the owner elsewhere, and others behind
/// the same address, log in; past an account-wide ceiling only addresses
/// that failed before are slowed.
#[tokio::test]
async fn failed_logins_back_off_the_guessing_address_never_the_owner() {
    let s = start(|c| {
        c.login_account_failures = 3;
        c.login_account_ceiling = 6;
        c.login_backoff = Duration::from_secs(2);
    })
    .await;
    s.register("erin@example.com").await;
    const GOOD: &str = "correct horse battery";
    const BAD: &str = "wrong password!!";
    let attacker = "203.0.113.9";
    for _ in 0..3 {
        assert_eq!(s.login_from(attacker, "erin@example.com", BAD).await.0, 401);
    }
    // The guessing address backs off on this account, before any hashing,
    // even with the right password.
    let (status, body, retry) = s.login_from(attacker, "erin@example.com", GOOD).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(retry.is_some_and(|r| r.parse::<u64>().unwrap() >= 1));
    // Erin, from her own address, is not locked out.
    assert_eq!(
        s.login_from("198.51.100.7", "erin@example.com", GOOD)
            .await
            .0,
        200
    );
    // Others behind the attacker's address (a NAT) log in to their accounts.
    s.register("nat@example.com").await;
    assert_eq!(s.login_from(attacker, "nat@example.com", GOOD).await.0, 200);

    // Past the account-wide ceiling (6 failures from anywhere), addresses
    // that failed on the account wait; a fresh address does not.
    s.register("fay@example.com").await;
    for n in 0..6 {
        let ip = format!("192.0.2.{n}");
        assert_eq!(s.login_from(&ip, "fay@example.com", BAD).await.0, 401);
    }
    let (status, _, _) = s.login_from("192.0.2.0", "fay@example.com", GOOD).await;
    assert_eq!(status, 429, "an address that failed waits past the ceiling");
    assert_eq!(
        s.login_from("198.51.100.8", "fay@example.com", GOOD)
            .await
            .0,
        200,
        "the owner's address never waits"
    );
    // An address the caller claims (unsigned) is not taken: these guesses
    // all count for the connection's own address, and so are held back.
    s.register("gil@example.com").await;
    let claiming = |ip: String, password: &'static str| {
        s.client
            .post(format!("{}/api/v1/auth/login", s.base))
            .header("x-real-ip", ip)
            .json(&json!({"email": "gil@example.com", "password": password}))
    };
    for n in 0..3 {
        let response = claiming(format!("192.0.2.{}", 100 + n), BAD).send().await;
        assert_eq!(read(response.unwrap()).await.0, 401);
    }
    let response = claiming("192.0.2.200".into(), GOOD).send().await;
    assert_eq!(
        read(response.unwrap()).await.0,
        429,
        "a claimed address does not escape the back-off"
    );
}

#[tokio::test]
async fn accounts_change_only_with_the_password_and_only_for_their_owner() {
    let s = start(|_| {}).await;
    let frank = s.register("frank@example.com").await;
    let grace = s.register("grace@example.com").await;
    let (_, f) = s.login("frank@example.com", "correct horse battery").await;
    let me = |tokens: &Value| {
        s.as_token(
            s.client.patch(format!("{}/api/v1/users/me", s.base)),
            tokens,
        )
    };
    let (status, body, _) = read(
        me(&f)
            .json(&json!({"password": "a brand new secret", "current_password": "nope nope nope"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, body, _) = read(
        me(&f)
            .json(
                &json!({"email": "grace@example.com", "current_password": "correct horse battery"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "grace keeps her email"
    );
    let (status, body, _) = read(
        me(&f)
            .json(&json!({"email": "frank2@example.com", "password": "a brand new secret", "current_password": "correct horse battery"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"].as_str(), Some(frank.as_str()));
    assert_eq!(
        s.login("frank@example.com", "a brand new secret").await.0,
        401,
        "old email released"
    );
    assert_eq!(
        s.login("frank2@example.com", "a brand new secret").await.0,
        200
    );
    // Delete asks for the password, and only ever deletes the caller.
    let delete = |password: &str| {
        s.as_token(s.client.delete(format!("{}/api/v1/users/me", s.base)), &f)
            .json(&json!({"password": password}))
    };
    assert_eq!(
        read(delete("correct horse battery").send().await.unwrap())
            .await
            .0,
        403
    );
    assert_eq!(
        read(delete("a brand new secret").send().await.unwrap())
            .await
            .0,
        204
    );
    assert_eq!(
        s.login("frank2@example.com", "a brand new secret").await.0,
        401
    );
    assert_eq!(
        s.login("grace@example.com", "correct horse battery")
            .await
            .0,
        200,
        "grace untouched"
    );
    let _ = grace;
}

#[tokio::test]
async fn only_admins_grant_roles() {
    let s = start(|_| {}).await;
    s.register("root@example.com").await;
    flashmall_services::auth::grant_admin(&*s.store, "root@example.com")
        .await
        .unwrap();
    let user = s.register("henry@example.com").await;
    let (_, root) = s.login("root@example.com", "correct horse battery").await;
    assert!(
        verify(root["access_token"].as_str().unwrap())
            .roles
            .contains(&Role::Admin),
        "bootstrap admin"
    );
    let (_, henry) = s.login("henry@example.com", "correct horse battery").await;
    let grant = |tokens: &Value, roles: Value| {
        s.as_token(
            s.client
                .put(format!("{}/api/v1/admin/users/{user}/roles", s.base)),
            tokens,
        )
        .json(&json!({"roles": roles}))
    };
    assert_eq!(
        read(grant(&henry, json!(["admin"])).send().await.unwrap())
            .await
            .0,
        403,
        "no self-promotion"
    );
    assert_eq!(
        read(grant(&root, json!(["wizard"])).send().await.unwrap())
            .await
            .0,
        400
    );
    assert_eq!(
        read(grant(&root, json!([])).send().await.unwrap()).await.0,
        400
    );
    let (status, body, _) = read(
        grant(&root, json!(["customer", "merchant"]))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["roles"], json!(["customer", "merchant"]));
    let (_, again) = s.login("henry@example.com", "correct horse battery").await;
    assert_eq!(
        verify(again["access_token"].as_str().unwrap()).roles,
        vec![Role::Customer, Role::Merchant]
    );
    let missing = s.as_token(
        s.client
            .put(format!("{}/api/v1/admin/users/nobody/roles", s.base)),
        &root,
    );
    assert_eq!(
        read(
            missing
                .json(&json!({"roles": ["merchant"]}))
                .send()
                .await
                .unwrap()
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn the_grpc_api_shares_the_port_and_the_rules() {
    use flashmall_proto::user as pb;
    let s = start(|_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(s.base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = pb::user_service_client::UserServiceClient::new(channel);
    let mismatch = client
        .register(pb::RegisterReq {
            email: "ivan@example.com".into(),
            password: "correct horse battery".into(),
            confirm_password: "something else entirely".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), tonic::Code::InvalidArgument);
    let registered = client
        .register(pb::RegisterReq {
            email: "ivan@example.com".into(),
            password: "correct horse battery".into(),
            confirm_password: "correct horse battery".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let login = client
        .login(pb::LoginReq {
            email: "ivan@example.com".into(),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(login.user_id, registered.user_id);
    assert_eq!(verify(&login.access_token).sub, registered.user_id);
    let denied = client
        .login(pb::LoginReq {
            email: "ivan@example.com".into(),
            password: "wrong horse battery".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::Unauthenticated);
    // GetMe needs the edge's signed identity, like the JSON API.
    assert_eq!(
        client.get_me(pb::GetMeReq {}).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut request = tonic::Request::new(pb::GetMeReq {});
    request.metadata_mut().insert(
        IDENTITY_HEADER,
        s.identity_of(&login.access_token).parse().unwrap(),
    );
    let me = client.get_me(request).await.unwrap().into_inner();
    assert_eq!(
        (me.id.as_str(), me.email.as_str()),
        (registered.user_id.as_str(), "ivan@example.com")
    );
    let rotated = client
        .refresh(pb::RefreshReq {
            refresh_token: login.refresh_token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.refresh_token, login.refresh_token);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_cannot_outrun_the_lockout() {
    let s = std::sync::Arc::new(start(|c| c.login_account_failures = 3).await);
    s.register("jill@example.com").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = std::sync::Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            s.login("jill@example.com", &format!("guess number {i:04}"))
                .await
                .0
        }));
    }
    let mut checked = 0;
    for t in tasks {
        match t.await.unwrap() {
            401 => checked += 1,
            429 | 503 => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        checked <= 3,
        "{checked} guesses reached the password check, the limit is 3"
    );
    let (status, _) = s.login("jill@example.com", "correct horse battery").await;
    assert_eq!(
        status, 429,
        "locked even for the right password, from that address"
    );
    let (status, _, _) = s
        .login_from("198.51.100.9", "jill@example.com", "correct horse battery")
        .await;
    assert_eq!(status, 200, "and only from that address");
}

#[tokio::test]
async fn a_password_change_ends_other_logins() {
    let s = start(|_| {}).await;
    s.register("kate@example.com").await;
    let (_, laptop) = s.login("kate@example.com", "correct horse battery").await;
    let (_, phone) = s.login("kate@example.com", "correct horse battery").await;
    let (status, _, _) = read(
        s.as_token(
            s.client.patch(format!("{}/api/v1/users/me", s.base)),
            &laptop,
        )
        .json(
            &json!({"password": "a brand new secret", "current_password": "correct horse battery"}),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post(
            "/api/v1/auth/refresh",
            json!({"refresh_token": phone["refresh_token"]}),
        )
        .await;
    assert_eq!(status, 401, "the phone's login ended with the old password");
    let (status, _) = s.login("kate@example.com", "a brand new secret").await;
    assert_eq!(status, 200);
}

/// Security review #18, item 10: registering a bootstrap admin's email
/// makes no admin (whoever came first would get it); the operator grants
/// an existing account, at auth start-up or with `flashmall grant-admin`.
#[tokio::test]
async fn registering_never_makes_an_admin_an_operator_grants_it() {
    use flashmall_services::auth::{Auth, grant_admin};
    let s = start(|_| {}).await;
    s.register("root@example.com").await;
    let roles = |tokens: &Value| verify(tokens["access_token"].as_str().unwrap()).roles;
    let (_, root) = s.login("root@example.com", "correct horse battery").await;
    assert_eq!(
        roles(&root),
        vec![Role::Customer],
        "registration grants nothing"
    );
    // At start-up: the existing account of a bootstrap email.
    let auth = Auth::new(s.store.clone(), s.config.clone(), SECRET).unwrap();
    assert_eq!(
        auth.grant_bootstrap_admins().await,
        vec!["root@example.com".to_owned()]
    );
    assert!(auth.grant_bootstrap_admins().await.is_empty(), "once");
    let (_, root) = s.login("root@example.com", "correct horse battery").await;
    assert!(roles(&root).contains(&Role::Admin));
    // Out of band (flashmall grant-admin): existing accounts only.
    s.register("ops@example.com").await;
    assert!(grant_admin(&*s.store, "OPS@example.com").await.unwrap());
    assert!(!grant_admin(&*s.store, "ops@example.com").await.unwrap());
    let missing = grant_admin(&*s.store, "nobody@example.com")
        .await
        .unwrap_err();
    assert_eq!(missing.code, flashmall_mesh::ErrorCode::NotFound);
    let (_, ops) = s.login("ops@example.com", "correct horse battery").await;
    assert!(roles(&ops).contains(&Role::Admin));
}
