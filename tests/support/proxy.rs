//! A TCP fault proxy for integration tests: it listens on a free loopback
//! port and forwards every connection it accepts to one target, both ways,
//! and can cut the link, hold (stall) it, or flip one bit in the stream on
//! request.
//!
//! ```text
//!   dialer ──▶ proxy.addr() ══ pump ToTarget ══▶ target
//!          ◀──               ══ pump FromTarget ═◀
//! ```
//!
//! Plain threads and blocking sockets: one acceptor, two pumps per
//! connection. Every control takes `&self` and is safe from any thread.
//! `cut` returns only once every forwarded connection is closed, so a test
//! can assert on what follows without waiting and hoping. Dropping the proxy
//! closes everything and joins every thread it started.
//!
//! Include `server.rs` at the crate root as `server` (the proxy takes its
//! port from `server::free_port`). Tests that use `pair.rs` get this module
//! as `pair::proxy` (re-exported as `pair::Proxy`), so that tests which
//! include `pair.rs` need not know about it.
#![allow(dead_code)]

use crate::server::{READY_TIMEOUT, free_port};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the proxy waits for its target to accept a connection. The
/// target is on loopback: a closed port refuses at once, so this only bounds
/// a target that is stopped (SIGSTOP) with a full backlog.
const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes a pump moves per read.
const PUMP_BUFFER_BYTES: usize = 16 * 1024;

/// The bit `corrupt_once` flips: the lowest, so the damaged byte stays
/// printable in a failure message when the original was.
const CORRUPT_MASK: u8 = 0x01;

/// Which way bytes travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the dialer to the target.
    ToTarget,
    /// From the target back to the dialer.
    FromTarget,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToTarget => 0,
            Direction::FromTarget => 1,
        }
    }
}

/// One forwarded connection: both sockets (clones, kept to shut them down
/// from `cut`) and how many of its two pumps still run.
struct Link {
    dialer: TcpStream,
    target: TcpStream,
    pumps_running: u8,
}

impl Link {
    fn shutdown(&self) {
        // Errors only say the socket is already closed.
        let _ = self.dialer.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }
}

/// A pending `corrupt_once`.
struct Armed {
    direction: Direction,
    /// Bytes in `direction` still to pass before the one to flip.
    remaining: u64,
}

struct State {
    cut: bool,
    /// Pumps forward nothing (`hold`) until `release`.
    held: bool,
    stopping: bool,
    links: HashMap<u64, Link>,
    next_link: u64,
    armed: Option<Armed>,
    corrupted: bool,
    pumps: Vec<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    state: Mutex<State>,
    /// Signalled whenever a link goes away.
    link_closed: Condvar,
    /// Signalled when held pumps may go on (released, cut or stopping).
    released: Condvar,
    bytes: [AtomicU64; 2],
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking pump cannot leave the state half-changed: every update
        // is a single assignment or map operation.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Flips the armed bit if it falls inside `data`, the next bytes going
    /// in `direction`.
    fn corrupt(&self, direction: Direction, data: &mut [u8]) {
        let mut state = self.state();
        let Some(armed) = state.armed.as_mut() else {
            return;
        };
        if armed.direction != direction {
            return;
        }
        let len = data.len() as u64;
        if armed.remaining < len {
            data[armed.remaining as usize] ^= CORRUPT_MASK;
            state.armed = None;
            state.corrupted = true;
        } else {
            armed.remaining -= len;
        }
    }

    /// Blocks a pump while the proxy is held; `false` if it was cut or
    /// stopped meanwhile (the bytes the pump holds are then dropped).
    fn wait_released(&self) -> bool {
        let state = self.state();
        let state = self
            .released
            .wait_while(state, |s| s.held && !s.cut && !s.stopping)
            .unwrap_or_else(|e| e.into_inner());
        !state.cut && !state.stopping
    }

    fn pump_done(&self, id: u64) {
        let mut state = self.state();
        let link = state
            .links
            .get_mut(&id)
            .expect("a running pump has its link");
        link.pumps_running -= 1;
        if link.pumps_running == 0 {
            let link = state.links.remove(&id).expect("just seen");
            link.shutdown();
            self.link_closed.notify_all();
        }
    }
}

