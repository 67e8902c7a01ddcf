//! Newtypes for positions and identities shared by every layer.

use std::fmt;
use std::ops::{Add, Sub};

/// A byte position in a shard's logical log. Two journals that hold the same
/// records hold them at the same offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    pub fn get(self) -> u64 {
        self.0
    }
}

impl Add<u64> for Offset {
    type Output = Offset;
    fn add(self, bytes: u64) -> Offset {
        Offset(self.0.checked_add(bytes).expect("offset overflow"))
    }
}

impl Sub<Offset> for Offset {
    type Output = u64;
    fn sub(self, earlier: Offset) -> u64 {
        self.0.checked_sub(earlier.0).expect("offset underflow")
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The activation sequence: grows every time any server becomes active, and
/// never goes back. Epoch 0 means "no epoch started yet".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl Epoch {
    pub const NONE: Epoch = Epoch(0);

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Index of a shard thread within a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(pub u16);

/// A client connection, unique within the server: the shard that owns its
/// socket and a per-shard sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId {
    pub shard: ShardId,
    pub seq: u64,
}

/// A message, unique within a server's history: the owning shard in the top
/// byte; below it the journal offset of a persistent message's record, or a
/// counter with bit 55 set for a non-persistent one. Recovery recomputes the
/// same ids from the same offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl MessageId {
    const VOLATILE: u64 = 1 << 55;

    pub fn persistent(shard: ShardId, offset: Offset) -> MessageId {
        assert!(
            offset.get() < Self::VOLATILE,
            "offset beyond message id space"
        );
        MessageId(u64::from(shard.0) << 56 | offset.get())
    }

    pub fn volatile(shard: ShardId, counter: u64) -> MessageId {
        MessageId(u64::from(shard.0) << 56 | Self::VOLATILE | (counter & (Self::VOLATILE - 1)))
    }

    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> 56) as u16)
    }

    /// The journal offset of a persistent message's record.
    pub fn offset(self) -> Option<Offset> {
        (self.0 & Self::VOLATILE == 0).then_some(Offset(self.0 & (Self::VOLATILE - 1)))
    }
}
