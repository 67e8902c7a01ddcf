//! `twinmq bench broker`: end-to-end figures of a real server process,
//! beside the disk's flush floor measured in the same run on the same
//! directory.
//!
//! - window-1 latency: one producer, one persistent 1 KiB send at a time,
//!   send-to-acknowledgement p50/p99 (the floor: one 4 KiB flush);
//! - throughput: N producers (own connections, own queues) × window W of
//!   persistent sends, acknowledged messages per second;
//! - backlog (optional): fill to B unconsumed messages, report the server's
//!   resident memory, then drain them with one consumer.

use super::journal::{BenchError, flush_floor};
use super::{Latency, ratio};
use crate::client::{Client, ClientOptions, Producer, ProducerOptions, SendAck};
use bytes::Bytes;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the bench waits for its server to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    pub seconds: f64,
    pub producers: usize,
    pub window: usize,
    pub body_bytes: usize,
    /// Unconsumed messages to queue for the memory figure; 0 skips it.
    pub backlog: u64,
    pub shards: u32,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub body_bytes: usize,
    pub floor_flush_p50_us: f64,
    pub floor_flush_p99_us: f64,
    pub window1_p50_us: f64,
    pub window1_p99_us: f64,
    /// window-1 p50 against the target (1.5 × floor p50 + 50 µs).
    pub window1_target_us: f64,
    pub window1_ratio: f64,
    pub producers: usize,
    pub window: usize,
    pub throughput_msgs_s: f64,
    pub throughput_mib_s: f64,
    pub throughput_p50_us: f64,
    pub throughput_p99_us: f64,
    /// Messages the server held when its memory was measured.
    pub backlog_messages: u64,
    pub backlog_rss_mib: f64,
    pub drain_msgs_s: f64,
    pub drain_rss_mib: f64,
}

