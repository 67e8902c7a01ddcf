//! The admin endpoint: a separate TCP port (127.0.0.1 by default) speaking
//! one line per request — `status`, `shutdown` or `promote --force` — and
//! answering one line of JSON. Control plane: a plain thread with blocking
//! sockets.

use crate::ha::machine::State;
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
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
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
    /// Client connections per shard, in shard order. A connection moves to
    /// the shard owning the destination of its first SEND or SUBSCRIBE.
    #[serde(default)]
    pub shard_connections: Vec<usize>,
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
    /// Replicated HA: why acknowledged writes are not on two disks now
    /// (STANDALONE), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// HA: the newest epoch this server's history is known to be complete
    /// to (the last one it was active in, or fully synchronised as passive).
    /// A forced promotion keeps everything up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_epoch: Option<u64>,
    /// HA: the epoch the lock file records, the newest activation of either
    /// server (`None` when unreadable). Above `confirmed_epoch`, this server
    /// is a stale replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_epoch: Option<u64>,
}

/// The refusal of `promote` without `--force`, from the CLI and from the
/// endpoint alike: the flag is the operator's statement that the risk is
/// understood, so the risk is spelled out where the flag is missing.
pub const PROMOTE_NEEDS_FORCE: &str = "promote needs --force: it makes this server \
    active even when its journal is behind the epoch in the lock file (a stale replica), \
    and then messages the other server acknowledged in the epochs this server lacks may \
    be lost. Check `twinmq status` (confirmed and lock-file epochs) first";

/// Server states in which a forced promotion has nothing to do: the server
/// already serves, or is becoming active.
const LEADING_STATES: [State; 4] = [
    State::Active,
    State::ActiveSync,
    State::Standalone,
    State::Activating,
];

/// Checks that a forced promotion of the server in `status` makes sense and
/// says what it risks, from the confirmed and lock-file epochs. `Err` says
/// why there is nothing to force.
///
/// A server that already leads is refused: the request would otherwise stay
/// pending and waive the stale check at some later, unrelated lock attempt.
pub fn forced_promotion(status: &Status) -> Result<String, String> {
    if status.mode != "replicated" {
        return Err(format!(
            "forced promotion applies to replicated pairs only; this server runs in {} mode, \
             where no server can be a stale replica",
            status.mode
        ));
    }
    if LEADING_STATES
        .iter()
        .any(|state| state.name() == status.state)
    {
        return Err(format!(
            "this server is already {}: there is nothing to promote",
            status.state
        ));
    }
    let confirmed = status.confirmed_epoch.unwrap_or(0);
    Ok(match status.lock_epoch {
        Some(lock) if lock > confirmed => format!(
            "forced promotion requested: this server's history is complete to epoch \
             {confirmed}; the lock file records epoch {lock}; messages the other server \
             acknowledged in epochs {}..={lock} may be lost",
            confirmed + 1
        ),
        Some(lock) => format!(
            "forced promotion requested: this server's history is complete to epoch \
             {confirmed} and the lock file records epoch {lock}, so it is not a stale \
             replica and nothing acknowledged is lost; it still needs the lock and the \
             gateway or the peer to become active"
        ),
        None => format!(
            "forced promotion requested: this server's history is complete to epoch \
             {confirmed}; the lock file's epoch could not be read, so messages the other \
             server acknowledged in any later epoch may be lost"
        ),
    })
}

