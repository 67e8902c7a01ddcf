//! Storage faults: a failed write or flush poisons the journal. Nothing after
//! the fault is acknowledged, every later append fails naming the cause, and
//! the flush is never retried.

mod support;

use support::*;
use twinmq::ids::Epoch;
use twinmq::journal::{
    Durability, FaultOp, Journal, JournalError, JournalEvent, JournalOptions, RecordKind,
    StorageFaults,
};

fn faulty(mode: Durability) -> (JournalOptions, std::sync::Arc<StorageFaults>) {
    let faults = StorageFaults::new();
    let options = JournalOptions {
        faults: Some(faults.clone()),
        ..small_options(mode)
    };
    (options, faults)
}

fn poisons_on(mode: Durability, op: FaultOp, errno: i32, text: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (options, faults) = faulty(mode);
    let mut ring = ring();
    let mut journal = Journal::open(dir.path(), options.clone()).unwrap();
    journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .unwrap();
    append(&mut journal, &mut ring, 1, b"acknowledged");
    let acknowledged = journal.sync(&mut ring).unwrap();

    faults.fail_nth(op, 1, errno);
    append(&mut journal, &mut ring, 1, b"never acknowledged");
    let error = journal.sync(&mut ring).unwrap_err();
    let JournalError::Poisoned(cause) = &error else {
        panic!("expected poison, got {error}")
    };
    assert!(cause.contains(text), "cause names the failure: {cause}");
    assert!(cause.contains(".seg"), "cause names the file: {cause}");
    assert_eq!(
        journal.durable_offset(),
        acknowledged,
        "nothing after the fault is durable"
    );
    assert_eq!(journal.poisoned(), Some(cause));

    // Every later operation fails with the same cause; no write is retried.
    let writes = faults.seen(FaultOp::Write);
    let flushes = faults.seen(FaultOp::Flush);
    let later = journal
        .append(RecordKind::Opaque, Epoch(1), b"later")
        .unwrap_err();
    assert!(
        matches!(&later, JournalError::Poisoned(c) if c == cause),
        "{later}"
    );
    assert!(matches!(
        journal.sync(&mut ring),
        Err(JournalError::Poisoned(_))
    ));
    assert!(matches!(
        journal.submit(std::time::Instant::now(), &mut ring),
        Err(JournalError::Poisoned(_))
    ));
    assert_eq!(faults.seen(FaultOp::Write), writes);
    assert_eq!(faults.seen(FaultOp::Flush), flushes);
    assert_eq!(journal.durable_offset(), acknowledged);
    drop(journal);

    // A restart recovers at least everything acknowledged.
    let options = small_options(mode);
    let journal = Journal::open(dir.path(), options).unwrap();
    let records = read_all(&journal);
    assert!(journal.end_offset() >= acknowledged);
    assert_eq!(records[1].2, b"acknowledged");
}

#[test]
fn write_error_poisons_direct_journal() {
    poisons_on(
        Durability::DirectDsync,
        FaultOp::Write,
        libc::EIO,
        "Input/output error",
    );
}

#[test]
fn write_error_poisons_buffered_journal() {
    poisons_on(
        Durability::WriteFdatasync,
        FaultOp::Write,
        libc::EIO,
        "write of",
    );
}

#[test]
fn fdatasync_error_poisons_and_is_never_retried() {
    poisons_on(
        Durability::WriteFdatasync,
        FaultOp::Flush,
        libc::EIO,
        "fdatasync of",
    );
}

#[test]
fn full_disk_names_the_problem() {
    poisons_on(
        Durability::DirectDsync,
        FaultOp::Write,
        libc::ENOSPC,
        "No space left on device",
    );
}

#[test]
fn poisoned_event_reaches_the_loop_and_pending_appends_stay_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (options, faults) = faulty(Durability::DirectDsync);
    let mut ring = ring();
    let mut journal = Journal::open(dir.path(), options).unwrap();
    journal
        .append(RecordKind::EpochStart, Epoch(1), b"")
        .unwrap();
    let durable = journal.sync(&mut ring).unwrap();
    faults.fail_nth(FaultOp::Write, 1, libc::EIO);
    journal
        .append(RecordKind::Opaque, Epoch(1), b"in flight")
        .unwrap();
    assert!(
        journal
            .submit(std::time::Instant::now(), &mut ring)
            .unwrap()
    );
    // Appended while the failing batch is in flight: must never be acknowledged.
    let pending = journal
        .append(RecordKind::Opaque, Epoch(1), b"pending")
        .unwrap();
    let events = next_events(&mut journal, &mut ring);
    assert!(
        matches!(events.as_slice(), [JournalEvent::Poisoned(_)]),
        "{events:?}"
    );
    assert_eq!(journal.durable_offset(), durable);
    assert!(journal.durable_offset() <= pending);
}
