//! Replicated HA with real processes: each server has its own journals and
//! the active streams every byte to the passive. Load with a passive in
//! sync, kill -9 either server under load, warm standby, a former active
//! with a tail the passive never got, a corrupted replication frame, a cut
//! HA link, `standalone = "refuse"`, full copies of a passive too far
//! behind (after `promote --force` of a stale server too).
//!
//! What the scenarios check in the end: no acknowledged message is lost or
//! delivered twice, and, once both servers have stopped cleanly, the two
//! journals are byte for byte the same log.

#[path = "support/digest.rs"]
mod digest;
#[path = "support/pair.rs"]
mod pair;
#[path = "support/server.rs"]
mod server;

use bytes::Bytes;
use pair::{Direction, Pair, ReplicatedOptions};
use server::{READY_TIMEOUT, wait_until};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinmq::admin::Status;
use twinmq::client::{Client, ClientError, ClientOptions, ProducerOptions};
use twinmq::protocol::{self, AckMode, ErrorCode, Frame, Limits};

const PRIMARY: usize = 0;
const SECONDARY: usize = 1;

/// The queues every load spreads over; `queues_cover_both_shards` checks
/// that they keep both shards' streams busy.
const QUEUES: [&str; 4] = ["/queue/r0", "/queue/r1", "/queue/r2", "/queue/r3"];

/// Shards per server in the pair's profiles.
const SHARDS: usize = pair::PAIR_SHARDS as usize;

/// Size of every message body: the tag, then filler.
const BODY_BYTES: usize = 1024;

/// Pace of a background load: enough to keep both streams busy, modest
/// enough for two cores shared with the other tests.
const LOAD_MESSAGES_PER_SECOND: u64 = 1000;

/// Sends a producer may have unacknowledged.
const WINDOW: usize = 16;

/// States in which a server serves clients.
const SERVING: [&str; 3] = ["ACTIVE", "ACTIVE_SYNC", "STANDALONE"];

// ---------------------------------------------------------------------------
// Helpers

fn connect(pair: &Pair, i: usize) -> Client {
    Client::connect(&pair.url(i), ClientOptions::default())
        .unwrap_or_else(|e| panic!("connect to {}: {e}", pair.nodes[i].name))
}

/// A message body that names the message: `tag`, a colon, then filler.
fn body(tag: &str) -> Bytes {
    let mut body = Vec::with_capacity(BODY_BYTES);
    body.extend_from_slice(tag.as_bytes());
    body.push(b':');
    body.resize(BODY_BYTES, b'.');
    Bytes::from(body)
}

fn tag_of(body: &[u8]) -> String {
    let end = body.iter().position(|&b| b == b':').unwrap_or(body.len());
    String::from_utf8_lossy(&body[..end]).into_owned()
}

/// Polls `check` until it returns `Ok` or `timeout` passes; the panic
/// shows what the last `Err` said, so a failure says how far things got.
fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(last) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; last seen: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status(pair: &Pair, i: usize) -> Result<Status, String> {
    pair.status(i)
        .ok_or_else(|| format!("{} does not answer status", pair.nodes[i].name))
}

/// Both servers up and paired: `active` ACTIVE, the other PASSIVE.
fn start_pair(pair: &mut Pair, active: usize) {
    pair.start(PRIMARY);
    pair.start(SECONDARY);
    pair.wait_state(active, "ACTIVE");
    pair.wait_state(1 - active, "PASSIVE");
}

/// Waits until the pair streams live: `active` ACTIVE, the other PASSIVE,
/// every shard's stream up and in sync (under load, lag comes and goes).
fn wait_in_sync(pair: &Pair, active: usize) {
    let passive = 1 - active;
    wait_for(READY_TIMEOUT, "the pair to stream in sync", || {
        let (a, p) = (status(pair, active)?, status(pair, passive)?);
        let in_sync = a.state == "ACTIVE"
            && p.state == "PASSIVE"
            && a.replication.len() == SHARDS
            && a.replication.iter().all(|r| r.stream_up && r.in_sync);
        if in_sync {
            Ok(())
        } else {
            Err(format!(
                "{} {} {:?}; {} {}",
                a.server, a.state, a.replication, p.server, p.state
            ))
        }
    });
}

/// Starts a proxied pair with the primary ACTIVE and the secondary
/// PASSIVE, its HA link split over the two proxies: the control link
/// through the primary's (`proxy(PRIMARY)`), the replication streams
/// through the secondary's (`proxy(SECONDARY)`: the passive dials the
/// active's HA port, so what the active streams comes back `FromTarget`).
/// A fault on the secondary's proxy then hits the streams alone, never a
/// heartbeat.
///
/// Which control connection a pair keeps depends on who dialed first, so
/// the secondary's proxy stays cut until the primary's connection is up.
fn start_split_link(pair: &mut Pair) {
    pair.proxy(SECONDARY).cut();
    pair.start(PRIMARY);
    pair.wait_state(PRIMARY, "STANDALONE");
    pair.start(SECONDARY);
    wait_for(
        READY_TIMEOUT,
        "the HA link through the primary's proxy",
        || match status(pair, PRIMARY)?.peer_state.as_deref() {
            Some("DEAD") | None => Err("no peer yet".into()),
            Some(_) => Ok(()),
        },
    );
    pair.proxy(SECONDARY).heal();
    wait_in_sync(pair, PRIMARY);
    assert_eq!(
        (
            pair.proxy(PRIMARY).connections(),
            pair.proxy(SECONDARY).connections()
        ),
        (1, SHARDS),
        "the control link through one proxy, the streams through the other"
    );
}

