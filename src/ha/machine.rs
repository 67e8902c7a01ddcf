//! The HA state machine of one server: pure (sans-IO). The driver feeds it
//! inputs — ticks, peer link events and state announcements, lock and gateway
//! results, sync and recovery progress, operator commands — with the time, and
//! carries out the actions it returns. No clock, socket, file or randomness
//! inside, so every transition can be tested exactly and simulated with a
//! seed.
//!
//! Replicated mode (each server its own journal):
//! ```text
//!            link up, peer STANDALONE/ACTIVE          sync done (peer ACTIVE)
//!   WAITING ─────────────────────────────▶ PASSIVE_SYNC ─────────────▶ PASSIVE
//!     │  ▲  both WAITING: newer (epoch, offset) wins (tie: precedence)     │ link lost, lock
//!     │  │  winner takes the lock ─▶ ACTIVE_SYNC ──sync done──▶ ACTIVE    │ + gateway, not stale
//!     │  │                              ▲   │ link lost, lock + gateway  ▼
//!     │  └── lock or majority lost ─────┼───┴──────────────────▶ STANDALONE
//!     └── no peer, lock + gateway, not stale ───────────────────▶ STANDALONE ─▶ peer WAITING ─▶ ACTIVE_SYNC
//! ```
//! Shared mode (one journal on shared storage): PASSIVE ─lock─▶ ACTIVATING
//! ─recovered─▶ ACTIVE; lock or majority lost ─▶ PASSIVE.
//!
//! The rules behind both: a server serves clients only while it holds the
//! lock and a majority of {itself, peer, gateway}; every activation, and
//! every move into a state that acknowledges writes the peer lacks
//! (STANDALONE, ACTIVE → ACTIVE_SYNC), starts a new, larger epoch, recorded
//! in the lock file before serving; a server whose last *confirmed* epoch (the last
//! one in which it was active, or a fully synchronised passive) is older
//! than the lock file's may not become active on its own (stale replica)
//! unless an operator forces it.

use crate::ids::{Epoch, Offset};
use std::fmt;

/// Milliseconds on the driver's monotonic clock (simulated in tests).
pub type Time = u64;

/// How the pair shares its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Replicated,
    Shared,
}

/// Which server of the pair this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Secondary,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "Primary",
            Role::Secondary => "Secondary",
        })
    }
}

/// A server's HA state; `Dead` is only ever how a server sees its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Waiting,
    ActiveSync,
    PassiveSync,
    Active,
    Passive,
    Standalone,
    Activating,
    Dead,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Waiting => "WAITING",
            State::ActiveSync => "ACTIVE_SYNC",
            State::PassiveSync => "PASSIVE_SYNC",
            State::Active => "ACTIVE",
            State::Passive => "PASSIVE",
            State::Standalone => "STANDALONE",
            State::Activating => "ACTIVATING",
            State::Dead => "DEAD",
        }
    }

    /// Whether a server in this state serves clients.
    pub fn serves(self) -> bool {
        matches!(self, State::Active | State::ActiveSync | State::Standalone)
    }

    /// Whether a peer in this state is (or is becoming) the active server.
    fn leads(self) -> bool {
        matches!(
            self,
            State::Active | State::ActiveSync | State::Standalone | State::Activating
        )
    }

    pub fn from_name(name: &str) -> Option<State> {
        [
            State::Waiting,
            State::ActiveSync,
            State::PassiveSync,
            State::Active,
            State::Passive,
            State::Standalone,
            State::Activating,
            State::Dead,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A position in a server's history: newer epochs first, then longer logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Stamp {
    pub epoch: Epoch,
    pub end: Offset,
}

/// The timing parameters (already validated and normalised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub ping_ms: u64,
    pub heartbeat_misses_max: u32,
    pub active_lock_ms: u64,
    pub passive_lock_ms: u64,
    pub max_wait_ms: u64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            ping_ms: 100,
            heartbeat_misses_max: 3,
            active_lock_ms: 100,
            passive_lock_ms: 250,
            max_wait_ms: 5000,
        }
    }
}

