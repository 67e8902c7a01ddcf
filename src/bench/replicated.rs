//! `twinmq bench replicated`: what replication costs, each figure beside the
//! floor it is held to, all measured in one run on one machine.
//!
//! ```text
//!   floors          disk: 4 KiB write + fdatasync p50, alone and two writers at once;
//!                   1 MiB O_DIRECT + dsync MiB/s
//!                   loopback: 64 B ping-pong p50; one TCP stream MiB/s
//!   single server   4 producers x window 64, 1 KiB persistent: msgs/s (ack local)
//!                   window 1: send-to-ack p50 ÷ flush p50 (what the pair adds to)
//!   pair            the same load, ack replicated: msgs/s ÷ the single server's
//!                   window 1: send-to-ack p50 ÷ (loopback RTT p50 + flush p50),
//!                   and ÷ (RTT p50 + two-writer flush p50): both servers flush
//!                   each batch at once, here on one disk
//!                   both again for each [net.ha] variant (nodelay, buffers)
//!   catch-up        fresh pair, passive SIGKILLed, N MiB of 16 KiB sent to the active,
//!                   passive restarted: bytes ÷ time to in sync ÷ min(disk, loopback)
//!   takeover        hot and warm standby: SIGKILL of the active to the first
//!                   send the other server acknowledges
//! ```
//!
//! The pair runs from the shipped `profiles/replicated/*.toml`, rewritten to
//! free ports and a directory of the run (as `twinmq up` rewrites them), with
//! its own gateway responder. Every process the bench starts is killed when
//! the value owning it drops, on an error or a panic too; the run's directory
//! goes at the end unless the run failed, so its logs can be read.
//!
//! Producers choose no ack mode (the client sends `Default`): the single
//! server acknowledges after its own flush, and the pair after both flushes,
//! because the shipped profiles say `ack_mode = "replicated"` — checked when
//! they are rewritten.

use super::broker::{client_error, refill, start_server, window1};
use super::journal::{
    BenchError, FLOOR_FILE_BYTES, direct_dsync_floor, disk_copy_floor, flush_floor, io_error,
    make_zeroed, paired_flush_floor,
};
use super::{Latency, ratio};
use crate::admin::Status;
use crate::client::{Client, ClientOptions, ProducerOptions};
use crate::config::HaStandby;
use crate::pair::local::{
    LocalPair as Pair, PairSpec, START_TIMEOUT, all_in_sync, failure, shipped_profiles, wait_for,
};
use crate::pair::strip_ansi;
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Producers of the throughput load, each on its own connection and queue.
const PRODUCERS: usize = 4;
/// Sends each producer keeps in flight.
const WINDOW: usize = 64;
/// Body of the throughput, window-1 and takeover messages.
const BODY_BYTES: usize = 1024;
/// Body of the catch-up and large-message throughput loads: large, so
/// the figures are about bytes.
const LARGE_BODY_BYTES: usize = 16 * 1024;
/// Messages queued before the takeovers, so a warm standby has state to
/// rebuild.
const TAKEOVER_BACKLOG: u64 = 5_000;
/// Size of one write of the disk bandwidth floor.
const DISK_WRITE_BYTES: usize = 1024 * 1024;
/// Size of one ping of the loopback round-trip floor.
const PING_BYTES: usize = 64;
/// Size of one write of the loopback bandwidth floor.
const STREAM_WRITE_BYTES: usize = 1024 * 1024;
/// `[net.ha]` variants as (`nodelay`, send and receive buffer bytes): the
/// shipped setting first, then Nagle on, then small buffers against the
/// kernel's autotuning (0).
const LINK_VARIANTS: [(bool, u32); 4] =
    [(true, 0), (false, 0), (true, 64 * 1024), (false, 64 * 1024)];
/// Acknowledged sends before a takeover's SIGKILL: the producer is then in
/// its steady loop, not connecting.
const STEADY_ACKS: usize = 20;
/// How long a catch-up may take.
const CATCHUP_TIMEOUT: Duration = Duration::from_secs(600);
/// Pause between reconnection attempts during a takeover.
const RECONNECT_PAUSE: Duration = Duration::from_millis(2);
/// Distinct WARN / ERROR lines of the servers' logs shown in the report.
const LOG_FINDINGS_MAX: usize = 12;
const MIB: f64 = 1024.0 * 1024.0;

