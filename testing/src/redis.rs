//! A real `redis-server` for tests, plus a minimal RESP client so tests can
//! send raw commands (FLUSHALL, SCRIPT FLUSH, DEBUG SLEEP) without redis-cli.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A `redis-server` process on a free port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Arguments beyond the defaults (a replica's `--replicaof`).
    extra: Vec<String>,
    /// The user and password the test's own commands log in with, on a
    /// server whose default user is off.
    auth: Option<Login>,
    _dir: TempDir,
}

/// A user name and its password.
pub type Login = (String, String);

/// A copy of the server's data at one instant (an RDB file), to restart
/// from: the state an asynchronous replica has when it is promoted, or an
/// older RDB or AOF point.
#[derive(Debug, Clone)]
pub struct Snapshot(PathBuf);

/// A reply of the RESP protocol, as tests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl RedisServer {
    /// Starts a server (no persistence) and waits until it answers PING.
    /// Panics with a clear message when `redis-server` is not installed:
    /// `scripts/test` installs it.
    pub fn start() -> RedisServer {
        Self::start_with(Vec::new())
    }

    /// A replica of `primary`, replicating asynchronously (as Redis does),
    /// ready once its first sync is done.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        Self::start_replica_as(primary, Vec::new(), None)
    }

    /// A replica of `primary` started with `extra` arguments (its users,
    /// how it logs in to the primary), commanded as `auth`.
    fn start_replica_as(
        primary: &RedisServer,
        mut extra: Vec<String>,
        auth: impl Into<Option<Login>>,
    ) -> RedisServer {
        extra.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ]);
        let replica = Self::start_as(extra, auth.into());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !replica
            .info("replication")
            .contains("master_link_status:up")
        {
            assert!(
                Instant::now() < deadline,
                "the replica did not sync within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        replica
    }

    /// A server started with extra `redis-server` arguments (an ACL user,
    /// a config directive), otherwise as `start`.
    pub fn start_with_args(args: &[&str]) -> RedisServer {
        Self::start_with(args.iter().map(|a| (*a).to_owned()).collect())
    }

    pub(crate) fn start_with(extra: Vec<String>) -> RedisServer {
        Self::start_as(extra, None)
    }

    fn start_as(extra: Vec<String>, auth: Option<Login>) -> RedisServer {
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for redis");
            let port = crate::free_port();
            let child = spawn(port, dir.path(), &extra);
            let mut server = RedisServer {
                child: Some(child),
                port,
                extra: extra.clone(),
                auth: auth.clone(),
                _dir: dir,
            };
            if server.wait_ready(Duration::from_secs(10)) {
                return server;
            }
            // Most likely another process took the port: try another.
            server.kill();
        }
        panic!("redis-server did not become ready on any of 5 ports")
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if matches!(self.try_command(&["PING"]), Ok(Reply::Status(s)) if s == "PONG") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Sends one command and returns its reply; panics on I/O errors.
    pub fn command(&self, args: &[&str]) -> Reply {
        self.try_command(args).expect("redis command failed")
    }

    /// Sends one command on a fresh connection.
    pub fn try_command(&self, args: &[&str]) -> std::io::Result<Reply> {
        command_on(self.port, self.auth.as_ref(), args)
    }

    /// One section of `INFO` (empty when the server does not answer).
    pub fn info(&self, section: &str) -> String {
        match self.try_command(&["INFO", section]) {
            Ok(Reply::Bulk(Some(text))) => text,
            _ => String::new(),
        }
    }

    /// Writes the data set to disk now (`SAVE`) and keeps a copy of it.
    pub fn snapshot(&self) -> Snapshot {
        assert_eq!(self.command(&["SAVE"]), Reply::Status("OK".into()));
        let dir = self._dir.path();
        let copy = dir.join(format!("snapshot-{}.rdb", uuid_like()));
        std::fs::copy(dir.join("dump.rdb"), &copy).expect("copy the snapshot");
        Snapshot(copy)
    }

    /// Kills the server (SIGKILL) and starts it again on the same port from
    /// `snapshot`: every write made after it is lost, as after a failover
    /// to a replica that lagged.
    pub fn restart_from(&mut self, snapshot: &Snapshot) {
        self.kill();
        std::fs::copy(&snapshot.0, self._dir.path().join("dump.rdb"))
            .expect("put the snapshot in place");
        self.child = Some(spawn(self.port, self._dir.path(), &self.extra));
        assert!(
            self.wait_ready(Duration::from_secs(10)),
            "redis-server did not come back on port {}",
            self.port
        );
    }

    /// Freezes the server (SIGSTOP): connections stay open and nothing
    /// answers, as with a hung or partitioned node, until `resume`.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the server is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn encode(out: &mut String, args: &[&str]) {
    out.push_str(&format!("*{}\r\n", args.len()));
    for a in args {
        out.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
    }
}

