//! The control thread of an HA server: the only impure part of the HA
//! control plane. Every 10 ms it feeds the state machine the time, what
//! the peer link, the lock file and the gateway pinger reported, and carries
//! out the actions it returns: lock operations, pings, link messages, and
//! starting, gating and stopping the data plane.
//!
//! ```text
//!   link events ─┐                          ┌─▶ lock file (OFD lock)
//!   gateway ─────┼─▶ Machine::step(now, …) ─┼─▶ link messages
//!   ticks ───────┘                          ├─▶ gateway pings (pinger thread)
//!                                           └─▶ data plane: start (recover) / serve / stop
//! ```
//! Shared mode: the passive does not open the shared journals at all; a
//! redirector on the client port answers HELLO with NOT_ACTIVE. On
//! ACTIVATING the data plane recovers the journals in the new epoch (and
//! refuses if they already hold a newer one); on losing the lock it stops
//! before the lock is released.

use super::gateway;
use super::link::{Link, LinkConfig, LinkEvent, PeerMessage, StreamDialer};
use super::lock_file::{Acquire, LockContent, LockFile};
use super::machine::{self, Action, Input, LockResult, Machine, Mode, Stamp, State, Time, Timings};
use crate::admin::{Control, Status};
use crate::config::{HaConfig, HaMode, HaRole, Profile};
use crate::ids::{Epoch, Offset};
use crate::server::{Activation, DataPlane};
use crate::shard::ShardControl;
use std::net::TcpStream;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often the control thread steps the machine.
const TICK: Duration = Duration::from_millis(10);
/// How long an admin status request waits for the control thread to build
/// a fresh status before it takes the last one.
const STATUS_WAIT: Duration = Duration::from_secs(1);
/// File (in the data directory) holding the confirmed epoch.
const CONFIRMED_FILE: &str = "ha-confirmed-epoch";
/// How long every shard has to make a new epoch's start record durable.
const EPOCH_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before a passive dials a shard's replication stream again after
/// the last one failed or closed.
const STREAM_REDIAL: Duration = Duration::from_millis(200);

