//! Edge state every replica enforces: the blacklist, the access rules and
//! logged-out access tokens. Kept in an `EdgeStore` (in-process, or Redis
//! shared by all replicas); each replica polls the store's version and
//! reloads a compiled snapshot when it changes, so a change made through
//! any replica is enforced by all within `state_poll` (≤ 1 s).
//!
//! Hot path: `View::current` is a read lock and an `Arc` clone.

mod redis;

pub use redis::RedisEdgeStore;

pub use flashmall_mesh::now_ms;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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

/// Everything an edge store holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EdgeState {
    pub blacklist: Vec<BlacklistEntry>,
    pub rules: Vec<AccessRule>,
    /// Logged-out access tokens (`jti`) and when they expire anyway.
    pub denied: HashMap<String, u64>,
}

/// Where the edge state lives.
#[async_trait]
pub trait EdgeStore: Send + Sync + 'static {
    /// Changes with every write.
    async fn version(&self) -> Result<u64, String>;
    async fn load(&self, now_ms: u64) -> Result<EdgeState, String>;
    async fn add_blacklist(&self, entry: BlacklistEntry) -> Result<(), String>;
    async fn remove_blacklist(&self, id: &str) -> Result<bool, String>;
    async fn set_rules(&self, rules: Vec<AccessRule>) -> Result<(), String>;
    async fn deny_token(&self, jti: &str, expires_at_ms: u64) -> Result<(), String>;
}

/// The edge state in this process (one replica).
#[derive(Default)]
pub struct LocalEdgeStore {
    inner: Mutex<(u64, EdgeState)>,
}

impl LocalEdgeStore {
    fn write<T>(&self, f: impl FnOnce(&mut EdgeState) -> T) -> T {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 += 1;
        f(&mut guard.1)
    }
}

#[async_trait]
impl EdgeStore for LocalEdgeStore {
    async fn version(&self) -> Result<u64, String> {
        Ok(self.inner.lock().unwrap_or_else(|p| p.into_inner()).0)
    }

    async fn load(&self, now_ms: u64) -> Result<EdgeState, String> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.1.denied.retain(|_, exp| *exp > now_ms);
        Ok(guard.1.clone())
    }

    async fn add_blacklist(&self, entry: BlacklistEntry) -> Result<(), String> {
        self.write(|s| s.blacklist.push(entry));
        Ok(())
    }

    async fn remove_blacklist(&self, id: &str) -> Result<bool, String> {
        Ok(self.write(|s| {
            let before = s.blacklist.len();
            s.blacklist.retain(|e| e.id != id);
            s.blacklist.len() != before
        }))
    }

    async fn set_rules(&self, rules: Vec<AccessRule>) -> Result<(), String> {
        self.write(|s| s.rules = rules);
        Ok(())
    }

    async fn deny_token(&self, jti: &str, expires_at_ms: u64) -> Result<(), String> {
        self.write(|s| s.denied.insert(jti.to_owned(), expires_at_ms));
        Ok(())
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
    denied: HashSet<String>,
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
        snap.denied = state.denied.keys().cloned().collect();
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
    pub fn allowed(&self, roles: &[&str], method: &str, path: &str) -> bool {
        for rule in &self.rules {
            let role_matches = rule.role == "*" || roles.contains(&rule.role.as_str());
            let method_matches = rule.method == "*" || same_method(&rule.method, method);
            if role_matches && method_matches && rule.path.is_match(path) {
                return rule.effect == Effect::Allow;
            }
        }
        true
    }

    /// True for a logged-out token: its own id, or its login family (the
    /// first 32 characters of the id) was denied.
    pub fn token_denied(&self, jti: &str) -> bool {
        self.denied.contains(jti)
            || jti
                .get(..32)
                .is_some_and(|family| self.denied.contains(family))
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
    /// One refresh at a time, so an older snapshot never replaces a newer.
    refreshing: tokio::sync::Mutex<()>,
    current: RwLock<Arc<Snapshot>>,
    version: Mutex<Option<u64>>,
    /// When a refresh last read the store successfully (Unix ms; 0: never).
    fresh_at_ms: std::sync::atomic::AtomicU64,
}

impl View {
    pub fn new(store: Arc<dyn EdgeStore>) -> Arc<View> {
        Arc::new(View {
            store,
            refreshing: tokio::sync::Mutex::new(()),
            current: RwLock::new(Arc::new(Snapshot::default())),
            version: Mutex::new(None),
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

    pub fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .map(|s| Arc::clone(&s))
            .unwrap_or_default()
    }

    /// Reloads the snapshot if the store's version moved.
    pub async fn refresh(&self) -> Result<(), String> {
        let _one_at_a_time = self.refreshing.lock().await;
        let started = now_ms();
        let version = self.store.version().await?;
        if *self.version.lock().unwrap_or_else(|p| p.into_inner()) != Some(version) {
            let snapshot = Snapshot::compile(self.store.load(now_ms()).await?)?;
            if let Ok(mut slot) = self.current.write() {
                *slot = Arc::new(snapshot);
            }
            *self.version.lock().unwrap_or_else(|p| p.into_inner()) = Some(version);
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
        assert!(s.allowed(&["admin"], "GET", "/api/v1/admin/blacklist"));
        assert!(!s.allowed(&["customer"], "GET", "/api/v1/admin/blacklist"));
        assert!(!s.allowed(&["customer"], "DELETE", "/api/v1/users/me"));
        assert!(s.allowed(&["customer"], "GET", "/api/v1/users/me"));
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
