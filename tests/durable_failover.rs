//! Chaos with real server processes: producers on durable connections run
//! without pause against a pair whose active is killed with SIGKILL and
//! restarted again and again (5 failovers; `TWINMQ_FAILOVERS` for more),
//! in both HA modes. Then every queue is drained and a checker compares
//! what the producers saw acknowledged with what was enqueued: nothing
//! acknowledged may be missing and nothing may be there twice.
//!
//! Each run also prints the client-observed unavailability of every
//! failover (the longest gap between acknowledgements around the kill) —
//! figures for the note, never asserted.

#[path = "support/pair.rs"]
mod pair;
#[path = "support/server.rs"]
mod server;

use bytes::Bytes;
use pair::Pair;
use server::{READY_TIMEOUT, wait_until};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinmq::client::ProducerOptions;
use twinmq::client::durable::{DurableConnection, DurableOptions, ReconnectPolicy};
use twinmq::protocol::AckMode;

const QUEUES: [&str; 4] = ["/queue/c0", "/queue/c1", "/queue/c2", "/queue/c3"];
const PRODUCERS: usize = 3;
/// Pause between one producer's sends: a steady load, light enough for two
/// cores shared with the other tests.
const SEND_EVERY: Duration = Duration::from_millis(3);
/// Acknowledgements to see between two kills, so that every failover
/// happens under load.
const ACKS_BETWEEN_KILLS: usize = 100;
const FAILOVERS_DEFAULT: usize = 5;
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);

fn failovers() -> usize {
    std::env::var("TWINMQ_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(FAILOVERS_DEFAULT)
}

fn tag(producer: usize, sequence: u64) -> String {
    format!("p{producer}-{sequence}")
}

/// Durable-connection settings of the test's clients: seeded jitter, and
/// reconnecting for as long as a test waits for anything.
fn options(seed: u64) -> DurableOptions {
    DurableOptions {
        seed,
        reconnect: ReconnectPolicy {
            give_up_after: READY_TIMEOUT,
            ..ReconnectPolicy::default()
        },
        ..DurableOptions::default()
    }
}

/// What one producer saw.
#[derive(Debug, Default)]
struct ProducerLog {
    /// Sequence → its tag, for every send attempted.
    attempted: BTreeMap<u64, String>,
    /// Tags acknowledged, and when the producer took each acknowledgement.
    acked: Vec<(Instant, String)>,
    duplicates: u64,
    replayed: u64,
    reconnects: u64,
}

struct Producers {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<ProducerLog>>,
}

impl Producers {
    fn start(url: String) -> Producers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let threads = (0..PRODUCERS)
            .map(|p| {
                let (url, stop, acked) = (url.clone(), stop.clone(), acked.clone());
                std::thread::spawn(move || produce(p, &url, &stop, &acked))
            })
            .collect();
        Producers {
            stop,
            acked,
            threads,
        }
    }

    fn wait_acked(&self, at_least: usize) {
        wait_until(
            READY_TIMEOUT,
            &format!("{at_least} acknowledgements"),
            || self.acked.load(Ordering::Relaxed) >= at_least,
        );
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    fn finish(self) -> Vec<ProducerLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("producer thread"))
            .collect()
    }
}

fn produce(p: usize, url: &str, stop: &AtomicBool, acked: &AtomicUsize) -> ProducerLog {
    let connection = DurableConnection::connect(url, options(p as u64)).expect("connect");
    let mut producer = connection.producer(ProducerOptions {
        window: 32,
        ack_mode: AckMode::Replicated,
        ..ProducerOptions::default()
    });
    let mut log = ProducerLog::default();
    let take = |producer: &mut twinmq::client::durable::DurableProducer, log: &mut ProducerLog| {
        for (sequence, ack) in producer.take_acked() {
            log.acked
                .push((ack.received_at, log.attempted[&sequence].clone()));
            acked.fetch_add(1, Ordering::Relaxed);
        }
        let failed = producer.take_failed();
        assert!(failed.is_empty(), "producer {p}: sends refused: {failed:?}");
    };
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let queue = QUEUES[(n as usize + p) % QUEUES.len()];
        let sequence = producer
            .send(queue, Vec::new(), Bytes::from(tag(p, n)))
            .unwrap_or_else(|e| panic!("producer {p}: send {n}: {e}"));
        assert_eq!(sequence, n, "one sequence per send, in order");
        log.attempted.insert(sequence, tag(p, n));
        take(&mut producer, &mut log);
        producer
            .pause_until(Instant::now() + SEND_EVERY)
            .unwrap_or_else(|e| panic!("producer {p}: pause: {e}"));
    }
    producer
        .flush(FLUSH_TIMEOUT)
        .unwrap_or_else(|e| panic!("producer {p}: flush: {e}"));
    take(&mut producer, &mut log);
    let counters = connection.counters();
    log.duplicates = counters.duplicates;
    log.replayed = counters.replayed;
    log.reconnects = counters.reconnects;
    log
}

