//! Exact-action tests, one per transition of the seed guide's state
//! description, named after the scenario.

use super::*;

const T: Timings = Timings {
    ping_ms: 100,
    heartbeat_misses_max: 3,
    active_lock_ms: 100,
    passive_lock_ms: 250,
    max_wait_ms: 5000,
};

fn stamp(epoch: u64, end: u64) -> Stamp {
    Stamp {
        epoch: Epoch(epoch),
        end: Offset(end),
    }
}

fn machine(mode: Mode, role: Role, history: Stamp, confirmed: u64) -> Machine {
    let precedence = if role == Role::Primary { 0 } else { 1 };
    Machine::new(
        Config {
            mode,
            role,
            precedence,
            timings: T,
        },
        0,
        history,
        Epoch(confirmed),
    )
}

fn primary() -> Machine {
    machine(Mode::Replicated, Role::Primary, stamp(1, 100), 1)
}

/// Steps and returns the actions without log lines (checked separately).
fn step(m: &mut Machine, now: Time, input: Input) -> Vec<Action> {
    let mut actions = Vec::new();
    m.step(now, input, &mut actions);
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::Log(_)))
        .collect()
}

fn all(m: &mut Machine, now: Time, input: Input) -> Vec<Action> {
    let mut actions = Vec::new();
    m.step(now, input, &mut actions);
    actions
}

fn logs(m: &mut Machine, now: Time, input: Input) -> Vec<String> {
    all(m, now, input)
        .into_iter()
        .filter_map(|a| match a {
            Action::Log(line) => Some(line),
            _ => None,
        })
        .collect()
}

fn gateway_up(m: &mut Machine, now: Time) {
    step(m, now, Input::Gateway { reachable: true });
}

fn acquired(epoch: u64) -> Input {
    Input::Lock(LockResult::Acquired {
        file_epoch: Epoch(epoch),
    })
}

fn written(epoch: u64) -> Input {
    Input::EpochWritten(Epoch(epoch))
}

/// A primary that went STANDALONE in epoch 2 at t = 252.
fn standalone() -> Machine {
    let mut m = primary();
    gateway_up(&mut m, 0);
    step(&mut m, 250, Input::Tick);
    step(&mut m, 251, acquired(1));
    step(&mut m, 252, written(2));
    assert_eq!(m.state(), State::Standalone);
    m
}

/// The standalone primary, joined by a waiting secondary and synchronised:
/// ACTIVE in epoch 2 with the link up.
fn active() -> Machine {
    let mut m = standalone();
    connect(&mut m, 300, State::Waiting, stamp(1, 100));
    step(&mut m, 400, Input::SyncComplete);
    assert_eq!(m.state(), State::Active);
    m
}

fn connect(m: &mut Machine, now: Time, state: State, history: Stamp) -> Vec<Action> {
    step(
        m,
        now,
        Input::PeerConnected {
            state,
            stamp: history,
            precedence: 1,
        },
    )
}

#[test]
fn replicated_server_starts_waiting_and_seeks_its_peer_and_the_gateway() {
    let mut m = primary();
    assert_eq!(m.state(), State::Waiting);
    assert_eq!(
        step(&mut m, 0, Input::Tick),
        vec![Action::PingGateway, Action::ConnectPeer]
    );
    assert_eq!(step(&mut m, 50, Input::Tick), vec![]);
    assert_eq!(
        step(&mut m, 100, Input::Tick),
        vec![Action::PingGateway, Action::ConnectPeer]
    );
}

#[test]
fn waiting_without_peer_goes_standalone_with_lock_and_gateway_in_a_new_epoch() {
    let mut m = primary();
    gateway_up(&mut m, 0);
    assert_eq!(
        step(&mut m, 249, Input::Tick),
        vec![Action::PingGateway, Action::ConnectPeer]
    );
    assert_eq!(step(&mut m, 250, Input::Tick), vec![Action::TryLock]);
    assert_eq!(
        all(&mut m, 251, acquired(1)),
        vec![
            Action::Log("Successfully acquired lock".into()),
            Action::WriteEpoch(Epoch(2))
        ]
    );
    assert!(
        !m.serving(),
        "nothing is served before the epoch is recorded"
    );
    assert_eq!(
        all(&mut m, 260, written(2)),
        vec![
            Action::ConfirmEpoch(Epoch(2)),
            Action::Log("Primary Server switched to STANDALONE".into()),
            Action::StartServing,
        ]
    );
    assert!(m.serving());
    assert_eq!(m.epoch(), Epoch(2));
}

