//! `twinmq up`: a local HA pair in the foreground — the gateway responder,
//! the primary and the secondary of the shipped profiles (replicated by
//! default, or shared), with data, lock file and logs under one directory.
//! State changes are printed as they happen; Ctrl-C (or SIGTERM) stops all
//! three.

pub mod local;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The shipped replicated-mode profiles (their paths are rewritten to
/// `--dir`): one data directory per server, one lock file between them.
pub(crate) const REPLICATED_PRIMARY: &str = include_str!("../../profiles/replicated/primary.toml");
pub(crate) const REPLICATED_SECONDARY: &str =
    include_str!("../../profiles/replicated/secondary.toml");
/// The shipped shared-mode profiles (their paths are rewritten to `--dir`).
const SHARED_PRIMARY: &str = include_str!("../../profiles/shared/primary.toml");
const SHARED_SECONDARY: &str = include_str!("../../profiles/shared/secondary.toml");
/// What `twinmq up` runs without `--mode`: the mode DESIGN makes the
/// product's default, where each server keeps its own copy of the journal.
pub const MODE_DEFAULT: &str = "replicated";
/// The gateway address the shipped profiles name.
const GATEWAY_LISTEN: &str = "127.0.0.1:2100";
/// The directory the shipped profiles name, replaced by `--dir`.
pub(crate) const SHIPPED_DIR: &str = "./data/pair";

/// Log lines worth showing on the console.
fn interesting(line: &str) -> bool {
    [
        "switched to",
        "status of remote server",
        "Successfully acquired",
        "worst-case failover",
        "ERROR",
        "WARN",
        "listening",
    ]
    .iter()
    .any(|needle| line.contains(needle))
}

pub(crate) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn spawn(name: &'static str, args: &[&str], dir: &Path) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the twinmq binary: {e}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the {name}: {e}"))?;
    let stderr = child.stderr.take().expect("piped stderr");
    let log_path = dir.join(format!("{name}.log"));
    let mut log =
        std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let plain = strip_ansi(&line);
            let _ = writeln!(log, "{plain}");
            if interesting(&plain) {
                println!("[{name:>9}] {plain}");
            }
        }
    });
    Ok(child)
}

/// The shipped profiles of `mode`, primary then secondary.
fn profiles(mode: &str) -> Result<(&'static str, &'static str), String> {
    match mode {
        "replicated" => Ok((REPLICATED_PRIMARY, REPLICATED_SECONDARY)),
        "shared" => Ok((SHARED_PRIMARY, SHARED_SECONDARY)),
        other => Err(format!("--mode {other}: expected replicated or shared")),
    }
}

