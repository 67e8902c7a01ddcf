//! The frames of the native protocol, as plain data.
//!
//! One struct per frame type, fields in wire order and named as in
//! `docs/PROTOCOL.md`. These types know nothing about bytes: `codec` turns
//! them into bytes and back. Destinations are carried as the client wrote
//! them; the broker validates them with `Destination::from_str`, so that a
//! bad name is answered with `InvalidDestination` for that request rather
//! than a closed connection.
//!
//! The type bytes and the numeric values of `AckMode` and `ErrorCode` are
//! part of the wire format: never reuse or renumber one.

use std::fmt;

use bytes::Bytes;

/// First four bytes of every HELLO body. A peer that is not a twinmq client
/// (an HTTP probe, a STOMP client on the wrong port) fails here, clearly.
pub const MAGIC: [u8; 4] = *b"TWMQ";

/// The protocol version this codec speaks. HELLO and WELCOME carry it right
/// after the magic, and those two fields never move, so a peer can always
/// tell "unsupported version" from "malformed".
pub const PROTOCOL_VERSION: u16 = 1;

/// A message header: key and value, in the order the producer gave them.
/// Keys may repeat; the protocol does not interpret them.
pub type Header = (String, String);

/// Any frame of the native protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Send(Send),
    SendAck(SendAck),
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Deliver(Deliver),
    Ack(Ack),
    Nack(Nack),
    Create(Create),
    Delete(Delete),
    Ok(OkFrame),
    Error(ErrorFrame),
    Ping(Ping),
    Pong(Pong),
    NotActive(NotActive),
}

/// Client → server, first frame of every connection: who is connecting and
/// with which protocol version.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// Always `MAGIC`; decoding rejects anything else.
    pub magic: [u8; 4],
    /// The client's protocol version; this codec accepts `PROTOCOL_VERSION`.
    pub version: u16,
    /// Chosen by the client; names the connection in logs and status.
    pub client_id: String,
    pub username: String,
    /// Opaque to the protocol; never printed (see the `Debug` impl).
    pub password: Bytes,
}

/// Server → client, the answer to an accepted HELLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    /// Names the server (primary or secondary) in the client's logs.
    pub server_id: String,
    /// The server's current epoch; a client rejects acks from an older epoch
    /// than the newest it has seen.
    pub epoch: u64,
    /// The largest frame (as the length prefix counts) the server accepts.
    pub frame_bytes_max: u32,
}

/// Client → server: publish one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// With `sequence`, identifies the send across reconnects and failover:
    /// the broker drops a replayed duplicate and acks it as one.
    pub producer_id: u64,
    pub sequence: u64,
    /// `/queue/NAME` or `/topic/NAME`, validated by the broker.
    pub destination: String,
    /// Whether the message is journaled (survives a restart and failover).
    pub persistent: bool,
    /// Time to live in milliseconds; 0 = never expires.
    pub ttl_ms: u64,
    pub ack_mode: AckMode,
    pub headers: Vec<Header>,
    pub body: Bytes,
}

/// Server → client: a SEND is durable as its ack mode requires (or was a
/// duplicate of one that already was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAck {
    pub producer_id: u64,
    pub sequence: u64,
    /// The epoch the server acked in.
    pub epoch: u64,
    /// The broker's id for the message (the first one's, for a duplicate).
    pub message_id: u64,
    /// The send repeated one the broker already had; nothing was enqueued.
    pub duplicate: bool,
}

/// Client → server: start receiving from a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Echoed by the OK or ERROR that answers this request.
    pub request_id: u64,
    /// Chosen by the client, unique per connection; DELIVER, ACK and NACK
    /// name it.
    pub subscription_id: u32,
    pub destination: String,
    /// For a topic: the name of a durable subscription that keeps messages
    /// while the client is away. `None` for a plain subscription.
    pub durable_name: Option<String>,
    /// How many unacknowledged deliveries the server may have outstanding on
    /// this subscription.
    pub prefetch: u32,
}

