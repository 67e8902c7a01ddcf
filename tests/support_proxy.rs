//! The test fixtures' own tests: the fault proxy against a tiny echo server,
//! and the pair fixture's profiles (both modes) against the profile
//! validation the server runs at start-up.

#[path = "support/pair.rs"]
mod pair;
#[path = "support/server.rs"]
mod server;

use pair::{Direction, Mode, Pair, Proxy, ReplicatedOptions};
use server::{READY_TIMEOUT, free_port, wait_until};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use twinmq::config::{HaMode, HaStandalone, HaStandby, Profile};

/// A loopback echo server that also records every byte it received, so a
/// test can tell which direction a corruption happened in.
struct Echo {
    addr: SocketAddr,
    shared: Arc<EchoShared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct EchoShared {
    stopping: Mutex<bool>,
    accepted: Mutex<Vec<TcpStream>>,
    received: Mutex<Vec<u8>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Echo {
    fn start() -> Echo {
        let listener = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(EchoShared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if *shared.stopping.lock().unwrap() {
                        return;
                    }
                    let Ok(mut stream) = stream else { continue };
                    shared
                        .accepted
                        .lock()
                        .unwrap()
                        .push(stream.try_clone().unwrap());
                    let worker_shared = Arc::clone(&shared);
                    let worker = std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        loop {
                            let n = match stream.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            worker_shared
                                .received
                                .lock()
                                .unwrap()
                                .extend_from_slice(&buf[..n]);
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = stream.shutdown(Shutdown::Both);
                    });
                    shared.workers.lock().unwrap().push(worker);
                }
            })
        };
        Echo {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.shared.accepted.lock().unwrap().len()
    }

    fn received(&self) -> Vec<u8> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        *self.shared.stopping.lock().unwrap() = true;
        for stream in self.shared.accepted.lock().unwrap().iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wake the acceptor so it sees `stopping`.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        for worker in self.shared.workers.lock().unwrap().drain(..) {
            let _ = worker.join();
        }
    }
}

/// A client socket that fails the test rather than block forever.
fn dial(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(READY_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(READY_TIMEOUT)).unwrap();
    stream
}

/// Sends `data` and reads back as many bytes.
fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).unwrap();
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).unwrap();
    back
}

/// Asserts the peer closed `stream`: a read ends (EOF or reset) instead of
/// timing out.
fn assert_closed(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Ok(_) => panic!("read data from a connection that should be closed"),
        Err(e) => assert!(
            !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "the connection stayed open: {e}"
        ),
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn proxy_forwards_both_ways_passes_half_close_on_and_counts_bytes() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    assert_ne!(proxy.addr(), echo.addr);
    assert_eq!(proxy.target(), echo.addr);

    let mut first = dial(proxy.addr());
    assert_eq!(round_trip(&mut first, b"hello"), b"hello");
    let mut second = dial(proxy.addr());
    assert_eq!(round_trip(&mut second, b"again"), b"again");
    assert_eq!(proxy.connections(), 2);
    // A pump counts bytes once written on, which races with the reply.
    wait_until(READY_TIMEOUT, "10 bytes counted each way", || {
        proxy.bytes(Direction::ToTarget) == 10 && proxy.bytes(Direction::FromTarget) == 10
    });

    // More than the proxy's and the sockets' buffers, written from another
    // thread so the echo can flow back meanwhile; the writer's half-close
    // must reach the echo server, whose close must reach the reader.
    let data = pattern(1 << 20);
    let mut writer = first.try_clone().unwrap();
    let sent = data.clone();
    let writing = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    first.read_to_end(&mut back).unwrap();
    writing.join().unwrap();
    assert!(back == data, "1 MiB comes back unchanged");
    // Each pump counted its last bytes before passing the half-close on, so
    // the counts are final once the reader saw the end.
    wait_until(READY_TIMEOUT, "the finished connection to go", || {
        proxy.connections() == 1
    });
    assert_eq!(proxy.bytes(Direction::ToTarget), 10 + (1 << 20));
    assert_eq!(proxy.bytes(Direction::FromTarget), 10 + (1 << 20));
    assert!(!proxy.corrupted());

    drop(second);
    wait_until(READY_TIMEOUT, "no connection left", || {
        proxy.connections() == 0
    });
}

