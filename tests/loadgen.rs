//! `twinmq-load --local-pair` end to end, briefly: the report is
//! well-formed JSON and the checker found nothing lost or duplicated, with
//! and without a scheduled failover. Correctness only: no figure here is
//! held to a number.

use serde_json::Value;
use std::process::Command;

/// A small load: two producers and two consumers on two queues.
const SMALL: [&str; 10] = [
    "--warmup",
    "0.3",
    "--producers",
    "2",
    "--consumers",
    "2",
    "--destinations",
    "2",
    "--window",
    "16",
];

/// Runs `twinmq-load --local-pair --json` with [`SMALL`] and `args`.
fn run(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_twinmq-load"))
        .args(["--local-pair", "--json", "--dir"])
        .arg(dir.path())
        .args(SMALL)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "twinmq-load failed:\n{stderr}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stderr}"))
}

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut value = report;
    for key in path {
        value = &value[key];
    }
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {report}"))
}

fn assert_checked_clean(report: &Value) {
    let acknowledged = number(report, &["checker", "acknowledged"]);
    assert!(acknowledged > 0.0, "something was acknowledged: {report}");
    assert_eq!(report["checker"]["checked"], true);
    assert_eq!(number(report, &["checker", "lost"]), 0.0, "{report}");
    assert_eq!(number(report, &["checker", "duplicated"]), 0.0, "{report}");
    assert_eq!(
        number(report, &["checker", "attempted"]),
        acknowledged,
        "every send acknowledged in the end: {report}"
    );
    assert_eq!(
        number(report, &["checker", "delivered"]),
        acknowledged,
        "{report}"
    );
    assert_eq!(number(report, &["errors"]), 0.0, "{report}");
    for series in ["send_to_ack", "send_to_deliver"] {
        let p50 = number(report, &[series, "p50_us"]);
        let max = number(report, &[series, "max_us"]);
        assert!(p50 > 0.0 && max >= p50, "{series}: {report}");
        assert!(number(report, &[series, "samples"]) > 0.0);
    }
    assert!(number(report, &["sent", "msgs_s"]) > 0.0);
    assert!(number(report, &["delivered", "mib_s"]) > 0.0);
}

#[test]
fn local_pair_run_reports_every_figure_and_loses_nothing() {
    let report = run(&["--duration", "1.5", "--size", "uniform:64-2048"]);
    assert_checked_clean(&report);
    assert_eq!(report["failovers"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["size"], "uniform:64-2048");
}

#[test]
fn local_pair_run_across_a_failover_loses_and_duplicates_nothing() {
    let report = run(&[
        "--duration",
        "3",
        "--rate",
        "2000",
        "--failover-every",
        "1.5",
    ]);
    assert_checked_clean(&report);
    let failovers = report["failovers"].as_array().expect("failovers");
    assert!(!failovers.is_empty(), "at least one failover: {report}");
    assert!(
        failovers
            .iter()
            .all(|f| f["unavailable_ms"].as_f64().is_some()),
        "acknowledgements resumed after every failover: {report}"
    );
    assert!(number(&report, &["client", "reconnects"]) > 0.0);
}
