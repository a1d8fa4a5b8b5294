//! Set-up calls through the edge's public API (reqwest: these are few and
//! not measured): accounts, logins, sales, ledger reads.

use serde_json::{Value, json};

/// Sends a request and reads a JSON answer (status, body).
pub async fn json_of(request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let response = request.send().await.map_err(|e| {
        // reqwest's own message ("error sending request for url ...")
        // hides whether it timed out, was refused or was cut: say which.
        let why = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "no connection"
        } else {
            "connection lost"
        };
        format!("request failed ({why}): {e}")
    })?;
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .map_err(|e| format!("bad json answer: {e}"))?;
    Ok((status, body))
}

/// How long [`steady_json_of`] keeps asking through transient failures.
pub const STEADY_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// How long one of [`steady_json_of`]'s attempts may wait for its answer:
/// past the edge's upstream read timeout (10 s), after which the edge
/// answers 504 itself, so an attempt still unanswered then was lost on
/// the way (an edge or a load balancer connection that died) and a new
/// one goes out, rather than one lost answer using up the whole
/// [`STEADY_FOR`].
pub const ATTEMPT_FOR: std::time::Duration = std::time::Duration::from_secs(15);

/// Whether an answer says "not now" rather than deciding anything: no
/// answer at all, or 502/503/504 from the edge or a component.
pub fn transient(answer: &Result<(u16, Value), String>) -> bool {
    !matches!(answer, Ok((status, _)) if !matches!(status, 502..=504))
}

/// [`json_of`] for a request that is safe to send again (a read, or a
/// write carrying an Idempotency-Key): asks again after a transient
/// failure (a replica or a store down for a moment, an attempt without an
/// answer in [`ATTEMPT_FOR`]), with a backoff from 50 ms to 1 s, until it
/// gets an answer or [`STEADY_FOR`] passed.
pub async fn steady_json_of(request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let deadline = std::time::Instant::now() + STEADY_FOR;
    let mut backoff = std::time::Duration::from_millis(50);
    loop {
        let Some(again) = request.try_clone() else {
            return json_of(request).await;
        };
        let answer = json_of(again.timeout(ATTEMPT_FOR)).await;
        if !transient(&answer) || std::time::Instant::now() + backoff > deadline {
            return answer;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
    }
}

/// Reconciles one sale through the admin API and returns its report (the
/// `sales[0]` of the answer). A reconcile running elsewhere (one the engine
/// started by itself after a fault, on another replica) answers 409
/// `conflict`: asked again until this one runs, for up to a minute (a
/// rebuild's lease is 30 s). Any other answer but 200 is an error.
pub async fn reconcile_report(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    sale_id: &str,
) -> Result<Value, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (status, body) = steady_json_of(
            client
                .post(format!("{base}/api/v1/admin/reconcile"))
                .bearer_auth(admin)
                .json(&json!({"sale_id": sale_id})),
        )
        .await?;
        match status {
            200 => return Ok(body["sales"][0].clone()),
            409 if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            _ => return Err(format!("reconcile failed: {status} {body}")),
        }
    }
}

/// Posts an account's credentials to an auth endpoint.
async fn credentials(
    client: &reqwest::Client,
    url: String,
    email: &str,
    password: &str,
) -> Result<(u16, Value), String> {
    json_of(
        client
            .post(url)
            .json(&json!({"email": email, "password": password})),
    )
    .await
}

/// Logs an account in; its access token.
pub async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String, String> {
    // Safe to ask again: a login changes nothing a second one would not.
    let (status, body) = steady_json_of(
        client
            .post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"email": email, "password": password})),
    )
    .await?;
    match body["access_token"].as_str() {
        Some(token) if status == 200 => Ok(token.to_owned()),
        _ => Err(format!("logging in {email} failed: {status} {body}")),
    }
}

