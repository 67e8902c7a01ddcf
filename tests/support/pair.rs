//! An HA pair as real processes on loopback: a gateway, a primary and a
//! secondary on free ports in a temporary directory, around one lock file.
//!
//! Two profiles, written by one function:
//! - shared (`Pair::new`, `Pair::with_journal`): both servers use one data
//!   directory, `<tmp>/shared`;
//! - replicated (`Pair::replicated`, `Pair::replicated_with`): each server
//!   has its own, `<tmp>/primary` and `<tmp>/secondary`; optionally each
//!   server dials its peer through a fault proxy (`pair.proxies`), so a test
//!   can cut the replication link or corrupt it.
//!
//! ```text
//!   primary ──peer──▶ proxies[0] ──▶ secondary's ha.listen
//!   secondary ─peer─▶ proxies[1] ──▶ primary's ha.listen
//! ```
#![allow(dead_code)]

#[path = "proxy.rs"]
pub mod proxy;

// Re-exported for the tests that drive a proxied link; the others leave
// them unused.
#[allow(unused_imports)]
pub use proxy::{Direction, Proxy};

use super::server::{READY_TIMEOUT, free_port, wait_until};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The `[journal]` section of `Pair::new`: small segments, so tests cross
/// segment boundaries quickly.
pub const SMALL_JOURNAL: &str = "segment_bytes = 1048576\nbatch_bytes_max = 262144\n";

/// Shards per server in a pair's profiles.
pub const PAIR_SHARDS: u32 = 2;

/// The names of the two servers, also their `ha.role`s and the stems of
/// their profile, log and (replicated) data directory names.
const NAMES: [&str; 2] = ["primary", "secondary"];

/// How the two servers of a pair keep their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One data directory both servers open (only the lock holder does).
    Shared,
    /// A data directory per server; the active replicates to the passive.
    Replicated,
}

impl Mode {
    /// The profile's `ha.mode` value.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Replicated => "replicated",
        }
    }
}

/// What `Pair::replicated_with` varies.
#[derive(Debug, Clone)]
pub struct ReplicatedOptions {
    /// The `[journal]` section (empty: the shipped defaults).
    pub journal: String,
    /// Lines appended to `[ha]`, e.g. `standby = "warm"`.
    pub ha_extra: String,
    /// Each server's `ha.peer` is a fault proxy to the other's `ha.listen`
    /// (`pair.proxies`).
    pub proxied_link: bool,
}

impl Default for ReplicatedOptions {
    fn default() -> ReplicatedOptions {
        ReplicatedOptions {
            journal: SMALL_JOURNAL.to_owned(),
            ha_extra: String::new(),
            proxied_link: false,
        }
    }
}

pub struct Node {
    pub name: &'static str,
    pub profile: PathBuf,
    pub data_dir: PathBuf,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    /// This server's `ha.listen`.
    pub ha: SocketAddr,
    pub child: Option<Child>,
}

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub mode: Mode,
    pub gateway: SocketAddr,
    gateway_child: Option<Child>,
    pub nodes: [Node; 2],
    /// With `proxied_link`: `proxies[i]` is the proxy server `i` dials its
    /// peer through. Fields drop after `Drop::drop` has killed the servers,
    /// so no server sees its link cut while the pair is torn down.
    pub proxies: Option<[Proxy; 2]>,
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn spawn(args: &[&str], log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_twinmq"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Everything one server's profile says.
struct ProfileSpec<'a> {
    mode: Mode,
    name: &'static str,
    data_dir: &'a Path,
    journal: &'a str,
    client: SocketAddr,
    admin: SocketAddr,
    listen: SocketAddr,
    peer: SocketAddr,
    peer_client: SocketAddr,
    lock_file: &'a Path,
    gateway: SocketAddr,
    ha_extra: &'a str,
}

