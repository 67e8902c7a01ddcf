//! Journal options and the storage fault injector.

use super::JournalError;
use crate::constants::{
    BATCH_BYTES_DEFAULT, BATCH_BYTES_MAX, BATCH_BYTES_MIN, BLOCK_BYTES, SEGMENT_BYTES_DEFAULT,
    SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN, SPARE_SEGMENTS_DEFAULT, SPARE_SEGMENTS_MAX,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

/// How a batch is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `O_DIRECT` write of whole blocks with `RWF_DSYNC`: one operation per
    /// batch, no page cache. Measured the faster of the two (see README).
    #[default]
    DirectDsync,
    /// Buffered write linked to an `fdatasync`: two operations per batch.
    /// Also the automatic fallback where the filesystem refuses `O_DIRECT`.
    WriteFdatasync,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "direct-dsync" => Ok(Durability::DirectDsync),
            "write-fdatasync" => Ok(Durability::WriteFdatasync),
            other => Err(format!(
                "unknown durability {other:?}: expected \"direct-dsync\" or \"write-fdatasync\""
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Durability::DirectDsync => "direct-dsync",
            Durability::WriteFdatasync => "write-fdatasync",
        })
    }
}

/// Options of one shard journal.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// Size of each segment file; a multiple of 4 KiB.
    pub segment_bytes: u64,
    /// Cap on the new bytes of one batch; also bounds a record's size.
    pub batch_bytes_max: usize,
    /// How long a batch may wait for more records before its flush starts
    /// when no flush is in flight. Zero (the default) flushes at once.
    pub flush_linger: Duration,
    /// How batches are made durable.
    pub durability: Durability,
    /// Zero-filled or recycled segment files kept ready for rotation.
    pub spare_segments: usize,
    /// Test hook: injected write and flush failures.
    pub faults: Option<Arc<StorageFaults>>,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            batch_bytes_max: BATCH_BYTES_DEFAULT,
            flush_linger: Duration::ZERO,
            durability: Durability::default(),
            spare_segments: SPARE_SEGMENTS_DEFAULT,
            faults: None,
        }
    }
}

impl JournalOptions {
    /// Checks every option, naming the offending one.
    pub fn validate(&self) -> Result<(), JournalError> {
        let invalid = |key, why: String| Err(JournalError::InvalidOption { key, why });
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                    self.segment_bytes
                ),
            );
        }
        if !self.segment_bytes.is_multiple_of(BLOCK_BYTES as u64) {
            return invalid(
                "segment_bytes",
                format!("{} is not a multiple of {BLOCK_BYTES}", self.segment_bytes),
            );
        }
        if !(BATCH_BYTES_MIN..=BATCH_BYTES_MAX).contains(&self.batch_bytes_max) {
            return invalid(
                "batch_bytes_max",
                format!(
                    "{} is outside {BATCH_BYTES_MIN}..={BATCH_BYTES_MAX}",
                    self.batch_bytes_max
                ),
            );
        }
        // A batch (cap + an overflowing record + padding) must span at most two
        // segments, which the write path relies on.
        if (2 * self.batch_bytes_max + BLOCK_BYTES) as u64 > self.segment_bytes {
            return invalid(
                "batch_bytes_max",
                format!(
                    "{} is too large for segment_bytes = {}: at most (segment_bytes - 4096) / 2",
                    self.batch_bytes_max, self.segment_bytes
                ),
            );
        }
        if self.spare_segments > SPARE_SEGMENTS_MAX {
            return invalid(
                "spare_segments",
                format!("{} exceeds {SPARE_SEGMENTS_MAX}", self.spare_segments),
            );
        }
        Ok(())
    }
}

/// Which storage operation a fault targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A data write (with `RWF_DSYNC` it is also the flush).
    Write,
    /// An `fdatasync` (write + fdatasync mode only).
    Flush,
}

/// Injects failures into the completions of journal writes and flushes, as
/// the kernel would report them. Counts are shared across threads.
#[derive(Debug, Default)]
pub struct StorageFaults {
    writes_seen: AtomicU64,
    flushes_seen: AtomicU64,
    fail_write_at: AtomicU64,
    fail_flush_at: AtomicU64,
    errno: AtomicI32,
}

impl StorageFaults {
    pub fn new() -> Arc<StorageFaults> {
        Arc::new(StorageFaults::default())
    }

    /// Makes the `n`-th completion of `op` from now on fail with `errno`
    /// (1 = the next one).
    pub fn fail_nth(&self, op: FaultOp, n: u64, errno: i32) {
        assert!(n >= 1);
        self.errno.store(errno, Ordering::SeqCst);
        let (seen, at) = self.counters(op);
        at.store(seen.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// How many completions of `op` the journal has seen.
    pub fn seen(&self, op: FaultOp) -> u64 {
        self.counters(op).0.load(Ordering::SeqCst)
    }

    fn counters(&self, op: FaultOp) -> (&AtomicU64, &AtomicU64) {
        match op {
            FaultOp::Write => (&self.writes_seen, &self.fail_write_at),
            FaultOp::Flush => (&self.flushes_seen, &self.fail_flush_at),
        }
    }

    /// Returns the result the journal should see for a completion of `op`.
    pub(crate) fn filter(&self, op: FaultOp, result: i32) -> i32 {
        let (seen, at) = self.counters(op);
        let number = seen.fetch_add(1, Ordering::SeqCst) + 1;
        if number == at.load(Ordering::SeqCst) {
            -self.errno.load(Ordering::SeqCst)
        } else {
            result
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        JournalOptions::default().validate().unwrap();
    }

    #[test]
    fn bad_options_name_the_key() {
        let options = JournalOptions {
            segment_bytes: 100_000,
            ..JournalOptions::default()
        };
        let text = options.validate().unwrap_err().to_string();
        assert!(
            text.contains("segment_bytes") && text.contains("multiple of 4096"),
            "{text}"
        );

        let options = JournalOptions {
            segment_bytes: 1 << 20,
            batch_bytes_max: 1 << 20,
            ..JournalOptions::default()
        };
        let text = options.validate().unwrap_err().to_string();
        assert!(text.contains("batch_bytes_max"), "{text}");
    }

    #[test]
    fn fault_fires_once_on_the_chosen_completion() {
        let faults = StorageFaults::new();
        faults.fail_nth(FaultOp::Write, 2, libc::EIO);
        assert_eq!(faults.filter(FaultOp::Write, 4096), 4096);
        assert_eq!(faults.filter(FaultOp::Flush, 0), 0);
        assert_eq!(faults.filter(FaultOp::Write, 4096), -libc::EIO);
        assert_eq!(faults.filter(FaultOp::Write, 4096), 4096);
        assert_eq!(faults.seen(FaultOp::Write), 3);
    }
}