/// Registers an account, then logs it in; its access token. Like a
/// client, it asks again after a transient failure (a store or a replica
/// down for a moment, as right after a cluster starts) for up to
/// [`STEADY_FOR`]; an attempt that got no answer may have registered the
/// account, so a `409` after one means it did.
pub async fn register(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String, String> {
    let url = format!("{base}/api/v1/auth/register");
    let deadline = std::time::Instant::now() + STEADY_FOR;
    let mut backoff = std::time::Duration::from_millis(50);
    let mut unanswered = false;
    loop {
        let answer = credentials(client, url.clone(), email, password).await;
        match answer {
            Ok((201, _)) => break,
            Ok((409, _)) if unanswered => break,
            ref a if transient(a) && std::time::Instant::now() + backoff <= deadline => {
                unanswered = true;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
            }
            Ok((status, body)) => {
                return Err(format!("registering {email} failed: {status} {body}"));
            }
            Err(e) => return Err(format!("registering {email} failed: {e}")),
        }
    }
    login(client, base, email, password).await
}

/// Creates a sale of `stock` units (`limit` per buyer) opening at
/// `opens_at` for an hour, as `admin`; its id.
pub async fn create_sale(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    product_id: &str,
    stock: i64,
    limit: i64,
    opens_at: time::OffsetDateTime,
) -> Result<String, String> {
    let (status, sale) = json_of(
        client
            .post(format!("{base}/api/v1/sales"))
            .bearer_auth(admin)
            .json(&json!({
                "product_id": product_id,
                "price": 1999,
                "stock": stock,
                "per_user_limit": limit,
                "starts_at": flashmall_engine::sale::rfc3339(opens_at),
                "ends_at": flashmall_engine::sale::rfc3339(opens_at + time::Duration::hours(1)),
            })),
    )
    .await?;
    if status != 201 {
        return Err(format!("creating the sale failed: {status} {sale}"));
    }
    Ok(sale["id"].as_str().ok_or("the sale has no id")?.to_owned())
}

/// Where the ledger has the reservations a client was told about.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LedgerStates {
    /// Answered 201, yet the ledger has no such reservation.
    pub missing: Vec<String>,
    /// In the ledger, released since (`releasing` or `released`): an order
    /// that expired or was cancelled gave its units back.
    pub released: Vec<String>,
    /// In the ledger as refused (`revoked`): a fast acknowledgement the
    /// ledger did not honour.
    pub revoked: Vec<String>,
}

/// Reads where the ledger has each of `ids`, through the admin API, 64 at a
/// time. A reservation counts as present in any state: one acknowledged,
/// settled and later released by an expired order was not lost.
pub async fn ledger_states<'a>(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    ids: impl IntoIterator<Item = &'a String>,
) -> LedgerStates {
    use futures::StreamExt;
    let found: Vec<(String, Option<String>)> = futures::stream::iter(ids)
        .map(|id| async move {
            let status = steady_json_of(
                client
                    .get(format!("{base}/api/v1/reservations/{id}"))
                    .bearer_auth(admin),
            )
            .await
            .ok()
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, r)| r["status"].as_str().map(str::to_owned));
            (id.clone(), status)
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut states = LedgerStates::default();
    for (id, status) in found {
        match status.as_deref() {
            Some("held") => {}
            Some("releasing" | "released") => states.released.push(id),
            Some("revoked") => states.revoked.push(id),
            _ => states.missing.push(id),
        }
    }
    states.missing.sort();
    states.released.sort();
    states.revoked.sort();
    states
}

/// The value of one Prometheus sample line (`name{labels} value`) in a
/// `/metrics` text, or 0 when the series was never recorded.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|value| value.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_metric_is_read_by_its_exact_series() {
        let text =
            "# TYPE x counter\nx{reason=\"sold_out_gate\"} 42\nx{reason=\"sold_out_gate_2\"} 7\n";
        assert_eq!(super::metric(text, "x{reason=\"sold_out_gate\"}"), 42.0);
        assert_eq!(super::metric(text, "x{reason=\"other\"}"), 0.0);
    }
}
