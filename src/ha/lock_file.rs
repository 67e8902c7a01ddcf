//! The HA lock file: which server of a pair may be active, and the epoch of
//! the newest activation.
//!
//! ```text
//!   server A ── LockFile::open ─┐          ┌─ LockFile::open ── server B
//!                               ▼          ▼
//!            ha.lock on storage both reach (local disk or NFSv4)
//!            one OFD write lock over the whole file: one holder at a time
//!            content, written and fdatasync'ed under the lock:
//!              # twinmq HA lock file: ...
//!              cluster_id = twinmq-local
//!              epoch = 7
//!              holder = primary
//!              time_ms = 1716200000000
//!              #            (padding to a fixed 512 bytes)
//! ```
//!
//! What it owns: opening and checking the file, the OFD lock (through the
//! wrappers in `crate::io`), and reading and writing the record. The record
//! is text so an operator can `cat` it; parsing is strict, so a file that is
//! not ours is refused rather than guessed at.
//!
//! What it must never do: create the lock file (a missing file means the
//! shared storage is not mounted or the path is wrong; creating one would let
//! each server lock a file of its own), wait for the lock (callers retry on
//! their own schedule), decide what an epoch means (the state machine does),
//! or retry a failed flush.

use crate::config::{SERVER_NAME_CHARS_MAX, check_cluster_id, check_word};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Size of every record written. A fixed size means a rewrite covers the
/// previous record exactly, so no crash between the write and the truncate
/// can leave the tail of a longer old record behind; and a write of at most
/// one 512-byte sector at offset 0 is not torn by a power loss on the disks
/// we target.
pub const LOCK_RECORD_BYTES: usize = 512;

/// Largest lock file read. Ours are [`LOCK_RECORD_BYTES`]; anything much
/// bigger is some other file, and is refused before it is read into memory.
pub const LOCK_FILE_BYTES_MAX: u64 = 64 * 1024;

/// First line of every record, for the operator who finds the file.
const HEADER: &str =
    "# twinmq HA lock file: written by the active server under an OFD lock; do not edit\n";

/// Longest excerpt of a bad line quoted in an error.
const QUOTE_CHARS_MAX: usize = 80;

/// What a lock file says: whose cluster it belongs to, the epoch of the
/// newest activation, who activated, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockContent {
    /// The pair's `ha.cluster_id`.
    pub cluster_id: String,
    /// Activation sequence: every activation writes a larger one. 0 means
    /// no server has activated yet.
    pub epoch: u64,
    /// `server.name` of the server that activated; empty when none has.
    pub holder: String,
    /// When it activated, in milliseconds since the Unix epoch (for
    /// operators; nothing orders by it).
    pub time_ms: u64,
}

/// The outcome of [`LockFile::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    /// The lock is ours. `file` is what the file said when we got it: its
    /// epoch is the newest activation, which the caller's own must exceed.
    Acquired { file: LockContent },
    /// Another server (or another open of the file) holds the lock.
    Busy,
}

/// Why the lock file cannot be used, or the lock cannot be kept. Every
/// error from [`LockFile::revalidate`] means: stop writing at once.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock file does not exist.
    #[error(
        "lock file {} does not exist: create it (an empty file) on the shared storage",
        path.display()
    )]
    Missing { path: PathBuf },
    /// The path exists but cannot serve as the lock file: it cannot be
    /// opened for reading and writing, or is not a regular file.
    #[error("lock file {} cannot be used: {why}", path.display())]
    Unusable { path: PathBuf, why: String },
    /// The file belongs to another pair.
    #[error(
        "lock file {} belongs to cluster {found:?}, but this server's ha.cluster_id is \
         {expected:?}: each pair needs a lock file of its own (the servers compare the cluster \
         id inside the file, not its path)",
        path.display()
    )]
    ClusterMismatch {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The content is not a lock record.
    #[error("lock file {} is not a twinmq lock file: {why}", path.display())]
    Malformed { path: PathBuf, why: String },
    /// A lock call, read, write or flush failed.
    #[error("lock file {}: {op} failed: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another server activated since we wrote our record: the file names
    /// another epoch or holder. The lock has been released.
    #[error("another server activated since: the lock file now says {found}")]
    Superseded { found: LockContent },
    /// The lock we held is gone, or can no longer be confirmed. The lock has
    /// been released.
    #[error("lost the lock on {}: {why}", path.display())]
    Lost { path: PathBuf, why: String },
}

