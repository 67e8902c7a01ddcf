//! The gateway: a witness on a third machine that lets a server of a pair
//! tell "my peer is down" from "I am cut off".
//!
//! ```text
//!   server A ──ping──▶ gateway responder ◀──ping── server B
//!            connect within the timeout, send one probe byte, wait
//!            (same timeout) for the echo; `twinmq gateway --listen ADDR`
//! ```
//!
//! What it owns: [`ping`] (and [`probe`], which says why), and the
//! responder that `twinmq gateway` runs ([`serve`], [`GatewayResponder`]).
//!
//! What it must never do: keep state about the pair or decide anything
//! (the state machine weighs the answer), retry (the driver pings every
//! interval), block longer than the timeouts it is given, or let any input
//! crash or wedge the responder.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The byte a ping sends and expects back.
pub const PROBE_BYTE: u8 = b'?';

/// Bytes the responder echoes on one connection before it closes it. A ping
/// needs one; the bound keeps a client from using the responder as a free
/// bandwidth reflector.
pub const ECHO_BYTES_MAX: usize = 4096;

/// Connections the responder serves at once. Two servers ping it once per
/// interval each; the rest of the room absorbs slow or stray clients.
/// Connections beyond it are accepted and closed at once, which a ping still
/// counts as reachable.
pub const RESPONDER_CONNECTIONS_MAX: usize = 64;

/// How long the responder waits for the next bytes of a connection, or for
/// its echo to be taken, before closing it.
pub const RESPONDER_IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest a connection may stay open on the responder, however it trickles
/// bytes, so stray clients cannot hold every slot for long.
pub const RESPONDER_CONNECTION_LIFETIME: Duration = Duration::from_secs(5);

/// How often an idle responder checks its stop flag. Connections wake it at
/// once; this only bounds how long stopping takes.
pub const RESPONDER_STOP_CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// What a ping found, for logs; [`Self::is_reachable`] is the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// Connected, and the probe byte came back: machine and responder up.
    Echoed,
    /// Connected, then the peer closed cleanly without echoing: a plain
    /// TCP service.
    Closed,
    /// Connected, and the peer sent something other than the echo: another
    /// kind of service.
    OtherAnswer,
    /// Connected, but nothing came back within the timeout: a listener that
    /// does not accept, or a wedged responder.
    Silent,
    /// Connected, then the connection was reset or failed.
    Broken(io::ErrorKind),
    /// Refused: nothing listens on that port.
    Refused,
    /// No connection within the timeout.
    TimedOut,
    /// The connection failed otherwise (no route, network down, ...).
    Unreachable(io::ErrorKind),
}

impl PingOutcome {
    /// Whether the gateway counts as reachable: whenever a connection was
    /// made. The three-way handshake is a round trip to the gateway
    /// machine through a port someone chose to listen on; that is what a
    /// witness has to prove (that this server is not cut off), so a
    /// responder that is slow, wedged or replaced by another service still
    /// counts. A refusal does not: nothing listens where the profile points.
    pub fn is_reachable(self) -> bool {
        match self {
            PingOutcome::Echoed
            | PingOutcome::Closed
            | PingOutcome::OtherAnswer
            | PingOutcome::Silent
            | PingOutcome::Broken(_) => true,
            PingOutcome::Refused | PingOutcome::TimedOut | PingOutcome::Unreachable(_) => false,
        }
    }
}

/// Whether the gateway at `addr` is reachable: see [`probe`] and
/// [`PingOutcome::is_reachable`].
pub fn ping(addr: SocketAddr, timeout: Duration) -> bool {
    probe(addr, timeout).is_reachable()
}

/// Connects to `addr` within `timeout`; if that succeeds, sends
/// [`PROBE_BYTE`] and waits up to `timeout` again for an answer. Takes at
/// most about twice `timeout`.
///
/// # Panics
///
/// If `timeout` is zero (the profile's intervals are at least 10 ms).
pub fn probe(addr: SocketAddr, timeout: Duration) -> PingOutcome {
    assert!(!timeout.is_zero(), "gateway ping with a zero timeout");
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => stream,
        Err(error) => {
            return match error.kind() {
                io::ErrorKind::ConnectionRefused => PingOutcome::Refused,
                io::ErrorKind::TimedOut => PingOutcome::TimedOut,
                kind => PingOutcome::Unreachable(kind),
            };
        }
    };
    match exchange(&mut stream, timeout) {
        Ok(outcome) => outcome,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => PingOutcome::Silent,
        Err(error) => PingOutcome::Broken(error.kind()),
    }
}

