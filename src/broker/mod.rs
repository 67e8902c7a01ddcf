//! The broker state of one shard: destinations, queues, topics, durable and
//! non-durable subscriptions, consumers, redelivery, dead-lettering, expiry.
//!
//! Pure: commands come in with the time (`now_ms`), outputs go out to
//! connections, and records go to the journal through the [`Store`] trait.
//! No syscalls, no clock, no threads — the shard loop does the I/O.
//!
//! ```text
//!   Command ──▶ Broker::handle ──▶ Output (to a connection, maybe on another shard)
//!                    │  ▲
//!          append    ▼  │ read body back
//!                  Store (the shard's journal)
//! ```
//!
//! Durability: a persistent send is acknowledged only when the journal is
//! durable past its record (`on_durable`). Every state change that must
//! survive a restart is journaled *before* the in-memory state changes, so a
//! `Full` journal leaves the broker untouched and the command can be retried.
//!
//! Memory: a stored message costs a map entry and a ready-set entry; its
//! headers and body stay in memory only within a bounded cache and are read
//! back from the journal when delivered otherwise.

pub mod records;
mod stored;

use crate::ids::{ConnId, MessageId, Offset, ShardId};
use crate::protocol::{Destination, DestinationKind};
use bytes::Bytes;
use records::{BrokerRecord, MessageRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

/// Broker behaviour a profile sets.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Create unknown destinations on first use.
    pub auto_create: bool,
    /// Prefetch for a subscription that asks for 0.
    pub default_prefetch: u32,
    /// Deliveries after which a queue message is dead-lettered; 0 = never.
    pub max_deliveries: u32,
    /// Where dead-lettered messages go.
    pub dead_letter: Destination,
    /// Bytes of message headers and bodies this shard keeps in memory;
    /// beyond it, persistent messages are read back from the journal.
    pub cache_bytes_max: usize,
    /// A producer silent this long may lose its duplicate detection.
    pub producer_idle_expiry_ms: u64,
}

/// A subscription as a connection knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConsumerKey {
    pub conn: ConnId,
    pub subscription: u32,
}

/// Headers and body of a message, shared by every delivery of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageData {
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl MessageData {
    fn bytes(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
    }
}

/// What to do once a journaled send is durable, besides nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterDurable {
    /// Acknowledge the send to its producer.
    Ack {
        to: ConnId,
        producer_id: u64,
        sequence: u64,
        /// The send repeated one already journaled: nothing was enqueued.
        duplicate: bool,
    },
    /// A dead-lettered copy is safe: settle the original on its shard.
    SettleOriginal(SettleOriginal),
    /// A consumer's settlement is committed: answer its request.
    Confirm { to: ConnId, request_id: u64 },
}

/// Identifies a message held back on its queue while its dead-letter copy
/// is being stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleOriginal {
    pub shard: ShardId,
    pub destination: Destination,
    pub subscription: Option<String>,
    pub message: MessageId,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendCommand {
    pub destination: Destination,
    pub producer_id: u64,
    pub sequence: u64,
    pub persistent: bool,
    /// Unix ms after which the message is dropped; 0 = never.
    pub expires_at_ms: u64,
    pub data: Arc<MessageData>,
    pub after: Option<AfterDurable>,
    /// Acknowledge once the local journal has it (`local` ack mode), not
    /// once the passive has it too (`replicated`).
    pub local_ack: bool,
}

/// Input to the broker of the shard that owns the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Send(SendCommand),
    Subscribe {
        consumer: ConsumerKey,
        request_id: u64,
        destination: Destination,
        durable_name: Option<String>,
        prefetch: u32,
    },
    Unsubscribe {
        consumer: ConsumerKey,
        request_id: u64,
        destination: Destination,
        remove_durable: bool,
    },
    Ack {
        consumer: ConsumerKey,
        destination: Destination,
        message: MessageId,
        /// Answer with OK(request id) once the settlement is committed.
        confirm: Option<u64>,
    },
    Nack {
        consumer: ConsumerKey,
        destination: Destination,
        message: MessageId,
    },
    Create {
        from: ConnId,
        request_id: u64,
        destination: Destination,
    },
    Delete {
        from: ConnId,
        request_id: u64,
        destination: Destination,
    },
    /// The dead-letter copy of a message is durable: settle the original.
    SettleDeadLettered(SettleOriginal),
    /// A connection went away: its consumers leave, their unacknowledged
    /// deliveries become ready again.
    Disconnected(ConnId),
    /// Deliver what became deliverable (messages just made durable).
    Dispatch(Destination),
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoSuchDestination,
    WrongDestinationKind,
    NoSuchSubscription,
    SubscriptionExists,
    StorageFailure,
    /// A `replicated` send while no passive is in sync and the profile
    /// says `standalone = "refuse"`.
    NotReplicated,
}

/// Output for a connection (possibly on another shard) or another shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    SendAck {
        to: ConnId,
        producer_id: u64,
        sequence: u64,
        /// The message's id; for a duplicate, the original's when it was
        /// the producer's latest on this shard, else 0.
        message: MessageId,
        duplicate: bool,
    },
    Deliver {
        to: ConsumerKey,
        message: MessageId,
        delivery_count: u32,
        destination: Destination,
        persistent: bool,
        data: Arc<MessageData>,
    },
    Ok {
        to: ConnId,
        request_id: u64,
    },
    Refused {
        to: ConnId,
        request_id: u64,
        refusal: Refusal,
        text: String,
    },
    /// A send for another destination (dead-lettering), to route by name.
    Route(SendCommand),
    /// A command for the broker of `shard`.
    ToShard {
        shard: ShardId,
        command: Command,
    },
}

/// Why the journal could not take a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The batch is full: retry the command after the next flush.
    Full,
    /// The journal failed for good (poisoned).
    Failed(String),
}

/// The journal as the broker sees it.
pub trait Store {
    /// Appends a record; returns its offset and the offset just past it.
    fn append(&mut self, record: &BrokerRecord) -> Result<(Offset, Offset), StoreError>;
    /// Reads back the message record written at `offset`.
    fn read_message(&mut self, offset: Offset) -> Result<MessageRecord, StoreError>;
}

/// Result of `handle`: the command was taken, or must wait for the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    Done,
    /// The journal batch is full; call again with the same command later.
    Retry,
}

