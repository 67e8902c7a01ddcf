//! The load: producer and consumer threads on durable connections, the
//! failover schedule, and the checker.
//!
//! Every body starts with who sent it and when it was meant to go:
//! `producer u32 | sequence u64 | intended send time u64` (ns since the
//! run's start, one clock for the whole process), then filler. Latency is
//! measured from the intended time: in open loop (`--rate`) that is the
//! schedule, so a stalled server shows in the latency of every send it
//! delayed (no coordinated omission); in closed loop it is the send call.

use crate::report::{Checker, ClientFigures, Failover, Percentiles, Report, Throughput};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use twinmq::bench::Latency;
use twinmq::client::ProducerOptions;
use twinmq::client::durable::{Counters, DurableConnection, DurableOptions, ReconnectPolicy};
use twinmq::pair::local::{LocalPair, PairSpec};
use twinmq::protocol::AckMode;

/// Bytes of the body's prefix: producer, sequence, intended send time.
const PREFIX_BYTES: usize = 20;
/// How long clients keep reconnecting before they give up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// How long the end of the run waits for the last acks and deliveries.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Prefetch of every consumer.
const PREFETCH: u32 = 256;
/// How often producers publish their latency so far, for the progress line.
const SHARE_EVERY: Duration = Duration::from_millis(500);
const MIB: f64 = 1024.0 * 1024.0;

/// Message sizes.
#[derive(Debug, Clone, Copy)]
pub enum Size {
    Fixed(usize),
    /// Uniform between the two, inclusive.
    Uniform(usize, usize),
}

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Size, String> {
        let bytes = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("--size {text}: expected bytes (`1024`) or `uniform:MIN-MAX`"))
        };
        let size = match text.strip_prefix("uniform:") {
            Some(range) => {
                let (min, max) = range
                    .split_once('-')
                    .ok_or_else(|| format!("--size {text}: expected uniform:MIN-MAX"))?;
                let (min, max) = (bytes(min)?, bytes(max)?);
                if min > max {
                    return Err(format!("--size {text}: MIN is above MAX"));
                }
                Size::Uniform(min, max)
            }
            None => Size::Fixed(bytes(text)?),
        };
        let smallest = match size {
            Size::Fixed(n) | Size::Uniform(n, _) => n,
        };
        if smallest < PREFIX_BYTES {
            return Err(format!(
                "--size {text}: at least {PREFIX_BYTES} bytes (each body carries its producer, \
                 sequence and send time)"
            ));
        }
        Ok(size)
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Fixed(n) => write!(f, "{n}"),
            Size::Uniform(a, b) => write!(f, "uniform:{a}-{b}"),
        }
    }
}

/// When producers stop.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// This long after the warm-up.
    Duration(Duration),
    /// After this many sends each.
    Count(u64),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub url: Option<String>,
    pub local_pair: bool,
    pub dir: Option<PathBuf>,
    pub producers: usize,
    pub consumers: usize,
    pub destinations: usize,
    pub topic: bool,
    pub size: Size,
    pub persistent: bool,
    pub ack_mode: AckMode,
    pub window: usize,
    /// Open loop: messages per second, all producers together.
    pub rate: Option<f64>,
    pub until: Until,
    pub warmup: Duration,
    pub failover_every: Option<Duration>,
    pub seed: u64,
    /// Print a progress line on stderr every second.
    pub progress: bool,
}

impl Config {
    fn destination(&self, n: usize) -> String {
        let kind = if self.topic { "topic" } else { "queue" };
        format!("/{kind}/load-{}", n % self.destinations)
    }

    fn options(&self, seed: u64) -> DurableOptions {
        DurableOptions {
            seed,
            reconnect: ReconnectPolicy {
                give_up_after: GIVE_UP_AFTER,
                ..ReconnectPolicy::default()
            },
            ..DurableOptions::default()
        }
    }
}