/// Client → server: stop a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub request_id: u64,
    pub subscription_id: u32,
    /// Also delete the durable subscription (and the messages it holds),
    /// rather than only detaching this connection from it.
    pub remove_durable: bool,
}

/// Server → client: one message for a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    pub subscription_id: u32,
    pub message_id: u64,
    /// 1 on first delivery; more after a NACK, a lost connection or a
    /// failover.
    pub delivery_count: u32,
    pub destination: String,
    pub persistent: bool,
    pub headers: Vec<Header>,
    pub body: Bytes,
}

/// Client → server: the message was processed; never deliver it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub subscription_id: u32,
    pub message_id: u64,
    /// Non-zero: answer with OK carrying it once the settlement is
    /// committed (journaled, and replicated where sends wait for that).
    /// 0: no answer.
    pub request_id: u64,
}

/// Client → server: the message was not processed; deliver it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub subscription_id: u32,
    pub message_id: u64,
}

/// Client → server: create a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub request_id: u64,
    pub destination: String,
}

/// Client → server: delete a destination and the messages it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub request_id: u64,
    pub destination: String,
}

/// Server → client: the request with this id succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OkFrame {
    pub request_id: u64,
}

/// Server → client: a request failed, or (request id 0) the connection is
/// being closed for the reason given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The failed request, or 0 when the error is not tied to a request.
    pub request_id: u64,
    pub code: ErrorCode,
    /// For people: what went wrong and, where it helps, what to do.
    pub text: String,
}

/// Either side: are you there? The other side answers PONG with the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    pub token: u64,
}

/// The answer to a PING, carrying its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    pub token: u64,
}

/// Server → client: this server is not the active one; connect there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotActive {
    /// `host:port` of the active server, empty when unknown.
    pub active: String,
}

impl fmt::Debug for Hello {
    // Hand-written so that logging a HELLO never prints a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hello")
            .field("magic", &self.magic)
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field(
                "password",
                &format_args!("<{} bytes redacted>", self.password.len()),
            )
            .finish()
    }
}

/// When a SEND is acknowledged. Values are wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum AckMode {
    /// The server's configured default (`Replicated` unless changed).
    #[default]
    Default = 0,
    /// After the active server's own flush.
    Local = 1,
    /// After the active's flush and the passive's flush of the same bytes.
    Replicated = 2,
}

