//! Crash safety: a producer sends persistent messages while the server is
//! killed with SIGKILL at random moments and restarted. Every acknowledged
//! send must be delivered after the restarts, each exactly once.
//!
//! The kill schedule comes from a seed (printed; `TWINMQ_SEED=…` replays it);
//! `TWINMQ_CRASH_ROUNDS` runs more rounds than CI's.

#[path = "support/server.rs"]
mod server;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use server::ServerProcess;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use twinmq::client::{Client, ClientOptions, ProducerOptions};

const QUEUE: &str = "/queue/crash";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Sends until the connection breaks; returns the bodies acknowledged.
fn produce_until_killed(url: String, round: u64) -> Vec<String> {
    let Ok(client) = Client::connect(&url, ClientOptions::default()) else {
        return vec![];
    };
    let mut producer = client.producer(ProducerOptions {
        window: 16,
        ..ProducerOptions::default()
    });
    let mut bodies: HashMap<u64, String> = HashMap::new();
    let mut acked = Vec::new();
    for i in 0.. {
        let body = format!("r{round}-{i}");
        match producer.send(QUEUE, vec![], Bytes::from(body.clone())) {
            Ok((sequence, ack)) => {
                bodies.insert(sequence, body);
                acked.extend(ack.and_then(|a| bodies.remove(&a.sequence)));
            }
            Err(_) => return acked,
        }
    }
    unreachable!()
}

#[test]
fn acknowledged_sends_survive_sigkill_and_restart() {
    let seed = env_u64("TWINMQ_SEED", rand::random());
    let rounds = env_u64("TWINMQ_CRASH_ROUNDS", 5);
    eprintln!("SEED={seed} (rounds {rounds})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut server = ServerProcess::start(2, "");
    let mut acked: BTreeSet<String> = BTreeSet::new();
    for round in 0..rounds {
        let url = server.url();
        let producer = std::thread::spawn(move || produce_until_killed(url, round));
        // The fault itself: kill at a random moment while sends are in flight.
        std::thread::sleep(Duration::from_millis(rng.random_range(50..400)));
        server.kill();
        let got = producer.join().unwrap();
        assert!(
            got.iter().all(|b| acked.insert(b.clone())),
            "SEED={seed}: duplicate body acknowledged"
        );
        server.restart();
    }
    assert!(
        !acked.is_empty(),
        "SEED={seed}: nothing was acknowledged; the test proves nothing"
    );

    let client = Client::connect(&server.url(), ClientOptions::default()).unwrap();
    let subscription = client.subscribe(QUEUE, None, 256).unwrap();
    let mut delivered: BTreeMap<String, u32> = BTreeMap::new();
    while let Some(delivery) = subscription.receive(Duration::from_millis(500)).unwrap() {
        *delivered
            .entry(String::from_utf8(delivery.body.to_vec()).unwrap())
            .or_default() += 1;
        subscription.ack(&delivery).unwrap();
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|b| !delivered.contains_key(*b))
        .collect();
    let duplicated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "acknowledged {}, delivered {}, lost {}, duplicated {}",
        acked.len(),
        delivered.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(
        lost.is_empty(),
        "SEED={seed}: acknowledged but lost: {lost:?}"
    );
    assert!(
        duplicated.is_empty(),
        "SEED={seed}: delivered twice: {duplicated:?}"
    );
}