/// Who this server is and how it behaves.
#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    pub role: Role,
    /// Lower wins ties between equal histories.
    pub precedence: u8,
    pub timings: Timings,
}

/// The answer to a lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockResult {
    /// Acquired; `file_epoch` is the newest activation the file recorded.
    Acquired { file_epoch: Epoch },
    /// Held by someone else (or the lock service is unreachable).
    Busy,
    /// Re-validation succeeded: still ours, nobody activated since.
    Held,
    /// Re-validation failed: lost, superseded or unreadable.
    Lost { reason: String },
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// Become active even though stale (`twinmq promote --force`).
    PromoteForce,
}

/// Everything the machine reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Tick,
    /// The HA link is up and the handshake passed; the peer's state then.
    PeerConnected {
        state: State,
        stamp: Stamp,
        precedence: u8,
    },
    PeerDisconnected,
    /// The peer announced a state (change or heartbeat).
    PeerState {
        state: State,
        previous: State,
        stamp: Stamp,
    },
    Lock(LockResult),
    Gateway {
        reachable: bool,
    },
    /// This server's own history advanced (appends, replication, truncation).
    LocalStamp(Stamp),
    /// Replicated, active side: the passive caught up (lag zero).
    SyncComplete,
    /// Catch-up or recovery made progress: the transition is not stuck.
    Progress,
    /// Shared: the store is recovered (ACTIVATING is done).
    Recovered,
    /// The epoch asked for with `WriteEpoch` is recorded in the lock file
    /// and the journal. (A failed write comes back as `Lock(Lost)`.)
    EpochWritten(Epoch),
    Operator(Operator),
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    ConnectPeer,
    DisconnectPeer,
    SendState {
        state: State,
        previous: State,
        stamp: Stamp,
    },
    SendHeartbeat {
        state: State,
        stamp: Stamp,
    },
    TryLock,
    RevalidateLock,
    ReleaseLock,
    /// Record a new epoch in the lock file and the journal (durably), then
    /// answer `EpochWritten` — or `Lock(Lost)` if the write failed.
    WriteEpoch(Epoch),
    /// Persist that this server's history is complete up to this epoch.
    ConfirmEpoch(Epoch),
    PingGateway,
    StartServing,
    StopServing,
    StartSync {
        sender: bool,
    },
    /// Shared: recover the store from the shared journal.
    Recover,
    /// An operator-facing line (the seed's phrasing).
    Log(String),
}

#[derive(Debug, Clone)]
struct Peer {
    link_up: bool,
    state: State,
    stamp: Stamp,
    precedence: u8,
    last_heard: Time,
}

/// The state machine.
#[derive(Debug, Clone)]
pub struct Machine {
    config: Config,
    state: State,
    previous: State,
    /// When the current state was entered or last made progress.
    since: Time,
    peer: Peer,
    stamp: Stamp,
    /// The last epoch in which this server's history was known complete.
    confirmed: Epoch,
    /// The largest epoch seen anywhere.
    epoch: Epoch,
    lock_held: bool,
    lock_pending: bool,
    gateway_reachable: bool,
    gateway_failures: u32,
    next_ping: Time,
    next_lock_check: Time,
    /// Earliest time to try the lock again.
    next_lock_try: Time,
    forced: bool,
    last_reason: String,
    /// A new epoch asked for and the move waiting for it to be recorded.
    pending: Option<(Epoch, Next)>,
}

/// A move that waits for its epoch to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Next {
    to: State,
    reason: &'static str,
    then: Option<Action>,
}

/// A snapshot for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    pub previous: State,
    pub peer_state: State,
    pub peer_link_up: bool,
    pub lock_held: bool,
    pub gateway_reachable: bool,
    pub epoch: Epoch,
    pub confirmed_epoch: Epoch,
    pub last_reason: String,
}

