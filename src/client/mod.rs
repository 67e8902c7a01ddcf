//! The Rust client: a blocking API over one connection — producers with
//! pipelined sends (a window of outstanding sends, a completion for each),
//! subscriptions with prefetch and acknowledgements, and destination
//! management.
//!
//! A connection has no thread of its own: a caller that waits for an
//! answer reads the socket itself (leader/follower). At most one caller at a
//! time is the *reader*: it decodes frames and files them under the
//! producer, subscription or request they answer until its own answer is
//! there or its deadline passes, then hands the socket on; the others wait
//! on a condition variable and are woken as frames are filed. A window-1
//! send therefore costs one thread wake-up for its ack (the caller's, by
//! the network) instead of two (a reader thread's, then the caller's): on
//! the 2-core VMs this project measures on, a cross-thread wake-up costs
//! tens of microseconds. Calls that only look at what arrived
//! (`take_answers`, `confirmation`, `lost`) first take what the socket
//! already holds, without blocking. Nothing is read while nobody calls, so
//! unread deliveries wait in the kernel's buffers (bounded by the
//! subscription's prefetch), not in the client's memory.
//!
//! The durable connection (`durable`: failover, outbox, replay,
//! exactly-once publish) wraps this type rather than replacing it.

pub mod durable;
pub mod outbox_file;

use crate::net::SocketOptions;
use crate::protocol::{self, ErrorCode, Frame, Limits};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Request ids start here so they never collide with producer sequences,
/// which the server also uses as the request id of an ERROR about a send.
const REQUEST_ID_BASE: u64 = 1 << 63;
/// Default port when a URL names a host only.
const PORT_DEFAULT: u16 = 1856;

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad server URL {url:?}: {why}")]
    BadUrl { url: String, why: String },
    #[error("could not connect to any of {addrs}: {last}")]
    Connect { addrs: String, last: String },
    #[error("server refused: {code} ({text})")]
    Refused { code: ErrorCode, text: String },
    #[error("{server} is not active (the active server is {active:?})")]
    NotActive { server: SocketAddr, active: String },
    #[error("acknowledgement of epoch {got} after epoch {newest} was seen: the server was deposed")]
    StaleEpoch { got: u64, newest: u64 },
    #[error("gave up reconnecting after {after:?}: {last}")]
    GaveUp { after: Duration, last: String },
    #[error("outbox full: no acknowledgement within {0:?}")]
    OutboxFull(Duration),
    #[error(transparent)]
    OutboxFile(#[from] outbox_file::OutboxFileError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection lost: {0}")]
    Closed(String),
    #[error("protocol error: {0}")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub client_id: String,
    pub username: String,
    pub password: Vec<u8>,
    pub socket: SocketOptions,
    /// How long a request (handshake, subscribe, create…) may take.
    pub request_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: format!("twinmq-client-{}", std::process::id()),
            username: String::new(),
            password: Vec::new(),
            socket: SocketOptions::default(),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Parses `twinmq://host:port[,host:port…]` into addresses, in order.
pub fn parse_url(url: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let bad = |why: &str| ClientError::BadUrl {
        url: url.to_owned(),
        why: why.to_owned(),
    };
    let rest = url
        .strip_prefix("twinmq://")
        .ok_or_else(|| bad("must start with twinmq://"))?;
    let mut addrs = Vec::new();
    for part in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let with_port = if part.contains(':') {
            part.to_owned()
        } else {
            format!("{part}:{PORT_DEFAULT}")
        };
        let resolved = with_port
            .to_socket_addrs()
            .map_err(|e| bad(&format!("{part}: {e}")))?;
        addrs.extend(resolved.take(1));
    }
    if addrs.is_empty() {
        return Err(bad("names no server"));
    }
    Ok(addrs)
}

/// The acknowledgement of one send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAck {
    pub sequence: u64,
    pub epoch: u64,
    pub message_id: u64,
    pub duplicate: bool,
    /// When the client read it off the connection.
    pub received_at: Instant,
}

/// A message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: u64,
    pub delivery_count: u32,
    pub destination: String,
    pub persistent: bool,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Debug, Default)]
struct State {
    /// Completed sends by (producer, sequence), not yet taken.
    acks: HashMap<(u64, u64), Result<SendAck, ClientError>>,
    replies: HashMap<u64, Result<(), ClientError>>,
    /// Sends the server refused, by sequence (an ERROR about a send names
    /// only the sequence, so producers on one connection should not reuse
    /// each other's sequences).
    send_errors: HashMap<u64, ClientError>,
    deliveries: HashMap<u32, VecDeque<Delivery>>,
    /// Why the connection is gone, once it is.
    lost: Option<String>,
    /// A caller holds the reader (the only one that reads the socket).
    reading: bool,
    /// Callers waiting on `changed` for the reader to file something.
    followers: usize,
}

