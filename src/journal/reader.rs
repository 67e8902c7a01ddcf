//! Reading the durable log: raw byte ranges (for replication and catch-up)
//! and records one by one (for rebuilding state and delivering bodies).
//!
//! Reads use plain positional reads through the page cache on separate
//! read-only handles, except catch-up, which plans reads for the shard's
//! ring on the write handles (direct I/O when the journal writes direct).
//! They only ever cover durable bytes.

use super::JournalError;
use super::record::{self, HEADER_BYTES, Header, RecordKind};
use super::writer::Journal;
use crate::constants::{BLOCK_BYTES, READ_CHUNK_BYTES};
use crate::ids::Offset;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

impl Journal {
    /// Copies durable log bytes starting at `from` into `dst`; returns how
    /// many (fewer than `dst.len()` only at the durable end). The bytes are
    /// exactly what `append_raw` on a peer expects.
    pub fn read_raw(&self, from: Offset, dst: &mut [u8]) -> Result<usize, JournalError> {
        if from < self.start_offset() || from > self.durable_offset() {
            return Err(JournalError::OutOfRange {
                offset: from.get(),
                start: self.start_offset().get(),
                end: self.durable_offset().get(),
            });
        }
        let want = dst.len().min((self.durable_offset() - from) as usize);
        let mut done = 0;
        while done < want {
            let at = from + done as u64;
            let index = self
                .segments()
                .index_of(at)
                .expect("durable bytes lie in a segment");
            let file = &self.segments().get(index).file;
            let n = (want - done).min((file.end() - at) as usize);
            file.read
                .read_exact_at(&mut dst[done..done + n], at - file.start)
                .map_err(JournalError::io("read", &file.path))?;
            done += n;
        }
        Ok(done)
    }

    /// Plans a read of durable bytes from `from` (at most `max`, within one
    /// segment) for the ring, through the segment's write handle: with
    /// `O_DIRECT` when the journal writes direct, the read skips the page
    /// cache and lands by DMA, so the position and length are whole blocks.
    /// The caller keeps the journal from releasing the segment (the read
    /// lies above the replication cursor) until the read completes.
    ///
    /// The last block may be one the journal is rewriting at that moment
    /// (a batch rewrites the partial block it starts in): its bytes below
    /// the durable end are the same in the old and the new contents, so the
    /// read sees them either way; the bytes past it are not used.
    pub fn plan_read(&self, from: Offset, max: usize) -> Result<ReadPlan, JournalError> {
        if from < self.start_offset() || from >= self.durable_offset() {
            return Err(JournalError::OutOfRange {
                offset: from.get(),
                start: self.start_offset().get(),
                end: self.durable_offset().get(),
            });
        }
        let index = self
            .segments()
            .index_of(from)
            .expect("durable bytes lie in a segment");
        let segment = self.segments().get(index);
        let at = from - segment.file.start;
        let bytes = (max as u64)
            .min(segment.file.end() - from)
            .min(self.durable_offset() - from) as usize;
        let pos = at - at % BLOCK_BYTES as u64;
        let skip = (at - pos) as usize;
        Ok(ReadPlan {
            fd: segment.write.as_raw_fd(),
            pos,
            len: (skip + bytes).next_multiple_of(BLOCK_BYTES),
            skip,
            bytes,
        })
    }

    /// Fails unless a valid record starts at `offset`.
    pub(crate) fn check_boundary(&self, offset: Offset) -> Result<(), JournalError> {
        let mut header = [0u8; HEADER_BYTES];
        let n = self.read_raw(offset, &mut header)?;
        record::parse_header(&header[..n], offset, u32::MAX)
            .map(|_| ())
            .map_err(|_| JournalError::NotRecordBoundary(offset.get()))
    }
}