/// Waits until `passive` holds everything `active` has journaled: each
/// shard streams live and in sync with no lag, and the passive's durable
/// end of each shard is what the active says it acknowledged.
fn wait_caught_up(pair: &Pair, active: usize) {
    let passive = 1 - active;
    wait_for(READY_TIMEOUT, "the passive to catch up", || {
        let (a, p) = (status(pair, active)?, status(pair, passive)?);
        let seen = format!(
            "{} {} {:?}; {} {} {:?}",
            a.server, a.state, a.replication, p.server, p.state, p.replication
        );
        let live = a.state == "ACTIVE"
            && p.state == "PASSIVE"
            && a.replication.len() == SHARDS
            && a.replication
                .iter()
                .all(|r| r.stream_up && r.in_sync && r.lag_bytes == 0 && r.lag_records == 0);
        // The active's `peer_durable` is what the passive acknowledged; the
        // passive's is its own durable end.
        let ends =
            |s: &Status| -> Vec<u64> { s.replication.iter().map(|r| r.peer_durable).collect() };
        if live && ends(&a) == ends(&p) {
            Ok(())
        } else {
            Err(seen)
        }
    });
}

/// Stops both servers cleanly, leaving each journal exactly as replicated.
///
/// Order matters: whichever server stops first, the other would carry on
/// in a new epoch and write its epoch-start record where the stopped one
/// cannot see it (the active goes STANDALONE; the passive takes over). So
/// the gateway goes first: without it and the peer, the active has no
/// majority and stops serving (WAITING) instead of opening an epoch.
fn stop_both(pair: &mut Pair, active: usize) {
    let passive = 1 - active;
    pair.kill_gateway();
    wait_for(READY_TIMEOUT, "both servers to lose the gateway", || {
        for i in [active, passive] {
            let s = status(pair, i)?;
            if s.gateway_reachable != Some(false) {
                return Err(format!("{} still reaches the gateway", s.server));
            }
        }
        Ok(())
    });
    pair.stop(passive);
    pair.wait_state(active, "WAITING");
    pair.stop(active);
}

/// What a producer thread did.
#[derive(Debug, Default)]
struct Produced {
    /// Tags of the sends the server acknowledged.
    acked: BTreeSet<String>,
    /// Sends made, acknowledged or not.
    sent: usize,
    /// Why it stopped before being told to, if it did.
    error: Option<ClientError>,
}

/// What a running producer has done so far.
#[derive(Debug, Default)]
struct Progress {
    stop: AtomicBool,
    sent: AtomicUsize,
    acked: AtomicUsize,
}

/// A producer on its own thread: paced sends round robin over [`QUEUES`]
/// until told to stop (then it waits for the outstanding acks) or until
/// the server fails it.
struct Load {
    progress: Arc<Progress>,
    thread: Option<JoinHandle<Produced>>,
}

impl Load {
    fn start(url: String, prefix: &'static str) -> Load {
        let progress = Arc::new(Progress::default());
        let thread = {
            let progress = Arc::clone(&progress);
            std::thread::Builder::new()
                .name(format!("load-{prefix}"))
                .spawn(move || produce(&url, prefix, &progress))
                .expect("spawn a producer")
        };
        Load {
            progress,
            thread: Some(thread),
        }
    }

    fn acked(&self) -> usize {
        self.progress.acked.load(Ordering::Relaxed)
    }

    /// Sends made and not acknowledged yet.
    fn outstanding(&self) -> usize {
        self.progress.sent.load(Ordering::Relaxed) - self.acked()
    }

    /// Waits until `n` more sends than now are acknowledged; fails at once,
    /// with the reason, if the producer stopped.
    fn wait_acked_more(&mut self, n: usize, what: &str) {
        let target = self.acked() + n;
        wait_for(READY_TIMEOUT, what, || {
            if self.acked() >= target {
                return Ok(());
            }
            let thread = self.thread.as_ref().expect("running");
            if thread.is_finished() {
                let produced = self.thread.take().expect("checked").join();
                let produced = produced.expect("producer thread");
                panic!(
                    "the producer stopped before {what}: {:?} ({} sent, {} acknowledged)",
                    produced.error,
                    produced.sent,
                    produced.acked.len()
                );
            }
            Err(format!(
                "{} acknowledged, {} outstanding",
                self.acked(),
                self.outstanding()
            ))
        });
    }

