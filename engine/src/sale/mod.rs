//! Sales: what a sale is, how one is created and validated, its lifecycle
//! status, and the engine's in-memory registry of live sale state (the
//! local sold-out flag, the settlement wake-up).

mod registry;

pub use registry::{LiveSale, SaleRegistry};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use flashmall_mesh::ApiError;

/// A flash sale of one product: `stock` units at `price`, at most
/// `per_user_limit` per buyer, between `starts_at` and `ends_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub id: Uuid,
    pub product_id: String,
    /// Unit price in minor units (cents).
    pub price: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The edge's waiting room for this sale, when it has one: purchases
    /// then need an admission the edge hands out in queue order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_room: Option<WaitingRoom>,
}

/// A sale's waiting room (`waiting_room` on creation): the edge queues its
/// buyers and admits them at most `admit_per_second`, slower while the
/// engine's settlement backlog grows; an admission lasts
/// `admission_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoom {
    /// Buyers admitted per second at most.
    #[serde(default = "WaitingRoom::default_rate")]
    pub admit_per_second: u32,
    /// How long an admitted buyer may take to purchase, seconds.
    #[serde(default = "WaitingRoom::default_admission")]
    pub admission_seconds: u32,
    /// The most buyers the queue holds; later ones are told it is full.
    #[serde(default = "WaitingRoom::default_max_queue")]
    pub max_queue: u32,
}

impl WaitingRoom {
    pub const MAX_RATE: u32 = 100_000;
    pub const MAX_QUEUE: u32 = 10_000_000;

    fn default_rate() -> u32 {
        100
    }

    fn default_admission() -> u32 {
        120
    }

    fn default_max_queue() -> u32 {
        1_000_000
    }

    fn validate(self) -> Result<WaitingRoom, ApiError> {
        if !(1..=Self::MAX_RATE).contains(&self.admit_per_second) {
            return Err(ApiError::invalid(format!(
                "waiting_room.admit_per_second must be between 1 and {}",
                Self::MAX_RATE
            )));
        }
        if !(5..=3600).contains(&self.admission_seconds) {
            return Err(ApiError::invalid(
                "waiting_room.admission_seconds must be between 5 and 3600",
            ));
        }
        if !(1..=Self::MAX_QUEUE).contains(&self.max_queue) {
            return Err(ApiError::invalid(format!(
                "waiting_room.max_queue must be between 1 and {}",
                Self::MAX_QUEUE
            )));
        }
        Ok(self)
    }
}

/// Where a sale is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Open,
    SoldOut,
    Closed,
}

impl SaleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleStatus::Scheduled => "scheduled",
            SaleStatus::Open => "open",
            SaleStatus::SoldOut => "sold_out",
            SaleStatus::Closed => "closed",
        }
    }
}

impl Sale {
    /// The status at `now`, given the units still on sale.
    pub fn status(&self, now: OffsetDateTime, remaining: i64) -> SaleStatus {
        if now >= self.ends_at {
            SaleStatus::Closed
        } else if now < self.starts_at {
            SaleStatus::Scheduled
        } else if remaining <= 0 {
            SaleStatus::SoldOut
        } else {
            SaleStatus::Open
        }
    }
}

/// The admin's request to create a sale.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSale {
    pub product_id: String,
    pub price: i64,
    pub stock: i64,
    pub per_user_limit: i64,
    pub starts_at: String,
    pub ends_at: String,
    /// A waiting room at the edge for this sale (every field defaulted).
    #[serde(default)]
    pub waiting_room: Option<WaitingRoom>,
}

/// Largest stock one sale may have (keeps every count far from overflow).
pub const MAX_STOCK: i64 = 100_000_000;
/// Largest unit price, in minor units.
pub const MAX_PRICE: i64 = 100_000_000_000;

impl NewSale {
    /// Validates the request into a sale with a fresh id.
    pub fn into_sale(self, now: OffsetDateTime) -> Result<Sale, ApiError> {
        let product_id = self.product_id.trim().to_owned();
        if product_id.is_empty() || product_id.len() > 64 {
            return Err(ApiError::invalid("product_id must be 1 to 64 characters"));
        }
        if !(0..=MAX_PRICE).contains(&self.price) {
            return Err(ApiError::invalid(format!(
                "price must be an integer amount of minor units between 0 and {MAX_PRICE}"
            )));
        }
        if !(1..=MAX_STOCK).contains(&self.stock) {
            return Err(ApiError::invalid(format!(
                "stock must be between 1 and {MAX_STOCK}"
            )));
        }
        if self.per_user_limit < 1 || self.per_user_limit > self.stock {
            return Err(ApiError::invalid(
                "per_user_limit must be between 1 and the stock",
            ));
        }
        let starts_at = parse_instant("starts_at", &self.starts_at)?;
        let ends_at = parse_instant("ends_at", &self.ends_at)?;
        if ends_at <= starts_at {
            return Err(ApiError::invalid("ends_at must be after starts_at"));
        }
        if ends_at <= now {
            return Err(ApiError::invalid("ends_at must be in the future"));
        }
        let waiting_room = self.waiting_room.map(WaitingRoom::validate).transpose()?;
        Ok(Sale {
            id: Uuid::now_v7(),
            product_id,
            price: self.price,
            stock: self.stock,
            per_user_limit: self.per_user_limit,
            starts_at,
            ends_at,
            created_at: now,
            waiting_room,
        })
    }
}

