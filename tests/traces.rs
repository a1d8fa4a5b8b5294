//! Distributed traces on a real OTLP receiver: Jaeger v1.75.0, started by
//! `scripts/stores` (`FLASHMALL_TEST_OTLP`, its OTLP/gRPC endpoint, and
//! `FLASHMALL_TEST_JAEGER`, its query API). The whole stack runs in this
//! process and exports its spans there; the traces are read back through
//! Jaeger's query API.
//!
//! One purchase is one trace (edge → engine, with the stock front and the
//! wait for settlement); the settlement batch and the order worker's batch
//! link to it, and the order service's span is the order worker's child.
//! One checkout is one trace through every component it calls (cart,
//! products, orders, payments) and the calls those make, each hop the
//! child of its caller.
//!
//! The public edge (the default) continues no client's trace: it starts
//! its own and names it in the answer's `traceresponse`.
//!
//! Without the receiver the tests are skipped, and fails when
//! `FLASHMALL_REQUIRE_REAL_STORES=1`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Duration;

use flashmall_mesh::telemetry::{LogFormat, init_logs};
use flashmall_mesh::trace::{self, TraceSettings};
use serde_json::{Value, json};
use support::eventually;
use support::stack::EdgeStack;

/// How long the test waits for an order or a trace to show (a figure, not
/// a check: the test polls and goes on as soon as it is there).
const PATIENCE: Duration = Duration::from_secs(60);

/// One span as Jaeger gives it back.
#[derive(Debug, Clone)]
struct Span {
    id: String,
    trace: String,
    name: String,
    /// CHILD_OF reference: (trace, span).
    parent: Option<(String, String)>,
    /// FOLLOWS_FROM references (links): (trace, span).
    links: Vec<(String, String)>,
    tags: HashMap<String, String>,
}

