//! `twinmq bench journal`: the journal's durable bandwidth and latency beside
//! the disk's own floor, measured in one run on one directory.
//!
//! Floors (raw syscalls, no journal):
//! - 4 KiB overwrite + `fdatasync` on a zero-filled file: the flush latency a
//!   single durable record cannot beat; the same on a plain `fallocate`d file
//!   shows why segments are zero-filled, not just allocated;
//! - sequential `O_DIRECT` writes with `RWF_DSYNC` at each batch size, one at
//!   a time: the bandwidth a group-commit journal cannot beat.
//!
//! Journal cases, per durability mode: 1 KiB records appended as fast as the
//! journal takes them, with `batch_bytes_max` set to each batch size and
//! settled segments released as they become durable (as a consumer that
//! keeps up would), so rotation recycles files; then single-record durable
//! append latency.

use super::{Latency, ratio};
use crate::constants::{BLOCK_BYTES, RING_ENTRIES_DEFAULT};
use crate::ids::Epoch;
use crate::io::{self, AlignedBuf, Ring};
use crate::journal::{Durability, Journal, JournalError, JournalEvent, JournalOptions, RecordKind};
use serde::Serialize;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Batch sizes the issue asks for.
pub const BATCH_SIZES: [usize; 3] = [4 * 1024, 64 * 1024, 1024 * 1024];
/// Size of one benchmark record, header included.
const RECORD_BYTES: usize = 1024;
/// Size of the preallocated floor file; writes wrap around inside it.
pub(crate) const FLOOR_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Journal segment size for the bench (large batches need room).
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub seconds: f64,
    pub modes: Vec<Durability>,
}

/// Floor measurements.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub case: &'static str,
    pub flush_4k_p50_us: f64,
    pub flush_4k_p99_us: f64,
    pub flush_4k_fallocated_p50_us: f64,
    pub flush_4k_fallocated_p99_us: f64,
}

/// One batch-size line.
#[derive(Debug, Clone, Serialize)]
pub struct BatchLine {
    pub case: &'static str,
    pub durability: String,
    pub batch_bytes: usize,
    pub journal_mib_s: f64,
    pub floor_mib_s: f64,
    pub ratio: f64,
    pub journal_p50_us: f64,
    pub journal_p99_us: f64,
    pub floor_p50_us: f64,
    pub floor_p99_us: f64,
}

/// Single-record durable append latency.
#[derive(Debug, Clone, Serialize)]
pub struct SingleLine {
    pub case: &'static str,
    pub durability: String,
    pub record_bytes: usize,
    pub journal_p50_us: f64,
    pub journal_p99_us: f64,
    pub floor_p50_us: f64,
    pub ratio: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub floor: Floor,
    pub batches: Vec<BatchLine>,
    pub singles: Vec<SingleLine>,
}

/// Errors of a bench run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Ring(#[from] crate::io::RingError),
}

pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the whole suite.
pub fn run(config: &Config) -> Result<Report, BenchError> {
    fs::create_dir_all(&config.dir).map_err(io_error(&config.dir))?;
    let budget = Duration::from_secs_f64(config.seconds);
    let floor_dir = config.dir.join("floor");
    let _ = fs::remove_dir_all(&floor_dir);
    fs::create_dir_all(&floor_dir).map_err(io_error(&floor_dir))?;

    let zeroed = floor_dir.join("zeroed");
    make_zeroed(&zeroed, FLOOR_FILE_BYTES)?;
    let flush = flush_4k(&zeroed, budget, u64::MAX)?;
    let fallocated = floor_dir.join("fallocated");
    let file = File::create(&fallocated).map_err(io_error(&fallocated))?;
    io::fallocate(&file, FLOOR_FILE_BYTES).map_err(io_error(&fallocated))?;
    file.sync_all().map_err(io_error(&fallocated))?;
    // Stop before wrapping: only first writes into unwritten extents count.
    let flush_fallocated = flush_4k(&fallocated, budget, FLOOR_FILE_BYTES / BLOCK_BYTES as u64)?;
    let floor = Floor {
        case: "floor",
        flush_4k_p50_us: flush.quantile_us(0.5),
        flush_4k_p99_us: flush.quantile_us(0.99),
        flush_4k_fallocated_p50_us: flush_fallocated.quantile_us(0.5),
        flush_4k_fallocated_p99_us: flush_fallocated.quantile_us(0.99),
    };

    let mut floors = Vec::new();
    for batch_bytes in BATCH_SIZES {
        floors.push(direct_dsync_floor(&zeroed, batch_bytes, budget)?);
    }
    let _ = fs::remove_dir_all(&floor_dir);

    let mut batches = Vec::new();
    let mut singles = Vec::new();
    for &mode in &config.modes {
        let dir = config.dir.join(format!("journal-{mode}"));
        let _ = fs::remove_dir_all(&dir);
        for (&batch_bytes, (floor_mib_s, floor_latency)) in BATCH_SIZES.iter().zip(&floors) {
            let (mib_s, latency) = journal_bandwidth(&dir, mode, batch_bytes, budget)?;
            batches.push(BatchLine {
                case: "batch",
                durability: mode.to_string(),
                batch_bytes,
                journal_mib_s: mib_s,
                floor_mib_s: *floor_mib_s,
                ratio: ratio(mib_s, *floor_mib_s),
                journal_p50_us: latency.quantile_us(0.5),
                journal_p99_us: latency.quantile_us(0.99),
                floor_p50_us: floor_latency.quantile_us(0.5),
                floor_p99_us: floor_latency.quantile_us(0.99),
            });
        }
        let latency = single_record(&dir, mode, budget)?;
        singles.push(SingleLine {
            case: "single_record",
            durability: mode.to_string(),
            record_bytes: RECORD_BYTES,
            journal_p50_us: latency.quantile_us(0.5),
            journal_p99_us: latency.quantile_us(0.99),
            floor_p50_us: floor.flush_4k_p50_us,
            ratio: ratio(latency.quantile_us(0.5), floor.flush_4k_p50_us),
        });
        let _ = fs::remove_dir_all(&dir);
    }
    Ok(Report {
        floor,
        batches,
        singles,
    })
}

/// The 4 KiB overwrite + fdatasync latency of a fresh zero-filled file in
/// `dir`: the floor every durable acknowledgement is held to.
pub fn flush_floor(dir: &Path, budget: Duration) -> Result<Latency, BenchError> {
    concurrent_flush_floor(dir, budget, 1)
}

/// The same while a second writer overwrites and flushes its own file on
/// the same disk at once: the flush each server of a pair sharing one disk
/// waits for when both flush the same batch. Both writers' latencies.
pub fn paired_flush_floor(dir: &Path, budget: Duration) -> Result<Latency, BenchError> {
    concurrent_flush_floor(dir, budget, 2)
}

/// `writers` threads, each overwriting and flushing a fresh zero-filled
/// file of its own in `dir` at once; all their latencies.
fn concurrent_flush_floor(
    dir: &Path,
    budget: Duration,
    writers: usize,
) -> Result<Latency, BenchError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let paths: Vec<_> = (0..writers)
        .map(|n| dir.join(format!("flush-floor-{n}")))
        .collect();
    let result = paths
        .iter()
        .try_for_each(|path| make_zeroed(path, FLOOR_FILE_BYTES))
        .and_then(|()| {
            std::thread::scope(|scope| {
                let writers: Vec<_> = paths
                    .iter()
                    .map(|path| scope.spawn(|| flush_4k(path, budget, u64::MAX)))
                    .collect();
                let mut latency = Latency::default();
                for writer in writers {
                    latency.merge(&writer.join().expect("flush floor writer panicked")?);
                }
                Ok(latency)
            })
        });
    for path in &paths {
        let _ = fs::remove_file(path);
    }
    result
}

pub(crate) fn make_zeroed(path: &Path, bytes: u64) -> Result<(), BenchError> {
    let file = File::create(path).map_err(io_error(path))?;
    io::write_zeros(&file, 0, bytes).map_err(io_error(path))?;
    file.sync_all().map_err(io_error(path))?;
    io::drop_cache(&file).map_err(io_error(path))
}

/// 4 KiB buffered overwrite + fdatasync, sequential, for `budget` or
/// `max_writes`.
fn flush_4k(path: &Path, budget: Duration, max_writes: u64) -> Result<Latency, BenchError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_error(path))?;
    let blocks = FLOOR_FILE_BYTES / BLOCK_BYTES as u64;
    let block = vec![0xA5u8; BLOCK_BYTES];
    let mut latency = Latency::default();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget && n < max_writes {
        let t = Instant::now();
        file.write_all_at(&block, (n % blocks) * BLOCK_BYTES as u64)
            .map_err(io_error(path))?;
        file.sync_data().map_err(io_error(path))?;
        latency.record(t.elapsed());
        n += 1;
    }
    Ok(latency)
}

