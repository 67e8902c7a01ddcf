//! Why bytes are not a frame, or a frame cannot be put into bytes.
//!
//! Every decode error is the peer's fault and ends the connection: the
//! server answers with an ERROR frame carrying `ProtocolError::code()` and
//! the error's text, then closes. Messages name the frame and the field, so
//! the person reading the client's log can find the bug.

use std::str::Utf8Error;

use super::frame::ErrorCode;

/// Everything encoding or decoding a frame can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The length prefix exceeds the receiver's `frame_bytes_max`; rejected
    /// from the prefix alone, before the frame is buffered.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u64 },
    /// The length prefix is zero; every frame holds at least its type byte.
    #[error("frame length is 0; a frame holds at least its type byte")]
    EmptyFrame,
    /// The type byte names no frame this codec knows.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// A field runs past the end of the frame its length prefix declared.
    #[error("{frame}: field {field}: needs {needed} bytes but the frame has {left} left")]
    Truncated {
        frame: &'static str,
        field: &'static str,
        needed: u64,
        left: usize,
    },
    /// Bytes remain in the frame after its last field.
    #[error("{frame}: {extra} bytes after the last field")]
    TrailingBytes { frame: &'static str, extra: usize },
    /// A bool or presence flag other than 0 or 1.
    #[error("{frame}: field {field}: {value} is neither 0 nor 1")]
    BadBool {
        frame: &'static str,
        field: &'static str,
        value: u8,
    },
    /// An ack mode other than 0 (default), 1 (local) or 2 (replicated).
    #[error("{frame}: field {field}: unknown ack mode {value}")]
    BadAckMode {
        frame: &'static str,
        field: &'static str,
        value: u8,
    },
    /// A string field that is not UTF-8.
    #[error("{frame}: field {field}: not valid UTF-8: {source}")]
    BadUtf8 {
        frame: &'static str,
        field: &'static str,
        #[source]
        source: Utf8Error,
    },
    /// A string field longer than `string_bytes_max`.
    #[error("{frame}: field {field}: string of {len} bytes exceeds the limit of {max}")]
    StringTooLong {
        frame: &'static str,
        field: &'static str,
        len: usize,
        max: u16,
    },
    /// More headers than `headers_max`.
    #[error("{frame}: field headers: {count} headers exceed the limit of {max}")]
    TooManyHeaders {
        frame: &'static str,
        count: usize,
        max: u16,
    },
    /// A HELLO that does not start with `MAGIC`: not a twinmq client.
    #[error("HELLO: field magic: {found:?} is not \"TWMQ\" (is this a twinmq client?)")]
    BadMagic { found: [u8; 4] },
    /// A protocol version other than `PROTOCOL_VERSION`.
    #[error(
        "{frame}: field version: protocol version {version} is not supported \
         (this side speaks version {supported})"
    )]
    UnsupportedVersion {
        frame: &'static str,
        version: u16,
        supported: u16,
    },
    /// Encoding only: a length that does not fit its wire field.
    #[error("{frame}: field {field}: {len} bytes do not fit the wire format's limit of {max}")]
    TooLongToEncode {
        frame: &'static str,
        field: &'static str,
        len: usize,
        max: u64,
    },
}

impl ProtocolError {
    /// The code to put in the ERROR frame that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::FrameTooLarge { .. } | ProtocolError::TooLongToEncode { .. } => {
                ErrorCode::FrameTooLarge
            }
            ProtocolError::UnknownFrameType(_) => ErrorCode::UnknownFrameType,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            ProtocolError::EmptyFrame
            | ProtocolError::Truncated { .. }
            | ProtocolError::TrailingBytes { .. }
            | ProtocolError::BadBool { .. }
            | ProtocolError::BadAckMode { .. }
            | ProtocolError::BadUtf8 { .. }
            | ProtocolError::StringTooLong { .. }
            | ProtocolError::TooManyHeaders { .. }
            | ProtocolError::BadMagic { .. } => ErrorCode::MalformedFrame,
        }
    }
}
