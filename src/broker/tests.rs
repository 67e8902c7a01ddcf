//! Broker semantics against an in-memory store: exact outputs and records.

use super::*;
use crate::journal::record::HEADER_BYTES;

/// Records kept in memory at offsets laid out as the journal would.
#[derive(Default)]
struct MemStore {
    records: Vec<(Offset, BrokerRecord)>,
    end: u64,
    full: bool,
}

impl Store for MemStore {
    fn append(&mut self, record: &BrokerRecord) -> Result<(Offset, Offset), StoreError> {
        if self.full {
            return Err(StoreError::Full);
        }
        let mut payload = Vec::new();
        record.encode(&mut payload);
        let offset = Offset(self.end);
        self.end += (HEADER_BYTES + payload.len()) as u64;
        self.records.push((offset, record.clone()));
        Ok((offset, Offset(self.end)))
    }

    fn read_message(&mut self, offset: Offset) -> Result<MessageRecord, StoreError> {
        match self.records.iter().find(|(o, _)| *o == offset) {
            Some((_, BrokerRecord::Message(m))) => Ok(m.clone()),
            _ => Err(StoreError::Failed(format!("no message at {offset}"))),
        }
    }
}

fn settings() -> BrokerSettings {
    BrokerSettings {
        auto_create: true,
        default_prefetch: 10,
        max_deliveries: 3,
        dead_letter: "/queue/DLQ".parse().unwrap(),
        cache_bytes_max: 1 << 20,
        producer_idle_expiry_ms: 60_000,
    }
}

fn conn(seq: u64) -> ConnId {
    ConnId {
        shard: ShardId(0),
        seq,
    }
}

fn consumer(seq: u64, subscription: u32) -> ConsumerKey {
    ConsumerKey {
        conn: conn(seq),
        subscription,
    }
}

fn dest(text: &str) -> Destination {
    text.parse().unwrap()
}

fn send(destination: &str, body: &str, persistent: bool, producer: u64, sequence: u64) -> Command {
    Command::Send(SendCommand {
        destination: dest(destination),
        producer_id: producer,
        sequence,
        persistent,
        expires_at_ms: 0,
        data: Arc::new(MessageData {
            headers: vec![],
            body: Bytes::from(body.to_owned()),
        }),
        after: Some(AfterDurable::Ack {
            to: conn(producer),
            producer_id: producer,
            sequence,
            duplicate: false,
        }),
        local_ack: false,
    })
}

fn subscribe(key: ConsumerKey, destination: &str, durable: Option<&str>, prefetch: u32) -> Command {
    Command::Subscribe {
        consumer: key,
        request_id: 100 + u64::from(key.subscription),
        destination: dest(destination),
        durable_name: durable.map(str::to_owned),
        prefetch,
    }
}

struct World {
    broker: Broker,
    store: MemStore,
    now_ms: u64,
}

impl World {
    fn new() -> World {
        World {
            broker: Broker::new(ShardId(0), settings()),
            store: MemStore::default(),
            now_ms: 1_000,
        }
    }

    /// Runs a command, then makes the journal durable (as the shard loop
    /// would after the flush) and runs the dispatches that allows.
    fn run(&mut self, command: Command) -> Vec<Output> {
        let mut out = self.run_undurable(command);
        out.extend(self.durable());
        out
    }

    fn run_undurable(&mut self, command: Command) -> Vec<Output> {
        let mut out = Vec::new();
        let handled = self
            .broker
            .handle(self.now_ms, &command, &mut self.store, &mut out);
        assert_eq!(handled, Handled::Done);
        out
    }

    fn durable(&mut self) -> Vec<Output> {
        let mut out = Vec::new();
        for destination in self.broker.on_durable(Offset(self.store.end), &mut out) {
            out.extend(self.run_undurable(Command::Dispatch(destination)));
        }
        out
    }
}

