//! `twinmq bench suite`: every figure of the README's performance report,
//! in one go, `runs` times, as one Markdown table of medians with each
//! run's value, each figure beside the floor measured in the same run.
//!
//! ```text
//!   per run   bench replicated   floors (disk flush alone and paired, disk
//!                                write, disk copy, loopback RTT and stream);
//!                                single server and pair: 4×64 × 1 KiB,
//!                                window 1, 4×64 × 16 KiB;
//!                                catch-up; takeovers (hot, warm)
//!             bench broker       N × 1 KiB queued: server RSS; drain rate
//! ```
//!
//! A ratio is taken in each run (figure ÷ that run's floor) and the median
//! of those is shown: the machines these run on are shared, and a floor
//! measured minutes apart says little about a figure.

use super::journal::BenchError;
use super::{broker, ratio, replicated};
use serde::Serialize;
use std::fmt::Write;
use std::path::PathBuf;

/// The server RSS target with the backlog queued.
const RSS_TARGET_MIB: f64 = 256.0;
const MIB: f64 = 1024.0 * 1024.0;

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub dir: PathBuf,
    /// Length of each throughput, latency and floor measurement.
    pub seconds: f64,
    pub runs: usize,
    /// Takeovers per standby mode and run.
    pub takeovers: usize,
    /// Unconsumed 1 KiB messages queued for the memory figure.
    pub backlog: u64,
    /// MiB sent while the passive is down, for the catch-up figure.
    pub catchup_mib: u64,
    /// `bench replicated --passive-dir`.
    pub passive_dir: Option<PathBuf>,
}

/// One run of both benches.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub replicated: replicated::Report,
    pub broker: broker::Report,
}

/// Every run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub runs: Vec<Run>,
}

/// Runs the suite `config.runs` times.
pub fn run(config: &Config) -> Result<Report, BenchError> {
    let mut runs = Vec::with_capacity(config.runs);
    for n in 1..=config.runs {
        tracing::info!(run = n, of = config.runs, "bench suite: replicated");
        let replicated = replicated::run(&replicated::Config {
            dir: config.dir.clone(),
            seconds: config.seconds,
            runs_takeover: config.takeovers,
            catchup_mib: config.catchup_mib,
            passive_dir: config.passive_dir.clone(),
        })?;
        tracing::info!(run = n, of = config.runs, "bench suite: broker backlog");
        let broker = broker::run(&broker::Config {
            dir: config.dir.clone(),
            seconds: config.seconds,
            producers: replicated.producers,
            window: replicated.window,
            body_bytes: replicated.body_bytes,
            backlog: config.backlog,
            shards: 2,
        })?;
        runs.push(Run { replicated, broker });
    }
    Ok(Report { runs })
}

/// How a figure is shown.
#[derive(Clone, Copy)]
enum Unit {
    Us,
    Ms,
    MsgsS,
    MibS,
    Mib,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Us => format!("{v:.0} µs"),
            Unit::Ms => format!("{v:.0} ms"),
            Unit::MsgsS => format!("{v:.0} msgs/s"),
            Unit::MibS => format!("{v:.0} MiB/s"),
            Unit::Mib => format!("{v:.0} MiB"),
        }
    }
}

/// What a target is held against.
#[derive(Clone, Copy)]
enum Held {
    /// The median of the per-run ratios to the floor.
    Ratio(fn(f64) -> bool),
    /// The median value itself.
    Value(fn(f64) -> bool),
}

