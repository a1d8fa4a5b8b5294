//! flashmall's bench suite. Every figure is measured beside a reference in
//! the same run, on the same machine, and every load run ends with checks:
//!
//! - [`phases`]: the seckill's phases (accounts, sale, storm, settlement,
//!   verification), which the bench, the demo and the chaos run share.
//! - [`seckill`]: a flash sale under open- or closed-loop load through the
//!   edge, checked against the ledger; the sold-out gate against a static
//!   answer.
//! - [`proxy`]: one trivial upstream, reached directly, through the
//!   flashmall edge with every check on, and through nginx.
//! - [`redis`]: the engine's reserve call against `redis-benchmark`
//!   running EVALSHA of the same script at the same concurrency.
//! - [`cpu`]: the edge's own CPU time per answer, apart from the client.
//! - [`wrk`]: Debian's `wrk` on the same paths, an independent client
//!   beside the bench's own driver (proxy and sold-out gate figures).
//! - [`peer`]: the classic seckill stack (nginx + Lua + Redis, the engine's
//!   own reserve script) under the same storm, beside flashmall.
//! - [`fairness`]: the same buyers, fast and slow clients, against a sale
//!   with and one without a waiting room: who wins, by client speed and
//!   arrival (`seckill --waiting-room`).
//! - [`fault`]: the Redis topologies `seckill --fault` starts and strikes
//!   mid-storm (restart from a snapshot, Sentinel or cluster failover).
//!
//! Each writes JSON, a Markdown summary and an SVG chart (see [`report`]).

pub mod api;
pub mod chart;
pub mod cpu;
pub mod fairness;
pub mod fault;
pub mod http;
pub mod load;
pub mod peer;
pub mod phases;
pub mod progress;
pub mod proxy;
pub mod redis;
pub mod report;
pub mod seckill;
pub mod servers;
pub mod wrk;
