//! Native protocol encode and decode of the two frames that carry messages,
//! the per-message CPU cost of every client connection.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use twinmq::protocol::{self, AckMode, Deliver, Frame, Limits};

/// Body size of the benched messages.
const BODY_BYTES: usize = 1024;

fn headers() -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        (
            "correlation-id".into(),
            "7f3a9c2e-1b4d-4e8f-9a6b-2c5d8e1f0a3b".into(),
        ),
    ]
}

fn frames() -> [Frame; 2] {
    let body = Bytes::from(vec![0x42; BODY_BYTES]);
    [
        Frame::Send(protocol::Send {
            producer_id: 17,
            sequence: 123_456,
            destination: "/queue/orders".into(),
            persistent: true,
            ttl_ms: 0,
            ack_mode: AckMode::Replicated,
            headers: headers(),
            body: body.clone(),
        }),
        Frame::Deliver(Deliver {
            subscription_id: 3,
            message_id: 987_654,
            delivery_count: 1,
            destination: "/queue/orders".into(),
            persistent: true,
            headers: headers(),
            body,
        }),
    ]
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol_encode");
    for frame in frames() {
        let mut out = Vec::new();
        frame.encode(&mut out).expect("encodable");
        group.throughput(Throughput::Bytes(out.len() as u64));
        group.bench_function(format!("{}_{BODY_BYTES}B", frame.name()), |b| {
            b.iter(|| {
                // Reuse the buffer, as a connection's write buffer would be.
                out.clear();
                black_box(&frame).encode(&mut out).expect("encodable");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("protocol_decode");
    let limits = Limits::default();
    for frame in frames() {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes).expect("encodable");
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("{}_{BODY_BYTES}B", frame.name()), |b| {
            b.iter(|| {
                protocol::decode(black_box(&bytes), &limits)
                    .expect("valid")
                    .expect("whole frame")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
