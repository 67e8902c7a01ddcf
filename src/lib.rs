//! twinmq: a high-availability persistent message broker for Linux.
//!
//! The crate is layered bottom-up; each module's `//!` doc says what it owns
//! and what it must never do. See `ARCHITECTURE.md` for the module map and the
//! on-disk formats.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

pub mod admin;
pub mod bench;
pub mod broker;
pub mod client;
pub mod config;
pub mod constants;
pub mod ha;
pub mod ids;
pub mod io;
pub mod journal;
pub mod net;
pub mod pair;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod shard;