    /// Stops sending, waits for the outstanding acks, and says what was done.
    fn finish(self) -> Produced {
        self.progress.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the producer to end on its own: its server failed it.
    fn join(mut self) -> Produced {
        let thread = self.thread.take().expect("joined once");
        wait_until(READY_TIMEOUT, "the producer to end", || {
            thread.is_finished()
        });
        thread.join().expect("producer thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A failed test leaves the thread to end with its connection.
        self.progress.stop.store(true, Ordering::Relaxed);
    }
}

fn produce(url: &str, prefix: &str, progress: &Progress) -> Produced {
    let mut produced = Produced::default();
    let client = match Client::connect(url, ClientOptions::default()) {
        Ok(client) => client,
        Err(error) => {
            produced.error = Some(error);
            return produced;
        }
    };
    let mut producer = client.producer(ProducerOptions {
        window: WINDOW,
        ..ProducerOptions::default()
    });
    let mut tags: HashMap<u64, String> = HashMap::new();
    let record = |produced: &mut Produced, sequence: u64, tags: &mut HashMap<u64, String>| {
        let tag = tags.remove(&sequence).expect("an ack for a send made");
        produced.acked.insert(tag);
        progress.acked.fetch_add(1, Ordering::Relaxed);
    };
    let interval = Duration::from_secs(1) / LOAD_MESSAGES_PER_SECOND as u32;
    let mut due = Instant::now();
    while !progress.stop.load(Ordering::Relaxed) {
        // Paced, and never faster to make up for a stall.
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        due = due.max(Instant::now()) + interval;
        let i = produced.sent;
        let tag = format!("{prefix}{i:06}");
        match producer.send(QUEUES[i % QUEUES.len()], Vec::new(), body(&tag)) {
            Ok((sequence, completed)) => {
                produced.sent += 1;
                progress.sent.fetch_add(1, Ordering::Relaxed);
                tags.insert(sequence, tag);
                if let Some(ack) = completed {
                    record(&mut produced, ack.sequence, &mut tags);
                }
            }
            Err(error) => {
                produced.error = Some(error);
                return produced;
            }
        }
    }
    while producer.outstanding() > 0 {
        match producer.wait_oldest() {
            Ok(ack) => record(&mut produced, ack.sequence, &mut tags),
            Err(error) => {
                produced.error = Some(error);
                break;
            }
        }
    }
    produced
}

/// Sends `count` messages over [`QUEUES`] with a window, all acknowledged.
fn send_all(pair: &Pair, i: usize, prefix: &str, count: usize) -> BTreeSet<String> {
    let client = connect(pair, i);
    let mut producer = client.producer(ProducerOptions {
        window: WINDOW,
        ..ProducerOptions::default()
    });
    let mut tags = HashMap::new();
    let mut acked = BTreeSet::new();
    for n in 0..count {
        let tag = format!("{prefix}{n:06}");
        let (sequence, completed) = producer
            .send(QUEUES[n % QUEUES.len()], Vec::new(), body(&tag))
            .unwrap_or_else(|e| panic!("send {tag}: {e}"));
        tags.insert(sequence, tag);
        acked.extend(completed.map(|ack| tags.remove(&ack.sequence).expect("sent")));
    }
    for ack in producer.flush().expect("every send acknowledged") {
        acked.insert(tags.remove(&ack.sequence).expect("sent"));
    }
    assert_eq!(acked.len(), count);
    acked
}

/// Consumes and acknowledges everything on [`QUEUES`] of server `i`, until
/// its status counts no message left; returns how often each tag came.
fn drain(pair: &Pair, i: usize) -> BTreeMap<String, usize> {
    let client = connect(pair, i);
    let subscriptions: Vec<_> = QUEUES
        .iter()
        .map(|q| client.subscribe(q, None, 256).expect("subscribe"))
        .collect();
    let mut counts = BTreeMap::new();
    let mut delivered = 0usize;
    wait_for(READY_TIMEOUT, "every message to be consumed", || {
        let mut got = false;
        for subscription in &subscriptions {
            while let Some(d) = subscription
                .receive(Duration::from_millis(20))
                .map_err(|e| format!("receive: {e}"))?
            {
                *counts.entry(tag_of(&d.body)).or_insert(0) += 1;
                subscription.ack(&d).map_err(|e| format!("ack: {e}"))?;
                delivered += 1;
                got = true;
            }
        }
        // Acked deliveries leave the count only once settled, so an empty
        // server after a quiet round means nothing is left anywhere.
        let left = status(pair, i)?.messages;
        if !got && left == 0 {
            Ok(())
        } else {
            Err(format!("{delivered} delivered, {left} left on the server"))
        }
    });
    counts
}

/// Every acknowledged message came exactly once, and no message at all
/// came twice (a send whose ack was lost may be there, once, or not).
#[track_caller]
fn assert_exactly_once(acked: &BTreeSet<String>, delivered: &BTreeMap<String, usize>) {
    let lost: Vec<_> = acked
        .iter()
        .filter(|t| !delivered.contains_key(*t))
        .collect();
    let twice: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        lost.is_empty() && twice.is_empty(),
        "{} acknowledged, {} delivered; acknowledged but lost ({}): {:?}; delivered more than once ({}): {:?}",
        acked.len(),
        delivered.len(),
        lost.len(),
        lost.iter().take(20).collect::<Vec<_>>(),
        twice.len(),
        twice.iter().take(20).collect::<Vec<_>>()
    );
}

fn streams_closed(status: &Status) -> (u64, u64) {
    status
        .replication
        .iter()
        .fold((0, 0), |(all, follower), r| {
            (all + r.streams_closed, follower + r.follower_streams_closed)
        })
}

/// Each shard's journal (first retained offset, end) on server `i`.
fn journal_ranges(pair: &Pair, i: usize) -> Vec<(u64, u64)> {
    let status = status(pair, i).unwrap();
    assert_eq!(status.replication.len(), SHARDS, "{status:?}");
    status
        .replication
        .iter()
        .map(|r| (r.journal_start, r.journal_end))
        .collect()
}

/// Sends and consumes on `active` (alone) until every shard's journal
/// starts past `beyond[shard]`: a passive whose journal ended there then
/// lacks records the active no longer holds.
fn churn_until_released(pair: &Pair, active: usize, beyond: &[u64]) {
    for round in 0.. {
        let ranges = journal_ranges(pair, active);
        if ranges.iter().zip(beyond).all(|((start, _), b)| start > b) {
            return;
        }
        assert!(
            round < 30,
            "the active still holds {ranges:?}, not past {beyond:?}"
        );
        send_all(pair, active, &format!("churn{round}-"), 1500);
        drain(pair, active);
    }
}

/// (first offset, end) of the journal in `dir`, read from disk.
fn scanned_range(dir: &std::path::Path) -> (u64, u64) {
    let scan = twinmq::journal::inspect(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .unwrap_or_else(|| panic!("{}: no journal", dir.display()));
    (scan.start.get(), scan.end.get())
}

/// Waits until server `i`'s broker holds `count` messages.
fn wait_messages(pair: &Pair, i: usize, count: usize) {
    wait_for(
        READY_TIMEOUT,
        "the broker to hold the messages",
        || match status(pair, i)?.messages {
            n if n == count => Ok(()),
            n => Err(format!("{} holds {n}, not {count}", pair.nodes[i].name)),
        },
    );
}

/// The saved journals (`<data_dir>/saved/shard-NNN.K`) under server `i`.
fn saved_journals(pair: &Pair, i: usize) -> Vec<std::path::PathBuf> {
    let saved = pair.data_dir(i).join("saved");
    let mut dirs: Vec<_> = match std::fs::read_dir(&saved) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("list {}: {e}", saved.display()),
    };
    dirs.sort();
    dirs
}

// ---------------------------------------------------------------------------
// Scenarios

#[test]
fn queues_cover_both_shards() {
    let shards: BTreeSet<u16> = QUEUES
        .iter()
        .map(|q| twinmq::shard::owner(&q.parse().unwrap(), SHARDS).0)
        .collect();
    assert_eq!(shards.len(), SHARDS, "QUEUES must spread over every shard");
}

#[test]
fn passive_journals_are_byte_identical_after_load() {
    let mut pair = Pair::replicated();
    start_pair(&mut pair, PRIMARY);
    let acked = send_all(&pair, PRIMARY, "load-", 2000);
    wait_caught_up(&pair, PRIMARY);
    let passive = pair.status(SECONDARY).unwrap();
    assert_eq!(
        passive.messages,
        acked.len(),
        "hot standby: the passive applied every message"
    );
    stop_both(&mut pair, PRIMARY);
    digest::assert_journals_identical(pair.data_dir(PRIMARY), pair.data_dir(SECONDARY));
    let digests = digest::journal_digests(pair.data_dir(PRIMARY));
    let bytes: u64 = digests.iter().map(|d| d.end - d.start).sum();
    assert!(
        digests.len() == SHARDS && bytes > (acked.len() * BODY_BYTES) as u64,
        "the journals hold the load: {digests:?}"
    );
}

#[test]
fn passive_killed_mid_stream_catches_up_and_nothing_acknowledged_is_missing() {
    let mut pair = Pair::replicated();
    start_pair(&mut pair, PRIMARY);
    let mut load = Load::start(pair.url(PRIMARY), "p-");
    load.wait_acked_more(300, "sends acknowledged with the passive in sync");
    pair.kill(SECONDARY);
    pair.wait_state(PRIMARY, "STANDALONE");
    load.wait_acked_more(300, "sends acknowledged by the active alone");
    pair.start(SECONDARY);
    wait_in_sync(&pair, PRIMARY);
    load.wait_acked_more(300, "sends acknowledged after the passive caught up");
    let produced = load.finish();
    assert!(
        produced.error.is_none(),
        "the active kept serving: {:?}",
        produced.error
    );
    assert_eq!(produced.acked.len(), produced.sent);
    let delivered = drain(&pair, PRIMARY);
    assert_exactly_once(&produced.acked, &delivered);
    assert_eq!(delivered.len(), produced.sent);
    wait_caught_up(&pair, PRIMARY);
    stop_both(&mut pair, PRIMARY);
    digest::assert_journals_identical(pair.data_dir(PRIMARY), pair.data_dir(SECONDARY));
}

/// Kills the active under a replicated-ack load and checks the takeover:
/// the passive (`standby` "hot" or "warm") serves alone in a newer epoch
/// with every acknowledged message; the old active comes back as a passive
/// through PASSIVE_SYNC, and in the end both journals are the same log.
fn takeover_keeps_every_acknowledged_message(standby: &str, before_kill: usize) {
    let (old, new) = (PRIMARY, SECONDARY);
    let mut pair = Pair::replicated_with(ReplicatedOptions {
        ha_extra: format!("standby = \"{standby}\""),
        ..ReplicatedOptions::default()
    });
    start_pair(&mut pair, old);
    let epoch = pair.status(old).unwrap().epoch;
    let mut load = Load::start(pair.url(old), "t-");
    load.wait_acked_more(before_kill, "sends acknowledged before the kill");
    pair.kill(old);
    let killed = Instant::now();
    let produced = load.join();
    assert!(produced.error.is_some(), "the producer lost its server");
    pair.wait_state(new, "STANDALONE");
    eprintln!(
        "takeover: STANDALONE {} ms after SIGKILL; {} sent, {} acknowledged",
        killed.elapsed().as_millis(),
        produced.sent,
        produced.acked.len()
    );
    let taken = pair.status(new).unwrap();
    assert!(
        taken.epoch > epoch,
        "the takeover opened a newer epoch ({} after {epoch})",
        taken.epoch
    );
    let delivered = drain(&pair, new);
    assert_exactly_once(&produced.acked, &delivered);

    let log_before = pair.log(old).len();
    pair.start(old);
    wait_caught_up(&pair, new);
    let log = pair.log(old);
    let rejoined = &log[log_before..];
    assert!(
        rejoined.contains("switched to PASSIVE_SYNC"),
        "the old active rejoins through PASSIVE_SYNC:\n{rejoined}"
    );
    eprintln!(
        "the old active {}",
        if rejoined.contains("dropped this journal's tail") {
            "dropped an unreplicated tail"
        } else {
            "had no unreplicated tail"
        }
    );
    if standby == "hot" {
        // The rejoined passive's broker, recovered from its own journal,
        // follows the consumption it missed: nothing left, as on the active.
        wait_for(
            READY_TIMEOUT,
            "the rejoined passive to hold nothing",
            || match status(&pair, old)?.messages {
                0 => Ok(()),
                n => Err(format!("{n} messages")),
            },
        );
    }
    stop_both(&mut pair, new);
    digest::assert_journals_identical(pair.data_dir(old), pair.data_dir(new));
}

#[test]
fn active_killed_passive_takes_over_with_every_acknowledged_message() {
    takeover_keeps_every_acknowledged_message("hot", 600);
}

#[test]
fn warm_standby_takes_over_too() {
    takeover_keeps_every_acknowledged_message("warm", 300);
}

#[test]
fn a_corrupted_replication_frame_resets_the_stream_and_nothing_wrong_is_applied() {
    let mut pair = Pair::replicated_with(ReplicatedOptions {
        proxied_link: true,
        ..ReplicatedOptions::default()
    });
    start_split_link(&mut pair);
    let mut acked = send_all(&pair, PRIMARY, "before-", 200);
    wait_caught_up(&pair, PRIMARY);
    // Only the active's replication data travels this way.
    let proxy = pair.proxy(SECONDARY);
    let (_, follower_closed) = streams_closed(&pair.status(SECONDARY).unwrap());
    let (leader_closed, _) = streams_closed(&pair.status(PRIMARY).unwrap());
    // Well into the coming load (about 1 MB): inside some data frame.
    proxy.corrupt_once(Direction::FromTarget, 300_000);
    acked.extend(send_all(&pair, PRIMARY, "after-", 1000));
    assert!(proxy.corrupted(), "the load passed the armed byte");
    wait_for(READY_TIMEOUT, "the passive to reset a stream", || {
        let passive = status(&pair, SECONDARY)?;
        let (_, closed) = streams_closed(&passive);
        if closed > follower_closed {
            Ok(())
        } else {
            Err(format!("{:?}", passive.replication))
        }
    });
    let passive = pair.status(SECONDARY).unwrap();
    let why: Vec<_> = passive
        .replication
        .iter()
        .filter_map(|r| r.last_error.clone())
        .collect();
    assert!(
        why.iter()
            .any(|w| w.contains("bad frame") || w.contains("refused")),
        "the passive names the bad frame: {why:?}"
    );
    eprintln!("the passive reset its stream: {why:?}");
    wait_caught_up(&pair, PRIMARY);
    let (leader_closed_now, _) = streams_closed(&pair.status(PRIMARY).unwrap());
    assert!(
        leader_closed_now > leader_closed,
        "the active saw its stream closed and took a new one"
    );
    // Hot standby: the passive's broker holds each message once, as the
    // active's does.
    wait_for(READY_TIMEOUT, "both brokers to hold every message", || {
        let counts = [
            status(&pair, PRIMARY)?.messages,
            status(&pair, SECONDARY)?.messages,
        ];
        if counts == [acked.len(); 2] {
            Ok(())
        } else {
            Err(format!("{counts:?} of {}", acked.len()))
        }
    });
    let delivered = drain(&pair, PRIMARY);
    assert_exactly_once(&acked, &delivered);
    wait_caught_up(&pair, PRIMARY);
    stop_both(&mut pair, PRIMARY);
    digest::assert_journals_identical(pair.data_dir(PRIMARY), pair.data_dir(SECONDARY));
}

#[test]
fn a_former_active_cuts_the_tail_it_never_replicated_when_it_rejoins() {
    let (old, new) = (PRIMARY, SECONDARY);
    // `local` acks: the active acknowledges what only its own disk holds,
    // so a tail the passive never got is certain once a send is acked
    // with the streams stalled.
    let mut pair = Pair::replicated_with(ReplicatedOptions {
        proxied_link: true,
        ha_extra: "ack_mode = \"local\"".into(),
        ..ReplicatedOptions::default()
    });
    start_split_link(&mut pair);
    let epoch = pair.status(old).unwrap().epoch;
    let replicated = send_all(&pair, old, "in-sync-", 200);
    wait_caught_up(&pair, old);
    // Stall the streams, not the control link: the active stays ACTIVE and
    // journals (and acknowledges) sends the passive never sees.
    pair.proxy(new).hold();
    let unreplicated = send_all(&pair, old, "held-", 50);
    assert_eq!(pair.state(old).as_deref(), Some("ACTIVE"));
    pair.kill(old);
    // What the proxy held never reaches the passive.
    pair.proxy(new).cut();
    pair.proxy(new).release();
    pair.proxy(new).heal();
    pair.wait_state(new, "STANDALONE");
    assert!(pair.status(new).unwrap().epoch > epoch);

    let log_before = pair.log(old).len();
    pair.start(old);
    wait_caught_up(&pair, new);
    let log = pair.log(old);
    assert!(
        log[log_before..].contains("dropped this journal's tail"),
        "the old active cut its unreplicated tail:\n{}",
        &log[log_before..]
    );
    // Hot standby: the rejoined passive rebuilt its broker from the cut
    // journal, so the messages of the tail are gone from memory too.
    wait_for(
        READY_TIMEOUT,
        "both brokers to hold the replicated messages",
        || {
            let counts = [status(&pair, new)?.messages, status(&pair, old)?.messages];
            if counts == [replicated.len(); 2] {
                Ok(())
            } else {
                Err(format!("active, passive: {counts:?}"))
            }
        },
    );
    let delivered = drain(&pair, new);
    assert_exactly_once(&replicated, &delivered);
    let resurrected: Vec<_> = unreplicated
        .iter()
        .filter(|t| delivered.contains_key(*t))
        .collect();
    assert!(
        resurrected.is_empty(),
        "messages of the cut tail came back: {resurrected:?}"
    );
    wait_caught_up(&pair, new);
    stop_both(&mut pair, new);
    digest::assert_journals_identical(pair.data_dir(old), pair.data_dir(new));
}

/// The active leads (its `replicated` sends wait for the passive's
/// acknowledgement) when the passive dies: it goes STANDALONE, where a
/// send commits on the local flush, so the sends that were waiting are
/// acknowledged then — with no further send needed to move things on.
#[test]
fn sends_waiting_for_a_dead_passive_are_acknowledged_once_the_active_stands_alone() {
    let mut pair = Pair::replicated_with(ReplicatedOptions {
        proxied_link: true,
        ..ReplicatedOptions::default()
    });
    start_split_link(&mut pair);
    let client = Client::connect(
        &pair.url(PRIMARY),
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            ..ClientOptions::default()
        },
    )
    .expect("connect");
    let mut producer = client.producer(ProducerOptions::default());
    producer
        .send_and_wait(QUEUES[0], body("in-sync"))
        .expect("a replicated send with the passive in sync");
    wait_caught_up(&pair, PRIMARY);
    // The passive's acknowledgements stop; the send waits for one.
    pair.proxy(SECONDARY).hold();
    producer
        .send(QUEUES[0], Vec::new(), body("waiting"))
        .expect("send");
    wait_for(READY_TIMEOUT, "the send to wait for the passive", || {
        let active = status(&pair, PRIMARY)?;
        let lag: u64 = active.replication.iter().map(|r| r.lag_bytes).sum();
        if active.state == "ACTIVE" && lag > 0 {
            Ok(())
        } else {
            Err(format!("{} with {lag} bytes of lag", active.state))
        }
    });
    pair.kill(SECONDARY);
    pair.wait_state(PRIMARY, "STANDALONE");
    let ack = producer.wait_oldest();
    assert!(
        ack.is_ok(),
        "the waiting send is acknowledged by the active alone: {ack:?}"
    );
}