/// What the admin endpoint asks of the server it belongs to.
pub trait Control: Send + Sync {
    fn status(&self) -> Status;
    /// Asks for a clean stop.
    fn shutdown(&self);
    /// Whether the server is stopping (the endpoint then stops too).
    fn stopping(&self) -> bool;
    /// `promote --force`: asks the server to become active even if it is a
    /// stale replica. `Ok` says what may be lost; `Err` why it cannot be
    /// done. Only a server of an HA pair can be promoted.
    fn promote_force(&self) -> Result<String, String> {
        Err("this server is not part of an HA pair".to_owned())
    }
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
        rss_bytes: rss_bytes(),
        mode: "single".into(),
        ..Status::default()
    };
    for stats in &shared.stats {
        let stats = stats.lock().expect("stats lock");
        status.replication.extend(stats.replica.clone());
        status.connections += stats.connections;
        status.shard_connections.push(stats.connections);
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
        "promote --force" => match control.promote_force() {
            Ok(message) => {
                tracing::warn!("promote --force on the admin endpoint: {message}");
                serde_json::json!({ "ok": true, "message": message }).to_string()
            }
            Err(error) => serde_json::json!({ "error": error }).to_string(),
        },
        "promote" => serde_json::json!({ "error": PROMOTE_NEEDS_FORCE }).to_string(),
        other => serde_json::json!({ "error": format!("unknown admin request {other:?}: use status, shutdown or promote --force") }).to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A replicated server's status in `state`, with the two epochs.
    fn ha_status(state: &str, confirmed: Option<u64>, lock: Option<u64>) -> Status {
        Status {
            server: "secondary".into(),
            role: "secondary".into(),
            state: state.into(),
            pid: 1,
            client_listen: "127.0.0.1:1956".into(),
            shards: 1,
            mode: "replicated".into(),
            peer_state: Some("DEAD".into()),
            gateway_reachable: Some(true),
            confirmed_epoch: confirmed,
            lock_epoch: lock,
            ..Status::default()
        }
    }

    #[test]
    fn stale_replica_is_told_which_epochs_may_be_lost() {
        let message = forced_promotion(&ha_status("WAITING", Some(3), Some(5))).unwrap();
        assert_eq!(
            message,
            "forced promotion requested: this server's history is complete to epoch 3; \
             the lock file records epoch 5; messages the other server acknowledged in \
             epochs 4..=5 may be lost"
        );
    }

    #[test]
    fn server_level_with_the_lock_file_is_told_nothing_is_lost() {
        let message = forced_promotion(&ha_status("PASSIVE", Some(5), Some(5))).unwrap();
        assert!(message.contains("not a stale replica"), "{message}");
    }

    #[test]
    fn unreadable_lock_file_is_named_as_the_unknown() {
        let message = forced_promotion(&ha_status("WAITING", Some(2), None)).unwrap();
        assert!(message.contains("could not be read"), "{message}");
        assert!(message.contains("complete to epoch 2"), "{message}");
    }

    #[test]
    fn server_that_already_leads_has_nothing_to_promote() {
        for state in ["ACTIVE", "ACTIVE_SYNC", "STANDALONE", "ACTIVATING"] {
            let error = forced_promotion(&ha_status(state, Some(1), Some(1))).unwrap_err();
            assert_eq!(
                error,
                format!("this server is already {state}: there is nothing to promote")
            );
        }
    }

    #[test]
    fn shared_and_single_servers_cannot_be_stale_so_are_not_promoted() {
        for mode in ["shared", "single"] {
            let status = Status {
                mode: mode.into(),
                ..ha_status("PASSIVE", Some(1), Some(2))
            };
            let error = forced_promotion(&status).unwrap_err();
            assert!(error.contains(&format!("in {mode} mode")), "{error}");
        }
    }

    #[test]
    fn a_control_outside_a_pair_refuses_promotion_by_default() {
        struct Alone;
        impl Control for Alone {
            fn status(&self) -> Status {
                ha_status("ACTIVE", None, None)
            }
            fn shutdown(&self) {}
            fn stopping(&self) -> bool {
                false
            }
        }
        assert_eq!(
            Alone.promote_force().unwrap_err(),
            "this server is not part of an HA pair"
        );
    }

    #[test]
    fn status_json_without_the_epochs_still_parses() {
        let mut json = serde_json::to_value(ha_status("WAITING", Some(1), Some(2))).unwrap();
        let object = json.as_object_mut().unwrap();
        assert_eq!(object["confirmed_epoch"], 1);
        object.remove("confirmed_epoch");
        object.remove("lock_epoch");
        let status: Status = serde_json::from_value(json).unwrap();
        assert_eq!((status.confirmed_epoch, status.lock_epoch), (None, None));
    }
}