/// What every thread of the run shares.
struct Shared {
    url: String,
    /// The run's clock: body timestamps count from here.
    epoch: Instant,
    /// Measurement starts (after the warm-up).
    measure_from: Instant,
    /// Producers stop sending.
    stop_sending: AtomicBool,
    /// Consumers stop receiving.
    stop_receiving: AtomicBool,
    /// Consumers subscribed (or given up): producers start once all are,
    /// so a topic's subscribers miss nothing.
    ready: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    /// When the latest acknowledgement was read, in nanoseconds since
    /// `epoch`: a failover is over once it passes the kill.
    last_ack_ns: AtomicU64,
    /// Held from a kill until acknowledgements resume after it, so the run
    /// never stops sending in between (the gap would not be measured).
    failing_over: Mutex<()>,
    delivered: AtomicU64,
    /// Send-to-ack latency so far, for the progress line.
    live: Mutex<Latency>,
    /// (producer, sequence) of every delivery, all consumers → the message
    /// ids it came under (more than one: it was enqueued twice).
    received: Mutex<HashMap<(u32, u64), Vec<u64>>>,
}

/// What one producer did.
#[derive(Debug, Default)]
struct Produced {
    attempted: u64,
    acked: Vec<u64>,
    /// Acknowledged sends meant to go inside the measurement, and bytes.
    measured: u64,
    measured_bytes: u64,
    latency: Latency,
    /// When each acknowledgement was read, for the failover gaps.
    ack_times: Vec<Instant>,
    errors: u64,
    counters: Counters,
}

/// What one consumer got.
#[derive(Debug, Default)]
struct Consumed {
    measured: u64,
    measured_bytes: u64,
    latency: Latency,
    errors: u64,
    counters: Counters,
}