fn deliveries(outputs: &[Output]) -> Vec<(ConsumerKey, String, u32)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Deliver {
                to,
                data,
                delivery_count,
                ..
            } => Some((
                *to,
                String::from_utf8(data.body.to_vec()).unwrap(),
                *delivery_count,
            )),
            _ => None,
        })
        .collect()
}

fn delivered_id(outputs: &[Output]) -> MessageId {
    outputs
        .iter()
        .find_map(|o| match o {
            Output::Deliver { message, .. } => Some(*message),
            _ => None,
        })
        .expect("a delivery")
}

#[test]
fn persistent_send_is_acknowledged_only_once_durable() {
    let mut w = World::new();
    w.run(subscribe(consumer(5, 1), "/queue/a", None, 1));
    let out = w.run_undurable(send("/queue/a", "m1", true, 1, 1));
    assert!(
        out.is_empty(),
        "no ack and no delivery before the flush: {out:?}"
    );
    assert!(matches!(
        w.store.records[0].1,
        BrokerRecord::DestinationCreate(_)
    ));
    assert!(matches!(w.store.records[1].1, BrokerRecord::Message(_)));
    let after = w.durable();
    let message = MessageId::persistent(ShardId(0), w.store.records[1].0);
    let ack = Output::SendAck {
        to: conn(1),
        producer_id: 1,
        sequence: 1,
        message,
        duplicate: false,
    };
    assert_eq!(after[0], ack);
    assert_eq!(
        deliveries(&after),
        vec![(consumer(5, 1), "m1".into(), 1)],
        "delivered once durable"
    );
    assert!(w.durable().is_empty(), "acknowledged once");
}

#[test]
fn non_persistent_send_is_acknowledged_at_once_and_never_journaled() {
    let mut w = World::new();
    let out = w.run(send("/queue/a", "m1", false, 1, 1));
    assert!(matches!(
        out.as_slice(),
        [Output::SendAck { sequence: 1, .. }]
    ));
    assert!(
        w.store
            .records
            .iter()
            .all(|(_, r)| !matches!(r, BrokerRecord::Message(_)))
    );
}

#[test]
fn queue_consumers_compete_round_robin_within_their_prefetch() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/a", None, 1));
    w.run(subscribe(consumer(2, 1), "/queue/a", None, 1));
    let mut got = Vec::new();
    for i in 0..3 {
        got.extend(deliveries(&w.run(send(
            "/queue/a",
            &format!("m{i}"),
            true,
            9,
            i,
        ))));
    }
    assert_eq!(
        got,
        vec![
            (consumer(1, 1), "m0".into(), 1),
            (consumer(2, 1), "m1".into(), 1)
        ],
        "third waits: both consumers are at their prefetch of 1"
    );
    let first = MessageId::persistent(ShardId(0), w.store.records[1].0);
    let out = w.run(Command::Ack {
        consumer: consumer(1, 1),
        destination: dest("/queue/a"),
        message: first,
        confirm: None,
    });
    assert_eq!(deliveries(&out), vec![(consumer(1, 1), "m2".into(), 1)]);
    assert!(
        matches!(w.store.records.last().unwrap().1, BrokerRecord::Settle { message, .. } if message == first)
    );
}

