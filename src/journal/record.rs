//! The record format: a 32-byte header followed by the payload.
//!
//! ```text
//!  0      4      6  7  8          12           16               24               32
//!  +------+------+--+--+----------+------------+----------------+----------------+---------
//!  | crc  |magic |v |k | len      | batch_back | offset         | epoch          | payload
//!  +------+------+--+--+----------+------------+----------------+----------------+---------
//! ```
//! All integers are little-endian.
//! - `crc`: CRC32C of bytes 4..32+len (everything after the CRC field).
//! - `magic`: `MAGIC`; `v`: `VERSION`; `k`: the `RecordKind`.
//! - `len`: payload length in bytes.
//! - `batch_back`: distance in bytes from the first byte of the group-commit
//!   batch this record was written in to this record. Recovery uses it to
//!   tell a torn last batch (truncate) from damage before a later batch
//!   (corruption): see `recovery`.
//! - `offset`: the record's own position in the logical log. A header whose
//!   offset does not match where it lies is not a record (this is what makes
//!   recycled segments and stale bytes harmless).
//! - `epoch`: the epoch the record was written in.

use crate::constants::RECORD_HEADER_BYTES;
use crate::ids::{Epoch, Offset};

/// First bytes of every header after the CRC: "TJ".
pub const MAGIC: u16 = u16::from_le_bytes(*b"TJ");
/// Format version of this header layout.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_BYTES: usize = RECORD_HEADER_BYTES;

/// What a record holds. Values are part of the on-disk format: never reuse
/// one. Zero is never a kind, so zero-filled space never parses as a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum RecordKind {
    /// Fills the rest of a segment when the next record does not fit.
    Padding = 1,
    /// First record of an epoch; its offset is where the epoch starts.
    EpochStart = 2,
    /// A payload the journal does not interpret.
    Opaque = 3,
    /// A message stored on a destination (broker::records::MessageRecord).
    Message = 4,
    /// A message settled (acknowledged, expired, dead-lettered) on a queue
    /// or durable subscription.
    Settle = 5,
    /// A destination created.
    DestinationCreate = 6,
    /// A destination deleted, with everything on it.
    DestinationDelete = 7,
    /// A durable topic subscription created.
    SubscriptionCreate = 8,
    /// A durable topic subscription removed.
    SubscriptionDelete = 9,
    /// A producer's last sequence on this shard, carried forward so that
    /// duplicate detection outlives the segments of its messages.
    ProducerCheckpoint = 10,
}

impl RecordKind {
    pub fn from_u8(value: u8) -> Option<RecordKind> {
        Some(match value {
            1 => RecordKind::Padding,
            2 => RecordKind::EpochStart,
            3 => RecordKind::Opaque,
            4 => RecordKind::Message,
            5 => RecordKind::Settle,
            6 => RecordKind::DestinationCreate,
            7 => RecordKind::DestinationDelete,
            8 => RecordKind::SubscriptionCreate,
            9 => RecordKind::SubscriptionDelete,
            10 => RecordKind::ProducerCheckpoint,
            _ => return None,
        })
    }
}

/// A decoded, verified header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: RecordKind,
    pub len: u32,
    pub batch_back: u32,
    pub offset: Offset,
    pub epoch: Epoch,
}

impl Header {
    /// Total size of the record on disk.
    pub fn record_bytes(&self) -> usize {
        HEADER_BYTES + self.len as usize
    }

    /// Offset of the first byte of the batch this record was written in.
    pub fn batch_start(&self) -> Offset {
        Offset(self.offset.get().saturating_sub(u64::from(self.batch_back)))
    }

    /// Offset just past this record.
    pub fn end(&self) -> Offset {
        self.offset + self.record_bytes() as u64
    }
}

/// Why bytes at a position are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes than a header, or than the header's length, are available.
    Truncated,
    /// The magic number is wrong (zero-filled space lands here).
    BadMagic,
    /// Unknown format version.
    BadVersion(u8),
    /// Unknown record kind.
    BadKind(u8),
    /// The payload length exceeds the limit the caller allows.
    TooLong(u32),
    /// The header names another offset than the one it lies at.
    OffsetMismatch(u64),
    /// The checksum does not match the bytes.
    BadChecksum,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Truncated => write!(f, "record cut short"),
            Invalid::BadMagic => write!(f, "no record header (bad magic)"),
            Invalid::BadVersion(v) => write!(f, "unknown record version {v}"),
            Invalid::BadKind(k) => write!(f, "unknown record kind {k}"),
            Invalid::TooLong(len) => write!(f, "impossible record length {len}"),
            Invalid::OffsetMismatch(o) => write!(f, "header names offset {o}"),
            Invalid::BadChecksum => write!(f, "checksum mismatch"),
        }
    }
}

