//! The journal writer: appends into a block-aligned batch buffer, and one
//! group-commit write in flight at a time through the shard's ring.
//!
//! ```text
//!            append / append_raw                  submit()                    complete()
//!  records ─────────────────────▶ filling batch ──────────▶ in-flight batch ──────────▶ durable
//!                                 (buffer A)    swap A/B    (buffer B, kernel)  frees B
//! ```
//! A batch buffer maps a contiguous stretch of the logical log starting at a
//! block boundary `base`. Its first `head` bytes are the *carry*: the already
//! durable part of the block the previous batch ended in, written again so
//! that `O_DIRECT` writes stay whole blocks. Rewriting them is safe: the bytes
//! are identical, so a torn rewrite leaves them intact.
//!
//! Only one batch is in flight, which is what lets recovery bound the damage
//! of a crash to the last batch (see `recovery`).

use super::JournalError;
use super::epochs::{EpochLog, EpochViolation};
use super::options::{Durability, FaultOp, JournalOptions};
use super::record::{self, HEADER_BYTES, RecordKind};
use super::recovery::{self, Scan, TornTail, Visit};
use super::segments::{self, SegmentDir};
use crate::constants::BLOCK_BYTES;
use crate::ids::{Epoch, Offset};
use crate::io::{AlignedBuf, Completion, Owner, Ring, Token};
use io_uring::{opcode, squeue, types};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What a completion changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEvent {
    /// Every byte below this offset is durable.
    Durable(Offset),
    /// The in-flight batch failed: the journal is poisoned for good.
    Poisoned(Arc<str>),
}

/// What recovery did when the journal was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub start: Offset,
    pub end: Offset,
    pub records: u64,
    pub segments: usize,
    pub torn: Option<TornTail>,
}

/// The filling batch: a buffer mapping `[base, base + len)` of the log.
#[derive(Debug)]
struct Batch {
    buf: AlignedBuf,
    /// Which of the journal's two buffers this is (its fixed-buffer slot).
    slot: u16,
    base: Offset,
    /// Carry bytes at the front (already durable).
    head: usize,
    /// Bytes used, carry included.
    len: usize,
    /// When a `submit` first saw this batch waiting, for the linger timer.
    since: Option<Instant>,
    /// The batch refused a record (`Full`): flush it without lingering.
    refused: bool,
}

impl Batch {
    fn start(&self) -> Offset {
        self.base + self.head as u64
    }

    fn new_bytes(&self) -> usize {
        self.len - self.head
    }

    /// Reserves `len` bytes at the end and returns them.
    fn reserve(&mut self, len: usize) -> &mut [u8] {
        let at = self.len;
        self.len += len;
        assert!(self.len <= self.buf.len(), "batch buffer overflow");
        &mut self.buf[at..self.len]
    }
}

#[derive(Debug, Clone, Copy)]
struct Part {
    op: FaultOp,
    expect: i32,
    segment: usize,
    file_pos: u64,
}

/// The batch the kernel is writing.
#[derive(Debug)]
struct InFlight {
    buf: AlignedBuf,
    slot: u16,
    end: Offset,
    seq: u64,
    parts: [Option<Part>; 4],
    pending: usize,
    failure: Option<String>,
    /// Bytes `[start, end)` of this batch are lent out (to a replication
    /// send) until `return_batch`.
    lent: bool,
    start: Offset,
    head: usize,
}

/// The writes (and fdatasyncs) of a batch `Journal::seal` made the one in
/// flight, to be handed to `Journal::write_sealed`: until then the kernel
/// has not seen them and the batch cannot complete.
#[must_use = "a sealed batch completes only once write_sealed pushes its writes"]
#[derive(Debug)]
pub struct SealedWrites([Option<squeue::Entry>; 4]);

/// New bytes of the in-flight batch, lent to a second consumer (the
/// replication stream) that reads them straight from the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LentBatch {
    pub start: Offset,
    pub end: Offset,
    /// Valid until `Journal::return_batch`: the buffer is neither reused
    /// nor freed before.
    pub ptr: *const u8,
}