#[test]
fn cut_closes_every_connection_and_refuses_new_ones_until_heal() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    let mut clients: Vec<TcpStream> = (0..3).map(|_| dial(proxy.addr())).collect();
    for client in &mut clients {
        assert_eq!(round_trip(client, b"ping"), b"ping");
    }
    assert_eq!(proxy.connections(), 3);
    assert_eq!(echo.accepted(), 3);

    proxy.cut();
    assert_eq!(proxy.connections(), 0, "cut returns once all are closed");
    for client in &mut clients {
        assert_closed(client);
    }

    // While cut, a dial is accepted and closed at once; the target never
    // sees it.
    for _ in 0..3 {
        let mut refused = dial(proxy.addr());
        assert_closed(&mut refused);
    }
    assert_eq!(proxy.connections(), 0);
    assert_eq!(echo.accepted(), 3);

    proxy.heal();
    let mut healed = dial(proxy.addr());
    assert_eq!(round_trip(&mut healed, b"back"), b"back");
    assert_eq!(proxy.connections(), 1);
    assert_eq!(echo.accepted(), 4);
}

/// Sends and reads back `data` on a fresh connection through `proxy`.
fn echo_through(proxy: &Proxy, data: &[u8]) -> Vec<u8> {
    let mut client = dial(proxy.addr());
    round_trip(&mut client, data)
}

/// The one position where `a` and `b` differ, asserting it is exactly one
/// bit.
fn single_bit_flip(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(
        differing.len(),
        1,
        "exactly one byte differs: {differing:?}"
    );
    let i = differing[0];
    assert_eq!((a[i] ^ b[i]).count_ones(), 1, "exactly one bit flipped");
    i
}

#[test]
fn corrupt_once_to_target_flips_one_bit_at_the_position_counted_across_connections() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    let before = pattern(300);
    assert_eq!(echo_through(&proxy, &before), before, "not armed yet");

    proxy.corrupt_once(Direction::ToTarget, 1000);
    let first = pattern(600);
    assert_eq!(
        echo_through(&proxy, &first),
        first,
        "position 1000 not reached"
    );
    assert!(!proxy.corrupted());
    let second = pattern(1000);
    let back = echo_through(&proxy, &second);
    assert_eq!(single_bit_flip(&second, &back), 400, "1000 − 600 bytes in");
    assert!(proxy.corrupted());

    // The echo server received the flipped byte: it happened on the way in.
    let received = echo.received();
    let offset = before.len() + first.len();
    assert_eq!(received[offset..offset + second.len()], back[..]);

    let after = pattern(2000);
    assert_eq!(
        echo_through(&proxy, &after),
        after,
        "disarmed after one flip"
    );
    assert!(proxy.corrupted(), "stays reported until armed again");
}

#[test]
fn corrupt_once_from_target_leaves_the_target_s_input_alone() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    proxy.corrupt_once(Direction::FromTarget, 0);
    let data = pattern(100);
    let back = echo_through(&proxy, &data);
    assert_eq!(single_bit_flip(&data, &back), 0);
    assert!(proxy.corrupted());
    assert_eq!(echo.received(), data, "the target got the original bytes");

    // Arming again resets the report until the new flip happens.
    proxy.corrupt_once(Direction::FromTarget, 10_000);
    assert!(!proxy.corrupted());
    assert_eq!(echo_through(&proxy, &data), data);
}

#[test]
fn hold_stalls_both_ways_until_release_and_cut_drops_what_it_held() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    let mut client = dial(proxy.addr());
    assert_eq!(round_trip(&mut client, b"before"), b"before");

    proxy.hold();
    client.write_all(b"held").unwrap();
    // A bounded look for what must not happen: nothing reaches the target
    // or comes back while held.
    client
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut back = [0u8; 4];
    let stalled = client.read(&mut back).unwrap_err();
    assert!(
        matches!(stalled.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{stalled}"
    );
    assert_eq!(echo.received(), b"before");
    assert_eq!(proxy.connections(), 1, "held, not closed");

    proxy.release();
    client.set_read_timeout(Some(READY_TIMEOUT)).unwrap();
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"held");

    // Held bytes die with a cut: the target never sees them.
    proxy.hold();
    client.write_all(b"lost").unwrap();
    proxy.cut();
    assert_closed(&mut client);
    assert_eq!(echo.received(), b"beforeheld");
    proxy.release();
}

