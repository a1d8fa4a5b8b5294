//! Where a sale's waiting room lives: in Redis, shared by every edge
//! replica (each step one script, so replicas never see half of one), or in
//! this process (one replica, `flashmall up` without Redis). Both keep the
//! same model:
//!
//! - `members`: each buyer who joined, with the instant they joined (one
//!   place per buyer; the room holds at most `max_queue`).
//! - Before the opening, joiners are kept in arrival order (`pre`). At the
//!   opening the first replica to see it draws a seed and orders them by
//!   the first 48 bits of `SHA-1(seed ":" user)`: a shuffle anyone holding
//!   the seed and the joiners can recompute. Later joiners queue behind
//!   them in arrival order (score `2^48 + n`).
//! - `admitted`: how many of the queue's head are admitted. It grows with
//!   the time the server measures (Redis's own clock), at the rate the
//!   callers pass, never past the queue's length, and not while the room
//!   is closed; however many replicas call `advance`, the total is the
//!   rate times the time.
//! - `grants`: the admitted places whose admission is open (granted less
//!   than the admission window ago, not used yet), with when. Admission
//!   never lets more be open than units remain, so every admitted buyer,
//!   fast client or slow, finds a unit while their window lasts (unless
//!   the units came back and were taken by a buyer already holding one).
//! - `used`: the purchase an admission was used for (its Idempotency-Key;
//!   its retries pass, another key does not).
//!
//! What a Redis that loses writes does here (a failover to a replica that
//! lagged, an AOF fsynced every second): a place, the seed or a part of
//! `admitted` may go back. Admission tokens are signed and carry their own
//! expiry, so one already handed out still works; a buyer may be told a
//! new place or be admitted a second time. None of that touches stock:
//! the engine's per-user limit and the ledger decide every unit.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use fred::prelude::*;

/// A store operation failed (Redis unreachable or answering nonsense).
#[derive(Debug, thiserror::Error)]
#[error("waiting room store: {0}")]
pub struct StoreError(pub String);

impl From<fred::error::Error> for StoreError {
    fn from(e: fred::error::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// A join's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    /// A new place; the instant it was taken (Unix ms).
    New(u64),
    /// The buyer already had a place, taken then.
    Again(u64),
    /// The room holds `max_queue` buyers already.
    Full,
}

/// The room as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The shuffle's seed, once the room has opened.
    pub seed: Option<String>,
    /// How many of the queue's head are admitted.
    pub admitted: u64,
    /// Admissions granted and neither used nor expired.
    pub open: u64,
    /// Buyers in the order (after the opening, everyone who joined).
    pub ordered: u64,
    /// Everyone who joined.
    pub joined: u64,
    /// No one is admitted while closed (the engine said sold out).
    pub closed: bool,
    /// Admitted by this call of `advance` (0 from other calls): summed
    /// over every replica, the admissions.
    pub granted: u64,
}

/// One buyer's place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// When they joined (Unix ms).
    pub joined_ms: u64,
    /// Their 0-based place in the order; `None` before the opening.
    pub rank: Option<u64>,
    /// When their admission was granted, while it is open.
    pub granted_ms: Option<u64>,
    /// Their admission was used: when it was granted (0: unknown).
    pub used_granted_ms: Option<u64>,
    pub progress: Progress,
}

/// Spending an admission on a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Used {
    /// The first purchase; how long the buyer waited from joining until
    /// admitted, when known.
    First { waited_ms: Option<u64> },
    /// A retry of that purchase (the same key).
    Again,
    /// Another purchase: refused.
    Other,
}

/// Admission's pace: how many per second, how many units remain to be
/// promised, how long an admission lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    pub per_second: f64,
    /// Units the engine has left (admissions open are held against them).
    pub remaining: i64,
    pub window_ms: u64,
}

