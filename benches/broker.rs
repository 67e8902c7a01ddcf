//! The broker's per-message CPU cost without any I/O: a persistent 1 KiB
//! send enqueued, made durable, delivered to a consumer and settled — the
//! whole life of a message on one shard — against a store that only
//! encodes records into memory; and enqueueing alone into a backlog.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;
use twinmq::broker::records::{BrokerRecord, MessageRecord};
use twinmq::broker::{
    AfterDurable, Broker, BrokerSettings, Command, ConsumerKey, MessageData, Output, SendCommand,
    Store, StoreError,
};
use twinmq::ids::{ConnId, MessageId, Offset, ShardId};

const BODY_BYTES: usize = 1024;
/// Messages sent into a fresh broker per timed batch of the backlog bench.
const BACKLOG: usize = 10_000;

/// Encodes every record (the journal's CPU share) and keeps only offsets.
#[derive(Default)]
struct EncodeOnly {
    end: u64,
    scratch: Vec<u8>,
}

impl Store for EncodeOnly {
    fn append(&mut self, record: &BrokerRecord) -> Result<(Offset, Offset), StoreError> {
        self.scratch.clear();
        record.encode(&mut self.scratch);
        let offset = self.end;
        self.end += (twinmq::journal::record::HEADER_BYTES + self.scratch.len()) as u64;
        Ok((Offset(offset), Offset(self.end)))
    }

    fn read_message(&mut self, offset: Offset) -> Result<MessageRecord, StoreError> {
        Err(StoreError::Failed(format!(
            "no read-back in the bench ({offset})"
        )))
    }
}

fn settings() -> BrokerSettings {
    BrokerSettings {
        auto_create: true,
        default_prefetch: 256,
        max_deliveries: 10,
        dead_letter: "/queue/DLQ".parse().expect("valid"),
        cache_bytes_max: usize::MAX,
        producer_idle_expiry_ms: u64::MAX,
    }
}

fn send(sequence: u64, data: &Arc<MessageData>) -> Command {
    let producer = ConnId {
        shard: ShardId(0),
        seq: 1,
    };
    Command::Send(SendCommand {
        destination: "/queue/bench".parse().expect("valid"),
        producer_id: 7,
        sequence,
        persistent: true,
        expires_at_ms: 0,
        data: data.clone(),
        after: Some(AfterDurable::Ack {
            to: producer,
            producer_id: 7,
            sequence,
            duplicate: false,
        }),
        local_ack: false,
    })
}

fn message_lifecycle(c: &mut Criterion) {
    let data = Arc::new(MessageData {
        headers: Vec::new(),
        body: Bytes::from(vec![0x42; BODY_BYTES]),
    });
    let consumer = ConsumerKey {
        conn: ConnId {
            shard: ShardId(0),
            seq: 2,
        },
        subscription: 1,
    };
    let destination: twinmq::protocol::Destination = "/queue/bench".parse().expect("valid");
    let mut broker = Broker::new(ShardId(0), settings());
    let mut store = EncodeOnly::default();
    let mut out = Vec::new();
    broker.handle(
        0,
        &Command::Subscribe {
            consumer,
            request_id: 1,
            destination: destination.clone(),
            durable_name: None,
            prefetch: 1,
        },
        &mut store,
        &mut out,
    );
    let mut sequence = 0;
    let mut group = c.benchmark_group("broker");
    group.throughput(Throughput::Elements(1));
    group.bench_function("persistent 1 KiB send, durable, deliver, ack", |b| {
        b.iter(|| {
            sequence += 1;
            out.clear();
            broker.handle(0, &send(sequence, &data), &mut store, &mut out);
            for ready in broker.on_durable(Offset(store.end), &mut out) {
                broker.handle(0, &Command::Dispatch(ready), &mut store, &mut out);
            }
            let delivered = out
                .iter()
                .find_map(|o| match o {
                    Output::Deliver { message, .. } => Some(*message),
                    _ => None,
                })
                .expect("delivered");
            broker.handle(
                0,
                &Command::Ack {
                    consumer,
                    destination: destination.clone(),
                    message: delivered,
                    confirm: None,
                },
                &mut store,
                &mut out,
            );
            assert_ne!(delivered, MessageId(0));
        })
    });
    group.throughput(Throughput::Elements(BACKLOG as u64));
    group.bench_function("enqueue 10k persistent 1 KiB into a backlog", |b| {
        b.iter_batched(
            || (Broker::new(ShardId(0), settings()), EncodeOnly::default()),
            |(mut broker, mut store)| {
                let mut out = Vec::new();
                for sequence in 1..=BACKLOG as u64 {
                    broker.handle(0, &send(sequence, &data), &mut store, &mut out);
                }
                broker
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, message_lifecycle);
criterion_main!(benches);
