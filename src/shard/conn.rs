//! One client connection on its shard: the receive buffer and frame
//! decoding, the handshake, translation of frames into broker commands, and
//! the output buffers.
//!
//! At most one receive and one send are in flight. The receive buffer is
//! only resized between receives, and the buffer being sent is only touched
//! after its send completed: the kernel never sees a moved buffer.

use super::refusal_code;
use crate::broker::{AfterDurable, Command, ConsumerKey, MessageData, Output, SendCommand};
use crate::ids::{ConnId, Epoch, MessageId, ShardId};
use crate::io::{Owner, Ring, Token};
use crate::protocol::{self, Destination, ErrorCode, ErrorFrame, Frame, Limits};
use io_uring::{opcode, types};
use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Initial receive buffer; grows to fit a large frame.
const RECV_BUFFER_BYTES: usize = 64 * 1024;
/// How long a shutting-down server tries to hand a connection its last bytes.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// How many destinations a connection remembers (a producer that spreads
/// its sends over a few queues hits every time).
const RECENT_DESTINATIONS: usize = 8;

/// A command for the broker that owns `destination`.
#[derive(Debug)]
pub struct Request {
    pub destination: Destination,
    pub command: Command,
}

/// The destinations a connection named last, the oldest replaced first.
#[derive(Debug, Default)]
struct RecentDestinations {
    entries: Vec<Destination>,
    /// The entry the next new destination replaces once all are taken.
    oldest: usize,
}

impl RecentDestinations {
    fn find(&self, text: &str) -> Option<&Destination> {
        self.entries.iter().find(|known| known.as_str() == text)
    }