/// A read of durable log bytes for the ring ([`Journal::plan_read`]): `len`
/// bytes at `pos` of `fd`, of which `bytes` log bytes from the planned
/// offset start `skip` bytes in. `pos`, `len` and `skip + bytes` fit the
/// segment file, whose size is whole blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    pub fd: RawFd,
    pub pos: u64,
    pub len: usize,
    pub skip: usize,
    pub bytes: usize,
}

/// One record read back from the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub header: Header,
    pub payload: &'a [u8],
}

/// Walks the durable records from an offset, skipping padding. It borrows
/// the journal only per call, so the owner can keep appending in between.
#[derive(Debug)]
pub struct RecordReader {
    next: Offset,
    buf: Vec<u8>,
    /// Log offset of `buf[0]`.
    buf_at: Offset,
    /// Whether `next` has been checked to be a record boundary.
    checked: bool,
}

impl RecordReader {
    /// A reader whose first record starts at `from` (a record boundary).
    pub fn new(from: Offset) -> RecordReader {
        RecordReader {
            next: from,
            buf: Vec::new(),
            buf_at: from,
            checked: false,
        }
    }

    /// Offset of the next record to read.
    pub fn position(&self) -> Offset {
        self.next
    }

    /// Makes `[self.next, self.next + len)` available in `buf`, or returns
    /// false when fewer durable bytes exist.
    fn fill(&mut self, journal: &Journal, len: usize) -> Result<bool, JournalError> {
        let have_from = self.buf_at;
        let have_to = self.buf_at + self.buf.len() as u64;
        if self.next >= have_from && self.next + len as u64 <= have_to {
            return Ok(true);
        }
        let want = len.max(READ_CHUNK_BYTES);
        self.buf.resize(want, 0);
        let n = journal.read_raw(self.next, &mut self.buf)?;
        self.buf.truncate(n);
        self.buf_at = self.next;
        Ok(n >= len)
    }

    /// The next durable record, or `None` at the durable end.
    pub fn next_record<'a>(
        &'a mut self,
        journal: &Journal,
    ) -> Result<Option<Record<'a>>, JournalError> {
        loop {
            if self.next >= journal.durable_offset() {
                return Ok(None);
            }
            let index = journal
                .segments()
                .index_of(self.next)
                .ok_or(JournalError::OutOfRange {
                    offset: self.next.get(),
                    start: journal.start_offset().get(),
                    end: journal.durable_offset().get(),
                })?;
            let file = &journal.segments().get(index).file;
            let remaining = (file.end() - self.next) as usize;
            if remaining < HEADER_BYTES {
                self.next = file.end();
                continue;
            }
            if !self.fill(journal, HEADER_BYTES)? {
                return Ok(None);
            }
            let at = (self.next - self.buf_at) as usize;
            let payload_max = (remaining - HEADER_BYTES) as u32;
            let header = match record::parse_header(&self.buf[at..], self.next, payload_max) {
                Ok(header) => header,
                Err(invalid) if !self.checked => {
                    let _ = invalid;
                    return Err(JournalError::NotRecordBoundary(self.next.get()));
                }
                Err(invalid) => return Err(corrupt(journal, self.next, invalid.to_string())),
            };
            self.checked = true;
            let total = header.record_bytes();
            if !self.fill(journal, total)? {
                return Ok(None);
            }
            let at = (self.next - self.buf_at) as usize;
            record::check(&self.buf[at..], self.next, payload_max)
                .map_err(|invalid| corrupt(journal, self.next, invalid.to_string()))?;
            self.next = header.end();
            if header.kind == RecordKind::Padding {
                continue;
            }
            return Ok(Some(Record {
                header,
                payload: &self.buf[at + HEADER_BYTES..at + total],
            }));
        }
    }
}

fn corrupt(journal: &Journal, offset: Offset, reason: String) -> JournalError {
    let segment = journal
        .segments()
        .index_of(offset)
        .map(|i| journal.segments().get(i).file.name())
        .unwrap_or_default();
    JournalError::Corrupt {
        segment,
        offset: offset.get(),
        reason,
    }
}
