//! The catch-up rule, case by case.

use super::*;

/// A history whose start is covered by an epoch start in `epochs` (or is
/// empty).
fn h(start: u64, end: u64, epochs: &[(u64, u64)]) -> History {
    let first = epochs
        .iter()
        .rev()
        .find(|&&(_, o)| o <= start)
        .map_or(0, |&(e, _)| e);
    hf(start, end, first, epochs)
}

/// A history whose first retained bytes belong to epoch `first`.
fn hf(start: u64, end: u64, first: u64, epochs: &[(u64, u64)]) -> History {
    History {
        start: Offset(start),
        end: Offset(end),
        epochs: epochs.iter().map(|&(e, o)| (Epoch(e), Offset(o))).collect(),
        first: Epoch(if end > start { first } else { 0 }),
    }
}

fn at(truncate_to: u64, stream_from: u64) -> Result<Catchup, CatchupError> {
    Ok(Catchup {
        truncate_to: Offset(truncate_to),
        stream_from: Offset(stream_from),
    })
}

#[test]
fn a_passive_that_is_merely_behind_keeps_everything_and_gets_the_rest() {
    let active = h(0, 900, &[(1, 0), (3, 500)]);
    assert_eq!(
        catchup(&active, &h(0, 700, &[(1, 0), (3, 500)])),
        at(700, 700)
    );
    assert_eq!(
        catchup(&active, &h(0, 300, &[(1, 0)])),
        at(300, 300),
        "epoch 3 starts after its end"
    );
}

#[test]
fn an_empty_passive_is_sent_the_whole_log() {
    assert_eq!(catchup(&h(0, 900, &[(1, 0)]), &h(0, 0, &[])), at(0, 0));
}

#[test]
fn a_passive_in_sync_has_nothing_to_do() {
    let history = h(0, 900, &[(1, 0), (2, 400)]);
    assert_eq!(catchup(&history, &history), at(900, 900));
}

#[test]
fn a_former_active_drops_its_unreplicated_tail_of_an_old_epoch() {
    // The old active kept writing epoch 2 past 600; the new active started
    // epoch 3 at 600 with what was replicated.
    let active = h(0, 1000, &[(1, 0), (2, 300), (3, 600)]);
    let former = h(0, 750, &[(1, 0), (2, 300)]);
    assert_eq!(catchup(&active, &former), at(600, 600));
}

#[test]
fn an_epoch_only_the_passive_has_is_cut_from_its_start() {
    // The passive led epoch 3 alone (from 500); the active was forced to
    // lead epoch 4 from 450 without it.
    let active = h(0, 800, &[(1, 0), (2, 200), (4, 450)]);
    let passive = h(0, 900, &[(1, 0), (2, 200), (3, 500)]);
    assert_eq!(catchup(&active, &passive), at(450, 450));
}

#[test]
fn the_same_epoch_at_another_offset_parts_at_the_earlier_start() {
    let active = h(0, 800, &[(1, 0), (2, 400)]);
    let passive = h(0, 800, &[(1, 0), (2, 380)]);
    assert_eq!(catchup(&active, &passive), at(380, 380));
}

#[test]
fn a_passive_ahead_of_the_active_is_refused() {
    let active = h(0, 800, &[(1, 0), (2, 400)]);
    let passive = h(0, 900, &[(1, 0), (2, 400), (5, 850)]);
    assert_eq!(
        catchup(&active, &passive),
        Err(CatchupError::PassiveAhead {
            passive: 5,
            active: 2
        })
    );
}

#[test]
fn released_history_is_compared_from_the_first_common_epoch() {
    // The active released everything before 5000 (epoch 3 bytes); both
    // still record epoch 7.
    let active = hf(5000, 9000, 3, &[(7, 6000), (8, 8000)]);
    let passive = h(0, 8500, &[(3, 0), (7, 6000), (8, 8000)]);
    assert_eq!(catchup(&active, &passive), at(8500, 8500));
}

