//! A shard's end of its replication stream (replicated HA).
//!
//! ```text
//!  active shard k                                          passive shard k
//!  journal batch ──write──▶ disk                 ┌──▶ append_raw ──flush──▶ disk
//!       │ (same buffer, lent)                    │         │ durable
//!       └──────── Data ──────────────────────────┘         ▼
//!  catch-up: ring reads ─▶ Data ───────────────▶    Ack(durable offset)
//!  commit = min(local durable, passive's ack) ◀────────────┘
//! ```
//! The passive dials (through `ha::link`, authenticated), says where its
//! history stands (`Hello`); the active answers where to cut and where it
//! streams from (`Sync`, from `replication::catchup`), then sends `Data`
//! frames: first read back from its journal (catch-up) while it keeps
//! appending, then — once the catch-up cursor meets the batch being flushed
//! — every batch straight from the journal's buffer (live), with no gap and
//! no overlap. The passive checks every frame and record (offset, CRC,
//! epoch) before appending, flushes, and acknowledges its durable offset;
//! anything wrong closes the stream (the passive dials again and
//! re-synchronises), so nothing wrong is ever applied.
//!
//! What it must never do: acknowledge from memory on the passive, send a
//! byte that is not the active's journal at that offset, or free a lent
//! batch before the kernel is done sending it.

use crate::ids::{Epoch, Offset};
use crate::io::{Completion, Owner, Ring, Token};
use crate::journal::record::whole_records;
use crate::journal::{Journal, LentBatch};
use crate::replication::wire::{self, Frame, HEADER_BYTES};
use crate::replication::{CatchupError, History, catchup};
use io_uring::{opcode, types};
use readback::ReadBack;
use std::collections::VecDeque;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc::Sender;
use std::time::Instant;

/// Catch-up frames (of at most one batch buffer each) a leader keeps
/// queued: enough to keep the socket and the passive's disk busy while the
/// next ones are read back, few enough to bound the memory.
const CATCHUP_FRAMES_QUEUED_MAX: usize = 4;

/// Token ids: the stream's generation above what completed (`TAG_SEND`,
/// `TAG_RECEIVE`, or `TAG_READ + slot` for a catch-up read).
const TAG_BITS: u32 = 4;
const TAG_SEND: u64 = 0;
const TAG_RECEIVE: u64 = 1;
const TAG_READ: u64 = 2;
const _: () = assert!(TAG_READ + readback::READS_MAX as u64 <= 1 << TAG_BITS);

fn token(generation: u64, tag: u64) -> u64 {
    Token::new(Owner::Replica, generation << TAG_BITS | tag).0
}

/// What the HA control thread asks of a shard (replicated mode).
#[derive(Debug)]
pub enum ShardControl {
    /// Open `epoch`: append its epoch-start record (after dropping any
    /// stream from the old active) and answer once it is durable.
    BeginEpoch {
        epoch: Epoch,
        done: Sender<Result<(), String>>,
    },
    /// Active with a passive (ACTIVE_SYNC, ACTIVE): `replicated` sends and
    /// deliveries wait for the passive's acknowledgement.
    Lead,
    /// Active alone (STANDALONE): everything commits on the local flush;
    /// `replicated` sends are refused when `refuse_replicated`.
    Solo { refuse_replicated: bool },
    /// Passive (PASSIVE_SYNC, PASSIVE): apply this stream from the active.
    Follow(TcpStream),
    /// The passive's stream for this shard (accepted on the HA port).
    Accept(TcpStream),
    /// Neither (WAITING): drop every stream, acknowledge nothing.
    Idle,
}

/// The shard's replication role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Idle,
    Solo { refuse_replicated: bool },
    Lead,
    Follow,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Idle => "idle",
            Role::Solo { .. } => "standalone",
            Role::Lead => "leading",
            Role::Follow => "following",
        }
    }
}

/// Replication figures of one shard, for status and the control thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStats {
    pub role: String,
    pub stream_up: bool,
    /// Active: the passive is streamed live and has acknowledged everything
    /// up to where live streaming began.
    pub in_sync: bool,
    /// Active: the passive's durable offset; passive: its own.
    pub peer_durable: u64,
    /// Active: journal bytes the passive has not acknowledged yet.
    pub lag_bytes: u64,
    /// Active: journal records the passive has not acknowledged yet (of
    /// those sent; during catch-up see `catchup_remaining_bytes`).
    pub lag_records: u64,
    /// Active, catching up: bytes still to read back and send.
    pub catchup_remaining_bytes: u64,
    /// Streams closed so far (by either side or after an error).
    pub streams_closed: u64,
    /// Of those, streams from the active (passive side).
    pub follower_streams_closed: u64,
    /// Active: the last completed catch-up, timed by this shard from the
    /// passive's `Sync` to its acknowledgement of the live point (0 = none
    /// yet).
    pub last_catchup_bytes: u64,
    pub last_catchup_us: u64,
    pub last_error: Option<String>,
    /// This server's journal of the shard: first retained offset and end
    /// (a passive after a full copy starts where the active does).
    pub journal_start: u64,
    pub journal_end: u64,
}

