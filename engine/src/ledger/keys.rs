//! The ledger's key layout. Keys are readable byte strings:
//!
//! - `s/{sale}` → sale
//! - `n/{sale}` → its settlement totals (written by settlement only, once
//!   per batch); `l/{sale}/{shard}` → its release totals in
//!   [`RELEASE_SHARDS`] shards (written by releases only, each release to
//!   its reservation's shard), so a release never conflicts with a
//!   settlement and rarely with another release. (`c/{sale}` held both
//!   until 2026-12: a ledger written before that is refused.)
//! - `r/{reservation}` → reservation record
//! - `x/{sale}/{reservation}` → empty, to list a sale's reservations
//! - `u/{sale}/{user}` → units the user holds in the sale
//! - `o/{reservation}` → empty: the reservation's order is not made yet
//!   (the order outbox, written with the reservation in one transaction)
//! - `k/{sale}/{user length}:{user}{idempotency key}` → the reservation id
//!   the ledger settled for that buyer's key (one per key, whatever the
//!   stock front remembers)

use uuid::Uuid;

use super::Key;

pub const SALE_PREFIX: &[u8] = b"s/";

pub fn sale(id: Uuid) -> Key {
    format!("s/{id}").into_bytes()
}

pub fn settle_totals(sale: Uuid) -> Key {
    format!("n/{sale}").into_bytes()
}

/// Shards of a sale's release totals: orders expire in bursts, and their
/// releases on one key met in write conflicts thousands of times a run.
pub const RELEASE_SHARDS: u128 = 16;

/// The shard of the release totals that `reservation`'s release writes.
pub fn release_shard(reservation: Uuid) -> u128 {
    // A UUIDv7's low bits are random.
    reservation.as_u128() % RELEASE_SHARDS
}

/// The release totals' shard of `reservation`'s release.
pub fn release_totals(sale: Uuid, reservation: Uuid) -> Key {
    format!("l/{sale}/{:02}", release_shard(reservation)).into_bytes()
}

/// Every shard of a sale's release totals.
pub fn all_release_totals(sale: Uuid) -> Vec<Key> {
    (0..RELEASE_SHARDS)
        .map(|shard| format!("l/{sale}/{shard:02}").into_bytes())
        .collect()
}

/// The sale's settlement epoch, bumped by every reconcile.
pub fn epoch(sale: Uuid) -> Key {
    format!("e/{sale}").into_bytes()
}

pub fn reservation(id: Uuid) -> Key {
    format!("r/{id}").into_bytes()
}

pub fn sale_reservation(sale: Uuid, id: Uuid) -> Key {
    format!("x/{sale}/{id}").into_bytes()
}

pub fn sale_reservation_prefix(sale: Uuid) -> Key {
    format!("x/{sale}/").into_bytes()
}

pub fn reservation_of(prefix: &[u8], key: &[u8]) -> Option<Uuid> {
    let tail = key.strip_prefix(prefix)?;
    Uuid::try_parse_ascii(tail).ok()
}

pub const ORDER_OUTBOX_PREFIX: &[u8] = b"o/";

pub fn order_outbox(reservation: Uuid) -> Key {
    format!("o/{reservation}").into_bytes()
}

pub fn buyer(sale: Uuid, user: &str) -> Key {
    format!("u/{sale}/{user}").into_bytes()
}

pub fn buyer_prefix(sale: Uuid) -> Key {
    format!("u/{sale}/").into_bytes()
}

pub fn buyer_of(prefix: &[u8], key: &[u8]) -> String {
    String::from_utf8_lossy(key.strip_prefix(prefix).unwrap_or(key)).into_owned()
}

/// The ledger's record of one buyer's Idempotency-Key in a sale. The
/// user's length comes first, so no user and key pair spells another's.
pub fn idempotency(sale: Uuid, user: &str, key: &str) -> Key {
    format!("k/{sale}/{}:{user}{key}", user.len()).into_bytes()
}

pub use flashmall_embedded_kv::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buyer_and_reservation_keys_round_trip() {
        let sale = Uuid::now_v7();
        let id = Uuid::now_v7();
        assert_eq!(
            reservation_of(&sale_reservation_prefix(sale), &sale_reservation(sale, id)),
            Some(id)
        );
        assert_eq!(buyer_of(&buyer_prefix(sale), &buyer(sale, "u-7")), "u-7");
        // A user id that ends like another's key does not collide.
        assert_ne!(idempotency(sale, "u1", "2k"), idempotency(sale, "u12", "k"));
    }
}
