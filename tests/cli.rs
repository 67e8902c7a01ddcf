//! The `twinmq` binary: the journal benchmark's report is well formed,
//! `journal check` reports what a journal holds, and `promote` refuses what
//! it must. Correctness only; the numbers themselves are not asserted.

#[path = "support/server.rs"]
mod server;

use std::process::Command;

fn twinmq() -> Command {
    Command::new(env!("CARGO_BIN_EXE_twinmq"))
}

#[test]
fn bench_journal_json_reports_every_case_beside_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let output = twinmq()
        .args([
            "bench",
            "journal",
            "--seconds",
            "0.05",
            "--durability",
            "direct-dsync",
            "--json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
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
