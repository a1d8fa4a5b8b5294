//! Edge state every replica enforces: the blacklist, the access rules and
//! revoked access tokens. Kept in an `EdgeStore` (in-process, or Redis
//! shared by all replicas), and enforced by all replicas within
//! `state_poll` (≤ 1 s) of a change made through any one:
//!
//! - the blacklist and the rules are small and change rarely: each replica
//!   polls their version and reloads a compiled snapshot when it moves;
//! - revocations (a logout ends a login family; see `Revocation`) come with
//!   every logout, so they are versioned apart and synced incrementally:
//!   each has a sequence number, and a replica reads only those after the
//!   last one it saw. Each lasts until the last token it revokes expires,
//!   and the store and every replica drop it then: a login/logout loop
//!   keeps at most the revocations of one token lifetime, and a refresh
//!   reads only what is new.
//!
//! Hot path: `View::current` is an `arc_swap` load (no lock, no reference
//! count written); `View::token_revoked` reads a count and, only while
//! revocations are held, takes a read lock for up to three map lookups.

mod redis;

pub use redis::RedisEdgeStore;

use flashmall_mesh::contract::{LOGIN_FAMILY_HEX, login_family as family_of};
pub use flashmall_mesh::now_ms;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use async_trait::async_trait;
use ipnet::IpNet;
use regex::Regex;
use serde::{Deserialize, Serialize};

/// One blacklist entry: a user or an address range, until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlacklistEntry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// One access rule: for callers holding `role` (`*`: anyone, `anonymous`:
/// no token), requests of `method` (`*`: any) whose path matches `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    pub role: String,
    pub effect: Effect,
    #[serde(default = "any")]
    pub method: String,
    pub path: String,
}

fn any() -> String {
    "*".into()
}

/// The blacklist and the access rules: what the versioned snapshot holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeState {
    pub blacklist: Vec<BlacklistEntry>,
    pub rules: Vec<AccessRule>,
}

/// Access tokens the edge refuses although they verify, until `until_ms`
/// (by then every token it covers has expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// `f:<family>` (every token of one login), `t:<jti>` (one token not
    /// issued by flashmall's auth service), or `u:<user id>` (every token
    /// of the user issued before `not_before_ms`).
    pub key: String,
    /// Tokens issued before this instant are refused; `None`: all of them.
    pub not_before_ms: Option<u64>,
    pub until_ms: u64,
}

/// When a token was issued, to the millisecond: a flashmall token's own
/// id (the second half of its `jti`) is a UUIDv7, whose first 48 bits are
/// its issue time in Unix ms, signed with the rest of the token. Any other
/// token counts as issued at the end of its `iat` second, so a login right
/// after a watermark is never refused (a token from another issuer in the
/// watermark's own second is not refused either).
pub fn issued_at_ms(jti: &str, iat_s: u64) -> u64 {
    let second = iat_s.saturating_mul(1000);
    family_of(jti)
        .and_then(|_| u64::from_str_radix(&jti[LOGIN_FAMILY_HEX..LOGIN_FAMILY_HEX + 12], 16).ok())
        .filter(|ms| (second..second.saturating_add(2000)).contains(ms))
        .unwrap_or(second.saturating_add(999))
}

impl Revocation {
    /// Ends the login a token belongs to: its whole family (every access
    /// token that login was issued), or the token alone when it has none.
    pub fn login(jti: &str, until_ms: u64) -> Revocation {
        let key = match family_of(jti) {
            Some(family) => format!("f:{family}"),
            None => format!("t:{jti}"),
        };
        Revocation {
            key,
            not_before_ms: None,
            until_ms,
        }
    }
}

/// A revocation as a replica holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Revoked {
    not_before_ms: Option<u64>,
    until_ms: u64,
}

impl Revoked {
    /// Merged with another revocation of the same key: the stricter wins.
    fn merge(self, other: Revoked) -> Revoked {
        Revoked {
            not_before_ms: self
                .not_before_ms
                .zip(other.not_before_ms)
                .map(|(a, b)| a.max(b)),
            until_ms: self.until_ms.max(other.until_ms),
        }
    }
}