#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Gives `user` a place in `sale`'s room (the same one again).
    async fn join(
        &self,
        sale: &str,
        user: &str,
        max_queue: u32,
        expire_at_ms: u64,
    ) -> Result<Joined, StoreError>;

    /// Opens the room: the first call draws the order of everyone who
    /// joined before (with `seed`); later calls change nothing. Returns
    /// the seed in force.
    async fn open(&self, sale: &str, seed: &str, expire_at_ms: u64) -> Result<String, StoreError>;

    /// `user`'s place, or `None` when they never joined.
    async fn place(&self, sale: &str, user: &str) -> Result<Option<Place>, StoreError>;

    /// Expires admissions past their window, then admits more of the head
    /// at `pace.per_second` for the time since the last call: none while
    /// closed or before the opening, and never more open admissions than
    /// units remain.
    async fn advance(
        &self,
        sale: &str,
        pace: Pace,
        expire_at_ms: u64,
    ) -> Result<Progress, StoreError>;

    /// Closes (sold out) or reopens (units came back) admission.
    async fn set_closed(&self, sale: &str, closed: bool) -> Result<(), StoreError>;

    /// Spends `user`'s admission on the purchase with `key`.
    async fn use_admission(
        &self,
        sale: &str,
        user: &str,
        key: &str,
        expire_at_ms: u64,
    ) -> Result<Used, StoreError>;
}

/// The order score of a buyer who joined before the opening.
pub fn shuffled_score(seed: &str, user: &str) -> u64 {
    let digest = sha1_smol::Sha1::from(format!("{seed}:{user}"))
        .digest()
        .bytes();
    digest[..6]
        .iter()
        .fold(0u64, |score, b| (score << 8) | u64::from(*b))
}

fn now_ms() -> u64 {
    crate::state::now_ms()
}

// ---------------------------------------------------------------- Redis

/// KEYS: members, pre, order, state. ARGV: user, max_queue, expire_at_ms.
/// Returns {1, joined_ms} new, {0, joined_ms} again, {-1, 0} full.
const JOIN: &str = r#"
local joined = redis.call('HGET', KEYS[1], ARGV[1])
if joined then return {0, joined} end
if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[2]) then return {-1, '0'} end
local t = redis.call('TIME')
local now_ms = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('HSET', KEYS[1], ARGV[1], now_ms)
if redis.call('HEXISTS', KEYS[4], 'seed') == 1 then
  local n = redis.call('HINCRBY', KEYS[4], 'seq', 1)
  redis.call('ZADD', KEYS[3], string.format('%.0f', 281474976710656 + n), ARGV[1])
else
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], ARGV[3]) end
return {1, now_ms}
"#;

/// KEYS: pre, order, state. ARGV: seed, expire_at_ms. Returns the seed in force.
const OPEN: &str = r#"
local seed = redis.call('HGET', KEYS[3], 'seed')
if seed then return seed end
local t = redis.call('TIME')
-- Admission counts from the opening on.
redis.call('HSET', KEYS[3], 'seed', ARGV[1], 'credit', '0',
  'last_us', string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2])))
local users = redis.call('LRANGE', KEYS[1], 0, -1)
for _, u in ipairs(users) do
  local score = tonumber(string.sub(redis.sha1hex(ARGV[1] .. ':' .. u), 1, 12), 16)
  redis.call('ZADD', KEYS[2], string.format('%.0f', score), u)
end
for i = 1, 3 do redis.call('PEXPIREAT', KEYS[i], ARGV[2]) end
return ARGV[1]
"#;

/// KEYS: members, order, state, grants, used. ARGV: user. Returns {} when
/// not joined, else {joined_ms, rank or -1, grant ms or '', used or '',
/// seed or '', admitted, open, ordered, joined, closed}.
const PLACE: &str = r#"
local joined = redis.call('HGET', KEYS[1], ARGV[1])
if not joined then return {} end
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
local grant = ''
if rank then grant = redis.call('ZSCORE', KEYS[4], tostring(rank)) or '' end
local st = redis.call('HMGET', KEYS[3], 'seed', 'admitted', 'closed')
return {joined, tostring(rank or -1), grant, redis.call('HGET', KEYS[5], ARGV[1]) or '',
  st[1] or '', st[2] or '0', tostring(redis.call('ZCARD', KEYS[4])),
  tostring(redis.call('ZCARD', KEYS[2])), tostring(redis.call('HLEN', KEYS[1])), st[3] or '0'}
