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
mod replica;

use replica::{Applied, ApplyFn};
pub use replica::{ReplicaStats, Role, ShardControl};

use crate::broker::records::{BrokerRecord, MessageRecord};
use crate::broker::{
    Broker, BrokerSettings, Command, DestinationStats, Handled, Output, Refusal, Store, StoreError,
};
use crate::constants::RECORD_HEADER_BYTES;
use crate::ids::{Epoch, Offset, ShardId};
use crate::io::{Completion, Owner, Ring, Token};
use crate::journal::{
    Journal, JournalError, JournalEvent, JournalOptions, RecordKind, RecordReader,
};
use crate::net::SocketOptions;
use crate::protocol::{Destination, ErrorCode, Limits};
use conn::Conn;
use io_uring::{opcode, types};
use mesh::{Mesh, ShardMsg};
use replica::Replica;
use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// The epoch to open at start-up; `None` (replicated HA) waits for the
    /// control thread's `BeginEpoch`.
    pub epoch: Option<Epoch>,
    /// The replication role to start in.
    pub role: Role,
    /// What a producer's default ack mode means (`ha.ack_mode = "local"`).
    pub default_local_ack: bool,
    /// Apply replicated records to the broker as they arrive (hot standby).
    pub hot_standby: bool,
    pub socket: SocketOptions,
    /// Client connections open at once on all shards (`Shared::connections`).
    pub max_connections: usize,
    pub limits: Limits,
    pub settings: BrokerSettings,
    pub segment_bytes: u64,
    pub batch_bytes_max: usize,
    /// A passive's journals kept aside before full copies (`ha.saved_journals_max`).
    pub saved_journals_max: u32,
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
    /// Newest epoch in the journal.
    pub epoch: u64,
    pub replica: Option<ReplicaStats>,
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
    /// Requests from the HA control thread, per shard (the shard is woken
    /// through its mesh eventfd after a push).
    pub controls: Vec<Mutex<VecDeque<ShardControl>>>,
    /// Client connections open on all shards (they move between shards,
    /// so the server's limit is kept here, not per shard).
    pub connections: AtomicUsize,
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
            controls: (0..shards).map(|_| Mutex::new(VecDeque::new())).collect(),
            connections: AtomicUsize::new(0),
        })
    }

    pub fn shards(&self) -> usize {
        self.stats.len()
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

/// Applies one journal record to a broker (recovery, hot standby).
fn replay_record(
    broker: &mut Broker,
    offset: Offset,
    kind: RecordKind,
    payload: &[u8],
) -> Result<bool, JournalError> {
    match BrokerRecord::decode(kind, payload) {
        Ok(Some(decoded)) => {
            broker.replay(offset, decoded);
            Ok(true)
        }
        Ok(None) => Ok(false),
        Err(error) => Err(JournalError::Corrupt {
            segment: String::new(),
            offset: offset.get(),
            reason: error.to_string(),
        }),
    }
}

/// Opens a shard's journal and rebuilds `broker` from it in the same pass
/// over the disk (recovery's scan shows each record as it checks it).
/// Returns the journal and the broker records applied.
pub fn open_rebuilding(
    dir: &Path,
    options: JournalOptions,
    broker: &mut Broker,
) -> Result<(Journal, u64), JournalError> {
    let mut count = 0;
    let journal = Journal::open_visiting(dir, options, &mut |header, payload| {
        count += u64::from(replay_record(broker, header.offset, header.kind, payload)?);
        Ok(())
    })?;
    broker.set_durable(journal.durable_offset());
    Ok((journal, count))
}

/// Rebuilds a broker from an open journal (every record from the start).
pub fn recover(journal: &Journal, broker: &mut Broker) -> Result<u64, JournalError> {
    let mut reader = RecordReader::new(journal.start_offset());
    let mut count = 0;
    while let Some(record) = reader.next_record(journal)? {
        let offset = record.header.offset;
        count += u64::from(replay_record(
            broker,
            offset,
            record.header.kind,
            record.payload,
        )?);
    }
    broker.set_durable(journal.durable_offset());
    Ok(count)
}

/// A broker rebuilt from the journal (everything in it is durable).
fn rebuilt(config: &ShardConfig, journal: &Journal) -> Result<Broker, String> {
    let started = Instant::now();
    let mut broker = Broker::new(config.id, config.settings.clone());
    let records = recover(journal, &mut broker)
        .map_err(|e| format!("shard {}: rebuilding from the journal: {e}", config.id.0))?;
    tracing::info!(
        shard = config.id.0,
        records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "broker rebuilt from the journal"
    );
    Ok(broker)
}

/// Keeps a hot standby's broker in step with what its journal took from
/// the active: records are replayed straight from the receive buffer; a cut
/// journal is rebuilt at once, before any later record. A warm standby
/// (or a stale broker) applies nothing: it is rebuilt at takeover.
fn apply_replicated(
    config: &ShardConfig,
    broker: &mut Broker,
    stale: &mut bool,
    applied: Applied<'_>,
    journal: &Journal,
) {
    if !config.hot_standby {
        return;
    }
    match applied {
        Applied::Cut => match rebuilt(config, journal) {
            Ok(fresh) => {
                *broker = fresh;
                *stale = false;
            }
            Err(error) => {
                tracing::error!(%error, "hot standby: rebuild failed; retried at takeover");
                *stale = true;
            }
        },
        Applied::Records(_, _) if *stale => {}
        Applied::Records(offset, bytes) => {
            let mut failed = None;
            crate::journal::record::walk(
                bytes,
                offset,
                config.segment_bytes,
                |pos, len, record| {
                    if !record || failed.is_some() {
                        return;
                    }
                    let at = offset + pos as u64;
                    let header =
                        crate::journal::record::parse_header(&bytes[pos..pos + len], at, u32::MAX)
                            .expect("append_raw checked it");
                    let payload = &bytes[pos + RECORD_HEADER_BYTES..pos + len];
                    if let Err(error) = replay_record(broker, at, header.kind, payload) {
                        failed = Some(error);
                    }
                },
            );
            if let Some(error) = failed {
                // The bytes are on disk and identical to the active's; only
                // the in-memory copy is off: rebuild it at takeover.
                tracing::error!(shard = config.id.0, %error, "hot standby could not apply a record");
                *stale = true;
            }
        }
    }
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
    /// The epoch records are written in (changes on `BeginEpoch`).
    epoch: Epoch,
    replica: Replica,
    /// Where `on_durable` was last told committed data ends.
    committed: Offset,
    /// An epoch start waiting to be durable, and who waits for it.
    begun: Option<(Offset, std::sync::mpsc::Sender<Result<(), String>>)>,
    /// A `BeginEpoch` the journal had no room for yet.
    begin_waiting: Option<(Epoch, std::sync::mpsc::Sender<Result<(), String>>)>,
    /// The broker no longer matches the journal (it served, then followed,
    /// or the journal was cut): rebuild before serving again.
    broker_stale: bool,
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
    let replica = Replica::new(
        config.role,
        config.batch_bytes_max,
        crate::journal::batch_capacity(config.batch_bytes_max),
        config.segment_bytes,
        config.saved_journals_max,
    );
    let epoch = journal.epoch();
    let committed = journal.durable_offset();
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
        epoch,
        replica,
        committed,
        begun: None,
        begin_waiting: None,
        broker_stale: false,
    };
    shard.start()?;
    shard
        .event_loop()
        .map_err(|source| ShardError::Ring { shard: id, source })
}