impl LockError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LockError + 'a {
        move |source| LockError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

impl LockContent {
    /// What an empty lock file stands for: no server has activated yet.
    pub fn vacant(cluster_id: &str) -> LockContent {
        LockContent {
            cluster_id: cluster_id.to_owned(),
            epoch: 0,
            holder: String::new(),
            time_ms: 0,
        }
    }

    /// Whether no server has activated yet (an empty file).
    pub fn is_vacant(&self) -> bool {
        self.holder.is_empty()
    }

    /// Parses a record. Strict: exactly the keys `cluster_id`, `epoch`,
    /// `holder` and `time_ms`, once each, as `key = value` lines; `#`
    /// comments and blank lines are skipped. Returns why not, naming the
    /// line.
    pub fn parse(text: &str) -> Result<LockContent, String> {
        let mut cluster_id = None;
        let mut epoch = None;
        let mut holder = None;
        let mut time_ms = None;
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once(" = ") else {
                return Err(format!(
                    "line {number}: expected `key = value`, found {:?}",
                    quote(line)
                ));
            };
            let duplicate = || format!("line {number}: {key} appears twice");
            match key {
                "cluster_id" => {
                    check_cluster_id(value)
                        .map_err(|why| format!("line {number}: {key}: {why}"))?;
                    if cluster_id.replace(value.to_owned()).is_some() {
                        return Err(duplicate());
                    }
                }
                "holder" => {
                    check_word(value, SERVER_NAME_CHARS_MAX)
                        .map_err(|why| format!("line {number}: {key}: {why}"))?;
                    if holder.replace(value.to_owned()).is_some() {
                        return Err(duplicate());
                    }
                }
                "epoch" | "time_ms" => {
                    // u64's FromStr also takes a leading '+'; a record we
                    // wrote never has one.
                    let parsed = value
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| value.parse::<u64>().ok())
                        .flatten()
                        .ok_or_else(|| {
                            format!(
                                "line {number}: {key}: {:?} is not a number from 0 to {}",
                                quote(value),
                                u64::MAX
                            )
                        })?;
                    let slot = if key == "epoch" {
                        &mut epoch
                    } else {
                        &mut time_ms
                    };
                    if slot.replace(parsed).is_some() {
                        return Err(duplicate());
                    }
                }
                other => {
                    return Err(format!("line {number}: unknown key {:?}", quote(other)));
                }
            }
        }
        let missing = |key: &str| format!("{key} is missing");
        Ok(LockContent {
            cluster_id: cluster_id.ok_or_else(|| missing("cluster_id"))?,
            epoch: epoch.ok_or_else(|| missing("epoch"))?,
            holder: holder.ok_or_else(|| missing("holder"))?,
            time_ms: time_ms.ok_or_else(|| missing("time_ms"))?,
        })
    }

    /// The record as written: exactly [`LOCK_RECORD_BYTES`] bytes of text,
    /// padded by a final comment line.
    ///
    /// # Panics
    ///
    /// If the content would not parse back (a vacant record, or an id
    /// outside its alphabet): writing it would lock every server out.
    pub fn render(&self) -> String {
        if let Err(why) = self.check() {
            panic!("LockContent::render of a record that would not parse back: {why}");
        }
        let mut text = format!(
            "{HEADER}cluster_id = {}\nepoch = {}\nholder = {}\ntime_ms = {}\n",
            self.cluster_id, self.epoch, self.holder, self.time_ms
        );
        // The ids are at most 64 characters each, so the record is under
        // 300 bytes and the padding line ("#", spaces, "\n") always fits.
        let room = LOCK_RECORD_BYTES
            .checked_sub(text.len() + 2)
            .expect("lock record fits LOCK_RECORD_BYTES");
        text.push('#');
        text.extend(std::iter::repeat_n(' ', room));
        text.push('\n');
        assert_eq!(text.len(), LOCK_RECORD_BYTES);
        text
    }

    /// Whether the record would parse back: both ids in their alphabet.
    fn check(&self) -> Result<(), String> {
        check_cluster_id(&self.cluster_id).map_err(|why| format!("cluster_id: {why}"))?;
        check_word(&self.holder, SERVER_NAME_CHARS_MAX).map_err(|why| format!("holder: {why}"))
    }
}

