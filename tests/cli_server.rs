//! The command line against a real server: send, receive, status --json,
//! shutdown; and a bad profile that stops start-up naming the key.

#[path = "support/server.rs"]
mod server;

use server::ServerProcess;
use std::process::Command;

fn twinmq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_twinmq"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn send_receive_status_and_shutdown_from_the_command_line() {
    let mut server = ServerProcess::start(2, "");
    let url = server.url();
    let admin = server.admin.to_string();
    let sent = twinmq(&[
        "send",
        "/queue/cli",
        "hello {n}",
        "--count",
        "3",
        "--url",
        &url,
    ]);
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );

    // Statistics are published every 200 ms.
    server::wait_until(server::READY_TIMEOUT, "status to show the queue", || {
        server
            .status()
            .destinations
            .iter()
            .any(|d| d.destination == "/queue/cli")
    });
    let status = twinmq(&["status", "--admin", &admin, "--json"]);
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    for field in ["role", "state", "epoch", "pid", "destinations"] {
        assert!(
            json.get(field).is_some(),
            "status --json lacks {field}: {json}"
        );
    }

    let received = twinmq(&["receive", "/queue/cli", "--count", "3", "--url", &url]);
    assert!(
        received.status.success(),
        "{}",
        String::from_utf8_lossy(&received.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&received.stdout),
        "hello 1\nhello 2\nhello 3\n"
    );

    let human = twinmq(&["status", "--admin", &admin]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("/queue/cli"));

    let stopped = twinmq(&["shutdown", "--admin", &admin]);
    assert!(stopped.status.success());
    server::wait_until(server::READY_TIMEOUT, "the server to exit", || {
        !server.is_running()
    });
}

#[test]
fn a_bad_profile_stops_start_up_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("bad.toml");
    std::fs::write(
        &profile,
        "[server]\nname = \"bad\"\ndata_dir = \"d\"\n[journal]\ndurability = \"fast\"\n",
    )
    .unwrap();
    let out = twinmq(&["server", "--profile", profile.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("journal.durability"), "{stderr}");

    std::fs::write(
        &profile,
        "[server]\nname = \"bad\"\ndata_dir = \"d\"\ncolour = 1\n",
    )
    .unwrap();
    let out = twinmq(&["server", "--profile", profile.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("colour"));
}