impl LentBatch {
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One shard's journal. Not thread-safe by design: it lives on its shard
/// thread and is driven by that thread's ring.
#[derive(Debug)]
pub struct Journal {
    options: JournalOptions,
    durability: Durability,
    files: SegmentDir,
    epochs: EpochLog,
    start: Offset,
    end: Offset,
    durable: Offset,
    filling: Batch,
    in_flight: Option<InFlight>,
    free: Option<(AlignedBuf, u16)>,
    /// A completed batch whose bytes are still lent out; it becomes the
    /// free buffer once returned.
    lent: Option<(AlignedBuf, u16)>,
    /// The ring (by id) the two buffers are registered with, and the table
    /// index of slot 0; `None` as index when registration was refused.
    fixed: Option<(u64, Option<u16>)>,
    seq: u64,
    poison: Option<Arc<str>>,
    report: RecoveryReport,
    /// While the directory's `RAW_TAIL` mark is up: the span it records
    /// and where the newest raw (replica) bytes end. Local appends take the
    /// mark down once every byte below it is durable, so recovery judges a
    /// tail of this journal's own batches by their `batch_back` again.
    raw_tail: Option<RawTail>,
}

#[derive(Debug, Clone, Copy)]
struct RawTail {
    span: u64,
    end: Offset,
}

impl Drop for Journal {
    fn drop(&mut self) {
        // A batch still with the kernel may be read from its buffer after we
        // are gone; the journal has no ring here to wait on, so the buffer is
        // leaked rather than handed back to the allocator while in use.
        if let Some(in_flight) = self.in_flight.take() {
            tracing::warn!(
                dir = %self.files.dir().display(),
                "journal dropped with a flush in flight; its batch is not acknowledged"
            );
            std::mem::forget(in_flight.buf);
        }
        // Likewise a lent batch: a send may still read it.
        if let Some((buf, _)) = self.lent.take() {
            std::mem::forget(buf);
        }
    }
}

/// Capacity of a batch buffer: the carry block, the cap, and one more cap for
/// a record that overflows it plus the segment padding before that record.
pub fn batch_capacity(batch_bytes_max: usize) -> usize {
    2 * batch_bytes_max + 2 * BLOCK_BYTES
}

impl Journal {
    /// Opens (or creates) the journal in `dir` and recovers it: a torn tail
    /// is cut and erased, corruption before the tail refuses to open.
    pub fn open(dir: &Path, options: JournalOptions) -> Result<Journal, JournalError> {
        Journal::open_visiting(dir, options, &mut |_, _| Ok(()))
    }

    /// [`Journal::open`], showing `visit` every record of the recovered log
    /// as recovery reads it: one pass over the disk builds whatever the
    /// caller keeps of the log (a broker), instead of reading it again.
    /// On an error nothing is changed on disk, and what `visit` built is
    /// the caller's to drop.
    pub fn open_visiting(
        dir: &Path,
        options: JournalOptions,
        visit: &mut Visit<'_>,
    ) -> Result<Journal, JournalError> {
        options.validate()?;
        let direct = options.durability == Durability::DirectDsync;
        let mut files =
            SegmentDir::open(dir, direct, options.segment_bytes, options.spare_segments)?;
        let durability = if files.is_direct() {
            options.durability
        } else {
            Durability::WriteFdatasync
        };
        if files.is_empty() {
            files.create_first(Offset::ZERO)?;
        }
        let raw_span = segments::raw_tail(dir)?;
        let scan: Scan = recovery::scan(&files.files(), raw_span, visit)?;
        if let Some(torn) = &scan.torn {
            tracing::warn!(
                dir = %dir.display(), at = torn.at.get(), reason = %torn.reason,
                "journal tail was torn by a crash; cut at the last whole record"
            );
            files.erase(torn.at, torn.erase_to)?;
        }
        if scan.end_segment + 1 < files.len() {
            files.delete_after(scan.end_segment)?;
            files.sync_dir()?;
        }
        files.request_spares();
        let report = RecoveryReport {
            start: scan.start,
            end: scan.end,
            records: scan.records,
            segments: files.len(),
            torn: scan.torn.clone(),
        };
        let capacity = batch_capacity(options.batch_bytes_max);
        let mut journal = Journal {
            durability,
            files,
            epochs: scan.epochs,
            start: scan.start,
            end: scan.end,
            durable: scan.end,
            filling: Batch {
                buf: AlignedBuf::zeroed(capacity),
                slot: 0,
                base: Offset::ZERO,
                head: 0,
                len: 0,
                since: None,
                refused: false,
            },
            in_flight: None,
            free: Some((AlignedBuf::zeroed(capacity), 1)),
            lent: None,
            fixed: None,
            seq: 0,
            poison: None,
            report,
            raw_tail: raw_span.map(|span| RawTail {
                span,
                end: scan.end,
            }),
            options,
        };
        journal.reload_carry()?;
        Ok(journal)
    }

