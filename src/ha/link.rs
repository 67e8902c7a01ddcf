//! The HA link: the one dedicated connection between the two servers of a
//! pair, over which they authenticate each other, check that they agree on
//! the parameters both must share, and then exchange state announcements
//! and heartbeats. The same port and handshake also open the pair's
//! replication streams (see below).
//!
//! ```text
//!   driver ──connect()/send()/disconnect()──▶ Link ──TCP, JSON lines──▶ peer's Link
//!     ▲                                        │ listener thread: accepts, one thread per handshake
//!     └──────── LinkEvent: Up, Message…, Down ─┤ connection thread: handshake, then reads lines
//!   replication ◀── LinkEvent::Stream ─────────┘   (or hands a stream's socket over and ends)
//!   replication ──StreamDialer::dial(k)──────────▶ peer's HA port, handshake, socket returned
//! ```
//!
//! Wire format: one JSON object per line, `\n`-terminated, each line at most
//! [`LINE_BYTES_MAX`] bytes, tagged by `"type"`:
//!
//! ```text
//!   hello  {"magic":"twinmq-ha","version":1,"node":N,"role":"primary"|"secondary",
//!           "precedence":P,"nonce":HEX(32 random bytes)[,"stream":K]}
//!   proof  {"mac":HEX(HMAC-SHA256(key, "twinmq-ha-v1\n" + peer's nonce + "\n" + own node)),
//!           "params":{…Params…}}
//!   ok     {}                      refuse {"reason":R}   (then the refusing side closes)
//!   state  {"state":S,"previous":S,"epoch":E,"end":O}
//!   heartbeat {"state":S,"epoch":E,"end":O}
//! ```
//!
//! Handshake, within `socket_initialization_timeout_ms` of the TCP connect:
//!
//! ```text
//!   initiator                                acceptor
//!   hello ───────────────────────────────────▶ (both send hello at once)
//!         ◀─────────────────────────────────── hello
//!   proof+params ────────────────────────────▶ verify the MAC over its own nonce;
//!                                              bad: refuse "bad cluster key", close
//!         ◀─────────────────────────────────── proof+params
//!   verify, compare ─ ok | refuse ───────────▶
//!         ◀──────────────── ok | refuse ────── compare
//! ```
//!
//! The acceptor proves itself only after the initiator has: if both sent
//! their proofs at once, anyone who can reach both HA ports could ask one
//! server for a proof over the other's nonce (by opening a connection to it
//! with that nonce in its hello) and relay it, passing for that server.
//! The initiator only ever connects to the configured peer address, so it
//! is not such an oracle. Identity and parameters are compared only after
//! the MAC checked out, so refusals never tell a stranger more than "bad
//! cluster key".
//!
//! At most one control connection is live. If both servers connect at
//! once and both handshakes complete, the one initiated by the server with
//! the lower (precedence, node name) is kept and the other closed: each
//! side decides alone and both reach the same answer. Each side reports,
//! per live connection, `Up`, then its `Message`s, then exactly one
//! `Down`; a connection replaced before its `Up` is dropped without a
//! trace, one replaced after it gets its `Down` before the new `Up`.
//!
//! Replication streams: one TCP connection per shard carries journal
//! bytes between shard K of the active and shard K of the passive. The
//! passive dials it with [`StreamDialer::dial`], whose `hello` names the
//! shard (`"stream":K`, absent on the control connection, so control hellos
//! are unchanged); the acceptor's `hello` never does. The handshake is the
//! control connection's, with the same key, identity and parameter checks,
//! and in addition the acceptor refuses a K that is not below the shared
//! shard count. After `ok` the connection leaves the link: the dialer gets
//! the socket back, the acceptor sends it as [`LinkEvent::Stream`], both
//! blocking with their timeouts cleared, and from then on it carries
//! binary, not lines. A stream never touches the live control connection
//! (no `Up`, no `Down`, never replaces it) and the link keeps no hold on
//! it: it stays open when the link is dropped. Either side may write the
//! moment its handshake ends, so the last line of a handshake (the `ok`) is
//! read without read-ahead: no byte after it is ever taken from the socket.
//!
//! What it owns: the HA listener, the connection threads, the handshake
//! and the line codec. What it must never do: decide anything about states
//! (the machine does), retry on its own (the driver calls [`Link::connect`]
//! every ping interval while the link is down), block its caller beyond a
//! write timeout (dropping the link aside), log the cluster key, or read or
//! write a replication stream once its handshake is over.

use crate::config::{ClusterKey, HaConfig, HaRole, SERVER_NAME_CHARS_MAX, check_word};
use crate::ha::machine::{Stamp, State};
use crate::ids::{Epoch, Offset};
use crate::net::SocketOptions;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use socket2::SockRef;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest line accepted, newline excluded, checked before parsing. The
/// largest real message (a proof with its parameters) is a few hundred
/// bytes; 64 KiB leaves room for growth while bounding what a stranger can
/// make the listener buffer.
pub const LINE_BYTES_MAX: usize = 64 * 1024;

/// What a `hello` must start with: tells a twinmq HA port from anything
/// else that happens to speak JSON lines.
pub const MAGIC: &str = "twinmq-ha";

/// The protocol spoken here; a peer with another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Random bytes in a nonce: enough that one is never seen twice, so a
/// recorded proof is useless on any later connection.
pub const NONCE_BYTES: usize = 32;

/// Prefix of the MAC input. The version in it means a proof made for
/// another protocol version never verifies.
const MAC_CONTEXT: &str = "twinmq-ha-v1\n";

/// Accepted connections whose handshake may run at once, on top of one per
/// shard (a passive redials every shard's replication stream at once). The
/// peer's control connection needs one (two during a simultaneous
/// connect); the rest absorbs strays and port scans. Beyond the bound, new
/// connections are closed at once, so a flood costs threads only up to it.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 8;

/// How often the idle listener thread checks whether the link is being
/// dropped. Connections wake it at once; this only bounds how long
/// dropping a [`Link`] takes.
pub const ACCEPT_STOP_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// How long a side that sent `refuse` waits for the peer's own verdict (or
/// its close) before closing. Closing with unread bytes queued makes the
/// kernel send a reset, which can destroy the refusal before the peer has
/// read it; this is the time for those bytes to arrive.
pub const REFUSE_LINGER: Duration = Duration::from_millis(200);

/// Longest refusal reason from the peer that is logged and kept. A real
/// one (every shared parameter differing) stays well under it; the bound
/// keeps a stranger from writing 64 KiB into the log per connection.
pub const REFUSE_REASON_CHARS_MAX: usize = 2048;

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 4096;

/// Distinct connection failures remembered while the link is down, so each
/// is logged once at its level and repeats only at debug: the driver
/// retries every ping interval, and a misconfiguration would otherwise
/// flood the log ten times a second.
const FAILURES_REMEMBERED_MAX: usize = 16;

/// The parameters both servers of a pair must share. A peer whose
/// parameters differ is refused, naming every difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Heartbeat interval: both must expect heartbeats as often as the
    /// other sends them.
    pub ping_interval_ms: u32,
    /// The active's lock re-validation interval (normalized).
    pub active_lock_reacquisition_interval_ms: u32,
    /// The passive's lock retry interval; the fencing rule compares it with
    /// the active's.
    pub passive_lock_reacquisition_interval_ms: u32,
    /// The gateway both use as their witness.
    pub gateway: String,
    /// The pair's name, also in the lock file.
    pub cluster_id: String,
    /// `"replicated"` or `"shared"`.
    pub mode: String,
    /// Shard threads: replication streams are per shard.
    pub shards: u32,
    /// Journal segment size: replicated segments must line up.
    pub segment_bytes: u64,
}

impl Params {
    /// The shared parameters of a server with this `[ha]` section, shard
    /// count and segment size.
    pub fn from_config(ha: &HaConfig, shards: u32, segment_bytes: u64) -> Params {
        let timings = ha.timings();
        // The profile holds these as u32 milliseconds, so they fit back.
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Params {
            ping_interval_ms: ms(timings.ping_interval),
            // The normalized value: both servers round the same way, but a
            // profile that did not run normalize must not look different.
            active_lock_reacquisition_interval_ms: ms(timings.active_lock_reacquisition_interval),
            passive_lock_reacquisition_interval_ms: ms(timings.passive_lock_reacquisition_interval),
            gateway: ha.gateway.to_string(),
            cluster_id: ha.cluster_id.clone(),
            mode: ha.mode.to_string(),
            shards,
            segment_bytes,
        }
    }
}

/// Every parameter that differs between this server's (`here`) and the
/// peer's, each as `NAME differs: here A, peer B`, in field order. Empty
/// when they agree.
pub fn compare(here: &Params, peer: &Params) -> Vec<String> {
    fn differ<T: PartialEq + fmt::Display>(out: &mut Vec<String>, name: &str, a: &T, b: &T) {
        if a != b {
            out.push(format!("{name} differs: here {a}, peer {b}"));
        }
    }
    // Destructured, so a new field cannot be forgotten here.
    let Params {
        ping_interval_ms,
        active_lock_reacquisition_interval_ms,
        passive_lock_reacquisition_interval_ms,
        gateway,
        cluster_id,
        mode,
        shards,
        segment_bytes,
    } = here;
    let mut out = Vec::new();
    differ(
        &mut out,
        "ping_interval_ms",
        ping_interval_ms,
        &peer.ping_interval_ms,
    );
    differ(
        &mut out,
        "active_lock_reacquisition_interval_ms",
        active_lock_reacquisition_interval_ms,
        &peer.active_lock_reacquisition_interval_ms,
    );
    differ(
        &mut out,
        "passive_lock_reacquisition_interval_ms",
        passive_lock_reacquisition_interval_ms,
        &peer.passive_lock_reacquisition_interval_ms,
    );
    differ(&mut out, "gateway", gateway, &peer.gateway);
    differ(&mut out, "cluster_id", cluster_id, &peer.cluster_id);
    differ(&mut out, "mode", mode, &peer.mode);
    differ(&mut out, "shards", shards, &peer.shards);
    differ(
        &mut out,
        "segment_bytes",
        segment_bytes,
        &peer.segment_bytes,
    );
    out
}

/// Everything one server's link needs to know.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This server's name (`[server] name`), sent in `hello` and proven by
    /// the MAC.
    pub node: String,
    /// This server's role; the peer must have the other one.
    pub role: HaRole,
    /// Lower wins ties, including which of two simultaneous connections
    /// stays.
    pub precedence: u32,
    /// The shared secret of the handshake.
    pub cluster_key: ClusterKey,
    /// The parameters the peer must share.
    pub params: Params,
    /// This server's HA port.
    pub listen: SocketAddr,
    /// The peer's HA port.
    pub peer: SocketAddr,
    /// `[net.ha]` with `connect_timeout_ms` = `socket_creation_timeout_ms`
    /// and `handshake_timeout_ms` = `socket_initialization_timeout_ms`.
    pub socket: SocketOptions,
}

impl LinkConfig {
    /// The link of server `node` with this `[ha]` section, `[net.ha]`
    /// options, shard count and segment size.
    pub fn from_config(
        node: &str,
        ha: &HaConfig,
        net_ha: &SocketOptions,
        shards: u32,
        segment_bytes: u64,
    ) -> LinkConfig {
        LinkConfig {
            node: node.to_owned(),
            role: ha.role,
            precedence: ha.precedence(),
            cluster_key: ha.cluster_key.clone(),
            params: Params::from_config(ha, shards, segment_bytes),
            listen: ha.listen,
            peer: ha.peer,
            socket: ha.link_socket_options(net_ha),
        }
    }

    /// How long a `send` may block: one ping interval. Heartbeats are tiny,
    /// so a write only blocks when the peer has stopped reading altogether;
    /// waiting longer would only delay the driver's own timers.
    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.params.ping_interval_ms.max(1).into())
    }
}