#[test]
fn nack_redelivers_with_a_higher_count_then_dead_letters_safely() {
    let mut w = World::new();
    let key = consumer(1, 1);
    w.run(subscribe(key, "/queue/a", None, 1));
    let out = w.run(send("/queue/a", "poison", true, 1, 1));
    let id = delivered_id(&out);
    let mut counts = vec![1];
    let mut last = Vec::new();
    for _ in 0..3 {
        last = w.run(Command::Nack {
            consumer: key,
            destination: dest("/queue/a"),
            message: id,
        });
        counts.extend(deliveries(&last).iter().map(|d| d.2));
    }
    assert_eq!(counts, vec![1, 2, 3], "max_deliveries = 3");
    let Some(Output::Route(copy)) = last.iter().find(|o| matches!(o, Output::Route(_))) else {
        panic!("the fourth attempt goes to the dead-letter queue: {last:?}")
    };
    assert_eq!(copy.destination, dest("/queue/DLQ"));
    assert!(
        copy.data
            .headers
            .contains(&("twinmq-dead-letter-from".into(), "/queue/a".into()))
    );
    // Nothing is settled until the copy is durable on the DLQ's shard.
    assert!(
        !w.store
            .records
            .iter()
            .any(|(_, r)| matches!(r, BrokerRecord::Settle { .. }))
    );
    let Some(AfterDurable::SettleOriginal(original)) = copy.after.clone() else {
        panic!()
    };
    w.run(Command::SettleDeadLettered(original));
    assert!(
        matches!(w.store.records.last().unwrap().1, BrokerRecord::Settle { message, .. } if message == id)
    );
    assert_eq!(w.broker.message_count(), 0);
}

#[test]
fn a_departing_consumer_returns_its_deliveries_with_their_count() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/a", None, 5));
    w.run(send("/queue/a", "m", true, 9, 1));
    let out = w.run(subscribe(consumer(2, 7), "/queue/a", None, 5));
    assert!(deliveries(&out).is_empty());
    let out = w.run(Command::Disconnected(conn(1)));
    assert_eq!(deliveries(&out), vec![(consumer(2, 7), "m".into(), 2)]);
}

#[test]
fn expired_messages_are_dropped_not_delivered() {
    let mut w = World::new();
    let mut command = send("/queue/a", "stale", true, 1, 1);
    if let Command::Send(s) = &mut command {
        s.expires_at_ms = w.now_ms + 50;
    }
    w.run(command);
    w.run(send("/queue/a", "fresh", true, 1, 2));
    w.now_ms += 100;
    let out = w.run(subscribe(consumer(1, 1), "/queue/a", None, 10));
    assert_eq!(deliveries(&out), vec![(consumer(1, 1), "fresh".into(), 1)]);
    assert!(
        w.store
            .records
            .iter()
            .any(|(_, r)| matches!(r, BrokerRecord::Settle { .. })),
        "expiry is journaled"
    );
}

#[test]
fn topics_fan_out_and_durable_subscriptions_keep_messages_while_away() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/topic/t", None, 10));
    w.run(subscribe(consumer(2, 1), "/topic/t", Some("audit"), 10));
    let out = w.run(send("/topic/t", "a", true, 5, 1));
    let got = deliveries(&out);
    assert_eq!(got.len(), 2, "both subscriptions get it: {got:?}");
    // The durable subscriber leaves (without removing its subscription).
    w.run(Command::Unsubscribe {
        consumer: consumer(2, 1),
        request_id: 1,
        destination: dest("/topic/t"),
        remove_durable: false,
    });
    let out = w.run(send("/topic/t", "b", true, 5, 2));
    assert_eq!(deliveries(&out), vec![(consumer(1, 1), "b".into(), 1)]);
    let out = w.run(subscribe(consumer(3, 4), "/topic/t", Some("audit"), 10));
    let got: Vec<_> = deliveries(&out).into_iter().map(|d| d.1).collect();
    assert_eq!(
        got,
        vec!["a", "b"],
        "unacknowledged and missed messages, in order"
    );
}

#[test]
fn persistent_topic_message_without_durable_subscribers_is_not_journaled() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/topic/t", None, 10));
    let out = w.run(send("/topic/t", "x", true, 5, 1));
    assert!(
        out.iter().any(|o| matches!(o, Output::SendAck { .. })),
        "acked at once: {out:?}"
    );
    assert!(
        !w.store
            .records
            .iter()
            .any(|(_, r)| matches!(r, BrokerRecord::Message(_)))
    );
}