/// Sends one command to the server on `port`, on a fresh connection,
/// logged in as `auth` first when given.
fn command_on(port: u16, auth: Option<&Login>, args: &[&str]) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = String::new();
    if let Some((user, password)) = auth {
        encode(&mut out, &["AUTH", user, password]);
    }
    encode(&mut out, args);
    stream.write_all(out.as_bytes())?;
    let mut reader = BufReader::new(stream);
    if auth.is_some() {
        let login = read_reply(&mut reader)?;
        if login != Reply::Status("OK".into()) {
            return Ok(login);
        }
    }
    read_reply(&mut reader)
}

/// Starts `redis-server` on `port` with its files in `dir` (no automatic
/// saves, no AOF: a test saves when it wants a snapshot), and `extra`.
fn spawn(port: u16, dir: &Path, extra: &[String]) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}); install it (scripts/test does: apt-get install redis-server)")
        })
}

/// A name unique within the process.
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad reply line {line:?}"),
        )
    };
    let (kind, rest) = line.split_at_checked(1).ok_or_else(bad)?;
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(rest.parse().map_err(|_| bad())?),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len < 0 {
                Reply::Bulk(None)
            } else {
                let mut buf = vec![0u8; len as usize + 2];
                reader.read_exact(&mut buf)?;
                buf.truncate(len as usize);
                Reply::Bulk(Some(String::from_utf8_lossy(&buf).into_owned()))
            }
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(reader)?);
            }
            Reply::Array(items)
        }
        _ => return Err(bad()),
    })
}

/// A primary with one asynchronous replica behind one Redis Sentinel, all
/// on loopback: what `redis-sentinel://` URLs point at. Killing the primary
/// makes Sentinel promote the replica, which lacks whatever the primary had
/// not replicated yet.
pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinel: Option<Child>,
    sentinel_port: u16,
    /// How the test's own commands log in to the sentinel, when secured.
    sentinel_auth: Option<Login>,
    _dir: TempDir,
}

impl SentinelSet {
    /// The name Sentinel monitors the primary under.
    pub const SERVICE: &'static str = "flashmall";

    /// Starts the three and waits until Sentinel knows the replica.
    pub fn start() -> SentinelSet {
        let primary = RedisServer::start();
        let replica = RedisServer::start_replica_of(&primary);
        Self::watch(primary, replica, "", None)
    }

    /// The same, locked down with the users of `acl` (the production
    /// overlay's): every default user off, the replica replicating as
    /// `replication`, the sentinel talking to Redis as `sentinel`, and the
    /// data users (`engine`, `edge`) on the servers and on the sentinel,
    /// each with the rules `acl` gives it and the password
    /// [`SentinelSet::password`] names. The test's own commands log in as a
    /// `harness` user that may do anything.
    pub fn start_secured(acl: &crate::acl::ProductionAcl) -> SentinelSet {
        let harness = ("harness".to_owned(), Self::password("harness"));
        let users = |list: &[(String, Vec<String>)], harness_rules: &[&str]| {
            let mut args = vec![vec!["default".to_owned(), "off".to_owned()]];
            let mut line = vec![harness.0.clone(), "on".into(), format!(">{}", harness.1)];
            line.extend(harness_rules.iter().map(|r| (*r).to_owned()));
            args.push(line);
            for (name, rules) in list {
                let mut line = vec![
                    name.clone(),
                    "on".into(),
                    format!(">{}", Self::password(name)),
                ];
                line.extend(rules.iter().cloned());
                args.push(line);
            }
            args
        };
        let server_args: Vec<String> = users(&acl.redis, &["~*", "&*", "+@all"])
            .into_iter()
            .flat_map(|user| std::iter::once("--user".to_owned()).chain(user))
            .collect();
        let primary = RedisServer::start_as(server_args.clone(), Some(harness.clone()));
        let mut replica_args = server_args;
        replica_args.extend([
            "--masteruser".into(),
            "replication".into(),
            "--masterauth".into(),
            Self::password("replication"),
        ]);
        let replica = RedisServer::start_replica_as(&primary, replica_args, harness.clone());
        let sentinel_users: String = users(&acl.sentinel, &["&*", "+@all"])
            .into_iter()
            .map(|user| format!("user {}\n", user.join(" ")))
            .collect();
        let conf = format!(
            "{sentinel_users}sentinel auth-user {service} sentinel\n\
             sentinel auth-pass {service} {password}\n",
            service = Self::SERVICE,
            password = Self::password("sentinel"),
        );
        Self::watch(primary, replica, &conf, Some(harness))
    }

    /// The password of `user` in a secured set.
    pub fn password(user: &str) -> String {
        format!("{user}-secret-0123456789")
    }