/// Queue names; a producer's index is appended to the load's.
const LOAD_QUEUE: &str = "/queue/bench-load";
const WINDOW1_QUEUE: &str = "/queue/bench-window1";
const CATCHUP_QUEUE: &str = "/queue/bench-catchup";
const LARGE_QUEUE: &str = "/queue/bench-16k";
const BACKLOG_QUEUE: &str = "/queue/bench-backlog";
const TAKEOVER_QUEUE: &str = "/queue/bench-takeover";

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// Length of each throughput, latency and floor measurement.
    pub seconds: f64,
    /// Takeovers measured per standby mode.
    pub runs_takeover: usize,
    /// MiB sent to the active while the passive is down.
    pub catchup_mib: u64,
    /// Where the catch-up's passive keeps its journal, when not beside the
    /// active's on `dir`'s disk: another device, so the catch-up is held
    /// to that device's write floor instead of a same-disk copy.
    pub passive_dir: Option<PathBuf>,
}

/// The physical floors, measured first.
#[derive(Debug, Clone, Serialize)]
pub struct Floors {
    pub disk_flush_p50_us: f64,
    /// The 4 KiB write + fdatasync p50 while a second writer does the same
    /// on the same disk: what each server of a one-disk pair flushes at.
    pub disk_flush_paired_p50_us: f64,
    pub disk_write_mib_s: f64,
    /// 1 MiB `O_DIRECT` reads of one file while another takes 1 MiB
    /// `O_DIRECT` + dsync writes, on the same disk: what a catch-up between
    /// two servers on one machine can at most do.
    pub disk_copy_mib_s: f64,
    pub loopback_rtt_p50_us: f64,
    pub loopback_mib_s: f64,
    /// The 1 MiB `O_DIRECT` + dsync write floor of `--passive-dir`'s
    /// device, when the catch-up's passive writes there.
    pub passive_disk_write_mib_s: Option<f64>,
}

/// The pair's throughput and window-1 latency with one `[net.ha]` setting.
#[derive(Debug, Clone, Serialize)]
pub struct LinkVariant {
    pub nodelay: bool,
    /// `send_buffer_bytes` and `recv_buffer_bytes`; 0 = kernel autotuning.
    pub buffer_bytes: u32,
    pub msgs_s: f64,
    /// `msgs_s` ÷ the single server's.
    pub msgs_ratio: f64,
    pub window1_p50_us: f64,
    pub window1_p99_us: f64,
    /// `window1_p50_us` ÷ the window-1 floor.
    pub window1_ratio: f64,
}

/// The passive's catch-up after missing `bytes`.
#[derive(Debug, Clone, Serialize)]
pub struct Catchup {
    /// Journal bytes the passive acknowledged in the catch-up, all shards.
    pub bytes: u64,
    /// Message bodies sent while it was down.
    pub sent_body_bytes: u64,
    /// From spawning the passive to every shard in sync on the active
    /// (process start and journal recovery included; polled).
    pub total_s: f64,
    /// The catch-up itself as the active's shards timed it (from the
    /// passive's `Sync` to its acknowledgement of the live point); shards
    /// run in parallel, so the slowest one's time.
    pub streaming_s: f64,
    pub streaming_mib_s: f64,
    /// Whether the passive wrote to `--passive-dir`'s device.
    pub passive_dir: bool,
    /// min(write floor of the passive's disk, loopback): what a catch-up
    /// is held to.
    pub floor_mib_s: f64,
    /// `streaming_mib_s` ÷ `floor_mib_s`.
    pub ratio: f64,
    /// `streaming_mib_s` ÷ min(disk copy, loopback): the floor when both
    /// servers share one disk (`None` with `--passive-dir`).
    pub copy_ratio: Option<f64>,
}

/// SIGKILL of the active to the first send acknowledged by the other server.
#[derive(Debug, Clone, Serialize)]
pub struct Takeover {
    pub standby: String,
    pub runs: usize,
    pub p50_ms: f64,
    pub max_ms: f64,
    pub samples_ms: Vec<f64>,
    /// The profile's worst-case failover: heartbeat timeout + passive lock
    /// interval + one ping (recovery comes on top).
    pub failover_bound_ms: f64,
}

/// WARN and ERROR lines of the servers' and gateways' logs, by shape.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogFindings {
    pub errors: usize,
    pub warnings: usize,
    /// `count × line (first in LOG)`, digits folded to `#`, most frequent
    /// first (errors before warnings), at most [`LOG_FINDINGS_MAX`].
    pub lines: Vec<String>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub body_bytes: usize,
    pub producers: usize,
    pub window: usize,
    pub floors: Floors,
    pub single_msgs_s: f64,
    /// The same load with 16 KiB bodies: the single server, then the pair
    /// as shipped, in MiB/s of bodies.
    pub single_16k_mib_s: f64,
    pub pair_16k_mib_s: f64,
    /// The single server's window-1 send-to-ack p50: what the pair's adds
    /// to (its floor is the flush p50 alone).
    pub single_window1_p50_us: f64,
    /// max(flush p50, loopback RTT p50 + flush p50).
    pub window1_floor_us: f64,
    /// Two loopback RTT p50s + the paired flush p50: a window-1
    /// replicated ack crosses two round trips (client to active, active to
    /// passive) and, with both servers on one disk, waits for the flush two
    /// writers get at once.
    pub window1_path_floor_us: f64,
    /// The pair with each `[net.ha]` variant; the first is the pair as
    /// shipped (`nodelay = true`, kernel buffers), the headline figures.
    pub link_variants: Vec<LinkVariant>,
    pub catchup: Catchup,
    pub takeover_hot: Takeover,
    pub takeover_warm: Takeover,
    pub server_logs: LogFindings,
}