fn parse_instant(field: &str, value: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .map_err(|_| {
            ApiError::invalid(format!(
                "{field} must be an RFC 3339 instant such as 2026-11-21T10:00:00Z"
            ))
        })
}

pub use flashmall_mesh::contract::rfc3339;

/// Parses a sale id from a path or request field; `None` when malformed.
pub fn parse_sale_id(raw: &str) -> Option<Uuid> {
    Uuid::try_parse(raw).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn new_sale() -> NewSale {
        NewSale {
            product_id: "p-1".into(),
            price: 1999,
            stock: 10,
            per_user_limit: 2,
            starts_at: "2026-01-01T00:00:00Z".into(),
            ends_at: "2026-01-02T00:00:00Z".into(),
            waiting_room: None,
        }
    }

    #[test]
    fn validates_fields() {
        let now = datetime!(2025-12-31 00:00 UTC);
        assert!(new_sale().into_sale(now).is_ok());
        for bad in [
            NewSale {
                stock: 0,
                ..new_sale()
            },
            NewSale {
                price: -1,
                ..new_sale()
            },
            NewSale {
                per_user_limit: 11,
                ..new_sale()
            },
            NewSale {
                ends_at: "2025-12-01T00:00:00Z".into(),
                ..new_sale()
            },
            NewSale {
                starts_at: "yesterday".into(),
                ..new_sale()
            },
            NewSale {
                product_id: " ".into(),
                ..new_sale()
            },
        ] {
            assert!(bad.into_sale(now).is_err());
        }
    }

    #[test]
    fn a_waiting_room_is_defaulted_and_validated() {
        let now = datetime!(2025-12-31 00:00 UTC);
        let with = |json: &str| NewSale {
            waiting_room: Some(serde_json::from_str(json).unwrap()),
            ..new_sale()
        };
        let sale = with("{}").into_sale(now).unwrap();
        assert_eq!(
            sale.waiting_room,
            Some(WaitingRoom {
                admit_per_second: 100,
                admission_seconds: 120,
                max_queue: 1_000_000
            })
        );
        let tuned = with(r#"{"admit_per_second": 5, "admission_seconds": 30}"#);
        assert_eq!(
            tuned
                .into_sale(now)
                .unwrap()
                .waiting_room
                .map(|r| r.admit_per_second),
            Some(5)
        );
        for bad in [
            r#"{"admit_per_second": 0}"#,
            r#"{"admit_per_second": 100001}"#,
            r#"{"admission_seconds": 4}"#,
            r#"{"max_queue": 0}"#,
        ] {
            let error = with(bad).into_sale(now).unwrap_err();
            assert!(error.message.contains("waiting_room."), "{bad}: {error}");
        }
        assert!(
            serde_json::from_str::<WaitingRoom>(r#"{"rate": 5}"#).is_err(),
            "unknown fields are refused"
        );
        // A sale without one stores and reads as before.
        let plain = new_sale().into_sale(now).unwrap();
        let stored = serde_json::to_string(&plain).unwrap();
        assert!(!stored.contains("waiting_room"));
        assert_eq!(serde_json::from_str::<Sale>(&stored).unwrap(), plain);
    }

    #[test]
    fn status_follows_the_clock_and_stock() {
        let sale = new_sale()
            .into_sale(datetime!(2025-12-31 00:00 UTC))
            .unwrap();
        assert_eq!(
            sale.status(datetime!(2025-12-31 12:00 UTC), 10),
            SaleStatus::Scheduled
        );
        assert_eq!(
            sale.status(datetime!(2026-01-01 12:00 UTC), 10),
            SaleStatus::Open
        );
        assert_eq!(
            sale.status(datetime!(2026-01-01 12:00 UTC), 0),
            SaleStatus::SoldOut
        );
        assert_eq!(
            sale.status(datetime!(2026-01-02 00:00 UTC), 3),
            SaleStatus::Closed
        );
    }
}
