use super::*;
use crate::journal::{Durability, JournalOptions};
use std::path::PathBuf;

const ORIGIN: &str = "test.toml";

/// The smallest profile that loads: the two required keys.
const MINIMAL: &str = r#"
[server]
name = "single"
data_dir = "./data/single"
"#;

fn parse(text: &str) -> Result<Profile, ConfigError> {
    Profile::parse(text, ORIGIN)
}

/// The minimal profile with `extra` appended: bare keys land in `[server]`,
/// a table header opens a section of its own.
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

#[test]
fn minimal_profile_gets_the_defaults() {
    let profile = parse(MINIMAL).unwrap();
    assert_eq!(
        profile,
        Profile {
            server: ServerConfig {
                name: "single".to_owned(),
                data_dir: PathBuf::from("./data/single"),
                shards: 0,
                client_listen: "127.0.0.1:1856".parse().unwrap(),
                admin_listen: "127.0.0.1:1858".parse().unwrap(),
                max_connections: 1024,
            },
            journal: JournalConfig {
                segment_bytes: 64 * 1024 * 1024,
                batch_bytes_max: 1024 * 1024,
                flush_linger_us: 0,
                durability: "direct-dsync".to_owned(),
                spare_segments: 2,
            },
            broker: BrokerConfig {
                auto_create: true,
                default_prefetch: 256,
                max_deliveries: 10,
                producer_idle_expiry_s: 7 * 24 * 3600,
                dead_letter_queue: "/queue/DLQ".to_owned(),
            },
            ha: None,
            net: NetConfig {
                client: SocketOptions::default(),
                ha: SocketOptions::default(),
            },
        }
    );
    let options = profile.journal.options();
    assert_eq!(options.durability, Durability::DirectDsync);
    assert_eq!(
        options.segment_bytes,
        JournalOptions::default().segment_bytes
    );
}

#[test]
fn shipped_single_profile_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/single.toml");
    let profile = Profile::load(&path).unwrap();
    assert_eq!(profile.server.name, "single");
    assert_eq!(profile.server.data_dir, PathBuf::from("./data/single"));
    assert_eq!(
        profile.server.client_listen,
        "127.0.0.1:1856".parse().unwrap()
    );
    assert_eq!(
        profile.server.admin_listen,
        "127.0.0.1:1858".parse().unwrap()
    );
    // The shipped file spells out every default; it must not drift from them.
    let defaults = parse(MINIMAL).unwrap();
    assert_eq!(profile, defaults);
}

#[test]
fn every_key_is_read() {
    let profile = parse(
        r#"
[server]
name = "node-1.eu_west"
data_dir = "/var/lib/twinmq"
shards = 4
client_listen = "0.0.0.0:1956"
admin_listen = "127.0.0.1:1958"
max_connections = 50000

[journal]
segment_bytes = 1048576
batch_bytes_max = 65536
flush_linger_us = 200
durability = "write-fdatasync"
spare_segments = 4

[broker]
auto_create = false
default_prefetch = 10
max_deliveries = 0
dead_letter_queue = "/queue/dead.letters"

[net.client]
nodelay = false
send_buffer_bytes = 262144
recv_buffer_bytes = 131072
keepalive_secs = 0
connect_timeout_ms = 1000
handshake_timeout_ms = 2000
tcp_user_timeout_ms = 4000
"#,
    )
    .unwrap();
    assert_eq!(profile.server.shard_count(), 4);
    assert_eq!(profile.server.max_connections, 50_000);
    assert_eq!(
        profile.journal.options().durability,
        Durability::WriteFdatasync
    );
    assert_eq!(
        profile.journal.options().flush_linger,
        std::time::Duration::from_micros(200)
    );
    assert!(!profile.broker.auto_create);
    assert_eq!(profile.broker.max_deliveries, 0);
    assert_eq!(
        profile.net.client,
        SocketOptions {
            nodelay: false,
            send_buffer_bytes: 262_144,
            recv_buffer_bytes: 131_072,
            keepalive_secs: 0,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
            tcp_user_timeout_ms: 4_000,
        }
    );
}

