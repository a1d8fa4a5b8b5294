//! Answers written by the edge itself. Pingora's error helpers turn
//! keep-alive off; a 401/403/429 storm must not cost every client a new
//! connection, so these write the header and the body themselves, with a
//! Content-Length, and keep the connection.
//!
//! An answer written before the request's body was read (a purchase turned
//! away by the sold-out gate, a POST without a token) also closes the
//! connection in Pingora by default. A small body (a declared
//! Content-Length up to [`DRAIN_LIMIT`]) is drained instead, so the
//! connection stays open; a larger or unsized one still closes it, so no
//! client can make the edge read a large body it refused.

use bytes::Bytes;
use flashmall_mesh::ApiError;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

/// Request bodies up to this size are drained after an early answer.
pub const DRAIN_LIMIT: u64 = 64 * 1024;

/// Keeps the connection of a request the edge answers itself, before any
/// upstream saw it, when its body is small enough to drain (a declared
/// Content-Length up to [`DRAIN_LIMIT`]). Only for answers from the request
/// filter: after an upstream attempt the body may be half-read, and Pingora
/// then closes the connection as it should.
pub fn keep_alive_when_drainable(session: &mut Session) {
    let drainable = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n <= DRAIN_LIMIT);
    if drainable {
        session.set_close_on_response_before_downstream_finish(false);
    }
}

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

/// The API's error shape, borrowed: serialized straight into the body
/// (the same bytes as `ApiError::body`, without building a JSON tree per
/// answer on the edge's hottest refusals).
#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    error: ErrorFields<'a>,
}

#[derive(serde::Serialize)]
struct ErrorFields<'a> {
    code: &'a str,
    message: &'a str,
}

fn error_body(err: &ApiError) -> Bytes {
    let body = ErrorBody {
        error: ErrorFields {
            code: err.code.as_str(),
            message: &err.message,
        },
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// Writes an error in the API's shape, with `Retry-After` when it has one.
pub async fn error(session: &mut Session, err: &ApiError, request_id: &str) -> pingora::Result<()> {
    let body = error_body(err);
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

#[cfg(test)]
mod tests {
    use flashmall_mesh::{ApiError, ErrorCode};

    #[test]
    fn error_bodies_are_the_apis_shape() {
        for err in [
            ApiError::new(ErrorCode::SoldOut, "the sale is sold out"),
            ApiError::new(ErrorCode::RateLimited, "a \"quoted\" message\n"),
        ] {
            let written: serde_json::Value =
                serde_json::from_slice(&super::error_body(&err)).unwrap();
            assert_eq!(written, err.body());
        }
    }
}