/// Runs the whole suite.
pub fn run(config: &Config) -> Result<Report, BenchError> {
    let mut run_dir = RunDir::create(&config.dir)?;
    let result = measure(&run_dir.path, config);
    if result.is_err() {
        // A failed run keeps its directory: the servers' logs say why.
        run_dir.keep = true;
        tracing::warn!(dir = %run_dir.path.display(), "bench failed; its directory and logs are kept");
    }
    result
}

fn measure(dir: &Path, config: &Config) -> Result<Report, BenchError> {
    let budget = Duration::from_secs_f64(config.seconds);
    let floors = measure_floors(dir, config.passive_dir.as_deref(), budget)?;
    let window1_floor_us = floors
        .disk_flush_p50_us
        .max(floors.loopback_rtt_p50_us + floors.disk_flush_p50_us);
    let window1_path_floor_us = 2.0 * floors.loopback_rtt_p50_us + floors.disk_flush_paired_p50_us;
    let body = Bytes::from(vec![0x42u8; BODY_BYTES]);
    let load = |url: &str| Load {
        url: url.to_owned(),
        producers: PRODUCERS,
        window: WINDOW,
        body: body.clone(),
        until: Until::Elapsed(budget),
        queue: LOAD_QUEUE,
    };

    let shards = shipped_profiles()?[0].server.shards;
    let large = Bytes::from(vec![0x16u8; LARGE_BODY_BYTES]);
    let large_mib_s = |url: &str| -> Result<f64, BenchError> {
        let produced = produce(&Load {
            body: large.clone(),
            queue: LARGE_QUEUE,
            ..load(url)
        })?;
        Ok(produced.rate() * LARGE_BODY_BYTES as f64 / MIB)
    };
    let (single_msgs_s, single_window1, single_16k_mib_s) = {
        let single = dir.join("single");
        std::fs::create_dir_all(&single).map_err(io_error(&single))?;
        let server = start_server(&single, shards)?;
        let msgs_s = produce(&load(&server.url))?.rate();
        let window1 = window1(&server.url, WINDOW1_QUEUE, &body, budget)?;
        (msgs_s, window1, large_mib_s(&server.url)?)
    };
    let mut pair_16k_mib_s = 0.0;

    let mut link_variants = Vec::new();
    for (nodelay, buffer_bytes) in LINK_VARIANTS {
        let spec = PairSpec {
            standby: HaStandby::Hot,
            nodelay,
            buffer_bytes,
        };
        let pair = Pair::start(dir, "link", spec)?;
        pair.wait_in_sync()?;
        let msgs_s = produce(&load(&pair.url()))?.rate();
        let latency = window1(&pair.url(), WINDOW1_QUEUE, &body, budget)?;
        if link_variants.is_empty() {
            pair_16k_mib_s = large_mib_s(&pair.url())?;
        }
        link_variants.push(LinkVariant {
            nodelay,
            buffer_bytes,
            msgs_s,
            msgs_ratio: ratio(msgs_s, single_msgs_s),
            window1_p50_us: latency.quantile_us(0.5),
            window1_p99_us: latency.quantile_us(0.99),
            window1_ratio: ratio(latency.quantile_us(0.5), window1_floor_us),
        });
    }

    let catchup = catch_up(
        dir,
        config.passive_dir.as_deref(),
        config.catchup_mib,
        &floors,
    )?;

    let takeover_hot = takeovers(dir, HaStandby::Hot, config.runs_takeover, &body)?;
    let takeover_warm = takeovers(dir, HaStandby::Warm, config.runs_takeover, &body)?;
    Ok(Report {
        seconds: config.seconds,
        body_bytes: BODY_BYTES,
        producers: PRODUCERS,
        window: WINDOW,
        floors,
        single_msgs_s,
        single_16k_mib_s,
        pair_16k_mib_s,
        single_window1_p50_us: single_window1.quantile_us(0.5),
        window1_floor_us,
        window1_path_floor_us,
        link_variants,
        catchup,
        takeover_hot,
        takeover_warm,
        server_logs: log_findings(dir),
    })
}