/// What the peer tells this server after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// The peer changed state.
    State {
        state: State,
        previous: State,
        stamp: Stamp,
    },
    /// The peer is alive, in this state.
    Heartbeat { state: State, stamp: Stamp },
}

/// What the link reports to its owner, in order per control connection:
/// `Up`, its `Message`s, then exactly one `Down`. `Stream`s come apart from
/// that order, at any time, whether the control connection is up or not.
/// (Not `Clone` or `PartialEq`: a `Stream` owns its socket.)
#[derive(Debug)]
pub enum LinkEvent {
    /// A connection passed the handshake and is now the link.
    Up {
        peer_node: String,
        peer_precedence: u32,
    },
    /// A message from the peer over the live connection.
    Message(PeerMessage),
    /// The live connection is gone; `reason` says why, for the log.
    Down { reason: String },
    /// An authenticated replication stream for `shard` was accepted (the
    /// peer dialed it). The socket is blocking, its timeouts cleared,
    /// `[net.ha]` applied, and nothing after the handshake has been read
    /// from it; the receiver owns it, the link no longer touches it.
    Stream { shard: u16, stream: TcpStream },
}

/// Why a connection attempt, a handshake or a live connection failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    /// The TCP connect to the peer failed or timed out (names the address).
    #[error("{0}")]
    Connect(io::Error),
    /// Reading or writing the socket failed.
    #[error("socket error: {0}")]
    Io(io::Error),
    /// The handshake did not complete within its deadline.
    #[error("no complete handshake within {0} ms")]
    Timeout(u32),
    /// The other side closed the connection.
    #[error("the connection was closed by the other side")]
    Closed,
    /// A line grew past the limit before its newline.
    #[error("a line longer than {LINE_BYTES_MAX} bytes")]
    LineTooLong,
    /// A line was not a well-formed message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A well-formed message came where another was due.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    /// The hello is not from a twinmq HA peer of this version.
    #[error("{0}")]
    Protocol(String),
    /// The other side's proof did not verify: it has another cluster key.
    #[error("bad cluster key")]
    BadKey,
    /// The two servers are not a pair (same name or same role).
    #[error("{0}")]
    Identity(String),
    /// The shared parameters differ; each entry as [`compare`] words it.
    #[error("HA parameters differ (here = {here}, peer = {peer}): {}", differences.join("; "))]
    Mismatch {
        here: String,
        peer: String,
        differences: Vec<String>,
    },
    /// The other side refused this server, for this reason.
    #[error("{0}")]
    Refused(String),
    /// The peer asked for a replication stream of a shard the pair does
    /// not have.
    #[error("no replication stream for shard {shard}: the pair has {shards} shards")]
    NoSuchShard { shard: u32, shards: u32 },
    /// Bytes that were not handshake lines arrived before a replication
    /// stream's handshake ended: a peer that does not wait for `ok`.
    #[error("{0} bytes arrived before the handshake ended")]
    Early(usize),
}

impl LinkError {
    /// Read and write errors, with timeouts (which show as `WouldBlock` on
    /// Linux) and resets told apart.
    fn from_io(error: io::Error, timeout_ms: Option<u32>) -> LinkError {
        match (error.kind(), timeout_ms) {
            (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(ms)) => {
                LinkError::Timeout(ms)
            }
            (io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe, _) => LinkError::Closed,
            _ => LinkError::Io(error),
        }
    }
}

/// A point in time by which a handshake step must be done, with the
/// configured timeout for the error message.
#[derive(Debug, Clone, Copy)]
struct Deadline {
    at: Instant,
    timeout_ms: u32,
}

impl Deadline {
    fn after(timeout_ms: u32) -> Deadline {
        Deadline {
            at: Instant::now() + Duration::from_millis(timeout_ms.into()),
            timeout_ms,
        }
    }

    /// Time left, or `Timeout` if none. Never zero on success: a zero
    /// socket timeout would mean "wait forever".
    fn left(self) -> Result<Duration, LinkError> {
        let left = self.at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(LinkError::Timeout(self.timeout_ms))
        } else {
            Ok(left)
        }
    }
}

// ---------------------------------------------------------------------------
// The wire

/// `role` as the wire spells it (the profile type only deserializes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireRole {
    Primary,
    Secondary,
}

impl From<HaRole> for WireRole {
    fn from(role: HaRole) -> WireRole {
        match role {
            HaRole::Primary => WireRole::Primary,
            HaRole::Secondary => WireRole::Secondary,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Hello {
    magic: String,
    version: u32,
    node: String,
    role: WireRole,
    precedence: u32,
    nonce: String,
    /// The shard whose replication stream the initiator opens; absent on
    /// control connections (and so left out, keeping their hello as it
    /// always was) and in every acceptor's hello. A `u32` on the wire, as
    /// `Params::shards`, so any index is refused by name rather than
    /// failing to parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stream: Option<u32>,
}

/// One line. Unknown fields are ignored and unknown types parse as
/// `Unknown`, so a newer peer can add both.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Wire {
    Hello(Hello),
    Proof {
        mac: String,
        params: Params,
    },
    Ok,
    Refuse {
        reason: String,
    },
    State {
        state: String,
        previous: String,
        epoch: u64,
        end: u64,
    },
    Heartbeat {
        state: String,
        epoch: u64,
        end: u64,
    },
    #[serde(other)]
    Unknown,
}

impl Wire {
    /// The type name, for errors.
    fn kind(&self) -> &'static str {
        match self {
            Wire::Hello(_) => "hello",
            Wire::Proof { .. } => "proof",
            Wire::Ok => "ok",
            Wire::Refuse { .. } => "refuse",
            Wire::State { .. } => "state",
            Wire::Heartbeat { .. } => "heartbeat",
            Wire::Unknown => "a message of an unknown type",
        }
    }

    fn from_message(message: &PeerMessage) -> Wire {
        match *message {
            PeerMessage::State {
                state,
                previous,
                stamp,
            } => Wire::State {
                state: state.name().to_owned(),
                previous: previous.name().to_owned(),
                epoch: stamp.epoch.get(),
                end: stamp.end.get(),
            },
            PeerMessage::Heartbeat { state, stamp } => Wire::Heartbeat {
                state: state.name().to_owned(),
                epoch: stamp.epoch.get(),
                end: stamp.end.get(),
            },
        }
    }

    /// The line, newline included.
    fn encode(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("wire messages always serialize");
        assert!(line.len() <= LINE_BYTES_MAX, "outgoing HA line too long");
        line.push(b'\n');
        line
    }

    fn decode(line: &[u8]) -> Result<Wire, LinkError> {
        serde_json::from_slice(line).map_err(|e| LinkError::Malformed(e.to_string()))
    }
}

fn state_named(name: &str) -> Result<State, LinkError> {
    State::from_name(name).ok_or_else(|| LinkError::Malformed(format!("unknown state {name:?}")))
}

/// What a line read after the handshake means: a message, nothing (an
/// unknown type, ignored), or a reason to close.
fn after_handshake(line: &[u8]) -> Result<Option<PeerMessage>, LinkError> {
    let stamp = |epoch, end| Stamp {
        epoch: Epoch(epoch),
        end: Offset(end),
    };
    match Wire::decode(line)? {
        Wire::State {
            state,
            previous,
            epoch,
            end,
        } => Ok(Some(PeerMessage::State {
            state: state_named(&state)?,
            previous: state_named(&previous)?,
            stamp: stamp(epoch, end),
        })),
        Wire::Heartbeat { state, epoch, end } => Ok(Some(PeerMessage::Heartbeat {
            state: state_named(&state)?,
            stamp: stamp(epoch, end),
        })),
        Wire::Unknown => Ok(None),
        other => Err(LinkError::Unexpected {
            expected: "state or heartbeat",
            got: other.kind(),
        }),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes hex of exactly `len` bytes (either case).
fn unhex(text: &str, len: usize) -> Option<Vec<u8>> {
    if text.len() != 2 * len || !text.is_ascii() {
        return None;
    }
    (0..len)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn new_mac(key: &ClusterKey, nonce: &str, node: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(MAC_CONTEXT.as_bytes());
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(node.as_bytes());
    mac
}

/// The proof `node` gives for the other side's `nonce`.
fn prove(key: &ClusterKey, nonce: &str, node: &str) -> String {
    hex(&new_mac(key, nonce, node).finalize().into_bytes())
}

/// Whether `proof` is `node`'s proof over `nonce` (this server's own),
/// compared in constant time.
fn verify(key: &ClusterKey, nonce: &str, node: &str, proof: &str) -> bool {
    const MAC_BYTES: usize = 32;
    match unhex(proof, MAC_BYTES) {
        Some(tag) => new_mac(key, nonce, node).verify_slice(&tag).is_ok(),
        None => false,
    }
}

/// Reads `\n`-terminated lines, at most [`LINE_BYTES_MAX`] each; bytes
/// after a line stay buffered for the next one (the handshake's last line
/// may arrive with the first messages), except with
/// [`LineReader::read_line_exact`], which takes nothing past its line.
struct LineReader {
    stream: Arc<TcpStream>,
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
}

impl LineReader {
    fn new(stream: Arc<TcpStream>) -> LineReader {
        LineReader {
            stream,
            buf: Vec::new(),
            scanned: 0,
        }
    }

    /// The next line without its newline. With a deadline, fails with
    /// `Timeout` once it passes; without, waits until a line, the end of
    /// the stream or an error.
    fn read_line(&mut self, deadline: Option<Deadline>) -> Result<Vec<u8>, LinkError> {
        self.next_line(deadline, false)
    }

    /// Like [`Self::read_line`], but never takes a byte past the line's
    /// newline from the socket: for the handshake's last line, after which
    /// a replication stream's peer may send binary at once. Each read
    /// peeks first and then takes only up to the first newline, so it
    /// costs a second system call per read; a handshake line or two is
    /// all that is read this way.
    fn read_line_exact(&mut self, deadline: Option<Deadline>) -> Result<Vec<u8>, LinkError> {
        self.next_line(deadline, true)
    }

    /// Bytes read from the socket and not yet returned as a line.
    fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn next_line(&mut self, deadline: Option<Deadline>, exact: bool) -> Result<Vec<u8>, LinkError> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + at;
                if end > LINE_BYTES_MAX {
                    return Err(LinkError::LineTooLong);
                }
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                self.scanned = 0;
                return Ok(line);
            }
            self.scanned = self.buf.len();
            if self.buf.len() > LINE_BYTES_MAX {
                return Err(LinkError::LineTooLong);
            }
            if let Some(deadline) = deadline {
                self.stream
                    .set_read_timeout(Some(deadline.left()?))
                    .map_err(LinkError::Io)?;
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let read = if exact {
                // Whatever the peek saw stays queued in the socket, so the
                // read after it returns at once and never takes more.
                self.stream.peek(&mut chunk).and_then(|seen| {
                    let wanted = chunk[..seen]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(seen, |at| at + 1);
                    (&*self.stream).read(&mut chunk[..wanted])
                })
            } else {
                (&*self.stream).read(&mut chunk)
            };
            match read {
                Ok(0) => return Err(LinkError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LinkError::from_io(e, deadline.map(|d| d.timeout_ms))),
            }
        }
    }
}

fn write_line(stream: &TcpStream, wire: &Wire, deadline: Deadline) -> Result<(), LinkError> {
    stream
        .set_write_timeout(Some(deadline.left()?))
        .map_err(LinkError::Io)?;
    let mut writer = stream;
    writer
        .write_all(&wire.encode())
        .map_err(|e| LinkError::from_io(e, Some(deadline.timeout_ms)))
}

// ---------------------------------------------------------------------------
// The handshake

/// Which server opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Initiator {
    /// This server connected to the peer.
    Us,
    /// The peer connected to this server's listener.
    Peer,
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// The control connection: state and heartbeat lines.
    Control,
    /// The replication stream of this shard: binary after the handshake.
    Stream(u16),
}

/// Who the peer is, once the handshake passed, and what the connection is
/// for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerIdentity {
    node: String,
    precedence: u32,
    purpose: Purpose,
}