/// One delivery a consumer handed to the application.
#[derive(Debug, Clone)]
struct Received {
    tag: String,
    message_id: u64,
    delivery_count: u32,
}

/// Consumers on durable subscriptions, one per queue, acknowledging each
/// delivery; each returns what it received.
struct Consumers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Received>>>,
}

impl Consumers {
    fn start(url: &str) -> Consumers {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = QUEUES
            .iter()
            .enumerate()
            .map(|(c, queue)| {
                let (url, stop) = (url.to_owned(), stop.clone());
                std::thread::spawn(move || consume(c, &url, queue, &stop))
            })
            .collect();
        Consumers { stop, threads }
    }

    fn finish(self) -> Vec<Received> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("consumer thread"))
            .collect()
    }
}

fn consume(c: usize, url: &str, queue: &str, stop: &AtomicBool) -> Vec<Received> {
    let connection = DurableConnection::connect(url, options(100 + c as u64)).expect("connect");
    let mut subscription = connection.subscribe(queue, None, 64).expect("subscribe");
    let mut received = Vec::new();
    let mut acked = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(delivery) = subscription
            .receive(Duration::from_millis(50))
            .unwrap_or_else(|e| panic!("consumer {c}: {e}"))
        else {
            continue;
        };
        assert!(
            !acked.contains(&delivery.message_id),
            "consumer {c}: message {} came again after it was acknowledged",
            delivery.message_id
        );
        received.push(Received {
            tag: String::from_utf8_lossy(&delivery.body).into_owned(),
            message_id: delivery.message_id,
            delivery_count: delivery.delivery_count,
        });
        subscription
            .ack(&delivery)
            .unwrap_or_else(|e| panic!("consumer {c}: ack: {e}"));
        acked.insert(delivery.message_id);
    }
    subscription
        .settle(READY_TIMEOUT)
        .expect("every acknowledgement confirmed");
    received
}

/// Waits until `queue` on server `i` is empty: nothing beyond what was
/// received.
fn wait_drained_queue(pair: &Pair, i: usize, queue: &str) {
    wait_until(READY_TIMEOUT, &format!("{queue} to be empty"), || {
        pair.status(i).is_some_and(|s| {
            s.destinations
                .iter()
                .filter(|d| d.destination == queue)
                .all(|d| d.depth == 0)
        })
    });
}

/// Waits until every queue on server `i` is empty (status publishes depth
/// periodically, acknowledged deliveries included).
fn wait_drained(pair: &Pair, i: usize) {
    wait_until(READY_TIMEOUT, "every queue to be empty", || {
        pair.status(i).is_some_and(|s| {
            s.destinations
                .iter()
                .filter(|d| QUEUES.contains(&d.destination.as_str()))
                .all(|d| d.depth == 0)
        })
    });
}

