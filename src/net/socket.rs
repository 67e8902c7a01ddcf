//! Creating listeners and connections, and applying `SocketOptions` to them.

use super::{KEEPALIVE_PROBES, SocketOptions};
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};

/// Pending-connection queue of one listener. After a failover every client of
/// the failed server reconnects at once; 1024 per listener (and one listener
/// per shard with `reuse_port`) absorbs that storm without SYN drops. The
/// kernel silently caps it at `net.core.somaxconn` (4096 on current kernels).
pub const LISTEN_BACKLOG: i32 = 1024;

/// Creates a TCP listener bound to `addr`, in blocking mode.
///
/// `SO_REUSEADDR` is always set, so a restarted server can bind at once while
/// connections of its previous run linger in `TIME_WAIT`. With `reuse_port`,
/// `SO_REUSEPORT` is set as well: each shard thread then owns a listener on
/// the same port and the kernel spreads incoming connections across them.
/// Every listener sharing the port must ask for it.
///
/// Buffer sizes are applied here, before `listen`, because accepted sockets
/// inherit them and TCP negotiates its window scale in the handshake, before
/// [`configure`] can run on the accepted socket. Nagle and keepalive are
/// applied per connection by [`configure`].
///
/// Errors keep their [`io::ErrorKind`] and name the address and the step that
/// failed, e.g. `listen on 127.0.0.1:1856: bind: Address already in use`.
pub fn listen(
    addr: SocketAddr,
    options: &SocketOptions,
    reuse_port: bool,
) -> io::Result<TcpListener> {
    let context = move |step: &'static str| {
        move |e: io::Error| io::Error::new(e.kind(), format!("listen on {addr}: {step}: {e}"))
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(context("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(context("set SO_REUSEADDR"))?;
    if reuse_port {
        socket
            .set_reuse_port(true)
            .map_err(context("set SO_REUSEPORT"))?;
    }
    set_buffer_sizes(&socket, options).map_err(|(step, e)| context(step)(e))?;
    socket.bind(&addr.into()).map_err(context("bind"))?;
    socket.listen(LISTEN_BACKLOG).map_err(context("listen"))?;
    warn_if_buffers_capped(&socket, addr, options);
    Ok(socket.into())
}

/// Applies Nagle, buffer sizes, keepalive and `TCP_USER_TIMEOUT` to an
/// accepted or connected socket. Accepted sockets must go through this: which
/// options a socket inherits from its listener differs between kernels, so
/// nothing relies on it. Build the argument with `SockRef::from(&stream)`.
///
/// `TCP_USER_TIMEOUT` bounds how long sent data may sit unacknowledged before
/// the kernel drops the connection. Keepalive cannot do that: it probes only
/// idle connections, and a connection with data queued is not idle, so
/// without this bound a dead HA peer would go unnoticed by the socket for the
/// kernel's full retransmission time (about 15 minutes) while replication
/// data waits. 0 (`None`) is set explicitly too, clearing any inherited value.
pub fn configure(socket: &SockRef<'_>, options: &SocketOptions) -> io::Result<()> {
    let context = |step: &'static str| {
        move |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("configure socket {}: {step}: {e}", describe(socket)),
            )
        }
    };
    socket
        .set_tcp_nodelay(options.nodelay)
        .map_err(context("set TCP_NODELAY"))?;
    set_buffer_sizes(socket, options).map_err(|(step, e)| context(step)(e))?;
    match options.keepalive() {
        // Probes go out as often as the idle time, and only a few are
        // unanswered before the kernel gives up: see KEEPALIVE_PROBES.
        Some(idle) => socket
            .set_tcp_keepalive(
                &TcpKeepalive::new()
                    .with_time(idle)
                    .with_interval(idle)
                    .with_retries(KEEPALIVE_PROBES),
            )
            .map_err(context("set TCP keepalive"))?,
        // Set it off explicitly: an accepted socket may have inherited it.
        None => socket
            .set_keepalive(false)
            .map_err(context("clear SO_KEEPALIVE"))?,
    }
    socket
        .set_tcp_user_timeout(options.tcp_user_timeout())
        .map_err(context("set TCP_USER_TIMEOUT"))?;
    Ok(())
}