    /// Points the filling batch at the block holding `end`, reading the
    /// durable bytes of that block back from disk.
    fn reload_carry(&mut self) -> Result<(), JournalError> {
        let base = Offset(self.end.get() / BLOCK_BYTES as u64 * BLOCK_BYTES as u64);
        let head = (self.end - base) as usize;
        let mut buf = std::mem::replace(&mut self.filling.buf, AlignedBuf::zeroed(BLOCK_BYTES));
        if head > 0 {
            let read = self.read_raw(base, &mut buf[..head])?;
            assert_eq!(read, head, "carry bytes are durable");
        }
        self.filling = Batch {
            buf,
            slot: self.filling.slot,
            base,
            head,
            len: head,
            since: None,
            refused: false,
        };
        Ok(())
    }

    /// The directory this journal lives in.
    pub fn dir(&self) -> &Path {
        self.files.dir()
    }

    /// How batches are actually made durable (after any fallback).
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// What recovery found and did at open.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// The epoch of the first retained record (`Epoch::NONE` when the log
    /// holds none), known even once that epoch's start record is released.
    pub fn first_epoch(&self) -> Epoch {
        if self.end == self.start {
            Epoch::NONE
        } else {
            self.epochs.epoch_at(self.start)
        }
    }

    /// First offset still retained.
    pub fn start_offset(&self) -> Offset {
        self.start
    }

    /// End of everything appended (durable or not).
    pub fn end_offset(&self) -> Offset {
        self.end
    }

    /// Every byte below this offset is durable.
    pub fn durable_offset(&self) -> Offset {
        self.durable
    }

    /// The epoch of the newest record.
    pub fn epoch(&self) -> Epoch {
        self.epochs.current()
    }

    /// Where each epoch still in the log started, oldest first.
    pub fn epoch_starts(&self) -> &[(Epoch, Offset)] {
        self.epochs.starts()
    }

    /// Number of segment files the journal holds.
    pub fn segment_count(&self) -> usize {
        self.files.len()
    }

    /// Whether a batch write is with the kernel.
    pub fn flush_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The cause, once a storage failure has poisoned the journal.
    pub fn poisoned(&self) -> Option<&Arc<str>> {
        self.poison.as_ref()
    }

    /// Whether batches are written from io_uring fixed (registered) buffers.
    pub fn uses_fixed_buffers(&self) -> bool {
        matches!(self.fixed, Some((_, Some(_))))
    }

    /// Blocks until the background zero-filler has made every requested spare.
    pub fn wait_for_spares(&mut self) {
        self.files.wait_for_spares();
    }

    fn check_poison(&self) -> Result<(), JournalError> {
        match &self.poison {
            Some(cause) => Err(JournalError::Poisoned(cause.clone())),
            None => Ok(()),
        }
    }

    fn epoch_error(violation: EpochViolation) -> JournalError {
        match violation {
            EpochViolation::Regression { got, current } => JournalError::EpochRegression {
                got: got.get(),
                current: current.get(),
            },
            EpochViolation::NotStarted { got, current } => JournalError::EpochNotStarted {
                got: got.get(),
                current: current.get(),
            },
        }
    }

    fn tail_end(&self) -> Offset {
        self.files.last().file.end()
    }

