//! Segment files: naming, listing, the directory lock, spare files made ready
//! by a background zero-filler, rotation, removal and erasure.
//!
//! A journal directory holds:
//! - `LOCK` — held with `flock` while a journal has the directory open;
//! - `<start offset, 20 digits>.seg` — segments, each exactly its preallocated
//!   size, contiguous: a segment starts where the previous one ends;
//! - `spare-<n>.seg` — zero-filled or recycled files ready to become the next
//!   segment by a rename (their stale bytes never parse as records because a
//!   record header must name its own offset);
//! - `*.tmp` — spares being zero-filled; removed on open;
//! - `RAW_TAIL` — present while the newest writes may be a replica's
//!   (`append_raw`): it holds the most bytes such a write spans, which is
//!   what recovery needs to judge a torn tail there (see `recovery`).
//!
//! Spares are zero-filled (written), not merely `fallocate`d: a first write
//! into an unwritten extent makes every flush commit extent metadata too,
//! which the journal benchmark measures. Only a journal that outruns its
//! spares rolls into a `fallocate`d file, rather than stop to zero-fill.

use super::JournalError;
use crate::ids::Offset;
use crate::io::{drop_cache, fallocate, open_rw, sync_dir, write_zeros};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

const SEGMENT_SUFFIX: &str = ".seg";
const SPARE_PREFIX: &str = "spare-";
const TMP_SUFFIX: &str = ".tmp";
const LOCK_NAME: &str = "LOCK";
const RAW_TAIL_NAME: &str = "RAW_TAIL";

/// The span of a replica's writes recorded in `dir` (`RAW_TAIL`), if any.
pub fn raw_tail(dir: &Path) -> Result<Option<u64>, JournalError> {
    let path = dir.join(RAW_TAIL_NAME);
    match fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            let why = format!("expected a byte count, found {:?}", text.trim());
            JournalError::io("read", &path)(io::Error::new(io::ErrorKind::InvalidData, why))
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(JournalError::io("read", &path)(error)),
    }
}

/// A segment file opened for reading (recovery, readers).
#[derive(Debug)]
pub struct SegmentFile {
    pub start: Offset,
    pub bytes: u64,
    pub path: PathBuf,
    pub read: File,
}

impl SegmentFile {
    pub fn end(&self) -> Offset {
        self.start + self.bytes
    }

    /// The file name, as error messages show it.
    pub fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn contains(&self, offset: Offset) -> bool {
        self.start <= offset && offset < self.end()
    }

    /// Reads the whole segment into `buf`.
    pub fn read_all(&self, buf: &mut Vec<u8>) -> Result<(), JournalError> {
        buf.resize(self.bytes as usize, 0);
        self.read
            .read_exact_at(buf, 0)
            .map_err(JournalError::io("read", &self.path))
    }
}

/// A segment open for writing too.
#[derive(Debug)]
pub struct Segment {
    pub file: SegmentFile,
    pub write: File,
}

fn segment_name(start: Offset) -> String {
    format!("{:020}{SEGMENT_SUFFIX}", start.get())
}

fn parse_segment_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok().map(Offset))
        .flatten()
}

/// What a journal directory holds.
#[derive(Debug, Default)]
pub struct Listing {
    pub segments: Vec<(Offset, PathBuf)>,
    pub spares: Vec<PathBuf>,
    pub temporaries: Vec<PathBuf>,
}

/// Lists segments (sorted by start), spares and temporaries in `dir`.
pub fn list(dir: &Path) -> Result<Listing, JournalError> {
    let mut listing = Listing::default();
    let entries = fs::read_dir(dir).map_err(JournalError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(JournalError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(start) = parse_segment_name(&name) {
            listing.segments.push((start, entry.path()));
        } else if name.ends_with(TMP_SUFFIX) {
            listing.temporaries.push(entry.path());
        } else if name.starts_with(SPARE_PREFIX) && name.ends_with(SEGMENT_SUFFIX) {
            listing.spares.push(entry.path());
        }
    }
    listing.segments.sort();
    Ok(listing)
}

/// Opens the listed segments for reading and checks that they form one
/// contiguous range; a gap is corruption (a segment is missing).
pub fn open_for_reading(listing: &Listing) -> Result<Vec<SegmentFile>, JournalError> {
    let mut files: Vec<SegmentFile> = Vec::with_capacity(listing.segments.len());
    for (start, path) in &listing.segments {
        let read = File::open(path).map_err(JournalError::io("open", path))?;
        let bytes = read
            .metadata()
            .map_err(JournalError::io("stat", path))?
            .len();
        let file = SegmentFile {
            start: *start,
            bytes,
            path: path.clone(),
            read,
        };
        if bytes == 0 || bytes % crate::constants::BLOCK_BYTES as u64 != 0 {
            return Err(JournalError::Corrupt {
                segment: file.name(),
                offset: start.get(),
                reason: format!("segment file has impossible size {bytes}"),
            });
        }
        if let Some(previous) = files.last()
            && previous.end() != *start
        {
            return Err(JournalError::Corrupt {
                segment: file.name(),
                offset: previous.end().get(),
                reason: format!(
                    "segment missing: {} ends at {} but the next segment starts at {start}",
                    previous.name(),
                    previous.end()
                ),
            });
        }
        files.push(file);
    }
    Ok(files)
}

/// How a new segment file gets its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Zeros written and flushed: flushes into it commit no metadata.
    Zeros,
    /// `fallocate` alone (unwritten extents): ready in a moment, but every
    /// flush into it also commits extent metadata until it is written.
    Reserve,
}

