//! Replication between the shards of a pair: the catch-up rule — where a
//! passive's history stops agreeing with the active's — as a pure function
//! (`catchup`), and the stream's wire format (`wire`; the streams
//! themselves run in `shard::replica`).
//!
//! One server writes each epoch (the lock file hands each out once), and
//! every copy of an epoch is a prefix of that server's. So where two logs
//! hold bytes of the same epoch at the same offset, they hold the same
//! bytes; the rule cuts each log into runs of one epoch and finds the first
//! offset where the runs differ. The passive truncates there and the active
//! streams from it; a point before the active's retained log means a full
//! copy.
//!
//! What it must never do: keep a passive byte the active does not have at
//! the same offset (nor call one the active's when a full copy decides
//! what to set aside), or stream from before the active's retained log.

use crate::ids::{Epoch, Offset};

/// What a journal says of its own history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// First retained offset (earlier segments were released).
    pub start: Offset,
    /// Offset just past the last durable record.
    pub end: Offset,
    /// Epoch starts known to the journal, oldest first (some may lie
    /// below `start`, released since they were read).
    pub epochs: Vec<(Epoch, Offset)>,
    /// The epoch of the bytes at `start` (`Epoch::NONE` for an empty log):
    /// what the log says of its first retained bytes once the start record
    /// of their epoch is released.
    pub first: Epoch,
}

impl History {
    /// The newest epoch in the log.
    fn newest(&self) -> Epoch {
        self.epochs.last().map_or(self.first, |&(e, _)| e)
    }

    /// Where the log can say which epoch wrote each byte: its start, or
    /// further back where it still knows released epoch starts.
    fn known_from(&self) -> Offset {
        self.epochs
            .first()
            .map_or(self.start, |&(_, at)| at.min(self.start))
    }

    /// Which epoch wrote the bytes from `known_from()` to `end`, as runs of
    /// one epoch each.
    fn runs(&self) -> Vec<Run> {
        let mut runs = Vec::new();
        if self.end <= self.start {
            return runs;
        }
        if self.epochs.first().is_none_or(|&(_, at)| at > self.start) {
            let to = self
                .epochs
                .first()
                .map_or(self.end, |&(_, at)| at.min(self.end));
            runs.push(Run {
                epoch: self.first,
                began: None,
                from: self.start,
                to,
            });
        }
        for (i, &(epoch, began)) in self.epochs.iter().enumerate() {
            let to = self
                .epochs
                .get(i + 1)
                .map_or(self.end, |&(_, next)| next.min(self.end));
            runs.push(Run {
                epoch,
                began: Some(began),
                from: began,
                to,
            });
        }
        runs
    }
}

/// Bytes of one epoch in a log.
#[derive(Debug, Clone, Copy)]
struct Run {
    epoch: Epoch,
    began: Option<Offset>,
    from: Offset,
    to: Offset,
}

impl Run {
    /// Whether two logs' bytes in these runs are the same bytes. One server
    /// writes an epoch (the lock file hands each out once), and every copy
    /// of it is a prefix of that server's, so the same epoch means the same
    /// bytes — unless both logs say where it began and they disagree.
    fn same_as(&self, other: &Run) -> bool {
        self.epoch == other.epoch
            && match (self.began, other.began) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

fn run_at(runs: &[Run], x: Offset) -> Option<&Run> {
    runs.iter().find(|r| r.from <= x && x < r.to)
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
    /// log: the passive needs a full copy. Every passive byte below `at` is
    /// the active's (so `at` at or past the passive's end means the passive
    /// holds nothing of its own).
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
///
/// Both logs are cut into runs of one epoch; where both hold bytes, they
/// agree up to the first offset whose runs differ. Bytes the passive holds
/// below the active's start cannot be compared: they are trusted only when
/// the passive's run there continues into the active's first bytes (the
/// same epoch), else they part at the passive's start.
pub fn catchup(active: &History, passive: &History) -> Result<Catchup, CatchupError> {
    if passive.newest() > active.newest() {
        return Err(CatchupError::PassiveAhead {
            passive: passive.newest().get(),
            active: active.newest().get(),
        });
    }
    let (a_runs, p_runs) = (active.runs(), passive.runs());
    // Where both can say which epoch wrote each byte.
    let known = active.known_from();
    let from = known.max(passive.start);
    let to = active.end.min(passive.end);
    let point = if passive.end <= passive.start {
        // Nothing held: nothing to disagree with.
        passive.end
    } else if from < to {
        // Passive bytes below what the active knows are its only if the
        // run holding them reaches the known range unchanged. (The same
        // epoch on both sides at `from`: its one writer began it after
        // agreeing on everything before, as did every copy.)
        let below_trusted = passive.start >= known
            || matches!(
                (run_at(&a_runs, from), run_at(&p_runs, from)),
                (Some(a), Some(p)) if a.same_as(p)
            );
        if below_trusted {
            // The first offset of the common range where the runs differ.
            let mut edges: Vec<Offset> = a_runs
                .iter()
                .chain(&p_runs)
                .flat_map(|r| [r.from, r.to])
                .filter(|&x| from < x && x < to)
                .collect();
            edges.push(from);
            edges.sort();
            edges
                .into_iter()
                .find(|&x| match (run_at(&a_runs, x), run_at(&p_runs, x)) {
                    (Some(a), Some(p)) => !a.same_as(p),
                    _ => true,
                })
                .unwrap_or(to)
        } else {
            passive.start
        }
    } else if passive.end <= known {
        // Wholly below what the active knows: merely behind if its last
        // run is the epoch the active's knowledge begins with.
        match (p_runs.last(), run_at(&a_runs, known)) {
            (Some(p), Some(a)) if p.same_as(a) => passive.end,
            _ => passive.start,
        }
    } else {
        // Wholly past the active's end: none of it is the active's.
        passive.start
    };
    if point < active.start {
        return Err(CatchupError::TooFarBehind {
            at: point.get(),
            start: active.start.get(),
        });
    }
    // A passive that starts past the active's end (empty, or holding
    // none of the active's bytes) cannot be streamed to either.
    if point > active.end {
        return Err(CatchupError::TooFarBehind {
            at: passive.start.get(),
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