impl fmt::Display for LockContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_vacant() {
            return write!(f, "no holder yet (cluster {})", self.cluster_id);
        }
        write!(
            f,
            "epoch {} activated by {} at {} ms (cluster {})",
            self.epoch, self.holder, self.time_ms, self.cluster_id
        )
    }
}

/// The lock file of one server. Holding the lock is RAII: [`Self::release`]
/// (or dropping the `LockFile`) unlocks and closes the file.
#[derive(Debug)]
pub struct LockFile {
    path: PathBuf,
    cluster_id: String,
    /// The descriptor the lock is held on; `None` while not held. Each
    /// attempt to acquire opens the path afresh, so a file that was replaced
    /// meanwhile is the one locked, and on NFS the open revalidates the
    /// client's cache (close-to-open consistency).
    held: Option<File>,
}

impl LockFile {
    /// Checks the lock file at `path` without locking it: it must exist, be
    /// a regular file that can be opened for reading and writing, and be
    /// empty (no holder yet) or hold a record of `cluster_id`.
    ///
    /// # Panics
    ///
    /// If `cluster_id` is not a valid cluster id; profiles are validated
    /// before anything opens the lock file.
    pub fn open(path: &Path, cluster_id: &str) -> Result<LockFile, LockError> {
        if let Err(why) = check_cluster_id(cluster_id) {
            panic!("LockFile::open with an unvalidated cluster id: {why}");
        }
        let file = open_rw(path)?;
        read_content(&file, path, cluster_id)?;
        Ok(LockFile {
            path: path.to_owned(),
            cluster_id: cluster_id.to_owned(),
            held: None,
        })
    }

    /// The lock file's path, as given to [`Self::open`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tries to take the lock without waiting. When acquired, returns what
    /// the file says, read under the lock. Called while the lock is held it
    /// takes it again (a no-op for the kernel) and reads the file afresh;
    /// should that fail, the lock is released and the answer is `Busy`.
    pub fn try_acquire(&mut self) -> Result<Acquire, LockError> {
        let newly = self.held.is_none();
        let file = match self.held.take() {
            Some(file) => file,
            None => open_rw(&self.path)?,
        };
        match crate::io::ofd_try_lock(&file) {
            Ok(true) => {}
            Ok(false) => {
                if !newly {
                    tracing::warn!(
                        "lost the lock on {}: another process holds it",
                        self.path.display()
                    );
                }
                unlock_and_close(file, &self.path);
                return Ok(Acquire::Busy);
            }
            Err(error) => {
                unlock_and_close(file, &self.path);
                return Err(LockError::Io {
                    op: "lock (fcntl F_OFD_SETLK)",
                    path: self.path.clone(),
                    source: error,
                });
            }
        }
        // The path may have been replaced between our open and the lock; a
        // lock on a file nobody else opens would exclude no one.
        match same_file(&file, &self.path) {
            Ok(true) => {}
            Ok(false) => {
                unlock_and_close(file, &self.path);
                return Ok(Acquire::Busy);
            }
            Err(error) => {
                unlock_and_close(file, &self.path);
                return Err(LockError::Io {
                    op: "stat",
                    path: self.path.clone(),
                    source: error,
                });
            }
        }
        // Read through the locked descriptor, after locking: on NFS taking a
        // lock makes the client drop its cached pages of the file.
        let content = match read_content(&file, &self.path, &self.cluster_id) {
            Ok(content) => content,
            Err(error) => {
                unlock_and_close(file, &self.path);
                return Err(error);
            }
        };
        self.held = Some(file);
        if newly {
            tracing::info!("Successfully acquired lock on {}", self.path.display());
        }
        Ok(Acquire::Acquired { file: content })
    }