/// What a figure is held to: named, shown in a unit, taken from each run.
type Floor = (&'static str, Unit, fn(&Run) -> f64);

/// One row: the figure, and optionally the floor it is held to (a ratio
/// per run) and a target.
struct Row {
    figure: String,
    unit: Unit,
    value: fn(&Run) -> f64,
    floor: Option<Floor>,
    target: Option<(&'static str, Held)>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn listed(values: &[f64], show: impl Fn(f64) -> String) -> String {
    values
        .iter()
        .map(|&v| show(v))
        .collect::<Vec<_>>()
        .join(", ")
}

fn kib_mib(msgs_s: f64, body_bytes: usize) -> f64 {
    msgs_s * body_bytes as f64 / MIB
}

fn rows(first: &Run) -> Vec<Row> {
    let load = format!("{}×{}", first.replicated.producers, first.replicated.window);
    let backlog = first.broker.backlog_messages;
    vec![
        Row {
            figure: "floor: disk 4 KiB write + fdatasync, p50".into(),
            unit: Unit::Us,
            value: |r| r.replicated.floors.disk_flush_p50_us,
            floor: None,
            target: None,
        },
        Row {
            figure: "floor: disk 4 KiB write + fdatasync, two writers at once, p50".into(),
            unit: Unit::Us,
            value: |r| r.replicated.floors.disk_flush_paired_p50_us,
            floor: None,
            target: None,
        },
        Row {
            figure: "floor: disk 1 MiB O_DIRECT + dsync writes".into(),
            unit: Unit::MibS,
            value: |r| r.replicated.floors.disk_write_mib_s,
            floor: None,
            target: None,
        },
        Row {
            figure: "floor: disk copy, 1 MiB O_DIRECT reads beside dsync writes".into(),
            unit: Unit::MibS,
            value: |r| r.replicated.floors.disk_copy_mib_s,
            floor: None,
            target: None,
        },
        Row {
            figure: "floor: loopback 64 B round trip, p50".into(),
            unit: Unit::Us,
            value: |r| r.replicated.floors.loopback_rtt_p50_us,
            floor: None,
            target: None,
        },
        Row {
            figure: "floor: loopback, one TCP stream".into(),
            unit: Unit::MibS,
            value: |r| r.replicated.floors.loopback_mib_s,
            floor: None,
            target: None,
        },
        Row {
            figure: format!("single server, ack local, {load} × 1 KiB"),
            unit: Unit::MibS,
            value: |r| kib_mib(r.replicated.single_msgs_s, r.replicated.body_bytes),
            floor: Some(("disk write", Unit::MibS, |r| {
                r.replicated.floors.disk_write_mib_s
            })),
            target: None,
        },
        Row {
            figure: "single server, window 1, send-to-ack p50".into(),
            unit: Unit::Us,
            value: |r| r.replicated.single_window1_p50_us,
            floor: Some(("flush p50", Unit::Us, |r| {
                r.replicated.floors.disk_flush_p50_us
            })),
            target: None,
        },
        Row {
            figure: format!("pair as shipped, ack replicated, {load} × 1 KiB"),
            unit: Unit::MsgsS,
            value: |r| r.replicated.link_variants[0].msgs_s,
            floor: Some(("single server", Unit::MsgsS, |r| r.replicated.single_msgs_s)),
            target: Some(("≥ 0.7", Held::Ratio(|ratio| ratio >= 0.7))),
        },
        Row {
            figure: "pair, window 1, send-to-ack p50".into(),
            unit: Unit::Us,
            value: |r| r.replicated.link_variants[0].window1_p50_us,
            floor: Some(("RTT + flush", Unit::Us, |r| r.replicated.window1_floor_us)),
            target: Some(("≤ 1.5", Held::Ratio(|ratio| ratio <= 1.5))),
        },
        Row {
            figure: "the same, beside its whole path on one disk".into(),
            unit: Unit::Us,
            value: |r| r.replicated.link_variants[0].window1_p50_us,
            floor: Some(("2 × RTT + paired flush", Unit::Us, |r| {
                r.replicated.window1_path_floor_us
            })),
            target: None,
        },
        Row {
            figure: format!("single server, ack local, {load} × 16 KiB"),
            unit: Unit::MibS,
            value: |r| r.replicated.single_16k_mib_s,
            floor: Some(("disk write", Unit::MibS, |r| {
                r.replicated.floors.disk_write_mib_s
            })),
            target: None,
        },
        Row {
            figure: format!("pair, ack replicated, {load} × 16 KiB"),
            unit: Unit::MibS,
            value: |r| r.replicated.pair_16k_mib_s,
            floor: Some(("min(disk write, loopback)", Unit::MibS, |r| {
                r.replicated
                    .floors
                    .disk_write_mib_s
                    .min(r.replicated.floors.loopback_mib_s)
            })),
            target: None,
        },
        Row {
            figure: "catch-up, Sync to in sync".into(),
            unit: Unit::MibS,
            value: |r| r.replicated.catchup.streaming_mib_s,
            floor: Some(("min(passive's disk write, loopback)", Unit::MibS, |r| {
                r.replicated.catchup.floor_mib_s
            })),
            target: Some(("≥ 0.5", Held::Ratio(|ratio| ratio >= 0.5))),
        },
        Row {
            figure: "the same, beside the same-disk copy floor".into(),
            unit: Unit::MibS,
            value: |r| r.replicated.catchup.streaming_mib_s,
            floor: Some(("min(disk copy, loopback)", Unit::MibS, |r| {
                r.replicated
                    .floors
                    .disk_copy_mib_s
                    .min(r.replicated.floors.loopback_mib_s)
            })),
            target: None,
        },
        Row {
            figure: format!("server RSS, {backlog} × 1 KiB queued"),
            unit: Unit::Mib,
            value: |r| r.broker.backlog_rss_mib,
            floor: None,
            target: Some(("< 256 MiB", Held::Value(|mib| mib < RSS_TARGET_MIB))),
        },
        Row {
            figure: "draining that backlog, one consumer".into(),
            unit: Unit::MsgsS,
            value: |r| r.broker.drain_msgs_s,
            floor: None,
            target: None,
        },
        Row {
            figure: "server RSS half way through that drain".into(),
            unit: Unit::Mib,
            value: |r| r.broker.drain_rss_mib,
            floor: None,
            target: Some(("< 256 MiB", Held::Value(|mib| mib < RSS_TARGET_MIB))),
        },
        Row {
            figure: "takeover (SIGKILL to first ack), hot standby, p50".into(),
            unit: Unit::Ms,
            value: |r| r.replicated.takeover_hot.p50_ms,
            floor: Some(("detection bound", Unit::Ms, |r| {
                r.replicated.takeover_hot.failover_bound_ms
            })),
            target: None,
        },
        Row {
            figure: "takeover, hot standby, max".into(),
            unit: Unit::Ms,
            value: |r| r.replicated.takeover_hot.max_ms,
            floor: Some(("detection bound", Unit::Ms, |r| {
                r.replicated.takeover_hot.failover_bound_ms
            })),
            target: Some(("< 1 s", Held::Value(|ms| ms < 1000.0))),
        },
        Row {
            figure: "takeover, warm standby, p50".into(),
            unit: Unit::Ms,
            value: |r| r.replicated.takeover_warm.p50_ms,
            floor: Some(("detection bound", Unit::Ms, |r| {
                r.replicated.takeover_warm.failover_bound_ms
            })),
            target: None,
        },
    ]
}

/// The table: median of the runs, each run in brackets.
pub fn render_table(report: &Report) -> String {
    let Some(first) = report.runs.first() else {
        return "no runs\n".into();
    };
    let mut out = String::from(
        "| figure | median (runs) | floor, median | ratio, median (runs) | target |\n\
         |---|---:|---:|---:|---|\n",
    );
    for row in rows(first) {
        let values: Vec<f64> = report.runs.iter().map(row.value).collect();
        let value = median(&values);
        let shown = format!(
            "{} ({})",
            row.unit.show(value),
            listed(&values, |v| row.unit.show(v))
        );
        let (floor, ratios, ratio_median) = match row.floor {
            Some((label, unit, floor)) => {
                let floors: Vec<f64> = report.runs.iter().map(floor).collect();
                let ratios: Vec<f64> = values
                    .iter()
                    .zip(&floors)
                    .map(|(v, f)| ratio(*v, *f))
                    .collect();
                let r = median(&ratios);
                (
                    format!("{} ({label})", unit.show(median(&floors))),
                    format!("{r:.2} ({})", listed(&ratios, |x| format!("{x:.2}"))),
                    r,
                )
            }
            None => (String::new(), String::new(), value),
        };
        let target = match row.target {
            Some((label, held)) => {
                let met = match held {
                    Held::Ratio(met) => met(ratio_median),
                    Held::Value(met) => met(value),
                };
                format!("{label}: {}", if met { "met" } else { "MISSED" })
            }
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {shown} | {floor} | {ratios} | {target} |",
            row.figure
        );
    }
    let r = &first.replicated;
    let _ = writeln!(
        out,
        "\n{} run(s); each measurement ran {} s; {} takeovers per standby mode and run. \
         The pair is the shipped profiles/replicated pair on free ports (2 shards, hot \
         standby, ack_mode replicated), the single server has the same shards; both servers \
         share one disk, so window-1 latency is also shown beside its whole path (the client's \
         round trip, the HA link's, and the flush two writers get at once), and the catch-up \
         beside the same-disk copy floor.",
        report.runs.len(),
        r.seconds,
        r.takeover_hot.runs
    );
    out
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
