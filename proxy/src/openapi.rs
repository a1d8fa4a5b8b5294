//! `/api/v1/openapi.json`: the OpenAPI 3 document of the public API served
//! through the edge (the paths that exist today).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bytes::Bytes;
use flashmall_mesh::ErrorCode;
use serde_json::{Value, json};

/// One documented operation.
struct Operation {
    method: &'static str,
    /// The path, with `{name}` for each path parameter.
    path: &'static str,
    summary: &'static str,
    /// Whether it needs an access token.
    secured: bool,
    /// The JSON schema of the request body, when it takes one.
    body: Option<Value>,
    /// The success status.
    ok: &'static str,
    /// Another success status answered with the same body (e.g. `200` for
    /// a repeat of a `201`).
    also_ok: Option<&'static str>,
    /// Header and query parameters (path parameters come from `path`).
    params: Vec<Value>,
    /// The JSON schema of the success body, when documented.
    returns: Option<Value>,
    /// Error answers documented beside the default: the code, and when.
    errors: Vec<(ErrorCode, &'static str)>,
}

fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    secured: bool,
    body: Option<Value>,
    ok: &'static str,
) -> Operation {
    Operation {
        method,
        path,
        summary,
        secured,
        body,
        ok,
        also_ok: None,
        params: Vec::new(),
        returns: None,
        errors: Vec::new(),
    }
}

impl Operation {
    /// Another success status, with the same body as `ok`.
    fn also_ok(mut self, status: &'static str) -> Operation {
        self.also_ok = Some(status);
        self
    }

    /// A header (`location` "header") or query ("query") parameter.
    fn param(
        mut self,
        name: &'static str,
        location: &'static str,
        required: bool,
        description: &'static str,
        schema: Value,
    ) -> Operation {
        self.params
            .push(json!({"name": name, "in": location, "required": required,
            "description": description, "schema": schema}));
        self
    }

    /// The schema of the success body.
    fn returns(mut self, schema: Value) -> Operation {
        self.returns = Some(schema);
        self
    }

    /// An error answer: its code (which fixes the status) and when it comes.
    fn error(mut self, code: ErrorCode, when: &'static str) -> Operation {
        self.errors.push((code, when));
        self
    }
}

/// A sale's `waiting_room`: in the body that creates the sale and in the sale.
fn waiting_room() -> Value {
    json!({"type": "object", "nullable": true,
        "description": "The edge's waiting room for this sale: buyers join its queue (POST /api/v1/sales/{id}/queue) and a purchase needs the admission token (X-Admission-Token) the queue hands out in order. Null or absent: none. A sale's waiting room never changes",
        "properties": {
            "admit_per_second": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 100,
                "description": "buyers admitted per second at most (slower while the engine's settlement backlog grows)"},
            "admission_seconds": {"type": "integer", "minimum": 5, "maximum": 3600, "default": 120,
                "description": "how long an admission lasts, from the first answer that gave it"},
            "max_queue": {"type": "integer", "minimum": 1, "maximum": 10000000, "default": 1000000,
                "description": "the most buyers the queue holds; later joins get 503 queue_full"}}})
}

/// A sale, as creating or reading it answers.
fn sale() -> Value {
    let instant = json!({"type": "string", "format": "date-time"});
    json!({"type": "object", "properties": {
        "id": {"type": "string"}, "product_id": {"type": "string"},
        "price": {"type": "integer", "description": "minor units"}, "stock": {"type": "integer"},
        "per_user_limit": {"type": "integer"},
        "starts_at": instant, "ends_at": instant, "created_at": instant,
        "waiting_room": waiting_room(),
        "status": {"enum": ["scheduled", "open", "sold_out", "closed"]},
        "remaining": {"type": "integer"}, "pending": {"type": "integer"},
        "settled": {"type": "integer"}, "released": {"type": "integer"}, "revoked": {"type": "integer"}}})
}