/// Runs the handshake on a fresh connection (see the module doc). The
/// initiator announces `purpose`; an acceptor must pass `Control` and
/// learns the purpose from the peer's hello. On failure after the peer's
/// hello, a `refuse` has been sent where the protocol calls for one. On
/// success for a stream, nothing past the peer's `ok` has been read.
fn handshake(
    config: &LinkConfig,
    stream: &TcpStream,
    reader: &mut LineReader,
    initiator: Initiator,
    purpose: Purpose,
    deadline: Deadline,
) -> Result<PeerIdentity, LinkError> {
    assert!(
        initiator == Initiator::Us || purpose == Purpose::Control,
        "only the initiator announces a stream"
    );
    let mut nonce = [0u8; NONCE_BYTES];
    crate::io::random_bytes(&mut nonce).map_err(LinkError::Io)?;
    let nonce = hex(&nonce);
    let hello = Hello {
        magic: MAGIC.to_owned(),
        version: PROTOCOL_VERSION,
        node: config.node.clone(),
        role: config.role.into(),
        precedence: config.precedence,
        nonce: nonce.clone(),
        stream: match purpose {
            Purpose::Control => None,
            Purpose::Stream(shard) => Some(shard.into()),
        },
    };
    write_line(stream, &Wire::Hello(hello), deadline)?;

    let theirs = match Wire::decode(&reader.read_line(Some(deadline))?)? {
        Wire::Hello(hello) => hello,
        other => {
            return Err(LinkError::Unexpected {
                expected: "hello",
                got: other.kind(),
            });
        }
    };
    // From here on the other side speaks the protocol well enough to be
    // told why it is refused.
    if let Err(error) = check_hello(&theirs) {
        return Err(refuse(stream, reader, error, deadline));
    }

    let proof = Wire::Proof {
        mac: prove(&config.cluster_key, &theirs.nonce, &config.node),
        params: config.params.clone(),
    };
    if initiator == Initiator::Us {
        write_line(stream, &proof, deadline)?;
    }
    let (mac, params) = match Wire::decode(&reader.read_line(Some(deadline))?)? {
        Wire::Proof { mac, params } => (mac, params),
        Wire::Refuse { reason } => return Err(LinkError::Refused(printable(&reason))),
        other => {
            return Err(LinkError::Unexpected {
                expected: "proof",
                got: other.kind(),
            });
        }
    };
    // Over this server's own nonce: a proof recorded on another connection
    // never verifies here.
    if !verify(&config.cluster_key, &nonce, &theirs.node, &mac) {
        return Err(refuse(stream, reader, LinkError::BadKey, deadline));
    }
    if initiator == Initiator::Peer {
        write_line(stream, &proof, deadline)?;
    }

    if let Err(error) = check_pair(config, &theirs, &params) {
        return Err(refuse(stream, reader, error, deadline));
    }
    // Only the initiator's hello says what the connection is for: an
    // acceptor naming a stream is ignored, so it cannot turn this
    // server's control connection into anything else.
    let purpose = match (initiator, theirs.stream) {
        (Initiator::Us, _) | (Initiator::Peer, None) => purpose,
        (Initiator::Peer, Some(shard)) => match stream_shard(shard, config.params.shards) {
            Ok(shard) => Purpose::Stream(shard),
            Err(error) => return Err(refuse(stream, reader, error, deadline)),
        },
    };
    write_line(stream, &Wire::Ok, deadline)?;
    // Read exactly: a stream's peer may follow its `ok` with binary at once,
    // and the bytes must stay in the socket for whoever gets it.
    match Wire::decode(&reader.read_line_exact(Some(deadline))?)? {
        Wire::Ok => {}
        Wire::Refuse { reason } => return Err(LinkError::Refused(printable(&reason))),
        other => {
            return Err(LinkError::Unexpected {
                expected: "ok",
                got: other.kind(),
            });
        }
    }
    // Neither side sends anything after its `ok` before it has read the
    // other's, so bytes buffered here came from a peer that broke that
    // rule; handing the socket on without them would corrupt the stream.
    if let Purpose::Stream(_) = purpose
        && reader.buffered() > 0
    {
        return Err(LinkError::Early(reader.buffered()));
    }
    Ok(PeerIdentity {
        node: theirs.node,
        precedence: theirs.precedence,
        purpose,
    })
}

/// The shard of a stream the peer asked for, if the pair has it (both
/// servers have `shards` shards: the parameters were compared already).
fn stream_shard(shard: u32, shards: u32) -> Result<u16, LinkError> {
    match u16::try_from(shard) {
        Ok(index) if shard < shards => Ok(index),
        _ => Err(LinkError::NoSuchShard { shard, shards }),
    }
}

/// A peer's refusal reason as it may be logged: control characters (a
/// forged log line starts with a newline) replaced, and cut at
/// [`REFUSE_REASON_CHARS_MAX`].
fn printable(reason: &str) -> String {
    let mut shown: String = reason
        .chars()
        .take(REFUSE_REASON_CHARS_MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if reason.chars().nth(REFUSE_REASON_CHARS_MAX).is_some() {
        shown.push_str("...");
    }
    shown
}

/// Checks the parts of a hello that do not need the key.
fn check_hello(hello: &Hello) -> Result<(), LinkError> {
    // Peer-supplied text ends up in logs: show only a bounded start of it.
    let shown = |text: &str| -> String {
        let mut shown: String = text.chars().take(SERVER_NAME_CHARS_MAX).collect();
        if shown.len() < text.len() {
            shown.push_str("...");
        }
        format!("{shown:?}")
    };
    if hello.magic != MAGIC {
        return Err(LinkError::Protocol(format!(
            "not a twinmq HA peer (magic {})",
            shown(&hello.magic)
        )));
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(LinkError::Protocol(format!(
            "the peer speaks HA protocol version {}, this server {PROTOCOL_VERSION}",
            hello.version
        )));
    }
    if hello.node.chars().count() > SERVER_NAME_CHARS_MAX {
        return Err(LinkError::Protocol(format!(
            "the peer's node name {} is longer than {SERVER_NAME_CHARS_MAX} characters",
            shown(&hello.node)
        )));
    }
    check_word(&hello.node, SERVER_NAME_CHARS_MAX)
        .map_err(|why| LinkError::Protocol(format!("the peer's node name {why}")))?;
    if unhex(&hello.nonce, NONCE_BYTES).is_none() {
        return Err(LinkError::Protocol(format!(
            "the peer's nonce is not {NONCE_BYTES} bytes of hex"
        )));
    }
    Ok(())
}

/// Checks that the authenticated peer is the other half of this pair.
fn check_pair(config: &LinkConfig, theirs: &Hello, params: &Params) -> Result<(), LinkError> {
    if theirs.node == config.node {
        return Err(LinkError::Identity(format!(
            "both servers are named {:?}: each server of a pair needs its own name",
            config.node
        )));
    }
    if theirs.role == WireRole::from(config.role) {
        return Err(LinkError::Identity(format!(
            "both servers are {}: one must be primary, the other secondary",
            config.role
        )));
    }
    let differences = compare(&config.params, params);
    if !differences.is_empty() {
        return Err(LinkError::Mismatch {
            here: config.node.clone(),
            peer: theirs.node.clone(),
            differences,
        });
    }
    Ok(())
}

/// Sends `refuse` with `error` as the reason, stops writing, and waits
/// briefly for the other side's verdict or close (see [`REFUSE_LINGER`]).
/// Returns `error`.
fn refuse(
    stream: &TcpStream,
    reader: &mut LineReader,
    error: LinkError,
    deadline: Deadline,
) -> LinkError {
    let reason = error.to_string();
    if write_line(stream, &Wire::Refuse { reason }, deadline).is_ok() {
        let _ = stream.shutdown(Shutdown::Write);
        let linger = Deadline {
            at: deadline.at.min(Instant::now() + REFUSE_LINGER),
            timeout_ms: deadline.timeout_ms,
        };
        // Whatever comes (a verdict, a close, nothing) changes nothing.
        let _ = reader.read_line(Some(linger));
    }
    error
}

// ---------------------------------------------------------------------------
// The link

/// One server's end of the HA link: its listener, at most one live
/// connection, and the attempts under way. Dropping it closes everything
/// (reporting `Down` for a live connection) and waits for its threads,
/// which takes at most the connect timeout if a connect to an unresponsive
/// peer is under way.
pub struct Link {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener: Option<JoinHandle<()>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("node", &self.shared.config.node)
            .field("local_addr", &self.local_addr)
            .field("peer", &self.shared.config.peer)
            .field("up", &self.is_up())
            .finish()
    }
}

/// What the link's threads share.
struct Shared {
    config: LinkConfig,
    /// Set once, when the link is dropped; every thread checks it.
    stop: AtomicBool,
    slots: Mutex<Slots>,
    /// Signalled when a connect attempt ends (see [`Shared::establish`]).
    dial_ended: Condvar,
}

/// The mutable state, under one lock. Every event is sent while holding
/// it, after checking that its connection is (still) the live one: that is
/// what keeps `Up`, `Message`s and `Down` of one connection in order and
/// a replaced connection's `Down` before its successor's `Up`.
struct Slots {
    events: Sender<LinkEvent>,
    live: Option<Live>,
    /// The connect attempt under way, by connection id.
    dialing: Option<u64>,
    /// Accepted connections still in their handshake.
    accepting: usize,
    /// Every open socket (handshaking or live), so dropping the link can
    /// shut them all down and wake their threads.
    sockets: HashMap<u64, Arc<TcpStream>>,
    next_id: u64,
    /// Connection threads, joined when the link is dropped.
    threads: Vec<JoinHandle<()>>,
    /// The headline of the last failed attempt, for [`Link::last_failure`].
    last_failure: Option<String>,
    /// Failures logged at their level since the link was last up.
    failures_logged: VecDeque<String>,
    /// Whether the next connect attempt is announced at info.
    announce_connect: bool,
}

/// The live connection.
struct Live {
    id: u64,
    stream: Arc<TcpStream>,
    /// Initiated by the server with the lower (precedence, node name): the
    /// one kept when two connections complete at once.
    preferred: bool,
    peer_node: String,
}