    /// Writes `content` over the record and flushes it (`fdatasync`) before
    /// returning, so the caller may act on it. On error the file's content
    /// is unknown: the caller must not act as the holder.
    ///
    /// # Panics
    ///
    /// If the lock is not held, or `content` names another cluster or would
    /// not parse back: bugs of the caller.
    pub fn write(&mut self, content: &LockContent) -> Result<(), LockError> {
        let Some(file) = &self.held else {
            panic!(
                "LockFile::write on {} without holding the lock",
                self.path.display()
            );
        };
        assert_eq!(
            content.cluster_id, self.cluster_id,
            "LockFile::write of another cluster's record"
        );
        let record = content.render();
        file.write_all_at(record.as_bytes(), 0)
            .map_err(LockError::io("write", &self.path))?;
        // Only shortens a file some earlier version or an operator left
        // longer; every record of ours has the same length.
        file.set_len(record.len() as u64)
            .map_err(LockError::io("truncate", &self.path))?;
        file.sync_data()
            .map_err(LockError::io("flush (fdatasync)", &self.path))
    }

    /// Confirms that we still hold the lock and that nobody activated since
    /// we wrote `expected`: takes the lock again (`Lost` if that fails),
    /// checks that the path still names the file we locked (`Lost` if it
    /// was replaced or removed), and re-reads the record under the lock
    /// (`Superseded` if its cluster, epoch or holder differ from
    /// `expected`). On any error the lock is released; the caller must fence
    /// itself before writing another byte.
    ///
    /// # Panics
    ///
    /// If the lock is not held.
    pub fn revalidate(&mut self, expected: &LockContent) -> Result<(), LockError> {
        let result = self.check_still_ours(expected);
        if result.is_err() {
            self.release();
        }
        result
    }

    fn check_still_ours(&self, expected: &LockContent) -> Result<(), LockError> {
        let Some(file) = &self.held else {
            panic!(
                "LockFile::revalidate on {} without holding the lock",
                self.path.display()
            );
        };
        let lost = |why: String| {
            Err(LockError::Lost {
                path: self.path.clone(),
                why,
            })
        };
        // Re-assert first: on NFS a lock request is the cache coherency
        // point, so the read below sees the server's bytes.
        match crate::io::ofd_try_lock(file) {
            Ok(true) => {}
            Ok(false) => return lost("another process holds it now".to_owned()),
            Err(error) => return lost(format!("taking it again failed: {error}")),
        }
        match same_file(file, &self.path) {
            Ok(true) => {}
            Ok(false) => {
                return lost(
                    "the file at this path was replaced or removed, so the lock is on a file \
                     the peer does not see"
                        .to_owned(),
                );
            }
            Err(error) => return lost(format!("cannot stat the path: {error}")),
        }
        let found = match read_content(file, &self.path, &self.cluster_id) {
            Ok(found) => found,
            // A read error is how NFS reports a lock lost with its lease.
            Err(LockError::Io { op, source, .. }) => {
                return lost(format!("cannot {op} the file: {source}"));
            }
            Err(other) => return Err(other),
        };
        if found.cluster_id != expected.cluster_id
            || found.epoch != expected.epoch
            || found.holder != expected.holder
        {
            return Err(LockError::Superseded { found });
        }
        Ok(())
    }