impl AckMode {
    pub fn from_u8(value: u8) -> Option<AckMode> {
        match value {
            0 => Some(AckMode::Default),
            1 => Some(AckMode::Local),
            2 => Some(AckMode::Replicated),
            _ => None,
        }
    }

    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// Why a request failed or a connection is being closed. Values are wire
/// format and stable; gaps group related codes and leave room to grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A frame broke the wire format; the connection is closed.
    MalformedFrame,
    /// A frame's length prefix exceeds the receiver's limit.
    FrameTooLarge,
    /// A frame type the receiver does not know.
    UnknownFrameType,
    /// The first frame of a connection was not HELLO.
    HandshakeRequired,
    /// No HELLO arrived within the server's handshake deadline.
    HandshakeTimeout,
    /// The HELLO named a protocol version the server does not speak.
    UnsupportedVersion,
    /// Unknown user or wrong password.
    AuthenticationFailed,
    /// The destination does not exist.
    NoSuchDestination,
    /// The destination name is not `/queue/NAME` or `/topic/NAME`.
    InvalidDestination,
    /// The subscription id is not open on this connection.
    NoSuchSubscription,
    /// The subscription id (or durable name) is already in use.
    SubscriptionExists,
    /// The operation needs the other kind of destination (e.g. a durable
    /// subscription on a queue).
    WrongDestinationKind,
    /// The journal failed; the server acknowledges nothing more.
    StorageFailure,
    /// The server is at its connection limit.
    TooManyConnections,
    /// The server is shutting down.
    ShuttingDown,
    /// The server is up but not serving clients (e.g. it lost its lock).
    NotServing,
    /// A `replicated` send was refused: no passive is in sync and the
    /// server is configured with `standalone = "refuse"`.
    NotReplicated,
    /// A server bug; the text says more.
    Internal,
    /// A code this build does not know (sent by a newer peer). Never holds a
    /// known code: build codes with `from_u16`.
    Other(u16),
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::MalformedFrame,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::UnknownFrameType,
            4 => ErrorCode::HandshakeRequired,
            5 => ErrorCode::HandshakeTimeout,
            6 => ErrorCode::UnsupportedVersion,
            7 => ErrorCode::AuthenticationFailed,
            10 => ErrorCode::NoSuchDestination,
            11 => ErrorCode::InvalidDestination,
            12 => ErrorCode::NoSuchSubscription,
            13 => ErrorCode::SubscriptionExists,
            14 => ErrorCode::WrongDestinationKind,
            20 => ErrorCode::StorageFailure,
            21 => ErrorCode::TooManyConnections,
            22 => ErrorCode::ShuttingDown,
            23 => ErrorCode::NotServing,
            24 => ErrorCode::NotReplicated,
            99 => ErrorCode::Internal,
            other => ErrorCode::Other(other),
        }
    }

    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::MalformedFrame => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::UnknownFrameType => 3,
            ErrorCode::HandshakeRequired => 4,
            ErrorCode::HandshakeTimeout => 5,
            ErrorCode::UnsupportedVersion => 6,
            ErrorCode::AuthenticationFailed => 7,
            ErrorCode::NoSuchDestination => 10,
            ErrorCode::InvalidDestination => 11,
            ErrorCode::NoSuchSubscription => 12,
            ErrorCode::SubscriptionExists => 13,
            ErrorCode::WrongDestinationKind => 14,
            ErrorCode::StorageFailure => 20,
            ErrorCode::TooManyConnections => 21,
            ErrorCode::ShuttingDown => 22,
            ErrorCode::NotServing => 23,
            ErrorCode::NotReplicated => 24,
            ErrorCode::Internal => 99,
            ErrorCode::Other(code) => code,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            ErrorCode::MalformedFrame => "malformed frame",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::UnknownFrameType => "unknown frame type",
            ErrorCode::HandshakeRequired => "handshake required (the first frame must be HELLO)",
            ErrorCode::HandshakeTimeout => "handshake timeout",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::AuthenticationFailed => "authentication failed",
            ErrorCode::NoSuchDestination => "no such destination",
            ErrorCode::InvalidDestination => "invalid destination",
            ErrorCode::NoSuchSubscription => "no such subscription",
            ErrorCode::SubscriptionExists => "subscription exists",
            ErrorCode::WrongDestinationKind => "wrong destination kind",
            ErrorCode::StorageFailure => "storage failure",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::ShuttingDown => "shutting down",
            ErrorCode::NotServing => "not serving",
            ErrorCode::NotReplicated => "not replicated (no passive in sync)",
            ErrorCode::Internal => "internal error",
            ErrorCode::Other(code) => return write!(f, "error code {code}"),
        };
        write!(f, "{text} ({})", self.as_u16())
    }
}

/// The type byte of each frame. Zero is never a type, so a zeroed buffer
/// never parses as a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameType {
    Hello = 1,
    Welcome = 2,
    Send = 3,
    SendAck = 4,
    Subscribe = 5,
    Unsubscribe = 6,
    Deliver = 7,
    Ack = 8,
    Nack = 9,
    Create = 10,
    Delete = 11,
    Ok = 12,
    Error = 13,
    Ping = 14,
    Pong = 15,
    NotActive = 16,
}

impl FrameType {
    pub(crate) fn from_u8(value: u8) -> Option<FrameType> {
        Some(match value {
            1 => FrameType::Hello,
            2 => FrameType::Welcome,
            3 => FrameType::Send,
            4 => FrameType::SendAck,
            5 => FrameType::Subscribe,
            6 => FrameType::Unsubscribe,
            7 => FrameType::Deliver,
            8 => FrameType::Ack,
            9 => FrameType::Nack,
            10 => FrameType::Create,
            11 => FrameType::Delete,
            12 => FrameType::Ok,
            13 => FrameType::Error,
            14 => FrameType::Ping,
            15 => FrameType::Pong,
            16 => FrameType::NotActive,
            _ => return None,
        })
    }

