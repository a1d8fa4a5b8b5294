//! The waiting room, black-box: the real edge (one or two replicas) in
//! front of the real engine and services, the queues in a real
//! redis-server, buyers with real access tokens.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use flashmall_mesh::Role;
use flashmall_mesh::identity::AccessClaims;
use flashmall_proxy::waiting::store::shuffled_score;
use flashmall_testing::RedisServer;
use serde_json::{Value, json};
use support::eventually;
use support::stack::{EdgeStack, JWT_SECRET, Login, Options};

/// A buyer: an id and an access token the auth service's secret signs.
#[derive(Clone)]
struct Buyer {
    id: String,
    token: String,
}

fn buyer(name: &str) -> Buyer {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = format!(
        "{name}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let claims = AccessClaims {
        sub: id.clone(),
        roles: vec![Role::Customer],
        iat: now,
        nbf: now,
        exp: now + 600,
        iss: "flashmall".into(),
        aud: "flashmall-api".into(),
        jti: uuid::Uuid::now_v7().simple().to_string(),
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )
    .unwrap();
    Buyer { id, token }
}

/// A stack whose engine and edge both use `redis` (the edge's queues too).
async fn stack(redis: &RedisServer, payment_timeout: Duration) -> EdgeStack {
    let url = redis.url();
    let options = Options {
        redis_url: Some(url.clone()),
        payment_timeout,
        ..Options::default()
    };
    EdgeStack::start_with(options, |p| p.redis_url = url).await
}