/// Why an HA server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Lock(#[from] super::lock_file::LockError),
    #[error("HA port: {0}")]
    Link(std::io::Error),
    #[error("client port: {0}")]
    Redirector(std::io::Error),
    #[error("cannot read {}: {source}", path.display())]
    Confirmed {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HA control thread panicked")]
    Panicked,
    /// Replicated mode: the journals could not be opened.
    #[error("{0}")]
    DataPlane(Box<crate::server::ServerError>),
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the admin endpoint sees of an HA server.
#[derive(Debug)]
pub struct HaControl {
    /// The last status the control thread published, and how many it has.
    status: Mutex<(Status, u64)>,
    published: Condvar,
    /// An admin request waits for a status; the control thread builds one
    /// on its next tick only then (building it takes every shard's stats
    /// lock and reads the lock file and /proc: too much for every 10 ms).
    wanted: AtomicBool,
    stop: AtomicBool,
    /// `promote --force` asked for and not yet fed to the machine; the
    /// control thread takes it on its next tick.
    promote: AtomicBool,
}

impl Control for HaControl {
    /// A status built after the request, or the last one published if the
    /// control thread is busy in a transition for [`STATUS_WAIT`].
    fn status(&self) -> Status {
        self.fresh_status().0
    }

    fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Decided on a status built after the request, never on an old one.
    fn promote_force(&self) -> Result<String, String> {
        let (status, fresh) = self.fresh_status();
        if !fresh {
            return Err("the HA control thread is busy in a transition; ask again".to_owned());
        }
        let message = crate::admin::forced_promotion(&status)?;
        self.promote.store(true, Ordering::SeqCst);
        Ok(message)
    }
}

impl HaControl {
    /// Asks the control thread for a status and waits for one built after
    /// the request: it and `true`, or the last published one and `false` if
    /// none comes within [`STATUS_WAIT`].
    fn fresh_status(&self) -> (Status, bool) {
        let published = self.status.lock().expect("status lock");
        let asked_at = published.1;
        self.wanted.store(true, Ordering::SeqCst);
        let (published, wait) = self
            .published
            .wait_timeout_while(published, STATUS_WAIT, |(_, count)| *count == asked_at)
            .expect("status lock");
        (published.0.clone(), !wait.timed_out())
    }

    /// Whether a status request is waiting (and forgets it).
    fn take_wanted(&self) -> bool {
        self.wanted.swap(false, Ordering::SeqCst)
    }

    fn publish(&self, status: Status) {
        let mut published = self.status.lock().expect("status lock");
        *published = (status, published.1 + 1);
        self.published.notify_all();
    }
}

/// A running HA control thread.
#[derive(Debug)]
pub struct Driver {
    control: Arc<HaControl>,
    thread: Option<JoinHandle<Result<(), DriverError>>>,
}

impl Driver {
    /// Checks the lock file (a missing or unusable one stops start-up) and
    /// starts the control thread.
    pub fn start(profile: Profile) -> Result<Driver, DriverError> {
        let ha = profile.ha.clone().expect("an HA profile");
        let lock = LockFile::open(&ha.lock_file, &ha.cluster_id)?;
        std::fs::create_dir_all(&profile.server.data_dir).map_err(|source| {
            DriverError::Confirmed {
                path: profile.server.data_dir.clone(),
                source,
            }
        })?;
        let confirmed_path = profile.server.data_dir.join(CONFIRMED_FILE);
        let confirmed = match std::fs::read_to_string(&confirmed_path) {
            Ok(text) => text.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(source) => {
                return Err(DriverError::Confirmed {
                    path: confirmed_path,
                    source,
                });
            }
        };
        let (link_tx, link_rx) = mpsc::channel();
        let shards = profile.server.shard_count() as u32;
        let link_config = LinkConfig::from_config(
            &profile.server.name,
            &ha,
            &profile.net.ha,
            shards,
            profile.journal.segment_bytes,
        );
        // Replicated: this server's own journals run from the start (a
        // passive appends what the active streams), their listeners answer
        // NOT_ACTIVE until it serves. Shared: nothing is opened until this
        // server holds the lock; a redirector answers meanwhile.
        let (redirector, plane) = if ha.mode == HaMode::Replicated {
            let plane = DataPlane::start(&profile, Activation::Deferred, false)
                .map_err(|e| DriverError::DataPlane(Box::new(e)))?;
            *plane.shared().active_hint.lock().expect("hint lock") =
                ha.peer_client.map(|a| a.to_string()).unwrap_or_default();
            (None, Some(plane))
        } else {
            let redirector = Redirector::start(profile.server.client_listen, ha.peer_client)
                .map_err(DriverError::Redirector)?;
            (Some(redirector), None)
        };
        let link = Link::start(link_config, link_tx).map_err(DriverError::Link)?;
        let control = Arc::new(HaControl {
            status: Mutex::new((passive_status(&profile, &ha), 0)),
            published: Condvar::new(),
            wanted: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            promote: AtomicBool::new(false),
        });
        tracing::info!(
            server = %profile.server.name, role = %ha.role, mode = %ha.mode,
            worst_case_failover_ms = ha.worst_case_failover().as_millis() as u64,
            "HA server starting; worst-case failover with these timings: {} ms",
            ha.worst_case_failover().as_millis()
        );
        let control_for_thread = control.clone();
        let thread = std::thread::Builder::new()
            .name("twinmq-ha".into())
            .spawn(move || {
                let mut run = Run::new(
                    profile,
                    ha,
                    lock,
                    link,
                    link_rx,
                    redirector,
                    plane,
                    confirmed,
                    confirmed_path,
                    control_for_thread,
                );
                run.run()
            })
            .expect("spawn HA control thread");
        Ok(Driver {
            control,
            thread: Some(thread),
        })
    }

    pub fn control(&self) -> Arc<dyn Control> {
        self.control.clone()
    }

    /// Waits for the control thread (after `shutdown`).
    pub fn wait(&mut self) -> Result<(), crate::server::ServerError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result.map_err(crate::server::ServerError::from),
            Some(Err(_)) => Err(DriverError::Panicked.into()),
            None => Ok(()),
        }
    }
}

