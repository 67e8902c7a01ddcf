//! Frames to bytes and back, sans-IO: `decode` takes whatever bytes have
//! arrived and says "need more", "here is a frame and how many bytes it
//! used", or "this is not the protocol"; `Frame::encode` appends one frame to
//! a buffer. No sockets, no clocks, no allocation before a length is checked.
//!
//! ```text
//!  0        4     5
//!  +--------+-----+------------------------------
//!  | len    |type | body (fields in order, see frame.rs)
//!  +--------+-----+------------------------------
//!    u32 LE   u8    len - 1 bytes
//! ```
//!
//! Primitives, all little-endian: integers fixed-width; `bool` one byte 0/1;
//! `str` u16 byte length + UTF-8; `opt_str` a bool presence flag + `str` if
//! present; `bytes` u32 length + bytes; `headers` u16 count + count pairs of
//! `str`. The full format is in `docs/PROTOCOL.md`.
//!
//! How hostile input is contained:
//! - The length prefix is checked against `Limits::frame_bytes_max` as soon
//!   as its 4 bytes are there, so a peer cannot make the receiver buffer a
//!   huge frame.
//! - A body is parsed only once the whole frame is buffered, so every inner
//!   length is checked against the bytes actually left in the frame (and
//!   string lengths and header counts against their limits) before anything
//!   is allocated.
//! - Everything is strict: a bool is 0 or 1, a frame ends exactly after its
//!   last field. So a decoded frame re-encodes to the very bytes it came
//!   from, and two peers can never read the same bytes differently.

use bytes::Bytes;

use super::error::ProtocolError;
use super::frame::{
    Ack, AckMode, Create, Delete, Deliver, ErrorCode, ErrorFrame, Frame, FrameType, Header, Hello,
    MAGIC, Nack, NotActive, OkFrame, PROTOCOL_VERSION, Ping, Pong, Send, SendAck, Subscribe,
    Unsubscribe, Welcome,
};
use crate::constants::{PROTOCOL_FRAME_BYTES_MAX, PROTOCOL_HEADERS_MAX, PROTOCOL_STRING_BYTES_MAX};

/// Size of the length prefix in front of every frame.
pub const LEN_PREFIX_BYTES: usize = 4;

/// What a receiver accepts. Every length and count in a frame is checked
/// against these before anything is allocated for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, counted as the length prefix counts (type byte and
    /// body, not the prefix itself).
    pub frame_bytes_max: u32,
    /// Largest number of headers on one message.
    pub headers_max: u16,
    /// Largest string field, in bytes.
    pub string_bytes_max: u16,
}

impl Limits {
    /// The limits every peer accepts unless it says otherwise (a server
    /// announces its frame limit in WELCOME).
    pub const DEFAULT: Limits = Limits {
        frame_bytes_max: PROTOCOL_FRAME_BYTES_MAX,
        headers_max: PROTOCOL_HEADERS_MAX,
        string_bytes_max: PROTOCOL_STRING_BYTES_MAX,
    };
}

// Any valid destination ("/queue/" or "/topic/" plus the longest name) must
// fit a string field, or the codec would refuse what the broker accepts.
const _: () = assert!(
    super::DESTINATION_NAME_BYTES_MAX + "/queue/".len() <= PROTOCOL_STRING_BYTES_MAX as usize
);

impl Default for Limits {
    fn default() -> Limits {
        Limits::DEFAULT
    }
}

/// Total size (length prefix included) of the frame at the front of `buf`,
/// once its prefix has arrived: how much a reader must buffer. The length
/// is checked against the limits by `decode`, which a reader calls first.
pub fn frame_bytes(buf: &[u8]) -> Option<usize> {
    let prefix = buf.first_chunk::<LEN_PREFIX_BYTES>()?;
    Some(LEN_PREFIX_BYTES + u32::from_le_bytes(*prefix) as usize)
}

/// Decodes the first frame in `buf`.
///
/// - `Ok(None)`: `buf` holds no whole frame yet; read more and call again
///   with the same bytes plus the new ones.
/// - `Ok(Some((frame, consumed)))`: drop `consumed` bytes from the front of
///   the buffer.
/// - `Err(_)`: the peer broke the protocol; answer with an ERROR frame of
///   `error.code()` and close. A zero or oversized length prefix fails as
///   soon as its 4 bytes are in, without waiting for the rest.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX_BYTES>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix);
    if len == 0 {
        return Err(ProtocolError::EmptyFrame);
    }
    let too_large = ProtocolError::FrameTooLarge {
        len: u64::from(len),
        max: u64::from(limits.frame_bytes_max),
    };
    if len > limits.frame_bytes_max {
        return Err(too_large);
    }
    let total = usize::try_from(len)
        .ok()
        .and_then(|len| len.checked_add(LEN_PREFIX_BYTES))
        .ok_or(too_large)?;
    let Some(frame_bytes) = buf.get(LEN_PREFIX_BYTES..total) else {
        return Ok(None);
    };
    let Some((&type_byte, body)) = frame_bytes.split_first() else {
        return Err(ProtocolError::EmptyFrame);
    };
    let frame_type =
        FrameType::from_u8(type_byte).ok_or(ProtocolError::UnknownFrameType(type_byte))?;
    let mut reader = Reader {
        rest: body,
        frame: frame_type.name(),
        limits,
    };
    let frame = decode_body(frame_type, &mut reader)?;
    reader.finish()?;
    Ok(Some((frame, total)))
}

