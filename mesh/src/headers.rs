//! Small contracts every component shares: the headers components exchange
//! (the signed identity has its own module, `identity`) and the clock they
//! stamp with. One definition each, so both ends always agree.

/// A client's claimed address (a proxy convention): never trusted, and
/// stripped by the edge; the edge sends the address signed instead
/// (`identity::CLIENT_HEADER`).
pub const CLIENT_IP: &str = "x-real-ip";

/// The edge's word to the engine that the caller holds an admission to the
/// sale of a waiting-room purchase (`IdentityKey::sign_admitted`); the
/// engine refuses such a purchase without it. Stripped from clients.
pub const ADMITTED: &str = "x-flashmall-admitted";

/// The engine's announcement that a sale is sold out, for the edge's gate.
pub const SOLD_OUT: &str = "x-flashmall-sold-out";

/// The auth service's announcement, on a response through the edge, that
/// a user's access tokens issued before an instant are void (a password
/// change, a deleted account, changed roles): `<user id> <Unix ms>`. The
/// edge records it for every replica and strips it from the response.
pub const REVOKE_USER: &str = "x-flashmall-revoke-user";

/// The `REVOKE_USER` value for `user_id`'s tokens issued before `before_ms`.
pub fn revoke_user_value(user_id: &str, before_ms: u64) -> String {
    format!("{user_id} {before_ms}")
}

/// Reads a `REVOKE_USER` value.
pub fn parse_revoke_user(value: &str) -> Option<(&str, u64)> {
    let (user, ms) = value.split_once(' ')?;
    Some((user, ms.parse().ok()?))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
