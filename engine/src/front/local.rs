//! The in-process stock front: the Redis front's semantics in memory, for
//! one process without Redis (`flashmall up` with no `--redis`). Nothing
//! here survives a restart; reconcile rebuilds it from the ledger.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use uuid::Uuid;

use super::{
    FrontCounts, FrontError, IdemRecord, Rebuild, ReserveCall, ReserveOutcome, ReturnOutcome,
    StockFront, StreamEntry, Suspended, idempotency_field,
};

#[derive(Default)]
struct SaleFront {
    stock: Option<i64>,
    pending: i64,
    buyers: HashMap<String, i64>,
    idempotency: HashMap<String, IdemRecord>,
    returned: HashSet<Uuid>,
    stream: BTreeMap<u64, StreamEntry>,
    next_seq: u64,
    group: Option<Group>,
    rebuild_token: Option<(Uuid, Instant)>,
}

/// The settlement consumer group: delivery cursor and pending entries.
#[derive(Default)]
struct Group {
    last_delivered: u64,
    pending: BTreeMap<u64, (String, Instant)>,
}

/// The in-process stock front.
#[derive(Default)]
pub struct LocalFront {
    // The outer lock only finds a sale; each sale has its own lock, so
    // sales never wait on each other.
    sales: RwLock<HashMap<Uuid, Arc<Mutex<SaleFront>>>>,
}

fn seq_of(entry_id: &str) -> Option<u64> {
    entry_id.strip_suffix("-0")?.parse().ok()
}

impl LocalFront {
    pub fn new() -> Self {
        Self::default()
    }