/// Makes a new file of `bytes` (a whole number of blocks) at `tmp` as
/// `fill` says, flushes it, and renames it to `path` durably.
fn create_segment_file(
    tmp: &Path,
    path: &Path,
    bytes: u64,
    dir: &Path,
    fill: Fill,
) -> io::Result<()> {
    let result = (|| {
        let created = OpenOptions::new().write(true).create_new(true).open(tmp)?;
        match fill {
            Fill::Zeros => {
                // With O_DIRECT the zeros skip the page cache: no copy into
                // it (the buffered fill cost a core's worth of memcpy while a
                // catch-up outran the spares), and no cached pages for the
                // journal's own O_DIRECT writes to invalidate later.
                let (file, direct) = match open_rw(tmp, true)? {
                    Some(direct) => (direct, true),
                    None => (created, false),
                };
                write_zeros(&file, 0, bytes)?;
                file.sync_all()?;
                if !direct {
                    drop_cache(&file)?;
                }
            }
            Fill::Reserve => {
                match fallocate(&created, bytes) {
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        created.set_len(bytes)?
                    }
                    other => other?,
                }
                created.sync_all()?;
            }
        }
        fs::rename(tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

struct Job {
    tmp: PathBuf,
    path: PathBuf,
    bytes: u64,
    dir: PathBuf,
}

/// A background thread that zero-fills spare segments, so rotation on the
/// shard thread is a rename. Blocking I/O is fine here: it is off the data
/// path.
struct Preallocator {
    jobs: Option<Sender<Job>>,
    done: Receiver<(PathBuf, io::Result<()>)>,
    done_tx: Sender<(PathBuf, io::Result<()>)>,
    thread: Option<JoinHandle<()>>,
    pending: usize,
}

impl Preallocator {
    fn new() -> Preallocator {
        let (done_tx, done) = mpsc::channel();
        Preallocator {
            jobs: None,
            done,
            done_tx,
            thread: None,
            pending: 0,
        }
    }

    fn submit(&mut self, job: Job) {
        if self.jobs.is_none() {
            let (jobs_tx, jobs) = mpsc::channel::<Job>();
            let done = self.done_tx.clone();
            let thread = std::thread::Builder::new()
                .name("twinmq-prealloc".into())
                .spawn(move || {
                    for job in jobs {
                        let result = create_segment_file(
                            &job.tmp,
                            &job.path,
                            job.bytes,
                            &job.dir,
                            Fill::Zeros,
                        );
                        if done.send((job.path, result)).is_err() {
                            return;
                        }
                    }
                })
                .expect("spawn preallocation thread");
            self.jobs = Some(jobs_tx);
            self.thread = Some(thread);
        }
        self.pending += 1;
        self.jobs
            .as_ref()
            .expect("job queue")
            .send(job)
            .expect("preallocation thread alive");
    }
}

impl Drop for Preallocator {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writable segment set of an open journal.
pub struct SegmentDir {
    dir: PathBuf,
    direct: bool,
    segments: VecDeque<Segment>,
    spares: Vec<PathBuf>,
    spare_bytes: u64,
    spare_target: usize,
    next_spare_id: u64,
    prealloc: Preallocator,
    _lock: File,
}

impl std::fmt::Debug for SegmentDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentDir")
            .field("dir", &self.dir)
            .field("direct", &self.direct)
            .field("segments", &self.segments.len())
            .field("spares", &self.spares.len())
            .finish()
    }
}

/// Takes the directory's `LOCK` so two processes never write one journal.
pub fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    let path = dir.join(LOCK_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(JournalError::io("open lock", &path))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(JournalError::Locked(dir.to_path_buf()));
        }
        return Err(JournalError::Io {
            op: "lock",
            path,
            source: error,
        });
    }
    Ok(file)
}