#[derive(Debug)]
struct Inner {
    writer: Mutex<TcpStream>,
    /// Locked only by the caller that set `State::reading`, so never
    /// contended; kept out of `State` so that filing and waiting need not
    /// wait for a blocked read.
    reader: Mutex<FrameReader>,
    state: Mutex<State>,
    changed: Condvar,
    next_request: AtomicU64,
    next_subscription: AtomicU32,
    welcome: protocol::Welcome,
    server: SocketAddr,
    options: ClientOptions,
}

/// A connection to a server. Clones share it; it closes when the last goes.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the first server of `url` that accepts the handshake.
    pub fn connect(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let addrs = parse_url(url)?;
        let mut last = String::from("no address tried");
        for addr in &addrs {
            match Client::connect_addr(*addr, options.clone()) {
                Ok(client) => return Ok(client),
                Err(error) => last = format!("{addr}: {error}"),
            }
        }
        let addrs = addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        Err(ClientError::Connect { addrs, last })
    }

    /// Connects to one server.
    pub fn connect_addr(addr: SocketAddr, options: ClientOptions) -> Result<Client, ClientError> {
        let stream = crate::net::connect(addr, &options.socket)?;
        let hello = Frame::Hello(protocol::Hello {
            magic: protocol::MAGIC,
            version: protocol::PROTOCOL_VERSION,
            client_id: options.client_id.clone(),
            username: options.username.clone(),
            password: Bytes::from(options.password.clone()),
        });
        let mut buf = Vec::new();
        hello.encode(&mut buf)?;
        (&stream).write_all(&buf)?;
        let mut reader = FrameReader::new(stream.try_clone()?);
        let deadline = Instant::now() + options.request_timeout;
        let welcome = match reader
            .next_before(deadline)?
            .ok_or(ClientError::Timeout(options.request_timeout))?
        {
            Frame::Welcome(welcome) => welcome,
            Frame::Error(error) => {
                return Err(ClientError::Refused {
                    code: error.code,
                    text: error.text,
                });
            }
            Frame::NotActive(not_active) => {
                return Err(ClientError::NotActive {
                    server: addr,
                    active: not_active.active,
                });
            }
            other => {
                return Err(ClientError::Closed(format!(
                    "expected WELCOME, got {}",
                    other.name()
                )));
            }
        };
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            reader: Mutex::new(reader),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            next_request: AtomicU64::new(REQUEST_ID_BASE),
            next_subscription: AtomicU32::new(1),
            welcome,
            server: addr,
            options,
        });
        Ok(Client { inner })
    }

    /// The server's epoch when the connection was made.
    pub fn epoch(&self) -> u64 {
        self.inner.welcome.epoch
    }

    pub fn server_id(&self) -> &str {
        &self.inner.welcome.server_id
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.inner.server
    }

    fn write(&self, frame: &Frame) -> Result<(), ClientError> {
        let mut buf = Vec::new();
        frame.encode(&mut buf)?;
        self.write_encoded(&buf)
    }

    /// Writes frames encoded back to back: a batch of sends in one system
    /// call (and as few TCP segments as fit it).
    pub(crate) fn write_encoded(&self, frames: &[u8]) -> Result<(), ClientError> {
        let mut writer = self.inner.writer.lock().expect("writer lock");
        writer
            .write_all(frames)
            .map_err(|e| ClientError::Closed(e.to_string()))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().expect("client state lock")
    }

    /// Waits until `ready` returns something or the deadline: as the
    /// reader if nobody else is reading, else as a follower woken whenever
    /// the reader filed a frame or handed the socket on.
    fn wait<T>(
        &self,
        timeout: Duration,
        mut ready: impl FnMut(&mut State) -> Option<T>,
    ) -> Result<T, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state();
        loop {
            if let Some(value) = ready(&mut state) {
                return Ok(value);
            }
            if let Some(lost) = &state.lost {
                return Err(ClientError::Closed(lost.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Timeout(timeout));
            }
            if state.reading {
                state.followers += 1;
                state = self
                    .inner
                    .changed
                    .wait_timeout(state, deadline - now)
                    .expect("client state lock")
                    .0;
                state.followers -= 1;
            } else {
                state = self.read_one(state, deadline).0;
            }
        }
    }

    /// As the reader, reads one frame (or until `deadline`) with the state
    /// unlocked, files it, and hands the reader back; returns the state
    /// locked again and whether a frame was filed.
    fn read_one<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> (MutexGuard<'a, State>, bool) {
        debug_assert!(!state.reading && state.lost.is_none());
        state.reading = true;
        drop(state);
        let frame = self
            .inner
            .reader
            .lock()
            .expect("client reader lock")
            .next_before(deadline);
        let mut state = self.state();
        state.reading = false;
        let filed = match frame {
            Ok(Some(frame)) => {
                file(&mut state, frame);
                true
            }
            Ok(None) => false,
            Err(error) => {
                state.lost = Some(error.to_string());
                true
            }
        };
        // Followers wait either for what was filed or for the reader to be
        // free; both just happened.
        if state.followers > 0 {
            self.inner.changed.notify_all();
        }
        (state, filed)
    }

    /// The state after taking every frame the socket already holds (none
    /// if another caller is the reader: it files them itself).
    fn pumped(&self) -> MutexGuard<'_, State> {
        let mut state = self.state();
        while !state.reading && state.lost.is_none() {
            let (next, filed) = self.read_one(state, Instant::now());
            state = next;
            if !filed {
                break;
            }
        }
        state
    }

    /// Why the connection is gone, if it is (as far as what the socket
    /// holds tells).
    pub(crate) fn lost(&self) -> Option<String> {
        self.pumped().lost.clone()
    }

    /// Takes every answer (ack or refusal) to `producer`'s sends that has
    /// arrived; refusals name only a sequence, so `mine` says which are
    /// this producer's.
    fn take_answers(
        &self,
        producer: u64,
        mut mine: impl FnMut(u64) -> bool,
    ) -> Vec<(u64, Result<SendAck, ClientError>)> {
        let mut state = self.pumped();
        let acked: Vec<(u64, u64)> = state
            .acks
            .keys()
            .filter(|(p, _)| *p == producer)
            .copied()
            .collect();
        let refused: Vec<u64> = state
            .send_errors
            .keys()
            .copied()
            .filter(|s| mine(*s))
            .collect();
        let mut answers: Vec<_> = acked
            .into_iter()
            .filter_map(|key| state.acks.remove(&key).map(|r| (key.1, r)))
            .collect();
        answers.extend(
            refused
                .into_iter()
                .filter_map(|s| state.send_errors.remove(&s).map(|e| (s, Err(e)))),
        );
        answers
    }

    /// Waits until an answer to one of `producer`'s sends is there (or a
    /// refusal of one of `mine`), the connection is lost, or `timeout`.
    fn wait_answer(
        &self,
        producer: u64,
        timeout: Duration,
        mut mine: impl FnMut(u64) -> bool,
    ) -> Result<(), ClientError> {
        self.wait(timeout, |state| {
            (state.acks.keys().any(|(p, _)| *p == producer)
                || state.send_errors.keys().any(|s| mine(*s)))
            .then_some(())
        })
    }

    fn request(&self, make: impl FnOnce(u64) -> Frame) -> Result<(), ClientError> {
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        self.write(&make(id))?;
        self.wait(self.inner.options.request_timeout, |state| {
            state.replies.remove(&id)
        })?
    }

    /// Creates a destination (`/queue/NAME` or `/topic/NAME`).
    pub fn create(&self, destination: &str) -> Result<(), ClientError> {
        self.request(|request_id| {
            Frame::Create(protocol::Create {
                request_id,
                destination: destination.to_owned(),
            })
        })
    }

    /// Deletes a destination and everything on it.
    pub fn delete(&self, destination: &str) -> Result<(), ClientError> {
        self.request(|request_id| {
            Frame::Delete(protocol::Delete {
                request_id,
                destination: destination.to_owned(),
            })
        })
    }

    /// A producer with up to `window` sends awaiting acknowledgement.
    pub fn producer(&self, options: ProducerOptions) -> Producer {
        Producer {
            client: self.clone(),
            id: options.producer_id.unwrap_or_else(random_id),
            next_sequence: 1,
            outstanding: VecDeque::new(),
            options,
            encoded: Vec::new(),
        }
    }

    /// Subscribes to a queue or topic (`durable`: a named durable topic
    /// subscription). `prefetch` 0 takes the server's default.
    pub fn subscribe(
        &self,
        destination: &str,
        durable: Option<&str>,
        prefetch: u32,
    ) -> Result<Subscription, ClientError> {
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        self.state().deliveries.insert(id, VecDeque::new());
        let result = self.request(|request_id| {
            Frame::Subscribe(protocol::Subscribe {
                request_id,
                subscription_id: id,
                destination: destination.to_owned(),
                durable_name: durable.map(str::to_owned),
                prefetch,
            })
        });
        if let Err(error) = result {
            self.state().deliveries.remove(&id);
            return Err(error);
        }
        Ok(Subscription {
            client: self.clone(),
            id,
        })
    }

    /// Round trip to the server.
    pub fn ping(&self) -> Result<(), ClientError> {
        let id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        self.write(&Frame::Ping(protocol::Ping { token: id }))?;
        self.wait(self.inner.options.request_timeout, |state| {
            state.replies.remove(&id)
        })?
    }

    /// Closes the connection (unacknowledged deliveries go back to their queue).
    pub fn close(&self) {
        let writer = self.inner.writer.lock().expect("writer lock");
        let _ = writer.shutdown(std::net::Shutdown::Both);
    }
}