    /// Appends one record and returns its offset. The record is durable once
    /// `durable_offset()` passes it. Copies the payload once, allocates
    /// nothing. `Err(Full)` means: drive the ring until the in-flight flush
    /// completes, then retry.
    pub fn append(
        &mut self,
        kind: RecordKind,
        epoch: Epoch,
        payload: &[u8],
    ) -> Result<Offset, JournalError> {
        self.check_poison()?;
        assert!(kind != RecordKind::Padding, "padding is the journal's own");
        if self.raw_tail.is_some_and(|raw| self.durable >= raw.end) {
            self.files.set_raw_tail(None)?;
            self.raw_tail = None;
        }
        let record_bytes = HEADER_BYTES + payload.len();
        if record_bytes > self.options.batch_bytes_max {
            return Err(JournalError::RecordTooLarge {
                len: record_bytes,
                max: self.options.batch_bytes_max,
            });
        }
        self.epochs.check(kind, epoch).map_err(Self::epoch_error)?;
        let remaining = self.tail_end() - self.end;
        let pad = if record_bytes as u64 > remaining {
            remaining
        } else {
            0
        };
        self.ensure_room(pad as usize + record_bytes)?;
        if record_bytes as u64 > remaining {
            self.pad_segment()?;
        }
        let offset = self.end;
        let batch_back = self.batch_back(offset);
        let dst = self.filling.reserve(record_bytes);
        record::encode(dst, kind, batch_back, offset, epoch, payload);
        self.end = offset + record_bytes as u64;
        self.epochs.record(kind, epoch, offset);
        Ok(offset)
    }

    fn batch_back(&self, offset: Offset) -> u32 {
        u32::try_from(offset - self.filling.start()).expect("batch fits u32")
    }

    /// Refuses with `Full` unless the filling batch can take `need` more bytes.
    /// An empty batch always takes one record (and its padding).
    fn ensure_room(&mut self, need: usize) -> Result<(), JournalError> {
        let used = self.filling.new_bytes();
        if used > 0 && used + need > self.options.batch_bytes_max {
            self.filling.refused = true;
            return Err(JournalError::Full);
        }
        Ok(())
    }

    /// Fills the rest of the tail segment (a padding record, or zeros when
    /// less than a header remains) and rolls to a new segment.
    fn pad_segment(&mut self) -> Result<(), JournalError> {
        let seg_end = self.tail_end();
        // Roll first: it can fail, and nothing must change if it does.
        self.files.roll(seg_end)?;
        let remaining = (seg_end - self.end) as usize;
        let offset = self.end;
        let batch_back = self.batch_back(offset);
        let epoch = self.epochs.current();
        let dst = self.filling.reserve(remaining);
        if remaining >= HEADER_BYTES {
            record::encode_padding(dst, batch_back, offset, epoch);
        } else {
            dst.fill(0);
        }
        self.end = seg_end;
        Ok(())
    }

    /// Appends bytes received from a peer at `at` (which must be this
    /// journal's end): a whole number of records laid out for the same
    /// segment size, each verified (CRC, own offset, epoch rules) before any
    /// byte is accepted. All or nothing.
    pub fn append_raw(&mut self, at: Offset, bytes: &[u8]) -> Result<(), JournalError> {
        self.check_poison()?;
        if at != self.end {
            return Err(JournalError::OffsetMismatch {
                got: at.get(),
                end: self.end.get(),
            });
        }
        let epochs = self.verify_raw(at, bytes)?;
        let used = self.filling.new_bytes();
        let capacity = batch_capacity(self.options.batch_bytes_max) - BLOCK_BYTES;
        if bytes.len() > capacity {
            return Err(JournalError::InvalidRaw {
                offset: at.get(),
                reason: format!("{} bytes exceed one batch ({capacity})", bytes.len()),
            });
        }
        if used > 0 && used + bytes.len() > self.options.batch_bytes_max {
            self.filling.refused = true;
            return Err(JournalError::Full);
        }
        // Up, with this journal's span (the options may have changed since
        // it was written), before the first raw byte can reach the disk.
        let span = batch_capacity(self.options.batch_bytes_max) as u64;
        if self.raw_tail.is_none_or(|raw| raw.span != span) {
            self.files.set_raw_tail(Some(span))?;
        }
        self.raw_tail = Some(RawTail {
            span,
            end: at + bytes.len() as u64,
        });
        let mut pos = 0;
        while pos < bytes.len() {
            if self.end == self.tail_end() {
                self.files.roll(self.end)?;
            }
            let n = (bytes.len() - pos).min((self.tail_end() - self.end) as usize);
            self.filling
                .reserve(n)
                .copy_from_slice(&bytes[pos..pos + n]);
            self.end = self.end + n as u64;
            pos += n;
        }
        self.epochs = epochs;
        Ok(())
    }