impl Shard {
    /// Opens the configured epoch (if any) in this shard's journal.
    fn start(&mut self) -> Result<(), ShardError> {
        let shard = self.config.id.0;
        if let Some(epoch) = self.config.epoch
            && self.journal.epoch() < epoch
        {
            self.journal
                .append(RecordKind::EpochStart, epoch, b"")
                .map_err(|source| ShardError::Journal { shard, source })?;
            self.journal
                .sync(&mut self.ring)
                .map_err(|source| ShardError::Journal { shard, source })?;
            self.epoch = epoch;
            self.note_activation();
        }
        self.broker.set_durable(self.journal.durable_offset());
        self.committed = self.journal.durable_offset();
        self.publish_stats();
        Ok(())
    }

    /// Whether this shard writes records of its own (it serves).
    fn writes(&self) -> bool {
        self.replica.acks_local()
    }

    /// Carries out the control thread's requests.
    fn take_controls(&mut self) {
        let requests: Vec<ShardControl> = {
            let mut queue = self.shared.controls[usize::from(self.config.id.0)]
                .lock()
                .expect("control lock");
            if queue.is_empty() {
                return;
            }
            queue.drain(..).collect()
        };
        for request in requests {
            match request {
                ShardControl::BeginEpoch { epoch, done } => self.begin_epoch(epoch, done),
                ShardControl::Lead => {
                    self.broker.set_refuse_replicated(false);
                    self.set_role(Role::Lead);
                }
                ShardControl::Solo { refuse_replicated } => {
                    self.broker.set_refuse_replicated(refuse_replicated);
                    self.set_role(Role::Solo { refuse_replicated });
                }
                ShardControl::Follow(stream) => {
                    self.set_role(Role::Follow);
                    self.replica.follow(stream);
                }
                ShardControl::Accept(stream) => self.replica.accept(stream, &mut self.journal),
                ShardControl::Idle => self.set_role(Role::Idle),
            }
        }
        self.advance_commit();
    }

