//! The durable connection: failover the application does not see.
//!
//! ```text
//!  app ─send─▶ DurableProducer ─▶ outbox (unacknowledged, sequence order)
//!                   │ write                     ▲ acks remove entries
//!                   ▼                           │
//!            DurableConnection ── Client (one server at a time)
//!                   │ lost, deposed (stale epoch), NOT_ACTIVE
//!                   └─▶ reconnect: every server, redirects followed,
//!                       backoff with jitter, bounded ─▶ replay the outbox
//! ```
//!
//! A connection is given every server of the pair. When the one it uses is
//! lost it tries them all again, the last good one first and a NOT_ACTIVE
//! redirect at once, pausing between rounds ([`Backoff`]) until
//! `give_up_after`, when calls fail with [`ClientError::GaveUp`].
//!
//! A producer keeps every send not yet acknowledged in its [`Outbox`] and
//! writes it again, in the original order, on the next connection. Sends
//! carry (producer id, sequence); the broker journals the highest sequence
//! per producer and acknowledges a replayed one as a duplicate without
//! enqueueing it, so replay never enqueues twice — across failover too.
//! Acknowledgements carry the server's epoch: one older than the newest seen
//! comes from a deposed server and is refused (the connection is dropped and
//! the send replayed to the server that is active now).
//!
//! A subscription is made again on every new connection. What was
//! delivered and not acknowledged comes again (its delivery count raised).
//! Acknowledgements ask the server to confirm once the settlement is
//! committed; until then the message id is remembered, and if a failover
//! takes the settlement back the redelivery is acknowledged again without
//! reaching the application (ids are journal offsets, the same on both
//! servers). An unconfirmed id is forgotten after `ack_memory`.
//!
//! Time in the reconnect policy is an input and its jitter comes from a
//! seeded RNG, so it is tested with simulated time.

use super::outbox_file::OutboxFile;
use super::{
    Client, ClientError, ClientOptions, Delivery, ProducerOptions, SendAck, Subscription, parse_url,
};
use crate::protocol::{self, ErrorCode};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Longest a producer waits for an answer before checking the connection
/// and its deadline again.
const ANSWER_POLL: Duration = Duration::from_millis(100);

/// Encoded sends one write takes at most when the outbox is written out
/// (replayed after a failover, say): bounds the buffer, not the batch.
const WRITE_BYTES: usize = 256 * 1024;

/// How a lost connection is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Pause after the first round over every server that found none
    /// serving.
    pub initial: Duration,
    /// Longest pause between rounds.
    pub max: Duration,
    /// Calls fail with `GaveUp` once reconnecting has lasted this long.
    pub give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        // Short first pauses: a takeover takes a few hundred ms and the
        // client should be back within a round or two of it.
        ReconnectPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
            give_up_after: Duration::from_secs(30),
        }
    }
}

/// Pauses between reconnect rounds: doubling up to `max`, half of each
/// pause random ("equal jitter": clients spread out, none spins), and none
/// past `give_up_after`.
#[derive(Debug)]
pub struct Backoff {
    policy: ReconnectPolicy,
    started: Instant,
    round: u32,
    rng: StdRng,
}