"#;

/// KEYS: members, order, state, grants. ARGV: per_second, remaining,
/// window_ms, expire_at_ms. Returns {seed or '', admitted, open, ordered,
/// joined, closed, admitted by this call}.
const ADVANCE: &str = r#"
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%.0f', now_ms - tonumber(ARGV[3])))
local open = redis.call('ZCARD', KEYS[4])
local st = redis.call('HMGET', KEYS[3], 'seed', 'admitted', 'credit', 'last_us', 'closed')
local admitted = tonumber(st[2] or '0')
local credit = tonumber(st[3] or '0')
local last = tonumber(st[4] or now_us)
local ordered = redis.call('ZCARD', KEYS[2])
local n = 0
if st[1] and st[5] ~= '1' then
  credit = credit + math.max(now_us - last, 0) * tonumber(ARGV[1]) / 1000000
  local whole = math.floor(credit)
  n = math.min(whole, math.max(tonumber(ARGV[2]) - open, 0), ordered - admitted)
  for p = admitted, admitted + n - 1 do
    redis.call('ZADD', KEYS[4], string.format('%.0f', now_ms), string.format('%.0f', p))
  end
  admitted = admitted + n
  open = open + n
  if n < whole then credit = 0 else credit = credit - whole end
else
  credit = 0
end
redis.call('HSET', KEYS[3], 'admitted', string.format('%.0f', admitted), 'credit', tostring(credit),
  'last_us', string.format('%.0f', now_us))
redis.call('PEXPIREAT', KEYS[3], ARGV[4])
redis.call('PEXPIREAT', KEYS[4], ARGV[4])
return {st[1] or '', string.format('%.0f', admitted), tostring(open), tostring(ordered),
  tostring(redis.call('HLEN', KEYS[1])), st[5] or '0', string.format('%.0f', n)}
"#;

/// KEYS: used, order, grants, members. ARGV: user, key, expire_at_ms.
/// Returns {2, grant ms or '', joined ms or ''} for the first use,
/// {1} for the same key again, {0} for another key.
const USE: &str = r#"
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local sep = string.find(old, '|', 1, true)
  if string.sub(old, sep + 1) == ARGV[2] then return {1} end
  return {0}
end
local rank = redis.call('ZRANK', KEYS[2], ARGV[1])
local grant = ''
if rank then
  grant = redis.call('ZSCORE', KEYS[3], tostring(rank)) or ''
  redis.call('ZREM', KEYS[3], tostring(rank))
end
redis.call('HSET', KEYS[1], ARGV[1], grant .. '|' .. ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return {2, grant, redis.call('HGET', KEYS[4], ARGV[1]) or ''}
"#;

/// A room's keys: one hash tag per sale (one Redis Cluster slot).
struct Keys {
    members: String,
    pre: String,
    order: String,
    state: String,
    grants: String,
    used: String,
}

impl Keys {
    fn of(sale: &str) -> Keys {
        let key = |part: &str| format!("fm:edge:wr:{{{sale}}}:{part}");
        Keys {
            members: key("members"),
            pre: key("pre"),
            order: key("order"),
            state: key("state"),
            grants: key("grants"),
            used: key("used"),
        }
    }
}

/// The waiting rooms in Redis.
pub struct RedisQueueStore {
    client: Client,
}

impl RedisQueueStore {
    pub fn new(client: Client) -> RedisQueueStore {
        RedisQueueStore { client }
    }

    async fn script(
        &self,
        script: &str,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self.client.eval(script, keys, args).await?)
    }
}

fn number(field: &str, value: Option<&String>) -> Result<u64, StoreError> {
    value
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 0.0)
        .map(|v| v as u64)
        .ok_or_else(|| StoreError(format!("unreadable {field}: {value:?}")))
}

