//! The journal API the broker and replication build on: append and learn
//! durability, read records and raw ranges, raw append from a peer, truncate,
//! release, epochs, reopen.

mod support;

use support::*;
use twinmq::ids::{Epoch, Offset};
use twinmq::journal::{
    Durability, Journal, JournalError, JournalEvent, JournalOptions, RecordKind,
};

const MODES: [Durability; 2] = [Durability::DirectDsync, Durability::WriteFdatasync];

/// Also with no spares: every segment after the first is then a
/// `fallocate`d file made at its roll (not zero-filled on the journal's
/// thread), which must read back and reopen the same.
#[test]
fn appended_records_become_durable_and_read_back_across_segments() {
    for (mode, spare_segments) in MODES.into_iter().flat_map(|mode| [(mode, 1), (mode, 0)]) {
        let dir = tempfile::tempdir().unwrap();
        let options = JournalOptions {
            spare_segments,
            ..small_options(mode)
        };
        let mut ring = ring();
        let mut journal = open(dir.path(), &options);
        assert_eq!(journal.durability(), mode);
        journal
            .append(RecordKind::EpochStart, Epoch(1), b"")
            .unwrap();
        let mut expected = vec![(RecordKind::EpochStart, 1, vec![])];
        for i in 0..300 {
            let body = payload(i, (i * 37) % 3000);
            let offset = append(&mut journal, &mut ring, 1, &body);
            assert!(
                offset >= journal.durable_offset(),
                "not durable before a flush"
            );
            expected.push((RecordKind::Opaque, 1, body));
        }
        let durable = journal.sync(&mut ring).unwrap();
        assert_eq!(durable, journal.end_offset());
        assert!(journal.segment_count() > 3, "test must cross segments");
        assert_eq!(read_all(&journal), expected);
        let segments = journal.segment_count();
        drop(journal);
        // Every segment (spares aside) has its full size, and none is missed.
        let mut sized = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".seg") && !name.starts_with("spare-") {
                let len = std::fs::metadata(&path).unwrap().len();
                assert_eq!(len, options.segment_bytes, "{}", path.display());
                sized += 1;
            }
        }
        assert_eq!(sized, segments, "every segment file was checked");

        let journal = open(dir.path(), &options);
        assert_eq!(journal.end_offset(), durable);
        assert_eq!(journal.recovery_report().torn, None);
        assert_eq!(journal.epoch(), Epoch(1));
        assert_eq!(read_all(&journal), expected);
    }
}

#[test]
fn completion_events_report_durable_offsets_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut ring = ring();
    let mut journal = open(dir.path(), &small_options(Durability::DirectDsync));
    journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .unwrap();
    let end = journal.end_offset();
    assert!(
        journal
            .submit(std::time::Instant::now(), &mut ring)
            .unwrap()
    );
    assert!(journal.flush_in_flight());
    // A second batch accumulates while the first is in flight.
    let second = journal.append(RecordKind::Opaque, Epoch(1), b"x").unwrap();
    assert!(
        !journal
            .submit(std::time::Instant::now(), &mut ring)
            .unwrap()
    );
    let events = next_events(&mut journal, &mut ring);
    assert_eq!(events, vec![JournalEvent::Durable(end)]);
    assert!(journal.durable_offset() <= second);
    journal.sync(&mut ring).unwrap();
    assert_eq!(journal.durable_offset(), journal.end_offset());
}

#[test]
fn a_sealed_batch_is_lent_at_once_and_written_only_by_write_sealed() {
    for mode in MODES {
        let dir = tempfile::tempdir().unwrap();
        let mut ring = ring();
        let mut journal = open(dir.path(), &small_options(mode));
        let start = journal.end_offset();
        journal
            .append(RecordKind::EpochStart, Epoch(1), b"")
            .unwrap();
        let end = journal.end_offset();
        let writes = journal
            .seal(std::time::Instant::now(), &mut ring)
            .unwrap()
            .expect("a batch was due");
        assert!(journal.flush_in_flight());
        // The replication stream may take the batch before it is written.
        let lent = journal.lend_batch().expect("lendable once sealed");
        assert_eq!((lent.start, lent.end), (start, end));
        // Nothing reached the kernel: no completion can come.
        ring.submit_and_wait_timeout(1, std::time::Duration::from_millis(50))
            .unwrap();
        let mut completions = Vec::new();
        ring.reap(&mut completions);
        assert!(completions.is_empty(), "{mode}: {completions:?}");
        assert_eq!(journal.durable_offset(), start);

        journal.write_sealed(&mut ring, writes).unwrap();
        journal.return_batch();
        assert_eq!(journal.sync(&mut ring).unwrap(), end, "{mode}");
        assert!(!journal.flush_in_flight());
    }
}