#[test]
fn dropping_the_proxy_closes_its_connections_and_frees_its_port() {
    let echo = Echo::start();
    let proxy = Proxy::start(echo.addr);
    let addr = proxy.addr();
    let mut client = dial(addr);
    assert_eq!(round_trip(&mut client, b"x"), b"x");
    drop(proxy);
    assert_closed(&mut client);
    assert!(
        TcpStream::connect(addr).is_err(),
        "nothing listens any more"
    );
}

#[test]
fn a_proxy_to_a_closed_port_closes_what_it_accepts() {
    // A target that is not listening yet, as a pair's peer before it starts.
    let target: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(target);
    let mut client = dial(proxy.addr());
    assert_closed(&mut client);
    assert_eq!(proxy.connections(), 0);
}

fn load(pair: &Pair, i: usize) -> Profile {
    Profile::load(&pair.nodes[i].profile).unwrap_or_else(|e| {
        panic!(
            "the fixture's {} profile is valid: {e}\n{}",
            pair.nodes[i].name,
            std::fs::read_to_string(&pair.nodes[i].profile).unwrap()
        )
    })
}

#[test]
fn shared_pair_profiles_are_valid_and_share_one_data_directory() {
    let pair = Pair::new();
    assert_eq!(pair.mode, Mode::Shared);
    assert!(pair.proxies.is_none());
    let profiles = [load(&pair, 0), load(&pair, 1)];
    for (i, profile) in profiles.iter().enumerate() {
        let ha = profile.ha.as_ref().expect("[ha]");
        assert_eq!(ha.mode, HaMode::Shared);
        assert_eq!(profile.server.data_dir, pair.dir.path().join("shared"));
        assert_eq!(pair.data_dir(i), profile.server.data_dir);
        assert_eq!(ha.listen, pair.nodes[i].ha);
        assert_eq!(ha.peer, pair.nodes[1 - i].ha);
        assert_eq!(ha.lock_file, pair.dir.path().join("ha.lock"));
    }
}

#[test]
fn replicated_pair_profiles_are_valid_with_a_data_directory_each() {
    let pair = Pair::replicated();
    assert_eq!(pair.mode, Mode::Replicated);
    assert!(pair.proxies.is_none());
    for i in 0..2 {
        let profile = load(&pair, i);
        let ha = profile.ha.as_ref().expect("[ha]");
        assert_eq!(ha.mode, HaMode::Replicated);
        assert_eq!(profile.server.shards, 2);
        assert_eq!(
            profile.server.data_dir,
            pair.dir.path().join(pair.nodes[i].name)
        );
        assert_eq!(pair.data_dir(i), profile.server.data_dir);
        assert_eq!(ha.peer, pair.nodes[1 - i].ha, "dials the peer directly");
        assert_eq!(ha.lock_file, pair.dir.path().join("ha.lock"));
        assert_eq!(ha.gateway, pair.gateway);
        assert_eq!(profile.journal.segment_bytes, 1 << 20);
    }
    assert_ne!(pair.data_dir(0), pair.data_dir(1));
}

#[test]
fn replicated_pair_with_options_dials_through_proxies_and_appends_to_ha() {
    let pair = Pair::replicated_with(ReplicatedOptions {
        journal: String::new(),
        ha_extra: "standby = \"warm\"\nstandalone = \"refuse\"".to_owned(),
        proxied_link: true,
    });
    let proxies = pair.proxies.as_ref().expect("proxied_link");
    for (i, proxy) in proxies.iter().enumerate() {
        let profile = load(&pair, i);
        let ha = profile.ha.as_ref().expect("[ha]");
        assert_eq!(ha.mode, HaMode::Replicated);
        assert_eq!(ha.standby, HaStandby::Warm);
        assert_eq!(ha.standalone, HaStandalone::Refuse);
        assert_eq!(ha.peer, proxy.addr(), "server {i} dials its proxy");
        assert_eq!(proxy.target(), pair.nodes[1 - i].ha);
        assert_eq!(pair.proxy(i).addr(), proxy.addr());
        assert_eq!(
            profile.journal.segment_bytes,
            twinmq::journal::JournalOptions::default().segment_bytes,
            "an empty [journal] means the shipped defaults"
        );
    }

    // The proxy really forwards to the peer's HA port: listen there.
    let listener = TcpListener::bind(pair.nodes[1].ha).unwrap();
    let mut dialer = dial(pair.proxy(0).addr());
    let (mut accepted, _) = listener.accept().unwrap();
    dialer.write_all(b"link").unwrap();
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"link");
}