#[test]
fn full_journal_changes_nothing_and_asks_for_a_retry() {
    let mut w = World::new();
    w.store.full = true;
    let mut out = Vec::new();
    let command = send("/queue/a", "m", true, 1, 1);
    assert_eq!(
        w.broker.handle(0, &command, &mut w.store, &mut out),
        Handled::Retry
    );
    assert!(out.is_empty());
    assert!(w.broker.stats().is_empty());
    w.store.full = false;
    assert_eq!(
        w.broker.handle(0, &command, &mut w.store, &mut out),
        Handled::Done
    );
    assert_eq!(w.broker.stats()[0].depth, 1);
}

#[test]
fn unknown_destination_is_refused_without_auto_create() {
    let mut w = World::new();
    w.broker.settings.auto_create = false;
    let out = w.run(subscribe(consumer(1, 1), "/queue/nope", None, 1));
    assert!(matches!(
        out.as_slice(),
        [Output::Refused {
            refusal: Refusal::NoSuchDestination,
            request_id: 101,
            ..
        }]
    ));
    let out = w.run(Command::Create {
        from: conn(1),
        request_id: 5,
        destination: dest("/queue/nope"),
    });
    assert_eq!(
        out,
        vec![Output::Ok {
            to: conn(1),
            request_id: 5
        }]
    );
}

#[test]
fn replaying_the_records_rebuilds_the_same_state() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/topic/t", Some("keep"), 1));
    w.run(Command::Unsubscribe {
        consumer: consumer(1, 1),
        request_id: 2,
        destination: dest("/topic/t"),
        remove_durable: false,
    });
    w.run(subscribe(consumer(2, 1), "/queue/q", None, 2));
    let mut acked = Vec::new();
    for i in 0..6 {
        // One producer numbers its sends in order across destinations.
        w.run(send("/topic/t", &format!("t{i}"), true, 1, 2 * i + 1));
        let out = w.run(send("/queue/q", &format!("q{i}"), true, 1, 2 * i + 2));
        acked.extend(out.iter().filter_map(|o| match o {
            Output::Deliver { message, .. } => Some(*message),
            _ => None,
        }));
    }
    for id in acked.iter().take(1) {
        w.run(Command::Ack {
            consumer: consumer(2, 1),
            destination: dest("/queue/q"),
            message: *id,
            confirm: None,
        });
    }
    w.run(Command::Create {
        from: conn(1),
        request_id: 3,
        destination: dest("/queue/empty"),
    });

    let mut rebuilt = Broker::new(ShardId(0), settings());
    for (offset, record) in w.store.records.clone() {
        rebuilt.replay(offset, record);
    }
    rebuilt.set_durable(Offset(w.store.end));
    let depth = |b: &Broker| {
        b.stats()
            .into_iter()
            .map(|s| (s.destination.to_string(), s.depth, s.durable_subscriptions))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        depth(&rebuilt),
        vec![
            ("/queue/empty".into(), 0, 0),
            ("/queue/q".into(), 5, 0),
            ("/topic/t".into(), 6, 1)
        ]
    );
    assert_eq!(rebuilt.release_point(), w.broker.release_point());
    // After a restart, what was delivered but not acknowledged comes again.
    let mut out = Vec::new();
    let command = subscribe(consumer(9, 1), "/queue/q", None, 10);
    rebuilt.handle(0, &command, &mut w.store, &mut out);
    let bodies: Vec<_> = deliveries(&out).into_iter().map(|d| d.1).collect();
    assert_eq!(bodies, vec!["q1", "q2", "q3", "q4", "q5"]);
}