/// A buyer's place in a waiting room, as joining and polling answer it.
fn queue_place() -> Value {
    let instant = json!({"type": "string", "format": "date-time"});
    json!({"type": "object",
        "required": ["sale_id", "state", "position", "ahead", "admitted", "queue_length",
            "estimated_wait_seconds", "joined_at", "opens_at", "shuffle_seed", "ticket",
            "ticket_expires_at", "admission_token", "admission_expires_at"],
        "properties": {
            "sale_id": {"type": "string"},
            "state": {"enum": ["waiting_for_opening", "waiting", "admitted", "admission_expired", "sold_out", "ended"],
                "description": "waiting_for_opening: joined before the opening, no place yet (everyone who joined before it is shuffled then); waiting: in the queue; admitted: admission_token buys once; admission_expired: the admission lapsed unused; sold_out: nothing is admitted while no unit remains (units that come back reopen the queue); ended: the sale has ended"},
            "position": {"type": "integer", "minimum": 1, "nullable": true, "description": "the caller's place, from 1; null before the opening"},
            "ahead": {"type": "integer", "minimum": 0, "nullable": true, "description": "buyers ahead of the caller not yet admitted; null before the opening"},
            "admitted": {"type": "integer", "minimum": 0, "description": "how many places from the head are admitted"},
            "queue_length": {"type": "integer", "minimum": 0, "description": "buyers who joined"},
            "estimated_wait_seconds": {"type": "integer", "minimum": 0, "nullable": true,
                "description": "ahead divided by the current admission rate; 0 when admitted; null when there is no estimate"},
            "joined_at": instant,
            "opens_at": instant,
            "shuffle_seed": {"type": "string", "nullable": true,
                "description": "after the opening: those who joined before it are ordered by the first 48 bits of SHA-1(seed \":\" user id)"},
            "ticket": {"type": "string", "description": "send it as X-Queue-Ticket with the next poll"},
            "ticket_expires_at": instant,
            "admission_token": {"type": "string", "nullable": true,
                "description": "when admitted: send it as X-Admission-Token with the purchase"},
            "admission_expires_at": {"type": "string", "format": "date-time", "nullable": true}}})
}