fn decode_body(frame_type: FrameType, r: &mut Reader<'_, '_>) -> Result<Frame, ProtocolError> {
    Ok(match frame_type {
        FrameType::Hello => {
            let magic = r.array::<4>("magic")?;
            if magic != MAGIC {
                return Err(ProtocolError::BadMagic { found: magic });
            }
            Frame::Hello(Hello {
                magic,
                version: r.version()?,
                client_id: r.str("client_id")?,
                username: r.str("username")?,
                password: r.bytes("password")?,
            })
        }
        FrameType::Welcome => Frame::Welcome(Welcome {
            version: r.version()?,
            server_id: r.str("server_id")?,
            epoch: r.u64("epoch")?,
            frame_bytes_max: r.u32("frame_bytes_max")?,
        }),
        FrameType::Send => Frame::Send(Send {
            producer_id: r.u64("producer_id")?,
            sequence: r.u64("sequence")?,
            destination: r.str("destination")?,
            persistent: r.bool("persistent")?,
            ttl_ms: r.u64("ttl_ms")?,
            ack_mode: r.ack_mode("ack_mode")?,
            headers: r.headers()?,
            body: r.bytes("body")?,
        }),
        FrameType::SendAck => Frame::SendAck(SendAck {
            producer_id: r.u64("producer_id")?,
            sequence: r.u64("sequence")?,
            epoch: r.u64("epoch")?,
            message_id: r.u64("message_id")?,
            duplicate: r.bool("duplicate")?,
        }),
        FrameType::Subscribe => Frame::Subscribe(Subscribe {
            request_id: r.u64("request_id")?,
            subscription_id: r.u32("subscription_id")?,
            destination: r.str("destination")?,
            durable_name: r.opt_str("durable_name")?,
            prefetch: r.u32("prefetch")?,
        }),
        FrameType::Unsubscribe => Frame::Unsubscribe(Unsubscribe {
            request_id: r.u64("request_id")?,
            subscription_id: r.u32("subscription_id")?,
            remove_durable: r.bool("remove_durable")?,
        }),
        FrameType::Deliver => Frame::Deliver(Deliver {
            subscription_id: r.u32("subscription_id")?,
            message_id: r.u64("message_id")?,
            delivery_count: r.u32("delivery_count")?,
            destination: r.str("destination")?,
            persistent: r.bool("persistent")?,
            headers: r.headers()?,
            body: r.bytes("body")?,
        }),
        FrameType::Ack => Frame::Ack(Ack {
            subscription_id: r.u32("subscription_id")?,
            message_id: r.u64("message_id")?,
            request_id: r.u64("request_id")?,
        }),
        FrameType::Nack => Frame::Nack(Nack {
            subscription_id: r.u32("subscription_id")?,
            message_id: r.u64("message_id")?,
        }),
        FrameType::Create => Frame::Create(Create {
            request_id: r.u64("request_id")?,
            destination: r.str("destination")?,
        }),
        FrameType::Delete => Frame::Delete(Delete {
            request_id: r.u64("request_id")?,
            destination: r.str("destination")?,
        }),
        FrameType::Ok => Frame::Ok(OkFrame {
            request_id: r.u64("request_id")?,
        }),
        FrameType::Error => Frame::Error(ErrorFrame {
            request_id: r.u64("request_id")?,
            code: ErrorCode::from_u16(r.u16("code")?),
            text: r.str("text")?,
        }),
        FrameType::Ping => Frame::Ping(Ping {
            token: r.u64("token")?,
        }),
        FrameType::Pong => Frame::Pong(Pong {
            token: r.u64("token")?,
        }),
        FrameType::NotActive => Frame::NotActive(NotActive {
            active: r.str("active")?,
        }),
    })
}

/// Reads fields off the body of one whole frame.
struct Reader<'a, 'l> {
    rest: &'a [u8],
    frame: &'static str,
    limits: &'l Limits,
}

impl<'a> Reader<'a, '_> {
    fn take(&mut self, field: &'static str, len: usize) -> Result<&'a [u8], ProtocolError> {
        let Some((taken, rest)) = self.rest.split_at_checked(len) else {
            return Err(ProtocolError::Truncated {
                frame: self.frame,
                field,
                needed: len as u64,
                left: self.rest.len(),
            });
        };
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let Some((taken, rest)) = self.rest.split_first_chunk::<N>() else {
            return Err(ProtocolError::Truncated {
                frame: self.frame,
                field,
                needed: N as u64,
                left: self.rest.len(),
            });
        };
        self.rest = rest;
        Ok(*taken)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(ProtocolError::BadBool {
                frame: self.frame,
                field,
                value,
            }),
        }
    }

    fn ack_mode(&mut self, field: &'static str) -> Result<AckMode, ProtocolError> {
        let value = self.u8(field)?;
        AckMode::from_u8(value).ok_or(ProtocolError::BadAckMode {
            frame: self.frame,
            field,
            value,
        })
    }

    /// The version comes right after HELLO's magic and first in WELCOME, and
    /// is checked before the rest is parsed: a future version may lay out the
    /// rest differently, and its peer deserves "unsupported version", not
    /// "malformed".
    fn version(&mut self) -> Result<u16, ProtocolError> {
        let version = self.u16("version")?;
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                frame: self.frame,
                version,
                supported: PROTOCOL_VERSION,
            });
        }
        Ok(version)
    }

    fn str(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        let len = self.u16(field)?;
        if len > self.limits.string_bytes_max {
            return Err(ProtocolError::StringTooLong {
                frame: self.frame,
                field,
                len: usize::from(len),
                max: self.limits.string_bytes_max,
            });
        }
        let raw = self.take(field, usize::from(len))?;
        match std::str::from_utf8(raw) {
            Ok(text) => Ok(text.to_owned()),
            Err(source) => Err(ProtocolError::BadUtf8 {
                frame: self.frame,
                field,
                source,
            }),
        }
    }

    fn opt_str(&mut self, field: &'static str) -> Result<Option<String>, ProtocolError> {
        if self.bool(field)? {
            self.str(field).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Copies the field out of the receive buffer: the one copy a body makes
    /// on its way in.
    fn bytes(&mut self, field: &'static str) -> Result<Bytes, ProtocolError> {
        let len = self.u32(field)?;
        // A u32 always fits the usize of the 32- and 64-bit targets we build
        // for; on anything narrower the length cannot be in the frame anyway.
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(field, len).map(Bytes::copy_from_slice)
    }

    fn headers(&mut self) -> Result<Vec<Header>, ProtocolError> {
        let count = self.u16("headers")?;
        if count > self.limits.headers_max {
            return Err(ProtocolError::TooManyHeaders {
                frame: self.frame,
                count: usize::from(count),
                max: self.limits.headers_max,
            });
        }
        let mut headers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let key = self.str("headers.key")?;
            let value = self.str("headers.value")?;
            headers.push((key, value));
        }
        Ok(headers)
    }

    fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                frame: self.frame,
                extra: self.rest.len(),
            })
        }
    }
}

