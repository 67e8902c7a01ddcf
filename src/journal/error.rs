//! The journal's operating errors. Bugs are assertions, not variants.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything a journal operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file or directory operation failed.
    #[error("journal {op} failed on {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Damage before the tail: the journal refuses to open rather than guess.
    #[error(
        "corrupt journal: segment {segment}, offset {offset}: {reason}; \
         the journal was not opened and nothing was changed (repair it from the peer)"
    )]
    Corrupt {
        segment: String,
        offset: u64,
        reason: String,
    },
    /// An earlier write or flush failed; the journal accepts and acknowledges
    /// nothing more and never retries the flush.
    #[error("journal is poisoned by a storage failure: {0}")]
    Poisoned(Arc<str>),
    /// The batch being filled is at its byte cap; wait for the in-flight
    /// flush to complete, then retry.
    #[error("journal batch is full; wait for the in-flight flush to complete")]
    Full,
    /// A record larger than the batch cap allows.
    #[error("record of {len} bytes exceeds the journal's limit of {max} bytes (batch_bytes_max)")]
    RecordTooLarge { len: usize, max: usize },
    /// A record from an epoch older than the journal's current epoch.
    #[error("epoch {got} is older than the journal's current epoch {current}")]
    EpochRegression { got: u64, current: u64 },
    /// A record of a newer epoch that was not opened by an epoch-start record,
    /// or an epoch-start record that does not open a newer epoch.
    #[error("epoch {got} is not opened by an epoch-start record (current epoch {current})")]
    EpochNotStarted { got: u64, current: u64 },
    /// Raw bytes offered at another offset than the journal's end.
    #[error("append at offset {got} but the journal ends at {end}")]
    OffsetMismatch { got: u64, end: u64 },
    /// Raw bytes from a peer that are not a clean run of valid records.
    #[error("raw bytes rejected at offset {offset}: {reason}")]
    InvalidRaw { offset: u64, reason: String },
    /// An offset outside the retained log.
    #[error("offset {offset} is outside the journal's range {start}..={end}")]
    OutOfRange { offset: u64, start: u64, end: u64 },
    /// An offset that is not the first byte of a record.
    #[error("offset {0} is not the start of a record")]
    NotRecordBoundary(u64),
    /// A restart point that is not where a segment of this size begins.
    #[error("offset {offset} is not a segment boundary (segment_bytes {segment_bytes})")]
    NotSegmentStart { offset: u64, segment_bytes: u64 },
    /// The operation needs every appended byte to be durable first.
    #[error("the journal has unflushed appends; sync it first")]
    Busy,
    /// A journal option out of range.
    #[error("invalid journal option {key}: {why}")]
    InvalidOption { key: &'static str, why: String },
    /// Another process holds the journal directory.
    #[error("journal directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
}

impl JournalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| JournalError::Io { op, path, source }
    }
}