fn role_name(role: HaRole) -> &'static str {
    match role {
        HaRole::Primary => "primary",
        HaRole::Secondary => "secondary",
    }
}

fn passive_status(profile: &Profile, ha: &HaConfig) -> Status {
    Status {
        server: profile.server.name.clone(),
        role: role_name(ha.role).into(),
        state: "WAITING".into(),
        pid: std::process::id(),
        client_listen: profile.server.client_listen.to_string(),
        shards: profile.server.shard_count(),
        mode: ha.mode.to_string(),
        peer_state: Some("DEAD".into()),
        ..Status::default()
    }
}

/// Answers HELLO on the client port with NOT_ACTIVE while this server does
/// not serve (shared mode: the data plane, and its listeners, are down).
#[derive(Debug)]
struct Redirector {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Redirector {
    fn start(addr: SocketAddr, active: Option<SocketAddr>) -> std::io::Result<Redirector> {
        let listener = crate::net::listen(addr, &crate::net::SocketOptions::default(), true)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let active = active.map(|a| a.to_string()).unwrap_or_default();
        let thread = std::thread::Builder::new()
            .name("twinmq-redirect".into())
            .spawn(move || redirect_loop(listener, &active, &stop_flag))?;
        Ok(Redirector {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Redirector {
    fn drop(&mut self) {
        self.stop();
    }
}

fn redirect_loop(listener: TcpListener, active: &str, stop: &AtomicBool) {
    use std::io::Write;
    let mut frame = Vec::new();
    crate::protocol::Frame::NotActive(crate::protocol::NotActive {
        active: active.to_owned(),
    })
    .encode(&mut frame)
    .expect("encode NOT_ACTIVE");
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, _)) => {
                // The answer does not depend on what the client says.
                let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = stream.write_all(&frame);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// The control thread's state.
struct Run {
    profile: Profile,
    /// The HA state and epoch of the last published status: a change is
    /// published unasked, so that the status a request gets while this
    /// thread is busy is at least in the right state.
    published_state: Option<(State, Epoch)>,
    ha: HaConfig,
    machine: Machine,
    lock: LockFile,
    /// What this server last wrote into the lock file (for re-validation).
    written: Option<LockContent>,
    link: Link,
    link_rx: Receiver<LinkEvent>,
    /// The link is up but the peer's first state has not arrived yet.
    link_pending: Option<u32>,
    link_announced: bool,
    gateway_tx: Sender<()>,
    gateway_rx: Receiver<bool>,
    gateway_in_flight: bool,
    redirector: Option<Redirector>,
    plane: Option<DataPlane>,
    /// A data plane being recovered on its own thread (so heartbeats go on).
    activating: Option<Receiver<Result<DataPlane, String>>>,
    confirmed_path: PathBuf,
    control: Arc<HaControl>,
    started: Instant,
    epoch: Epoch,
    /// Replicated mode: streams, roles and history of the shards.
    replicated: Option<Replicated>,
}

/// What the control thread keeps for a replicated pair's data plane.
struct Replicated {
    dialer: StreamDialer,
    dial_tx: Sender<(usize, Result<TcpStream, String>)>,
    dial_rx: Receiver<(usize, Result<TcpStream, String>)>,
    dials: Vec<Dial>,
    /// The machine state whose shard roles were last sent.
    roles_for: Option<State>,
    /// Sum of the shards' progress figures at the last tick.
    progress: u64,
    stamp: Stamp,
}

/// One shard's replication stream, as the passive's dialer sees it.
#[derive(Debug, Clone, Copy)]
struct Dial {
    in_flight: bool,
    /// The shard's count of closed follower streams when the last stream
    /// was handed over: a larger count means that stream is gone.
    handed_at: Option<u64>,
    next_try: Instant,
}

impl Run {
    #[allow(clippy::too_many_arguments)]
    fn new(
        profile: Profile,
        ha: HaConfig,
        lock: LockFile,
        link: Link,
        link_rx: Receiver<LinkEvent>,
        redirector: Option<Redirector>,
        plane: Option<DataPlane>,
        confirmed: u64,
        confirmed_path: PathBuf,
        control: Arc<HaControl>,
    ) -> Run {
        let t = ha.timings();
        let timings = Timings {
            ping_ms: t.ping_interval.as_millis() as u64,
            heartbeat_misses_max: t.heartbeat_misses_max,
            active_lock_ms: t.active_lock_reacquisition_interval.as_millis() as u64,
            passive_lock_ms: t.passive_lock_reacquisition_interval.as_millis() as u64,
            max_wait_ms: t.max_wait_timeout.as_millis() as u64,
        };
        let mode = match ha.mode {
            HaMode::Replicated => Mode::Replicated,
            HaMode::Shared => Mode::Shared,
        };
        let role = match ha.role {
            HaRole::Primary => machine::Role::Primary,
            HaRole::Secondary => machine::Role::Secondary,
        };
        // Shared mode: the history is the shared journal's; its newest
        // epoch is never newer than the lock file's.
        let file_epoch = lock.read().map(|c| c.epoch).unwrap_or(0);
        // Replicated: the history is this server's own journals'.
        let stamp = match &plane {
            Some(plane) => {
                let (epoch, end) = plane.history();
                Stamp {
                    epoch,
                    end: Offset(end),
                }
            }
            None => Stamp {
                epoch: Epoch(file_epoch.max(confirmed)),
                end: Offset::ZERO,
            },
        };
        let replicated = plane.as_ref().map(|plane| {
            let (dial_tx, dial_rx) = mpsc::channel();
            let shards = plane.identity().shards;
            Replicated {
                dialer: link.stream_dialer(),
                dial_tx,
                dial_rx,
                dials: vec![
                    Dial {
                        in_flight: false,
                        handed_at: None,
                        next_try: Instant::now(),
                    };
                    shards
                ],
                roles_for: None,
                progress: 0,
                stamp,
            }
        });
        let config = machine::Config {
            mode,
            role,
            precedence: ha.precedence().min(255) as u8,
            timings,
        };
        let machine = Machine::new(config, 0, stamp, Epoch(confirmed));
        let (gateway_tx, gateway_rx) = pinger(ha.gateway, t.ping_interval / 2);
        Run {
            published_state: None,
            profile,
            machine,
            lock,
            written: None,
            link,
            link_rx,
            link_pending: None,
            link_announced: false,
            gateway_tx,
            gateway_rx,
            gateway_in_flight: false,
            redirector,
            plane,
            activating: None,
            confirmed_path,
            control,
            started: Instant::now(),
            epoch: Epoch(file_epoch),
            ha,
            replicated,
        }
    }

    fn now(&self) -> Time {
        self.started.elapsed().as_millis() as Time
    }

    fn run(&mut self) -> Result<(), DriverError> {
        // Told once if the peer has not shown up after a few heartbeat
        // timeouts: the usual cause is a backup never started or misconfigured.
        let lonely_after = Duration::from_millis(self.ha.ping_interval_ms.into())
            * (self.ha.heartbeat_misses_max * 5);
        let mut lonely_told = false;
        while !self.control.stopping() {
            if !lonely_told && !self.link_announced && self.started.elapsed() > lonely_after {
                lonely_told = true;
                tracing::warn!(
                    "Backup Server not Connected. Check configuration or Start backup Server ..."
                );
            }
            if self.link_announced {
                lonely_told = true;
            }
            let mut inputs = vec![Input::Tick];
            while let Ok(event) = self.link_rx.try_recv() {
                inputs.extend(self.link_event(event));
            }
            while let Ok(reachable) = self.gateway_rx.try_recv() {
                self.gateway_in_flight = false;
                inputs.push(Input::Gateway { reachable });
            }
            if let Some(result) = self.activating.as_ref().and_then(|rx| rx.try_recv().ok()) {
                self.activating = None;
                inputs.push(self.activated(result));
            }
            if self.control.promote.swap(false, Ordering::SeqCst) {
                inputs.push(Input::Operator(machine::Operator::PromoteForce));
            }
            inputs.extend(self.replication_inputs());
            if self.plane.as_ref().is_some_and(DataPlane::any_stopped) {
                tracing::error!("a shard stopped: this server stops serving");
                inputs.push(Input::Lock(LockResult::Lost {
                    reason: "a shard stopped".into(),
                }));
            }
            for input in inputs {
                self.step(input);
            }
            let state = Some((self.machine.state(), self.machine.epoch()));
            if self.control.take_wanted() || state != self.published_state {
                self.published_state = state;
                self.publish();
            }
            std::thread::sleep(TICK);
        }
        self.step(Input::Lock(LockResult::Lost {
            reason: "shutting down".into(),
        }));
        if let Some(plane) = self.plane.take() {
            let _ = plane.stop();
        }
        self.lock.release();
        self.link.disconnect();
        tracing::info!("HA server stopped");
        Ok(())
    }

    fn link_event(&mut self, event: LinkEvent) -> Vec<Input> {
        match event {
            LinkEvent::Up {
                peer_precedence, ..
            } => {
                self.link_pending = Some(peer_precedence);
                self.link_announced = false;
                let snapshot = self.machine.snapshot();
                let stamp = Stamp {
                    epoch: snapshot.epoch,
                    end: Offset::ZERO,
                };
                self.link.send(&PeerMessage::State {
                    state: snapshot.state,
                    previous: snapshot.previous,
                    stamp,
                });
                vec![]
            }
            LinkEvent::Message(message) => {
                let (state, previous, stamp) = match message {
                    PeerMessage::State {
                        state,
                        previous,
                        stamp,
                    } => (state, previous, stamp),
                    PeerMessage::Heartbeat { state, stamp } => (state, state, stamp),
                };
                match (self.link_announced, self.link_pending) {
                    (false, Some(precedence)) => {
                        self.link_announced = true;
                        vec![Input::PeerConnected {
                            state,
                            stamp,
                            precedence: precedence.min(255) as u8,
                        }]
                    }
                    (true, _) => vec![Input::PeerState {
                        state,
                        previous,
                        stamp,
                    }],
                    (false, None) => vec![],
                }
            }
            LinkEvent::Down { reason } => {
                tracing::debug!(%reason, "HA link down");
                self.link_pending = None;
                let announced = std::mem::take(&mut self.link_announced);
                if announced {
                    vec![Input::PeerDisconnected]
                } else {
                    vec![]
                }
            }
            LinkEvent::Stream { shard, stream } => {
                // Only an active server leads a stream; otherwise dropping
                // the socket closes it and the passive dials again later.
                if let Some(plane) = &self.plane
                    && self.machine.state().serves()
                    && usize::from(shard) < plane.identity().shards
                {
                    plane.control(usize::from(shard), ShardControl::Accept(stream));
                }
                vec![]
            }
        }
    }

    fn step(&mut self, input: Input) {
        let mut actions = Vec::new();
        let now = self.now();
        self.machine.step(now, input, &mut actions);
        let mut follow_ups = Vec::new();
        for action in actions {
            follow_ups.extend(self.act(action));
        }
        self.apply_roles();
        for input in follow_ups {
            self.step(input);
        }
    }

    /// Replicated: what the shards' figures mean for the machine — the
    /// history's stamp, progress of a synchronisation, its completion —
    /// and the passive's stream dialing.
    fn replication_inputs(&mut self) -> Vec<Input> {
        let (Some(plane), Some(rep)) = (&self.plane, &mut self.replicated) else {
            return Vec::new();
        };
        let mut inputs = Vec::new();
        let (epoch, end) = plane.history();
        let stamp = Stamp {
            epoch,
            end: Offset(end),
        };
        if stamp != rep.stamp {
            rep.stamp = stamp;
            inputs.push(Input::LocalStamp(stamp));
        }
        let shards = plane.replication();
        let state = self.machine.state();
        let progress = end + shards.iter().map(|s| s.peer_durable).sum::<u64>();
        if progress != rep.progress {
            rep.progress = progress;
            if matches!(state, State::ActiveSync | State::PassiveSync) {
                inputs.push(Input::Progress);
            }
        }
        if state == State::ActiveSync && shards.iter().all(|s| s.stream_up && s.in_sync) {
            inputs.push(Input::SyncComplete);
        }
        // A passive dials every shard's stream; one that closed (the active
        // went away, or reset it) is dialed again after a pause.
        let following = matches!(state, State::PassiveSync | State::Passive);
        while let Ok((shard, result)) = rep.dial_rx.try_recv() {
            let dial = &mut rep.dials[shard];
            dial.in_flight = false;
            dial.next_try = Instant::now() + STREAM_REDIAL;
            match result {
                Ok(stream) if following => {
                    dial.handed_at = Some(shards[shard].follower_streams_closed);
                    plane.control(shard, ShardControl::Follow(stream));
                }
                Ok(_) => {}
                Err(error) => tracing::debug!(shard, %error, "replication stream dial failed"),
            }
        }
        for (shard, dial) in rep.dials.iter_mut().enumerate() {
            if !following {
                dial.handed_at = None;
                continue;
            }
            let alive = dial
                .handed_at
                .is_some_and(|at| shards[shard].follower_streams_closed <= at);
            if dial.in_flight || alive || Instant::now() < dial.next_try {
                continue;
            }
            dial.in_flight = true;
            let (dialer, tx) = (rep.dialer.clone(), rep.dial_tx.clone());
            std::thread::Builder::new()
                .name("twinmq-ha-dial".into())
                .spawn(move || {
                    let _ = tx.send((shard, dialer.dial(shard as u16)));
                })
                .expect("spawn stream dialer");
        }
        inputs
    }

    /// Replicated: tells the shards the role the machine's state means
    /// (once per state). Passive shards get theirs with their stream.
    fn apply_roles(&mut self) {
        let state = self.machine.state();
        let (Some(plane), Some(rep)) = (&self.plane, &mut self.replicated) else {
            return;
        };
        if rep.roles_for == Some(state) {
            return;
        }
        rep.roles_for = Some(state);
        let refuse_replicated = self.ha.standalone == crate::config::HaStandalone::Refuse;
        let request = |_: usize| match state {
            State::ActiveSync | State::Active => Some(ShardControl::Lead),
            State::Standalone => Some(ShardControl::Solo { refuse_replicated }),
            State::PassiveSync | State::Passive => None,
            _ => Some(ShardControl::Idle),
        };
        for shard in 0..plane.identity().shards {
            if let Some(request) = request(shard) {
                plane.control(shard, request);
            }
        }
    }

    /// Carries out one action; returns inputs it produced at once.
    fn act(&mut self, action: Action) -> Option<Input> {
        match action {
            Action::ConnectPeer => self.link.connect(),
            Action::DisconnectPeer => self.link.disconnect(),
            Action::SendState {
                state,
                previous,
                stamp,
            } => {
                self.link.send(&PeerMessage::State {
                    state,
                    previous,
                    stamp,
                });
            }
            Action::SendHeartbeat { state, stamp } => {
                self.link.send(&PeerMessage::Heartbeat { state, stamp });
            }
            Action::TryLock => {
                let result = match self.lock.try_acquire() {
                    Ok(Acquire::Acquired { file }) => LockResult::Acquired {
                        file_epoch: Epoch(file.epoch),
                    },
                    Ok(Acquire::Busy) => LockResult::Busy,
                    Err(error) => {
                        tracing::warn!(%error, "lock attempt failed");
                        LockResult::Busy
                    }
                };
                return Some(Input::Lock(result));
            }
            Action::RevalidateLock => {
                let result = match &self.written {
                    Some(expected) => match self.lock.revalidate(expected) {
                        Ok(()) => LockResult::Held,
                        Err(error) => LockResult::Lost {
                            reason: error.to_string(),
                        },
                    },
                    None => LockResult::Lost {
                        reason: "no epoch recorded".into(),
                    },
                };
                return Some(Input::Lock(result));
            }
            Action::ReleaseLock => {
                self.lock.release();
                self.written = None;
            }
            Action::WriteEpoch(epoch) => {
                let content = LockContent {
                    cluster_id: self.ha.cluster_id.clone(),
                    epoch: epoch.get(),
                    holder: self.profile.server.name.clone(),
                    time_ms: now_unix_ms(),
                };
                return Some(match self.lock.write(&content) {
                    Ok(()) => {
                        self.written = Some(content);
                        self.epoch = epoch;
                        // Replicated: the epoch opens in every journal
                        // before anything is served or confirmed in it.
                        let opened = match (&self.plane, &self.replicated) {
                            (Some(plane), Some(_)) => plane.begin_epoch(epoch, EPOCH_WRITE_TIMEOUT),
                            _ => Ok(()),
                        };
                        match opened {
                            Ok(()) => Input::EpochWritten(epoch),
                            Err(reason) => Input::Lock(LockResult::Lost {
                                reason: format!("opening epoch {epoch} in the journals: {reason}"),
                            }),
                        }
                    }
                    Err(error) => Input::Lock(LockResult::Lost {
                        reason: format!("recording epoch {epoch}: {error}"),
                    }),
                });
            }
            Action::ConfirmEpoch(epoch) => {
                if let Err(error) = persist(&self.confirmed_path, epoch.get()) {
                    tracing::error!(%error, path = %self.confirmed_path.display(), "could not persist the confirmed epoch");
                }
            }
            Action::PingGateway => {
                if !self.gateway_in_flight && self.gateway_tx.send(()).is_ok() {
                    self.gateway_in_flight = true;
                }
            }
            Action::StartServing => {
                // Roles first: a shard must know it leads before the first
                // client it lets in can send.
                self.apply_roles();
                if let Some(plane) = &self.plane {
                    plane.shared().serving.store(true, Ordering::SeqCst);
                }
            }
            Action::StopServing if self.replicated.is_some() => {
                if let Some(plane) = &self.plane {
                    plane.shared().serving.store(false, Ordering::SeqCst);
                }
                self.apply_roles();
            }
            Action::StopServing => self.stop_plane(),
            Action::Recover => {
                if let Some(mut redirector) = self.redirector.take() {
                    redirector.stop();
                }
                // On its own thread: a large journal takes a while to
                // recover, and heartbeats must go on meanwhile.
                let (tx, rx) = mpsc::channel();
                let (profile, epoch) = (self.profile.clone(), self.epoch);
                std::thread::Builder::new()
                    .name("twinmq-recover".into())
                    .spawn(move || {
                        let result = DataPlane::start(&profile, Activation::Epoch(epoch), false)
                            .map_err(|e| e.to_string());
                        let _ = tx.send(result);
                    })
                    .expect("spawn recovery thread");
                self.activating = Some(rx);
            }
            // The passive dials its streams (`replication_inputs`); the
            // active takes them as they arrive (`LinkEvent::Stream`).
            Action::StartSync { sender } => {
                tracing::debug!(sender, "synchronisation starts");
            }
            Action::Log(line) => tracing::info!("{line}"),
        }
        None
    }

    /// The data plane recovered (or could not): becomes `Recovered`, or a
    /// lost lock that falls back.
    fn activated(&mut self, result: Result<DataPlane, String>) -> Input {
        match result {
            Ok(plane) if self.machine.state() == State::Activating => {
                self.plane = Some(plane);
                Input::Recovered
            }
            Ok(plane) => {
                // The activation was called off meanwhile: never serve.
                let _ = plane.stop();
                self.restart_redirector();
                Input::Tick
            }
            Err(error) => {
                tracing::error!(%error, "could not activate the data plane");
                self.restart_redirector();
                Input::Lock(LockResult::Lost { reason: error })
            }
        }
    }

    /// Stops serving at once: the data plane stops (flushing what it has)
    /// before the caller releases the lock.
    fn stop_plane(&mut self) {
        if let Some(plane) = self.plane.take() {
            plane.shared().serving.store(false, Ordering::SeqCst);
            if let Err(error) = plane.stop() {
                tracing::error!(%error, "data plane stopped with an error");
            }
        }
        self.restart_redirector();
    }

    fn restart_redirector(&mut self) {
        if self.redirector.is_none() && !self.control.stopping() {
            match Redirector::start(self.profile.server.client_listen, self.ha.peer_client) {
                Ok(redirector) => self.redirector = Some(redirector),
                Err(error) => tracing::error!(%error, "cannot answer clients with NOT_ACTIVE"),
            }
        }
    }

    fn publish(&self) {
        let snapshot = self.machine.snapshot();
        let mut status = match &self.plane {
            Some(plane) => plane.status(),
            None => passive_status(&self.profile, &self.ha),
        };
        status.role = role_name(self.ha.role).into();
        status.state = snapshot.state.name().into();
        status.epoch = snapshot.epoch.get();
        status.uptime_ms = self.started.elapsed().as_millis() as u64;
        status.mode = self.ha.mode.to_string();
        status.peer_state = Some(snapshot.peer_state.name().into());
        let lock = self.lock.read().ok();
        status.lock_epoch = lock.as_ref().map(|c| c.epoch);
        status.lock_holder = lock.map(|c| c.holder).filter(|h| !h.is_empty());
        status.confirmed_epoch = Some(snapshot.confirmed_epoch.get());
        status.gateway_reachable = Some(snapshot.gateway_reachable);
        if self.replicated.is_some() && snapshot.state == State::Standalone {
            status.degraded = Some(match self.ha.standalone {
                crate::config::HaStandalone::Serve => {
                    "STANDALONE: no passive; replicated sends are acknowledged on this server's flush alone".into()
                }
                crate::config::HaStandalone::Refuse => {
                    "STANDALONE: no passive; replicated sends are refused (standalone = \"refuse\")".into()
                }
            });
        }
        status.last_transition = Some(format!(
            "{} -> {}: {}",
            snapshot.previous, snapshot.state, snapshot.last_reason
        ));
        self.control.publish(status);
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(plane) = self.plane.take() {
            let _ = plane.stop();
        }
    }
}

/// A thread that pings the gateway when asked and reports reachability.
fn pinger(addr: SocketAddr, timeout: Duration) -> (Sender<()>, Receiver<bool>) {
    let (request_tx, request_rx) = mpsc::channel::<()>();
    let (result_tx, result_rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("twinmq-gateway-ping".into())
        .spawn(move || {
            for () in request_rx {
                if result_tx.send(gateway::ping(addr, timeout)).is_err() {
                    return;
                }
            }
        })
        .expect("spawn gateway pinger");
    (request_tx, result_rx)
}

/// Writes `value` to `path` durably (temp file, fsync, rename, dir fsync).
fn persist(path: &std::path::Path, value: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    writeln!(file, "{value}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        crate::io::sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control() -> HaControl {
        HaControl {
            status: Mutex::new((Status::default(), 0)),
            published: Condvar::new(),
            wanted: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            promote: AtomicBool::new(false),
        }
    }

    #[test]
    fn a_status_request_gets_a_status_built_after_it() {
        let control = Arc::new(control());
        control.publish(Status {
            state: "BEFORE".into(),
            ..Status::default()
        });
        // Nothing is built until someone asks.
        assert!(!control.take_wanted());
        let publisher = {
            let control = Arc::clone(&control);
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while !control.take_wanted() {
                    assert!(Instant::now() < deadline, "no status request arrived");
                    std::thread::sleep(Duration::from_millis(1));
                }
                control.publish(Status {
                    state: "AFTER".into(),
                    ..Status::default()
                });
            })
        };
        assert_eq!(control.status().state, "AFTER");
        publisher.join().unwrap();
    }

    #[test]
    fn a_busy_control_thread_leaves_a_request_with_the_last_status() {
        let control = control();
        control.publish(Status {
            state: "LAST".into(),
            ..Status::default()
        });
        let asked = Instant::now();
        assert_eq!(control.status().state, "LAST");
        assert!(asked.elapsed() >= STATUS_WAIT);
        assert!(control.take_wanted(), "the request stays asked for");
        // A forced promotion is never decided on that old status.
        let refused = control.promote_force().unwrap_err();
        assert!(refused.contains("busy in a transition"), "{refused}");
        assert!(!control.promote.load(Ordering::SeqCst));
    }
}