impl SegmentDir {
    /// Opens (creating if needed) the directory, takes its lock, removes
    /// half-made spares and opens every segment. `direct` asks for `O_DIRECT`
    /// write handles; if the filesystem refuses, `is_direct()` says false.
    pub fn open(
        dir: &Path,
        direct: bool,
        spare_bytes: u64,
        spare_target: usize,
    ) -> Result<SegmentDir, JournalError> {
        if !dir.exists() {
            fs::create_dir_all(dir).map_err(JournalError::io("create directory", dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent).map_err(JournalError::io("sync", parent))?;
            }
        }
        let lock = lock_dir(dir)?;
        let listing = list(dir)?;
        for tmp in &listing.temporaries {
            fs::remove_file(tmp).map_err(JournalError::io("remove", tmp))?;
        }
        let mut spares = Vec::new();
        let mut next_spare_id = 0;
        for spare in &listing.spares {
            let size = fs::metadata(spare)
                .map_err(JournalError::io("stat", spare))?
                .len();
            let id = spare
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(SPARE_PREFIX)?.strip_suffix(SEGMENT_SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
            next_spare_id = next_spare_id.max(id + 1);
            if size == spare_bytes {
                spares.push(spare.clone());
            } else {
                fs::remove_file(spare).map_err(JournalError::io("remove", spare))?;
            }
        }
        let files = open_for_reading(&listing)?;
        let mut set = SegmentDir {
            dir: dir.to_path_buf(),
            direct,
            segments: VecDeque::new(),
            spares,
            spare_bytes,
            spare_target,
            next_spare_id,
            prealloc: Preallocator::new(),
            _lock: lock,
        };
        for file in files {
            let write = set.open_write(&file.path)?;
            set.segments.push_back(Segment { file, write });
        }
        Ok(set)
    }

    fn open_write(&mut self, path: &Path) -> Result<File, JournalError> {
        let opened = open_rw(path, self.direct).map_err(JournalError::io("open", path))?;
        match opened {
            Some(file) => Ok(file),
            None => {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "filesystem refuses O_DIRECT; journal falls back to buffered writes + fdatasync"
                );
                self.direct = false;
                open_rw(path, false)
                    .map_err(JournalError::io("open", path))?
                    .ok_or_else(|| JournalError::Io {
                        op: "open",
                        path: path.to_path_buf(),
                        source: io::Error::from_raw_os_error(libc::EINVAL),
                    })
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn get(&self, index: usize) -> &Segment {
        &self.segments[index]
    }

    pub fn first(&self) -> &Segment {
        self.segments.front().expect("journal has a segment")
    }

    pub fn last(&self) -> &Segment {
        self.segments.back().expect("journal has a segment")
    }

    /// Index of the segment holding `offset`.
    pub fn index_of(&self, offset: Offset) -> Option<usize> {
        let index = self.segments.partition_point(|s| s.file.end() <= offset);
        (index < self.segments.len() && self.segments[index].file.contains(offset)).then_some(index)
    }

    /// The segment files, oldest first.
    pub fn files(&self) -> Vec<&SegmentFile> {
        self.segments.iter().map(|s| &s.file).collect()
    }

    /// Asks the background thread for spares up to the target count.
    pub fn request_spares(&mut self) {
        self.collect_spares(false);
        while self.spares.len() + self.prealloc.pending < self.spare_target {
            let id = self.next_spare_id;
            self.next_spare_id += 1;
            let name = format!("{SPARE_PREFIX}{id:08}{SEGMENT_SUFFIX}");
            self.prealloc.submit(Job {
                tmp: self.dir.join(format!("{name}{TMP_SUFFIX}")),
                path: self.dir.join(name),
                bytes: self.spare_bytes,
                dir: self.dir.clone(),
            });
        }
    }

    /// Collects spares the background thread has finished.
    fn collect_spares(&mut self, wait: bool) {
        loop {
            let next = if wait {
                self.prealloc.done.recv().ok()
            } else {
                self.prealloc.done.try_recv().ok()
            };
            let Some((path, result)) = next else { return };
            self.prealloc.pending -= 1;
            match result {
                Ok(()) => self.spares.push(path),
                Err(error) => tracing::warn!(
                    path = %path.display(), %error,
                    "could not prepare a spare journal segment"
                ),
            }
            if wait {
                return;
            }
        }
    }

    /// Blocks until every requested spare is ready (or failed). For start-up
    /// and benchmarks that want a steady state from the first byte.
    pub fn wait_for_spares(&mut self) {
        while self.prealloc.pending > 0 {
            self.collect_spares(true);
        }
    }

    /// Adds the segment that starts at `start` (the current last segment's
    /// end), from a ready spare if there is one, else zero-filled here.
    pub fn roll(&mut self, start: Offset) -> Result<(), JournalError> {
        if let Some(last) = self.segments.back() {
            assert_eq!(last.file.end(), start, "segments must be contiguous");
        }
        self.collect_spares(false);
        let path = self.dir.join(segment_name(start));
        match self.spares.pop() {
            Some(spare) => {
                fs::rename(&spare, &path).map_err(JournalError::io("rename", &spare))?;
                sync_dir(&self.dir).map_err(JournalError::io("sync", &self.dir))?;
            }
            None => {
                // Zero-filling here would stop the shard for as long as the
                // filler takes (hundreds of milliseconds under load), so a
                // journal that outruns its spares rolls into a reserved
                // file and pays slower flushes in it instead. Only the first
                // segment, made before the journal serves, is zero-filled.
                let fill = if self.segments.is_empty() {
                    Fill::Zeros
                } else {
                    tracing::warn!(
                        segment = %path.display(),
                        "no spare segment ready; rolling into a fallocate'd one (slower flushes \
                         until it is written) rather than zero-filling on the journal thread"
                    );
                    Fill::Reserve
                };
                let tmp = self
                    .dir
                    .join(format!("{}{TMP_SUFFIX}", segment_name(start)));
                create_segment_file(&tmp, &path, self.spare_bytes, &self.dir, fill)
                    .map_err(JournalError::io("create segment", &path))?;
            }
        }
        let read = File::open(&path).map_err(JournalError::io("open", &path))?;
        let bytes = read
            .metadata()
            .map_err(JournalError::io("stat", &path))?
            .len();
        let write = self.open_write(&path)?;
        self.segments.push_back(Segment {
            file: SegmentFile {
                start,
                bytes,
                path,
                read,
            },
            write,
        });
        // Zero-filling costs a second write of every byte, so it only starts
        // when spares run low; released segments refill the pool for free
        // while consumers keep up.
        if self.spares.len() + self.prealloc.pending < self.spare_target.div_ceil(2) {
            self.request_spares();
        }
        Ok(())
    }

    /// Removes the first segment: recycled as a spare when fewer than the
    /// target are ready and the size fits, else deleted. Its records are all released,
    /// and a recycled file's stale headers name offsets below every future
    /// segment, so they never parse as records there.
    pub fn release_first(&mut self) -> Result<(), JournalError> {
        let segment = self.segments.pop_front().expect("a segment to release");
        let path = segment.file.path.clone();
        drop(segment);
        self.collect_spares(false);
        if self.spares.len() < self.spare_target
            && fs::metadata(&path).map(|m| m.len()).ok() == Some(self.spare_bytes)
        {
            let id = self.next_spare_id;
            self.next_spare_id += 1;
            let spare = self
                .dir
                .join(format!("{SPARE_PREFIX}{id:08}{SEGMENT_SUFFIX}"));
            fs::rename(&path, &spare).map_err(JournalError::io("rename", &path))?;
            self.spares.push(spare);
        } else {
            fs::remove_file(&path).map_err(JournalError::io("remove", &path))?;
        }
        Ok(())
    }

    /// Deletes every segment after `index`. Never recycled: their records
    /// name offsets that a future segment at the same start would reuse.
    pub fn delete_after(&mut self, index: usize) -> Result<(), JournalError> {
        while self.segments.len() > index + 1 {
            let segment = self.segments.pop_back().expect("segment");
            fs::remove_file(&segment.file.path)
                .map_err(JournalError::io("remove", &segment.file.path))?;
        }
        Ok(())
    }

    /// Overwrites `[from, to)` with zeros (across segments) and flushes, so
    /// that no record once written there can ever parse again.
    pub fn erase(&mut self, from: Offset, to: Offset) -> Result<(), JournalError> {
        for segment in &self.segments {
            let file = &segment.file;
            let lo = from.max(file.start);
            let hi = to.min(file.end());
            if lo >= hi {
                continue;
            }
            let handle = OpenOptions::new()
                .write(true)
                .open(&file.path)
                .map_err(JournalError::io("open", &file.path))?;
            // Durable on return: write_zeros flushes each chunk it writes.
            write_zeros(&handle, lo - file.start, hi - lo)
                .map_err(JournalError::io("erase", &file.path))?;
        }
        Ok(())
    }

    pub fn sync_dir(&self) -> Result<(), JournalError> {
        sync_dir(&self.dir).map_err(JournalError::io("sync", &self.dir))
    }

    /// Empties the set for a restart at another offset: every segment is
    /// moved into `save_to` (created; `None` removes them instead) and every
    /// spare is deleted, since a recycled one holds stale headers that could
    /// name offsets of the new log. Spares still being zero-filled are
    /// zeros and stay welcome.
    pub fn clear(&mut self, save_to: Option<&Path>) -> Result<(), JournalError> {
        if let Some(save) = save_to {
            fs::create_dir_all(save).map_err(JournalError::io("create directory", save))?;
        }
        while let Some(segment) = self.segments.pop_front() {
            let path = segment.file.path.clone();
            drop(segment);
            match save_to {
                Some(save) => {
                    let name = path.file_name().expect("segment file name");
                    fs::rename(&path, save.join(name)).map_err(JournalError::io("rename", &path))?
                }
                None => fs::remove_file(&path).map_err(JournalError::io("remove", &path))?,
            }
        }
        self.collect_spares(false);
        for spare in self.spares.drain(..) {
            fs::remove_file(&spare).map_err(JournalError::io("remove", &spare))?;
        }
        if let Some(save) = save_to {
            sync_dir(save).map_err(JournalError::io("sync", save))?;
        }
        self.sync_dir()
    }

    /// Records durably that the newest writes may be a replica's, each
    /// spanning at most `span` bytes (`Some`), or that they are this
    /// journal's own batches again (`None`).
    pub fn set_raw_tail(&self, span: Option<u64>) -> Result<(), JournalError> {
        let path = self.dir.join(RAW_TAIL_NAME);
        match span {
            Some(span) => {
                let tmp = self.dir.join(format!("{RAW_TAIL_NAME}{TMP_SUFFIX}"));
                let file = File::create(&tmp).map_err(JournalError::io("create", &tmp))?;
                file.write_all_at(format!("{span}\n").as_bytes(), 0)
                    .and_then(|()| file.sync_all())
                    .map_err(JournalError::io("write", &tmp))?;
                fs::rename(&tmp, &path).map_err(JournalError::io("rename", &tmp))?;
            }
            // Already gone is what was asked: an append must not fail on it.
            None => match fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(JournalError::io("remove", &path)(error));
                }
                _ => {}
            },
        }
        self.sync_dir()
    }

    /// Creates the very first segment of an empty journal.
    pub fn create_first(&mut self, start: Offset) -> Result<(), JournalError> {
        assert!(self.segments.is_empty());
        self.roll(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_sort_by_offset_and_round_trip() {
        let name = segment_name(Offset(4096));
        assert_eq!(name, "00000000000000004096.seg");
        assert_eq!(parse_segment_name(&name), Some(Offset(4096)));
        assert_eq!(parse_segment_name("4096.seg"), None);
        assert_eq!(parse_segment_name("spare-00000001.seg"), None);
        assert!(segment_name(Offset(999)) < segment_name(Offset(1000)));
    }

    #[test]
    fn the_raw_tail_mark_goes_up_and_down_and_down_again_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let set = SegmentDir::open(dir.path(), false, 64 * 1024, 0).unwrap();
        assert_eq!(raw_tail(dir.path()).unwrap(), None);
        set.set_raw_tail(Some(40960)).unwrap();
        assert_eq!(raw_tail(dir.path()).unwrap(), Some(40960));
        set.set_raw_tail(None).unwrap();
        assert_eq!(raw_tail(dir.path()).unwrap(), None);
        set.set_raw_tail(None).unwrap();
        fs::write(dir.path().join(RAW_TAIL_NAME), "lots").unwrap();
        let error = raw_tail(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("RAW_TAIL") && error.contains("\"lots\""),
            "{error}"
        );
    }

    #[test]
    fn second_open_of_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = lock_dir(dir.path()).unwrap();
        match lock_dir(dir.path()) {
            Err(JournalError::Locked(path)) => assert_eq!(path, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
