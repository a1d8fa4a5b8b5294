//! A TCP load balancer in front of the edges, as a cloud load balancer
//! stands in front of the edge Service: each new connection goes to the
//! next edge that accepts it, so when an edge dies its connections break
//! (their requests are lost, and clients retry) and new ones go to the
//! others.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub struct Balancer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Result<Balancer, String> {
        if backends.is_empty() {
            return Err("the balancer needs at least one edge".into());
        }
        let listener = flashmall_mesh::serve::listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| format!("the balancer cannot listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let backends = Arc::new(backends);
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let first = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(forward(inbound, Arc::clone(&backends), first));
            }
        });
        Ok(Balancer { addr, task })
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to the first backend that accepts, from `first` on, and
/// copies both ways until either side closes.
async fn forward(mut inbound: TcpStream, backends: Arc<Vec<SocketAddr>>, first: usize) {
    for i in 0..backends.len() {
        let backend = backends[(first + i) % backends.len()];
        let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend));
        if let Ok(Ok(mut outbound)) = connect.await {
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            return;
        }
    }
}