/// Connects to `addr` within `connect_timeout_ms`, then [`configure`]s the
/// socket. The stream is returned in blocking mode.
///
/// Errors keep their [`io::ErrorKind`] and name the address, e.g.
/// `connect to 127.0.0.1:1856: Connection refused`.
pub fn connect(addr: SocketAddr, options: &SocketOptions) -> io::Result<TcpStream> {
    let context = move |step: &'static str| {
        move |e: io::Error| io::Error::new(e.kind(), format!("connect to {addr}: {step}: {e}"))
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(context("socket"))?;
    // Buffer sizes before connecting: the receive buffer fixes the window
    // scale offered in the SYN.
    set_buffer_sizes(&socket, options).map_err(|(step, e)| context(step)(e))?;
    socket
        .connect_timeout(&addr.into(), options.connect_timeout())
        .map_err(|e| {
            let why = if e.kind() == io::ErrorKind::TimedOut {
                format!("no answer within {} ms", options.connect_timeout_ms)
            } else {
                e.to_string()
            };
            io::Error::new(e.kind(), format!("connect to {addr}: {why}"))
        })?;
    configure(&SockRef::from(&socket), options)?;
    Ok(socket.into())
}

/// Requests the non-zero buffer sizes of `options`. On failure returns the
/// step that failed, for the caller's context.
fn set_buffer_sizes(
    socket: &Socket,
    options: &SocketOptions,
) -> Result<(), (&'static str, io::Error)> {
    if options.send_buffer_bytes > 0 {
        socket
            .set_send_buffer_size(options.send_buffer_bytes as usize)
            .map_err(|e| ("set SO_SNDBUF", e))?;
    }
    if options.recv_buffer_bytes > 0 {
        socket
            .set_recv_buffer_size(options.recv_buffer_bytes as usize)
            .map_err(|e| ("set SO_RCVBUF", e))?;
    }
    Ok(())
}

/// Warns when the kernel granted less buffer than asked. Linux caps requests
/// at `net.core.wmem_max` / `rmem_max` without an error, and reports twice the
/// size it granted (the extra half is its bookkeeping), so a capped request
/// shows as a reported size below twice the request. Called once per listener,
/// never per connection.
fn warn_if_buffers_capped(socket: &Socket, addr: SocketAddr, options: &SocketOptions) {
    let checks = [
        (
            "send_buffer_bytes",
            "net.core.wmem_max",
            options.send_buffer_bytes,
            socket.send_buffer_size(),
        ),
        (
            "recv_buffer_bytes",
            "net.core.rmem_max",
            options.recv_buffer_bytes,
            socket.recv_buffer_size(),
        ),
    ];
    for (key, sysctl, requested, reported) in checks {
        if let Ok(reported) = reported
            && requested > 0
            && reported / 2 < requested as usize
        {
            tracing::warn!(
                %addr,
                requested,
                granted = reported / 2,
                "the kernel capped {key}; raise {sysctl} to get the requested size"
            );
        }
    }
}

