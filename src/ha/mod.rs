//! The HA control plane: the pure state machine that decides what a server
//! of a pair does, and the parts that talk to the world for it — the lock
//! file, the gateway, the peer link — driven by the control thread.

pub mod driver;
pub mod gateway;
pub mod link;
pub mod lock_file;
pub mod machine;
