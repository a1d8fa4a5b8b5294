//! The one small, closed set of error codes and its mapping to HTTP statuses
//! and gRPC codes. JSON bodies carry the stable code string:
//! `{"error": {"code": "...", "message": "..."}}`.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};

/// gRPC metadata key carrying the stable error code next to the gRPC status.
pub const GRPC_ERROR_CODE_KEY: &str = "flashmall-error-code";

/// A stable, client-visible error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    PayloadTooLarge,
    Unauthenticated,
    Forbidden,
    NotFound,
    SaleNotFound,
    SoldOut,
    LimitExceeded,
    SaleNotOpen,
    SaleClosed,
    Conflict,
    /// Normal checkout: a product has fewer units than the cart asks for.
    OutOfStock,
    /// Normal checkout: the payment provider declined the charge.
    PaymentDeclined,
    RateLimited,
    Unavailable,
    Internal,
    /// A waiting-room sale: the purchase carries no admission token.
    AdmissionRequired,
    /// A waiting room's ticket or admission token that is forged, expired,
    /// or another buyer's or sale's.
    InvalidTicket,
    /// The admission was already used for a purchase with another
    /// Idempotency-Key.
    AdmissionUsed,
    /// The sale's waiting room holds as many buyers as it may.
    QueueFull,
}

impl ErrorCode {
    /// Every code, for tests and documentation.
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidRequest,
        ErrorCode::PayloadTooLarge,
        ErrorCode::Unauthenticated,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::SaleNotFound,
        ErrorCode::SoldOut,
        ErrorCode::LimitExceeded,
        ErrorCode::SaleNotOpen,
        ErrorCode::SaleClosed,
        ErrorCode::Conflict,
        ErrorCode::OutOfStock,
        ErrorCode::PaymentDeclined,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::AdmissionRequired,
        ErrorCode::InvalidTicket,
        ErrorCode::AdmissionUsed,
        ErrorCode::QueueFull,
    ];

    /// The code string clients match on.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::SaleNotFound => "sale_not_found",
            ErrorCode::SoldOut => "sold_out",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::SaleNotOpen => "sale_not_open",
            ErrorCode::SaleClosed => "sale_closed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::OutOfStock => "out_of_stock",
            ErrorCode::PaymentDeclined => "payment_declined",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::AdmissionRequired => "admission_required",
            ErrorCode::InvalidTicket => "invalid_ticket",
            ErrorCode::AdmissionUsed => "admission_used",
            ErrorCode::QueueFull => "queue_full",
        }
    }

    /// Parses a code string back (for clients of other components).
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status this code is answered with.
    pub fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden | ErrorCode::AdmissionRequired | ErrorCode::InvalidTicket => {
                StatusCode::FORBIDDEN
            }
            ErrorCode::NotFound | ErrorCode::SaleNotFound => StatusCode::NOT_FOUND,
            ErrorCode::SoldOut
            | ErrorCode::LimitExceeded
            | ErrorCode::SaleNotOpen
            | ErrorCode::SaleClosed
            | ErrorCode::Conflict
            | ErrorCode::AdmissionUsed
            | ErrorCode::OutOfStock => StatusCode::CONFLICT,
            ErrorCode::PaymentDeclined => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable | ErrorCode::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code this code is answered with.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidRequest | ErrorCode::PayloadTooLarge => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::Forbidden | ErrorCode::AdmissionRequired | ErrorCode::InvalidTicket => {
                tonic::Code::PermissionDenied
            }
            ErrorCode::AdmissionUsed => tonic::Code::AlreadyExists,
            ErrorCode::QueueFull => tonic::Code::ResourceExhausted,
            ErrorCode::NotFound | ErrorCode::SaleNotFound => tonic::Code::NotFound,
            ErrorCode::SoldOut | ErrorCode::LimitExceeded => tonic::Code::ResourceExhausted,
            ErrorCode::SaleNotOpen | ErrorCode::SaleClosed => tonic::Code::FailedPrecondition,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::OutOfStock => tonic::Code::ResourceExhausted,
            ErrorCode::PaymentDeclined => tonic::Code::FailedPrecondition,
            ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answered to a client: a stable code and a message a person understands.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Seconds after which a retry may succeed (sent as `Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message).with_retry_after(1)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body `{"error": {"code", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }

    /// Recovers the error a server sent as a gRPC status.
    pub fn from_status(status: &tonic::Status) -> ApiError {
        let code = status
            .metadata()
            .get(GRPC_ERROR_CODE_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(ErrorCode::parse)
            .unwrap_or(match status.code() {
                tonic::Code::InvalidArgument => ErrorCode::InvalidRequest,
                tonic::Code::Unauthenticated => ErrorCode::Unauthenticated,
                tonic::Code::PermissionDenied => ErrorCode::Forbidden,
                tonic::Code::NotFound => ErrorCode::NotFound,
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            });
        ApiError::new(code, status.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.code.http_status(), Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let mut status = tonic::Status::new(err.code.grpc_code(), err.message);
        status.metadata_mut().insert(
            GRPC_ERROR_CODE_KEY,
            tonic::metadata::MetadataValue::from_static(err.code.as_str()),
        );
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_strings_and_grpc() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let status: tonic::Status = ApiError::new(code, "x").into();
            assert_eq!(ApiError::from_status(&status).code, code);
        }
    }

    #[test]
    fn purchase_rejections_are_conflicts() {
        for code in [
            ErrorCode::SoldOut,
            ErrorCode::LimitExceeded,
            ErrorCode::SaleNotOpen,
            ErrorCode::SaleClosed,
        ] {
            assert_eq!(code.http_status(), StatusCode::CONFLICT);
        }
        assert_eq!(ErrorCode::SaleNotFound.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(
            ErrorCode::Unavailable.http_status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