/// The serving server once the other one is a passive of it.
fn wait_paired(pair: &Pair, replicated: bool) -> usize {
    let mut active = None;
    wait_until(READY_TIMEOUT, "one ACTIVE server and its PASSIVE", || {
        let states = [pair.status(0), pair.status(1)];
        active = (0..2).find(|&i| {
            let (a, p) = (&states[i], &states[1 - i]);
            match (a, p) {
                (Some(a), Some(p)) => {
                    a.state == "ACTIVE"
                        && p.state == "PASSIVE"
                        && (!replicated || a.replication.iter().all(|r| r.in_sync))
                }
                _ => false,
            }
        });
        active.is_some()
    });
    active.expect("waited")
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn chaos(mut pair: Pair, replicated: bool) {
    pair.start(0);
    pair.start(1);
    let mut active = wait_paired(&pair, replicated);
    let url = format!("twinmq://{},{}", pair.nodes[0].client, pair.nodes[1].client);
    let consumers = Consumers::start(&url);
    let producers = Producers::start(url);
    let mut kills = Vec::new();
    for _ in 0..failovers() {
        producers.wait_acked(producers.acked() + ACKS_BETWEEN_KILLS);
        pair.kill(active);
        kills.push(Instant::now());
        let survivor = 1 - active;
        pair.wait_state(survivor, if replicated { "STANDALONE" } else { "ACTIVE" });
        pair.start(active);
        active = wait_paired(&pair, replicated);
        assert_eq!(
            active, survivor,
            "the restarted server rejoins as the passive"
        );
    }
    producers.wait_acked(producers.acked() + ACKS_BETWEEN_KILLS);
    let logs = producers.finish();
    wait_drained(&pair, active);
    let delivered = consumers.finish();

    // The checker. A tag under two message ids was enqueued twice; one id
    // delivered twice is a redelivery of a message not yet acknowledged
    // (the consumers assert that an acknowledged one never comes again).
    let attempted: usize = logs.iter().map(|l| l.attempted.len()).sum();
    let acked: Vec<&str> = logs
        .iter()
        .flat_map(|l| l.acked.iter().map(|(_, t)| t.as_str()))
        .collect();
    let mut ids: HashMap<&str, std::collections::BTreeSet<u64>> = HashMap::new();
    for r in &delivered {
        ids.entry(r.tag.as_str()).or_default().insert(r.message_id);
    }
    let redelivered = delivered.iter().filter(|r| r.delivery_count > 1).count();
    let lost: Vec<&&str> = acked.iter().filter(|t| !ids.contains_key(**t)).collect();
    let duplicated: Vec<_> = ids.iter().filter(|(_, set)| set.len() > 1).collect();
    let duplicate_acks: u64 = logs.iter().map(|l| l.duplicates).sum();
    let replayed: u64 = logs.iter().map(|l| l.replayed).sum();
    let reconnects: u64 = logs.iter().map(|l| l.reconnects).sum();
    eprintln!(
        "checker ({} mode, {} failovers): attempted {attempted}, acknowledged {}, delivered {} \
         ({} distinct, {redelivered} redeliveries), lost {}, duplicated {}; client replays \
         {replayed}, duplicate acks {duplicate_acks}, producer reconnects {reconnects}",
        if replicated { "replicated" } else { "shared" },
        kills.len(),
        acked.len(),
        delivered.len(),
        ids.len(),
        lost.len(),
        duplicated.len(),
    );
    assert!(lost.is_empty(), "acknowledged but not delivered: {lost:?}");
    assert!(duplicated.is_empty(), "enqueued twice: {duplicated:?}");
    assert_eq!(
        acked.len(),
        attempted,
        "every send acknowledged after the flush"
    );
    assert_eq!(ids.len(), attempted, "every send delivered");
    assert!(
        reconnects >= (PRODUCERS * kills.len()) as u64,
        "every producer reconnected after every kill: {reconnects}"
    );

    // Unavailability seen by the clients: around each kill, the gap between
    // the last acknowledgement before it and the first after it.
    let mut times: Vec<Instant> = logs
        .iter()
        .flat_map(|l| l.acked.iter().map(|(t, _)| *t))
        .collect();
    times.sort();
    let mut gaps: Vec<Duration> = kills
        .iter()
        .filter_map(|kill| {
            let after = times.partition_point(|t| t <= kill);
            let first_after = times.get(after)?;
            let last_before = times.get(after.checked_sub(1)?)?;
            Some(*first_after - *last_before)
        })
        .collect();
    gaps.sort();
    if !gaps.is_empty() {
        eprintln!(
            "unavailability per failover ({} mode, {} failovers): p50 {} ms, max {} ms",
            if replicated { "replicated" } else { "shared" },
            gaps.len(),
            percentile(&gaps, 0.5).as_millis(),
            gaps.last().expect("not empty").as_millis()
        );
    }
}

#[test]
fn replicated_pair_killed_repeatedly_loses_and_duplicates_nothing_acknowledged() {
    chaos(Pair::replicated(), true);
}

#[test]
fn shared_pair_killed_repeatedly_loses_and_duplicates_nothing_acknowledged() {
    chaos(Pair::new(), false);
}

/// `twinmq send` and `twinmq receive` ride through a kill of the active:
/// every message sent once, received once.
#[test]
fn command_line_send_and_receive_carry_on_through_a_failover() {
    const COUNT: usize = 20_000;
    const QUEUE: &str = "/queue/cli";
    let mut pair = Pair::replicated();
    pair.start(0);
    pair.start(1);
    let active = wait_paired(&pair, true);
    let url = format!("twinmq://{},{}", pair.nodes[0].client, pair.nodes[1].client);
    let depth = |pair: &Pair, i: usize| {
        pair.status(i).map_or(0, |s| {
            s.destinations
                .iter()
                .find(|d| d.destination == QUEUE)
                .map_or(0, |d| d.depth)
        })
    };
    let run = |args: &[&str], out: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_twinmq"))
            .args(args)
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
            .spawn()
            .unwrap()
    };
    let finish = |mut child: std::process::Child, out: &std::path::Path, what: &str| {
        let mut status = None;
        wait_until(READY_TIMEOUT * 2, what, || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        let err = std::fs::read_to_string(out.with_extension("err")).unwrap();
        assert!(status.unwrap().success(), "{what} failed:\n{err}");
        err
    };

    let sent_log = pair.dir.path().join("send.out");
    let count = COUNT.to_string();
    let sender = run(
        &[
            "send", QUEUE, "m{n}", "--count", &count, "--window", "16", "--url", &url,
        ],
        &sent_log,
    );
    wait_until(READY_TIMEOUT, "the first sends to be stored", || {
        depth(&pair, active) >= COUNT / 20
    });
    pair.kill(active);
    let report = finish(sender, &sent_log, "twinmq send");
    assert!(report.contains("all acknowledged"), "{report}");
    assert!(
        report.contains("reconnect"),
        "it rode through a failover: {report}"
    );
    let survivor = 1 - active;
    pair.start(active);
    assert_eq!(wait_paired(&pair, true), survivor);

    let received_log = pair.dir.path().join("receive.out");
    let receiver = run(
        &[
            "receive",
            QUEUE,
            "--count",
            &count,
            "--prefetch",
            "16",
            "--url",
            &url,
        ],
        &received_log,
    );
    wait_until(READY_TIMEOUT, "the first messages to be received", || {
        std::fs::read_to_string(&received_log).map_or(0, |s| s.lines().count()) >= COUNT / 20
    });
    pair.kill(survivor);
    let report = finish(receiver, &received_log, "twinmq receive");
    assert!(
        report.contains("reconnect"),
        "it rode through a failover: {report}"
    );
    let lines = std::fs::read_to_string(&received_log).unwrap();
    let mut bodies: Vec<&str> = lines.lines().collect();
    assert_eq!(bodies.len(), COUNT, "received exactly the count:\n{report}");
    bodies.sort_unstable();
    let twice: Vec<&str> = bodies
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0])
        .collect();
    assert!(twice.is_empty(), "received twice: {twice:?}\n{report}");
    bodies.dedup();
    let expected: std::collections::BTreeSet<String> =
        (1..=COUNT).map(|n| format!("m{n}")).collect();
    let got: std::collections::BTreeSet<String> = bodies.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, expected, "each message sent once, received once");
}