#[test]
fn raw_copy_to_a_peer_journal_is_byte_identical() {
    let Fixture {
        dir: source_dir,
        options,
        mut ring,
        journal: mut source,
    } = started(small_options(Durability::DirectDsync));
    let peer_dir = tempfile::tempdir().unwrap();
    let mut peer = open(peer_dir.path(), &options);
    for i in 0..200 {
        append(&mut source, &mut ring, 1, &payload(i, 700 + i * 13));
    }
    source.sync(&mut ring).unwrap();

    copy_raw(&source, &mut peer, &mut ring, Offset::ZERO);
    assert_eq!(read_all(&peer), read_all(&source));
    drop((source, peer));
    assert_eq!(
        segment_bytes(peer_dir.path()),
        segment_bytes(source_dir.path())
    );
}

fn spares_all_zero(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().all(|entry| {
        let path = entry.unwrap().path();
        let spare = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("spare-");
        !spare || std::fs::read(&path).unwrap().iter().all(|&b| b == 0)
    })
}

/// Ships `source`'s durable log from `from` to `peer` in uneven chunks cut
/// at record boundaries, as a replication stream would, and flushes it.
fn copy_raw(source: &Journal, peer: &mut Journal, ring: &mut twinmq::io::Ring, from: Offset) {
    let mut reader = twinmq::journal::RecordReader::new(from);
    let mut cut = vec![from];
    while let Some(record) = reader.next_record(source).unwrap() {
        let end = record.header.end();
        if end - *cut.last().unwrap() > 9000 {
            cut.push(end);
        }
    }
    cut.push(source.durable_offset());
    for pair in cut.windows(2) {
        let mut bytes = vec![0; (pair[1] - pair[0]) as usize];
        assert_eq!(source.read_raw(pair[0], &mut bytes).unwrap(), bytes.len());
        loop {
            match peer.append_raw(pair[0], &bytes) {
                Ok(()) => break,
                Err(JournalError::Full) => {
                    peer.sync(ring).unwrap();
                }
                Err(other) => panic!("append_raw: {other}"),
            }
        }
    }
    peer.sync(ring).unwrap();
    assert_eq!(peer.end_offset(), source.end_offset());
}

#[test]
fn a_replica_too_far_behind_restarts_at_the_peers_start_and_keeps_its_old_log_aside() {
    let Fixture {
        dir: _source_dir,
        options,
        mut ring,
        journal: mut source,
    } = started(small_options(Durability::DirectDsync));
    let mut offsets = Vec::new();
    for i in 0..400 {
        offsets.push(append(&mut source, &mut ring, 1, &payload(i, 1500)));
    }
    source.sync(&mut ring).unwrap();
    source.release_below(offsets[300]).unwrap();
    let from = source.start_offset();
    assert!(from > Offset::ZERO);

    // The replica's own history reaches far past the source's start, and
    // released segments made its spares recycled files full of stale
    // headers (room for them: many spares, fewer ready after the rolls).
    let Fixture {
        dir: replica_dir,
        journal: mut replica,
        ring: _,
        options: _,
    } = started(JournalOptions {
        spare_segments: 32,
        ..options.clone()
    });
    replica.sync(&mut ring).unwrap();
    let mut own = Vec::new();
    for i in 0..600 {
        own.push(append(&mut replica, &mut ring, 1, &payload(i + 5000, 1400)));
    }
    replica.sync(&mut ring).unwrap();
    replica.wait_for_spares();
    replica.release_below(own[500]).unwrap();
    assert!(
        !spares_all_zero(replica_dir.path()),
        "test must recycle segments"
    );
    let old_segments = segment_bytes(replica_dir.path());
    assert!(replica.end_offset() > from);

    let misaligned = from + 4096;
    assert!(matches!(
        replica.restart_at(misaligned, None),
        Err(JournalError::NotSegmentStart { .. })
    ));
    let saved = replica_dir.path().join("saved-1");
    replica.restart_at(from, Some(&saved)).unwrap();
    assert_eq!((replica.start_offset(), replica.end_offset()), (from, from));
    assert_eq!(segment_bytes(&saved), old_segments);
    replica.wait_for_spares();
    assert!(
        spares_all_zero(replica_dir.path()),
        "a recycled spare's stale headers could name offsets of the new log"
    );

    copy_raw(&source, &mut replica, &mut ring, from);
    // Both grow on: rotations on the replica take fresh spares only.
    for i in 0..300 {
        append(&mut source, &mut ring, 1, &payload(i + 9000, 1500));
    }
    source.sync(&mut ring).unwrap();
    let end = replica.end_offset();
    copy_raw(&source, &mut replica, &mut ring, end);
    assert_eq!(read_all(&replica), read_all(&source));
    drop(replica);
    let replica = open(replica_dir.path(), &options);
    assert_eq!(replica.start_offset(), from);
    assert_eq!(read_all(&replica), read_all(&source));
}

