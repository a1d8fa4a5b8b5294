//! gRPC wire details both ends of a call share: the `grpc-timeout` header
//! (encoded and parsed as the gRPC HTTP/2 protocol defines it), the names of
//! status codes in metric labels, and a response body wrapper that reports
//! a call's final status once it is known.
//!
//! A gRPC status travels in one of two places: in the response headers of a
//! "trailers-only" response (how tonic answers a handler's error), or in the
//! trailers after the messages (how every successful call ends). Metrics
//! read the headers first and otherwise wrap the body to see the trailers.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// Header carrying how long the caller waits for the answer.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Header (or trailer) carrying the status code of a call.
pub const GRPC_STATUS: &str = "grpc-status";

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit, one of
/// `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u`
/// (microseconds) or `n` (nanoseconds). `None` for anything else.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    let (&unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes `timeout` as a `grpc-timeout` value in the finest unit whose
/// count fits in 8 digits. The count is rounded down, so the peer is never
/// told it has more time than the caller will wait.
pub fn format_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, nanos_per_unit) in [
        ('n', 1),
        ('u', 1_000),
        ('m', 1_000_000),
        ('S', 1_000_000_000),
        ('M', 60_000_000_000),
        ('H', 3_600_000_000_000),
    ] {
        let count = nanos / nanos_per_unit;
        if count <= MAX {
            return format!("{count}{unit}");
        }
    }
    format!("{MAX}H")
}

/// The status code a header map (response headers or trailers) carries.
pub fn status_code(headers: &HeaderMap) -> Option<tonic::Code> {
    headers
        .get(GRPC_STATUS)
        .map(|v| tonic::Code::from_bytes(v.as_bytes()))
}

/// The gRPC method name of a request path (`/pkg.Service/Method`).
pub fn method_name(path: &str) -> &str {
    path.rsplit('/')
        .next()
        .filter(|m| !m.is_empty())
        .unwrap_or("unknown")
}

/// The name of a status code in metric labels (the names gRPC libraries
/// print: `OK`, `Unavailable`, `DeadlineExceeded`, ...).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// A response body that calls `on_status` once with the call's final
/// status name: the code in the trailers; `Unknown` when the body ends
/// without one; `transport` when the body fails; `Cancelled` when it is
/// dropped before its end (the caller gave up).
pub(crate) struct StatusBody<B, F>
where
    F: FnOnce(&'static str),
{
    inner: B,
    on_status: Option<F>,
}

impl<B, F> StatusBody<B, F>
where
    F: FnOnce(&'static str),
{
    pub(crate) fn new(inner: B, on_status: F) -> Self {
        StatusBody {
            inner,
            on_status: Some(on_status),
        }
    }

    fn finish(&mut self, status: &'static str) {
        if let Some(on_status) = self.on_status.take() {
            on_status(status);
        }
    }
}

impl<B, F> Body for StatusBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnOnce(&'static str) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.finish(status_code(trailers).map_or("Unknown", code_name));
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish("transport"),
            Poll::Ready(None) => this.finish("Unknown"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, F> Drop for StatusBody<B, F>
where
    F: FnOnce(&'static str),
{
    fn drop(&mut self) {
        self.finish("Cancelled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_trip_without_growing() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_millis(250),
            Duration::from_secs(2),
            Duration::from_secs(3 * 86_400),
            Duration::from_secs(u64::MAX / 4),
        ] {
            let encoded = format_timeout(d);
            assert!(encoded.len() <= 9, "{encoded}");
            let back = parse_timeout(&encoded).unwrap();
            assert!(back <= d, "{d:?} -> {encoded} -> {back:?}");
        }
        assert_eq!(
            parse_timeout(&format_timeout(Duration::from_millis(250))),
            Some(Duration::from_millis(250))
        );
    }

    #[test]
    fn timeouts_parse_every_unit_and_refuse_junk() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_timeout("5m"), Some(Duration::from_millis(5)));
        assert_eq!(parse_timeout("6u"), Some(Duration::from_micros(6)));
        assert_eq!(parse_timeout("7n"), Some(Duration::from_nanos(7)));
        for junk in [
            "",
            "S",
            "10",
            "123456789S",
            "1s",
            "-1S",
            "1.5S",
            "1 S",
            "١S",
        ] {
            assert_eq!(parse_timeout(junk), None, "{junk:?}");
        }
    }
}