/// A replica's live revocations, one map per kind of key (`Revocation::key`
/// without its `f:`/`t:`/`u:` prefix), so a request's lookup borrows its
/// own ids and allocates nothing.
#[derive(Default)]
struct Held {
    families: HashMap<String, Revoked>,
    tokens: HashMap<String, Revoked>,
    users: HashMap<String, Revoked>,
}

impl Held {
    fn add(&mut self, r: Revocation) {
        let (map, id) = match r.key.split_once(':') {
            Some(("f", id)) => (&mut self.families, id),
            Some(("t", id)) => (&mut self.tokens, id),
            Some(("u", id)) => (&mut self.users, id),
            _ => {
                tracing::warn!(key = %r.key, "ignoring a revocation of an unknown kind");
                return;
            }
        };
        let new = Revoked {
            not_before_ms: r.not_before_ms,
            until_ms: r.until_ms,
        };
        let merged = map.get(id).map_or(new, |old| old.merge(new));
        map.insert(id.to_owned(), merged);
    }

    fn drop_expired(&mut self, now_ms: u64) {
        for map in [&mut self.families, &mut self.tokens, &mut self.users] {
            map.retain(|_, r| r.until_ms > now_ms);
        }
    }

    fn len(&self) -> usize {
        self.families.len() + self.tokens.len() + self.users.len()
    }
}

/// Most revocations one read returns; a refresh reads until it has all.
pub const REVOCATIONS_PER_READ: usize = 1_000;

/// Why an edge store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (no connection, a timeout, an error
    /// reply): the call may succeed when tried again.
    #[error("the edge store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered with what this replica cannot read (a value
    /// written by hand or by an incompatible version): trying again does
    /// not help.
    #[error("the edge store holds unreadable data: {0}")]
    Corrupt(String),
}

/// Where the edge state lives.
#[async_trait]
pub trait EdgeStore: Send + Sync + 'static {
    /// The blacklist's and the rules' version: changes with every write of
    /// either (never with a revocation).
    async fn version(&self) -> Result<u64, StoreError>;
    async fn load(&self) -> Result<EdgeState, StoreError>;
    async fn add_blacklist(&self, entry: BlacklistEntry) -> Result<(), StoreError>;
    async fn remove_blacklist(&self, id: &str) -> Result<bool, StoreError>;
    async fn set_rules(&self, rules: Vec<AccessRule>) -> Result<(), StoreError>;
    /// Records a revocation (merged with one of the same key: the stricter
    /// wins) under a new sequence number, and drops expired ones.
    async fn revoke(&self, revocation: &Revocation, now_ms: u64) -> Result<(), StoreError>;
    /// The live revocations recorded after sequence number `after`, oldest
    /// first, at most `REVOCATIONS_PER_READ`, each with its number.
    async fn revocations_after(&self, after: u64) -> Result<Vec<(u64, Revocation)>, StoreError>;
}

/// The edge state in this process (one replica).
#[derive(Default)]
pub struct LocalEdgeStore {
    inner: Mutex<(u64, EdgeState)>,
    /// Revocations by key, with their sequence numbers; the last number.
    revocations: Mutex<(Numbered, u64)>,
}

/// Revocations by key, each with its sequence number.
type Numbered = HashMap<String, (u64, Revoked)>;

impl LocalEdgeStore {
    fn write<T>(&self, f: impl FnOnce(&mut EdgeState) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 += 1;
        f(&mut guard.1)
    }
}

