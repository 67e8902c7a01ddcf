//! The passive's end of a stream against a scripted active: this test
//! plays the active over a loopback socket while a real journal and ring
//! drive the replica, so every refusal is checked where it happens — data
//! from a deposed active, records that lie about their epoch, a full copy
//! past the limit of saved journals — beside the same frames accepted.

use super::*;
use crate::io::Ring;
use crate::journal::{Durability, JournalEvent, JournalOptions, RecordKind};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

const SEGMENT: u64 = 64 * 1024;

fn options() -> JournalOptions {
    JournalOptions {
        segment_bytes: SEGMENT,
        batch_bytes_max: 16 * 1024,
        durability: Durability::DirectDsync,
        spare_segments: 1,
        ..JournalOptions::default()
    }
}

/// A journal written in one batch: these records, each `(kind, epoch,
/// payload)`, from `at` (a fresh log restarted there when not zero).
fn journal_with(
    dir: &std::path::Path,
    at: Offset,
    records: &[(RecordKind, u64, &[u8])],
) -> Journal {
    let mut ring = Ring::new(8).unwrap();
    let mut journal = Journal::open(dir, options()).unwrap();
    if at > Offset::ZERO {
        journal.restart_at(at, None).unwrap();
    }
    for (kind, epoch, payload) in records {
        journal.append(*kind, Epoch(*epoch), payload).unwrap();
    }
    journal.sync(&mut ring).unwrap();
    journal
}

/// The durable bytes of `journal` from `from` to its end.
fn bytes_from(journal: &Journal, from: Offset) -> Vec<u8> {
    let mut bytes = vec![0; (journal.durable_offset() - from) as usize];
    assert_eq!(journal.read_raw(from, &mut bytes).unwrap(), bytes.len());
    bytes
}

fn data_frame(offset: Offset, epoch: u64, records: &[u8]) -> Vec<u8> {
    let mut frame = wire::data_header(offset, Epoch(epoch), records.len()).to_vec();
    frame.extend_from_slice(records);
    frame
}

/// What the passive said, owned.
#[derive(Debug, PartialEq)]
enum Said {
    Hello(History),
    Ack(Offset),
}

struct Passive {
    dir: tempfile::TempDir,
    ring: Ring,
    journal: Journal,
    replica: Replica,
    /// The test's end of the stream (the active).
    active: TcpStream,
    inbox: Vec<u8>,
    applied_bytes: usize,
    cuts: usize,
}

impl Passive {
    /// A passive whose own journal holds `records`, following a new stream.
    fn new(saved_max: u32, records: &[(RecordKind, u64, &[u8])]) -> Passive {
        let dir = tempfile::tempdir().unwrap();
        let journal = journal_with(&dir.path().join("shard-000"), Offset::ZERO, records);
        let options = options();
        let mut replica = Replica::new(
            Role::Follow,
            options.batch_bytes_max,
            crate::journal::batch_capacity(options.batch_bytes_max),
            options.segment_bytes,
            saved_max,
        );
        let active = stream_to(&mut replica);
        Passive {
            dir,
            ring: Ring::new(64).unwrap(),
            journal,
            replica,
            active,
            inbox: Vec::new(),
            applied_bytes: 0,
            cuts: 0,
        }
    }

    /// A new stream from the active (the passive dials again).
    fn reconnect(&mut self) {
        self.active = stream_to(&mut self.replica);
        self.inbox.clear();
    }

    /// One turn of the shard loop, as far as the replica and journal go.
    fn turn(&mut self) {
        self.replica.pump(&mut self.journal);
        self.journal.submit(Instant::now(), &mut self.ring).unwrap();
        self.replica
            .start_io(&mut self.ring, &self.journal)
            .unwrap();
        self.ring
            .submit_and_wait_timeout(1, Duration::from_millis(5))
            .unwrap();
        let mut completions = Vec::new();
        self.ring.reap(&mut completions);
        let (applied, cuts) = (&mut self.applied_bytes, &mut self.cuts);
        let mut apply = |what: Applied<'_>, _: &Journal| match what {
            Applied::Records(_, bytes) => *applied += bytes.len(),
            Applied::Cut => *cuts += 1,
        };
        for completion in completions {
            match completion.token.owner() {
                Some(Owner::Journal) => {
                    if let Some(JournalEvent::Durable(durable)) = self.journal.complete(completion)
                    {
                        self.replica.follower_durable(durable);
                        self.replica.retry_follower(&mut self.journal, &mut apply);
                    }
                }
                Some(Owner::Replica) => {
                    self.replica
                        .complete(completion, &mut self.journal, &mut apply);
                }
                other => panic!("unexpected completion for {other:?}"),
            }
        }
    }

    /// Turns until `done` holds, reading what the passive sends.
    fn until(&mut self, what: &str, mut done: impl FnMut(&mut Passive) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.turn();
            let mut chunk = [0u8; 4096];
            match self.active.read(&mut chunk) {
                Ok(n) => self.inbox.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("read from the passive: {e}"),
            }
        }
    }

    /// The next frame the passive sent.
    fn said(&mut self) -> Said {
        let mut said = None;
        self.until("a frame from the passive", |p| {
            if let Some((frame, used)) = wire::decode(&p.inbox, 0).unwrap() {
                said = Some(match frame {
                    Frame::Hello(history) => Said::Hello(history),
                    Frame::Ack { durable, .. } => Said::Ack(durable),
                    other => panic!("a passive sent {other:?}"),
                });
                p.inbox.drain(..used);
            }
            said.is_some()
        });
        said.expect("a frame")
    }

    /// Writes `bytes` to the passive, turning its loop while the socket
    /// is full.
    fn send(&mut self, bytes: &[u8]) {
        let mut sent = 0;
        while sent < bytes.len() {
            match self.active.write(&bytes[sent..]) {
                Ok(n) => sent += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    self.turn()
                }
                Err(e) => panic!("write to the passive: {e}"),
            }
        }
    }

    /// Waits until the passive closed its stream; returns why.
    fn stream_reset(&mut self) -> String {
        self.until("the passive to reset the stream", |p| {
            p.replica.follower.is_none()
        });
        self.replica.stats.last_error.clone().expect("a reason")
    }

    fn range(&self) -> (Offset, Offset) {
        (self.journal.start_offset(), self.journal.end_offset())
    }
}