impl Backoff {
    pub fn new(policy: ReconnectPolicy, started: Instant, seed: u64) -> Backoff {
        Backoff {
            policy,
            started,
            round: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The pause before the next round, or `None` once time is up.
    pub fn next(&mut self, now: Instant) -> Option<Duration> {
        let spent = now.saturating_duration_since(self.started);
        let left = self.policy.give_up_after.checked_sub(spent)?;
        if left.is_zero() {
            return None;
        }
        let ceiling = self
            .policy
            .initial
            .saturating_mul(1 << self.round.min(20))
            .min(self.policy.max);
        self.round += 1;
        let half = ceiling / 2;
        let jitter = self.rng.random_range(0..=half.as_nanos() as u64);
        Some((half + Duration::from_nanos(jitter)).min(left))
    }
}

/// A send kept until it is acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub sequence: u64,
    pub destination: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A producer's unacknowledged sends, in sequence order (which is the
/// order they were sent and are replayed in).
#[derive(Debug, Default)]
pub struct Outbox {
    entries: BTreeMap<u64, OutboxEntry>,
}

impl Outbox {
    /// Adds a send; its sequence must be above every one held.
    pub fn push(&mut self, entry: OutboxEntry) {
        if let Some((&last, _)) = self.entries.last_key_value() {
            assert!(entry.sequence > last, "outbox sequences only grow");
        }
        self.entries.insert(entry.sequence, entry);
    }

    /// Removes an answered send (answers may come in any order: a
    /// producer's destinations live on several shards).
    pub fn remove(&mut self, sequence: u64) -> Option<OutboxEntry> {
        self.entries.remove(&sequence)
    }

    pub fn contains(&self, sequence: u64) -> bool {
        self.entries.contains_key(&sequence)
    }

    /// The first send after `sequence`.
    pub fn next_after(&self, sequence: u64) -> Option<&OutboxEntry> {
        self.after(sequence).next()
    }

    /// The sends after `sequence`, in order.
    pub fn after(&self, sequence: u64) -> impl Iterator<Item = &OutboxEntry> {
        self.entries
            .range(sequence.saturating_add(1)..)
            .map(|(_, e)| e)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What the application can watch happen to its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    Connected {
        server: SocketAddr,
        server_id: String,
        epoch: u64,
    },
    /// The server in use is gone (or deposed); reconnecting.
    FailingOver { from: SocketAddr, reason: String },
    Reconnected {
        server: SocketAddr,
        server_id: String,
        epoch: u64,
        /// From losing the old server to the handshake with this one.
        after: Duration,
    },
    /// No server took the connection within `give_up_after`.
    GaveUp { reason: String },
}

/// Called for every connection event (from the thread that saw it).
pub type EventHook = Arc<dyn Fn(&ConnectionEvent) + Send + Sync>;

/// Figures of a durable connection since it was made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Connections made after a loss.
    pub reconnects: u64,
    /// Sends written again on a new connection.
    pub replayed: u64,
    /// Acknowledgements flagged duplicate (a replay the broker already had).
    pub duplicates: u64,
    /// Acknowledgements refused for an epoch older than the newest seen.
    pub stale_acks: u64,
    /// Redeliveries of messages this consumer had acknowledged (the
    /// settlement lost in a failover), acknowledged again and not handed
    /// to the application.
    pub acked_redeliveries: u64,
}

/// Settings of a durable connection.
#[derive(Clone)]
pub struct DurableOptions {
    pub client: ClientOptions,
    pub reconnect: ReconnectPolicy,
    /// Seeds the reconnect jitter.
    pub seed: u64,
    /// How long `send` waits for room in a full outbox before failing with
    /// `OutboxFull`.
    pub outbox_full_timeout: Duration,
    /// How long a subscription remembers an acknowledged id whose
    /// settlement the server has not confirmed (to drop its redelivery
    /// after a failover lost the settlement).
    pub ack_memory: Duration,
    pub on_event: Option<EventHook>,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            client: ClientOptions::default(),
            reconnect: ReconnectPolicy::default(),
            seed: super::random_id(),
            outbox_full_timeout: Duration::from_secs(30),
            ack_memory: Duration::from_secs(300),
            on_event: None,
        }
    }
}

impl std::fmt::Debug for DurableOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableOptions")
            .field("client", &self.client)
            .field("reconnect", &self.reconnect)
            .field("seed", &self.seed)
            .field("outbox_full_timeout", &self.outbox_full_timeout)
            .field("ack_memory", &self.ack_memory)
            .field("on_event", &self.on_event.is_some())
            .finish()
    }
}

/// The connection in use and how many times it was replaced.
#[derive(Debug)]
struct Current {
    client: Option<Client>,
    generation: u64,
    /// Tried first on the next reconnect: the last server that served.
    preferred: SocketAddr,
    gave_up: Option<String>,
}

#[derive(Debug)]
struct Shared {
    addrs: Vec<SocketAddr>,
    options: DurableOptions,
    current: Mutex<Current>,
    counters: Mutex<Counters>,
    newest_epoch: AtomicU64,
}

/// A connection to a pair that survives the loss of either server.
/// Clones share it.
#[derive(Debug, Clone)]
pub struct DurableConnection {
    shared: Arc<Shared>,
}

impl DurableConnection {
    /// Connects to whichever server of `url` serves (reconnect policy
    /// included: a pair in the middle of a takeover is waited for).
    pub fn connect(url: &str, options: DurableOptions) -> Result<DurableConnection, ClientError> {
        let addrs = parse_url(url)?;
        let preferred = addrs[0];
        let connection = DurableConnection {
            shared: Arc::new(Shared {
                addrs,
                options,
                current: Mutex::new(Current {
                    client: None,
                    generation: 0,
                    preferred,
                    gave_up: None,
                }),
                counters: Mutex::new(Counters::default()),
                newest_epoch: AtomicU64::new(0),
            }),
        };
        connection.recover(0, None)?;
        Ok(connection)
    }

