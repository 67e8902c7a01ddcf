//! Catch-up read-back: the durable log read for a catching-up passive by
//! reads on the shard's ring (direct I/O when the journal writes direct),
//! several in flight, and cut into data frames of whole records in order.
//!
//! A read covers a fixed byte range, so a record may straddle two reads:
//! completed reads are appended in order to the frame being built, which
//! goes out once the next read would overflow a frame; the partial record
//! at its end starts the next frame. The shard thread never blocks on the
//! disk, and the device sees a queue of large reads rather than one
//! synchronous read (or a page-cache readahead) at a time.

use crate::constants::BLOCK_BYTES;
use crate::ids::{Epoch, Offset};
use crate::io::{AlignedBuf, Ring};
use crate::journal::Journal;
use crate::journal::record::whole_records;
use crate::replication::wire::{self, HEADER_BYTES};
use io_uring::{opcode, types};
use std::collections::VecDeque;

/// Reads in flight (or completed and not yet framed) per catching-up
/// stream.
pub const READS_MAX: usize = 4;

/// One read's buffer and what it holds.
struct Slot {
    buf: AlignedBuf,
    /// The log offset of the first wanted byte (`skip` bytes into `buf`).
    from: Offset,
    skip: usize,
    /// Wanted log bytes.
    bytes: usize,
    /// The kernel's result, once completed; a slot in `order` without one
    /// is with the kernel.
    result: Option<i32>,
}

/// A data frame cut from the read-back log.
pub struct CatchUpFrame {
    /// Header and records, ready to send.
    pub bytes: Vec<u8>,
    /// Where its records end.
    pub end: Offset,
    pub records: u64,
}

/// The read-back state of one catching-up stream.
pub struct ReadBack {
    slots: Vec<Slot>,
    /// Slots with a read issued and not yet framed, oldest first.
    order: VecDeque<usize>,
    /// Where the next read starts.
    issued_to: Offset,
    /// Where the frame being built starts (everything before went out).
    framed_to: Offset,
    /// The frame being built: header room, then log bytes from `framed_to`.
    frame: Vec<u8>,
    read_bytes: usize,
    frame_bytes: usize,
    segment_bytes: u64,
}

impl std::fmt::Debug for ReadBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBack")
            .field("issued_to", &self.issued_to)
            .field("framed_to", &self.framed_to)
            .field("reads", &self.order.len())
            .finish()
    }
}

impl ReadBack {
    /// Reads back from `from` in reads of a quarter frame, so a frame takes
    /// at least three reads beside a partial record (a record is at most
    /// half a frame: one batch cap).
    pub fn new(from: Offset, frame_bytes: usize, segment_bytes: u64) -> ReadBack {
        let read_bytes = (frame_bytes / 4).next_multiple_of(BLOCK_BYTES);
        ReadBack {
            slots: (0..READS_MAX)
                .map(|_| Slot {
                    buf: AlignedBuf::zeroed(read_bytes + 2 * BLOCK_BYTES),
                    from,
                    skip: 0,
                    bytes: 0,
                    result: None,
                })
                .collect(),
            order: VecDeque::new(),
            issued_to: from,
            framed_to: from,
            frame: header_room(frame_bytes),
            read_bytes,
            frame_bytes,
            segment_bytes,
        }
    }

    /// Where the next frame starts: everything before has been framed.
    pub fn cursor(&self) -> Offset {
        self.framed_to
    }

    /// Nothing read is left unframed and no read is outstanding: the
    /// stream has sent everything up to [`ReadBack::cursor`].
    pub fn drained(&self) -> bool {
        self.order.is_empty() && self.frame.len() == HEADER_BYTES
    }

    /// Some read is still with the kernel (its buffer must outlive it).
    pub fn in_flight(&self) -> bool {
        self.order.iter().any(|&i| self.slots[i].result.is_none())
    }

