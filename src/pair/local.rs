//! A replicated pair and its gateway on free loopback ports, started from
//! the shipped `profiles/replicated/*.toml` rewritten to a directory of the
//! caller's (as `twinmq up` rewrites them), for benches and the load
//! generator. Every process it starts is SIGKILLed when the value owning it
//! drops, on an error or a panic too.

use crate::admin::Status;
use crate::bench::journal::{BenchError, io_error};
use crate::config::{HaAckMode, HaMode, HaStandby, Profile};
use crate::pair::{REPLICATED_PRIMARY, REPLICATED_SECONDARY, SHIPPED_DIR};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long processes have to start and a pair to synchronise.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often status is polled. The admin endpoint itself looks for new
/// connections every 50 ms when idle, which bounds the resolution.
pub const POLL: Duration = Duration::from_millis(10);
/// Where the search for free ports starts: above the well-known and
/// commonly configured ports, below the test support's block (20000 up).
const PORTS_FIRST: u16 = 10_000;

/// The `twinmq` executable: this one, or the one beside it when this is
/// another of the project's binaries (`twinmq-load`).
fn twinmq_exe() -> std::io::Result<PathBuf> {
    let me = std::env::current_exe()?;
    if me.file_stem().is_some_and(|stem| stem == "twinmq") {
        return Ok(me);
    }
    Ok(me.with_file_name("twinmq"))
}

/// An error about `path` (a log to read, a profile) saying `what`.
pub fn failure(path: &Path, what: String) -> BenchError {
    BenchError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(what),
    }
}

/// The shipped replicated profiles, primary then secondary.
pub fn shipped_profiles() -> Result<[Profile; 2], BenchError> {
    let parse = |text: &str, origin: &str| {
        Profile::parse_with_warnings(text, origin)
            .map(|(profile, _)| profile)
            .map_err(|e| failure(Path::new(origin), e.to_string()))
    };
    Ok([
        parse(REPLICATED_PRIMARY, "profiles/replicated/primary.toml")?,
        parse(REPLICATED_SECONDARY, "profiles/replicated/secondary.toml")?,
    ])
}

/// What a pair varies from the shipped profiles.
#[derive(Debug, Clone, Copy)]
pub struct PairSpec {
    pub standby: HaStandby,
    /// `[net.ha]` `nodelay`.
    pub nodelay: bool,
    /// `[net.ha]` `send_buffer_bytes` and `recv_buffer_bytes`.
    pub buffer_bytes: u32,
}

impl PairSpec {
    /// As `profiles/replicated/*.toml` ship.
    pub const SHIPPED: PairSpec = PairSpec {
        standby: HaStandby::Hot,
        nodelay: true,
        buffer_bytes: 0,
    };

    /// Names the pair's directory, after what it is for.
    fn label(&self, purpose: &str) -> String {
        format!(
            "{purpose}-{}-nodelay-{}-buffers-{}",
            self.standby, self.nodelay, self.buffer_bytes
        )
    }
}

/// A process the bench started: SIGKILLed and reaped when dropped.
#[derive(Debug)]
struct Process {
    child: Child,
}

impl Process {
    fn spawn(args: &[&str], log: &Path) -> Result<Process, BenchError> {
        let exe = twinmq_exe().map_err(io_error(log))?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io_error(log))?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(io_error(log))?;
        Ok(Process { child })
    }

    fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server of the pair.
#[derive(Debug)]
pub struct Node {
    pub profile: PathBuf,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    process: Option<Process>,
}

/// A replicated pair and its gateway on free ports, in
/// `pair-<purpose>-<spec>` under the caller's directory. Dropping it kills
/// the servers, then the gateway, and removes the journals (the logs stay).
#[derive(Debug)]
pub struct LocalPair {
    pub dir: PathBuf,
    pub nodes: [Node; 2],
    gateway: Option<Process>,
    /// The profiles' worst-case failover (detection and lock intervals).
    pub failover_bound: Duration,
}

