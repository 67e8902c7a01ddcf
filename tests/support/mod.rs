//! Helpers shared by the journal integration tests.
#![allow(dead_code)]

use std::path::Path;
use twinmq::ids::{Epoch, Offset};
use twinmq::io::Ring;
use twinmq::journal::{Durability, Journal, JournalOptions, RecordKind, RecordReader};

/// Small segments and batches so that tests cross segment boundaries often.
pub fn small_options(durability: Durability) -> JournalOptions {
    JournalOptions {
        segment_bytes: 64 * 1024,
        batch_bytes_max: 16 * 1024,
        durability,
        spare_segments: 1,
        ..JournalOptions::default()
    }
}

pub fn ring() -> Ring {
    Ring::new(64).expect("io_uring ring")
}

pub fn open(dir: &Path, options: &JournalOptions) -> Journal {
    Journal::open(dir, options.clone()).expect("open journal")
}

/// Appends `payload` as an opaque record, flushing first when the batch is full.
pub fn append(journal: &mut Journal, ring: &mut Ring, epoch: u64, payload: &[u8]) -> Offset {
    loop {
        match journal.append(RecordKind::Opaque, Epoch(epoch), payload) {
            Ok(offset) => return offset,
            Err(twinmq::journal::JournalError::Full) => {
                journal.sync(ring).expect("sync");
            }
            Err(other) => panic!("append failed: {other}"),
        }
    }
}

/// All durable records as (kind, epoch, payload).
pub fn read_all(journal: &Journal) -> Vec<(RecordKind, u64, Vec<u8>)> {
    let mut reader = RecordReader::new(journal.start_offset());
    let mut out = Vec::new();
    while let Some(record) = reader.next_record(journal).expect("read record") {
        out.push((
            record.header.kind,
            record.header.epoch.get(),
            record.payload.to_vec(),
        ));
    }
    out
}

/// Concatenated bytes of every segment file, in offset order.
pub fn segment_bytes(dir: &Path) -> Vec<u8> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "seg")
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("spare")
        })
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect()
}

pub fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed * 31 + i * 7) as u8).collect()
}

/// A journal in a fresh temporary directory, with epoch 1 started.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub options: JournalOptions,
    pub ring: Ring,
    pub journal: Journal,
}

pub fn started(options: JournalOptions) -> Fixture {
    let dir = tempfile::tempdir().expect("temporary directory");
    let journal = open(dir.path(), &options);
    let mut fixture = Fixture {
        dir,
        options,
        ring: ring(),
        journal,
    };
    fixture
        .journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .expect("epoch start");
    fixture
}

/// Waits for at least one completion and returns the journal events it caused.
pub fn next_events(journal: &mut Journal, ring: &mut Ring) -> Vec<twinmq::journal::JournalEvent> {
    ring.submit_and_wait(1).expect("wait for a completion");
    let mut completions = Vec::new();
    ring.reap(&mut completions);
    completions
        .into_iter()
        .filter_map(|c| journal.complete(c))
        .collect()
}