/// One frame (or a catch-up chunk) waiting to be sent.
#[derive(Debug)]
enum Outgoing {
    /// Bytes the stream owns: a control frame, or a data frame read back
    /// from the journal.
    Owned { bytes: Vec<u8>, sent: usize },
    /// A data frame whose records are the journal's lent batch.
    Lent {
        header: Box<[u8; HEADER_BYTES]>,
        batch: LentBatch,
        sent: usize,
    },
}

impl Outgoing {
    fn total(&self) -> usize {
        match self {
            Outgoing::Owned { bytes, .. } => bytes.len(),
            Outgoing::Lent { batch, .. } => HEADER_BYTES + batch.len(),
        }
    }

    fn sent_mut(&mut self) -> &mut usize {
        match self {
            Outgoing::Owned { sent, .. } | Outgoing::Lent { sent, .. } => sent,
        }
    }
}

/// The scatter list of the send in flight; boxed so it stays put while the
/// kernel reads it.
struct MsgParts {
    iov: [libc::iovec; 2],
    hdr: libc::msghdr,
}

/// A replication connection driven by the shard's ring: one receive and
/// one send in flight at most.
pub struct Stream {
    generation: u64,
    socket: TcpStream,
    rbuf: Vec<u8>,
    /// Received bytes are `rbuf[rstart..rlen]`.
    rstart: usize,
    rlen: usize,
    recv_in_flight: bool,
    queue: VecDeque<Outgoing>,
    send_in_flight: bool,
    msg: Box<MsgParts>,
    /// Why it broke; a broken stream starts no more I/O.
    broken: Option<String>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("generation", &self.generation)
            .field("broken", &self.broken)
            .finish()
    }
}

impl Stream {
    fn new(generation: u64, socket: TcpStream, rbuf_bytes: usize) -> Stream {
        Stream {
            generation,
            socket,
            rbuf: vec![0; rbuf_bytes],
            rstart: 0,
            rlen: 0,
            recv_in_flight: false,
            queue: VecDeque::new(),
            send_in_flight: false,
            // SAFETY: iovec and msghdr are plain C structs; all-zero is a
            // valid (empty) value for both.
            msg: Box::new(unsafe { std::mem::zeroed() }),
            broken: None,
        }
    }

    fn push(&mut self, bytes: Vec<u8>) {
        self.queue.push_back(Outgoing::Owned { bytes, sent: 0 });
    }

    /// Frames the stream owns and has not sent yet (catch-up frames and
    /// control frames): the next catch-up frame is cut while earlier ones
    /// are with the socket and the passive's disk, up to
    /// [`CATCHUP_FRAMES_QUEUED_MAX`].
    fn frames_queued(&self) -> usize {
        self.queue
            .iter()
            .filter(|o| matches!(o, Outgoing::Owned { .. }))
            .count()
    }

    fn break_with(&mut self, why: String) {
        if self.broken.is_none() {
            self.broken = Some(why);
            let _ = self.socket.shutdown(Shutdown::Both);
        }
    }

    /// Nothing of it is with the kernel any more.
    fn idle(&self) -> bool {
        !self.recv_in_flight && !self.send_in_flight
    }