fn random_id() -> u64 {
    // RandomState is seeded from the OS per process: unique enough for an id.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    hasher.finish()
}

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// Sends in flight before `send` waits for the oldest acknowledgement.
    pub window: usize,
    pub persistent: bool,
    /// Time to live in ms; 0 = forever.
    pub ttl_ms: u64,
    /// A stable id (kept across reconnects by the durable connection);
    /// random when `None`.
    pub producer_id: Option<u64>,
    /// When a send is acknowledged: `Default` takes the server's
    /// `ha.ack_mode`; `Local` after the active's flush; `Replicated` after
    /// the passive's flush too.
    pub ack_mode: protocol::AckMode,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            window: 64,
            persistent: true,
            ttl_ms: 0,
            producer_id: None,
            ack_mode: protocol::AckMode::Default,
        }
    }
}

/// Sends messages, pipelined.
#[derive(Debug)]
pub struct Producer {
    client: Client,
    id: u64,
    next_sequence: u64,
    outstanding: VecDeque<u64>,
    options: ProducerOptions,
    /// Sends encoded and not written yet (kept for its capacity).
    encoded: Vec<u8>,
}

impl Producer {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends without waiting for the acknowledgement, unless the window is
    /// full: then it waits for the oldest, which it returns. Returns the
    /// sequence of this send too.
    pub fn send(
        &mut self,
        destination: &str,
        headers: Vec<(String, String)>,
        body: Bytes,
    ) -> Result<(u64, Option<SendAck>), ClientError> {
        let mut sent = self.send_batch([(destination, headers, body)])?;
        Ok((sent.first, sent.completed.pop()))
    }

