//! The `flashmall` command's library: configuration loading, the
//! single-process stack (`up`), the demo and the bench command. `main.rs` only parses the
//! command line and calls into here and each component crate's `run`.

pub mod bench;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod stack;
pub mod up;