    fn sale(&self, id: Uuid) -> Arc<Mutex<SaleFront>> {
        if let Some(s) = self.sales.read().ok().and_then(|m| m.get(&id).cloned()) {
            return s;
        }
        let mut map = self.sales.write().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry(id).or_default())
    }

    fn lock(sale: &Mutex<SaleFront>) -> MutexGuard<'_, SaleFront> {
        sale.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl StockFront for LocalFront {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn warm_up(&self) -> Result<(), FrontError> {
        Ok(())
    }

    async fn ping(&self) -> Result<(), FrontError> {
        Ok(())
    }

    async fn reserve(&self, call: &ReserveCall<'_>) -> Result<ReserveOutcome, FrontError> {
        let sale = self.sale(call.sale_id);
        let mut f = Self::lock(&sale);
        let field = idempotency_field(call.user_id, call.idempotency_key);
        if let Some(record) = f.idempotency.get(&field) {
            return Ok(ReserveOutcome::Replayed(*record));
        }
        let Some(stock) = f.stock else {
            let rebuilding = f
                .rebuild_token
                .is_some_and(|(_, until)| Instant::now() < until);
            return Ok(if rebuilding {
                ReserveOutcome::Rebuilding
            } else {
                ReserveOutcome::NotReady
            });
        };
        let held = f.buyers.get(call.user_id).copied().unwrap_or(0);
        if held + call.quantity > call.per_user_limit {
            return Ok(ReserveOutcome::LimitExceeded { held });
        }
        if stock < call.quantity {
            return Ok(ReserveOutcome::SoldOut {
                remaining: stock,
                idempotency_records: f.idempotency.len() as i64,
            });
        }
        let remaining = stock - call.quantity;
        f.stock = Some(remaining);
        f.pending += call.quantity;
        *f.buyers.entry(call.user_id.to_owned()).or_insert(0) += call.quantity;
        f.idempotency.insert(
            field,
            IdemRecord {
                reservation_id: call.reservation_id,
                quantity: call.quantity,
            },
        );
        f.next_seq += 1;
        let seq = f.next_seq;
        f.stream.insert(
            seq,
            StreamEntry {
                entry_id: format!("{seq}-0"),
                reservation_id: call.reservation_id,
                sale_id: call.sale_id,
                user_id: call.user_id.to_owned(),
                quantity: call.quantity,
                idempotency_key: call.idempotency_key.to_owned(),
                created_at_ms: call.now_ms,
                traceparent: None,
            },
        );
        Ok(ReserveOutcome::Reserved { remaining })
    }

    async fn give_back(
        &self,
        sale_id: Uuid,
        reservation_id: Uuid,
        user_id: &str,
        quantity: i64,
    ) -> Result<ReturnOutcome, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        let Some(stock) = f.stock else {
            return Ok(ReturnOutcome::NotReady);
        };
        if !f.returned.insert(reservation_id) {
            return Ok(ReturnOutcome::AlreadyReturned);
        }
        f.stock = Some(stock + quantity);
        if let Some(held) = f.buyers.get_mut(user_id) {
            *held = (*held - quantity).max(0);
        }
        Ok(ReturnOutcome::Returned)
    }

    async fn counts(&self, sale_id: Uuid) -> Result<Option<FrontCounts>, FrontError> {
        let sale = self.sale(sale_id);
        let f = Self::lock(&sale);
        Ok(f.stock.map(|remaining| FrontCounts {
            remaining,
            pending: f.pending,
        }))
    }

    async fn idempotency_record(
        &self,
        sale_id: Uuid,
        field: &str,
    ) -> Result<Option<IdemRecord>, FrontError> {
        let sale = self.sale(sale_id);
        let f = Self::lock(&sale);
        Ok(f.idempotency.get(field).copied())
    }

    async fn idempotency_records(
        &self,
        sale_id: Uuid,
    ) -> Result<HashMap<String, IdemRecord>, FrontError> {
        let sale = self.sale(sale_id);
        let f = Self::lock(&sale);
        Ok(f.idempotency.clone())
    }

    async fn ensure_stream(&self, sale_id: Uuid) -> Result<(), FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        f.group.get_or_insert_with(Group::default);
        Ok(())
    }

    async fn read_new(
        &self,
        sale_id: Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        let f = &mut *f;
        let group = Self::group_of_ref(&mut f.group)?;
        let now = Instant::now();
        let entries: Vec<StreamEntry> = f
            .stream
            .range(group.last_delivered + 1..)
            .take(count)
            .map(|(_, e)| e.clone())
            .collect();
        for e in &entries {
            let seq = seq_of(&e.entry_id).unwrap_or(0);
            group.last_delivered = group.last_delivered.max(seq);
            group.pending.insert(seq, (consumer.to_owned(), now));
        }
        Ok(entries)
    }

    async fn read_own_pending(
        &self,
        sale_id: Uuid,
        consumer: &str,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        let f = &mut *f;
        let group = Self::group_of_ref(&mut f.group)?;
        let now = Instant::now();
        let mut out = Vec::new();
        for (seq, (owner, at)) in group.pending.iter_mut() {
            if out.len() >= count {
                break;
            }
            if owner == consumer
                && let Some(e) = f.stream.get(seq)
            {
                *at = now;
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    async fn claim_idle(
        &self,
        sale_id: Uuid,
        consumer: &str,
        min_idle: Duration,
        count: usize,
    ) -> Result<Vec<StreamEntry>, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        let f = &mut *f;
        let group = Self::group_of_ref(&mut f.group)?;
        let now = Instant::now();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (seq, (owner, at)) in group.pending.iter_mut() {
            if out.len() >= count {
                break;
            }
            if now.duration_since(*at) < min_idle {
                continue;
            }
            match f.stream.get(seq) {
                Some(e) => {
                    *owner = consumer.to_owned();
                    *at = now;
                    out.push(e.clone());
                }
                None => gone.push(*seq),
            }
        }
        for seq in gone {
            group.pending.remove(&seq);
        }
        Ok(out)
    }

    async fn ack(&self, sale_id: Uuid, entries: &[StreamEntry]) -> Result<(), FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        for e in entries {
            let Some(seq) = seq_of(&e.entry_id) else {
                continue;
            };
            let was_pending = Self::group_of_ref(&mut f.group)?
                .pending
                .remove(&seq)
                .is_some();
            if was_pending && f.stream.remove(&seq).is_some() {
                f.pending -= e.quantity;
            }
        }
        Ok(())
    }

    async fn backlog(&self, sale_id: Uuid) -> Result<u64, FrontError> {
        let sale = self.sale(sale_id);
        let f = Self::lock(&sale);
        Ok(f.stream.len() as u64)
    }

    async fn suspend_for(
        &self,
        sale_id: Uuid,
        lease: Duration,
    ) -> Result<Option<Suspended>, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        let now = Instant::now();
        if f.rebuild_token.is_some_and(|(_, until)| now < until) {
            return Ok(None);
        }
        let token = Uuid::now_v7();
        let counts = f.stock.take().map(|remaining| FrontCounts {
            remaining,
            pending: f.pending,
        });
        f.rebuild_token = Some((token, now + lease));
        Ok(Some(Suspended { token, counts }))
    }

    async fn given_back(&self, sale_id: Uuid, ids: &[Uuid]) -> Result<HashSet<Uuid>, FrontError> {
        let sale = self.sale(sale_id);
        let f = Self::lock(&sale);
        Ok(ids
            .iter()
            .filter(|id| f.returned.contains(id))
            .copied()
            .collect())
    }

    async fn renew(&self, sale_id: Uuid, token: Uuid, lease: Duration) -> Result<bool, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        let now = Instant::now();
        match f.rebuild_token {
            Some((held, until)) if held == token && now < until => {
                f.rebuild_token = Some((token, now + lease));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn abandon(&self, sale_id: Uuid, token: Uuid) -> Result<(), FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        if f.rebuild_token.map(|(t, _)| t) == Some(token) {
            f.rebuild_token = None;
        }
        Ok(())
    }

    async fn rebuild(
        &self,
        sale_id: Uuid,
        token: Uuid,
        state: &Rebuild,
    ) -> Result<bool, FrontError> {
        let sale = self.sale(sale_id);
        let mut f = Self::lock(&sale);
        if f.rebuild_token.map(|(t, _)| t) != Some(token) {
            return Ok(false);
        }
        f.rebuild_token = None;
        f.buyers = state.buyers.iter().cloned().collect();
        f.idempotency = state.idempotency.iter().cloned().collect();
        f.returned = state.returned.iter().copied().collect();
        f.pending = 0;
        f.group.get_or_insert_with(Group::default);
        f.stock = Some(state.remaining);
        Ok(true)
    }
}

impl LocalFront {
    fn group_of_ref(group: &mut Option<Group>) -> Result<&mut Group, FrontError> {
        group.as_mut().ok_or_else(|| {
            FrontError::Protocol("no settlement group for this sale's stream".into())
        })
    }
}
