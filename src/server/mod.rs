//! Starting and stopping a server.
//!
//! - [`DataPlane`]: the shards' journals, recovered, and one thread per shard
//!   (each with its own listener on the client port), started in a given
//!   epoch. It refuses an epoch its journals have already passed: a newer
//!   activation happened elsewhere, and writing now would fork history.
//! - [`Server`]: a single server (data plane + admin endpoint), or an HA
//!   server whose control thread starts and stops the data plane (`ha::driver`).

use crate::admin::{self, Control, Status};
use crate::broker::{Broker, BrokerSettings};
use crate::config::Profile;
use crate::ids::{Epoch, ShardId};
use crate::journal::{Journal, JournalError};
use crate::protocol::Limits;
use crate::shard::{self, ShardConfig, ShardError, Shared, mesh};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Messages a cross-shard queue holds before senders overflow locally.
const MESH_QUEUE_CAPACITY: usize = 4096;
/// Message bytes the whole server keeps in memory (split over shards);
/// beyond it, bodies are read back from the journal when delivered.
const MESSAGE_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Why a server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Ring(#[from] crate::io::RingError),
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("shard {shard} journal in {}: {source}", path.display())]
    Journal {
        shard: usize,
        path: PathBuf,
        source: JournalError,
    },
    /// The journals already hold a newer epoch than the one to serve in.
    #[error(
        "refusing to serve in epoch {requested}: shard {shard}'s journal already holds epoch {found} \
         (a newer activation happened elsewhere)"
    )]
    Fenced {
        shard: usize,
        requested: u64,
        found: u64,
    },
    #[error("{0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("shard thread {0} panicked")]
    Panicked(usize),
    #[error(transparent)]
    Ha(#[from] crate::ha::driver::DriverError),
}

/// What the admin endpoint reports about a data plane.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub epoch: Epoch,
    pub client_addr: SocketAddr,
    pub started: Instant,
    pub shards: usize,
}

fn broker_settings(profile: &Profile, shards: usize) -> BrokerSettings {
    BrokerSettings {
        auto_create: profile.broker.auto_create,
        default_prefetch: profile.broker.default_prefetch,
        max_deliveries: profile.broker.max_deliveries,
        dead_letter: profile
            .broker
            .dead_letter_queue
            .parse()
            .expect("validated by the profile"),
        cache_bytes_max: MESSAGE_CACHE_BYTES / shards,
        producer_idle_expiry_ms: profile.broker.producer_idle_expiry_s.saturating_mul(1000),
    }
}

/// Which epoch a data plane opens when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// This one (shared HA takeover): refused if a journal already holds it
    /// or a newer one.
    Epoch(Epoch),
    /// The next after the journals' newest (a single server).
    Next,
    /// None: the HA control thread opens epochs (replicated HA).
    Deferred,
}

/// Opens and recovers one shard's journal and broker; refuses if the
/// journal already holds `epoch` or a newer one.
fn recover_shard(
    profile: &Profile,
    data_dir: &std::path::Path,
    index: usize,
    epoch: Option<Epoch>,
    settings: BrokerSettings,
) -> Result<(Journal, Broker), ServerError> {
    let path = data_dir.join(format!("shard-{index:03}"));
    let journal_error = |source| ServerError::Journal {
        shard: index,
        path: path.clone(),
        source,
    };
    let mut broker = Broker::new(ShardId(index as u16), settings);
    let (journal, records) = shard::open_rebuilding(&path, profile.journal.options(), &mut broker)
        .map_err(journal_error)?;
    if let Some(epoch) = epoch
        && journal.epoch() >= epoch
    {
        return Err(ServerError::Fenced {
            shard: index,
            requested: epoch.get(),
            found: journal.epoch().get(),
        });
    }
    let report = journal.recovery_report();
    tracing::info!(
        shard = index,
        records,
        messages = broker.message_count(),
        start = report.start.get(),
        end = report.end.get(),
        torn = report.torn.is_some(),
        "recovered shard journal"
    );
    Ok((journal, broker))
}

/// Journals and shard threads.
#[derive(Debug)]
pub struct DataPlane {
    shared: Arc<Shared>,
    wakers: Vec<Arc<crate::io::EventFd>>,
    threads: Vec<JoinHandle<Result<(), ShardError>>>,
    identity: Identity,
}

