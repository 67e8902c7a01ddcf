//! Crash recovery, checked with property tests on real files.
//!
//! A crash is simulated on the files after the journal is closed: the bytes
//! of the last batch are reverted to what the disk held before it, either up
//! to an arbitrary byte (a write cut short) or for an arbitrary subset of
//! 512-byte sectors (a write whose sectors landed in any order). Recovery
//! must then yield exactly a prefix of the appended records that includes
//! everything durable before the last batch, and nothing of the cut part may
//! resurface after further appends.

mod support;

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use support::*;
use twinmq::ids::{Epoch, Offset};
use twinmq::journal::{Durability, Journal, JournalError, RecordKind, RecordReader};

type Files = BTreeMap<String, Vec<u8>>;

fn files(dir: &Path) -> Files {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("spare")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn start_of(name: &str) -> u64 {
    name.trim_end_matches(".seg").parse().unwrap()
}

/// A record to append: payload length, and whether it opens a new epoch.
#[derive(Debug, Clone)]
struct Spec {
    len: usize,
    new_epoch: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0usize..2600, prop::bool::weighted(0.05)).prop_map(|(len, new_epoch)| Spec { len, new_epoch })
}

/// Appends `specs` as one batch and flushes it. Returns false if the batch
/// would not fit one flush (the case is then skipped).
fn append_batch(
    journal: &mut Journal,
    ring: &mut twinmq::io::Ring,
    epoch: &mut u64,
    specs: &[Spec],
    expected: &mut Vec<(RecordKind, u64, Vec<u8>)>,
) -> bool {
    for spec in specs {
        let (kind, body) = if spec.new_epoch {
            *epoch += 1;
            (RecordKind::EpochStart, Vec::new())
        } else {
            (RecordKind::Opaque, payload(expected.len(), spec.len))
        };
        match journal.append(kind, Epoch(*epoch), &body) {
            Ok(_) => expected.push((kind, *epoch, body)),
            Err(JournalError::Full) => return false,
            Err(other) => panic!("append: {other}"),
        }
    }
    journal.sync(ring).unwrap();
    true
}

/// How the last batch is torn.
#[derive(Debug, Clone)]
enum Tear {
    /// New bytes up to this fraction of the batch, old bytes after.
    Prefix(f64),
    /// Each differing sector independently new (true) or old (false).
    Sectors(Vec<bool>),
}

fn tear() -> impl Strategy<Value = Tear> {
    prop_oneof![
        (0.0f64..=1.0).prop_map(Tear::Prefix),
        prop::collection::vec(any::<bool>(), 64).prop_map(Tear::Sectors),
    ]
}

/// Writes into `dir` the state the disk may hold after a crash during the
/// last batch, which covered the log range `[from, to)`.
fn apply_tear(dir: &Path, before: &Files, after: &Files, from: u64, to: u64, tear: &Tear) {
    const SECTOR: usize = 512;
    let cut = match tear {
        Tear::Prefix(fraction) => from + ((to - from) as f64 * fraction) as u64,
        Tear::Sectors(_) => 0,
    };
    let mut sector_index = 0;
    for (name, new) in after {
        let old = before
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![0; new.len()]);
        let start = start_of(name);
        let mut mixed = new.clone();
        for sector in 0..new.len() / SECTOR {
            let range = sector * SECTOR..(sector + 1) * SECTOR;
            if old[range.clone()] == new[range.clone()] {
                continue;
            }
            let logical = start + range.start as u64;
            assert!(
                logical + SECTOR as u64 > from && logical < to,
                "only the last batch changed"
            );
            match tear {
                Tear::Prefix(_) => {
                    for i in range {
                        if start + i as u64 >= cut {
                            mixed[i] = old[i];
                        }
                    }
                }
                Tear::Sectors(keep) => {
                    if !keep[sector_index % keep.len()] {
                        mixed[range.clone()].copy_from_slice(&old[range]);
                    }
                    sector_index += 1;
                }
            }
        }
        std::fs::write(dir.join(name), mixed).unwrap();
    }
}

fn read_records(journal: &Journal) -> Vec<(RecordKind, u64, Vec<u8>)> {
    read_all(journal)
}

