//! Seeded simulation of an HA pair driven by the real state machine, with a
//! simulated clock, network (delays, duplicates, partitions both ways and one
//! way), lock service (leases, grace period), gateways, catch-up, client
//! writes, crashes and restarts.
//!
//! Checked at every step: at most one server serves; the lock file's epoch
//! only grows; no server starts an epoch while stale. After the faults heal:
//! the pair converges to ACTIVE/PASSIVE within a bound, and every
//! acknowledged write is in the active server's history.
//!
//! `TWINMQ_SIM_SEEDS=N` runs N seeds per mode (default 2000 each); a failure prints `SEED=…`, and `TWINMQ_SEED=…` replays that seed.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use twinmq::ha::machine::{
    Action, Config, Input, LockResult, Machine, Mode, Role, Stamp, State, Time, Timings,
};
use twinmq::ids::{Epoch, Offset};

const STEP_MS: Time = 10;
const FAULT_PHASE_MS: Time = 12_000;
const CONVERGE_MS: Time = 10_000;
/// How long the converged pair must stay ACTIVE/PASSIVE.
const STABLE_MS: Time = 1_000;
const TIMINGS: Timings = Timings {
    ping_ms: 100,
    heartbeat_misses_max: 3,
    active_lock_ms: 100,
    passive_lock_ms: 250,
    max_wait_ms: 5000,
};
/// A holder cut off from the lock service loses it after this long...
const LEASE_MS: Time = 100;
/// ...and nobody else may take it for this long after (NFSv4's grace).
const GRACE_MS: Time = 150;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// An epoch start, naming the server that started it (the record is
    /// byte-identical on the replica, so both know who).
    Epoch(u64, usize),
    Write(u64),
}

fn stamp(journal: &[Entry]) -> Stamp {
    let epoch = journal.iter().rev().find_map(|e| match e {
        Entry::Epoch(n, _) => Some(*n),
        Entry::Write(_) => None,
    });
    Stamp {
        epoch: Epoch(epoch.unwrap_or(0)),
        end: Offset(journal.len() as u64),
    }
}

#[derive(Debug)]
struct Node {
    role: Role,
    machine: Option<Machine>,
    /// Survives crashes (its own disk; unused in shared mode).
    journal: Vec<Entry>,
    confirmed: u64,
}

#[derive(Debug, Clone)]
enum Event {
    Input(usize, Input),
    Connected,
    SyncDone(usize),
    Recovered(usize),
}

struct World {
    mode: Mode,
    seed: u64,
    now: Time,
    rng: StdRng,
    nodes: [Node; 2],
    connected: bool,
    /// `cut[a]`: messages from a to the other are dropped.
    cut: [bool; 2],
    /// Per direction, the time of the last delivery (TCP keeps order).
    last_delivery: [Time; 2],
    events: BTreeMap<(Time, u64), Event>,
    event_seq: u64,
    lock_holder: Option<usize>,
    lock_file_epoch: u64,
    lock_unreachable: [Option<Time>; 2],
    lock_available_at: Time,
    gateway_up: [bool; 2],
    shared_journal: Vec<Entry>,
    acked: HashSet<u64>,
    next_write: u64,
    trace: Vec<String>,
}

impl World {
    fn new(mode: Mode, seed: u64) -> World {
        let node = |role| Node {
            role,
            machine: None,
            journal: Vec::new(),
            confirmed: 0,
        };
        let mut world = World {
            mode,
            seed,
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            nodes: [node(Role::Primary), node(Role::Secondary)],
            connected: false,
            cut: [false; 2],
            last_delivery: [0; 2],
            events: BTreeMap::new(),
            event_seq: 0,
            lock_holder: None,
            lock_file_epoch: 0,
            lock_unreachable: [None; 2],
            lock_available_at: 0,
            gateway_up: [true; 2],
            shared_journal: Vec::new(),
            acked: HashSet::new(),
            next_write: 0,
            trace: Vec::new(),
        };
        for n in 0..2 {
            world.start(n);
        }
        world
    }