    /// Checks raw bytes against this journal's layout and epoch rules and
    /// returns the epoch history they lead to.
    fn verify_raw(&self, at: Offset, bytes: &[u8]) -> Result<EpochLog, JournalError> {
        let mut epochs = self.epochs.clone();
        let mut seg_end = self.tail_end();
        let mut pos = 0;
        while pos < bytes.len() {
            let offset = at + pos as u64;
            let invalid = |reason: String| JournalError::InvalidRaw {
                offset: offset.get(),
                reason,
            };
            if offset == seg_end {
                seg_end = seg_end + self.options.segment_bytes;
            }
            let remaining = (seg_end - offset) as usize;
            let rest = &bytes[pos..];
            if remaining < HEADER_BYTES {
                if rest.len() < remaining || rest[..remaining].iter().any(|&b| b != 0) {
                    return Err(invalid("segment tail must be zeros".into()));
                }
                pos += remaining;
                continue;
            }
            let payload_max = (remaining - HEADER_BYTES) as u32;
            let header =
                record::check(rest, offset, payload_max).map_err(|e| invalid(e.to_string()))?;
            if header.kind == RecordKind::Padding && header.record_bytes() != remaining {
                return Err(invalid(
                    "padding does not end at this journal's segment end".into(),
                ));
            }
            epochs
                .accept(&header)
                .map_err(|violation| invalid(violation.to_string()))?;
            pos += header.record_bytes();
        }
        Ok(epochs)
    }

    /// When the filling batch's linger expires, once a `submit` has seen it
    /// waiting (the shard loop arms its timer with this).
    pub fn flush_deadline(&self) -> Option<Instant> {
        if self.in_flight.is_some() || self.poison.is_some() {
            return None;
        }
        self.filling
            .since
            .map(|since| since + self.options.flush_linger)
    }

    /// Starts the flush of the filling batch if none is in flight and the
    /// batch is due: it refused a record for lack of room, or `flush_linger`
    /// has passed since the first `submit` that saw it waiting (time is an
    /// input: the journal reads no clock). Pushes one write (plus an
    /// fdatasync in that mode) per segment the batch touches, then one
    /// submit. Returns whether a flush started.
    pub fn submit(&mut self, now: Instant, ring: &mut Ring) -> Result<bool, JournalError> {
        match self.seal(now, ring)? {
            Some(writes) => self.write_sealed(ring, writes).map(|()| true),
            None => Ok(false),
        }
    }

    /// The first half of `submit`: if the batch is due, makes it the batch
    /// in flight (it may be lent at once) with its writes prepared but not
    /// yet pushed; `write_sealed` pushes what this returns. A caller that lends the batch
    /// to the replication stream pushes that send first, so the peer's copy
    /// (the longer path to a replicated ack: a network hop, then the peer's
    /// own flush) is not held behind the local write's submission, which
    /// io_uring issues inline.
    pub fn seal(
        &mut self,
        now: Instant,
        ring: &mut Ring,
    ) -> Result<Option<SealedWrites>, JournalError> {
        self.check_poison()?;
        if self.in_flight.is_some() || self.filling.new_bytes() == 0 {
            return Ok(None);
        }
        let since = *self.filling.since.get_or_insert(now);
        let due = self.filling.refused || now >= since + self.options.flush_linger;
        if !due {
            return Ok(None);
        }
        self.seal_now(ring)
    }

    /// Pushes the writes `seal` prepared, and submits them.
    pub fn write_sealed(
        &mut self,
        ring: &mut Ring,
        writes: SealedWrites,
    ) -> Result<(), JournalError> {
        for entry in writes.0.iter().flatten() {
            // SAFETY: the entries point into the in-flight buffer, which is
            // neither touched nor freed until every completion of the batch
            // is reaped; the segment's fd stays open at least as long
            // (segments in a batch are never removed while it is in flight).
            unsafe { ring.push(entry) }.map_err(JournalError::io("submit", self.files.dir()))?;
        }
        ring.submit()
            .map_err(JournalError::io("submit", self.files.dir()))?;
        Ok(())
    }