    /// Arms the receive and the next send.
    fn start_io(&mut self, ring: &mut Ring) -> std::io::Result<()> {
        if self.broken.is_some() {
            return Ok(());
        }
        let fd = types::Fd(self.socket.as_raw_fd());
        if !self.recv_in_flight && self.rstart > 0 {
            // Only now, with no receive in flight: the kernel writes where
            // the receive was aimed, so moving bytes under it would mix
            // old and new data.
            self.rbuf.copy_within(self.rstart..self.rlen, 0);
            self.rlen -= self.rstart;
            self.rstart = 0;
        }
        if !self.recv_in_flight && self.rlen < self.rbuf.len() {
            let free = &mut self.rbuf[self.rlen..];
            let entry = opcode::Recv::new(fd, free.as_mut_ptr(), free.len() as u32)
                .build()
                .user_data(token(self.generation, TAG_RECEIVE));
            // SAFETY: rbuf is neither resized nor freed while the receive is
            // in flight (the stream is kept until its completions are reaped).
            unsafe { ring.push(&entry)? };
            self.recv_in_flight = true;
        }
        if !self.send_in_flight
            && let Some(front) = self.queue.front()
        {
            let parts = &mut *self.msg;
            let count = match front {
                Outgoing::Owned { bytes, sent } => {
                    parts.iov[0] = iovec(&bytes[*sent..]);
                    1
                }
                Outgoing::Lent {
                    header,
                    batch,
                    sent,
                } => {
                    // SAFETY: the journal keeps the lent batch in place until
                    // `return_batch`, called only after this send completes.
                    let records = unsafe { std::slice::from_raw_parts(batch.ptr, batch.len()) };
                    if *sent < HEADER_BYTES {
                        parts.iov[0] = iovec(&header[*sent..]);
                        parts.iov[1] = iovec(records);
                        2
                    } else {
                        parts.iov[0] = iovec(&records[*sent - HEADER_BYTES..]);
                        1
                    }
                }
            };
            parts.hdr.msg_iov = parts.iov.as_mut_ptr();
            parts.hdr.msg_iovlen = count;
            let entry = opcode::SendMsg::new(fd, &parts.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(token(self.generation, TAG_SEND));
            // SAFETY: the msghdr and iovecs are boxed in the stream, and the
            // bytes they name (owned by the queue's front, or the lent
            // batch) stay put until this send completes.
            unsafe { ring.push(&entry)? };
            self.send_in_flight = true;
        }
        Ok(())
    }

    /// A send completed; returns a lent batch that is now fully sent.
    fn sent(&mut self, result: i32) -> Option<LentBatch> {
        self.send_in_flight = false;
        if result <= 0 {
            let why = if result == 0 {
                "the peer closed the stream".to_owned()
            } else {
                format!("send: {}", std::io::Error::from_raw_os_error(-result))
            };
            self.break_with(why);
            return self.drop_queue();
        }
        let front = self.queue.front_mut().expect("a send in flight");
        *front.sent_mut() += result as usize;
        if *front.sent_mut() < front.total() {
            return None;
        }
        match self.queue.pop_front().expect("front") {
            Outgoing::Lent { batch, .. } => Some(batch),
            Outgoing::Owned { .. } => None,
        }
    }

    /// Drops everything not yet sent; returns a lent batch among it (no
    /// longer needed by the kernel: only called with no send in flight).
    fn drop_queue(&mut self) -> Option<LentBatch> {
        assert!(!self.send_in_flight);
        self.queue.drain(..).find_map(|o| match o {
            Outgoing::Lent { batch, .. } => Some(batch),
            Outgoing::Owned { .. } => None,
        })
    }

    /// A receive completed: `false` if the stream is closed.
    fn received(&mut self, result: i32) -> bool {
        self.recv_in_flight = false;
        match result {
            n if n > 0 => {
                self.rlen += n as usize;
                true
            }
            0 => {
                self.break_with("the peer closed the stream".into());
                false
            }
            e => {
                self.break_with(format!(
                    "receive: {}",
                    std::io::Error::from_raw_os_error(-e)
                ));
                false
            }
        }
    }

    /// Bytes received and not yet consumed.
    fn received_bytes(&self) -> &[u8] {
        &self.rbuf[self.rstart..self.rlen]
    }

    /// Removes `n` consumed bytes from the front of the receive buffer.
    fn consume(&mut self, n: usize) {
        self.rstart += n;
        assert!(self.rstart <= self.rlen);
    }
}

fn iovec(bytes: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }
}

/// Where the active stands with its passive.
#[derive(Debug)]
enum LeadPhase {
    /// Waiting for the passive's `Hello`.
    AwaitHello,
    /// Sending back from the journal.
    CatchUp(Box<ReadBack>),
    /// Every batch goes out as it is flushed; `from` is where that began.
    Live { cursor: Offset, from: Offset },
}

/// The active side of a stream.
#[derive(Debug)]
pub struct Leader {
    stream: Stream,
    phase: LeadPhase,
    unacked: Unacked,
    /// When catch-up began and from where, until the passive is in sync.
    catchup_began: Option<(Instant, Offset)>,
    /// What this stream's passive holds durably: where it was told to start
    /// (`Sync`, `Restart`), then its acknowledgements. Unlike `peer_acked`
    /// (commits never go back) it follows the passive it names, even one
    /// that came back with less than an earlier one acknowledged.
    acked: Offset,
}

/// Where the passive stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowPhase {
    /// `Hello` goes out once the journal is idle (its end is then final).
    SendHello,
    AwaitSync,
    Applying,
}

/// The passive side of a stream.
#[derive(Debug)]
pub struct Follower {
    stream: Stream,
    phase: FollowPhase,
    /// Durable offset to acknowledge (newer than the last ack queued).
    ack_due: Option<Offset>,
    acked: Offset,
}

/// What the shard owns for replication.
#[derive(Debug)]
pub struct Replica {
    pub role: Role,
    pub leader: Option<Leader>,
    pub follower: Option<Follower>,
    /// The passive's durable offset as last acknowledged (kept across
    /// streams: commits never go back).
    pub peer_acked: Offset,
    /// Streams being closed, kept until the kernel is done with them.
    closing: Vec<Stream>,
    /// Catch-up reads of closed streams (by generation), kept likewise.
    closing_reads: Vec<(u64, Box<ReadBack>)>,
    next_generation: u64,
    /// Largest data frame payload (a whole journal batch).
    data_max: usize,
    /// Catch-up chunk size: a whole batch buffer (twice the group-commit
    /// cap), which the passive's empty batch takes in one `append_raw` and
    /// writes in one flush; half the writes of cap-sized chunks.
    chunk_bytes: usize,
    segment_bytes: u64,
    /// Journals set aside before full copies, at most (per shard).
    saved_journals_max: u32,
    pub stats: ReplicaStats,
    /// Stats changed in a way the control thread should see at once.
    pub dirty: bool,
}

