//! Verified identity between components. The edge proxy verifies the
//! client's access token, strips every identity header the client sent, and
//! forwards the identity as one header signed with the mesh's shared key:
//!
//! `x-flashmall-identity: v1.<user>.<roles>.<token id>.<expires ms>.<hmac>`
//!
//! Every component verifies the signature and the expiry itself
//! (`IdentityKey::verify`); no handler reads a user id from anywhere else.

use std::fmt::Write as _;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

use crate::error::{ApiError, ErrorCode};

/// The header carrying the signed identity.
pub const IDENTITY_HEADER: &str = "x-flashmall-identity";

/// The header carrying the client's address, signed by the edge
/// (`IdentityKey::sign_client`): the only address a component trusts.
pub const CLIENT_HEADER: &str = "x-flashmall-client";

/// Headers a client may try to smuggle identity or an address in; the edge
/// removes them all.
pub const CLIENT_IDENTITY_HEADERS: [&str; 7] = [
    IDENTITY_HEADER,
    CLIENT_HEADER,
    crate::headers::ADMITTED,
    "x-user-id",
    "x-user-roles",
    "x-forwarded-user",
    crate::headers::CLIENT_IP,
];

/// A role a user can hold, or `Service` for a component calling another.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Merchant,
    Admin,
    /// A flashmall component calling another on its own behalf (settlement
    /// creating orders, say). Never granted to a user: it is not in `ALL`,
    /// `parse` refuses it, and it does not deserialize (so no stored user
    /// record or access token can carry it); only identities a component
    /// signs with the mesh key (`Identity::service`) hold it.
    #[serde(skip_deserializing)]
    Service,
}

impl Role {
    /// The roles a user can be granted.
    pub const ALL: [Role; 3] = [Role::Customer, Role::Merchant, Role::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Merchant => "merchant",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    /// A role a user can be granted, by name (`service` is not one).
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Any role a signed identity can carry, `service` included.
    pub fn parse_any(s: &str) -> Option<Role> {
        match s {
            "service" => Some(Role::Service),
            _ => Role::parse(s),
        }
    }
}

/// The claims of an access token: the contract between the auth service,
/// which signs them, and the edge, which verifies them. `jti` starts with
/// the login family's id (32 hex digits).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub roles: Vec<Role>,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
    pub jti: String,
}

impl AccessClaims {
    /// The identity these verified claims grant.
    pub fn identity(&self) -> Identity {
        Identity {
            user_id: self.sub.clone(),
            roles: self.roles.clone(),
            token_id: self.jti.clone(),
            expires_at_ms: self.exp.saturating_mul(1000),
        }
    }
}

/// Who a request acts for, as verified at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<Role>,
    /// The access token's id (`jti`).
    pub token_id: String,
    /// Unix milliseconds after which the identity is no longer valid.
    pub expires_at_ms: u64,
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }

    /// The identity of component `component` calling another one, valid
    /// for `ttl`: user id `svc-<component>` (characters a user id cannot
    /// hold become `-`), the `service` role only, a fresh token id. Sign it
    /// with `IdentityKey::sign` and attach it with `authorize`.
    pub fn service(component: &str, ttl: Duration) -> Identity {
        let mut user_id: String = format!("svc-{component}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        user_id.truncate(64);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Identity {
            user_id,
            roles: vec![Role::Service],
            token_id: uuid::Uuid::new_v4().simple().to_string(),
            expires_at_ms: crate::headers::now_ms().saturating_add(ttl_ms),
        }
    }

    /// True for a component calling on its own behalf.
    pub fn is_service(&self) -> bool {
        self.has(Role::Service)
    }

    /// Fails with 403 unless the caller holds `role` (admins hold every role).
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.has(role) || self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this action needs the {} role", role.as_str()),
            ))
        }
    }
}

/// True for user ids the mesh can carry: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The mesh's shared signing key.
#[derive(Clone)]
pub struct IdentityKey {
    /// HMAC-SHA256 keyed once: its inner and outer pads are hashed here, and
    /// each signature or check starts from a copy.
    keyed: Hmac<Sha256>,
    /// The component verifying with this key: a signed identity names the
    /// component it is for, and any other is refused (`for_component`).
    component: Option<std::sync::Arc<str>>,
}