    /// Sends several messages (destination, headers, body) in order, as
    /// few writes as the window allows: all of them in one system call when
    /// they fit in it, else what fits before each wait for the oldest
    /// acknowledgement. Returns the first sequence (the rest follow it) and
    /// the acknowledgements taken to make room.
    pub fn send_batch<'d>(
        &mut self,
        messages: impl IntoIterator<Item = (&'d str, Vec<(String, String)>, Bytes)>,
    ) -> Result<Sent, ClientError> {
        let mut sent = Sent {
            first: self.next_sequence,
            completed: Vec::new(),
        };
        let window = self.window();
        // Sends at the back of `outstanding` that are encoded, not written.
        let mut unwritten = 0;
        for (destination, headers, body) in messages {
            if self.outstanding.len() >= window {
                self.write_encoded(&mut unwritten)?;
                sent.completed.push(self.wait_oldest()?);
            }
            let sequence = self.next_sequence;
            self.next_sequence += 1;
            let encoded = protocol::SendRef {
                producer_id: self.id,
                sequence,
                destination,
                persistent: self.options.persistent,
                ttl_ms: self.options.ttl_ms,
                ack_mode: self.options.ack_mode,
                headers: &headers,
                body: &body,
            }
            .encode(&mut self.encoded);
            if let Err(error) = encoded {
                // What came before it still goes.
                self.write_encoded(&mut unwritten)?;
                return Err(error.into());
            }
            self.outstanding.push_back(sequence);
            unwritten += 1;
        }
        self.write_encoded(&mut unwritten)?;
        Ok(sent)
    }