/// Names a socket in an error: its peer if connected, else its local address.
fn describe(socket: &Socket) -> String {
    let address = |a: io::Result<socket2::SockAddr>| a.ok().and_then(|a| a.as_socket());
    match (address(socket.peer_addr()), address(socket.local_addr())) {
        (Some(peer), _) => format!("to {peer}"),
        (None, Some(local)) => format!("on {local}"),
        (None, None) => "(unbound)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const LOOPBACK_ANY_PORT: &str = "127.0.0.1:0";

    fn loopback() -> SocketAddr {
        LOOPBACK_ANY_PORT.parse().unwrap()
    }

    /// Small enough to stay under the default `net.core.{w,r}mem_max`
    /// (212992), so the kernel grants it in full on any test machine.
    const TEST_BUFFER_BYTES: u32 = 64 * 1024;

    #[test]
    fn reuse_port_lets_each_shard_own_a_listener_on_one_port() {
        let options = SocketOptions::default();
        let first = listen(loopback(), &options, true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = listen(addr, &options, true).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        assert!(SockRef::from(&first).reuse_port().unwrap());
        assert!(SockRef::from(&second).reuse_port().unwrap());
        // Either listener may get the connection; it must reach one of them.
        let _stream = connect(addr, &options).unwrap();
    }

    #[test]
    fn second_listener_without_reuse_port_is_refused_naming_the_address() {
        let options = SocketOptions::default();
        let first = listen(loopback(), &options, false).unwrap();
        let addr = first.local_addr().unwrap();
        let error = listen(addr, &options, false).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("listen on {addr}: bind: ")),
            "{text}"
        );
    }

    #[test]
    fn listener_gets_the_requested_buffer_sizes() {
        let options = SocketOptions {
            send_buffer_bytes: TEST_BUFFER_BYTES,
            recv_buffer_bytes: TEST_BUFFER_BYTES,
            ..SocketOptions::default()
        };
        let listener = listen(loopback(), &options, false).unwrap();
        let socket = SockRef::from(&listener);
        // The kernel reports twice what it granted, hence >= rather than ==.
        assert!(socket.send_buffer_size().unwrap() >= TEST_BUFFER_BYTES as usize);
        assert!(socket.recv_buffer_size().unwrap() >= TEST_BUFFER_BYTES as usize);
    }

    fn assert_applied(socket: &SockRef<'_>, options: &SocketOptions) {
        assert_eq!(socket.tcp_nodelay().unwrap(), options.nodelay);
        assert_eq!(socket.keepalive().unwrap(), options.keepalive().is_some());
        if let Some(idle) = options.keepalive() {
            assert_eq!(socket.tcp_keepalive_time().unwrap(), idle);
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), idle);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        }
        assert!(socket.send_buffer_size().unwrap() >= options.send_buffer_bytes as usize);
        assert!(socket.recv_buffer_size().unwrap() >= options.recv_buffer_bytes as usize);
        // The kernel reports 0 for "not set", which socket2 maps to None.
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            options.tcp_user_timeout()
        );
    }

    #[test]
    fn connected_and_accepted_sockets_carry_the_options() {
        let options = SocketOptions {
            nodelay: true,
            keepalive_secs: 7,
            send_buffer_bytes: TEST_BUFFER_BYTES,
            recv_buffer_bytes: TEST_BUFFER_BYTES,
            tcp_user_timeout_ms: 2_000,
            ..SocketOptions::default()
        };
        let listener = listen(loopback(), &options, false).unwrap();
        let addr = listener.local_addr().unwrap();
        let connected = connect(addr, &options).unwrap();
        assert_eq!(connected.peer_addr().unwrap(), addr);
        assert_applied(&SockRef::from(&connected), &options);

        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, connected.local_addr().unwrap());
        configure(&SockRef::from(&accepted), &options).unwrap();
        assert_applied(&SockRef::from(&accepted), &options);

        // Options are set both ways, not only turned on.
        let off = SocketOptions {
            nodelay: false,
            keepalive_secs: 0,
            tcp_user_timeout_ms: 0,
            ..SocketOptions::default()
        };
        configure(&SockRef::from(&accepted), &off).unwrap();
        assert_applied(&SockRef::from(&accepted), &off);
    }

    #[test]
    fn connect_to_a_closed_port_fails_fast_naming_the_address() {
        // Bind then drop a listener to get a loopback port nobody listens on.
        let addr = listen(loopback(), &SocketOptions::default(), false)
            .unwrap()
            .local_addr()
            .unwrap();
        let options = SocketOptions::default();
        let started = Instant::now();
        let error = connect(addr, &options).unwrap_err();
        // A refusal comes back at once; only a silent peer waits out the timeout.
        assert!(started.elapsed() < options.connect_timeout() / 2);
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
        let text = error.to_string();
        assert!(text.starts_with(&format!("connect to {addr}: ")), "{text}");
    }

    #[test]
    fn configure_error_names_the_socket() {
        // A UDP socket refuses TCP_NODELAY, which exercises the error path.
        let socket = std::net::UdpSocket::bind(loopback()).unwrap();
        let local = socket.local_addr().unwrap();
        let error = configure(&SockRef::from(&socket), &SocketOptions::default()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with(&format!("configure socket on {local}: set TCP_NODELAY: ")),
            "{text}"
        );
    }
}
