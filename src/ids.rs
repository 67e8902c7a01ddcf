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