#[test]
fn waiting_without_gateway_or_peer_does_not_serve() {
    let mut m = primary();
    step(&mut m, 250, Input::Tick);
    assert_eq!(step(&mut m, 251, acquired(1)), vec![Action::ReleaseLock]);
    assert_eq!(m.state(), State::Waiting);
    assert!(!m.serving());
}

#[test]
fn stale_secondary_refuses_standalone_until_forced() {
    let mut m = machine(Mode::Replicated, Role::Secondary, stamp(1, 100), 1);
    gateway_up(&mut m, 0);
    step(&mut m, 250, Input::Tick);
    let actions = all(&mut m, 251, acquired(2));
    assert!(
        matches!(&actions[1], Action::Log(line) if line.contains("stale replica") && line.contains("epoch 2")),
        "{actions:?}"
    );
    assert_eq!(actions[2..], [Action::ReleaseLock]);
    assert_eq!(m.state(), State::Waiting);

    step(&mut m, 300, Input::Operator(Operator::PromoteForce));
    assert_eq!(step(&mut m, 301, Input::Tick), vec![Action::TryLock]);
    assert_eq!(
        step(&mut m, 302, acquired(2)),
        vec![Action::WriteEpoch(Epoch(3))]
    );
    assert_eq!(
        step(&mut m, 303, written(3)),
        vec![Action::ConfirmEpoch(Epoch(3)), Action::StartServing]
    );
    assert_eq!(m.state(), State::Standalone);
}

#[test]
fn waiting_server_follows_a_serving_peer_through_passive_sync_to_passive() {
    let mut m = primary();
    let peer = Input::PeerConnected {
        state: State::Standalone,
        stamp: stamp(3, 900),
        precedence: 1,
    };
    assert_eq!(
        all(&mut m, 10, peer),
        vec![
            Action::Log("Old status of remote server = DEAD".into()),
            Action::Log("New status of remote server = STANDALONE".into()),
            Action::SendState {
                state: State::Waiting,
                previous: State::Dead,
                stamp: stamp(1, 100)
            },
            Action::Log("Primary Server switched to PASSIVE_SYNC".into()),
            Action::SendState {
                state: State::PassiveSync,
                previous: State::Waiting,
                stamp: stamp(1, 100)
            },
            Action::StartSync { sender: false },
        ]
    );
    step(&mut m, 20, Input::LocalStamp(stamp(3, 900)));
    let peer_active = Input::PeerState {
        state: State::Active,
        previous: State::ActiveSync,
        stamp: stamp(3, 900),
    };
    assert_eq!(
        step(&mut m, 30, peer_active),
        vec![
            Action::ConfirmEpoch(Epoch(3)),
            Action::SendState {
                state: State::Passive,
                previous: State::PassiveSync,
                stamp: stamp(3, 900)
            },
        ]
    );
    assert_eq!(m.state(), State::Passive);
}

#[test]
fn both_waiting_the_newer_history_leads() {
    let mut m = machine(Mode::Replicated, Role::Secondary, stamp(2, 50), 2);
    gateway_up(&mut m, 0);
    connect(&mut m, 10, State::Waiting, stamp(1, 900));
    assert_eq!(
        m.state(),
        State::Waiting,
        "epoch beats offset: the secondary leads"
    );
    let heartbeat = Action::SendHeartbeat {
        state: State::Waiting,
        stamp: stamp(2, 50),
    };
    assert_eq!(
        step(&mut m, 11, Input::Tick),
        vec![Action::PingGateway, heartbeat, Action::TryLock]
    );
    assert_eq!(
        step(&mut m, 12, acquired(2)),
        vec![Action::WriteEpoch(Epoch(3))]
    );
    assert_eq!(
        step(&mut m, 13, written(3)),
        vec![
            Action::ConfirmEpoch(Epoch(3)),
            Action::SendState {
                state: State::ActiveSync,
                previous: State::Waiting,
                stamp: stamp(3, 50)
            },
            Action::StartServing,
            Action::StartSync { sender: true },
        ]
    );
    assert_eq!(
        step(&mut m, 14, Input::SyncComplete),
        vec![Action::SendState {
            state: State::Active,
            previous: State::ActiveSync,
            stamp: stamp(3, 50)
        }]
    );
    assert_eq!(m.state(), State::Active);
}