/// Runs the load and returns its report.
pub fn run(config: &Config) -> Result<Report, String> {
    let (pair, dir) = if config.local_pair {
        let dir = config.dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("twinmq-load-{}", std::process::id()))
        });
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let pair = LocalPair::start(&dir, "load", PairSpec::SHIPPED).map_err(|e| e.to_string())?;
        pair.wait_in_sync().map_err(|e| e.to_string())?;
        (Some(pair), Some(dir))
    } else {
        (None, None)
    };
    let url = match (&pair, &config.url) {
        (Some(pair), _) => pair.url(),
        (None, Some(url)) => url.clone(),
        (None, None) => return Err("no servers to load".into()),
    };
    let result = drive(config, url, pair);
    if let Some(dir) = dir
        && config.dir.is_none()
    {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn drive(config: &Config, url: String, pair: Option<LocalPair>) -> Result<Report, String> {
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        url: url.clone(),
        epoch,
        measure_from: epoch + config.warmup,
        stop_sending: AtomicBool::new(false),
        stop_receiving: AtomicBool::new(false),
        ready: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        last_ack_ns: AtomicU64::new(0),
        failing_over: Mutex::new(()),
        delivered: AtomicU64::new(0),
        live: Mutex::new(Latency::default()),
        received: Mutex::new(HashMap::new()),
    });
    let consumers: Vec<JoinHandle<Consumed>> = (0..config.consumers)
        .map(|c| {
            let (config, shared) = (config.clone(), shared.clone());
            std::thread::spawn(move || consume(c, &config, &shared))
        })
        .collect();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while shared.ready.load(Ordering::Relaxed) < config.consumers as u64 {
        if Instant::now() > deadline {
            return Err(format!("consumers not subscribed within {DRAIN_TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let producers: Vec<JoinHandle<Produced>> = (0..config.producers)
        .map(|p| {
            let (config, shared) = (config.clone(), shared.clone());
            std::thread::spawn(move || produce(p, &config, &shared))
        })
        .collect();
    let failovers = pair.map(|pair| {
        let (every, shared) = (config.failover_every, shared.clone());
        std::thread::spawn(move || fail_over(pair, every, &shared))
    });

    if let Until::Duration(duration) = config.until {
        let stop_at = shared.measure_from + duration;
        while Instant::now() < stop_at && !producers.iter().all(JoinHandle::is_finished) {
            progress(config, &shared);
            std::thread::sleep(
                Duration::from_millis(100).min(stop_at.saturating_duration_since(Instant::now())),
            );
        }
        let _no_failover = shared.failing_over.lock().expect("failing_over");
        shared.stop_sending.store(true, Ordering::Relaxed);
    }
    while !producers.iter().all(JoinHandle::is_finished) {
        progress(config, &shared);
        std::thread::sleep(Duration::from_millis(100));
    }
    let measured_for = Instant::now().saturating_duration_since(shared.measure_from);
    let produced: Vec<Produced> = producers
        .into_iter()
        .map(|t| t.join().expect("producer thread"))
        .collect();
    shared.stop_sending.store(true, Ordering::Relaxed);
    // The pair lives until the consumers are done.
    let (_pair, kills) = match failovers.map(|t| t.join().expect("failover thread")) {
        Some(result) => {
            let (pair, kills) = result?;
            (Some(pair), kills)
        }
        None => (None, Vec::new()),
    };

    // Wait until the consumers have everything acknowledged (queues: one
    // consumer each; topics: at least one).
    let acked: HashSet<(u32, u64)> = produced
        .iter()
        .enumerate()
        .flat_map(|(p, r)| r.acked.iter().map(move |&s| (p as u32, s)))
        .collect();
    if config.consumers > 0 {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while Instant::now() < deadline {
            let received = shared.received.lock().expect("received");
            if acked.iter().all(|k| received.contains_key(k)) {
                break;
            }
            drop(received);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    shared.stop_receiving.store(true, Ordering::Relaxed);
    let consumed: Vec<Consumed> = consumers
        .into_iter()
        .map(|t| t.join().expect("consumer thread"))
        .collect();
    if config.progress {
        eprintln!();
    }
    Ok(report(
        config,
        &url,
        &shared,
        measured_for,
        &produced,
        &consumed,
        &acked,
        &kills,
    ))
}

/// One line on stderr, overwritten each second: elapsed, rates, p99.
fn progress(config: &Config, shared: &Shared) {
    thread_local! {
        static LAST: std::cell::Cell<Option<(Instant, u64, u64, u64)>> = const { std::cell::Cell::new(None) };
    }
    if !config.progress {
        return;
    }
    let now = Instant::now();
    let counts = (
        shared.sent.load(Ordering::Relaxed),
        shared.acked.load(Ordering::Relaxed),
        shared.delivered.load(Ordering::Relaxed),
    );
    LAST.with(|last| {
        let (at, sent, acked, delivered) = last.get().unwrap_or((shared.epoch, 0, 0, 0));
        let span = now.duration_since(at).as_secs_f64();
        if span < 1.0 {
            return;
        }
        let rate = |a: u64, b: u64| (a - b) as f64 / span;
        let p99 = shared.live.lock().expect("live").quantile_us(0.99);
        eprint!(
            "\r{:6.1} s  sent {:>9.0}/s  acked {:>9.0}/s  delivered {:>9.0}/s  ack p99 {:>8.0} µs ",
            now.duration_since(shared.epoch).as_secs_f64(),
            rate(counts.0, sent),
            rate(counts.1, acked),
            rate(counts.2, delivered),
            p99
        );
        last.set(Some((now, counts.0, counts.1, counts.2)));
    });
}

fn encode(producer: u32, sequence: u64, intended_ns: u64, len: usize) -> Bytes {
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&producer.to_le_bytes());
    body.extend_from_slice(&sequence.to_le_bytes());
    body.extend_from_slice(&intended_ns.to_le_bytes());
    body.resize(len, b'.');
    Bytes::from(body)
}

fn decode(body: &[u8]) -> Option<(u32, u64, u64)> {
    let prefix = body.get(..PREFIX_BYTES)?;
    Some((
        u32::from_le_bytes(prefix[..4].try_into().ok()?),
        u64::from_le_bytes(prefix[4..12].try_into().ok()?),
        u64::from_le_bytes(prefix[12..20].try_into().ok()?),
    ))
}

fn produce(p: usize, config: &Config, shared: &Shared) -> Produced {
    let mut out = Produced::default();
    let connection =
        match DurableConnection::connect(&shared.url, config.options(config.seed + p as u64)) {
            Ok(connection) => connection,
            Err(error) => {
                eprintln!("producer {p}: {error}");
                out.errors += 1;
                return out;
            }
        };
    let mut producer = connection.producer(ProducerOptions {
        window: config.window,
        persistent: config.persistent,
        ack_mode: config.ack_mode,
        ..ProducerOptions::default()
    });
    let mut rng = StdRng::seed_from_u64(config.seed ^ (p as u64).rotate_left(32));
    let interval = config
        .rate
        .map(|rate| Duration::from_secs_f64(config.producers as f64 / rate));
    // Sequence → (intended send time, body bytes).
    let mut pending: HashMap<u64, (Instant, usize)> = HashMap::new();
    // Named once, not per send.
    let destinations: Vec<String> = (0..config.destinations)
        .map(|d| config.destination(d))
        .collect();
    let mut since_share = Latency::default();
    let mut shared_at = Instant::now();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        let done = match config.until {
            Until::Count(count) => n >= count,
            Until::Duration(_) => shared.stop_sending.load(Ordering::Relaxed),
        };
        if done {
            break;
        }
        // A paced producer sends one at a time, on its schedule; an
        // unpaced one refills its window in one write, as a pipelining
        // client does when a batch of acknowledgements comes back.
        let burst = match interval {
            Some(interval) => {
                let at = start + interval.mul_f64(n as f64);
                if let Err(error) = producer.pause_until(at) {
                    eprintln!("producer {p}: {error}");
                    out.errors += 1;
                    break;
                }
                vec![(at, n)]
            }
            None => {
                let room = config.window.saturating_sub(producer.outstanding()).max(1) as u64;
                let room = match config.until {
                    Until::Count(count) => room.min(count - n),
                    Until::Duration(_) => room,
                };
                let now = Instant::now();
                (n..n + room).map(|i| (now, i)).collect()
            }
        };
        let first = producer.next_sequence();
        let mut sends = Vec::with_capacity(burst.len());
        let mut messages = Vec::with_capacity(burst.len());
        for (sequence, (intended, i)) in (first..).zip(burst) {
            let len = match config.size {
                Size::Fixed(len) => len,
                Size::Uniform(min, max) => rng.random_range(min..=max),
            };
            let body = encode(
                p as u32,
                sequence,
                intended.duration_since(shared.epoch).as_nanos() as u64,
                len,
            );
            let destination = destinations[(i as usize + p) % destinations.len()].as_str();
            sends.push((sequence, intended, len));
            messages.push((destination, Vec::new(), body));
        }
        if let Err(error) = producer.send_batch(messages) {
            eprintln!("producer {p}: {error}");
            out.errors += 1;
            break;
        }
        for (sequence, intended, len) in &sends {
            pending.insert(*sequence, (*intended, *len));
        }
        out.attempted += sends.len() as u64;
        shared.sent.fetch_add(sends.len() as u64, Ordering::Relaxed);
        n += sends.len() as u64;
        take_acks(
            &mut producer,
            &mut pending,
            &mut out,
            &mut since_share,
            shared,
        );
        if shared_at.elapsed() >= SHARE_EVERY {
            shared.live.lock().expect("live").merge(&since_share);
            since_share = Latency::default();
            shared_at = Instant::now();
        }
    }
    if let Err(error) = producer.flush(DRAIN_TIMEOUT) {
        eprintln!("producer {p}: waiting for the last acknowledgements: {error}");
        out.errors += 1;
    }
    take_acks(
        &mut producer,
        &mut pending,
        &mut out,
        &mut since_share,
        shared,
    );
    out.counters = connection.counters();
    out
}

fn take_acks(
    producer: &mut twinmq::client::durable::DurableProducer,
    pending: &mut HashMap<u64, (Instant, usize)>,
    out: &mut Produced,
    since_share: &mut Latency,
    shared: &Shared,
) {
    for (sequence, ack) in producer.take_acked() {
        let Some((intended, len)) = pending.remove(&sequence) else {
            continue;
        };
        let latency = ack.received_at.saturating_duration_since(intended);
        if intended >= shared.measure_from {
            out.latency.record(latency);
            since_share.record(latency);
            out.measured += 1;
            out.measured_bytes += len as u64;
        }
        out.acked.push(sequence);
        out.ack_times.push(ack.received_at);
        shared.acked.fetch_add(1, Ordering::Relaxed);
        shared.last_ack_ns.fetch_max(
            ack.received_at.duration_since(shared.epoch).as_nanos() as u64,
            Ordering::Relaxed,
        );
    }
    let failed = producer.take_failed();
    if let Some((sequence, error)) = failed.first() {
        eprintln!("send {sequence} refused: {error}");
    }
    for (sequence, _) in &failed {
        pending.remove(sequence);
    }
    out.errors += failed.len() as u64;
}

fn consume(c: usize, config: &Config, shared: &Shared) -> Consumed {
    let mut out = Consumed::default();
    let destination = config.destination(c);
    let subscribed =
        DurableConnection::connect(&shared.url, config.options(config.seed + 1000 + c as u64))
            .and_then(|connection| {
                let subscription = connection.subscribe(&destination, None, PREFETCH)?;
                Ok((connection, subscription))
            });
    shared.ready.fetch_add(1, Ordering::Relaxed);
    let (connection, mut subscription) = match subscribed {
        Ok(subscribed) => subscribed,
        Err(error) => {
            eprintln!("consumer {c}: subscribe to {destination}: {error}");
            out.errors += 1;
            return out;
        }
    };
    while !shared.stop_receiving.load(Ordering::Relaxed) {
        let delivery = match subscription.receive(Duration::from_millis(50)) {
            Ok(Some(delivery)) => delivery,
            Ok(None) => continue,
            Err(error) => {
                eprintln!("consumer {c}: {error}");
                out.errors += 1;
                break;
            }
        };
        let now = Instant::now();
        if let Some((producer, sequence, intended_ns)) = decode(&delivery.body) {
            let intended = shared.epoch + Duration::from_nanos(intended_ns);
            if intended >= shared.measure_from {
                out.latency.record(now.saturating_duration_since(intended));
                out.measured += 1;
                out.measured_bytes += delivery.body.len() as u64;
            }
            let mut received = shared.received.lock().expect("received");
            let ids = received.entry((producer, sequence)).or_default();
            if !ids.contains(&delivery.message_id) {
                ids.push(delivery.message_id);
            }
        }
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = subscription.ack(&delivery) {
            eprintln!("consumer {c}: ack: {error}");
            out.errors += 1;
        }
    }
    if let Err(error) = subscription.settle(DRAIN_TIMEOUT) {
        eprintln!("consumer {c}: confirming acknowledgements: {error}");
        out.errors += 1;
    }
    out.counters = connection.counters();
    out
}

/// Kills the active every `every` while producers run, restarts it and
/// waits for the pair to be in sync again; returns the pair (still
/// running) and when each kill was.
fn fail_over(
    mut pair: LocalPair,
    every: Option<Duration>,
    shared: &Shared,
) -> Result<(LocalPair, Vec<Instant>), String> {
    let mut kills = Vec::new();
    let mut next = every.map(|every| shared.measure_from + every);
    while !shared.stop_sending.load(Ordering::Relaxed) {
        match next {
            Some(at) if Instant::now() >= at => {
                let active = pair.wait_in_sync().map_err(|e| e.to_string())?;
                let _failing_over = shared.failing_over.lock().expect("failing_over");
                if shared.stop_sending.load(Ordering::Relaxed) {
                    break;
                }
                pair.kill(active);
                let kill = Instant::now();
                kills.push(kill);
                pair.start_node(active).map_err(|e| e.to_string())?;
                wait_for_ack_after(kill, shared)?;
                next = every.map(|every| Instant::now().max(at + every));
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Ok((pair, kills))
}

/// Waits until a producer reads an acknowledgement after `kill`, or all
/// producers are done (a `--count` run can end inside a failover; its gap
/// is then reported as not measured).
fn wait_for_ack_after(kill: Instant, shared: &Shared) -> Result<(), String> {
    let kill_ns = kill.duration_since(shared.epoch).as_nanos() as u64;
    let deadline = kill + DRAIN_TIMEOUT;
    while shared.last_ack_ns.load(Ordering::Relaxed) <= kill_ns
        && !shared.stop_sending.load(Ordering::Relaxed)
    {
        if Instant::now() > deadline {
            return Err(format!(
                "no acknowledgement within {DRAIN_TIMEOUT:?} after killing the active"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Around each kill, the gap between the last acknowledgement before it
/// and the first after it, over all producers.
fn unavailability(kills: &[Instant], produced: &[Produced], epoch: Instant) -> Vec<Failover> {
    let mut times: Vec<Instant> = produced
        .iter()
        .flat_map(|p| p.ack_times.iter().copied())
        .collect();
    times.sort();
    kills
        .iter()
        .map(|kill| {
            let after = times.partition_point(|t| t <= kill);
            let gap = match (
                after.checked_sub(1).and_then(|i| times.get(i)),
                times.get(after),
            ) {
                (Some(before), Some(first)) => Some(first.duration_since(*before)),
                _ => None,
            };
            Failover {
                at_s: kill.duration_since(epoch).as_secs_f64(),
                unavailable_ms: gap.map(|g| g.as_secs_f64() * 1000.0),
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn report(
    config: &Config,
    url: &str,
    shared: &Shared,
    measured_for: Duration,
    produced: &[Produced],
    consumed: &[Consumed],
    acked: &HashSet<(u32, u64)>,
    kills: &[Instant],
) -> Report {
    let seconds = measured_for.as_secs_f64().max(f64::MIN_POSITIVE);
    let throughput = |messages: u64, bytes: u64| Throughput {
        messages,
        msgs_s: messages as f64 / seconds,
        mib_s: bytes as f64 / MIB / seconds,
    };
    let mut send_to_ack = Latency::default();
    let mut send_to_deliver = Latency::default();
    for p in produced {
        send_to_ack.merge(&p.latency);
    }
    for c in consumed {
        send_to_deliver.merge(&c.latency);
    }
    let received = shared.received.lock().expect("received");
    // One send delivered under two message ids was enqueued twice (a
    // redelivery keeps its id).
    let duplicated = received.values().filter(|ids| ids.len() > 1).count() as u64;
    let mut client = ClientFigures::default();
    for counters in produced
        .iter()
        .map(|p| p.counters)
        .chain(consumed.iter().map(|c| c.counters))
    {
        client.reconnects += counters.reconnects;
        client.replayed += counters.replayed;
        client.duplicate_acks += counters.duplicates;
        client.stale_acks += counters.stale_acks;
        client.acked_redeliveries_dropped += counters.acked_redeliveries;
    }
    Report {
        target: if config.local_pair {
            format!("local replicated pair ({url})")
        } else {
            url.to_owned()
        },
        producers: config.producers,
        consumers: config.consumers,
        destinations: config.destinations,
        topic: config.topic,
        size: config.size.to_string(),
        persistent: config.persistent,
        ack_mode: format!("{:?}", config.ack_mode).to_lowercase(),
        window: config.window,
        rate: config.rate,
        warmup_s: config.warmup.as_secs_f64(),
        measured_s: seconds,
        sent: throughput(
            produced.iter().map(|p| p.measured).sum(),
            produced.iter().map(|p| p.measured_bytes).sum(),
        ),
        delivered: throughput(
            consumed.iter().map(|c| c.measured).sum(),
            consumed.iter().map(|c| c.measured_bytes).sum(),
        ),
        send_to_ack: Percentiles::of(&send_to_ack),
        send_to_deliver: Percentiles::of(&send_to_deliver),
        errors: produced.iter().map(|p| p.errors).sum::<u64>()
            + consumed.iter().map(|c| c.errors).sum::<u64>(),
        checker: Checker {
            attempted: produced.iter().map(|p| p.attempted).sum(),
            acknowledged: acked.len() as u64,
            delivered: received.len() as u64,
            checked: config.consumers > 0,
            lost: if config.consumers > 0 {
                acked.iter().filter(|k| !received.contains_key(k)).count() as u64
            } else {
                0
            },
            duplicated,
        },
        client,
        failovers: unavailability(kills, produced, shared.epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_refuse_what_cannot_carry_the_prefix() {
        assert!(matches!("1024".parse::<Size>(), Ok(Size::Fixed(1024))));
        assert!(matches!(
            "uniform:100-2000".parse::<Size>(),
            Ok(Size::Uniform(100, 2000))
        ));
        for bad in ["", "big", "uniform:10", "uniform:500-100", "8"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bodies_carry_producer_sequence_and_time() {
        let body = encode(3, 77, 123_456, 64);
        assert_eq!(body.len(), 64);
        assert_eq!(decode(&body), Some((3, 77, 123_456)));
        assert_eq!(decode(b"short"), None);
    }
}