#[async_trait]
impl EdgeStore for LocalEdgeStore {
    async fn version(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).0)
    }

    async fn load(&self) -> Result<EdgeState, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone())
    }

    async fn add_blacklist(&self, entry: BlacklistEntry) -> Result<(), StoreError> {
        self.write(|s| s.blacklist.push(entry));
        Ok(())
    }

    async fn remove_blacklist(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.write(|s| {
            let before = s.blacklist.len();
            s.blacklist.retain(|e| e.id != id);
            s.blacklist.len() != before
        }))
    }

    async fn set_rules(&self, rules: Vec<AccessRule>) -> Result<(), StoreError> {
        self.write(|s| s.rules = rules);
        Ok(())
    }

    async fn revoke(&self, revocation: &Revocation, now_ms: u64) -> Result<(), StoreError> {
        let mut guard = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        let (by_key, last) = &mut *guard;
        by_key.retain(|_, (_, r)| r.until_ms > now_ms);
        *last += 1;
        let new = Revoked {
            not_before_ms: revocation.not_before_ms,
            until_ms: revocation.until_ms,
        };
        let merged = by_key
            .get(&revocation.key)
            .map_or(new, |(_, old)| old.merge(new));
        by_key.insert(revocation.key.clone(), (*last, merged));
        Ok(())
    }

    async fn revocations_after(&self, after: u64) -> Result<Vec<(u64, Revocation)>, StoreError> {
        let guard = self.revocations.lock().unwrap_or_else(|p| p.into_inner());
        let mut found: Vec<(u64, Revocation)> = guard
            .0
            .iter()
            .filter(|(_, (seq, _))| *seq > after)
            .map(|(key, (seq, r))| {
                (
                    *seq,
                    Revocation {
                        key: key.clone(),
                        not_before_ms: r.not_before_ms,
                        until_ms: r.until_ms,
                    },
                )
            })
            .collect();
        found.sort_by_key(|(seq, _)| *seq);
        found.truncate(REVOCATIONS_PER_READ);
        Ok(found)
    }
}

/// An access rule ready to match.
struct CompiledRule {
    role: String,
    effect: Effect,
    method: String,
    path: Regex,
}

/// The compiled state a request is checked against.
#[derive(Default)]
pub struct Snapshot {
    users: HashMap<String, Option<u64>>,
    nets: Vec<(IpNet, Option<u64>)>,
    rules: Vec<CompiledRule>,
    pub state: EdgeState,
}

fn live(expires: Option<u64>, now_ms: u64) -> bool {
    expires.is_none_or(|e| e > now_ms)
}

impl Snapshot {
    pub fn compile(state: EdgeState) -> Result<Snapshot, String> {
        let mut snap = Snapshot::default();
        for e in &state.blacklist {
            if let Some(u) = &e.user_id {
                // Several entries for one user: the longest-lasting counts
                // (`None` never expires).
                let merged = match (snap.users.get(u), e.expires_at_ms) {
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(a)), Some(b)) => Some((*a).max(b)),
                    (None, b) => b,
                };
                snap.users.insert(u.clone(), merged);
            }
            if let Some(n) = e.cidr {
                snap.nets.push((n, e.expires_at_ms));
            }
        }
        snap.rules = compile_rules(&state.rules)?;
        snap.state = state;
        Ok(snap)
    }

    /// Why the user or address is blacklisted, if it is.
    pub fn blacklisted(&self, user: Option<&str>, ip: Option<IpAddr>, now_ms: u64) -> bool {
        if let Some(u) = user
            && let Some(expires) = self.users.get(u)
            && live(*expires, now_ms)
        {
            return true;
        }
        ip.is_some_and(|ip| {
            self.nets
                .iter()
                .any(|(n, exp)| live(*exp, now_ms) && n.contains(&ip))
        })
    }

    /// The first rule matching any of `roles` decides; none: allowed.
    pub fn allowed<'r>(
        &self,
        roles: impl Iterator<Item = &'r str> + Clone,
        method: &str,
        path: &str,
    ) -> bool {
        for rule in &self.rules {
            let role_matches = rule.role == "*" || roles.clone().any(|r| r == rule.role);
            let method_matches = rule.method == "*" || same_method(&rule.method, method);
            if role_matches && method_matches && rule.path.is_match(path) {
                return rule.effect == Effect::Allow;
            }
        }
        true
    }
}