    fn seal_now(&mut self, ring: &mut Ring) -> Result<Option<SealedWrites>, JournalError> {
        self.check_poison()?;
        // A lent batch holds the second buffer: the next flush waits for it
        // to come back (backpressure from the replication stream).
        if self.in_flight.is_some() || self.filling.new_bytes() == 0 || self.free.is_none() {
            return Ok(None);
        }
        let direct = self.durability == Durability::DirectDsync;
        let fixed = self.fixed_index(ring);
        let batch = &mut self.filling;
        let (from, to) = if direct {
            let padded = batch.len.next_multiple_of(BLOCK_BYTES);
            batch.buf[batch.len..padded].fill(0);
            (batch.base, batch.base + padded as u64)
        } else {
            (batch.start(), batch.base + batch.len as u64)
        };
        self.seq += 1;
        let seq = self.seq;
        let mut parts = [None; 4];
        let mut unpushed: [Option<squeue::Entry>; 4] = Default::default();
        let mut count = 0;
        let first = self
            .files
            .index_of(from)
            .expect("batch starts in a segment");
        for index in first..self.files.len() {
            let file = &self.files.get(index).file;
            let lo = from.max(file.start);
            let hi = to.min(file.end());
            if lo >= hi {
                break;
            }
            let fd = types::Fd(self.files.get(index).write.as_raw_fd());
            let ptr = self.filling.buf[(lo - self.filling.base) as usize..].as_ptr();
            let len = (hi - lo) as u32;
            let file_pos = lo - file.start;
            let rw_flags = if direct { libc::RWF_DSYNC } else { 0 };
            let write = match fixed {
                Some(buf_index) => opcode::WriteFixed::new(fd, ptr, len, buf_index)
                    .offset(file_pos)
                    .rw_flags(rw_flags)
                    .build(),
                None => opcode::Write::new(fd, ptr, len)
                    .offset(file_pos)
                    .rw_flags(rw_flags)
                    .build(),
            };
            let mut entry = write.user_data(Token::new(Owner::Journal, seq << 2 | count as u64).0);
            parts[count] = Some(Part {
                op: FaultOp::Write,
                expect: len as i32,
                segment: index,
                file_pos,
            });
            if !direct {
                entry = entry.flags(squeue::Flags::IO_LINK);
            }
            unpushed[count] = Some(entry);
            count += 1;
            if !direct {
                let sync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(Token::new(Owner::Journal, seq << 2 | count as u64).0);
                parts[count] = Some(Part {
                    op: FaultOp::Flush,
                    expect: 0,
                    segment: index,
                    file_pos,
                });
                unpushed[count] = Some(sync);
                count += 1;
            }
        }

        // The next batch starts in the block this one ends in; copy that
        // block's bytes (the carry) so the next write stays block-aligned.
        let (next_buf, next_slot) = self.free.take().expect("two batch buffers");
        let end = self.end;
        let base = Offset(end.get() / BLOCK_BYTES as u64 * BLOCK_BYTES as u64);
        let head = (end - base) as usize;
        let old = std::mem::replace(
            &mut self.filling,
            Batch {
                buf: next_buf,
                slot: next_slot,
                base,
                head,
                len: head,
                since: None,
                refused: false,
            },
        );
        let carry_at = (base - old.base) as usize;
        self.filling.buf[..head].copy_from_slice(&old.buf[carry_at..carry_at + head]);
        self.in_flight = Some(InFlight {
            buf: old.buf,
            slot: old.slot,
            end,
            seq,
            parts,
            pending: count,
            failure: None,
            lent: false,
            start: old.base + old.head as u64,
            head: old.head,
        });
        Ok(Some(SealedWrites(unpushed)))
    }

