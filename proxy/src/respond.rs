//! Answers written by the edge itself. Pingora's error helpers turn
//! keep-alive off; a 401/403/429 storm must not cost every client a new
//! connection, so these write the header and the body themselves, with a
//! Content-Length, and keep the connection.

use bytes::Bytes;
use flashmall_mesh::ApiError;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Writes a complete response; the connection stays open.
pub async fn write(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: Bytes,
    request_id: &str,
    extra: &[(&'static str, String)],
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(4 + extra.len()))?;
    header.insert_header("content-type", content_type)?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("x-request-id", request_id)?;
    for (name, value) in extra {
        header.insert_header(*name, value.as_str())?;
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// Writes a JSON value.
pub async fn json(
    session: &mut Session,
    status: u16,
    value: &serde_json::Value,
    request_id: &str,
) -> pingora::Result<()> {
    let body = Bytes::from(serde_json::to_vec(value).unwrap_or_default());
    write(session, status, "application/json", body, request_id, &[]).await
}

/// Writes an error in the API's shape, with `Retry-After` when it has one.
pub async fn error(session: &mut Session, err: &ApiError, request_id: &str) -> pingora::Result<()> {
    let body = Bytes::from(serde_json::to_vec(&err.body()).unwrap_or_default());
    let extra: Vec<(&'static str, String)> = err
        .retry_after
        .map(|s| vec![("retry-after", s.to_string())])
        .unwrap_or_default();
    write(
        session,
        err.code.http_status().as_u16(),
        "application/json",
        body,
        request_id,
        &extra,
    )
    .await
}
