//! A shard: one thread, one io_uring ring, its own client connections
//! (accepted on its own SO_REUSEPORT listener), its own journal and the
//! broker state of the destinations that hash to it.
//!
//! ```text
//!            ┌──────────────────────── shard k ───────────────────────────┐
//!  clients ──┤ accept/recv ─▶ frames ─▶ commands ─▶ broker ─▶ journal      │
//!            │                   │          ▲           │      (ring)       │
//!            │                   ▼          │           ▼                   │
//!            │   mesh ◀── commands for other shards     outputs ──▶ send ───┼─▶ clients
//!            └───────────────────────────────────────────────────────────────┘
//! ```
//! A request for a destination owned by another shard travels there as a
//! `Command` over the mesh; the answer comes back as an `Output` for the
//! connection. Nothing on this path takes a lock.
//!
//! What it must never do: acknowledge a persistent send before the journal
//! says it is durable, or block on the network.

mod conn;
pub mod mesh;

use crate::broker::records::{BrokerRecord, MessageRecord};
use crate::broker::{
    Broker, BrokerSettings, Command, DestinationStats, Handled, Output, Refusal, Store, StoreError,
};
use crate::constants::RECORD_HEADER_BYTES;
use crate::ids::{Epoch, Offset, ShardId};
use crate::io::{Completion, Owner, Ring, Token};
use crate::journal::{Journal, JournalError, JournalEvent, RecordKind, RecordReader};
use crate::net::SocketOptions;
use crate::protocol::{Destination, ErrorCode, Limits};
use conn::Conn;
use io_uring::{opcode, types};
use mesh::{Mesh, ShardMsg};
use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a shard does its periodic work (handshake deadlines, expiry,
/// statistics) when nothing else wakes it.
const TICK: Duration = Duration::from_millis(50);
/// How often a shard publishes its statistics for the admin endpoint.
const STATS_EVERY: Duration = Duration::from_millis(200);
/// A destination or subscription record further than this many segments
/// behind the journal end is re-appended so it does not pin old segments.
const METADATA_CARRY_SEGMENTS: u64 = 2;

/// The stable owner of a destination: FNV-1a of its name. Stable across
/// processes and versions (std's hasher is randomly seeded), so a journal
/// always holds the same destinations.
pub fn owner(destination: &Destination, shards: usize) -> ShardId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in destination.as_str().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    ShardId((hash % shards as u64) as u16)
}

/// What a shard is given to run.
#[derive(Debug, Clone)]
pub struct ShardConfig {
    pub id: ShardId,
    pub shards: usize,
    pub server_name: String,
    pub epoch: Epoch,
    pub socket: SocketOptions,
    pub max_connections: usize,
    pub limits: Limits,
    pub settings: BrokerSettings,
    pub segment_bytes: u64,
}

/// A shard's figures, published for the admin endpoint.
#[derive(Debug, Clone, Default)]
pub struct ShardStats {
    pub connections: usize,
    pub destinations: Vec<DestinationStats>,
    pub journal_start: u64,
    pub journal_end: u64,
    pub journal_segments: usize,
    pub messages: usize,
    pub cached_bytes: usize,
    pub poisoned: Option<String>,
}

/// What shards share with the control plane (not on the data path).
#[derive(Debug)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Whether clients are served; when not, a HELLO gets NOT_ACTIVE and
    /// connected clients are redirected (the HA control thread sets it).
    pub serving: AtomicBool,
    /// The active server's client address, named in NOT_ACTIVE redirects.
    pub active_hint: Mutex<String>,
    pub stats: Vec<Mutex<ShardStats>>,
}

impl Shared {
    pub fn new(shards: usize, serving: bool) -> Arc<Shared> {
        Arc::new(Shared {
            stop: AtomicBool::new(false),
            serving: AtomicBool::new(serving),
            active_hint: Mutex::new(String::new()),
            stats: (0..shards)
                .map(|_| Mutex::new(ShardStats::default()))
                .collect(),
        })
    }
}

/// Why a shard stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: {source}")]
    Journal { shard: u16, source: JournalError },
    #[error("shard {shard}: io_uring: {source}")]
    Ring { shard: u16, source: std::io::Error },
    #[error(transparent)]
    Probe(#[from] crate::io::RingError),
}

