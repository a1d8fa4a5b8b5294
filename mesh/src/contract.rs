//! What components agree on beyond the wire messages: how instants are
//! written, the shape of an access token's id, how long an access token may
//! live, and the sold-out answer. Each is defined once, here, because two
//! components reading it differently is a bug neither would see alone.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{ApiError, ErrorCode};

/// Hex digits of a login family's id: the first half of a flashmall access
/// token's `jti` (the auth service writes it; the edge revokes by it).
pub const LOGIN_FAMILY_HEX: usize = 32;

/// The longest an access token may live. The auth service refuses a
/// longer `access_ttl`; the edge keeps a logged-out token's revocation this
/// long, so no revoked token outlives its revocation.
pub const MAX_ACCESS_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

/// How long a component's own identity, signed for one call to another
/// component, is valid (the callee refuses it after that).
pub const SERVICE_CALL_IDENTITY_LIFE: Duration = Duration::from_secs(60);

/// An instant as RFC 3339 in UTC (`2026-11-21T10:00:00Z`). RFC 3339 has
/// no form for years past 9999, which no clock reaches: such an instant is
/// written as its Unix seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let utc = t.to_offset(time::UtcOffset::UTC);
    utc.format(&Rfc3339)
        .unwrap_or_else(|_| utc.unix_timestamp().to_string())
}

/// Unix milliseconds as RFC 3339 in UTC, as [`rfc3339`] writes them.
pub fn rfc3339_ms(ms: u64) -> String {
    let seconds = ms / 1000;
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => rfc3339(t),
        Err(_) => seconds.to_string(),
    }
}

/// The login family of a flashmall access token's `jti`: exactly 64
/// lowercase hex digits, the family's then the token's own. Any other
/// `jti` (another issuer's) has no family.
pub fn login_family(jti: &str) -> Option<&str> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (jti.len() == 2 * LOGIN_FAMILY_HEX && jti.bytes().all(hex)).then(|| &jti[..LOGIN_FAMILY_HEX])
}

/// The answer to a purchase of a sold-out sale, the same from the engine
/// and from the edge's gate.
pub fn sold_out() -> ApiError {
    ApiError::new(ErrorCode::SoldOut, "the sale is sold out")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_written_in_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        let east =
            OffsetDateTime::UNIX_EPOCH.to_offset(time::UtcOffset::from_hms(8, 0, 0).unwrap());
        assert_eq!(rfc3339(east), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_ms(u64::MAX), (u64::MAX / 1000).to_string());
    }

    #[test]
    fn only_a_flashmall_jti_has_a_family() {
        let family = "0123456789abcdef0123456789abcdef";
        let jti = format!("{family}fedcba9876543210fedcba9876543210");
        assert_eq!(login_family(&jti), Some(family));
        assert_eq!(login_family(family), None);
        assert_eq!(login_family(&jti.to_uppercase()), None);
        assert_eq!(login_family(&format!("{jti}0")), None);
    }
}