/// What a passive did to its journal, for its broker (hot standby).
#[derive(Debug)]
pub enum Applied<'a> {
    /// These whole records were appended at this offset.
    Records(Offset, &'a [u8]),
    /// The journal was cut back (a tail the active does not have): the
    /// broker must be rebuilt from it before later records are applied.
    Cut,
}

/// Where a passive's appends are reported, with the journal as it stands.
pub type ApplyFn<'f> = dyn FnMut(Applied<'_>, &Journal) + 'f;

impl Replica {
    pub fn new(
        role: Role,
        batch_bytes_max: usize,
        batch_capacity: usize,
        segment_bytes: u64,
        saved_journals_max: u32,
    ) -> Replica {
        Replica {
            role,
            leader: None,
            follower: None,
            peer_acked: Offset::ZERO,
            closing: Vec::new(),
            closing_reads: Vec::new(),
            next_generation: 1,
            data_max: batch_capacity,
            chunk_bytes: 2 * batch_bytes_max,
            segment_bytes,
            saved_journals_max,
            stats: ReplicaStats {
                role: role.name().into(),
                ..ReplicaStats::default()
            },
            dirty: true,
        }
    }

    fn new_stream(&mut self, socket: TcpStream) -> Stream {
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Err(error) = socket.set_nonblocking(false) {
            tracing::warn!(%error, "replication stream: cannot make the socket blocking");
        }
        Stream::new(generation, socket, 2 * (HEADER_BYTES + self.data_max))
    }

    /// Where committed data ends: what `replicated` acknowledgements and
    /// deliveries wait for. `None`: nothing commits (not serving).
    pub fn commit_point(&self, durable: Offset) -> Option<Offset> {
        match self.role {
            Role::Solo { .. } => Some(durable),
            Role::Lead => Some(durable.min(self.peer_acked)),
            Role::Idle | Role::Follow => None,
        }
    }

    /// Whether local acknowledgements may go out.
    pub fn acks_local(&self) -> bool {
        matches!(self.role, Role::Solo { .. } | Role::Lead)
    }

    /// The journal must keep everything from here (the passive may still
    /// need it).
    pub fn retain_from(&self) -> Option<Offset> {
        match (self.role, &self.leader) {
            (Role::Lead, Some(leader)) if !matches!(leader.phase, LeadPhase::AwaitHello) => {
                Some(leader.acked)
            }
            (Role::Lead, _) => Some(self.peer_acked),
            _ => None,
        }
    }

    pub fn set_role(&mut self, role: Role, journal: &mut Journal) {
        if role == self.role {
            return;
        }
        self.role = role;
        match role {
            Role::Idle => {
                self.close_leader("this server stopped serving", journal);
                self.close_follower("this server stopped following");
            }
            Role::Solo { .. } => {
                self.close_follower("this server became active");
                self.close_leader("this server runs standalone", journal);
            }
            Role::Lead => self.close_follower("this server became active"),
            Role::Follow => self.close_leader("this server became passive", journal),
        }
        self.stats.role = role.name().into();
        self.dirty = true;
    }

    /// Takes the passive's stream (active side).
    pub fn accept(&mut self, socket: TcpStream, journal: &mut Journal) {
        if matches!(self.role, Role::Idle | Role::Follow) {
            tracing::info!("replication stream refused: this server is not active");
            return;
        }
        self.close_leader("replaced by a new stream from the passive", journal);
        let stream = self.new_stream(socket);
        self.leader = Some(Leader {
            stream,
            phase: LeadPhase::AwaitHello,
            unacked: Unacked::default(),
            catchup_began: None,
            acked: Offset::ZERO,
        });
        self.stats.stream_up = true;
        self.dirty = true;
    }

    /// Takes the stream to the active (passive side).
    pub fn follow(&mut self, socket: TcpStream) {
        self.close_follower("replaced by a new stream to the active");
        let stream = self.new_stream(socket);
        self.follower = Some(Follower {
            stream,
            phase: FollowPhase::SendHello,
            ack_due: None,
            acked: Offset::ZERO,
        });
        self.stats.stream_up = true;
        self.dirty = true;
    }

    fn retire(&mut self, mut stream: Stream, why: &str) {
        stream.break_with(why.to_owned());
        self.stats.streams_closed += 1;
        self.stats.stream_up = false;
        self.stats.in_sync = false;
        self.dirty = true;
        if !stream.idle() {
            self.closing.push(stream);
        }
    }

    pub fn close_leader(&mut self, why: &str, journal: &mut Journal) {
        if let Some(mut leader) = self.leader.take() {
            if !leader.stream.send_in_flight && leader.stream.drop_queue().is_some() {
                journal.return_batch();
            }
            let why = leader
                .stream
                .broken
                .clone()
                .unwrap_or_else(|| why.to_owned());
            tracing::info!(reason = %why, "replication stream to the passive closed");
            self.stats.last_error = Some(why.clone());
            if let LeadPhase::CatchUp(readback) = leader.phase
                && readback.in_flight()
            {
                self.closing_reads
                    .push((leader.stream.generation, readback));
            }
            self.retire(leader.stream, &why);
        }
    }

