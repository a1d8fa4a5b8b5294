//! The Kubernetes manifests against the code: the cluster config is the
//! example config with cluster values, and every metric the dashboard, the
//! autoscalers and the prometheus-adapter rules name is one the code
//! exports. (`k8s/check.py`, run by `scripts/test`, renders the overlays,
//! validates them against the Kubernetes schemas and checks their configs
//! with `flashmall check-config`.)
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flashmall_bench::api;
use support::eventually;

fn root() -> PathBuf {
    flashmall_testing::package_dir()
}

/// Every leaf of a TOML document by its dotted path (`proxy.limits.1.scope`).
fn leaves(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table {
                leaves(&join(key), v, out);
            }
        }
        toml::Value::Array(items)
            if items.iter().all(toml::Value::is_table) && !items.is_empty() =>
        {
            for (i, v) in items.iter().enumerate() {
                leaves(&join(&i.to_string()), v, out);
            }
        }
        other => {
            out.insert(prefix.to_owned(), other.clone());
        }
    }
}

fn parse(path: &Path) -> BTreeMap<String, toml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let value: toml::Value = toml::from_str(&text).unwrap();
    let mut out = BTreeMap::new();
    leaves("", &value, &mut out);
    out
}

#[test]
fn the_cluster_config_is_the_example_with_cluster_values() {
    let example = parse(&root().join("flashmall.example.toml"));
    let cluster = parse(&root().join("k8s/base/flashmall.toml"));
    let missing: Vec<_> = example
        .keys()
        .filter(|k| !cluster.contains_key(*k))
        .collect();
    let extra: Vec<_> = cluster
        .keys()
        .filter(|k| !example.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "k8s/base/flashmall.toml must have exactly the example's fields; missing {missing:?}, extra {extra:?}"
    );
    // What a cluster changes, and nothing else: the example's defaults hold
    // for every other field.
    let expected: BTreeSet<&str> = [
        // JSON logs for the cluster's log pipeline.
        "log.format",
        // The dev overlay's embedded stores live on the pod's volume.
        "data.dir",
        // Listen on the pod's address; endpoints are the headless Services.
        "proxy.listen",
        "proxy.admin_listen",
        "engine.listen",
        "auth.listen",
        "orders.listen",
        "payments.listen",
        "products.listen",
        "cart.listen",
        "checkout.listen",
        "proxy.upstreams.auth",
        "proxy.upstreams.engine",
        "proxy.upstreams.orders",
        "proxy.upstreams.payments",
        "proxy.upstreams.products",
        "proxy.upstreams.cart",
        "proxy.upstreams.checkout",
        "engine.order_endpoints",
        "orders.engine_endpoints",
        "orders.product_endpoints",
        "payments.order_endpoints",
        "cart.product_endpoints",
        "checkout.cart_endpoints",
        "checkout.product_endpoints",
        "checkout.order_endpoints",
        "checkout.payment_endpoints",
        // Probes and metrics on their own port (the production overlay's
        // mutual TLS leaves the kubelet and Prometheus out of the main one).
        "mesh.admin_listen",
        // The production overlay's stores: Redis, TiKV, ScyllaDB (RF 3).
        "proxy.redis_url",
        "redis.url",
        "redis.pool_size",
        "ledger.backend",
        "ledger.pd_endpoints",
        "store.backend",
        "store.scylla_nodes",
        "store.replication_factor",
        "store.datacenter",
    ]
    .into();
    let differ: BTreeSet<&str> = example
        .iter()
        .filter(|(k, v)| cluster.get(*k) != Some(v))
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(
        differ, expected,
        "the fields where k8s/base/flashmall.toml differs from the example"
    );
    // The component ports are the example's: the manifests use them.
    for (field, port) in [
        ("proxy.listen", 8080),
        ("engine.listen", 8081),
        ("auth.listen", 8082),
        ("orders.listen", 8083),
        ("payments.listen", 8084),
        ("products.listen", 8085),
        ("cart.listen", 8086),
        ("checkout.listen", 8087),
    ] {
        assert_eq!(
            cluster[field].as_str(),
            Some(format!("0.0.0.0:{port}").as_str()),
            "{field}"
        );
    }
}

/// Files under `dir` (recursively) whose names end with one of `exts`.
fn files(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                files(&path, exts, out);
            }
        } else if exts.iter().any(|e| name.ends_with(e)) {
            out.push(path);
        }
    }
}

/// Every `flashmall_…` metric-like word in `text`.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("flashmall_") {
        let start = at + found;
        let before = start.checked_sub(1).map(|i| bytes[i]);
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        let word_start = !matches!(before, Some(b) if b.is_ascii_alphanumeric() || b == b'_');
        if word_start {
            words.insert(text[start..end].to_owned());
        }
        at = end;
    }
    words
}

