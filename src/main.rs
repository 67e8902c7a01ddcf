//! The `twinmq` command: parse arguments, start what they ask for.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use twinmq::bench;
use twinmq::client::ProducerOptions;
use twinmq::client::durable::{Counters, DurableConnection, DurableOptions};
use twinmq::journal::Durability;

/// The local pair's client ports, primary then secondary.
const URL_DEFAULT: &str = "twinmq://127.0.0.1:1856,127.0.0.1:1956";
/// The local pair's admin endpoints.
const ADMIN_DEFAULT: [&str; 2] = ["127.0.0.1:1858", "127.0.0.1:1958"];

#[derive(Parser)]
#[command(
    name = "twinmq",
    version,
    about = "High-availability persistent message broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server from a profile.
    Server {
        #[arg(long)]
        profile: PathBuf,
    },
    /// Run a local HA pair (gateway, primary, secondary) in the foreground.
    Up {
        /// `replicated` (each server its own data directory, the active
        /// streaming its journal to the passive) or `shared` (one data
        /// directory both servers reach).
        #[arg(long, default_value = twinmq::pair::MODE_DEFAULT,
              value_parser = ["replicated", "shared"])]
        mode: String,
        /// Where data, the lock file, profiles and logs go.
        #[arg(long, default_value = "data/pair")]
        dir: PathBuf,
    },
    /// Send messages to /queue/NAME or /topic/NAME.
    Send {
        destination: String,
        /// Message body; `{n}` is replaced by the message's number (from 1).
        body: Option<String>,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Generate bodies of this many bytes instead of BODY.
        #[arg(long)]
        size: Option<usize>,
        #[arg(long)]
        non_persistent: bool,
        /// Time to live in milliseconds (0 = forever).
        #[arg(long, default_value_t = 0)]
        ttl_ms: u64,
        /// Sends in flight before waiting for acknowledgements.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// When sends are acknowledged: `local` (the active's flush),
        /// `replicated` (the passive's flush too), or the server's default.
        #[arg(long, value_parser = ["default", "local", "replicated"], default_value = "default")]
        ack_mode: String,
        /// Keep unacknowledged sends in this file too: a run killed before
        /// its sends were acknowledged leaves them there, and the next run
        /// with the same file sends them first (same producer, same
        /// numbering: nothing lost, nothing enqueued twice).
        #[arg(long)]
        outbox: Option<PathBuf>,
    },
    /// Receive (and acknowledge) messages; prints one body per line.
    Receive {
        destination: String,
        #[arg(long, default_value = URL_DEFAULT)]
        url: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// A durable subscription name (topics).
        #[arg(long)]
        durable: Option<String>,
        /// Stop after this long without a message (0 = wait forever).
        #[arg(long, default_value_t = 0)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 0)]
        prefetch: u32,
    },
    /// Show each server's state, epoch, destinations and journal.
    Status {
        /// Admin endpoints to ask (default: the local pair's).
        #[arg(long)]
        admin: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop a server cleanly (flushes and closes its journal).
    Shutdown {
        #[arg(long, default_value = ADMIN_DEFAULT[0])]
        admin: String,
    },
    /// Make a server of an HA pair active even if it is a stale replica
    /// (its journal behind the lock file's epoch). Refused without --force.
    Promote {
        /// Accept that messages the other server acknowledged in epochs
        /// this server lacks may be lost; the answer says which epochs.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = ADMIN_DEFAULT[0])]
        admin: String,
    },
    /// Run a benchmark beside the physical floor it is held to.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Journal maintenance.
    Journal {
        #[command(subcommand)]
        what: JournalCommand,
    },
    /// Run the gateway responder on a third machine: the witness an HA pair
    /// pings to tell a dead peer from a cut network (echoes a probe byte).
    Gateway {
        /// Address to listen on, e.g. 0.0.0.0:2100.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// End to end through a server process: window-1 latency, throughput,
    /// backlog memory, each beside the disk's flush floor.
    Broker {
        #[arg(long, default_value = "data/bench-broker")]
        dir: PathBuf,
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 4)]
        producers: usize,
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Unconsumed messages to queue for the memory figure (0 = skip).
        #[arg(long, default_value_t = 0)]
        backlog: u64,
        /// Server shards (0 = one per CPU).
        #[arg(long, default_value_t = 0)]
        shards: u32,
        #[arg(long)]
        json: bool,
    },
    /// Every figure of the performance report in one go, several runs:
    /// `bench replicated` and `bench broker`'s backlog, as one Markdown
    /// table of medians, each beside its floor.
    Suite {
        #[arg(long, default_value = "data/bench-suite")]
        dir: PathBuf,
        /// Seconds per throughput, latency and floor measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Takeovers per standby mode and run.
        #[arg(long, default_value_t = 20)]
        takeovers: usize,
        /// Unconsumed 1 KiB messages queued for the memory figure.
        #[arg(long, default_value_t = 1_000_000)]
        backlog: u64,
        /// MiB sent to the active while the passive is down.
        #[arg(long, default_value_t = 200)]
        catchup_mib: u64,
        /// Put the catching-up passive's journal in this directory, on
        /// another device than --dir (see the README's "Catch-up on two
        /// disks"); its write floor is measured too.
        #[arg(long)]
        passive_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// A replicated pair beside a single server and the disk and loopback
    /// floors: throughput, window-1 latency, HA-link socket options,
    /// catch-up rate, takeover time (hot and warm standby).
    Replicated {
        #[arg(long, default_value = "data/bench-replicated")]
        dir: PathBuf,
        /// Seconds per throughput, latency and floor measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Takeovers measured per standby mode.
        #[arg(long, default_value_t = 20)]
        runs_takeover: usize,
        /// MiB sent to the active while the passive is down.
        #[arg(long, default_value_t = 200)]
        catchup_mib: u64,
        /// Put the catching-up passive's journal in this directory, on
        /// another device than --dir (see the README's "Catch-up on two
        /// disks"); its write floor is measured too.
        #[arg(long)]
        passive_dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Journal durable bandwidth and latency vs. the disk's flush floor.
    Journal {
        /// Directory to measure in (on the disk the journal will use).
        #[arg(long, default_value = "data/bench")]
        dir: PathBuf,
        /// Seconds per measured case.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// `direct-dsync`, `write-fdatasync` or `both`.
        #[arg(long, default_value = "both")]
        durability: String,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Scan a shard journal directory without changing it and report its
    /// range, epochs and any torn tail or corruption.
    Check { dir: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TWINMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server { profile } => server(&profile),
        Command::Send {
            destination,
            body,
            url,
            count,
            size,
            non_persistent,
            ttl_ms,
            window,
            ack_mode,
            outbox,
        } => {
            let options = ProducerOptions {
                window,
                persistent: !non_persistent,
                ttl_ms,
                producer_id: None,
                ack_mode: match ack_mode.as_str() {
                    "local" => twinmq::protocol::AckMode::Local,
                    "replicated" => twinmq::protocol::AckMode::Replicated,
                    _ => twinmq::protocol::AckMode::Default,
                },
            };
            send(
                &url,
                &destination,
                (body, size),
                count,
                options,
                outbox.as_deref(),
            )
        }
        Command::Receive {
            destination,
            url,
            count,
            durable,
            timeout_ms,
            prefetch,
        } => receive(
            &url,
            &destination,
            count,
            durable.as_deref(),
            timeout_ms,
            prefetch,
        ),
        Command::Up { mode, dir } => twinmq::pair::up(&mode, &dir),
        Command::Status { admin, json } => status(&admin, json),
        Command::Shutdown { admin } => shutdown(&admin),
        Command::Promote { force, admin } => promote(force, &admin),
        Command::Bench {
            what:
                BenchCommand::Journal {
                    dir,
                    seconds,
                    durability,
                    json,
                },
        } => bench_journal(dir, seconds, &durability, json),
        Command::Bench {
            what:
                BenchCommand::Broker {
                    dir,
                    seconds,
                    producers,
                    window,
                    size,
                    backlog,
                    shards,
                    json,
                },
        } => bench_broker(
            bench::broker::Config {
                dir,
                seconds,
                producers,
                window,
                body_bytes: size,
                backlog,
                shards,
            },
            json,
        ),
        Command::Bench {
            what:
                BenchCommand::Replicated {
                    dir,
                    seconds,
                    runs_takeover,
                    catchup_mib,
                    passive_dir,
                    json,
                },
        } => bench_replicated(
            bench::replicated::Config {
                dir,
                seconds,
                runs_takeover,
                catchup_mib,
                passive_dir,
            },
            json,
        ),
        Command::Bench {
            what:
                BenchCommand::Suite {
                    dir,
                    seconds,
                    runs,
                    takeovers,
                    backlog,
                    catchup_mib,
                    passive_dir,
                    json,
                },
        } => bench_suite(
            bench::suite::Config {
                dir,
                seconds,
                runs,
                takeovers,
                backlog,
                catchup_mib,
                passive_dir,
            },
            json,
        ),
        Command::Journal {
            what: JournalCommand::Check { dir },
        } => journal_check(&dir),
        Command::Gateway { listen } => gateway(listen),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("twinmq: {message}");
            ExitCode::FAILURE
        }
    }
}

fn server(profile: &std::path::Path) -> Result<(), String> {
    let profile = twinmq::config::Profile::load(profile).map_err(|e| e.to_string())?;
    twinmq::io::block_termination_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let server = twinmq::server::Server::start(&profile).map_err(|e| e.to_string())?;
    let stop = server.stopper();
    std::thread::Builder::new()
        .name("twinmq-signals".into())
        .spawn(move || {
            if let Ok(signal) = twinmq::io::wait_termination_signal() {
                tracing::info!(signal, "termination signal: stopping cleanly");
                stop();
            }
        })
        .map_err(|e| e.to_string())?;
    server.wait().map_err(|e| e.to_string())
}

fn gateway(listen: std::net::SocketAddr) -> Result<(), String> {
    // Block the signals before the responder's threads start, so they
    // inherit the mask and only wait_termination_signal takes them.
    twinmq::io::block_termination_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let listener = twinmq::net::listen(listen, &twinmq::net::SocketOptions::default(), false)
        .map_err(|e| e.to_string())?;
    let responder =
        twinmq::ha::gateway::GatewayResponder::start(listener).map_err(|e| e.to_string())?;
    tracing::info!("gateway listening on {}", responder.local_addr());
    let signal =
        twinmq::io::wait_termination_signal().map_err(|e| format!("waiting for signals: {e}"))?;
    tracing::info!(signal, "termination signal: stopping the gateway");
    responder.stop();
    Ok(())
}

/// Sends `count` messages (bodies: the text with `{n}` replaced by the
/// send's sequence number, or `size` bytes), after what `outbox` still holds.
fn send(
    url: &str,
    destination: &str,
    (body, size): (Option<String>, Option<usize>),
    count: u64,
    options: ProducerOptions,
    outbox: Option<&std::path::Path>,
) -> Result<(), String> {
    let connection =
        DurableConnection::connect(url, DurableOptions::default()).map_err(|e| e.to_string())?;
    let mut producer = match outbox {
        Some(path) => connection
            .producer_with_outbox(options, path)
            .map_err(|e| e.to_string())?,
        None => connection.producer(options),
    };
    let resumed = producer.outstanding();
    if resumed > 0 {
        eprintln!(
            "resuming {resumed} unacknowledged send(s) from the outbox (producer {:x}, up to \
             message {})",
            producer.id(),
            producer.next_sequence() - 1
        );
    }
    let started = Instant::now();
    for _ in 0..count {
        let n = producer.next_sequence();
        let payload = match (&body, size) {
            (_, Some(size)) => Bytes::from(vec![b'x'; size]),
            (Some(body), None) => Bytes::from(body.replace("{n}", &n.to_string())),
            (None, None) => Bytes::from(format!("message {n}")),
        };
        producer
            .send(destination, Vec::new(), payload)
            .map_err(|e| format!("send {n}: {e}"))?;
    }
    producer
        .flush(SEND_FLUSH_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let failed = producer.take_failed();
    if let Some((sequence, error)) = failed.first() {
        return Err(format!(
            "{} of {count} send(s) refused; the first, message {sequence}: {error}",
            failed.len()
        ));
    }
    eprintln!(
        "sent {count} message(s){} to {destination} on {} (all acknowledged) in {:.3} s{}",
        if resumed > 0 {
            format!(" and {resumed} resumed from the outbox")
        } else {
            String::new()
        },
        connection
            .server()
            .map_or_else(|| "?".to_owned(), |s| s.to_string()),
        started.elapsed().as_secs_f64(),
        failover_note(connection.counters())
    );
    Ok(())
}

/// How long `twinmq send` waits for its last acknowledgements (failovers
/// included) before it gives up.
const SEND_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the durable connection rode through, if anything.
fn failover_note(c: Counters) -> String {
    if c.reconnects == 0 {
        return String::new();
    }
    format!(
        "; {} reconnect(s), {} send(s) replayed ({} already stored), {} redelivery(ies) of \
         acknowledged messages dropped",
        c.reconnects, c.replayed, c.duplicates, c.acked_redeliveries
    )
}

fn receive(
    url: &str,
    destination: &str,
    count: Option<u64>,
    durable: Option<&str>,
    timeout_ms: u64,
    prefetch: u32,
) -> Result<(), String> {
    use std::io::Write;
    let connection =
        DurableConnection::connect(url, DurableOptions::default()).map_err(|e| e.to_string())?;
    let mut subscription = connection
        .subscribe(destination, durable, prefetch)
        .map_err(|e| e.to_string())?;
    let wait = if timeout_ms == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_millis(timeout_ms)
    };
    let mut received = 0;
    let stdout = std::io::stdout();
    while count.is_none_or(|count| received < count) {
        match subscription.receive(wait).map_err(|e| e.to_string())? {
            Some(delivery) => {
                let mut out = stdout.lock();
                let _ = out.write_all(&delivery.body);
                let _ = out.write_all(b"\n");
                subscription.ack(&delivery).map_err(|e| e.to_string())?;
                received += 1;
            }
            None if timeout_ms == 0 => continue,
            None => break,
        }
    }
    // Every acknowledgement confirmed committed: none can come back.
    subscription
        .settle(SEND_FLUSH_TIMEOUT)
        .map_err(|e| format!("confirming the acknowledgements: {e}"))?;
    eprintln!(
        "received {received} message(s) from {destination}{}",
        failover_note(connection.counters())
    );
    Ok(())
}

fn admin_addrs(admin: &[String]) -> Result<Vec<std::net::SocketAddr>, String> {
    let list: Vec<String> = if admin.is_empty() {
        ADMIN_DEFAULT.iter().map(|s| s.to_string()).collect()
    } else {
        admin.to_vec()
    };
    list.iter()
        .map(|a| a.parse().map_err(|e| format!("--admin {a}: {e}")))
        .collect()
}

fn status(admin: &[String], json: bool) -> Result<(), String> {
    let mut reached = 0;
    for addr in admin_addrs(admin)? {
        match twinmq::admin::request(addr, "status") {
            Ok(line) if json => {
                reached += 1;
                print!("{line}");
            }
            Ok(line) => {
                reached += 1;
                let status: twinmq::admin::Status = serde_json::from_str(&line)
                    .map_err(|e| format!("{addr}: bad status answer: {e}"))?;
                print_status(addr, &status);
            }
            Err(error) if json => println!(
                "{}",
                serde_json::json!({ "admin": addr.to_string(), "error": error.to_string() })
            ),
            Err(error) => println!("{addr}: unreachable ({error})"),
        }
    }
    if reached == 0 {
        return Err("no server answered".into());
    }
    Ok(())
}

fn print_status(addr: std::net::SocketAddr, s: &twinmq::admin::Status) {
    println!(
        "{} (admin {addr}, clients {}): {} {}, epoch {}, pid {}, up {:.1} s",
        s.server,
        s.client_listen,
        s.role,
        s.state,
        s.epoch,
        s.pid,
        s.uptime_ms as f64 / 1000.0
    );
    println!(
        "  shards {}, connections {} ({} by shard), messages {}, journal {} segment(s) holding {} bytes, rss {:.1} MiB",
        s.shards,
        s.connections,
        s.shard_connections
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" + "),
        s.messages,
        s.journal_segments,
        s.journal_bytes,
        s.rss_bytes as f64 / 1048576.0
    );
    if let Some(peer) = &s.peer_state {
        println!(
            "  HA {}: peer {}, lock holder {}, gateway {}",
            s.mode,
            peer,
            s.lock_holder.as_deref().unwrap_or("none"),
            match s.gateway_reachable {
                Some(true) => "reachable",
                Some(false) => "UNREACHABLE",
                None => "unknown",
            }
        );
        if let (Some(confirmed), Some(lock)) = (s.confirmed_epoch, s.lock_epoch) {
            println!(
                "  history complete to epoch {confirmed}, lock file epoch {lock}{}",
                // Shared mode has one journal: nobody is ever behind it.
                if s.mode == "replicated" && confirmed < lock {
                    " (stale replica)"
                } else {
                    ""
                }
            );
        }
        if let Some(last) = &s.last_transition {
            println!("  last transition: {last}");
        }
        if let Some(degraded) = &s.degraded {
            println!("  DEGRADED: {degraded}");
        }
    }
    for (shard, r) in s.replication.iter().enumerate() {
        let sync = if r.in_sync {
            "in sync".to_owned()
        } else if r.catchup_remaining_bytes > 0 {
            format!("catching up, {} bytes to go", r.catchup_remaining_bytes)
        } else {
            "not in sync".to_owned()
        };
        let last_catchup = if r.last_catchup_us > 0 {
            format!(
                ", last catch-up {:.1} MiB in {:.0} ms",
                r.last_catchup_bytes as f64 / (1024.0 * 1024.0),
                r.last_catchup_us as f64 / 1000.0
            )
        } else {
            String::new()
        };
        println!(
            "  shard {shard} replication: {}, journal {}..{}, stream {}, {sync}, peer durable at {}, lag {} bytes / {} records{last_catchup}{}",
            r.role,
            r.journal_start,
            r.journal_end,
            if r.stream_up { "up" } else { "down" },
            r.peer_durable,
            r.lag_bytes,
            r.lag_records,
            r.last_error
                .as_deref()
                .map(|e| format!(", last stream error: {e}"))
                .unwrap_or_default()
        );
    }
    for poisoned in &s.poisoned {
        println!("  JOURNAL FAILED: {poisoned}");
    }
    for d in &s.destinations {
        println!(
            "  {:<40} depth {:>8}  consumers {:>4}  durable subscriptions {}",
            d.destination, d.depth, d.consumers, d.durable_subscriptions
        );
    }
}