/// How long a signed identity is good for on the wire (at most its token's
/// own expiry): long enough for a call and its retries, short enough that
/// a captured header is soon worthless.
pub const SIGNED_IDENTITY_TTL: Duration = Duration::from_secs(60);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdentityKey(..)")
    }
}

/// True when `hex` is the hex of `mac`'s whole signature (compared in
/// constant time).
fn signature_holds(mac: Hmac<Sha256>, hex: &str) -> bool {
    let mut sig = [0u8; 32];
    hex::decode_to_slice(hex, &mut sig).is_ok() && mac.verify_slice(&sig).is_ok()
}

#[allow(clippy::expect_used, reason = "HMAC takes keys of any length")]
fn keyed(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac accepts any key length")
}

/// The signing purpose of `headers::ADMITTED` values.
const ADMITTED_PURPOSE: &str = "flashmall admitted";

/// Shortest accepted key, in bytes.
pub const MIN_KEY_LEN: usize = 32;

impl IdentityKey {
    /// A key from configuration; at least 32 bytes.
    pub fn new(key: &[u8]) -> Result<IdentityKey, String> {
        if key.len() < MIN_KEY_LEN {
            return Err(format!(
                "the mesh identity key must be at least {MIN_KEY_LEN} bytes"
            ));
        }
        Ok(IdentityKey {
            keyed: keyed(key),
            component: None,
        })
    }

    /// This key, verifying as `component`: identities signed for another
    /// component are refused. Every component verifies with one of these.
    pub fn for_component(&self, component: &str) -> IdentityKey {
        IdentityKey {
            keyed: self.keyed.clone(),
            component: Some(component.into()),
        }
    }

