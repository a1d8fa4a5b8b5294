//! The edge, black-box: the real Pingora proxy in front of the real engine
//! and auth service, over real sockets, with tokens from real logins.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::time::{Duration, Instant};

use flashmall_mesh::Role;
use flashmall_mesh::identity::AccessClaims;
use serde_json::json;
use support::eventually;
use support::stack::{EdgeStack, JWT_SECRET, Login};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(user: &str, exp: u64) -> AccessClaims {
    AccessClaims {
        sub: user.into(),
        roles: vec![Role::Admin],
        iat: now_secs(),
        nbf: now_secs(),
        exp,
        iss: "flashmall".into(),
        aud: "flashmall-api".into(),
        jti: format!("{}", uuid::Uuid::now_v7().simple()),
    }
}

fn sign(alg: jsonwebtoken::Algorithm, claims: &AccessClaims, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(alg),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_pass_and_protected_routes_need_a_valid_token() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let sale = s.sale(&admin, 5).await;
    // Public: sale status and the OpenAPI document, no token.
    let (status, view) = s
        .call(s.client.get(s.url(&format!("/api/v1/sales/{sale}"))))
        .await;
    assert_eq!((status, view["remaining"].as_i64()), (200, Some(5)));
    let (status, doc) = s.call(s.client.get(s.url("/api/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/api/v1/sales/{id}/purchase"]["post"].is_object());
    // Protected: every bad token is a 401.
    let user = admin.user_id.clone();
    let expired = sign(
        jsonwebtoken::Algorithm::HS256,
        &claims(&user, now_secs() - 120),
        JWT_SECRET,
    );
    let other_key = sign(
        jsonwebtoken::Algorithm::HS256,
        &claims(&user, now_secs() + 600),
        b"another-secret-0123456789abcdefghij",
    );
    let wrong_alg = sign(
        jsonwebtoken::Algorithm::HS512,
        &claims(&user, now_secs() + 600),
        JWT_SECRET,
    );
    let mut tampered = admin.access.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let none = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(&serde_json::to_vec(&claims(&user, now_secs() + 600)).unwrap())
    );
    let mut wrong_aud = claims(&user, now_secs() + 600);
    wrong_aud.aud = "someone-else".into();
    let wrong_aud = sign(jsonwebtoken::Algorithm::HS256, &wrong_aud, JWT_SECRET);
    let purchase = |token: Option<&str>| {
        let r = s
            .client
            .post(s.url(&format!("/api/v1/sales/{sale}/purchase")))
            .header("idempotency-key", "k")
            .json(&json!({"quantity": 1}));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    };
    for (name, token) in [
        ("missing", None),
        ("expired", Some(expired.as_str())),
        ("foreign key", Some(other_key.as_str())),
        ("wrong algorithm", Some(wrong_alg.as_str())),
        ("tampered", Some(tampered.as_str())),
        ("alg none", Some(none.as_str())),
        ("wrong audience", Some(wrong_aud.as_str())),
        ("garbage", Some("not.a.token")),
    ] {
        let (status, body) = s.call(purchase(token)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("unauthenticated")),
            "{name}: {body}"
        );
    }
    let (status, _) = s.call(purchase(Some(&admin.access))).await;
    assert_eq!(status, 201);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_identity_headers_are_ignored_and_users_stay_apart() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let sale = s.sale(&admin, 5).await;
    let alice = s.login("alice@example.com").await;
    let bob = s.login("bob@example.com").await;
    // Alice claims to be Bob in every header a service might read.
    let (status, body) = s
        .call(
            s.client
                .post(s.url(&format!("/api/v1/sales/{sale}/purchase")))
                .bearer_auth(&alice.access)
                .header("x-user-id", &bob.user_id)
                .header("x-user-roles", "admin")
                .header(
                    "x-flashmall-identity",
                    format!("v1.{}.admin.x.99999999999999.00", bob.user_id),
                )
                .header("idempotency-key", "k1")
                .json(&json!({"quantity": 1})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let reservation = body["reservation_id"].as_str().unwrap();
    let get = |who: &Login| {
        s.client
            .get(s.url(&format!("/api/v1/reservations/{reservation}")))
            .bearer_auth(&who.access)
    };
    let (status, r) = s.call(get(&alice)).await;
    assert_eq!(
        (status, r["user_id"].as_str()),
        (200, Some(alice.user_id.as_str()))
    );
    assert_eq!(
        s.call(get(&bob)).await.0,
        404,
        "bob cannot read alice's reservation"
    );
    // A forged identity header alone gets nowhere.
    let (status, _) = s
        .call(s.client.get(s.url("/api/v1/users/me")).header(
            "x-flashmall-identity",
            format!("v1.{}.admin.x.99999999999999.00", bob.user_id),
        ))
        .await;
    assert_eq!(status, 401);
    // /users/me is always the caller's own account.
    let (_, me) = s
        .call(
            s.client
                .get(s.url("/api/v1/users/me"))
                .bearer_auth(&alice.access),
        )
        .await;
    assert_eq!(me["email"], "alice@example.com");
    let (status, _) = s
        .call(
            s.client
                .delete(s.url("/api/v1/users/me"))
                .bearer_auth(&alice.access)
                .header("x-user-id", &bob.user_id)
                .json(&json!({"password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 204);
    let (status, me) = s
        .call(
            s.client
                .get(s.url("/api/v1/users/me"))
                .bearer_auth(&bob.access),
        )
        .await;
    assert_eq!(
        (status, me["email"].as_str()),
        (200, Some("bob@example.com")),
        "bob's account survives"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_logout_ends_the_token_at_the_edge() {
    let s = EdgeStack::start(|_| {}).await;
    let carol = s.login("carol@example.com").await;
    let refresh = |token: &str| {
        s.client
            .post(s.url("/api/v1/auth/refresh"))
            .json(&json!({"refresh_token": token}))
    };
    let (status, rotated) = s.call(refresh(&carol.refresh)).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.call(refresh(&carol.refresh)).await.0,
        401,
        "reuse of a rotated token"
    );
    assert_eq!(
        s.call(refresh(rotated["refresh_token"].as_str().unwrap()))
            .await
            .0,
        401,
        "family revoked"
    );
    let dave = s.login("dave@example.com").await;
    let me = || {
        s.client
            .get(s.url("/api/v1/users/me"))
            .bearer_auth(&dave.access)
    };
    assert_eq!(s.call(me()).await.0, 200);
    // Logging out with the newer access token of the same login ends the
    // older one too: the whole family is denied at the edge.
    let (_, newer) = s.call(refresh(&dave.refresh)).await;
    let newer = newer["access_token"].as_str().unwrap().to_owned();
    let (status, _) = s
        .call(
            s.client
                .post(s.url("/api/v1/auth/logout"))
                .bearer_auth(&newer),
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = s.call(me()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{body}"
    );
    assert_eq!(s.call(refresh(&dave.refresh)).await.0, 401);
    s.stop().await;
}

/// Polls until `check` holds, at most `limit`; returns how long it took.
async fn within<F, Fut>(limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blacklists_apply_to_users_and_address_ranges_and_lift_on_removal() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let erin = s.login("erin@example.com").await;
    let me = |who: &Login| {
        s.client
            .get(s.url("/api/v1/users/me"))
            .bearer_auth(&who.access)
    };
    let (status, entry) = s
        .call(
            s.client
                .post(s.url("/api/v1/admin/blacklist"))
                .bearer_auth(&admin.access)
                .json(&json!({"user_id": erin.user_id})),
        )
        .await;
    assert_eq!(status, 201, "{entry}");
    let id = entry["id"].as_str().unwrap().to_owned();
    within(Duration::from_secs(1), || async {
        s.call(me(&erin)).await.0 == 403
    })
    .await;
    assert_eq!(s.call(me(&admin)).await.0, 200, "others unaffected");
    let (_, list) = s
        .call(
            s.client
                .get(s.url("/api/v1/admin/blacklist"))
                .bearer_auth(&admin.access),
        )
        .await;
    assert_eq!(
        list["entries"][0]["user_id"].as_str(),
        Some(erin.user_id.as_str())
    );
    let (status, _) = s
        .call(
            s.client
                .delete(s.url(&format!("/api/v1/admin/blacklist/{id}")))
                .bearer_auth(&admin.access),
        )
        .await;
    assert_eq!(status, 204);
    within(Duration::from_secs(1), || async {
        s.call(me(&erin)).await.0 == 200
    })
    .await;
    // An address range: clients from 127.0.0.2 are refused, others are not.
    let from_two = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let (status, entry) = s
        .call(
            s.client
                .post(s.url("/api/v1/admin/blacklist"))
                .bearer_auth(&admin.access)
                .json(&json!({"cidr": "127.0.0.2/32"})),
        )
        .await;
    assert_eq!(status, 201);
    within(Duration::from_secs(1), || async {
        s.call(
            from_two
                .get(s.url("/api/v1/openapi.json"))
                .bearer_auth(&erin.access),
        )
        .await
        .0 == 403
    })
    .await;
    assert_eq!(
        s.call(from_two.get(s.url("/api/v1/sales/x"))).await.0,
        403,
        "even public routes"
    );
    assert_eq!(
        s.call(me(&erin)).await.0,
        200,
        "from 127.0.0.1 erin still works"
    );
    let id = entry["id"].as_str().unwrap();
    s.call(
        s.client
            .delete(s.url(&format!("/api/v1/admin/blacklist/{id}")))
            .bearer_auth(&admin.access),
    )
    .await;
    within(Duration::from_secs(1), || async {
        s.call(
            from_two
                .get(s.url("/api/v1/users/me"))
                .bearer_auth(&erin.access),
        )
        .await
        .0 == 200
    })
    .await;
    // Bad entries are refused; only admins manage the list.
    for bad in [
        json!({}),
        json!({"cidr": "nonsense"}),
        json!({"user_id": "a", "cidr": "10.0.0.0/8"}),
        json!({"user_id": "u", "expires_at": "2000-01-01T00:00:00Z"}),
        // Before 1970: in the past, never "no expiry".
        json!({"user_id": erin.user_id, "expires_at": "1969-12-31T23:59:59Z"}),
        json!({"user_id": erin.user_id, "expires_at": "2000-01-01T00:00:00Z"}),
    ] {
        let (status, body) = s
            .call(
                s.client
                    .post(s.url("/api/v1/admin/blacklist"))
                    .bearer_auth(&admin.access)
                    .json(&bad),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
    assert_eq!(
        s.call(
            s.client
                .get(s.url("/api/v1/admin/blacklist"))
                .bearer_auth(&erin.access)
        )
        .await
        .0,
        403
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_change_at_runtime_and_bad_rules_are_refused() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let frank = s.login("frank@example.com").await;
    let me = |who: &Login| {
        s.client
            .get(s.url("/api/v1/users/me"))
            .bearer_auth(&who.access)
    };
    let put = |rules: serde_json::Value| {
        s.client
            .put(s.url("/api/v1/admin/access-rules"))
            .bearer_auth(&admin.access)
            .json(&json!({ "rules": rules }))
    };
    // Ordered: the first rule matching any of the caller's roles decides, so
    // admins (who are customers too) are let through by the rule above.
    let (status, _) = s
        .call(put(json!([
            {"role": "admin", "effect": "allow", "path": "^/api/v1/users/me$"},
            {"role": "customer", "effect": "deny", "method": "GET", "path": "^/api/v1/users/me$"}
        ])))
        .await;
    assert_eq!(status, 200);
    let took = within(Duration::from_secs(1), || async {
        s.call(me(&frank)).await.0 == 403
    })
    .await;
    assert!(took < Duration::from_secs(1));
    assert_eq!(
        s.call(me(&admin)).await.0,
        200,
        "the admin rule comes first"
    );
    let (status, body) = s
        .call(put(
            json!([{"role": "customer", "effect": "deny", "path": "(unclosed"}]),
        ))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rule 0"),
        "{body}"
    );
    assert_eq!(s.call(me(&frank)).await.0, 403, "the old rules stay");
    let (_, current) = s
        .call(
            s.client
                .get(s.url("/api/v1/admin/access-rules"))
                .bearer_auth(&admin.access),
        )
        .await;
    assert_eq!(current["rules"].as_array().map(Vec::len), Some(2));
    s.call(put(json!([]))).await;
    within(Duration::from_secs(1), || async {
        s.call(me(&frank)).await.0 == 200
    })
    .await;
    s.stop().await;
}

/// Sends raw HTTP/1.1 requests on one connection; returns each status and
/// whether the connection was still usable for the next.
async fn on_one_connection(addr: std::net::SocketAddr, requests: &[String]) -> Vec<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut answers = Vec::new();
    for request in requests {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read one response: headers, then Content-Length bytes.
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection was closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = text[9..12].parse().unwrap();
                    answers.push((status, text[..end].to_owned()));
                    break;
                }
            }
        }
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_to_a_small_post_keeps_the_connection_and_a_large_one_closes_it() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let sale = s.sale(&admin, 3).await;
    // Purchases without a token are answered by the edge before it reads
    // the body: a small body is drained and the connection kept.
    let body = r#"{"quantity":1}"#;
    let small = format!(
        "POST /api/v1/sales/{sale}/purchase HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let answers = on_one_connection(s.proxy_addr, &[small.clone(), small.clone(), small]).await;
    assert_eq!(answers.len(), 3);
    for (status, head) in &answers {
        assert_eq!(*status, 401, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
    }
    // A body past the drain limit is not read: that answer closes.
    let large = "x".repeat(flashmall_proxy::respond::DRAIN_LIMIT as usize + 1);
    let request = format!(
        "POST /api/v1/sales/{sale}/purchase HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{large}",
        large.len()
    );
    let answers = on_one_connection(s.proxy_addr, &[request]).await;
    assert_eq!(answers[0].0, 401);
    assert!(
        answers[0]
            .1
            .to_ascii_lowercase()
            .contains("connection: close"),
        "{}",
        answers[0].1
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_upstream_the_connection_is_closed_or_still_serves() {
    // The engine pool is a dead address: a POST with a body gets 502 or 503
    // after the edge tried the upstream. The connection must then either
    // be announced closed or answer the next request: never left open and
    // then dropped under the client.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let s = EdgeStack::start(|p| {
        p.upstreams.insert("engine".into(), vec![addr.clone()]);
    })
    .await;
    let admin = s.admin().await;
    let body = "{}";
    let post = format!(
        "POST /api/v1/admin/reconcile HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        admin.access,
        body.len()
    );
    let get = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_owned();
    for _ in 0..20 {
        let first = on_one_connection(s.proxy_addr, std::slice::from_ref(&post)).await;
        assert!(matches!(first[0].0, 502 | 503), "{first:?}");
        if first[0]
            .1
            .to_ascii_lowercase()
            .contains("connection: close")
        {
            continue;
        }
        let both = on_one_connection(s.proxy_addr, &[post.clone(), get.clone()]).await;
        assert_eq!(both[1].0, 200, "{both:?}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_answer_429_near_the_configured_rate_on_an_open_connection() {
    let s = EdgeStack::start(|p| {
        p.limits.push(flashmall_proxy::config::LimitConfig {
            name: "me-per-user".into(),
            key: "user".into(),
            method: "GET".into(),
            path: "^/api/v1/users/me$".into(),
            per_second: 20.0,
            burst: 1,
            scope: "local".into(),
        });
    })
    .await;
    let grace = s.login("grace@example.com").await;
    // Three requests on one connection: the 429 must not close it.
    let addr = s.proxy_addr;
    let request = format!(
        "GET /api/v1/users/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        grace.access
    );
    let answers = on_one_connection(addr, &[request.clone(), request.clone(), request]).await;
    assert!(
        answers.iter().any(|(status, _)| *status == 429),
        "{answers:?}"
    );
    let limited = answers.iter().find(|(status, _)| *status == 429).unwrap();
    assert!(
        limited.1.to_ascii_lowercase().contains("retry-after:"),
        "{}",
        limited.1
    );
    assert!(
        !limited.1.to_ascii_lowercase().contains("connection: close"),
        "{}",
        limited.1
    );
    // The admitted rate over two seconds is within 20% of 20 per second.
    // Four clients offer far more than that, so every slot the limiter
    // opens is taken even when one client is slowed down (with a burst of
    // 1, a slot nobody asks for in time is lost).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let client = |_| async {
        let mut admitted = 0u32;
        while started.elapsed() < Duration::from_secs(2) {
            let (status, _) = s
                .call(
                    s.client
                        .get(s.url("/api/v1/users/me"))
                        .bearer_auth(&grace.access),
                )
                .await;
            match status {
                200 => admitted += 1,
                429 => {}
                other => panic!("unexpected {other}"),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        admitted
    };
    let admitted: u32 = futures::future::join_all((0..4).map(client))
        .await
        .into_iter()
        .sum();
    let rate = f64::from(admitted) / started.elapsed().as_secs_f64();
    assert!(
        (16.0..=24.0).contains(&rate),
        "admitted {rate:.1}/s, configured 20/s"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_and_the_proxy_keeps_serving() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let sale = s.sale(&admin, 3).await;
    let url = s.url(&format!("/api/v1/sales/{sale}/purchase"));
    let post = |body: String| {
        s.client
            .post(&url)
            .bearer_auth(&admin.access)
            .header("idempotency-key", "k")
            .header("content-type", "application/json")
            .body(body)
    };
    assert_eq!(s.call(post("{\"quantity\":".into())).await.0, 400);
    assert_eq!(
        s.call(post(format!(
            "{{\"quantity\":1,\"x\":\"{}\"}}",
            "y".repeat(100_000)
        )))
        .await
        .0,
        413
    );
    let huge = s
        .client
        .get(s.url("/api/v1/sales/x"))
        .header("x-huge", "h".repeat(200_000))
        .send()
        .await;
    match huge {
        Ok(r) => assert!(r.status().is_client_error(), "huge header: {}", r.status()),
        Err(e) => panic!("huge header: no answer ({e})"),
    }
    let (status, body) = s
        .call(
            s.client
                .get(s.url("/api/v1/nowhere"))
                .bearer_auth(&admin.access),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(
        s.call(s.client.get(s.url("/healthz"))).await.0,
        200,
        "still serving"
    );
    assert_eq!(s.call(post("{\"quantity\":1}".into())).await.0, 201);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_sales_are_answered_at_the_edge_but_holders_get_their_answers() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let sale = s.sale(&admin, 1).await;
    let holder = s.login("holder@example.com").await;
    let late = s.login("late@example.com").await;
    let (status, first) = s.purchase(&holder, &sale, "k").await;
    assert_eq!(status, 201);
    let (status, body) = s.purchase(&late, &sale, "k1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sold_out"))
    );
    let before = s.gate_answers().await;
    within(Duration::from_secs(1), || async {
        let (status, body) = s.purchase(&late, &sale, "k2").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (409, Some("sold_out")),
            "{body}"
        );
        s.gate_answers().await > before
    })
    .await;
    // The holder's retry still reaches the engine and gets the original answer.
    let (status, again) = s.purchase(&holder, &sale, "k").await;
    assert_eq!(status, 201);
    assert_eq!(again["reservation_id"], first["reservation_id"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_share_the_blacklist_and_global_limits() {
    let redis = flashmall_testing::RedisServer::start();
    let url = redis.url();
    let s = EdgeStack::start(|p| {
        p.redis_url = url.clone();
        p.limits.push(flashmall_proxy::config::LimitConfig {
            name: "me-global".into(),
            key: "user".into(),
            method: "GET".into(),
            path: "^/api/v1/users/me$".into(),
            per_second: 10.0,
            burst: 5,
            scope: "global".into(),
        });
    })
    .await;
    let other = s.replica().await;
    let other_url = |path: &str| format!("http://{}{path}", other.addr);
    let admin = s.admin().await;
    let ivy = s.login("ivy@example.com").await;
    let jack = s.login("jack@example.com").await;
    // A blacklist entry made through the first replica is enforced by the second.
    let (status, _) = s
        .call(
            s.client
                .post(s.url("/api/v1/admin/blacklist"))
                .bearer_auth(&admin.access)
                .json(&json!({"user_id": ivy.user_id})),
        )
        .await;
    assert_eq!(status, 201);
    let took = within(Duration::from_secs(1), || async {
        s.call(
            s.client
                .get(other_url("/api/v1/users/me"))
                .bearer_auth(&ivy.access),
        )
        .await
        .0 == 403
    })
    .await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    // The global limit is one budget across replicas: a burst of 5, then
    // 10/s, however the requests are spread. Jack's login already spent a
    // token (it reads /users/me): wait until his bucket is full again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut admitted = 0;
    let mut statuses = Vec::new();
    let started = Instant::now();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            s.url("/api/v1/users/me")
        } else {
            other_url("/api/v1/users/me")
        };
        let (status, body) = s.call(s.client.get(url).bearer_auth(&jack.access)).await;
        if status == 200 {
            admitted += 1;
        }
        statuses.push((status, body["error"]["code"].as_str().map(str::to_owned)));
    }
    let allowed = 5.0 + 10.0 * started.elapsed().as_secs_f64();
    assert!(
        admitted >= 5,
        "the burst is admitted: {admitted} {statuses:?}"
    );
    assert!(
        f64::from(admitted) <= allowed.ceil() + 1.0,
        "admitted {admitted}, one shared budget allows {allowed:.1}"
    );
    other.stop().await;
    s.stop().await;
}

/// A customer's claims (kim, logged in through the edge) and the ES256 key
/// of the JWKS fixture (kid `es-1`).
async fn customer_claims_and_es256_key(
    s: &EdgeStack,
    fixtures: &std::path::Path,
) -> (
    flashmall_mesh::identity::AccessClaims,
    jsonwebtoken::EncodingKey,
) {
    let kim = s.login("kim@example.com").await;
    let mut c = claims(&kim.user_id, now_secs() + 600);
    c.roles = vec![Role::Customer];
    let es =
        jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(fixtures.join("es256.pem")).unwrap())
            .unwrap();
    (c, es)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_tokens_with_their_pinned_algorithm() {
    let fixtures = flashmall_testing::package_dir().join("tests/fixtures/jwks");
    let jwks = fixtures.join("jwks.json").display().to_string();
    let s = EdgeStack::start(|p| p.jwks_file = jwks.clone()).await;
    let (c, es) = customer_claims_and_es256_key(&s, &fixtures).await;
    let rs = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixtures.join("rs256.pem")).unwrap(),
    )
    .unwrap();
    let token =
        |alg: jsonwebtoken::Algorithm, kid: Option<&str>, key: &jsonwebtoken::EncodingKey| {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = kid.map(str::to_owned);
            jsonwebtoken::encode(&header, &c, key).unwrap()
        };
    let hs = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET);
    let me = |t: String| s.client.get(s.url("/api/v1/users/me")).bearer_auth(t);
    for (name, t, status) in [
        (
            "ES256 with its key",
            token(jsonwebtoken::Algorithm::ES256, Some("es-1"), &es),
            200,
        ),
        (
            "RS256 with its key",
            token(jsonwebtoken::Algorithm::RS256, Some("rs-1"), &rs),
            200,
        ),
        (
            "the RSA key's id on an ES256 token",
            token(jsonwebtoken::Algorithm::ES256, Some("rs-1"), &es),
            401,
        ),
        (
            "an unknown key id",
            token(jsonwebtoken::Algorithm::ES256, Some("nope"), &es),
            401,
        ),
        (
            "HS256 naming a published key",
            token(jsonwebtoken::Algorithm::HS256, Some("es-1"), &hs),
            401,
        ),
        (
            "HS256 without a key id",
            token(jsonwebtoken::Algorithm::HS256, None, &hs),
            200,
        ),
    ] {
        let (got, body) = s.call(me(t)).await;
        assert_eq!(got, status, "{name}: {body}");
    }
    s.stop().await;
}

/// Serves `body` as JSON over HTTPS on a loopback port with the
/// certificate `issued` (named `localhost`), to any path; answers one
/// request per connection.
async fn https_server(issued: &flashmall_testing::pki::Issued, body: Vec<u8>) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&issued.cert_file)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&issued.key_file).unwrap();
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, body) = (acceptor.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(&body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// A JWKS URL is fetched over HTTPS, its server verified: under a private
/// CA named by `proxy.jwks_ca_file` the keys load and verify tokens;
/// without that CA the server is refused and its keys verify nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_fetched_over_verified_https() {
    let fixtures = flashmall_testing::package_dir().join("tests/fixtures/jwks");
    let dir = tempfile::tempdir().unwrap();
    let ca = flashmall_testing::pki::TestCa::new(dir.path(), "jwks");
    let issued = ca.issue(dir.path(), "server", &["localhost"]);
    let port = https_server(&issued, std::fs::read(fixtures.join("jwks.json")).unwrap()).await;
    let url = format!("https://localhost:{port}/.well-known/jwks.json");
    let ca_file = ca.ca_file().display().to_string();
    let s = EdgeStack::start(|p| {
        p.jwks_url = url.clone();
        p.jwks_ca_file = ca_file.clone();
    })
    .await;
    let (c, es) = customer_claims_and_es256_key(&s, &fixtures).await;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("es-1".into());
    let token = jsonwebtoken::encode(&header, &c, &es).unwrap();
    let (status, body) = s
        .call(s.client.get(s.url("/api/v1/users/me")).bearer_auth(&token))
        .await;
    assert_eq!(status, 200, "a token of the fetched JWKS: {body}");
    s.stop().await;

    // Without the private CA the server is not trusted: nothing loads, and
    // the same token is refused.
    let s = EdgeStack::start(|p| p.jwks_url = url.clone()).await;
    let (status, _) = s
        .call(s.client.get(s.url("/api/v1/users/me")).bearer_auth(&token))
        .await;
    assert_eq!(
        status, 401,
        "a JWKS from an untrusted server verified a token"
    );
    s.stop().await;
}

/// A TCP server that accepts and then either never answers or hangs up.
async fn bad_upstream(hang: bool) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            if hang {
                held.push(stream);
            } else {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                drop(stream);
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_answered_as_json() {
    let hang = bad_upstream(true).await;
    let drop_ = bad_upstream(false).await;
    // Port 1: nothing listens there (a free port could be taken by a
    // concurrent test between now and the request).
    let dead = "127.0.0.1:1".to_owned();
    let s = EdgeStack::start(|p| {
        p.read_timeout = Duration::from_millis(300);
        for (name, backend) in [
            ("hang", hang.to_string()),
            ("drop", drop_.to_string()),
            ("dead", dead.clone()),
        ] {
            p.upstreams.insert(name.into(), vec![backend]);
            p.routes.push(flashmall_proxy::config::RouteConfig {
                prefix: format!("/api/v1/{name}"),
                upstream: name.into(),
            });
            p.public.push(flashmall_proxy::config::PublicRoute {
                method: "GET".into(),
                path: format!("^/api/v1/{name}$"),
            });
        }
    })
    .await;
    // A fresh connection per request: after an upstream failure the edge
    // closes the client's connection (and says so).
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let (status, body) = s.call(fresh.get(s.url("/api/v1/hang"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (504, Some("unavailable")),
        "{body}"
    );
    let (status, body) = s.call(fresh.get(s.url("/api/v1/drop"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("unavailable")),
        "{body}"
    );
    let (status, body) = s.call(fresh.get(s.url("/api/v1/dead"))).await;
    assert!(status == 502 || status == 503, "{status} {body}");
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(s.call(s.client.get(s.url("/healthz"))).await.0, 200);
    s.stop().await;
}

/// Security review #18, finding 2: probes and metrics are served on the
/// admin port only; the public port answers a static `/healthz` and
/// nothing else unchecked. `/readyz` is read from the last background
/// refresh of the edge state: while Redis hangs (SIGSTOP) it still answers,
/// turns unready once the state is stale without ever showing the store's
/// error, and is ready again once Redis is back. A flood of probes is
/// answered without touching the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_on_the_admin_port_and_readiness_never_calls_redis() {
    let redis = flashmall_testing::RedisServer::start();
    let url = redis.url();
    let s = EdgeStack::start(|p| {
        p.redis_url = url.clone();
        p.state_poll = Duration::from_millis(100);
    })
    .await;
    let admin = s.admin().await;
    // The public port: no metrics, no readiness, with or without a token.
    for path in ["/metrics", "/readyz"] {
        for token in [None, Some(&admin.access)] {
            let mut request = s.client.get(s.url(path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let (status, body) = s.call(request).await;
            assert!(
                (400..500).contains(&status),
                "public {path}: {status} {body}"
            );
            assert!(!body.to_string().contains("flashmall_"), "{body}");
        }
    }
    assert_eq!(s.call(s.client.get(s.url("/healthz"))).await.0, 200);
    // The admin port: all three.
    let admin_get = |path: &'static str| {
        let client = s.client.clone();
        let url = s.admin_url(path);
        async move {
            let r = client
                .get(url)
                .send()
                .await
                .expect("the admin port answers");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };
    assert_eq!(admin_get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(admin_get("/readyz").await.0, 200);
    let (status, metrics) = admin_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("flashmall_proxy_requests_total"),
        "{metrics}"
    );
    // A flood of probes: every one answered ready.
    let flood = futures::future::join_all((0..400).map(|_| admin_get("/readyz"))).await;
    assert!(flood.iter().all(|(status, _)| *status == 200), "{flood:?}");

    // Redis hangs: readiness is still answered, and turns unready once the
    // state is stale, naming staleness, never the store's error.
    redis.pause();
    let (status, body) = admin_get("/readyz").await;
    assert!(
        status == 200 || body.contains("last refreshed"),
        "{status} {body}"
    );
    let body = eventually(
        Duration::from_secs(60),
        "the edge turns unready with a stale state",
        || async {
            let (status, body) = admin_get("/readyz").await;
            (status == 503).then_some(body)
        },
    )
    .await;
    assert!(body.contains("last refreshed"), "{body}");
    for store_words in ["redis", "Redis", "timeout", "Timeout", "IO", "connection"] {
        assert!(!body.contains(store_words), "{body}");
    }
    redis.resume();
    eventually(
        Duration::from_secs(60),
        "the edge is ready again once Redis answers",
        || async { (admin_get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    s.stop().await;
}

/// Security review #18, finding 3: a login/logout loop through two edge
/// replicas sharing Redis. Every logged-out token is refused by both; no
/// logout reloads the blacklist-and-rules snapshot; each replica reads
/// each revocation at most once (never the whole list again); a replica
/// never holds more revocations than there were logouts, and they all go
/// once their tokens have expired, from the replicas and from Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_logout_loop_keeps_the_edge_state_bounded_and_synced_incrementally() {
    const LOGOUTS: usize = 30;
    let redis = flashmall_testing::RedisServer::start();
    let url = redis.url();
    let s = EdgeStack::start_with(
        support::stack::Options {
            access_ttl: Duration::from_secs(10),
            ..support::stack::Options::default()
        },
        |p| {
            p.redis_url = url.clone();
            p.limits.clear();
            p.state_poll = Duration::from_millis(100);
            p.jwt_leeway = Duration::ZERO;
        },
    )
    .await;
    let other = s.replica().await;
    let views = [&s.stack().proxy.state, &other.state];
    let reloads: Vec<u64> = views.iter().map(|v| v.reloads()).collect();
    let log_in_and_out = || async {
        let who = s.login("looper@example.com").await;
        let (status, _) = s
            .call(
                s.client
                    .post(s.url("/api/v1/auth/logout"))
                    .bearer_auth(&who.access),
            )
            .await;
        assert_eq!(status, 204);
        who
    };
    for n in 0..LOGOUTS {
        let who = log_in_and_out().await;
        for base in [s.url(""), format!("http://{}", other.addr)] {
            eventually(
                Duration::from_secs(10),
                "a logged-out token is refused by every replica",
                || async {
                    let (status, _) = s
                        .call(
                            s.client
                                .get(format!("{base}/api/v1/users/me"))
                                .bearer_auth(&who.access),
                        )
                        .await;
                    (status == 401).then_some(())
                },
            )
            .await;
        }
        for view in views {
            assert!(view.revocations() <= n + 1, "{}", view.revocations());
        }
    }
    for (view, before) in views.iter().zip(&reloads) {
        assert_eq!(view.reloads(), *before, "a logout reloaded the snapshot");
        let read = view.revocations_read();
        assert!(
            (1..=LOGOUTS as u64).contains(&read),
            "{read} revocations read for {LOGOUTS} logouts"
        );
    }
    // Each lasts one token lifetime (10 s here), then goes everywhere.
    eventually(
        Duration::from_secs(60),
        "the revocations expire with their tokens",
        || async { views.iter().all(|v| v.revocations() == 0).then_some(()) },
    )
    .await;
    log_in_and_out().await;
    let stored = views[0].store.revocations_after(0).await.unwrap();
    assert_eq!(stored.len(), 1, "Redis keeps only live revocations");
    other.stop().await;
    s.stop().await;
}

/// Security review #18, finding 6: a deleted account, a new password and
/// changed roles void the user's access tokens of every login at the edge
/// (a per-user watermark), at once; a login after the change works, and
/// nobody else's tokens are touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_tokens_stop_after_deletion_password_change_and_role_change() {
    let stack = EdgeStack::start(|p| p.limits.clear()).await;
    let s = &stack;
    let cart = |token: String| async move {
        let request = s.client.get(s.url("/api/v1/cart")).bearer_auth(token);
        s.call(request).await.0
    };
    let bystander = s.login("bystander@example.com").await;

    // Deletion through one login ends the others.
    let one = s.login("gone@example.com").await;
    let other = s.login("gone@example.com").await;
    assert_eq!(cart(other.access.clone()).await, 200);
    let (status, _) = s
        .call(
            s.client
                .delete(s.url("/api/v1/users/me"))
                .bearer_auth(&one.access)
                .json(&json!({"password": support::stack::PASSWORD})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(cart(other.access.clone()).await, 401, "deleted account");

    // A new password ends every login made before it.
    let one = s.login("pw@example.com").await;
    let other = s.login("pw@example.com").await;
    let (status, body) = s
        .call(
            s.client
                .patch(s.url("/api/v1/users/me"))
                .bearer_auth(&one.access)
                .json(&json!({
                    "password": "a brand new passphrase 42",
                    "current_password": support::stack::PASSWORD,
                })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cart(other.access.clone()).await, 401, "other login");
    assert_eq!(cart(one.access.clone()).await, 401, "the changing login");
    let (status, tokens) = s
        .call(
            s.client
                .post(s.url("/api/v1/auth/login"))
                .json(&json!({"email": "pw@example.com", "password": "a brand new passphrase 42"})),
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    let fresh = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(cart(fresh).await, 200, "a login after the change works");

    // An admin changes a user's roles: the user's tokens with the old
    // roles end; a new login carries the new ones.
    let admin = s.admin().await;
    let promoted = s.login("promoted@example.com").await;
    let (status, body) = s
        .call(
            s.client
                .put(s.url(&format!("/api/v1/admin/users/{}/roles", promoted.user_id)))
                .bearer_auth(&admin.access)
                .json(&json!({"roles": ["merchant"]})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cart(promoted.access.clone()).await, 401, "old roles");
    let again = s.login("promoted@example.com").await;
    let (status, me) = s
        .call(
            s.client
                .get(s.url("/api/v1/users/me"))
                .bearer_auth(&again.access),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(me["roles"], json!(["merchant"]));
    // Nobody else's tokens were touched, the admin's included.
    assert_eq!(cart(bystander.access.clone()).await, 200);
    assert_eq!(cart(admin.access.clone()).await, 200);
    stack.stop().await;
}

/// Security review #18, finding 4: with the default limits, a burst of
/// logins from one address is refused at the edge (429 with Retry-After,
/// the limit named) beyond its burst, before the auth service hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_limits_refuse_a_login_burst_before_hashing() {
    const BURST: usize = 60;
    let s = EdgeStack::start(|_| {}).await;
    let started = Instant::now();
    let answers = futures::future::join_all((0..BURST).map(|n| {
        let request = s.client.post(s.url("/api/v1/auth/login")).json(
            &json!({"email": format!("nobody{n}@example.com"), "password": "wrong password!!"}),
        );
        async move {
            let r = request.send().await.expect("the edge answers");
            let retry = r.headers().contains_key("retry-after");
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (status, retry, body)
        }
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let hashed = answers
        .iter()
        .filter(|(status, _, _)| *status == 401)
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(status, _, _)| *status == 429)
        .collect();
    assert_eq!(hashed + refused.len(), BURST, "{answers:?}");
    // login-per-address: burst 20, then 5 a second (measured, not assumed).
    let allowed = 20.0 + 5.0 * elapsed;
    assert!(
        hashed as f64 <= allowed.ceil(),
        "{hashed} logins reached the auth service in {elapsed:.2} s; the limit allows {allowed:.0}"
    );
    for (_, retry, body) in &refused {
        assert!(retry, "429 without Retry-After: {body}");
        assert_eq!(body["error"]["code"], "rate_limited");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("login-per-address"),
            "{body}"
        );
    }
    s.stop().await;
}

/// Security review #18, finding 5: on a dual-stack `[::]` listener IPv4
/// clients arrive as `::ffff:a.b.c.d`; the edge treats them as the IPv4
/// clients they are, so an IPv4 blacklist range applies to them, while an
/// IPv6 client of the same listener is not caught by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_clients_of_a_dual_stack_listener_are_ipv4_to_the_blacklist() {
    let port = flashmall_testing::free_port();
    let s = EdgeStack::start(|p| {
        p.listen = format!("[::]:{port}").parse().unwrap();
        p.limits.clear();
    })
    .await;
    let admin = s.admin().await;
    let erin = s.login("erin@example.com").await;
    let over_v4 = |path: &str| format!("http://127.0.0.2:{port}{path}");
    let from_two = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let me = |client: &reqwest::Client, url: String| client.get(url).bearer_auth(&erin.access);
    assert_eq!(
        s.call(me(&from_two, over_v4("/api/v1/users/me"))).await.0,
        200
    );
    let (status, _) = s
        .call(
            s.client
                .post(s.url("/api/v1/admin/blacklist"))
                .bearer_auth(&admin.access)
                .json(&json!({"cidr": "127.0.0.2/32"})),
        )
        .await;
    assert_eq!(status, 201);
    // An IPv4 client of the [::] listener is caught by an IPv4 range.
    eventually(
        Duration::from_secs(10),
        "the IPv4 range applies",
        || async {
            (s.call(me(&from_two, over_v4("/api/v1/users/me"))).await.0 == 403).then_some(())
        },
    )
    .await;
    // The same listener over IPv6 (the stack's own URL is [::]): not caught.
    assert_eq!(
        s.call(me(&s.client, s.url("/api/v1/users/me"))).await.0,
        200
    );
    s.stop().await;
}

/// Security review #18, finding 8: every id path takes one spelling, so a
/// rule written for a product (or an order, a payment, ...) cannot be
/// dodged by spelling its id in upper case, without hyphens, in braces or
/// percent-encoded: those answer 404 at the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_have_one_spelling_so_no_spelling_dodges_a_rule() {
    let s = EdgeStack::start(|p| p.limits.clear()).await;
    let admin = s.admin().await;
    let (status, product) = s
        .call(
            s.client
                .post(s.url("/api/v1/products"))
                .bearer_auth(&admin.access)
                .json(&json!({"name": "Hidden teapot", "price": 100, "stock": 1})),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let id = product["id"].as_str().unwrap().to_owned();
    let (status, _) = s
        .call(
            s.client
                .put(s.url("/api/v1/admin/access-rules"))
                .bearer_auth(&admin.access)
                .json(&json!({"rules": [
                    {"role": "anonymous", "effect": "deny", "method": "GET", "path": format!("^/api/v1/products/{id}$")}
                ]})),
        )
        .await;
    assert_eq!(status, 200);
    let get = |path: String| {
        let s = &s;
        let request = s.client.get(s.url(&path));
        async move { s.call(request).await }
    };
    assert_eq!(
        get(format!("/api/v1/products/{id}")).await.0,
        403,
        "the rule holds"
    );
    let hex = id.replace('-', "");
    let spellings = [
        id.to_uppercase(),
        hex.clone(),
        format!("{{{id}}}"),
        format!("%{:02X}{}", id.as_bytes()[0], &id[1..]),
        format!("urn:uuid:{id}"),
    ];
    for spelling in &spellings {
        let (status, body) = get(format!("/api/v1/products/{spelling}")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{spelling}: {body}"
        );
    }
    // The same for the other id paths (with a token: they are not public).
    for family in [
        "orders",
        "payments",
        "reservations",
        "cart/items",
        "admin/users",
    ] {
        let (status, body) = s
            .call(
                s.client
                    .get(s.url(&format!("/api/v1/{family}/{}", hex)))
                    .bearer_auth(&admin.access),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("not_found")),
            "{family}: {body}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_propagated_and_the_edge_exports_metrics() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let sale = s.sale(&admin, 1).await;
    let response = s
        .client
        .get(s.url(&format!("/api/v1/sales/{sale}")))
        .header("x-request-id", "req-from-client-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "req-from-client-1");
    let generated = s.client.get(s.url("/api/v1/nowhere")).send().await.unwrap();
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(uuid::Uuid::try_parse(&id).is_ok(), "a generated id: {id}");
    let metrics = s
        .client
        .get(s.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "flashmall_proxy_requests_total",
        "flashmall_proxy_request_duration_seconds",
        "flashmall_proxy_rejections_total",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from the edge's /metrics"
        );
    }
    assert!(
        metrics.contains("route=\"sales\""),
        "requests are labelled by route family"
    );
    // The in-flight gauge is exported (its counting is unit-tested in
    // proxy/src/edge.rs: this process runs other edges in parallel).
    assert!(
        metrics.contains("\nflashmall_proxy_requests_in_flight "),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_is_retried_elsewhere_only_when_safe_to_repeat() {
    // Backend A is alive for the first health check, then gone; the next
    // check is an hour away, so the pool still offers it.
    let doomed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = doomed.local_addr().unwrap().to_string();
    let s = EdgeStack::start(|p| {
        p.health_check_interval = Duration::from_secs(3600);
        let engine = p.upstreams["engine"][0].clone();
        p.upstreams.insert("engine".into(), vec![a.clone(), engine]);
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(doomed);
    let admin = s.admin().await;
    // Reads are safe to repeat: every one reaches the live backend.
    for i in 0..6 {
        let (status, body) = s
            .call(
                s.client
                    .get(s.url("/api/v1/sales/00000000-0000-0000-0000-000000000000")),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (404, Some("sale_not_found")),
            "read {i}: {body}"
        );
    }
    // A POST without an Idempotency-Key is not: one of two lands on A and fails.
    let mut failed = 0;
    for _ in 0..4 {
        let (status, body) = s
            .call(
                s.client
                    .post(s.url("/api/v1/admin/reconcile"))
                    .bearer_auth(&admin.access)
                    .json(&json!({})),
            )
            .await;
        match status {
            200 => {}
            502 | 503 => {
                assert_eq!(body["error"]["code"], "unavailable");
                failed += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(failed >= 1, "a non-idempotent request is never sent twice");
    s.stop().await;
}

/// Every operation the OpenAPI document lists reaches something that
/// serves it: through the edge, with an admin's token, no documented
/// method and path ends in "no such route" (edge or component) or 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() {
    let s = EdgeStack::start(|_| {}).await;
    let admin = s.admin().await;
    let (status, doc) = s.call(s.client.get(s.url("/api/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    let mut operations: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    // Logging out and deleting the account end the token: last.
    operations.sort_by_key(|(method, path)| {
        (path == "/api/v1/auth/logout" || (method == "delete" && path == "/api/v1/users/me")) as u8
    });
    assert!(operations.len() >= 30, "{operations:?}");
    for (method, path) in operations {
        let concrete: String = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    uuid::Uuid::now_v7().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let request = s
            .client
            .request(method.to_uppercase().parse().unwrap(), s.url(&concrete))
            .bearer_auth(&admin.access)
            .header("idempotency-key", uuid::Uuid::now_v7().to_string());
        let request = if method == "get" || method == "delete" {
            request
        } else {
            request.json(&json!({}))
        };
        let (status, body) = s.call(request).await;
        assert_ne!(status, 405, "{method} {path}: method not allowed");
        assert!(
            !(status == 404 && body["error"]["message"] == "no such route"),
            "{method} {path} is documented but not served: {status} {body}"
        );
    }
    s.stop().await;
}