#[test]
fn a_long_epoch_whose_start_both_released_is_still_common() {
    // A pair that ran in epoch 7 long enough to release its start record:
    // a passive restarted for an upgrade streams on, no copy.
    let active = hf(5000, 9000, 7, &[]);
    assert_eq!(catchup(&active, &hf(3000, 7000, 7, &[])), at(7000, 7000));
    // So does one whose full copy was interrupted.
    let active = hf(5000, 9000, 7, &[(8, 8000)]);
    assert_eq!(catchup(&active, &hf(5000, 6500, 7, &[])), at(6500, 6500));
}

#[test]
fn a_passive_wholly_behind_in_the_same_epoch_holds_nothing_of_its_own() {
    let active = hf(5000, 9000, 7, &[]);
    assert_eq!(
        catchup(&active, &hf(1000, 4000, 7, &[])),
        Err(CatchupError::TooFarBehind {
            at: 4000,
            start: 5000
        })
    );
    // Ending right where the active's log starts: streamed from there.
    assert_eq!(catchup(&active, &hf(1000, 5000, 7, &[])), at(5000, 5000));
}

#[test]
fn epoch_starts_the_active_still_remembers_speak_for_released_bytes() {
    // The passive stopped at 4000; the active went on alone in epoch 2
    // from there and released up to 5000, remembering where epochs began.
    let active = h(5000, 9000, &[(1, 0), (2, 4000)]);
    assert_eq!(
        catchup(&active, &h(0, 4000, &[(1, 0)])),
        Err(CatchupError::TooFarBehind {
            at: 4000,
            start: 5000
        })
    );
    // Had the passive gone on in epoch 1 past 4000, those bytes are its own.
    assert_eq!(
        catchup(&active, &h(0, 4500, &[(1, 0)])),
        Err(CatchupError::TooFarBehind {
            at: 4000,
            start: 5000
        })
    );
}

#[test]
fn a_passive_parting_before_the_retained_log_needs_a_full_copy() {
    let active = hf(5000, 9000, 8, &[(9, 7000)]);
    let passive = h(0, 4000, &[(3, 0)]);
    assert_eq!(
        catchup(&active, &passive),
        Err(CatchupError::TooFarBehind { at: 0, start: 5000 })
    );
}

#[test]
fn bytes_below_the_active_start_in_another_epoch_are_not_trusted() {
    // The active's log begins in epoch 6, the passive's bytes there are
    // epoch 5: where they parted below 5000 cannot be told.
    let active = hf(5000, 9000, 6, &[(7, 6000)]);
    let passive = h(0, 5500, &[(5, 0)]);
    assert_eq!(
        catchup(&active, &passive),
        Err(CatchupError::TooFarBehind { at: 0, start: 5000 })
    );
    // The same epoch at the active's start: the passive's epoch 5 runs on
    // into the active's log, so it is merely behind.
    let active = hf(5000, 9000, 5, &[(7, 6000)]);
    assert_eq!(catchup(&active, &passive), at(5500, 5500));
    // With the whole log still at hand, the passive starts over from 0.
    let active = h(0, 900, &[(2, 0)]);
    assert_eq!(catchup(&active, &h(0, 500, &[(1, 0)])), at(0, 0));
}

