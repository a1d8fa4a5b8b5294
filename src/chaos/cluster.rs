//! The cluster `scripts/cluster start DIR` runs, as `DIR/cluster.json`
//! describes it, and the hands that break it: every process has a
//! directory with an executable `run` (it execs the process in the
//! foreground), its `pid` and its `out.log`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `DIR/cluster.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The edges' public URLs.
    pub edges: Vec<String>,
    pub admin: Admin,
    /// Component replicas by name (`engine-1`, `edge-2`, ...).
    pub processes: BTreeMap<String, Process>,
    pub cassandra: Vec<Node>,
    pub redis: Redis,
    pub tikv: Tikv,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Admin {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Process {
    pub dir: PathBuf,
    /// Its readiness URL (`/readyz` on its plain admin port).
    pub ready: String,
}

/// A Cassandra node: its directory and CQL address.
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
    pub dir: PathBuf,
    pub address: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Redis {
    /// The Sentinel service name of the primary.
    pub service: String,
    pub sentinels: Vec<String>,
    /// Each Redis server's directory by its address.
    pub servers: BTreeMap<String, PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tikv {
    pub pd: String,
    /// The TiKV-protocol server's admin URL (`POST /split`).
    pub admin: String,
    /// The ledger's key prefix.
    pub key_prefix: String,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest, String> {
        let path = dir.join("cluster.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {} ({e}): start the cluster with scripts/cluster start {}",
                path.display(),
                dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a cluster manifest: {e}", path.display()))
    }

    pub fn process(&self, name: &str) -> Result<&Process, String> {
        self.processes
            .get(name)
            .ok_or_else(|| format!("the cluster has no process {name}"))
    }

    /// The edges' socket addresses (for the load balancer in front).
    pub fn edge_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.edges
            .iter()
            .map(|url| {
                url.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()
                    .map_err(|e| format!("edge URL {url}: {e}"))
            })
            .collect()
    }
}

fn pid_of(dir: &Path) -> Result<u32, String> {
    let file = dir.join("pid");
    std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", file.display()))
}

/// SIGKILLs the process of `dir`.
pub async fn kill(dir: &Path) -> Result<(), String> {
    let pid = pid_of(dir)?;
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("kill -KILL {pid} ({}) failed", dir.display()));
    }
    Ok(())
}

/// Starts the process of `dir` again and waits until `ready` answers 200,
/// starting it anew whenever it exits first, as a Kubernetes restart
/// policy would (a process started mid-failover may give up on a store):
/// the time it took, and the starts that exited.
pub async fn restart(
    client: &reqwest::Client,
    dir: &Path,
    ready: &str,
) -> Result<(Duration, u32), String> {
    let started = Instant::now();
    let mut crashes = 0;
    let mut child = launch(dir)?;
    while started.elapsed() < RESTART_WITHIN {
        if let Ok(r) = client
            .get(ready)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            && r.status() == 200
        {
            return Ok((started.elapsed(), crashes));
        }
        if let Ok(Some(status)) = child.try_wait() {
            crashes += 1;
            tracing::warn!(dir = %dir.display(), %status, "restarted process exited; starting it again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            child = launch(dir)?;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Err(format!(
        "{ready} did not answer 200 within {RESTART_WITHIN:?} ({crashes} starts exited; see {}/out.log)",
        dir.display()
    ))
}

/// Starts the process of `dir` again from its `run`, in a session of its
/// own (it outlives this command), appending to its `out.log`.
pub fn launch(dir: &Path) -> Result<std::process::Child, String> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("out.log"))
        .map_err(|e| format!("{}/out.log: {e}", dir.display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(dir.join("run"))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}/run: {e}", dir.display()))?;
    std::fs::write(dir.join("pid"), child.id().to_string()).map_err(|e| e.to_string())?;
    Ok(child)
}

/// How long a restarted process or node may take to serve again.
pub const RESTART_WITHIN: Duration = Duration::from_secs(180);

/// Waits until `url` answers 200; the time it took.
pub async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<Duration, String> {
    let started = Instant::now();
    while started.elapsed() < RESTART_WITHIN {
        if let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await
            && r.status() == 200
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "{url} did not answer 200 within {RESTART_WITHIN:?}"
    ))
}

/// Waits until the Cassandra node `node` accepts TCP connections; the time
/// it took. A node replays its commit log and rejoins the ring before it
/// listens, which on a loaded machine takes minutes: the wait goes on as
/// long as its log (`logs/system.log`) grows, and gives up only after
/// [`RESTART_WITHIN`] without a line.
pub async fn wait_listening(node: &Node) -> Result<Duration, String> {
    let log = node.dir.join("logs/system.log");
    let size = || std::fs::metadata(&log).map_or(0, |m| m.len());
    let started = Instant::now();
    let (mut last_size, mut last_move) = (size(), Instant::now());
    while last_move.elapsed() < RESTART_WITHIN {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(&node.address),
        )
        .await
        {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = size();
        if now != last_size {
            (last_size, last_move) = (now, Instant::now());
        }
    }
    Err(format!(
        "{} did not listen, and its log ({}) had not moved for {RESTART_WITHIN:?}",
        node.address,
        log.display()
    ))
}

/// The Redis primary's address as the first sentinel that answers says.
pub async fn redis_primary(redis: &Redis) -> Result<String, String> {
    let mut last = String::new();
    for sentinel in &redis.sentinels {
        let (host, port) = sentinel.rsplit_once(':').unwrap_or((sentinel, "26379"));
        let out = tokio::process::Command::new("redis-cli")
            .args([
                "-h",
                host,
                "-p",
                port,
                "sentinel",
                "get-master-addr-by-name",
            ])
            .arg(&redis.service)
            .output()
            .await
            .map_err(|e| format!("redis-cli: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if let (Some(host), Some(port)) = (lines.next(), lines.next()) {
            return Ok(format!("{host}:{port}"));
        }
        last = format!("{sentinel}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Err(format!("no sentinel named the primary ({last})"))
}

/// Whether the Redis server at `address` answers PING.
pub async fn redis_pings(address: &str) -> bool {
    let (host, port) = address.rsplit_once(':').unwrap_or((address, "6379"));
    tokio::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "ping"])
        .output()
        .await
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "PONG")
}