/// Gives `replica` a loopback stream to follow; returns the test's (the
/// active's) end, non-blocking.
fn stream_to(replica: &mut Replica) -> TcpStream {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let active = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (passive, _) = listener.accept().unwrap();
    active.set_nonblocking(true).unwrap();
    replica.follow(passive);
    active
}

use RecordKind::{EpochStart, Opaque};

#[test]
fn records_of_a_deposed_active_are_refused_and_those_of_the_current_one_applied() {
    // Both servers wrote epoch 4's start at 0; the passive then took over
    // (epoch 5 starts at 32) while the deposed active went on in epoch 4.
    let passive_log: &[(RecordKind, u64, &[u8])] = &[(EpochStart, 4, b""), (EpochStart, 5, b"")];
    let mut passive = Passive::new(2, passive_log);
    let end = passive.journal.end_offset();
    let source = tempfile::tempdir().unwrap();
    let deposed = journal_with(
        &source.path().join("deposed"),
        Offset::ZERO,
        &[(EpochStart, 4, b""), (Opaque, 4, b""), (Opaque, 4, b"late")],
    );
    assert!(
        deposed.durable_offset() > end,
        "the deposed active's log reaches past the passive's end"
    );
    let late = bytes_from(&deposed, end);

    let hello = passive.said();
    assert_eq!(
        hello,
        Said::Hello(History {
            start: Offset::ZERO,
            end,
            epochs: vec![(Epoch(4), Offset::ZERO), (Epoch(5), Offset(32))],
            first: Epoch(4),
        })
    );
    let sync = wire::encode(&Frame::Sync {
        truncate_to: end,
        stream_from: end,
    });
    passive.send(&sync);
    passive.send(&data_frame(end, 4, &late));
    let why = passive.stream_reset();
    assert!(why.contains("deposed active"), "{why}");

    // The same records under a header that claims the current epoch: the
    // records themselves are checked.
    passive.reconnect();
    assert!(matches!(passive.said(), Said::Hello(_)));
    passive.send(&sync);
    passive.send(&data_frame(end, 5, &late));
    let why = passive.stream_reset();
    assert!(why.contains("records refused"), "{why}");
    assert_eq!(passive.range(), (Offset::ZERO, end), "nothing was appended");
    assert_eq!(passive.applied_bytes, 0, "nothing was applied");

    // The current active's records, from the same point, are taken.
    let current = journal_with(
        &source.path().join("current"),
        Offset::ZERO,
        &[
            (EpochStart, 4, b""),
            (EpochStart, 5, b""),
            (Opaque, 5, b"now"),
        ],
    );
    let now = bytes_from(&current, end);
    passive.reconnect();
    assert!(matches!(passive.said(), Said::Hello(_)));
    passive.send(&sync);
    passive.send(&data_frame(end, 5, &now));
    let acked = loop {
        match passive.said() {
            Said::Ack(at) if at > end => break at,
            Said::Ack(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(acked, current.durable_offset());
    assert_eq!(passive.applied_bytes, now.len());
}

#[test]
fn a_full_copy_sets_a_diverged_journal_aside_up_to_the_limit() {
    let own: &[(RecordKind, u64, &[u8])] = &[(EpochStart, 2, b""), (Opaque, 2, b"mine")];
    let mut passive = Passive::new(1, own);
    let (_, old_end) = passive.range();
    assert!(matches!(passive.said(), Said::Hello(_)));
    // The active's log starts two segments in; nothing of the passive's
    // own history is in it.
    let from = Offset(2 * SEGMENT);
    passive.send(&wire::encode(&Frame::Restart {
        stream_from: from,
        diverged_at: Offset::ZERO,
    }));
    let source = tempfile::tempdir().unwrap();
    let active = journal_with(
        &source.path().join("active"),
        from,
        &[(EpochStart, 3, b""), (Opaque, 3, b"copied")],
    );
    passive.send(&data_frame(from, 3, &bytes_from(&active, from)));
    loop {
        match passive.said() {
            Said::Ack(at) if at == active.durable_offset() => break,
            Said::Ack(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(passive.range(), (from, active.durable_offset()));
    assert_eq!(
        passive.cuts, 1,
        "the broker was rebuilt from the empty journal"
    );
    let saved = passive.dir.path().join("saved").join("shard-000.1");
    let kept = crate::journal::inspect(&saved)
        .unwrap()
        .expect("the old journal");
    assert_eq!((kept.start, kept.end), (Offset::ZERO, old_end));

    // Another full copy would set a second journal aside: past the limit
    // of one, it is refused and the journal stays as it is.
    passive.reconnect();
    assert!(matches!(passive.said(), Said::Hello(_)));
    passive.send(&wire::encode(&Frame::Restart {
        stream_from: Offset(4 * SEGMENT),
        diverged_at: from,
    }));
    let why = passive.stream_reset();
    assert!(why.contains("saved_journals_max = 1"), "{why}");
    assert_eq!(passive.range(), (from, active.durable_offset()));
    assert!(
        !passive
            .dir
            .path()
            .join("saved")
            .join("shard-000.2")
            .exists()
    );
}