#[test]
fn raw_append_rejects_gaps_bad_checksums_and_older_epochs() {
    let source_dir = tempfile::tempdir().unwrap();
    let peer_dir = tempfile::tempdir().unwrap();
    let options = small_options(Durability::DirectDsync);
    let mut ring = ring();
    let mut source = open(source_dir.path(), &options);
    source
        .append(RecordKind::EpochStart, Epoch(5), b"")
        .unwrap();
    let second = source
        .append(RecordKind::Opaque, Epoch(5), b"hello")
        .unwrap();
    source.sync(&mut ring).unwrap();
    let mut bytes = vec![0; source.durable_offset().get() as usize];
    source.read_raw(Offset::ZERO, &mut bytes).unwrap();

    let mut peer = open(peer_dir.path(), &options);
    // A gap: the peer is empty, the bytes start later.
    let at = second.get() as usize;
    assert!(matches!(
        peer.append_raw(second, &bytes[at..]),
        Err(JournalError::OffsetMismatch { got, end: 0 }) if got == second.get()
    ));
    // A flipped bit.
    let mut damaged = bytes.clone();
    damaged[at + 34] ^= 0x10;
    let error = peer.append_raw(Offset::ZERO, &damaged).unwrap_err();
    assert!(
        matches!(error, JournalError::InvalidRaw { offset, .. } if offset == second.get()),
        "{error}"
    );
    assert_eq!(
        peer.end_offset(),
        Offset::ZERO,
        "nothing of a rejected batch is kept"
    );
    // A partial record.
    assert!(matches!(
        peer.append_raw(Offset::ZERO, &bytes[..40]),
        Err(JournalError::InvalidRaw { .. })
    ));
    peer.append_raw(Offset::ZERO, &bytes).unwrap();

    // An older epoch after epoch 5.
    let old_dir = tempfile::tempdir().unwrap();
    let mut old = open(old_dir.path(), &options);
    old.append(RecordKind::EpochStart, Epoch(5), b"").unwrap();
    old.append(RecordKind::Opaque, Epoch(5), b"hello").unwrap();
    old.sync(&mut ring).unwrap();
    drop(old);
    let mut stale = Journal::open(old_dir.path(), options.clone()).unwrap();
    let end = stale.end_offset();
    assert!(matches!(
        stale.append(RecordKind::Opaque, Epoch(4), b"late"),
        Err(JournalError::EpochRegression { got: 4, current: 5 })
    ));
    assert!(matches!(
        stale.append(RecordKind::Opaque, Epoch(6), b"unopened"),
        Err(JournalError::EpochNotStarted { got: 6, current: 5 })
    ));
    assert_eq!(stale.end_offset(), end);
}

#[test]
fn truncate_cuts_a_diverged_tail_for_good() {
    for mode in MODES {
        let Fixture {
            dir,
            options,
            mut ring,
            mut journal,
        } = started(small_options(mode));
        for i in 0..40 {
            append(&mut journal, &mut ring, 1, &payload(i, 1000));
        }
        journal.sync(&mut ring).unwrap();
        let cut = journal.end_offset();
        let kept = read_all(&journal);
        journal
            .append(RecordKind::EpochStart, Epoch(2), b"")
            .unwrap();
        for i in 0..150 {
            append(&mut journal, &mut ring, 2, &payload(i, 900));
        }
        journal.sync(&mut ring).unwrap();
        assert_eq!(journal.epoch_starts().len(), 2);

        assert!(matches!(
            journal.truncate(cut + 1),
            Err(JournalError::NotRecordBoundary(_))
        ));
        journal.truncate(cut).unwrap();
        assert_eq!(journal.end_offset(), cut);
        assert_eq!(journal.epoch(), Epoch(1));
        assert_eq!(journal.epoch_starts(), &[(Epoch(1), Offset::ZERO)]);
        assert_eq!(read_all(&journal), kept);

        // New history after the cut, shorter records than before: nothing of
        // the cut tail may resurface after a reopen.
        journal
            .append(RecordKind::EpochStart, Epoch(3), b"")
            .unwrap();
        append(&mut journal, &mut ring, 3, b"after the cut");
        journal.sync(&mut ring).unwrap();
        let mut expected = kept.clone();
        expected.push((RecordKind::EpochStart, 3, vec![]));
        expected.push((RecordKind::Opaque, 3, b"after the cut".to_vec()));
        drop(journal);
        let journal = open(dir.path(), &options);
        assert_eq!(read_all(&journal), expected);
        assert_eq!(journal.epoch(), Epoch(3));
    }
}

