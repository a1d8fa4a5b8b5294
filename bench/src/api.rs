//! Set-up calls through the edge's public API (reqwest: these are few and
//! not measured): accounts, logins, sales, ledger reads.

use serde_json::{Value, json};

/// Sends a request and reads a JSON answer (status, body).
pub async fn json_of(request: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .json()
        .await
        .map_err(|e| format!("bad json answer: {e}"))?;
    Ok((status, body))
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
    let url = format!("{base}/api/v1/auth/login");
    let (status, body) = credentials(client, url, email, password).await?;
    match body["access_token"].as_str() {
        Some(token) if status == 200 => Ok(token.to_owned()),
        _ => Err(format!("logging in {email} failed: {status} {body}")),
    }
}

/// Registers an account, then logs it in; its access token.
pub async fn register(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String, String> {
    let url = format!("{base}/api/v1/auth/register");
    let (status, body) = credentials(client, url, email, password).await?;
    if status != 201 {
        return Err(format!("registering {email} failed: {status} {body}"));
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

/// The reservations among `ids` the ledger does not hold (`held`), read
/// through the admin API, 64 at a time.
pub async fn missing_in_ledger<'a>(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    ids: impl IntoIterator<Item = &'a String>,
) -> Vec<String> {
    use futures::StreamExt;
    futures::stream::iter(ids)
        .map(|id| async move {
            let held = json_of(
                client
                    .get(format!("{base}/api/v1/reservations/{id}"))
                    .bearer_auth(admin),
            )
            .await
            .is_ok_and(|(status, r)| status == 200 && r["status"] == "held");
            (!held).then(|| id.clone())
        })
        .buffer_unordered(64)
        .filter_map(|m| async move { m })
        .collect()
        .await
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