#[test]
fn both_waiting_with_equal_histories_the_primary_leads() {
    let mut secondary = machine(Mode::Replicated, Role::Secondary, stamp(2, 500), 2);
    let peer = Input::PeerConnected {
        state: State::Waiting,
        stamp: stamp(2, 500),
        precedence: 0,
    };
    assert_eq!(
        step(&mut secondary, 10, peer).last(),
        Some(&Action::StartSync { sender: false })
    );
    assert_eq!(secondary.state(), State::PassiveSync);

    let mut primary = machine(Mode::Replicated, Role::Primary, stamp(2, 500), 2);
    connect(&mut primary, 10, State::Waiting, stamp(2, 500));
    assert_eq!(primary.state(), State::Waiting);
    assert!(step(&mut primary, 11, Input::Tick).contains(&Action::TryLock));
}

#[test]
fn linked_leader_with_the_longer_history_is_not_stale_though_unconfirmed() {
    // It holds everything the peer holds: the peer's stamp proves it.
    let mut m = machine(Mode::Replicated, Role::Primary, stamp(3, 500), 2);
    gateway_up(&mut m, 0);
    connect(&mut m, 10, State::Waiting, stamp(3, 500));
    step(&mut m, 11, Input::Tick);
    assert_eq!(
        step(&mut m, 12, acquired(3)),
        vec![Action::WriteEpoch(Epoch(4))]
    );
}

#[test]
fn standalone_server_syncs_a_waiting_peer_then_becomes_active() {
    let mut m = standalone();
    assert_eq!(
        connect(&mut m, 300, State::Waiting, stamp(1, 100)),
        vec![
            Action::SendState {
                state: State::Standalone,
                previous: State::Waiting,
                stamp: stamp(2, 100)
            },
            Action::SendState {
                state: State::ActiveSync,
                previous: State::Standalone,
                stamp: stamp(2, 100)
            },
            Action::StartSync { sender: true },
        ]
    );
    assert!(m.serving(), "ACTIVE_SYNC keeps serving");
    step(&mut m, 400, Input::SyncComplete);
    assert_eq!(m.state(), State::Active);
}

#[test]
fn active_resyncing_a_restarted_peer_does_so_in_a_new_epoch() {
    let mut m = active();
    let waiting = Input::PeerState {
        state: State::Waiting,
        previous: State::Passive,
        stamp: stamp(2, 100),
    };
    assert_eq!(
        step(&mut m, 500, waiting),
        vec![Action::WriteEpoch(Epoch(3))]
    );
    let actions = step(&mut m, 501, written(3));
    assert_eq!(actions.last(), Some(&Action::StartSync { sender: true }));
    assert_eq!(m.state(), State::ActiveSync);
}

#[test]
fn active_that_loses_the_peer_but_keeps_lock_and_gateway_goes_standalone_in_a_new_epoch() {
    let mut m = active();
    gateway_up(&mut m, 410);
    assert_eq!(
        step(&mut m, 420, Input::PeerDisconnected),
        vec![Action::WriteEpoch(Epoch(3))]
    );
    assert_eq!(m.state(), State::Active, "until the new epoch is recorded");
    assert_eq!(
        step(&mut m, 421, written(3)),
        vec![Action::ConfirmEpoch(Epoch(3))]
    );
    assert_eq!(m.state(), State::Standalone);
    assert!(m.serving());
}

#[test]
fn gateway_down_with_peer_up_changes_nothing_but_both_down_stops_serving_before_the_lock_goes() {
    let mut m = active();
    for t in 0..3 {
        assert_eq!(
            step(&mut m, 410 + t, Input::Gateway { reachable: false }),
            vec![]
        );
    }
    assert_eq!(m.state(), State::Active);
    assert_eq!(
        step(&mut m, 420, Input::PeerDisconnected),
        vec![Action::StopServing, Action::ReleaseLock]
    );
    assert_eq!(m.state(), State::Waiting);
}

#[test]
fn standalone_that_loses_the_gateway_stops_serving() {
    let mut m = standalone();
    for t in 0..2 {
        step(&mut m, 300 + t, Input::Gateway { reachable: false });
    }
    assert!(m.serving(), "one or two missed pings are tolerated");
    let actions = step(&mut m, 302, Input::Gateway { reachable: false });
    assert_eq!(actions, vec![Action::StopServing, Action::ReleaseLock]);
}

