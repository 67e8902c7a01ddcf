//! The durable connection against scripted fake servers on loopback: an
//! acknowledgement from an older epoch than the newest seen is refused, a
//! NOT_ACTIVE redirect is followed, the send is replayed to the server
//! that is active now, and the application sees it all as events and
//! counters.

use bytes::Bytes;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use twinmq::client::ProducerOptions;
use twinmq::client::durable::{ConnectionEvent, DurableConnection, DurableOptions};
use twinmq::protocol::{self, Frame, Limits};

/// What a fake server does on one connection, after the handshake.
#[derive(Clone, Copy)]
enum Script {
    /// WELCOME in `epoch`, then acknowledge every SEND in `ack_epoch`.
    Serve { epoch: u64, ack_epoch: u64 },
    /// NOT_ACTIVE naming this address.
    Redirect(SocketAddr),
    /// WELCOME, then never acknowledge anything.
    Silent,
    /// WELCOME; a SUBSCRIBE gets OK and message 42; the first confirmed
    /// ACK of it gets the message again first (sent before the settlement,
    /// as a server that just made it ready again would), then the OK.
    DeliverTwice,
}

fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Frame> {
    loop {
        if let Some((frame, used)) = protocol::decode(buf, &Limits::default()).unwrap() {
            buf.drain(..used);
            return Some(frame);
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn write_frame(stream: &mut TcpStream, frame: Frame) -> std::io::Result<()> {
    let mut out = Vec::new();
    frame.encode(&mut out).unwrap();
    stream.write_all(&out)
}

fn welcome(server_id: &str, epoch: u64) -> Frame {
    Frame::Welcome(protocol::Welcome {
        version: protocol::PROTOCOL_VERSION,
        server_id: server_id.into(),
        epoch,
        frame_bytes_max: Limits::default().frame_bytes_max,
    })
}

/// A fake server running `scripts` on its successive connections (the
/// last one again for any later connection).
fn fake_server(name: &'static str, scripts: Vec<Script>) -> (SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0));
    let seen = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let n = {
                let mut count = seen.lock().unwrap();
                *count += 1;
                *count
            };
            let script = scripts[(n - 1).min(scripts.len() - 1)];
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let Some(Frame::Hello(_)) = read_frame(&mut stream, &mut buf) else {
                    return;
                };
                match script {
                    Script::Redirect(active) => {
                        let _ = write_frame(
                            &mut stream,
                            Frame::NotActive(protocol::NotActive {
                                active: active.to_string(),
                            }),
                        );
                    }
                    Script::DeliverTwice => {
                        let welcome = welcome(name, 1);
                        let _ = write_frame(&mut stream, welcome);
                        let deliver = |subscription_id, delivery_count| {
                            Frame::Deliver(protocol::Deliver {
                                subscription_id,
                                message_id: 42,
                                delivery_count,
                                destination: "/queue/q".into(),
                                persistent: true,
                                headers: Vec::new(),
                                body: Bytes::from_static(b"m"),
                            })
                        };
                        let mut settled = false;
                        while let Some(frame) = read_frame(&mut stream, &mut buf) {
                            let replies = match frame {
                                Frame::Subscribe(s) => vec![
                                    Frame::Ok(protocol::OkFrame {
                                        request_id: s.request_id,
                                    }),
                                    deliver(s.subscription_id, 1),
                                ],
                                Frame::Ack(a) if a.request_id != 0 && !settled => {
                                    settled = true;
                                    vec![
                                        deliver(a.subscription_id, 2),
                                        Frame::Ok(protocol::OkFrame {
                                            request_id: a.request_id,
                                        }),
                                    ]
                                }
                                // Settled already: nothing more to deliver.
                                Frame::Ack(a) if a.request_id != 0 => {
                                    vec![Frame::Ok(protocol::OkFrame {
                                        request_id: a.request_id,
                                    })]
                                }
                                Frame::Ping(p) => {
                                    vec![Frame::Pong(protocol::Pong { token: p.token })]
                                }
                                _ => Vec::new(),
                            };
                            for reply in replies {
                                if write_frame(&mut stream, reply).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Script::Silent => {
                        let welcome = welcome(name, 1);
                        if write_frame(&mut stream, welcome).is_ok() {
                            while read_frame(&mut stream, &mut buf).is_some() {}
                        }
                    }
                    Script::Serve { epoch, ack_epoch } => {
                        let welcome = welcome(name, epoch);
                        if write_frame(&mut stream, welcome).is_err() {
                            return;
                        }
                        while let Some(frame) = read_frame(&mut stream, &mut buf) {
                            if let Frame::Send(send) = frame {
                                let ack = Frame::SendAck(protocol::SendAck {
                                    producer_id: send.producer_id,
                                    sequence: send.sequence,
                                    epoch: ack_epoch,
                                    message_id: 1,
                                    duplicate: false,
                                });
                                if write_frame(&mut stream, ack).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// B serves epoch 5. A takes the first connection in epoch 5 but
/// acknowledges in epoch 4 (a deposed server's ack); afterwards it
/// redirects to B. Returns A, how many connections A has had, and B.
fn deposed_a_and_active_b() -> (SocketAddr, Arc<Mutex<usize>>, SocketAddr) {
    let (b, _) = fake_server(
        "b",
        vec![Script::Serve {
            epoch: 5,
            ack_epoch: 5,
        }],
    );
    let (a, a_connections) = fake_server(
        "a",
        vec![
            Script::Serve {
                epoch: 5,
                ack_epoch: 4,
            },
            Script::Redirect(b),
        ],
    );
    (a, a_connections, b)
}

#[test]
fn stale_epoch_ack_is_refused_and_the_send_replayed_to_the_active_named_by_a_redirect() {
    let (a, a_connections, b) = deposed_a_and_active_b();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let connection = DurableConnection::connect(
        &format!("twinmq://{a},{b}"),
        DurableOptions {
            seed: 1,
            on_event: Some(Arc::new(move |e: &ConnectionEvent| {
                seen.lock().unwrap().push(e.clone())
            })),
            ..DurableOptions::default()
        },
    )
    .unwrap();
    assert_eq!(connection.server(), Some(a));
    let mut producer = connection.producer(ProducerOptions::default());
    producer
        .send("/queue/q", Vec::new(), Bytes::from_static(b"hello"))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();

    let acked = producer.take_acked();
    assert_eq!(acked.len(), 1);
    assert_eq!(acked[0].1.epoch, 5, "only the current epoch's ack counts");
    assert_eq!(connection.server(), Some(b), "redirected to the active");
    assert_eq!(*a_connections.lock().unwrap(), 2, "A was tried again first");
    let counters = connection.counters();
    assert_eq!(
        (counters.stale_acks, counters.reconnects, counters.replayed),
        (1, 1, 1)
    );
    let events = events.lock().unwrap();
    assert!(
        matches!(&events[0], ConnectionEvent::Connected { server, epoch: 5, .. } if *server == a),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], ConnectionEvent::FailingOver { from, reason } if *from == a && reason.contains("epoch 4")),
        "{events:?}"
    );
    assert!(
        matches!(&events[2], ConnectionEvent::Reconnected { server, .. } if *server == b),
        "{events:?}"
    );
}

/// A batch is in the outbox before it is written, so a failover replays
/// all of it, in order, to the server that is active now.
#[test]
fn a_batch_refused_by_a_deposed_server_is_replayed_whole_to_the_active() {
    let (a, _, b) = deposed_a_and_active_b();
    let connection = DurableConnection::connect(
        &format!("twinmq://{a},{b}"),
        DurableOptions {
            seed: 2,
            ..DurableOptions::default()
        },
    )
    .unwrap();
    let mut producer = connection.producer(ProducerOptions::default());
    let bodies = ["m1", "m2", "m3", "m4", "m5"];
    let first = producer
        .send_batch(
            bodies
                .iter()
                .map(|b| ("/queue/q", Vec::new(), Bytes::from_static(b.as_bytes()))),
        )
        .unwrap();
    assert_eq!(first, 1);
    producer.flush(Duration::from_secs(10)).unwrap();

    let mut acked = producer.take_acked();
    acked.sort_by_key(|(sequence, _)| *sequence);
    let sequences: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, vec![1, 2, 3, 4, 5]);
    assert!(acked.iter().all(|(_, ack)| ack.epoch == 5), "{acked:?}");
    assert_eq!(connection.server(), Some(b));
    assert_eq!(connection.counters().replayed, 5, "the whole batch again");
}

#[test]
fn gives_up_after_the_configured_time_when_no_server_serves() {
    // A port nobody listens on: bind, note it, close.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let error = DurableConnection::connect(
        &format!("twinmq://{dead}"),
        DurableOptions {
            reconnect: twinmq::client::durable::ReconnectPolicy {
                give_up_after: Duration::from_millis(300),
                ..Default::default()
            },
            on_event: Some(Arc::new(move |e: &ConnectionEvent| {
                seen.lock().unwrap().push(e.clone())
            })),
            ..DurableOptions::default()
        },
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("gave up reconnecting after"), "{text}");
    assert!(
        text.contains(&dead.to_string()),
        "names the last failure: {text}"
    );
    assert!(
        matches!(
            events.lock().unwrap().as_slice(),
            [ConnectionEvent::GaveUp { .. }]
        ),
        "{:?}",
        events.lock().unwrap()
    );
}

#[test]
fn a_full_outbox_blocks_the_sender_then_fails_clearly_and_drops_nothing() {
    let (silent, _) = fake_server("silent", vec![Script::Silent]);
    let connection = DurableConnection::connect(
        &format!("twinmq://{silent}"),
        DurableOptions {
            outbox_full_timeout: Duration::from_millis(200),
            ..DurableOptions::default()
        },
    )
    .unwrap();
    let mut producer = connection.producer(ProducerOptions {
        window: 2,
        ..ProducerOptions::default()
    });
    for body in [&b"one"[..], b"two"] {
        producer
            .send("/queue/q", Vec::new(), Bytes::from_static(body))
            .unwrap();
    }
    let started = std::time::Instant::now();
    let error = producer
        .send("/queue/q", Vec::new(), Bytes::from_static(b"three"))
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited");
    assert!(error.to_string().starts_with("outbox full"), "{error}");
    assert_eq!(producer.outstanding(), 2, "the two sends are kept");
    assert_eq!(
        producer.next_sequence(),
        3,
        "the refused one took no number"
    );
}

#[test]
fn a_delivery_sent_before_the_settlement_was_confirmed_never_reaches_the_application() {
    let (server, _) = fake_server("twice", vec![Script::DeliverTwice]);
    let connection =
        DurableConnection::connect(&format!("twinmq://{server}"), DurableOptions::default())
            .unwrap();
    let mut subscription = connection.subscribe("/queue/q", None, 1).unwrap();
    let first = subscription
        .receive(Duration::from_secs(5))
        .unwrap()
        .expect("delivered");
    subscription.ack(&first).unwrap();
    // Answered in order: once the pong is back, the copy and the OK are
    // both with the client.
    subscription.ping().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while subscription.unconfirmed() > 0 {
        assert!(std::time::Instant::now() < deadline, "no confirmation");
        assert_eq!(
            subscription.receive(Duration::from_millis(50)).unwrap(),
            None,
            "the copy sent before the OK must not reach the application"
        );
    }
    assert_eq!(
        subscription.receive(Duration::from_millis(100)).unwrap(),
        None
    );
}