impl DataPlane {
    /// Recovers every shard and starts its thread, opening the epoch
    /// `activation` says. `serving` sets the initial client gate.
    pub fn start(
        profile: &Profile,
        activation: Activation,
        serving: bool,
    ) -> Result<DataPlane, ServerError> {
        let epoch = match activation {
            Activation::Epoch(epoch) => Some(epoch),
            Activation::Next | Activation::Deferred => None,
        };
        crate::io::probe()?;
        let shards = profile.server.shard_count();
        let data_dir = profile.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let settings = broker_settings(profile, shards);
        // Shards recover in parallel: a failover waits for the slowest, not
        // for their sum.
        let recovered: Vec<Result<(Journal, Broker), ServerError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..shards)
                .map(|index| {
                    let settings = settings.clone();
                    let data_dir = &data_dir;
                    scope.spawn(move || recover_shard(profile, data_dir, index, epoch, settings))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("recovery thread"))
                .collect()
        });
        let mut journals = Vec::with_capacity(shards);
        let mut brokers = Vec::with_capacity(shards);
        for result in recovered {
            let (journal, broker) = result?;
            journals.push(journal);
            brokers.push(broker);
        }
        let newest = Epoch(journals.iter().map(|j| j.epoch().get()).max().unwrap_or(0));
        let (epoch, opened) = match activation {
            Activation::Epoch(epoch) => (epoch, Some(epoch)),
            Activation::Next => (Epoch(newest.get() + 1), Some(Epoch(newest.get() + 1))),
            Activation::Deferred => (newest, None),
        };
        let replicated = activation == Activation::Deferred;
        let ha = profile.ha.as_ref();
        let hot_standby = ha.is_none_or(|ha| ha.standby == crate::config::HaStandby::Hot);

        let socket = profile.net.client.clone();
        let first = crate::net::listen(profile.server.client_listen, &socket, true)
            .map_err(ServerError::Listen)?;
        let client_addr = first.local_addr().map_err(ServerError::Listen)?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners
                .push(crate::net::listen(client_addr, &socket, true).map_err(ServerError::Listen)?);
        }
        // A message's journal record is never larger than its SEND frame,
        // so this limit (advertised in WELCOME) keeps every accepted message
        // within one journal batch.
        let journal_limit = profile.journal.batch_bytes_max - crate::constants::RECORD_HEADER_BYTES;
        let limits = Limits {
            frame_bytes_max: Limits::default().frame_bytes_max.min(journal_limit as u32),
            ..Limits::default()
        };
        let meshes = mesh::build(shards, MESH_QUEUE_CAPACITY).map_err(ServerError::Listen)?;
        let wakers = meshes[0].all_wakers();
        let shared = Shared::new(shards, serving);
        // Seeded now so the control thread sees the recovered history
        // before the shards publish their own figures.
        for (stats, journal) in shared.stats.iter().zip(&journals) {
            let mut stats = stats.lock().expect("stats lock");
            stats.epoch = journal.epoch().get();
            stats.journal_start = journal.start_offset().get();
            stats.journal_end = journal.end_offset().get();
        }
        let max_connections = profile.server.max_connections as usize;
        let mut threads = Vec::with_capacity(shards);
        for (index, ((journal, broker), (listener, mesh))) in journals
            .into_iter()
            .zip(brokers)
            .zip(listeners.into_iter().zip(meshes))
            .enumerate()
        {
            let config = ShardConfig {
                id: ShardId(index as u16),
                shards,
                server_name: profile.server.name.clone(),
                epoch: opened,
                role: if replicated {
                    shard::Role::Idle
                } else {
                    shard::Role::Solo {
                        refuse_replicated: false,
                    }
                },
                default_local_ack: ha
                    .is_some_and(|ha| ha.ack_mode == crate::config::HaAckMode::Local),
                hot_standby,
                batch_bytes_max: profile.journal.batch_bytes_max,
                socket: socket.clone(),
                max_connections,
                limits,
                settings: settings.clone(),
                segment_bytes: profile.journal.segment_bytes,
                saved_journals_max: ha.map_or(0, |ha| ha.saved_journals_max),
            };
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("twinmq-shard-{index}"))
                .spawn(move || shard::run(config, journal, broker, listener, mesh, shared))
                .expect("spawn shard thread");
            threads.push(thread);
        }
        let identity = Identity {
            name: profile.server.name.clone(),
            epoch,
            client_addr,
            started: Instant::now(),
            shards,
        };
        Ok(DataPlane {
            shared,
            wakers,
            threads,
            identity,
        })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn status(&self) -> Status {
        admin::data_status(&self.identity, &self.shared)
    }

    /// Queues a request for `shard` and wakes it.
    pub fn control(&self, shard: usize, request: shard::ShardControl) {
        self.shared.controls[shard]
            .lock()
            .expect("control lock")
            .push_back(request);
        self.wakers[shard].wake();
    }

    /// Opens `epoch` in every shard's journal and waits until each
    /// epoch-start record is durable (and a stale broker rebuilt).
    pub fn begin_epoch(&self, epoch: Epoch, timeout: std::time::Duration) -> Result<(), String> {
        let replies: Vec<_> = (0..self.identity.shards)
            .map(|shard| {
                let (done, reply) = std::sync::mpsc::channel();
                self.control(shard, shard::ShardControl::BeginEpoch { epoch, done });
                reply
            })
            .collect();
        let deadline = Instant::now() + timeout;
        for (shard, reply) in replies.into_iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match reply.recv_timeout(left) {
                Ok(result) => result?,
                Err(_) => {
                    return Err(format!(
                        "shard {shard} did not record epoch {epoch} within {} ms",
                        timeout.as_millis()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Each shard's replication figures, in shard order.
    pub fn replication(&self) -> Vec<shard::ReplicaStats> {
        self.shared
            .stats
            .iter()
            .map(|s| {
                s.lock()
                    .expect("stats lock")
                    .replica
                    .clone()
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Where this server's history stands: the newest epoch of any shard,
    /// and the sum of the shards' journal ends.
    pub fn history(&self) -> (Epoch, u64) {
        self.shared
            .stats
            .iter()
            .fold((Epoch::NONE, 0), |(epoch, end), s| {
                let s = s.lock().expect("stats lock");
                (epoch.max(Epoch(s.epoch)), end + s.journal_end)
            })
    }

    /// Asks every shard to stop (each flushes its journal first).
    pub fn request_stop(&self) {
        request_stop(&self.shared, &self.wakers);
    }

    /// Whether some shard thread has ended.
    pub fn any_stopped(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops (if not yet asked) and waits for every shard.
    pub fn stop(mut self) -> Result<(), ServerError> {
        self.request_stop();
        let mut result = Ok(());
        for (index, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(%error, "shard stopped with an error");
                    result = Err(error.into());
                }
                Err(_) => result = Err(ServerError::Panicked(index)),
            }
        }
        result
    }
}

/// Sets the stop flag and wakes every shard so it sees it at once.
pub fn request_stop(shared: &Shared, wakers: &[Arc<crate::io::EventFd>]) {
    shared.stop.store(true, Ordering::SeqCst);
    for waker in wakers {
        waker.wake();
    }
}

/// A single server: one data plane, always serving.
struct Single {
    plane: Mutex<Option<DataPlane>>,
    status: Mutex<Status>,
}

impl Control for Single {
    fn status(&self) -> Status {
        match self.plane.lock().expect("plane lock").as_ref() {
            Some(plane) => plane.status(),
            None => self.status.lock().expect("status lock").clone(),
        }
    }

    fn shutdown(&self) {
        if let Some(plane) = self.plane.lock().expect("plane lock").as_ref() {
            plane.request_stop();
        }
    }

    fn stopping(&self) -> bool {
        self.plane
            .lock()
            .expect("plane lock")
            .as_ref()
            .is_none_or(|p| p.shared().stop.load(Ordering::Relaxed))
    }
}

/// A started server, single or HA.
pub struct Server {
    control: Arc<dyn Control>,
    admin: Option<JoinHandle<()>>,
    kind: Kind,
    admin_addr: SocketAddr,
}

enum Kind {
    Single(Arc<Single>),
    Ha(crate::ha::driver::Driver),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("admin", &self.admin_addr)
            .finish()
    }
}

fn bind_admin(profile: &Profile) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(profile.server.admin_listen).map_err(|e| {
        ServerError::Listen(std::io::Error::new(
            e.kind(),
            format!("admin endpoint {}: {e}", profile.server.admin_listen),
        ))
    })?;
    let addr = listener.local_addr().map_err(ServerError::Listen)?;
    Ok((listener, addr))
}

impl Server {
    /// Starts the server a profile describes: single, or one of an HA pair.
    pub fn start(profile: &Profile) -> Result<Server, ServerError> {
        // Even a passive checks now: finding io_uring forbidden at failover
        // time would be too late.
        crate::io::probe()?;
        let (listener, admin_addr) = bind_admin(profile)?;
        if profile.ha.is_some() {
            let driver = crate::ha::driver::Driver::start(profile.clone())?;
            let control = driver.control();
            let admin = admin::serve(listener, control.clone());
            return Ok(Server {
                control,
                admin: Some(admin),
                kind: Kind::Ha(driver),
                admin_addr,
            });
        }
        let plane = DataPlane::start(profile, Activation::Next, true)?;
        let identity = plane.identity().clone();
        tracing::info!(
            server = %identity.name, client_addr = %identity.client_addr, %admin_addr, shards = identity.shards,
            epoch = identity.epoch.get(), "Server switched to ACTIVE"
        );
        let single = Arc::new(Single {
            status: Mutex::new(plane.status()),
            plane: Mutex::new(Some(plane)),
        });
        let control: Arc<dyn Control> = single.clone();
        let admin = admin::serve(listener, control.clone());
        Ok(Server {
            control,
            admin: Some(admin),
            kind: Kind::Single(single),
            admin_addr,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A function that asks the server to stop (for signal handlers).
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let control = self.control.clone();
        move || control.shutdown()
    }

    /// Waits until the server has stopped (after a signal or the admin
    /// `shutdown`).
    pub fn wait(mut self) -> Result<(), ServerError> {
        let result = match &mut self.kind {
            Kind::Single(single) => {
                // The admin thread ends once the shards are asked to stop.
                while !single.stopping() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let plane = single.plane.lock().expect("plane lock");
                    if plane.as_ref().is_some_and(DataPlane::any_stopped) {
                        plane.as_ref().expect("plane").request_stop();
                    }
                }
                let plane = single.plane.lock().expect("plane lock").take();
                plane.map_or(Ok(()), DataPlane::stop)
            }
            Kind::Ha(driver) => driver.wait(),
        };
        if let Some(admin) = self.admin.take() {
            let _ = admin.join();
        }
        tracing::info!("server stopped");
        result
    }
}