/// A running proxy; see the module documentation.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to
    /// `target`. The target need not be listening yet: a connection the
    /// target refuses is closed, as the target itself would have.
    pub fn start(target: SocketAddr) -> Proxy {
        // The port was free when `free_port` probed it; another process may
        // have taken it since: take the next one then.
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", free_port())) {
                Ok(listener) => break listener,
                Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(error) => panic!("proxy listener: {error}"),
            }
        };
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                cut: false,
                held: false,
                stopping: false,
                links: HashMap::new(),
                next_link: 0,
                armed: None,
                corrupted: false,
                pumps: Vec::new(),
            }),
            link_closed: Condvar::new(),
            released: Condvar::new(),
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("proxy-accept-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn the proxy's acceptor")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Where to connect to go through the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// Closes every forwarded connection (both sockets, both ways) and
    /// refuses new ones (accepted, then closed at once) until `heal`.
    /// Returns once every connection is gone.
    pub fn cut(&self) {
        let mut state = self.shared.state();
        state.cut = true;
        self.shared.released.notify_all();
        for link in state.links.values() {
            link.shutdown();
        }
        let (state, timeout) = self
            .shared
            .link_closed
            .wait_timeout_while(state, READY_TIMEOUT, |s| !s.links.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        assert!(
            !timeout.timed_out(),
            "proxy {}: {} connections still open {READY_TIMEOUT:?} after cut",
            self.addr,
            state.links.len()
        );
    }

    /// Forwards new connections again.
    pub fn heal(&self) {
        self.shared.state().cut = false;
    }

    /// Stalls every connection, both ways, without closing any: a pump
    /// keeps what it has read and reads no more, so bytes wait in the proxy
    /// and the sockets' buffers, and TCP's flow control stops the senders,
    /// as on a network path that stopped delivering. `release` forwards
    /// them; `cut` drops them.
    pub fn hold(&self) {
        self.shared.state().held = true;
    }

    /// Ends a `hold`: everything waiting goes on, in order.
    pub fn release(&self) {
        self.shared.state().held = false;
        self.shared.released.notify_all();
    }

    /// Arms a one-time corruption: the byte `after_bytes` bytes into what
    /// next travels in `direction` (counted from now, across all connections)
    /// gets one bit flipped, then the proxy forwards faithfully again.
    /// Replaces a corruption armed earlier that has not happened yet.
    pub fn corrupt_once(&self, direction: Direction, after_bytes: u64) {
        let mut state = self.shared.state();
        state.armed = Some(Armed {
            direction,
            remaining: after_bytes,
        });
        state.corrupted = false;
    }

    /// Whether the last armed corruption has happened.
    pub fn corrupted(&self) -> bool {
        self.shared.state().corrupted
    }

    /// Connections being forwarded now.
    pub fn connections(&self) -> usize {
        self.shared.state().links.len()
    }

    /// Bytes forwarded in `direction` since the proxy started.
    pub fn bytes(&self, direction: Direction) -> u64 {
        self.shared.bytes[direction.index()].load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.state();
            state.stopping = true;
            state.cut = true;
            for link in state.links.values() {
                link.shutdown();
            }
            self.shared.released.notify_all();
        }
        // Wake the acceptor, blocked in accept, so it sees `stopping`. The
        // listener is ours and open, so the connection lands in its backlog
        // even if the acceptor is busy.
        let woken = TcpStream::connect_timeout(&self.addr, TARGET_CONNECT_TIMEOUT);
        // An acceptor that cannot be woken is left detached rather than
        // hang the test in a destructor.
        if let Some(acceptor) = self.acceptor.take()
            && woken.is_ok()
        {
            let _ = acceptor.join();
        }
        // No link can be added once `stopping` is set, and every existing
        // one is shut down, so each pump is at or near its end.
        let pumps = std::mem::take(&mut self.shared.state().pumps);
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for incoming in listener.incoming() {
        let (stopping, cut) = {
            let state = shared.state();
            (state.stopping, state.cut)
        };
        if stopping {
            return;
        }
        let Ok(dialer) = incoming else {
            continue;
        };
        if cut {
            // Refused: dropping the socket closes it.
            continue;
        }
        let Ok(target) = TcpStream::connect_timeout(&shared.target, TARGET_CONNECT_TIMEOUT) else {
            continue;
        };
        register(shared, dialer, target);
    }
}

/// Starts forwarding between `dialer` and `target`, unless the proxy was cut
/// or stopped meanwhile (checked under the lock `cut` takes, so no
/// connection slips past a cut).
fn register(shared: &Arc<Shared>, dialer: TcpStream, target: TcpStream) {
    // Heartbeats and small replication frames must not wait for Nagle.
    let _ = dialer.set_nodelay(true);
    let _ = target.set_nodelay(true);
    let clones = (dialer.try_clone(), target.try_clone());
    let (Ok(dialer_read), Ok(target_read)) = clones else {
        return;
    };
    let mut state = shared.state();
    if state.cut || state.stopping {
        return;
    }
    let id = state.next_link;
    state.next_link += 1;
    state.links.insert(
        id,
        Link {
            dialer: dialer.try_clone().expect("clone a socket"),
            target: target.try_clone().expect("clone a socket"),
            pumps_running: 2,
        },
    );
    state.pumps.retain(|pump| !pump.is_finished());
    for (direction, from, to) in [
        (Direction::ToTarget, dialer_read, target),
        (Direction::FromTarget, target_read, dialer),
    ] {
        let shared = Arc::clone(shared);
        let pump = std::thread::Builder::new()
            .name(format!("proxy-pump-{id}"))
            .spawn(move || pump(&shared, id, direction, from, to))
            .expect("spawn a proxy pump");
        state.pumps.push(pump);
    }
}

/// Copies `from` to `to` until either side closes. An orderly end (EOF) is
/// passed on as a half-close, so a dialer that shuts down its writing side
/// is seen as such by the target; an error closes the whole connection.
fn pump(shared: &Shared, id: u64, direction: Direction, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; PUMP_BUFFER_BYTES];
    let orderly = loop {
        let n = match from.read(&mut buf) {
            // A held link passes the end on no sooner than bytes.
            Ok(0) => break shared.wait_released(),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break false,
        };
        if !shared.wait_released() {
            break false;
        }
        shared.corrupt(direction, &mut buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break false;
        }
        shared.bytes[direction.index()].fetch_add(n as u64, Ordering::Relaxed);
    };
    if orderly {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
    shared.pump_done(id);
}
