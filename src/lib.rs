//! The `flashmall` command's library: configuration loading, the
//! single-process stack (`up`) and the demo. `main.rs` only parses the
//! command line and calls into here and each component crate's `run`.

#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod shop_demo;
pub mod stack;
pub mod up;