/// The profile text for either mode. A shared profile with no `ha_extra` is
/// byte for byte what the shared fixture always wrote.
fn profile_text(spec: &ProfileSpec) -> String {
    let mut text = format!(
        "[server]\nname = \"{name}\"\ndata_dir = \"{data}\"\nshards = {PAIR_SHARDS}\nclient_listen = \"{client}\"\nadmin_listen = \"{admin}\"\n\n\
         [journal]\n{journal}\n\
         [ha]\nmode = \"{mode}\"\nrole = \"{name}\"\ncluster_id = \"test-pair\"\ncluster_key = \"test-cluster-key-0123\"\n\
         listen = \"{listen}\"\npeer = \"{peer}\"\npeer_client = \"{peer_client}\"\n\
         lock_file = \"{lock}\"\ngateway = \"{gateway}\"\n",
        name = spec.name,
        data = spec.data_dir.display(),
        client = spec.client,
        admin = spec.admin,
        journal = spec.journal,
        mode = spec.mode.name(),
        listen = spec.listen,
        peer = spec.peer,
        peer_client = spec.peer_client,
        lock = spec.lock_file.display(),
        gateway = spec.gateway,
    );
    if !spec.ha_extra.is_empty() {
        text.push_str(spec.ha_extra);
        if !spec.ha_extra.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

impl Pair {
    /// A shared-store pair: writes the profiles (small journal segments, so
    /// tests stay quick) and starts the gateway; servers start with `start`.
    pub fn new() -> Pair {
        Pair::with_journal(SMALL_JOURNAL)
    }

    /// As `new`, with this `[journal]` section (empty: the shipped defaults).
    pub fn with_journal(journal: &str) -> Pair {
        Pair::build(Mode::Shared, journal, "", false)
    }

    /// A replicated pair with the defaults of [`ReplicatedOptions`].
    pub fn replicated() -> Pair {
        Pair::replicated_with(ReplicatedOptions::default())
    }

    /// A replicated pair: a data directory per server, one lock file, the
    /// gateway started; servers start with `start`.
    pub fn replicated_with(options: ReplicatedOptions) -> Pair {
        Pair::build(
            Mode::Replicated,
            &options.journal,
            &options.ha_extra,
            options.proxied_link,
        )
    }

    fn build(mode: Mode, journal: &str, ha_extra: &str, proxied_link: bool) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let gateway = addr(free_port());
        let ha = [addr(free_port()), addr(free_port())];
        let clients = [addr(free_port()), addr(free_port())];
        let admins = [addr(free_port()), addr(free_port())];
        let lock_file = dir.path().join("ha.lock");
        std::fs::File::create(&lock_file).unwrap();
        let proxies = proxied_link.then(|| [Proxy::start(ha[1]), Proxy::start(ha[0])]);
        let nodes = [0, 1].map(|i| {
            let name = NAMES[i];
            let data_dir = match mode {
                Mode::Shared => dir.path().join("shared"),
                Mode::Replicated => dir.path().join(name),
            };
            let peer = match &proxies {
                Some(proxies) => proxies[i].addr(),
                None => ha[1 - i],
            };
            let profile = dir.path().join(format!("{name}.toml"));
            let text = profile_text(&ProfileSpec {
                mode,
                name,
                data_dir: &data_dir,
                journal,
                client: clients[i],
                admin: admins[i],
                listen: ha[i],
                peer,
                peer_client: clients[1 - i],
                lock_file: &lock_file,
                gateway,
                ha_extra,
            });
            std::fs::write(&profile, text).unwrap();
            Node {
                name,
                profile,
                data_dir,
                client: clients[i],
                admin: admins[i],
                ha: ha[i],
                child: None,
            }
        });
        let gateway_child = Some(spawn(
            &["gateway", "--listen", &gateway.to_string()],
            &dir.path().join("gateway.log"),
        ));
        wait_until(READY_TIMEOUT, "the gateway to listen", || {
            std::net::TcpStream::connect(gateway).is_ok()
        });
        Pair {
            dir,
            mode,
            gateway,
            gateway_child,
            nodes,
            proxies,
        }
    }

    /// Server `i`'s data directory (the same for both in shared mode).
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }

    /// The proxy server `i` dials its peer through (`proxied_link` only).
    pub fn proxy(&self, i: usize) -> &Proxy {
        &self
            .proxies
            .as_ref()
            .expect("a pair built with proxied_link")[i]
    }

    /// Starts server `i` and waits until its admin endpoint answers; a server
    /// that exits first fails the test with its log.
    pub fn start(&mut self, i: usize) {
        assert!(
            self.nodes[i].child.is_none(),
            "{} is already running",
            self.nodes[i].name
        );
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let profile = self.nodes[i].profile.to_string_lossy().into_owned();
        self.nodes[i].child = Some(spawn(&["server", "--profile", &profile], &log));
        let admin = self.nodes[i].admin;
        let mut exited = None;
        let child = self.nodes[i].child.as_mut().unwrap();
        wait_until(READY_TIMEOUT, "the server's admin endpoint", || {
            exited = child.try_wait().unwrap();
            exited.is_some() || twinmq::admin::request(admin, "status").is_ok()
        });
        if let Some(status) = exited {
            self.nodes[i].child = None;
            panic!(
                "{} exited at start-up ({status}):\n{}",
                self.nodes[i].name,
                self.log(i)
            );
        }
    }

    /// Kills server `i` (SIGKILL, as a crash) if it runs, and starts it again.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.start(i);
    }

    pub fn status(&self, i: usize) -> Option<twinmq::admin::Status> {
        let line = twinmq::admin::request(self.nodes[i].admin, "status").ok()?;
        serde_json::from_str(&line).ok()
    }

    pub fn state(&self, i: usize) -> Option<String> {
        self.status(i).map(|s| s.state)
    }

    /// Waits until server `i` reports `state`.
    pub fn wait_state(&self, i: usize, state: &str) {
        wait_until(
            READY_TIMEOUT,
            &format!("{} to be {state}", self.nodes[i].name),
            || self.state(i).as_deref() == Some(state),
        );
    }

    /// Which server is ACTIVE once one is.
    pub fn wait_active(&self) -> usize {
        let mut active = None;
        wait_until(READY_TIMEOUT, "a server to be ACTIVE", || {
            active = (0..2).find(|&i| self.state(i).as_deref() == Some("ACTIVE"));
            active.is_some()
        });
        active.unwrap()
    }

    pub fn url(&self, i: usize) -> String {
        format!("twinmq://{}", self.nodes[i].client)
    }

    pub fn signal(&self, i: usize, signal: i32) {
        let pid = self.nodes[i].child.as_ref().expect("running").id() as i32;
        // SAFETY: kill takes no pointers; the pid is our own child's.
        unsafe { libc::kill(pid, signal) };
    }

    /// Stops server `i` cleanly, as `twinmq shutdown` does (the admin
    /// endpoint's `shutdown`), and waits for it to exit; an exit status
    /// other than 0 fails the test with its log.
    pub fn stop(&mut self, i: usize) {
        let name = self.nodes[i].name;
        assert!(self.nodes[i].child.is_some(), "{name} is not running");
        twinmq::admin::request(self.nodes[i].admin, "shutdown")
            .unwrap_or_else(|e| panic!("ask {name} to shut down: {e}\n{}", self.log(i)));
        // The child stays in the node while it winds down, so a stop that
        // times out still leaves it to `Drop` to kill.
        let mut exited = None;
        let child = self.nodes[i].child.as_mut().expect("checked");
        wait_until(READY_TIMEOUT, &format!("{name} to exit"), || {
            exited = child.try_wait().unwrap();
            exited.is_some()
        });
        self.nodes[i].child = None;
        let status = exited.expect("waited for it");
        assert!(
            status.success(),
            "{name}: a clean stop exits 0, not {status}:\n{}",
            self.log(i)
        );
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill_gateway(&mut self) {
        if let Some(mut child) = self.gateway_child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.nodes[i].name)))
            .unwrap_or_default()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test shows what each server said: the temporary
            // directory, logs included, is about to go.
            for i in 0..2 {
                let log = self.log(i);
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("---- {} log (last lines) ----", self.nodes[i].name);
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for i in 0..2 {
            if self.nodes[i].child.is_some() {
                self.signal(i, libc::SIGCONT);
            }
            self.kill(i);
        }
        self.kill_gateway();
    }
}