impl LocalPair {
    /// Writes the profiles, starts the gateway and both servers.
    pub fn start(run_dir: &Path, purpose: &str, spec: PairSpec) -> Result<LocalPair, BenchError> {
        let dir = run_dir.join(format!("pair-{}", spec.label(purpose)));
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let lock_file = dir.join("ha.lock");
        std::fs::File::create(&lock_file).map_err(io_error(&lock_file))?;
        let shipped = shipped_profiles()?;
        let [c0, c1, a0, a1, l0, l1, gateway] = free_addrs().map_err(io_error(&dir))?;
        let (clients, admins, links) = ([c0, c1], [a0, a1], [l0, l1]);
        // Every address either shipped profile names, with its replacement.
        let mut rewrites = vec![(shipped[0].ha.as_ref().map(|ha| ha.gateway), gateway)];
        for (i, profile) in shipped.iter().enumerate() {
            rewrites.push((Some(profile.server.client_listen), clients[i]));
            rewrites.push((Some(profile.server.admin_listen), admins[i]));
            rewrites.push((profile.ha.as_ref().map(|ha| ha.listen), links[i]));
        }
        let shown = dir.display().to_string();
        let mut nodes = Vec::new();
        for (i, (name, text)) in [
            ("primary", REPLICATED_PRIMARY),
            ("secondary", REPLICATED_SECONDARY),
        ]
        .into_iter()
        .enumerate()
        {
            let mut text = text.replace(SHIPPED_DIR, &shown).replace(
                "standby = \"hot\"",
                &format!("standby = \"{}\"", spec.standby),
            );
            for (from, to) in &rewrites {
                if let Some(from) = from {
                    text = text.replace(&format!("\"{from}\""), &format!("\"{to}\""));
                }
            }
            text += &format!(
                "\n[net.ha]\nnodelay = {}\nsend_buffer_bytes = {b}\nrecv_buffer_bytes = {b}\n",
                spec.nodelay,
                b = spec.buffer_bytes
            );
            let profile = dir.join(format!("{name}.toml"));
            let parsed = Profile::parse_with_warnings(&text, &profile.display().to_string())
                .map_err(|e| failure(&profile, e.to_string()))?
                .0;
            let data_dir = dir.join(name);
            // The rewrite is text replacement on the shipped files: check it
            // took everywhere, so the bench never runs a pair it did not mean
            // to (a port of `twinmq up`'s pair, the shipped standby).
            let ha = parsed.ha.as_ref();
            let as_meant = parsed.server.client_listen == clients[i]
                && parsed.server.admin_listen == admins[i]
                && parsed.server.data_dir == data_dir
                && ha.is_some_and(|ha| {
                    ha.mode == HaMode::Replicated
                        && ha.listen == links[i]
                        && ha.peer == links[1 - i]
                        && ha.peer_client == Some(clients[1 - i])
                        && ha.gateway == gateway
                        && ha.lock_file == lock_file
                        && ha.standby == spec.standby
                        && ha.ack_mode == HaAckMode::Replicated
                })
                && parsed.net.ha.nodelay == spec.nodelay
                && parsed.net.ha.send_buffer_bytes == spec.buffer_bytes
                && parsed.net.ha.recv_buffer_bytes == spec.buffer_bytes;
            if !as_meant {
                return Err(failure(
                    &profile,
                    "the shipped replicated profile no longer rewrites as the bench expects \
                     (addresses, data directory, standby, ack mode or [net.ha])"
                        .to_owned(),
                ));
            }
            std::fs::write(&profile, text).map_err(io_error(&profile))?;
            nodes.push(Node {
                log: dir.join(format!("{name}.log")),
                profile,
                data_dir,
                client: clients[i],
                admin: admins[i],
                process: None,
            });
        }
        let failover_bound = shipped[0]
            .ha
            .as_ref()
            .map_or(Duration::ZERO, |ha| ha.worst_case_failover());
        let gateway_log = dir.join("gateway.log");
        let mut pair = LocalPair {
            nodes: nodes.try_into().expect("two nodes"),
            gateway: Some(Process::spawn(
                &["gateway", "--listen", &gateway.to_string()],
                &gateway_log,
            )?),
            dir,
            failover_bound,
        };
        wait_for(&gateway_log, "the gateway to listen", START_TIMEOUT, || {
            TcpStream::connect(gateway).ok().map(drop)
        })?;
        pair.spawn_node(0)?;
        pair.spawn_node(1)?;
        pair.wait_up(0)?;
        pair.wait_up(1)?;
        Ok(pair)
    }