/// A Progress from {seed, admitted, open, ordered, joined, closed[,
/// granted]}.
fn progress(fields: &[String]) -> Result<Progress, StoreError> {
    let seed = fields.first().map(String::as_str).unwrap_or("");
    Ok(Progress {
        seed: (!seed.is_empty()).then(|| seed.to_owned()),
        admitted: number("admitted", fields.get(1))?,
        open: number("open", fields.get(2))?,
        ordered: number("ordered", fields.get(3))?,
        joined: number("joined", fields.get(4))?,
        closed: fields.get(5).is_some_and(|c| c == "1"),
        granted: maybe(fields.get(6)).unwrap_or(0),
    })
}

/// An optional number ('' for none).
fn maybe(value: Option<&String>) -> Option<u64> {
    value
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| *v >= 0.0)
        .map(|v| v as u64)
}

#[async_trait]
impl QueueStore for RedisQueueStore {
    async fn join(
        &self,
        sale: &str,
        user: &str,
        max_queue: u32,
        expire_at_ms: u64,
    ) -> Result<Joined, StoreError> {
        let k = Keys::of(sale);
        let out = self
            .script(
                JOIN,
                vec![k.members, k.pre, k.order, k.state],
                vec![
                    user.to_owned(),
                    max_queue.to_string(),
                    expire_at_ms.to_string(),
                ],
            )
            .await?;
        let at = number("joined_ms", out.get(1))?;
        match out.first().map(String::as_str) {
            Some("1") => Ok(Joined::New(at)),
            Some("0") => Ok(Joined::Again(at)),
            Some("-1") => Ok(Joined::Full),
            other => Err(StoreError(format!("unexpected join answer {other:?}"))),
        }
    }

    async fn open(&self, sale: &str, seed: &str, expire_at_ms: u64) -> Result<String, StoreError> {
        let k = Keys::of(sale);
        let out: String = self
            .client
            .eval(
                OPEN,
                vec![k.pre, k.order, k.state],
                vec![seed.to_owned(), expire_at_ms.to_string()],
            )
            .await?;
        Ok(out)
    }

    async fn place(&self, sale: &str, user: &str) -> Result<Option<Place>, StoreError> {
        let k = Keys::of(sale);
        let out = self
            .script(
                PLACE,
                vec![k.members, k.order, k.state, k.grants, k.used],
                vec![user.to_owned()],
            )
            .await?;
        if out.is_empty() {
            return Ok(None);
        }
        let rank = out
            .get(1)
            .and_then(|r| r.parse::<i64>().ok())
            .ok_or_else(|| StoreError("unreadable rank".into()))?;
        let used = out.get(3).filter(|u| !u.is_empty());
        Ok(Some(Place {
            joined_ms: number("joined_ms", out.first())?,
            rank: u64::try_from(rank).ok(),
            granted_ms: maybe(out.get(2)),
            used_granted_ms: used.map(|u| {
                u.split('|')
                    .next()
                    .and_then(|g| g.parse::<f64>().ok())
                    .map_or(0, |g| g as u64)
            }),
            progress: progress(&out[4..])?,
        }))
    }

    async fn advance(
        &self,
        sale: &str,
        pace: Pace,
        expire_at_ms: u64,
    ) -> Result<Progress, StoreError> {
        let k = Keys::of(sale);
        let out = self
            .script(
                ADVANCE,
                vec![k.members, k.order, k.state, k.grants],
                vec![
                    format!("{:.6}", pace.per_second),
                    pace.remaining.to_string(),
                    pace.window_ms.to_string(),
                    expire_at_ms.to_string(),
                ],
            )
            .await?;
        progress(&out)
    }

    async fn set_closed(&self, sale: &str, closed: bool) -> Result<(), StoreError> {
        let k = Keys::of(sale);
        let _: i64 = self
            .client
            .hset(k.state, ("closed", if closed { "1" } else { "0" }))
            .await?;
        Ok(())
    }