    fn remember(&mut self, destination: Destination) {
        if self.entries.len() < RECENT_DESTINATIONS {
            self.entries.push(destination);
        } else {
            self.entries[self.oldest] = destination;
            self.oldest = (self.oldest + 1) % RECENT_DESTINATIONS;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    Open,
    /// Close once the output (an ERROR frame) is sent.
    AfterFlush,
    /// Close now.
    Now,
}

#[derive(Debug)]
pub struct Conn {
    id: ConnId,
    stream: TcpStream,
    rbuf: Vec<u8>,
    rlen: usize,
    recv_in_flight: bool,
    /// Output accumulating while `sending` is with the kernel.
    wbuf: Vec<u8>,
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    welcomed: bool,
    deadline: Instant,
    /// The destination of each of this connection's subscriptions.
    subscriptions: HashMap<u32, Destination>,
    /// The destinations this connection named last: a producer names the
    /// same few send after send, and reusing them spares validating and
    /// allocating each one every time.
    recent_destinations: RecentDestinations,
    closing: Closing,
    shut: bool,
    /// The answer to a good HELLO, written by the connection itself so that
    /// it precedes anything else the connection says.
    welcome: protocol::Welcome,
    /// What `AckMode::Default` means here: the profile's `ha.ack_mode`.
    default_local_ack: bool,
    /// Whether the connection has settled on its shard: from its first
    /// request on, the broker may hold state under its id (consumers,
    /// answers on their way), so it stays. Before it, it can move.
    placed: bool,
    /// The shard this connection is to move to: the owner of the
    /// destination its first request names (see `received`).
    move_to: Option<ShardId>,
}

impl Conn {
    pub fn new(
        id: ConnId,
        stream: TcpStream,
        deadline: Instant,
        welcome: protocol::Welcome,
        default_local_ack: bool,
    ) -> Conn {
        Conn {
            id,
            stream,
            rbuf: vec![0; RECV_BUFFER_BYTES],
            rlen: 0,
            recv_in_flight: false,
            wbuf: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_in_flight: false,
            welcomed: false,
            deadline,
            subscriptions: HashMap::new(),
            recent_destinations: RecentDestinations::default(),
            closing: Closing::Open,
            shut: false,
            welcome,
            default_local_ack,
            placed: false,
            move_to: None,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Closed, and the kernel holds none of its buffers.
    pub fn finished(&self) -> bool {
        self.shut && !self.recv_in_flight && !self.send_in_flight
    }

    /// Sends an ERROR and closes once it is out.
    pub fn fail(&mut self, code: ErrorCode, text: String) {
        tracing::debug!(conn = self.id.seq, ?code, %text, "closing client connection");
        self.write_frame(&Frame::Error(ErrorFrame {
            request_id: 0,
            code,
            text,
        }));
        if self.closing == Closing::Open {
            self.closing = Closing::AfterFlush;
        }
    }

    pub fn check_deadline(&mut self, now: Instant) {
        if !self.welcomed && self.closing == Closing::Open && now >= self.deadline {
            self.fail(
                ErrorCode::HandshakeTimeout,
                "no HELLO within the handshake deadline".into(),
            );
        }
    }

    pub fn write_frame(&mut self, frame: &Frame) {
        if let Err(error) = frame.encode(&mut self.wbuf) {
            tracing::error!(%error, frame = frame.name(), "could not encode an outgoing frame");
        }
    }

    /// Encodes a broker output for this connection.
    pub fn write_output(&mut self, output: Output, epoch: Epoch) {
        let frame = match output {
            Output::SendAck {
                producer_id,
                sequence,
                message,
                duplicate,
                ..
            } => Frame::SendAck(protocol::SendAck {
                producer_id,
                sequence,
                epoch: epoch.get(),
                message_id: message.0,
                duplicate,
            }),
            Output::Deliver {
                to,
                message,
                delivery_count,
                destination,
                persistent,
                data,
            } => {
                // Straight from the shared message: no owned frame, so no
                // per-delivery copy of headers or destination.
                let frame = protocol::DeliverRef {
                    subscription_id: to.subscription,
                    message_id: message.0,
                    delivery_count,
                    destination: destination.as_str(),
                    persistent,
                    headers: &data.headers,
                    body: &data.body,
                };
                if let Err(error) = frame.encode(&mut self.wbuf) {
                    tracing::error!(%error, "could not encode a delivery");
                }
                return;
            }
            Output::Ok { request_id, .. } => Frame::Ok(protocol::OkFrame { request_id }),
            Output::Refused {
                request_id,
                refusal,
                text,
                ..
            } => Frame::Error(ErrorFrame {
                request_id,
                code: refusal_code(refusal),
                text,
            }),
            Output::Route(_) | Output::ToShard { .. } => return,
        };
        self.write_frame(&frame);
    }

    /// Arms the receive and the send as needed; closes when due.
    pub fn start_io(&mut self, ring: &mut Ring) -> std::io::Result<()> {
        let fd = types::Fd(self.stream.as_raw_fd());
        if self.closing == Closing::AfterFlush
            && !self.send_in_flight
            && self.sending.is_empty()
            && self.wbuf.is_empty()
        {
            self.closing = Closing::Now;
        }
        if self.closing == Closing::Now {
            if !self.shut {
                // Completes the pending receive (with 0), so the buffers are free.
                let _ = self.stream.shutdown(Shutdown::Both);
                self.shut = true;
            }
            return Ok(());
        }
        if !self.recv_in_flight && self.closing == Closing::Open {
            let free = &mut self.rbuf[self.rlen..];
            let entry = opcode::Recv::new(fd, free.as_mut_ptr(), free.len() as u32)
                .build()
                .user_data(Token::new(Owner::Recv, self.id.seq).0);
            // SAFETY: rbuf is neither resized nor dropped while the receive is
            // in flight (see `received` and `finished`).
            unsafe { ring.push(&entry)? };
            self.recv_in_flight = true;
        }
        if !self.send_in_flight && self.sending.is_empty() && !self.wbuf.is_empty() {
            std::mem::swap(&mut self.sending, &mut self.wbuf);
            self.sent = 0;
        }
        if !self.send_in_flight && self.sent < self.sending.len() {
            let rest = &self.sending[self.sent..];
            let entry = opcode::Send::new(fd, rest.as_ptr(), rest.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(Token::new(Owner::Send, self.id.seq).0);
            // SAFETY: `sending` is not touched until this send completes.
            unsafe { ring.push(&entry)? };
            self.send_in_flight = true;
        }
        Ok(())
    }

    pub fn sent(&mut self, result: i32) {
        self.send_in_flight = false;
        if result < 0 {
            self.closing = Closing::Now;
            return;
        }
        self.sent += result as usize;
        if self.sent >= self.sending.len() {
            self.sending.clear();
            self.sent = 0;
        }
    }

    /// Takes a receive completion: decodes whole frames into requests.
    pub fn received(
        &mut self,
        result: i32,
        limits: &Limits,
        now_ms: u64,
        shared: &super::Shared,
        requests: &mut Vec<Request>,
    ) {
        self.recv_in_flight = false;
        if result <= 0 {
            // 0: the client closed; < 0: reset or cancelled by our shutdown.
            self.closing = Closing::Now;
            return;
        }
        self.rlen += result as usize;
        self.decode(limits, now_ms, shared, requests);
    }

    /// Takes the connection over on its new shard, under the id `id`, and
    /// decodes what it received (the first request, left undecoded where
    /// it was, comes first).
    pub fn adopted(
        &mut self,
        id: ConnId,
        limits: &Limits,
        now_ms: u64,
        shared: &super::Shared,
        requests: &mut Vec<Request>,
    ) {
        assert!(
            self.move_to == Some(id.shard) && !self.recv_in_flight && !self.send_in_flight,
            "a connection moves only to the shard it chose, with no I/O in flight"
        );
        self.id = id;
        self.move_to = None;
        self.decode(limits, now_ms, shared, requests);
    }

    /// The shard this connection is to move to, if it chose one.
    pub fn move_to(&self) -> Option<ShardId> {
        self.move_to
    }

    fn decode(
        &mut self,
        limits: &Limits,
        now_ms: u64,
        shared: &super::Shared,
        requests: &mut Vec<Request>,
    ) {
        let mut consumed = 0;
        while self.closing == Closing::Open {
            match protocol::decode(&self.rbuf[consumed..self.rlen], limits) {
                Ok(Some((frame, len))) => {
                    if self.moves_for(&frame, shared.shards()) {
                        // Left in the buffer: the new shard decodes it again
                        // under the connection's new id.
                        break;
                    }
                    consumed += len;
                    self.frame(frame, now_ms, shared, requests);
                }
                Ok(None) => break,
                Err(error) => {
                    self.fail(error.code(), error.to_string());
                    break;
                }
            }
        }
        self.rbuf.copy_within(consumed..self.rlen, 0);
        self.rlen -= consumed;
        // Make room for a frame larger than the buffer (its length was
        // already checked against the limit by `decode`).
        if let Some(need) = protocol::frame_bytes(&self.rbuf[..self.rlen])
            && need > self.rbuf.len()
            && need <= limits.frame_bytes_max as usize + protocol::LEN_PREFIX_BYTES
        {
            self.rbuf.resize(need, 0);
        }
    }

    /// Places the connection at its first request: a SEND or SUBSCRIBE for
    /// a destination another shard owns moves it there (so its sends and
    /// deliveries need no hop between shards and the thread wake-up each
    /// costs, both ways); any other first request keeps it here. Whether
    /// it moves now.
    fn moves_for(&mut self, frame: &Frame, shards: usize) -> bool {
        if self.placed || !self.welcomed {
            return false;
        }
        let destination = match frame {
            Frame::Send(send) => Some(send.destination.as_str()),
            Frame::Subscribe(subscribe) => Some(subscribe.destination.as_str()),
            Frame::Ping(_) => return false,
            _ => None,
        };
        self.placed = true;
        let Some(owner) = destination
            .and_then(|d| d.parse::<Destination>().ok())
            .map(|d| super::owner(&d, shards))
        else {
            return false;
        };
        // A send in flight holds a buffer this shard's ring writes from:
        // only a connection with none can move (output not yet handed to
        // the kernel moves with it).
        if owner == self.id.shard || self.send_in_flight || !self.sending.is_empty() {
            return false;
        }
        self.move_to = Some(owner);
        true
    }

    fn refuse(&mut self, request_id: u64, code: ErrorCode, text: String) {
        self.write_frame(&Frame::Error(ErrorFrame {
            request_id,
            code,
            text,
        }));
    }

    fn parse(&mut self, request_id: u64, text: &str) -> Option<Destination> {
        if let Some(known) = self.recent_destinations.find(text) {
            return Some(known.clone());
        }
        match text.parse::<Destination>() {
            Ok(destination) => {
                self.recent_destinations.remember(destination.clone());
                Some(destination)
            }
            Err(error) => {
                self.refuse(request_id, ErrorCode::InvalidDestination, error.to_string());
                None
            }
        }
    }

    fn consumer(&self, subscription: u32) -> ConsumerKey {
        ConsumerKey {
            conn: self.id,
            subscription,
        }
    }

    fn frame(
        &mut self,
        frame: Frame,
        now_ms: u64,
        shared: &super::Shared,
        requests: &mut Vec<Request>,
    ) {
        if !self.welcomed {
            match frame {
                Frame::Hello(hello)
                    if hello.version == protocol::PROTOCOL_VERSION
                        && !shared.serving.load(std::sync::atomic::Ordering::Relaxed) =>
                {
                    let active = shared.active_hint.lock().expect("hint lock").clone();
                    self.write_frame(&Frame::NotActive(protocol::NotActive { active }));
                    self.closing = Closing::AfterFlush;
                }
                Frame::Hello(hello) if hello.version == protocol::PROTOCOL_VERSION => {
                    self.welcomed = true;
                    self.write_frame(&Frame::Welcome(self.welcome.clone()));
                }
                Frame::Hello(hello) => self.fail(
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "protocol version {} is not supported (this server speaks {})",
                        hello.version,
                        protocol::PROTOCOL_VERSION
                    ),
                ),
                other => self.fail(
                    ErrorCode::HandshakeRequired,
                    format!("the first frame must be HELLO, not {}", other.name()),
                ),
            }
            return;
        }
        match frame {
            Frame::Send(send) => {
                let Some(destination) = self.parse(send.sequence, &send.destination) else {
                    return;
                };
                let expires_at_ms = if send.ttl_ms > 0 {
                    now_ms.saturating_add(send.ttl_ms)
                } else {
                    0
                };
                let command = Command::Send(SendCommand {
                    destination: destination.clone(),
                    producer_id: send.producer_id,
                    sequence: send.sequence,
                    persistent: send.persistent,
                    expires_at_ms,
                    data: Arc::new(MessageData {
                        headers: send.headers,
                        body: send.body,
                    }),
                    after: Some(AfterDurable::Ack {
                        to: self.id,
                        producer_id: send.producer_id,
                        sequence: send.sequence,
                        duplicate: false,
                    }),
                    local_ack: match send.ack_mode {
                        protocol::AckMode::Local => true,
                        protocol::AckMode::Replicated => false,
                        protocol::AckMode::Default => self.default_local_ack,
                    },
                });
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Subscribe(subscribe) => {
                let Some(destination) = self.parse(subscribe.request_id, &subscribe.destination)
                else {
                    return;
                };
                if self.subscriptions.contains_key(&subscribe.subscription_id) {
                    let text = format!(
                        "subscription {} is already in use on this connection",
                        subscribe.subscription_id
                    );
                    self.refuse(subscribe.request_id, ErrorCode::SubscriptionExists, text);
                    return;
                }
                self.subscriptions
                    .insert(subscribe.subscription_id, destination.clone());
                let command = Command::Subscribe {
                    consumer: self.consumer(subscribe.subscription_id),
                    request_id: subscribe.request_id,
                    destination: destination.clone(),
                    durable_name: subscribe.durable_name,
                    prefetch: subscribe.prefetch,
                };
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Unsubscribe(unsubscribe) => {
                let Some(destination) = self.subscriptions.remove(&unsubscribe.subscription_id)
                else {
                    let text = format!("no subscription {}", unsubscribe.subscription_id);
                    self.refuse(unsubscribe.request_id, ErrorCode::NoSuchSubscription, text);
                    return;
                };
                let command = Command::Unsubscribe {
                    consumer: self.consumer(unsubscribe.subscription_id),
                    request_id: unsubscribe.request_id,
                    destination: destination.clone(),
                    remove_durable: unsubscribe.remove_durable,
                };
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Ack(protocol::Ack {
                subscription_id,
                message_id,
                ..
            })
            | Frame::Nack(protocol::Nack {
                subscription_id,
                message_id,
            }) if !self.subscriptions.contains_key(&subscription_id) => {
                let _ = message_id;
                self.refuse(
                    0,
                    ErrorCode::NoSuchSubscription,
                    format!("no subscription {subscription_id}"),
                );
            }
            Frame::Ack(ack) => {
                let destination = self.subscriptions[&ack.subscription_id].clone();
                let command = Command::Ack {
                    consumer: self.consumer(ack.subscription_id),
                    destination: destination.clone(),
                    message: MessageId(ack.message_id),
                    confirm: (ack.request_id != 0).then_some(ack.request_id),
                };
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Nack(nack) => {
                let destination = self.subscriptions[&nack.subscription_id].clone();
                let command = Command::Nack {
                    consumer: self.consumer(nack.subscription_id),
                    destination: destination.clone(),
                    message: MessageId(nack.message_id),
                };
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Create(create) => {
                let Some(destination) = self.parse(create.request_id, &create.destination) else {
                    return;
                };
                let command = Command::Create {
                    from: self.id,
                    request_id: create.request_id,
                    destination: destination.clone(),
                };
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Delete(delete) => {
                let Some(destination) = self.parse(delete.request_id, &delete.destination) else {
                    return;
                };
                let command = Command::Delete {
                    from: self.id,
                    request_id: delete.request_id,
                    destination: destination.clone(),
                };
                requests.push(Request {
                    destination,
                    command,
                });
            }
            Frame::Ping(ping) => {
                self.write_frame(&Frame::Pong(protocol::Pong { token: ping.token }))
            }
            other => self.fail(
                ErrorCode::MalformedFrame,
                format!("a client may not send {}", other.name()),
            ),
        }
    }

    /// Tells a served client this server no longer serves, naming the
    /// active one, and closes.
    pub fn redirect(&mut self, active: &str) {
        if self.welcomed && self.closing == Closing::Open {
            self.write_frame(&Frame::NotActive(protocol::NotActive {
                active: active.to_owned(),
            }));
            self.closing = Closing::AfterFlush;
        }
    }

    /// Last-chance synchronous write of pending output (server shutdown).
    pub fn flush_blocking(&mut self) {
        if self.send_in_flight || self.shut {
            return;
        }
        let _ = self.stream.set_write_timeout(Some(FINAL_WRITE_TIMEOUT));
        let _ = self.stream.write_all(&self.sending[self.sent..]);
        let _ = self.stream.write_all(&self.wbuf);
        self.sending.clear();
        self.wbuf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_destinations_keep_the_last_few_and_replace_the_oldest() {
        let mut recent = RecentDestinations::default();
        let name = |n: usize| format!("/queue/q{n}");
        for n in 0..RECENT_DESTINATIONS {
            assert!(recent.find(&name(n)).is_none());
            recent.remember(name(n).parse().unwrap());
        }
        for n in 0..RECENT_DESTINATIONS {
            assert_eq!(recent.find(&name(n)).unwrap().as_str(), name(n));
        }
        // One more replaces the first remembered, and only it.
        recent.remember(name(RECENT_DESTINATIONS).parse().unwrap());
        assert!(recent.find(&name(0)).is_none());
        for n in 1..=RECENT_DESTINATIONS {
            assert_eq!(recent.find(&name(n)).unwrap().as_str(), name(n));
        }
        assert!(recent.find("/topic/q1").is_none(), "the kind is part of it");
    }
}