#[test]
fn settled_messages_stop_pinning_the_journal_and_metadata_moves_forward() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/q", None, 10));
    let out = w.run(send("/queue/q", "m", true, 1, 1));
    let id = delivered_id(&out);
    assert_eq!(
        w.broker.release_point(),
        Some(Offset::ZERO),
        "the create record is needed"
    );
    w.run(Command::Ack {
        consumer: consumer(1, 1),
        destination: dest("/queue/q"),
        message: id,
        confirm: None,
    });
    assert_eq!(w.broker.release_point(), Some(Offset::ZERO));
    let end = Offset(w.store.end);
    assert_eq!(
        w.broker
            .carry_metadata_forward(w.now_ms, end, 0, &mut w.store),
        Handled::Done
    );
    let moved = w.broker.release_point().unwrap();
    assert!(
        moved > id.offset().unwrap(),
        "the create record was re-appended after the message"
    );
    let carried: Vec<_> = w
        .store
        .records
        .iter()
        .filter(|(offset, _)| *offset >= end)
        .map(|(_, record)| record.clone())
        .collect();
    assert_eq!(
        carried,
        vec![
            BrokerRecord::DestinationCreate(dest("/queue/q")),
            BrokerRecord::ProducerCheckpoint {
                producer_id: 1,
                sequence: 1,
                last_seen_ms: w.now_ms,
            },
        ],
        "the destination and the producer's last sequence moved forward"
    );
}

fn send_acks(outputs: &[Output]) -> Vec<(u64, MessageId, bool)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendAck {
                sequence,
                message,
                duplicate,
                ..
            } => Some((*sequence, *message, *duplicate)),
            _ => None,
        })
        .collect()
}

fn depth(broker: &Broker, destination: &str) -> usize {
    broker
        .stats()
        .into_iter()
        .find(|s| s.destination == dest(destination))
        .map_or(0, |s| s.depth)
}

#[test]
fn replayed_sends_are_acknowledged_as_duplicates_and_enqueued_once() {
    let mut w = World::new();
    let first = send_acks(&w.run(send("/queue/a", "m1", true, 7, 1)));
    let second = send_acks(&w.run(send("/queue/a", "m2", true, 7, 2)));
    // The client lost the connection and replays both.
    let replay: Vec<_> = [1, 2]
        .into_iter()
        .flat_map(|seq| send_acks(&w.run(send("/queue/a", "again", true, 7, seq))))
        .collect();
    assert_eq!(
        replay,
        vec![(1, MessageId(0), true), (2, second[0].1, true)],
        "duplicates; the latest one names the original message"
    );
    assert!(!first[0].2 && !second[0].2);
    assert_eq!(depth(&w.broker, "/queue/a"), 2, "nothing enqueued twice");
    let next = send_acks(&w.run(send("/queue/a", "m3", true, 7, 3)));
    assert!(!next[0].2, "the next sequence is new");
    assert_eq!(depth(&w.broker, "/queue/a"), 3);
    // Another producer's sequences are its own.
    let other = send_acks(&w.run(send("/queue/a", "x", true, 8, 1)));
    assert!(!other[0].2);
    // Non-persistent sends are not deduplicated (nothing is journaled).
    w.run(send("/queue/a", "v", false, 9, 1));
    w.run(send("/queue/a", "v", false, 9, 1));
    assert_eq!(depth(&w.broker, "/queue/a"), 6);
}

#[test]
fn a_duplicate_is_acknowledged_only_once_its_original_is_committed() {
    let mut w = World::new();
    assert!(
        w.run_undurable(send("/queue/a", "m", true, 7, 1))
            .is_empty()
    );
    assert!(
        w.run_undurable(send("/queue/a", "m", true, 7, 1))
            .is_empty(),
        "the original is not durable yet: neither is acknowledged"
    );
    let acks = send_acks(&w.durable());
    assert_eq!(acks.len(), 2);
    assert_eq!((acks[0].2, acks[1].2), (false, true));
    assert_eq!(acks[0].1, acks[1].1);
}