/// Creates a sale with a waiting room opening `opens_in` from now.
async fn room_sale(
    s: &EdgeStack,
    admin: &Login,
    stock: i64,
    opens_in: time::Duration,
    room: Value,
) -> String {
    let now = time::OffsetDateTime::now_utc();
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/sales"))
                .bearer_auth(&admin.access)
                .json(&json!({
                    "product_id": "p-1", "price": 1999, "stock": stock, "per_user_limit": 1,
                    "starts_at": flashmall_engine::sale::rfc3339(now + opens_in),
                    "ends_at": flashmall_engine::sale::rfc3339(now + time::Duration::hours(1)),
                    "waiting_room": room,
                })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert!(body["waiting_room"].is_object(), "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn join(s: &EdgeStack, base: &str, who: &Buyer, sale: &str) -> (u16, Value) {
    s.call(
        s.client
            .post(format!("{base}/api/v1/sales/{sale}/queue"))
            .bearer_auth(&who.token),
    )
    .await
}

async fn poll(
    s: &EdgeStack,
    base: &str,
    who: &Buyer,
    sale: &str,
    ticket: &str,
    wait: u64,
) -> (u16, Value) {
    s.call(
        s.client
            .get(format!("{base}/api/v1/sales/{sale}/queue?wait={wait}"))
            .bearer_auth(&who.token)
            .header("x-queue-ticket", ticket)
            .timeout(Duration::from_secs(wait + 10)),
    )
    .await
}

async fn buy(
    s: &EdgeStack,
    base: &str,
    who: &Buyer,
    sale: &str,
    admission: Option<&str>,
    key: &str,
) -> (u16, Value) {
    let mut request = s
        .client
        .post(format!("{base}/api/v1/sales/{sale}/purchase"))
        .bearer_auth(&who.token)
        .header("idempotency-key", key)
        .json(&json!({"quantity": 1}));
    if let Some(token) = admission {
        request = request.header("x-admission-token", token);
    }
    s.call(request).await
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

/// Polls until the buyer's state is one of `states`; returns the answer.
async fn until_state(
    s: &EdgeStack,
    base: &str,
    who: &Buyer,
    sale: &str,
    ticket: &str,
    states: &[&str],
) -> Value {
    eventually(Duration::from_secs(30), "a waiting room state", || async {
        let (status, body) = poll(s, base, who, sale, ticket, 2).await;
        if status == 429 {
            return None;
        }
        assert_eq!(status, 200, "{body}");
        states
            .contains(&body["state"].as_str().unwrap_or(""))
            .then_some(body)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_and_admissions_work_only_for_their_buyer_and_sale_once() {
    let redis = RedisServer::start();
    let s = stack(&redis, Duration::from_secs(900)).await;
    let base = s.base.clone();
    let admin = s.admin().await;
    let room = json!({"admit_per_second": 1000, "admission_seconds": 5});
    let sale = room_sale(&s, &admin, 10, time::Duration::seconds(-1), room.clone()).await;
    let other = room_sale(&s, &admin, 10, time::Duration::seconds(-1), room).await;
    let (alice, bob) = (buyer("alice"), buyer("bob"));

    let (status, joined) = join(&s, &base, &alice, &sale).await;
    assert_eq!(status, 201, "{joined}");
    let ticket = joined["ticket"].as_str().unwrap().to_owned();
    let (status, again) = join(&s, &base, &alice, &sale).await;
    assert_eq!(status, 200, "joining twice keeps the place: {again}");
    assert_eq!(again["joined_at"], joined["joined_at"]);

    // A ticket is its buyer's, for its sale, as issued.
    let (status, body) = poll(&s, &base, &bob, &sale, &ticket, 0).await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );
    let (status, body) = poll(&s, &base, &alice, &other, &ticket, 0).await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );
    let forged = format!("{}0", &ticket[..ticket.len() - 1]);
    let forged = if forged == ticket {
        format!("{}1", &ticket[..ticket.len() - 1])
    } else {
        forged
    };
    let (status, body) = poll(&s, &base, &alice, &sale, &forged, 0).await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );
    let (status, body) = s
        .call(
            s.client
                .get(format!("{base}/api/v1/sales/{sale}/queue"))
                .bearer_auth(&alice.token),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );

    // Admitted: the admission buys once, for its buyer and sale only.
    let admitted = until_state(&s, &base, &alice, &sale, &ticket, &["admitted"]).await;
    let admission = admitted["admission_token"].as_str().unwrap().to_owned();
    let (status, body) = buy(&s, &base, &alice, &sale, None, "k0").await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("admission_required")),
        "{body}"
    );
    let (status, body) = buy(&s, &base, &alice, &sale, Some(&ticket), "k0").await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "a queue ticket is no admission: {body}"
    );
    let (status, body) = buy(&s, &base, &bob, &sale, Some(&admission), "k0").await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );
    let (status, body) = buy(&s, &base, &alice, &other, Some(&admission), "k0").await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );
    let (status, first) = buy(&s, &base, &alice, &sale, Some(&admission), "k1").await;
    assert_eq!(status, 201, "{first}");
    let (status, retry) = buy(&s, &base, &alice, &sale, Some(&admission), "k1").await;
    assert_eq!(status, 201, "a retry with the same key passes: {retry}");
    assert_eq!(retry["reservation_id"], first["reservation_id"]);
    let (status, body) = buy(&s, &base, &alice, &sale, Some(&admission), "k2").await;
    assert_eq!(
        (status, code(&body)),
        (409, Some("admission_used")),
        "{body}"
    );

    // An admission lasts `admission_seconds` from when it was first given.
    let (_, joined) = join(&s, &base, &bob, &sale).await;
    let bob_ticket = joined["ticket"].as_str().unwrap().to_owned();
    let admitted = until_state(&s, &base, &bob, &sale, &bob_ticket, &["admitted"]).await;
    let bob_admission = admitted["admission_token"].as_str().unwrap().to_owned();
    let expired = until_state(&s, &base, &bob, &sale, &bob_ticket, &["admission_expired"]).await;
    assert!(expired["admission_token"].is_null(), "{expired}");
    let (status, body) = buy(&s, &base, &bob, &sale, Some(&bob_admission), "b1").await;
    assert_eq!(
        (status, code(&body)),
        (403, Some("invalid_ticket")),
        "{body}"
    );

    // A sale without a waiting room has no queue and needs no admission.
    let plain = s.sale(&admin, 5).await;
    let (status, body) = join(&s, &base, &alice, &plain).await;
    assert_eq!((status, code(&body)), (409, Some("conflict")), "{body}");
    let (status, body) = buy(&s, &base, &alice, &plain, None, "p1").await;
    assert_eq!(status, 201, "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buyers_who_joined_before_the_opening_are_shuffled_and_later_ones_queue_in_order() {
    let redis = RedisServer::start();
    let s = stack(&redis, Duration::from_secs(900)).await;
    let base = s.base.clone();
    let admin = s.admin().await;
    // A join answered before the opening has no place yet: it is shuffled.
    // Twenty joins take far less than the lead on any machine this runs
    // on; should they not, the sale is made again with a longer one.
    let (mut sale, mut early, mut shuffled, mut tickets) = Default::default();
    for lead in [4, 20, 90] {
        sale = room_sale(
            &s,
            &admin,
            10,
            time::Duration::seconds(lead),
            json!({"admit_per_second": 1}),
        )
        .await;
        early = (0..20)
            .map(|i| buyer(&format!("early{i}")))
            .collect::<Vec<Buyer>>();
        let answers =
            futures::future::join_all(early.iter().map(|b| join(&s, &base, b, &sale))).await;
        shuffled = HashSet::new();
        tickets = HashMap::new();
        for (b, (status, body)) in early.iter().zip(&answers) {
            assert_eq!(*status, 201, "{body}");
            if body["state"] == "waiting_for_opening" {
                assert!(body["position"].is_null(), "{body}");
                shuffled.insert(b.id.clone());
            }
            tickets.insert(b.id.clone(), body["ticket"].as_str().unwrap().to_owned());
        }
        if shuffled.len() >= 2 {
            break;
        }
    }
    // A long poll held before the opening answers at the opening, with a
    // place.
    let (status, opened) = poll(&s, &base, &early[0], &sale, &tickets[&early[0].id], 30).await;
    assert_eq!(status, 200, "{opened}");
    assert!(
        opened["state"] == "waiting" || opened["state"] == "admitted",
        "{opened}"
    );
    assert!(opened["position"].is_u64(), "{opened}");
    let seed = opened["shuffle_seed"].as_str().unwrap().to_owned();
    let late: Vec<Buyer> = (0..3).map(|i| buyer(&format!("late{i}"))).collect();
    for b in &late {
        let (status, body) = join(&s, &base, b, &sale).await;
        assert_eq!(status, 201, "{body}");
        tickets.insert(b.id.clone(), body["ticket"].as_str().unwrap().to_owned());
    }
    let mut positions = Vec::new();
    for b in early.iter().chain(&late) {
        let (status, body) = poll(&s, &base, b, &sale, &tickets[&b.id], 0).await;
        assert_eq!(status, 200, "{body}");
        positions.push((body["position"].as_u64().unwrap(), b.id.clone()));
    }
    positions.sort();
    let order: Vec<&str> = positions.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        positions.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        (1..=23).collect::<Vec<_>>(),
        "one place each"
    );
    // Everyone who joined before the opening is ahead of later joiners,
    // who queue in arrival order.
    let late_ids: Vec<&str> = late.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(&order[20..], late_ids.as_slice());
    // The shuffle is the seeded one: anyone with the seed recomputes it.
    let drawn: Vec<&str> = order[..20]
        .iter()
        .copied()
        .filter(|id| shuffled.contains(*id))
        .collect();
    let mut expected = drawn.clone();
    expected.sort_by_key(|id| shuffled_score(&seed, id));
    assert_eq!(drawn, expected, "ordered by SHA-1(seed:user)");
    assert!(
        shuffled.len() >= 2,
        "the 20 joins answered after the opening even 90 s later: {shuffled:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_admit_from_one_queue_at_the_configured_rate() {
    let redis = RedisServer::start();
    let s = stack(&redis, Duration::from_secs(900)).await;
    let other = s.replica().await;
    let bases = [s.base.clone(), format!("http://{}", other.addr)];
    let admin = s.admin().await;
    const RATE: f64 = 4.0;
    let opens_at = Instant::now() + Duration::from_secs(2);
    let sale = room_sale(
        &s,
        &admin,
        100,
        time::Duration::seconds(2),
        json!({"admit_per_second": RATE as u32}),
    )
    .await;
    let buyers: Vec<Buyer> = (0..40).map(|i| buyer(&format!("b{i}"))).collect();
    let mut tickets = Vec::new();
    for (i, b) in buyers.iter().enumerate() {
        let (status, body) = join(&s, &bases[i % 2], b, &sale).await;
        assert_eq!(status, 201, "{body}");
        tickets.push(body["ticket"].as_str().unwrap().to_owned());
    }
    // Both replicas tick; one queue admits at the sale's rate, not twice it.
    let mut seen = Vec::new();
    let mut i = 0;
    loop {
        let (status, body) = poll(
            &s,
            &bases[i % 2],
            &buyers[i % 40],
            &sale,
            &tickets[i % 40],
            0,
        )
        .await;
        let at = Instant::now();
        i += 1;
        if status == 429 {
            continue;
        }
        assert_eq!(status, 200, "{body}");
        let admitted = body["admitted"].as_u64().unwrap();
        // Admission starts at the opening, at the earliest.
        let allowed = RATE * at.saturating_duration_since(opens_at).as_secs_f64() + 1.0;
        assert!(
            admitted as f64 <= allowed,
            "{admitted} admitted {:?} after the opening; one queue at {RATE}/s allows {allowed:.1}",
            at.saturating_duration_since(opens_at)
        );
        seen.push(admitted);
        if admitted >= 12 {
            break;
        }
        assert!(
            at < opens_at + Duration::from_secs(60),
            "admission stalled: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    other.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sold_out_closes_the_queue_at_once_and_returned_units_admit_the_next_buyer() {
    let redis = RedisServer::start();
    // Unpaid orders expire after 3 s and their units come back.
    let s = stack(&redis, Duration::from_secs(3)).await;
    let other = s.replica().await;
    let bases = [s.base.clone(), format!("http://{}", other.addr)];
    let admin = s.admin().await;
    let sale = room_sale(
        &s,
        &admin,
        2,
        time::Duration::seconds(2),
        json!({"admit_per_second": 1, "admission_seconds": 60}),
    )
    .await;
    let buyers: Vec<Buyer> = (0..8).map(|i| buyer(&format!("w{i}"))).collect();
    let mut tickets = HashMap::new();
    for (i, b) in buyers.iter().enumerate() {
        let (_, body) = join(&s, &bases[i % 2], b, &sale).await;
        tickets.insert(b.id.clone(), body["ticket"].as_str().unwrap().to_owned());
    }
    // In queue order, once open.
    let mut ranked = Vec::new();
    for b in &buyers {
        let body = until_state(
            &s,
            &bases[0],
            b,
            &sale,
            &tickets[&b.id],
            &["waiting", "admitted"],
        )
        .await;
        ranked.push((body["position"].as_u64().unwrap(), b.clone()));
    }
    ranked.sort_by_key(|(p, _)| *p);
    let ranked: Vec<Buyer> = ranked.into_iter().map(|(_, b)| b).collect();

    // Everyone behind the first two waits in a long poll on either replica.
    let mut waiting = Vec::new();
    for (i, b) in ranked[2..].iter().enumerate() {
        let (s_base, b, ticket, sale) = (
            bases[i % 2].clone(),
            b.clone(),
            tickets[&b.id].clone(),
            sale.clone(),
        );
        let client = s.client.clone();
        waiting.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let response = client
                    .get(format!("{s_base}/api/v1/sales/{sale}/queue?wait=20"))
                    .bearer_auth(&b.token)
                    .header("x-queue-ticket", &ticket)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or_default();
                if status == 200 && body["state"] == "sold_out" {
                    return Instant::now();
                }
                assert!(Instant::now() < deadline, "never told sold out: {body}");
                if status != 200 || body["state"] == "admitted" {
                    // Settled answers come at once: pace the next poll.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    // The first two buy the stock.
    let mut sold_at = Instant::now();
    let mut winners = Vec::new();
    for b in &ranked[..2] {
        let body = until_state(&s, &bases[1], b, &sale, &tickets[&b.id], &["admitted"]).await;
        let admission = body["admission_token"].as_str().unwrap();
        let (status, bought) = buy(&s, &bases[0], b, &sale, Some(admission), "k").await;
        assert_eq!(status, 201, "{bought}");
        sold_at = Instant::now();
        winners.push(bought);
    }
    for task in waiting {
        let told = task.await.unwrap();
        let after = told.saturating_duration_since(sold_at);
        assert!(
            after <= Duration::from_secs(1),
            "a waiting buyer was told sold out {after:?} after the last unit sold"
        );
    }
    // The winners do not pay: their orders expire, the units come back,
    // and the queue admits the next in line.
    let next = &ranked[2];
    let body = until_state(
        &s,
        &bases[1],
        next,
        &sale,
        &tickets[&next.id],
        &["admitted"],
    )
    .await;
    let admission = body["admission_token"].as_str().unwrap().to_owned();
    let bought = eventually(
        Duration::from_secs(30),
        "the next buyer buys a returned unit",
        || async {
            let (status, body) = buy(&s, &bases[0], next, &sale, Some(&admission), "k").await;
            assert!(
                status == 201 || code(&body) == Some("sold_out"),
                "{status} {body}"
            );
            (status == 201).then_some(body)
        },
    )
    .await;
    assert!(bought["reservation_id"].is_string(), "{bought}");
    other.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_waiting_room_no_unit_is_oversold_and_no_buyer_passes_the_limit() {
    let redis = RedisServer::start();
    let s = stack(&redis, Duration::from_secs(900)).await;
    let other = s.replica().await;
    let bases = [s.base.clone(), format!("http://{}", other.addr)];
    let admin = s.admin().await;
    const STOCK: usize = 5;
    let sale = room_sale(
        &s,
        &admin,
        STOCK as i64,
        time::Duration::seconds(1),
        json!({"admit_per_second": 50}),
    )
    .await;
    let buyers: Vec<Buyer> = (0..30).map(|i| buyer(&format!("c{i}"))).collect();
    let runs = buyers.iter().enumerate().map(|(i, b)| {
        let base = bases[i % 2].clone();
        let (s, sale) = (&s, &sale);
        async move {
            let (status, body) = join(s, &base, b, sale).await;
            assert_eq!(status, 201, "{body}");
            let ticket = body["ticket"].as_str().unwrap().to_owned();
            let body = until_state(s, &base, b, sale, &ticket, &["admitted", "sold_out"]).await;
            let Some(admission) = body["admission_token"].as_str() else {
                return Vec::new();
            };
            // Two keys on one admission: the second never buys.
            let mut bought = Vec::new();
            for key in ["k1", "k2", "k1"] {
                let (status, body) = buy(s, &base, b, sale, Some(admission), key).await;
                if key == "k2" {
                    assert_ne!(status, 201, "a second purchase on one admission: {body}");
                }
                if status == 201 {
                    bought.push(body["reservation_id"].as_str().unwrap().to_owned());
                }
            }
            bought
        }
    });
    let results = futures::future::join_all(runs).await;
    let mut sold = HashSet::new();
    for (b, bought) in buyers.iter().zip(&results) {
        let distinct: HashSet<&String> = bought.iter().collect();
        assert!(distinct.len() <= 1, "{} holds {distinct:?}", b.id);
        sold.extend(distinct.into_iter().cloned());
    }
    assert_eq!(sold.len(), STOCK, "exactly the stock is sold: {sold:?}");
    let (status, view) = s
        .call(s.client.get(s.url(&format!("/api/v1/sales/{sale}"))))
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["remaining"], 0, "{view}");
    other.stop().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_store_that_loses_writes_sells_exactly_the_stock_and_the_queue_goes_on() {
    // The edge's queues on a redis-server of their own (the engine's front
    // in process), so the loss strikes the waiting room alone.
    let mut redis = RedisServer::start();
    let url = redis.url();
    let s = EdgeStack::start_with(Options::default(), |p| p.redis_url = url).await;
    let base = s.base.clone();
    let admin = s.admin().await;
    const STOCK: usize = 6;
    let sale = room_sale(
        &s,
        &admin,
        STOCK as i64,
        time::Duration::seconds(2),
        json!({"admit_per_second": 50, "admission_seconds": 60}),
    )
    .await;
    let buyers: Vec<Buyer> = (0..12).map(|i| buyer(&format!("l{i}"))).collect();
    let mut tickets = HashMap::new();
    for b in &buyers {
        let (status, body) = join(&s, &base, b, &sale).await;
        assert_eq!(status, 201, "{body}");
        tickets.insert(b.id.clone(), body["ticket"].as_str().unwrap().to_owned());
    }
    // Redis will come back with every joiner and nothing after: no seed,
    // no admission, no purchase.
    let snapshot = redis.snapshot();
    // Three admitted buyers buy before the loss.
    let mut before = HashMap::new();
    let mut seed_before = String::new();
    for b in &buyers {
        let body = until_state(
            &s,
            &base,
            b,
            &sale,
            &tickets[&b.id],
            &["waiting", "admitted"],
        )
        .await;
        seed_before = body["shuffle_seed"].as_str().unwrap().to_owned();
        if let Some(admission) = body["admission_token"].as_str()
            && before.len() < 3
        {
            let (status, bought) = buy(&s, &base, b, &sale, Some(admission), "k1").await;
            assert_eq!(status, 201, "{bought}");
            before.insert(
                b.id.clone(),
                bought["reservation_id"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert_eq!(
        before.len(),
        3,
        "three of the first {STOCK} admitted bought"
    );
    redis.restart_from(&snapshot);
    // After the loss the room opens again (a new seed) and admits again;
    // everyone tries, with a new key. Whoever bought already is refused
    // by the engine's per-user limit; the rest of the stock sells.
    let runs = buyers.iter().map(|b| {
        let (s, base, sale, ticket) = (&s, &base, &sale, tickets[&b.id].clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(Instant::now() < deadline, "{} was never decided", b.id);
                let (status, body) = poll(s, base, b, sale, &ticket, 2).await;
                if status != 200 {
                    // Redis coming back (503), or polling too fast (429).
                    assert!(matches!(status, 429 | 503), "{status} {body}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                let seed = body["shuffle_seed"].as_str().map(str::to_owned);
                match body["state"].as_str().unwrap_or("") {
                    "sold_out" => return (b.id.clone(), None, seed),
                    "admitted" => {
                        let admission = body["admission_token"].as_str().unwrap();
                        let (status, bought) = buy(s, base, b, sale, Some(admission), "k2").await;
                        match (status, code(&bought)) {
                            (201, _) => {
                                let id = bought["reservation_id"].as_str().unwrap().to_owned();
                                return (b.id.clone(), Some(id), seed);
                            }
                            (409, Some("limit_exceeded" | "sold_out" | "admission_used")) => {
                                return (b.id.clone(), None, seed);
                            }
                            (503 | 429, _) => tokio::time::sleep(Duration::from_millis(200)).await,
                            other => panic!("unexpected purchase answer {other:?}: {bought}"),
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    let after = futures::future::join_all(runs).await;
    let mut held: HashMap<String, Vec<String>> = HashMap::new();
    for (id, reservation) in before.into_iter() {
        held.entry(id).or_default().push(reservation);
    }
    let mut seeds_after = HashSet::new();
    for (id, reservation, seed) in after {
        if let Some(reservation) = reservation {
            held.entry(id).or_default().push(reservation);
        }
        seeds_after.extend(seed);
    }
    assert!(
        seeds_after.iter().any(|seed| *seed != seed_before),
        "the room opened again after the loss: {seed_before} then {seeds_after:?}"
    );
    assert!(
        held.values().all(|r| r.len() == 1),
        "a buyer past the limit: {held:?}"
    );
    assert_eq!(held.len(), STOCK, "exactly the stock is sold: {held:?}");
    let (_, view) = s
        .call(s.client.get(s.url(&format!("/api/v1/sales/{sale}"))))
        .await;
    assert_eq!(view["remaining"], 0, "{view}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_an_expired_ticket_are_refused_and_joining_again_gives_the_place_back() {
    let redis = RedisServer::start();
    let url = redis.url();
    let options = Options {
        redis_url: Some(url.clone()),
        ..Options::default()
    };
    let s = EdgeStack::start_with(options, |p| {
        p.redis_url = url;
        p.waiting_room.ticket_ttl = Duration::from_secs(1);
    })
    .await;
    let base = s.base.clone();
    let admin = s.admin().await;
    let sale = room_sale(
        &s,
        &admin,
        5,
        time::Duration::seconds(-1),
        json!({"admit_per_second": 1, "max_queue": 2}),
    )
    .await;
    let (ann, ben, cy) = (buyer("ann"), buyer("ben"), buyer("cy"));
    let (status, joined) = join(&s, &base, &ann, &sale).await;
    assert_eq!(status, 201, "{joined}");
    assert_eq!(join(&s, &base, &ben, &sale).await.0, 201);
    let (status, body) = join(&s, &base, &cy, &sale).await;
    assert_eq!((status, code(&body)), (503, Some("queue_full")), "{body}");
    // A ticket past its lifetime is refused; joining again gives the same
    // place and a fresh ticket.
    let ticket = joined["ticket"].as_str().unwrap().to_owned();
    // Polled until refused (answers past the `queue-per-user` limit, 429,
    // say nothing either way).
    let expired = eventually(Duration::from_secs(30), "the ticket expires", || async {
        let (status, body) = poll(&s, &base, &ann, &sale, &ticket, 0).await;
        assert!(matches!(status, 200 | 403 | 429), "{status} {body}");
        (status == 403).then_some(body)
    })
    .await;
    assert_eq!(code(&expired), Some("invalid_ticket"), "{expired}");
    assert!(
        expired["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{expired}"
    );
    let (status, again) = eventually(Duration::from_secs(30), "a join past the limit", || async {
        let (status, body) = join(&s, &base, &ann, &sale).await;
        (status != 429).then_some((status, body))
    })
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["joined_at"], joined["joined_at"], "the same place");
    assert!(
        again["ticket_expires_at"].as_str() > joined["ticket_expires_at"].as_str(),
        "a fresh ticket: {again}"
    );
    s.stop().await;
}