/// Runs the pair until a termination signal.
pub fn up(mode: &str, dir: &Path) -> Result<(), String> {
    let (primary, secondary) = profiles(mode)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let shown = dir.display().to_string();
    let mut profiles = Vec::new();
    for (name, text) in [("primary", primary), ("secondary", secondary)] {
        let path: PathBuf = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text.replace(SHIPPED_DIR, &shown))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        profiles.push(path);
    }
    // The lock file must exist on storage both servers reach (in either
    // mode); an operator creates it once, and so does `up`.
    let lock = dir.join("ha.lock");
    if !lock.exists() {
        std::fs::File::create(&lock).map_err(|e| format!("{}: {e}", lock.display()))?;
    }
    crate::io::block_termination_signals().map_err(|e| format!("blocking signals: {e}"))?;
    let profile = |p: &PathBuf| p.to_string_lossy().into_owned();
    let (p0, p1) = (profile(&profiles[0]), profile(&profiles[1]));
    let mut children = vec![spawn(
        "gateway",
        &["gateway", "--listen", GATEWAY_LISTEN],
        dir,
    )?];
    children.push(spawn("primary", &["server", "--profile", &p0], dir)?);
    children.push(spawn("secondary", &["server", "--profile", &p1], dir)?);
    println!(
        "pair running ({mode}): clients twinmq://127.0.0.1:1856,127.0.0.1:1956, admin 127.0.0.1:1858 and 127.0.0.1:1958; \
         logs and data under {shown}; Ctrl-C stops all three"
    );
    let signal = crate::io::wait_termination_signal().map_err(|e| e.to_string())?;
    println!("signal {signal}: stopping the pair");
    for child in &mut children {
        // SAFETY: kill takes no pointers; the pid is our own child's.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for child in &mut children {
        let _ = child.wait();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse_and_form_a_pair() {
        let p = crate::config::Profile::parse(SHARED_PRIMARY, "primary").unwrap();
        let s = crate::config::Profile::parse(SHARED_SECONDARY, "secondary").unwrap();
        let (ph, sh) = (p.ha.unwrap(), s.ha.unwrap());
        assert_eq!((ph.listen, ph.peer), (sh.peer, sh.listen));
        assert_eq!(ph.lock_file, sh.lock_file);
        assert_eq!(p.server.data_dir, s.server.data_dir);
        assert_eq!(ph.peer_client, Some(s.server.client_listen));
        assert!(ph.worst_case_failover() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn shipped_replicated_profiles_parse_and_form_a_pair() {
        let parse = |text, origin| {
            let (profile, warnings) =
                crate::config::Profile::parse_with_warnings(text, origin).unwrap();
            assert!(warnings.is_empty(), "{origin}: {warnings:?}");
            profile
        };
        let p = parse(REPLICATED_PRIMARY, "replicated/primary.toml");
        let s = parse(REPLICATED_SECONDARY, "replicated/secondary.toml");
        let (ph, sh) = (p.ha.clone().unwrap(), s.ha.clone().unwrap());
        assert_eq!(ph.mode, crate::config::HaMode::Replicated);
        assert_eq!(sh.mode, crate::config::HaMode::Replicated);
        assert_eq!(
            (ph.role, sh.role),
            (
                crate::config::HaRole::Primary,
                crate::config::HaRole::Secondary
            )
        );
        assert_eq!((ph.listen, ph.peer), (sh.peer, sh.listen));
        assert_eq!(ph.peer_client, Some(s.server.client_listen));
        assert_eq!(sh.peer_client, Some(p.server.client_listen));
        // Each server its own journal, one lock file for the pair.
        assert_ne!(p.server.data_dir, s.server.data_dir);
        assert_eq!(ph.lock_file, sh.lock_file);
        assert_eq!(p.server.shards, s.server.shards);
        // The handshake refuses a pair whose shared parameters differ.
        assert_eq!(ph.timings(), sh.timings());
        assert_eq!(
            (ph.cluster_id.as_str(), ph.gateway),
            (sh.cluster_id.as_str(), sh.gateway)
        );
        assert!(ph.worst_case_failover() < std::time::Duration::from_secs(1));
        // Same timings as the shared pair: only the data path differs.
        let shared = parse(SHARED_PRIMARY, "shared/primary.toml").ha.unwrap();
        assert_eq!(ph.timings(), shared.timings());
        // Every path sits under the directory `up` rewrites to --dir.
        for path in [&p.server.data_dir, &s.server.data_dir, &ph.lock_file] {
            assert!(path.starts_with(SHIPPED_DIR), "{}", path.display());
        }
    }

    #[test]
    fn up_knows_both_modes_and_defaults_to_replicated() {
        assert_eq!(profiles(MODE_DEFAULT).unwrap().0, REPLICATED_PRIMARY);
        assert_eq!(profiles("shared").unwrap().0, SHARED_PRIMARY);
        assert_eq!(
            profiles("mirrored").unwrap_err(),
            "--mode mirrored: expected replicated or shared"
        );
    }

    #[test]
    fn ansi_colours_are_stripped_from_console_lines() {
        assert_eq!(
            strip_ansi("\u{1b}[32m INFO\u{1b}[0m switched to ACTIVE"),
            " INFO switched to ACTIVE"
        );
    }
}
