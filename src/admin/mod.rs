//! The admin endpoint: a separate TCP port (127.0.0.1 by default) speaking
//! one line per request — `status` or `shutdown` — and answering one line of
//! JSON. Control plane: a plain thread with blocking sockets.

use crate::server::Identity;
use crate::shard::Shared;
use serde::Serialize;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the accept loop looks at the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Deadline for one admin request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest admin request line.
const REQUEST_BYTES_MAX: u64 = 1024;

/// One destination in the status.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DestinationStatus {
    pub destination: String,
    pub depth: usize,
    pub consumers: usize,
    pub durable_subscriptions: usize,
}

/// What `status` answers.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Status {
    pub server: String,
    /// `single` until the HA pair exists.
    pub role: String,
    pub state: String,
    pub epoch: u64,
    pub pid: u32,
    pub uptime_ms: u64,
    pub client_listen: String,
    pub shards: usize,
    pub connections: usize,
    pub messages: usize,
    pub cached_bytes: usize,
    pub journal_bytes: u64,
    pub journal_segments: usize,
    pub rss_bytes: u64,
    pub poisoned: Vec<String>,
    pub destinations: Vec<DestinationStatus>,
    /// HA: `single`, `replicated` or `shared`.
    #[serde(default)]
    pub mode: String,
    /// HA: the peer's state as this server sees it (DEAD when unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_state: Option<String>,
    /// HA: who the lock file names as holder, and whether it is this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_reachable: Option<bool>,
    /// HA: the last state change and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition: Option<String>,
    /// Replicated HA: each shard's replication stream (lag, in sync,
    /// catch-up progress), in shard order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replication: Vec<crate::shard::ReplicaStats>,
}

/// What the admin endpoint asks of the server it belongs to.
pub trait Control: Send + Sync {
    fn status(&self) -> Status;
    /// Asks for a clean stop.
    fn shutdown(&self);
    /// Whether the server is stopping (the endpoint then stops too).
    fn stopping(&self) -> bool;
}

/// Resident memory of this process, from /proc/self/statm.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page
}

/// The status of a running data plane (shards and journals).
pub fn data_status(identity: &Identity, shared: &Shared) -> Status {
    let mut status = Status {
        server: identity.name.clone(),
        role: "single".into(),
        state: if shared.stop.load(Ordering::Relaxed) {
            "STOPPING"
        } else {
            "ACTIVE"
        }
        .into(),
        epoch: identity.epoch.get(),
        pid: std::process::id(),
        uptime_ms: identity.started.elapsed().as_millis() as u64,
        client_listen: identity.client_addr.to_string(),
        shards: identity.shards,
        connections: 0,
        messages: 0,
        cached_bytes: 0,
        journal_bytes: 0,
        journal_segments: 0,
        rss_bytes: rss_bytes(),
        poisoned: Vec::new(),
        destinations: Vec::new(),
        mode: "single".into(),
        peer_state: None,
        lock_holder: None,
        gateway_reachable: None,
        last_transition: None,
        replication: Vec::new(),
    };
    for stats in &shared.stats {
        let stats = stats.lock().expect("stats lock");
        status.replication.extend(stats.replica.clone());
        status.connections += stats.connections;
        status.messages += stats.messages;
        status.cached_bytes += stats.cached_bytes;
        status.journal_bytes += stats.journal_end - stats.journal_start;
        status.journal_segments += stats.journal_segments;
        status.poisoned.extend(stats.poisoned.clone());
        status
            .destinations
            .extend(stats.destinations.iter().map(|d| DestinationStatus {
                destination: d.destination.to_string(),
                depth: d.depth,
                consumers: d.consumers,
                durable_subscriptions: d.durable_subscriptions,
            }));
    }
    status
        .destinations
        .sort_by(|a, b| a.destination.cmp(&b.destination));
    status
}

/// Serves admin requests until the server stops.
pub fn serve(listener: TcpListener, control: Arc<dyn Control>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("twinmq-admin".into())
        .spawn(move || {
            if let Err(error) = listener.set_nonblocking(true) {
                tracing::error!(%error, "admin endpoint unusable");
                return;
            }
            while !control.stopping() {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(error) = answer(stream, control.as_ref()) {
                            tracing::debug!(%error, "admin request failed");
                        }
                    }
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(POLL)
                    }
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        std::thread::sleep(POLL);
                    }
                }
            }
        })
        .expect("spawn admin thread")
}

fn answer(stream: TcpStream, control: &dyn Control) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_BYTES_MAX)).read_line(&mut line)?;
    let reply = match line.trim() {
        "status" => serde_json::to_string(&control.status()).expect("serialize status"),
        "shutdown" => {
            tracing::info!("shutdown requested on the admin endpoint");
            control.shutdown();
            r#"{"ok":true}"#.to_owned()
        }
        other => serde_json::json!({ "error": format!("unknown admin request {other:?}: use status or shutdown") }).to_string(),
    };
    (&stream).write_all(reply.as_bytes())?;
    (&stream).write_all(b"\n")
}

/// Sends one admin request and returns the JSON line answered.
pub fn request(addr: std::net::SocketAddr, what: &str) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
        .map_err(|e| std::io::Error::new(e.kind(), format!("admin endpoint {addr}: {e}")))?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    (&stream).write_all(format!("{what}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    Ok(line)
}

use std::io::Read as _;