#[test]
fn invalid_values_name_the_key_and_why() {
    let cases: &[(&str, &str, &str)] = &[
        ("shards = 257", "server.shards", "257 is more than 256"),
        ("name = \"\"", "server.name", "must be 1 to 64 characters"),
        (
            "name = \"a b\"",
            "server.name",
            "may only use letters, digits and . _ - (found ' ')",
        ),
        ("data_dir = \"\"", "server.data_dir", "must not be empty"),
        (
            "max_connections = 0",
            "server.max_connections",
            "0 is outside 1..=1000000",
        ),
        (
            "admin_listen = \"127.0.0.1:1856\"",
            "server.admin_listen",
            "takes the same port as server.client_listen",
        ),
        (
            "[journal]\ndurability = \"fast\"",
            "journal.durability",
            "unknown durability \"fast\"",
        ),
        (
            "[journal]\nsegment_bytes = 1048576\nbatch_bytes_max = 1048576",
            "journal.batch_bytes_max",
            "too large for segment_bytes",
        ),
        (
            "[journal]\nsegment_bytes = 100000",
            "journal.segment_bytes",
            "not a multiple of 4096",
        ),
        (
            "[journal]\nflush_linger_us = 100001",
            "journal.flush_linger_us",
            "exceeds 100000",
        ),
        (
            "[broker]\ndead_letter_queue = \"/topic/DLQ\"",
            "broker.dead_letter_queue",
            "/topic/DLQ is a topic",
        ),
        (
            "[broker]\nproducer_idle_expiry_s = 0",
            "broker.producer_idle_expiry_s",
            "use at least 1",
        ),
        (
            "[broker]\ndead_letter_queue = \"DLQ\"",
            "broker.dead_letter_queue",
            "must start with /queue/ or /topic/",
        ),
        (
            "[broker]\ndefault_prefetch = 0",
            "broker.default_prefetch",
            "0 is outside 1..=65535",
        ),
        (
            "[net.client]\nconnect_timeout_ms = 0",
            "net.client.connect_timeout_ms",
            "0 is outside 1..=600000",
        ),
        (
            "[net.ha]\ntcp_user_timeout_ms = 600001",
            "net.ha.tcp_user_timeout_ms",
            "600001 exceeds 600000 (use 0 for the kernel default)",
        ),
    ];
    for &(extra, key, why) in cases {
        let text = match extra.strip_prefix('[') {
            // A section of its own goes after [server].
            Some(_) => with(extra),
            // A [server] key: replace the minimal one it shadows, if any.
            None => {
                let name = extra.split(" =").next().unwrap();
                let kept: Vec<&str> = MINIMAL
                    .lines()
                    .filter(|line| !line.starts_with(&format!("{name} =")))
                    .collect();
                format!("{}\n{extra}\n", kept.join("\n"))
            }
        };
        assert_invalid(&parse(&text).unwrap_err(), ORIGIN, key, why, extra);
    }
}

/// Checks that `error` refuses exactly `key`, saying `why`, in the form
/// operators see (`profile ORIGIN: key: …`).
pub(in crate::config) fn assert_invalid(
    error: &ConfigError,
    origin: &str,
    key: &str,
    why: &str,
    case: &str,
) {
    assert!(
        matches!(error, ConfigError::Invalid { key: k, .. } if k == key),
        "{case}: {error:?}"
    );
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!("profile {origin}: {key}: ")) && shown.contains(why),
        "{case}: {shown}"
    );
}

#[test]
fn unknown_keys_and_sections_are_rejected_by_name() {
    let cases = [
        (with("colour = 1"), "unknown field `colour`"),
        (with("[clustr]"), "unknown field `clustr`"),
        (
            with("[journal]\nsegment_size = 1"),
            "unknown field `segment_size`",
        ),
        (
            with("[net.client]\nno_delay = true"),
            "unknown field `no_delay`",
        ),
        (with("[net.peer]"), "unknown field `peer`"),
    ];
    for (text, expected) in cases {
        let error = parse(&text).unwrap_err();
        assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("profile {ORIGIN}: TOML parse error at line "))
                && shown.contains(expected),
            "{shown}"
        );
    }
}

#[test]
fn missing_or_mistyped_values_are_rejected_with_their_line() {
    let cases = [
        (
            "[server]\nname = \"a\"\n".to_owned(),
            "missing field `data_dir`",
        ),
        (String::new(), "missing field `server`"),
        (
            with("client_listen = \"localhost:1856\""),
            "client_listen = \"localhost:1856\"",
        ),
        (with("shards = -1"), "shards = -1"),
        (
            with("[broker]\nauto_create = \"yes\""),
            "auto_create = \"yes\"",
        ),
    ];
    for (text, expected) in cases {
        let shown = parse(&text).unwrap_err().to_string();
        assert!(shown.contains(expected), "{shown}");
    }
}

#[test]
fn ephemeral_ports_on_both_listeners_do_not_collide() {
    // Tests start servers with port 0 everywhere; the kernel picks two ports.
    let profile = parse(&with(
        "client_listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"",
    ))
    .unwrap();
    assert_eq!(profile.server.client_listen, profile.server.admin_listen);
}

#[test]
fn shard_count_resolves_zero_to_the_cpus() {
    let mut server = parse(MINIMAL).unwrap().server;
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(server.shard_count(), cpus.min(SHARDS_MAX as usize));
    server.shards = 3;
    assert_eq!(server.shard_count(), 3);
}

#[test]
fn missing_profile_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let error = Profile::load(&path).unwrap_err();
    assert!(matches!(error, ConfigError::Read { .. }));
    let shown = error.to_string();
    assert!(
        shown.starts_with(&format!("cannot read profile {}: ", path.display())),
        "{shown}"
    );
}

#[test]
fn load_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, with("shards = 1000")).unwrap();
    let shown = Profile::load(&path).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("profile {}: server.shards: ", path.display())),
        "{shown}"
    );
}