#[test]
fn a_newer_first_epoch_is_a_passive_ahead() {
    assert_eq!(
        catchup(&hf(5000, 9000, 7, &[]), &hf(5000, 6000, 8, &[])),
        Err(CatchupError::PassiveAhead {
            passive: 8,
            active: 7
        })
    );
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// A log as runs of (epoch, start, end) bytes.
    type Runs = Vec<(u64, u64, u64)>;

    /// The history of `runs` once everything below `released` is gone and,
    /// unless `remembers`, the process restarted (so no released epoch
    /// start is known).
    fn history_of(runs: &Runs, released: u64, remembers: bool) -> History {
        let end = runs.last().map_or(0, |r| r.2);
        let start = released.min(end);
        History {
            start: Offset(start),
            end: Offset(end),
            epochs: runs
                .iter()
                .filter(|r| remembers || r.1 >= start)
                .map(|&(e, s, _)| (Epoch(e), Offset(s)))
                .collect(),
            first: Epoch(label(runs, start).map_or(0, |l| l.0)),
        }
    }

    fn history(runs: &Runs, released: u64) -> History {
        history_of(runs, released, false)
    }

    /// Which epoch (and from where) wrote the byte at `x`.
    fn label(runs: &Runs, x: u64) -> Option<(u64, u64)> {
        runs.iter()
            .find(|r| r.1 <= x && x < r.2)
            .map(|r| (r.0, r.1))
    }

    /// The true agreement point: the first byte whose writer differs.
    fn agreement(a: &Runs, p: &Runs) -> u64 {
        let end = history(p, 0).end.get().min(history(a, 0).end.get());
        (0..end)
            .find(|&x| label(a, x) != label(p, x))
            .unwrap_or(end)
    }

    /// An active log, and a passive that shares its first `k` epochs (the
    /// last of them perhaps cut or run on past where the active moved on)
    /// and may then have led an epoch of its own.
    fn scenario() -> impl Strategy<Value = (Runs, Runs)> {
        (
            prop::collection::vec(1u64..50, 1..6),
            any::<prop::sample::Index>(),
            0u64..80,
            any::<bool>(),
            1u64..40,
        )
            .prop_map(|(lengths, k, cut, own, own_len)| {
                let mut active = Runs::new();
                let (mut at, mut epoch) = (0, 0);
                for len in &lengths {
                    epoch += 2; // leave room for an epoch only the passive has
                    active.push((epoch, at, at + len));
                    at += len;
                }
                let k = k.index(active.len()) + 1;
                let mut passive: Runs = active[..k].to_vec();
                let last = passive.last_mut().expect("k >= 1");
                // Cut short, or run on past where the active moved on.
                last.2 = (last.1 + cut).max(last.1 + 1);
                let (last_epoch, last_end) = (last.0, last.2);
                if own && k < active.len() {
                    passive.push((last_epoch + 1, last_end, last_end + own_len));
                }
                (active, passive)
            })
    }

    proptest! {
        #[test]
        fn catchup_cuts_exactly_where_the_histories_part((active, passive) in scenario()) {
            let result = catchup(&history(&active, 0), &history(&passive, 0)).expect("streamable");
            let truth = agreement(&active, &passive);
            prop_assert_eq!(result.truncate_to.get(), truth, "active {:?} passive {:?}", active, passive);
            prop_assert_eq!(result.stream_from, result.truncate_to);
        }

        /// With released heads: the passive never keeps (nor leaves out of
        /// a full copy's saved journal) a byte the active does not have at
        /// the same offset, and a passive whose whole log the active can
        /// still compare is cut exactly.
        #[test]
        fn released_heads_never_keep_a_wrong_byte(
            (active, passive) in scenario(),
            a_cut in 0u64..300,
            p_cut in 0u64..300,
            remembers in any::<bool>(),
        ) {
            // An active keeps the segment holding its end: never empty.
            let a_end = active.last().map_or(0, |r| r.2);
            let a = history_of(&active, a_cut.min(a_end - 1), remembers);
            let p = history(&passive, p_cut);
            let known = a.epochs.first().map_or(a.start, |e| e.1.min(a.start));
            let truth = agreement(&active, &passive);
            // Bytes below this are the active's.
            let safe = truth.max(p.start.get());
            let seen = format!("active {a:?} passive {p:?} truth {truth}");
            match catchup(&a, &p) {
                Ok(c) => {
                    prop_assert_eq!(c.stream_from, c.truncate_to, "{}", seen);
                    prop_assert!(c.truncate_to.get() <= safe, "kept a wrong byte: {:?} {}", c, seen);
                    prop_assert!(c.stream_from >= a.start && c.stream_from <= a.end, "{:?} {}", c, seen);
                    if p.start >= known && p.start <= a.end {
                        prop_assert_eq!(c.truncate_to.get(), safe.min(p.end.get()), "{}", seen);
                    }
                }
                Err(CatchupError::TooFarBehind { at, start }) => {
                    prop_assert_eq!(start, a.start.get());
                    prop_assert!(at <= safe, "at {} {}", at, seen);
                    if p.start >= known && p.start <= a.end {
                        prop_assert!(at == truth.max(p.start.get()).min(p.end.get()) || at >= p.end.get(),
                            "comparable, yet cut short: {}", seen);
                    }
                }
                Err(other) => prop_assert!(false, "{:?} {}", other, seen),
            }
        }
    }
}
