//! The `twinmq` binary: the journal and replicated benchmarks' reports are
//! well formed, `journal check` reports what a journal holds, and `promote`
//! refuses what it must. Correctness only; the numbers themselves are not
//! asserted.

#[path = "support/server.rs"]
mod server;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn twinmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twinmq"))
}

/// Runs `twinmq bench ARGS --json --dir DIR` (ARGS split at spaces).
fn bench_json(args: &str, dir: &Path) -> Output {
    twinmq()
        .arg("bench")
        .args(args.split_whitespace())
        .args(["--json", "--dir"])
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn bench_journal_json_reports_every_case_beside_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let output = bench_json(
        "journal --seconds 0.05 --durability direct-dsync",
        dir.path(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect();
    let batches: Vec<_> = lines.iter().filter(|l| l["case"] == "batch").collect();
    let sizes: Vec<_> = batches
        .iter()
        .map(|l| l["batch_bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4096, 65536, 1048576]);
    for line in &batches {
        for field in [
            "journal_mib_s",
            "floor_mib_s",
            "ratio",
            "journal_p50_us",
            "journal_p99_us",
            "floor_p50_us",
        ] {
            let value = line[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{field} missing in {line}"));
            assert!(value > 0.0, "{field} = {value} in {line}");
        }
    }
    assert_eq!(lines.iter().filter(|l| l["case"] == "floor").count(), 1);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l["case"] == "single_record")
            .count(),
        1
    );
    // The bench cleans up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_bench_arguments_are_refused_with_the_reason() {
    let output = twinmq()
        .args(["bench", "journal", "--durability", "fast"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--durability") && stderr.contains("direct-dsync"),
        "{stderr}"
    );
}

/// `report[path…]` as a positive number, or a failure naming the path.
fn positive(report: &Value, path: &[&str]) -> f64 {
    let value = path
        .iter()
        .fold(report, |v, key| &v[key])
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} missing in {report}"));
    assert!(value > 0.0, "{path:?} = {value}");
    value
}

#[test]
fn bench_suite_prints_one_table_of_medians_beside_floors_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let output = twinmq()
        .args([
            "bench",
            "suite",
            "--seconds",
            "0.2",
            "--runs",
            "2",
            "--takeovers",
            "1",
            "--backlog",
            "2000",
            "--catchup-mib",
            "2",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.starts_with(
            "| figure | median (runs) | floor, median | ratio, median (runs) | target |"
        ),
        "{table}"
    );
    for figure in [
        "floor: disk 4 KiB write + fdatasync",
        "pair as shipped, ack replicated",
        "pair, window 1, send-to-ack p50",
        "floor: disk 4 KiB write + fdatasync, two writers at once",
        "beside its whole path on one disk",
        "× 16 KiB",
        "catch-up, Sync to in sync",
        "server RSS",
        "draining that backlog",
        "takeover (SIGKILL to first ack), hot standby, p50",
    ] {
        let row = table
            .lines()
            .find(|l| l.contains(figure))
            .unwrap_or_else(|| panic!("no row for {figure}:\n{table}"));
        // Two runs: the median, then both runs' values in brackets.
        assert!(row.contains(", "), "{row}");
    }
    assert!(table.contains("2 run(s)"), "{table}");
}

#[test]
fn bench_replicated_json_reports_every_figure_beside_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    // The catch-up's passive moves to another directory (a stand-in for
    // another disk; the suite's test covers the same-disk default).
    let passive_dir = tempfile::tempdir().unwrap();
    let output = bench_json(
        &format!(
            "replicated --seconds 0.3 --runs-takeover 1 --catchup-mib 4 --passive-dir {}",
            passive_dir.path().display()
        ),
        dir.path(),
    );
    if !output.status.success() {
        // The bench keeps its directory on failure: keep it from the
        // temporary directory's clean-up too, for the servers' logs.
        panic!(
            "{}\n(directory kept: {})",
            String::from_utf8_lossy(&output.stderr),
            dir.keep().display()
        );
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("a JSON object");

    for floor in [
        "disk_flush_p50_us",
        "disk_write_mib_s",
        "loopback_rtt_p50_us",
        "loopback_mib_s",
    ] {
        positive(&report, &["floors", floor]);
    }
    positive(&report, &["single_msgs_s"]);
    positive(&report, &["single_window1_p50_us"]);
    let rtt = positive(&report, &["floors", "loopback_rtt_p50_us"]);
    let flush = positive(&report, &["floors", "disk_flush_p50_us"]);
    // Within float parsing: serde_json may read a number back one ulp off.
    let window1_floor = positive(&report, &["window1_floor_us"]);
    assert!(
        (window1_floor - (rtt + flush)).abs() < 1e-6,
        "{window1_floor}"
    );
    let paired_flush = positive(&report, &["floors", "disk_flush_paired_p50_us"]);
    let path_floor = positive(&report, &["window1_path_floor_us"]);
    assert!(
        (path_floor - (2.0 * rtt + paired_flush)).abs() < 1e-6,
        "{path_floor}"
    );

    // Every [net.ha] variant, the shipped one first.
    let variants = report["link_variants"].as_array().expect("link_variants");
    let links: Vec<(bool, u64)> = variants
        .iter()
        .map(|v| {
            (
                v["nodelay"].as_bool().unwrap(),
                v["buffer_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        links,
        [(true, 0), (false, 0), (true, 65536), (false, 65536)]
    );
    for variant in variants {
        for figure in [
            "msgs_s",
            "msgs_ratio",
            "window1_p50_us",
            "window1_p99_us",
            "window1_ratio",
        ] {
            positive(variant, &[figure]);
        }
    }

    // The passive missed at least what was sent while it was down.
    let caught_up = positive(&report, &["catchup", "bytes"]);
    assert!(caught_up >= positive(&report, &["catchup", "sent_body_bytes"]));
    for figure in [
        "total_s",
        "streaming_s",
        "streaming_mib_s",
        "floor_mib_s",
        "ratio",
    ] {
        positive(&report, &["catchup", figure]);
    }
    // Held to the passive's own disk, not to a same-disk copy.
    assert_eq!(report["catchup"]["passive_dir"], true);
    assert!(report["catchup"]["copy_ratio"].is_null());
    let passive_write = positive(&report, &["floors", "passive_disk_write_mib_s"]);
    let loopback = positive(&report, &["floors", "loopback_mib_s"]);
    let floor = positive(&report, &["catchup", "floor_mib_s"]);
    assert!(
        (floor - passive_write.min(loopback)).abs() < 1e-6,
        "{floor}"
    );
    positive(&report, &["floors", "disk_copy_mib_s"]);
    positive(&report, &["single_16k_mib_s"]);
    positive(&report, &["pair_16k_mib_s"]);

    for (series, standby) in [("takeover_hot", "hot"), ("takeover_warm", "warm")] {
        let takeover = &report[series];
        assert_eq!(takeover["standby"], standby);
        assert_eq!(takeover["runs"], 1);
        assert_eq!(takeover["samples_ms"].as_array().map(Vec::len), Some(1));
        let p50 = positive(takeover, &["p50_ms"]);
        assert_eq!(positive(takeover, &["max_ms"]), p50);
        positive(takeover, &["failover_bound_ms"]);
    }
    assert!(report["server_logs"]["lines"].is_array());

    // The bench cleans up after itself: no server still runs from a profile
    // under the directory, and journals, profiles and logs are gone.
    assert_eq!(processes_naming(dir.path()), Vec::<String>::new());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(passive_dir.path()).unwrap().count(), 0);
}

/// Command lines of running processes that mention `dir`.
fn processes_naming(dir: &std::path::Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(dir.as_ref()))
        .collect()
}

#[test]
fn journal_check_reports_range_and_epochs_and_refuses_corruption() {
    use twinmq::ids::Epoch;
    use twinmq::journal::{Journal, JournalOptions, RecordKind};
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions {
        segment_bytes: 64 * 1024,
        batch_bytes_max: 16 * 1024,
        ..JournalOptions::default()
    };
    let mut ring = twinmq::io::Ring::new(8).unwrap();
    let mut journal = Journal::open(dir.path(), options).unwrap();
    journal
        .append(RecordKind::EpochStart, Epoch(7), b"")
        .unwrap();
    let second = journal
        .append(RecordKind::Opaque, Epoch(7), b"payload")
        .unwrap();
    journal.sync(&mut ring).unwrap();
    // In a later batch, so damage to the record before it is provably not a torn write.
    journal
        .append(RecordKind::Opaque, Epoch(7), b"tail")
        .unwrap();
    journal.sync(&mut ring).unwrap();
    drop(journal);

    let output = twinmq()
        .args(["journal", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("records 3") && stdout.contains("epoch 7 starts at offset 0"),
        "{stdout}"
    );

    let segment = dir.path().join(format!("{:020}.seg", 0));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[second.get() as usize + 33] ^= 1;
    std::fs::write(&segment, bytes).unwrap();
    let output = twinmq()
        .args(["journal", "check"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "corrupt journal: segment 00000000000000000000.seg, offset {second}"
        )),
        "{stderr}"
    );
}

#[test]
fn promote_without_force_refuses_and_says_what_force_risks() {
    // No server is needed: the refusal comes before any request. The admin
    // address is one nobody listens on, so a request would fail differently.
    let output = twinmq()
        .args(["promote", "--admin", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("promote needs --force")
            && stderr.contains("stale replica")
            && stderr.contains("may be lost"),
        "{stderr}"
    );
}

#[test]
fn single_server_answers_promote_force_that_it_is_not_in_a_pair() {
    let mut server = server::ServerProcess::start(1, "");
    let admin = server.admin.to_string();
    let output = twinmq()
        .args(["promote", "--force", "--admin", &admin])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{admin}: this server is not part of an HA pair")),
        "{stderr}"
    );
    // Still serving: a refused promotion changes nothing.
    assert_eq!(server.status().state, "ACTIVE");
    server.stop();
}