    /// Issues reads into free slots, up to the journal's durable end. Each
    /// completion comes back with the token `token(slot)`.
    pub fn issue(
        &mut self,
        ring: &mut Ring,
        journal: &Journal,
        token: impl Fn(usize) -> u64,
    ) -> Result<(), String> {
        while self.issued_to < journal.durable_offset() && self.order.len() < READS_MAX {
            let index = (0..READS_MAX)
                .find(|i| !self.order.contains(i))
                .expect("a free slot");
            let plan = journal
                .plan_read(self.issued_to, self.read_bytes)
                .map_err(|e| e.to_string())?;
            let slot = &mut self.slots[index];
            assert!(plan.len <= slot.buf.len(), "a read fits its slot");
            slot.from = self.issued_to;
            slot.skip = plan.skip;
            slot.bytes = plan.bytes;
            slot.result = None;
            let entry =
                opcode::Read::new(types::Fd(plan.fd), slot.buf.as_mut_ptr(), plan.len as u32)
                    .offset(plan.pos)
                    .build()
                    .user_data(token(index));
            // SAFETY: the slot's buffer is neither freed nor reused while
            // the read is in flight: the read-back is kept (by the stream,
            // or among closing streams) until its completion is reaped. The
            // descriptor is the segment's, which the journal retains above
            // the replication cursor; the kernel holds its own reference
            // to the file once the read is submitted.
            unsafe { ring.push(&entry) }.map_err(|e| format!("queue a read: {e}"))?;
            self.order.push_back(index);
            self.issued_to = self.issued_to + plan.bytes as u64;
        }
        Ok(())
    }

    /// The read of `slot` completed with `result` (bytes or `-errno`).
    pub fn completed(&mut self, slot: usize, result: i32) {
        self.slots[slot].result = Some(result);
    }

    /// The next frame, once enough reads have completed in order: when the
    /// next read would overflow the frame, or when nothing more is being
    /// read. `None` means wait for more completions (or more issued reads).
    pub fn next_frame(&mut self, epoch: Epoch) -> Result<Option<CatchUpFrame>, String> {
        while let Some(&index) = self.order.front() {
            let slot = &self.slots[index];
            let Some(result) = slot.result else {
                return Ok(None);
            };
            if result < 0 {
                return Err(format!(
                    "catch-up read at offset {}: {}",
                    slot.from.get(),
                    std::io::Error::from_raw_os_error(-result)
                ));
            }
            if (result as usize) < slot.skip + slot.bytes {
                return Err(format!(
                    "catch-up read at offset {}: {result} bytes, wanted {}",
                    slot.from.get(),
                    slot.skip + slot.bytes
                ));
            }
            let held = self.frame.len() - HEADER_BYTES;
            if held + slot.bytes > self.frame_bytes {
                break;
            }
            assert_eq!(
                self.framed_to + held as u64,
                slot.from,
                "reads are framed in order"
            );
            self.frame
                .extend_from_slice(&slot.buf[slot.skip..slot.skip + slot.bytes]);
            self.order.pop_front();
        }
        let body = &self.frame[HEADER_BYTES..];
        let (whole, records) = whole_records(body, self.framed_to, self.segment_bytes);
        if whole == 0 {
            // A frame holds at least one record: only a partial one so far.
            return match body.len() + self.read_bytes > self.frame_bytes {
                true => Err(format!(
                    "catch-up at offset {}: no whole record in {} bytes",
                    self.framed_to.get(),
                    body.len()
                )),
                false => Ok(None),
            };
        }
        let mut rest = header_room(self.frame_bytes);
        rest.extend_from_slice(&self.frame[HEADER_BYTES + whole..]);
        let mut bytes = std::mem::replace(&mut self.frame, rest);
        bytes.truncate(HEADER_BYTES + whole);
        bytes[..HEADER_BYTES].copy_from_slice(&wire::data_header(self.framed_to, epoch, whole));
        self.framed_to = self.framed_to + whole as u64;
        Ok(Some(CatchUpFrame {
            bytes,
            end: self.framed_to,
            records,
        }))
    }
}

