//! The reference servers a bench starts beside flashmall: a trivial HTTP
//! upstream, nginx (Debian's package) and redis-server, each on a free
//! loopback port and stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// A free loopback address.
pub fn free_addr() -> Result<SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

/// The body every upstream answer carries.
pub const UPSTREAM_BODY: &[u8] = b"{\"ok\":true}";

/// An HTTP/1.1 server that answers every request `200` with a fixed body:
/// the cheapest upstream there is, so a proxy's cost stands out.
pub struct Upstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Upstream {
    /// On a free loopback port.
    pub async fn start() -> Result<Upstream, String> {
        Upstream::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// On `addr` (`flashmall bench upstream` for a running proxy bench).
    pub async fn bind(addr: SocketAddr) -> Result<Upstream, String> {
        let listener = flashmall_mesh::serve::listen(addr)
            .map_err(|e| format!("cannot bind the upstream on {addr}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let service = service_fn(|_request| async {
                        let mut response =
                            hyper::Response::new(Full::new(Bytes::from_static(UPSTREAM_BODY)));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, task })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A child process, started as the leader of its own process group,
/// killed on drop with every process it started (nginx's workers outlive
/// a master killed alone), with its scratch directory.
pub struct Process {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Child,
    pub dir: TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        // The group's id is the leader's pid (`process_group(0)`).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// The leader's pid, which is also its process group's id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the port accepts connections (and the process lives).
    fn wait_listening(mut self, limit: Duration) -> Result<Process, String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "{} exited at start ({status}); see {}",
                    self.name,
                    self.dir.path().display()
                ));
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(self);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not listen on {} within {limit:?}",
            self.name, self.addr
        ))
    }
}

/// Where a program is: on PATH, or in the sbin directories Debian uses.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// nginx's config: a plain `proxy_pass` to `upstream`, upstream keep-alive
/// (as every proxy here pools upstream connections), no access log (the
/// flashmall edge logs no line per request at the bench's level either),
/// and keep-alive without a request cap so no connection is cut mid-run.
pub fn nginx_config(
    dir: &Path,
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process on;\nworker_processes {workers};\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 300s;\n\
         \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         \x20 upstream bench {{ server {upstream}; keepalive 256; keepalive_requests 100000000; }}\n\
         \x20 server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://bench;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n"
    )
}

/// nginx with [`nginx_config`], from Debian's `nginx-light` (or any nginx on PATH).
pub fn nginx(upstream: SocketAddr, workers: usize) -> Result<Process, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let addr = free_addr()?;
    let config = dir.path().join("nginx.conf");
    std::fs::write(&config, nginx_config(dir.path(), addr, upstream, workers))
        .map_err(|e| e.to_string())?;
    spawn_nginx(dir, &config, addr, &[])
}

/// Starts nginx on `config` (which listens on `addr`) with `dir` as its
/// prefix and error log, as the leader of its own process group, and waits
/// until it listens. `extra` goes on its command line (`-g "daemon off;"`
/// when the config does not say it).
pub(crate) fn spawn_nginx(
    dir: TempDir,
    config: &Path,
    addr: SocketAddr,
    extra: &[&str],
) -> Result<Process, String> {
    let program = find_program("nginx").ok_or(
        "nginx is not installed: apt-get install nginx-light (scripts/test installs it when root)",
    )?;
    let child = Command::new(program)
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(config)
        .arg("-e")
        .arg(dir.path().join("error.log"))
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start nginx: {e}"))?;
    Process {
        name: "nginx",
        addr,
        child,
        dir,
    }
    .wait_listening(Duration::from_secs(10))
}

/// A redis-server without persistence, answering PING.
pub fn redis_server() -> Result<Process, String> {
    let program = find_program("redis-server").ok_or(
        "redis-server is not installed: apt-get install redis-server (scripts/test installs it when root)",
    )?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let addr = free_addr()?;
    let child = Command::new(program)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--port", &addr.port().to_string()])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start redis-server: {e}"))?;
    let process = Process {
        name: "redis-server",
        addr,
        child,
        dir,
    }
    .wait_listening(Duration::from_secs(10))?;
    // Listening is not loaded: wait for PONG.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(addr) {
            return Ok(process);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("redis-server on {addr} never answered PING"))
}

/// One Redis command whose reply is a single line (`+OK`, `:1`): the line
/// after its type byte. An error reply (`-ERR ...`) is an error.
pub fn redis_command(addr: SocketAddr, args: &[&str]) -> Result<String, String> {
    let name = args.first().ok_or("an empty Redis command")?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("cannot reach Redis at {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("Redis at {addr}: {e}"))?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        s.read_exact(&mut byte)
            .map_err(|e| format!("Redis at {addr} did not answer {name}: {e}"))?;
        reply.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&reply[..reply.len() - 2]).into_owned();
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        _ => Err(format!("Redis at {addr} answered {name} with {line:?}")),
    }
}

fn ping(addr: SocketAddr) -> bool {
    redis_command(addr, &["PING"]).is_ok_and(|reply| reply == "PONG")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_nginx_config_proxies_with_keepalive_and_no_log() {
        let dir = std::path::Path::new("/tmp/x");
        let c = super::nginx_config(
            dir,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            2,
        );
        assert!(c.contains("worker_processes 2;"));
        assert!(c.contains("server 127.0.0.1:2; keepalive 256;"));
        assert!(c.contains("listen 127.0.0.1:1;"));
        assert!(c.contains("proxy_pass http://bench;") && c.contains("access_log off;"));
        assert_eq!(c.matches('{').count(), c.matches('}').count());
    }
}