/// Sequential `O_DIRECT` + `RWF_DSYNC` writes of `batch_bytes`: MiB/s and
/// per-write latency.
pub(crate) fn direct_dsync_floor(
    path: &Path,
    batch_bytes: usize,
    budget: Duration,
) -> Result<(f64, Latency), BenchError> {
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(io_error(path))?;
    let mut buf = AlignedBuf::zeroed(batch_bytes);
    buf.fill(0x5A);
    let slots = FLOOR_FILE_BYTES / batch_bytes as u64;
    let mut latency = Latency::default();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        let t = Instant::now();
        io::pwrite_dsync(&file, &buf, (n % slots) * batch_bytes as u64).map_err(io_error(path))?;
        latency.record(t.elapsed());
        n += 1;
    }
    let mib = (n * batch_bytes as u64) as f64 / (1024.0 * 1024.0);
    Ok((mib / start.elapsed().as_secs_f64(), latency))
}

/// Buffers in flight between the reader and the writer of the copy floor.
const COPY_DEPTH: usize = 4;

/// Copies `src` into `dst` on the same disk, `chunk_bytes` at a time, for
/// `budget`: `O_DIRECT` reads on one thread, `O_DIRECT` + `RWF_DSYNC`
/// writes on another, up to [`COPY_DEPTH`] chunks between them. Returns
/// MiB/s written. This is the floor of anything that reads a log back on
/// one disk while another process writes it durably on the same disk (a
/// replicated pair's catch-up when both servers share the machine).
pub(crate) fn disk_copy_floor(
    src: &Path,
    dst: &Path,
    chunk_bytes: usize,
    budget: Duration,
) -> Result<f64, BenchError> {
    let open = |path: &Path, write: bool| {
        OpenOptions::new()
            .read(!write)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(io_error(path))
    };
    let (reader, writer) = (open(src, false)?, open(dst, true)?);
    let slots = FLOOR_FILE_BYTES / chunk_bytes as u64;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<AlignedBuf>(COPY_DEPTH);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<AlignedBuf>(COPY_DEPTH);
    for _ in 0..COPY_DEPTH {
        empty_tx
            .send(AlignedBuf::zeroed(chunk_bytes))
            .expect("receiver alive");
    }
    let start = Instant::now();
    let written = std::thread::scope(|scope| {
        let reads = scope.spawn(move || -> std::io::Result<()> {
            let mut n = 0u64;
            while let Ok(mut buf) = empty_rx.recv() {
                if start.elapsed() >= budget {
                    break;
                }
                reader.read_exact_at(&mut buf, (n % slots) * chunk_bytes as u64)?;
                n += 1;
                if full_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let mut written = 0u64;
        let mut result = Ok(());
        while let Ok(buf) = full_rx.recv() {
            let at = (written % slots) * chunk_bytes as u64;
            if let Err(error) = io::pwrite_dsync(&writer, &buf, at) {
                result = Err(io_error(dst)(error));
                break;
            }
            written += 1;
            // The reader stops at the deadline and drops its sender.
            let _ = empty_tx.send(buf);
        }
        drop(empty_tx);
        let read = reads.join().expect("copy reader thread");
        result.and(read.map_err(io_error(src))).map(|()| written)
    })?;
    let mib = (written * chunk_bytes as u64) as f64 / (1024.0 * 1024.0);
    Ok(mib / start.elapsed().as_secs_f64())
}

fn bench_options(mode: Durability, batch_bytes: usize) -> JournalOptions {
    JournalOptions {
        segment_bytes: SEGMENT_BYTES,
        batch_bytes_max: batch_bytes,
        durability: mode,
        spare_segments: 3,
        ..JournalOptions::default()
    }
}

/// Opens the bench journal, with spares ready and an epoch started.
fn open_journal(dir: &Path, options: JournalOptions) -> Result<(Journal, Ring), BenchError> {
    let mut journal = Journal::open(dir, options)?;
    journal.wait_for_spares();
    let mut ring = Ring::new(RING_ENTRIES_DEFAULT)?;
    let epoch = Epoch(journal.epoch().get() + 1);
    journal.append(RecordKind::EpochStart, epoch, b"")?;
    journal.sync(&mut ring)?;
    Ok((journal, ring))
}

/// Appends 1 KiB records as fast as the journal takes them.
fn journal_bandwidth(
    dir: &Path,
    mode: Durability,
    batch_bytes: usize,
    budget: Duration,
) -> Result<(f64, Latency), BenchError> {
    let (mut journal, mut ring) = open_journal(dir, bench_options(mode, batch_bytes))?;
    let epoch = journal.epoch();
    let payload = vec![0x3Cu8; RECORD_BYTES - crate::constants::RECORD_HEADER_BYTES];
    let mut latency = Latency::default();
    let mut completions = Vec::new();
    let mut submitted_at = Instant::now();
    let first = journal.durable_offset();
    let start = Instant::now();
    // Like a shard loop with producers always ready: fill, start the flush,
    // fill the next batch while it is in flight, then wait.
    let fill = |journal: &mut Journal| -> Result<(), BenchError> {
        loop {
            match journal.append(RecordKind::Opaque, epoch, &payload) {
                Ok(_) => {}
                Err(JournalError::Full) => return Ok(()),
                Err(other) => return Err(other.into()),
            }
        }
    };
    while start.elapsed() < budget {
        fill(&mut journal)?;
        let now = Instant::now();
        if journal.submit(now, &mut ring)? {
            submitted_at = now;
            fill(&mut journal)?;
        }
        ring.submit_and_wait(1).map_err(io_error(dir))?;
        completions.clear();
        ring.reap(&mut completions);
        for completion in completions.drain(..) {
            match journal.complete(completion) {
                Some(JournalEvent::Durable(durable)) => {
                    latency.record(submitted_at.elapsed());
                    journal.release_below(durable)?;
                }
                Some(JournalEvent::Poisoned(cause)) => {
                    return Err(JournalError::Poisoned(cause).into());
                }
                None => {}
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let bytes = journal.durable_offset() - first;
    journal.sync(&mut ring)?;
    Ok((bytes as f64 / (1024.0 * 1024.0) / elapsed, latency))
}

/// One record appended and made durable at a time.
fn single_record(dir: &Path, mode: Durability, budget: Duration) -> Result<Latency, BenchError> {
    let (mut journal, mut ring) = open_journal(dir, bench_options(mode, 64 * 1024))?;
    let epoch = journal.epoch();
    let payload = vec![0x7Eu8; RECORD_BYTES - crate::constants::RECORD_HEADER_BYTES];
    let mut latency = Latency::default();
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        journal.append(RecordKind::Opaque, epoch, &payload)?;
        let durable = journal.sync(&mut ring)?;
        latency.record(t.elapsed());
        journal.release_below(durable)?;
    }
    Ok(latency)
}

/// The report as a human table.
pub fn render_table(report: &Report) -> String {
    use std::fmt::Write;
    let floor = &report.floor;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "floor: 4 KiB overwrite + fdatasync p50 {:.0} us, p99 {:.0} us (zero-filled file)",
        floor.flush_4k_p50_us, floor.flush_4k_p99_us
    );
    let _ = writeln!(
        out,
        "       same on a plain fallocate'd file: p50 {:.0} us, p99 {:.0} us ({:.1}x: why segments are zero-filled)",
        floor.flush_4k_fallocated_p50_us,
        floor.flush_4k_fallocated_p99_us,
        ratio(floor.flush_4k_fallocated_p50_us, floor.flush_4k_p50_us)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>12} {:>12} {:>6} {:>10} {:>10} {:>10}",
        "durability",
        "batch",
        "journal MiB/s",
        "floor MiB/s",
        "ratio",
        "p50 us",
        "p99 us",
        "floor p50"
    );
    for line in &report.batches {
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>12.1} {:>12.1} {:>6.2} {:>10.0} {:>10.0} {:>10.0}",
            line.durability,
            human_bytes(line.batch_bytes),
            line.journal_mib_s,
            line.floor_mib_s,
            line.ratio,
            line.journal_p50_us,
            line.journal_p99_us,
            line.floor_p50_us
        );
    }
    let _ = writeln!(out);
    for line in &report.singles {
        let _ = writeln!(
            out,
            "single {} B record, {:<16} durable append p50 {:.0} us, p99 {:.0} us; floor p50 {:.0} us; ratio {:.2}",
            line.record_bytes,
            line.durability,
            line.journal_p50_us,
            line.journal_p99_us,
            line.floor_p50_us,
            line.ratio
        );
    }
    out
}

/// The report as JSON lines.
pub fn render_json(report: &Report) -> String {
    let mut lines = vec![serde_json::to_string(&report.floor).expect("serialize")];
    lines.extend(
        report
            .batches
            .iter()
            .map(|l| serde_json::to_string(l).expect("serialize")),
    );
    lines.extend(
        report
            .singles
            .iter()
            .map(|l| serde_json::to_string(l).expect("serialize")),
    );
    lines.join("\n") + "\n"
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}