/// True when a rule or limit for `configured` applies to a request of
/// `method`: `HEAD` is a `GET` without a body, and is served like one.
pub fn same_method(configured: &str, method: &str) -> bool {
    configured.eq_ignore_ascii_case(method)
        || (configured.eq_ignore_ascii_case("GET") && method.eq_ignore_ascii_case("HEAD"))
}

/// Largest compiled size of one rule's regex.
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Roles a rule may name.
pub const RULE_ROLES: [&str; 5] = ["*", "anonymous", "customer", "merchant", "admin"];

/// Checks and compiles access rules; the error names the bad rule.
fn compile_rules(rules: &[AccessRule]) -> Result<Vec<CompiledRule>, String> {
    rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            if !RULE_ROLES.contains(&r.role.as_str()) {
                return Err(format!(
                    "rule {i}: role must be one of {}",
                    RULE_ROLES.join(", ")
                ));
            }
            let method_ok = r.method == "*"
                || (!r.method.is_empty()
                    && r.method.len() <= 16
                    && r.method.bytes().all(|b| b.is_ascii_uppercase()));
            if !method_ok {
                return Err(format!(
                    "rule {i}: method must be * or an upper-case HTTP method"
                ));
            }
            let path = regex::RegexBuilder::new(&r.path)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("rule {i}: path is not a valid regular expression: {e}"))?;
            Ok(CompiledRule {
                role: r.role.clone(),
                effect: r.effect,
                method: r.method.clone(),
                path,
            })
        })
        .collect()
}

/// Validates rules without installing them.
pub fn check_rules(rules: &[AccessRule]) -> Result<(), String> {
    compile_rules(rules).map(|_| ())
}

/// A replica's view of the edge state: the store and the latest snapshot.
pub struct View {
    pub store: Arc<dyn EdgeStore>,
    /// One refresh at a time, so an older snapshot never replaces a newer;
    /// holds the last revocation sequence number read.
    refreshing: tokio::sync::Mutex<u64>,
    /// Read by every request without a lock or a reference count's
    /// increment: no cache line that every worker thread writes.
    current: ArcSwap<Snapshot>,
    version: Mutex<Option<u64>>,
    /// Live revocations.
    revoked: RwLock<Held>,
    /// How many revocations `revoked` holds, set under its write lock: a
    /// request reads this first and takes the lock only when some are held.
    revoked_count: std::sync::atomic::AtomicUsize,
    /// When expired revocations are next dropped (Unix ms).
    next_prune_ms: std::sync::atomic::AtomicU64,
    /// Snapshots compiled, and revocations read, since start.
    reloads: std::sync::atomic::AtomicU64,
    revocations_read: std::sync::atomic::AtomicU64,
    /// When a refresh last read the store successfully (Unix ms; 0: never).
    fresh_at_ms: std::sync::atomic::AtomicU64,
}

