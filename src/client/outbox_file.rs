//! A producer's outbox kept in a local file, so that a client restart
//! loses no send it accepted.
//!
//! ```text
//! header  "TWMQOBX1" | producer id u64
//! record  len u32 | crc32c u32 (of kind and body) | kind u8 | body
//!   1 send      sequence u64 | destination str | headers u16 (str, str)* | body u32 + bytes
//!   2 answered  sequence u64
//!   3 next      sequence u64   (the next sequence to use; written by compaction)
//! str = u16 length + UTF-8; integers little-endian
//! ```
//!
//! A send is appended and flushed (`fdatasync`) before `send` returns: what
//! the application handed over survives a crash. "Answered" records are
//! not flushed: losing one only replays a send the broker already has, and
//! it acknowledges that as a duplicate. A torn record at the end (a crash
//! mid-append, never acknowledged to the application) is cut; a bad record
//! before the end refuses to open. The file is rewritten with only the
//! pending sends once it grows past [`COMPACT_BYTES`]. An exclusive `flock`
//! keeps a second process off the same outbox.

use super::durable::{Outbox, OutboxEntry};
use bytes::Bytes;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TWMQOBX1";
const HEADER_BYTES: usize = 16;
const RECORD_HEADER_BYTES: usize = 9;
/// Rewrite the file with only the pending sends past this size.
pub const COMPACT_BYTES: u64 = 16 * 1024 * 1024;
/// Largest record accepted on reading (a send body is bounded by the
/// protocol's frame limit, far below this).
const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;

const KIND_SEND: u8 = 1;
const KIND_ANSWERED: u8 = 2;
const KIND_NEXT: u8 = 3;

/// What can go wrong with an outbox file.
#[derive(Debug, thiserror::Error)]
pub enum OutboxFileError {
    #[error("outbox {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("outbox {path} is not an outbox file (bad header)")]
    NotAnOutbox { path: PathBuf },
    #[error("outbox {path} is corrupt at byte {at}: {why}")]
    Corrupt { path: PathBuf, at: u64, why: String },
}

/// The open file and what it held.
#[derive(Debug)]
pub struct OutboxFile {
    path: PathBuf,
    file: File,
    bytes: u64,
}

/// An outbox file's contents on opening.
#[derive(Debug)]
pub struct Loaded {
    pub producer_id: u64,
    pub next_sequence: u64,
    pub pending: Outbox,
    /// Bytes of a torn last record that were cut.
    pub torn_bytes: u64,
}

