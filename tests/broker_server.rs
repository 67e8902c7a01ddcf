//! A single server, as real processes on loopback: queue and topic
//! semantics, durable subscriptions across subscriber restarts, redelivery
//! and dead-lettering, TTL, and durability across clean restarts.

#[path = "support/server.rs"]
mod server;

use bytes::Bytes;
use server::ServerProcess;
use std::time::Duration;
use twinmq::client::{Client, ClientOptions, ProducerOptions, Subscription};

const WAIT: Duration = Duration::from_secs(5);

fn client(server: &ServerProcess) -> Client {
    Client::connect(&server.url(), ClientOptions::default()).unwrap()
}

fn send_all(client: &Client, destination: &str, bodies: impl IntoIterator<Item = String>) {
    let mut producer = client.producer(ProducerOptions::default());
    for body in bodies {
        producer
            .send(destination, vec![], Bytes::from(body))
            .unwrap();
    }
    producer.flush().unwrap();
}

/// Receives and acknowledges until `count` arrived (or fails after WAIT).
fn take(subscription: &Subscription, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            let delivery = subscription
                .receive(WAIT)
                .unwrap()
                .unwrap_or_else(|| panic!("message {i} of {count} did not arrive"));
            subscription.ack(&delivery).unwrap();
            String::from_utf8(delivery.body.to_vec()).unwrap()
        })
        .collect()
}