/// An empty frame: room for the header, capacity for a whole frame.
fn header_room(frame_bytes: usize) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_BYTES + frame_bytes);
    frame.resize(HEADER_BYTES, 0);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Durability, JournalError, JournalOptions, RecordKind};
    use crate::replication::wire::Frame;

    const SEGMENT: u64 = 64 * 1024;
    const BATCH: usize = 16 * 1024;

    /// A journal of records of many sizes (up to a whole batch cap, so
    /// records straddle reads, frames and segment ends), written in
    /// batches; returns it with each record's offset.
    fn journal(dir: &std::path::Path, ring: &mut Ring) -> (Journal, Vec<Offset>) {
        let options = JournalOptions {
            segment_bytes: SEGMENT,
            batch_bytes_max: BATCH,
            durability: Durability::DirectDsync,
            spare_segments: 1,
            ..JournalOptions::default()
        };
        let mut journal = Journal::open(dir, options).unwrap();
        let mut offsets = vec![
            journal
                .append(RecordKind::EpochStart, Epoch(1), b"")
                .unwrap(),
        ];
        for i in 0..400usize {
            let len = (i * 7919) % (BATCH - 32) + i % 3;
            let payload = vec![i as u8; len];
            let offset = match journal.append(RecordKind::Opaque, Epoch(1), &payload) {
                Err(JournalError::Full) => {
                    journal.sync(ring).unwrap();
                    journal.append(RecordKind::Opaque, Epoch(1), &payload)
                }
                other => other,
            };
            offsets.push(offset.unwrap());
        }
        journal.sync(ring).unwrap();
        (journal, offsets)
    }

    #[test]
    fn reads_back_every_durable_byte_in_frames_of_whole_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Ring::new(16).unwrap();
        let (journal, offsets) = journal(dir.path(), &mut ring);
        let durable = journal.durable_offset();
        assert!(durable.get() > 20 * SEGMENT, "many segments");
        // From a record that is not block-aligned.
        let from = *offsets
            .iter()
            .find(|o| o.get() % BLOCK_BYTES as u64 != 0 && o.get() > SEGMENT)
            .unwrap();
        let frame_bytes = 2 * BATCH;
        let mut readback = ReadBack::new(from, frame_bytes, SEGMENT);
        let mut sent = Vec::new();
        let mut next = from;
        let mut completions = Vec::new();
        while !(readback.cursor() == durable && readback.drained()) {
            readback
                .issue(&mut ring, &journal, |slot| slot as u64)
                .unwrap();
            assert!(readback.in_flight(), "reads are outstanding until the end");
            ring.submit_and_wait(1).unwrap();
            completions.clear();
            ring.reap(&mut completions);
            for c in &completions {
                readback.completed(c.token.0 as usize, c.result);
            }
            while let Some(frame) = readback.next_frame(Epoch(3)).unwrap() {
                let Ok(Some((
                    Frame::Data {
                        offset,
                        epoch,
                        records,
                    },
                    used,
                ))) = wire::decode(&frame.bytes, crate::journal::batch_capacity(BATCH))
                else {
                    panic!("a data frame");
                };
                assert_eq!(used, frame.bytes.len());
                assert_eq!((offset, epoch), (next, Epoch(3)));
                assert!(records.len() <= frame_bytes, "a frame fits a batch buffer");
                let (whole, count) = whole_records(records, offset, SEGMENT);
                assert_eq!((whole, count), (records.len(), frame.records));
                next = next + records.len() as u64;
                assert_eq!(frame.end, next);
                sent.extend_from_slice(records);
            }
        }
        assert!(!readback.in_flight());
        let mut expected = vec![0; (durable - from) as usize];
        assert_eq!(
            journal.read_raw(from, &mut expected).unwrap(),
            expected.len()
        );
        assert!(sent == expected, "the frames carry the log byte for byte");
    }

    #[test]
    fn a_failed_read_is_an_error_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = Ring::new(16).unwrap();
        let (journal, _) = journal(dir.path(), &mut ring);
        let mut readback = ReadBack::new(Offset::ZERO, 2 * BATCH, SEGMENT);
        readback
            .issue(&mut ring, &journal, |slot| slot as u64)
            .unwrap();
        ring.submit_and_wait(READS_MAX).unwrap();
        let mut completions = Vec::new();
        ring.reap(&mut completions);
        readback.completed(0, -libc::EIO);
        let error = readback.next_frame(Epoch(1)).err().unwrap();
        assert!(
            error.contains("offset 0") && error.contains("Input/output"),
            "{error}"
        );
    }
}