impl Frame {
    /// Appends this frame, length prefix included, to `out`.
    ///
    /// Refuses (and leaves `out` as it was) a frame that a peer with the
    /// default limits must reject: a string or header list over
    /// `Limits::DEFAULT`, a HELLO with another magic, a HELLO or WELCOME with
    /// another version, or a length that does not fit its wire field. The
    /// frame size itself is checked only against the u32 prefix: the
    /// server's limit is negotiated (WELCOME's `frame_bytes_max`), so the
    /// sender compares against that.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        encode_with(out, self.frame_type(), self.name(), |w| {
            encode_body(self, w)
        })
    }
}

/// A DELIVER frame over borrowed parts: how a server encodes a delivery
/// straight from the message it holds, without building an owned
/// [`Deliver`] (the same bytes as `Frame::Deliver(..).encode`).
#[derive(Debug, Clone, Copy)]
pub struct DeliverRef<'a> {
    pub subscription_id: u32,
    pub message_id: u64,
    pub delivery_count: u32,
    pub destination: &'a str,
    pub persistent: bool,
    pub headers: &'a [Header],
    pub body: &'a [u8],
}

impl DeliverRef<'_> {
    /// Appends the frame to `out`, as [`Frame::encode`] does.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        encode_with(out, FrameType::Deliver, "DELIVER", |w| {
            write_deliver(w, self)
        })
    }
}

fn write_deliver(w: &mut Writer<'_>, d: &DeliverRef<'_>) -> Result<(), ProtocolError> {
    w.u32(d.subscription_id);
    w.u64(d.message_id);
    w.u32(d.delivery_count);
    w.str("destination", d.destination)?;
    w.bool(d.persistent);
    w.headers(d.headers)?;
    w.bytes("body", d.body)
}

/// A SEND frame over borrowed parts: how a client encodes a send straight
/// from what its outbox holds, without building an owned [`Send`] (the
/// same bytes as `Frame::Send(..).encode`).
#[derive(Debug, Clone, Copy)]
pub struct SendRef<'a> {
    pub producer_id: u64,
    pub sequence: u64,
    pub destination: &'a str,
    pub persistent: bool,
    pub ttl_ms: u64,
    pub ack_mode: AckMode,
    pub headers: &'a [Header],
    pub body: &'a [u8],
}

impl SendRef<'_> {
    /// Appends the frame to `out`, as [`Frame::encode`] does.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
        encode_with(out, FrameType::Send, "SEND", |w| write_send(w, self))
    }
}

fn write_send(w: &mut Writer<'_>, s: &SendRef<'_>) -> Result<(), ProtocolError> {
    w.u64(s.producer_id);
    w.u64(s.sequence);
    w.str("destination", s.destination)?;
    w.bool(s.persistent);
    w.u64(s.ttl_ms);
    w.out.push(s.ack_mode.as_u8());
    w.headers(s.headers)?;
    w.bytes("body", s.body)
}

/// Appends one frame: the length prefix (filled in last), the type byte and
/// what `body` writes. On error `out` is left as it was.
fn encode_with(
    out: &mut Vec<u8>,
    frame_type: FrameType,
    name: &'static str,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    let start = out.len();
    let result = encode_at(out, start, frame_type, name, body);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_at(
    out: &mut Vec<u8>,
    start: usize,
    frame_type: FrameType,
    name: &'static str,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), ProtocolError>,
) -> Result<(), ProtocolError> {
    out.extend_from_slice(&[0; LEN_PREFIX_BYTES]);
    out.push(frame_type as u8);
    body(&mut Writer { out, frame: name })?;
    let len = out.len() - start - LEN_PREFIX_BYTES;
    let len = u32::try_from(len).map_err(|_| ProtocolError::FrameTooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })?;
    out[start..start + LEN_PREFIX_BYTES].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

fn encode_body(frame: &Frame, w: &mut Writer<'_>) -> Result<(), ProtocolError> {
    match frame {
        Frame::Hello(f) => {
            if f.magic != MAGIC {
                return Err(ProtocolError::BadMagic { found: f.magic });
            }
            w.out.extend_from_slice(&f.magic);
            w.version(f.version)?;
            w.str("client_id", &f.client_id)?;
            w.str("username", &f.username)?;
            w.bytes("password", &f.password)?;
        }
        Frame::Welcome(f) => {
            w.version(f.version)?;
            w.str("server_id", &f.server_id)?;
            w.u64(f.epoch);
            w.u32(f.frame_bytes_max);
        }
        Frame::Send(f) => write_send(
            w,
            &SendRef {
                producer_id: f.producer_id,
                sequence: f.sequence,
                destination: &f.destination,
                persistent: f.persistent,
                ttl_ms: f.ttl_ms,
                ack_mode: f.ack_mode,
                headers: &f.headers,
                body: &f.body,
            },
        )?,
        Frame::SendAck(f) => {
            w.u64(f.producer_id);
            w.u64(f.sequence);
            w.u64(f.epoch);
            w.u64(f.message_id);
            w.bool(f.duplicate);
        }
        Frame::Subscribe(f) => {
            w.u64(f.request_id);
            w.u32(f.subscription_id);
            w.str("destination", &f.destination)?;
            w.opt_str("durable_name", f.durable_name.as_deref())?;
            w.u32(f.prefetch);
        }
        Frame::Unsubscribe(f) => {
            w.u64(f.request_id);
            w.u32(f.subscription_id);
            w.bool(f.remove_durable);
        }
        Frame::Deliver(f) => write_deliver(
            w,
            &DeliverRef {
                subscription_id: f.subscription_id,
                message_id: f.message_id,
                delivery_count: f.delivery_count,
                destination: &f.destination,
                persistent: f.persistent,
                headers: &f.headers,
                body: &f.body,
            },
        )?,
        Frame::Ack(f) => {
            w.u32(f.subscription_id);
            w.u64(f.message_id);
            w.u64(f.request_id);
        }
        Frame::Nack(f) => {
            w.u32(f.subscription_id);
            w.u64(f.message_id);
        }
        Frame::Create(f) => {
            w.u64(f.request_id);
            w.str("destination", &f.destination)?;
        }
        Frame::Delete(f) => {
            w.u64(f.request_id);
            w.str("destination", &f.destination)?;
        }
        Frame::Ok(f) => w.u64(f.request_id),
        Frame::Error(f) => {
            w.u64(f.request_id);
            w.u16(f.code.as_u16());
            w.str("text", &f.text)?;
        }
        Frame::Ping(f) => w.u64(f.token),
        Frame::Pong(f) => w.u64(f.token),
        Frame::NotActive(f) => w.str("active", &f.active)?,
    }
    Ok(())
}

/// Appends fields to a frame being encoded, holding them to the default
/// limits so that we never send what a default peer must refuse.
struct Writer<'a> {
    out: &'a mut Vec<u8>,
    frame: &'static str,
}

