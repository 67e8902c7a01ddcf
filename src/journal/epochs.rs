//! The epoch history of a log: which epoch the tail is in and where each
//! epoch started. Enforces that epochs only grow and that every epoch opens
//! with an epoch-start record, for appends, raw appends and recovery alike.

use super::record::{Header, RecordKind};
use crate::ids::{Epoch, Offset};

/// A record that breaks the epoch rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochViolation {
    /// The record's epoch is older than the log's.
    Regression { got: Epoch, current: Epoch },
    /// A newer epoch without an epoch-start record, or an epoch-start record
    /// that does not open a newer epoch.
    NotStarted { got: Epoch, current: Epoch },
}

impl std::fmt::Display for EpochViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpochViolation::Regression { got, current } => {
                write!(f, "epoch goes back from {current} to {got}")
            }
            EpochViolation::NotStarted { got, current } => write!(
                f,
                "epoch {got} is not opened by an epoch-start record after epoch {current}"
            ),
        }
    }
}

/// Epoch state of a log, rebuilt by recovery and kept current by appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochLog {
    current: Epoch,
    starts: Vec<(Epoch, Offset)>,
    /// Epoch and offset of the first record, once there is one.
    first: Option<(Epoch, Offset)>,
    /// The log's beginning was released, so its first record may belong to
    /// an epoch whose start record is gone.
    released_prefix: bool,
}

impl EpochLog {
    pub fn new(released_prefix: bool) -> EpochLog {
        EpochLog {
            current: Epoch::NONE,
            starts: Vec::new(),
            first: None,
            released_prefix,
        }
    }

    /// The epoch of the newest record (`Epoch::NONE` for an empty log).
    pub fn current(&self) -> Epoch {
        self.current
    }

    /// Every epoch start still in the log, oldest first.
    pub fn starts(&self) -> &[(Epoch, Offset)] {
        &self.starts
    }

    /// The epoch of the record at `offset` (at or after the first record):
    /// that of the last epoch start at or before it, else the first
    /// record's (`Epoch::NONE` for an empty log).
    pub fn epoch_at(&self, offset: Offset) -> Epoch {
        self.starts
            .iter()
            .rev()
            .find(|&&(_, at)| at <= offset)
            .map(|&(epoch, _)| epoch)
            .or(self.first.map(|(epoch, _)| epoch))
            .unwrap_or(Epoch::NONE)
    }

    /// Checks whether a record of `kind` in `epoch` may follow.
    pub fn check(&self, kind: RecordKind, epoch: Epoch) -> Result<(), EpochViolation> {
        let current = self.current;
        let not_started = Err(EpochViolation::NotStarted {
            got: epoch,
            current,
        });
        if self.first.is_none() && kind != RecordKind::Padding {
            return match kind {
                RecordKind::EpochStart if epoch > Epoch::NONE => Ok(()),
                _ if self.released_prefix && epoch > Epoch::NONE => Ok(()),
                _ => not_started,
            };
        }
        if epoch < current {
            return Err(EpochViolation::Regression {
                got: epoch,
                current,
            });
        }
        match kind {
            RecordKind::EpochStart if epoch > current => Ok(()),
            RecordKind::EpochStart => not_started,
            _ if epoch > current => not_started,
            _ => Ok(()),
        }
    }

    /// Records a checked record at `offset`.
    pub fn record(&mut self, kind: RecordKind, epoch: Epoch, offset: Offset) {
        if kind == RecordKind::Padding {
            return;
        }
        if self.first.is_none() {
            self.first = Some((epoch, offset));
        }
        if kind == RecordKind::EpochStart {
            self.starts.push((epoch, offset));
        }
        self.current = epoch;
    }

    /// `check` then `record` for a decoded header.
    pub fn accept(&mut self, header: &Header) -> Result<(), EpochViolation> {
        self.check(header.kind, header.epoch)?;
        self.record(header.kind, header.epoch, header.offset);
        Ok(())
    }

    /// Forgets every record at or after `to`.
    pub fn truncate(&mut self, to: Offset) {
        match self.first {
            Some((_, first)) if first < to => {
                self.starts.retain(|&(_, start)| start < to);
                self.current = match self.starts.last() {
                    Some(&(epoch, _)) => epoch,
                    None => self.first.expect("first record").0,
                };
            }
            _ => *self = EpochLog::new(self.released_prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RecordKind::*;

    fn log_with(records: &[(RecordKind, u64, u64)]) -> EpochLog {
        let mut log = EpochLog::new(false);
        for &(kind, epoch, offset) in records {
            log.check(kind, Epoch(epoch)).unwrap();
            log.record(kind, Epoch(epoch), Offset(offset));
        }
        log
    }

    #[test]
    fn fresh_log_must_open_with_an_epoch_start() {
        let log = EpochLog::new(false);
        assert!(log.check(Opaque, Epoch(1)).is_err());
        assert!(log.check(EpochStart, Epoch::NONE).is_err());
        assert!(log.check(EpochStart, Epoch(1)).is_ok());
        assert!(EpochLog::new(true).check(Opaque, Epoch(4)).is_ok());
    }

    #[test]
    fn epochs_only_grow_and_open_with_a_start_record() {
        let log = log_with(&[(EpochStart, 2, 0), (Opaque, 2, 40)]);
        assert_eq!(log.current(), Epoch(2));
        assert!(log.check(Opaque, Epoch(2)).is_ok());
        assert!(log.check(Padding, Epoch(2)).is_ok());
        assert_eq!(
            log.check(Opaque, Epoch(1)),
            Err(EpochViolation::Regression {
                got: Epoch(1),
                current: Epoch(2)
            })
        );
        assert!(log.check(Opaque, Epoch(3)).is_err());
        assert!(log.check(EpochStart, Epoch(2)).is_err());
        assert!(log.check(EpochStart, Epoch(5)).is_ok());
    }

    #[test]
    fn truncate_rewinds_to_the_epoch_in_force() {
        let mut log = log_with(&[(EpochStart, 1, 0), (Opaque, 1, 32), (EpochStart, 3, 100)]);
        log.truncate(Offset(100));
        assert_eq!(log.current(), Epoch(1));
        assert_eq!(log.starts(), &[(Epoch(1), Offset(0))]);
        log.truncate(Offset(0));
        assert_eq!(log, EpochLog::new(false));
    }
}