/// The run's own directory under `--dir`, removed on drop unless `keep`.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    fn create(parent: &Path) -> Result<RunDir, BenchError> {
        let path = parent.join(format!("replicated-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(io_error(&path))?;
        // Absolute, because the profiles written into it are read by
        // processes that resolve relative paths themselves.
        let path = std::fs::canonicalize(&path).map_err(io_error(&path))?;
        Ok(RunDir { path, keep: false })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn measure_floors(
    dir: &Path,
    passive_dir: Option<&Path>,
    budget: Duration,
) -> Result<Floors, BenchError> {
    let flush = flush_floor(dir, budget)?;
    let paired_flush = paired_flush_floor(dir, budget)?;
    let write_floor = |dir: &Path| -> Result<(PathBuf, f64), BenchError> {
        let path = dir.join(format!("write-floor-{}", std::process::id()));
        make_zeroed(&path, FLOOR_FILE_BYTES)?;
        let (mib_s, _) = direct_dsync_floor(&path, DISK_WRITE_BYTES, budget)?;
        Ok((path, mib_s))
    };
    let (path, disk_write_mib_s) = write_floor(dir)?;
    let passive_disk_write_mib_s = match passive_dir {
        Some(dir) => {
            let (path, mib_s) = write_floor(dir)?;
            let _ = std::fs::remove_file(&path);
            Some(mib_s)
        }
        None => None,
    };
    let copy = dir.join("copy-floor");
    make_zeroed(&copy, FLOOR_FILE_BYTES)?;
    let disk_copy_mib_s = disk_copy_floor(&path, &copy, DISK_WRITE_BYTES, budget)?;
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&copy);
    let loopback = Path::new("loopback");
    Ok(Floors {
        disk_flush_p50_us: flush.quantile_us(0.5),
        disk_flush_paired_p50_us: paired_flush.quantile_us(0.5),
        disk_write_mib_s,
        disk_copy_mib_s,
        loopback_rtt_p50_us: loopback_round_trip(budget)
            .map_err(io_error(loopback))?
            .quantile_us(0.5),
        loopback_mib_s: loopback_stream(budget).map_err(io_error(loopback))?,
        passive_disk_write_mib_s,
    })
}

/// 64-byte ping-pong over one loopback connection with `TCP_NODELAY`.
fn loopback_round_trip(budget: Duration) -> std::io::Result<Latency> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut ping = [0u8; PING_BYTES];
        loop {
            match stream.read_exact(&mut ping) {
                Ok(()) => stream.write_all(&ping)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut ping = [0x50u8; PING_BYTES];
    let mut latency = Latency::default();
    let start = Instant::now();
    while start.elapsed() < budget {
        let sent = Instant::now();
        stream.write_all(&ping)?;
        stream.read_exact(&mut ping)?;
        latency.record(sent.elapsed());
    }
    drop(stream);
    echo.join().expect("echo thread")?;
    Ok(latency)
}

/// One loopback TCP stream written in large writes: MiB/s received.
fn loopback_stream(budget: Duration) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sink = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut stream, _) = listener.accept()?;
        let mut buf = vec![0u8; STREAM_WRITE_BYTES];
        let mut received = 0u64;
        loop {
            match stream.read(&mut buf)? {
                0 => return Ok(received),
                n => received += n as u64,
            }
        }
    });
    let mut stream = TcpStream::connect(addr)?;
    let chunk = vec![0x5Au8; STREAM_WRITE_BYTES];
    let start = Instant::now();
    while start.elapsed() < budget {
        stream.write_all(&chunk)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let received = sink.join().expect("sink thread")?;
    Ok(received as f64 / MIB / start.elapsed().as_secs_f64())
}

/// When a load stops.
#[derive(Debug, Clone, Copy)]
enum Until {
    /// Each producer sends for this long.
    Elapsed(Duration),
    /// Each producer sends this many messages.
    Messages(u64),
}

/// Producers on their own connections and queues (`{queue}-{index}`), each
/// keeping `window` persistent sends in flight.
struct Load {
    url: String,
    producers: usize,
    window: usize,
    body: Bytes,
    until: Until,
    queue: &'static str,
}

/// What a load got acknowledged, and in how long (its slowest producer's
/// time from connected to last acknowledgement).
struct Produced {
    messages: u64,
    elapsed: Duration,
}

