//! The replication stream's wire format: binary frames on one TCP
//! connection per shard, opened by the passive on the active's HA port after
//! the HA handshake (`ha::link`).
//!
//! ```text
//!  0    2  3  4        8                16               24       28       32
//!  +----+--+--+--------+----------------+----------------+--------+--------+---------
//!  |"TR"|v |k | len    | offset         | value          | hcrc   | pcrc   | payload
//!  +----+--+--+--------+----------------+----------------+--------+--------+---------
//! ```
//! All integers little-endian. `hcrc` is CRC32C of bytes 0..24, checked
//! before the length is trusted; `pcrc` is CRC32C of the payload for every
//! kind but `Data` (0 there). A `Data` payload is journal records, each with
//! its own CRC that the passive checks before accepting a byte, so the bulk
//! bytes are checksummed once, not twice.
//!
//! | kind | dir | offset | value | payload |
//! |------|-----|--------|-------|---------|
//! | 1 Hello  | passive → active | its end | epoch of its first retained record | history: start u64, n u32, n × (epoch u64, offset u64) |
//! | 2 Sync   | active → passive | stream from | truncate to | — |
//! | 3 Data   | active → passive | first byte's offset | active's epoch | whole records |
//! | 4 Ack    | passive → active | durable offset | its epoch | — |
//! | 5 Refuse | active → passive | — | — | reason, UTF-8 |
//! | 6 Restart | active → passive | stream from (the active's start) | where the histories part | — |
//!
//! `Restart` is the full copy: the passive is too far behind to stream (the
//! active released what it lacks), so it starts its journal again, empty,
//! where the active's begins.
//!
//! A frame that fails any check (magic, version, kind, length limit, CRC)
//! ends the stream: the passive reconnects and synchronises again, so a bad
//! frame costs a reconnect, never a wrong byte.

use super::History;
use crate::ids::{Epoch, Offset};

/// Size of a frame header.
pub const HEADER_BYTES: usize = 32;
/// "TR".
const MAGIC: [u8; 2] = *b"TR";
/// Version of this frame layout (2: `Hello` names the epoch of the
/// passive's first retained record).
const VERSION: u8 = 2;
/// Most epoch starts a hello may carry: far more than a journal ever
/// retains (one per activation), small enough to bound the allocation.
pub const HELLO_EPOCHS_MAX: usize = 65_536;
/// Longest refusal reason.
pub const REFUSE_BYTES_MAX: usize = 4096;

/// Frame kinds (values are part of the wire format).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Sync = 2,
    Data = 3,
    Ack = 4,
    Refuse = 5,
    Restart = 6,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        Some(match value {
            1 => Kind::Hello,
            2 => Kind::Sync,
            3 => Kind::Data,
            4 => Kind::Ack,
            5 => Kind::Refuse,
            6 => Kind::Restart,
            _ => return None,
        })
    }
}

/// A decoded frame; `Data` borrows its records from the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(History),
    Sync {
        truncate_to: Offset,
        stream_from: Offset,
    },
    Data {
        offset: Offset,
        epoch: Epoch,
        records: &'a [u8],
    },
    Ack {
        durable: Offset,
        epoch: Epoch,
    },
    Refuse(String),
    Restart {
        stream_from: Offset,
        diverged_at: Offset,
    },
}

/// Why bytes on a replication stream are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("bad magic or version")]
    BadMagic,
    #[error("unknown frame kind {0}")]
    BadKind(u8),
    #[error("{kind:?} frame of {len} bytes exceeds {max}")]
    TooLong { kind: Kind, len: usize, max: usize },
    #[error("{0:?} frame checksum mismatch")]
    BadChecksum(Kind),
    #[error("malformed {0:?} frame")]
    Malformed(Kind),
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// A header for a frame of `kind` whose payload is `payload_len` bytes;
/// `checked` is the payload covered by the CRC (empty for `Data`).
pub fn header(
    kind: Kind,
    payload_len: usize,
    offset: u64,
    value: u64,
    checked: &[u8],
) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = VERSION;
    h[3] = kind as u8;
    h[4..8].copy_from_slice(
        &u32::try_from(payload_len)
            .expect("frame fits")
            .to_le_bytes(),
    );
    h[8..16].copy_from_slice(&offset.to_le_bytes());
    h[16..24].copy_from_slice(&value.to_le_bytes());
    let header_crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&header_crc.to_le_bytes());
    let payload_crc = if kind == Kind::Data {
        0
    } else {
        crc32c::crc32c(checked)
    };
    h[28..32].copy_from_slice(&payload_crc.to_le_bytes());
    h
}

/// The header of a `Data` frame carrying `len` bytes of records at `offset`.
pub fn data_header(offset: Offset, epoch: Epoch, len: usize) -> [u8; HEADER_BYTES] {
    header(Kind::Data, len, offset.get(), epoch.get(), &[])
}

/// Encodes a control frame (anything but `Data`) whole.
pub fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let (kind, offset, value, payload) = match frame {
        Frame::Hello(history) => {
            let mut p = Vec::with_capacity(12 + 16 * history.epochs.len());
            p.extend_from_slice(&history.start.get().to_le_bytes());
            p.extend_from_slice(&(history.epochs.len() as u32).to_le_bytes());
            for (epoch, offset) in &history.epochs {
                p.extend_from_slice(&epoch.get().to_le_bytes());
                p.extend_from_slice(&offset.get().to_le_bytes());
            }
            (Kind::Hello, history.end.get(), history.first.get(), p)
        }
        Frame::Sync {
            truncate_to,
            stream_from,
        } => (Kind::Sync, stream_from.get(), truncate_to.get(), Vec::new()),
        Frame::Ack { durable, epoch } => (Kind::Ack, durable.get(), epoch.get(), Vec::new()),
        Frame::Restart {
            stream_from,
            diverged_at,
        } => (
            Kind::Restart,
            stream_from.get(),
            diverged_at.get(),
            Vec::new(),
        ),
        Frame::Refuse(reason) => {
            let mut cut = reason.len().min(REFUSE_BYTES_MAX);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            (Kind::Refuse, 0, 0, reason.as_bytes()[..cut].to_vec())
        }
        Frame::Data { .. } => panic!("data frames are sent from the journal's buffer"),
    };
    let mut out = header(kind, payload.len(), offset, value, &payload).to_vec();
    out.extend_from_slice(&payload);
    out
}