    /// A fresh random key (one process: `flashmall up`, tests).
    pub fn random() -> IdentityKey {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        key.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        IdentityKey {
            keyed: keyed(&key),
            component: None,
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(payload.as_bytes());
        mac
    }

    /// The signed header value for `identity`, calling `target` (the
    /// component name: `engine`, `auth`, `orders`, ...). It is good for that
    /// component only, for `SIGNED_IDENTITY_TTL` at most.
    pub fn sign_for(&self, identity: &Identity, target: &str) -> String {
        let ttl = SIGNED_IDENTITY_TTL.as_millis() as u64;
        let valid_until = identity
            .expires_at_ms
            .min(crate::headers::now_ms().saturating_add(ttl));
        // `v2.<target>.<valid until>.<user>.<role+role>.<token id>.<token expiry>`,
        // built in the one string the signature is then appended to.
        let mut value = String::with_capacity(192);
        value.push_str("v2.");
        value.extend(target.chars().map(|c| if c == '.' { '-' } else { c }));
        let _ = write!(value, ".{valid_until}.{}.", identity.user_id);
        for (i, role) in identity.roles.iter().enumerate() {
            if i > 0 {
                value.push('+');
            }
            value.push_str(role.as_str());
        }
        let _ = write!(value, ".{}.{}", identity.token_id, identity.expires_at_ms);
        self.append_signature(&mut value);
        value
    }

    /// Appends `.<hex HMAC of value>` to `value`.
    fn append_signature(&self, value: &mut String) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let sig = self.mac(value).finalize().into_bytes();
        value.reserve(1 + 2 * sig.len());
        value.push('.');
        for b in sig {
            value.push(char::from(DIGITS[usize::from(b >> 4)]));
            value.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
    }

    /// `payload` signed for the purpose `purpose` (the edge's waiting-room
    /// tickets): `payload.signature`. A value signed for one purpose never
    /// verifies for another, nor as an identity or client header (their
    /// payloads hold no newline).
    pub fn sign_token(&self, purpose: &str, payload: &str) -> String {
        let sig = hex::encode(
            self.mac(&format!("{purpose}\n{payload}"))
                .finalize()
                .into_bytes(),
        );
        format!("{payload}.{sig}")
    }

    /// The payload of a `sign_token` value when its signature holds for
    /// `purpose`.
    pub fn verify_token<'a>(&self, purpose: &str, value: &'a str) -> Option<&'a str> {
        let (payload, sig) = value.rsplit_once('.')?;
        signature_holds(self.mac(&format!("{purpose}\n{payload}")), sig).then_some(())?;
        Some(payload)
    }

    /// The `headers::ADMITTED` value the edge sends the engine with a
    /// purchase of `sale` by `user` that holds an admission: good for
    /// `SIGNED_IDENTITY_TTL`.
    pub fn sign_admitted(&self, sale: &str, user: &str) -> String {
        let until = crate::headers::now_ms() + SIGNED_IDENTITY_TTL.as_millis() as u64;
        self.sign_token(ADMITTED_PURPOSE, &format!("a1|{sale}|{user}|{until}"))
    }

    /// True when `value` is this key's `sign_admitted` for `sale` and
    /// `user`, still good at `now_ms`.
    pub fn verify_admitted(&self, value: &str, sale: &str, user: &str, now_ms: u64) -> bool {
        let Some(payload) = self.verify_token(ADMITTED_PURPOSE, value) else {
            return false;
        };
        let parts: Vec<&str> = payload.split('|').collect();
        matches!(parts.as_slice(), ["a1", s, u, until]
            if *s == sale && *u == user && until.parse::<u64>().is_ok_and(|t| t > now_ms))
    }

    /// The signed `CLIENT_HEADER` value for a request the edge sends to
    /// `target` from client address `ip`, good for `SIGNED_IDENTITY_TTL`.
    pub fn sign_client(&self, ip: std::net::IpAddr, target: &str) -> String {
        let ttl = SIGNED_IDENTITY_TTL.as_millis() as u64;
        let valid_until = crate::headers::now_ms().saturating_add(ttl);
        // `c1|<target>|<valid until>|<address>`, then the signature.
        let mut value = String::with_capacity(128);
        value.push_str("c1|");
        value.extend(target.chars().map(|c| if c == '|' { '-' } else { c }));
        let _ = write!(value, "|{valid_until}|{}", ip.to_canonical());
        self.append_signature(&mut value);
        value
    }

    /// The client address of a `CLIENT_HEADER` value, when its signature,
    /// target (this key's component) and validity hold at `now_ms`.
    pub fn verify_client(&self, value: &str, now_ms: u64) -> Option<std::net::IpAddr> {
        let (payload, sig) = value.rsplit_once('.')?;
        signature_holds(self.mac(payload), sig).then_some(())?;
        let mut parts = payload.split('|');
        let (Some("c1"), Some(target), Some(valid_until), Some(ip), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        if self.component.as_deref().is_some_and(|me| me != target) {
            return None;
        }
        if valid_until.parse::<u64>().ok()? <= now_ms {
            return None;
        }
        ip.parse().ok()
    }

    /// Verifies a signed header value at `now_ms`.
    pub fn verify_value(&self, value: &str, now_ms: u64) -> Result<Identity, ApiError> {
        let bad = || {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the request's identity is not valid",
            )
        };
        let (payload, sig) = value.rsplit_once('.').ok_or_else(bad)?;
        if !signature_holds(self.mac(payload), sig) {
            return Err(bad());
        }
        let mut parts = payload.split('.');
        let (
            Some("v2"),
            Some(target),
            Some(valid_until),
            Some(user),
            Some(roles),
            Some(token),
            Some(expires),
            None,
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return Err(bad());
        };
        if let Some(me) = &self.component
            && target != &**me
        {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                format!("the request's identity was signed for {target}, not for {me}"),
            ));
        }
        let valid_until: u64 = valid_until.parse().map_err(|_| bad())?;
        if valid_until <= now_ms {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the request's signed identity has expired",
            ));
        }
        let expires_at_ms: u64 = expires.parse().map_err(|_| bad())?;
        if expires_at_ms <= now_ms {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the access token has expired",
            ));
        }
        if !valid_user_id(user) {
            return Err(bad());
        }
        let roles = roles
            .split('+')
            .filter(|r| !r.is_empty())
            .map(|r| Role::parse_any(r).ok_or_else(bad))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Identity {
            user_id: user.to_owned(),
            roles,
            token_id: token.to_owned(),
            expires_at_ms,
        })
    }

    /// The caller of a request: 401 without a valid signed identity.
    pub fn caller(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        let value = headers
            .get(IDENTITY_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthenticated)?;
        self.verify_value(value, crate::headers::now_ms())
    }
}

