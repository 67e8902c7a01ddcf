//! `[server]`: identity, data directory, shards, listen addresses.

use super::Invalid;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

/// Longest server name: it appears in status output, log lines and as the
/// server id, so it is kept to one short word.
pub const SERVER_NAME_CHARS_MAX: usize = 64;

/// Most shards a server runs. Each shard is a thread with its own io_uring
/// ring, journal directory and replication stream; beyond this the per-shard
/// memory and file descriptors outweigh any gain, and a larger value is far
/// more likely a typo than a machine that needs it.
pub const SHARDS_MAX: u32 = 256;

/// Client port by default; the one DESIGN.md gives the primary of a pair.
pub const CLIENT_PORT_DEFAULT: u16 = 1856;

/// Admin port by default (status, metrics, commands).
pub const ADMIN_PORT_DEFAULT: u16 = 1858;

/// Listeners bind to loopback unless the profile says otherwise: a new server
/// must not be reachable from the network (and the admin port never should
/// be) before the operator decides so.
pub const CLIENT_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, CLIENT_PORT_DEFAULT));

/// See [`CLIENT_LISTEN_DEFAULT`].
pub const ADMIN_LISTEN_DEFAULT: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, ADMIN_PORT_DEFAULT));

/// Client connections accepted by default, across all shards. It matches the
/// usual soft limit on open files (`ulimit -n`), which has to be raised
/// anyway to serve more.
pub const MAX_CONNECTIONS_DEFAULT: u32 = 1024;

/// Most client connections a profile may allow. Each connection holds kernel
/// socket buffers and a session; a million of them is already tens of GiB of
/// memory, so anything above is a typo.
pub const MAX_CONNECTIONS_MAX: u32 = 1_000_000;

/// `[server]`: who this server is, where it keeps its data, and where it
/// listens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Server id, shown in status: 1..=64 of `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// Root of the shard journals. A relative path is taken as written and so
    /// resolves against the server's current directory, not the profile's.
    pub data_dir: PathBuf,
    /// Shard threads; 0 means one per online CPU (see [`Self::shard_count`]).
    #[serde(default)]
    pub shards: u32,
    /// Address of the client listeners (one per shard, `SO_REUSEPORT`).
    #[serde(default = "client_listen_default")]
    pub client_listen: SocketAddr,
    /// Address of the admin endpoint.
    #[serde(default = "admin_listen_default")]
    pub admin_listen: SocketAddr,
    /// Client connections accepted at once, across all shards.
    #[serde(default = "max_connections_default")]
    pub max_connections: u32,
}

fn client_listen_default() -> SocketAddr {
    CLIENT_LISTEN_DEFAULT
}

fn admin_listen_default() -> SocketAddr {
    ADMIN_LISTEN_DEFAULT
}

fn max_connections_default() -> u32 {
    MAX_CONNECTIONS_DEFAULT
}

impl ServerConfig {
    /// Checks every key of the section, naming the offending one.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, why: String| Err((format!("server.{key}"), why));
        let name = &self.name;
        if name.is_empty() || name.chars().count() > SERVER_NAME_CHARS_MAX {
            return invalid(
                "name",
                format!("{name:?} must be 1 to {SERVER_NAME_CHARS_MAX} characters long"),
            );
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return invalid(
                "name",
                format!("{name:?} may only use letters, digits and . _ - (found {found:?})"),
            );
        }
        // The name may end up as a file name component (lock holder, data of
        // the peer); these two would mean another directory.
        if name == "." || name == ".." {
            return invalid("name", format!("{name:?} is not a usable name"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "must not be empty".to_owned());
        }
        if self.shards > SHARDS_MAX {
            return invalid(
                "shards",
                format!(
                    "{} is more than {SHARDS_MAX} (use 0 for one per CPU)",
                    self.shards
                ),
            );
        }
        if !(1..=MAX_CONNECTIONS_MAX).contains(&self.max_connections) {
            return invalid(
                "max_connections",
                format!(
                    "{} is outside 1..={MAX_CONNECTIONS_MAX}",
                    self.max_connections
                ),
            );
        }
        if listeners_collide(self.client_listen, self.admin_listen) {
            return invalid(
                "admin_listen",
                format!(
                    "{} takes the same port as server.client_listen = {}: \
                     the two listeners need different ports",
                    self.admin_listen, self.client_listen
                ),
            );
        }
        Ok(())
    }

    /// Number of shard threads to run: `shards`, or when it is 0 the number
    /// of CPUs this process may run on, at most [`SHARDS_MAX`].
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            return self.shards as usize;
        }
        match std::thread::available_parallelism() {
            Ok(cpus) => cpus.get().min(SHARDS_MAX as usize),
            Err(e) => {
                // Only when neither the affinity mask nor /proc can be read;
                // one shard still runs correctly, only slower.
                tracing::warn!("cannot count CPUs ({e}); running 1 shard, set server.shards");
                1
            }
        }
    }
}

/// Whether two listeners cannot both bind. Port 0 asks the kernel for a free
/// port, so two such addresses never collide (tests use that). An unspecified
/// address takes the port on every address of its family, and `[::]` on IPv4
/// too, as Linux binds it dual-stack by default.
pub(super) fn listeners_collide(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    match (a, b) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => {
            a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
        }
        (SocketAddr::V6(v6), SocketAddr::V4(_)) | (SocketAddr::V4(_), SocketAddr::V6(v6)) => {
            v6.ip().is_unspecified()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn listeners_collide_on_the_same_port_of_overlapping_addresses() {
        let collide = |a, b| listeners_collide(addr(a), addr(b));
        assert!(collide("127.0.0.1:1856", "127.0.0.1:1856"));
        assert!(collide("0.0.0.0:1856", "127.0.0.1:1856"));
        assert!(collide("127.0.0.1:1856", "0.0.0.0:1856"));
        assert!(collide("[::]:1856", "127.0.0.1:1856"));
        assert!(collide("[::1]:1856", "[::]:1856"));
        assert!(!collide("127.0.0.1:1856", "127.0.0.1:1858"));
        assert!(!collide("127.0.0.1:1856", "127.0.0.2:1856"));
        assert!(!collide("0.0.0.0:1856", "[::1]:1856"));
        assert!(!collide("127.0.0.1:0", "127.0.0.1:0"));
    }
}