fn spans_of(trace: &Value) -> Vec<Span> {
    trace["spans"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let refs = |kind: &str| -> Vec<(String, String)> {
                s["references"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .filter(|r| r["refType"] == kind)
                    .map(|r| {
                        (
                            r["traceID"].as_str().unwrap_or_default().to_owned(),
                            r["spanID"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            };
            Span {
                id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                trace: s["traceID"].as_str().unwrap_or_default().to_owned(),
                name: s["operationName"].as_str().unwrap_or_default().to_owned(),
                parent: refs("CHILD_OF").into_iter().next(),
                links: refs("FOLLOWS_FROM"),
                tags: s["tags"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|t| {
                        let value = match &t["value"] {
                            Value::String(v) => v.clone(),
                            other => other.to_string(),
                        };
                        (t["key"].as_str().unwrap_or_default().to_owned(), value)
                    })
                    .collect(),
            }
        })
        .collect()
}

struct Jaeger {
    base: String,
    client: reqwest::Client,
}

impl Jaeger {
    /// What the query API answers at `path`, after exporting this
    /// process's finished spans; `None` until it answers JSON.
    async fn look(&self, path: &str) -> Option<Value> {
        trace::flush().unwrap();
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The spans of trace `id` once every name in `expected` is among
    /// them; flushes this process's spans before each look.
    async fn trace(&self, id: &str, expected: &[&str]) -> Vec<Span> {
        eventually(
            PATIENCE,
            &format!("trace {id} with {expected:?}"),
            || async {
                let body = self.look(&format!("/api/traces/{id}")).await?;
                let spans = spans_of(body["data"].get(0)?);
                let names: HashSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
                expected
                    .iter()
                    .all(|e| names.contains(e))
                    .then(|| spans.clone())
            },
        )
        .await
    }

    /// Spans named `operation` of `service`, in every trace, once one of
    /// them links to trace `linked`.
    async fn linking(&self, service: &str, operation: &str, linked: &str) -> (Span, Vec<Span>) {
        eventually(
            PATIENCE,
            &format!("a {operation:?} span linking to trace {linked}"),
            || async {
                let body = self
                    .look(&format!(
                        "/api/traces?service={service}&operation={}&limit=100&lookback=1h",
                        operation.replace(' ', "%20")
                    ))
                    .await?;
                body["data"].as_array()?.iter().find_map(|t| {
                    let spans = spans_of(t);
                    let span = spans
                        .iter()
                        .find(|s| s.name == operation && s.links.iter().any(|(t, _)| t == linked))?
                        .clone();
                    Some((span, spans))
                })
            },
        )
        .await
    }
}

fn named<'a>(spans: &'a [Span], name: &str) -> &'a Span {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span {name:?} in {:?}", names(spans)))
}

fn names(spans: &[Span]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

/// Every span of a trace but its root is the child of a span of the same
/// trace; the root is the child of the storefront's span `client_span`.
fn assert_one_tree(spans: &[Span], trace: &str, client_span: &str) {
    let ids: HashSet<&str> = spans.iter().map(|s| s.id.as_str()).collect();
    for s in spans {
        assert_eq!(s.trace, trace, "{s:?}");
        let (parent_trace, parent) = s.parent.clone().unwrap_or_default();
        assert_eq!(parent_trace, trace, "{} has no parent in the trace", s.name);
        assert!(
            ids.contains(parent.as_str()) || (s.name.starts_with("edge ") && parent == client_span),
            "{} is the child of {parent}, no span of {:?}",
            s.name,
            names(spans)
        );
    }
}

fn random_hex(bytes: usize) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    id[..bytes * 2].to_owned()
}

/// The receiver, with this process's spans exported to it under a service
/// name of its own (runs against one receiver do not mix); `None`: skipped.
fn receiver() -> Option<(Jaeger, &'static str)> {
    static SERVICE: OnceLock<String> = OnceLock::new();
    let (Ok(otlp), Ok(jaeger)) = (
        std::env::var("FLASHMALL_TEST_OTLP"),
        std::env::var("FLASHMALL_TEST_JAEGER"),
    ) else {
        eprintln!(
            "SKIPPED: FLASHMALL_TEST_OTLP/FLASHMALL_TEST_JAEGER are not set (scripts/test starts Jaeger)"
        );
        assert!(
            std::env::var("FLASHMALL_REQUIRE_REAL_STORES").as_deref() != Ok("1"),
            "the traces tests are required here"
        );
        return None;
    };
    let service = SERVICE.get_or_init(|| {
        let service = format!("flashmall-traces-{}", random_hex(6));
        // Held for the test process's life: its last queued lines go unwritten
        // at exit, as with any static.
        let logs = init_logs(
            LogFormat::Text,
            "warn",
            Some(&TraceSettings {
                endpoint: otlp,
                service_name: service.clone(),
                sample_ratio: 1.0,
            }),
        )
        .unwrap();
        std::mem::forget(logs);
        service
    });
    assert!(trace::enabled(), "the exporter is installed");
    let jaeger = Jaeger {
        base: jaeger,
        client: support::client(),
    };
    Some((jaeger, service))
}

/// The trace id a `traceresponse` header names.
fn trace_of(response: &reqwest::Response) -> String {
    let value = response.headers()["traceresponse"].to_str().unwrap();
    let context = trace::parse(value).unwrap_or_else(|| panic!("bad traceresponse {value:?}"));
    context.trace_id().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_and_a_checkout_are_each_one_trace_across_the_mesh() {
    let Some((jaeger, service)) = receiver() else {
        return;
    };
    // The storefront's own trace context is continued (a trusted front end).
    let s = EdgeStack::start(|p| {
        p.limits.clear();
        p.accept_traceparent = true;
    })
    .await;
    let admin = s.admin().await;
    let buyer = s.login("trace-buyer@example.com").await;

    // A purchase, in a trace the storefront started.
    let sale = s.sale(&admin, 5).await;
    let (purchase_trace, storefront_span) = (random_hex(16), random_hex(8));
    let response = s
        .client
        .post(s.url(&format!("/api/v1/sales/{sale}/purchase")))
        .bearer_auth(&buyer.access)
        .header("idempotency-key", "trace-purchase")
        .header(
            "traceparent",
            format!("00-{purchase_trace}-{storefront_span}-01"),
        )
        .json(&json!({"quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        trace_of(&response),
        purchase_trace,
        "the answer names the trace"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    let order = body["order_id"].as_str().unwrap().to_owned();
    eventually(PATIENCE, "the purchase's order is made", || async {
        let (status, _) = s
            .call(
                s.client
                    .get(s.url(&format!("/api/v1/orders/{order}")))
                    .bearer_auth(&buyer.access),
            )
            .await;
        (status == 200).then_some(())
    })
    .await;

    let spans = jaeger
        .trace(
            &purchase_trace,
            &[
                "edge POST purchase",
                "engine /api/v1/sales/{id}/purchase",
                "engine reserve (stock front)",
                "engine await settlement",
            ],
        )
        .await;
    assert_one_tree(&spans, &purchase_trace, &storefront_span);
    let edge = named(&spans, "edge POST purchase");
    let engine = named(&spans, "engine /api/v1/sales/{id}/purchase");
    assert_eq!(
        edge.parent,
        Some((purchase_trace.clone(), storefront_span.clone()))
    );
    assert_eq!(engine.parent.as_ref().map(|p| &p.1), Some(&edge.id));
    for span in [edge, engine] {
        assert_eq!(span.tags.get("request_id"), Some(&request_id), "{span:?}");
    }
    assert_eq!(edge.tags.get("status").map(String::as_str), Some("201"));
    for inner in ["engine reserve (stock front)", "engine await settlement"] {
        assert_eq!(
            named(&spans, inner).parent.as_ref().map(|p| &p.1),
            Some(&engine.id),
            "{inner}"
        );
    }

    // Settlement and the order worker work in batches: each batch span
    // links to the purchases it serves, and the order service's span is
    // the order worker's child.
    let (settle, _) = jaeger
        .linking(service, "engine settle", &purchase_trace)
        .await;
    assert!(
        settle
            .links
            .contains(&(purchase_trace.clone(), engine.id.clone())),
        "{settle:?}"
    );
    let (make, batch) = jaeger
        .linking(service, "engine make orders", &purchase_trace)
        .await;
    let create = batch
        .iter()
        .find(|s| s.name == "orders OrderService/CreateSaleOrders")
        .unwrap_or_else(|| panic!("no order service span in {:?}", names(&batch)));
    assert_eq!(create.parent, Some((make.trace.clone(), make.id.clone())));

    // A checkout: one trace through checkout, cart, products, orders and
    // payments.
    let seller = s.merchant(&admin, "trace-seller@example.com").await;
    let (status, product) = s
        .call(
            s.client
                .post(s.url("/api/v1/products"))
                .bearer_auth(&seller.access)
                .json(&json!({"name": "Traced kettle", "price": 2500, "stock": 3})),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let (status, body) = s
        .call(
            s.client
                .post(s.url("/api/v1/cart/items"))
                .bearer_auth(&buyer.access)
                .json(&json!({"product_id": product["id"], "quantity": 1})),
        )
        .await;
    assert!(status == 200 || status == 201, "{status} {body}");
    let (checkout_trace, storefront_span) = (random_hex(16), random_hex(8));
    let response = s
        .client
        .post(s.url("/api/v1/checkout"))
        .bearer_auth(&buyer.access)
        .header("idempotency-key", "trace-checkout")
        .header(
            "traceparent",
            format!("00-{checkout_trace}-{storefront_span}-01"),
        )
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        status == 200 || status == 201,
        "{status} {:?}",
        response.text().await
    );
    let spans = jaeger
        .trace(
            &checkout_trace,
            &[
                "edge POST checkout",
                "checkout /api/v1/checkout",
                "cart CartService/GetCart",
                "orders OrderService/PlaceOrder",
                "orders OrderService/HoldOrderStock",
                "products ProductCatalogService/HoldStock",
                "payments PaymentService/Charge",
                "orders OrderService/MarkOrderPaid",
                "cart CartService/EmptyCart",
            ],
        )
        .await;
    assert_one_tree(&spans, &checkout_trace, &storefront_span);
    let components: HashSet<&str> = spans
        .iter()
        .filter_map(|s| s.tags.get("component").map(String::as_str))
        .collect();
    for component in ["checkout", "cart", "products", "orders", "payments"] {
        assert!(
            components.contains(component),
            "{component}: {components:?}"
        );
    }
    for span in spans.iter().filter(|s| s.tags.contains_key("component")) {
        assert_eq!(span.tags.get("request_id"), Some(&request_id), "{span:?}");
    }
    // Each hop is the child of the one that called it, however deep.
    for (child, parent) in [
        ("checkout /api/v1/checkout", "edge POST checkout"),
        (
            "orders OrderService/HoldOrderStock",
            "checkout /api/v1/checkout",
        ),
        (
            "products ProductCatalogService/HoldStock",
            "orders OrderService/HoldOrderStock",
        ),
        (
            "payments PaymentService/Charge",
            "checkout /api/v1/checkout",
        ),
        (
            "orders OrderService/MarkOrderPaid",
            "payments PaymentService/Charge",
        ),
    ] {
        assert_eq!(
            named(&spans, child).parent.as_ref().map(|p| &p.1),
            Some(&named(&spans, parent).id),
            "{child} under {parent}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_public_cannot_pick_a_trace_or_force_sampling() {
    let Some((jaeger, _)) = receiver() else {
        return;
    };
    // The default edge: a client's traceparent is not continued.
    let s = EdgeStack::start(|p| p.limits.clear()).await;
    let buyer = s.login("trace-public@example.com").await;
    let chosen = random_hex(16);
    let response = s
        .client
        .get(s.url("/api/v1/users/me"))
        .bearer_auth(&buyer.access)
        .header("traceparent", format!("00-{chosen}-{}-01", random_hex(8)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = trace_of(&response);
    assert_ne!(started, chosen, "the edge started a trace of its own");
    let spans = jaeger
        .trace(&started, &["edge GET users", "auth /api/v1/users/me"])
        .await;
    let edge = named(&spans, "edge GET users");
    assert_eq!(edge.parent, None, "the edge's span is the root: {edge:?}");
    assert_eq!(
        named(&spans, "auth /api/v1/users/me").parent,
        Some((started.clone(), edge.id.clone()))
    );
    // Its spans were exported (just read back): none went to the client's.
    let status = jaeger
        .client
        .get(format!("{}/api/traces/{chosen}", jaeger.base))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 404, "no span joined the client's trace");
    s.stop().await;
}