/// A client killed in the middle of a failover, with its outbox in a
/// file: the next run sends what was pending, and in the end every message
/// the first run accepted is on the queue exactly once.
#[test]
fn client_restarted_with_a_file_outbox_mid_failover_loses_and_duplicates_nothing() {
    const QUEUE: &str = "/queue/outbox";
    let mut pair = Pair::replicated();
    pair.start(0);
    pair.start(1);
    let active = wait_paired(&pair, true);
    let url = format!("twinmq://{},{}", pair.nodes[0].client, pair.nodes[1].client);
    let outbox = pair.dir.path().join("producer.outbox");
    let outbox_arg = outbox.to_string_lossy().into_owned();
    let dir = pair.dir.path().to_owned();
    let send = |count: &str, log: &str| {
        let log = dir.join(log);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_twinmq"))
            .args([
                "send",
                QUEUE,
                "m{n}",
                "--count",
                count,
                "--window",
                "64",
                "--outbox",
                &outbox_arg,
                "--url",
                &url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        (child, log)
    };
    let (mut first, _) = send("1000000", "send-1.err");
    wait_until(READY_TIMEOUT, "the first sends to be stored", || {
        pair.status(active).is_some_and(|s| {
            s.destinations
                .iter()
                .any(|d| d.destination == QUEUE && d.depth >= 500)
        })
    });
    // The server and the client die together.
    pair.kill(active);
    first.kill().unwrap();
    first.wait().unwrap();

    let (mut second, log) = send("0", "send-2.err");
    let mut status = None;
    wait_until(READY_TIMEOUT * 2, "the second run to finish", || {
        status = second.try_wait().unwrap();
        status.is_some()
    });
    let report = std::fs::read_to_string(&log).unwrap();
    assert!(status.unwrap().success(), "second run failed:\n{report}");
    eprintln!("second run: {}", report.trim());
    let last: usize = report
        .split("up to message ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the second run resumed pending sends:\n{report}"));

    let survivor = 1 - active;
    let connection =
        DurableConnection::connect(&pair.url(survivor), DurableOptions::default()).unwrap();
    let mut subscription = connection.subscribe(QUEUE, None, 256).unwrap();
    let mut bodies = Vec::new();
    let deadline = Instant::now() + READY_TIMEOUT;
    while bodies.len() < last {
        assert!(
            Instant::now() < deadline,
            "{} of {last} messages received",
            bodies.len()
        );
        if let Some(delivery) = subscription.receive(Duration::from_millis(100)).unwrap() {
            bodies.push(String::from_utf8_lossy(&delivery.body).into_owned());
            subscription.ack(&delivery).unwrap();
        }
    }
    subscription.ping().unwrap();
    wait_drained_queue(&pair, survivor, QUEUE);
    let received = bodies.len();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), received, "nothing enqueued twice");
    let expected: std::collections::BTreeSet<String> =
        (1..=last).map(|n| format!("m{n}")).collect();
    let got: std::collections::BTreeSet<String> = bodies.into_iter().collect();
    assert_eq!(got, expected);
}