    pub fn close_follower(&mut self, why: &str) {
        if let Some(follower) = self.follower.take() {
            let why = follower
                .stream
                .broken
                .clone()
                .unwrap_or_else(|| why.to_owned());
            tracing::info!(reason = %why, "replication stream from the active closed");
            self.stats.follower_streams_closed += 1;
            self.stats.last_error = Some(why.clone());
            self.retire(follower.stream, &why);
        }
    }

    /// Whether any stream still has an operation with the kernel.
    pub fn busy(&self) -> bool {
        !self.closing.is_empty()
            || !self.closing_reads.is_empty()
            || self.leader.as_ref().is_some_and(|l| {
                !l.stream.idle() || matches!(&l.phase, LeadPhase::CatchUp(r) if r.in_flight())
            })
            || self.follower.as_ref().is_some_and(|f| !f.stream.idle())
    }

    /// Arms every stream's I/O, and a catching-up leader's reads.
    pub fn start_io(&mut self, ring: &mut Ring, journal: &Journal) -> std::io::Result<()> {
        if let Some(leader) = &mut self.leader {
            let generation = leader.stream.generation;
            if leader.stream.broken.is_none()
                && let LeadPhase::CatchUp(readback) = &mut leader.phase
                && let Err(why) = readback.issue(ring, journal, |slot| {
                    token(generation, TAG_READ + slot as u64)
                })
            {
                leader.stream.break_with(why);
            }
            leader.stream.start_io(ring)?;
        }
        if let Some(follower) = &mut self.follower {
            follower.stream.start_io(ring)?;
        }
        Ok(())
    }

    /// The journal started flushing a batch: a live leader sends it.
    pub fn batch_started(&mut self, journal: &mut Journal) {
        let Some(leader) = &mut self.leader else {
            return;
        };
        if let LeadPhase::Live { cursor, from } = leader.phase {
            let batch = journal.lend_batch().expect("a batch just started");
            assert_eq!(batch.start, cursor, "live stream without a gap or overlap");
            leader.send_batch(batch, journal.epoch(), self.segment_bytes);
            leader.phase = LeadPhase::Live {
                cursor: batch.end,
                from,
            };
        }
    }

    /// Moves a catching-up leader on: queues the frames its completed reads
    /// make, or goes live once it meets the batch being flushed.
    pub fn pump(&mut self, journal: &mut Journal) {
        let segment_bytes = self.segment_bytes;
        if let Some(leader) = &mut self.leader
            && leader.stream.broken.is_none()
            && let LeadPhase::CatchUp(readback) = &mut leader.phase
        {
            let durable = journal.durable_offset();
            while leader.stream.frames_queued() < CATCHUP_FRAMES_QUEUED_MAX {
                match readback.next_frame(journal.epoch()) {
                    Ok(Some(frame)) => {
                        leader.unacked.sent(frame.end, frame.records);
                        leader.stream.push(frame.bytes);
                    }
                    Ok(None) => break,
                    Err(why) => {
                        leader.stream.break_with(why);
                        break;
                    }
                }
            }
            let cursor = readback.cursor();
            self.stats.catchup_remaining_bytes = durable.get().saturating_sub(cursor.get());
            if cursor == durable && readback.drained() {
                // Caught up with the durable log: the batch being flushed
                // (if any) goes out from the journal's buffer, and every
                // later one as it starts.
                match journal.in_flight_range() {
                    Some((start, _)) if start == cursor => {
                        let batch = journal.lend_batch().expect("in flight, not lent");
                        leader.send_batch(batch, journal.epoch(), segment_bytes);
                        leader.phase = LeadPhase::Live {
                            cursor: batch.end,
                            from: cursor,
                        };
                    }
                    Some(_) => {}
                    None => {
                        leader.phase = LeadPhase::Live {
                            cursor,
                            from: cursor,
                        }
                    }
                }
                if matches!(leader.phase, LeadPhase::Live { .. }) {
                    tracing::info!(
                        from = cursor.get(),
                        "replication: catch-up done, streaming live"
                    );
                    self.stats.catchup_remaining_bytes = 0;
                    self.dirty = true;
                }
            }
        }
        self.refresh_stats(journal);
        if self
            .leader
            .as_ref()
            .is_some_and(|l| l.stream.broken.is_some())
        {
            self.close_leader("broken", journal);
        }
        if let Some(follower) = &mut self.follower {
            if follower.phase == FollowPhase::SendHello
                && !journal.flush_in_flight()
                && journal.durable_offset() == journal.end_offset()
            {
                let history = History {
                    start: journal.start_offset(),
                    end: journal.end_offset(),
                    epochs: journal.epoch_starts().to_vec(),
                    first: journal.first_epoch(),
                };
                follower.stream.push(wire::encode(&Frame::Hello(history)));
                follower.phase = FollowPhase::AwaitSync;
            }
            if let Some(durable) = follower.ack_due
                && !follower.stream.send_in_flight
                && follower.stream.queue.is_empty()
            {
                follower.ack_due = None;
                follower.acked = durable;
                follower.stream.push(wire::encode(&Frame::Ack {
                    durable,
                    epoch: journal.epoch(),
                }));
            }
            if follower.stream.broken.is_some() {
                self.close_follower("broken");
            }
        }
    }

