//! The catch-up rule, case by case.

use super::*;

fn h(start: u64, end: u64, epochs: &[(u64, u64)]) -> History {
    History {
        start: Offset(start),
        end: Offset(end),
        epochs: epochs.iter().map(|&(e, o)| (Epoch(e), Offset(o))).collect(),
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
    // The active released everything before 5000; both still record epoch 7.
    let active = h(5000, 9000, &[(7, 6000), (8, 8000)]);
    let passive = h(0, 8500, &[(3, 0), (7, 6000), (8, 8000)]);
    assert_eq!(catchup(&active, &passive), at(8500, 8500));
}

#[test]
fn a_passive_parting_before_the_retained_log_needs_a_full_copy() {
    let active = h(5000, 9000, &[(9, 7000)]);
    let passive = h(0, 4000, &[(3, 0)]);
    assert_eq!(
        catchup(&active, &passive),
        Err(CatchupError::TooFarBehind { at: 0, start: 5000 })
    );
}

#[test]
fn with_no_epoch_in_common_nothing_is_trusted() {
    // The active's epoch 5 (if it had one) was released: the passive's
    // bytes below 5000 cannot be checked, so they are not kept.
    let active = h(5000, 9000, &[(7, 6000)]);
    let passive = h(0, 5500, &[(5, 0)]);
    assert_eq!(
        catchup(&active, &passive),
        Err(CatchupError::TooFarBehind { at: 0, start: 5000 })
    );
    // With the whole log still at hand, the passive starts over from 0.
    let active = h(0, 900, &[(2, 0)]);
    assert_eq!(catchup(&active, &h(0, 500, &[(1, 0)])), at(0, 0));
}

mod model {
    use super::*;
    use proptest::prelude::*;

    /// A log as runs of (epoch, start, end) bytes.
    type Runs = Vec<(u64, u64, u64)>;

    fn history(runs: &Runs) -> History {
        History {
            start: Offset(0),
            end: Offset(runs.last().map_or(0, |r| r.2)),
            epochs: runs
                .iter()
                .map(|&(e, s, _)| (Epoch(e), Offset(s)))
                .collect(),
        }
    }

    /// Which epoch (and from where) wrote the byte at `x`.
    fn label(runs: &Runs, x: u64) -> Option<(u64, u64)> {
        runs.iter()
            .find(|r| r.1 <= x && x < r.2)
            .map(|r| (r.0, r.1))
    }

    /// The true agreement point: the first byte whose writer differs.
    fn agreement(a: &Runs, p: &Runs) -> u64 {
        let end = history(p).end.get().min(history(a).end.get());
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
            let result = catchup(&history(&active), &history(&passive)).expect("streamable");
            let truth = agreement(&active, &passive);
            prop_assert_eq!(result.truncate_to.get(), truth, "active {:?} passive {:?}", active, passive);
            prop_assert_eq!(result.stream_from, result.truncate_to);
        }
    }
}