    /// A producer whose unacknowledged sends outlive connections; at most
    /// `options.window` of them are kept (then `send` waits).
    pub fn producer(&self, options: ProducerOptions) -> DurableProducer {
        DurableProducer {
            connection: self.clone(),
            id: options.producer_id.unwrap_or_else(super::random_id),
            next_sequence: 1,
            options,
            outbox: Outbox::default(),
            file: None,
            // Sends on the connection it starts on are not replays.
            generation: self.current_mut().generation,
            written_upto: 0,
            encoded: Vec::new(),
            acked: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// A producer whose outbox is also kept in the file at `path`, so that
    /// a restart of the client loses nothing: the file keeps the producer's
    /// id and numbering, and the sends it holds are replayed first
    /// (`options.producer_id` names a new file's producer only).
    pub fn producer_with_outbox(
        &self,
        options: ProducerOptions,
        path: &std::path::Path,
    ) -> Result<DurableProducer, ClientError> {
        let id = options.producer_id.unwrap_or_else(super::random_id);
        let (file, loaded) = OutboxFile::open(path, id)?;
        if loaded.torn_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = loaded.torn_bytes,
                "outbox: cut a torn last record (a send never accepted)"
            );
        }
        let mut producer = self.producer(options);
        producer.id = loaded.producer_id;
        producer.next_sequence = loaded.next_sequence;
        producer.outbox = loaded.pending;
        producer.file = Some(file);
        // What the file holds was sent by an earlier run: a replay.
        producer.generation = 0;
        Ok(producer)
    }

    /// A subscription made again on every new connection (`durable`: a
    /// named durable topic subscription; `prefetch` 0 takes the server's
    /// default).
    pub fn subscribe(
        &self,
        destination: &str,
        durable: Option<&str>,
        prefetch: u32,
    ) -> Result<DurableSubscription, ClientError> {
        let mut subscription = DurableSubscription {
            connection: self.clone(),
            destination: destination.to_owned(),
            durable_name: durable.map(str::to_owned),
            prefetch,
            current: None,
            acked: AckedIds::default(),
            unconfirmed: HashMap::new(),
        };
        subscription.run(|_, _| Ok(()))?;
        Ok(subscription)
    }

    pub fn counters(&self) -> Counters {
        *self.counters_mut()
    }

    /// The newest epoch any server of the pair answered with.
    pub fn newest_epoch(&self) -> u64 {
        self.shared.newest_epoch.load(Ordering::Relaxed)
    }

    /// The server in use, if connected.
    pub fn server(&self) -> Option<SocketAddr> {
        self.current_mut().client.as_ref().map(Client::server_addr)
    }

