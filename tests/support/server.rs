//! Real `twinmq server` processes for integration tests: a profile with free
//! loopback ports in a temporary directory, start, wait until ready (a
//! condition with a deadline, never a bare sleep), stop, kill -9, restart.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start or stop in a test.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A free loopback port for a server a test starts.
///
/// Taken below the kernel's ephemeral range (32768 and up by default) and
/// never twice in one process: a port picked by binding port 0 could be
/// taken by a concurrent test's outgoing connection before the server binds
/// it (seen as "Address already in use").
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const BLOCK: u16 = 1000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Test binaries run one at a time, but give each process its own block.
    let base = 20_000 + (std::process::id() % 12) as u16 * BLOCK;
    loop {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % BLOCK;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub struct ServerProcess {
    pub dir: tempfile::TempDir,
    pub profile: PathBuf,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    child: Option<Child>,
}

impl ServerProcess {
    /// A server with `extra` TOML appended to its profile (sections after
    /// `[server]`, e.g. `[broker]\nmax_deliveries = 2`).
    pub fn start(shards: u32, extra: &str) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let profile = dir.path().join("server.toml");
        let text = format!(
            "[server]\nname = \"test\"\ndata_dir = \"{}\"\nshards = {shards}\nclient_listen = \"{client}\"\nadmin_listen = \"{admin}\"\n\n\
             [journal]\nsegment_bytes = 1048576\nbatch_bytes_max = 262144\n\n{extra}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&profile, text).unwrap();
        let mut server = ServerProcess {
            dir,
            profile,
            client,
            admin,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("twinmq://{}", self.client)
    }

    /// Starts the process (again) and waits until it answers `status`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_twinmq"))
            .args(["server", "--profile"])
            .arg(&self.profile)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let admin = self.admin;
        let mut exited = None;
        wait_until(READY_TIMEOUT, "the server to answer status", || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                exited = Some(status);
                return true;
            }
            twinmq::admin::request(admin, "status").is_ok()
        });
        if let Some(status) = exited {
            panic!("server exited at start-up ({status}):\n{}", self.log());
        }
    }

    pub fn status(&self) -> twinmq::admin::Status {
        let line = twinmq::admin::request(self.admin, "status").unwrap();
        serde_json::from_str(&line).unwrap()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Clean stop through the admin endpoint.
    pub fn stop(&mut self) {
        twinmq::admin::request(self.admin, "shutdown").unwrap();
        let mut child = self.child.take().unwrap();
        let mut done = None;
        wait_until(READY_TIMEOUT, "the server to exit", || {
            done = child.try_wait().unwrap();
            done.is_some()
        });
        assert!(
            done.unwrap().success(),
            "clean stop exits 0:\n{}",
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