fn nothing_more(subscription: &Subscription) {
    let extra = subscription.receive(Duration::from_millis(300)).unwrap();
    assert!(extra.is_none(), "unexpected delivery {extra:?}");
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn settled_messages_stay_settled_and_the_rest_survive_a_restart() {
    let mut server = ServerProcess::start(2, "");
    let c = client(&server);
    send_all(&c, "/queue/orders", numbered("o", 0..100));
    let sub = c.subscribe("/queue/orders", None, 10).unwrap();
    assert_eq!(take(&sub, 40), numbered("o", 0..40));
    c.ping().unwrap();
    drop(sub);
    c.close();
    server.stop();

    server.restart();
    let c = client(&server);
    let sub = c.subscribe("/queue/orders", None, 10).unwrap();
    assert_eq!(take(&sub, 60), numbered("o", 40..100));
    nothing_more(&sub);
}

#[test]
fn competing_consumers_share_a_queue_without_duplicates() {
    let server = ServerProcess::start(2, "");
    let (a, b) = (client(&server), client(&server));
    let sub_a = a.subscribe("/queue/work", None, 5).unwrap();
    let sub_b = b.subscribe("/queue/work", None, 5).unwrap();
    send_all(&client(&server), "/queue/work", numbered("w", 0..200));
    let mut got = Vec::new();
    while got.len() < 200 {
        let mut progress = false;
        for sub in [&sub_a, &sub_b] {
            if let Some(d) = sub.receive(Duration::from_millis(20)).unwrap() {
                sub.ack(&d).unwrap();
                got.push(String::from_utf8(d.body.to_vec()).unwrap());
                progress = true;
            }
        }
        assert!(
            progress || got.len() == 200 || sub_a.receive(WAIT).is_ok(),
            "stalled at {}",
            got.len()
        );
    }
    got.sort();
    let mut want = numbered("w", 0..200);
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn topic_fans_out_and_a_durable_subscriber_gets_what_it_missed() {
    let server = ServerProcess::start(2, "");
    let listener = client(&server);
    let live = listener.subscribe("/topic/prices", None, 100).unwrap();
    let durable_client = client(&server);
    let durable = durable_client
        .subscribe("/topic/prices", Some("audit"), 100)
        .unwrap();
    let producer = client(&server);
    send_all(&producer, "/topic/prices", numbered("p", 0..5));
    assert_eq!(take(&live, 5), numbered("p", 0..5));
    assert_eq!(take(&durable, 5), numbered("p", 0..5));

    // The durable subscriber goes away; messages keep arriving for it.
    durable_client.ping().unwrap();
    durable_client.close();
    send_all(&producer, "/topic/prices", numbered("p", 5..10));
    assert_eq!(take(&live, 5), numbered("p", 5..10));
    let back = client(&server);
    let durable = back.subscribe("/topic/prices", Some("audit"), 100).unwrap();
    assert_eq!(take(&durable, 5), numbered("p", 5..10));
    nothing_more(&durable);
}

#[test]
fn durable_subscription_survives_a_server_restart() {
    let mut server = ServerProcess::start(1, "");
    let c = client(&server);
    drop(c.subscribe("/topic/events", Some("keep"), 10).unwrap());
    c.close();
    send_all(&client(&server), "/topic/events", numbered("e", 0..3));
    server.stop();
    server.restart();
    let c = client(&server);
    let sub = c.subscribe("/topic/events", Some("keep"), 10).unwrap();
    assert_eq!(take(&sub, 3), numbered("e", 0..3));
}

#[test]
fn nacked_message_is_redelivered_then_dead_lettered() {
    let server = ServerProcess::start(2, "[broker]\nmax_deliveries = 2\n");
    let c = client(&server);
    send_all(&c, "/queue/jobs", vec!["poison".to_owned()]);
    let sub = c.subscribe("/queue/jobs", None, 1).unwrap();
    let first = sub.receive(WAIT).unwrap().unwrap();
    assert_eq!(first.delivery_count, 1);
    sub.nack(&first).unwrap();
    let second = sub.receive(WAIT).unwrap().unwrap();
    assert_eq!(
        (second.delivery_count, second.message_id),
        (2, first.message_id)
    );
    sub.nack(&second).unwrap();
    nothing_more(&sub);
    let dlq = c.subscribe("/queue/DLQ", None, 1).unwrap();
    let dead = dlq.receive(WAIT).unwrap().expect("dead-lettered message");
    assert_eq!(&dead.body[..], b"poison");
    assert!(
        dead.headers
            .contains(&("twinmq-dead-letter-from".into(), "/queue/jobs".into()))
    );
}

#[test]
fn expired_messages_are_not_delivered() {
    let server = ServerProcess::start(1, "");
    let c = client(&server);
    let mut short = c.producer(ProducerOptions {
        ttl_ms: 100,
        ..ProducerOptions::default()
    });
    short
        .send("/queue/fresh", vec![], Bytes::from_static(b"stale"))
        .unwrap();
    short.flush().unwrap();
    send_all(&c, "/queue/fresh", vec!["kept".to_owned()]);
    // The TTL is the condition under test: let it pass.
    let sent = std::time::Instant::now();
    server::wait_until(WAIT, "the TTL to pass", || {
        sent.elapsed() > Duration::from_millis(150)
    });
    let sub = c.subscribe("/queue/fresh", None, 10).unwrap();
    assert_eq!(take(&sub, 1), vec!["kept"]);
    nothing_more(&sub);
}

#[test]
fn unknown_destinations_are_refused_when_auto_create_is_off() {
    let server = ServerProcess::start(1, "[broker]\nauto_create = false\n");
    let c = client(&server);
    let error = c
        .subscribe("/queue/missing", None, 1)
        .unwrap_err()
        .to_string();
    assert!(error.contains("does not exist"), "{error}");
    c.create("/queue/missing").unwrap();
    c.subscribe("/queue/missing", None, 1).unwrap();
    let error = c.subscribe("no-prefix", None, 1).unwrap_err().to_string();
    assert!(error.contains("/queue/"), "{error}");
}

#[test]
fn status_reports_destinations_depth_and_journal() {
    let server = ServerProcess::start(2, "");
    let c = client(&server);
    send_all(&c, "/queue/a", numbered("a", 0..7));
    server::wait_until(WAIT, "status to show the depth", || {
        let status = server.status();
        status
            .destinations
            .iter()
            .any(|d| d.destination == "/queue/a" && d.depth == 7)
    });
    let status = server.status();
    assert_eq!(
        (status.role.as_str(), status.state.as_str(), status.shards),
        ("single", "ACTIVE", 2)
    );
    assert!(status.journal_bytes > 0 && status.pid > 0 && status.epoch >= 1);
}

#[test]
fn closed_connections_are_released_and_their_deliveries_requeued() {
    let server = ServerProcess::start(2, "");
    let c = client(&server);
    send_all(&c, "/queue/q", vec!["m".to_owned()]);
    let consumer = client(&server);
    let sub = consumer.subscribe("/queue/q", None, 1).unwrap();
    let first = sub.receive(WAIT).unwrap().unwrap();
    consumer.close();
    c.close();
    server::wait_until(WAIT, "both connections to be released", || {
        server.status().connections == 0
    });
    let again = client(&server).subscribe("/queue/q", None, 1).unwrap();
    let second = again
        .receive(WAIT)
        .unwrap()
        .expect("the unacknowledged message comes back");
    assert_eq!(
        (second.message_id, second.delivery_count),
        (first.message_id, 2)
    );
}

#[test]
fn consumed_messages_release_their_journal_segments() {
    // 1 MiB segments in test profiles: 3000 x 1 KiB spans several.
    let server = ServerProcess::start(1, "");
    let c = client(&server);
    let body = "x".repeat(1024);
    send_all(&c, "/queue/big", std::iter::repeat_n(body, 3000));
    server::wait_until(WAIT, "statistics to show the journal", || {
        server.status().journal_segments >= 3
    });
    let grown = server.status().journal_segments;
    let sub = c.subscribe("/queue/big", None, 256).unwrap();
    take(&sub, 3000);
    // Settlements are journaled; the next flushes release what they free.
    send_all(&c, "/queue/other", vec!["nudge".to_owned()]);
    server::wait_until(WAIT, "settled segments to be released", || {
        server.status().journal_segments < grown
    });
}

/// The client has no reader thread: whichever caller waits reads the
/// socket. A subscription blocked in a long receive is the reader while a
/// producer on the same connection, in another thread, waits for its acks:
/// the reader files them and wakes it, so no send waits out its (short)
/// request timeout; then the receiver gets the message meant for it.
#[test]
fn callers_sharing_a_connection_each_get_their_answers() {
    let server = ServerProcess::start(2, "");
    let c = Client::connect(
        &server.url(),
        ClientOptions {
            request_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let sub = c.subscribe("/queue/shared-reader-in", None, 10).unwrap();
    let receiver = std::thread::spawn(move || {
        let delivery = sub.receive(Duration::from_secs(10)).unwrap();
        delivery.map(|d| String::from_utf8(d.body.to_vec()).unwrap())
    });
    let mut producer = c.producer(ProducerOptions {
        window: 1,
        ..ProducerOptions::default()
    });
    for i in 0..50 {
        producer
            .send_and_wait("/queue/shared-reader-out", Bytes::from(format!("m{i}")))
            .unwrap_or_else(|e| panic!("send {i} while another caller reads: {e}"));
    }
    producer
        .send_and_wait("/queue/shared-reader-in", Bytes::from("for the receiver"))
        .unwrap();
    assert_eq!(
        receiver.join().unwrap().as_deref(),
        Some("for the receiver")
    );
}

/// A connection moves to the shard that owns the destination of its first
/// SEND or SUBSCRIBE, whichever shard the kernel handed it to, and serves
/// from there: every connection ends up counted on its queue's owner, and
/// each gets its own message back.
#[test]
fn a_connection_moves_to_the_shard_of_its_first_destination() {
    const SHARDS: u32 = 2;
    const CLIENTS: usize = 8;
    let server = ServerProcess::start(SHARDS, "");
    let queue = |i: usize| format!("/queue/placed-{i}");
    let clients: Vec<Client> = (0..CLIENTS).map(|_| client(&server)).collect();
    for (i, c) in clients.iter().enumerate() {
        let mut producer = c.producer(ProducerOptions {
            window: 1,
            ..ProducerOptions::default()
        });
        producer
            .send_and_wait(&queue(i), Bytes::from(format!("for {i}")))
            .unwrap();
    }
    let mut expected = vec![0usize; SHARDS as usize];
    for i in 0..CLIENTS {
        let destination = queue(i).parse().unwrap();
        expected[usize::from(twinmq::shard::owner(&destination, SHARDS as usize).0)] += 1;
    }
    // Statistics are published every 200 ms.
    server::wait_until(WAIT, "connections counted on their queues' shards", || {
        server.status().shard_connections == expected
    });
    for (i, c) in clients.iter().enumerate() {
        let sub = c.subscribe(&queue(i), None, 1).unwrap();
        assert_eq!(take(&sub, 1), vec![format!("for {i}")]);
    }
}

/// A batch larger than the window goes out in window-sized writes: each
/// wait for room hands back the oldest acknowledgement, the sequences
/// follow one another, and every message arrives once, in order, even
/// when the batch mixes destinations.
#[test]
fn a_batch_larger_than_the_window_arrives_whole_and_in_order() {
    let server = ServerProcess::start(2, "");
    let c = client(&server);
    let mut producer = c.producer(ProducerOptions {
        window: 4,
        ..ProducerOptions::default()
    });
    let bodies = numbered("b", 0..10);
    let destinations = ["/queue/batch-a", "/queue/batch-b"];
    let sent = producer
        .send_batch(
            bodies
                .iter()
                .enumerate()
                .map(|(i, body)| (destinations[i % 2], vec![], Bytes::from(body.clone()))),
        )
        .unwrap();
    assert_eq!(sent.first, 1);
    let mut sequences: Vec<u64> = sent.completed.iter().map(|a| a.sequence).collect();
    assert_eq!(
        sequences,
        (1..=6).collect::<Vec<_>>(),
        "six waits for the oldest"
    );
    assert_eq!(producer.outstanding(), 4);
    // The last four come back without a wait for each: taken as they land.
    let deadline = std::time::Instant::now() + WAIT;
    while producer.outstanding() > 0 {
        assert!(std::time::Instant::now() < deadline, "acks never arrived");
        for (sequence, answer) in producer.take_completed() {
            assert_eq!(answer.unwrap().sequence, sequence);
            sequences.push(sequence);
        }
        c.ping().unwrap();
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>());
    for (d, destination) in destinations.iter().enumerate() {
        let sub = c.subscribe(destination, None, 16).unwrap();
        let expected: Vec<String> = bodies.iter().skip(d).step_by(2).cloned().collect();
        assert_eq!(take(&sub, expected.len()), expected);
        nothing_more(&sub);
    }
}
