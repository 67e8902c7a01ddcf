//! Every limit and default of the crate, in one place, with the reason for it.
//!
//! Units come last in names (`_bytes`, `_us`). Compile-time assertions pin the
//! relations between constants that the code relies on.

/// Alignment and size unit of direct I/O. 4 KiB covers both 512-byte and
/// 4 KiB logical-block devices; segment sizes and write buffers are multiples.
pub const BLOCK_BYTES: usize = 4096;

/// Size of a journal record header (see `journal::record`).
pub const RECORD_HEADER_BYTES: usize = 32;

/// Default size of one journal segment file.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// Smallest segment a journal accepts (tests use small segments to exercise
/// rotation often).
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment a journal accepts; positions inside a segment fit a u32.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;

/// Default cap on the new bytes of one group-commit batch.
pub const BATCH_BYTES_DEFAULT: usize = 1024 * 1024;
/// Smallest batch cap: one block.
pub const BATCH_BYTES_MIN: usize = BLOCK_BYTES;
/// Largest batch cap. A batch (with a record that overflows the cap and a
/// segment padding record) stays under 2 × this, which the record header's
/// 32-bit `batch_back` field must be able to address.
pub const BATCH_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Default number of zero-filled or recycled segment files kept ready so that
/// a segment rotation never waits for a zero-fill.
pub const SPARE_SEGMENTS_DEFAULT: usize = 2;
/// Upper bound on spare segments, to bound disk use.
pub const SPARE_SEGMENTS_MAX: usize = 64;

/// Size of the zero buffer used to fill new segment files.
pub const ZERO_FILL_CHUNK_BYTES: usize = 1024 * 1024;

/// Default io_uring submission queue size of a shard ring.
pub const RING_ENTRIES_DEFAULT: u32 = 256;

/// Chunk size the record reader fetches from disk at a time.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(SEGMENT_BYTES_MIN.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(BLOCK_BYTES as u64));
const _: () = assert!(SEGMENT_BYTES_MAX <= u32::MAX as u64);
const _: () = assert!((2 * BATCH_BYTES_MAX + BLOCK_BYTES) as u64 <= u32::MAX as u64);
const _: () = assert!(BATCH_BYTES_DEFAULT * 2 + BLOCK_BYTES <= SEGMENT_BYTES_DEFAULT as usize);
const _: () = assert!(ZERO_FILL_CHUNK_BYTES.is_multiple_of(BLOCK_BYTES));

// ---- Protocol ----

/// Largest message body the native protocol carries in one SEND or DELIVER.
/// Bigger payloads belong in a blob store with a reference in the message; a
/// cap keeps one client from pinning unbounded memory in a shard.
pub const PROTOCOL_BODY_BYTES_MAX: u32 = 16 * 1024 * 1024;

/// Room in a frame for everything but the body: fixed fields, the destination
/// and a full set of headers at their limits (checked below).
pub const PROTOCOL_ENVELOPE_BYTES_MAX: u32 = 1024 * 1024;

/// Default largest frame a peer accepts, counted as the length prefix counts:
/// the type byte and the body, not the 4-byte prefix itself. A receiver
/// rejects a longer frame from its length prefix alone, before buffering it.
pub const PROTOCOL_FRAME_BYTES_MAX: u32 = PROTOCOL_BODY_BYTES_MAX + PROTOCOL_ENVELOPE_BYTES_MAX;

/// Default largest number of headers on one message. Headers are for routing
/// and metadata, not payload; 64 is more than any selector needs.
pub const PROTOCOL_HEADERS_MAX: u16 = 64;

/// Default largest string field in bytes (ids, names, header keys and
/// values, error texts). Far above any destination name, small enough that
/// the worst case of every header at this size stays inside the envelope.
pub const PROTOCOL_STRING_BYTES_MAX: u16 = 4096;

/// Fixed-width bytes of the largest frame layout (SEND) besides its strings,
/// headers and body: type, ids, flags, TTL, ack mode and length fields.
const PROTOCOL_SEND_FIXED_BYTES: u32 = 1 + 8 + 8 + 1 + 8 + 1 + 2 + 4;

const _: () = assert!(
    PROTOCOL_SEND_FIXED_BYTES
        + (2 + PROTOCOL_STRING_BYTES_MAX as u32)
        + PROTOCOL_HEADERS_MAX as u32 * 2 * (2 + PROTOCOL_STRING_BYTES_MAX as u32)
        <= PROTOCOL_ENVELOPE_BYTES_MAX
);