impl Writer<'_> {
    fn u16(&mut self, value: u16) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_le_bytes());
    }

    fn bool(&mut self, value: bool) {
        self.out.push(u8::from(value));
    }

    fn version(&mut self, version: u16) -> Result<(), ProtocolError> {
        if version != PROTOCOL_VERSION {
            return Err(ProtocolError::UnsupportedVersion {
                frame: self.frame,
                version,
                supported: PROTOCOL_VERSION,
            });
        }
        self.u16(version);
        Ok(())
    }

    fn str(&mut self, field: &'static str, text: &str) -> Result<(), ProtocolError> {
        let max = Limits::DEFAULT.string_bytes_max;
        let len = u16::try_from(text.len())
            .ok()
            .filter(|&len| len <= max)
            .ok_or(ProtocolError::StringTooLong {
                frame: self.frame,
                field,
                len: text.len(),
                max,
            })?;
        self.u16(len);
        self.out.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn opt_str(&mut self, field: &'static str, text: Option<&str>) -> Result<(), ProtocolError> {
        self.bool(text.is_some());
        match text {
            Some(text) => self.str(field, text),
            None => Ok(()),
        }
    }

    fn bytes(&mut self, field: &'static str, bytes: &[u8]) -> Result<(), ProtocolError> {
        let len = u32::try_from(bytes.len()).map_err(|_| ProtocolError::TooLongToEncode {
            frame: self.frame,
            field,
            len: bytes.len(),
            max: u64::from(u32::MAX),
        })?;
        self.u32(len);
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn headers(&mut self, headers: &[Header]) -> Result<(), ProtocolError> {
        let max = Limits::DEFAULT.headers_max;
        let count = u16::try_from(headers.len())
            .ok()
            .filter(|&count| count <= max)
            .ok_or(ProtocolError::TooManyHeaders {
                frame: self.frame,
                count: headers.len(),
                max,
            })?;
        self.u16(count);
        for (key, value) in headers {
            self.str("headers.key", key)?;
            self.str("headers.value", value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(&mut out).expect("encodable frame");
        out
    }

    #[test]
    fn borrowed_deliver_encodes_the_same_bytes_as_the_owned_frame() {
        let owned = Deliver {
            subscription_id: 3,
            message_id: 77,
            delivery_count: 2,
            destination: "/queue/q".into(),
            persistent: true,
            headers: vec![("k".into(), "v".into())],
            body: bytes::Bytes::from_static(b"body"),
        };
        let borrowed = DeliverRef {
            subscription_id: 3,
            message_id: 77,
            delivery_count: 2,
            destination: "/queue/q",
            persistent: true,
            headers: &owned.headers,
            body: &owned.body,
        };
        let mut out = Vec::new();
        borrowed.encode(&mut out).unwrap();
        assert_eq!(out, encoded(&Frame::Deliver(owned)));
    }

    #[test]
    fn borrowed_sends_back_to_back_decode_as_the_owned_frames() {
        let owned: Vec<Send> = (1..=2)
            .map(|sequence| Send {
                producer_id: 5,
                sequence,
                destination: format!("/queue/q{sequence}"),
                persistent: sequence == 1,
                ttl_ms: 30_000 * sequence,
                ack_mode: AckMode::Local,
                headers: vec![("k".into(), format!("v{sequence}"))],
                body: bytes::Bytes::from(vec![b'x'; sequence as usize * 100]),
            })
            .collect();
        let mut out = Vec::new();
        for send in &owned {
            SendRef {
                producer_id: send.producer_id,
                sequence: send.sequence,
                destination: &send.destination,
                persistent: send.persistent,
                ttl_ms: send.ttl_ms,
                ack_mode: send.ack_mode,
                headers: &send.headers,
                body: &send.body,
            }
            .encode(&mut out)
            .unwrap();
        }
        let limits = Limits::default();
        let mut at = 0;
        for send in owned {
            let (frame, used) = decode(&out[at..], &limits).unwrap().expect("a whole frame");
            assert_eq!(frame, Frame::Send(send));
            at += used;
        }
        assert_eq!(at, out.len());
    }

    #[test]
    fn frame_bytes_reads_the_whole_size_from_the_prefix_alone() {
        let bytes = encoded(&Frame::Ping(Ping { token: 9 }));
        assert_eq!(frame_bytes(&bytes[..4]), Some(bytes.len()));
        assert_eq!(frame_bytes(&bytes), Some(bytes.len()));
        assert_eq!(frame_bytes(&bytes[..3]), None);
    }

    /// A frame as raw bytes: length prefix, type byte, body as given.
    fn raw(type_byte: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(1 + body.len()).expect("small test frame");
        let mut out = len.to_le_bytes().to_vec();
        out.push(type_byte);
        out.extend_from_slice(body);
        out
    }

    fn raw_str(text: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(text.len())
            .expect("short")
            .to_le_bytes()
            .to_vec();
        out.extend_from_slice(text);
        out
    }

    fn decode_default(buf: &[u8]) -> Result<Option<(Frame, usize)>, ProtocolError> {
        decode(buf, &Limits::default())
    }

    fn headers(count: usize) -> Vec<Header> {
        (0..count)
            .map(|i| (format!("key-{i}"), format!("value-{i}")))
            .collect()
    }

    /// One frame of every type, with every field away from its zero value.
    fn one_of_each() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                magic: MAGIC,
                version: PROTOCOL_VERSION,
                client_id: "orders-service-7".into(),
                username: "alice".into(),
                password: Bytes::from_static(b"s3cr\xffet"),
            }),
            Frame::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                server_id: "primary".into(),
                epoch: 42,
                frame_bytes_max: PROTOCOL_FRAME_BYTES_MAX,
            }),
            Frame::Send(Send {
                producer_id: u64::MAX,
                sequence: 1 << 40,
                destination: "/queue/orders".into(),
                persistent: true,
                ttl_ms: 60_000,
                ack_mode: AckMode::Replicated,
                headers: vec![("content-type".into(), "text/plain; charset=ünï".into())],
                body: Bytes::from_static(b"hello, world"),
            }),
            Frame::SendAck(SendAck {
                producer_id: 7,
                sequence: 8,
                epoch: 9,
                message_id: 10,
                duplicate: true,
            }),
            Frame::Subscribe(Subscribe {
                request_id: 11,
                subscription_id: 12,
                destination: "/topic/prices".into(),
                durable_name: Some("pricer".into()),
                prefetch: 1000,
            }),
            Frame::Unsubscribe(Unsubscribe {
                request_id: 13,
                subscription_id: 12,
                remove_durable: true,
            }),
            Frame::Deliver(Deliver {
                subscription_id: 12,
                message_id: 99,
                delivery_count: 2,
                destination: "/topic/prices".into(),
                persistent: false,
                headers: headers(3),
                body: Bytes::from(vec![0u8; 1024]),
            }),
            Frame::Ack(Ack {
                subscription_id: 12,
                message_id: 99,
                request_id: 1 << 63,
            }),
            Frame::Nack(Nack {
                subscription_id: 12,
                message_id: 100,
            }),
            Frame::Create(Create {
                request_id: 14,
                destination: "/queue/new".into(),
            }),
            Frame::Delete(Delete {
                request_id: 15,
                destination: "/queue/old".into(),
            }),
            Frame::Ok(OkFrame { request_id: 14 }),
            Frame::Error(ErrorFrame {
                request_id: 0,
                code: ErrorCode::ShuttingDown,
                text: "server is shutting down".into(),
            }),
            Frame::Ping(Ping { token: 0xDEAD_BEEF }),
            Frame::Pong(Pong { token: 0xDEAD_BEEF }),
            Frame::NotActive(NotActive {
                active: "10.0.0.2:1956".into(),
            }),
        ]
    }

    #[test]
    fn every_frame_type_round_trips() {
        let frames = one_of_each();
        let names: std::collections::BTreeSet<_> = frames.iter().map(Frame::name).collect();
        assert_eq!(names.len(), 16, "one frame of each of the 16 types");
        for frame in frames {
            let bytes = encoded(&frame);
            let (decoded, consumed) = decode_default(&bytes)
                .unwrap_or_else(|e| panic!("{}: {e}", frame.name()))
                .expect("whole frame");
            assert_eq!(decoded, frame);
            assert_eq!(consumed, bytes.len(), "{}", frame.name());
        }
    }

    #[test]
    fn encoding_is_the_documented_layout() {
        let bytes = encoded(&Frame::Subscribe(Subscribe {
            request_id: 1,
            subscription_id: 2,
            destination: "/queue/q".into(),
            durable_name: None,
            prefetch: 3,
        }));
        let mut expected = vec![28, 0, 0, 0, 5];
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&raw_str(b"/queue/q"));
        expected.push(0);
        expected.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn frames_back_to_back_decode_one_at_a_time() {
        let frames = one_of_each();
        let mut stream = Vec::new();
        for frame in &frames {
            frame.encode(&mut stream).expect("encodable");
        }
        let mut at = 0;
        let mut decoded = Vec::new();
        while let Some((frame, consumed)) = decode_default(&stream[at..]).expect("valid stream") {
            decoded.push(frame);
            at += consumed;
        }
        assert_eq!(at, stream.len());
        assert_eq!(decoded, frames);
    }

    #[test]
    fn unknown_error_codes_survive_a_round_trip() {
        let frame = Frame::Error(ErrorFrame {
            request_id: 3,
            code: ErrorCode::from_u16(4242),
            text: String::new(),
        });
        let (decoded, _) = decode_default(&encoded(&frame)).unwrap().unwrap();
        assert_eq!(decoded, frame);
    }

    #[test]
    fn oversized_length_is_rejected_from_the_first_four_bytes() {
        let limits = Limits::default();
        let prefix = (limits.frame_bytes_max + 1).to_le_bytes();
        assert_eq!(decode(&prefix[..3], &limits), Ok(None));
        let error = decode(&prefix, &limits).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::FrameTooLarge {
                len: u64::from(limits.frame_bytes_max) + 1,
                max: u64::from(limits.frame_bytes_max),
            }
        );
        assert_eq!(error.code(), ErrorCode::FrameTooLarge);
        // An HTTP request on the client port: "GET " read as a length.
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\n", &limits).unwrap_err().code(),
            ErrorCode::FrameTooLarge
        );
        // A frame exactly at the limit is only waited for.
        let at_limit = limits.frame_bytes_max.to_le_bytes();
        assert_eq!(decode(&at_limit, &limits), Ok(None));
    }

    #[test]
    fn zero_length_is_rejected_at_once() {
        let error = decode_default(&[0, 0, 0, 0]).unwrap_err();
        assert_eq!(error, ProtocolError::EmptyFrame);
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn unknown_frame_type_is_rejected() {
        let error = decode_default(&raw(200, &[])).unwrap_err();
        assert_eq!(error, ProtocolError::UnknownFrameType(200));
        assert_eq!(error.code(), ErrorCode::UnknownFrameType);
        assert_eq!(error.to_string(), "unknown frame type 200");
        assert_eq!(
            decode_default(&raw(0, &[])).unwrap_err(),
            ProtocolError::UnknownFrameType(0)
        );
    }

    #[test]
    fn bool_other_than_zero_or_one_is_malformed() {
        let mut bytes = encoded(&Frame::SendAck(SendAck {
            producer_id: 1,
            sequence: 2,
            epoch: 3,
            message_id: 4,
            duplicate: false,
        }));
        *bytes.last_mut().unwrap() = 2;
        let error = decode_default(&bytes).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SEND_ACK: field duplicate: 2 is neither 0 nor 1"
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn presence_flag_other_than_zero_or_one_is_malformed() {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&raw_str(b"/topic/t"));
        body.push(7);
        body.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(
            decode_default(&raw(5, &body)).unwrap_err(),
            ProtocolError::BadBool {
                frame: "SUBSCRIBE",
                field: "durable_name",
                value: 7
            }
        );
    }

    /// A SEND body up to (not including) its header count.
    fn send_body_before_headers(ack_mode: u8) -> Vec<u8> {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&2u64.to_le_bytes());
        body.extend_from_slice(&raw_str(b"/queue/q"));
        body.push(1);
        body.extend_from_slice(&0u64.to_le_bytes());
        body.push(ack_mode);
        body
    }

    #[test]
    fn unknown_ack_mode_is_malformed() {
        let mut body = send_body_before_headers(3);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode_default(&raw(3, &body)).unwrap_err().to_string(),
            "SEND: field ack_mode: unknown ack mode 3"
        );
    }

    #[test]
    fn too_many_headers_are_refused_before_reading_them() {
        // Only the count is there: the limit must trip before the decoder
        // tries to read (or allocate for) 70 headers.
        let mut body = send_body_before_headers(0);
        body.extend_from_slice(&70u16.to_le_bytes());
        let error = decode_default(&raw(3, &body)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SEND: field headers: 70 headers exceed the limit of 64"
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);

        // The receiver's own limit applies, and the sender's default one.
        let five = Frame::Deliver(Deliver {
            subscription_id: 1,
            message_id: 2,
            delivery_count: 1,
            destination: "/queue/q".into(),
            persistent: true,
            headers: headers(5),
            body: Bytes::new(),
        });
        let strict = Limits {
            headers_max: 4,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&encoded(&five), &strict),
            Err(ProtocolError::TooManyHeaders {
                count: 5,
                max: 4,
                ..
            })
        ));
        let Frame::Deliver(mut deliver) = five else {
            unreachable!()
        };
        deliver.headers = headers(65);
        let mut out = vec![1, 2, 3];
        assert_eq!(
            Frame::Deliver(deliver).encode(&mut out),
            Err(ProtocolError::TooManyHeaders {
                frame: "DELIVER",
                count: 65,
                max: 64
            })
        );
        assert_eq!(
            out,
            vec![1, 2, 3],
            "a refused frame leaves the buffer as it was"
        );
    }

    #[test]
    fn string_too_long_is_refused_both_ways() {
        let limit = usize::from(PROTOCOL_STRING_BYTES_MAX);
        let create = |len: usize| {
            Frame::Create(Create {
                request_id: 1,
                destination: "x".repeat(len),
            })
        };
        let at_limit = encoded(&create(limit));
        assert_eq!(decode_default(&at_limit).unwrap().unwrap().0, create(limit));

        let mut out = Vec::new();
        assert_eq!(
            create(limit + 1).encode(&mut out).unwrap_err().to_string(),
            "CREATE: field destination: string of 4097 bytes exceeds the limit of 4096"
        );
        assert!(out.is_empty());
        assert!(matches!(
            create(70_000).encode(&mut out),
            Err(ProtocolError::StringTooLong { len: 70_000, .. })
        ));

        let strict = Limits {
            string_bytes_max: 10,
            ..Limits::default()
        };
        let error = decode(&encoded(&create(11)), &strict).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::StringTooLong {
                frame: "CREATE",
                field: "destination",
                len: 11,
                max: 10
            }
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn bad_utf8_is_malformed() {
        let mut body = 1u64.to_le_bytes().to_vec();
        body.extend_from_slice(&raw_str(b"/queue/\xff\xfe"));
        let error = decode_default(&raw(10, &body)).unwrap_err();
        assert!(
            matches!(
                error,
                ProtocolError::BadUtf8 {
                    frame: "CREATE",
                    field: "destination",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    fn hello_body(magic: &[u8; 4], version: u16) -> Vec<u8> {
        let mut body = magic.to_vec();
        body.extend_from_slice(&version.to_le_bytes());
        body.extend_from_slice(&raw_str(b"client"));
        body.extend_from_slice(&raw_str(b"user"));
        body.extend_from_slice(&0u32.to_le_bytes());
        body
    }

    #[test]
    fn hello_with_bad_magic_is_not_our_protocol() {
        assert!(decode_default(&raw(1, &hello_body(b"TWMQ", 1))).is_ok());
        let error = decode_default(&raw(1, &hello_body(b"AMQP", 1))).unwrap_err();
        assert_eq!(error, ProtocolError::BadMagic { found: *b"AMQP" });
        assert_eq!(error.code(), ErrorCode::MalformedFrame);

        let mut out = Vec::new();
        let hello = Hello {
            magic: *b"AMQP",
            version: PROTOCOL_VERSION,
            client_id: String::new(),
            username: String::new(),
            password: Bytes::new(),
        };
        assert!(Frame::Hello(hello).encode(&mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn hello_from_a_newer_version_is_unsupported_not_malformed() {
        // Version 2 may lay HELLO out differently after the version field:
        // everything after it here is garbage, and must not matter.
        let mut body = b"TWMQ".to_vec();
        body.extend_from_slice(&2u16.to_le_bytes());
        body.extend_from_slice(&[0xFF; 9]);
        let error = decode_default(&raw(1, &body)).unwrap_err();
        assert_eq!(
            error,
            ProtocolError::UnsupportedVersion {
                frame: "HELLO",
                version: 2,
                supported: 1
            }
        );
        assert_eq!(error.code(), ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn trailing_bytes_inside_a_frame_are_malformed() {
        let mut body = 5u64.to_le_bytes().to_vec();
        body.push(0);
        assert_eq!(
            decode_default(&raw(14, &body)).unwrap_err(),
            ProtocolError::TrailingBytes {
                frame: "PING",
                extra: 1
            }
        );
    }

    #[test]
    fn body_length_past_the_end_of_the_frame_is_truncated_not_allocated() {
        let mut body = send_body_before_headers(0);
        body.extend_from_slice(&0u16.to_le_bytes());
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(b"abc");
        let error = decode_default(&raw(3, &body)).unwrap_err();
        assert_eq!(
            error.to_string(),
            "SEND: field body: needs 4294967295 bytes but the frame has 3 left"
        );
        assert_eq!(error.code(), ErrorCode::MalformedFrame);
    }

    // ---- Property tests ----

    fn text() -> impl Strategy<Value = String> {
        "\\PC{0,24}"
    }

    fn blob() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn header_list() -> impl Strategy<Value = Vec<Header>> {
        prop::collection::vec((text(), text()), 0..6)
    }

    fn ack_mode() -> impl Strategy<Value = AckMode> {
        prop_oneof![
            Just(AckMode::Default),
            Just(AckMode::Local),
            Just(AckMode::Replicated)
        ]
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (text(), text(), blob()).prop_map(|(client_id, username, password)| {
                Frame::Hello(Hello {
                    magic: MAGIC,
                    version: PROTOCOL_VERSION,
                    client_id,
                    username,
                    password,
                })
            }),
            (text(), any::<u64>(), any::<u32>()).prop_map(|(server_id, epoch, frame_bytes_max)| {
                Frame::Welcome(Welcome {
                    version: PROTOCOL_VERSION,
                    server_id,
                    epoch,
                    frame_bytes_max,
                })
            }),
            (
                any::<(u64, u64)>(),
                text(),
                any::<bool>(),
                any::<u64>(),
                ack_mode(),
                header_list(),
                blob()
            )
                .prop_map(
                    |(
                        (producer_id, sequence),
                        destination,
                        persistent,
                        ttl_ms,
                        ack_mode,
                        headers,
                        body,
                    )| {
                        Frame::Send(Send {
                            producer_id,
                            sequence,
                            destination,
                            persistent,
                            ttl_ms,
                            ack_mode,
                            headers,
                            body,
                        })
                    }
                ),
            any::<(u64, u64, u64, u64, bool)>().prop_map(
                |(producer_id, sequence, epoch, message_id, duplicate)| {
                    Frame::SendAck(SendAck {
                        producer_id,
                        sequence,
                        epoch,
                        message_id,
                        duplicate,
                    })
                }
            ),
            (any::<(u64, u32, u32)>(), text(), prop::option::of(text())).prop_map(
                |((request_id, subscription_id, prefetch), destination, durable_name)| {
                    Frame::Subscribe(Subscribe {
                        request_id,
                        subscription_id,
                        destination,
                        durable_name,
                        prefetch,
                    })
                }
            ),
            any::<(u64, u32, bool)>().prop_map(|(request_id, subscription_id, remove_durable)| {
                Frame::Unsubscribe(Unsubscribe {
                    request_id,
                    subscription_id,
                    remove_durable,
                })
            }),
            (
                any::<(u32, u64, u32, bool)>(),
                text(),
                header_list(),
                blob()
            )
                .prop_map(
                    |(
                        (subscription_id, message_id, delivery_count, persistent),
                        destination,
                        headers,
                        body,
                    )| {
                        Frame::Deliver(Deliver {
                            subscription_id,
                            message_id,
                            delivery_count,
                            destination,
                            persistent,
                            headers,
                            body,
                        })
                    }
                ),
            any::<(u32, u64, u64)>().prop_map(|(subscription_id, message_id, request_id)| {
                Frame::Ack(Ack {
                    subscription_id,
                    message_id,
                    request_id,
                })
            }),
            any::<(u32, u64)>().prop_map(|(subscription_id, message_id)| {
                Frame::Nack(Nack {
                    subscription_id,
                    message_id,
                })
            }),
            (any::<u64>(), text()).prop_map(|(request_id, destination)| {
                Frame::Create(Create {
                    request_id,
                    destination,
                })
            }),
            (any::<u64>(), text()).prop_map(|(request_id, destination)| {
                Frame::Delete(Delete {
                    request_id,
                    destination,
                })
            }),
            any::<u64>().prop_map(|request_id| Frame::Ok(OkFrame { request_id })),
            (any::<u64>(), any::<u16>(), text()).prop_map(|(request_id, code, text)| {
                Frame::Error(ErrorFrame {
                    request_id,
                    code: ErrorCode::from_u16(code),
                    text,
                })
            }),
            any::<u64>().prop_map(|token| Frame::Ping(Ping { token })),
            any::<u64>().prop_map(|token| Frame::Pong(Pong { token })),
            text().prop_map(|active| Frame::NotActive(NotActive { active })),
        ]
    }

    /// Limits no looser than the defaults, often much tighter, so the limit
    /// checks themselves get exercised.
    fn tight_limits() -> impl Strategy<Value = Limits> {
        (
            prop_oneof![1u32..64, 1..=PROTOCOL_FRAME_BYTES_MAX],
            prop_oneof![0u16..4, 0..=PROTOCOL_HEADERS_MAX],
            prop_oneof![0u16..16, 0..=PROTOCOL_STRING_BYTES_MAX],
        )
            .prop_map(|(frame_bytes_max, headers_max, string_bytes_max)| Limits {
                frame_bytes_max,
                headers_max,
                string_bytes_max,
            })
    }

    /// Checks the decoder's contract on any input: no panic, a consumed count
    /// inside the buffer, and a decoded frame that encodes back to exactly
    /// the bytes it came from (decoding is strict, so encoding is canonical).
    fn check_decoder_contract(buf: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
        if let Ok(Some((frame, consumed))) = decode(buf, limits) {
            prop_assert!(consumed > LEN_PREFIX_BYTES && consumed <= buf.len());
            let mut again = Vec::new();
            frame
                .encode(&mut again)
                .map_err(|e| TestCaseError::fail(format!("decoded frame does not encode: {e}")))?;
            prop_assert_eq!(&again[..], &buf[..consumed]);
        }
        Ok(())
    }

    /// What a connection does after each read: decode every whole frame at
    /// the front of its buffer and drop their bytes.
    fn drain_frames(buffer: &mut Vec<u8>) -> Result<Vec<Frame>, TestCaseError> {
        let mut frames = Vec::new();
        loop {
            match decode_default(buffer) {
                Ok(Some((frame, consumed))) => {
                    frames.push(frame);
                    buffer.drain(..consumed);
                }
                Ok(None) => return Ok(frames),
                Err(e) => return Err(TestCaseError::fail(format!("valid stream rejected: {e}"))),
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_frames_round_trip(frame in arb_frame(), tail in prop::collection::vec(any::<u8>(), 0..16)) {
            let mut bytes = encoded(&frame);
            let len = bytes.len();
            prop_assert_eq!(decode_default(&bytes), Ok(Some((frame.clone(), len))));
            // Frames are self-delimiting: whatever follows does not matter.
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(decode_default(&bytes), Ok(Some((frame, len))));
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(
            buf in prop::collection::vec(any::<u8>(), 0..512),
            limits in tight_limits(),
        ) {
            check_decoder_contract(&buf, &limits)?;
            check_decoder_contract(&buf, &Limits::default())?;
        }

        #[test]
        fn arbitrary_bodies_of_plausible_frames_never_panic_the_decoder(
            type_byte in 0u8..=17,
            body in prop::collection::vec(any::<u8>(), 0..128),
            limits in tight_limits(),
        ) {
            // Random bytes rarely carry a small length prefix; these do, so
            // the body parsers see the garbage.
            let buf = raw(type_byte, &body);
            check_decoder_contract(&buf, &limits)?;
            check_decoder_contract(&buf, &Limits::default())?;
        }

        #[test]
        fn corrupted_frames_never_panic_the_decoder(
            frame in arb_frame(),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let mut bytes = encoded(&frame);
            for (at, xor) in flips {
                let at = at.index(bytes.len());
                bytes[at] ^= xor;
            }
            check_decoder_contract(&bytes, &Limits::default())?;
        }

        #[test]
        fn a_frame_split_at_any_byte_decodes_only_when_complete(
            first in arb_frame(),
            second in arb_frame(),
        ) {
            let one = encoded(&first);
            for cut in 0..one.len() {
                prop_assert_eq!(decode_default(&one[..cut]), Ok(None), "cut at {}", cut);
            }
            // Two frames arriving in two reads, split anywhere: a receive
            // buffer yields both, in order, each once it is complete.
            let mut stream = one.clone();
            second.encode(&mut stream).expect("encodable");
            let both = vec![first.clone(), second.clone()];
            for cut in 0..=stream.len() {
                let mut buffer = stream[..cut].to_vec();
                let mut got = drain_frames(&mut buffer)?;
                let complete = if cut == stream.len() { 2 } else if cut >= one.len() { 1 } else { 0 };
                prop_assert_eq!(&got[..], &both[..complete], "after the first read, cut at {}", cut);
                buffer.extend_from_slice(&stream[cut..]);
                got.extend(drain_frames(&mut buffer)?);
                prop_assert!(buffer.is_empty());
                prop_assert_eq!(&got, &both);
            }
        }

        #[test]
        fn a_truncated_frame_with_a_shorter_length_is_malformed(frame in arb_frame()) {
            // A peer that cuts a frame short and fixes up the length prefix
            // must get "malformed", never a frame and never a panic.
            let bytes = encoded(&frame);
            let inner = &bytes[LEN_PREFIX_BYTES..];
            for cut in 0..inner.len() {
                let mut shorter = u32::try_from(cut).expect("small").to_le_bytes().to_vec();
                shorter.extend_from_slice(&inner[..cut]);
                let result = decode_default(&shorter);
                prop_assert!(
                    matches!(&result, Err(e) if e.code() == ErrorCode::MalformedFrame),
                    "{} cut to {} bytes: {:?}", frame.name(), cut, result
                );
            }
        }
    }
}
