//! `/api/v1/openapi.json`: the OpenAPI 3 document of the public API served
//! through the edge (the paths that exist today).

use std::sync::OnceLock;

use bytes::Bytes;
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
    }
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
                    "starts_at": {"type": "string", "format": "date-time"}, "ends_at": {"type": "string", "format": "date-time"}}}),
            ),
            "201",
        ),
        op(
            "get",
            "/api/v1/sales/{id}",
            "A sale with its status and live remaining units",
            false,
            None,
            "200",
        ),
        op(
            "post",
            "/api/v1/sales/{id}/purchase",
            "Reserve units (Idempotency-Key header required)",
            true,
            Some(
                json!({"type": "object", "required": ["quantity"], "properties": {"quantity": {"type": "integer", "minimum": 1}}}),
            ),
            "201",
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
    let error = json!({"type": "object", "properties": {"error": {"type": "object",
        "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}});
    let mut paths = serde_json::Map::new();
    for Operation {
        method,
        path,
        summary,
        secured,
        body,
        ok,
    } in operations()
    {
        let mut op = json!({
            "summary": summary,
            "responses": {
                ok: {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if secured {
            op["security"] = json!([{"bearer": []}]);
        }
        if let Some(schema) = body {
            op["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": schema}}});
        }
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
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
            "schemas": {"Error": error}
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
    const EDGE_SERVED: [&str; 4] = [
        "/api/v1/openapi.json",
        "/api/v1/admin/blacklist",
        "/api/v1/admin/access-rules",
        "/api/v1/admin/blacklist/{id}",
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