/// A server process run for the bench, stopped on drop.
pub(crate) struct BenchServer {
    child: Child,
    pub(crate) url: String,
    admin: SocketAddr,
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        let _ = crate::admin::request(self.admin, "shutdown");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BenchError + '_ {
    move |source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn start_server(dir: &Path, shards: u32) -> Result<BenchServer, BenchError> {
    let client = free_addr().map_err(io_error(dir))?;
    let admin = free_addr().map_err(io_error(dir))?;
    let data = dir.join("data");
    let _ = std::fs::remove_dir_all(&data);
    let profile = dir.join("bench-server.toml");
    let text = format!(
        "[server]\nname = \"bench\"\ndata_dir = \"{}\"\nshards = {shards}\nclient_listen = \"{client}\"\nadmin_listen = \"{admin}\"\n",
        data.display()
    );
    std::fs::write(&profile, text).map_err(io_error(&profile))?;
    let exe = std::env::current_exe().map_err(io_error(dir))?;
    let log = std::fs::File::create(dir.join("bench-server.log")).map_err(io_error(dir))?;
    let child = Command::new(exe)
        .args(["server", "--profile"])
        .arg(&profile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(io_error(dir))?;
    let server = BenchServer {
        child,
        url: format!("twinmq://{client}"),
        admin,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while crate::admin::request(admin, "status").is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Io {
                path: dir.join("bench-server.log"),
                source: std::io::Error::other("bench server did not start; see its log"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

pub(crate) fn client_error(error: crate::client::ClientError) -> BenchError {
    BenchError::Io {
        path: PathBuf::from("client"),
        source: std::io::Error::other(error.to_string()),
    }
}

fn status(server: &BenchServer) -> Result<crate::admin::Status, BenchError> {
    let line =
        crate::admin::request(server.admin, "status").map_err(io_error(Path::new("admin")))?;
    serde_json::from_str(&line)
        .map_err(|e| client_error(crate::client::ClientError::Closed(e.to_string())))
}

/// Runs the whole suite.
pub fn run(config: &Config) -> Result<Report, BenchError> {
    std::fs::create_dir_all(&config.dir).map_err(io_error(&config.dir))?;
    let budget = Duration::from_secs_f64(config.seconds);
    let floor = flush_floor(&config.dir, budget)?;
    let server = start_server(&config.dir, config.shards)?;
    let body = Bytes::from(vec![0x42u8; config.body_bytes]);

    let window1 = window1(&server.url, "/queue/bench-latency", &body, budget)?;

    // Throughput: producers on their own connections and queues.
    let threads: Vec<_> = (0..config.producers)
        .map(|i| {
            let url = server.url.clone();
            let body = body.clone();
            let window = config.window;
            std::thread::spawn(move || -> Result<(u64, Latency), BenchError> {
                let client =
                    Client::connect(&url, ClientOptions::default()).map_err(client_error)?;
                let mut producer = client.producer(ProducerOptions {
                    window,
                    ..ProducerOptions::default()
                });
                let queue = format!("/queue/bench-{i}");
                let mut sent_at: HashMap<u64, Instant> = HashMap::new();
                let mut latency = Latency::default();
                let mut acked = 0;
                let mut record = |acks: Vec<SendAck>, sent_at: &mut HashMap<u64, Instant>| {
                    for ack in acks {
                        if let Some(at) = sent_at.remove(&ack.sequence) {
                            latency.record(ack.received_at.saturating_duration_since(at));
                        }
                        acked += 1;
                    }
                };
                let start = Instant::now();
                while start.elapsed() < budget {
                    let (acks, sent) = refill(&mut producer, &queue, &body, u64::MAX)?;
                    // Written at the end of refill, after any wait for room.
                    let at = Instant::now();
                    sent_at.extend(sent.map(|sequence| (sequence, at)));
                    record(acks, &mut sent_at);
                }
                record(producer.flush().map_err(client_error)?, &mut sent_at);
                Ok((acked, latency))
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    let mut latency = Latency::default();
    for thread in threads {
        let (acked, l) = thread.join().expect("producer thread")?;
        total += acked;
        latency.merge(&l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let msgs_s = total as f64 / elapsed;

    let (mut held, mut backlog_rss, mut drain_rate, mut drain_rss) = (0, 0.0, 0.0, 0.0);
    if config.backlog > 0 {
        (held, backlog_rss, drain_rate, drain_rss) = backlog(&server, config, &body)?;
    }
    let floor_p50 = floor.quantile_us(0.5);
    let target = 1.5 * floor_p50 + 50.0;
    Ok(Report {
        body_bytes: config.body_bytes,
        floor_flush_p50_us: floor_p50,
        floor_flush_p99_us: floor.quantile_us(0.99),
        window1_p50_us: window1.quantile_us(0.5),
        window1_p99_us: window1.quantile_us(0.99),
        window1_target_us: target,
        window1_ratio: ratio(window1.quantile_us(0.5), target),
        producers: config.producers,
        window: config.window,
        throughput_msgs_s: msgs_s,
        throughput_mib_s: msgs_s * config.body_bytes as f64 / (1024.0 * 1024.0),
        throughput_p50_us: latency.quantile_us(0.5),
        throughput_p99_us: latency.quantile_us(0.99),
        backlog_messages: held,
        backlog_rss_mib: backlog_rss,
        drain_msgs_s: drain_rate,
        drain_rss_mib: drain_rss,
    })
}

/// Window 1: one producer, one persistent send at a time to `queue`, for
/// `budget`; send-to-acknowledgement latency.
pub(crate) fn window1(
    url: &str,
    queue: &str,
    body: &Bytes,
    budget: Duration,
) -> Result<Latency, BenchError> {
    let client = Client::connect(url, ClientOptions::default()).map_err(client_error)?;
    let mut producer = client.producer(ProducerOptions {
        window: 1,
        ..ProducerOptions::default()
    });
    let mut window1 = Latency::default();
    let start = Instant::now();
    while start.elapsed() < budget {
        let t = Instant::now();
        producer
            .send_and_wait(queue, body.clone())
            .map_err(client_error)?;
        window1.record(t.elapsed());
    }
    Ok(window1)
}

/// One turn of a pipelining producer: takes the answers that came back,
/// then refills the window with copies of `body` in one write (a single
/// send, after waiting for the oldest answer, when the window is full), at
/// most `limit` of them. Returns the acknowledgements taken and the
/// sequences sent.
pub(crate) fn refill(
    producer: &mut Producer,
    queue: &str,
    body: &Bytes,
    limit: u64,
) -> Result<(Vec<SendAck>, Range<u64>), BenchError> {
    let mut acks = Vec::new();
    for (_, answer) in producer.take_completed() {
        acks.push(answer.map_err(client_error)?);
    }
    let room = producer
        .window()
        .saturating_sub(producer.outstanding())
        .max(1);
    let count = (room as u64).min(limit);
    let sent = producer
        .send_batch(std::iter::repeat_n(
            (queue, Vec::new(), body.clone()),
            count as usize,
        ))
        .map_err(client_error)?;
    acks.extend(sent.completed);
    Ok((acks, sent.first..sent.first + count))
}

/// Queues `config.backlog` messages on one queue, measures the server's
/// resident memory, then drains them (RSS sampled half way).
fn backlog(
    server: &BenchServer,
    config: &Config,
    body: &Bytes,
) -> Result<(u64, f64, f64, f64), BenchError> {
    const QUEUE: &str = "/queue/bench-backlog";
    let per_producer = config.backlog.div_ceil(config.producers as u64);
    let threads: Vec<_> = (0..config.producers)
        .map(|_| {
            let url = server.url.clone();
            let body = body.clone();
            let window = config.window;
            std::thread::spawn(move || -> Result<(), BenchError> {
                let client =
                    Client::connect(&url, ClientOptions::default()).map_err(client_error)?;
                let mut producer = client.producer(ProducerOptions {
                    window,
                    ..ProducerOptions::default()
                });
                let mut sent = 0;
                while sent < per_producer {
                    sent += refill(&mut producer, QUEUE, &body, per_producer - sent)?
                        .1
                        .count() as u64;
                }
                producer.flush().map_err(client_error)?;
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("producer thread")?;
    }
    let queued = per_producer * config.producers as u64;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    // Statistics are published every 200 ms: wait until they show the fill.
    let mut held = status(server)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while (held.messages as u64) < queued && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        held = status(server)?;
    }
    let backlog_rss = mib(held.rss_bytes);
    let client = Client::connect(&server.url, ClientOptions::default()).map_err(client_error)?;
    let subscription = client.subscribe(QUEUE, None, 1000).map_err(client_error)?;
    let start = Instant::now();
    let mut drained = 0;
    let mut drain_rss = 0.0;
    while drained < queued {
        let Some(delivery) = subscription
            .receive(Duration::from_secs(10))
            .map_err(client_error)?
        else {
            break;
        };
        subscription.ack(&delivery).map_err(client_error)?;
        drained += 1;
        if drained == queued / 2 {
            drain_rss = mib(status(server)?.rss_bytes);
        }
    }
    let rate = drained as f64 / start.elapsed().as_secs_f64();
    Ok((held.messages as u64, backlog_rss, rate, drain_rss))
}

/// The report as a human table.
pub fn render_table(r: &Report) -> String {
    let mut out = format!(
        "floor: 4 KiB overwrite + fdatasync p50 {:.0} us, p99 {:.0} us\n\n",
        r.floor_flush_p50_us, r.floor_flush_p99_us
    );
    out += &format!(
        "window 1, {} B persistent: send-to-ack p50 {:.0} us, p99 {:.0} us; target 1.5 x floor + 50 = {:.0} us; ratio {:.2}\n",
        r.body_bytes, r.window1_p50_us, r.window1_p99_us, r.window1_target_us, r.window1_ratio
    );
    out += &format!(
        "{} producers x window {}: {:.0} msgs/s ({:.1} MiB/s), send-to-ack p50 {:.0} us, p99 {:.0} us\n",
        r.producers,
        r.window,
        r.throughput_msgs_s,
        r.throughput_mib_s,
        r.throughput_p50_us,
        r.throughput_p99_us
    );
    if r.backlog_messages > 0 {
        out += &format!(
            "backlog of {} x {} B: server RSS {:.1} MiB; drained at {:.0} msgs/s (RSS {:.1} MiB half way)\n",
            r.backlog_messages, r.body_bytes, r.backlog_rss_mib, r.drain_msgs_s, r.drain_rss_mib
        );
    }
    out
}