    /// Writes the `unwritten` sends encoded last; on failure they are no
    /// longer outstanding (they never left).
    fn write_encoded(&mut self, unwritten: &mut usize) -> Result<(), ClientError> {
        if *unwritten == 0 {
            return Ok(());
        }
        let written = self.client.write_encoded(&self.encoded);
        self.encoded.clear();
        if written.is_err() {
            let kept = self.outstanding.len() - *unwritten;
            self.outstanding.truncate(kept);
        }
        *unwritten = 0;
        written
    }

    /// Sends and waits for the acknowledgement.
    pub fn send_and_wait(
        &mut self,
        destination: &str,
        body: Bytes,
    ) -> Result<SendAck, ClientError> {
        self.send(destination, Vec::new(), body)?;
        let mut last = None;
        while !self.outstanding.is_empty() {
            last = Some(self.wait_oldest()?);
        }
        Ok(last.expect("one send outstanding"))
    }

    /// Waits for the oldest outstanding send's acknowledgement.
    pub fn wait_oldest(&mut self) -> Result<SendAck, ClientError> {
        let sequence = *self
            .outstanding
            .front()
            .ok_or_else(|| ClientError::Closed("nothing outstanding".into()))?;
        let key = (self.id, sequence);
        let result = self
            .client
            .wait(self.client.inner.options.request_timeout, |state| {
                state
                    .acks
                    .remove(&key)
                    .or_else(|| state.send_errors.remove(&sequence).map(Err))
            })?;
        self.outstanding.pop_front();
        result
    }

    /// Takes the answers (acknowledgement or refusal) that have arrived, in
    /// any order, without waiting: the room a pipelining caller then
    /// refills with one `send_batch`. Each comes with its send's sequence.
    pub fn take_completed(&mut self) -> Vec<(u64, Result<SendAck, ClientError>)> {
        let id = self.id;
        let mut state = self.client.pumped();
        let mut answers = Vec::new();
        self.outstanding.retain(|&sequence| {
            let answer = state
                .acks
                .remove(&(id, sequence))
                .or_else(|| state.send_errors.remove(&sequence).map(Err));
            match answer {
                Some(answer) => {
                    answers.push((sequence, answer));
                    false
                }
                None => true,
            }
        });
        answers
    }

    /// Sends in flight before a send waits for the oldest answer.
    pub fn window(&self) -> usize {
        self.options.window.max(1)
    }

    /// Sends awaiting acknowledgement.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Waits for every outstanding acknowledgement.
    pub fn flush(&mut self) -> Result<Vec<SendAck>, ClientError> {
        let mut acks = Vec::with_capacity(self.outstanding.len());
        while !self.outstanding.is_empty() {
            acks.push(self.wait_oldest()?);
        }
        Ok(acks)
    }
}

/// What [`Producer::send_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The sequence of the batch's first send; the others follow it.
    pub first: u64,
    /// Acknowledgements of earlier sends, taken to make room in the window.
    pub completed: Vec<SendAck>,
}

/// Receives messages of one subscription.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    id: u32,
}

impl Subscription {
    /// The next delivery, or `None` if none came within `timeout`.
    pub fn receive(&self, timeout: Duration) -> Result<Option<Delivery>, ClientError> {
        match self.client.wait(timeout, |state| {
            state.deliveries.get_mut(&self.id)?.pop_front()
        }) {
            Ok(delivery) => Ok(Some(delivery)),
            Err(ClientError::Timeout(_)) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Settles a delivery: it will never be delivered again.
    pub fn ack(&self, delivery: &Delivery) -> Result<(), ClientError> {
        self.client.write(&Frame::Ack(protocol::Ack {
            subscription_id: self.id,
            message_id: delivery.message_id,
            request_id: 0,
        }))
    }

    /// Settles message `message_id` of this subscription's queue (wherever
    /// it is: delivered here before a failover, it may be ready again) and
    /// asks the server to confirm once the settlement is committed; returns
    /// the request id the confirmation will carry (see `confirmation`).
    pub fn ack_confirmed(&self, message_id: u64) -> Result<u64, ClientError> {
        let request_id = self
            .client
            .inner
            .next_request
            .fetch_add(1, Ordering::Relaxed);
        self.client.write(&Frame::Ack(protocol::Ack {
            subscription_id: self.id,
            message_id,
            request_id,
        }))?;
        Ok(request_id)
    }

    /// The answer to an `ack_confirmed` of `message_id`, once it has come
    /// (taken once). A delivery of that message received before the answer
    /// (the server sent it before it settled the message) is dropped from
    /// this subscription's queue with it: it must not reach the caller.
    pub fn confirmation(
        &self,
        request_id: u64,
        message_id: u64,
    ) -> Option<Result<(), ClientError>> {
        let mut state = self.client.pumped();
        let answer = state.replies.remove(&request_id)?;
        if answer.is_ok()
            && let Some(queue) = state.deliveries.get_mut(&self.id)
        {
            queue.retain(|d| d.message_id != message_id);
        }
        Some(answer)
    }

    /// Gives a delivery back for redelivery.
    pub fn nack(&self, delivery: &Delivery) -> Result<(), ClientError> {
        self.client.write(&Frame::Nack(protocol::Nack {
            subscription_id: self.id,
            message_id: delivery.message_id,
        }))
    }

    /// Ends the subscription; `remove_durable` also deletes a durable
    /// subscription and what it holds.
    pub fn unsubscribe(self, remove_durable: bool) -> Result<(), ClientError> {
        let id = self.id;
        let result = self.client.request(|request_id| {
            Frame::Unsubscribe(protocol::Unsubscribe {
                request_id,
                subscription_id: id,
                remove_durable,
            })
        });
        self.client.state().deliveries.remove(&id);
        result
    }
}

/// Reads whole frames from a blocking stream.
struct FrameReader {
    stream: TcpStream,
    buf: Vec<u8>,
    /// What is read and not decoded yet: `buf[start..end]`.
    start: usize,
    end: usize,
    limits: Limits,
}

impl std::fmt::Debug for FrameReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader")
            .field("buffered", &(self.end - self.start))
            .finish_non_exhaustive()
    }
}