    async fn use_admission(
        &self,
        sale: &str,
        user: &str,
        key: &str,
        expire_at_ms: u64,
    ) -> Result<Used, StoreError> {
        let k = Keys::of(sale);
        let out = self
            .script(
                USE,
                vec![k.used, k.order, k.grants, k.members],
                vec![user.to_owned(), key.to_owned(), expire_at_ms.to_string()],
            )
            .await?;
        match out.first().map(String::as_str) {
            Some("2") => Ok(Used::First {
                waited_ms: maybe(out.get(1))
                    .zip(maybe(out.get(2)))
                    .map(|(granted, joined)| granted.saturating_sub(joined)),
            }),
            Some("1") => Ok(Used::Again),
            Some("0") => Ok(Used::Other),
            other => Err(StoreError(format!("unexpected use answer {other:?}"))),
        }
    }
}

// ---------------------------------------------------------------- local

#[derive(Default)]
struct Room {
    members: HashMap<String, u64>,
    pre: Vec<String>,
    /// The order after the opening, as a list (joins only append).
    order: Vec<String>,
    rank: HashMap<String, u64>,
    seed: Option<String>,
    admitted: u64,
    credit: f64,
    last: Option<std::time::Instant>,
    closed: bool,
    /// Open admissions: place -> granted (ms).
    grants: std::collections::BTreeMap<u64, u64>,
    /// Used admissions: user -> (granted ms, key).
    used: HashMap<String, (u64, String)>,
    /// Admitted by the last `advance`.
    granted: u64,
    expire_at_ms: u64,
}

impl Room {
    fn progress(&self) -> Progress {
        Progress {
            seed: self.seed.clone(),
            admitted: self.admitted,
            open: self.grants.len() as u64,
            ordered: self.order.len() as u64,
            joined: self.members.len() as u64,
            closed: self.closed,
            granted: 0,
        }
    }

    fn push(&mut self, user: String) {
        self.rank.insert(user.clone(), self.order.len() as u64);
        self.order.push(user);
    }
}

/// The waiting rooms of this process (one replica).
#[derive(Default)]
pub struct LocalQueueStore {
    rooms: Mutex<HashMap<String, Room>>,
}

impl LocalQueueStore {
    fn with<T>(&self, sale: &str, expire_at_ms: u64, f: impl FnOnce(&mut Room) -> T) -> T {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        rooms.retain(|_, room| room.expire_at_ms == 0 || room.expire_at_ms > now);
        let room = rooms.entry(sale.to_owned()).or_default();
        room.expire_at_ms = room.expire_at_ms.max(expire_at_ms);
        f(room)
    }
}

#[async_trait]
impl QueueStore for LocalQueueStore {
    async fn join(
        &self,
        sale: &str,
        user: &str,
        max_queue: u32,
        expire_at_ms: u64,
    ) -> Result<Joined, StoreError> {
        Ok(self.with(sale, expire_at_ms, |room| {
            if let Some(at) = room.members.get(user) {
                return Joined::Again(*at);
            }
            if room.members.len() >= max_queue as usize {
                return Joined::Full;
            }
            let at = now_ms();
            room.members.insert(user.to_owned(), at);
            if room.seed.is_some() {
                room.push(user.to_owned());
            } else {
                room.pre.push(user.to_owned());
            }
            Joined::New(at)
        }))
    }

    async fn open(&self, sale: &str, seed: &str, expire_at_ms: u64) -> Result<String, StoreError> {
        Ok(self.with(sale, expire_at_ms, |room| {
            if let Some(seed) = &room.seed {
                return seed.clone();
            }
            room.seed = Some(seed.to_owned());
            room.last = Some(std::time::Instant::now());
            room.credit = 0.0;
            let mut pre: Vec<(u64, String)> = std::mem::take(&mut room.pre)
                .into_iter()
                .map(|u| (shuffled_score(seed, &u), u))
                .collect();
            pre.sort();
            for (_, user) in pre {
                room.push(user);
            }
            seed.to_owned()
        }))
    }