impl Link {
    /// Binds the HA listener on `config.listen` (the error names the
    /// address) and starts accepting connections from the peer.
    /// `config.node` must be a valid server name.
    pub fn start(config: LinkConfig, events: Sender<LinkEvent>) -> io::Result<Link> {
        check_word(&config.node, SERVER_NAME_CHARS_MAX).map_err(|why| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("HA link: node {why}"))
        })?;
        let listener = crate::net::listen(config.listen, &config.socket, false)?;
        let local_addr = listener.local_addr()?;
        // Non-blocking, so a connection reset between the wake-up and
        // accept cannot block the loop (and its stop check).
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            config,
            stop: AtomicBool::new(false),
            slots: Mutex::new(Slots {
                events,
                live: None,
                dialing: None,
                accepting: 0,
                sockets: HashMap::new(),
                next_id: 0,
                threads: Vec::new(),
                last_failure: None,
                failures_logged: VecDeque::new(),
                announce_connect: true,
            }),
            dial_ended: Condvar::new(),
        });
        let accepting = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("twinmq-ha-listen".into())
            .spawn(move || accepting.accept_loop(listener))?;
        Ok(Link {
            shared,
            local_addr,
            listener: Some(thread),
        })
    }

    /// Starts one connect-and-handshake attempt in the background, unless
    /// the link is up or an attempt is under way. The outcome arrives as
    /// `Up`, or (failure) only in the log and [`Self::last_failure`].
    pub fn connect(&mut self) {
        let shared = &self.shared;
        let mut slots = shared.slots();
        if slots.live.is_some() || slots.dialing.is_some() || shared.stopping() {
            return;
        }
        let peer = shared.config.peer;
        if slots.announce_connect {
            slots.announce_connect = false;
            tracing::info!("Trying to establish connection with {peer} ...");
        } else {
            tracing::debug!("Trying to establish connection with {peer} ...");
        }
        let id = slots.new_id();
        slots.dialing = Some(id);
        let dialer = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("twinmq-ha-dial".into())
            .spawn(move || dialer.dial(id));
        match spawned {
            Ok(thread) => slots.keep_thread(thread),
            Err(error) => {
                slots.dialing = None;
                tracing::error!("HA link: cannot start a connect thread: {error}");
            }
        }
    }

    /// Sends `message` on the live connection, waiting at most one ping
    /// interval. `false` if the link is not up, or if the write failed, in
    /// which case the connection is closed and `Down` reported.
    pub fn send(&mut self, message: &PeerMessage) -> bool {
        let (id, stream) = match &self.shared.slots().live {
            Some(live) => (live.id, Arc::clone(&live.stream)),
            None => return false,
        };
        tracing::trace!(?message, "HA link: sending");
        let mut writer = &*stream;
        match writer.write_all(&Wire::from_message(message).encode()) {
            Ok(()) => true,
            Err(error) => {
                let reason = match LinkError::from_io(error, None) {
                    LinkError::Closed => LinkError::Closed.to_string(),
                    LinkError::Io(e) if e.kind() == io::ErrorKind::WouldBlock => format!(
                        "the peer took nothing within {} ms",
                        self.shared.config.params.ping_interval_ms
                    ),
                    other => format!("sending failed: {other}"),
                };
                self.shared.close_if_live(id, reason);
                false
            }
        }
    }

    /// Closes the live connection, if any; `Down` is reported. The peer
    /// sees the close and reports its own `Down`.
    pub fn disconnect(&mut self) {
        let mut slots = self.shared.slots();
        if slots.live.is_some() {
            slots.close_live("disconnected by this server".to_owned());
        }
    }

    /// Whether a connection is live (its `Up` has been sent).
    pub fn is_up(&self) -> bool {
        self.shared.slots().live.is_some()
    }

    /// The address the listener is bound to (the kernel's port for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Why the last connection attempt or handshake failed, as logged;
    /// cleared when the link comes up. For status output.
    pub fn last_failure(&self) -> Option<String> {
        self.shared.slots().last_failure.clone()
    }

    /// A dialer of replication streams to the configured peer. It keeps
    /// its own copy of the configuration and no hold on the link: streams
    /// are not part of the link's life.
    pub fn stream_dialer(&self) -> StreamDialer {
        StreamDialer {
            config: Arc::new(self.shared.config.clone()),
        }
    }
}

/// Dials replication streams to the configured peer (clonable, Send,
/// usable from any thread). Each dial is independent of the control link:
/// it neither needs it up nor affects it.
#[derive(Debug, Clone)]
pub struct StreamDialer {
    config: Arc<LinkConfig>,
}

impl StreamDialer {
    /// Connects to the peer's HA port and runs the handshake announcing a
    /// stream for `shard`. Blocks for at most the `[net.ha]` connect
    /// timeout plus the handshake timeout. The socket comes back blocking,
    /// with its read and write timeouts cleared, `[net.ha]` applied, and
    /// nothing after the peer's `ok` read from it.
    ///
    /// Errors are one line for the log: the connect failure (naming the
    /// address), the peer's refusal with its reason (a bad cluster key,
    /// differing parameters, a shard the pair does not have), or why the
    /// handshake failed (timeout, closed). The caller retries; nothing is
    /// logged here above debug, so the caller decides how loud a failure is.
    pub fn dial(&self, shard: u16) -> Result<TcpStream, String> {
        let config = &*self.config;
        let peer = config.peer;
        let failed = |headline: &str| {
            let reason = format!("replication stream for shard {shard}: {headline}");
            tracing::debug!("{reason}");
            reason
        };
        // The link's own wording, so a stream and the control connection
        // failing for one cause read alike in the log.
        let handshake_failed = |error: LinkError| {
            let (_, lines) = describe_failure(Initiator::Us, peer, &error);
            failed(lines.last().map_or("", String::as_str))
        };
        let stream = crate::net::connect(peer, &config.socket)
            .map_err(|error| failed(&LinkError::Connect(error).to_string()))?;
        let stream = Arc::new(stream);
        let mut reader = LineReader::new(Arc::clone(&stream));
        let deadline = Deadline::after(config.socket.handshake_timeout_ms);
        let peer_identity = handshake(
            config,
            &stream,
            &mut reader,
            Initiator::Us,
            Purpose::Stream(shard),
            deadline,
        )
        .map_err(handshake_failed)?;
        drop(reader);
        let stream =
            Arc::try_unwrap(stream).expect("the handshake's reader was the only other handle");
        stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None))
            .map_err(|error| failed(&format!("cannot clear timeouts: {error}")))?;
        tracing::debug!(
            "HA replication stream for shard {shard} open to {} at {peer}",
            peer_identity.node
        );
        Ok(stream)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // The listener first: it is the only other thread that starts
        // threads, so after it the list below is complete.
        if let Some(thread) = self.listener.take()
            && thread.join().is_err()
        {
            tracing::error!("the HA listener thread panicked");
        }
        let threads = {
            let mut slots = self.shared.slots();
            if slots.live.is_some() {
                slots.close_live("the link is shutting down".to_owned());
            }
            for stream in slots.sockets.values() {
                let _ = stream.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut slots.threads)
        };
        // A connection waiting for a connect attempt to end must not wait.
        self.shared.dial_ended.notify_all();
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("an HA connection thread panicked");
            }
        }
    }
}

impl Slots {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn keep_thread(&mut self, thread: JoinHandle<()>) {
        // Finished threads are simply let go: nothing waits for them.
        self.threads.retain(|t| !t.is_finished());
        self.threads.push(thread);
    }

    /// Closes the live connection and reports its `Down`. Its thread finds
    /// it no longer live and ends without another word.
    fn close_live(&mut self, reason: String) {
        let Some(live) = self.live.take() else {
            return;
        };
        let _ = live.stream.shutdown(Shutdown::Both);
        tracing::info!("HA link with {} down: {reason}", live.peer_node);
        let _ = self.events.send(LinkEvent::Down { reason });
        self.announce_connect = true;
    }

    fn is_live(&self, id: u64) -> bool {
        self.live.as_ref().is_some_and(|live| live.id == id)
    }

    /// Records a failed attempt and logs it: at `level` the first time
    /// since the link was last up, at debug when it repeats.
    fn failed(&mut self, level: tracing::Level, lines: &[String]) {
        let Some(headline) = lines.last() else {
            return;
        };
        self.last_failure = Some(headline.clone());
        let first = !self.failures_logged.contains(headline);
        for line in lines {
            match level {
                _ if !first => tracing::debug!("{line}"),
                tracing::Level::ERROR => tracing::error!("{line}"),
                tracing::Level::WARN => tracing::warn!("{line}"),
                tracing::Level::INFO => tracing::info!("{line}"),
                _ => tracing::debug!("{line}"),
            }
        }
        if first {
            if self.failures_logged.len() == FAILURES_REMEMBERED_MAX {
                self.failures_logged.pop_front();
            }
            self.failures_logged.push_back(headline.clone());
        }
    }
}

/// Unregisters a connection's socket when its thread ends, and closes it
/// if it is still live (a thread that panicked included).
struct Registration<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut slots = self.shared.slots();
        slots.sockets.remove(&self.id);
        if slots.is_live(self.id) {
            slots.close_live("the connection thread ended".to_owned());
        }
    }
}

/// Ends a connect attempt (or an accepted handshake) in the books however
/// its thread leaves the handshake.
struct Attempt<'a> {
    shared: &'a Shared,
    id: u64,
    initiator: Initiator,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut slots = self.shared.slots();
        match self.initiator {
            Initiator::Us => {
                if slots.dialing == Some(self.id) {
                    slots.dialing = None;
                }
            }
            Initiator::Peer => slots.accepting -= 1,
        }
        drop(slots);
        self.shared.dial_ended.notify_all();
    }
}

impl Shared {
    /// The lock; a thread that panicked while holding it left the books
    /// consistent (every change under it is a single step), so poisoning
    /// is ignored.
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn close_if_live(&self, id: u64, reason: String) {
        let mut slots = self.slots();
        if slots.is_live(id) {
            slots.close_live(reason);
        }
    }

