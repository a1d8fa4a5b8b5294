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

/// Logs an account in; its access token.
pub async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String, String> {
    let (status, body) = json_of(
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

/// Registers an account, then logs it in; its access token.
pub async fn register(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> Result<String, String> {
    let (status, body) = json_of(
        client
            .post(format!("{base}/api/v1/auth/register"))
            .json(&json!({"email": email, "password": password})),
    )
    .await?;
    if status != 201 {
        return Err(format!("registering {email} failed: {status} {body}"));
    }
    login(client, base, email, password).await
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
