//! Mutual TLS between components (`[mesh.tls]`), on the whole stack in
//! this process with one certificate per component, as cert-manager issues
//! them in production: the shop runs through the edge with every hop over
//! mutual TLS; no component answers a caller without a certificate of the
//! mesh's CA, nor one whose certificate another CA signed; a caller refuses
//! a callee whose certificate names another component; and certificates
//! and the CA itself rotate under the running stack, without a restart.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flashmall_mesh::{MeshTls, TlsConfig};
use flashmall_testing::pki::{Issued, TestCa, replace_file};
use serde_json::{Value, json};
use support::eventually;
use support::stack::{EdgeStack, Login, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every component, by the name its certificate carries.
const COMPONENTS: [&str; 8] = [
    "edge", "engine", "auth", "orders", "payments", "products", "cart", "checkout",
];

/// How often the components read their files again in these tests.
const RELOAD: Duration = Duration::from_millis(100);

fn files(ca_file: &Path, issued: &Issued) -> TlsConfig {
    TlsConfig {
        ca_file: ca_file.to_owned(),
        cert_file: issued.cert_file.clone(),
        key_file: issued.key_file.clone(),
        reload_interval: RELOAD,
    }
}

/// One certificate per component under `ca`, each with its own copy of the
/// CA file (so a test can change what one component trusts).
fn mesh(ca: &TestCa, dir: &Path) -> HashMap<String, TlsConfig> {
    COMPONENTS
        .iter()
        .map(|c| {
            let home = dir.join(c);
            let issued = ca.issue(&home, "tls", &[c, &format!("flashmall-{c}")]);
            let ca_file = home.join("ca.crt");
            std::fs::copy(ca.ca_file(), &ca_file).unwrap();
            (c.to_string(), files(&ca_file, &issued))
        })
        .collect()
}

/// The address of every component but the edge.
fn components(s: &EdgeStack) -> Vec<(&'static str, SocketAddr)> {
    let stack = s.stack();
    let mut all = vec![("engine", stack.engine.addr), ("orders", stack.orders.addr)];
    all.extend(stack.services.iter().map(|(name, r)| (*name, r.addr)));
    assert_eq!(all.len(), COMPONENTS.len() - 1);
    all
}

/// `GET /healthz` from component `target` at `addr` as the holder of `tls`:
/// the status, or why there was none.
async fn health(tls: &MeshTls, target: &str, addr: SocketAddr) -> Result<u16, String> {
    flashmall_mesh::tls::get(Some(tls), target, addr, "/healthz", &[], 1024)
        .await
        .map(|(status, _)| status.as_u16())
}

/// A TLS client trusting the CAs of `trust`, presenting `cert` if given:
/// built with rustls directly, so it can hold what no component may load
/// (no certificate, or one its own trust does not cover).
fn raw_client(trust: &Path, cert: Option<&Issued>) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for root in CertificateDer::pem_file_iter(trust).unwrap() {
        roots.add(root.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match cert {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let chain = CertificateDer::pem_file_iter(&issued.cert_file)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(&issued.key_file).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

/// What `client` reads back after asking component `target` at `addr` for
/// `/healthz`: the answer, or why there was none.
async fn raw_health(client: rustls::ClientConfig, target: &str, addr: SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(target.to_owned()).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    // TLS 1.3 finishes the client's side before the server has looked at
    // the client's certificate: a refusal may arrive on the first read.
    let mut stream = match connector.connect(name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return format!("handshake refused: {e}"),
    };
    let _ = stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer).await {
        Ok(_) => String::from_utf8_lossy(&answer).into_owned(),
        Err(e) => format!("read refused: {e}"),
    }
}

fn answered(raw: &str) -> bool {
    raw.starts_with("HTTP/1.1 200")
}

async fn call(s: &EdgeStack, request: reqwest::RequestBuilder) -> (u16, Value) {
    s.call(request).await
}

/// A sale purchase (edge → engine → orders) and a checkout (edge →
/// checkout → cart, products, orders, payments) through the edge.
async fn shop(s: &EdgeStack, admin: &Login, buyer: &Login, tag: &str) {
    let sale = s.sale(admin, 10).await;
    let (status, won) = s.purchase(buyer, &sale, &format!("buy-{tag}")).await;
    assert_eq!(status, 201, "{won}");
    let reservation = won["reservation_id"].clone();
    let order = eventually(Duration::from_secs(20), "the sale's order", || async {
        let (status, list) = call(
            s,
            s.client
                .get(s.url("/api/v1/orders"))
                .bearer_auth(&buyer.access),
        )
        .await;
        (status == 200)
            .then(|| {
                list["orders"]
                    .as_array()?
                    .iter()
                    .find(|o| o["reservation_id"] == reservation)
                    .cloned()
            })
            .flatten()
    })
    .await;
    let (status, paid) = call(
        s,
        s.client
            .post(s.url("/api/v1/payments"))
            .bearer_auth(&buyer.access)
            .header("idempotency-key", format!("pay-{tag}"))
            .json(&json!({"order_id": order["id"], "amount": order["total"]})),
    )
    .await;
    assert!(matches!(status, 201 | 202), "pay: {status} {paid}");

    let (status, product) = call(
        s,
        s.client
            .post(s.url("/api/v1/products"))
            .bearer_auth(&admin.access)
            .json(&json!({"name": format!("Tea {tag}"), "price": 1250, "stock": 5})),
    )
    .await;
    assert_eq!(status, 201, "{product}");
    let (status, body) = call(
        s,
        s.client
            .post(s.url("/api/v1/cart/items"))
            .bearer_auth(&buyer.access)
            .json(&json!({"product_id": product["id"], "quantity": 2})),
    )
    .await;
    assert!(matches!(status, 200 | 201), "add to cart: {status} {body}");
    let (status, checkout) = call(
        s,
        s.client
            .post(s.url("/api/v1/checkout"))
            .bearer_auth(&buyer.access)
            .header("idempotency-key", format!("checkout-{tag}")),
    )
    .await;
    assert_eq!(status, 201, "{checkout}");
    assert_eq!(checkout["status"], "paid", "{checkout}");
    assert_eq!(checkout["total"], 2500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_runs_over_mutual_tls_and_components_answer_only_mesh_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"), "mesh");
    let tls = mesh(&ca, dir.path());
    let s = EdgeStack::start_with(
        Options {
            tls,
            ..Options::default()
        },
        |proxy| proxy.limits.clear(),
    )
    .await;
    let admin = s.admin().await;
    let buyer = s.login("buyer@example.com").await;
    shop(&s, &admin, &buyer, "one").await;

    // The sold-out gate learns a sale's holders from the engine over
    // mutual TLS too.
    let sale = s.sale(&admin, 1).await;
    let late = s.login("late@example.com").await;
    assert_eq!(s.purchase(&buyer, &sale, "last").await.0, 201);
    let (status, body) = s.purchase(&late, &sale, "late-1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("sold_out"))
    );
    let before = s.gate_answers().await;
    eventually(
        Duration::from_secs(10),
        "the edge's gate closes",
        || async {
            let (status, _) = s.purchase(&late, &sale, "late-2").await;
            assert_eq!(status, 409);
            (s.gate_answers().await > before).then_some(())
        },
    )
    .await;

    // A tester holding a certificate of the mesh's CA is answered by every
    // component; the same tester is refused by a callee whose certificate
    // names another component than the one it meant to call.
    let tester_files = ca.issue(&dir.path().join("tester"), "tls", &["tester"]);
    let tester = MeshTls::load(&files(&ca.ca_file(), &tester_files))
        .await
        .unwrap();
    let foreign_ca = TestCa::new(&dir.path().join("foreign"), "foreign");
    let stranger = foreign_ca.issue(&dir.path().join("stranger"), "tls", &["orders"]);
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (name, addr) in components(&s) {
        assert_eq!(health(&tester, name, addr).await, Ok(200), "{name}");
        let other = if name == "engine" { "orders" } else { "engine" };
        let wrong_name = health(&tester, other, addr).await;
        assert!(
            wrong_name
                .as_ref()
                .is_err_and(|e| e.contains("certificate")),
            "{name} taken for {other}: {wrong_name:?}"
        );
        // Plain HTTP: no answer at all.
        let answer = plain.get(format!("http://{addr}/healthz")).send().await;
        assert!(answer.is_err(), "{name} answered plain HTTP: {answer:?}");
        // The raw client works: with a mesh certificate it is answered.
        let tester_raw = raw_client(&ca.ca_file(), Some(&tester_files));
        let raw = raw_health(tester_raw, name, addr).await;
        assert!(answered(&raw), "{name}: {raw}");
        // TLS without a certificate: refused.
        let raw = raw_health(raw_client(&ca.ca_file(), None), name, addr).await;
        assert!(
            !answered(&raw),
            "{name} answered a caller without a certificate: {raw}"
        );
        // A certificate of another CA, even one naming a component: refused.
        let raw = raw_health(raw_client(&ca.ca_file(), Some(&stranger)), name, addr).await;
        assert!(
            !answered(&raw),
            "{name} answered a foreign certificate: {raw}"
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_the_ca_rotate_under_a_running_mesh_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new(&dir.path().join("old-ca"), "old");
    let tls = mesh(&old_ca, dir.path());
    let s = EdgeStack::start_with(
        Options {
            tls: tls.clone(),
            ..Options::default()
        },
        |proxy| proxy.limits.clear(),
    )
    .await;
    let admin = s.admin().await;
    let buyer = s.login("buyer@example.com").await;
    shop(&s, &admin, &buyer, "before").await;

    let new_ca = TestCa::new(&dir.path().join("new-ca"), "new");
    let old_tester = MeshTls::load(&files(
        &old_ca.ca_file(),
        &old_ca.issue(&dir.path().join("old-tester"), "tls", &["tester"]),
    ))
    .await
    .unwrap();
    // Holds a certificate of the new CA while the components still present
    // certificates of the old one.
    let new_tester = new_ca.issue(&dir.path().join("new-tester"), "tls", &["tester"]);
    let new_cert_old_trust = || raw_client(&old_ca.ca_file(), Some(&new_tester));
    for (name, addr) in components(&s) {
        let raw = raw_health(new_cert_old_trust(), name, addr).await;
        assert!(!answered(&raw), "{name} trusts the new CA early: {raw}");
    }

    // 1. Every component trusts both CAs (a bundle, as during a rotation).
    let bundle = dir.path().join("bundle.crt");
    let mut both = std::fs::read(old_ca.ca_file()).unwrap();
    both.extend(std::fs::read(new_ca.ca_file()).unwrap());
    std::fs::write(&bundle, both).unwrap();
    for config in tls.values() {
        replace_file(&config.ca_file, &bundle);
    }
    eventually(
        Duration::from_secs(20),
        "every component trusts the new CA",
        || async {
            for (name, addr) in components(&s) {
                if !answered(&raw_health(new_cert_old_trust(), name, addr).await) {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // 2. Every component gets a certificate of the new CA, then trusts the
    //    new CA alone. The key and certificate files change one at a time,
    //    as a renewal writes them: a half-changed pair is refused and the
    //    component keeps its last good set until the pair is whole.
    for (component, config) in &tls {
        let fresh = new_ca.issue(
            &dir.path().join("renewed").join(component),
            "tls",
            &[component, &format!("flashmall-{component}")],
        );
        replace_file(&config.cert_file, &fresh.cert_file);
        replace_file(&config.key_file, &fresh.key_file);
    }
    for config in tls.values() {
        replace_file(&config.ca_file, &new_ca.ca_file());
    }
    let new_only = MeshTls::load(&files(
        &new_ca.ca_file(),
        &new_ca.issue(&dir.path().join("new-only"), "tls", &["tester"]),
    ))
    .await
    .unwrap();
    eventually(
        Duration::from_secs(20),
        "the old CA is gone from every component",
        || async {
            for (name, addr) in components(&s) {
                // Answers under the new CA, refuses the old one's certificates.
                if health(&new_only, name, addr).await != Ok(200)
                    || health(&old_tester, name, addr).await.is_ok()
                {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    // The edge and the components call each other with the new
    // certificates: the shop runs on, nothing restarted.
    shop(&s, &admin, &buyer, "after").await;
    s.stop().await;
}
