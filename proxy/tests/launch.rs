//! Starting the edge: a port someone else holds is a failed start, never an
//! edge reported up in front of a stranger.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test's failed step panics the test"
)]

use flashmall_mesh::identity::IdentityKey;
use flashmall_proxy::config::ProxyConfig;
use flashmall_proxy::{ProxySettings, launch};

fn settings(listen: std::net::SocketAddr) -> ProxySettings {
    ProxySettings {
        proxy: ProxyConfig {
            listen,
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..ProxyConfig::default()
        },
        jwt_secret: b"a test secret of at least thirty-two bytes".to_vec(),
        identity: IdentityKey::new(&[7; 32]).unwrap(),
        tls: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_held_by_another_process_fails_the_start() {
    let stranger = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = stranger.local_addr().unwrap();
    let error = match launch(&settings(taken)).await {
        Ok(running) => {
            running.stop().await;
            panic!("the edge reported itself up on {taken}, a port another socket listens on");
        }
        Err(e) => e,
    };
    assert!(
        error.contains(&taken.to_string()) && error.contains("proxy.listen"),
        "the error names the setting and the address: {error}"
    );
    // The stranger still owns its port.
    drop(stranger);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_zero_takes_a_free_port_and_reports_it() {
    let running = launch(&settings("127.0.0.1:0".parse().unwrap()))
        .await
        .expect("the edge starts");
    assert_ne!(running.addr.port(), 0);
    let answer = tokio::net::TcpStream::connect(running.addr).await;
    assert!(answer.is_ok(), "the edge listens on {}", running.addr);
    running.stop().await;
}
