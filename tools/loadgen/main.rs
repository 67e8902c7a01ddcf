//! `twinmq-load`: producers and consumers against a running server or pair
//! (`--url`), or against a replicated pair it starts itself
//! (`--local-pair`), with latency histograms, a checker of what was
//! acknowledged against what was delivered, and scheduled failovers.
//!
//! ```text
//!   producers ─ durable connections ─▶ pair ─▶ consumers (durable subscriptions)
//!      │ every body: producer, sequence, intended send time      │
//!      └── acks: send-to-ack latency ──── checker ◀── deliveries: send-to-deliver
//! ```

mod load;
mod report;

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use twinmq::protocol::AckMode;

/// Load generator for twinmq: throughput, latency, and a loss/duplicate
/// checker, optionally across scheduled failovers.
#[derive(Debug, Parser)]
#[command(name = "twinmq-load", version)]
struct Args {
    /// Servers to load (`twinmq://host:port[,host:port]`).
    #[arg(long, conflicts_with = "local_pair")]
    url: Option<String>,
    /// Start a local replicated pair (shipped profiles, free ports, data in
    /// a temporary directory) and load it.
    #[arg(long)]
    local_pair: bool,
    /// Where `--local-pair` keeps its data and logs (removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 4)]
    producers: usize,
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Destinations the producers spread over (`/queue/load-N` or
    /// `/topic/load-N`).
    #[arg(long, default_value_t = 4)]
    destinations: usize,
    /// Topics instead of queues (every consumer of a topic gets everything).
    #[arg(long)]
    topic: bool,
    /// Message size in bytes: `1024`, or `uniform:MIN-MAX`.
    #[arg(long, default_value = "1024")]
    size: String,
    #[arg(long)]
    non_persistent: bool,
    #[arg(long, value_parser = ["default", "local", "replicated"], default_value = "default")]
    ack_mode: String,
    /// Sends in flight per producer.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Open loop at this many messages per second in all (latency measured
    /// from each send's intended time); closed loop (as fast as the window
    /// allows) without it.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of measured load (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many messages per producer instead of `--duration`.
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// With `--local-pair`: SIGKILL the active every this many seconds,
    /// restart it, and report each failover's unavailability.
    #[arg(long, requires = "local_pair")]
    failover_every: Option<f64>,
    /// Print the final report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Seed of the clients' reconnect jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!(
            "--{name} {value}: must be a number of seconds >= 0"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

fn config(args: Args) -> Result<load::Config, String> {
    if args.url.is_none() && !args.local_pair {
        return Err(
            "say which servers to load: --url twinmq://HOST:PORT[,…] or --local-pair".into(),
        );
    }
    for (name, value) in [
        ("producers", args.producers),
        ("destinations", args.destinations),
        ("window", args.window),
    ] {
        if value == 0 {
            return Err(format!("--{name} 0: must be at least 1"));
        }
    }
    if args.consumers > 0 && args.consumers < args.destinations {
        return Err(format!(
            "--consumers {} < --destinations {}: each destination needs a consumer (consumer N \
             takes destination N modulo the count), or the checker would count what nobody \
             reads as lost; use at least as many consumers, or --consumers 0 for a producer-only run",
            args.consumers, args.destinations
        ));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!(
            "--rate {rate}: must be a positive number of messages per second"
        ));
    }
    let failover_every = args
        .failover_every
        .map(|s| seconds("failover-every", s))
        .transpose()?;
    if failover_every.is_some_and(|every| every < Duration::from_millis(500)) {
        return Err("--failover-every: at least 0.5 s, so each failover can complete".into());
    }
    Ok(load::Config {
        url: args.url,
        local_pair: args.local_pair,
        dir: args.dir,
        producers: args.producers,
        consumers: args.consumers,
        destinations: args.destinations,
        topic: args.topic,
        size: args.size.parse()?,
        persistent: !args.non_persistent,
        ack_mode: match args.ack_mode.as_str() {
            "local" => AckMode::Local,
            "replicated" => AckMode::Replicated,
            _ => AckMode::Default,
        },
        window: args.window,
        rate: args.rate,
        until: match args.count {
            Some(0) => return Err("--count 0: must be at least 1".into()),
            Some(count) => load::Until::Count(count),
            None => load::Until::Duration(seconds("duration", args.duration)?),
        },
        warmup: seconds("warmup", args.warmup)?,
        failover_every,
        seed: args.seed,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let json = args.json;
    let config = match config(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("twinmq-load: {error}");
            return ExitCode::from(2);
        }
    };
    match load::run(&config) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&report).expect("the report serialises")
                );
            } else {
                print!("{}", report.render());
            }
            if report.checker.lost > 0 || report.checker.duplicated > 0 {
                eprintln!("twinmq-load: the checker found lost or duplicated messages");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("twinmq-load: {error}");
            ExitCode::FAILURE
        }
    }
}