/// Sends the probe on a connected `stream` and classifies the answer.
fn exchange(stream: &mut TcpStream, timeout: Duration) -> io::Result<PingOutcome> {
    // One byte each way: do not let Nagle hold the probe back.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(&[PROBE_BYTE])?;
    let mut answer = [0u8; 1];
    loop {
        return match stream.read(&mut answer) {
            Ok(0) => Ok(PingOutcome::Closed),
            Ok(_) if answer[0] == PROBE_BYTE => Ok(PingOutcome::Echoed),
            Ok(_) => Ok(PingOutcome::OtherAnswer),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            // A read timeout shows as WouldBlock on Linux.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(PingOutcome::Silent)
            }
            Err(error) => Err(error),
        };
    }
}

/// Runs the responder on `listener` in a thread of its own until `stop` is
/// set: accepts connections and echoes what each sends, up to
/// [`ECHO_BYTES_MAX`] bytes, within [`RESPONDER_IO_TIMEOUT`] per read and
/// [`RESPONDER_CONNECTION_LIFETIME`] in all. The thread ends within
/// [`RESPONDER_STOP_CHECK_INTERVAL`] of `stop` and closes the listener;
/// connections still open end on their own timeouts.
///
/// # Panics
///
/// If the thread cannot be created, like `std::thread::spawn`.
pub fn serve(listener: TcpListener, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("twinmq-gateway".into())
        .spawn(move || accept_loop(listener, &stop))
        .expect("spawn the gateway responder thread")
}

/// The responder as an owned handle: [`Self::stop`] (or dropping it) stops
/// the accept loop and waits for it.
#[derive(Debug)]
pub struct GatewayResponder {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GatewayResponder {
    /// Starts [`serve`] on `listener`.
    pub fn start(listener: TcpListener) -> io::Result<GatewayResponder> {
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve(listener, Arc::clone(&stop));
        Ok(GatewayResponder {
            local_addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port the kernel chose, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes the listener and waits for the accept loop.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the gateway responder thread panicked");
        }
    }
}

impl Drop for GatewayResponder {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop(listener: TcpListener, stop: &AtomicBool) {
    // Non-blocking, so a connection reset between the wake-up and accept
    // cannot block the loop (and so its stop check) indefinitely.
    if let Err(error) = listener.set_nonblocking(true) {
        tracing::error!("gateway responder: cannot make the listener non-blocking: {error}");
        return;
    }
    let open = Arc::new(AtomicUsize::new(0));
    // Accept errors (out of file descriptors, most likely) are logged once
    // until an accept succeeds again, not on every wake-up.
    let mut failing = false;
    while !stop.load(Ordering::Acquire) {
        match crate::io::wait_readable(listener.as_fd(), RESPONDER_STOP_CHECK_INTERVAL) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                tracing::error!("gateway responder: waiting for connections failed: {error}");
                return;
            }
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    failing = false;
                    start_connection(stream, peer, &open);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    if !failing {
                        tracing::warn!("gateway responder: accept failed: {error}");
                        failing = true;
                    }
                    // Back off: the condition (EMFILE) does not clear at once.
                    std::thread::sleep(RESPONDER_STOP_CHECK_INTERVAL);
                    break;
                }
            }
        }
    }
}

/// Counts a connection while its thread runs, even if the thread panics.
struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn start_connection(stream: TcpStream, peer: SocketAddr, open: &Arc<AtomicUsize>) {
    if open.fetch_add(1, Ordering::AcqRel) >= RESPONDER_CONNECTIONS_MAX {
        open.fetch_sub(1, Ordering::AcqRel);
        tracing::debug!(%peer, "gateway responder full; closing the connection");
        return;
    }
    let slot = OpenSlot(Arc::clone(open));
    let spawned = std::thread::Builder::new()
        .name("twinmq-gateway-conn".into())
        .spawn(move || {
            let _slot = slot;
            if let Err(error) = echo(stream) {
                tracing::trace!(%peer, "gateway connection ended: {error}");
            }
        });
    if let Err(error) = spawned {
        // The closure, and with it the stream and the slot, was dropped.
        tracing::debug!(%peer, "gateway responder cannot start a thread: {error}");
    }
}