    fn accept_loop(self: Arc<Shared>, listener: TcpListener) {
        // Accept errors (out of file descriptors, most likely) are logged
        // once until an accept succeeds again.
        let mut failing = false;
        while !self.stopping() {
            match crate::io::wait_readable(listener.as_fd(), ACCEPT_STOP_CHECK_INTERVAL) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    tracing::error!("HA listener: waiting for connections failed: {error}");
                    return;
                }
            }
            loop {
                match listener.accept() {
                    Ok((stream, from)) => {
                        failing = false;
                        self.start_accepted(stream, from);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        if !failing {
                            tracing::warn!("HA listener: accept failed: {error}");
                            failing = true;
                        }
                        // Back off: the condition (EMFILE) does not clear at once.
                        std::thread::sleep(ACCEPT_STOP_CHECK_INTERVAL);
                        break;
                    }
                }
            }
        }
    }

    fn start_accepted(self: &Arc<Shared>, stream: TcpStream, from: SocketAddr) {
        let mut slots = self.slots();
        let shards = usize::try_from(self.config.params.shards).unwrap_or(usize::MAX);
        if slots.accepting >= HANDSHAKES_IN_FLIGHT_MAX.saturating_add(shards) {
            tracing::debug!(%from, "HA listener: too many handshakes under way; closing");
            return;
        }
        slots.accepting += 1;
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("twinmq-ha-conn".into())
            .spawn(move || {
                let attempt = Attempt {
                    shared: &shared,
                    id: 0,
                    initiator: Initiator::Peer,
                };
                // Accepted sockets do not inherit O_NONBLOCK on Linux; be
                // explicit, and apply [net.ha] as to every accepted socket.
                let ready = stream.set_nonblocking(false).and_then(|()| {
                    crate::net::configure(&SockRef::from(&stream), &shared.config.socket)
                });
                match ready {
                    Ok(()) => shared.run(stream, from, attempt),
                    Err(error) => tracing::warn!(%from, "HA listener: {error}"),
                }
            });
        match spawned {
            Ok(thread) => slots.keep_thread(thread),
            Err(error) => {
                // The closure, and with it the stream, was dropped.
                slots.accepting -= 1;
                tracing::warn!(%from, "HA listener: cannot start a thread: {error}");
            }
        }
    }

    fn dial(self: Arc<Shared>, id: u64) {
        let attempt = Attempt {
            shared: &self,
            id,
            initiator: Initiator::Us,
        };
        let peer = self.config.peer;
        match crate::net::connect(peer, &self.config.socket) {
            Ok(stream) => self.run(stream, peer, attempt),
            Err(error) => {
                // A refusal is the normal answer of a peer not started yet.
                let level = if error.kind() == io::ErrorKind::ConnectionRefused {
                    tracing::Level::DEBUG
                } else {
                    tracing::Level::WARN
                };
                let text = LinkError::Connect(error).to_string();
                self.slots().failed(level, &[text]);
            }
        }
    }

    /// A connection's whole life: handshake, then (if kept) reading lines
    /// until it closes.
    fn run(&self, stream: TcpStream, from: SocketAddr, attempt: Attempt<'_>) {
        let stream = Arc::new(stream);
        let id = {
            let mut slots = self.slots();
            // Checked under the lock that dropping the link takes to shut
            // sockets down, so no socket escapes that.
            if self.stopping() {
                return;
            }
            let id = match attempt.initiator {
                Initiator::Us => attempt.id,
                Initiator::Peer => slots.new_id(),
            };
            slots.sockets.insert(id, Arc::clone(&stream));
            id
        };
        let registration = Registration { shared: self, id };
        let initiator = attempt.initiator;
        let mut reader = LineReader::new(Arc::clone(&stream));
        let deadline = Deadline::after(self.config.socket.handshake_timeout_ms);
        let handshaken = handshake(
            &self.config,
            &stream,
            &mut reader,
            initiator,
            Purpose::Control,
            deadline,
        );
        match handshaken {
            Ok(peer) => match peer.purpose {
                Purpose::Control => {
                    let kept = self.establish(id, &stream, initiator, &peer, from);
                    drop(attempt);
                    if kept {
                        self.read_loop(id, reader);
                    }
                }
                Purpose::Stream(shard) => {
                    drop(attempt);
                    // Out of the books before the socket leaves: dropping
                    // the link must not shut down a stream it handed over.
                    drop(registration);
                    drop(reader);
                    self.hand_over(stream, shard, &peer, from);
                }
            },
            Err(error) => {
                drop(attempt);
                let (level, lines) = describe_failure(initiator, from, &error);
                self.slots().failed(level, &lines);
            }
        }
    }

    /// Makes a connection that passed the handshake the live one, unless
    /// the live one is to be kept instead. Returns whether it was kept
    /// (and `Up` sent).
    fn establish(
        &self,
        id: u64,
        stream: &Arc<TcpStream>,
        initiator: Initiator,
        peer: &PeerIdentity,
        from: SocketAddr,
    ) -> bool {
        let config = &self.config;
        let we_are_preferred =
            (config.precedence, config.node.as_str()) < (peer.precedence, peer.node.as_str());
        let preferred = (initiator == Initiator::Us) == we_are_preferred;
        let mut slots = self.slots();
        // The peer's connection, while our own attempt (which would be
        // preferred) is under way: wait for that rather than report this
        // one Up and then, when ours completes, Down again. Once only, and
        // bounded by how long an attempt can take.
        if initiator == Initiator::Peer
            && !preferred
            && slots.dialing.is_some()
            && slots.live.is_none()
        {
            let longest =
                config.socket.connect_timeout() + config.socket.handshake_timeout() + REFUSE_LINGER;
            slots = self
                .dial_ended
                .wait_timeout_while(slots, longest, |s| s.dialing.is_some() && !self.stopping())
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if self.stopping() {
            return false;
        }
        match &slots.live {
            Some(live) if live.preferred && !preferred => {
                tracing::debug!(
                    peer = %from,
                    "HA link: closing a second connection with {}; the one {} initiated stays",
                    peer.node,
                    if initiator == Initiator::Us { "it" } else { "this server" },
                );
                let _ = stream.shutdown(Shutdown::Both);
                return false;
            }
            Some(_) => slots.close_live(format!(
                "replaced by a newer connection with {} (initiated by {})",
                peer.node,
                if initiator == Initiator::Us {
                    &config.node
                } else {
                    &peer.node
                }
            )),
            None => {}
        }
        // The handshake's timeouts no longer apply: reads wait for the next
        // line however long (heartbeats tell the driver when the peer went
        // quiet), writes for at most the send timeout.
        let timeouts = stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(Some(config.send_timeout())));
        if let Err(error) = timeouts {
            let lines = [format!(
                "HA connection with {}: cannot set timeouts: {error}",
                peer.node
            )];
            slots.failed(tracing::Level::WARN, &lines);
            return false;
        }
        slots.live = Some(Live {
            id,
            stream: Arc::clone(stream),
            preferred,
            peer_node: peer.node.clone(),
        });
        slots.last_failure = None;
        slots.failures_logged.clear();
        tracing::info!(
            "HA link up with {} at {from} (connection initiated by {})",
            peer.node,
            if initiator == Initiator::Us {
                "this server"
            } else {
                "the peer"
            }
        );
        let _ = slots.events.send(LinkEvent::Up {
            peer_node: peer.node.clone(),
            peer_precedence: peer.precedence,
        });
        true
    }

    /// Sends an accepted replication stream to the link's owner, blocking
    /// and with its timeouts cleared, unless the link is being dropped (the
    /// stream is closed then). `stream` must be the only handle left.
    fn hand_over(&self, stream: Arc<TcpStream>, shard: u16, peer: &PeerIdentity, from: SocketAddr) {
        let stream = Arc::try_unwrap(stream)
            .expect("a connection's reader and registration are gone before its hand-over");
        let untimed = stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None));
        let mut slots = self.slots();
        if let Err(error) = untimed {
            let lines = [format!(
                "HA replication stream for shard {shard} from {}: cannot clear timeouts: {error}",
                peer.node
            )];
            slots.failed(tracing::Level::WARN, &lines);
            return;
        }
        // Under the lock, as the check in `run`: a link being dropped hands
        // nothing more out.
        if self.stopping() {
            return;
        }
        tracing::debug!(
            "HA replication stream for shard {shard} accepted from {} at {from}",
            peer.node
        );
        let _ = slots.events.send(LinkEvent::Stream { shard, stream });
    }

    /// Reads the live connection `id` until it closes or is replaced,
    /// reporting each message while it is still the live one.
    fn read_loop(&self, id: u64, mut reader: LineReader) {
        loop {
            let reason = match reader
                .read_line(None)
                .and_then(|line| after_handshake(&line))
            {
                Ok(Some(message)) => {
                    let slots = self.slots();
                    if !slots.is_live(id) {
                        return;
                    }
                    tracing::trace!(?message, "HA link: received");
                    let _ = slots.events.send(LinkEvent::Message(message));
                    continue;
                }
                Ok(None) => {
                    tracing::trace!("HA link: ignoring a message of an unknown type");
                    continue;
                }
                Err(LinkError::Closed) => "the peer closed the connection".to_owned(),
                Err(error) => format!("bad input from the peer: {error}"),
            };
            self.close_if_live(id, reason);
            return;
        }
    }
}