impl FrameReader {
    fn new(stream: TcpStream) -> FrameReader {
        FrameReader {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            limits: Limits::default(),
        }
    }

    /// The next frame, or `None` once `deadline` passed without one (at
    /// once if it has passed: what is buffered or already readable is
    /// still taken).
    fn next_before(&mut self, deadline: Instant) -> Result<Option<Frame>, ClientError> {
        use std::io::Read;
        use std::os::fd::AsFd;
        loop {
            let buffered = &self.buf[self.start..self.end];
            if let Some((frame, used)) = protocol::decode(buffered, &self.limits)? {
                // Frames are taken from the front; the unread rest moves to
                // the start once per read, below, not once per frame.
                self.start += used;
                return Ok(Some(frame));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if let Some(need) = protocol::frame_bytes(&self.buf[..self.end])
                && need > self.buf.len()
            {
                self.buf.resize(need, 0);
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            let n = if wait.is_zero() {
                match crate::io::read_ready(self.stream.as_fd(), &mut self.buf[self.end..])? {
                    Some(n) => n,
                    None => return Ok(None),
                }
            } else if crate::io::wait_readable(self.stream.as_fd(), wait)? {
                // Readable: this read does not block.
                self.stream.read(&mut self.buf[self.end..])?
            } else {
                continue;
            };
            if n == 0 {
                return Err(ClientError::Closed("server closed the connection".into()));
            }
            self.end += n;
        }
    }
}

/// Files one frame under what it answers.
fn file(state: &mut State, frame: Frame) {
    match frame {
        Frame::SendAck(ack) => {
            let done = SendAck {
                received_at: Instant::now(),
                sequence: ack.sequence,
                epoch: ack.epoch,
                message_id: ack.message_id,
                duplicate: ack.duplicate,
            };
            state.acks.insert((ack.producer_id, ack.sequence), Ok(done));
        }
        Frame::Deliver(d) => {
            if let Some(queue) = state.deliveries.get_mut(&d.subscription_id) {
                queue.push_back(Delivery {
                    message_id: d.message_id,
                    delivery_count: d.delivery_count,
                    destination: d.destination,
                    persistent: d.persistent,
                    headers: d.headers,
                    body: d.body,
                });
            }
        }
        Frame::Ok(ok) => {
            state.replies.insert(ok.request_id, Ok(()));
        }
        Frame::Pong(pong) => {
            state.replies.insert(pong.token, Ok(()));
        }
        Frame::Error(error) => {
            let refused = || ClientError::Refused {
                code: error.code,
                text: error.text.clone(),
            };
            if error.request_id >= REQUEST_ID_BASE {
                state.replies.insert(error.request_id, Err(refused()));
            } else if error.request_id == 0 {
                state.lost = Some(format!("server error: {} ({})", error.code, error.text));
            } else {
                state.send_errors.insert(error.request_id, refused());
            }
        }
        other => {
            state.lost = Some(format!("unexpected {} from the server", other.name()));
        }
    }
}