impl OutboxFile {
    /// Opens (or creates, for `producer_id`) the outbox at `path` and
    /// reads back the sends still pending.
    pub fn open(path: &Path, producer_id: u64) -> Result<(OutboxFile, Loaded), OutboxFileError> {
        let io = |source| OutboxFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock takes the descriptor of a file this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OutboxFileError::Locked {
                path: path.to_owned(),
            });
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let mut outbox = OutboxFile {
            path: path.to_owned(),
            file,
            bytes: bytes.len() as u64,
        };
        if bytes.is_empty() {
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&producer_id.to_le_bytes());
            outbox.write_all(&header, true)?;
            let loaded = Loaded {
                producer_id,
                next_sequence: 1,
                pending: Outbox::default(),
                torn_bytes: 0,
            };
            return Ok((outbox, loaded));
        }
        let loaded = outbox.load(&bytes)?;
        if loaded.torn_bytes > 0 {
            let keep = outbox.bytes - loaded.torn_bytes;
            outbox.file.set_len(keep).map_err(io)?;
            outbox.file.sync_data().map_err(io)?;
            // Appends go where the torn record began, not past its end.
            outbox.file.seek(SeekFrom::Start(keep)).map_err(io)?;
            outbox.bytes = keep;
        }
        Ok((outbox, loaded))
    }

    fn load(&self, bytes: &[u8]) -> Result<Loaded, OutboxFileError> {
        if bytes.len() < HEADER_BYTES || &bytes[..8] != MAGIC {
            return Err(OutboxFileError::NotAnOutbox {
                path: self.path.clone(),
            });
        }
        let producer_id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let mut pending = Outbox::default();
        let mut next_sequence = 1;
        let mut at = HEADER_BYTES;
        while at < bytes.len() {
            let corrupt = |why: String| OutboxFileError::Corrupt {
                path: self.path.clone(),
                at: at as u64,
                why,
            };
            let Some((kind, body, used)) = record_at(&bytes[at..]) else {
                // Incomplete or failing its checksum: torn if it is the
                // last thing in the file, else corruption.
                let torn = last_record_torn(&bytes[at..]);
                if torn {
                    return Ok(Loaded {
                        producer_id,
                        next_sequence,
                        pending,
                        torn_bytes: (bytes.len() - at) as u64,
                    });
                }
                return Err(corrupt("a record fails its checksum".into()));
            };
            let mut r = Reader { buf: body };
            match kind {
                KIND_SEND => {
                    let entry = r.send().map_err(corrupt)?;
                    next_sequence = next_sequence.max(entry.sequence + 1);
                    if pending.next_after(entry.sequence).is_some() {
                        return Err(corrupt("sends out of sequence order".into()));
                    }
                    pending.push(entry);
                }
                KIND_ANSWERED => {
                    pending.remove(r.u64().map_err(corrupt)?);
                }
                KIND_NEXT => next_sequence = next_sequence.max(r.u64().map_err(corrupt)?),
                other => return Err(corrupt(format!("unknown record kind {other}"))),
            }
            at += used;
        }
        Ok(Loaded {
            producer_id,
            next_sequence,
            pending,
            torn_bytes: 0,
        })
    }

    /// Appends a send and flushes it.
    pub fn append_send(&mut self, entry: &OutboxEntry) -> Result<(), OutboxFileError> {
        let record = encode(KIND_SEND, &encode_send(entry));
        self.write_all(&record, true)
    }

    /// Records that a send was answered (not flushed: see the module doc).
    pub fn append_answered(&mut self, sequence: u64) -> Result<(), OutboxFileError> {
        self.write_all(&encode(KIND_ANSWERED, &sequence.to_le_bytes()), false)
    }

    /// Rewrites the file with only `pending` once it has grown past
    /// [`COMPACT_BYTES`]: a new file, flushed, renamed over the old one.
    pub fn compact_if_large(
        &mut self,
        producer_id: u64,
        next_sequence: u64,
        pending: &Outbox,
    ) -> Result<(), OutboxFileError> {
        if self.bytes < COMPACT_BYTES {
            return Ok(());
        }
        let io = |source| OutboxFileError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = MAGIC.to_vec();
        text.extend_from_slice(&producer_id.to_le_bytes());
        text.extend_from_slice(&encode(KIND_NEXT, &next_sequence.to_le_bytes()));
        let mut after = 0;
        while let Some(entry) = pending.next_after(after) {
            text.extend_from_slice(&encode(KIND_SEND, &encode_send(entry)));
            after = entry.sequence;
        }
        let tmp = self.path.with_extension("compacting");
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        // SAFETY: flock on the new file's own descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OutboxFileError::Locked { path: tmp });
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        self.file = file;
        self.bytes = text.len() as u64;
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8], sync: bool) -> Result<(), OutboxFileError> {
        let io = |source| OutboxFileError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(bytes).map_err(io)?;
        if sync {
            self.file.sync_data().map_err(io)?;
        }
        self.bytes += bytes.len() as u64;
        Ok(())
    }
}

fn encode(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(RECORD_HEADER_BYTES + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), body);
    record.extend_from_slice(&crc.to_le_bytes());
    record.push(kind);
    record.extend_from_slice(body);
    record
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u16).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

fn encode_send(entry: &OutboxEntry) -> Vec<u8> {
    let mut body = Vec::with_capacity(32 + entry.body.len());
    body.extend_from_slice(&entry.sequence.to_le_bytes());
    put_str(&mut body, &entry.destination);
    body.extend_from_slice(&(entry.headers.len() as u16).to_le_bytes());
    for (key, value) in &entry.headers {
        put_str(&mut body, key);
        put_str(&mut body, value);
    }
    body.extend_from_slice(&(entry.body.len() as u32).to_le_bytes());
    body.extend_from_slice(&entry.body);
    body
}

/// The whole, checked record at the start of `bytes`: (kind, body, bytes
/// used); `None` if it is incomplete or fails its checksum.
fn record_at(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    if len > RECORD_BYTES_MAX {
        return None;
    }
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let kind = header[8];
    let body = bytes.get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)?;
    (crc32c::crc32c_append(crc32c::crc32c(&[kind]), body) == crc).then_some((
        kind,
        body,
        RECORD_HEADER_BYTES + len,
    ))
}