/// The log lines for a failed attempt (the last one is the headline) and
/// their level.
fn describe_failure(
    initiator: Initiator,
    from: SocketAddr,
    error: &LinkError,
) -> (tracing::Level, Vec<String>) {
    use tracing::Level;
    // The port of an accepted connection is an ephemeral one: naming it
    // would only make every repeat look new.
    let who = match initiator {
        Initiator::Us => from.to_string(),
        Initiator::Peer => from.ip().to_string(),
    };
    match error {
        LinkError::BadKey => match initiator {
            Initiator::Peer => (
                Level::ERROR,
                vec![format!(
                    "HA connection from {who} rejected: bad cluster key"
                )],
            ),
            Initiator::Us => (
                Level::ERROR,
                vec![format!(
                    "HA peer {who} failed authentication: bad cluster key"
                )],
            ),
        },
        LinkError::Mismatch { differences, .. } => {
            let mut lines: Vec<String> = differences
                .iter()
                .map(|d| format!("HA parameter {d}"))
                .collect();
            lines.push(format!("HA connection with {who} refused: {error}"));
            (Level::ERROR, lines)
        }
        LinkError::Identity(_) | LinkError::NoSuchShard { .. } => (
            Level::ERROR,
            vec![format!("HA connection with {who} refused: {error}")],
        ),
        LinkError::Refused(reason) => (
            Level::ERROR,
            vec![format!("HA peer {who} refused the connection: {reason}")],
        ),
        // Before the MAC is checked an accepted connection may be anyone (a
        // port scan, a stray client): its junk is not the operator's
        // concern. A real peer that fails this way fails the same way when
        // this server connects to it, and that is logged at warn.
        LinkError::Io(_)
        | LinkError::Timeout(_)
        | LinkError::Closed
        | LinkError::LineTooLong
        | LinkError::Malformed(_)
        | LinkError::Unexpected { .. }
            if initiator == Initiator::Peer =>
        {
            (
                Level::DEBUG,
                vec![format!("HA handshake with {who} failed: {error}")],
            )
        }
        _ => (
            Level::WARN,
            vec![format!("HA handshake with {who} failed: {error}")],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{self, Receiver};

    const KEY: &str = "a-cluster-key-for-tests";

    /// Longest any condition may take to come true. Generous: the machine
    /// running the tests may be loaded; passing tests never wait this long.
    const WAIT: Duration = Duration::from_secs(10);

    /// How long a side must stay without events to count as settled: far
    /// longer than a loopback handshake, so a second connection still
    /// completing would show.
    const QUIET: Duration = Duration::from_millis(300);

    /// Handshake timeout of the tests that wait one out.
    const SHORT_HANDSHAKE_MS: u32 = 300;

    fn params() -> Params {
        Params {
            ping_interval_ms: 100,
            active_lock_reacquisition_interval_ms: 100,
            passive_lock_reacquisition_interval_ms: 250,
            gateway: "127.0.0.1:2100".to_owned(),
            cluster_id: "pair-one".to_owned(),
            mode: "replicated".to_owned(),
            shards: 2,
            segment_bytes: 64 << 20,
        }
    }

    fn loopback_any() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    /// A loopback port nobody listens on (yet).
    fn free_port() -> SocketAddr {
        TcpListener::bind(loopback_any())
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn config(node: &str, role: HaRole, precedence: u32) -> LinkConfig {
        LinkConfig {
            node: node.to_owned(),
            role,
            precedence,
            cluster_key: ClusterKey::from(KEY),
            params: params(),
            listen: loopback_any(),
            peer: loopback_any(),
            socket: SocketOptions {
                connect_timeout_ms: 1_000,
                handshake_timeout_ms: 1_000,
                ..SocketOptions::default()
            },
        }
    }

    fn alpha() -> LinkConfig {
        config("alpha", HaRole::Primary, 0)
    }

    fn beta() -> LinkConfig {
        config("beta", HaRole::Secondary, 1)
    }

    /// One server's link and what it reported.
    struct Side {
        link: Link,
        events: Receiver<LinkEvent>,
        ups: u32,
        downs: u32,
        messages: Vec<PeerMessage>,
        peers: Vec<(String, u32)>,
        /// Accepted replication streams, in arrival order.
        streams: Vec<(u16, TcpStream)>,
    }

    impl Side {
        fn start(config: LinkConfig) -> Side {
            let (sender, events) = mpsc::channel();
            Side {
                link: Link::start(config, sender).unwrap(),
                events,
                ups: 0,
                downs: 0,
                messages: Vec::new(),
                peers: Vec::new(),
                streams: Vec::new(),
            }
        }

        fn name(&self) -> &str {
            &self.link.shared.config.node
        }

        /// Live connections by the events: must only ever be 0 or 1.
        fn net(&self) -> u32 {
            self.ups - self.downs
        }

        fn take(&mut self, event: LinkEvent) {
            match event {
                LinkEvent::Up {
                    peer_node,
                    peer_precedence,
                } => {
                    assert_eq!(self.net(), 0, "{}: Up while up", self.name());
                    self.ups += 1;
                    self.peers.push((peer_node, peer_precedence));
                }
                LinkEvent::Message(message) => {
                    assert_eq!(self.net(), 1, "{}: message while down", self.name());
                    self.messages.push(message);
                }
                LinkEvent::Down { .. } => {
                    assert_eq!(self.net(), 1, "{}: Down while down", self.name());
                    self.downs += 1;
                }
                // Apart from the control connection's order: any time.
                LinkEvent::Stream { shard, stream } => self.streams.push((shard, stream)),
            }
        }

        /// Takes events for up to `time`; returns whether any came.
        fn poll(&mut self, time: Duration) -> bool {
            let deadline = Instant::now() + time;
            let mut any = false;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                match self.events.recv_timeout(left) {
                    Ok(event) => {
                        self.take(event);
                        any = true;
                    }
                    Err(_) => break,
                }
            }
            any
        }

        /// Takes events until `done` holds; fails the test after [`WAIT`].
        fn wait_until(&mut self, what: &str, mut done: impl FnMut(&mut Side) -> bool) {
            let deadline = Instant::now() + WAIT;
            while !done(self) {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    panic!(
                        "{}: no {what} within {WAIT:?} (ups {}, downs {}, last failure {:?})",
                        self.name(),
                        self.ups,
                        self.downs,
                        self.link.last_failure()
                    );
                };
                // Short slices: some conditions are not events.
                if let Ok(event) = self
                    .events
                    .recv_timeout(left.min(Duration::from_millis(10)))
                {
                    self.take(event);
                }
            }
        }

        fn wait_failure(&mut self, what: &str, expected: &str) {
            self.wait_until(what, |side| {
                side.link
                    .last_failure()
                    .is_some_and(|failure| failure.contains(expected))
            });
        }

        fn wait_message(&mut self, expected: &PeerMessage) {
            let count = self.messages.len();
            self.wait_until("message", |side| side.messages.len() > count);
            assert_eq!(&self.messages[count], expected);
        }
    }

    /// Two links that are each other's peer; `a`'s listener on a kernel
    /// port, `b`'s on a port reserved just before.
    fn pair_of(mut a: LinkConfig, mut b: LinkConfig) -> (Side, Side) {
        a.peer = free_port();
        let a = Side::start(a);
        b.listen = a.link.shared.config.peer;
        b.peer = a.link.local_addr();
        (a, Side::start(b))
    }

    fn state(state: State, previous: State, epoch: u64, end: u64) -> PeerMessage {
        PeerMessage::State {
            state,
            previous,
            stamp: Stamp {
                epoch: Epoch(epoch),
                end: Offset(end),
            },
        }
    }

    fn heartbeat(state: State, epoch: u64, end: u64) -> PeerMessage {
        PeerMessage::Heartbeat {
            state,
            stamp: Stamp {
                epoch: Epoch(epoch),
                end: Offset(end),
            },
        }
    }

    /// Sends a message each way and checks it arrives: the two sides'
    /// live connections are one and the same.
    fn exchange(a: &mut Side, b: &mut Side, n: u64) {
        let to_b = heartbeat(State::Waiting, n, 2 * n);
        assert!(a.link.send(&to_b));
        b.wait_message(&to_b);
        let to_a = heartbeat(State::Waiting, n, 2 * n + 1);
        assert!(b.link.send(&to_a));
        a.wait_message(&to_a);
    }

    #[test]
    fn pair_comes_up_carries_messages_both_ways_and_reconnects_after_disconnect() {
        let (mut a, mut b) = pair_of(alpha(), beta());
        assert!(!a.link.is_up());
        assert!(!a.link.send(&heartbeat(State::Waiting, 0, 0)));

        a.link.connect();
        a.wait_until("Up", |s| s.ups == 1);
        b.wait_until("Up", |s| s.ups == 1);
        assert_eq!(a.peers, vec![("beta".to_owned(), 1)]);
        assert_eq!(b.peers, vec![("alpha".to_owned(), 0)]);
        assert!(a.link.is_up() && b.link.is_up());
        assert_eq!(a.link.last_failure(), None);

        // In order, both ways, both kinds.
        let from_a = [
            state(State::Active, State::Waiting, 1, 0),
            heartbeat(State::Active, 1, 10),
            heartbeat(State::Active, 1, 20),
        ];
        let from_b = [
            state(State::PassiveSync, State::Waiting, 1, 0),
            state(State::Passive, State::PassiveSync, 1, 20),
            heartbeat(State::Passive, 1, 20),
        ];
        for message in &from_a {
            assert!(a.link.send(message));
        }
        for message in &from_b {
            assert!(b.link.send(message));
        }
        b.wait_until("messages", |s| s.messages.len() == 3);
        a.wait_until("messages", |s| s.messages.len() == 3);
        assert_eq!(b.messages, from_a);
        assert_eq!(a.messages, from_b);

        a.link.disconnect();
        a.wait_until("Down", |s| s.downs == 1);
        b.wait_until("Down", |s| s.downs == 1);
        assert!(!a.link.is_up() && !b.link.is_up());
        assert!(!b.link.send(&heartbeat(State::Waiting, 1, 20)));

        // The other side reconnects this time.
        b.link.connect();
        a.wait_until("Up", |s| s.ups == 2);
        b.wait_until("Up", |s| s.ups == 2);
        exchange(&mut a, &mut b, 7);

        // Dropping one side closes the link: its own Down, and the peer's.
        let Side {
            link, events, ups, ..
        } = a;
        drop(link);
        let down: Vec<LinkEvent> = events.try_iter().collect();
        assert!(
            matches!(down.as_slice(), [LinkEvent::Down { .. }]),
            "{down:?}"
        );
        assert_eq!(ups, 2);
        b.wait_until("Down", |s| s.downs == 2);
    }

    #[test]
    fn wrong_cluster_key_brings_the_link_up_on_neither_side() {
        let mut intruder = beta();
        intruder.cluster_key = ClusterKey::from("another-cluster-key!");
        let (mut a, mut b) = pair_of(alpha(), intruder);
        let b_addr = b.link.local_addr();

        a.link.connect();
        b.wait_failure(
            "rejection",
            "HA connection from 127.0.0.1 rejected: bad cluster key",
        );
        a.wait_failure(
            "refusal",
            &format!("HA peer {b_addr} refused the connection: bad cluster key"),
        );

        b.link.connect();
        a.wait_failure(
            "rejection",
            "HA connection from 127.0.0.1 rejected: bad cluster key",
        );
        b.wait_failure("refusal", "refused the connection: bad cluster key");

        a.poll(QUIET);
        b.poll(QUIET);
        assert_eq!((a.ups, b.ups), (0, 0));
        assert!(!a.link.is_up() && !b.link.is_up());
    }

    #[test]
    fn compare_lists_every_difference_with_both_values_in_field_order() {
        assert_eq!(compare(&params(), &params()), Vec::<String>::new());
        let peer = Params {
            ping_interval_ms: 200,
            gateway: "127.0.0.1:2101".to_owned(),
            mode: "shared".to_owned(),
            segment_bytes: 1 << 20,
            ..params()
        };
        assert_eq!(
            compare(&params(), &peer),
            vec![
                "ping_interval_ms differs: here 100, peer 200",
                "gateway differs: here 127.0.0.1:2100, peer 127.0.0.1:2101",
                "mode differs: here replicated, peer shared",
                "segment_bytes differs: here 67108864, peer 1048576",
            ]
        );
        assert_eq!(
            compare(&peer, &params())[0],
            "ping_interval_ms differs: here 200, peer 100"
        );
    }

    #[test]
    fn differing_parameters_are_refused_by_both_and_a_fixed_peer_is_taken_without_restart() {
        let mut odd = beta();
        odd.params.ping_interval_ms = 200;
        odd.params.gateway = "127.0.0.1:2101".to_owned();
        let (mut a, mut b) = pair_of(alpha(), odd);

        a.link.connect();
        a.wait_failure(
            "refusal",
            "HA parameters differ (here = alpha, peer = beta): \
             ping_interval_ms differs: here 100, peer 200; \
             gateway differs: here 127.0.0.1:2100, peer 127.0.0.1:2101",
        );
        b.wait_failure(
            "refusal",
            "HA parameters differ (here = beta, peer = alpha): \
             ping_interval_ms differs: here 200, peer 100; \
             gateway differs: here 127.0.0.1:2101, peer 127.0.0.1:2100",
        );
        a.poll(QUIET);
        b.poll(QUIET);
        assert_eq!((a.ups, b.ups), (0, 0));

        // The operator fixes the peer's profile and restarts it; this side
        // only keeps retrying, as its driver does every ping interval.
        let fixed = LinkConfig {
            params: params(),
            ..b.link.shared.config.clone()
        };
        drop(b);
        let mut b = Side::start(fixed);
        a.wait_until("Up after the fix", |s| {
            s.link.connect();
            s.ups == 1
        });
        b.wait_until("Up after the fix", |s| s.ups == 1);
        exchange(&mut a, &mut b, 1);
    }

    #[test]
    fn two_servers_with_one_role_or_one_name_are_refused_naming_it() {
        let (mut a, mut b) = pair_of(alpha(), config("beta", HaRole::Primary, 1));
        a.link.connect();
        let why = "both servers are primary: one must be primary, the other secondary";
        a.wait_failure("refusal", why);
        b.wait_failure("refusal", why);

        let (mut a, mut b) = pair_of(alpha(), config("alpha", HaRole::Secondary, 1));
        b.link.connect();
        let why = "both servers are named \"alpha\"";
        a.wait_failure("refusal", why);
        b.wait_failure("refusal", why);
        a.poll(QUIET);
        b.poll(QUIET);
        assert_eq!((a.ups, b.ups), (0, 0));
    }

    #[test]
    fn simultaneous_connects_leave_exactly_one_connection_on_each_side() {
        // Precedence ties, so the node name decides: "alpha" < "beta".
        let (mut a, mut b) = pair_of(alpha(), config("beta", HaRole::Secondary, 0));
        const ROUNDS: u64 = 6;
        for round in 0..ROUNDS {
            // Both ask at once, and keep asking as their drivers would.
            for _ in 0..10 {
                a.link.connect();
                b.link.connect();
                a.poll(Duration::from_millis(2));
                b.poll(Duration::from_millis(2));
            }
            a.wait_until("the link up", |s| s.net() == 1);
            b.wait_until("the link up", |s| s.net() == 1);
            // Settled: no more events on either side for a while.
            while a.poll(QUIET) | b.poll(QUIET) {}
            assert_eq!((a.net(), b.net()), (1, 1), "round {round}");
            assert!(a.link.is_up() && b.link.is_up());
            exchange(&mut a, &mut b, round);

            a.link.disconnect();
            a.wait_until("Down", |s| s.net() == 0);
            b.wait_until("Down", |s| s.net() == 0);
        }
        // Each side's Ups and Downs stayed balanced throughout (`take`
        // asserts it on every event).
        assert_eq!(a.ups, a.downs);
        assert_eq!(b.ups, b.downs);
        // The preferred server waits for its own attempt rather than take
        // the peer's first, so it never saw a connection replaced.
        assert_eq!(a.ups, ROUNDS as u32);
    }

    /// A few KiB of binary unlike any line: every byte value, newlines and
    /// zeros among them, in an order that depends on `seed`.
    fn binary(seed: u8) -> Vec<u8> {
        (0..6 * 1024usize)
            .map(|i| (i as u8).wrapping_mul(167).wrapping_add(seed))
            .collect()
    }

    /// Reads exactly `len` bytes; fails the test if they do not come
    /// within [`WAIT`].
    fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut bytes = vec![0; len];
        stream.read_exact(&mut bytes).unwrap();
        bytes
    }

    /// Dials the stream of `shard` with `dialer` to `acceptor`; each end
    /// writes a few KiB of binary the moment it has its socket, before
    /// reading anything, and each must receive the other's intact. Returns
    /// (dialed, accepted).
    fn open_stream(
        dialer: &StreamDialer,
        acceptor: &mut Side,
        shard: u16,
    ) -> (TcpStream, TcpStream) {
        let seed = u8::try_from(shard).unwrap();
        let to_acceptor = binary(seed);
        let to_dialer = binary(!seed);
        let dialing = {
            let dialer = dialer.clone();
            let payload = to_acceptor.clone();
            std::thread::spawn(move || -> Result<TcpStream, String> {
                let mut stream = dialer.dial(shard)?;
                stream.write_all(&payload).map_err(|e| e.to_string())?;
                Ok(stream)
            })
        };
        let count = acceptor.streams.len();
        acceptor.wait_until("Stream", |s| s.streams.len() > count);
        let (accepted_shard, mut accepted) = acceptor.streams.remove(count);
        accepted.write_all(&to_dialer).unwrap();
        assert_eq!(accepted_shard, shard);
        let mut dialed = dialing.join().unwrap().unwrap();

        // Handed over as promised: no timeouts left, [net.ha] applied.
        for end in [&dialed, &accepted] {
            assert_eq!(end.read_timeout().unwrap(), None);
            assert_eq!(end.write_timeout().unwrap(), None);
            assert_eq!(end.nodelay().unwrap(), SocketOptions::default().nodelay);
        }
        assert_eq!(read_exactly(&mut accepted, to_acceptor.len()), to_acceptor);
        assert_eq!(read_exactly(&mut dialed, to_dialer.len()), to_dialer);
        (dialed, accepted)
    }

    #[test]
    fn a_dialed_stream_arrives_with_its_shard_carries_binary_at_once_and_leaves_the_link_alone() {
        let (mut a, mut b) = pair_of(alpha(), beta());
        let dialer = b.link.stream_dialer();

        // With no control connection, a stream does not make one.
        open_stream(&dialer, &mut a, 1);
        a.poll(QUIET);
        b.poll(QUIET);
        assert_eq!((a.ups, b.ups), (0, 0));
        assert!(!a.link.is_up() && !b.link.is_up());

        // With one, it stays as it was on both sides: no Down, no new Up.
        a.link.connect();
        a.wait_until("Up", |s| s.ups == 1);
        b.wait_until("Up", |s| s.ups == 1);
        let mut kept = Vec::new();
        for shard in 0..2 {
            kept.push(open_stream(&dialer, &mut a, shard));
        }
        a.poll(QUIET);
        b.poll(QUIET);
        assert_eq!((a.ups, a.downs, b.ups, b.downs), (1, 0, 1, 0));
        assert!(b.streams.is_empty(), "the dialing side accepts nothing");
        exchange(&mut a, &mut b, 1);

        // The link keeps no hold on a stream: dropping it closes only the
        // control connection.
        drop(a);
        drop(b);
        let (mut dialed, mut accepted) = kept.pop().unwrap();
        dialed.write_all(b"after").unwrap();
        assert_eq!(read_exactly(&mut accepted, 5), b"after");
        accepted.write_all(b"still").unwrap();
        assert_eq!(read_exactly(&mut dialed, 5), b"still");
    }

    #[test]
    fn a_stream_dialed_with_a_wrong_cluster_key_is_refused_and_never_handed_over() {
        let mut intruder = beta();
        intruder.cluster_key = ClusterKey::from("another-cluster-key!");
        let (mut a, b) = pair_of(alpha(), intruder);
        let a_addr = a.link.local_addr();

        let error = b.link.stream_dialer().dial(0).unwrap_err();
        assert_eq!(
            error,
            format!(
                "replication stream for shard 0: \
                 HA peer {a_addr} refused the connection: bad cluster key"
            )
        );
        a.wait_failure(
            "rejection",
            "HA connection from 127.0.0.1 rejected: bad cluster key",
        );
        a.poll(QUIET);
        assert!(a.streams.is_empty());
        assert_eq!(a.ups, 0);
    }

    #[test]
    fn a_stream_dial_to_a_port_nobody_listens_on_names_the_address() {
        let nobody = free_port();
        let side = Side::start(LinkConfig {
            peer: nobody,
            ..beta()
        });
        let error = side.link.stream_dialer().dial(0).unwrap_err();
        assert!(
            error.starts_with(&format!(
                "replication stream for shard 0: connect to {nobody}: "
            )),
            "{error}"
        );
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn a_stream_for_a_shard_the_pair_does_not_have_is_refused_naming_it() {
        let (mut a, mut b) = pair_of(alpha(), beta());
        let a_addr = a.link.local_addr();
        a.link.connect();
        a.wait_until("Up", |s| s.ups == 1);
        b.wait_until("Up", |s| s.ups == 1);
        let dialer = b.link.stream_dialer();

        // The pair has shards 0 and 1.
        for shard in [2, u16::MAX] {
            let why = format!("no replication stream for shard {shard}: the pair has 2 shards");
            let error = dialer.dial(shard).unwrap_err();
            assert_eq!(
                error,
                format!(
                    "replication stream for shard {shard}: \
                     HA peer {a_addr} refused the connection: {why}"
                )
            );
            a.wait_failure(
                "refusal",
                &format!("HA connection with 127.0.0.1 refused: {why}"),
            );
        }
        a.poll(QUIET);
        b.poll(QUIET);
        assert!(a.streams.is_empty());
        // The control connection did not notice.
        assert_eq!((a.ups, a.downs, b.ups, b.downs), (1, 0, 1, 0));
        exchange(&mut a, &mut b, 1);
    }

    #[test]
    fn every_shard_of_a_many_shard_pair_can_dial_its_stream_at_once() {
        // More shards than the handshakes a listener otherwise takes at
        // once: a passive redials all of them together.
        const SHARDS: u16 = 12;
        let mut many = (alpha(), beta());
        many.0.params.shards = SHARDS.into();
        many.1.params.shards = SHARDS.into();
        let (mut a, b) = pair_of(many.0, many.1);
        let dialer = b.link.stream_dialer();
        let dials: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let dialer = dialer.clone();
                std::thread::spawn(move || dialer.dial(shard).map(drop))
            })
            .collect();
        for dial in dials {
            dial.join().unwrap().unwrap();
        }
        a.wait_until("every Stream", |s| s.streams.len() == usize::from(SHARDS));
        let mut shards: Vec<u16> = a.streams.iter().map(|(shard, _)| *shard).collect();
        shards.sort_unstable();
        assert_eq!(shards, (0..SHARDS).collect::<Vec<_>>());
    }

    /// Plays `config`'s side of a stream handshake by hand: as the
    /// initiator of the stream of `shard`, or (`None`) as the acceptor.
    /// Conforms to the protocol, but sends `then` in the same write as its
    /// `ok`, and sends that `ok` only after reading the other side's: the
    /// other side then finds the first stream bytes right behind the last
    /// line it reads, every time.
    fn hurried_handshake(config: &LinkConfig, stream: &TcpStream, shard: Option<u16>, then: &[u8]) {
        let mut reader = LineReader::new(Arc::new(stream.try_clone().unwrap()));
        let deadline = Some(Deadline::after(5_000));
        let mut writer = stream;
        let mut read = || Wire::decode(&reader.read_line(deadline).unwrap()).unwrap();
        let hello = Wire::Hello(Hello {
            magic: MAGIC.to_owned(),
            version: PROTOCOL_VERSION,
            node: config.node.clone(),
            role: config.role.into(),
            precedence: config.precedence,
            nonce: hex(&[9; NONCE_BYTES]),
            stream: shard.map(u32::from),
        });
        writer.write_all(&hello.encode()).unwrap();
        let Wire::Hello(theirs) = read() else {
            panic!("no hello");
        };
        let proof = Wire::Proof {
            mac: prove(&config.cluster_key, &theirs.nonce, &config.node),
            params: config.params.clone(),
        };
        if shard.is_some() {
            writer.write_all(&proof.encode()).unwrap();
        }
        assert!(matches!(read(), Wire::Proof { .. }));
        if shard.is_none() {
            writer.write_all(&proof.encode()).unwrap();
        }
        assert_eq!(read(), Wire::Ok);
        let mut last = Wire::Ok.encode();
        last.extend_from_slice(then);
        writer.write_all(&last).unwrap();
    }

    #[test]
    fn bytes_sent_with_the_last_handshake_line_are_left_in_the_stream_both_ways() {
        let payload = binary(7);

        // A hurried initiator, this link accepting.
        let mut a = Side::start(alpha());
        let hurried = TcpStream::connect(a.link.local_addr()).unwrap();
        hurried_handshake(&beta(), &hurried, Some(1), &payload);
        a.wait_until("Stream", |s| !s.streams.is_empty());
        let (shard, mut accepted) = a.streams.remove(0);
        assert_eq!(shard, 1);
        assert_eq!(read_exactly(&mut accepted, payload.len()), payload);

        // This link's dialer, a hurried acceptor.
        let listener = TcpListener::bind(loopback_any()).unwrap();
        let dialer = StreamDialer {
            config: Arc::new(LinkConfig {
                peer: listener.local_addr().unwrap(),
                ..beta()
            }),
        };
        let dialing = std::thread::spawn(move || dialer.dial(0));
        assert!(
            crate::io::wait_readable(listener.as_fd(), WAIT).unwrap(),
            "no dial within {WAIT:?}"
        );
        let (hurried, _) = listener.accept().unwrap();
        hurried_handshake(&alpha(), &hurried, None, &payload);
        let mut dialed = dialing.join().unwrap().unwrap();
        assert_eq!(read_exactly(&mut dialed, payload.len()), payload);
    }

    /// Reads what the link sends on a raw connection until it closes (a
    /// reset counts as closed); fails the test if it does not within
    /// [`WAIT`]. Returns the lines.
    fn read_until_closed(stream: &mut TcpStream) -> Vec<String> {
        stream.set_read_timeout(Some(WAIT)).unwrap();
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the link did not close the connection: {e}"),
            }
        }
        String::from_utf8(all)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn silent_and_garbage_peers_are_dropped_and_the_listener_keeps_working() {
        let mut short = alpha();
        short.socket.handshake_timeout_ms = SHORT_HANDSHAKE_MS;
        let (mut a, mut b) = pair_of(short, beta());
        let addr = a.link.local_addr();

        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).unwrap();

        let mut garbage = TcpStream::connect(addr).unwrap();
        garbage.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let lines = read_until_closed(&mut garbage);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(r#"{"type":"hello","magic":"twinmq-ha""#));

        let mut endless = TcpStream::connect(addr).unwrap();
        // No newline, ever: refused once past the line limit.
        let _ = endless.write_all(&vec![b'x'; LINE_BYTES_MAX + 2 * READ_CHUNK_BYTES]);
        read_until_closed(&mut endless);

        // The real peer gets through while the silent one still hangs.
        b.link.connect();
        a.wait_until("Up", |s| s.ups == 1);
        b.wait_until("Up", |s| s.ups == 1);

        let lines = read_until_closed(&mut silent);
        let waited = started.elapsed();
        assert_eq!(lines.len(), 1, "only the hello: {lines:?}");
        assert!(
            waited >= Duration::from_millis(SHORT_HANDSHAKE_MS.into()),
            "dropped after {waited:?}"
        );
        a.wait_failure("timeout", "no complete handshake within 300 ms");
        // The link stayed up through all of it.
        exchange(&mut a, &mut b, 1);
        assert_eq!(a.downs, 0);
    }

    #[test]
    fn an_acceptor_never_proves_itself_before_the_initiator() {
        // Otherwise a stranger could open a connection with the peer's
        // nonce and relay the proof it gets.
        let mut short = alpha();
        short.socket.handshake_timeout_ms = SHORT_HANDSHAKE_MS;
        let a = Side::start(short);
        let mut stranger = TcpStream::connect(a.link.local_addr()).unwrap();
        let hello = Wire::Hello(Hello {
            magic: MAGIC.to_owned(),
            version: PROTOCOL_VERSION,
            node: "beta".to_owned(),
            role: WireRole::Secondary,
            precedence: 1,
            nonce: hex(&[7; NONCE_BYTES]),
            stream: None,
        });
        stranger.write_all(&hello.encode()).unwrap();
        let lines = read_until_closed(&mut stranger);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(r#""type":"hello""#), "{lines:?}");
    }

    #[test]
    fn a_peer_of_another_protocol_version_is_told_why_and_closed() {
        let a = Side::start(alpha());
        let mut newer = TcpStream::connect(a.link.local_addr()).unwrap();
        let hello = Wire::Hello(Hello {
            magic: MAGIC.to_owned(),
            version: PROTOCOL_VERSION + 1,
            node: "beta".to_owned(),
            role: WireRole::Secondary,
            precedence: 1,
            nonce: hex(&[7; NONCE_BYTES]),
            stream: None,
        });
        newer.write_all(&hello.encode()).unwrap();
        let lines = read_until_closed(&mut newer);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            Wire::decode(lines[1].as_bytes()).unwrap(),
            Wire::Refuse {
                reason: "the peer speaks HA protocol version 2, this server 1".to_owned()
            }
        );
    }

    #[test]
    fn unknown_message_types_are_ignored_and_a_malformed_line_closes_the_link() {
        let mut a = Side::start(alpha());
        let mut fake = TcpStream::connect(a.link.local_addr()).unwrap();
        let stream = Arc::new(fake.try_clone().unwrap());
        let mut reader = LineReader::new(Arc::clone(&stream));
        let peer = handshake(
            &beta(),
            &stream,
            &mut reader,
            Initiator::Us,
            Purpose::Control,
            Deadline::after(1_000),
        )
        .unwrap();
        assert_eq!(
            peer,
            PeerIdentity {
                node: "alpha".to_owned(),
                precedence: 0,
                purpose: Purpose::Control,
            }
        );
        a.wait_until("Up", |s| s.ups == 1);

        fake.write_all(b"{\"type\":\"gossip\",\"about\":[1,2,3]}\n")
            .unwrap();
        fake.write_all(
            b"{\"type\":\"heartbeat\",\"state\":\"PASSIVE\",\"epoch\":4,\"end\":9,\"lag\":0}\n",
        )
        .unwrap();
        fake.write_all(b"{\"type\":\"heartbeat\",\"state\":\"SLEEPY\",\"epoch\":4,\"end\":9}\n")
            .unwrap();
        a.wait_until("Down", |s| s.downs == 1);
        assert_eq!(a.messages, vec![heartbeat(State::Passive, 4, 9)]);
        read_until_closed(&mut fake);
    }

    #[test]
    fn a_refusal_reason_is_logged_on_one_line_and_bounded() {
        assert_eq!(printable("bad cluster key"), "bad cluster key");
        assert_eq!(printable("no\nFAKE LOG LINE"), "no?FAKE LOG LINE");
        let long = "x".repeat(REFUSE_REASON_CHARS_MAX + 1);
        assert_eq!(
            printable(&long),
            format!("{}...", &long[..REFUSE_REASON_CHARS_MAX])
        );
        assert_eq!(printable(&long[1..]), long[1..]);
    }

    #[test]
    fn wire_lines_are_as_documented() {
        let line = |wire: &Wire| String::from_utf8(wire.encode()).unwrap();
        assert_eq!(
            line(&Wire::from_message(&state(
                State::Active,
                State::ActiveSync,
                3,
                42
            ))),
            "{\"type\":\"state\",\"state\":\"ACTIVE\",\"previous\":\"ACTIVE_SYNC\",\"epoch\":3,\"end\":42}\n"
        );
        assert_eq!(
            line(&Wire::from_message(&heartbeat(State::Standalone, 3, 42))),
            "{\"type\":\"heartbeat\",\"state\":\"STANDALONE\",\"epoch\":3,\"end\":42}\n"
        );
        assert_eq!(line(&Wire::Ok), "{\"type\":\"ok\"}\n");
        assert_eq!(
            Wire::decode(br#"{"type":"refuse","reason":"no"}"#).unwrap(),
            Wire::Refuse {
                reason: "no".to_owned()
            }
        );
        let control = Hello {
            magic: MAGIC.to_owned(),
            version: 1,
            node: "alpha".to_owned(),
            role: WireRole::Primary,
            precedence: 0,
            nonce: "00".repeat(NONCE_BYTES),
            stream: None,
        };
        // A control hello is exactly what it was before streams existed.
        let hello = line(&Wire::Hello(control.clone()));
        assert_eq!(
            hello,
            format!(
                r#"{{"type":"hello","magic":"twinmq-ha","version":1,"node":"alpha","role":"primary","precedence":0,"nonce":"{}"}}"#,
                "00".repeat(NONCE_BYTES)
            ) + "\n"
        );
        assert_eq!(
            Wire::decode(hello.trim_end().as_bytes()).unwrap(),
            Wire::Hello(control.clone())
        );
        let stream_hello = line(&Wire::Hello(Hello {
            stream: Some(1),
            ..control.clone()
        }));
        assert!(
            stream_hello.ends_with("00\",\"stream\":1}\n"),
            "{stream_hello}"
        );
        // Any index parses, so a shard out of range is refused by name.
        assert_eq!(
            Wire::decode(stream_hello.replace(":1}", ":70000}").trim_end().as_bytes()).unwrap(),
            Wire::Hello(Hello {
                stream: Some(70_000),
                ..control
            })
        );
        assert!(matches!(
            Wire::decode(br#"{"type":"proof","mac":"ab","params":{"ping_interval_ms":1}}"#),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            Wire::decode(b"{\"kind\":\"ok\"}"),
            Err(LinkError::Malformed(_))
        ));
        assert_eq!(after_handshake(br#"{"type":"v2-thing"}"#).unwrap(), None);
        assert!(matches!(
            after_handshake(br#"{"type":"hello"}"#),
            Err(LinkError::Malformed(_))
        ));
        assert!(matches!(
            after_handshake(br#"{"type":"ok"}"#),
            Err(LinkError::Unexpected { .. })
        ));
    }

    #[test]
    fn a_proof_only_verifies_for_its_nonce_node_and_key() {
        let key = ClusterKey::from(KEY);
        let mut bytes = [0u8; NONCE_BYTES];
        crate::io::random_bytes(&mut bytes).unwrap();
        let nonce = hex(&bytes);
        crate::io::random_bytes(&mut bytes).unwrap();
        let other_nonce = hex(&bytes);
        assert_ne!(nonce, other_nonce);

        let proof = prove(&key, &nonce, "beta");
        assert_eq!(proof.len(), 64);
        assert!(verify(&key, &nonce, "beta", &proof));
        assert!(verify(&key, &nonce, "beta", &proof.to_uppercase()));
        // Replayed on another connection (another nonce), claimed by
        // another node, or made with another key: refused.
        assert!(!verify(&key, &other_nonce, "beta", &proof));
        assert!(!verify(&key, &nonce, "alpha", &proof));
        assert!(!verify(
            &ClusterKey::from("another-cluster-key!"),
            &nonce,
            "beta",
            &proof
        ));
        assert!(!verify(&key, &nonce, "beta", &proof[..62]));
        assert!(!verify(
            &key,
            &nonce,
            "beta",
            &format!("{}zz", &proof[..62])
        ));

        // The MAC input is pinned: context, nonce, node.
        let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(format!("twinmq-ha-v1\n{nonce}\nbeta").as_bytes());
        assert_eq!(proof, hex(&mac.finalize().into_bytes()));
    }

    /// A connected loopback pair: (what the test writes to, what it reads).
    fn socket_pair() -> (TcpStream, Arc<TcpStream>) {
        let listener = TcpListener::bind(loopback_any()).unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        (writer, Arc::new(reader))
    }

    #[test]
    fn line_reader_joins_split_lines_and_refuses_overlong_ones() {
        let (mut writer, stream) = socket_pair();
        let mut reader = LineReader::new(stream);
        let deadline = Deadline::after(5_000);
        writer.write_all(b"one\ntw").unwrap();
        assert_eq!(reader.read_line(Some(deadline)).unwrap(), b"one");
        writer.write_all(b"o\n\nthree\n").unwrap();
        assert_eq!(reader.read_line(Some(deadline)).unwrap(), b"two");
        assert_eq!(reader.read_line(Some(deadline)).unwrap(), b"");
        assert_eq!(reader.read_line(None).unwrap(), b"three");

        // Exactly at the limit is fine; one byte more is not.
        let mut line = vec![b'x'; LINE_BYTES_MAX];
        line.push(b'\n');
        writer.write_all(&line).unwrap();
        assert_eq!(
            reader.read_line(Some(deadline)).unwrap().len(),
            LINE_BYTES_MAX
        );
        line.insert(0, b'x');
        writer.write_all(&line).unwrap();
        assert!(matches!(
            reader.read_line(Some(deadline)),
            Err(LinkError::LineTooLong)
        ));
    }

    #[test]
    fn an_exact_line_read_leaves_what_follows_the_line_in_the_socket() {
        let (mut writer, stream) = socket_pair();
        let mut reader = LineReader::new(Arc::clone(&stream));
        let deadline = Some(Deadline::after(5_000));
        writer.write_all(b"one\ntw").unwrap();
        assert_eq!(reader.read_line_exact(deadline).unwrap(), b"one");
        assert_eq!(reader.buffered(), 0);
        let mut rest = b"o\n".to_vec();
        rest.extend_from_slice(&binary(3));
        writer.write_all(&rest).unwrap();
        assert_eq!(reader.read_line_exact(deadline).unwrap(), b"two");
        assert_eq!(reader.buffered(), 0);
        drop(reader);
        let mut stream = Arc::try_unwrap(stream).unwrap();
        assert_eq!(read_exactly(&mut stream, binary(3).len()), binary(3));
    }

    #[test]
    fn line_reader_times_out_and_sees_the_close() {
        let (writer, stream) = socket_pair();
        let mut reader = LineReader::new(stream);
        let started = Instant::now();
        assert!(matches!(
            reader.read_line(Some(Deadline::after(50))),
            Err(LinkError::Timeout(50))
        ));
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(writer);
        assert!(matches!(reader.read_line(None), Err(LinkError::Closed)));
    }

    #[test]
    fn params_from_config_use_the_normalized_active_interval() {
        let ha: HaConfig = toml::from_str(
            r#"mode = "shared"
role = "secondary"
cluster_id = "pair-one"
cluster_key = "a-cluster-key-for-tests"
listen = "127.0.0.1:3001"
peer = "127.0.0.1:3000"
lock_file = "/tmp/ha.lock"
gateway = "127.0.0.1:2100"
active_lock_reacquisition_interval_ms = 120
passive_lock_reacquisition_interval_ms = 400"#,
        )
        .unwrap();
        assert_eq!(
            Params::from_config(&ha, 4, 1 << 26),
            Params {
                ping_interval_ms: 100,
                active_lock_reacquisition_interval_ms: 150,
                passive_lock_reacquisition_interval_ms: 400,
                gateway: "127.0.0.1:2100".to_owned(),
                cluster_id: "pair-one".to_owned(),
                mode: "shared".to_owned(),
                shards: 4,
                segment_bytes: 1 << 26,
            }
        );
        let link = LinkConfig::from_config("beta", &ha, &SocketOptions::default(), 4, 1 << 26);
        assert_eq!(link.precedence, 1);
        assert_eq!(link.peer, ha.peer);
        assert_eq!(link.socket.connect_timeout_ms, 1_000);
        assert_eq!(link.socket.handshake_timeout_ms, 1_000);
    }

    #[test]
    fn start_names_the_address_it_cannot_bind_and_refuses_a_bad_node_name() {
        let taken = TcpListener::bind(loopback_any()).unwrap();
        let addr = taken.local_addr().unwrap();
        let (sender, _events) = mpsc::channel();
        let error = Link::start(
            LinkConfig {
                listen: addr,
                ..alpha()
            },
            sender.clone(),
        )
        .unwrap_err();
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
        let error = Link::start(config("no spaces", HaRole::Primary, 0), sender).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }
}