fn shutdown(admin: &str) -> Result<(), String> {
    let addr = admin.parse().map_err(|e| format!("--admin {admin}: {e}"))?;
    twinmq::admin::request(addr, "shutdown").map_err(|e| e.to_string())?;
    eprintln!("shutdown requested on {addr}");
    Ok(())
}

fn promote(force: bool, admin: &str) -> Result<(), String> {
    // Refused here, before the server is asked: the flag is the operator's
    // acknowledgement of the risk, so without it nothing is sent.
    if !force {
        return Err(twinmq::admin::PROMOTE_NEEDS_FORCE.to_owned());
    }
    let addr: std::net::SocketAddr = admin.parse().map_err(|e| format!("--admin {admin}: {e}"))?;
    let line = twinmq::admin::request(addr, "promote --force").map_err(|e| e.to_string())?;
    let answer: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| format!("{addr}: bad promote answer: {e}"))?;
    if let Some(error) = answer["error"].as_str() {
        return Err(format!("{addr}: {error}"));
    }
    println!(
        "{addr}: {}",
        answer["message"].as_str().unwrap_or("promotion requested")
    );
    Ok(())
}

/// `--seconds` of every bench: a positive, finite number.
fn check_seconds(seconds: f64) -> Result<(), String> {
    if seconds > 0.0 && seconds.is_finite() {
        Ok(())
    } else {
        Err(format!("--seconds: {seconds} is not a positive number"))
    }
}