impl Produced {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

fn produce(load: &Load) -> Result<Produced, BenchError> {
    let producers: Vec<JoinHandle<Result<Produced, BenchError>>> = (0..load.producers)
        .map(|i| {
            let (url, body, until) = (load.url.clone(), load.body.clone(), load.until);
            let queue = format!("{}-{i}", load.queue);
            let options = ProducerOptions {
                window: load.window,
                ..ProducerOptions::default()
            };
            std::thread::spawn(move || {
                let client =
                    Client::connect(&url, ClientOptions::default()).map_err(client_error)?;
                let mut producer = client.producer(options);
                let start = Instant::now();
                let mut messages = 0;
                loop {
                    let limit = match until {
                        Until::Elapsed(budget) if start.elapsed() < budget => u64::MAX,
                        Until::Messages(count) if messages < count => count - messages,
                        _ => break,
                    };
                    messages += refill(&mut producer, &queue, &body, limit)?.1.count() as u64;
                }
                // Every send is counted once acknowledged: flush fails otherwise.
                producer.flush().map_err(client_error)?;
                Ok(Produced {
                    messages,
                    elapsed: start.elapsed(),
                })
            })
        })
        .collect();
    let mut total = Produced {
        messages: 0,
        elapsed: Duration::ZERO,
    };
    for producer in producers {
        let done = producer.join().expect("producer thread")?;
        total.messages += done.messages;
        total.elapsed = total.elapsed.max(done.elapsed);
    }
    Ok(total)
}

/// The passive's durable offsets as the active knows them, all shards.
fn peer_durable(status: &Status) -> u64 {
    status.replication.iter().map(|r| r.peer_durable).sum()
}

/// On a fresh pair as shipped: kills the passive, sends `mib` MiB to the
/// active alone, restarts the passive and times it until every shard is in
/// sync on the active. Fresh, so the passive's own start (journal recovery)
/// costs little beside the catch-up. With `passive_dir`, the passive's data
/// directory moves there while it is down.
fn catch_up(
    dir: &Path,
    passive_dir: Option<&Path>,
    mib: u64,
    floors: &Floors,
) -> Result<Catchup, BenchError> {
    let mut pair = Pair::start(dir, "catchup", PairSpec::SHIPPED)?;
    let result = catch_up_on(&mut pair, passive_dir, mib, floors);
    // The servers go first, then the moved journal.
    drop(pair);
    result.map(|(catchup, moved)| {
        drop(moved);
        catchup
    })
}

fn catch_up_on(
    pair: &mut Pair,
    passive_dir: Option<&Path>,
    mib: u64,
    floors: &Floors,
) -> Result<(Catchup, Option<MovedDir>), BenchError> {
    let active = pair.wait_in_sync()?;
    let passive = 1 - active;
    let durable_before = peer_durable(&pair.status(active).ok_or_else(|| {
        failure(
            &pair.nodes[active].log,
            "the active stopped answering".into(),
        )
    })?);
    pair.kill(passive);
    let moved = match passive_dir {
        Some(to) => Some(MovedDir::new(&pair.nodes[passive].data_dir, to)?),
        None => None,
    };
    // Only once the active has seen every stream close is the passive sure
    // to miss everything sent next.
    wait_for(
        &pair.nodes[active].log,
        "the active to see the passive gone",
        START_TIMEOUT,
        || {
            pair.status(active)
                .is_some_and(|s| s.replication.iter().all(|r| !r.stream_up))
                .then_some(())
        },
    )?;
    let per_producer = (mib * MIB as u64 / LARGE_BODY_BYTES as u64).div_ceil(PRODUCERS as u64);
    let sent = produce(&Load {
        url: pair.url(),
        producers: PRODUCERS,
        window: WINDOW,
        body: Bytes::from(vec![0x16u8; LARGE_BODY_BYTES]),
        until: Until::Messages(per_producer),
        queue: CATCHUP_QUEUE,
    })?;

    let started = Instant::now();
    pair.spawn_node(passive)?;
    let status = wait_for(
        &pair.nodes[passive].log,
        "the passive to catch up",
        CATCHUP_TIMEOUT,
        || pair.status(active).filter(all_in_sync),
    )?;
    let total = started.elapsed();
    let bytes = peer_durable(&status).saturating_sub(durable_before);
    let caught_up: u64 = status
        .replication
        .iter()
        .map(|r| r.last_catchup_bytes)
        .sum();
    let slowest_us = status
        .replication
        .iter()
        .map(|r| r.last_catchup_us)
        .max()
        .unwrap_or(0);
    let streaming_s = slowest_us as f64 / 1e6;
    let streaming_mib_s = caught_up as f64 / MIB / streaming_s;
    let floor_mib_s = floors
        .passive_disk_write_mib_s
        .unwrap_or(floors.disk_write_mib_s)
        .min(floors.loopback_mib_s);
    let catchup = Catchup {
        bytes,
        sent_body_bytes: sent.messages * LARGE_BODY_BYTES as u64,
        total_s: total.as_secs_f64(),
        streaming_s,
        streaming_mib_s,
        passive_dir: moved.is_some(),
        floor_mib_s,
        ratio: ratio(streaming_mib_s, floor_mib_s),
        copy_ratio: moved.is_none().then(|| {
            ratio(
                streaming_mib_s,
                floors.disk_copy_mib_s.min(floors.loopback_mib_s),
            )
        }),
    };
    Ok((catchup, moved))
}

/// A stopped server's data directory copied to another device, with a
/// symbolic link to the copy in its place; the copy goes on drop.
struct MovedDir {
    copy: PathBuf,
}

impl MovedDir {
    fn new(data_dir: &Path, to: &Path) -> Result<MovedDir, BenchError> {
        let name = data_dir.file_name().unwrap_or_default().to_string_lossy();
        let copy = to.join(format!("bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&copy);
        copy_tree(data_dir, &copy)?;
        let moved = MovedDir { copy };
        std::fs::remove_dir_all(data_dir).map_err(io_error(data_dir))?;
        std::os::unix::fs::symlink(&moved.copy, data_dir).map_err(io_error(data_dir))?;
        Ok(moved)
    }
}

impl Drop for MovedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.copy);
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BenchError> {
    std::fs::create_dir_all(to).map_err(io_error(to))?;
    for entry in std::fs::read_dir(from).map_err(io_error(from))? {
        let entry = entry.map_err(io_error(from))?;
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().map_err(io_error(&source))?.is_dir() {
            copy_tree(&source, &target)?;
        } else {
            std::fs::copy(&source, &target).map_err(io_error(&source))?;
        }
    }
    Ok(())
}

/// `runs` takeovers of a fresh pair with `standby`, alternating which
/// server is killed.
fn takeovers(
    dir: &Path,
    standby: HaStandby,
    runs: usize,
    body: &Bytes,
) -> Result<Takeover, BenchError> {
    let mut pair = Pair::start(
        dir,
        "takeover",
        PairSpec {
            standby,
            ..PairSpec::SHIPPED
        },
    )?;
    let mut active = pair.wait_in_sync()?;
    produce(&Load {
        url: pair.url(),
        producers: 1,
        window: WINDOW,
        body: body.clone(),
        until: Until::Messages(TAKEOVER_BACKLOG),
        queue: BACKLOG_QUEUE,
    })?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let took = takeover(&mut pair, active, body)?;
        samples.push(took.as_secs_f64() * 1000.0);
        pair.start_node(active)?;
        active = pair.wait_in_sync()?;
    }
    samples.sort_by(f64::total_cmp);
    Ok(Takeover {
        standby: standby.to_string(),
        runs,
        p50_ms: samples[(samples.len() - 1) / 2],
        max_ms: samples[samples.len() - 1],
        samples_ms: samples,
        failover_bound_ms: pair.failover_bound.as_secs_f64() * 1000.0,
    })
}

/// A producer thread sending window-1 to whichever server of `url` takes
/// it, reconnecting after any error (the client itself does not fail over
/// yet); each acknowledgement is reported with the server that gave it.
/// Stopped and joined on drop.
struct SteadySender {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SteadySender {
    fn start(url: String, body: Bytes, acks: mpsc::Sender<(Instant, SocketAddr)>) -> SteadySender {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok(client) = Client::connect(&url, ClientOptions::default()) else {
                    std::thread::sleep(RECONNECT_PAUSE);
                    continue;
                };
                let mut producer = client.producer(ProducerOptions {
                    window: 1,
                    ..ProducerOptions::default()
                });
                while !stopped.load(Ordering::Relaxed)
                    && producer.send_and_wait(TAKEOVER_QUEUE, body.clone()).is_ok()
                {
                    if acks.send((Instant::now(), client.server_addr())).is_err() {
                        return;
                    }
                }
            }
        });
        SteadySender {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SteadySender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// SIGKILLs server `active` under a steady window-1 load; returns the time
/// to the first send the other server acknowledged.
fn takeover(pair: &mut Pair, active: usize, body: &Bytes) -> Result<Duration, BenchError> {
    let (acks, acked) = mpsc::channel();
    let _sender = SteadySender::start(pair.url(), body.clone(), acks);
    let log = pair.nodes[active].log.clone();
    let lost = |what: &str| failure(&log, format!("takeover: {what}"));
    for _ in 0..STEADY_ACKS {
        acked
            .recv_timeout(START_TIMEOUT)
            .map_err(|_| lost("no steady sends before the kill"))?;
    }
    let survivor = pair.nodes[1 - active].client;
    let killed_at = Instant::now();
    pair.kill(active);
    loop {
        let left = (killed_at + START_TIMEOUT).saturating_duration_since(Instant::now());
        match acked.recv_timeout(left) {
            Ok((at, server)) if server == survivor && at > killed_at => {
                return Ok(at - killed_at);
            }
            Ok(_) => {}
            Err(_) => return Err(lost("the other server acknowledged nothing")),
        }
    }
}

/// WARN and ERROR lines (and panics) of every `.log` under `dir`.
fn log_findings(dir: &Path) -> LogFindings {
    let mut findings = LogFindings::default();
    // (is an error, shape) → (count, the log it was first seen in)
    let mut shapes: BTreeMap<(bool, String), (usize, String)> = BTreeMap::new();
    let root = dir;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines().map(strip_ansi) {
                // `<timestamp> <LEVEL> <target>: <message>`; the shape
                // leaves the timestamp out.
                let level = line.split_whitespace().nth(1).unwrap_or("");
                let error = level == "ERROR" || line.contains("panicked at");
                if !(error || level == "WARN") {
                    continue;
                }
                let shape = line
                    .trim_start()
                    .split_once(char::is_whitespace)
                    .map_or("", |(_, after)| after)
                    .trim();
                let seen = shapes
                    .entry((error, fold_digits(shape)))
                    .or_insert_with(|| {
                        let log = path.strip_prefix(root).unwrap_or(&path);
                        (0, log.display().to_string())
                    });
                seen.0 += 1;
                if error {
                    findings.errors += 1;
                } else {
                    findings.warnings += 1;
                }
            }
        }
    }
    let mut ranked: Vec<_> = shapes.into_iter().collect();
    ranked.sort_by(|(a, (n, _)), (b, (m, _))| b.0.cmp(&a.0).then(m.cmp(n)));
    findings.lines = ranked
        .into_iter()
        .take(LOG_FINDINGS_MAX)
        .map(|((_, shape), (count, log))| format!("{count} × {shape} (first in {log})"))
        .collect();
    findings
}