    fn refresh_stats(&mut self, journal: &Journal) {
        match (&mut self.leader, self.role) {
            (Some(leader), _) => {
                let in_sync = match leader.phase {
                    LeadPhase::Live { from, .. } => leader.acked >= from,
                    _ => false,
                };
                if in_sync != self.stats.in_sync {
                    self.stats.in_sync = in_sync;
                    self.dirty = true;
                }
                if in_sync && let Some((began, from)) = leader.catchup_began.take() {
                    self.stats.last_catchup_bytes = leader.acked.get() - from.get();
                    self.stats.last_catchup_us = began.elapsed().as_micros() as u64;
                }
                self.stats.peer_durable = leader.acked.get();
                self.stats.lag_bytes = journal
                    .end_offset()
                    .get()
                    .saturating_sub(leader.acked.get());
                self.stats.lag_records = leader.unacked.records;
            }
            (None, Role::Follow) => {
                self.stats.peer_durable = journal.durable_offset().get();
                self.stats.lag_bytes = 0;
                self.stats.lag_records = 0;
            }
            (None, _) => {
                self.stats.lag_bytes = journal
                    .end_offset()
                    .get()
                    .saturating_sub(self.peer_acked.get());
                self.stats.lag_records = 0;
                if self.stats.in_sync {
                    self.stats.in_sync = false;
                    self.dirty = true;
                }
            }
        }
    }

    /// The passive's journal made `durable` durable: acknowledge it.
    pub fn follower_durable(&mut self, durable: Offset) {
        if let Some(follower) = &mut self.follower
            && follower.phase == FollowPhase::Applying
            && durable > follower.acked
        {
            follower.ack_due = Some(durable);
        }
    }

    /// A replication completion; what a passive appends is reported to
    /// `apply` as it goes. Returns whether the commit point may have moved
    /// (the passive acknowledged more).
    pub fn complete(
        &mut self,
        completion: Completion,
        journal: &mut Journal,
        apply: &mut ApplyFn<'_>,
    ) -> bool {
        let id = completion.token.id();
        let (generation, tag) = (id >> TAG_BITS, id & ((1 << TAG_BITS) - 1));
        if tag >= TAG_READ {
            self.read_completed(generation, (tag - TAG_READ) as usize, completion.result);
            return false;
        }
        let receive = tag == TAG_RECEIVE;
        if let Some(index) = self.closing.iter().position(|s| s.generation == generation) {
            let stream = &mut self.closing[index];
            if receive {
                stream.recv_in_flight = false;
            } else {
                stream.send_in_flight = false;
                if stream.drop_queue().is_some() {
                    journal.return_batch();
                }
            }
            if stream.idle() {
                self.closing.swap_remove(index);
            }
            return false;
        }
        if let Some(leader) = &mut self.leader
            && leader.stream.generation == generation
        {
            if !receive {
                if leader.stream.sent(completion.result).is_some() {
                    journal.return_batch();
                }
                return false;
            }
            if !leader.stream.received(completion.result) {
                return false;
            }
            return self.leader_frames(journal);
        }
        if let Some(follower) = &mut self.follower
            && follower.stream.generation == generation
        {
            if !receive {
                follower.stream.sent(completion.result);
                return false;
            }
            if !follower.stream.received(completion.result) {
                return false;
            }
            self.follower_frames(journal, apply);
            return false;
        }
        tracing::error!(generation, "completion for an unknown replication stream");
        false
    }

    /// A catch-up read completed: its frames are cut in `pump`.
    fn read_completed(&mut self, generation: u64, slot: usize, result: i32) {
        if let Some(index) = self
            .closing_reads
            .iter()
            .position(|(g, _)| *g == generation)
        {
            let readback = &mut self.closing_reads[index].1;
            readback.completed(slot, result);
            if !readback.in_flight() {
                self.closing_reads.swap_remove(index);
            }
            return;
        }
        match &mut self.leader {
            Some(leader) if leader.stream.generation == generation => match &mut leader.phase {
                LeadPhase::CatchUp(readback) => readback.completed(slot, result),
                phase => unreachable!("a catch-up read completed while {phase:?}"),
            },
            _ => tracing::error!(
                generation,
                "read completion for an unknown replication stream"
            ),
        }
    }