    /// The frame's name as documentation, logs and error messages spell it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::Welcome => "WELCOME",
            FrameType::Send => "SEND",
            FrameType::SendAck => "SEND_ACK",
            FrameType::Subscribe => "SUBSCRIBE",
            FrameType::Unsubscribe => "UNSUBSCRIBE",
            FrameType::Deliver => "DELIVER",
            FrameType::Ack => "ACK",
            FrameType::Nack => "NACK",
            FrameType::Create => "CREATE",
            FrameType::Delete => "DELETE",
            FrameType::Ok => "OK",
            FrameType::Error => "ERROR",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::NotActive => "NOT_ACTIVE",
        }
    }
}

impl Frame {
    pub(crate) fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome(_) => FrameType::Welcome,
            Frame::Send(_) => FrameType::Send,
            Frame::SendAck(_) => FrameType::SendAck,
            Frame::Subscribe(_) => FrameType::Subscribe,
            Frame::Unsubscribe(_) => FrameType::Unsubscribe,
            Frame::Deliver(_) => FrameType::Deliver,
            Frame::Ack(_) => FrameType::Ack,
            Frame::Nack(_) => FrameType::Nack,
            Frame::Create(_) => FrameType::Create,
            Frame::Delete(_) => FrameType::Delete,
            Frame::Ok(_) => FrameType::Ok,
            Frame::Error(_) => FrameType::Error,
            Frame::Ping(_) => FrameType::Ping,
            Frame::Pong(_) => FrameType::Pong,
            Frame::NotActive(_) => FrameType::NotActive,
        }
    }

    /// The frame's name as the protocol documentation spells it: "SEND",
    /// "SEND_ACK", "NOT_ACTIVE", ...
    pub fn name(&self) -> &'static str {
        self.frame_type().name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_survives_its_number_and_unknown_ones_are_kept() {
        for code in 0..=u16::MAX {
            assert_eq!(ErrorCode::from_u16(code).as_u16(), code);
        }
        assert_eq!(ErrorCode::from_u16(4), ErrorCode::HandshakeRequired);
        assert_eq!(ErrorCode::from_u16(99), ErrorCode::Internal);
        assert_eq!(ErrorCode::from_u16(500), ErrorCode::Other(500));
        assert_eq!(ErrorCode::from_u16(0), ErrorCode::Other(0));
    }

    #[test]
    fn error_codes_display_their_meaning_and_number() {
        assert_eq!(
            ErrorCode::NoSuchDestination.to_string(),
            "no such destination (10)"
        );
        assert_eq!(ErrorCode::Other(400).to_string(), "error code 400");
    }

    #[test]
    fn ack_modes_have_three_values_and_no_more() {
        for mode in [AckMode::Default, AckMode::Local, AckMode::Replicated] {
            assert_eq!(AckMode::from_u8(mode.as_u8()), Some(mode));
        }
        assert_eq!(AckMode::from_u8(3), None);
    }

    #[test]
    fn type_bytes_and_names_agree() {
        assert_eq!(FrameType::from_u8(0), None);
        assert_eq!(FrameType::from_u8(17), None);
        for byte in 1..=16 {
            let frame_type = FrameType::from_u8(byte).expect("known type");
            assert_eq!(frame_type as u8, byte);
        }
        assert_eq!(FrameType::SendAck.name(), "SEND_ACK");
        assert_eq!(Frame::Ping(Ping { token: 1 }).name(), "PING");
    }

    #[test]
    fn hello_debug_never_shows_the_password() {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            client_id: "c1".into(),
            username: "alice".into(),
            password: Bytes::from_static(b"hunter2"),
        };
        let printed = format!("{hello:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("<7 bytes redacted>"), "{printed}");
    }
}
