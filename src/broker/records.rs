//! Journal payloads of the broker's records (the kinds in
//! `journal::RecordKind` from `Message` on). Everything that must survive a
//! restart or a failover is one of these; nothing else is persisted.
//!
//! Primitives: integers little-endian; `str` = u16 length + UTF-8; `bytes` =
//! u32 length + bytes; `headers` = u16 count + (str, str) pairs.

use super::MessageData;
use crate::ids::MessageId;
use crate::journal::RecordKind;
use crate::protocol::Destination;
use bytes::Bytes;
use std::sync::Arc;

/// A message stored on a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub destination: Destination,
    pub producer_id: u64,
    pub sequence: u64,
    /// Unix time in ms after which the message is dropped; 0 = never.
    pub expires_at_ms: u64,
    /// Headers and body, shared with the broker's copy (no clone to journal).
    pub data: Arc<MessageData>,
}

/// A record the broker writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerRecord {
    Message(MessageRecord),
    /// A message settled on a queue (`subscription: None`) or on a durable
    /// subscription of a topic.
    Settle {
        destination: Destination,
        subscription: Option<String>,
        message: MessageId,
    },
    DestinationCreate(Destination),
    DestinationDelete(Destination),
    SubscriptionCreate {
        topic: Destination,
        name: String,
    },
    SubscriptionDelete {
        topic: Destination,
        name: String,
    },
    /// A producer's highest sequence on this shard and when it last sent
    /// (Unix ms): duplicate detection for a producer whose message records
    /// are gone with their segments.
    ProducerCheckpoint {
        producer_id: u64,
        sequence: u64,
        last_seen_ms: u64,
    },
}

/// A broker record payload that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad {kind:?} record: {reason}")]
pub struct RecordError {
    pub kind: RecordKind,
    pub reason: String,
}

impl BrokerRecord {
    pub fn kind(&self) -> RecordKind {
        match self {
            BrokerRecord::Message(_) => RecordKind::Message,
            BrokerRecord::Settle { .. } => RecordKind::Settle,
            BrokerRecord::DestinationCreate(_) => RecordKind::DestinationCreate,
            BrokerRecord::DestinationDelete(_) => RecordKind::DestinationDelete,
            BrokerRecord::SubscriptionCreate { .. } => RecordKind::SubscriptionCreate,
            BrokerRecord::SubscriptionDelete { .. } => RecordKind::SubscriptionDelete,
            BrokerRecord::ProducerCheckpoint { .. } => RecordKind::ProducerCheckpoint,
        }
    }