impl View {
    pub fn new(store: Arc<dyn EdgeStore>) -> Arc<View> {
        Arc::new(View {
            store,
            refreshing: tokio::sync::Mutex::new(0),
            current: ArcSwap::from_pointee(Snapshot::default()),
            version: Mutex::new(None),
            revoked: RwLock::new(Held::default()),
            revoked_count: std::sync::atomic::AtomicUsize::new(0),
            next_prune_ms: std::sync::atomic::AtomicU64::new(0),
            reloads: std::sync::atomic::AtomicU64::new(0),
            revocations_read: std::sync::atomic::AtomicU64::new(0),
            fresh_at_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How long ago a refresh last read the store successfully (`None`:
    /// never). Reads an atomic only: `/readyz` asks this, never the store.
    pub fn staleness(&self) -> Option<Duration> {
        match self.fresh_at_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(now_ms().saturating_sub(at))),
        }
    }

    /// Changes the live revocations, the one way they change: the count
    /// `token_revoked` reads first is stored under the same write lock.
    /// Returns how many are held.
    fn change_revoked(&self, change: impl FnOnce(&mut Held)) -> usize {
        let mut held = self.revoked.write().unwrap_or_else(|p| p.into_inner());
        change(&mut held);
        let len = held.len();
        self.revoked_count
            .store(len, std::sync::atomic::Ordering::Release);
        len
    }

    /// The latest snapshot. Hold it briefly (not across an `.await`): a
    /// guard is a borrowed slot of this thread's.
    pub fn current(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// True when a live revocation covers the token: its login family or
    /// its own id, or its user's tokens issued before a watermark.
    pub fn token_revoked(&self, jti: &str, user: &str, issued_at_s: u64, now_ms: u64) -> bool {
        if self
            .revoked_count
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            return false;
        }
        let Ok(held) = self.revoked.read() else {
            return false;
        };
        let issued_ms = issued_at_ms(jti, issued_at_s);
        let covers = |map: &HashMap<String, Revoked>, id: &str| {
            map.get(id).is_some_and(|r| {
                r.until_ms > now_ms && r.not_before_ms.is_none_or(|nb| issued_ms < nb)
            })
        };
        let by_login = match family_of(jti) {
            Some(family) => covers(&held.families, family),
            None => covers(&held.tokens, jti),
        };
        by_login || covers(&held.users, user)
    }

    /// Live revocations this replica holds.
    pub fn revocations(&self) -> usize {
        self.revoked_count
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Revocations read from the store since start (each once, when new).
    pub fn revocations_read(&self) -> u64 {
        self.revocations_read
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Blacklist-and-rules snapshots compiled since start.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reloads the snapshot if the store's version moved, and reads the
    /// revocations recorded since the last refresh.
    pub async fn refresh(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut last_revocation = self.refreshing.lock().await;
        let started = now_ms();
        let version = self.store.version().await?;
        if *self.version.lock().unwrap_or_else(|p| p.into_inner()) != Some(version) {
            let snapshot =
                Snapshot::compile(self.store.load().await?).map_err(StoreError::Corrupt)?;
            self.current.store(Arc::new(snapshot));
            *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
            self.reloads.fetch_add(1, Relaxed);
        }
        loop {
            let batch = self.store.revocations_after(*last_revocation).await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            let full = batch.len() >= REVOCATIONS_PER_READ;
            self.revocations_read.fetch_add(batch.len() as u64, Relaxed);
            self.change_revoked(|held| {
                for (_, r) in batch {
                    held.add(r);
                }
            });
            *last_revocation = last;
            if !full {
                break;
            }
        }
        if started >= self.next_prune_ms.load(Relaxed) {
            let held = self.change_revoked(|held| held.drop_expired(started));
            metrics::gauge!("flashmall_proxy_revocations").set(held as f64);
            self.next_prune_ms.store(started + 1_000, Relaxed);
        }
        // Fresh as of when this refresh began reading.
        self.fresh_at_ms
            .fetch_max(started, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Polls the store every `every` until `stop` resolves.
    pub async fn keep_fresh(
        self: Arc<Self>,
        every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut failures = 0u32;
        loop {
            match self.refresh().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %e, failures, "edge state refresh failed; enforcing the last snapshot");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = &mut stop => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revocations_cover_the_exact_family_the_token_or_older_tokens_of_a_user() {
        let family = "0123456789abcdef0123456789abcdef";
        let jti = format!("{family}fedcba9876543210fedcba9876543210");
        assert_eq!(family_of(&jti), Some(family));
        // Not flashmall's format: no family, so no prefix can collide.
        assert_eq!(family_of(family), None);
        assert_eq!(family_of(&format!("{family}x")), None);
        assert_eq!(family_of(&jti.to_uppercase()), None);

        let store = Arc::new(LocalEdgeStore::default());
        let view = View::new(store.clone());
        let now = now_ms();
        store
            .revoke(&Revocation::login(&jti, now + 60_000), now)
            .await
            .unwrap();
        store
            .revoke(&Revocation::login(family, now + 60_000), now)
            .await
            .unwrap();
        store
            .revoke(
                &Revocation {
                    key: "u:bob".into(),
                    not_before_ms: Some(now),
                    until_ms: now + 60_000,
                },
                now,
            )
            .await
            .unwrap();
        view.refresh().await.unwrap();
        let issued = now / 1000 - 5;
        // The family: every token of it.
        let sibling = format!("{family}00000000000000000000000000000001");
        assert!(view.token_revoked(&sibling, "alice", issued, now));
        // A token whose id merely starts with a revoked one's: not covered.
        assert!(!view.token_revoked(&format!("{family}-other"), "alice", issued, now));
        // The exact foreign jti.
        assert!(view.token_revoked(family, "alice", issued, now));
        // A user's watermark: older tokens only; one issued in its second passes.
        let other = "ffffffffffffffffffffffffffffffff00000000000000000000000000000001";
        assert!(view.token_revoked(other, "bob", issued, now));
        assert!(!view.token_revoked(other, "bob", now / 1000, now));
        assert!(!view.token_revoked(other, "carol", issued, now));
        // A flashmall token: its UUIDv7 id dates it to the millisecond.
        let at = |ms: u64| format!("ffffffffffffffffffffffffffffffff{ms:012x}70008000000000000001");
        assert_eq!(issued_at_ms(&at(now - 1), (now - 1) / 1000), now - 1);
        assert!(view.token_revoked(&at(now - 1), "bob", (now - 1) / 1000, now));
        assert!(!view.token_revoked(&at(now), "bob", now / 1000, now));
        // An id that does not fit its iat falls back to the second's end.
        assert_eq!(issued_at_ms(&at(5), 1_000), 1_000_999);
        // Past its end, nothing is covered.
        assert!(!view.token_revoked(&sibling, "bob", issued, now + 60_000));
    }

    fn rule(role: &str, effect: Effect, method: &str, path: &str) -> AccessRule {
        AccessRule {
            role: role.into(),
            effect,
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let state = EdgeState {
            rules: vec![
                rule("admin", Effect::Allow, "*", "^/api/v1/admin/"),
                rule("*", Effect::Deny, "*", "^/api/v1/admin/"),
                rule("customer", Effect::Deny, "DELETE", "^/api/v1/users/me$"),
            ],
            ..EdgeState::default()
        };
        let s = Snapshot::compile(state).unwrap();
        assert!(s.allowed(["admin"].into_iter(), "GET", "/api/v1/admin/blacklist"));
        assert!(!s.allowed(["customer"].into_iter(), "GET", "/api/v1/admin/blacklist"));
        assert!(!s.allowed(["customer"].into_iter(), "DELETE", "/api/v1/users/me"));
        assert!(s.allowed(["customer"].into_iter(), "GET", "/api/v1/users/me"));
    }

    #[test]
    fn bad_rules_are_named() {
        let e = check_rules(&[
            rule("*", Effect::Deny, "*", "^ok$"),
            rule("*", Effect::Deny, "*", "("),
        ])
        .unwrap_err();
        assert!(e.starts_with("rule 1"), "{e}");
        assert!(check_rules(&[rule("wizard", Effect::Deny, "*", "x")]).is_err());
        assert!(check_rules(&[rule("*", Effect::Deny, "get", "x")]).is_err());
    }

    #[test]
    fn blacklist_matches_users_and_ranges_until_expiry() {
        let state = EdgeState {
            blacklist: vec![
                BlacklistEntry {
                    id: "1".into(),
                    user_id: Some("u1".into()),
                    cidr: None,
                    expires_at_ms: Some(1_000),
                    created_at_ms: 0,
                },
                BlacklistEntry {
                    id: "2".into(),
                    user_id: None,
                    cidr: Some("10.1.0.0/16".parse().unwrap()),
                    expires_at_ms: None,
                    created_at_ms: 0,
                },
            ],
            ..EdgeState::default()
        };
        let s = Snapshot::compile(state).unwrap();
        assert!(s.blacklisted(Some("u1"), None, 500));
        assert!(!s.blacklisted(Some("u1"), None, 1_000), "expired");
        assert!(s.blacklisted(None, Some("10.1.2.3".parse().unwrap()), 0));
        assert!(!s.blacklisted(Some("u2"), Some("10.2.0.1".parse().unwrap()), 0));
    }
}