    /// The fixed-buffer index of the filling batch's buffer on `ring`,
    /// registering both batch buffers the first time this ring is seen.
    /// Call only with no batch in flight (both buffers at hand).
    fn fixed_index(&mut self, ring: &mut Ring) -> Option<u16> {
        let base = match self.fixed {
            Some((id, base)) if id == ring.id() => base,
            _ => {
                let (free, free_slot) = self.free.as_ref().expect("no batch in flight");
                let mut bufs = [&self.filling.buf, free];
                if *free_slot == 0 {
                    bufs.swap(0, 1);
                }
                // SAFETY: both buffers live as long as the journal, and the
                // journal only names their indices on this ring.
                let base = unsafe { ring.register_buffers(&bufs) };
                self.fixed = Some((ring.id(), base));
                base
            }
        };
        base.map(|base| base + self.filling.slot)
    }

    /// Takes a journal completion from the ring. Returns what changed once
    /// the whole batch has completed.
    pub fn complete(&mut self, completion: Completion) -> Option<JournalEvent> {
        assert_eq!(completion.token.owner(), Some(Owner::Journal));
        let id = completion.token.id();
        let in_flight = self
            .in_flight
            .as_mut()
            .expect("a journal completion needs a batch in flight");
        assert_eq!(id >> 2, in_flight.seq, "completion of an unknown batch");
        let part = in_flight.parts[(id & 3) as usize].expect("known part");
        let result = match &self.options.faults {
            Some(faults) => faults.filter(part.op, completion.result),
            None => completion.result,
        };
        if result != part.expect && in_flight.failure.is_none() {
            let path: &PathBuf = &self.files.get(part.segment).file.path;
            let what = match part.op {
                FaultOp::Write => "write",
                FaultOp::Flush => "fdatasync",
            };
            let detail = if result < 0 {
                std::io::Error::from_raw_os_error(-result).to_string()
            } else {
                format!("short write of {result} of {} bytes", part.expect)
            };
            in_flight.failure = Some(format!(
                "{what} of {} at position {} failed: {detail}",
                path.display(),
                part.file_pos
            ));
        }
        in_flight.pending -= 1;
        if in_flight.pending > 0 {
            return None;
        }
        let done = self.in_flight.take().expect("in flight");
        if done.lent {
            self.lent = Some((done.buf, done.slot));
        } else {
            self.free = Some((done.buf, done.slot));
        }
        match done.failure {
            Some(failure) => {
                // Never retried: after a failed fsync the page cache may have
                // dropped the data, so a later "successful" flush would lie.
                let cause: Arc<str> = Arc::from(failure);
                tracing::error!(dir = %self.files.dir().display(), cause = %cause, "journal poisoned");
                self.poison = Some(cause.clone());
                Some(JournalEvent::Poisoned(cause))
            }
            None => {
                self.durable = done.end;
                Some(JournalEvent::Durable(done.end))
            }
        }
    }

    /// Lends the new bytes of the batch being flushed (the replication
    /// stream sends them from this very buffer). `None` when no batch is in
    /// flight or it is already lent. The buffer stays put until
    /// `return_batch`, and no later batch is flushed before.
    pub fn lend_batch(&mut self) -> Option<LentBatch> {
        let in_flight = self.in_flight.as_mut()?;
        if in_flight.lent || self.lent.is_some() {
            return None;
        }
        in_flight.lent = true;
        Some(LentBatch {
            start: in_flight.start,
            end: in_flight.end,
            ptr: in_flight.buf[in_flight.head..].as_ptr(),
        })
    }

    /// The lent batch's second consumer is done with its bytes.
    pub fn return_batch(&mut self) {
        match (&mut self.in_flight, self.lent.take()) {
            (_, Some(buf)) => {
                assert!(self.free.is_none(), "two free buffers and a lent one");
                self.free = Some(buf);
            }
            (Some(in_flight), None) if in_flight.lent => in_flight.lent = false,
            _ => panic!("return_batch without a lent batch"),
        }
    }

    /// The log range of the batch being flushed, if any.
    pub fn in_flight_range(&self) -> Option<(Offset, Offset)> {
        self.in_flight.as_ref().map(|f| (f.start, f.end))
    }

    /// Whether a batch is lent out (`lend_batch` without `return_batch`).
    pub fn batch_lent(&self) -> bool {
        self.lent.is_some() || self.in_flight.as_ref().is_some_and(|f| f.lent)
    }

