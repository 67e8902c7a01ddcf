//! The native wire protocol: frames and their sans-IO codec (bytes in,
//! frames out), and destination names.
//!
//! ```text
//!   socket bytes ──▶ decode(buf, limits) ──▶ Frame ──▶ broker / client
//!   socket bytes ◀── Frame::encode(out)  ◀── Frame ◀──
//! ```
//!
//! This module owns the byte layout of every frame (`docs/PROTOCOL.md` is
//! its reference) and the limits that keep a hostile peer from making a
//! receiver allocate. It never touches a socket, a clock or the broker's
//! state: connection handling, the handshake deadline and what a frame means
//! for queues live in `net` and `broker`. Decode errors carry the
//! `ErrorCode` to answer with before closing the connection.
//!
//! One frame struct is named `Send`; import it by path (`protocol::Send`) or
//! match on `Frame::Send(..)` rather than glob-importing this module, which
//! would shadow the `Send` marker trait.

mod codec;
mod destination;
mod error;
mod frame;

pub use codec::{DeliverRef, LEN_PREFIX_BYTES, Limits, SendRef, decode, frame_bytes};
pub use destination::{DESTINATION_NAME_BYTES_MAX, Destination, DestinationError, DestinationKind};
pub use error::ProtocolError;
pub use frame::{
    Ack, AckMode, Create, Delete, Deliver, ErrorCode, ErrorFrame, Frame, Header, Hello, MAGIC,
    Nack, NotActive, OkFrame, PROTOCOL_VERSION, Ping, Pong, Send, SendAck, Subscribe, Unsubscribe,
    Welcome,
};
