//! Mutual TLS between components (`[mesh.tls]`).
//!
//! Every component holds one certificate signed by the mesh's CA, naming
//! its component (`orders`, `engine`, `edge`, …) as a DNS name. A component
//! serves its port only to callers presenting a certificate signed by that
//! CA, and a caller accepts a callee only if its certificate names the
//! component it meant to call: a stolen address or a spoofed DNS answer
//! gets nothing, and nothing without a component certificate can call a
//! component at all.
//!
//! The files are read again every `reload_interval`; a changed set that
//! parses replaces the old one for the next handshake (connections already
//! open keep theirs), so renewed certificates and a new CA take effect
//! without a restart. A set that does not parse is refused, logged and
//! counted, and the last good one stays.
//!
//! `flashmall up` keeps its components on plain loopback: this is for
//! components run on their own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

/// How long a caller has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress on one listener at most; more wait for a slot.
const MAX_HANDSHAKES: usize = 256;

/// `[mesh.tls]`: the component's certificate, its key and the mesh's CA.
/// All three files set: mutual TLS on the component's port and on every
/// call it makes to another component; all three empty: plain HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificates a peer's certificate must chain to
    /// (several during a CA rotation).
    pub ca_file: PathBuf,
    /// PEM file of this component's certificate chain, leaf first; the leaf
    /// names the component as a DNS name (`orders`, `edge`, …).
    pub cert_file: PathBuf,
    /// PEM file of this component's private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
    /// How often the three files are read again for a renewed certificate.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: PathBuf::new(),
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            reload_interval: Duration::from_secs(30),
        }
    }
}

impl TlsConfig {
    /// True when the three files are set.
    pub fn enabled(&self) -> bool {
        !self.ca_file.as_os_str().is_empty()
    }

    pub fn validate(&self) -> Result<(), String> {
        let set = [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ];
        let given = set
            .iter()
            .filter(|(_, p)| !p.as_os_str().is_empty())
            .count();
        if given != 0 && given != set.len() {
            let missing: Vec<&str> = set
                .iter()
                .filter(|(_, p)| p.as_os_str().is_empty())
                .map(|(name, _)| *name)
                .collect();
            return Err(format!(
                "mesh.tls: ca_file, cert_file and key_file are set together (missing: {})",
                missing.join(", ")
            ));
        }
        if self.reload_interval < Duration::from_millis(100) {
            return Err("mesh.tls.reload_interval must be at least 100ms".into());
        }
        Ok(())
    }
}

/// One loaded set of files.
pub struct Material {
    generation: u64,
    fingerprint: [u8; 32],
    certified: Arc<CertifiedKey>,
    key: PrivateKeyDer<'static>,
    roots: Vec<CertificateDer<'static>>,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
}

impl Material {
    /// Counts the sets loaded by this process's `MeshTls` (1 for the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// This component's certificate chain, leaf first (DER).
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// This component's private key (DER).
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The CA certificates peers must chain to (DER).
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

struct Shared {
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<Material>>,
}

impl Shared {
    fn current(&self) -> Arc<Material> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The loaded certificates of one component, reloaded in the background.
/// Cheap to clone; the reload stops once every clone is dropped.
#[derive(Clone)]
pub struct MeshTls {
    shared: Arc<Shared>,
    server: Arc<ServerConfig>,
}

impl std::fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTls")
            .field("cert_file", &self.shared.config.cert_file)
            .field("generation", &self.shared.current().generation)
            .finish()
    }
}

/// *ring*, the provider Pingora's TLS uses too: aws-lc-rs (rustls's
/// default, with post-quantum key exchange) would add a C build of minutes.
/// Mesh traffic stays inside the cluster, under certificates that live a day.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn read(field: &str, path: &Path) -> Result<Vec<u8>, String> {
    tokio::fs::read(path)
        .await
        .map_err(|e| format!("mesh.tls.{field} {}: {e}", path.display()))
}