#[test]
fn cutting_the_ha_link_leaves_exactly_one_server_serving() {
    let mut pair = Pair::replicated_with(ReplicatedOptions {
        proxied_link: true,
        ..ReplicatedOptions::default()
    });
    start_pair(&mut pair, PRIMARY);
    let acked = send_all(&pair, PRIMARY, "m-", 200);
    wait_caught_up(&pair, PRIMARY);
    let epoch = pair.status(PRIMARY).unwrap().epoch;
    let serving = |pair: &Pair| -> Vec<(usize, String)> {
        (0..2)
            .filter_map(|i| {
                let state = pair
                    .state(i)
                    .unwrap_or_else(|| panic!("{} answers status", pair.nodes[i].name));
                SERVING.contains(&state.as_str()).then_some((i, state))
            })
            .collect()
    };
    for i in 0..2 {
        pair.proxy(i).cut();
    }
    // Long past the heartbeat timeout and the passive's lock interval:
    // whatever either server does, it does within this.
    let cut = Instant::now();
    let mut samples = 0;
    while cut.elapsed() < Duration::from_secs(3) {
        let now = serving(&pair);
        assert!(now.len() <= 1, "both serve with the link cut: {now:?}");
        samples += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let alone = serving(&pair);
    assert_eq!(
        alone.len(),
        1,
        "exactly one serves: {alone:?} ({samples} samples)"
    );
    let (survivor, ref state) = alone[0];
    assert_eq!(
        (survivor, state.as_str()),
        (PRIMARY, "STANDALONE"),
        "the active keeps the lock and the gateway"
    );
    assert!(pair.status(survivor).unwrap().epoch > epoch);
    assert_eq!(pair.state(SECONDARY).as_deref(), Some("WAITING"));

    for i in 0..2 {
        pair.proxy(i).heal();
    }
    wait_for(READY_TIMEOUT, "the pair to re-form", || {
        let now = serving(&pair);
        assert!(now.len() <= 1, "both serve while re-pairing: {now:?}");
        let states = [pair.state(0), pair.state(1)];
        if states == [Some("ACTIVE".into()), Some("PASSIVE".into())] {
            Ok(())
        } else {
            Err(format!("{states:?}"))
        }
    });
    wait_caught_up(&pair, PRIMARY);
    let delivered = drain(&pair, PRIMARY);
    assert_exactly_once(&acked, &delivered);
    wait_caught_up(&pair, PRIMARY);
    stop_both(&mut pair, PRIMARY);
    digest::assert_journals_identical(pair.data_dir(PRIMARY), pair.data_dir(SECONDARY));
}

/// Writes `frame` to a raw client connection.
fn write_frame(stream: &mut TcpStream, frame: &Frame) {
    let mut buf = Vec::new();
    frame.encode(&mut buf).expect("encode");
    stream.write_all(&buf).expect("write a frame");
}

/// Reads frames from a raw client connection until `want` of them came.
fn read_frames(stream: &mut TcpStream, want: usize) -> Vec<Frame> {
    stream
        .set_read_timeout(Some(READY_TIMEOUT))
        .expect("read timeout");
    let (mut bytes, mut frames, mut at) = (Vec::new(), Vec::new(), 0);
    let mut chunk = [0u8; 4096];
    while frames.len() < want {
        while let Some((frame, used)) =
            protocol::decode(&bytes[at..], &Limits::default()).expect("a valid frame")
        {
            frames.push(frame);
            at += used;
        }
        if frames.len() >= want {
            break;
        }
        let n = stream.read(&mut chunk).expect("the server answers");
        assert!(n > 0, "the server closed the connection after {frames:?}");
        bytes.extend_from_slice(&chunk[..n]);
    }
    frames
}

#[test]
fn standalone_refuse_turns_away_replicated_sends() {
    let mut pair = Pair::replicated_with(ReplicatedOptions {
        ha_extra: "standalone = \"refuse\"".into(),
        ..ReplicatedOptions::default()
    });
    start_pair(&mut pair, PRIMARY);
    let client = connect(&pair, PRIMARY);
    client
        .producer(ProducerOptions::default())
        .send_and_wait(QUEUES[0], body("paired"))
        .expect("a replicated send with the passive in sync");
    pair.kill(SECONDARY);
    pair.wait_state(PRIMARY, "STANDALONE");

    // The client sends with the default ack mode, which the profile makes
    // `replicated`: refused, and the error says why.
    let client = connect(&pair, PRIMARY);
    let refused = client
        .producer(ProducerOptions::default())
        .send_and_wait(QUEUES[0], body("alone-default"))
        .expect_err("a replicated send while alone");
    assert!(
        matches!(
            &refused,
            ClientError::Refused {
                code: ErrorCode::NotReplicated,
                ..
            }
        ),
        "{refused:?}"
    );
    assert!(refused.to_string().contains("not replicated"), "{refused}");

    // The client library cannot choose an ack mode yet, so the explicit
    // modes go as raw frames: `local` is taken, `replicated` is not.
    let mut raw = TcpStream::connect(pair.nodes[PRIMARY].client).expect("connect");
    write_frame(
        &mut raw,
        &Frame::Hello(protocol::Hello {
            magic: protocol::MAGIC,
            version: protocol::PROTOCOL_VERSION,
            client_id: "ack-modes".into(),
            username: String::new(),
            password: Bytes::new(),
        }),
    );
    let send = |sequence, ack_mode| {
        Frame::Send(protocol::Send {
            producer_id: 7,
            sequence,
            destination: QUEUES[0].into(),
            persistent: true,
            ttl_ms: 0,
            ack_mode,
            headers: Vec::new(),
            body: body(&format!("alone-{ack_mode:?}")),
        })
    };
    write_frame(&mut raw, &send(1, AckMode::Local));
    write_frame(&mut raw, &send(2, AckMode::Replicated));
    let frames = read_frames(&mut raw, 3);
    assert!(matches!(frames[0], Frame::Welcome(_)), "{frames:?}");
    let answers = &frames[1..];
    assert!(
        answers
            .iter()
            .any(|f| matches!(f, Frame::SendAck(a) if a.sequence == 1 && !a.duplicate)),
        "the local send is acknowledged: {answers:?}"
    );
    assert!(
        answers.iter().any(|f| matches!(
            f,
            Frame::Error(e) if e.request_id == 2 && e.code == ErrorCode::NotReplicated
        )),
        "the replicated send is refused: {answers:?}"
    );
    wait_for(
        READY_TIMEOUT,
        "the paired and the local message stored",
        || match status(&pair, PRIMARY)?.messages {
            2 => Ok(()),
            n => Err(format!("{n} messages")),
        },
    );

    // With a passive back in sync, replicated sends are taken again.
    pair.start(SECONDARY);
    wait_in_sync(&pair, PRIMARY);
    client
        .producer(ProducerOptions::default())
        .send_and_wait(QUEUES[0], body("paired-again"))
        .expect("a replicated send with the passive back in sync");
}

/// A passive that was away while the active consumed and released more
/// than it holds cannot catch up by streaming: it gets the active's
/// retained journal whole. What it held was an older part of the active's
/// log, settled and released there, so nothing is set aside.
#[test]
fn a_passive_too_far_behind_gets_a_full_copy_of_the_retained_journal() {
    let mut pair = Pair::replicated();
    start_pair(&mut pair, PRIMARY);
    send_all(&pair, PRIMARY, "early-", 500);
    drain(&pair, PRIMARY);
    wait_caught_up(&pair, PRIMARY);
    pair.kill(SECONDARY);
    let old_ends: Vec<u64> = digest::shard_dirs(pair.data_dir(SECONDARY))
        .iter()
        .map(|(_, dir)| scanned_range(dir).1)
        .collect();
    pair.wait_state(PRIMARY, "STANDALONE");
    churn_until_released(&pair, PRIMARY, &old_ends);
    let kept = send_all(&pair, PRIMARY, "kept-", 300);

    let log_before = pair.log(SECONDARY).len();
    pair.start(SECONDARY);
    wait_caught_up(&pair, PRIMARY);
    let log = &pair.log(SECONDARY)[log_before..];
    assert_eq!(
        log.matches("full copy from the active").count(),
        SHARDS,
        "every shard was copied whole:\n{log}"
    );
    assert!(
        log.contains("held only records the active already released"),
        "{log}"
    );
    assert_eq!(
        saved_journals(&pair, SECONDARY),
        Vec::<std::path::PathBuf>::new()
    );
    for (shard, ((start, _), old_end)) in journal_ranges(&pair, SECONDARY)
        .iter()
        .zip(&old_ends)
        .enumerate()
    {
        assert!(
            start > old_end,
            "shard {shard}: the passive's journal starts at {start}, past its old end {old_end}"
        );
    }
    // Hot standby: the copy was applied as it came, so the passive can
    // take over with every message at once.
    wait_messages(&pair, SECONDARY, kept.len());
    pair.kill(PRIMARY);
    pair.wait_state(SECONDARY, "STANDALONE");
    let delivered = drain(&pair, SECONDARY);
    assert_exactly_once(&kept, &delivered);
    assert_eq!(delivered.len(), kept.len());
}

/// The stale-replica rule end to end, and a full copy over a diverged
/// history: the newer server dies, the older one refuses to lead alone
/// until `twinmq promote --force`, then consumes and releases past the
/// point where the two histories part. The newer server comes back, its
/// journal (holding sends only it acknowledged) is set aside under
/// `saved/`, and it follows with a full copy.
#[test]
fn a_diverged_passive_sets_its_journal_aside_before_a_full_copy() {
    let (older, newer) = (PRIMARY, SECONDARY);
    let mut pair = Pair::replicated();
    start_pair(&mut pair, older);
    let common = send_all(&pair, older, "common-", 300);
    wait_caught_up(&pair, older);
    pair.kill(older);
    pair.wait_state(newer, "STANDALONE");
    let only_newer = send_all(&pair, newer, "newer-", 300);
    pair.kill(newer);
    let newer_ranges: Vec<(u64, u64)> = digest::shard_dirs(pair.data_dir(newer))
        .iter()
        .map(|(_, dir)| scanned_range(dir))
        .collect();

    let log_before = pair.log(older).len();
    pair.start(older);
    pair.wait_state(older, "WAITING");
    wait_for(READY_TIMEOUT, "the stale replica to say so", || {
        let log = pair.log(older);
        if log[log_before..].contains("stale replica") {
            Ok(())
        } else {
            Err(log[log_before..].to_owned())
        }
    });
    let promote = std::process::Command::new(env!("CARGO_BIN_EXE_twinmq"))
        .args(["promote", "--force", "--admin"])
        .arg(pair.nodes[older].admin.to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&promote.stdout);
    assert!(
        promote.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&promote.stderr)
    );
    eprintln!("promote --force: {said}");
    pair.wait_state(older, "STANDALONE");
    let delivered = drain(&pair, older);
    assert_exactly_once(&common, &delivered);
    assert!(
        only_newer.iter().all(|t| !delivered.contains_key(t)),
        "what only the newer server held is not on the older one"
    );
    let ends: Vec<u64> = newer_ranges.iter().map(|r| r.1).collect();
    churn_until_released(&pair, older, &ends);
    let kept = send_all(&pair, older, "kept-", 200);

    pair.start(newer);
    wait_caught_up(&pair, older);
    wait_messages(&pair, newer, kept.len());
    let saved = saved_journals(&pair, newer);
    let names: Vec<String> = saved
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let expected: Vec<String> = (0..SHARDS).map(|s| format!("shard-{s:03}.1")).collect();
    assert_eq!(names, expected);
    // Each saved journal is the newer server's whole log as it was.
    for (dir, range) in saved.iter().zip(&newer_ranges) {
        assert_eq!(scanned_range(dir), *range, "{}", dir.display());
    }
    wait_caught_up(&pair, older);
    stop_both(&mut pair, older);
    digest::assert_journals_identical(pair.data_dir(older), pair.data_dir(newer));
}

