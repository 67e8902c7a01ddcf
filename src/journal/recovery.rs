//! Recovery: scan a journal to its end and tell a torn tail from corruption.
//!
//! At most one batch write is in flight at any time, and a batch starts where
//! every earlier byte was already durable. A crash can therefore damage only
//! the last batch, and the damage (unwritten blocks, in any order) lies inside
//! it. So when the scan meets the first invalid record at offset H:
//! - it searches every later byte for records that are valid where they lie
//!   (magic, own offset, CRC);
//! - a valid record whose batch started after H (`offset - batch_back > H`)
//!   proves H lies in an earlier, completed batch: that is corruption, and the
//!   journal refuses to open (`corrupt journal: segment S, offset O`);
//! - otherwise every valid record after H belongs to the torn batch: the log
//!   ends at H, and those records are erased so they can never resurface
//!   behind later appends.
//!
//! A replica's journal (`append_raw`) holds the peer's records, whose
//! `batch_back` describes the peer's batches, not the replica's own writes:
//! one replica write may hold several peer batches, so a later peer batch
//! intact inside a torn replica write proves nothing. While the directory
//! says its newest writes may be a replica's (`RAW_TAIL`, with the most bytes
//! one spans, S), the proof is distance instead: the torn write began at or
//! before H and spans at most S bytes, so a valid record ending past `H + S`
//! was written before it, and H with it: corruption. A damaged record within
//! S bytes of a later intact one reads as a torn tail there; like the case
//! below, the peer's copy covers it.
//!
//! A record with a valid CRC but impossible content (an epoch going back, a
//! padding record that stops short of the segment end) is corruption too: a
//! torn write cannot produce a valid checksum.
//!
//! Limitation, shared with every log that has no redundant copy on the same
//! node: damage inside the very last batch with nothing written after it looks
//! exactly like a torn write. Replication (the peer's copy) covers that case.

use super::JournalError;
use super::epochs::EpochLog;
use super::record::{self, HEADER_BYTES, Header, Invalid, MAGIC, RecordKind};
use super::segments::SegmentFile;
use crate::ids::Offset;

/// What a scan found.
#[derive(Debug, Clone)]
pub struct Scan {
    /// First offset of the retained log.
    pub start: Offset,
    /// Offset just past the last valid record.
    pub end: Offset,
    /// Index of the segment holding `end` (or ending at it).
    pub end_segment: usize,
    /// Records found, padding excluded.
    pub records: u64,
    /// Epoch history of the valid records.
    pub epochs: EpochLog,
    /// A partially written last batch, if there was one.
    pub torn: Option<TornTail>,
}

/// A torn last batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Where the first damaged record begins; the log is cut here.
    pub at: Offset,
    /// Why the record at `at` is not valid.
    pub reason: String,
    /// End of the furthest intact record of the torn batch; `[at, erase_to)`
    /// must be erased before new appends.
    pub erase_to: Offset,
}

fn corrupt(file: &SegmentFile, offset: Offset, reason: String) -> JournalError {
    JournalError::Corrupt {
        segment: file.name(),
        offset: offset.get(),
        reason,
    }
}

/// Each record the scan accepts, in log order (padding excluded): its
/// header and payload. A visitor's error ends the scan with that error.
pub type Visit<'v> = dyn FnMut(&Header, &[u8]) -> Result<(), JournalError> + 'v;

/// Scans `files` (contiguous, oldest first, at least one), showing every
/// record that is part of the recovered log to `visit` as it goes (a torn
/// tail is never shown; on corruption the scan fails after showing what
/// lay before it). `raw_span`: the newest writes may be a replica's, each
/// at most this many bytes.
pub fn scan(
    files: &[&SegmentFile],
    raw_span: Option<u64>,
    visit: &mut Visit<'_>,
) -> Result<Scan, JournalError> {
    assert!(!files.is_empty(), "scan needs a segment");
    let start = files[0].start;
    let mut epochs = EpochLog::new(start > Offset::ZERO);
    let mut records = 0;
    let mut data = Vec::new();
    for (index, file) in files.iter().enumerate() {
        file.read_all(&mut data)?;
        let mut pos = 0;
        while data.len() - pos >= HEADER_BYTES {
            let at = file.start + pos as u64;
            let payload_max = (data.len() - pos - HEADER_BYTES) as u32;
            match record::check(&data[pos..], at, payload_max) {
                Ok(header) => {
                    if header.kind == RecordKind::Padding && header.end() != file.end() {
                        let reason = "padding record stops short of the segment end".to_string();
                        return Err(corrupt(file, at, reason));
                    }
                    epochs
                        .accept(&header)
                        .map_err(|violation| corrupt(file, at, violation.to_string()))?;
                    if header.kind != RecordKind::Padding {
                        records += 1;
                        visit(
                            &header,
                            &data[pos + HEADER_BYTES..pos + header.record_bytes()],
                        )?;
                    }
                    pos += header.record_bytes();
                }
                Err(invalid) => {
                    let torn = classify(files, index, pos, &mut data, invalid, raw_span)?;
                    return Ok(Scan {
                        start,
                        end: at,
                        end_segment: index,
                        records,
                        epochs,
                        torn,
                    });
                }
            }
        }
    }
    let last = files.len() - 1;
    Ok(Scan {
        start,
        end: files[last].end(),
        end_segment: last,
        records,
        epochs,
        torn: None,
    })
}

/// Decides whether the invalid record at `pos` of `files[index]` (whose bytes
/// are in `data`) is a torn tail or corruption.
fn classify(
    files: &[&SegmentFile],
    index: usize,
    pos: usize,
    data: &mut Vec<u8>,
    invalid: Invalid,
    raw_span: Option<u64>,
) -> Result<Option<TornTail>, JournalError> {
    let file = files[index];
    let hole = file.start + pos as u64;
    let mut erase_to = hole;
    // The magic sits 4 bytes into a header; a SIMD substring search skips
    // the (usually zero-filled) rest of a segment quickly.
    let magic = MAGIC.to_le_bytes();
    let finder = memchr::memmem::Finder::new(&magic);
    for (later_index, later) in files.iter().enumerate().skip(index) {
        let mut q = if later_index == index {
            pos + 1
        } else {
            later.read_all(data)?;
            0
        };
        while q + HEADER_BYTES <= data.len() {
            let Some(found) = finder.find(&data[q + 4..]) else {
                break;
            };
            q += found;
            if q + HEADER_BYTES > data.len() {
                break;
            }
            let payload_max = (data.len() - q - HEADER_BYTES) as u32;
            if let Ok(header) = record::check(&data[q..], later.start + q as u64, payload_max) {
                let written_before = match raw_span {
                    Some(span) => header.end() > hole + span,
                    None => header.batch_start() > hole,
                };
                if written_before {
                    let reason = format!(
                        "{invalid}, yet a later write is intact at offset {}",
                        header.offset
                    );
                    return Err(corrupt(file, hole, reason));
                }
                erase_to = erase_to.max(header.end());
                q += header.record_bytes();
                continue;
            }
            q += 1;
        }
    }
    // Zeros or a stale header from a recycled segment mark a clean end.
    let clean_end =
        erase_to == hole && matches!(invalid, Invalid::BadMagic | Invalid::OffsetMismatch(_));
    Ok((!clean_end).then(|| TornTail {
        at: hole,
        reason: invalid.to_string(),
        erase_to,
    }))
}