    /// Unlocks and closes the file, if held. Dropping the `LockFile` does
    /// the same.
    pub fn release(&mut self) {
        if let Some(file) = self.held.take() {
            unlock_and_close(file, &self.path);
            tracing::info!("Released lock on {}", self.path.display());
        }
    }

    /// Whether we hold the lock, as far as this process knows;
    /// [`Self::revalidate`] confirms it with the kernel and the file.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Reads what the file says, without the lock, through a descriptor of
    /// its own (closing it leaves our lock alone: OFD locks belong to the
    /// descriptor that took them). An empty file reads as
    /// [`LockContent::vacant`].
    pub fn read(&self) -> Result<LockContent, LockError> {
        let file = File::open(&self.path).map_err(|error| open_error(&self.path, error))?;
        read_content(&file, &self.path, &self.cluster_id)
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        self.release();
    }
}

/// Opens an existing lock file for reading and writing, never creating it.
fn open_rw(path: &Path) -> Result<File, LockError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|error| open_error(path, error))?;
    let metadata = file.metadata().map_err(LockError::io("stat", path))?;
    if !metadata.is_file() {
        return Err(LockError::Unusable {
            path: path.to_owned(),
            why: "it is not a regular file".to_owned(),
        });
    }
    Ok(file)
}

fn open_error(path: &Path, error: io::Error) -> LockError {
    match error.kind() {
        io::ErrorKind::NotFound => LockError::Missing {
            path: path.to_owned(),
        },
        _ => LockError::Unusable {
            path: path.to_owned(),
            why: format!("cannot open it for reading and writing: {error}"),
        },
    }
}

/// Unlocks before closing: the close alone would release the lock only once
/// no other descriptor shares the open file description, and being explicit
/// costs one syscall.
fn unlock_and_close(file: File, path: &Path) {
    if let Err(error) = crate::io::ofd_unlock(&file) {
        // Closing the descriptor below still releases it.
        tracing::debug!("unlocking {} failed ({error}); closing it", path.display());
    }
    drop(file);
}

/// Whether `path` still names the file `file` has open.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    let ours = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(theirs) => Ok(theirs.dev() == ours.dev() && theirs.ino() == ours.ino()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

/// Reads and parses the whole file from offset 0 (positional reads, so the
/// descriptor's offset never matters), and checks its cluster id.
fn read_content(file: &File, path: &Path, cluster_id: &str) -> Result<LockContent, LockError> {
    let malformed = |why: String| LockError::Malformed {
        path: path.to_owned(),
        why,
    };
    let mut bytes = Vec::with_capacity(LOCK_RECORD_BYTES);
    let mut chunk = [0u8; LOCK_RECORD_BYTES];
    loop {
        match file.read_at(&mut chunk, bytes.len() as u64) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(LockError::io("read", path)(error)),
        }
        if bytes.len() as u64 > LOCK_FILE_BYTES_MAX {
            return Err(malformed(format!(
                "it is larger than {LOCK_FILE_BYTES_MAX} bytes"
            )));
        }
    }
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| malformed("it is not text (invalid UTF-8)".to_owned()))?;
    if text.trim().is_empty() {
        return Ok(LockContent::vacant(cluster_id));
    }
    let content = LockContent::parse(text).map_err(malformed)?;
    if content.cluster_id != cluster_id {
        return Err(LockError::ClusterMismatch {
            path: path.to_owned(),
            expected: cluster_id.to_owned(),
            found: content.cluster_id,
        });
    }
    Ok(content)
}