#[derive(Debug)]
struct Stored {
    /// Queues and subscriptions holding the message.
    refs: u32,
    /// Durable holders (queue, durable subscriptions): the record stays
    /// needed while this is above zero.
    durable_refs: u32,
    expires_at_ms: u64,
    data: Option<Arc<MessageData>>,
}

#[derive(Debug)]
struct Consumer {
    key: ConsumerKey,
    prefetch: u32,
    in_flight: u32,
}

/// The messages of a queue or of one subscription.
#[derive(Debug, Default)]
struct MessageQueue {
    /// Ready messages by id (ids grow with arrival, so this is FIFO, and a
    /// redelivered message goes back to its place) with their deliveries so far.
    ready: BTreeMap<MessageId, u32>,
    /// Delivered, not yet settled: consumer and deliveries so far.
    in_flight: HashMap<MessageId, (ConsumerKey, u32)>,
    /// Held back while a dead-letter copy is being stored.
    dead_lettering: HashMap<MessageId, u32>,
    consumers: Vec<Consumer>,
    next_consumer: usize,
}

impl MessageQueue {
    fn depth(&self) -> usize {
        self.ready.len() + self.in_flight.len() + self.dead_lettering.len()
    }

    fn all_messages(&self) -> impl Iterator<Item = MessageId> + '_ {
        self.ready
            .keys()
            .chain(self.in_flight.keys())
            .chain(self.dead_lettering.keys())
            .copied()
    }
}

#[derive(Debug)]
struct Topic {
    durable: BTreeMap<String, MessageQueue>,
    volatile: HashMap<ConsumerKey, MessageQueue>,
}

#[derive(Debug)]
enum Dest {
    Queue(MessageQueue),
    Topic(Topic),
}

/// A create record that stays needed while its destination or durable
/// subscription exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Meta {
    Destination(Destination),
    Subscription(Destination, String),
    /// The record that holds a producer's last sequence (its latest message
    /// or a checkpoint).
    Producer(u64),
}

/// Duplicate detection for one producer on this shard. Its sends reach a
/// shard in sequence order (one connection, in order; a replay after
/// failover resends in the original order), so a send whose sequence is
/// not above the highest journaled here repeats one this shard already has.
#[derive(Debug, Clone, Copy)]
struct ProducerState {
    /// Highest sequence journaled on this shard.
    sequence: u64,
    /// The message that carried it; `None` once only a checkpoint does.
    message: Option<MessageId>,
    /// End of the record holding `sequence`: a duplicate is acknowledged
    /// only once the commit point passed it, like the original.
    end: Offset,
    /// Unix ms of the producer's last send; 0 = replayed from a message
    /// record (the idle clock starts at the next carry-forward).
    last_seen_ms: u64,
}

/// Depth and consumers of one destination, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationStats {
    pub destination: Destination,
    /// Messages held (ready + delivered unacknowledged), summed over
    /// subscriptions for a topic.
    pub depth: usize,
    pub consumers: usize,
    pub durable_subscriptions: usize,
}

/// One shard's broker.
#[derive(Debug)]
pub struct Broker {
    shard: ShardId,
    settings: BrokerSettings,
    destinations: BTreeMap<Destination, Dest>,
    messages: stored::StoredMessages,
    /// Journal records still needed, by offset; the journal may release
    /// everything below the first.
    live_messages: BTreeSet<Offset>,
    /// Create records of destinations and durable subscriptions still in
    /// force, by offset (few; kept apart so a message costs 8 bytes here).
    live_meta: BTreeMap<Offset, Meta>,
    /// Where each destination's / subscription's create record is.
    meta_offsets: HashMap<Meta, Offset>,
    /// Duplicate detection, by producer id (0 = none: not deduplicated).
    producers: HashMap<u64, ProducerState>,
    /// What waits for the journal to be durable past an offset: an output
    /// to emit, and the destination whose message became deliverable.
    /// Gated on the commit point (`on_durable`).
    pending: VecDeque<(Offset, Option<AfterDurable>, MessageId, Destination)>,
    /// Acknowledgements of `local` sends, gated on the local journal alone
    /// (`on_local_durable`).
    pending_local: VecDeque<(Offset, AfterDurable, MessageId)>,
    /// Refuse `replicated` sends (standalone with `standalone = "refuse"`).
    refuse_replicated: bool,
    /// The journal is durable below this; persistent messages at or past it
    /// are not delivered yet (a crash could still take them back).
    durable: Offset,
    /// Where this server's serving epoch began: a message stored before it
    /// may have been delivered under an earlier activation (before a crash
    /// or a failover), so its first delivery here counts as a redelivery.
    activated_at: Offset,
    next_volatile: u64,
    cached_bytes: usize,
}

