//! The sold-out gate: once the engine announces a sale sold out, the edge
//! answers its purchases itself, with the engine's own 409 body, for
//! `sold_out_ttl`. Buyers who hold units of the sale still go through: one
//! of them may be retrying a purchase whose answer was lost, and only the
//! engine knows that answer. Every other buyer cannot hold a reservation
//! in the sale, so `sold_out` is exactly what the engine would say.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

struct Closed {
    until: Instant,
    holders: HashSet<String>,
}

/// Sales known sold out, with their holders.
pub struct Gate {
    ttl: Duration,
    /// Read by every purchase without a lock or a reference count's
    /// increment; replaced whole when a sale closes (rare).
    sales: ArcSwap<HashMap<String, Arc<Closed>>>,
    /// Sales whose holders are being fetched (one fetch at a time).
    fetching: std::sync::Mutex<HashSet<String>>,
}

/// Marks a holders fetch in flight; ends it when dropped.
pub struct Fetching<'a> {
    gate: &'a Gate,
    sale: String,
}

impl<'a> Fetching<'a> {
    pub fn new(gate: &'a Gate, sale: &str) -> Self {
        Fetching {
            gate,
            sale: sale.to_owned(),
        }
    }
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.gate.end_fetch(&self.sale);
    }
}

impl Gate {
    pub fn new(ttl: Duration) -> Gate {
        Gate {
            ttl,
            sales: ArcSwap::from_pointee(HashMap::new()),
            fetching: std::sync::Mutex::new(HashSet::new()),
        }
    }

    /// True when the edge answers this purchase itself.
    pub fn closed_for(&self, sale: &str, user: &str) -> bool {
        let sales = self.sales.load();
        let Some(entry) = sales.get(sale) else {
            return false;
        };
        Instant::now() < entry.until && !entry.holders.contains(user)
    }

    /// True when the gate needs the sale's holders (again).
    pub fn needs(&self, sale: &str) -> bool {
        self.sales
            .load()
            .get(sale)
            .is_none_or(|e| Instant::now() >= e.until)
    }

    /// Claims the fetch of a sale's holders; false while one runs.
    pub fn begin_fetch(&self, sale: &str) -> bool {
        self.fetching
            .lock()
            .map(|mut f| f.insert(sale.to_owned()))
            .unwrap_or(false)
    }

    pub fn end_fetch(&self, sale: &str) {
        if let Ok(mut f) = self.fetching.lock() {
            f.remove(sale);
        }
    }

    /// Closes the gate of `sale` for the TTL, letting `holders` through.
    pub fn close(&self, sale: &str, holders: HashSet<String>) {
        let entry = Arc::new(Closed {
            until: Instant::now() + self.ttl,
            holders,
        });
        self.sales.rcu(|sales| {
            let now = Instant::now();
            let mut sales: HashMap<_, _> = sales
                .iter()
                .filter(|(_, e)| now < e.until)
                .map(|(s, e)| (s.clone(), Arc::clone(e)))
                .collect();
            sales.insert(sale.to_owned(), Arc::clone(&entry));
            sales
        });
    }
}

/// The sale of a purchase path `/api/v1/sales/{id}/purchase`.
pub fn purchase_sale(path: &str) -> Option<&str> {
    let id = path
        .strip_prefix("/api/v1/sales/")?
        .strip_suffix("/purchase")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The sale of any `/api/v1/sales/{id}...` path.
pub fn sale_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v1/sales/")?;
    let id = rest.split('/').next()?;
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_pass_and_others_are_answered_until_the_ttl() {
        // A TTL no slow machine outlasts between the close and the checks,
        // and one already over (no sleep): pass or fail at any speed.
        let gate = Gate::new(Duration::from_secs(60));
        assert!(!gate.closed_for("s", "u"));
        assert!(gate.needs("s"));
        gate.close("s", HashSet::from(["holder".to_owned()]));
        assert!(gate.closed_for("s", "u"));
        assert!(!gate.closed_for("s", "holder"));
        assert!(!gate.needs("s"));
        let expired = Gate::new(Duration::ZERO);
        expired.close("s", HashSet::from(["holder".to_owned()]));
        assert!(
            !expired.closed_for("s", "u"),
            "re-checked with the engine after the TTL"
        );
    }

    #[test]
    fn closing_a_sale_keeps_the_others_closed_and_drops_the_expired() {
        let gate = Gate::new(Duration::from_secs(60));
        gate.close("a", HashSet::new());
        gate.close("b", HashSet::from(["holder".to_owned()]));
        assert!(gate.closed_for("a", "u"), "closing b left a closed");
        assert!(gate.closed_for("b", "u") && !gate.closed_for("b", "holder"));
        let short = Gate::new(Duration::ZERO);
        short.close("old", HashSet::new());
        short.close("new", HashSet::new());
        assert_eq!(short.sales.load().len(), 1, "an expired sale is dropped");
    }

    #[test]
    fn purchase_paths_name_their_sale() {
        assert_eq!(purchase_sale("/api/v1/sales/abc/purchase"), Some("abc"));
        assert_eq!(purchase_sale("/api/v1/sales/abc"), None);
        assert_eq!(purchase_sale("/api/v1/sales//purchase"), None);
        assert_eq!(sale_of("/api/v1/sales/abc/purchase"), Some("abc"));
    }
}