    /// Drives `ring` until every appended byte is durable (ignoring the
    /// linger). For tests, tools, start-up and shutdown: completions of
    /// other owners on the ring are dropped, and no batch may be lent.
    pub fn sync(&mut self, ring: &mut Ring) -> Result<Offset, JournalError> {
        assert!(!self.batch_lent(), "sync with a lent batch would never end");
        let mut completions = Vec::new();
        loop {
            self.check_poison()?;
            if self.durable == self.end && self.in_flight.is_none() {
                return Ok(self.durable);
            }
            if let Some(writes) = self.seal_now(ring)? {
                self.write_sealed(ring, writes)?;
            }
            ring.submit_and_wait(1)
                .map_err(JournalError::io("wait", self.files.dir()))?;
            completions.clear();
            ring.reap(&mut completions);
            for completion in completions.drain(..) {
                if completion.token.owner() == Some(Owner::Journal) {
                    self.complete(completion);
                }
            }
        }
    }

    /// Makes the filling batch due now (ignoring the linger): the next
    /// `submit` starts its flush.
    pub fn flush_soon(&mut self) {
        if self.filling.new_bytes() > 0 {
            self.filling.refused = true;
        }
    }

    /// Cuts the log back to `to` (a record boundary), for a replica whose
    /// history diverged. Later segments are deleted and the rest of the
    /// segment holding `to` is erased, so no cut record can resurface.
    pub fn truncate(&mut self, to: Offset) -> Result<(), JournalError> {
        self.check_poison()?;
        if self.in_flight.is_some() || self.durable != self.end {
            return Err(JournalError::Busy);
        }
        if to < self.start || to > self.end {
            return Err(JournalError::OutOfRange {
                offset: to.get(),
                start: self.start.get(),
                end: self.end.get(),
            });
        }
        if to == self.end {
            return Ok(());
        }
        self.check_boundary(to)?;
        let index = self.files.index_of(to).expect("offset inside the log");
        let erase_to = self.end.min(self.files.get(index).file.end());
        self.files.delete_after(index)?;
        self.files.erase(to, erase_to)?;
        self.files.sync_dir()?;
        self.epochs.truncate(to);
        self.end = to;
        self.durable = to;
        self.cut_raw_tail(to);
        self.reload_carry()
    }

    /// The log now ends at `end`, all of it durable.
    fn cut_raw_tail(&mut self, end: Offset) {
        if let Some(raw) = &mut self.raw_tail {
            raw.end = raw.end.min(end);
        }
    }

    /// Starts the log again, empty, at `at` (a segment boundary of the
    /// peer's log), for a replica too far behind to catch up by streaming:
    /// its segments are moved into `save_to`, or removed when `None` (the
    /// caller proved every byte of them settled elsewhere).
    pub fn restart_at(&mut self, at: Offset, save_to: Option<&Path>) -> Result<(), JournalError> {
        self.check_poison()?;
        if self.in_flight.is_some() || self.durable != self.end || self.lent.is_some() {
            return Err(JournalError::Busy);
        }
        if !at.get().is_multiple_of(self.options.segment_bytes) {
            return Err(JournalError::NotSegmentStart {
                offset: at.get(),
                segment_bytes: self.options.segment_bytes,
            });
        }
        self.files.clear(save_to)?;
        self.files.create_first(at)?;
        self.files.request_spares();
        self.epochs = EpochLog::new(at > Offset::ZERO);
        self.start = at;
        self.end = at;
        self.durable = at;
        self.cut_raw_tail(at);
        self.reload_carry()
    }

    /// Releases whole segments that end at or below `offset` (everything in
    /// them is settled). The segment holding the end is always kept.
    /// Released segments are recycled as spares or deleted.
    pub fn release_below(&mut self, offset: Offset) -> Result<(), JournalError> {
        let limit = offset.min(self.durable);
        let mut released = false;
        while self.files.len() > 1 && self.files.first().file.end() <= limit {
            self.files.release_first()?;
            released = true;
        }
        if released {
            self.files.sync_dir()?;
            self.start = self.files.first().file.start;
        }
        Ok(())
    }

    pub(crate) fn segments(&self) -> &SegmentDir {
        &self.files
    }
}