    fn counters_mut(&self) -> MutexGuard<'_, Counters> {
        self.shared.counters.lock().expect("counters lock")
    }

    fn current_mut(&self) -> MutexGuard<'_, Current> {
        self.shared.current.lock().expect("connection lock")
    }

    fn emit(&self, event: ConnectionEvent) {
        match &event {
            ConnectionEvent::Connected { .. } => tracing::debug!(?event, "durable connection"),
            ConnectionEvent::GaveUp { .. } => tracing::warn!(?event, "durable connection"),
            _ => tracing::info!(?event, "durable connection"),
        }
        if let Some(hook) = &self.shared.options.on_event {
            hook(&event);
        }
    }

    /// The client in use and its generation.
    fn current(&self) -> Result<(Client, u64), ClientError> {
        let current = self.current_mut();
        match (&current.client, &current.gave_up) {
            (Some(client), _) => Ok((client.clone(), current.generation)),
            (None, Some(why)) => Err(ClientError::GaveUp {
                after: self.shared.options.reconnect.give_up_after,
                last: why.clone(),
            }),
            (None, None) => Err(ClientError::Closed("not connected".into())),
        }
    }

    /// Replaces the connection of generation `seen` (lost: `reason`),
    /// unless another user already did; returns the one to use now.
    fn recover(&self, seen: u64, reason: Option<&str>) -> Result<(Client, u64), ClientError> {
        let mut current = self.current_mut();
        if current.generation != seen
            && let Some(client) = &current.client
        {
            return Ok((client.clone(), current.generation));
        }
        if let Some(old) = current.client.take() {
            old.close();
            self.emit(ConnectionEvent::FailingOver {
                from: old.server_addr(),
                reason: reason.unwrap_or("lost").to_owned(),
            });
        }
        let started = Instant::now();
        let policy = self.shared.options.reconnect;
        let mut backoff = Backoff::new(policy, started, self.shared.options.seed ^ seen);
        let mut last = String::from("no server tried");
        loop {
            if let Some(client) = self.connect_round(&mut current.preferred, &mut last) {
                current.generation += 1;
                current.client = Some(client.clone());
                let (server, server_id, epoch) = (
                    client.server_addr(),
                    client.server_id().to_owned(),
                    client.epoch(),
                );
                if seen == 0 {
                    self.emit(ConnectionEvent::Connected {
                        server,
                        server_id,
                        epoch,
                    });
                } else {
                    self.counters_mut().reconnects += 1;
                    self.emit(ConnectionEvent::Reconnected {
                        server,
                        server_id,
                        epoch,
                        after: started.elapsed(),
                    });
                }
                return Ok((client, current.generation));
            }
            match backoff.next(Instant::now()) {
                Some(pause) => std::thread::sleep(pause),
                None => {
                    self.emit(ConnectionEvent::GaveUp {
                        reason: last.clone(),
                    });
                    current.gave_up = Some(last.clone());
                    return Err(ClientError::GaveUp {
                        after: started.elapsed(),
                        last,
                    });
                }
            }
        }
    }

    /// One try of every server: the preferred one first, then the rest in
    /// URL order; a NOT_ACTIVE naming the active is followed at once.
    fn connect_round(&self, preferred: &mut SocketAddr, last: &mut String) -> Option<Client> {
        let mut order = vec![*preferred];
        order.extend(self.shared.addrs.iter().filter(|a| *a != preferred));
        let mut next = 0;
        while let Some(&addr) = order.get(next) {
            next += 1;
            match Client::connect_addr(addr, self.shared.options.client.clone()) {
                Ok(client) => {
                    let newest = self.newest_epoch();
                    if client.epoch() < newest {
                        *last = format!(
                            "{addr} serves epoch {} but epoch {newest} was seen (a deposed server)",
                            client.epoch()
                        );
                        client.close();
                        continue;
                    }
                    self.note_epoch(client.epoch());
                    *preferred = addr;
                    return Some(client);
                }
                Err(ClientError::NotActive { active, .. }) => {
                    *last = format!("{addr} is not active (it names {active:?})");
                    if let Ok(target) = active.parse::<SocketAddr>()
                        && !order[..next].contains(&target)
                    {
                        order.retain(|a| *a != target);
                        order.insert(next, target);
                    }
                }
                Err(error) => *last = format!("{addr}: {error}"),
            }
        }
        None
    }

    /// Runs `attempt` on the connection in use (with its generation); when
    /// that finds the connection lost, `lost` tidies `user`'s state for the
    /// old one, the connection is replaced and `attempt` runs again.
    fn ride<U, T>(
        &self,
        user: &mut U,
        mut attempt: impl FnMut(&mut U, &Client, u64) -> Result<T, ClientError>,
        mut lost: impl FnMut(&mut U, &Client),
    ) -> Result<T, ClientError> {
        let (mut client, mut generation) = self.current()?;
        loop {
            match attempt(user, &client, generation) {
                Err(error) if connection_lost(&error) => {
                    lost(user, &client);
                    (client, generation) = self.recover(generation, Some(&error.to_string()))?;
                }
                other => return other,
            }
        }
    }

    fn note_epoch(&self, epoch: u64) {
        self.shared.newest_epoch.fetch_max(epoch, Ordering::Relaxed);
    }
}

/// Whether an error means "this connection is no use any more": reconnect
/// and replay rather than report it.
fn connection_lost(error: &ClientError) -> bool {
    match error {
        ClientError::Closed(_) | ClientError::Io(_) | ClientError::StaleEpoch { .. } => true,
        ClientError::Refused { code, .. } => {
            matches!(code, ErrorCode::NotServing | ErrorCode::ShuttingDown)
        }
        _ => false,
    }
}

/// A producer whose sends survive the loss of a server: each is kept until
/// acknowledged and replayed on the next connection. With `ack_mode`
/// `replicated` (the default of the shipped profiles) an acknowledged send
/// survives the failure of either server, and a replay never enqueues twice.
#[derive(Debug)]
pub struct DurableProducer {
    connection: DurableConnection,
    id: u64,
    next_sequence: u64,
    options: ProducerOptions,
    outbox: Outbox,
    /// The outbox's copy on disk, when it has one.
    file: Option<OutboxFile>,
    /// The connection generation the outbox was written on, and the highest
    /// sequence written on it.
    generation: u64,
    written_upto: u64,
    /// Sends encoded and not written yet (kept for its capacity).
    encoded: Vec<u8>,
    acked: Vec<(u64, SendAck)>,
    failed: Vec<(u64, ClientError)>,
}

impl DurableProducer {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The sequence the next send gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Sends not acknowledged yet.
    pub fn outstanding(&self) -> usize {
        self.outbox.len()
    }