fn operations() -> Vec<Operation> {
    let credentials = json!({"type": "object", "required": ["email", "password"],
        "properties": {"email": {"type": "string", "format": "email"}, "password": {"type": "string", "minLength": 10, "maxLength": 128}}});
    let product = json!({"type": "object", "required": ["name", "price"],
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 200},
            "description": {"type": "string", "maxLength": 5000},
            "price": {"type": "integer", "minimum": 1, "description": "minor units"},
            "categories": {"type": "array", "maxItems": 10, "items": {"type": "string"}},
            "stock": {"type": "integer", "minimum": 0}}});
    vec![
        op(
            "post",
            "/api/v1/auth/register",
            "Create an account",
            false,
            Some(credentials.clone()),
            "201",
        ),
        op(
            "post",
            "/api/v1/auth/login",
            "Log in: access and refresh tokens",
            false,
            Some(credentials),
            "200",
        ),
        op(
            "post",
            "/api/v1/auth/refresh",
            "Rotate a refresh token",
            false,
            Some(
                json!({"type": "object", "required": ["refresh_token"], "properties": {"refresh_token": {"type": "string"}}}),
            ),
            "200",
        ),
        op(
            "post",
            "/api/v1/auth/logout",
            "End this login; the access token stops working",
            true,
            None,
            "204",
        ),
        op(
            "get",
            "/api/v1/users/me",
            "The caller's account",
            true,
            None,
            "200",
        ),
        op(
            "patch",
            "/api/v1/users/me",
            "Change the caller's email or password",
            true,
            Some(
                json!({"type": "object", "required": ["current_password"], "properties": {"email": {"type": "string"}, "password": {"type": "string"}, "current_password": {"type": "string"}}}),
            ),
            "200",
        ),
        op(
            "delete",
            "/api/v1/users/me",
            "Delete the caller's account",
            true,
            Some(
                json!({"type": "object", "required": ["password"], "properties": {"password": {"type": "string"}}}),
            ),
            "204",
        ),
        op(
            "put",
            "/api/v1/admin/users/{id}/roles",
            "Set a user's roles (admin)",
            true,
            Some(
                json!({"type": "object", "required": ["roles"], "properties": {"roles": {"type": "array", "items": {"enum": ["customer", "merchant", "admin"]}}}}),
            ),
            "200",
        ),
        op(
            "post",
            "/api/v1/sales",
            "Create a flash sale (admin)",
            true,
            Some(
                json!({"type": "object", "required": ["product_id", "price", "stock", "per_user_limit", "starts_at", "ends_at"],
                "properties": {"product_id": {"type": "string"}, "price": {"type": "integer", "description": "minor units"},
                    "stock": {"type": "integer"}, "per_user_limit": {"type": "integer"},
                    "starts_at": {"type": "string", "format": "date-time"}, "ends_at": {"type": "string", "format": "date-time"},
                    "waiting_room": waiting_room()}}),
            ),
            "201",
        )
        .returns(json!({"$ref": "#/components/schemas/Sale"})),
        op(
            "get",
            "/api/v1/sales/{id}",
            "A sale with its status and live remaining units",
            false,
            None,
            "200",
        )
        .returns(json!({"$ref": "#/components/schemas/Sale"})),
        op(
            "post",
            "/api/v1/sales/{id}/queue",
            "Join a sale's waiting room: 201 a new place, 200 the place the caller already has; the answer carries the queue ticket for polls",
            true,
            None,
            "201",
        )
        .also_ok("200")
        .returns(json!({"$ref": "#/components/schemas/QueuePlace"}))
        .error(ErrorCode::SaleNotFound, "no such sale")
        .error(
            ErrorCode::Conflict,
            "the sale has no waiting room: purchase it directly",
        )
        .error(ErrorCode::SaleClosed, "the sale has ended")
        .error(
            ErrorCode::RateLimited,
            "past the queue-per-user limit (Retry-After)",
        )
        .error(
            ErrorCode::QueueFull,
            "the waiting room holds its max_queue buyers",
        )
        .error(
            ErrorCode::Unavailable,
            "the waiting room cannot be reached; retry shortly (Retry-After)",
        ),
        op(
            "get",
            "/api/v1/sales/{id}/queue",
            "The caller's place in a sale's waiting room, with a fresh ticket; wait=N holds the answer up to N seconds, answering as soon as the caller's state changes: the room opens, the caller is admitted, the admission lapses, or the sale sells out or ends",
            true,
            None,
            "200",
        )
        .param(
            "X-Queue-Ticket",
            "header",
            true,
            "the ticket the last join or poll answered",
            json!({"type": "string"}),
        )
        .param(
            "wait",
            "query",
            false,
            "seconds to hold the answer (a long poll): 0 to proxy.waiting_room.max_wait (30 s by default)",
            json!({"type": "integer", "minimum": 0, "maximum": 30, "default": 0}),
        )
        .returns(json!({"$ref": "#/components/schemas/QueuePlace"}))
        .error(
            ErrorCode::InvalidRequest,
            "wait is not a whole number of seconds from 0 to the maximum",
        )
        .error(
            ErrorCode::InvalidTicket,
            "the ticket is missing, forged, expired (join again: the same place), or another buyer's or another sale's",
        )
        .error(
            ErrorCode::RateLimited,
            "past the queue-per-user limit (Retry-After)",
        )
        .error(
            ErrorCode::Unavailable,
            "the waiting room cannot be reached; retry shortly (Retry-After)",
        ),
        op(
            "post",
            "/api/v1/sales/{id}/purchase",
            "Reserve units (Idempotency-Key header required; a sale with a waiting room also needs X-Admission-Token)",
            true,
            Some(
                json!({"type": "object", "required": ["quantity"], "properties": {"quantity": {"type": "integer", "minimum": 1}}}),
            ),
            "201",
        )
        .param(
            "X-Admission-Token",
            "header",
            false,
            "a sale with a waiting room: the admission_token its queue answered once the caller was admitted",
            json!({"type": "string"}),
        )
        .error(
            ErrorCode::AdmissionRequired,
            "the sale has a waiting room and the purchase carries no X-Admission-Token",
        )
        .error(
            ErrorCode::InvalidTicket,
            "the admission token is forged, expired, a queue ticket, or another buyer's or another sale's",
        )
        .error(ErrorCode::SoldOut, "no unit remains")
        .error(
            ErrorCode::LimitExceeded,
            "the caller would hold more than the sale's per_user_limit",
        )
        .error(ErrorCode::SaleNotOpen, "before starts_at")
        .error(ErrorCode::SaleClosed, "at or after ends_at")
        .error(
            ErrorCode::AdmissionUsed,
            "the admission was used for a purchase with another Idempotency-Key (retries with the same key pass)",
        )
        .error(
            ErrorCode::Unavailable,
            "retry with the same Idempotency-Key",
        ),
        op(
            "get",
            "/api/v1/reservations/{id}",
            "One of the caller's reservations",
            true,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/admin/reconcile",
            "Rebuild Redis from the ledger and report drift (admin)",
            true,
            None,
            "200",
        ),
        op(
            "get",
            "/api/v1/admin/blacklist",
            "Blacklist entries (admin)",
            true,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/admin/blacklist",
            "Blacklist a user or an address range (admin)",
            true,
            Some(
                json!({"type": "object", "properties": {"user_id": {"type": "string"}, "cidr": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}}),
            ),
            "201",
        ),
        op(
            "delete",
            "/api/v1/admin/blacklist/{id}",
            "Remove a blacklist entry (admin)",
            true,
            None,
            "204",
        ),
        op(
            "get",
            "/api/v1/admin/access-rules",
            "The access rules (admin)",
            true,
            None,
            "200",
        ),
        op(
            "put",
            "/api/v1/admin/access-rules",
            "Replace the access rules (admin)",
            true,
            Some(
                json!({"type": "object", "required": ["rules"], "properties": {"rules": {"type": "array", "items": {"type": "object",
                "required": ["role", "effect", "path"], "properties": {"role": {"type": "string"}, "effect": {"enum": ["allow", "deny"]},
                "method": {"type": "string"}, "path": {"type": "string", "description": "regular expression"}}}}}}),
            ),
            "200",
        ),
        op(
            "get",
            "/api/v1/orders",
            "The caller's orders, newest first (page_size 1-100, page_token)",
            true,
            None,
            "200",
        ),
        op(
            "get",
            "/api/v1/orders/{id}",
            "One of the caller's orders: status pending_payment, paid, cancelled or expired",
            true,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/orders/{id}/cancel",
            "Cancel an unpaid order; its units go back on sale",
            true,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/payments",
            "Pay an order (Idempotency-Key header; amount must equal the order total); 201 decided, 202 pending",
            true,
            Some(
                json!({"type": "object", "required": ["order_id", "amount"], "properties": {"order_id": {"type": "string"}, "amount": {"type": "integer", "description": "minor units"}}}),
            ),
            "201",
        ),
        op(
            "get",
            "/api/v1/payments/{id}",
            "One of the caller's payments",
            true,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/payments/{id}/cancel",
            "Cancel a pending payment",
            true,
            None,
            "200",
        ),
        op(
            "get",
            "/api/v1/products",
            "Products newest first: every one, a category's (category), or by ids (ids=a,b); page (from 1) or page_token, page_size 1-100",
            false,
            None,
            "200",
        ),
        op(
            "get",
            "/api/v1/products/search",
            "Products whose name or description holds every word of q; one request examines a bounded number of entries, so a page may hold fewer than asked (even none): follow next_page_token until it is null",
            false,
            None,
            "200",
        ),
        op(
            "get",
            "/api/v1/products/{id}",
            "One product",
            false,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/products",
            "Create a product (merchant, admin)",
            true,
            Some(product.clone()),
            "201",
        ),
        op(
            "patch",
            "/api/v1/products/{id}",
            "Change a product's fields (its merchant, admin)",
            true,
            Some(json!({"type": "object", "properties": product["properties"].clone()})),
            "200",
        ),
        op(
            "delete",
            "/api/v1/products/{id}",
            "Remove a product (its merchant, admin)",
            true,
            None,
            "204",
        ),
        op(
            "get",
            "/api/v1/categories",
            "Every category",
            false,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/categories",
            "Create a category (admin)",
            true,
            Some(
                json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$"}, "description": {"type": "string", "maxLength": 500}}}),
            ),
            "201",
        ),
        op(
            "get",
            "/api/v1/cart",
            "The caller's cart at the catalogue's current prices",
            true,
            None,
            "200",
        ),
        op(
            "delete",
            "/api/v1/cart",
            "Empty the caller's cart",
            true,
            None,
            "204",
        ),
        op(
            "post",
            "/api/v1/cart/items",
            "Add units of a catalogue product to the caller's cart",
            true,
            Some(
                json!({"type": "object", "required": ["product_id", "quantity"], "properties": {"product_id": {"type": "string", "format": "uuid"}, "quantity": {"type": "integer", "minimum": 1}}}),
            ),
            "200",
        ),
        op(
            "patch",
            "/api/v1/cart/items/{product_id}",
            "Set the quantity of an item in the caller's cart",
            true,
            Some(
                json!({"type": "object", "required": ["quantity"], "properties": {"quantity": {"type": "integer", "minimum": 1}}}),
            ),
            "200",
        ),
        op(
            "delete",
            "/api/v1/cart/items/{product_id}",
            "Take an item out of the caller's cart",
            true,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/checkout",
            "Check out the caller's cart (Idempotency-Key header): holds stock, places the order at catalogue prices, charges it, empties the cart. 201 paid, 202 payment pending, 409 out_of_stock, 402 payment_declined",
            true,
            None,
            "201",
        ),
        op(
            "get",
            "/api/v1/openapi.json",
            "This document",
            false,
            None,
            "200",
        ),
    ]
}