    /// Starts a sentinel watching `primary` (with `extra` config lines) and
    /// waits until it knows the replica.
    fn watch(
        primary: RedisServer,
        replica: RedisServer,
        extra: &str,
        sentinel_auth: Option<Login>,
    ) -> SentinelSet {
        let dir = tempfile::tempdir().expect("temp dir for sentinel");
        let sentinel_port = crate::free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {service} 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds {service} 1000\n\
                 sentinel failover-timeout {service} 10000\n\
                 sentinel parallel-syncs {service} 1\n{extra}",
                dir.path().display(),
                primary.port,
                service = Self::SERVICE,
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server --sentinel ({e})"));
        let set = SentinelSet {
            primary,
            replica,
            sentinel: Some(child),
            sentinel_port,
            sentinel_auth,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let replicas = command_on(
                sentinel_port,
                set.sentinel_auth.as_ref(),
                &["SENTINEL", "REPLICAS", Self::SERVICE],
            );
            if matches!(&replicas, Ok(Reply::Array(r)) if !r.is_empty()) {
                return set;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel did not discover the replica within 20 s: {replicas:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sentinel's port.
    pub fn sentinel_port(&self) -> u16 {
        self.sentinel_port
    }

    /// `redis-sentinel://127.0.0.1:PORT?sentinelServiceName=flashmall`.
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={}",
            self.sentinel_port,
            Self::SERVICE
        )
    }

    /// The port of the server Sentinel names as primary now.
    pub fn primary_port(&self) -> Option<u16> {
        match command_on(
            self.sentinel_port,
            self.sentinel_auth.as_ref(),
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", Self::SERVICE],
        ) {
            Ok(Reply::Array(parts)) => match parts.get(1) {
                Some(Reply::Bulk(Some(port))) => port.parse().ok(),
                _ => None,
            },
            _ => None,
        }
    }

    /// Kills the primary (SIGKILL): whatever it had not replicated is lost.
    pub fn kill_primary(&mut self) {
        self.primary.kill();
    }

    /// Waits until Sentinel has promoted the replica; false after `limit`.
    pub fn wait_promoted(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.primary_port() == Some(self.replica.port())
                && self.replica.info("replication").contains("role:master")
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        if let Some(mut child) = self.sentinel.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Redis Cluster of three primaries, each with one replica, on loopback
/// (`redis-cli --cluster create`): what `redis-cluster://` URLs point at.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, makes them a cluster and waits until every node
    /// says the cluster is ok.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        // A replica may be promoted however long ago it
                        // last heard from its primary: what it lacks, the
                        // ledger refuses and reconcile restores.
                        "--cluster-replica-validity-factor",
                        "0",
                    ]
                    .map(str::to_owned)
                    .to_vec(),
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}); install it (scripts/test does: apt-get install redis-tools)")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        assert!(
            cluster.wait_ok(Duration::from_secs(30)),
            "the cluster did not become ok within 30 s"
        );
        cluster
    }

    /// `redis-cluster://127.0.0.1:PORT?node=...` naming every node.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push(if i == 1 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    /// Every live node says `cluster_state:ok` and every slot is served.
    pub fn wait_ok(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = match n.try_command(&["CLUSTER", "INFO"]) {
                    Ok(Reply::Bulk(Some(text))) => text,
                    _ => String::new(),
                };
                info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills (SIGKILL) the primary that serves `key`'s slot; its port.
    pub fn kill_primary_of(&mut self, key: &str) -> u16 {
        let port = self.node_serving(key);
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
        port
    }

    /// Waits until a live primary serves `key`'s slot again (the cluster
    /// promoted the dead primary's replica); false after `limit`.
    pub fn wait_served(&self, key: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(port) = self.primary_of(key)
                && self
                    .nodes
                    .iter()
                    .any(|n| n.port == port && n.child.is_some())
                && self.wait_ok(Duration::ZERO)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// The port of the primary that serves `key`'s slot, as a live node
    /// sees it.
    pub fn node_serving(&self, key: &str) -> u16 {
        self.primary_of(key)
            .unwrap_or_else(|| panic!("no live primary serves the slot of {key}"))
    }

    fn primary_of(&self, key: &str) -> Option<u16> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node");
        let slot = match node.command(&["CLUSTER", "KEYSLOT", key]) {
            Reply::Int(slot) => slot,
            other => panic!("CLUSTER KEYSLOT answered {other:?}"),
        };
        // CLUSTER NODES: id addr flags master ping pong epoch state slots...
        let nodes = match node.command(&["CLUSTER", "NODES"]) {
            Reply::Bulk(Some(text)) => text,
            other => panic!("CLUSTER NODES answered {other:?}"),
        };
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split_whitespace().skip(8).any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    matches!((lo.parse::<i64>(), hi.parse::<i64>()), (Ok(lo), Ok(hi)) if lo <= slot && slot <= hi)
                })
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|addr| addr.split('@').next())
            .and_then(|addr| addr.rsplit_once(':'))
            .and_then(|(_, port)| port.parse::<u16>().ok())
    }
}