#[test]
fn released_segments_are_recycled_and_reopen_keeps_the_rest() {
    let Fixture {
        dir,
        options,
        mut ring,
        mut journal,
    } = started(small_options(Durability::DirectDsync));
    let mut offsets = Vec::new();
    for i in 0..400 {
        offsets.push(append(&mut journal, &mut ring, 1, &payload(i, 1500)));
    }
    journal.sync(&mut ring).unwrap();
    let before = journal.segment_count();
    let settled = offsets[300];
    journal.release_below(settled).unwrap();
    assert!(journal.segment_count() < before);
    assert!(journal.start_offset() <= settled);
    assert!(journal.start_offset() > Offset::ZERO);
    let remaining = read_all(&journal);
    // Recycled files serve later rotations; their stale records never parse.
    for i in 0..400 {
        append(&mut journal, &mut ring, 1, &payload(i + 1000, 1500));
    }
    journal.sync(&mut ring).unwrap();
    let all = read_all(&journal);
    assert_eq!(&all[..remaining.len()], &remaining[..]);
    drop(journal);
    let journal = open(dir.path(), &options);
    assert_eq!(read_all(&journal), all);
    assert!(journal.start_offset() > Offset::ZERO);
}

#[test]
fn oversized_records_and_bad_options_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(Durability::DirectDsync);
    let mut journal = open(dir.path(), &options);
    journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .unwrap();
    let error = journal
        .append(
            RecordKind::Opaque,
            Epoch(1),
            &vec![0; options.batch_bytes_max],
        )
        .unwrap_err();
    assert!(error.to_string().contains("batch_bytes_max"), "{error}");

    let bad = twinmq::journal::JournalOptions {
        segment_bytes: 1000,
        ..options
    };
    let error = Journal::open(tempfile::tempdir().unwrap().path(), bad).unwrap_err();
    assert!(error.to_string().contains("segment_bytes"), "{error}");
}

#[test]
fn a_second_journal_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = small_options(Durability::DirectDsync);
    let _journal = open(dir.path(), &options);
    assert!(matches!(
        Journal::open(dir.path(), options),
        Err(JournalError::Locked(_))
    ));
}

#[test]
fn a_missing_segment_is_corruption_not_a_shorter_log() {
    let Fixture {
        dir,
        options,
        mut ring,
        mut journal,
    } = started(small_options(Durability::DirectDsync));
    for i in 0..200 {
        append(&mut journal, &mut ring, 1, &payload(i, 1000));
    }
    journal.sync(&mut ring).unwrap();
    drop(journal);
    let second = format!("{:020}.seg", options.segment_bytes);
    std::fs::remove_file(dir.path().join(second)).unwrap();
    let error = Journal::open(dir.path(), options).unwrap_err();
    assert!(
        error.to_string().starts_with("corrupt journal: segment"),
        "{error}"
    );
    assert!(error.to_string().contains("segment missing"), "{error}");
}

#[test]
fn linger_holds_a_small_batch_until_its_deadline_but_not_a_full_one() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let options = twinmq::journal::JournalOptions {
        flush_linger: Duration::from_millis(50),
        ..small_options(Durability::DirectDsync)
    };
    let mut ring = ring();
    let mut journal = open(dir.path(), &options);
    journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .unwrap();
    let t0 = Instant::now();
    assert!(
        !journal.submit(t0, &mut ring).unwrap(),
        "held back by the linger"
    );
    assert_eq!(
        journal.flush_deadline(),
        Some(t0 + Duration::from_millis(50))
    );
    assert!(
        !journal
            .submit(t0 + Duration::from_millis(49), &mut ring)
            .unwrap()
    );
    assert!(
        journal
            .submit(t0 + Duration::from_millis(50), &mut ring)
            .unwrap()
    );
    journal.sync(&mut ring).unwrap();

    // A batch at its cap goes at once, linger or not.
    while journal
        .append(RecordKind::Opaque, Epoch(1), &[1; 1000])
        .is_ok()
    {}
    assert!(journal.submit(Instant::now(), &mut ring).unwrap());
    journal.sync(&mut ring).unwrap();
}

#[test]
fn batches_use_registered_buffers_and_fall_back_when_the_table_is_full() {
    let Fixture {
        dir,
        options,
        mut ring,
        mut journal,
    } = started(small_options(Durability::DirectDsync));
    journal.sync(&mut ring).unwrap();
    assert!(journal.uses_fixed_buffers());
    drop(journal);

    // Fill the ring's table, then open again: plain writes, same results.
    let spare = twinmq::io::AlignedBuf::zeroed(4096);
    // SAFETY: `spare` outlives the ring's use of these indices (none).
    while unsafe { ring.register_buffers(&[&spare]) }.is_some() {}
    let mut journal = open(dir.path(), &options);
    for i in 0..50 {
        append(&mut journal, &mut ring, 1, &payload(i, 2000));
    }
    journal.sync(&mut ring).unwrap();
    assert!(!journal.uses_fixed_buffers());
    drop(journal);
    let journal = open(dir.path(), &options);
    assert_eq!(read_all(&journal).len(), 51);
}