impl Machine {
    /// A machine starting at `now` with its persisted history.
    pub fn new(config: Config, now: Time, stamp: Stamp, confirmed: Epoch) -> Machine {
        let state = match config.mode {
            Mode::Replicated => State::Waiting,
            Mode::Shared => State::Passive,
        };
        // Replicated: give the peer one passive interval to connect before
        // trying to go it alone. Shared: try at once.
        let first_try = match config.mode {
            Mode::Replicated => now + config.timings.passive_lock_ms,
            // Shared: as soon as the first gateway answer can be in.
            Mode::Shared => now + config.timings.ping_ms,
        };
        Machine {
            state,
            previous: State::Dead,
            since: now,
            peer: Peer {
                link_up: false,
                state: State::Dead,
                stamp: Stamp::default(),
                precedence: u8::MAX,
                last_heard: now,
            },
            stamp,
            confirmed,
            epoch: stamp.epoch.max(confirmed),
            lock_held: false,
            lock_pending: false,
            gateway_reachable: false,
            gateway_failures: 0,
            next_ping: now,
            next_lock_check: now,
            next_lock_try: first_try,
            forced: false,
            last_reason: "started".into(),
            pending: None,
            config,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn serving(&self) -> bool {
        self.state.serves()
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state,
            previous: self.previous,
            peer_state: self.peer.state,
            peer_link_up: self.peer.link_up,
            lock_held: self.lock_held,
            gateway_reachable: self.gateway_reachable,
            epoch: self.epoch,
            confirmed_epoch: self.confirmed,
            last_reason: self.last_reason.clone(),
        }
    }

    /// Feeds one input; appends the actions to carry out, in order.
    pub fn step(&mut self, now: Time, input: Input, actions: &mut Vec<Action>) {
        let epoch_before = self.epoch;
        match input {
            Input::Tick => self.tick(now, actions),
            Input::PeerConnected {
                state,
                stamp,
                precedence,
            } => {
                self.peer.link_up = true;
                self.peer.precedence = precedence;
                self.peer.last_heard = now;
                self.peer_state(state, stamp, actions);
                actions.push(Action::SendState {
                    state: self.state,
                    previous: self.previous,
                    stamp: self.stamp,
                });
                self.evaluate(now, actions);
            }
            Input::PeerState {
                state,
                previous: _,
                stamp,
            } => {
                if self.peer.link_up {
                    self.peer.last_heard = now;
                    self.peer_state(state, stamp, actions);
                    self.evaluate(now, actions);
                }
            }
            Input::PeerDisconnected => {
                if self.peer.link_up {
                    self.peer_lost(now, actions);
                }
            }
            Input::Lock(result) => self.lock_result(now, result, actions),
            Input::Gateway { reachable } => self.gateway(now, reachable, actions),
            Input::LocalStamp(stamp) => {
                // A history can go back an epoch: a former active that
                // rejoins cuts the tail the new active does not have.
                self.stamp = stamp;
                self.epoch = self.epoch.max(stamp.epoch);
                if self.state == State::Passive {
                    // A passive in sync holds the active's whole history: an
                    // epoch that reached its journal is confirmed.
                    self.confirm(actions);
                }
            }
            Input::SyncComplete => {
                if self.state == State::ActiveSync {
                    self.transition(now, State::Active, "the passive caught up", actions);
                }
            }
            Input::Progress => self.since = now,
            Input::EpochWritten(epoch) => self.epoch_written(now, epoch, actions),
            Input::Recovered => {
                if self.state == State::Activating {
                    self.transition(now, State::Active, "store recovered", actions);
                }
            }
            Input::Operator(Operator::PromoteForce) => {
                self.forced = true;
                self.next_lock_try = now;
                actions.push(Action::Log(format!(
                    "{} Server: forced promotion requested; messages acknowledged after epoch {} by the other server may be lost",
                    self.config.role, self.confirmed
                )));
            }
        }
        self.check(epoch_before);
    }

    /// Invariants that hold after every step.
    fn check(&self, epoch_before: Epoch) {
        assert!(self.epoch >= epoch_before, "epochs only grow");
        assert!(
            !self.serving() || self.lock_held,
            "serving without the lock"
        );
        assert_ne!(self.state, State::Dead, "a server is never DEAD to itself");
        let shared_state = matches!(
            self.state,
            State::Passive | State::Activating | State::Active
        );
        assert!(
            self.config.mode == Mode::Replicated || shared_state,
            "{} in shared mode",
            self.state
        );
        assert!(
            self.config.mode == Mode::Shared || self.state != State::Activating,
            "ACTIVATING in replicated mode"
        );
    }

    fn timings(&self) -> Timings {
        self.config.timings
    }

    fn heartbeat_timeout(&self) -> u64 {
        self.timings().ping_ms * u64::from(self.timings().heartbeat_misses_max)
    }

    fn tick(&mut self, now: Time, actions: &mut Vec<Action>) {
        if now >= self.next_ping {
            self.next_ping = now + self.timings().ping_ms;
            actions.push(Action::PingGateway);
            if self.peer.link_up {
                actions.push(Action::SendHeartbeat {
                    state: self.state,
                    stamp: self.stamp,
                });
            } else {
                actions.push(Action::ConnectPeer);
            }
        }
        if self.peer.link_up && now.saturating_sub(self.peer.last_heard) > self.heartbeat_timeout()
        {
            actions.push(Action::DisconnectPeer);
            self.peer_lost(now, actions);
        }
        if self.lock_held && self.serving() && now >= self.next_lock_check {
            self.next_lock_check = now + self.timings().active_lock_ms;
            actions.push(Action::RevalidateLock);
        }
        if !self.lock_held
            && !self.lock_pending
            && self.pending.is_none()
            && now >= self.next_lock_try
            && self.wants_lock()
        {
            self.lock_pending = true;
            actions.push(Action::TryLock);
        }
        let transitional = matches!(
            self.state,
            State::ActiveSync | State::PassiveSync | State::Activating
        );
        if transitional && now.saturating_sub(self.since) > self.timings().max_wait_ms {
            let reason = format!("{} did not complete within max_wait_timeout", self.state);
            self.fall_back(now, &reason, actions);
        }
    }

    /// Whether this server should be trying to take the lock now.
    fn wants_lock(&self) -> bool {
        match self.config.mode {
            Mode::Shared => {
                self.state == State::Passive && !(self.peer.link_up && self.peer.state.leads())
            }
            Mode::Replicated => match self.state {
                State::Waiting => !self.peer.link_up || (self.peer_follows() && self.wins()),
                State::Passive => !self.peer.link_up,
                _ => false,
            },
        }
    }

    /// The peer is waiting or following, so this server may lead.
    fn peer_follows(&self) -> bool {
        matches!(
            self.peer.state,
            State::Waiting | State::Passive | State::PassiveSync
        )
    }

    /// Role resolution between two waiting servers: the newer history
    /// wins; on a tie, the lower precedence.
    fn wins(&self) -> bool {
        if self.peer.state != State::Waiting {
            return true;
        }
        (self.stamp, std::cmp::Reverse(self.config.precedence))
            > (self.peer.stamp, std::cmp::Reverse(self.peer.precedence))
    }

    fn peer_state(&mut self, state: State, stamp: Stamp, actions: &mut Vec<Action>) {
        if state != self.peer.state {
            actions.push(Action::Log(format!(
                "Old status of remote server = {}",
                self.peer.state
            )));
            actions.push(Action::Log(format!(
                "New status of remote server = {state}"
            )));
        }
        self.peer.state = state;
        self.peer.stamp = stamp;
        self.epoch = self.epoch.max(stamp.epoch);
    }

    /// Decisions that depend on the peer's state while the link is up.
    fn evaluate(&mut self, now: Time, actions: &mut Vec<Action>) {
        if self.config.mode == Mode::Shared || !self.peer.link_up {
            return;
        }
        let peer = self.peer.state;
        match self.state {
            State::Waiting if peer.leads() && peer != State::Activating => {
                self.transition(now, State::PassiveSync, "the peer is serving", actions);
                actions.push(Action::StartSync { sender: false });
            }
            State::Waiting if peer == State::Waiting && !self.wins() => {
                self.transition(
                    now,
                    State::PassiveSync,
                    "the peer has the newer history",
                    actions,
                );
                actions.push(Action::StartSync { sender: false });
            }
            State::Waiting if self.peer_follows() => {
                // This server leads: take the lock now.
                self.next_lock_try = now;
            }
            State::Standalone if self.peer_follows() => {
                // STANDALONE already runs in an epoch the peer never confirmed.
                let reason = "the peer is waiting for synchronisation";
                self.transition(now, State::ActiveSync, reason, actions);
                actions.push(Action::StartSync { sender: true });
            }
            // Only a peer that is really back to WAITING (not a late
            // PASSIVE_SYNC heartbeat from before it became PASSIVE).
            State::Active if peer == State::Waiting => {
                // Writes acknowledged during the re-sync are missing on the
                // peer: they must lie in an epoch the peer has not confirmed.
                let next = Next {
                    to: State::ActiveSync,
                    reason: "the peer is waiting for synchronisation",
                    then: Some(Action::StartSync { sender: true }),
                };
                self.start_epoch(next, actions);
            }
            State::PassiveSync if peer == State::Active => {
                self.confirm(actions);
                self.transition(
                    now,
                    State::Passive,
                    "synchronised with the active server",
                    actions,
                );
            }
            State::Passive if !peer.leads() => {
                self.transition(now, State::Waiting, "the peer stopped serving", actions);
            }
            // A waiting peer that won the resolution is about to take the
            // lock; only a peer that also follows leaves nobody to lead.
            State::PassiveSync if matches!(peer, State::Passive | State::PassiveSync) => {
                self.transition(now, State::Waiting, "neither server leads", actions);
            }
            State::Passive if peer == State::Standalone || peer == State::ActiveSync => {
                self.transition(
                    now,
                    State::PassiveSync,
                    "the active server restarted synchronisation",
                    actions,
                );
                actions.push(Action::StartSync { sender: false });
            }
            _ => {}
        }
    }

    /// Records that this server's history is complete up to its epoch.
    fn confirm(&mut self, actions: &mut Vec<Action>) {
        // Only what this server's own journal holds.
        let epoch = self.stamp.epoch;
        if epoch > self.confirmed {
            self.confirmed = epoch;
            actions.push(Action::ConfirmEpoch(epoch));
        }
    }

    fn peer_lost(&mut self, now: Time, actions: &mut Vec<Action>) {
        self.peer.link_up = false;
        if self.peer.state != State::Dead {
            actions.push(Action::Log(format!(
                "Old status of remote server = {}",
                self.peer.state
            )));
            actions.push(Action::Log("New status of remote server = DEAD".into()));
            self.peer.state = State::Dead;
        }
        let majority = self.lock_held && self.gateway_reachable;
        match (self.config.mode, self.state) {
            (Mode::Replicated, State::Active | State::ActiveSync) if majority => {
                // Carry on alone, in a new epoch: the passive may now miss
                // what this server acknowledges, so it must be stale from here.
                let next = Next {
                    to: State::Standalone,
                    reason: "lost the peer; holding the lock and reaching the gateway",
                    then: None,
                };
                self.start_epoch(next, actions);
            }
            (Mode::Replicated, State::Active | State::ActiveSync) => {
                self.fall_back(now, "lost the peer and the lock or the gateway", actions);
            }
            (Mode::Replicated, State::Passive) | (_, State::Waiting) => {
                self.next_lock_try = now + self.timings().passive_lock_ms;
            }
            (Mode::Replicated, State::PassiveSync) => {
                self.transition(
                    now,
                    State::Waiting,
                    "lost the active server before the synchronisation completed",
                    actions,
                );
                self.next_lock_try = now + self.timings().passive_lock_ms;
            }
            (Mode::Shared, State::Active | State::Activating) if !self.gateway_reachable => {
                self.fall_back(now, "lost the peer and the gateway: no majority", actions);
            }
            (Mode::Shared, State::Passive) => {
                self.next_lock_try = now + self.timings().passive_lock_ms;
            }
            _ => {}
        }
    }

    fn gateway(&mut self, now: Time, reachable: bool, actions: &mut Vec<Action>) {
        if reachable {
            self.gateway_failures = 0;
            self.gateway_reachable = true;
            return;
        }
        self.gateway_failures += 1;
        if self.gateway_failures < self.timings().heartbeat_misses_max {
            return;
        }
        self.gateway_reachable = false;
        // Gateway down with the peer link up: carry on. Both gone: stop.
        if self.serving() && !self.peer.link_up {
            self.fall_back(now, "lost the gateway with no peer: no majority", actions);
        }
    }

    fn lock_result(&mut self, now: Time, result: LockResult, actions: &mut Vec<Action>) {
        match result {
            LockResult::Acquired { file_epoch } => {
                self.lock_pending = false;
                self.lock_held = true;
                self.epoch = self.epoch.max(file_epoch);
                actions.push(Action::Log("Successfully acquired lock".into()));
                self.acquired(now, file_epoch, actions);
                let keep =
                    self.serving() || self.state == State::Activating || self.pending.is_some();
                if !keep && self.lock_held {
                    self.lock_held = false;
                    actions.push(Action::ReleaseLock);
                }
            }
            LockResult::Busy => {
                self.lock_pending = false;
                self.next_lock_try = now + self.timings().passive_lock_ms;
                if self.config.mode == Mode::Replicated
                    && self.state == State::Passive
                    && !self.peer.link_up
                {
                    // Someone still holds the lock: this server cannot be a
                    // passive without a link to it.
                    self.transition(
                        now,
                        State::Waiting,
                        "the lock is held elsewhere and the active is unreachable",
                        actions,
                    );
                }
            }
            LockResult::Held => {}
            LockResult::Lost { reason } => {
                // A move waiting for its epoch is off: it was never recorded.
                self.pending = None;
                if self.serving() || self.state == State::Activating {
                    self.fall_back(now, &format!("lost the lock: {reason}"), actions);
                }
                // Whatever failed, make sure it is let go: after a transient
                // error the lock may still be ours, and the peer would wait
                // for it forever.
                if self.lock_held {
                    self.lock_held = false;
                    actions.push(Action::ReleaseLock);
                }
            }
        }
    }

    /// The lock is ours: become active if every rule allows it.
    fn acquired(&mut self, now: Time, file_epoch: Epoch, actions: &mut Vec<Action>) {
        let majority = self.gateway_reachable || self.peer.link_up;
        // One shared store is complete by definition: staleness is a
        // replicated-mode notion.
        // With the peer linked and a history at least as long as its own,
        // this server holds everything either of them wrote: its history's
        // epoch counts as confirmed. Alone, only the persisted confirmation does.
        let confirmed = if self.peer.link_up && self.stamp >= self.peer.stamp {
            self.confirmed.max(self.stamp.epoch)
        } else {
            self.confirmed
        };
        let stale = self.config.mode == Mode::Replicated && confirmed < file_epoch && !self.forced;
        let can_lead = match self.config.mode {
            Mode::Shared => self.state == State::Passive,
            Mode::Replicated => {
                matches!(self.state, State::Waiting | State::Passive)
                    && (!self.peer.link_up || self.peer_follows())
            }
        };
        if !can_lead {
            return;
        }
        if !majority {
            self.last_reason =
                "acquired the lock but reaches neither the peer nor the gateway".into();
            self.next_lock_try = now + self.timings().passive_lock_ms;
            if self.state == State::Passive && self.config.mode == Mode::Replicated {
                self.transition(now, State::Waiting, "no majority", actions);
            }
            return;
        }
        if stale {
            actions.push(Action::Log(format!(
                "{} Server is a stale replica: its history is complete only to epoch {}, the lock file records epoch {}; \
                 it will not become active on its own (twinmq promote --force overrides and says what may be lost)",
                self.config.role, confirmed, file_epoch
            )));
            self.last_reason = "stale replica".into();
            self.next_lock_try = now + self.timings().passive_lock_ms;
            if self.state == State::Passive {
                self.transition(now, State::Waiting, "stale replica", actions);
            }
            return;
        }
        self.forced = false;
        let next = match (self.config.mode, self.peer.link_up) {
            (Mode::Shared, _) => Next {
                to: State::Activating,
                reason: "acquired the lock",
                then: Some(Action::Recover),
            },
            (Mode::Replicated, true) => Next {
                to: State::ActiveSync,
                reason: "acquired the lock; the peer follows",
                then: Some(Action::StartSync { sender: true }),
            },
            (Mode::Replicated, false) => Next {
                to: State::Standalone,
                reason: "acquired the lock with no peer",
                then: None,
            },
        };
        self.start_epoch(next, actions);
    }

    /// Asks for a new epoch, larger than any seen, to be recorded (lock
    /// file, then journal); `next` happens once it is (`EpochWritten`).
    /// Nothing is confirmed or served in it before.
    fn start_epoch(&mut self, next: Next, actions: &mut Vec<Action>) {
        if let Some((_, pending)) = &mut self.pending {
            // One epoch write at a time: the newest intention rides on it.
            *pending = next;
            return;
        }
        let epoch = Epoch(self.epoch.get().max(self.stamp.epoch.get()) + 1);
        self.epoch = epoch;
        self.pending = Some((epoch, next));
        actions.push(Action::WriteEpoch(epoch));
    }

    /// The new epoch is recorded: confirm it and make the move it was for.
    fn epoch_written(&mut self, now: Time, epoch: Epoch, actions: &mut Vec<Action>) {
        if self
            .pending
            .as_ref()
            .is_none_or(|(pending, _)| *pending != epoch)
        {
            return;
        }
        let (_, next) = self.pending.take().expect("checked");
        if !self.lock_held {
            return;
        }
        self.stamp.epoch = self.stamp.epoch.max(epoch);
        self.confirmed = epoch;
        self.next_lock_check = now + self.timings().active_lock_ms;
        actions.push(Action::ConfirmEpoch(epoch));
        self.transition(now, next.to, next.reason, actions);
        actions.extend(next.then);
    }

    /// Stops serving (before the lock goes: the peer may promote the instant
    /// it gets it) and returns to the waiting state of the mode.
    fn fall_back(&mut self, now: Time, reason: &str, actions: &mut Vec<Action>) {
        let to = match self.config.mode {
            Mode::Replicated => State::Waiting,
            Mode::Shared => State::Passive,
        };
        self.pending = None;
        self.transition(now, to, reason, actions);
        if self.lock_held {
            self.lock_held = false;
            actions.push(Action::ReleaseLock);
        }
        self.next_lock_try = now + self.timings().passive_lock_ms;
    }

    fn transition(&mut self, now: Time, to: State, reason: &str, actions: &mut Vec<Action>) {
        if to == self.state {
            return;
        }
        let was_serving = self.serving();
        self.previous = self.state;
        self.state = to;
        self.since = now;
        self.last_reason = reason.to_owned();
        if was_serving && !self.serving() {
            actions.push(Action::StopServing);
        }
        actions.push(Action::Log(format!(
            "{} Server switched to {to}",
            self.config.role
        )));
        if self.peer.link_up {
            actions.push(Action::SendState {
                state: to,
                previous: self.previous,
                stamp: self.stamp,
            });
        }
        if !was_serving && self.serving() {
            actions.push(Action::StartServing);
        }
    }
}

#[cfg(test)]
mod tests;