#[test]
fn duplicate_detection_survives_recovery_and_released_segments() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/a", None, 10));
    let out = w.run(send("/queue/a", "m", true, 7, 5));
    let id = delivered_id(&out);
    w.run(Command::Ack {
        consumer: consumer(1, 1),
        destination: dest("/queue/a"),
        message: id,
        confirm: None,
    });
    let end = Offset(w.store.end);
    w.broker
        .carry_metadata_forward(w.now_ms, end, 0, &mut w.store);
    let release = w.broker.release_point().expect("metadata is needed");
    assert!(release >= end, "the message's segment may go: {release:?}");

    // Recover from only what the journal keeps.
    let mut rebuilt = Broker::new(ShardId(0), settings());
    for (offset, record) in w.store.records.iter().filter(|(o, _)| *o >= release) {
        rebuilt.replay(*offset, record.clone());
    }
    rebuilt.set_durable(Offset(w.store.end));
    let mut out = Vec::new();
    rebuilt
        .handle(
            w.now_ms,
            &send("/queue/a", "m", true, 7, 5),
            &mut w.store,
            &mut out,
        )
        .eq(&Handled::Done)
        .then_some(())
        .expect("handled");
    assert_eq!(send_acks(&out), vec![(5, MessageId(0), true)]);
    assert_eq!(depth(&rebuilt, "/queue/a"), 0);
}

#[test]
fn an_idle_producer_is_forgotten_after_the_expiry_not_before() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/a", None, 10));
    let out = w.run(send("/queue/a", "m", true, 7, 1));
    w.run(Command::Ack {
        consumer: consumer(1, 1),
        destination: dest("/queue/a"),
        message: delivered_id(&out),
        confirm: None,
    });
    let carry = |w: &mut World| {
        let end = Offset(w.store.end);
        w.broker
            .carry_metadata_forward(w.now_ms, end, 0, &mut w.store);
    };
    w.now_ms += 60_000;
    carry(&mut w);
    assert!(
        send_acks(&w.run(send("/queue/a", "m", true, 7, 1)))[0].2,
        "within the expiry: still a duplicate"
    );
    w.now_ms += 60_001;
    carry(&mut w);
    assert!(
        !send_acks(&w.run(send("/queue/a", "m", true, 7, 1)))[0].2,
        "forgotten after the expiry"
    );
}

#[test]
fn bodies_beyond_the_cache_are_read_back_from_the_store() {
    let mut w = World::new();
    w.broker.settings.cache_bytes_max = 10;
    w.run(send("/queue/a", "a body longer than ten bytes", true, 1, 1));
    assert_eq!(w.broker.cached_bytes(), 0);
    let out = w.run(subscribe(consumer(1, 1), "/queue/a", None, 1));
    assert_eq!(
        deliveries(&out),
        vec![(consumer(1, 1), "a body longer than ten bytes".into(), 1)]
    );
}

fn with_local_ack(command: Command) -> Command {
    match command {
        Command::Send(send) => Command::Send(SendCommand {
            local_ack: true,
            ..send
        }),
        other => other,
    }
}

#[test]
fn local_sends_ack_on_the_local_flush_replicated_ones_and_deliveries_wait_for_the_commit() {
    let mut w = World::new();
    w.run(subscribe(consumer(5, 1), "/queue/a", None, 10));
    w.run_undurable(with_local_ack(send("/queue/a", "local", true, 1, 1)));
    w.run_undurable(send("/queue/a", "replicated", true, 2, 1));
    let local_end = Offset(w.store.end);
    let mut out = Vec::new();
    w.broker.on_local_durable(local_end, &mut out);
    assert!(
        matches!(out.as_slice(), [Output::SendAck { to, .. }] if *to == conn(1)),
        "only the local send is acknowledged by the local flush: {out:?}"
    );
    // The passive confirms: the replicated send is acknowledged and both
    // messages are delivered, never before.
    let after = w.durable();
    assert!(
        matches!(after.first(), Some(Output::SendAck { to, .. }) if *to == conn(2)),
        "{after:?}"
    );
    assert_eq!(
        deliveries(&after),
        vec![
            (consumer(5, 1), "local".into(), 1),
            (consumer(5, 1), "replicated".into(), 1)
        ]
    );
}