/// Writes a complete record (header, payload, CRC) into `dst`, which must be
/// exactly `HEADER_BYTES + payload.len()` long.
pub fn encode(
    dst: &mut [u8],
    kind: RecordKind,
    batch_back: u32,
    offset: Offset,
    epoch: Epoch,
    payload: &[u8],
) {
    assert_eq!(dst.len(), HEADER_BYTES + payload.len());
    dst[HEADER_BYTES..].copy_from_slice(payload);
    seal(dst, kind, batch_back, offset, epoch);
}

/// Writes a padding record covering all of `dst` (at least a header).
pub fn encode_padding(dst: &mut [u8], batch_back: u32, offset: Offset, epoch: Epoch) {
    assert!(dst.len() >= HEADER_BYTES);
    dst[HEADER_BYTES..].fill(0);
    seal(dst, RecordKind::Padding, batch_back, offset, epoch);
}

/// Fills in the header of the record occupying all of `dst` (payload already
/// in place) and computes its CRC.
fn seal(dst: &mut [u8], kind: RecordKind, batch_back: u32, offset: Offset, epoch: Epoch) {
    let len = u32::try_from(dst.len() - HEADER_BYTES).expect("payload length fits u32");
    dst[4..6].copy_from_slice(&MAGIC.to_le_bytes());
    dst[6] = VERSION;
    dst[7] = kind as u8;
    dst[8..12].copy_from_slice(&len.to_le_bytes());
    dst[12..16].copy_from_slice(&batch_back.to_le_bytes());
    dst[16..24].copy_from_slice(&offset.get().to_le_bytes());
    dst[24..32].copy_from_slice(&epoch.get().to_le_bytes());
    let crc = crc32c::crc32c(&dst[4..]);
    dst[0..4].copy_from_slice(&crc.to_le_bytes());
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses the header at the start of `bytes` without checking the CRC.
/// `expected` is the logical offset of `bytes[0]`; `payload_max` bounds `len`.
pub fn parse_header(bytes: &[u8], expected: Offset, payload_max: u32) -> Result<Header, Invalid> {
    if bytes.len() < HEADER_BYTES {
        return Err(Invalid::Truncated);
    }
    if u16::from_le_bytes([bytes[4], bytes[5]]) != MAGIC {
        return Err(Invalid::BadMagic);
    }
    if bytes[6] != VERSION {
        return Err(Invalid::BadVersion(bytes[6]));
    }
    let kind = RecordKind::from_u8(bytes[7]).ok_or(Invalid::BadKind(bytes[7]))?;
    let len = u32_at(bytes, 8);
    if len > payload_max {
        return Err(Invalid::TooLong(len));
    }
    let offset = u64_at(bytes, 16);
    if offset != expected.get() {
        return Err(Invalid::OffsetMismatch(offset));
    }
    Ok(Header {
        kind,
        len,
        batch_back: u32_at(bytes, 12),
        offset: Offset(offset),
        epoch: Epoch(u64_at(bytes, 24)),
    })
}

/// Parses and verifies the record at the start of `bytes`: header fields,
/// offset and CRC over the whole record.
pub fn check(bytes: &[u8], expected: Offset, payload_max: u32) -> Result<Header, Invalid> {
    let header = parse_header(bytes, expected, payload_max)?;
    let total = header.record_bytes();
    if bytes.len() < total {
        return Err(Invalid::Truncated);
    }
    if crc32c::crc32c(&bytes[4..total]) != u32_at(bytes, 0) {
        return Err(Invalid::BadChecksum);
    }
    Ok(header)
}

/// Walks the records at the start of `bytes` (a stretch of a log laid out
/// in `segment_bytes` segments, starting at offset `at` on a record
/// boundary), calling `f(position, length, is_record)` for each whole
/// record and each run of zeros that ends a segment with less than a header
/// left. Returns where the whole ones end. Reads lengths only; checking is
/// the receiver's job.
pub fn walk(
    bytes: &[u8],
    at: Offset,
    segment_bytes: u64,
    mut f: impl FnMut(usize, usize, bool),
) -> usize {
    let mut pos = 0;
    loop {
        let offset = at.get() + pos as u64;
        let to_segment_end = (segment_bytes - offset % segment_bytes) as usize;
        let rest = &bytes[pos..];
        if to_segment_end < HEADER_BYTES {
            if rest.len() < to_segment_end {
                return pos;
            }
            f(pos, to_segment_end, false);
            pos += to_segment_end;
            continue;
        }
        if rest.len() < HEADER_BYTES {
            return pos;
        }
        let total = HEADER_BYTES + u32_at(rest, 8) as usize;
        if total > to_segment_end || rest.len() < total {
            return pos;
        }
        f(pos, total, true);
        pos += total;
    }
}

/// Length of the longest prefix of whole records (see [`walk`]) and how
/// many records (padding included) it holds.
pub fn whole_records(bytes: &[u8], at: Offset, segment_bytes: u64) -> (usize, u64) {
    let mut count = 0;
    let end = walk(bytes, at, segment_bytes, |_, _, record| {
        count += u64::from(record)
    });
    (end, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_records_stops_at_the_first_partial_record_and_crosses_zero_tails() {
        let mut log = Vec::new();
        for (i, len) in [10usize, 0, 20].into_iter().enumerate() {
            let mut rec = vec![0; HEADER_BYTES + len];
            encode(
                &mut rec,
                RecordKind::Opaque,
                0,
                Offset(log.len() as u64),
                Epoch(1),
                &vec![i as u8; len],
            );
            log.extend_from_slice(&rec);
        }
        let records_end = log.len();
        // A segment that ends 8 bytes later: too little for a header, zeros.
        let segment = records_end as u64 + 8;
        log.extend_from_slice(&[0; 8]);
        let mut next = vec![0; HEADER_BYTES + 4];
        encode(
            &mut next,
            RecordKind::Opaque,
            0,
            Offset(segment),
            Epoch(1),
            b"abcd",
        );
        log.extend_from_slice(&next);
        let segment_bytes = segment;
        let whole = |bytes: &[u8]| whole_records(bytes, Offset::ZERO, segment_bytes);
        assert_eq!(whole(&log), (log.len(), 4));
        assert_eq!(whole(&log[..log.len() - 1]), (segment as usize, 3));
        assert_eq!(whole(&log[..records_end + 3]), (records_end, 3));
        assert_eq!(whole(&log[..HEADER_BYTES + 9]), (0, 0));
        assert_eq!(whole(&[]), (0, 0));
    }

    fn record(payload: &[u8], offset: u64) -> Vec<u8> {
        let mut buf = vec![0; HEADER_BYTES + payload.len()];
        encode(
            &mut buf,
            RecordKind::Opaque,
            7,
            Offset(offset),
            Epoch(3),
            payload,
        );
        buf
    }

    #[test]
    fn encoded_record_checks_and_round_trips_fields() {
        let buf = record(b"hello", 4096);
        let header = check(&buf, Offset(4096), 1 << 20).unwrap();
        assert_eq!(header.kind, RecordKind::Opaque);
        assert_eq!(header.len, 5);
        assert_eq!(header.batch_back, 7);
        assert_eq!(header.batch_start(), Offset(4089));
        assert_eq!(header.epoch, Epoch(3));
        assert_eq!(header.end(), Offset(4096 + 37));
        assert_eq!(&buf[HEADER_BYTES..], b"hello");
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let clean = record(b"some payload bytes", 64);
        for bit in 0..clean.len() * 8 {
            let mut buf = clean.clone();
            buf[bit / 8] ^= 1 << (bit % 8);
            assert!(
                check(&buf, Offset(64), 1 << 20).is_err(),
                "flip of bit {bit} undetected"
            );
        }
    }

    #[test]
    fn zeroes_misplaced_and_short_records_are_rejected() {
        assert_eq!(check(&[0; 64], Offset(0), 1024), Err(Invalid::BadMagic));
        let buf = record(b"abc", 100);
        assert_eq!(
            check(&buf, Offset(200), 1024),
            Err(Invalid::OffsetMismatch(100))
        );
        assert_eq!(
            check(&buf[..20], Offset(100), 1024),
            Err(Invalid::Truncated)
        );
        assert_eq!(
            check(&buf[..34], Offset(100), 1024),
            Err(Invalid::Truncated)
        );
        assert_eq!(check(&buf, Offset(100), 2), Err(Invalid::TooLong(3)));
    }

    #[test]
    fn padding_covers_its_whole_slice() {
        let mut buf = vec![0xAA; 100];
        encode_padding(&mut buf, 0, Offset(8), Epoch(1));
        let header = check(&buf, Offset(8), 1024).unwrap();
        assert_eq!(header.kind, RecordKind::Padding);
        assert_eq!(header.record_bytes(), 100);
    }
}