    fn leader_frames(&mut self, journal: &mut Journal) -> bool {
        let leader = self.leader.as_mut().expect("leader");
        let mut commit = false;
        loop {
            let frame = match wire::decode(leader.stream.received_bytes(), 0) {
                Ok(Some((frame, used))) => {
                    let frame = match frame {
                        Frame::Hello(history) => Ok(Frame::Hello(history)),
                        Frame::Ack { durable, epoch } => Ok(Frame::Ack { durable, epoch }),
                        other => Err(format!("unexpected {other:?} from the passive")),
                    };
                    leader.stream.consume(used);
                    frame
                }
                Ok(None) => break,
                Err(error) => Err(format!("bad frame from the passive: {error}")),
            };
            match frame {
                Ok(Frame::Hello(passive)) if matches!(leader.phase, LeadPhase::AwaitHello) => {
                    let active = History {
                        start: journal.start_offset(),
                        end: journal.durable_offset(),
                        epochs: journal.epoch_starts().to_vec(),
                        first: journal.first_epoch(),
                    };
                    let plan = match catchup(&active, &passive) {
                        Ok(plan) => {
                            tracing::info!(
                                passive_end = passive.end.get(),
                                truncate_to = plan.truncate_to.get(),
                                stream_from = plan.stream_from.get(),
                                active_end = active.end.get(),
                                "replication: passive connected; catching up"
                            );
                            Ok((
                                plan.stream_from,
                                Frame::Sync {
                                    truncate_to: plan.truncate_to,
                                    stream_from: plan.stream_from,
                                },
                            ))
                        }
                        // What the passive lacks was released here: it
                        // starts again where this journal begins.
                        Err(CatchupError::TooFarBehind { at, start }) => {
                            tracing::warn!(
                                passive_end = passive.end.get(),
                                diverged_at = at,
                                stream_from = start,
                                active_end = active.end.get(),
                                "replication: the passive is too far behind to stream; \
                                 sending it a full copy of the retained journal"
                            );
                            Ok((
                                Offset(start),
                                Frame::Restart {
                                    stream_from: Offset(start),
                                    diverged_at: Offset(at),
                                },
                            ))
                        }
                        Err(error) => Err(error),
                    };
                    match plan {
                        Ok((from, frame)) => {
                            leader.stream.push(wire::encode(&frame));
                            leader.phase = LeadPhase::CatchUp(Box::new(ReadBack::new(
                                from,
                                self.chunk_bytes,
                                self.segment_bytes,
                            )));
                            leader.acked = from;
                            leader.catchup_began = Some((Instant::now(), from));
                        }
                        Err(error) => {
                            tracing::error!(%error, "replication: the passive cannot catch up");
                            leader
                                .stream
                                .push(wire::encode(&Frame::Refuse(error.to_string())));
                            self.stats.last_error = Some(error.to_string());
                        }
                    }
                }
                Ok(Frame::Ack { durable, .. })
                    if !matches!(leader.phase, LeadPhase::AwaitHello) =>
                {
                    leader.unacked.acked(durable);
                    leader.acked = leader.acked.max(durable);
                    if durable > self.peer_acked {
                        self.peer_acked = durable;
                        commit = true;
                    }
                }
                Ok(other) => {
                    leader
                        .stream
                        .break_with(format!("unexpected {other:?} from the passive"));
                    break;
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "replication stream reset");
                    leader.stream.break_with(why);
                    break;
                }
            }
        }
        commit
    }

    fn follower_frames(&mut self, journal: &mut Journal, apply: &mut ApplyFn<'_>) {
        let follower = self.follower.as_mut().expect("follower");
        loop {
            let buf = follower.stream.received_bytes();
            let (frame, used) = match wire::decode(buf, self.data_max) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => break,
                Err(error) => {
                    let why = format!("bad frame from the active: {error}");
                    tracing::warn!(reason = %why, "replication stream reset; nothing of it applied");
                    follower.stream.break_with(why);
                    break;
                }
            };
            let outcome: Result<bool, String> = match (frame, follower.phase) {
                (
                    Frame::Sync {
                        truncate_to,
                        stream_from,
                    },
                    FollowPhase::AwaitSync,
                ) => {
                    if stream_from != truncate_to {
                        Err(format!(
                            "the active streams from {stream_from} but asks to cut at {truncate_to}"
                        ))
                    } else {
                        let cut = truncate_to < journal.end_offset();
                        match journal.truncate(truncate_to) {
                            Ok(()) => {
                                if cut {
                                    tracing::warn!(
                                        to = truncate_to.get(),
                                        "replication: dropped this journal's tail the active does not have \
                                         (never acknowledged as replicated)"
                                    );
                                    apply(Applied::Cut, journal);
                                }
                                follower.synced(journal);
                                Ok(true)
                            }
                            Err(error) => {
                                Err(format!("cannot cut the journal at {truncate_to}: {error}"))
                            }
                        }
                    }
                }
                (
                    Frame::Restart {
                        stream_from,
                        diverged_at,
                    },
                    FollowPhase::AwaitSync,
                ) => restart_journal(journal, stream_from, diverged_at, self.saved_journals_max)
                    .map(|()| {
                        apply(Applied::Cut, journal);
                        follower.synced(journal);
                        true
                    }),
                (
                    Frame::Data {
                        offset,
                        epoch,
                        records,
                    },
                    FollowPhase::Applying,
                ) => {
                    if epoch < journal.epoch() {
                        Err(format!(
                            "data of epoch {epoch} from a deposed active (this journal is at epoch {})",
                            journal.epoch()
                        ))
                    } else if offset != journal.end_offset() {
                        Err(format!(
                            "data at offset {offset} but this journal ends at {} (a gap or an overlap)",
                            journal.end_offset()
                        ))
                    } else {
                        match journal.append_raw(offset, records) {
                            Ok(()) => {
                                apply(Applied::Records(offset, records), journal);
                                Ok(true)
                            }
                            // Wait for the flush in flight, then retry.
                            Err(crate::journal::JournalError::Full) => Ok(false),
                            Err(error) => Err(format!("records refused: {error}")),
                        }
                    }
                }
                (Frame::Refuse(reason), _) => Err(format!("the active refused: {reason}")),
                (other, phase) => Err(format!("unexpected {other:?} while {phase:?}")),
            };
            match outcome {
                Ok(true) => follower.stream.consume(used),
                Ok(false) => {
                    journal.flush_soon();
                    break;
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "replication stream reset; nothing of it applied");
                    follower.stream.break_with(why);
                    break;
                }
            }
        }
    }

    /// A follower waiting for room in the journal tries again.
    pub fn retry_follower(&mut self, journal: &mut Journal, apply: &mut ApplyFn<'_>) {
        if self
            .follower
            .as_ref()
            .is_some_and(|f| !f.stream.received_bytes().is_empty() && f.stream.broken.is_none())
        {
            self.follower_frames(journal, apply);
        }
    }

    /// The figures for the shard's stats; the control thread has seen them.
    pub fn snapshot(&mut self) -> ReplicaStats {
        self.dirty = false;
        self.stats.clone()
    }
}