impl Broker {
    pub fn new(shard: ShardId, settings: BrokerSettings) -> Broker {
        Broker {
            shard,
            settings,
            destinations: BTreeMap::new(),
            messages: stored::StoredMessages::default(),
            live_messages: BTreeSet::new(),
            live_meta: BTreeMap::new(),
            meta_offsets: HashMap::new(),
            producers: HashMap::new(),
            pending: VecDeque::new(),
            pending_local: VecDeque::new(),
            refuse_replicated: false,
            next_volatile: 0,
            cached_bytes: 0,
            durable: Offset::ZERO,
            activated_at: Offset::ZERO,
        }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The journal may release every segment below this offset: no record
    /// before it is needed any more. `None` when nothing is needed.
    pub fn release_point(&self) -> Option<Offset> {
        let message = self.live_messages.first().copied();
        let meta = self.live_meta.keys().next().copied();
        match (message, meta) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Bytes of message data held in memory.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Number of messages stored on this shard.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    /// Depth and consumers of every destination on this shard.
    pub fn stats(&self) -> Vec<DestinationStats> {
        self.destinations
            .iter()
            .map(|(destination, dest)| match dest {
                Dest::Queue(q) => DestinationStats {
                    destination: destination.clone(),
                    depth: q.depth(),
                    consumers: q.consumers.len(),
                    durable_subscriptions: 0,
                },
                Dest::Topic(t) => DestinationStats {
                    destination: destination.clone(),
                    depth: t
                        .durable
                        .values()
                        .chain(t.volatile.values())
                        .map(MessageQueue::depth)
                        .sum(),
                    consumers: t
                        .durable
                        .values()
                        .chain(t.volatile.values())
                        .map(|q| q.consumers.len())
                        .sum(),
                    durable_subscriptions: t.durable.len(),
                },
            })
            .collect()
    }

    // ---- Recovery ----

    /// Applies a record read back from the journal at `offset` (recovery, or
    /// a passive applying the active's records later).
    pub fn replay(&mut self, offset: Offset, record: BrokerRecord) {
        match record {
            BrokerRecord::Message(message) => {
                let id = MessageId::persistent(self.shard, offset);
                let data = message.data;
                if message.producer_id != 0 {
                    self.note_producer(
                        message.producer_id,
                        message.sequence,
                        Some(id),
                        (offset, offset),
                        0,
                    );
                }
                self.ensure_in_memory(&message.destination);
                self.store_message(
                    id,
                    &message.destination,
                    message.expires_at_ms,
                    data,
                    Some(offset),
                );
            }
            BrokerRecord::Settle {
                destination,
                subscription,
                message,
            } => {
                let slot = Slot::from_subscription(subscription.as_deref());
                if let Some(queue) = self.queue_mut(&destination, &slot) {
                    let held = queue.ready.remove(&message).is_some()
                        || queue.in_flight.remove(&message).is_some()
                        || queue.dead_lettering.remove(&message).is_some();
                    if held {
                        self.release_ref(message, true);
                    }
                }
            }
            BrokerRecord::DestinationCreate(destination) => {
                self.ensure_in_memory(&destination);
                self.set_meta(Meta::Destination(destination), offset);
            }
            BrokerRecord::DestinationDelete(destination) => self.drop_destination(&destination),
            BrokerRecord::SubscriptionCreate { topic, name } => {
                self.ensure_in_memory(&topic);
                if let Some(Dest::Topic(t)) = self.destinations.get_mut(&topic) {
                    t.durable.entry(name.clone()).or_default();
                }
                self.set_meta(Meta::Subscription(topic, name), offset);
            }
            BrokerRecord::SubscriptionDelete { topic, name } => self.drop_durable(&topic, &name),
            BrokerRecord::ProducerCheckpoint {
                producer_id,
                sequence,
                last_seen_ms,
            } => self.note_producer(producer_id, sequence, None, (offset, offset), last_seen_ms),
        }
    }

    /// `producer_id`'s highest sequence here is (at least) `sequence`,
    /// held by the record at `offset` ending at `end` (a replayed record is
    /// durable: `end` may be given as `offset`). Only a record that holds
    /// the highest sequence becomes the one that must be kept.
    fn note_producer(
        &mut self,
        producer_id: u64,
        sequence: u64,
        message: Option<MessageId>,
        (offset, end): (Offset, Offset),
        last_seen_ms: u64,
    ) {
        let state = self.producers.entry(producer_id).or_insert(ProducerState {
            sequence: 0,
            message: None,
            end,
            last_seen_ms,
        });
        if sequence < state.sequence {
            return;
        }
        *state = ProducerState {
            sequence,
            message,
            end,
            last_seen_ms: last_seen_ms.max(state.last_seen_ms),
        };
        self.set_meta(Meta::Producer(producer_id), offset);
    }

    /// A persistent send this shard already journaled (same producer, a
    /// sequence not above its highest here): acknowledge it as a duplicate
    /// once the original is committed, enqueue nothing. Returns whether it
    /// was one.
    fn answer_duplicate(&mut self, send: &SendCommand, out: &mut Vec<Output>) -> bool {
        let Some(state) = self.producers.get(&send.producer_id) else {
            return false;
        };
        if send.producer_id == 0 || !send.persistent || send.sequence > state.sequence {
            return false;
        }
        let state = *state;
        let Some(AfterDurable::Ack {
            to,
            producer_id,
            sequence,
            ..
        }) = send.after
        else {
            return true;
        };
        let after = AfterDurable::Ack {
            to,
            producer_id,
            sequence,
            duplicate: true,
        };
        let id = match state.message {
            Some(id) if state.sequence == sequence => id,
            _ => MessageId(0),
        };
        if state.end <= self.durable {
            self.emit_after(after, id, out);
        } else if send.local_ack {
            self.pending_local.push_back((state.end, after, id));
        } else {
            self.pending
                .push_back((state.end, Some(after), id, send.destination.clone()));
        }
        true
    }

    fn ensure_in_memory(&mut self, destination: &Destination) {
        self.destinations
            .entry(destination.clone())
            .or_insert_with(|| match destination.kind() {
                DestinationKind::Queue => Dest::Queue(MessageQueue::default()),
                DestinationKind::Topic => Dest::Topic(Topic {
                    durable: BTreeMap::new(),
                    volatile: HashMap::new(),
                }),
            });
    }

    fn set_meta(&mut self, meta: Meta, offset: Offset) {
        if let Some(old) = self.meta_offsets.insert(meta.clone(), offset) {
            self.live_meta.remove(&old);
        }
        self.live_meta.insert(offset, meta);
    }

    fn clear_meta(&mut self, meta: &Meta) {
        if let Some(old) = self.meta_offsets.remove(meta) {
            self.live_meta.remove(&old);
        }
    }

    // ---- Commands ----

    /// Handles one command. On `Retry` nothing changed.
    pub fn handle(
        &mut self,
        now_ms: u64,
        command: &Command,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Handled {
        match self.try_handle(now_ms, command, store, out) {
            Ok(()) => Handled::Done,
            Err(StoreError::Full) => Handled::Retry,
            Err(StoreError::Failed(text)) => {
                // The journal is poisoned: refuse what asked for an answer;
                // nothing is acknowledged any more.
                if let Some((to, request_id)) = command.requester() {
                    out.push(Output::Refused {
                        to,
                        request_id,
                        refusal: Refusal::StorageFailure,
                        text,
                    });
                }
                Handled::Done
            }
        }
    }

    fn try_handle(
        &mut self,
        now_ms: u64,
        command: &Command,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        match command {
            Command::Send(send) => self.send(now_ms, send, store, out),
            Command::Subscribe {
                consumer,
                request_id,
                destination,
                durable_name,
                prefetch,
            } => {
                let prefetch = if *prefetch == 0 {
                    self.settings.default_prefetch
                } else {
                    *prefetch
                };
                if !self.ensure_destination(destination, *consumer, *request_id, store, out)? {
                    return Ok(());
                }
                if let Some(name) = durable_name {
                    if destination.is_queue() {
                        out.push(refused(
                            consumer.conn,
                            *request_id,
                            Refusal::WrongDestinationKind,
                            format!(
                                "{destination} is a queue; durable subscriptions are for topics"
                            ),
                        ));
                        return Ok(());
                    }
                    let exists = matches!(self.destinations.get(destination), Some(Dest::Topic(t)) if t.durable.contains_key(name));
                    if !exists {
                        let record = BrokerRecord::SubscriptionCreate {
                            topic: destination.clone(),
                            name: name.clone(),
                        };
                        let (offset, _) = store.append(&record)?;
                        if let Some(Dest::Topic(t)) = self.destinations.get_mut(destination) {
                            t.durable.insert(name.clone(), MessageQueue::default());
                        }
                        self.set_meta(
                            Meta::Subscription(destination.clone(), name.clone()),
                            offset,
                        );
                    }
                }
                let queue = match self.destinations.get_mut(destination) {
                    Some(Dest::Queue(q)) => q,
                    Some(Dest::Topic(t)) => match durable_name {
                        Some(name) => t.durable.get_mut(name).expect("created above"),
                        None => t.volatile.entry(*consumer).or_default(),
                    },
                    None => unreachable!("ensured above"),
                };
                if queue.consumers.iter().any(|c| c.key == *consumer) {
                    out.push(refused(
                        consumer.conn,
                        *request_id,
                        Refusal::SubscriptionExists,
                        format!(
                            "subscription {} already exists on this connection",
                            consumer.subscription
                        ),
                    ));
                    return Ok(());
                }
                queue.consumers.push(Consumer {
                    key: *consumer,
                    prefetch,
                    in_flight: 0,
                });
                out.push(Output::Ok {
                    to: consumer.conn,
                    request_id: *request_id,
                });
                let slot = match (destination.kind(), durable_name) {
                    (DestinationKind::Queue, _) => Slot::Queue,
                    (DestinationKind::Topic, Some(name)) => Slot::Durable(name.clone()),
                    (DestinationKind::Topic, None) => Slot::Volatile(*consumer),
                };
                self.dispatch(now_ms, destination, &slot, store, out)
            }
            Command::Unsubscribe {
                consumer,
                request_id,
                destination,
                remove_durable,
            } => {
                let Some(slot) = self.slot_of(destination, *consumer) else {
                    out.push(refused(
                        consumer.conn,
                        *request_id,
                        Refusal::NoSuchSubscription,
                        format!("no subscription {} on {destination}", consumer.subscription),
                    ));
                    return Ok(());
                };
                if *remove_durable && let Slot::Durable(name) = &slot {
                    let record = BrokerRecord::SubscriptionDelete {
                        topic: destination.clone(),
                        name: name.clone(),
                    };
                    store.append(&record)?;
                    self.drop_durable(destination, name);
                } else {
                    self.detach(now_ms, destination, &slot, *consumer, store, out)?;
                }
                out.push(Output::Ok {
                    to: consumer.conn,
                    request_id: *request_id,
                });
                Ok(())
            }
            Command::Ack {
                consumer,
                destination,
                message,
                confirm,
            } => {
                let confirm = confirm.map(|request_id| AfterDurable::Confirm {
                    to: consumer.conn,
                    request_id,
                });
                self.settle_delivery(
                    now_ms,
                    destination,
                    *consumer,
                    *message,
                    confirm,
                    store,
                    out,
                )
            }
            Command::Nack {
                consumer,
                destination,
                message,
            } => self.nack(now_ms, destination, *consumer, *message, store, out),
            Command::Create {
                from,
                request_id,
                destination,
            } => {
                if !self.destinations.contains_key(destination) {
                    let (offset, _) =
                        store.append(&BrokerRecord::DestinationCreate(destination.clone()))?;
                    self.ensure_in_memory(destination);
                    self.set_meta(Meta::Destination(destination.clone()), offset);
                }
                out.push(Output::Ok {
                    to: *from,
                    request_id: *request_id,
                });
                Ok(())
            }
            Command::Delete {
                from,
                request_id,
                destination,
            } => {
                if !self.destinations.contains_key(destination) {
                    out.push(refused(
                        *from,
                        *request_id,
                        Refusal::NoSuchDestination,
                        format!("{destination} does not exist"),
                    ));
                    return Ok(());
                }
                store.append(&BrokerRecord::DestinationDelete(destination.clone()))?;
                self.drop_destination(destination);
                out.push(Output::Ok {
                    to: *from,
                    request_id: *request_id,
                });
                Ok(())
            }
            Command::SettleDeadLettered(original) => {
                let slot = Slot::from_subscription(original.subscription.as_deref());
                let Some(queue) = self.queue_mut(&original.destination, &slot) else {
                    return Ok(());
                };
                if !queue.dead_lettering.contains_key(&original.message) {
                    return Ok(());
                }
                if original.message.offset().is_some() {
                    store.append(&BrokerRecord::Settle {
                        destination: original.destination.clone(),
                        subscription: original.subscription.clone(),
                        message: original.message,
                    })?;
                }
                if let Some(queue) = self.queue_mut(&original.destination, &slot) {
                    queue.dead_lettering.remove(&original.message);
                }
                self.release_ref(original.message, original.message.offset().is_some());
                Ok(())
            }
            Command::Dispatch(destination) => self.dispatch_all(now_ms, destination, store, out),
            Command::Disconnected(conn) => {
                let mut leaving = Vec::new();
                for destination in self.destinations.keys() {
                    for slot in self.slots(destination) {
                        let queue = match (&self.destinations[destination], &slot) {
                            (Dest::Queue(q), _) => q,
                            (Dest::Topic(t), Slot::Durable(name)) => &t.durable[name],
                            (Dest::Topic(t), Slot::Volatile(key)) => &t.volatile[key],
                            (Dest::Topic(_), Slot::Queue) => {
                                unreachable!("topics have no queue slot")
                            }
                        };
                        for consumer in queue.consumers.iter().filter(|c| c.key.conn == *conn) {
                            leaving.push((destination.clone(), slot.clone(), consumer.key));
                        }
                    }
                }
                for (destination, slot, consumer) in leaving {
                    self.detach(now_ms, &destination, &slot, consumer, store, out)?;
                }
                Ok(())
            }
        }
    }

    /// Makes sure `destination` exists (creating it durably when allowed).
    /// Returns false (and answers the requester) when it does not.
    fn ensure_destination(
        &mut self,
        destination: &Destination,
        consumer: ConsumerKey,
        request_id: u64,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<bool, StoreError> {
        if self.destinations.contains_key(destination) {
            return Ok(true);
        }
        if !self.settings.auto_create {
            out.push(refused(
                consumer.conn,
                request_id,
                Refusal::NoSuchDestination,
                format!("{destination} does not exist and auto_create is off"),
            ));
            return Ok(false);
        }
        let (offset, _) = store.append(&BrokerRecord::DestinationCreate(destination.clone()))?;
        self.ensure_in_memory(destination);
        self.set_meta(Meta::Destination(destination.clone()), offset);
        Ok(true)
    }

    fn send(
        &mut self,
        now_ms: u64,
        send: &SendCommand,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        let ack_to = match &send.after {
            Some(AfterDurable::Ack { to, .. }) => Some(*to),
            _ => None,
        };
        if let Some(to) = ack_to
            && self.refuse_replicated
            && !send.local_ack
            && send.persistent
        {
            out.push(refused(
                to,
                send.sequence,
                Refusal::NotReplicated,
                "no passive is in sync and this server runs with standalone = \"refuse\": \
                 send with ack mode local, or wait for the passive"
                    .into(),
            ));
            return Ok(());
        }
        if self.answer_duplicate(send, out) {
            return Ok(());
        }
        if !self.destinations.contains_key(&send.destination) {
            if !self.settings.auto_create && send.destination != self.settings.dead_letter {
                if let Some(to) = ack_to {
                    out.push(refused(
                        to,
                        send.sequence,
                        Refusal::NoSuchDestination,
                        format!("{} does not exist and auto_create is off", send.destination),
                    ));
                }
                return Ok(());
            }
            let (offset, _) =
                store.append(&BrokerRecord::DestinationCreate(send.destination.clone()))?;
            self.ensure_in_memory(&send.destination);
            self.set_meta(Meta::Destination(send.destination.clone()), offset);
        }
        let durable_holders = match &self.destinations[&send.destination] {
            Dest::Queue(_) => 1,
            Dest::Topic(t) => t.durable.len(),
        };
        let journaled = send.persistent && durable_holders > 0;
        let (id, end) = if journaled {
            let record = BrokerRecord::Message(MessageRecord {
                destination: send.destination.clone(),
                producer_id: send.producer_id,
                sequence: send.sequence,
                expires_at_ms: send.expires_at_ms,
                data: send.data.clone(),
            });
            let (offset, end) = store.append(&record)?;
            let id = MessageId::persistent(self.shard, offset);
            if send.producer_id != 0 {
                self.note_producer(
                    send.producer_id,
                    send.sequence,
                    Some(id),
                    (offset, end),
                    now_ms,
                );
            }
            (id, Some((offset, end)))
        } else {
            self.next_volatile += 1;
            (MessageId::volatile(self.shard, self.next_volatile), None)
        };
        self.store_message(
            id,
            &send.destination,
            send.expires_at_ms,
            send.data.clone(),
            end.map(|(o, _)| o),
        );
        match (&send.after, end) {
            (Some(after), Some((_, end))) if send.local_ack => {
                self.pending_local.push_back((end, after.clone(), id));
                self.pending
                    .push_back((end, None, id, send.destination.clone()))
            }
            (after, Some((_, end))) => {
                self.pending
                    .push_back((end, after.clone(), id, send.destination.clone()))
            }
            (Some(after), None) => self.emit_after(after.clone(), id, out),
            (None, None) => {}
        }
        self.dispatch_all(now_ms, &send.destination, store, out)
    }

    /// Records a message on its destination's queues.
    fn store_message(
        &mut self,
        id: MessageId,
        destination: &Destination,
        expires_at_ms: u64,
        data: Arc<MessageData>,
        offset: Option<Offset>,
    ) {
        let (refs, durable_refs) = match self.destinations.get_mut(destination) {
            Some(Dest::Queue(q)) => {
                q.ready.insert(id, 0);
                (1, u32::from(offset.is_some()))
            }
            Some(Dest::Topic(t)) => {
                for q in t.durable.values_mut() {
                    q.ready.insert(id, 0);
                }
                for q in t.volatile.values_mut() {
                    q.ready.insert(id, 0);
                }
                let durable = if offset.is_some() {
                    t.durable.len() as u32
                } else {
                    0
                };
                (t.durable.len() as u32 + t.volatile.len() as u32, durable)
            }
            None => (0, 0),
        };
        if refs == 0 {
            return;
        }
        // Persistent messages can be read back, so they are cached only
        // within the budget; others live only in memory.
        let cache =
            offset.is_none() || self.cached_bytes + data.bytes() <= self.settings.cache_bytes_max;
        if cache {
            self.cached_bytes += data.bytes();
        }
        self.messages.insert(
            id,
            Stored {
                refs,
                durable_refs,
                expires_at_ms,
                data: cache.then_some(data),
            },
        );
        if durable_refs > 0 {
            self.live_messages
                .insert(offset.expect("durable refs need a record"));
        }
    }

    /// Drops one holder of a message; frees it with the last.
    fn release_ref(&mut self, id: MessageId, durable: bool) {
        let Some(stored) = self.messages.get_mut(id) else {
            return;
        };
        // The last holder removes it: the map takes no zero-holder entry.
        let last = stored.refs == 1;
        if !last {
            stored.refs -= 1;
        }
        if durable && stored.durable_refs > 0 {
            stored.durable_refs -= 1;
            if stored.durable_refs == 0
                && let Some(offset) = id.offset()
            {
                self.live_messages.remove(&offset);
            }
        }
        if last {
            let stored = self.messages.remove(id).expect("present");
            if let Some(data) = stored.data {
                self.cached_bytes -= data.bytes();
            }
        }
    }

    fn queue_ref(&self, destination: &Destination, slot: &Slot) -> Option<&MessageQueue> {
        match (self.destinations.get(destination)?, slot) {
            (Dest::Queue(q), Slot::Queue) => Some(q),
            (Dest::Topic(t), Slot::Durable(name)) => t.durable.get(name),
            (Dest::Topic(t), Slot::Volatile(key)) => t.volatile.get(key),
            _ => None,
        }
    }

    fn queue_mut(&mut self, destination: &Destination, slot: &Slot) -> Option<&mut MessageQueue> {
        match (self.destinations.get_mut(destination)?, slot) {
            (Dest::Queue(q), Slot::Queue) => Some(q),
            (Dest::Topic(t), Slot::Durable(name)) => t.durable.get_mut(name),
            (Dest::Topic(t), Slot::Volatile(key)) => t.volatile.get_mut(key),
            _ => None,
        }
    }

    /// Where a consumer is attached on a destination, if it is.
    fn slot_of(&self, destination: &Destination, consumer: ConsumerKey) -> Option<Slot> {
        let attached = |q: &MessageQueue| q.consumers.iter().any(|c| c.key == consumer);
        match self.destinations.get(destination)? {
            Dest::Queue(q) => attached(q).then_some(Slot::Queue),
            Dest::Topic(t) => {
                if t.volatile.get(&consumer).is_some_and(attached) {
                    return Some(Slot::Volatile(consumer));
                }
                t.durable
                    .iter()
                    .find(|(_, q)| attached(q))
                    .map(|(name, _)| Slot::Durable(name.clone()))
            }
        }
    }

    /// Every queue of a destination.
    fn slots(&self, destination: &Destination) -> Vec<Slot> {
        match self.destinations.get(destination) {
            Some(Dest::Queue(_)) => vec![Slot::Queue],
            Some(Dest::Topic(t)) => t
                .durable
                .keys()
                .map(|n| Slot::Durable(n.clone()))
                .chain(t.volatile.keys().map(|k| Slot::Volatile(*k)))
                .collect(),
            None => vec![],
        }
    }

    /// Removes a consumer; its unacknowledged deliveries become ready again
    /// with their delivery count kept; a volatile subscription goes with it.
    fn detach(
        &mut self,
        now_ms: u64,
        destination: &Destination,
        slot: &Slot,
        consumer: ConsumerKey,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        if let Slot::Volatile(key) = slot {
            let Some(Dest::Topic(t)) = self.destinations.get_mut(destination) else {
                return Ok(());
            };
            if let Some(queue) = t.volatile.remove(key) {
                for id in queue.all_messages().collect::<Vec<_>>() {
                    self.release_ref(id, false);
                }
            }
            return Ok(());
        }
        let Some(queue) = self.queue_mut(destination, slot) else {
            return Ok(());
        };
        queue.consumers.retain(|c| c.key != consumer);
        let returned: Vec<_> = queue
            .in_flight
            .iter()
            .filter(|(_, (owner, _))| *owner == consumer)
            .map(|(id, (_, count))| (*id, *count))
            .collect();
        for (id, count) in returned {
            queue.in_flight.remove(&id);
            queue.ready.insert(id, count);
        }
        self.dispatch(now_ms, destination, slot, store, out)
    }

    /// Takes a delivery back from its consumer; returns its delivery count,
    /// or `None` when the consumer does not hold it.
    fn take_delivery(
        &mut self,
        destination: &Destination,
        slot: &Slot,
        consumer: ConsumerKey,
        message: MessageId,
    ) -> Option<u32> {
        let queue = self.queue_mut(destination, slot)?;
        let &(owner, count) = queue.in_flight.get(&message)?;
        if owner != consumer {
            return None;
        }
        queue.in_flight.remove(&message);
        if let Some(c) = queue.consumers.iter_mut().find(|c| c.key == consumer) {
            c.in_flight -= 1;
        }
        Some(count)
    }

    /// Settles a delivery; `confirm` is emitted once that is committed
    /// (at once when nothing is journaled or nothing is held).
    ///
    /// A confirmed ACK settles the message wherever it is on the consumer's
    /// queue — ready, or delivered to another consumer — not only when
    /// delivered to this one: it is how a client that processed a message
    /// before a failover settles it on the new active (message ids are
    /// journal offsets, the same on both servers), where it is ready again.
    #[allow(clippy::too_many_arguments)]
    fn settle_delivery(
        &mut self,
        now_ms: u64,
        destination: &Destination,
        consumer: ConsumerKey,
        message: MessageId,
        confirm: Option<AfterDurable>,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        let found = self.slot_of(destination, consumer).and_then(|slot| {
            let queue = self.queue_ref(destination, &slot)?;
            let owner = match queue.in_flight.get(&message) {
                Some(&(owner, _)) if owner == consumer || confirm.is_some() => Some(owner),
                Some(_) => return None,
                None if confirm.is_some() && queue.ready.contains_key(&message) => None,
                None => return None,
            };
            Some((slot, owner))
        });
        let Some((slot, owner)) = found else {
            if let Some(confirm) = confirm {
                self.emit_after(confirm, message, out);
            }
            return Ok(());
        };
        if slot.is_durable() && message.offset().is_some() {
            let (_, end) = store.append(&BrokerRecord::Settle {
                destination: destination.clone(),
                subscription: slot.name(),
                message,
            })?;
            if let Some(confirm) = confirm {
                self.pending
                    .push_back((end, Some(confirm), message, destination.clone()));
            }
        } else if let Some(confirm) = confirm {
            self.emit_after(confirm, message, out);
        }
        match owner {
            Some(owner) => {
                self.take_delivery(destination, &slot, owner, message);
            }
            None => {
                self.queue_mut(destination, &slot)
                    .expect("found")
                    .ready
                    .remove(&message);
            }
        }
        self.release_ref(message, slot.is_durable());
        self.dispatch(now_ms, destination, &slot, store, out)
    }

    fn nack(
        &mut self,
        now_ms: u64,
        destination: &Destination,
        consumer: ConsumerKey,
        message: MessageId,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        let Some(slot) = self.slot_of(destination, consumer) else {
            return Ok(());
        };
        if let Some(count) = self.take_delivery(destination, &slot, consumer, message) {
            self.queue_mut(destination, &slot)
                .expect("held")
                .ready
                .insert(message, count);
            self.dispatch(now_ms, destination, &slot, store, out)?;
        }
        Ok(())
    }

    /// Dispatches on every queue of a destination.
    fn dispatch_all(
        &mut self,
        now_ms: u64,
        destination: &Destination,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        for slot in self.slots(destination) {
            self.dispatch(now_ms, destination, &slot, store, out)?;
        }
        Ok(())
    }

    /// Delivers ready messages of one queue to its consumers with credit,
    /// round robin; drops expired ones and dead-letters exhausted ones.
    fn dispatch(
        &mut self,
        now_ms: u64,
        destination: &Destination,
        slot: &Slot,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        loop {
            let Some(queue) = self.queue_mut(destination, slot) else {
                return Ok(());
            };
            let Some((&id, &count)) = queue.ready.first_key_value() else {
                return Ok(());
            };
            if id.offset().is_some_and(|offset| offset >= self.durable) {
                // Not durable yet; `on_durable` asks for a dispatch later.
                return Ok(());
            }
            let Some(stored) = self.messages.get(id) else {
                // Released with a deleted destination; forget it.
                self.queue_mut(destination, slot)
                    .expect("queue")
                    .ready
                    .remove(&id);
                continue;
            };
            if stored.expires_at_ms != 0 && stored.expires_at_ms <= now_ms {
                if slot.is_durable() && id.offset().is_some() {
                    store.append(&BrokerRecord::Settle {
                        destination: destination.clone(),
                        subscription: slot.name(),
                        message: id,
                    })?;
                }
                self.queue_mut(destination, slot)
                    .expect("queue")
                    .ready
                    .remove(&id);
                self.release_ref(id, slot.is_durable());
                continue;
            }
            let max = self.settings.max_deliveries;
            if max > 0
                && count >= max
                && *slot == Slot::Queue
                && *destination != self.settings.dead_letter
            {
                self.dead_letter(destination, id, count, store, out)?;
                continue;
            }
            // The next consumer with credit, round robin.
            let queue = self.queue_mut(destination, slot).expect("queue");
            let n = queue.consumers.len();
            let Some(pick) = (0..n)
                .map(|i| (queue.next_consumer + i) % n)
                .find(|&i| queue.consumers[i].in_flight < queue.consumers[i].prefetch)
            else {
                return Ok(());
            };
            queue.next_consumer = (pick + 1) % n;
            // Deliveries are not journaled: one stored under an earlier
            // activation may have reached a consumer then.
            let count = if count == 0 && id.offset().is_some_and(|o| o < self.activated_at) {
                1
            } else {
                count
            };
            let data = self.message_data(id, store)?;
            let queue = self.queue_mut(destination, slot).expect("queue");
            let consumer = &mut queue.consumers[pick];
            consumer.in_flight += 1;
            let to = consumer.key;
            queue.ready.remove(&id);
            queue.in_flight.insert(id, (to, count + 1));
            out.push(Output::Deliver {
                to,
                message: id,
                delivery_count: count + 1,
                destination: destination.clone(),
                persistent: id.offset().is_some(),
                data,
            });
        }
    }

    /// Holds a queue message back and routes a copy to the dead-letter
    /// queue; the original is settled only once the copy is durable.
    fn dead_letter(
        &mut self,
        destination: &Destination,
        id: MessageId,
        count: u32,
        store: &mut dyn Store,
        out: &mut Vec<Output>,
    ) -> Result<(), StoreError> {
        let data = self.message_data(id, store)?;
        let queue = self.queue_mut(destination, &Slot::Queue).expect("queue");
        queue.ready.remove(&id);
        queue.dead_lettering.insert(id, count);
        let mut headers = data.headers.clone();
        headers.push(("twinmq-dead-letter-from".into(), destination.to_string()));
        headers.push(("twinmq-deliveries".into(), count.to_string()));
        out.push(Output::Route(SendCommand {
            destination: self.settings.dead_letter.clone(),
            producer_id: 0,
            sequence: 0,
            persistent: id.offset().is_some(),
            expires_at_ms: 0,
            data: Arc::new(MessageData {
                headers,
                body: data.body.clone(),
            }),
            after: Some(AfterDurable::SettleOriginal(SettleOriginal {
                shard: self.shard,
                destination: destination.clone(),
                subscription: None,
                message: id,
            })),
            local_ack: false,
        }));
        Ok(())
    }

    /// Headers and body of a stored message: from the cache, or read back.
    fn message_data(
        &mut self,
        id: MessageId,
        store: &mut dyn Store,
    ) -> Result<Arc<MessageData>, StoreError> {
        let stored = self.messages.get(id).expect("stored message");
        if let Some(data) = &stored.data {
            return Ok(data.clone());
        }
        let offset = id.offset().expect("uncached messages are persistent");
        Ok(store.read_message(offset)?.data)
    }

    fn emit_after(&mut self, after: AfterDurable, id: MessageId, out: &mut Vec<Output>) {
        match after {
            AfterDurable::Ack {
                to,
                producer_id,
                sequence,
                duplicate,
            } => out.push(Output::SendAck {
                to,
                producer_id,
                sequence,
                message: id,
                duplicate,
            }),
            AfterDurable::SettleOriginal(original) => out.push(Output::ToShard {
                shard: original.shard,
                command: Command::SettleDeadLettered(original),
            }),
            AfterDurable::Confirm { to, request_id } => out.push(Output::Ok { to, request_id }),
        }
    }

    /// Whether `replicated` sends are refused (standalone, `refuse`).
    pub fn set_refuse_replicated(&mut self, refuse: bool) {
        self.refuse_replicated = refuse;
    }

    /// The local journal is durable below `durable`: acknowledge the
    /// `local` sends that waited for it.
    pub fn on_local_durable(&mut self, durable: Offset, out: &mut Vec<Output>) {
        while let Some((end, ..)) = self.pending_local.front() {
            if *end > durable {
                break;
            }
            let (_, after, id) = self.pending_local.pop_front().expect("front");
            self.emit_after(after, id, out);
        }
    }

    /// Everything below `durable` is committed — on the local disk, and on
    /// the passive's when one is in sync: emit what waited for it (acks of
    /// `replicated` sends, answers to metadata changes) and return the
    /// destinations to dispatch (as `Command::Dispatch`). Messages are
    /// delivered only once committed, so a consumer never sees one that a
    /// failover could take back.
    pub fn on_durable(&mut self, durable: Offset, out: &mut Vec<Output>) -> Vec<Destination> {
        self.durable = self.durable.max(durable);
        let mut ready: Vec<Destination> = Vec::new();
        while let Some((end, ..)) = self.pending.front() {
            if *end > durable {
                break;
            }
            let (_, after, id, destination) = self.pending.pop_front().expect("front");
            if let Some(after) = after {
                self.emit_after(after, id, out);
            }
            if !ready.contains(&destination) {
                ready.push(destination);
            }
        }
        ready
    }

    /// This server serves from the epoch that began at `offset`.
    pub fn set_activated_at(&mut self, offset: Offset) {
        self.activated_at = offset;
    }

    /// Marks everything below `durable` as on disk (recovery: the whole
    /// recovered log is).
    pub fn set_durable(&mut self, durable: Offset) {
        self.durable = self.durable.max(durable);
    }

    /// Expires ready messages at the head of every queue.
    pub fn tick(&mut self, now_ms: u64, store: &mut dyn Store, out: &mut Vec<Output>) -> Handled {
        let names: Vec<Destination> = self.destinations.keys().cloned().collect();
        for destination in names {
            if let Err(StoreError::Full) = self.dispatch_all(now_ms, &destination, store, out) {
                return Handled::Retry;
            }
        }
        Handled::Done
    }

    /// Re-appends destination, subscription and producer records that are
    /// the oldest record still needed and lie more than `distance` bytes
    /// behind `end`, so that long-lived metadata does not pin old segments
    /// forever. A producer idle past `producer_idle_expiry_ms` is forgotten
    /// instead of carried.
    pub fn carry_metadata_forward(
        &mut self,
        now_ms: u64,
        end: Offset,
        distance: u64,
        store: &mut dyn Store,
    ) -> Handled {
        while let Some((&offset, meta)) = self.live_meta.iter().next() {
            let pinned_by_message = self.live_messages.first().is_some_and(|&m| m < offset);
            if pinned_by_message || end.get().saturating_sub(offset.get()) <= distance {
                break;
            }
            let record = match meta {
                Meta::Destination(d) => BrokerRecord::DestinationCreate(d.clone()),
                Meta::Subscription(t, n) => BrokerRecord::SubscriptionCreate {
                    topic: t.clone(),
                    name: n.clone(),
                },
                &Meta::Producer(producer_id) => {
                    let state = self.producers.get_mut(&producer_id).expect("producer meta");
                    if state.last_seen_ms == 0 {
                        state.last_seen_ms = now_ms;
                    }
                    if now_ms.saturating_sub(state.last_seen_ms)
                        > self.settings.producer_idle_expiry_ms
                    {
                        self.producers.remove(&producer_id);
                        self.clear_meta(&Meta::Producer(producer_id));
                        continue;
                    }
                    BrokerRecord::ProducerCheckpoint {
                        producer_id,
                        sequence: state.sequence,
                        last_seen_ms: state.last_seen_ms,
                    }
                }
            };
            let meta = meta.clone();
            match store.append(&record) {
                Ok((new_offset, _)) => self.set_meta(meta, new_offset),
                Err(StoreError::Full) => return Handled::Retry,
                Err(StoreError::Failed(_)) => return Handled::Done,
            }
        }
        Handled::Done
    }

    fn drop_destination(&mut self, destination: &Destination) {
        let Some(dest) = self.destinations.remove(destination) else {
            return;
        };
        self.clear_meta(&Meta::Destination(destination.clone()));
        let held: Vec<(MessageId, bool)> = match &dest {
            Dest::Queue(q) => q.all_messages().map(|id| (id, true)).collect(),
            Dest::Topic(t) => {
                for name in t.durable.keys() {
                    self.clear_meta(&Meta::Subscription(destination.clone(), name.clone()));
                }
                t.durable
                    .values()
                    .flat_map(|q| q.all_messages().map(|id| (id, true)))
                    .chain(
                        t.volatile
                            .values()
                            .flat_map(|q| q.all_messages().map(|id| (id, false))),
                    )
                    .collect()
            }
        };
        for (id, durable) in held {
            self.release_ref(id, durable);
        }
    }

    fn drop_durable(&mut self, topic: &Destination, name: &str) {
        let Some(Dest::Topic(t)) = self.destinations.get_mut(topic) else {
            return;
        };
        let Some(queue) = t.durable.remove(name) else {
            return;
        };
        self.clear_meta(&Meta::Subscription(topic.clone(), name.to_owned()));
        for id in queue.all_messages().collect::<Vec<_>>() {
            self.release_ref(id, true);
        }
    }
}

/// Which queue of a destination: the queue itself, a durable subscription
/// of a topic, or a consumer's non-durable subscription of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Queue,
    Durable(String),
    Volatile(ConsumerKey),
}

impl Slot {
    /// Whether the slot's holdings are journaled (settlements recorded).
    fn is_durable(&self) -> bool {
        !matches!(self, Slot::Volatile(_))
    }

    /// The subscription name a settle record carries.
    fn name(&self) -> Option<String> {
        match self {
            Slot::Durable(name) => Some(name.clone()),
            _ => None,
        }
    }

    fn from_subscription(subscription: Option<&str>) -> Slot {
        subscription.map_or(Slot::Queue, |name| Slot::Durable(name.to_owned()))
    }
}

fn refused(to: ConnId, request_id: u64, refusal: Refusal, text: String) -> Output {
    Output::Refused {
        to,
        request_id,
        refusal,
        text,
    }
}

impl Command {
    /// The connection and request id a refusal would answer, if any.
    fn requester(&self) -> Option<(ConnId, u64)> {
        match self {
            Command::Send(SendCommand {
                after: Some(AfterDurable::Ack { to, sequence, .. }),
                ..
            }) => Some((*to, *sequence)),
            Command::Ack {
                consumer,
                confirm: Some(request_id),
                ..
            }
            | Command::Subscribe {
                consumer,
                request_id,
                ..
            }
            | Command::Unsubscribe {
                consumer,
                request_id,
                ..
            } => Some((consumer.conn, *request_id)),
            Command::Create {
                from, request_id, ..
            }
            | Command::Delete {
                from, request_id, ..
            } => Some((*from, *request_id)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