/// Reads the three files and their fingerprint.
async fn read_files(config: &TlsConfig) -> Result<([Vec<u8>; 3], [u8; 32]), String> {
    let files = [
        read("ca_file", &config.ca_file).await?,
        read("cert_file", &config.cert_file).await?,
        read("key_file", &config.key_file).await?,
    ];
    let mut hash = Sha256::new();
    for file in &files {
        hash.update((file.len() as u64).to_le_bytes());
        hash.update(file);
    }
    Ok((files, hash.finalize().into()))
}

fn certificates(field: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("mesh.tls.{field}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("mesh.tls.{field}: no certificate in the file"));
    }
    Ok(certs)
}

/// Parses a set of files into what the handshakes use.
fn parse(
    provider: &Arc<CryptoProvider>,
    [ca, cert, key]: &[Vec<u8>; 3],
    fingerprint: [u8; 32],
    generation: u64,
) -> Result<Material, String> {
    let roots = certificates("ca_file", ca)?;
    let chain = certificates("cert_file", cert)?;
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("mesh.tls.key_file: not a PEM private key: {e}"))?;
    let mut store = RootCertStore::empty();
    for root in &roots {
        store
            .add(root.clone())
            .map_err(|e| format!("mesh.tls.ca_file: not a CA certificate: {e}"))?;
    }
    let store = Arc::new(store);
    let certified = CertifiedKey::from_der(chain, key.clone_key(), provider)
        .map_err(|e| format!("mesh.tls: the key does not fit the certificate: {e}"))?;
    // The component's own certificate must chain to the CA it trusts:
    // peers trust the same CA, so a mismatch means nothing could connect.
    let servers = WebPkiServerVerifier::builder_with_provider(Arc::clone(&store), provider.clone())
        .build()
        .map_err(|e| format!("mesh.tls.ca_file: {e}"))?;
    let clients = WebPkiClientVerifier::builder_with_provider(store, provider.clone())
        .build()
        .map_err(|e| format!("mesh.tls.ca_file: {e}"))?;
    let (leaf, intermediates) = certified
        .cert
        .split_first()
        .ok_or("mesh.tls.cert_file: no certificate in the file")?;
    clients
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|e| {
            format!("mesh.tls.cert_file: the certificate is not valid under mesh.tls.ca_file: {e}")
        })?;
    Ok(Material {
        generation,
        fingerprint,
        certified: Arc::new(certified),
        key,
        roots,
        clients,
        servers,
    })
}

impl MeshTls {
    /// Loads the files of `config` and starts reloading them; fails with a
    /// message naming the file at fault. Call inside a tokio runtime.
    pub async fn load(config: &TlsConfig) -> Result<MeshTls, String> {
        config.validate()?;
        let provider = provider();
        let (files, fingerprint) = read_files(config).await?;
        let material = parse(&provider, &files, fingerprint, 1)?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            provider: Arc::clone(&provider),
            current: RwLock::new(Arc::new(material)),
        });
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("mesh.tls: {e}"))?
            .with_client_cert_verifier(Arc::new(CurrentClients(Arc::clone(&shared))))
            .with_cert_resolver(Arc::new(CurrentCert(Arc::clone(&shared))));
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(reload(Arc::downgrade(&shared)));
        Ok(MeshTls {
            shared,
            server: Arc::new(server),
        })
    }

    /// Loads `config` if it names files; `None` for plain HTTP.
    pub async fn load_if_enabled(config: &TlsConfig) -> Result<Option<MeshTls>, String> {
        if config.enabled() {
            MeshTls::load(config).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<Material> {
        self.shared.current()
    }

    /// What a server of this component hands its handshakes.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    /// A client configuration for calls to component `target`: presents this
    /// component's certificate and accepts only a certificate that chains
    /// to the CA and names `target`, whatever address it was reached at.
    /// `alpn`: `b"h2"` for gRPC, `b"http/1.1"` for HTTP/1.
    pub fn client_config(&self, target: &str, alpn: &[u8]) -> Result<Arc<ClientConfig>, String> {
        let name = ServerName::try_from(target.to_owned())
            .map_err(|e| format!("{target:?} is not a component name: {e}"))?;
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.shared.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("mesh.tls: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CurrentServers {
                shared: Arc::clone(&self.shared),
                name,
            }))
            .with_client_cert_resolver(Arc::new(CurrentCert(Arc::clone(&self.shared))));
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(Arc::new(config))
    }

    /// Serves TLS on `listener`: handshakes run beside the accept loop (a
    /// slow caller holds up no other), and only completed ones are handed
    /// on. `component` labels the failures metric.
    pub fn listener(&self, component: &'static str, listener: TcpListener) -> TlsListener {
        let local = listener.local_addr();
        let (handed, incoming) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        let accepting = tokio::spawn(accept_loop(component, listener, acceptor, handed));
        TlsListener {
            incoming,
            local,
            accepting,
        }
    }

    /// A connector for tonic's `Endpoint::connect_with_connector`: TCP to
    /// the URI's address, then TLS to component `target`, speaking h2.
    pub fn connector(&self, target: &str) -> Result<TlsConnector, String> {
        Ok(TlsConnector {
            config: self.client_config(target, b"h2")?,
            name: target.to_owned(),
        })
    }
}