/// The answer to a request that needs a caller and has none.
pub(crate) fn unauthenticated() -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        "this request needs an authenticated user",
    )
}

/// Puts a signed identity (`IdentityKey::sign`) on an outgoing gRPC request.
pub fn authorize<T>(request: &mut tonic::Request<T>, signed: &str) -> Result<(), ApiError> {
    let value = tonic::metadata::MetadataValue::try_from(signed)
        .map_err(|_| ApiError::internal("the signed identity is not a valid header value"))?;
    request.metadata_mut().insert(IDENTITY_HEADER, value);
    Ok(())
}

/// The caller of a gRPC request: the identity `serve::verify_identity`
/// already verified, else the signed metadata, verified here. UNAUTHENTICATED
/// without a valid one.
pub fn caller_of<T>(
    key: &IdentityKey,
    request: &tonic::Request<T>,
) -> Result<Identity, tonic::Status> {
    if let Some(identity) = request.extensions().get::<Identity>() {
        return Ok(identity.clone());
    }
    let value = request
        .metadata()
        .get(IDENTITY_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthenticated)?;
    Ok(key.verify_value(value, crate::headers::now_ms())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            user_id: "0199-alice".into(),
            roles: vec![Role::Customer, Role::Admin],
            token_id: "jti-1".into(),
            expires_at_ms: 2_000,
        }
    }

    /// The values a component signs keep the layout every replica
    /// verifies: `payload.hex(HMAC-SHA256(payload))`.
    #[test]
    fn signed_values_keep_their_wire_format() {
        let key = IdentityKey::new(&[7; 32]).unwrap();
        let plain = |payload: &str| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7; 32]).unwrap();
            mac.update(payload.as_bytes());
            format!("{payload}.{}", hex::encode(mac.finalize().into_bytes()))
        };
        let value = key.sign_for(&alice(), "engine.eu");
        let valid_until = value.split('.').nth(2).unwrap();
        assert_eq!(
            value,
            plain(&format!(
                "v2.engine-eu.{valid_until}.0199-alice.customer+admin.jti-1.2000"
            ))
        );
        let ip: std::net::IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let value = key.sign_client(ip, "a|b");
        let valid_until = value.split('|').nth(2).unwrap();
        assert_eq!(value, plain(&format!("c1|a-b|{valid_until}|203.0.113.7")));
        let engine = key.for_component("engine");
        assert_eq!(
            engine.verify_client(&value, 0),
            None,
            "signed for another component"
        );
        let value = key.sign_client(ip, "engine");
        assert_eq!(engine.verify_client(&value, 0), Some(ip.to_canonical()));
    }

    #[test]
    fn signed_identities_verify() {
        let key = IdentityKey::random();
        let header = key.sign_for(&alice(), "engine");
        assert_eq!(key.verify_value(&header, 1_000).unwrap(), alice());
    }

    #[test]
    fn an_admission_is_for_one_sale_and_buyer_and_short_lived() {
        let key = IdentityKey::random();
        let now = crate::headers::now_ms();
        let value = key.sign_admitted("sale-1", "alice");
        assert!(key.verify_admitted(&value, "sale-1", "alice", now));
        assert!(!key.verify_admitted(&value, "sale-2", "alice", now));
        assert!(!key.verify_admitted(&value, "sale-1", "bob", now));
        assert!(!key.verify_admitted(
            &value,
            "sale-1",
            "alice",
            now + SIGNED_IDENTITY_TTL.as_millis() as u64 + 1
        ));
        assert!(!IdentityKey::random().verify_admitted(&value, "sale-1", "alice", now));
        // Another purpose's signature is no admission.
        let token = key.sign_token("other", "a1|sale-1|alice|99999999999999");
        assert!(!key.verify_admitted(&token, "sale-1", "alice", now));
    }

    #[test]
    fn tampered_expired_or_foreign_identities_fail() {
        let key = IdentityKey::random();
        let header = key.sign_for(&alice(), "engine");
        assert!(key.verify_value(&header, 2_000).is_err(), "expired");
        assert!(
            IdentityKey::random().verify_value(&header, 1_000).is_err(),
            "another key"
        );
        let forged = header.replacen("0199-alice", "0199-mallory", 1);
        assert!(key.verify_value(&forged, 1_000).is_err(), "tampered");
        let promoted = key
            .sign_for(
                &Identity {
                    roles: vec![Role::Customer],
                    ..alice()
                },
                "engine",
            )
            .replacen("customer", "admin", 1);
        assert!(key.verify_value(&promoted, 1_000).is_err(), "role added");
        for junk in ["", "v1", "x.y", "v1.a.b.c.d.zz", "v2.engine.9.a.b.c.d.zz"] {
            assert!(key.verify_value(junk, 1_000).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn service_identities_verify_but_the_role_is_not_grantable() {
        let key = IdentityKey::random();
        let id = Identity::service("engine settle", Duration::from_secs(60));
        assert_eq!(id.user_id, "svc-engine-settle");
        assert!(id.is_service() && !id.is_admin());
        assert_eq!(id.token_id.len(), 32);
        let back = key
            .verify_value(&key.sign_for(&id, "engine"), crate::headers::now_ms())
            .unwrap();
        assert_eq!(back, id);
        assert!(back.require(Role::Admin).is_err(), "a service is no admin");
        assert_eq!(Role::parse("service"), None);
        assert!(!Role::ALL.contains(&Role::Service));
        assert!(serde_json::from_str::<Role>("\"service\"").is_err());
        assert_eq!(
            serde_json::from_str::<Role>("\"admin\"").unwrap(),
            Role::Admin
        );
    }

    #[test]
    fn grpc_callers_come_from_extensions_or_signed_metadata() {
        let key = IdentityKey::random();
        let id = Identity::service("order", Duration::from_secs(60));
        let mut request = tonic::Request::new(());
        assert_eq!(
            caller_of(&key, &request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        authorize(&mut request, &key.sign_for(&id, "engine")).unwrap();
        assert_eq!(caller_of(&key, &request).unwrap(), id);
        assert!(caller_of(&IdentityKey::random(), &request).is_err());
        let mut verified = tonic::Request::new(());
        verified.extensions_mut().insert(alice());
        assert_eq!(caller_of(&key, &verified).unwrap(), alice());
    }

    #[test]
    fn a_signed_identity_is_for_one_component_and_short_lived() {
        let key = IdentityKey::random();
        let now = crate::headers::now_ms();
        let id = Identity {
            expires_at_ms: now + 3_600_000,
            ..alice()
        };
        let for_orders = key.sign_for(&id, "orders");
        let orders = key.for_component("orders");
        assert_eq!(orders.verify_value(&for_orders, now).unwrap(), id);
        let e = key
            .for_component("payments")
            .verify_value(&for_orders, now)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated);
        assert!(e.message.contains("orders"), "{}", e.message);
        // Replayed after SIGNED_IDENTITY_TTL: refused, though the token lives on.
        let later = now + SIGNED_IDENTITY_TTL.as_millis() as u64 + 1_000;
        assert!(orders.verify_value(&for_orders, later).is_err());
        // The target is signed: renaming it breaks the signature.
        let renamed = for_orders.replacen("v2.orders.", "v2.payments.", 1);
        assert!(
            key.for_component("payments")
                .verify_value(&renamed, now)
                .is_err()
        );
    }

    #[test]
    fn a_signed_client_address_is_for_one_component_and_short_lived() {
        let key = IdentityKey::random();
        let now = crate::headers::now_ms();
        let ip: std::net::IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let signed = key.sign_client(ip, "auth");
        let auth = key.for_component("auth");
        assert_eq!(
            auth.verify_client(&signed, now),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            key.for_component("orders").verify_client(&signed, now),
            None
        );
        let later = now + SIGNED_IDENTITY_TTL.as_millis() as u64 + 1_000;
        assert_eq!(auth.verify_client(&signed, later), None);
        let forged = signed.replacen("203.0.113.7", "203.0.113.8", 1);
        assert_eq!(auth.verify_client(&forged, now), None);
        assert_eq!(IdentityKey::random().verify_client(&signed, now), None);
        assert_eq!(auth.verify_client("203.0.113.8", now), None);
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(IdentityKey::new(b"short").is_err());
        assert!(IdentityKey::new(&[7u8; 32]).is_ok());
    }
}
