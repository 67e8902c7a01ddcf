//! Journal digests, to check that two servers hold the same log: per shard
//! directory (`shard-NNN` under a data directory), a checksum of the logical
//! log from its retained start to the end of its last valid record, as the
//! journal's own recovery scan finds them.
//!
//! Offsets are logical byte positions, so two journals with the same records
//! (and the same `segment_bytes`) are byte-identical over that range; bytes
//! past the end (zeros of a preallocated segment, an erased torn tail) are
//! not part of the log and never count.
//!
//! Needs only the library; runs on stopped servers (the scan takes each
//! journal's directory lock and fails the test if a server holds it).
#![allow(dead_code)]

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// How the server names a shard's directory under its data directory:
/// `shard-` and the shard number (three digits or more).
const SHARD_DIR_PREFIX: &str = "shard-";

/// A segment file is its start offset in 20 digits, then this.
const SEGMENT_SUFFIX: &str = ".seg";

/// Bytes read at a time when hashing or comparing logs.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// One shard's log: what the recovery scan calls its range, and a CRC32C
/// (widened to `u64`) of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardDigest {
    pub shard: usize,
    /// First offset of the retained log (start of its first segment).
    pub start: u64,
    /// Just past the last valid record.
    pub end: u64,
    pub digest: u64,
}

/// How two data directories' journals differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalMismatch {
    /// They do not hold the same shards.
    Shards { a: Vec<usize>, b: Vec<usize> },
    /// A shard's logs differ (the lowest such shard).
    Log {
        shard: usize,
        /// `[start, end)` of the log in `a`.
        a: (u64, u64),
        /// `[start, end)` of the log in `b`.
        b: (u64, u64),
        /// The first offset both hold where the bytes differ; `None` when
        /// the common range agrees and only the ranges differ.
        first_difference: Option<u64>,
    },
}

impl fmt::Display for JournalMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JournalMismatch::Shards { a, b } => {
                write!(f, "different shards: a has {a:?}, b has {b:?}")
            }
            JournalMismatch::Log {
                shard,
                a,
                b,
                first_difference,
            } => {
                write!(
                    f,
                    "shard {shard}: a holds [{}, {}), b holds [{}, {}); ",
                    a.0, a.1, b.0, b.1
                )?;
                match first_difference {
                    Some(offset) => write!(f, "first differing byte at offset {offset}"),
                    None => write!(
                        f,
                        "the common range [{}, {}) is identical",
                        a.0.max(b.0),
                        a.1.min(b.1).max(a.0.max(b.0))
                    ),
                }
            }
        }
    }
}

/// The shard directories under `data_dir`, by shard number.
pub fn shard_dirs(data_dir: &Path) -> Vec<(usize, PathBuf)> {
    let entries =
        std::fs::read_dir(data_dir).unwrap_or_else(|e| panic!("list {}: {e}", data_dir.display()));
    let mut shards: Vec<(usize, PathBuf)> = entries
        .map(|entry| entry.unwrap_or_else(|e| panic!("list {}: {e}", data_dir.display())))
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let digits = name.strip_prefix(SHARD_DIR_PREFIX)?;
            let shard = digits.parse().ok()?;
            entry.path().is_dir().then_some((shard, entry.path()))
        })
        .collect();
    shards.sort();
    shards
}

/// One shard's log, readable by offset.
struct Log {
    shard: usize,
    dir: PathBuf,
    start: u64,
    end: u64,
    /// (start offset, file), oldest first; contiguous (the scan checked).
    segments: Vec<(u64, File)>,
}

impl Log {
    fn open(shard: usize, dir: &Path) -> Log {
        let scan = twinmq::journal::inspect(dir)
            .unwrap_or_else(|e| panic!("scan the journal in {}: {e}", dir.display()));
        let Some(scan) = scan else {
            return Log {
                shard,
                dir: dir.to_owned(),
                start: 0,
                end: 0,
                segments: Vec::new(),
            };
        };
        let mut segments: Vec<(u64, File)> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
            .filter_map(|entry| {
                let entry = entry.unwrap_or_else(|e| panic!("list {}: {e}", dir.display()));
                let name = entry.file_name().to_string_lossy().into_owned();
                let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
                if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let file = File::open(entry.path())
                    .unwrap_or_else(|e| panic!("open {}: {e}", entry.path().display()));
                Some((digits.parse().expect("20 digits fit a u64"), file))
            })
            .collect();
        segments.sort_by_key(|(start, _)| *start);
        assert_eq!(
            segments.first().map(|(start, _)| *start),
            Some(scan.start.get()),
            "{}: the scan starts at its first segment",
            dir.display()
        );
        Log {
            shard,
            dir: dir.to_owned(),
            start: scan.start.get(),
            end: scan.end.get(),
            segments,
        }
    }