    /// Keeps the send in the outbox and writes it; returns its sequence.
    /// Waits while the outbox holds `window` sends, up to
    /// `outbox_full_timeout` (then `OutboxFull`); nothing is ever dropped.
    pub fn send(
        &mut self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<u64, ClientError> {
        self.send_batch([(destination, headers, body)])
    }

    /// Sends several messages (destination, headers, body) in order, in as
    /// few writes as the window allows: all in one system call when they
    /// fit in it, else what fits before each wait for room. Returns the
    /// first one's sequence (the rest follow it). Each is in the outbox
    /// (and its file) before it is written, as with `send`.
    pub fn send_batch<'d>(
        &mut self,
        messages: impl IntoIterator<Item = (&'d str, Vec<(String, String)>, Bytes)>,
    ) -> Result<u64, ClientError> {
        let first = self.next_sequence;
        let capacity = self.options.window.max(1);
        for (destination, headers, body) in messages {
            if self.outbox.len() >= capacity {
                // Waiting writes what is in the outbox first.
                let wait = self.connection.shared.options.outbox_full_timeout;
                let deadline = Instant::now() + wait;
                self.run(|p, client| p.wait_until(client, deadline, |p| p.outbox.len() < capacity))
                    .map_err(|e| match e {
                        ClientError::Timeout(_) => ClientError::OutboxFull(wait),
                        other => other,
                    })?;
            }
            let entry = OutboxEntry {
                sequence: self.next_sequence,
                destination: destination.to_owned(),
                headers,
                body,
            };
            // On disk before anything else: once `send` returns, a crash of
            // this process loses nothing.
            if let Some(file) = &mut self.file {
                file.append_send(&entry)?;
            }
            self.next_sequence += 1;
            self.outbox.push(entry);
        }
        self.run(|p, client| p.absorb(client))?;
        Ok(first)
    }

    /// Waits until every send is answered (acknowledged or refused), up to
    /// `timeout`, through as many failovers as that takes.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        self.run(|p, client| p.wait_until(client, deadline, |p| p.outbox.is_empty()))
    }

