//! The `twinmq` command: parse arguments, start what they ask for.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use twinmq::bench;
use twinmq::journal::Durability;

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
}

#[derive(Subcommand)]
enum BenchCommand {
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
        Command::Bench {
            what:
                BenchCommand::Journal {
                    dir,
                    seconds,
                    durability,
                    json,
                },
        } => bench_journal(dir, seconds, &durability, json),
        Command::Journal {
            what: JournalCommand::Check { dir },
        } => journal_check(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("twinmq: {message}");
            ExitCode::FAILURE
        }
    }
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
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("--seconds: {seconds} is not a positive number"));
    }
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