    /// Appends the payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            BrokerRecord::Message(m) => {
                put_str(out, m.destination.as_str());
                out.extend_from_slice(&m.producer_id.to_le_bytes());
                out.extend_from_slice(&m.sequence.to_le_bytes());
                out.extend_from_slice(&m.expires_at_ms.to_le_bytes());
                out.extend_from_slice(&(m.data.headers.len() as u16).to_le_bytes());
                for (key, value) in &m.data.headers {
                    put_str(out, key);
                    put_str(out, value);
                }
                out.extend_from_slice(&(m.data.body.len() as u32).to_le_bytes());
                out.extend_from_slice(&m.data.body);
            }
            BrokerRecord::Settle {
                destination,
                subscription,
                message,
            } => {
                put_str(out, destination.as_str());
                put_str(out, subscription.as_deref().unwrap_or(""));
                out.extend_from_slice(&message.0.to_le_bytes());
            }
            BrokerRecord::DestinationCreate(d) | BrokerRecord::DestinationDelete(d) => {
                put_str(out, d.as_str());
            }
            BrokerRecord::SubscriptionCreate { topic, name }
            | BrokerRecord::SubscriptionDelete { topic, name } => {
                put_str(out, topic.as_str());
                put_str(out, name);
            }
            BrokerRecord::ProducerCheckpoint {
                producer_id,
                sequence,
                last_seen_ms,
            } => {
                for value in [producer_id, sequence, last_seen_ms] {
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
        }
    }

    /// Parses a payload of `kind`; `Ok(None)` for kinds that are not the
    /// broker's (epoch starts, padding, opaque).
    pub fn decode(kind: RecordKind, payload: &[u8]) -> Result<Option<BrokerRecord>, RecordError> {
        let mut r = Reader { buf: payload, kind };
        let record = match kind {
            RecordKind::Message => {
                let destination = r.destination()?;
                let producer_id = r.u64()?;
                let sequence = r.u64()?;
                let expires_at_ms = r.u64()?;
                let count = r.u16()?;
                let mut headers = Vec::with_capacity(usize::from(count).min(64));
                for _ in 0..count {
                    headers.push((r.str()?, r.str()?));
                }
                let len = r.u32()? as usize;
                let body = Bytes::copy_from_slice(r.take(len)?);
                BrokerRecord::Message(MessageRecord {
                    destination,
                    producer_id,
                    sequence,
                    expires_at_ms,
                    data: Arc::new(MessageData { headers, body }),
                })
            }
            RecordKind::Settle => {
                let destination = r.destination()?;
                let name = r.str()?;
                let message = MessageId(r.u64()?);
                BrokerRecord::Settle {
                    destination,
                    subscription: (!name.is_empty()).then_some(name),
                    message,
                }
            }
            RecordKind::DestinationCreate => BrokerRecord::DestinationCreate(r.destination()?),
            RecordKind::DestinationDelete => BrokerRecord::DestinationDelete(r.destination()?),
            RecordKind::SubscriptionCreate => BrokerRecord::SubscriptionCreate {
                topic: r.destination()?,
                name: r.str()?,
            },
            RecordKind::SubscriptionDelete => BrokerRecord::SubscriptionDelete {
                topic: r.destination()?,
                name: r.str()?,
            },
            RecordKind::ProducerCheckpoint => BrokerRecord::ProducerCheckpoint {
                producer_id: r.u64()?,
                sequence: r.u64()?,
                last_seen_ms: r.u64()?,
            },
            _ => return Ok(None),
        };
        if !r.buf.is_empty() {
            return Err(r.error(format!("{} trailing bytes", r.buf.len())));
        }
        Ok(Some(record))
    }
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).expect("broker strings are validated shorter than 64 KiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a> {
    buf: &'a [u8],
    kind: RecordKind,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: String) -> RecordError {
        RecordError {
            kind: self.kind,
            reason,
        }
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < len {
            return Err(self.error(format!("needs {len} more bytes, has {}", self.buf.len())));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn str_ref(&mut self) -> Result<&'a str, RecordError> {
        let len = usize::from(self.u16()?);
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| self.error("string is not UTF-8".into()))
    }

    fn str(&mut self) -> Result<String, RecordError> {
        self.str_ref().map(str::to_owned)
    }

    fn destination(&mut self) -> Result<Destination, RecordError> {
        let text = self.str_ref()?;
        text.parse().map_err(|e| self.error(format!("{e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_round_trips() {
        let queue: Destination = "/queue/a".parse().unwrap();
        let topic: Destination = "/topic/t".parse().unwrap();
        let records = [
            BrokerRecord::Message(MessageRecord {
                destination: queue.clone(),
                producer_id: 7,
                sequence: 9,
                expires_at_ms: 123,
                data: Arc::new(MessageData {
                    headers: vec![("k".into(), "v".into())],
                    body: Bytes::from_static(b"body"),
                }),
            }),
            BrokerRecord::Settle {
                destination: topic.clone(),
                subscription: Some("s".into()),
                message: MessageId(42),
            },
            BrokerRecord::Settle {
                destination: queue.clone(),
                subscription: None,
                message: MessageId(43),
            },
            BrokerRecord::ProducerCheckpoint {
                producer_id: u64::MAX,
                sequence: 1 << 40,
                last_seen_ms: 1_795_000_000_000,
            },
            BrokerRecord::DestinationCreate(queue.clone()),
            BrokerRecord::DestinationDelete(queue),
            BrokerRecord::SubscriptionCreate {
                topic: topic.clone(),
                name: "s".into(),
            },
            BrokerRecord::SubscriptionDelete {
                topic,
                name: "s".into(),
            },
        ];
        for record in records {
            let mut buf = Vec::new();
            record.encode(&mut buf);
            assert_eq!(
                BrokerRecord::decode(record.kind(), &buf),
                Ok(Some(record.clone()))
            );
            assert!(BrokerRecord::decode(record.kind(), &buf[..buf.len() - 1]).is_err());
        }
        assert_eq!(BrokerRecord::decode(RecordKind::EpochStart, b""), Ok(None));
    }
}