    /// Takes answers as they arrive until `until`, riding through
    /// failovers: the pause of a paced producer. The client reads its
    /// socket only while a caller waits, so a producer that slept instead
    /// would stamp the acks that came meanwhile (`SendAck::received_at`)
    /// only at its next call.
    pub fn pause_until(&mut self, until: Instant) -> Result<(), ClientError> {
        match self.run(|p, client| p.wait_until(client, until, |_| false)) {
            Ok(()) | Err(ClientError::Timeout(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Acknowledgements that arrived since the last call: (sequence, ack).
    pub fn take_acked(&mut self) -> Vec<(u64, SendAck)> {
        std::mem::take(&mut self.acked)
    }

    /// Sends the server refused (answered, so not replayed): (sequence, why).
    pub fn take_failed(&mut self) -> Vec<(u64, ClientError)> {
        std::mem::take(&mut self.failed)
    }

    /// Runs `op` on the connection in use, after writing what it has not
    /// seen of the outbox; a lost connection is replaced and `op` run again.
    fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Self, &Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let connection = self.connection.clone();
        connection.ride(
            self,
            |p, client, generation| {
                p.write_outbox(client, generation)
                    .and_then(|()| op(p, client))
            },
            // Acks that arrived before the loss still count (a stale one
            // is refused again inside).
            |p, client| {
                let _ = p.absorb(client);
            },
        )
    }

    /// Writes the outbox entries this connection has not had, in order: all
    /// of them on a new connection (the replay), else only new ones.
    fn write_outbox(&mut self, client: &Client, generation: u64) -> Result<(), ClientError> {
        if generation != self.generation {
            self.generation = generation;
            self.written_upto = 0;
            if !self.outbox.is_empty() {
                self.connection.counters_mut().replayed += self.outbox.len() as u64;
            }
        }
        // Everything not written yet goes in as few writes as it takes: one
        // for a batch of sends, a few for a whole outbox replayed.
        let mut upto = self.written_upto;
        self.encoded.clear();
        for entry in self.outbox.after(self.written_upto) {
            protocol::SendRef {
                producer_id: self.id,
                sequence: entry.sequence,
                destination: &entry.destination,
                persistent: self.options.persistent,
                ttl_ms: self.options.ttl_ms,
                ack_mode: self.options.ack_mode,
                headers: &entry.headers,
                body: &entry.body,
            }
            .encode(&mut self.encoded)?;
            upto = entry.sequence;
            if self.encoded.len() >= WRITE_BYTES {
                client.write_encoded(&self.encoded)?;
                self.encoded.clear();
                self.written_upto = upto;
            }
        }
        if !self.encoded.is_empty() {
            client.write_encoded(&self.encoded)?;
            self.encoded.clear();
            self.written_upto = upto;
        }
        Ok(())
    }

    /// Takes the answers that arrived: acks leave the outbox (an ack of an
    /// older epoch than the newest seen is refused: `StaleEpoch`), refusals
    /// leave it as failures (a refusal that means "not here" is a lost
    /// connection: the send stays and is replayed).
    fn absorb(&mut self, client: &Client) -> Result<(), ClientError> {
        let outbox = &self.outbox;
        let answers = client.take_answers(self.id, |s| outbox.contains(s));
        let mut lost = None;
        for (sequence, answer) in answers {
            match answer {
                Ok(ack) => {
                    let newest = self.connection.newest_epoch();
                    if ack.epoch < newest {
                        self.connection.counters_mut().stale_acks += 1;
                        lost = Some(ClientError::StaleEpoch {
                            got: ack.epoch,
                            newest,
                        });
                        continue;
                    }
                    self.connection.note_epoch(ack.epoch);
                    if self.answered(sequence)? {
                        if ack.duplicate {
                            self.connection.counters_mut().duplicates += 1;
                        }
                        self.acked.push((sequence, ack));
                    }
                }
                Err(error) if connection_lost(&error) => lost = Some(error),
                Err(error) => {
                    if self.answered(sequence)? {
                        self.failed.push((sequence, error));
                    }
                }
            }
        }
        if let Some(file) = &mut self.file {
            file.compact_if_large(self.id, self.next_sequence, &self.outbox)?;
        }
        lost.map_or(Ok(()), Err)
    }

    /// Takes an answered send out of the outbox (and says so in its file);
    /// whether it was there.
    fn answered(&mut self, sequence: u64) -> Result<bool, ClientError> {
        if self.outbox.remove(sequence).is_none() {
            return Ok(false);
        }
        if let Some(file) = &mut self.file {
            file.append_answered(sequence)?;
        }
        Ok(true)
    }

    /// Takes answers until `done` holds or `deadline` passes (`Timeout`).
    /// A connection silent for the request timeout while sends wait is
    /// pinged, and counts as lost if the ping fails.
    fn wait_until(
        &mut self,
        client: &Client,
        deadline: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), ClientError> {
        let silence_max = self.connection.shared.options.client.request_timeout;
        let mut last_answer = Instant::now();
        loop {
            let before = self.outbox.len();
            self.absorb(client)?;
            if self.outbox.len() != before {
                last_answer = Instant::now();
            }
            if done(self) {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(
                    deadline.saturating_duration_since(now),
                ));
            }
            if now - last_answer >= silence_max {
                client
                    .ping()
                    .map_err(|e| ClientError::Closed(format!("no answer to a ping: {e}")))?;
                last_answer = Instant::now();
            }
            let slice = (deadline - now).min(ANSWER_POLL);
            let outbox = &self.outbox;
            match client.wait_answer(self.id, slice, |s| outbox.contains(s)) {
                Ok(()) | Err(ClientError::Timeout(_)) => {}
                Err(error) => return Err(error),
            }
        }
    }
}

/// Message ids a consumer acknowledged and the server has not confirmed
/// settled yet, each for `ack_memory` at most.
#[derive(Debug, Default)]
struct AckedIds {
    at: HashMap<u64, Instant>,
    /// Insertion order, for expiry; entries whose id was confirmed (or
    /// acknowledged again later) are skipped.
    order: VecDeque<(Instant, u64)>,
}

impl AckedIds {
    fn insert(&mut self, now: Instant, id: u64, memory: Duration) {
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_duration_since(at) <= memory {
                break;
            }
            self.order.pop_front();
            if self.at.get(&old) == Some(&at) {
                self.at.remove(&old);
            }
        }
        self.at.insert(id, now);
        self.order.push_back((now, id));
    }

    fn confirmed(&mut self, id: u64) {
        self.at.remove(&id);
    }

    fn contains(&self, id: u64) -> bool {
        self.at.contains_key(&id)
    }

    fn ids(&self) -> Vec<u64> {
        self.at.keys().copied().collect()
    }

    fn len(&self) -> usize {
        self.at.len()
    }
}

/// A subscription that outlives connections: made again on each new one.
#[derive(Debug)]
pub struct DurableSubscription {
    connection: DurableConnection,
    destination: String,
    durable_name: Option<String>,
    prefetch: u32,
    /// The subscription on the connection of this generation.
    current: Option<(u64, Subscription)>,
    acked: AckedIds,
    /// Confirmations awaited on this generation: request id → message id.
    unconfirmed: HashMap<u64, u64>,
}

impl DurableSubscription {
    /// The next delivery, or `None` if none came within `timeout` (a
    /// failover in between is ridden through).
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        let deadline = Instant::now() + timeout;
        let connection = self.connection.clone();
        self.run(|s, subscription| {
            loop {
                s.take_confirmations(subscription);
                let left = deadline.saturating_duration_since(Instant::now());
                let Some(delivery) = subscription.receive(left)? else {
                    return Ok(None);
                };
                if s.acked.contains(delivery.message_id) {
                    let request = subscription.ack_confirmed(delivery.message_id)?;
                    s.unconfirmed.insert(request, delivery.message_id);
                    connection.counters_mut().acked_redeliveries += 1;
                    continue;
                }
                return Ok(Some(delivery));
            }
        })
    }

