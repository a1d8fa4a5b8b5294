//! Small contracts every component shares: the headers components exchange
//! (the signed identity has its own module, `identity`) and the clock they
//! stamp with. One definition each, so both ends always agree.

/// The client's address, set by the edge (over whatever the client sent).
pub const CLIENT_IP: &str = "x-real-ip";

/// The engine's announcement that a sale is sold out, for the edge's gate.
pub const SOLD_OUT: &str = "x-flashmall-sold-out";

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
