//! The load generator's HTTP/1.1 client: one keep-alive connection per
//! simulated client, no pool, no redirects, nothing between the bench and
//! the socket but hyper's codec. Requests are built once per call from
//! shared parts, so the generator spends its CPU on the load, not on itself.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where requests go: the socket address and the `Host` header.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: HeaderValue,
    /// `http://host:port`, for messages and reports.
    pub base: String,
}

impl Endpoint {
    /// Resolves an `http://host:port` base URL (no path, no TLS: run the
    /// bench inside the network or through a port-forward).
    pub async fn resolve(base: &str) -> Result<Endpoint, String> {
        let base = base.trim_end_matches('/');
        let authority = base.strip_prefix("http://").ok_or_else(|| {
            format!("{base:?}: the bench speaks plain http; give http://host:port")
        })?;
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{base:?}: give http://host:port without a path"));
        }
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| format!("cannot resolve {authority}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority} resolves to no address"))?;
        let host =
            HeaderValue::from_str(authority).map_err(|e| format!("bad host {authority:?}: {e}"))?;
        Ok(Endpoint {
            addr,
            host,
            base: base.to_owned(),
        })
    }

    /// The endpoint of a local socket address.
    #[allow(clippy::expect_used, reason = "a socket address is a valid Host")]
    pub fn local(addr: SocketAddr) -> Endpoint {
        let authority = addr.to_string();
        Endpoint {
            addr,
            host: HeaderValue::from_str(&authority).expect("a socket address is a valid host"),
            base: format!("http://{authority}"),
        }
    }
}

/// One keep-alive connection.
pub struct Conn {
    sender: http1::SendRequest<Full<Bytes>>,
    host: HeaderValue,
}

/// An answer: the status, whether the server marked it a replay, and the body.
pub struct Answer {
    pub status: StatusCode,
    pub replayed: bool,
    pub body: Bytes,
}

impl Conn {
    pub async fn open(endpoint: &Endpoint) -> Result<Conn, String> {
        let stream = TcpStream::connect(endpoint.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", endpoint.addr))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {}: {e}", endpoint.addr))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Conn {
            sender,
            host: endpoint.host.clone(),
        })
    }

    /// True when the server closed the connection after its last answer
    /// (`Connection: close`): open another before sending.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends one request and reads the whole answer. An error means the
    /// connection is gone: open another.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(h) = request.headers_mut() {
            h.insert(header::HOST, self.host.clone());
            if !body.is_empty() {
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            for (name, value) in headers {
                h.insert(name.clone(), value.clone());
            }
        }
        let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Answer {
            status,
            replayed,
            body,
        })
    }
}
