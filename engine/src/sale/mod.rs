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
        Ok(Sale {
            id: Uuid::now_v7(),
            product_id,
            price: self.price,
            stock: self.stock,
            per_user_limit: self.per_user_limit,
            starts_at,
            ends_at,
            created_at: now,
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