    /// Settles a delivery. Until the server confirms the settlement is
    /// committed, the id is remembered: if the connection is lost first,
    /// the message comes again on the next connection and is acknowledged
    /// then, without reaching the application.
    pub fn ack(&mut self, delivery: &Delivery) -> Result<(), ClientError> {
        let memory = self.connection.shared.options.ack_memory;
        self.acked
            .insert(Instant::now(), delivery.message_id, memory);
        match self.current.take() {
            Some((generation, subscription)) => {
                match subscription.ack_confirmed(delivery.message_id) {
                    Ok(request) => {
                        self.unconfirmed.insert(request, delivery.message_id);
                        self.take_confirmations(&subscription);
                        self.current = Some((generation, subscription));
                        Ok(())
                    }
                    Err(error) if connection_lost(&error) => Ok(()),
                    Err(error) => {
                        self.current = Some((generation, subscription));
                        Err(error)
                    }
                }
            }
            None => Ok(()),
        }
    }

    /// Acknowledged ids the server has not confirmed settled yet.
    pub fn unconfirmed(&self) -> usize {
        self.acked.len()
    }

    /// Forgets the ids whose settlement the server confirmed.
    fn take_confirmations(&mut self, subscription: &Subscription) {
        let answered: Vec<(u64, bool)> = self
            .unconfirmed
            .iter()
            .filter_map(|(&request, &id)| {
                subscription
                    .confirmation(request, id)
                    .map(|result| (request, result.is_ok()))
            })
            .collect();
        for (request, settled) in answered {
            let id = self.unconfirmed.remove(&request).expect("awaited");
            if settled {
                self.acked.confirmed(id);
            }
        }
    }

    /// Gives a delivery back for redelivery (lost with the connection
    /// anyway if it is gone).
    pub fn nack(&mut self, delivery: &Delivery) -> Result<(), ClientError> {
        match &self.current {
            Some((_, subscription)) => match subscription.nack(delivery) {
                Err(error) if connection_lost(&error) => {
                    self.current = None;
                    Ok(())
                }
                other => other,
            },
            None => Ok(()),
        }
    }

    /// A round trip to the server in use: what was sent before (acks) has
    /// reached it.
    pub fn ping(&mut self) -> Result<(), ClientError> {
        self.run(|_, subscription| subscription.client.ping())
    }

