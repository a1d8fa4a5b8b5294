//! Waiting-room tickets and admission tokens: a payload signed by the
//! edge with the mesh key (every replica verifies every other's), bound to
//! one buyer and one sale, with an expiry:
//! `wr1|{queue|admit}|{sale}|{user}|{expires ms}|{nonce}.{hmac}`.

use flashmall_mesh::{ApiError, ErrorCode, IdentityKey};

/// The signing purpose: no ticket verifies as anything else.
const PURPOSE: &str = "flashmall waiting room";

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A place in the queue (polls).
    Queue,
    /// An admission (a purchase).
    Admit,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::Admit => "admit",
        }
    }
}

/// A ticket's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub kind: Kind,
    pub sale: String,
    pub user: String,
    pub expires_ms: u64,
}

/// The signed value of `ticket`.
pub fn sign(key: &IdentityKey, ticket: &Ticket) -> String {
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let payload = format!(
        "wr1|{}|{}|{}|{}|{nonce}",
        ticket.kind.as_str(),
        ticket.sale,
        ticket.user,
        ticket.expires_ms
    );
    key.sign_token(PURPOSE, &payload)
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(ErrorCode::InvalidTicket, message)
}

/// Checks a ticket of `kind` for `user` and `sale` at `now_ms`.
pub fn verify(
    key: &IdentityKey,
    value: &str,
    kind: Kind,
    sale: &str,
    user: &str,
    now_ms: u64,
) -> Result<Ticket, ApiError> {
    let what = match kind {
        Kind::Queue => "queue ticket",
        Kind::Admit => "admission token",
    };
    let payload = key
        .verify_token(PURPOSE, value.trim())
        .ok_or_else(|| invalid(&format!("the {what} is not one this edge issued")))?;
    let parts: Vec<&str> = payload.split('|').collect();
    let [version, got_kind, got_sale, got_user, expires, _nonce] = parts.as_slice() else {
        return Err(invalid(&format!("the {what} is not one this edge issued")));
    };
    if *version != "wr1" || *got_kind != kind.as_str() {
        return Err(invalid(&format!("this is not a {what}")));
    }
    if *got_sale != sale {
        return Err(invalid(&format!("the {what} is for another sale")));
    }
    if *got_user != user {
        return Err(invalid(&format!("the {what} is another buyer's")));
    }
    let expires_ms: u64 = expires
        .parse()
        .map_err(|_| invalid(&format!("the {what} is not one this edge issued")))?;
    if now_ms >= expires_ms {
        return Err(invalid(&match kind {
            Kind::Queue => format!(
                "the queue ticket expired: join again (POST /api/v1/sales/{sale}/queue) to get your place back"
            ),
            Kind::Admit => "the admission expired".to_owned(),
        }));
    }
    Ok(Ticket {
        kind,
        sale: sale.to_owned(),
        user: user.to_owned(),
        expires_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_works_only_for_its_buyer_sale_kind_and_time() {
        let key = IdentityKey::random();
        let ticket = Ticket {
            kind: Kind::Queue,
            sale: "sale-1".into(),
            user: "alice".into(),
            expires_ms: 1_000,
        };
        let value = sign(&key, &ticket);
        assert_eq!(
            verify(&key, &value, Kind::Queue, "sale-1", "alice", 999).unwrap(),
            ticket
        );
        let refused = |v: &str, kind, sale, user, now| {
            verify(&key, v, kind, sale, user, now).unwrap_err().message
        };
        assert!(refused(&value, Kind::Queue, "sale-1", "alice", 1_000).contains("expired"));
        assert!(refused(&value, Kind::Queue, "sale-2", "alice", 0).contains("another sale"));
        assert!(refused(&value, Kind::Queue, "sale-1", "bob", 0).contains("another buyer"));
        assert!(refused(&value, Kind::Admit, "sale-1", "alice", 0).contains("not a"));
        // Forged: another key, or a changed payload.
        let forged = sign(&IdentityKey::random(), &ticket);
        assert!(refused(&forged, Kind::Queue, "sale-1", "alice", 0).contains("not one"));
        let edited = value.replacen("alice", "bob", 1);
        assert!(refused(&edited, Kind::Queue, "sale-1", "bob", 0).contains("not one"));
        let later = value.replacen("|1000|", "|9999|", 1);
        assert!(refused(&later, Kind::Queue, "sale-1", "alice", 0).contains("not one"));
        assert!(refused("garbage", Kind::Queue, "sale-1", "alice", 0).contains("not one"));
        assert_ne!(sign(&key, &ticket), value, "each ticket has its own nonce");
    }
}