fn bench_broker(config: bench::broker::Config, json: bool) -> Result<(), String> {
    check_seconds(config.seconds)?;
    if config.producers == 0 || config.window == 0 {
        return Err("--producers and --window must be at least 1".into());
    }
    let report = bench::broker::run(&config).map_err(|e| e.to_string())?;
    print_report(&report, json, bench::broker::render_table);
    Ok(())
}

/// Prints a bench's report: one JSON object, or its table.
fn print_report<R: serde::Serialize>(report: &R, json: bool, table: fn(&R) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).expect("serialize report")
        );
    } else {
        print!("{}", table(report));
    }
}

fn bench_replicated(config: bench::replicated::Config, json: bool) -> Result<(), String> {
    twinmq::io::probe().map_err(|e| e.to_string())?;
    check_seconds(config.seconds)?;
    if config.runs_takeover == 0 || config.catchup_mib == 0 {
        return Err("--runs-takeover and --catchup-mib must be at least 1".into());
    }
    let report = bench::replicated::run(&config).map_err(|e| e.to_string())?;
    print_report(&report, json, bench::replicated::render_table);
    Ok(())
}

fn bench_suite(config: bench::suite::Config, json: bool) -> Result<(), String> {
    twinmq::io::probe().map_err(|e| e.to_string())?;
    check_seconds(config.seconds)?;
    if [
        config.runs as u64,
        config.takeovers as u64,
        config.backlog,
        config.catchup_mib,
    ]
    .contains(&0)
    {
        return Err("--runs, --takeovers, --backlog and --catchup-mib must be at least 1".into());
    }
    let report = bench::suite::run(&config).map_err(|e| e.to_string())?;
    print_report(&report, json, bench::suite::render_table);
    Ok(())
}