/// Reads the files every `reload_interval` while a `MeshTls` lives.
async fn reload(shared: Weak<Shared>) {
    let interval = match shared.upgrade() {
        Some(s) => s.config.reload_interval,
        None => return,
    };
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let current = shared.current();
        let outcome = match read_files(&shared.config).await {
            Ok((_, fingerprint)) if fingerprint == current.fingerprint => continue,
            Ok((files, fingerprint)) => parse(
                &shared.provider,
                &files,
                fingerprint,
                current.generation + 1,
            ),
            Err(e) => Err(e),
        };
        match outcome {
            Ok(material) => {
                tracing::info!(
                    generation = material.generation,
                    cert_file = %shared.config.cert_file.display(),
                    "mesh certificates reloaded"
                );
                *shared
                    .current
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = Arc::new(material);
                metrics::counter!("flashmall_mesh_tls_reloads_total", "outcome" => "loaded")
                    .increment(1);
            }
            Err(e) => {
                // Files half written by a renewal parse on the next round.
                tracing::warn!(error = %e, "mesh certificates not reloaded; keeping the current ones");
                metrics::counter!("flashmall_mesh_tls_reloads_total", "outcome" => "refused")
                    .increment(1);
            }
        }
    }
}

/// Hands out the current certificate, as a server and as a client.
#[derive(Debug)]
struct CurrentCert(Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cert_file", &self.config.cert_file)
            .finish()
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().certified))
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0.current().certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Requires a client certificate chaining to the current CA.
#[derive(Debug)]
struct CurrentClients(Arc<Shared>);

impl ClientCertVerifier for CurrentClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; every component holds one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Requires a server certificate chaining to the current CA and naming the
/// component called (not the address dialled).
#[derive(Debug)]
struct CurrentServers {
    shared: Arc<Shared>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for CurrentServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.shared.current().servers.verify_server_cert(
            end_entity,
            intermediates,
            &self.name,
            ocsp,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.shared.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.shared.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type Handed = (tokio_rustls::server::TlsStream<TcpStream>, SocketAddr);

async fn accept_loop(
    component: &'static str,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    handed: mpsc::Sender<Handed>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!(component, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, handed) = (acceptor.clone(), handed.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = handed.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    tracing::debug!(component, %peer, error = %e, "TLS handshake refused");
                    metrics::counter!("flashmall_mesh_tls_handshake_failures_total", "component" => component)
                        .increment(1);
                }
                Err(_) => {
                    tracing::debug!(component, %peer, "TLS handshake timed out");
                    metrics::counter!("flashmall_mesh_tls_handshake_failures_total", "component" => component)
                        .increment(1);
                }
            }
        });
    }
}