    /// Waits until every acknowledgement is confirmed settled (riding
    /// through failovers: a redelivery is acknowledged again), up to
    /// `timeout`.
    pub fn settle(&mut self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        while self.acked.len() > 0 {
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout(timeout));
            }
            // Receiving takes confirmations and re-acknowledges what a
            // failover brought back; what it hands over is new.
            if let Some(delivery) = self.receive(ANSWER_POLL)? {
                self.nack(&delivery)?;
            }
        }
        Ok(())
    }

    /// Runs `op` on this generation's subscription, subscribing first on a
    /// new connection; a lost connection is replaced and `op` run again.
    fn run<T>(
        &mut self,
        mut op: impl FnMut(&mut Self, &Subscription) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let connection = self.connection.clone();
        connection.ride(
            self,
            |s, client, generation| {
                s.subscribe_on(client, generation)?;
                let (generation, subscription) = s.current.take().expect("just subscribed");
                let result = op(s, &subscription);
                s.current = Some((generation, subscription));
                result
            },
            |s, _| {
                s.current = None;
                // Confirmations of the lost connection never come.
                s.unconfirmed.clear();
            },
        )
    }

    fn subscribe_on(&mut self, client: &Client, generation: u64) -> Result<(), ClientError> {
        if self.current.as_ref().is_some_and(|(g, _)| *g == generation) {
            return Ok(());
        }
        // A subscription whose connection was lost but not yet replaced is
        // noticed here: make the connection over.
        if let Some(why) = client.lost() {
            return Err(ClientError::Closed(why));
        }
        let subscription = client.subscribe(
            &self.destination,
            self.durable_name.as_deref(),
            self.prefetch,
        )?;
        // Acknowledgements whose confirmation the old connection took with
        // it are sent again: the new server settles those messages wherever
        // they are (ready again, most likely) and confirms.
        self.unconfirmed.clear();
        for id in self.acked.ids() {
            let request = subscription.ack_confirmed(id)?;
            self.unconfirmed.insert(request, id);
        }
        self.current = Some((generation, subscription));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
            give_up_after: Duration::from_secs(3),
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_half_of_each_pause_random() {
        let start = Instant::now();
        let mut backoff = Backoff::new(policy(), start, 7);
        let mut ceiling = Duration::from_millis(20);
        for _ in 0..10 {
            let pause = backoff.next(start).expect("time left");
            assert!(
                pause >= ceiling / 2 && pause <= ceiling,
                "{pause:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
            ceiling = (ceiling * 2).min(Duration::from_millis(500));
        }
    }

    #[test]
    fn backoff_gives_up_at_the_bound_and_never_pauses_past_it() {
        let start = Instant::now();
        let mut backoff = Backoff::new(policy(), start, 1);
        let mut now = start;
        let mut rounds = 0;
        while let Some(pause) = backoff.next(now) {
            now += pause;
            rounds += 1;
            assert!(now <= start + policy().give_up_after);
        }
        assert_eq!(
            now,
            start + policy().give_up_after,
            "the last pause ends at the bound"
        );
        assert!(rounds > 5, "{rounds} rounds in 3 s");
        assert_eq!(backoff.next(now + Duration::from_secs(1)), None);
    }

    #[test]
    fn backoff_jitter_is_reproducible_from_its_seed_and_differs_between_seeds() {
        let start = Instant::now();
        let pauses = |seed| {
            let mut b = Backoff::new(policy(), start, seed);
            (0..8).map(|_| b.next(start).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(pauses(42), pauses(42));
        assert_ne!(pauses(42), pauses(43));
    }

    fn entry(sequence: u64) -> OutboxEntry {
        OutboxEntry {
            sequence,
            destination: "/queue/a".into(),
            headers: Vec::new(),
            body: Bytes::from(sequence.to_string()),
        }
    }

    #[test]
    fn outbox_replays_in_order_and_forgets_answers_in_any_order() {
        let mut outbox = Outbox::default();
        for sequence in 1..=5 {
            outbox.push(entry(sequence));
        }
        assert!(outbox.remove(3).is_some(), "answers come in any order");
        assert!(outbox.remove(3).is_none(), "once");
        let mut replay = Vec::new();
        let mut after = 0;
        while let Some(e) = outbox.next_after(after) {
            replay.push(e.sequence);
            after = e.sequence;
        }
        assert_eq!(replay, vec![1, 2, 4, 5]);
        assert_eq!(outbox.next_after(2).map(|e| e.sequence), Some(4));
        assert_eq!(outbox.len(), 4);
        assert!(outbox.contains(5) && !outbox.contains(3));
    }

    #[test]
    #[should_panic(expected = "outbox sequences only grow")]
    fn outbox_refuses_a_sequence_out_of_order() {
        let mut outbox = Outbox::default();
        outbox.push(entry(2));
        outbox.push(entry(1));
    }

    #[test]
    fn acked_ids_are_remembered_for_the_ack_memory_only() {
        let start = Instant::now();
        let memory = Duration::from_secs(10);
        let mut acked = AckedIds::default();
        acked.insert(start, 1, memory);
        acked.insert(start + Duration::from_secs(5), 2, memory);
        assert!(acked.contains(1) && acked.contains(2));
        acked.insert(start + Duration::from_secs(11), 3, memory);
        assert!(!acked.contains(1), "older than the memory: forgotten");
        assert!(acked.contains(2) && acked.contains(3));
        acked.confirmed(2);
        assert!(!acked.contains(2), "confirmed: nothing to guard against");
        // Acknowledged again later (a redelivery): the newer time counts.
        acked.insert(start + Duration::from_secs(12), 3, memory);
        acked.insert(start + Duration::from_secs(21), 4, memory);
        assert!(acked.contains(3), "re-acknowledged at 12 s, kept at 21 s");
        assert_eq!(acked.len(), 2);
    }

    #[test]
    fn lost_connections_are_told_from_answers() {
        assert!(connection_lost(&ClientError::Closed("eof".into())));
        assert!(connection_lost(&ClientError::StaleEpoch {
            got: 1,
            newest: 2
        }));
        assert!(connection_lost(&ClientError::Refused {
            code: ErrorCode::NotServing,
            text: String::new()
        }));
        assert!(!connection_lost(&ClientError::Refused {
            code: ErrorCode::NoSuchDestination,
            text: String::new()
        }));
        assert!(!connection_lost(&ClientError::Timeout(Duration::ZERO)));
    }
}
