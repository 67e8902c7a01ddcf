//! A running server: opens and recovers each shard's journal, starts one
//! thread per shard (each with its own listener on the client port) and the
//! admin endpoint, and stops them cleanly.

use crate::admin;
use crate::broker::{Broker, BrokerSettings};
use crate::config::Profile;
use crate::ids::{Epoch, ShardId};
use crate::journal::{Journal, JournalError};
use crate::protocol::Limits;
use crate::shard::{self, ShardConfig, ShardError, Shared, mesh};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    #[error("{0}")]
    Listen(std::io::Error),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("shard thread {0} panicked")]
    Panicked(usize),
}

/// What the admin endpoint reports about the server as a whole.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub epoch: Epoch,
    pub client_addr: SocketAddr,
    pub started: Instant,
    pub shards: usize,
}

/// A started server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    wakers: Vec<Arc<crate::io::EventFd>>,
    threads: Vec<JoinHandle<Result<(), ShardError>>>,
    admin: Option<JoinHandle<()>>,
    identity: Identity,
    admin_addr: SocketAddr,
}

impl Server {
    /// Recovers every shard and starts serving.
    pub fn start(profile: &Profile) -> Result<Server, ServerError> {
        crate::io::probe()?;
        let shards = profile.server.shard_count();
        let data_dir = profile.server.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
            path: data_dir.clone(),
            source,
        })?;
        let dead_letter = profile
            .broker
            .dead_letter_queue
            .parse()
            .expect("validated by the profile");
        let settings = BrokerSettings {
            auto_create: profile.broker.auto_create,
            default_prefetch: profile.broker.default_prefetch,
            max_deliveries: profile.broker.max_deliveries,
            dead_letter,
            cache_bytes_max: MESSAGE_CACHE_BYTES / shards,
        };
        let mut journals = Vec::with_capacity(shards);
        let mut brokers = Vec::with_capacity(shards);
        for index in 0..shards {
            let path = data_dir.join(format!("shard-{index:03}"));
            let journal_error = |source| ServerError::Journal {
                shard: index,
                path: path.clone(),
                source,
            };
            let journal = Journal::open(&path, profile.journal.options()).map_err(journal_error)?;
            let mut broker = Broker::new(ShardId(index as u16), settings.clone());
            let records = shard::recover(&journal, &mut broker).map_err(journal_error)?;
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
            journals.push(journal);
            brokers.push(broker);
        }
        let epoch = Epoch(journals.iter().map(|j| j.epoch().get()).max().unwrap_or(0) + 1);

        let socket = profile.net.client.clone();
        let first = crate::net::listen(profile.server.client_listen, &socket, true)
            .map_err(ServerError::Listen)?;
        let client_addr = first.local_addr().map_err(ServerError::Listen)?;
        let mut listeners = vec![first];
        for _ in 1..shards {
            listeners
                .push(crate::net::listen(client_addr, &socket, true).map_err(ServerError::Listen)?);
        }
        let admin_listener =
            std::net::TcpListener::bind(profile.server.admin_listen).map_err(|e| {
                ServerError::Listen(std::io::Error::new(
                    e.kind(),
                    format!("admin endpoint {}: {e}", profile.server.admin_listen),
                ))
            })?;
        let admin_addr = admin_listener.local_addr().map_err(ServerError::Listen)?;

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
        let shared = Shared::new(shards);
        let max_connections = (profile.server.max_connections as usize).div_ceil(shards);
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
                epoch,
                socket: socket.clone(),
                max_connections,
                limits,
                settings: settings.clone(),
                segment_bytes: profile.journal.segment_bytes,
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
        let admin = admin::serve(
            admin_listener,
            identity.clone(),
            shared.clone(),
            wakers.clone(),
        );
        tracing::info!(
            server = %identity.name, %client_addr, %admin_addr, shards, epoch = epoch.get(),
            "Server switched to ACTIVE"
        );
        Ok(Server {
            shared,
            wakers,
            threads,
            admin: Some(admin),
            identity,
            admin_addr,
        })
    }

    pub fn client_addr(&self) -> SocketAddr {
        self.identity.client_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// A function that asks the server to stop (for signal handlers).
    pub fn stopper(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = self.shared.clone();
        let wakers = self.wakers.clone();
        move || request_stop(&shared, &wakers)
    }

    /// Waits until every shard has stopped (after `stop`, a signal, or the
    /// admin `shutdown`).
    pub fn wait(mut self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (index, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::error!(%error, "shard stopped with an error");
                    request_stop(&self.shared, &self.wakers);
                    result = Err(error.into());
                }
                Err(_) => {
                    request_stop(&self.shared, &self.wakers);
                    result = Err(ServerError::Panicked(index));
                }
            }
        }
        if let Some(admin) = self.admin.take() {
            let _ = admin.join();
        }
        tracing::info!(server = %self.identity.name, "server stopped");
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