/// A listener handing out connections whose mutual TLS handshake is done
/// (for `axum::serve`).
pub struct TlsListener {
    incoming: mpsc::Receiver<Handed>,
    local: io::Result<SocketAddr>,
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (its listener is gone): nothing more
            // will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.local {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting = Pin<
    Box<
        dyn Future<
                Output = Result<
                    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
                    BoxError,
                >,
            > + Send,
    >,
>;

/// Connects over mutual TLS to one component (see `MeshTls::connector`).
#[derive(Clone)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    name: String,
}

impl TlsConnector {
    async fn connect(
        config: Arc<ClientConfig>,
        name: String,
        address: String,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, BoxError> {
        let tcp = TcpStream::connect(&address).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(name)?;
        Ok(tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?)
    }
}

impl tower::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let (config, name) = (Arc::clone(&self.config), self.name.clone());
        Box::pin(async move {
            let authority = uri
                .authority()
                .ok_or_else(|| format!("{uri} has no address"))?
                .to_string();
            let stream = TlsConnector::connect(config, name, authority).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// One HTTP/1.1 `GET` of `path` from component `target` at `addr`, over
/// mutual TLS when `tls` is given, with `headers`; answers the status and
/// the body (at most `limit` bytes). For the few plain HTTP calls between
/// components (the edge asking the engine for a sale's holders).
pub async fn get(
    tls: Option<&MeshTls>,
    target: &str,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limit: usize,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    let mut request = http::Request::get(path).header(http::header::HOST, target);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(axum::body::Body::empty())
        .map_err(|e| e.to_string())?;
    let tls = match tls {
        Some(tls) => Some((
            tls.client_config(target, b"http/1.1")?,
            server_name(target)?,
        )),
        None => None,
    };
    exchange(&addr.to_string(), tls, request, limit)
        .await
        .map_err(|e| format!("{target} at {addr}: {e}"))
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_owned()).map_err(|e| format!("{host}: {e}"))
}

/// Sends `request` to `address` (over TLS to the server name given with
/// `tls`, if any) on a connection of its own, and reads the answer's
/// status and body (at most `limit` bytes).
async fn exchange(
    address: &str,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    request: http::Request<axum::body::Body>,
    limit: usize,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let response = match tls {
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            send(hyper_util::rt::TokioIo::new(stream), request).await?
        }
        None => send(hyper_util::rt::TokioIo::new(tcp), request).await?,
    };
    let status = response.status();
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), limit)
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, body))
}

/// A TLS client configuration for a server outside the mesh (a JWKS):
/// trusts the system's CA certificates and, when given, those of
/// `ca_file` (a private CA). No client certificate.
pub fn public_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    // A system without a CA bundle still reaches a server of `ca_file`.
    if let Ok(system) = rustls_native_certs::load_native_certs() {
        roots.add_parsable_certificates(system);
    }
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certificates("ca_file", &pem)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// One HTTP/1.1 `GET` of `url` (`https://`, verified with `https`; or
/// `http://`): the status and the body (at most `limit` bytes). No
/// redirects are followed.
pub async fn fetch(
    url: &str,
    https: &Arc<ClientConfig>,
    limit: usize,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let secure = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: not an http(s) URL")),
    };
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // The Host header: the URL's authority without any user part.
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let request = http::Request::get(path)
        .header(http::header::HOST, authority)
        .body(axum::body::Body::empty())
        .map_err(|e| e.to_string())?;
    let tls = match secure {
        true => Some((Arc::clone(https), server_name(host)?)),
        false => None,
    };
    exchange(&format!("{host}:{port}"), tls, request, limit)
        .await
        .map_err(|e| format!("{url}: {e}"))
}

async fn send<T>(
    io: T,
    request: http::Request<axum::body::Body>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())
}