/// Metric names the code registers: the literal first argument of every
/// `counter!`, `gauge!` and `histogram!` in the workspace's sources, with
/// whether it is a histogram.
fn exported_metrics() -> BTreeMap<String, bool> {
    let mut sources = Vec::new();
    for krate in [
        "src",
        "engine/src",
        "proxy/src",
        "services/src",
        "mesh/src",
        "embedded-kv/src",
    ] {
        files(&root().join(krate), &[".rs"], &mut sources);
    }
    let mut names = BTreeMap::new();
    for path in sources {
        let text = std::fs::read_to_string(&path).unwrap();
        for (kind, histogram) in [
            ("counter!(", false),
            ("gauge!(", false),
            ("histogram!(", true),
        ] {
            for (at, _) in text.match_indices(kind) {
                let rest = text[at + kind.len()..].trim_start();
                if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                    && name.starts_with("flashmall_")
                {
                    names.insert(name.to_owned(), histogram);
                }
            }
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_and_the_autoscalers_use_is_exported() {
    let exported = exported_metrics();
    assert!(
        exported.len() > 30,
        "the source scan found only {exported:?}"
    );
    let mut manifests = Vec::new();
    files(&root().join("k8s"), &[".yaml", ".json"], &mut manifests);
    let mut used = BTreeMap::<String, Vec<String>>::new();
    for path in &manifests {
        let text = std::fs::read_to_string(path).unwrap();
        for word in metric_words(&text) {
            let name = path.strip_prefix(root()).unwrap().display().to_string();
            used.entry(word).or_default().push(name);
        }
    }
    for needed in [
        "flashmall_proxy_requests_in_flight",
        "flashmall_engine_settlement_backlog",
        "flashmall_engine_purchases_total",
        "flashmall_engine_purchase_duration_seconds_bucket",
        "flashmall_proxy_rejections_total",
    ] {
        assert!(
            used.contains_key(needed),
            "the manifests never use {needed}"
        );
    }
    let unknown: Vec<String> = used
        .iter()
        .filter(|(word, _)| {
            let histogram_series = ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                word.strip_suffix(suffix)
                    .is_some_and(|base| exported.get(base) == Some(&true))
            });
            !exported.contains_key(*word) && !histogram_series
        })
        .map(|(word, files)| format!("{word} (in {})", files.join(", ")))
        .collect();
    assert!(
        unknown.is_empty(),
        "metrics the code does not export: {unknown:#?}"
    );
}

/// The series of `name` in a Prometheus text page, with their labels.
fn series<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    page.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaling_metrics_are_served_with_the_labels_the_rules_use() {
    let (stack, _data) = flashmall::stack::Throwaway {
        redis: None,
        fast_ack: false,
        max_quantity: 1,
        payment_timeout: Duration::from_secs(900),
    }
    .start()
    .await
    .unwrap();
    let base = stack.base();
    let client = reqwest::Client::new();
    let password = "ops password 0123456";
    stack
        .register_admin("ops@k8s.flashmall", password)
        .await
        .unwrap();
    let admin = api::login(&client, &base, "ops@k8s.flashmall", password)
        .await
        .unwrap();
    let buyer = api::register(&client, &base, "buyer@k8s.flashmall", password)
        .await
        .unwrap();
    let opens = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let sale = api::create_sale(&client, &base, &admin, "k8s-product", 1, 1, opens)
        .await
        .unwrap();
    // An unauthenticated purchase: the edge rejects it.
    let purchase = format!("{base}/api/v1/sales/{sale}/purchase");
    let status = client
        .post(&purchase)
        .json(&serde_json::json!({"quantity": 1}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401);
    // The buyer's purchase, once the sale opens.
    eventually(Duration::from_secs(10), "the sale to open", || async {
        let (status, body) = api::json_of(
            client
                .post(&purchase)
                .bearer_auth(&buyer)
                .header("Idempotency-Key", "k8s-1")
                .json(&serde_json::json!({"quantity": 1})),
        )
        .await
        .unwrap();
        assert!(status == 201 || status == 409, "{status} {body}");
        (status == 201).then_some(())
    })
    .await;
    // Settlement reports the sale's backlog; the edge its requests in flight.
    let page = eventually(
        Duration::from_secs(10),
        "flashmall_engine_settlement_backlog in /metrics",
        || async {
            let page = client
                .get(format!("{}/metrics", stack.admin_base()))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            (!series(&page, "flashmall_engine_settlement_backlog").is_empty()).then_some(page)
        },
    )
    .await;
    let backlog = series(&page, "flashmall_engine_settlement_backlog");
    assert!(
        backlog
            .iter()
            .any(|s| s.contains(&format!("sale=\"{sale}\""))),
        "the backlog of sale {sale} is labelled by sale: {backlog:?}"
    );
    let in_flight = series(&page, "flashmall_proxy_requests_in_flight");
    assert_eq!(in_flight.len(), 1, "{page}");
    for (name, label) in [
        ("flashmall_engine_purchases_total", "outcome=\"reserved\""),
        (
            "flashmall_engine_purchase_duration_seconds_bucket",
            "outcome=\"reserved\"",
        ),
        (
            "flashmall_proxy_rejections_total",
            "reason=\"unauthenticated\"",
        ),
        ("flashmall_proxy_requests_total", "status=\"201\""),
        (
            "flashmall_proxy_request_duration_seconds_bucket",
            "route=\"",
        ),
    ] {
        assert!(
            series(&page, name).iter().any(|s| s.contains(label)),
            "{name} with {label} is not served: {:?}",
            series(&page, name)
        );
    }
    stack.stop().await;
}
