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