/// The journal as the broker's store, with the epoch records carry.
struct JournalStore<'a> {
    journal: &'a mut Journal,
    epoch: Epoch,
    scratch: &'a mut Vec<u8>,
}

impl Store for JournalStore<'_> {
    fn append(&mut self, record: &BrokerRecord) -> Result<(Offset, Offset), StoreError> {
        self.scratch.clear();
        record.encode(self.scratch);
        match self.journal.append(record.kind(), self.epoch, self.scratch) {
            Ok(offset) => Ok((
                offset,
                offset + (RECORD_HEADER_BYTES + self.scratch.len()) as u64,
            )),
            Err(JournalError::Full) => Err(StoreError::Full),
            Err(other) => Err(StoreError::Failed(other.to_string())),
        }
    }

    fn read_message(&mut self, offset: Offset) -> Result<MessageRecord, StoreError> {
        let mut reader = RecordReader::new(offset);
        let failed = |e: &dyn std::fmt::Display| {
            StoreError::Failed(format!("reading message at {offset}: {e}"))
        };
        let record = reader.next_record(self.journal).map_err(|e| failed(&e))?;
        let record = record.ok_or_else(|| failed(&"not durable"))?;
        match BrokerRecord::decode(record.header.kind, record.payload) {
            Ok(Some(BrokerRecord::Message(message))) => Ok(message),
            Ok(_) => Err(failed(&"not a message record")),
            Err(e) => Err(failed(&e)),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Rebuilds a broker from its journal (every record from the start).
pub fn recover(journal: &Journal, broker: &mut Broker) -> Result<u64, JournalError> {
    let mut reader = RecordReader::new(journal.start_offset());
    let mut count = 0;
    while let Some(record) = reader.next_record(journal)? {
        let offset = record.header.offset;
        match BrokerRecord::decode(record.header.kind, record.payload) {
            Ok(Some(decoded)) => {
                broker.replay(offset, decoded);
                count += 1;
            }
            Ok(None) => {}
            Err(error) => {
                return Err(JournalError::Corrupt {
                    segment: String::new(),
                    offset: offset.get(),
                    reason: error.to_string(),
                });
            }
        }
    }
    broker.set_durable(journal.durable_offset());
    Ok(count)
}

struct Shard {
    config: ShardConfig,
    ring: Ring,
    journal: Journal,
    broker: Broker,
    mesh: Mesh,
    listener: TcpListener,
    shared: Arc<Shared>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    /// Commands for this shard's broker, in arrival order; the head waits
    /// when the journal batch is full.
    local: VecDeque<Command>,
    outputs: Vec<Output>,
    scratch: Vec<u8>,
    wake_buf: Box<[u8; 8]>,
    wake_armed: bool,
    accept_armed: bool,
    accepting: bool,
    completions: Vec<Completion>,
}

/// Runs a shard until `shared.stop`; the journal must already be recovered
/// into `broker`.
pub fn run(
    config: ShardConfig,
    journal: Journal,
    broker: Broker,
    listener: TcpListener,
    mesh: Mesh,
    shared: Arc<Shared>,
) -> Result<(), ShardError> {
    let id = config.id.0;
    let ring = Ring::new(crate::constants::RING_ENTRIES_DEFAULT)?;
    let mut shard = Shard {
        config,
        ring,
        journal,
        broker,
        mesh,
        listener,
        shared,
        conns: HashMap::new(),
        next_conn: 0,
        local: VecDeque::new(),
        outputs: Vec::new(),
        scratch: Vec::new(),
        wake_buf: Box::new([0; 8]),
        wake_armed: false,
        accept_armed: false,
        accepting: true,
        completions: Vec::new(),
    };
    shard.start()?;
    shard
        .event_loop()
        .map_err(|source| ShardError::Ring { shard: id, source })
}

impl Shard {
    /// Opens the epoch in this shard's journal.
    fn start(&mut self) -> Result<(), ShardError> {
        let shard = self.config.id.0;
        if self.journal.epoch() < self.config.epoch {
            self.journal
                .append(RecordKind::EpochStart, self.config.epoch, b"")
                .map_err(|source| ShardError::Journal { shard, source })?;
            self.journal
                .sync(&mut self.ring)
                .map_err(|source| ShardError::Journal { shard, source })?;
        }
        self.broker.set_durable(self.journal.durable_offset());
        Ok(())
    }

    fn event_loop(&mut self) -> std::io::Result<()> {
        let mut last_tick = Instant::now();
        let mut last_stats = Instant::now() - STATS_EVERY;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return self.shutdown();
            }
            self.arm()?;
            self.run_commands();
            let now = Instant::now();
            if let Err(error) = self.journal.submit(now, &mut self.ring) {
                self.note_poison(&error.to_string());
            }
            self.flush_connections()?;
            self.mesh.flush();
            let timeout = if self.mesh.has_overflow() {
                Duration::from_millis(1)
            } else {
                TICK
            };
            self.ring.submit_and_wait_timeout(1, timeout)?;
            self.completions.clear();
            self.ring.reap(&mut self.completions);
            let completions = std::mem::take(&mut self.completions);
            for completion in &completions {
                self.complete(*completion)?;
            }
            self.completions = completions;
            let mut incoming = Vec::new();
            self.mesh.receive(&mut incoming);
            for msg in incoming {
                match msg {
                    ShardMsg::Command(command) => self.local.push_back(command),
                    ShardMsg::Output(output) => self.send_to_connection(output),
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
            if last_stats.elapsed() >= STATS_EVERY {
                last_stats = Instant::now();
                self.publish_stats();
            }
        }
    }

    /// Keeps the accept and wake-up reads armed.
    fn arm(&mut self) -> std::io::Result<()> {
        if !self.wake_armed {
            let entry = opcode::Read::new(
                types::Fd(self.mesh.waker().as_raw_fd()),
                self.wake_buf.as_mut_ptr(),
                8,
            )
            .build()
            .user_data(Token::new(Owner::Wake, 0).0);
            // SAFETY: wake_buf is boxed (stable) and lives as long as the shard.
            unsafe { self.ring.push(&entry)? };
            self.wake_armed = true;
        }
        if self.accepting && !self.accept_armed && self.conns.len() < self.config.max_connections {
            let entry = opcode::Accept::new(
                types::Fd(self.listener.as_raw_fd()),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(Token::new(Owner::Accept, 0).0);
            // SAFETY: the listener outlives the shard loop; no buffers.
            unsafe { self.ring.push(&entry)? };
            self.accept_armed = true;
        }
        Ok(())
    }

    fn store(&mut self) -> (JournalStore<'_>, &mut Broker, &mut Vec<Output>) {
        (
            JournalStore {
                journal: &mut self.journal,
                epoch: self.config.epoch,
                scratch: &mut self.scratch,
            },
            &mut self.broker,
            &mut self.outputs,
        )
    }

    /// Runs queued commands until the journal batch is full.
    fn run_commands(&mut self) {
        let now = now_ms();
        // Split borrows: the broker reads the queued command in place (no
        // per-message clone) while it writes the journal and the outputs.
        let Shard {
            local,
            journal,
            broker,
            outputs,
            scratch,
            config,
            ..
        } = self;
        while let Some(command) = local.front() {
            let mut store = JournalStore {
                journal,
                epoch: config.epoch,
                scratch,
            };
            match broker.handle(now, command, &mut store, outputs) {
                Handled::Retry => break,
                Handled::Done => {
                    local.pop_front();
                }
            }
        }
        self.route_outputs();
    }

    /// Sends each output where it belongs.
    fn route_outputs(&mut self) {
        let me = self.config.id;
        for output in std::mem::take(&mut self.outputs) {
            let target = match &output {
                Output::SendAck { to, .. } | Output::Ok { to, .. } | Output::Refused { to, .. } => {
                    Some(to.shard)
                }
                Output::Deliver { to, .. } => Some(to.conn.shard),
                Output::Route(_) | Output::ToShard { .. } => None,
            };
            match (target, output) {
                (Some(shard), output) if shard == me => self.send_to_connection(output),
                (Some(shard), output) => self.mesh.send(shard, ShardMsg::Output(output)),
                (None, Output::Route(send)) => {
                    let owner = owner(&send.destination, self.config.shards);
                    self.send_to_shard(owner, Command::Send(send));
                }
                (None, Output::ToShard { shard, command }) => self.send_to_shard(shard, command),
                (None, _) => unreachable!("every other output has a connection"),
            }
        }
    }

    fn send_to_shard(&mut self, shard: ShardId, command: Command) {
        if shard == self.config.id {
            self.local.push_back(command);
        } else {
            self.mesh.send(shard, ShardMsg::Command(command));
        }
    }

    /// Encodes an output for one of this shard's connections.
    fn send_to_connection(&mut self, output: Output) {
        let conn_seq = match &output {
            Output::SendAck { to, .. } | Output::Ok { to, .. } | Output::Refused { to, .. } => {
                to.seq
            }
            Output::Deliver { to, .. } => to.conn.seq,
            _ => return,
        };
        let epoch = self.config.epoch;
        if let Some(conn) = self.conns.get_mut(&conn_seq) {
            conn.write_output(output, epoch);
        }
    }

    /// Arms every connection's I/O, and reaps those that closed (a close
    /// with nothing in flight produces no completion to reap it on).
    fn flush_connections(&mut self) -> std::io::Result<()> {
        let mut finished = Vec::new();
        for (seq, conn) in &mut self.conns {
            conn.start_io(&mut self.ring)?;
            if conn.finished() {
                finished.push(*seq);
            }
        }
        for seq in finished {
            self.reap_if_closed(seq);
        }
        Ok(())
    }

    fn complete(&mut self, completion: Completion) -> std::io::Result<()> {
        let token = completion.token;
        match token.owner() {
            Some(Owner::Journal) => match self.journal.complete(completion) {
                Some(JournalEvent::Durable(durable)) => {
                    let ready = self.broker.on_durable(durable, &mut self.outputs);
                    self.local.extend(ready.into_iter().map(Command::Dispatch));
                    self.route_outputs();
                    let release = self.broker.release_point().unwrap_or(durable).min(durable);
                    if let Err(error) = self.journal.release_below(release) {
                        tracing::warn!(shard = self.config.id.0, %error, "could not release journal segments");
                    }
                }
                Some(JournalEvent::Poisoned(cause)) => self.note_poison(&cause),
                None => {}
            },
            Some(Owner::Wake) => self.wake_armed = false,
            Some(Owner::Accept) => {
                self.accept_armed = false;
                if completion.result >= 0 {
                    self.accepted(completion.result);
                } else if completion.result != -libc::ECANCELED {
                    tracing::warn!(shard = self.config.id.0, error = %std::io::Error::from_raw_os_error(-completion.result), "accept failed");
                }
            }
            Some(Owner::Recv) => {
                let seq = token.id();
                let Some(conn) = self.conns.get_mut(&seq) else {
                    return Ok(());
                };
                let mut requests = Vec::new();
                conn.received(
                    completion.result,
                    &self.config.limits,
                    now_ms(),
                    &self.shared,
                    &mut requests,
                );
                for request in requests {
                    let owner = owner(&request.destination, self.config.shards);
                    self.send_to_shard(owner, request.command);
                }
                self.reap_if_closed(seq);
            }
            Some(Owner::Send) => {
                let seq = token.id();
                if let Some(conn) = self.conns.get_mut(&seq) {
                    conn.sent(completion.result);
                }
                self.reap_if_closed(seq);
            }
            None => tracing::error!(token = token.0, "completion with an unknown owner"),
        }
        Ok(())
    }

    fn accepted(&mut self, fd: i32) {
        use std::os::fd::FromRawFd;
        // SAFETY: the kernel just gave us this descriptor; we own it now.
        let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        if let Err(error) =
            crate::net::configure(&socket2::SockRef::from(&stream), &self.config.socket)
        {
            tracing::warn!(%error, "could not apply socket options to a client connection");
        }
        self.next_conn += 1;
        let seq = self.next_conn;
        let id = crate::ids::ConnId {
            shard: self.config.id,
            seq,
        };
        let deadline = Instant::now()
            + Duration::from_millis(u64::from(self.config.socket.handshake_timeout_ms));
        let welcome = crate::protocol::Welcome {
            version: crate::protocol::PROTOCOL_VERSION,
            server_id: self.config.server_name.clone(),
            epoch: self.config.epoch.get(),
            frame_bytes_max: self.config.limits.frame_bytes_max,
        };
        let mut conn = Conn::new(id, stream, deadline, welcome);
        if self.conns.len() >= self.config.max_connections {
            conn.fail(ErrorCode::TooManyConnections, "too many connections".into());
        }
        self.conns.insert(seq, conn);
    }

    /// Removes a connection whose socket is closed and has no operation in
    /// flight, and tells every shard its consumers are gone.
    fn reap_if_closed(&mut self, seq: u64) {
        if !self.conns.get(&seq).is_some_and(Conn::finished) {
            return;
        }
        let conn = self.conns.remove(&seq).expect("present");
        let id = conn.id();
        drop(conn);
        for shard in 0..self.config.shards {
            self.send_to_shard(ShardId(shard as u16), Command::Disconnected(id));
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let redirect = (!self.shared.serving.load(Ordering::Relaxed))
            .then(|| self.shared.active_hint.lock().expect("hint lock").clone());
        for conn in self.conns.values_mut() {
            conn.check_deadline(now);
            if let Some(active) = &redirect {
                conn.redirect(active);
            }
        }
        let end = self.journal.end_offset();
        let distance = self.config.segment_bytes * METADATA_CARRY_SEGMENTS;
        let (mut store, broker, outputs) = self.store();
        broker.tick(now_ms(), &mut store, outputs);
        broker.carry_metadata_forward(end, distance, &mut store);
        self.route_outputs();
    }

    fn note_poison(&mut self, cause: &str) {
        let mut stats = self.shared.stats[usize::from(self.config.id.0)]
            .lock()
            .expect("stats lock");
        if stats.poisoned.is_none() {
            tracing::error!(
                shard = self.config.id.0,
                cause,
                "journal failed: this shard acknowledges nothing more"
            );
            stats.poisoned = Some(cause.to_owned());
        }
    }

    fn publish_stats(&mut self) {
        let stats = ShardStats {
            connections: self.conns.len(),
            destinations: self.broker.stats(),
            journal_start: self.journal.start_offset().get(),
            journal_end: self.journal.end_offset().get(),
            journal_segments: self.journal.segment_count(),
            messages: self.broker.message_count(),
            cached_bytes: self.broker.cached_bytes(),
            poisoned: self.journal.poisoned().map(|c| c.to_string()),
        };
        *self.shared.stats[usize::from(self.config.id.0)]
            .lock()
            .expect("stats lock") = stats;
    }

    /// Clean stop: stop accepting, make everything appended durable, send
    /// what that acknowledges, close.
    fn shutdown(&mut self) -> std::io::Result<()> {
        self.accepting = false;
        self.run_commands();
        match self.journal.sync(&mut self.ring) {
            Ok(durable) => {
                let _ = self.broker.on_durable(durable, &mut self.outputs);
                self.route_outputs();
            }
            Err(error) => self.note_poison(&error.to_string()),
        }
        for conn in self.conns.values_mut() {
            conn.flush_blocking();
        }
        self.publish_stats();
        tracing::info!(shard = self.config.id.0, "shard stopped; journal flushed");
        Ok(())
    }
}

/// The protocol error code for a broker refusal.
fn refusal_code(refusal: Refusal) -> ErrorCode {
    match refusal {
        Refusal::NoSuchDestination => ErrorCode::NoSuchDestination,
        Refusal::WrongDestinationKind => ErrorCode::WrongDestinationKind,
        Refusal::NoSuchSubscription => ErrorCode::NoSuchSubscription,
        Refusal::SubscriptionExists => ErrorCode::SubscriptionExists,
        Refusal::StorageFailure => ErrorCode::StorageFailure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_stable_and_spreads_destinations() {
        let d: Destination = "/queue/orders".parse().unwrap();
        assert_eq!(owner(&d, 4), owner(&d, 4));
        assert_eq!(owner(&d, 1), ShardId(0));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            let d: Destination = format!("/queue/q{i}").parse().unwrap();
            seen[usize::from(owner(&d, 4).0)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }
}