/// A long-running pair releases the segment holding its epoch's start
/// record; after restarts neither server remembers where that epoch began.
/// The former active still rejoins by streaming — both logs say their
/// first bytes are that epoch's — with no full copy.
#[test]
fn a_former_active_rejoins_by_streaming_after_its_epoch_start_was_released() {
    let mut pair = Pair::replicated();
    start_pair(&mut pair, PRIMARY);
    // The passive restarts (the active opens a new epoch meanwhile), then
    // the pair runs on until that epoch's start record is released on both.
    pair.stop(SECONDARY);
    pair.wait_state(PRIMARY, "STANDALONE");
    pair.start(SECONDARY);
    wait_caught_up(&pair, PRIMARY);
    let epoch_begun: Vec<u64> = journal_ranges(&pair, PRIMARY).iter().map(|r| r.1).collect();
    churn_until_released(&pair, PRIMARY, &epoch_begun);
    wait_caught_up(&pair, PRIMARY);
    wait_for(READY_TIMEOUT, "the passive to release it too", || {
        let ranges = journal_ranges(&pair, SECONDARY);
        if ranges
            .iter()
            .zip(&epoch_begun)
            .all(|((start, _), b)| start > b)
        {
            Ok(())
        } else {
            Err(format!("{ranges:?}, not past {epoch_begun:?}"))
        }
    });
    let kept = send_all(&pair, PRIMARY, "kept-", 200);
    wait_caught_up(&pair, PRIMARY);
    pair.kill(PRIMARY);
    pair.wait_state(SECONDARY, "STANDALONE");

    let log_before = pair.log(PRIMARY).len();
    pair.start(PRIMARY);
    wait_caught_up(&pair, SECONDARY);
    let log = &pair.log(PRIMARY)[log_before..];
    assert!(
        !log.contains("full copy") && !log.contains("dropped this journal's tail"),
        "the former active kept its log and streamed what it lacked:\n{log}"
    );
    assert_eq!(
        saved_journals(&pair, PRIMARY),
        Vec::<std::path::PathBuf>::new()
    );
    wait_messages(&pair, PRIMARY, kept.len());
    let delivered = drain(&pair, SECONDARY);
    assert_exactly_once(&kept, &delivered);
    wait_caught_up(&pair, SECONDARY);
    stop_both(&mut pair, SECONDARY);
    digest::assert_journals_identical(pair.data_dir(PRIMARY), pair.data_dir(SECONDARY));
}
