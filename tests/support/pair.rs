//! A shared-store HA pair as real processes on loopback: a gateway, a
//! primary and a secondary on free ports around one data directory and lock
//! file in a temporary directory.
#![allow(dead_code)]

use super::server::{READY_TIMEOUT, free_port, wait_until};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub struct Node {
    pub name: &'static str,
    pub profile: PathBuf,
    pub client: SocketAddr,
    pub admin: SocketAddr,
    pub child: Option<Child>,
}

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub gateway: SocketAddr,
    gateway_child: Option<Child>,
    pub nodes: [Node; 2],
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

impl Pair {
    /// Writes the profiles (small journal segments, so tests stay quick)
    /// and starts the gateway; servers start with `start`.
    pub fn new() -> Pair {
        Pair::with_journal("segment_bytes = 1048576\nbatch_bytes_max = 262144\n")
    }

    /// As `new`, with this `[journal]` section (empty: the shipped defaults).
    pub fn with_journal(journal: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let gateway = addr(free_port());
        let ha = [free_port(), free_port()];
        let clients = [addr(free_port()), addr(free_port())];
        let admins = [addr(free_port()), addr(free_port())];
        std::fs::File::create(dir.path().join("ha.lock")).unwrap();
        let names = ["primary", "secondary"];
        let nodes = [0, 1].map(|i| {
            let profile = dir.path().join(format!("{}.toml", names[i]));
            let text = format!(
                "[server]\nname = \"{name}\"\ndata_dir = \"{data}\"\nshards = 2\nclient_listen = \"{client}\"\nadmin_listen = \"{admin}\"\n\n\
                 [journal]\n{journal}\n\
                 [ha]\nmode = \"shared\"\nrole = \"{name}\"\ncluster_id = \"test-pair\"\ncluster_key = \"test-cluster-key-0123\"\n\
                 listen = \"127.0.0.1:{listen}\"\npeer = \"127.0.0.1:{peer}\"\npeer_client = \"{peer_client}\"\n\
                 lock_file = \"{lock}\"\ngateway = \"{gateway}\"\n",
                name = names[i],
                data = dir.path().join("shared").display(),
                client = clients[i],
                admin = admins[i],
                listen = ha[i],
                peer = ha[1 - i],
                peer_client = clients[1 - i],
                lock = dir.path().join("ha.lock").display(),
            );
            std::fs::write(&profile, text).unwrap();
            Node { name: names[i], profile, client: clients[i], admin: admins[i], child: None }
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
            gateway,
            gateway_child,
            nodes,
        }
    }

    pub fn start(&mut self, i: usize) {
        let log = self.dir.path().join(format!("{}.log", self.nodes[i].name));
        let profile = self.nodes[i].profile.to_string_lossy().into_owned();
        self.nodes[i].child = Some(spawn(&["server", "--profile", &profile], &log));
        let admin = self.nodes[i].admin;
        wait_until(READY_TIMEOUT, "the server's admin endpoint", || {
            twinmq::admin::request(admin, "status").is_ok()
        });
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