fn build() -> Value {
    let codes = ErrorCode::ALL.map(ErrorCode::as_str).join(", ");
    let error = json!({"type": "object", "properties": {"error": {"type": "object",
        "properties": {"code": {"type": "string", "description": format!("the stable code clients match on, one of: {codes}")},
            "message": {"type": "string"}}}}});
    let error_body =
        json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}});
    let mut paths = serde_json::Map::new();
    for Operation {
        method,
        path,
        summary,
        secured,
        body,
        ok,
        also_ok,
        params: extra,
        returns,
        errors,
    } in operations()
    {
        let mut op = json!({
            "summary": summary,
            "responses": {
                ok: {"description": "success"},
                "default": {"description": "error", "content": error_body}
            }
        });
        if let Some(status) = also_ok {
            op["responses"][status] = json!({"description": "success"});
        }
        if let Some(schema) = returns {
            let content = json!({"application/json": {"schema": schema}});
            for status in std::iter::once(ok).chain(also_ok) {
                op["responses"][status]["content"] = content.clone();
            }
        }
        // One response per status, naming each code answered with it.
        let mut by_status: BTreeMap<u16, Vec<String>> = BTreeMap::new();
        for (code, when) in errors {
            by_status
                .entry(code.http_status().as_u16())
                .or_default()
                .push(format!("{}: {when}", code.as_str()));
        }
        for (status, lines) in by_status {
            op["responses"][status.to_string().as_str()] =
                json!({"description": lines.join("; "), "content": error_body});
        }
        if secured {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(schema) = body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(extra);
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        paths
            .entry(path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|o| o.insert(method.to_owned(), op));
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "flashmall", "version": env!("CARGO_PKG_VERSION"),
            "description": "Flash-sale storefront API. Money is integer minor units; instants are RFC 3339 UTC."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Error": error, "Sale": sale(), "QueuePlace": queue_place()}
        }
    })
}