/// A delivery not acknowledged when the active dies comes again from the
/// new active, with its delivery count raised.
#[test]
fn an_unacknowledged_delivery_comes_again_after_failover_with_a_raised_count() {
    let mut pair = Pair::replicated();
    pair.start(0);
    pair.start(1);
    let active = wait_paired(&pair, true);
    let url = format!("twinmq://{},{}", pair.nodes[0].client, pair.nodes[1].client);
    let connection = DurableConnection::connect(&url, DurableOptions::default()).unwrap();
    let mut producer = connection.producer(ProducerOptions::default());
    producer
        .send("/queue/redeliver", Vec::new(), Bytes::from_static(b"once"))
        .unwrap();
    producer.flush(READY_TIMEOUT).unwrap();
    let mut subscription = connection.subscribe("/queue/redeliver", None, 1).unwrap();
    let first = subscription
        .receive(READY_TIMEOUT)
        .unwrap()
        .expect("delivered");
    assert_eq!(first.delivery_count, 1);
    pair.kill(active);
    let again = subscription
        .receive(READY_TIMEOUT)
        .unwrap()
        .expect("delivered again by the new active");
    assert_eq!(again.message_id, first.message_id, "the same message");
    assert_eq!(again.body, first.body);
    assert!(
        again.delivery_count >= 2,
        "count raised: {}",
        again.delivery_count
    );
    subscription.ack(&again).unwrap();
    assert!(connection.counters().reconnects >= 1);
}
