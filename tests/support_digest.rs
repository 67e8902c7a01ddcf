//! The journal digest fixture's own tests: a copied data directory is
//! identical, and each way a copy can differ is reported with the shard, both
//! ranges and the first differing offset.

mod support;

#[path = "support/digest.rs"]
mod digest;

use digest::{JournalMismatch, assert_journals_identical, journal_digests, journal_mismatch};
use std::path::{Path, PathBuf};
use support::{append, open, payload, ring, small_options};
use twinmq::ids::{Epoch, Offset};
use twinmq::journal::{Durability, RecordKind};

/// Header bytes before a record's payload; its CRC covers bytes 4.. of the
/// record (see ARCHITECTURE.md, "On-disk format").
const HEADER_BYTES: u64 = 32;
const CRC_BYTES: u64 = 4;

/// Records written per shard: enough 1 KiB records to fill several 64 KiB
/// segments.
const RECORDS: usize = 300;

/// Where each record of a shard lies and how long its payload is.
struct Written {
    records: Vec<(Offset, usize)>,
    end: u64,
}

/// A data directory with two shard journals, written through the library.
fn write_data_dir(data_dir: &Path) -> Vec<Written> {
    let options = small_options(Durability::WriteFdatasync);
    (0..2)
        .map(|shard| {
            let dir = data_dir.join(format!("shard-{shard:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            let mut journal = open(&dir, &options);
            let mut ring = ring();
            journal
                .append(RecordKind::EpochStart, Epoch(1), b"")
                .unwrap();
            let records = (0..RECORDS)
                .map(|i| {
                    let len = 900 + (i * 37 + shard * 11) % 300;
                    (
                        append(&mut journal, &mut ring, 1, &payload(i + shard, len)),
                        len,
                    )
                })
                .collect();
            journal.sync(&mut ring).unwrap();
            let end = journal.end_offset().get();
            Written { records, end }
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Two data directories, `a` written, `b` a copy of it.
struct Copies {
    _tmp: tempfile::TempDir,
    a: PathBuf,
    b: PathBuf,
    written: Vec<Written>,
}

fn copies() -> Copies {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let written = write_data_dir(&a);
    copy_dir(&a, &b);
    Copies {
        _tmp: tmp,
        a,
        b,
        written,
    }
}

/// The file and position holding log offset `at` of a shard.
fn locate(data_dir: &Path, shard: usize, at: u64) -> (PathBuf, u64) {
    let dir = data_dir.join(format!("shard-{shard:03}"));
    let mut starts: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    starts.sort();
    let start = *starts.iter().rev().find(|&&s| s <= at).unwrap();
    (dir.join(format!("{start:020}.seg")), at - start)
}

fn read_at(path: &Path, position: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, position)
        .unwrap();
    buf
}

fn write_at(path: &Path, position: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, position)
        .unwrap();
}

/// Flips the lowest bit of payload byte `index` of the record at `record`.
/// With `fix_crc` the record stays valid (as a wrong but checksummed copy
/// from a buggy replication stream would be); returns the first offset of
/// the record that changed.
fn flip_payload_byte(
    data_dir: &Path,
    shard: usize,
    (record, len): (Offset, usize),
    index: u64,
    fix_crc: bool,
) -> u64 {
    let (path, position) = locate(data_dir, shard, record.get());
    let mut bytes = read_at(&path, position, HEADER_BYTES as usize + len);
    bytes[(HEADER_BYTES + index) as usize] ^= 0x01;
    let mut first_changed = record.get() + HEADER_BYTES + index;
    if fix_crc {
        let old = bytes[..CRC_BYTES as usize].to_vec();
        let crc = crc32c::crc32c(&bytes[CRC_BYTES as usize..]).to_le_bytes();
        bytes[..CRC_BYTES as usize].copy_from_slice(&crc);
        let k = (0..CRC_BYTES as usize)
            .find(|&k| old[k] != crc[k])
            .expect("a flipped payload bit changes the CRC");
        first_changed = record.get() + k as u64;
    }
    write_at(&path, position, &bytes);
    first_changed
}

#[test]
fn a_copied_data_directory_is_identical() {
    let c = copies();
    let digests = journal_digests(&c.a);
    assert_eq!(digests.len(), 2);
    for (shard, digest) in digests.iter().enumerate() {
        assert_eq!(digest.shard, shard);
        assert_eq!(digest.start, 0);
        assert_eq!(digest.end, c.written[shard].end, "up to the last record");
    }
    assert_ne!(digests[0].digest, digests[1].digest);
    assert_eq!(journal_digests(&c.b), digests);
    assert_eq!(journal_mismatch(&c.a, &c.b), None);
    assert_journals_identical(&c.a, &c.b);
}

#[test]
fn a_rewritten_record_is_reported_at_its_first_differing_byte() {
    let c = copies();
    let record = c.written[1].records[RECORDS / 2];
    let first_changed = flip_payload_byte(&c.b, 1, record, 100, true);
    assert_ne!(journal_digests(&c.a)[1], journal_digests(&c.b)[1]);
    assert_eq!(journal_digests(&c.a)[0], journal_digests(&c.b)[0]);
    let end = c.written[1].end;
    assert_eq!(
        journal_mismatch(&c.a, &c.b),
        Some(JournalMismatch::Log {
            shard: 1,
            a: (0, end),
            b: (0, end),
            first_difference: Some(first_changed),
        })
    );
    let message = std::panic::catch_unwind(|| assert_journals_identical(&c.a, &c.b))
        .expect_err("the assertion fails")
        .downcast::<String>()
        .unwrap();
    for part in [
        "shard 1".to_owned(),
        format!("a holds [0, {end}), b holds [0, {end})"),
        format!("first differing byte at offset {first_changed}"),
    ] {
        assert!(message.contains(&part), "{part:?} in {message}");
    }
}

#[test]
fn a_copy_with_a_damaged_last_record_is_reported_where_its_log_ends() {
    let c = copies();
    let last = *c.written[0].records.last().unwrap();
    // Without a fixed CRC the last record reads as a torn write: the copy's
    // log ends where it starts, and everything before agrees.
    flip_payload_byte(&c.b, 0, last, 0, false);
    let end = c.written[0].end;
    assert_eq!(
        journal_mismatch(&c.a, &c.b),
        Some(JournalMismatch::Log {
            shard: 0,
            a: (0, end),
            b: (0, last.0.get()),
            first_difference: None,
        })
    );
    assert_eq!(journal_digests(&c.b)[0].end, last.0.get());
}

#[test]
fn bytes_past_the_end_of_the_log_do_not_count() {
    let c = copies();
    let end = c.written[0].end;
    let (path, position) = locate(&c.b, 0, end);
    let segment_bytes = std::fs::metadata(&path).unwrap().len();
    assert!(position + 200 < segment_bytes, "room after the end");
    write_at(&path, position + 100, b"stale");
    assert_journals_identical(&c.a, &c.b);
}

#[test]
fn different_shard_sets_are_reported() {
    let c = copies();
    std::fs::remove_dir_all(c.b.join("shard-001")).unwrap();
    assert_eq!(
        journal_mismatch(&c.a, &c.b),
        Some(JournalMismatch::Shards {
            a: vec![0, 1],
            b: vec![0],
        })
    );
}

#[test]
#[should_panic(expected = "corrupt journal")]
fn a_copy_corrupt_mid_log_fails_with_the_journal_s_own_report() {
    let c = copies();
    let record = c.written[1].records[10];
    flip_payload_byte(&c.b, 1, record, 0, false);
    journal_digests(&c.b);
}