#[test]
fn passive_takes_over_after_the_passive_lock_interval() {
    let mut m = primary();
    gateway_up(&mut m, 0);
    connect(&mut m, 10, State::Standalone, stamp(2, 500));
    step(&mut m, 20, Input::LocalStamp(stamp(2, 500)));
    step(
        &mut m,
        30,
        Input::PeerState {
            state: State::Active,
            previous: State::ActiveSync,
            stamp: stamp(2, 500),
        },
    );
    assert_eq!(m.state(), State::Passive);
    let lines = logs(&mut m, 1000, Input::PeerDisconnected);
    assert_eq!(
        lines,
        vec![
            "Old status of remote server = ACTIVE",
            "New status of remote server = DEAD"
        ]
    );
    assert!(!step(&mut m, 1249, Input::Tick).contains(&Action::TryLock));
    assert!(step(&mut m, 1250, Input::Tick).contains(&Action::TryLock));
    gateway_up(&mut m, 1251);
    assert_eq!(
        step(&mut m, 1252, acquired(2)),
        vec![Action::WriteEpoch(Epoch(3))]
    );
    assert_eq!(
        step(&mut m, 1253, written(3)),
        vec![Action::ConfirmEpoch(Epoch(3)), Action::StartServing]
    );
    assert_eq!(m.state(), State::Standalone);
}

#[test]
fn passive_whose_lock_is_still_held_elsewhere_goes_waiting() {
    let mut m = primary();
    connect(&mut m, 10, State::Active, stamp(1, 100));
    step(
        &mut m,
        30,
        Input::PeerState {
            state: State::Active,
            previous: State::Active,
            stamp: stamp(1, 100),
        },
    );
    assert_eq!(m.state(), State::Passive);
    step(&mut m, 100, Input::PeerDisconnected);
    step(&mut m, 350, Input::Tick);
    step(&mut m, 351, Input::Lock(LockResult::Busy));
    assert_eq!(m.state(), State::Waiting);
}

#[test]
fn passive_sync_that_loses_the_active_goes_waiting_not_standalone() {
    let mut m = primary();
    connect(&mut m, 10, State::Standalone, stamp(2, 500));
    assert_eq!(m.state(), State::PassiveSync);
    step(&mut m, 20, Input::PeerDisconnected);
    assert_eq!(m.state(), State::Waiting);
}

#[test]
fn losing_the_lock_stops_serving_at_once() {
    let mut m = standalone();
    let lost = Input::Lock(LockResult::Lost {
        reason: "superseded by epoch 9".into(),
    });
    assert_eq!(
        step(&mut m, 300, lost),
        vec![Action::StopServing, Action::ReleaseLock]
    );
    assert_eq!(m.state(), State::Waiting);
    assert!(m.snapshot().last_reason.contains("superseded"));
}

#[test]
fn a_failed_epoch_write_never_serves_and_numbers_are_not_reused() {
    let mut m = primary();
    gateway_up(&mut m, 0);
    step(&mut m, 250, Input::Tick);
    assert_eq!(
        step(&mut m, 251, acquired(1)),
        vec![Action::WriteEpoch(Epoch(2))]
    );
    let lost = Input::Lock(LockResult::Lost {
        reason: "lock file write failed".into(),
    });
    assert_eq!(step(&mut m, 252, lost), vec![Action::ReleaseLock]);
    assert_eq!(
        step(&mut m, 253, written(2)),
        vec![],
        "a late answer changes nothing"
    );
    assert!(!m.serving());
    assert_eq!(m.snapshot().confirmed_epoch, Epoch(1));
    step(&mut m, 600, Input::Tick);
    assert_eq!(
        step(&mut m, 601, acquired(1)),
        vec![Action::WriteEpoch(Epoch(3))]
    );
}

#[test]
fn serving_server_revalidates_its_lock_every_active_interval() {
    let mut m = standalone();
    assert!(!step(&mut m, 300, Input::Tick).contains(&Action::RevalidateLock));
    assert!(step(&mut m, 352, Input::Tick).contains(&Action::RevalidateLock));
    assert!(!step(&mut m, 400, Input::Tick).contains(&Action::RevalidateLock));
    assert!(step(&mut m, 452, Input::Tick).contains(&Action::RevalidateLock));
}

#[test]
fn silent_peer_is_declared_dead_after_the_missed_heartbeats() {
    let mut m = primary();
    connect(&mut m, 0, State::Standalone, stamp(2, 500));
    assert!(!step(&mut m, 300, Input::Tick).contains(&Action::DisconnectPeer));
    let actions = step(&mut m, 301, Input::Tick);
    assert!(actions.contains(&Action::DisconnectPeer), "{actions:?}");
    assert_eq!(m.snapshot().peer_state, State::Dead);
}

