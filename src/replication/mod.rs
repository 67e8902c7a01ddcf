//! Replication between the shards of a pair (issue 5 builds the streams on
//! top of this). So far: the catch-up rule — where a passive's history stops
//! agreeing with the active's — as a pure function.
//!
//! Both journals are byte-identical wherever they agree, and every epoch
//! opens with an epoch-start record at a known offset. Two histories agree up
//! to the first epoch that is not the same epoch starting at the same offset
//! in both; from there on the passive's bytes are not the active's. The
//! passive truncates to that point and the active streams from it.
//!
//! What it must never do: keep a passive byte the active does not have at
//! the same offset, or stream from before the active's retained log.

use crate::ids::{Epoch, Offset};

/// What a journal says of its own history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// First retained offset (earlier segments were released).
    pub start: Offset,
    /// Offset just past the last durable record.
    pub end: Offset,
    /// Epoch starts still in the log, oldest first.
    pub epochs: Vec<(Epoch, Offset)>,
}

/// How a passive catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Catchup {
    /// The passive cuts its journal here (a no-op when equal to its end).
    pub truncate_to: Offset,
    /// The active streams its journal from here to its end.
    pub stream_from: Offset,
}

/// Why a passive cannot catch up by streaming.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatchupError {
    /// The point where the histories part lies before the active's retained
    /// log: the passive needs a full copy.
    #[error(
        "the passive diverges at offset {at}, before the active's retained log starting at {start}: a full resynchronisation is needed"
    )]
    TooFarBehind { at: u64, start: u64 },
    /// The passive holds a newer epoch than the active: roles are wrong.
    #[error(
        "the passive's epoch {passive} is newer than the active's {active}: it should lead, not follow"
    )]
    PassiveAhead { passive: u64, active: u64 },
}

/// Where `passive`'s history stops agreeing with `active`'s.
pub fn catchup(active: &History, passive: &History) -> Result<Catchup, CatchupError> {
    let newest = |h: &History| h.epochs.last().map_or(Epoch::NONE, |&(e, _)| e);
    if newest(passive) > newest(active) {
        return Err(CatchupError::PassiveAhead {
            passive: newest(passive).get(),
            active: newest(active).get(),
        });
    }
    // Both lists may have lost old epochs to released segments: compare
    // from the first epoch that both still record.
    let first_common = active
        .epochs
        .iter()
        .find(|(e, _)| passive.epochs.iter().any(|(p, _)| p == e));
    let mut point = active.end.min(passive.end);
    match first_common {
        Some(&(epoch, _)) => {
            let a = active.epochs.iter().skip_while(|(e, _)| *e != epoch);
            let mut p = passive.epochs.iter().skip_while(|(e, _)| *e != epoch);
            for &(a_epoch, a_start) in a {
                match p.next() {
                    Some(&(p_epoch, p_start)) if (p_epoch, p_start) == (a_epoch, a_start) => {
                        continue;
                    }
                    // The same epoch at another offset, or another epoch:
                    // the histories part at the earlier of the two starts.
                    Some(&(_, p_start)) => point = point.min(a_start).min(p_start),
                    // The passive never saw this epoch: it lacks everything from its start.
                    None => point = point.min(a_start),
                }
                break;
            }
            // An epoch only the passive has (it led while the active did not).
            if let Some(&(_, p_start)) = p.next() {
                point = point.min(p_start);
            }
        }
        // No epoch both still record: nothing proves any byte agrees, so
        // they part at the very beginning (a full copy unless the active
        // still holds its log from there).
        None => point = Offset::ZERO,
    }
    if point < active.start {
        return Err(CatchupError::TooFarBehind {
            at: point.get(),
            start: active.start.get(),
        });
    }
    Ok(Catchup {
        truncate_to: point.min(passive.end),
        stream_from: point,
    })
}

pub mod wire;

#[cfg(test)]
mod tests;