    fn set_role(&mut self, role: Role) {
        if self.writes() && matches!(role, Role::Idle | Role::Follow) {
            // Its consumers and deliveries were this server's alone.
            self.broker_stale = true;
        }
        self.replica.set_role(role, &mut self.journal);
    }

    /// Opens `epoch`: the epoch-start record goes in (after the stream
    /// from a deposed active is dropped), and `done` hears once it is
    /// durable.
    fn begin_epoch(&mut self, epoch: Epoch, done: std::sync::mpsc::Sender<Result<(), String>>) {
        self.replica.close_follower("this server opens a new epoch");
        if self.journal.epoch() >= epoch {
            let _ = done.send(Err(format!(
                "shard {}: the journal already holds epoch {} (asked to open {epoch})",
                self.config.id.0,
                self.journal.epoch()
            )));
            return;
        }
        match self.journal.append(RecordKind::EpochStart, epoch, b"") {
            Ok(offset) => {
                self.epoch = epoch;
                let end = offset + RECORD_HEADER_BYTES as u64;
                self.begun = Some((end, done));
                self.journal.flush_soon();
            }
            Err(JournalError::Full) => self.begin_waiting = Some((epoch, done)),
            Err(error) => {
                let _ = done.send(Err(format!("shard {}: {error}", self.config.id.0)));
            }
        }
    }

    /// An epoch start became durable: a broker that no longer matches the
    /// journal (warm standby, or stale) is rebuilt before anything is served.
    fn epoch_durable(&mut self, durable: Offset) {
        let Some((end, _)) = &self.begun else {
            return;
        };
        if durable < *end {
            return;
        }
        let (_, done) = self.begun.take().expect("checked");
        if (self.broker_stale || !self.config.hot_standby)
            && let Err(error) = self.rebuild_broker()
        {
            let _ = done.send(Err(error));
            return;
        }
        // The commit point moves (and what waited on it is released) in
        // `advance_commit`, under the role the control thread sets next.
        self.broker.set_durable(durable);
        self.note_activation();
        let _ = done.send(Ok(()));
    }