    pub fn spawn_node(&mut self, i: usize) -> Result<(), BenchError> {
        let node = &mut self.nodes[i];
        let profile = node.profile.to_string_lossy().into_owned();
        node.process = Some(Process::spawn(
            &["server", "--profile", &profile],
            &node.log,
        )?);
        Ok(())
    }

    /// Waits until server `i` answers on its admin endpoint.
    pub fn wait_up(&mut self, i: usize) -> Result<(), BenchError> {
        let node = &mut self.nodes[i];
        let deadline = Instant::now() + START_TIMEOUT;
        while crate::admin::request(node.admin, "status").is_err() {
            if node.process.as_mut().is_none_or(Process::exited) || Instant::now() > deadline {
                return Err(failure(&node.log, "server did not start".to_owned()));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    pub fn start_node(&mut self, i: usize) -> Result<(), BenchError> {
        self.spawn_node(i)?;
        self.wait_up(i)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].process = None;
    }

    pub fn url(&self) -> String {
        format!("twinmq://{},{}", self.nodes[0].client, self.nodes[1].client)
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        let line = crate::admin::request(self.nodes[i].admin, "status").ok()?;
        serde_json::from_str(&line).ok()
    }

    /// Waits until one server is ACTIVE with every shard streaming to the
    /// other, PASSIVE and in sync; returns the active's index.
    pub fn wait_in_sync(&self) -> Result<usize, BenchError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let states = [self.status(0), self.status(1)];
            let active = (0..2).find(|&i| {
                states[i]
                    .as_ref()
                    .is_some_and(|s| s.state == "ACTIVE" && all_in_sync(s))
                    && states[1 - i].as_ref().is_some_and(|s| s.state == "PASSIVE")
            });
            if let Some(active) = active {
                return Ok(active);
            }
            if Instant::now() > deadline {
                let state =
                    |s: &Option<Status>| s.as_ref().map_or("down".into(), |s| s.state.clone());
                return Err(failure(
                    &self.dir,
                    format!(
                        "the pair did not become ACTIVE + PASSIVE in sync within {START_TIMEOUT:?} \
                         (primary {}, secondary {})",
                        state(&states[0]),
                        state(&states[1])
                    ),
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for LocalPair {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.process = None;
        }
        self.gateway = None;
        // Hundreds of MiB of segments each; the logs stay for the findings.
        for node in &self.nodes {
            let _ = std::fs::remove_dir_all(&node.data_dir);
        }
    }
}

/// `N` distinct free loopback addresses, outside the kernel's ephemeral port
/// range: a server SIGKILLed and restarted must find its ports still free,
/// and the bench's own reconnection loops would otherwise take ports from
/// that range. All are held while they are chosen, so none repeats.
fn free_addrs<const N: usize>() -> std::io::Result<[SocketAddr; N]> {
    let (low, high) = ephemeral_ports();
    // A start per process, so concurrent runs seldom probe the same ports.
    let mut port = PORTS_FIRST + (std::process::id() % 64) as u16 * 128;
    let mut held = Vec::with_capacity(N);
    let mut tried = 0u32;
    while held.len() < N {
        if tried > u32::from(u16::MAX) {
            return Err(std::io::Error::other(
                "no free port outside the ephemeral range",
            ));
        }
        tried += 1;
        port = if port == u16::MAX {
            PORTS_FIRST
        } else {
            port + 1
        };
        if (low..=high).contains(&port) {
            continue;
        }
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    let addrs: Vec<SocketAddr> = held
        .iter()
        .map(TcpListener::local_addr)
        .collect::<std::io::Result<_>>()?;
    Ok(addrs.try_into().expect("N listeners"))
}

/// The kernel's ephemeral port range (Linux's default when unreadable).
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((ports.next()??, ports.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// Polls `done` until it holds; an error names `log` after `timeout`.
pub fn wait_for<T>(
    log: &Path,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Option<T>,
) -> Result<T, BenchError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = done() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(failure(
                log,
                format!("timed out after {timeout:?} waiting for {what}"),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Every shard of `status` streams to a passive that has caught up.
pub fn all_in_sync(status: &Status) -> bool {
    status.replication.len() == status.shards
        && status.replication.iter().all(|r| r.stream_up && r.in_sync)
}