    /// Fills `buf` with the log's bytes from `offset`, which with `buf` must
    /// lie inside `[start, end)`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) {
        assert!(
            self.start <= offset && offset + buf.len() as u64 <= self.end,
            "read [{offset}, {}) outside the log [{}, {})",
            offset + buf.len() as u64,
            self.start,
            self.end
        );
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let index = self.segments.partition_point(|(start, _)| *start <= at) - 1;
            let (segment_start, file) = &self.segments[index];
            let segment_end = self
                .segments
                .get(index + 1)
                .map_or(u64::MAX, |(next, _)| *next);
            let take = (buf.len() - done).min((segment_end - at) as usize);
            file.read_exact_at(&mut buf[done..done + take], at - segment_start)
                .unwrap_or_else(|e| {
                    panic!(
                        "read shard {} at {at} from {}: {e}",
                        self.shard,
                        self.dir.display()
                    )
                });
            done += take;
        }
    }

    fn digest(&self) -> ShardDigest {
        let mut crc = 0u32;
        let mut buf = vec![0u8; READ_CHUNK_BYTES];
        let mut at = self.start;
        while at < self.end {
            let take = (self.end - at).min(READ_CHUNK_BYTES as u64) as usize;
            self.read_exact_at(at, &mut buf[..take]);
            crc = crc32c::crc32c_append(crc, &buf[..take]);
            at += take as u64;
        }
        ShardDigest {
            shard: self.shard,
            start: self.start,
            end: self.end,
            digest: u64::from(crc),
        }
    }
}

/// The first offset in `[from, to)` where `a` and `b` differ.
fn first_difference(a: &Log, b: &Log, from: u64, to: u64) -> Option<u64> {
    let mut buf_a = vec![0u8; READ_CHUNK_BYTES];
    let mut buf_b = vec![0u8; READ_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let take = (to - at).min(READ_CHUNK_BYTES as u64) as usize;
        a.read_exact_at(at, &mut buf_a[..take]);
        b.read_exact_at(at, &mut buf_b[..take]);
        if let Some(i) = (0..take).find(|&i| buf_a[i] != buf_b[i]) {
            return Some(at + i as u64);
        }
        at += take as u64;
    }
    None
}

/// A digest per shard of the journals under `data_dir`, by shard number.
pub fn journal_digests(data_dir: &Path) -> Vec<ShardDigest> {
    shard_dirs(data_dir)
        .iter()
        .map(|(shard, dir)| Log::open(*shard, dir).digest())
        .collect()
}

/// How the journals under two data directories differ, if they do.
pub fn journal_mismatch(a: &Path, b: &Path) -> Option<JournalMismatch> {
    let (dirs_a, dirs_b) = (shard_dirs(a), shard_dirs(b));
    let shards = |dirs: &[(usize, PathBuf)]| dirs.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    if shards(&dirs_a) != shards(&dirs_b) {
        return Some(JournalMismatch::Shards {
            a: shards(&dirs_a),
            b: shards(&dirs_b),
        });
    }
    for ((shard, dir_a), (_, dir_b)) in dirs_a.iter().zip(&dirs_b) {
        let (log_a, log_b) = (Log::open(*shard, dir_a), Log::open(*shard, dir_b));
        // Compare the bytes themselves rather than digests: the report needs
        // the offset anyway, and no checksum collision can hide a difference.
        let from = log_a.start.max(log_b.start);
        let to = log_a.end.min(log_b.end);
        let first_difference = first_difference(&log_a, &log_b, from, to);
        let same_range = (log_a.start, log_a.end) == (log_b.start, log_b.end);
        if same_range && first_difference.is_none() {
            continue;
        }
        return Some(JournalMismatch::Log {
            shard: *shard,
            a: (log_a.start, log_a.end),
            b: (log_b.start, log_b.end),
            first_difference,
        });
    }
    None
}

/// Fails the test unless the journals under `a` and `b` hold the same shards
/// with byte-identical logs, naming the shard, both ranges and the first
/// differing offset.
#[track_caller]
pub fn assert_journals_identical(a: &Path, b: &Path) {
    if let Some(mismatch) = journal_mismatch(a, b) {
        panic!(
            "journals differ: {mismatch}\n  a = {}\n  b = {}",
            a.display(),
            b.display()
        );
    }
}