    /// Runs `f` on the replica with the journal and the callback through
    /// which a passive's appends reach its broker (hot standby).
    fn with_replica<R>(
        &mut self,
        f: impl FnOnce(&mut Replica, &mut Journal, &mut ApplyFn<'_>) -> R,
    ) -> R {
        let Shard {
            replica,
            journal,
            broker,
            broker_stale,
            config,
            ..
        } = self;
        f(replica, journal, &mut |applied, journal| {
            apply_replicated(config, broker, broker_stale, applied, journal)
        })
    }

    /// Tells the broker where the epoch it serves began (the journal's
    /// newest epoch start).
    fn note_activation(&mut self) {
        if let Some(&(_, start)) = self.journal.epoch_starts().last() {
            self.broker.set_activated_at(start);
        }
    }

    /// Rebuilds the broker from the journal (everything in it is durable).
    fn rebuild_broker(&mut self) -> Result<(), String> {
        self.broker = rebuilt(&self.config, &self.journal)?;
        self.broker_stale = false;
        Ok(())
    }

    /// Tells the broker how far data is committed (and, for `local`
    /// sends, durable), and dispatches what that makes deliverable.
    fn advance_commit(&mut self) {
        let durable = self.journal.durable_offset();
        if self.replica.acks_local() {
            self.broker.on_local_durable(durable, &mut self.outputs);
        }
        if let Some(commit) = self.replica.commit_point(durable)
            && commit > self.committed
        {
            self.committed = commit;
            let ready = self.broker.on_durable(commit, &mut self.outputs);
            self.local.extend(ready.into_iter().map(Command::Dispatch));
        }
        self.route_outputs();
    }

    fn event_loop(&mut self) -> std::io::Result<()> {
        let mut last_tick = Instant::now();
        let mut last_stats = Instant::now() - STATS_EVERY;
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                return self.shutdown();
            }
            self.take_controls();
            self.arm()?;
            self.run_commands();
            if let Some((epoch, done)) = self.begin_waiting.take() {
                self.begin_epoch(epoch, done);
            }
            let now = Instant::now();
            match self.journal.seal(now, &mut self.ring) {
                Ok(Some(writes)) => {
                    // The peer's copy is pushed ahead of the local write.
                    self.replica.batch_started(&mut self.journal);
                    self.replica.start_io(&mut self.ring, &self.journal)?;
                    if let Err(error) = self.journal.write_sealed(&mut self.ring, writes) {
                        self.note_poison(&error.to_string());
                    }
                }
                Ok(None) => {}
                Err(error) => self.note_poison(&error.to_string()),
            }
            self.replica.pump(&mut self.journal);
            self.replica.start_io(&mut self.ring, &self.journal)?;
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
                    ShardMsg::Adopt(conn) => self.adopt(*conn),
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
            if self.replica.dirty || last_stats.elapsed() >= STATS_EVERY {
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
        if self.accepting
            && !self.accept_armed
            && self.shared.connections.load(Ordering::Relaxed) < self.config.max_connections
        {
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
                epoch: self.epoch,
                scratch: &mut self.scratch,
            },
            &mut self.broker,
            &mut self.outputs,
        )
    }