/// The document, built once.
pub fn document() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| Bytes::from(serde_json::to_vec(&build()).unwrap_or_default()))
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    /// Paths the edge answers itself, not a component.
    const EDGE_SERVED: [&str; 5] = [
        "/api/v1/openapi.json",
        "/api/v1/admin/blacklist",
        "/api/v1/admin/access-rules",
        "/api/v1/admin/blacklist/{id}",
        "/api/v1/sales/{id}/queue",
    ];

    fn routed(config: &ProxyConfig, path: &str) -> bool {
        config.routes.iter().any(|r| path.starts_with(&r.prefix))
    }

    #[test]
    fn every_documented_operation_has_a_route_and_a_metric_family() {
        let config = ProxyConfig::default();
        let mut seen = std::collections::HashSet::new();
        for op in operations() {
            assert!(
                seen.insert((op.method, op.path)),
                "{} {} is documented twice",
                op.method,
                op.path
            );
            assert!(
                ["get", "post", "put", "patch", "delete"].contains(&op.method),
                "{} {}: a lowercase HTTP method",
                op.method,
                op.path
            );
            assert!(
                EDGE_SERVED.contains(&op.path) || routed(&config, op.path),
                "{} {} is documented but no route sends it anywhere",
                op.method,
                op.path
            );
            assert_ne!(
                crate::edge::route_label(op.path),
                "other",
                "{} has no route family in the metrics",
                op.path
            );
            assert!(op.ok.len() == 3 && op.ok.starts_with('2'), "{}", op.path);
        }
    }

    #[test]
    fn every_route_is_documented() {
        let documented: Vec<&str> = operations().iter().map(|op| op.path).collect();
        for route in ProxyConfig::default().routes {
            assert!(
                documented.iter().any(|p| p.starts_with(&route.prefix)),
                "the route {} (to {}) has no documented operation",
                route.prefix,
                route.upstream
            );
        }
    }
}