#[test]
fn standalone_refuse_turns_away_replicated_sends_but_takes_local_ones() {
    let mut w = World::new();
    w.broker.set_refuse_replicated(true);
    let out = w.run(send("/queue/a", "m", true, 1, 1));
    assert!(
        matches!(
            out.as_slice(),
            [Output::Refused {
                refusal: Refusal::NotReplicated,
                ..
            }]
        ),
        "{out:?}"
    );
    let mut out = w.run_undurable(with_local_ack(send("/queue/a", "m", true, 1, 2)));
    w.broker.on_local_durable(Offset(w.store.end), &mut out);
    assert!(
        matches!(out.as_slice(), [Output::SendAck { sequence: 2, .. }]),
        "{out:?}"
    );
}

#[test]
fn a_message_stored_before_this_activation_is_first_delivered_as_a_redelivery() {
    let mut w = World::new();
    w.run(send("/queue/a", "before", true, 1, 1));
    let activated = Offset(w.store.end);
    w.broker.set_activated_at(activated);
    w.run(send("/queue/a", "after", true, 1, 2));
    let out = w.run(subscribe(consumer(1, 1), "/queue/a", None, 10));
    assert_eq!(
        deliveries(&out),
        vec![
            (consumer(1, 1), "before".into(), 2),
            (consumer(1, 1), "after".into(), 1)
        ],
        "the first may have been delivered before a crash or failover"
    );
}

#[test]
fn a_confirmed_ack_is_answered_once_the_settlement_is_committed() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/a", None, 10));
    let id = delivered_id(&w.run(send("/queue/a", "m", true, 1, 1)));
    let ack = |message| Command::Ack {
        consumer: consumer(1, 1),
        destination: dest("/queue/a"),
        message,
        confirm: Some(77),
    };
    assert!(
        w.run_undurable(ack(id)).is_empty(),
        "not before the settle record is committed"
    );
    assert!(matches!(
        w.store.records.last().unwrap().1,
        BrokerRecord::Settle { .. }
    ));
    assert_eq!(
        w.durable(),
        vec![Output::Ok {
            to: conn(1),
            request_id: 77
        }]
    );
    // Acknowledged again (a redelivery after a failover, say): nothing is
    // held any more, so the answer comes at once.
    assert_eq!(
        w.run_undurable(ack(id)),
        vec![Output::Ok {
            to: conn(1),
            request_id: 77
        }]
    );
}

#[test]
fn a_confirmed_ack_settles_a_message_that_is_ready_again_a_plain_one_does_not() {
    let mut w = World::new();
    w.run(subscribe(consumer(1, 1), "/queue/a", None, 1));
    let first = delivered_id(&w.run(send("/queue/a", "m0", true, 1, 1)));
    // No credit left: m1 stays ready (as on a new active after a failover,
    // before the redelivery reaches the consumer that processed it).
    w.run(send("/queue/a", "m1", true, 1, 2));
    let (ready, _) = w.store.records.last().cloned().unwrap();
    let ready = MessageId::persistent(ShardId(0), ready);
    let ack = |message, confirm| Command::Ack {
        consumer: consumer(1, 1),
        destination: dest("/queue/a"),
        message,
        confirm,
    };
    assert!(w.run(ack(ready, None)).is_empty());
    assert_eq!(
        depth(&w.broker, "/queue/a"),
        2,
        "a plain ack of it changes nothing"
    );
    assert_eq!(
        w.run(ack(ready, Some(5))),
        vec![Output::Ok {
            to: conn(1),
            request_id: 5
        }]
    );
    assert!(matches!(
        &w.store.records.last().unwrap().1,
        BrokerRecord::Settle { message, .. } if *message == ready
    ));
    assert_eq!(depth(&w.broker, "/queue/a"), 1, "settled where it was");
    w.run(ack(first, None));
    assert_eq!(depth(&w.broker, "/queue/a"), 0);
}
