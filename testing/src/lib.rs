//! Test support shared by every crate's black-box tests: real store servers
//! started from their binaries on free loopback ports, and stopped when
//! dropped. Depends on no flashmall crate, so any crate can use it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failed setup step panics the test that asked for it"
)]

pub mod acl;
pub mod pki;
mod redis;

pub use redis::{RedisCluster, RedisServer, SentinelSet, Snapshot};

/// Replies of the test RESP client.
pub mod redis_reply {
    pub use crate::redis::Reply;
}

/// The directory of the package whose test is running. cargo sets
/// `CARGO_MANIFEST_DIR` when it runs a test; `env!("CARGO_MANIFEST_DIR")`
/// would name wherever a shared target directory first built the test,
/// possibly another checkout. Outside cargo, the working directory (cargo
/// runs tests from the package's directory too).
pub fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default()
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A command for `program` (a flashmall binary) that inherits no
/// `FLASHMALL_*` variable from the test process: the binary rejects
/// unknown `FLASHMALL_*` names, and the test run carries its own
/// (`FLASHMALL_TEST_SCYLLA`, a developer's overrides). Configuration reaches
/// the child only through what the test sets on the command.
pub fn flashmall_command(program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLASHMALL_") {
            cmd.env_remove(name);
        }
    }
    cmd
}