/// Whether a record that does not check is the torn last one: it claims
/// to run to (or past) the end of the file.
fn last_record_torn(rest: &[u8]) -> bool {
    match rest.get(..4) {
        None => true,
        Some(len) => {
            let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
            RECORD_HEADER_BYTES.saturating_add(len) >= rest.len()
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.buf.len() < n {
            return Err(format!("a record ends {} bytes short", n - self.buf.len()));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn str(&mut self) -> Result<String, String> {
        let len = usize::from(self.u16()?);
        String::from_utf8(self.take(len)?.to_vec()).map_err(|_| "a string is not UTF-8".into())
    }

    fn send(&mut self) -> Result<OutboxEntry, String> {
        let sequence = self.u64()?;
        let destination = self.str()?;
        let count = self.u16()?;
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            headers.push((self.str()?, self.str()?));
        }
        let len = self.u32()? as usize;
        let body = Bytes::copy_from_slice(self.take(len)?);
        if !self.buf.is_empty() {
            return Err(format!("{} bytes after a send", self.buf.len()));
        }
        Ok(OutboxEntry {
            sequence,
            destination,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(sequence: u64) -> OutboxEntry {
        OutboxEntry {
            sequence,
            destination: "/queue/a".into(),
            headers: vec![("k".into(), format!("v{sequence}"))],
            body: Bytes::from(format!("body {sequence}")),
        }
    }

    fn pending(loaded: &Loaded) -> Vec<u64> {
        let mut out = Vec::new();
        let mut after = 0;
        while let Some(e) = loaded.pending.next_after(after) {
            out.push(e.sequence);
            after = e.sequence;
        }
        out
    }

    #[test]
    fn pending_sends_and_the_producer_id_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        {
            let (mut file, loaded) = OutboxFile::open(&path, 77).unwrap();
            assert_eq!((loaded.producer_id, loaded.next_sequence), (77, 1));
            for s in 1..=4 {
                file.append_send(&entry(s)).unwrap();
            }
            file.append_answered(2).unwrap();
            file.append_answered(1).unwrap();
        }
        let (_, loaded) = OutboxFile::open(&path, 99).unwrap();
        assert_eq!(loaded.producer_id, 77, "the file's id, not the new one");
        assert_eq!(loaded.next_sequence, 5);
        assert_eq!(pending(&loaded), vec![3, 4]);
        assert_eq!(loaded.pending.next_after(2), Some(&entry(3)), "intact");
    }

    #[test]
    fn a_torn_last_record_is_cut_and_corruption_before_it_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        {
            let (mut file, _) = OutboxFile::open(&path, 1).unwrap();
            file.append_send(&entry(1)).unwrap();
            file.append_send(&entry(2)).unwrap();
        }
        let full = std::fs::read(&path).unwrap();
        // A crash in the middle of the second append.
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        {
            let (mut file, loaded) = OutboxFile::open(&path, 1).unwrap();
            assert_eq!(pending(&loaded), vec![1]);
            assert!(loaded.torn_bytes > 0);
            assert!(
                std::fs::metadata(&path).unwrap().len() < full.len() as u64 - 5,
                "the torn bytes are gone"
            );
            file.append_send(&entry(3)).unwrap();
        }
        let (_, loaded) = OutboxFile::open(&path, 1).unwrap();
        assert_eq!(pending(&loaded), vec![1, 3], "appends follow the cut");
        // A flipped bit in the first record, with a whole one after it.
        let mut bad = full.clone();
        bad[HEADER_BYTES + RECORD_HEADER_BYTES + 3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let error = OutboxFile::open(&path, 1).unwrap_err().to_string();
        assert!(error.contains("corrupt at byte 16"), "{error}");
        std::fs::write(&path, b"something else entirely").unwrap();
        let error = OutboxFile::open(&path, 1).unwrap_err().to_string();
        assert!(error.contains("not an outbox file"), "{error}");
    }

    #[test]
    fn a_second_process_cannot_open_the_same_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let _first = OutboxFile::open(&path, 1).unwrap();
        let error = OutboxFile::open(&path, 1).unwrap_err();
        assert!(matches!(error, OutboxFileError::Locked { .. }), "{error}");
    }

    #[test]
    fn compaction_keeps_the_pending_sends_and_the_next_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let big = OutboxEntry {
            body: Bytes::from(vec![7u8; 1024 * 1024]),
            ..entry(0)
        };
        {
            let (mut file, _) = OutboxFile::open(&path, 5).unwrap();
            let mut pending = Outbox::default();
            for s in 1..=20 {
                let e = OutboxEntry {
                    sequence: s,
                    ..big.clone()
                };
                file.append_send(&e).unwrap();
                pending.push(e);
            }
            for s in 1..=19 {
                pending.remove(s);
                file.append_answered(s).unwrap();
            }
            file.compact_if_large(5, 21, &pending).unwrap();
            assert!(std::fs::metadata(&path).unwrap().len() < 2 * 1024 * 1024);
            // Appends go on in the new file.
            file.append_send(&entry(21)).unwrap();
        }
        let (_, loaded) = OutboxFile::open(&path, 5).unwrap();
        assert_eq!(pending(&loaded), vec![20, 21]);
        assert_eq!(loaded.next_sequence, 22);
        assert!(!path.with_extension("compacting").exists());
    }
}
