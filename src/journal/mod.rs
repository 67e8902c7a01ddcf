//! The per-shard journal: an append-only log of checksummed records in
//! fixed-size, preallocated segment files, written through io_uring with
//! group commit, recovered on open, and readable by offset.
//!
//! What it must never do: acknowledge a byte before its flush completed,
//! retry a failed flush, or drop data it cannot prove was never durable.
//!
//! On-disk format (also in ARCHITECTURE.md):
//! - a directory per shard; segments named by their starting offset
//!   (`00000000000000000000.seg`), all preallocated by zero-filling or
//!   recycling, contiguous in offset;
//! - records as laid out in [`record`], back to back; a record never spans
//!   two segments: the rest of a segment is a padding record, or zeros when
//!   less than a header remains;
//! - offsets are logical byte positions, so two journals holding the same
//!   records are byte-identical.

mod epochs;
mod error;
mod options;
mod reader;
pub mod record;
pub mod recovery;
mod segments;
mod writer;

pub use epochs::{EpochLog, EpochViolation};
pub use error::JournalError;
pub use options::{Durability, FaultOp, JournalOptions, StorageFaults};
pub use reader::{ReadPlan, Record, RecordReader};
pub use record::RecordKind;
pub use recovery::{Scan, TornTail, Visit};
pub use writer::{Journal, JournalEvent, LentBatch, RecoveryReport, SealedWrites, batch_capacity};

use std::path::Path;

/// Scans a journal directory without changing it (for `twinmq journal check`).
/// Takes the directory lock, so it refuses while a server has it open.
pub fn inspect(dir: &Path) -> Result<Option<Scan>, JournalError> {
    let _lock = segments::lock_dir(dir)?;
    let listing = segments::list(dir)?;
    let files = segments::open_for_reading(&listing)?;
    if files.is_empty() {
        return Ok(None);
    }
    let raw_span = segments::raw_tail(dir)?;
    recovery::scan(&files.iter().collect::<Vec<_>>(), raw_span, &mut |_, _| {
        Ok(())
    })
    .map(Some)
}