/// Decodes the frame at the start of `buf`: `Ok(None)` until it is whole,
/// then the frame and the bytes it took. `data_max` bounds a `Data` payload.
pub fn decode(buf: &[u8], data_max: usize) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    if buf[0..2] != MAGIC || buf[2] != VERSION {
        return Err(WireError::BadMagic);
    }
    // The header is checked first, so a corrupt length is never trusted
    // to wait for that many bytes.
    if crc32c::crc32c(&buf[..24]) != u32_at(buf, 24) {
        return Err(WireError::BadChecksum(
            Kind::from_u8(buf[3]).ok_or(WireError::BadKind(buf[3]))?,
        ));
    }
    let kind = Kind::from_u8(buf[3]).ok_or(WireError::BadKind(buf[3]))?;
    let len = u32_at(buf, 4) as usize;
    let max = match kind {
        Kind::Hello => 12 + 16 * HELLO_EPOCHS_MAX,
        Kind::Data => data_max,
        Kind::Refuse => REFUSE_BYTES_MAX,
        Kind::Sync | Kind::Ack | Kind::Restart => 0,
    };
    if len > max {
        return Err(WireError::TooLong { kind, len, max });
    }
    if buf.len() < HEADER_BYTES + len {
        return Ok(None);
    }
    let payload = &buf[HEADER_BYTES..HEADER_BYTES + len];
    let payload_crc = if kind == Kind::Data {
        0
    } else {
        crc32c::crc32c(payload)
    };
    if payload_crc != u32_at(buf, 28) {
        return Err(WireError::BadChecksum(kind));
    }
    let (offset, value) = (u64_at(buf, 8), u64_at(buf, 16));
    let frame = match kind {
        Kind::Hello => {
            if len < 12 {
                return Err(WireError::Malformed(kind));
            }
            let n = u32_at(payload, 8) as usize;
            if len != 12 + 16 * n {
                return Err(WireError::Malformed(kind));
            }
            let epochs = (0..n)
                .map(|i| {
                    let at = 12 + 16 * i;
                    (Epoch(u64_at(payload, at)), Offset(u64_at(payload, at + 8)))
                })
                .collect();
            Frame::Hello(History {
                start: Offset(u64_at(payload, 0)),
                end: Offset(offset),
                epochs,
                first: Epoch(value),
            })
        }
        Kind::Sync => Frame::Sync {
            truncate_to: Offset(value),
            stream_from: Offset(offset),
        },
        Kind::Data => Frame::Data {
            offset: Offset(offset),
            epoch: Epoch(value),
            records: payload,
        },
        Kind::Ack => Frame::Ack {
            durable: Offset(offset),
            epoch: Epoch(value),
        },
        Kind::Refuse => Frame::Refuse(String::from_utf8_lossy(payload).into_owned()),
        Kind::Restart => Frame::Restart {
            stream_from: Offset(offset),
            diverged_at: Offset(value),
        },
    };
    Ok(Some((frame, HEADER_BYTES + len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        History {
            start: Offset(4096),
            end: Offset(90_000),
            epochs: vec![(Epoch(2), Offset(4096)), (Epoch(5), Offset(60_000))],
            first: Epoch(2),
        }
    }

    #[test]
    fn control_frames_round_trip_and_wait_until_whole() {
        let frames = [
            Frame::Hello(history()),
            Frame::Sync {
                truncate_to: Offset(7),
                stream_from: Offset(9),
            },
            Frame::Ack {
                durable: Offset(123),
                epoch: Epoch(4),
            },
            Frame::Refuse("too far behind".into()),
            Frame::Restart {
                stream_from: Offset(1 << 26),
                diverged_at: Offset(4096),
            },
        ];
        for frame in frames {
            let bytes = encode(&frame);
            for cut in 0..bytes.len() {
                assert_eq!(decode(&bytes[..cut], 0), Ok(None), "{frame:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(b"next");
            assert_eq!(decode(&longer, 0), Ok(Some((frame, bytes.len()))));
        }
    }

    #[test]
    fn data_frames_borrow_their_records() {
        let records = vec![7u8; 100];
        let mut bytes = data_header(Offset(64), Epoch(3), records.len()).to_vec();
        bytes.extend_from_slice(&records);
        let (frame, used) = decode(&bytes, 100).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(
            frame,
            Frame::Data {
                offset: Offset(64),
                epoch: Epoch(3),
                records: &records
            }
        );
        assert_eq!(
            decode(&bytes, 99),
            Err(WireError::TooLong {
                kind: Kind::Data,
                len: 100,
                max: 99
            })
        );
    }

    #[test]
    fn any_flipped_header_or_control_payload_bit_is_refused() {
        let bytes = encode(&Frame::Hello(history()));
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad, 0).is_err(), "bit {bit} not refused");
        }
        for bit in 0..HEADER_BYTES * 8 {
            let mut data = data_header(Offset(0), Epoch(1), 0).to_vec();
            data[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&data, 0).is_err(),
                "data header bit {bit} not refused"
            );
        }
    }
}