fn bench_journal(dir: PathBuf, seconds: f64, durability: &str, json: bool) -> Result<(), String> {
    twinmq::io::probe().map_err(|e| e.to_string())?;
    let modes = match durability {
        "both" => vec![Durability::DirectDsync, Durability::WriteFdatasync],
        one => vec![
            one.parse::<Durability>()
                .map_err(|e| format!("--durability: {e}"))?,
        ],
    };
    check_seconds(seconds)?;
    let config = bench::journal::Config {
        dir,
        seconds,
        modes,
    };
    let report = bench::journal::run(&config).map_err(|e| e.to_string())?;
    if json {
        print!("{}", bench::journal::render_json(&report));
    } else {
        print!("{}", bench::journal::render_table(&report));
    }
    Ok(())
}

fn journal_check(dir: &std::path::Path) -> Result<(), String> {
    match twinmq::journal::inspect(dir).map_err(|e| e.to_string())? {
        None => println!("{}: empty journal (no segments)", dir.display()),
        Some(scan) => {
            println!(
                "{}: records {} in offsets {}..{}, epoch {}",
                dir.display(),
                scan.records,
                scan.start,
                scan.end,
                scan.epochs.current()
            );
            for (epoch, start) in scan.epochs.starts() {
                println!("  epoch {epoch} starts at offset {start}");
            }
            if let Some(torn) = scan.torn {
                println!(
                    "  torn tail at offset {} ({}): an unacknowledged batch that the next open cuts",
                    torn.at, torn.reason
                );
            }
        }
    }
    Ok(())
}