#[test]
fn a_stuck_synchronisation_is_abandoned_after_max_wait() {
    let mut m = primary();
    connect(&mut m, 0, State::Standalone, stamp(2, 500));
    let keep_alive = Input::PeerState {
        state: State::ActiveSync,
        previous: State::Standalone,
        stamp: stamp(2, 500),
    };
    for t in (100..=5000).step_by(100) {
        step(&mut m, t, keep_alive.clone());
        step(&mut m, t, Input::Tick);
    }
    step(&mut m, 5000, Input::Progress);
    step(&mut m, 5100, keep_alive.clone());
    step(&mut m, 5100, Input::Tick);
    assert_eq!(m.state(), State::PassiveSync, "progress restarts the clock");
    step(&mut m, 10001, keep_alive);
    step(&mut m, 10001, Input::Tick);
    assert_eq!(m.state(), State::Waiting);
    assert!(m.snapshot().last_reason.contains("max_wait_timeout"));
}

#[test]
fn shared_passive_takes_the_lock_activates_recovers_then_serves() {
    let mut m = machine(Mode::Shared, Role::Primary, stamp(4, 0), 4);
    assert_eq!(m.state(), State::Passive);
    gateway_up(&mut m, 0);
    assert_eq!(
        step(&mut m, 100, Input::Tick),
        vec![Action::PingGateway, Action::ConnectPeer, Action::TryLock]
    );
    assert_eq!(
        step(&mut m, 101, acquired(4)),
        vec![Action::WriteEpoch(Epoch(5))]
    );
    assert_eq!(
        step(&mut m, 102, written(5)),
        vec![Action::ConfirmEpoch(Epoch(5)), Action::Recover]
    );
    assert_eq!(m.state(), State::Activating);
    assert!(!m.serving());
    assert_eq!(
        step(&mut m, 150, Input::Recovered),
        vec![Action::StartServing]
    );
    assert_eq!(m.state(), State::Active);
    let lost = Input::Lock(LockResult::Lost {
        reason: "another server activated epoch 6".into(),
    });
    assert_eq!(
        step(&mut m, 200, lost),
        vec![Action::StopServing, Action::ReleaseLock]
    );
    assert_eq!(m.state(), State::Passive);
}

#[test]
fn shared_passive_leaves_the_lock_alone_while_the_peer_is_active() {
    let mut m = machine(Mode::Shared, Role::Secondary, stamp(4, 0), 4);
    gateway_up(&mut m, 0);
    connect(&mut m, 10, State::Active, stamp(5, 0));
    assert!(!step(&mut m, 200, Input::Tick).contains(&Action::TryLock));
    step(&mut m, 250, Input::PeerDisconnected);
    assert!(!step(&mut m, 499, Input::Tick).contains(&Action::TryLock));
    assert!(step(&mut m, 500, Input::Tick).contains(&Action::TryLock));
}

#[test]
fn shared_active_without_peer_and_gateway_steps_down() {
    let mut m = machine(Mode::Shared, Role::Primary, stamp(4, 0), 4);
    gateway_up(&mut m, 0);
    step(&mut m, 100, Input::Tick);
    step(&mut m, 101, acquired(4));
    step(&mut m, 101, written(5));
    step(&mut m, 102, Input::Recovered);
    for t in 0..3 {
        step(&mut m, 200 + t, Input::Gateway { reachable: false });
    }
    assert_eq!(m.state(), State::Passive);
    assert!(!m.serving());
}

#[test]
fn one_epoch_write_at_a_time_and_the_newest_intention_wins() {
    let mut m = active();
    gateway_up(&mut m, 410);
    let waiting = Input::PeerState {
        state: State::Waiting,
        previous: State::Passive,
        stamp: stamp(2, 100),
    };
    assert_eq!(
        step(&mut m, 500, waiting.clone()),
        vec![Action::WriteEpoch(Epoch(3))]
    );
    assert_eq!(
        step(&mut m, 501, waiting),
        vec![],
        "no second write while one is pending"
    );
    // The peer goes away before the write completes: STANDALONE, not ACTIVE_SYNC.
    step(&mut m, 502, Input::PeerDisconnected);
    assert_eq!(
        step(&mut m, 503, written(2)),
        vec![],
        "an answer for another epoch is ignored"
    );
    assert_eq!(
        step(&mut m, 504, written(3)),
        vec![Action::ConfirmEpoch(Epoch(3))]
    );
    assert_eq!(m.state(), State::Standalone);
}