/// Starts the follower's journal again, empty, at `stream_from` (the
/// active's start) for a full copy. Everything it holds below
/// `diverged_at` is an older part of the active's log that the active
/// released (settled), so it goes; if it holds anything past that point,
/// its segments are moved to `<data_dir>/saved/<shard>.<n>` first, at most
/// `saved_max` such copies per shard.
fn restart_journal(
    journal: &mut Journal,
    stream_from: Offset,
    diverged_at: Offset,
    saved_max: u32,
) -> Result<(), String> {
    let save_to = if diverged_at < journal.end_offset() {
        Some(saved_slot(journal.dir(), saved_max)?)
    } else {
        None
    };
    journal
        .restart_at(stream_from, save_to.as_deref())
        .map_err(|error| format!("cannot start the journal again at {stream_from}: {error}"))?;
    match &save_to {
        Some(path) => tracing::warn!(
            from = stream_from.get(),
            saved = %path.display(),
            "replication: full copy from the active; this journal's own history is kept aside"
        ),
        None => tracing::warn!(
            from = stream_from.get(),
            "replication: full copy from the active; this journal held only records the active \
             already released"
        ),
    }
    Ok(())
}

/// The next free `<data_dir>/saved/<shard dir>.<n>` for `journal_dir`, or
/// why none may be used (`max` copies already there).
fn saved_slot(journal_dir: &std::path::Path, max: u32) -> Result<std::path::PathBuf, String> {
    let name = journal_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let saved = journal_dir
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("saved");
    let prefix = format!("{name}.");
    let taken: Vec<u32> = match std::fs::read_dir(&saved) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_prefix(&prefix)?
                    .parse::<u32>()
                    .ok()
            })
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(format!("cannot list {}: {error}", saved.display())),
    };
    if taken.len() >= max as usize {
        return Err(format!(
            "a full copy from the active would set this journal aside, but {} already holds {} \
             saved copies of {name} (ha.saved_journals_max = {max}); remove some to let it proceed",
            saved.display(),
            taken.len()
        ));
    }
    let next = taken.iter().max().map_or(1, |n| n + 1);
    Ok(saved.join(format!("{prefix}{next}")))
}

impl Follower {
    /// The journal now ends where the active streams from: apply from here.
    fn synced(&mut self, journal: &Journal) {
        self.phase = FollowPhase::Applying;
        self.ack_due = Some(journal.durable_offset());
        self.acked = Offset::ZERO;
    }
}

/// The data frames a leader sent that its passive has not acknowledged.
#[derive(Debug, Default)]
struct Unacked {
    /// (end offset, records) of each frame.
    marks: VecDeque<(Offset, u64)>,
    /// The records of `marks`, summed.
    records: u64,
}

impl Unacked {
    /// A data frame ending at `end` with `records` records went out.
    fn sent(&mut self, end: Offset, records: u64) {
        self.marks.push_back((end, records));
        self.records += records;
    }

    /// The passive holds everything below `durable`.
    fn acked(&mut self, durable: Offset) {
        while self.marks.front().is_some_and(|(end, _)| *end <= durable) {
            let (_, records) = self.marks.pop_front().expect("front");
            self.records -= records;
        }
    }
}

impl Leader {
    fn send_batch(&mut self, batch: LentBatch, epoch: Epoch, segment_bytes: u64) {
        // SAFETY: the journal just lent this batch; it stays put until
        // `return_batch`.
        let records = unsafe { std::slice::from_raw_parts(batch.ptr, batch.len()) };
        let (_, count) = whole_records(records, batch.start, segment_bytes);
        self.unacked.sent(batch.end, count);
        self.stream.queue.push_back(Outgoing::Lent {
            header: Box::new(wire::data_header(batch.start, epoch, batch.len())),
            batch,
            sent: 0,
        });
    }
}

mod readback;
#[cfg(test)]
mod tests;