/// Appends `bytes` (whole records at `at`) to a replica, flushing first
/// when its batch is full.
fn append_raw(replica: &mut Journal, ring: &mut twinmq::io::Ring, at: Offset, bytes: &[u8]) {
    loop {
        match replica.append_raw(at, bytes) {
            Ok(()) => return,
            Err(JournalError::Full) => {
                replica.sync(ring).unwrap();
            }
            Err(other) => panic!("append_raw: {other}"),
        }
    }
}

/// The source's records from `from` cut into chunks of whole records of
/// about `sizes[i]` bytes each (cycling), as (offset, bytes).
fn chunks(source: &Journal, from: Offset, sizes: &[usize]) -> Vec<(Offset, Vec<u8>)> {
    let mut reader = RecordReader::new(from);
    let mut cuts = vec![from];
    while let Some(record) = reader.next_record(source).unwrap() {
        let want = sizes[(cuts.len() - 1) % sizes.len()] as u64;
        if record.header.end() - *cuts.last().unwrap() >= want {
            cuts.push(record.header.end());
        }
    }
    if *cuts.last().unwrap() < source.durable_offset() {
        cuts.push(source.durable_offset());
    }
    cuts.windows(2)
        .map(|pair| {
            let mut bytes = vec![0; (pair[1] - pair[0]) as usize];
            assert_eq!(source.read_raw(pair[0], &mut bytes).unwrap(), bytes.len());
            (pair[0], bytes)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// A replica's write may hold several of the source's batches, so a
    /// tear must be judged by the replica's writes: recovery keeps a prefix
    /// with everything durable before the last write, and catching up from
    /// there leaves exactly the source's records.
    #[test]
    fn crash_in_a_replicas_last_write_recovers_a_prefix(
        batches in prop::collection::vec(prop::collection::vec(spec(), 1..6), 2..14),
        sizes in prop::collection::vec(1usize..20_000, 1..5),
        tear in tear(),
    ) {
        let Fixture { dir: _source_dir, options, mut ring, journal: mut source } =
            started(small_options(Durability::DirectDsync));
        let mut epoch = 1;
        let mut expected = vec![(RecordKind::EpochStart, 1, vec![])];
        for batch in &batches {
            prop_assume!(append_batch(&mut source, &mut ring, &mut epoch, batch, &mut expected));
        }
        let mut writes = chunks(&source, Offset::ZERO, &sizes);
        let last = writes.pop().unwrap();
        let replica_dir = tempfile::tempdir().unwrap();
        let mut replica = open(replica_dir.path(), &options);
        for (at, bytes) in &writes {
            append_raw(&mut replica, &mut ring, *at, bytes);
        }
        replica.sync(&mut ring).unwrap();
        let durable_before = replica.durable_offset();
        let before = files(replica_dir.path());
        append_raw(&mut replica, &mut ring, last.0, &last.1);
        let end = replica.sync(&mut ring).unwrap();
        drop(replica);
        let after = files(replica_dir.path());
        apply_tear(replica_dir.path(), &before, &after, durable_before.get(), end.get(), &tear);

        let mut replica = open(replica_dir.path(), &options);
        let recovered = read_records(&replica);
        prop_assert!(replica.end_offset() >= durable_before);
        prop_assert_eq!(&recovered[..], &expected[..recovered.len()]);

        // Catching up from where it ends: nothing cut resurfaces.
        let from = replica.end_offset();
        for (at, bytes) in chunks(&source, from, &sizes) {
            append_raw(&mut replica, &mut ring, at, &bytes);
        }
        replica.sync(&mut ring).unwrap();
        drop(replica);
        let replica = open(replica_dir.path(), &options);
        prop_assert_eq!(read_records(&replica), expected);
    }

    #[test]
    fn crash_in_last_batch_recovers_a_prefix_of_what_was_appended(
        batches in prop::collection::vec(prop::collection::vec(spec(), 1..6), 1..12),
        last in prop::collection::vec(spec(), 1..6),
        tear in tear(),
        direct in any::<bool>(),
    ) {
        let mode = if direct { Durability::DirectDsync } else { Durability::WriteFdatasync };
        let Fixture { dir, options, mut ring, mut journal } = started(small_options(mode));
        let mut epoch = 1;
        let mut expected = vec![(RecordKind::EpochStart, 1, vec![])];
        for batch in &batches {
            prop_assume!(append_batch(&mut journal, &mut ring, &mut epoch, batch, &mut expected));
        }
        let durable_before = journal.durable_offset();
        let durable_count = expected.len();
        let before = files(dir.path());
        prop_assume!(append_batch(&mut journal, &mut ring, &mut epoch, &last, &mut expected));
        let end = journal.durable_offset();
        drop(journal);
        let after = files(dir.path());
        apply_tear(dir.path(), &before, &after, durable_before.get(), end.get(), &tear);

        // What recovery shows as it scans is exactly the recovered log.
        let mut visited = vec![];
        let mut journal = Journal::open_visiting(dir.path(), options.clone(), &mut |header, payload| {
            visited.push((header.kind, header.epoch.get(), payload.to_vec()));
            Ok(())
        })
        .unwrap();
        let recovered = read_records(&journal);
        prop_assert_eq!(&visited, &recovered);
        prop_assert!(recovered.len() >= durable_count, "lost durable records: {} < {durable_count}", recovered.len());
        prop_assert!(recovered.len() <= expected.len());
        prop_assert_eq!(&recovered[..], &expected[..recovered.len()]);
        prop_assert!(journal.end_offset() >= durable_before);

        // Append after recovery, then reopen: exactly recovered + new. The new
        // record has the length of the first lost one, so the old layout
        // continues right behind it: any intact record of the cut batch
        // left on disk would resurface there.
        let epoch = recovered.last().unwrap().1;
        let len = expected.get(recovered.len()).map_or(10, |lost| lost.2.len());
        let body = vec![0xEE; len];
        append(&mut journal, &mut ring, epoch, &body);
        journal.sync(&mut ring).unwrap();
        drop(journal);
        let journal = open(dir.path(), &options);
        let mut want = recovered.clone();
        want.push((RecordKind::Opaque, epoch, body));
        prop_assert_eq!(read_records(&journal), want);
    }

    #[test]
    fn bit_flip_before_the_last_batch_is_corruption_not_a_truncation(
        batches in prop::collection::vec(prop::collection::vec(spec(), 1..6), 2..10),
        pick in any::<prop::sample::Index>(),
        bit in any::<prop::sample::Index>(),
    ) {
        let Fixture { dir, options, mut ring, mut journal } = started(small_options(Durability::DirectDsync));
        let mut epoch = 1;
        let mut expected = vec![(RecordKind::EpochStart, 1, vec![])];
        let mut last_batch_start = Offset::ZERO;
        for batch in &batches {
            last_batch_start = journal.end_offset();
            prop_assume!(append_batch(&mut journal, &mut ring, &mut epoch, batch, &mut expected));
        }
        // Every record (not padding) written before the last batch.
        let mut candidates = vec![];
        let mut reader = RecordReader::new(Offset::ZERO);
        while let Some(record) = reader.next_record(&journal).unwrap() {
            if record.header.offset < last_batch_start {
                candidates.push((record.header.offset, record.header.record_bytes()));
            }
        }
        drop(journal);
        let (offset, len) = candidates[pick.index(candidates.len())];
        let bit = bit.index(len * 8);
        let segment = offset.get() / options.segment_bytes * options.segment_bytes;
        let path = dir.path().join(format!("{segment:020}.seg"));
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (offset.get() - segment) as usize + bit / 8;
        bytes[at] ^= 1 << (bit % 8);
        std::fs::write(&path, &bytes).unwrap();
        let unchanged = files(dir.path());

        match Journal::open(dir.path(), options.clone()) {
            Err(JournalError::Corrupt { offset: reported, segment: name, .. }) => {
                prop_assert_eq!(reported, offset.get());
                prop_assert_eq!(name, format!("{segment:020}.seg"));
            }
            Ok(_) => prop_assert!(false, "corruption at {offset} was not reported"),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
        prop_assert_eq!(files(dir.path()), unchanged, "a corrupt journal must not be changed");
    }
}

#[test]
fn torn_tail_is_truncated_mid_log_corruption_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(Durability::DirectDsync);
    let mut ring = ring();
    let mut journal = open(dir.path(), &options);
    journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .unwrap();
    let first = append(&mut journal, &mut ring, 1, &payload(1, 3000));
    journal.sync(&mut ring).unwrap();
    let tail = append(&mut journal, &mut ring, 1, &payload(2, 3000));
    journal.sync(&mut ring).unwrap();
    drop(journal);
    let path = dir.path().join(format!("{:020}.seg", 0));
    let clean = std::fs::read(&path).unwrap();

    // Half of the last record never reached the disk: truncated.
    let mut torn = clean.clone();
    let cut = tail.get() as usize + 1500;
    torn[cut..cut + 1532].fill(0);
    std::fs::write(&path, &torn).unwrap();
    let journal = open(dir.path(), &options);
    let report = journal
        .recovery_report()
        .torn
        .clone()
        .expect("torn tail reported");
    assert_eq!(report.at, tail);
    assert_eq!(journal.end_offset(), tail);
    assert_eq!(read_all(&journal).len(), 2);
    drop(journal);

    // A flipped bit in the first record, with the second intact: corruption.
    let mut flipped = clean;
    flipped[first.get() as usize + 100] ^= 4;
    std::fs::write(&path, &flipped).unwrap();
    let error = Journal::open(dir.path(), options).unwrap_err().to_string();
    assert!(
        error.starts_with(&format!(
            "corrupt journal: segment 00000000000000000000.seg, offset {first}"
        )),
        "{error}"
    );
}

#[test]
fn replica_damage_beyond_one_write_is_corruption_and_own_batches_are_judged_by_their_batch() {
    let options = small_options(Durability::DirectDsync);
    let Fixture {
        dir: _source_dir,
        mut ring,
        journal: mut source,
        ..
    } = started(options.clone());
    // 15 records of 3 KiB: more than one write (40 KiB) and all in the
    // first 64 KiB segment, with room behind for two more.
    let mut offsets = vec![];
    for i in 0..15 {
        offsets.push(append(&mut source, &mut ring, 1, &payload(i, 3000)));
        source.sync(&mut ring).unwrap();
    }
    let replica_dir = tempfile::tempdir().unwrap();
    let mut replica = open(replica_dir.path(), &options);
    for (at, bytes) in chunks(&source, Offset::ZERO, &[30_000]) {
        append_raw(&mut replica, &mut ring, at, &bytes);
    }
    replica.sync(&mut ring).unwrap();
    drop(replica);
    let marked = replica_dir.path().join("RAW_TAIL");
    assert!(marked.exists(), "a replica marks its tail");
    let path = replica_dir.path().join(format!("{:020}.seg", 0));
    let clean = std::fs::read(&path).unwrap();

    // Damage in the first record, far more than one write before intact
    // records: corruption, and nothing changed.
    let mut flipped = clean.clone();
    flipped[offsets[0].get() as usize + 100] ^= 4;
    std::fs::write(&path, &flipped).unwrap();
    let error = Journal::open(replica_dir.path(), options.clone())
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "corrupt journal: segment 00000000000000000000.seg, offset {}",
            offsets[0]
        )),
        "{error}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), flipped);
    std::fs::write(&path, &clean).unwrap();

    // The replica becomes a writer of its own: once its raw bytes are
    // durable, its first append takes the mark down, and damage before a
    // later batch of its own is corruption again however close it lies.
    let mut own = open(replica_dir.path(), &options);
    own.append(RecordKind::EpochStart, Epoch(2), b"").unwrap();
    assert!(!marked.exists(), "a local append takes the mark down");
    let a = append(&mut own, &mut ring, 2, &payload(100, 3000));
    own.sync(&mut ring).unwrap();
    append(&mut own, &mut ring, 2, &payload(101, 3000));
    own.sync(&mut ring).unwrap();
    drop(own);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[a.get() as usize + 100] ^= 4;
    std::fs::write(&path, &bytes).unwrap();
    let error = Journal::open(replica_dir.path(), options)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with(&format!(
            "corrupt journal: segment 00000000000000000000.seg, offset {a}"
        )),
        "{error}"
    );
}