/// At most [`QUOTE_CHARS_MAX`] characters of `text`, for error messages.
fn quote(text: &str) -> &str {
    match text.char_indices().nth(QUOTE_CHARS_MAX) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const CLUSTER: &str = "twinmq-test";

    /// A temporary directory with an empty lock file in it.
    fn setup() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha.lock");
        File::create(&path).unwrap();
        (dir, path)
    }

    fn record(epoch: u64, holder: &str) -> LockContent {
        LockContent {
            cluster_id: CLUSTER.to_owned(),
            epoch,
            holder: holder.to_owned(),
            time_ms: 1_716_200_000_000_u64.wrapping_add(epoch),
        }
    }

    fn acquired(lock: &mut LockFile) -> LockContent {
        match lock.try_acquire().unwrap() {
            Acquire::Acquired { file } => file,
            Acquire::Busy => panic!("expected to acquire {}", lock.path().display()),
        }
    }

    #[test]
    fn second_open_of_the_file_is_busy_while_the_first_holds_it_even_in_one_process() {
        let (_dir, path) = setup();
        let mut first = LockFile::open(&path, CLUSTER).unwrap();
        let mut second = LockFile::open(&path, CLUSTER).unwrap();
        assert_eq!(acquired(&mut first), LockContent::vacant(CLUSTER));
        assert!(first.is_held());
        assert_eq!(second.try_acquire().unwrap(), Acquire::Busy);
        assert!(!second.is_held());
        first.release();
        assert!(!first.is_held());
        assert_eq!(acquired(&mut second), LockContent::vacant(CLUSTER));
        assert_eq!(first.try_acquire().unwrap(), Acquire::Busy);
    }

    #[test]
    fn dropping_the_holder_releases_the_lock() {
        // What a killed process amounts to: its descriptors close.
        let (_dir, path) = setup();
        let mut first = LockFile::open(&path, CLUSTER).unwrap();
        let mut second = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut first);
        assert_eq!(second.try_acquire().unwrap(), Acquire::Busy);
        drop(first);
        acquired(&mut second);
    }

    #[test]
    fn closing_other_descriptors_of_the_file_keeps_the_lock() {
        // Classic POSIX locks would be dropped by any close of the file in
        // the process; OFD locks must not be.
        let (_dir, path) = setup();
        let mut holder = LockFile::open(&path, CLUSTER).unwrap();
        let mut other = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut holder);
        holder.read().unwrap();
        other.read().unwrap();
        drop(File::open(&path).unwrap());
        std::fs::read(&path).unwrap();
        assert_eq!(other.try_acquire().unwrap(), Acquire::Busy);
        assert!(holder.is_held());
    }

    #[test]
    fn written_record_round_trips_and_is_what_the_next_holder_finds() {
        let (_dir, path) = setup();
        let mut first = LockFile::open(&path, CLUSTER).unwrap();
        let mut second = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut first);
        let mine = record(7, "primary");
        first.write(&mine).unwrap();
        assert_eq!(first.read().unwrap(), mine);
        assert_eq!(second.read().unwrap(), mine);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), LOCK_RECORD_BYTES);
        assert!(text.starts_with(&format!(
            "{HEADER}cluster_id = {CLUSTER}\nepoch = 7\nholder = primary\ntime_ms = 1716200000007\n#"
        )));
        assert_eq!(LockContent::parse(&text).unwrap(), mine);
        drop(first);
        assert_eq!(acquired(&mut second), mine);
    }

    #[test]
    fn a_rewrite_leaves_nothing_of_a_longer_record_or_file() {
        let (_dir, path) = setup();
        // A longer file than ours (an older version, an operator's edit).
        let long = format!("{}# {}\n", record(1, "x").render(), "z".repeat(2000));
        std::fs::write(&path, long).unwrap();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        assert_eq!(acquired(&mut lock), record(1, "x"));
        let long_holder = "h".repeat(SERVER_NAME_CHARS_MAX);
        lock.write(&record(u64::MAX, &long_holder)).unwrap();
        lock.write(&record(2, "p")).unwrap();
        assert_eq!(lock.read().unwrap(), record(2, "p"));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            LOCK_RECORD_BYTES as u64
        );
    }

    #[test]
    fn try_acquire_while_holding_reads_the_file_again() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut lock);
        lock.write(&record(3, "primary")).unwrap();
        assert_eq!(acquired(&mut lock), record(3, "primary"));
        assert!(lock.is_held());
    }

    #[test]
    fn revalidate_passes_while_the_file_says_what_we_wrote() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut lock);
        let mine = record(4, "primary");
        lock.write(&mine).unwrap();
        for _ in 0..3 {
            lock.revalidate(&mine).unwrap();
        }
        // The time is for operators; only the epoch and holder decide.
        lock.revalidate(&LockContent {
            time_ms: 0,
            ..mine.clone()
        })
        .unwrap();
        assert!(lock.is_held());
    }

    #[test]
    fn revalidate_detects_another_writers_epoch_and_releases() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        let mut peer = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut lock);
        let mine = record(4, "primary");
        lock.write(&mine).unwrap();
        // Someone wrote without our lock (as after a lock lost on NFS).
        let theirs = record(5, "secondary");
        std::fs::write(&path, theirs.render()).unwrap();
        match lock.revalidate(&mine) {
            Err(LockError::Superseded { found }) => assert_eq!(found, theirs),
            other => panic!("expected Superseded, got {other:?}"),
        }
        assert!(!lock.is_held());
        // Released, so the server that activated can take it.
        assert_eq!(acquired(&mut peer), theirs);
    }

    #[test]
    fn revalidate_detects_another_holder_at_the_same_epoch() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut lock);
        lock.write(&record(4, "primary")).unwrap();
        std::fs::write(&path, record(4, "secondary").render()).unwrap();
        let error = lock.revalidate(&record(4, "primary")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "another server activated since: the lock file now says epoch 4 activated by \
             secondary at 1716200000004 ms (cluster twinmq-test)"
        );
    }

    #[test]
    fn revalidate_detects_a_replaced_lock_file() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        acquired(&mut lock);
        let mine = record(4, "primary");
        lock.write(&mine).unwrap();
        // Same content, new file: a peer opening the path would lock that.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, mine.render()).unwrap();
        let error = lock.revalidate(&mine).unwrap_err();
        assert!(matches!(error, LockError::Lost { .. }), "{error:?}");
        assert!(error.to_string().contains("replaced or removed"), "{error}");
        assert!(!lock.is_held());
        // The next attempt locks the file that is there now.
        assert_eq!(acquired(&mut lock), mine);
    }

    #[test]
    fn missing_lock_file_names_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ha.lock");
        let error = LockFile::open(&path, CLUSTER).unwrap_err();
        assert!(matches!(error, LockError::Missing { .. }), "{error:?}");
        assert_eq!(
            error.to_string(),
            format!(
                "lock file {} does not exist: create it (an empty file) on the shared storage",
                path.display()
            )
        );
        assert!(!path.exists(), "open must never create the lock file");
    }

    #[test]
    fn lock_file_removed_after_open_is_reported_missing_when_acquiring() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        std::fs::remove_file(&path).unwrap();
        let error = lock.try_acquire().unwrap_err();
        assert!(matches!(error, LockError::Missing { .. }), "{error:?}");
    }

    #[test]
    fn a_directory_is_not_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let error = LockFile::open(dir.path(), CLUSTER).unwrap_err();
        assert!(matches!(error, LockError::Unusable { .. }), "{error:?}");
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!(
                "lock file {} cannot be used: ",
                dir.path().display()
            )),
            "{shown}"
        );
    }

    #[test]
    fn another_clusters_lock_file_is_refused_naming_both_ids() {
        let (_dir, path) = setup();
        let other = LockContent {
            cluster_id: "other-pair".to_owned(),
            ..record(9, "primary")
        };
        std::fs::write(&path, other.render()).unwrap();
        let error = LockFile::open(&path, CLUSTER).unwrap_err();
        assert!(
            matches!(error, LockError::ClusterMismatch { .. }),
            "{error:?}"
        );
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!(
                "lock file {} belongs to cluster \"other-pair\", but this server's \
                 ha.cluster_id is \"twinmq-test\"",
                path.display()
            )),
            "{shown}"
        );
    }

    #[test]
    fn an_empty_or_blank_file_has_no_holder_yet() {
        let (_dir, path) = setup();
        for text in ["", "\n", "  \n\n"] {
            std::fs::write(&path, text).unwrap();
            let lock = LockFile::open(&path, CLUSTER).unwrap();
            let content = lock.read().unwrap();
            assert_eq!(content, LockContent::vacant(CLUSTER));
            assert!(content.is_vacant());
            assert_eq!(content.epoch, 0);
            assert_eq!(content.to_string(), "no holder yet (cluster twinmq-test)");
        }
    }

    #[test]
    fn parsing_is_strict_and_names_the_line() {
        let good = "cluster_id = c\nepoch = 1\nholder = h\ntime_ms = 2\n";
        assert_eq!(
            LockContent::parse(good).unwrap(),
            LockContent {
                cluster_id: "c".to_owned(),
                epoch: 1,
                holder: "h".to_owned(),
                time_ms: 2,
            }
        );
        let cases = [
            (
                format!("{good}colour = red\n"),
                "line 5: unknown key \"colour\"",
            ),
            (format!("{good}epoch = 3\n"), "line 5: epoch appears twice"),
            (
                good.replace("epoch = 1", "epoch=1"),
                "line 2: expected `key = value`",
            ),
            (
                good.replace("epoch = 1", "epoch = +1"),
                "line 2: epoch: \"+1\" is not a number",
            ),
            (
                good.replace("epoch = 1", "epoch = -1"),
                "line 2: epoch: \"-1\" is not a number",
            ),
            (
                good.replace("time_ms = 2", "time_ms = 18446744073709551616"),
                "line 4: time_ms: \"18446744073709551616\" is not a number",
            ),
            (
                good.replace("holder = h", "holder = a b"),
                "line 3: holder: \"a b\" may only use",
            ),
            (
                good.replace("cluster_id = c", "cluster_id = "),
                "line 1: cluster_id: \"\" must be 1 to",
            ),
            (good.replace("holder = h\n", ""), "holder is missing"),
            (
                "garbage".to_owned(),
                "line 1: expected `key = value`, found \"garbage\"",
            ),
        ];
        for (text, expected) in cases {
            let why = LockContent::parse(&text).unwrap_err();
            assert!(why.contains(expected), "{text:?}: {why}");
        }
    }

    #[test]
    fn foreign_content_stops_open_naming_the_path() {
        let (_dir, path) = setup();
        let cases: [(&[u8], &str); 3] = [
            (
                b"[server]\nname = \"x\"\n",
                "line 1: expected `key = value`",
            ),
            (b"\xff\xfe\x00", "not text"),
            (
                &[b'#'; LOCK_FILE_BYTES_MAX as usize + 1],
                "larger than 65536 bytes",
            ),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, bytes).unwrap();
            let error = LockFile::open(&path, CLUSTER).unwrap_err();
            let shown = error.to_string();
            assert!(
                shown.starts_with(&format!(
                    "lock file {} is not a twinmq lock file: ",
                    path.display()
                )) && shown.contains(expected),
                "{shown}"
            );
        }
    }

    #[test]
    #[should_panic(expected = "without holding the lock")]
    fn writing_without_the_lock_is_a_bug() {
        let (_dir, path) = setup();
        let mut lock = LockFile::open(&path, CLUSTER).unwrap();
        let _ = lock.write(&record(1, "primary"));
    }

    #[test]
    #[should_panic(expected = "would not parse back")]
    fn rendering_a_vacant_record_is_a_bug() {
        LockContent::vacant(CLUSTER).render();
    }
}