/// Echoes what `stream` sends until it closes, goes quiet, reaches
/// [`ECHO_BYTES_MAX`] or outlives [`RESPONDER_CONNECTION_LIFETIME`].
fn echo(mut stream: TcpStream) -> io::Result<()> {
    let deadline = Instant::now() + RESPONDER_CONNECTION_LIFETIME;
    // Accepted sockets do not inherit O_NONBLOCK on Linux; be explicit.
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(RESPONDER_IO_TIMEOUT))?;
    let mut buf = [0u8; 512];
    let mut echoed = 0;
    while echoed < ECHO_BYTES_MAX {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left.min(RESPONDER_IO_TIMEOUT)))?;
        let want = buf.len().min(ECHO_BYTES_MAX - echoed);
        match stream.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                stream.write_all(&buf[..n])?;
                echoed += n;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Short, so the tests that wait it out stay fast; long enough for a
    /// loopback round trip on a loaded test machine.
    const TIMEOUT: Duration = Duration::from_millis(200);

    fn loopback_listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn responder() -> GatewayResponder {
        GatewayResponder::start(loopback_listener()).unwrap()
    }

    #[test]
    fn ping_to_a_running_responder_is_echoed() {
        let responder = responder();
        assert_eq!(probe(responder.local_addr(), TIMEOUT), PingOutcome::Echoed);
        assert!(ping(responder.local_addr(), TIMEOUT));
    }

    #[test]
    fn ping_to_a_closed_loopback_port_is_refused_at_once() {
        let addr = loopback_listener().local_addr().unwrap();
        let long = Duration::from_secs(5);
        let started = Instant::now();
        assert_eq!(probe(addr, long), PingOutcome::Refused);
        assert!(!ping(addr, long));
        assert!(started.elapsed() < long / 2, "{:?}", started.elapsed());
    }

    #[test]
    fn listener_that_never_accepts_counts_as_reachable() {
        // The kernel completes the handshake from the backlog: the machine
        // is up and something listens, even if nothing answers.
        let listener = loopback_listener();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        assert_eq!(probe(addr, TIMEOUT), PingOutcome::Silent);
        assert!(started.elapsed() >= TIMEOUT);
        assert!(ping(addr, TIMEOUT));
        drop(listener);
    }

    #[test]
    fn plain_tcp_service_that_closes_without_echo_counts_as_reachable() {
        let listener = loopback_listener();
        let addr = listener.local_addr().unwrap();
        let service = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut stream, _) = listener.accept().unwrap();
                // Take the probe so the close is a clean FIN, not a reset.
                let mut probe = [0u8; 1];
                stream.read_exact(&mut probe).unwrap();
            }
        });
        assert_eq!(probe(addr, TIMEOUT), PingOutcome::Closed);
        assert!(ping(addr, TIMEOUT));
        service.join().unwrap();
    }

    #[test]
    fn service_that_answers_something_else_counts_as_reachable() {
        let listener = loopback_listener();
        let addr = listener.local_addr().unwrap();
        let service = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"SSH-2.0-banner\r\n").unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
        });
        let outcome = probe(addr, TIMEOUT);
        assert_eq!(outcome, PingOutcome::OtherAnswer);
        assert!(outcome.is_reachable());
        service.join().unwrap();
    }

    #[test]
    fn responder_echoes_at_most_its_limit_then_closes() {
        let responder = responder();
        let mut stream = TcpStream::connect(responder.local_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let sent = vec![b'x'; ECHO_BYTES_MAX + 1000];
        let mut writer = stream.try_clone().unwrap();
        let writing = std::thread::spawn(move || {
            // The responder may close (and reset) before taking it all.
            let _ = writer.write_all(&sent);
        });
        let mut echoed = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => echoed.extend_from_slice(&buf[..n]),
                // A reset once the responder closed with input unread.
                Err(error) if error.kind() == io::ErrorKind::ConnectionReset => break,
                Err(error) => panic!("{error}"),
            }
        }
        writing.join().unwrap();
        assert!(echoed.len() <= ECHO_BYTES_MAX, "{}", echoed.len());
        assert!(echoed.iter().all(|&b| b == b'x'));
        assert_eq!(probe(responder.local_addr(), TIMEOUT), PingOutcome::Echoed);
    }

    #[test]
    fn responder_survives_bad_and_abandoned_connections() {
        let responder = responder();
        let addr = responder.local_addr();
        let mut idle = Vec::new();
        for round in 0..20 {
            let mut stream = TcpStream::connect(addr).unwrap();
            match round % 4 {
                // Connect and vanish.
                0 => drop(stream),
                // Garbage, then close without reading the echo (a reset).
                1 => {
                    let _ = stream.write_all(&[0xff; 300]);
                }
                // Half-close: send, then no more input.
                2 => {
                    let _ = stream.write_all(b"\0\0\0");
                    let _ = stream.shutdown(std::net::Shutdown::Write);
                }
                // Stay open and silent.
                _ => idle.push(stream),
            }
        }
        assert_eq!(probe(addr, TIMEOUT), PingOutcome::Echoed);
    }

    #[test]
    fn stopped_responder_closes_its_port() {
        let responder = responder();
        let addr = responder.local_addr();
        // An open connection must not hold the stop back.
        let _idle = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        responder.stop();
        assert!(started.elapsed() < RESPONDER_STOP_CHECK_INTERVAL * 10);
        assert_eq!(probe(addr, TIMEOUT), PingOutcome::Refused);
    }

    #[test]
    fn serve_runs_until_its_flag_is_set() {
        let listener = loopback_listener();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve(listener, Arc::clone(&stop));
        assert!(ping(addr, TIMEOUT));
        stop.store(true, Ordering::Release);
        thread.join().unwrap();
        assert!(!ping(addr, TIMEOUT));
    }
}