    fn fail(&self, what: &str) -> ! {
        let keep = std::env::var("TWINMQ_TRACE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        let tail: Vec<_> = self.trace.iter().rev().take(keep).rev().collect();
        panic!(
            "SEED={} mode {:?} at t={}: {what}\nlast events:\n{}",
            self.seed,
            self.mode,
            self.now,
            tail.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("t={} {line}", self.now));
        if self.trace.len() > 20_000 {
            self.trace.drain(..10_000);
        }
    }

    fn history(&self, n: usize) -> &Vec<Entry> {
        match self.mode {
            Mode::Replicated => &self.nodes[n].journal,
            Mode::Shared => &self.shared_journal,
        }
    }

    fn start(&mut self, n: usize) {
        let config = Config {
            mode: self.mode,
            role: self.nodes[n].role,
            precedence: n as u8,
            timings: TIMINGS,
        };
        let stamp = stamp(self.history(n));
        // Known complete up to the newest epoch this server started itself,
        // even if it crashed before persisting the confirmation.
        let started = self.history(n).iter().filter_map(|e| match e {
            Entry::Epoch(epoch, by) if *by == n => Some(*epoch),
            _ => None,
        });
        let confirmed = Epoch(started.chain([self.nodes[n].confirmed]).max().unwrap_or(0));
        self.nodes[n].confirmed = confirmed.get();
        self.nodes[n].machine = Some(Machine::new(config, self.now, stamp, confirmed));
        self.log(format!(
            "node {n} starts with {stamp:?}, confirmed {confirmed}"
        ));
    }

    fn alive(&self, n: usize) -> bool {
        self.nodes[n].machine.is_some()
    }

    fn state(&self, n: usize) -> Option<State> {
        self.nodes[n].machine.as_ref().map(Machine::state)
    }

    fn schedule(&mut self, delay: Time, event: Event) {
        self.event_seq += 1;
        self.events
            .insert((self.now + delay, self.event_seq), event);
    }

    /// A message over the HA link from `from`, in order, unless cut.
    fn send(&mut self, from: usize, input: Input) {
        if !self.connected || self.cut[from] {
            return;
        }
        let at = (self.now + self.rng.random_range(1..20)).max(self.last_delivery[from]);
        self.last_delivery[from] = at;
        let to = 1 - from;
        let copies = if self.rng.random_bool(0.05) { 2 } else { 1 };
        for _ in 0..copies {
            self.event_seq += 1;
            self.events
                .insert((at, self.event_seq), Event::Input(to, input.clone()));
        }
    }

    fn disconnect(&mut self, by: usize) {
        if self.connected {
            self.connected = false;
            let other = 1 - by;
            if !self.cut[by] && self.alive(other) {
                let delay = self.rng.random_range(1..20);
                self.schedule(delay, Event::Input(other, Input::PeerDisconnected));
            }
        }
    }

    fn feed(&mut self, n: usize, input: Input) {
        let Some(machine) = self.nodes[n].machine.as_mut() else {
            return;
        };
        let mut actions = Vec::new();
        machine.step(self.now, input.clone(), &mut actions);
        if !matches!(input, Input::Tick) {
            self.log(format!("node {n} <- {input:?} => {:?}", self.state(n)));
        }
        for action in actions {
            self.act(n, action);
        }
        self.check_serving();
    }

    fn act(&mut self, n: usize, action: Action) {
        let delay = self.rng.random_range(1..10);
        match action {
            Action::ConnectPeer => {
                if !self.connected && self.alive(1 - n) && !self.cut[0] && !self.cut[1] {
                    self.schedule(delay, Event::Connected);
                }
            }
            Action::DisconnectPeer => self.disconnect(n),
            Action::SendState {
                state,
                previous,
                stamp,
            } => self.send(
                n,
                Input::PeerState {
                    state,
                    previous,
                    stamp,
                },
            ),
            Action::SendHeartbeat { state, stamp } => self.send(
                n,
                Input::PeerState {
                    state,
                    previous: state,
                    stamp,
                },
            ),
            Action::TryLock => {
                let result = if self.lock_unreachable[n].is_some() {
                    LockResult::Busy
                } else if self.lock_holder.is_none() && self.now >= self.lock_available_at
                    || self.lock_holder == Some(n)
                {
                    self.lock_holder = Some(n);
                    LockResult::Acquired {
                        file_epoch: Epoch(self.lock_file_epoch),
                    }
                } else {
                    LockResult::Busy
                };
                self.schedule(delay, Event::Input(n, Input::Lock(result)));
            }
            Action::RevalidateLock => {
                let ok = self.lock_holder == Some(n) && self.lock_unreachable[n].is_none();
                let result = if ok {
                    LockResult::Held
                } else {
                    LockResult::Lost {
                        reason: "lock lost".into(),
                    }
                };
                self.schedule(delay, Event::Input(n, Input::Lock(result)));
            }
            Action::ReleaseLock => {
                if self.lock_holder == Some(n) {
                    self.lock_holder = None;
                }
            }
            Action::WriteEpoch(epoch) => {
                // Written under the lock: fails when the lock is not ours
                // any more or the lock service is out of reach.
                if self.lock_holder != Some(n) || self.lock_unreachable[n].is_some() {
                    let lost = LockResult::Lost {
                        reason: "could not write the lock file".into(),
                    };
                    self.schedule(delay, Event::Input(n, Input::Lock(lost)));
                    return;
                }
                if epoch.get() <= self.lock_file_epoch {
                    self.fail(&format!(
                        "epoch went back: {epoch} after {}",
                        self.lock_file_epoch
                    ));
                }
                // The rule the machine promises: never start an epoch stale.
                // (With the peer linked, a history at least as long as the
                // peer's proves completeness; alone, only the confirmation.)
                let proven = self.connected && stamp(self.history(n)) >= stamp(self.history(1 - n));
                if self.mode == Mode::Replicated
                    && !proven
                    && self.nodes[n].confirmed < self.lock_file_epoch
                {
                    self.fail(&format!(
                        "stale node {n} (confirmed {}) started epoch {epoch} over {}",
                        self.nodes[n].confirmed, self.lock_file_epoch
                    ));
                }
                self.lock_file_epoch = epoch.get();
                self.append(n, Entry::Epoch(epoch.get(), n));
                self.schedule(delay, Event::Input(n, Input::EpochWritten(epoch)));
            }
            Action::ConfirmEpoch(epoch) => self.nodes[n].confirmed = epoch.get(),
            Action::PingGateway => {
                let reachable = self.gateway_up[n];
                self.schedule(delay, Event::Input(n, Input::Gateway { reachable }));
            }
            Action::StartSync { sender: true } => {
                let after = self.rng.random_range(20..200);
                self.schedule(after, Event::SyncDone(n));
            }
            Action::Recover => {
                let after = self.rng.random_range(10..50);
                self.schedule(after, Event::Recovered(n));
            }
            Action::StartSync { sender: false }
            | Action::StartServing
            | Action::StopServing
            | Action::Log(_) => {}
        }
    }

    /// Appends to the history `n` writes to, and tells the machine.
    fn append(&mut self, n: usize, entry: Entry) {
        match self.mode {
            Mode::Replicated => self.nodes[n].journal.push(entry),
            Mode::Shared => self.shared_journal.push(entry),
        }
        let stamp = stamp(self.history(n));
        if self.nodes[n].machine.is_some() {
            // A passive may confirm what reached its journal.
            self.feed(n, Input::LocalStamp(stamp));
        }
    }

    fn check_serving(&self) {
        let serving: Vec<usize> = (0..2)
            .filter(|&n| self.nodes[n].machine.as_ref().is_some_and(Machine::serving))
            .collect();
        if serving.len() > 1 {
            self.fail("both servers serve at once");
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Input(n, input) => self.feed(n, input),
            Event::Connected => {
                if !self.connected && self.alive(0) && self.alive(1) && !self.cut[0] && !self.cut[1]
                {
                    self.connected = true;
                    self.last_delivery = [self.now; 2];
                    let view = |w: &World, n: usize| {
                        let m = w.nodes[n].machine.as_ref().expect("alive");
                        (m.state(), stamp(w.history(n)))
                    };
                    let (s0, st0) = view(self, 0);
                    let (s1, st1) = view(self, 1);
                    self.feed(
                        0,
                        Input::PeerConnected {
                            state: s1,
                            stamp: st1,
                            precedence: 1,
                        },
                    );
                    self.feed(
                        1,
                        Input::PeerConnected {
                            state: s0,
                            stamp: st0,
                            precedence: 0,
                        },
                    );
                }
            }
            Event::SyncDone(n) => {
                let other = 1 - n;
                let ready = self.state(n) == Some(State::ActiveSync)
                    && self.state(other) == Some(State::PassiveSync)
                    && self.connected;
                if ready {
                    if self.mode == Mode::Replicated {
                        // Catch-up: the passive's history becomes the active's
                        // (its diverged tail cut, the missing range copied).
                        self.nodes[other].journal = self.nodes[n].journal.clone();
                        let stamp = stamp(&self.nodes[other].journal);
                        self.feed(other, Input::LocalStamp(stamp));
                    }
                    self.feed(n, Input::SyncComplete);
                }
            }
            Event::Recovered(n) => self.feed(n, Input::Recovered),
        }
    }

    /// Client writes at whichever server serves.
    fn client_writes(&mut self) {
        for n in 0..2 {
            let Some(state) = self.state(n) else { continue };
            if !state.serves() || !self.rng.random_bool(0.3) {
                continue;
            }
            self.next_write += 1;
            let id = self.next_write;
            let other = 1 - n;
            match (self.mode, state) {
                (Mode::Shared, _) | (Mode::Replicated, State::Standalone | State::ActiveSync) => {
                    self.append(n, Entry::Write(id));
                    self.acked.insert(id);
                    self.log(format!("node {n} acks write {id} alone in {state}"));
                }
                (Mode::Replicated, _) => {
                    // Dual write: acknowledged only with the passive's copy.
                    self.append(n, Entry::Write(id));
                    if self.connected && !self.cut[n] && self.state(other) == Some(State::Passive) {
                        self.append(other, Entry::Write(id));
                        self.acked.insert(id);
                        self.log(format!("node {n} acks write {id} replicated"));
                    }
                }
            }
        }
    }

    fn lock_leases(&mut self) {
        if let Some(holder) = self.lock_holder
            && let Some(since) = self.lock_unreachable[holder]
            && self.now - since >= LEASE_MS
        {
            self.lock_holder = None;
            self.lock_available_at = self.now + GRACE_MS;
            self.log(format!("lock lease of node {holder} expired"));
        }
    }

    fn advance(&mut self) {
        self.now += STEP_MS;
        while let Some((&(at, seq), _)) = self.events.iter().next() {
            if at > self.now {
                break;
            }
            let event = self.events.remove(&(at, seq)).expect("present");
            self.handle(event);
        }
        self.lock_leases();
        for n in 0..2 {
            self.feed(n, Input::Tick);
        }
        self.client_writes();
    }

    fn inject_fault(&mut self) {
        let n = self.rng.random_range(0..2usize);
        let fault = self.rng.random_range(0..9);
        self.log(format!("FAULT {fault} on node {n}"));
        match fault {
            0 => {
                if self.alive(n) {
                    self.nodes[n].machine = None;
                    if self.lock_holder == Some(n) {
                        self.lock_holder = None; // process death frees an OFD lock
                    }
                    self.disconnect(n);
                }
            }
            1 => {
                if !self.alive(n) {
                    self.start(n);
                }
            }
            2 => {
                self.cut = [true, true];
            }
            3 => self.cut[n] = true,
            4 => self.cut = [false, false],
            5 => self.gateway_up[n] = false,
            6 => self.gateway_up[n] = true,
            7 => {
                if self.lock_unreachable[n].is_none() {
                    self.lock_unreachable[n] = Some(self.now);
                }
            }
            _ => self.lock_unreachable[n] = None,
        }
    }

    fn heal(&mut self) {
        self.log("HEAL".into());
        self.cut = [false, false];
        self.gateway_up = [true, true];
        self.lock_unreachable = [None, None];
        for n in 0..2 {
            if !self.alive(n) {
                self.start(n);
            }
        }
    }

    /// Linked, one ACTIVE and one PASSIVE.
    fn converged(&self) -> bool {
        let states = [self.state(0), self.state(1)];
        self.connected
            && states.contains(&Some(State::Active))
            && states.contains(&Some(State::Passive))
    }

    fn run(mut self) {
        while self.now < FAULT_PHASE_MS {
            if self.rng.random_bool(0.02) {
                self.inject_fault();
            }
            self.advance();
        }
        self.heal();
        // Converged = ACTIVE/PASSIVE over the link, held for a while.
        let deadline = self.now + CONVERGE_MS;
        let mut stable_since = None;
        while stable_since.is_none_or(|since| self.now - since < STABLE_MS) {
            if self.now >= deadline {
                self.fail(&format!(
                    "no convergence within {CONVERGE_MS} ms: {:?} / {:?}",
                    self.state(0),
                    self.state(1)
                ));
            }
            self.advance();
            stable_since = match (self.converged(), stable_since) {
                (true, None) => Some(self.now),
                (true, since) => since,
                (false, _) => None,
            };
        }
        let active = (0..2)
            .find(|&n| self.state(n) == Some(State::Active))
            .expect("converged");
        let history: HashSet<u64> = self
            .history(active)
            .iter()
            .filter_map(|e| match e {
                Entry::Write(id) => Some(*id),
                Entry::Epoch(..) => None,
            })
            .collect();
        let mut lost: Vec<_> = self
            .acked
            .iter()
            .filter(|id| !history.contains(id))
            .copied()
            .collect();
        lost.sort_unstable();
        if !lost.is_empty() {
            self.fail(&format!("acknowledged writes lost: {lost:?}"));
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("TWINMQ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("TWINMQ_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    (0..count).collect()
}

#[test]
fn replicated_pair_survives_random_crashes_partitions_and_lock_loss() {
    for seed in seeds() {
        World::new(Mode::Replicated, seed).run();
    }
}

#[test]
fn shared_pair_survives_random_crashes_partitions_and_lock_loss() {
    for seed in seeds() {
        World::new(Mode::Shared, seed).run();
    }
}
