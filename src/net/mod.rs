//! The socket layer: TCP listeners and connections set up the same way for
//! every user (client listeners now, HA links later), with the options of a
//! profile's `[net.*]` section applied.
//!
//! ```text
//!   profile [net.client] ─▶ SocketOptions (validated by config)
//!                               │
//!          ┌────────────────────┼──────────────────────┐
//!          ▼                    ▼                      ▼
//!   listen(addr, reuse_port)  configure(accepted)  connect(addr)
//!   one TcpListener per shard                      TcpStream, configured
//! ```
//!
//! What it owns: socket creation, `SO_REUSEADDR` / `SO_REUSEPORT`, Nagle,
//! buffer sizes, keepalive, `TCP_USER_TIMEOUT` and connect timeouts. What it must never do: read
//! or write application bytes, or retry a failed bind or connect (the caller
//! decides whether a failure is fatal). Sockets come back in blocking mode;
//! callers switch them as their event loop needs. Every error names the
//! address it concerns.

mod options;
mod socket;

pub use options::{
    CONNECT_TIMEOUT_MS_DEFAULT, HANDSHAKE_TIMEOUT_MS_DEFAULT, KEEPALIVE_PROBES,
    KEEPALIVE_SECS_DEFAULT, KEEPALIVE_SECS_MAX, NODELAY_DEFAULT, SOCKET_BUFFER_BYTES_MAX,
    SocketOptions, TCP_USER_TIMEOUT_MS_DEFAULT, TIMEOUT_MS_MAX, TIMEOUT_MS_MIN,
};
pub use socket::{LISTEN_BACKLOG, configure, connect, listen};