/// `line` with every run of digits replaced by `#`.
fn fold_digits(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for c in line.chars() {
        if !c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('#') {
            out.push('#');
        }
    }
    out
}

/// The report as a Markdown table, with what to know beneath it.
pub fn render_table(r: &Report) -> String {
    use std::fmt::Write;
    let f = &r.floors;
    let us = |v: f64| format!("{v:.0} µs");
    let ms = |v: f64| format!("{v:.0} ms");
    let msgs = |v: f64| format!("{v:.0} msgs/s");
    let mib = |v: f64| format!("{v:.1} MiB/s");
    let met = |ok: bool, target: &str| format!("{target}: {}", if ok { "met" } else { "MISSED" });
    let load = format!("{}×{} × {} B", r.producers, r.window, r.body_bytes);
    let mut rows: Vec<[String; 5]> = [
        (
            "floor: disk 4 KiB write + fdatasync, p50",
            us(f.disk_flush_p50_us),
        ),
        (
            "floor: disk 4 KiB write + fdatasync, two writers at once, p50",
            us(f.disk_flush_paired_p50_us),
        ),
        (
            "floor: disk 1 MiB O_DIRECT + dsync writes",
            mib(f.disk_write_mib_s),
        ),
        (
            "floor: loopback 64 B round trip, p50",
            us(f.loopback_rtt_p50_us),
        ),
        (
            "floor: disk copy, 1 MiB O_DIRECT reads beside dsync writes",
            mib(f.disk_copy_mib_s),
        ),
        ("floor: loopback, one TCP stream", mib(f.loopback_mib_s)),
    ]
    .into_iter()
    .chain(f.passive_disk_write_mib_s.map(|v| {
        (
            "floor: --passive-dir's disk, 1 MiB O_DIRECT + dsync writes",
            mib(v),
        )
    }))
    .map(|(figure, value)| {
        [
            figure.into(),
            value,
            String::new(),
            String::new(),
            String::new(),
        ]
    })
    .collect();
    rows.push([
        format!("single server, ack local, {load}"),
        msgs(r.single_msgs_s),
        String::new(),
        String::new(),
        String::new(),
    ]);
    rows.push([
        "single server, window 1, send-to-ack p50".into(),
        us(r.single_window1_p50_us),
        format!("{} (flush)", us(f.disk_flush_p50_us)),
        format!("{:.2}", ratio(r.single_window1_p50_us, f.disk_flush_p50_us)),
        String::new(),
    ]);
    rows.push([
        format!(
            "single server, ack local, {}×{} × 16 KiB",
            r.producers, r.window
        ),
        mib(r.single_16k_mib_s),
        format!("{} (disk write)", mib(f.disk_write_mib_s)),
        format!("{:.2}", ratio(r.single_16k_mib_s, f.disk_write_mib_s)),
        String::new(),
    ]);
    rows.push([
        format!(
            "pair as shipped, ack replicated, {}×{} × 16 KiB",
            r.producers, r.window
        ),
        mib(r.pair_16k_mib_s),
        format!("{} (single)", mib(r.single_16k_mib_s)),
        format!("{:.2}", ratio(r.pair_16k_mib_s, r.single_16k_mib_s)),
        String::new(),
    ]);
    let window1_floor = format!("{} (RTT + flush)", us(r.window1_floor_us));
    for v in &r.link_variants {
        let link = format!(
            "nodelay {}, buffers {}",
            v.nodelay,
            match v.buffer_bytes {
                0 => "kernel".to_owned(),
                b => format!("{} KiB", b / 1024),
            }
        );
        rows.push([
            format!("pair, ack replicated, {load} ({link})"),
            msgs(v.msgs_s),
            format!("{} (single)", msgs(r.single_msgs_s)),
            format!("{:.2}", v.msgs_ratio),
            met(v.msgs_ratio >= 0.7, "≥ 0.7"),
        ]);
        rows.push([
            format!("pair, window 1, send-to-ack p50 ({link})"),
            us(v.window1_p50_us),
            window1_floor.clone(),
            format!("{:.2}", v.window1_ratio),
            met(v.window1_ratio <= 1.5, "≤ 1.5"),
        ]);
        rows.push([
            "the same, beside its whole path on one disk".into(),
            us(v.window1_p50_us),
            format!("{} (2 × RTT + paired flush)", us(r.window1_path_floor_us)),
            format!("{:.2}", ratio(v.window1_p50_us, r.window1_path_floor_us)),
            String::new(),
        ]);
        rows.push([
            format!("pair, window 1, send-to-ack p99 ({link})"),
            us(v.window1_p99_us),
            window1_floor.clone(),
            format!("{:.2}", ratio(v.window1_p99_us, r.window1_floor_us)),
            String::new(),
        ]);
    }
    let c = &r.catchup;
    let catchup = format!(
        "catch-up of {:.1} MiB, Sync to in sync (passive start to in sync: {:.2} s)",
        c.bytes as f64 / MIB,
        c.total_s
    );
    let catchup_rate = format!("{} ({:.2} s)", mib(c.streaming_mib_s), c.streaming_s);
    rows.push([
        catchup.clone(),
        catchup_rate.clone(),
        format!(
            "{} (min {}, loopback)",
            mib(c.floor_mib_s),
            if c.passive_dir {
                "passive's disk write"
            } else {
                "disk write"
            }
        ),
        format!("{:.2}", c.ratio),
        met(c.ratio >= 0.5, "≥ 0.5"),
    ]);
    if let Some(copy_ratio) = c.copy_ratio {
        rows.push([
            catchup,
            catchup_rate,
            format!(
                "{} (min disk copy, loopback)",
                mib(f.disk_copy_mib_s.min(f.loopback_mib_s))
            ),
            format!("{copy_ratio:.2}"),
            String::new(),
        ]);
    }
    for t in [&r.takeover_hot, &r.takeover_warm] {
        let bound = format!("{} (detection bound)", ms(t.failover_bound_ms));
        for (what, value) in [("p50", t.p50_ms), ("max", t.max_ms)] {
            rows.push([
                format!(
                    "takeover, {} standby, SIGKILL to first ack, {what} of {}",
                    t.standby, t.runs
                ),
                ms(value),
                bound.clone(),
                format!("{:.2}", ratio(value, t.failover_bound_ms)),
                met(value < 1000.0, "< 1 s"),
            ]);
        }
    }
    let mut out =
        String::from("| figure | value | floor | ratio | target |\n|---|---:|---:|---:|---|\n");
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    let _ = writeln!(
        out,
        "\nEach measurement ran {} s. The pair is the shipped profiles/replicated pair (2 shards, \
         hot standby, ack_mode replicated) on free ports; the single server has the same shards. \
         Catch-up is timed by the active's shards; {}",
        r.seconds,
        if r.catchup.passive_dir {
            "the catching-up passive's journal was on --passive-dir's device, the active's on \
             --dir's."
        } else {
            "both servers share one disk here, so the active reads back what the passive \
             writes on the same device (the disk-copy floor)."
        }
    );
    let logs = &r.server_logs;
    let _ = writeln!(
        out,
        "\nServer and gateway logs: {} ERROR, {} WARN line(s){}",
        logs.errors,
        logs.warnings,
        if logs.lines.is_empty() { "." } else { ":" }
    );
    for line in &logs.lines {
        let _ = writeln!(out, "- {line}");
    }
    out
}