    async fn place(&self, sale: &str, user: &str) -> Result<Option<Place>, StoreError> {
        Ok(self.with(sale, 0, |room| {
            room.members.get(user).map(|joined| {
                let rank = room.rank.get(user).copied();
                Place {
                    joined_ms: *joined,
                    rank,
                    granted_ms: rank.and_then(|r| room.grants.get(&r).copied()),
                    used_granted_ms: room.used.get(user).map(|(granted, _)| *granted),
                    progress: room.progress(),
                }
            })
        }))
    }

    async fn advance(
        &self,
        sale: &str,
        pace: Pace,
        expire_at_ms: u64,
    ) -> Result<Progress, StoreError> {
        Ok(self.with(sale, expire_at_ms, |room| {
            let now = std::time::Instant::now();
            let now_ms = now_ms();
            room.grants
                .retain(|_, granted| *granted + pace.window_ms > now_ms);
            let elapsed = room.last.map(|l| now - l).unwrap_or_default();
            room.last = Some(now);
            let ordered = room.order.len() as u64;
            if room.seed.is_some() && !room.closed {
                room.credit += elapsed.as_secs_f64() * pace.per_second;
                let whole = room.credit.floor() as u64;
                let unpromised = u64::try_from(pace.remaining)
                    .unwrap_or(0)
                    .saturating_sub(room.grants.len() as u64);
                let n = whole.min(unpromised).min(ordered - room.admitted);
                for place in room.admitted..room.admitted + n {
                    room.grants.insert(place, now_ms);
                }
                room.admitted += n;
                room.granted = n;
                if n < whole {
                    room.credit = 0.0;
                } else {
                    room.credit -= whole as f64;
                }
            } else {
                room.credit = 0.0;
                room.granted = 0;
            }
            let mut progress = room.progress();
            progress.granted = room.granted;
            progress
        }))
    }

    async fn set_closed(&self, sale: &str, closed: bool) -> Result<(), StoreError> {
        self.with(sale, 0, |room| room.closed = closed);
        Ok(())
    }