    /// Runs queued commands until the journal batch is full.
    fn run_commands(&mut self) {
        if !self.writes() {
            // Not serving: nothing of this server's own may enter the
            // journal (a passive's journal is the active's, byte for byte).
            // Clients are redirected; what they asked is not done here.
            self.local.clear();
            return;
        }
        let now = now_ms();
        // Split borrows: the broker reads the queued command in place (no
        // per-message clone) while it writes the journal and the outputs.
        let Shard {
            local,
            journal,
            broker,
            outputs,
            scratch,
            epoch,
            ..
        } = self;
        while let Some(command) = local.front() {
            let mut store = JournalStore {
                journal,
                epoch: *epoch,
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
        let epoch = self.epoch;
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
                    self.replica.follower_durable(durable);
                    self.epoch_durable(durable);
                    self.advance_commit();
                    self.release(durable);
                    self.with_replica(|replica, journal, apply| {
                        replica.retry_follower(journal, apply)
                    });
                }
                Some(JournalEvent::Poisoned(cause)) => self.note_poison(&cause),
                None => {}
            },
            Some(Owner::Replica) => {
                let commit = self.with_replica(|replica, journal, apply| {
                    replica.complete(completion, journal, apply)
                });
                if commit {
                    self.advance_commit();
                }
            }
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
                let move_to = conn.move_to();
                self.route_requests(requests);
                if let Some(to) = move_to {
                    let conn = self.conns.remove(&seq).expect("present");
                    self.mesh.send(to, ShardMsg::Adopt(Box::new(conn)));
                    return Ok(());
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

    fn route_requests(&mut self, requests: Vec<conn::Request>) {
        for request in requests {
            let owner = owner(&request.destination, self.config.shards);
            self.send_to_shard(owner, request.command);
        }
    }

    /// Takes over a connection another shard accepted: this shard owns the
    /// destination of its first request, which it now decodes.
    fn adopt(&mut self, mut conn: Conn) {
        self.next_conn += 1;
        let seq = self.next_conn;
        let id = crate::ids::ConnId {
            shard: self.config.id,
            seq,
        };
        let mut requests = Vec::new();
        conn.adopted(
            id,
            &self.config.limits,
            now_ms(),
            &self.shared,
            &mut requests,
        );
        self.conns.insert(seq, conn);
        self.route_requests(requests);
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
            epoch: self.epoch.get(),
            frame_bytes_max: self.config.limits.frame_bytes_max,
        };
        let mut conn = Conn::new(id, stream, deadline, welcome, self.config.default_local_ack);
        if self.shared.connections.fetch_add(1, Ordering::Relaxed) >= self.config.max_connections {
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
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
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
        if !self.writes() {
            return;
        }
        let end = self.journal.end_offset();
        let distance = self.config.segment_bytes * METADATA_CARRY_SEGMENTS;
        let (mut store, broker, outputs) = self.store();
        broker.tick(now_ms(), &mut store, outputs);
        broker.carry_metadata_forward(now_ms(), end, distance, &mut store);
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

    /// Releases settled segments the passive no longer needs either. A
    /// passive keeps everything while its broker is not applied (warm or
    /// stale): it cannot tell what is settled.
    fn release(&mut self, durable: Offset) {
        if self.replica.role == Role::Follow && (self.broker_stale || !self.config.hot_standby) {
            return;
        }
        let mut release = self.broker.release_point().unwrap_or(durable).min(durable);
        if let Some(keep) = self.replica.retain_from() {
            release = release.min(keep);
        }
        if let Err(error) = self.journal.release_below(release) {
            tracing::warn!(shard = self.config.id.0, %error, "could not release journal segments");
        }
    }

    fn publish_stats(&mut self) {
        // Replicated HA (no epoch opened at start-up) reports its streams.
        let replica = self.config.epoch.is_none().then(|| ReplicaStats {
            journal_start: self.journal.start_offset().get(),
            journal_end: self.journal.end_offset().get(),
            ..self.replica.snapshot()
        });
        let stats = ShardStats {
            connections: self.conns.len(),
            destinations: self.broker.stats(),
            journal_start: self.journal.start_offset().get(),
            journal_end: self.journal.end_offset().get(),
            journal_segments: self.journal.segment_count(),
            messages: self.broker.message_count(),
            cached_bytes: self.broker.cached_bytes(),
            poisoned: self.journal.poisoned().map(|c| c.to_string()),
            epoch: self.journal.epoch().get(),
            replica,
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
        // Streams first: a lent batch must come back before the final sync.
        self.replica.set_role(Role::Idle, &mut self.journal);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.replica.busy() && Instant::now() < deadline {
            self.ring
                .submit_and_wait_timeout(1, Duration::from_millis(50))?;
            self.completions.clear();
            self.ring.reap(&mut self.completions);
            for completion in std::mem::take(&mut self.completions) {
                match completion.token.owner() {
                    Some(Owner::Replica) => {
                        self.replica
                            .complete(completion, &mut self.journal, &mut |_, _| {});
                    }
                    Some(Owner::Journal) => {
                        self.journal.complete(completion);
                    }
                    _ => {}
                }
            }
        }
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
        Refusal::NotReplicated => ErrorCode::NotReplicated,
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