    async fn use_admission(
        &self,
        sale: &str,
        user: &str,
        key: &str,
        expire_at_ms: u64,
    ) -> Result<Used, StoreError> {
        Ok(self.with(sale, expire_at_ms, |room| {
            if let Some((_, used)) = room.used.get(user) {
                return if used == key {
                    Used::Again
                } else {
                    Used::Other
                };
            }
            let granted = room
                .rank
                .get(user)
                .and_then(|rank| room.grants.remove(rank));
            room.used
                .insert(user.to_owned(), (granted.unwrap_or(0), key.to_owned()));
            Used::First {
                waited_ms: granted
                    .zip(room.members.get(user))
                    .map(|(granted, joined)| granted.saturating_sub(*joined)),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pre_opening_joiners_are_shuffled_then_later_ones_queue_in_order(
        store: &dyn QueueStore,
    ) {
        let sale = uuid::Uuid::now_v7().to_string();
        let far = now_ms() + 3_600_000;
        let early: Vec<String> = (0..50).map(|i| format!("early-{i:02}")).collect();
        for user in &early {
            assert!(matches!(
                store.join(&sale, user, 100, far).await.unwrap(),
                Joined::New(_)
            ));
        }
        assert!(matches!(
            store.join(&sale, "early-00", 100, far).await.unwrap(),
            Joined::Again(_)
        ));
        let before = store.place(&sale, "early-07").await.unwrap().unwrap();
        assert_eq!(before.rank, None, "no place before the opening");
        assert_eq!(store.open(&sale, "seed-1", far).await.unwrap(), "seed-1");
        assert_eq!(
            store.open(&sale, "seed-2", far).await.unwrap(),
            "seed-1",
            "the first opening's seed stays"
        );
        for late in ["late-a", "late-b", "late-c"] {
            store.join(&sale, late, 100, far).await.unwrap();
        }
        let mut ranked = Vec::new();
        for user in early
            .iter()
            .chain(&["late-a".into(), "late-b".into(), "late-c".into()])
        {
            let place = store.place(&sale, user).await.unwrap().unwrap();
            ranked.push((place.rank.unwrap(), user.clone()));
        }
        ranked.sort();
        let order: Vec<&str> = ranked.iter().map(|(_, u)| u.as_str()).collect();
        let mut expected: Vec<(u64, &str)> = early
            .iter()
            .map(|u| (shuffled_score("seed-1", u), u.as_str()))
            .collect();
        expected.sort();
        let mut expected: Vec<&str> = expected.into_iter().map(|(_, u)| u).collect();
        expected.extend(["late-a", "late-b", "late-c"]);
        assert_eq!(order, expected, "seeded shuffle, then arrival order");
        assert_ne!(
            &order[..50],
            early
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            "the early joiners are not in arrival order"
        );
        assert!(store.join(&sale, "one-too-many", 53, far).await.unwrap() == Joined::Full);
        // Admission: nothing while closed; never more open than units
        // remain; never past the queue.
        let pace = |remaining| Pace {
            per_second: 1_000_000.0,
            remaining,
            window_ms: 60_000,
        };
        store.set_closed(&sale, true).await.unwrap();
        store.advance(&sale, pace(100), far).await.unwrap();
        let closed = store.advance(&sale, pace(100), far).await.unwrap();
        assert_eq!(closed.admitted, 0);
        assert!(closed.closed);
        store.set_closed(&sale, false).await.unwrap();
        let mut progress = store.advance(&sale, pace(10), far).await.unwrap();
        while progress.admitted < 10 {
            progress = store.advance(&sale, pace(10), far).await.unwrap();
        }
        for _ in 0..3 {
            progress = store.advance(&sale, pace(10), far).await.unwrap();
        }
        assert_eq!(
            (progress.admitted, progress.open),
            (10, 10),
            "10 units, 10 open admissions"
        );
        let head = &order[0];
        let place = store.place(&sale, head).await.unwrap().unwrap();
        assert!(place.granted_ms.is_some(), "{place:?}");
        assert!(matches!(
            store.use_admission(&sale, head, "k1", far).await.unwrap(),
            Used::First { waited_ms: Some(_) }
        ));
        assert_eq!(
            store.use_admission(&sale, head, "k1", far).await.unwrap(),
            Used::Again
        );
        assert_eq!(
            store.use_admission(&sale, head, "k2", far).await.unwrap(),
            Used::Other
        );
        let place = store.place(&sale, head).await.unwrap().unwrap();
        assert_eq!(place.granted_ms, None);
        assert!(place.used_granted_ms.is_some());
        // The used admission bought a unit: 9 remain, 9 open, no more.
        let progress = store.advance(&sale, pace(9), far).await.unwrap();
        assert_eq!((progress.admitted, progress.open), (10, 9));
        // A unit comes back: the next in line is admitted.
        let mut progress = store.advance(&sale, pace(10), far).await.unwrap();
        while progress.admitted < 11 {
            progress = store.advance(&sale, pace(10), far).await.unwrap();
        }
        assert_eq!((progress.admitted, progress.open), (11, 10));
        // Expired admissions free their units for the next in line.
        let expiring = Pace {
            window_ms: 0,
            ..pace(100)
        };
        let mut progress = store.advance(&sale, expiring, far).await.unwrap();
        let mut granted = 11 + progress.granted;
        while progress.admitted < 53 {
            progress = store.advance(&sale, expiring, far).await.unwrap();
            granted += progress.granted;
        }
        assert_eq!(progress.ordered, 53, "never past the queue");
        assert_eq!(granted, 53, "each call counts what it admitted");
    }

    #[tokio::test]
    async fn the_local_store_keeps_the_model() {
        pre_opening_joiners_are_shuffled_then_later_ones_queue_in_order(
            &LocalQueueStore::default(),
        )
        .await;
    }

    #[tokio::test]
    async fn the_redis_store_keeps_the_model() {
        let redis = flashmall_testing::RedisServer::start();
        let client = Builder::from_config(Config::from_url(&redis.url()).unwrap())
            .build()
            .unwrap();
        client.init().await.unwrap();
        pre_opening_joiners_are_shuffled_then_later_ones_queue_in_order(&RedisQueueStore::new(
            client,
        ))
        .await;
    }
}
