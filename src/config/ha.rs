//! `[ha]`: how a server joins an HA pair — mode, role, cluster identity, the
//! peer, the lock file, the gateway and the timings of the control plane.
//!
//! The section is optional: a profile without it runs a single server. This
//! module only checks values and turns them into durations; the state machine
//! (`ha::machine`) and its driver use them. It must never open the lock file,
//! resolve or reach an address, or log the cluster key.

use super::Invalid;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Longest cluster id. The id is written into the lock file, compared in the
/// HA handshake and shown in logs: one short word, like a server name.
pub const CLUSTER_ID_CHARS_MAX: usize = 64;

/// Shortest cluster key. The key authenticates the HA handshake (an HMAC
/// challenge); 16 characters is the least that is not guessable offline from
/// one captured exchange, and it catches placeholders like `secret`.
pub const CLUSTER_KEY_CHARS_MIN: usize = 16;

/// Longest cluster key. HMAC takes any length, so this only catches a file
/// pasted in by mistake.
pub const CLUSTER_KEY_CHARS_MAX: usize = 1024;

/// Precedence of a primary when the profile gives none: lower wins ties, and
/// by default the primary is the preferred server.
pub const PRECEDENCE_PRIMARY_DEFAULT: u32 = 0;

/// Precedence of a secondary when the profile gives none.
pub const PRECEDENCE_SECONDARY_DEFAULT: u32 = 1;

/// Heartbeat interval by default. Failover is aimed at well under a second
/// (the seed's 30 s is far too slow for a broker); a LAN round trip is a
/// fraction of a millisecond, so 100 ms leaves ample room for scheduling
/// jitter while keeping detection at 300 ms.
pub const PING_INTERVAL_MS_DEFAULT: u32 = 100;

/// Heartbeats a server may miss before it declares its peer dead, by default.
/// One late heartbeat (a scheduling hiccup, a retransmit) must not start a
/// takeover; three in a row do not happen on a healthy link.
pub const HEARTBEAT_MISSES_MAX_DEFAULT: u32 = 3;

/// How often the active re-validates its lock by default: one ping interval,
/// so a fenced active stops writing within about the time its peer needs to
/// notice that it is gone.
pub const ACTIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT: u32 = 100;

/// How often a passive retries the lock by default: more than twice the
/// active's interval (the rule below), so an active that still runs always
/// re-validates, and fences itself, before a passive could act on the lock.
pub const PASSIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT: u32 = 250;

/// How long a state transition may take by default before it is abandoned
/// (back to WAITING): long enough for a sync handshake and lock round trips
/// on slow shared storage, short enough that a stuck transition is noticed.
pub const MAX_WAIT_TIMEOUT_MS_DEFAULT: u32 = 5_000;

/// Time allowed to connect to the peer's HA port by default; a LAN peer
/// answers in well under a millisecond, so a second means it is not there.
pub const SOCKET_CREATION_TIMEOUT_MS_DEFAULT: u32 = 1_000;

/// Time allowed for the HA handshake on a new link by default (magic,
/// version, HMAC challenge, parameters).
pub const SOCKET_INITIALIZATION_TIMEOUT_MS_DEFAULT: u32 = 1_000;

/// Fail-back is off by default: a switchover briefly pauses sends, so moving
/// the active role back should be the operator's choice.
pub const FAILBACK_DEFAULT: bool = false;

/// Shortest ping or lock interval accepted. Below 10 ms, scheduler jitter on
/// a loaded machine alone would look like missed heartbeats, and lock
/// round trips to shared storage would load it for nothing.
pub const HA_INTERVAL_MS_MIN: u32 = 10;

/// Longest ping or lock interval accepted: a minute. Longer would make
/// failover slower than an operator restarting the server by hand; such a
/// value is far more likely a typo than a need.
pub const HA_INTERVAL_MS_MAX: u32 = 60_000;

/// Most heartbeats that may be missed. Detection takes this many ping
/// intervals; beyond 100 a larger ping interval says the same more cheaply.
pub const HEARTBEAT_MISSES_MAX_LIMIT: u32 = 100;
/// Journals per shard a passive keeps aside before a full copy (like
/// Artemis's `max-saved-replicated-journals-size`, also 2).
pub const SAVED_JOURNALS_MAX_DEFAULT: u32 = 2;
/// Upper bound on `saved_journals_max`.
pub const SAVED_JOURNALS_MAX_LIMIT: u32 = 100;

/// Shortest HA timeout (transition, connect, handshake) accepted: below
/// 10 ms a timeout fires on ordinary scheduling delays.
pub const HA_TIMEOUT_MS_MIN: u32 = 10;

/// Longest HA timeout accepted: ten minutes, as for the sockets of `[net.*]`.
pub const HA_TIMEOUT_MS_MAX: u32 = 600_000;

/// How the two servers of a pair share their data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaMode {
    /// Each server has its own journal; the active streams it to the passive.
    Replicated,
    /// Both servers see one journal on shared storage; only the lock holder
    /// opens it.
    Shared,
}

/// Which server of the pair this is. The primary is preferred on ties and,
/// with `failback`, takes the active role back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaRole {
    /// The preferred server.
    Primary,
    /// The backup.
    Secondary,
}

/// What a passive keeps ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaStandby {
    /// Replicated state applied as it arrives: takeover needs no replay.
    #[default]
    Hot,
    /// Journal kept, state rebuilt at takeover: less memory, slower failover.
    Warm,
}

/// How a server that is alone (STANDALONE, replicated mode) treats sends
/// whose ack mode is `replicated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaStandalone {
    /// Acknowledge them after the local flush, and report the server as
    /// degraded (no passive has them).
    #[default]
    Serve,
    /// Refuse them (error `NotReplicated`): only `local` sends are taken
    /// until a passive is back in sync.
    Refuse,
}

/// When a SEND is acknowledged, for producers that do not choose (a SEND
/// whose ack mode is "default"). A producer's own choice always wins; this
/// only sets what silence means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaAckMode {
    /// After the active's flush and the passive's flush of the same bytes:
    /// an acknowledged message survives the loss of either server. The
    /// default, because that guarantee is what an HA pair is for.
    #[default]
    Replicated,
    /// After the active's own flush only: one round trip faster, but a
    /// message acknowledged just before the active fails may be missing on
    /// the passive that takes over.
    Local,
}

/// The shared secret of the HA handshake. Its `Debug` never shows it, so
/// logging a profile cannot leak it.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ClusterKey(String);

impl ClusterKey {
    /// The key itself, for the handshake's HMAC and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ClusterKey {
    fn from(key: &str) -> ClusterKey {
        ClusterKey(key.to_owned())
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} characters redacted>", self.0.chars().count())
    }
}

/// `[ha]`: one server's view of its pair. `mode`, `role`, `cluster_id`,
/// `cluster_key`, `listen`, `peer`, `lock_file` and `gateway` are required;
/// the rest have the defaults above.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// `"replicated"` or `"shared"`.
    pub mode: HaMode,
    /// `"primary"` or `"secondary"`.
    pub role: HaRole,
    /// Tie-break between the two servers, lower wins; see
    /// [`Self::precedence`] for the default.
    #[serde(default)]
    pub precedence: Option<u32>,
    /// Names the pair: 1..=64 of `A-Z a-z 0-9 . _ -`. Both servers and the
    /// lock file must agree on it.
    pub cluster_id: String,
    /// Shared secret of the HA handshake, at least 16 characters.
    pub cluster_key: ClusterKey,
    /// This server's HA port.
    pub listen: SocketAddr,
    /// The peer's HA port.
    pub peer: SocketAddr,
    /// The peer's client port, named in the NOT_ACTIVE redirect this server
    /// sends while the peer is the active one.
    #[serde(default)]
    pub peer_client: Option<SocketAddr>,
    /// The lock file on storage both servers reach. A relative path
    /// resolves against the server's current directory.
    pub lock_file: PathBuf,
    /// The gateway responder on a third machine (`twinmq gateway`).
    pub gateway: SocketAddr,
    /// Heartbeat interval; also how often the gateway is pinged.
    #[serde(default = "ping_interval_ms_default")]
    pub ping_interval_ms: u32,
    /// Heartbeats missed in a row before the peer counts as dead.
    #[serde(default = "heartbeat_misses_max_default")]
    pub heartbeat_misses_max: u32,
    /// How often the active re-validates its lock; [`Self::normalize`]
    /// rounds it up to a multiple of half the ping interval.
    #[serde(default = "active_lock_reacquisition_interval_ms_default")]
    pub active_lock_reacquisition_interval_ms: u32,
    /// How often a passive tries to take the lock; more than twice the
    /// active's interval.
    #[serde(default = "passive_lock_reacquisition_interval_ms_default")]
    pub passive_lock_reacquisition_interval_ms: u32,
    /// Time a state transition may take before it is abandoned.
    #[serde(default = "max_wait_timeout_ms_default")]
    pub max_wait_timeout_ms: u32,
    /// Time allowed to connect to the peer's HA port.
    #[serde(default = "socket_creation_timeout_ms_default")]
    pub socket_creation_timeout_ms: u32,
    /// Time allowed for the HA handshake on a new link.
    #[serde(default = "socket_initialization_timeout_ms_default")]
    pub socket_initialization_timeout_ms: u32,
    /// The preferred server takes the active role back once in sync.
    #[serde(default = "failback_default")]
    pub failback: bool,
    /// `"hot"` or `"warm"`.
    #[serde(default)]
    pub standby: HaStandby,
    /// `"serve"` or `"refuse"`.
    #[serde(default)]
    pub standalone: HaStandalone,
    /// `"replicated"` or `"local"`: the ack mode of producers that do not
    /// choose one.
    #[serde(default)]
    pub ack_mode: HaAckMode,
    /// A passive too far behind to stream gets a full copy; a journal of
    /// its own that the active does not hold is first set aside, at most
    /// this many per shard (beyond: the copy is refused, nothing deleted).
    #[serde(default = "saved_journals_max_default")]
    pub saved_journals_max: u32,
}

fn saved_journals_max_default() -> u32 {
    SAVED_JOURNALS_MAX_DEFAULT
}

fn ping_interval_ms_default() -> u32 {
    PING_INTERVAL_MS_DEFAULT
}

fn heartbeat_misses_max_default() -> u32 {
    HEARTBEAT_MISSES_MAX_DEFAULT
}

fn active_lock_reacquisition_interval_ms_default() -> u32 {
    ACTIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT
}

fn passive_lock_reacquisition_interval_ms_default() -> u32 {
    PASSIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT
}

fn max_wait_timeout_ms_default() -> u32 {
    MAX_WAIT_TIMEOUT_MS_DEFAULT
}

fn socket_creation_timeout_ms_default() -> u32 {
    SOCKET_CREATION_TIMEOUT_MS_DEFAULT
}

fn socket_initialization_timeout_ms_default() -> u32 {
    SOCKET_INITIALIZATION_TIMEOUT_MS_DEFAULT
}

fn failback_default() -> bool {
    FAILBACK_DEFAULT
}

// The defaults must pass the rules they are checked against.
const _: () = assert!(
    PASSIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT
        > 2 * ACTIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT
);
const _: () = assert!(
    ACTIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT.is_multiple_of(PING_INTERVAL_MS_DEFAULT / 2)
        && PING_INTERVAL_MS_DEFAULT.is_multiple_of(2)
);

/// The timing keys of `[ha]` as durations, after normalization: what the
/// state machine and its driver run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaTimings {
    /// Heartbeat and gateway ping interval.
    pub ping_interval: Duration,
    /// Heartbeats missed in a row before the peer counts as dead.
    pub heartbeat_misses_max: u32,
    /// Lock re-validation interval of the active (a multiple of half the
    /// ping interval).
    pub active_lock_reacquisition_interval: Duration,
    /// Lock retry interval of a passive.
    pub passive_lock_reacquisition_interval: Duration,
    /// Limit on one state transition.
    pub max_wait_timeout: Duration,
    /// Limit on connecting to the peer's HA port.
    pub socket_creation_timeout: Duration,
    /// Limit on the HA handshake.
    pub socket_initialization_timeout: Duration,
}

impl HaTimings {
    /// How long the peer may be silent before it counts as dead:
    /// `heartbeat_misses_max × ping_interval`.
    pub fn heartbeat_timeout(&self) -> Duration {
        self.ping_interval * self.heartbeat_misses_max
    }

    /// See [`HaConfig::worst_case_failover`].
    pub fn worst_case_failover(&self) -> Duration {
        self.heartbeat_timeout() + self.passive_lock_reacquisition_interval + self.ping_interval
    }
}

impl HaConfig {
    /// The tie-break value: `precedence`, or 0 for a primary and 1 for a
    /// secondary.
    pub fn precedence(&self) -> u32 {
        self.precedence.unwrap_or(match self.role {
            HaRole::Primary => PRECEDENCE_PRIMARY_DEFAULT,
            HaRole::Secondary => PRECEDENCE_SECONDARY_DEFAULT,
        })
    }

    /// Adjusts values that are usable but not exact, and says what changed:
    /// `active_lock_reacquisition_interval_ms` is rounded up to a multiple of
    /// half the ping interval, because the driver checks the lock on ticks of
    /// half a ping interval. `Profile::load` and `Profile::parse` run this
    /// before [`Self::validate`] and log the warnings.
    pub fn normalize(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        let active = self.active_lock_reacquisition_interval_ms;
        let rounded = self.rounded_active_ms();
        if rounded != active {
            self.active_lock_reacquisition_interval_ms = rounded;
            warnings.push(format!(
                "ha.active_lock_reacquisition_interval_ms: {active} is not a multiple of half \
                 ha.ping_interval_ms ({} / 2); rounded up to {rounded}",
                self.ping_interval_ms
            ));
        }
        warnings
    }

    /// `active_lock_reacquisition_interval_ms` rounded up to the next
    /// multiple of `ping_interval_ms / 2` that is a whole number of
    /// milliseconds (with an odd ping interval, a multiple of the ping
    /// interval itself). Unchanged when the ping interval is out of range,
    /// which `validate` refuses anyway, or when rounding would overflow.
    fn rounded_active_ms(&self) -> u32 {
        let active = self.active_lock_reacquisition_interval_ms;
        if !(HA_INTERVAL_MS_MIN..=HA_INTERVAL_MS_MAX).contains(&self.ping_interval_ms) {
            return active;
        }
        let step = if self.ping_interval_ms.is_multiple_of(2) {
            self.ping_interval_ms / 2
        } else {
            self.ping_interval_ms
        };
        active.checked_next_multiple_of(step).unwrap_or(active)
    }

    /// Checks every key of the section and the combinations between them,
    /// naming the offending key as `ha.{key}`. On success returns warnings
    /// about values that work but deserve a second look (including the
    /// rounding [`Self::normalize`] would do, if it has not run).
    pub fn validate(&self) -> Result<Vec<String>, Invalid> {
        let invalid = |key: &str, why: String| Err((format!("ha.{key}"), why));
        let mut warnings = Vec::new();

        if let Err(why) = check_cluster_id(&self.cluster_id) {
            return invalid("cluster_id", why);
        }
        // Never quote the key itself: errors end up in logs.
        let key_chars = self.cluster_key.expose().chars().count();
        if key_chars < CLUSTER_KEY_CHARS_MIN {
            return invalid(
                "cluster_key",
                format!(
                    "is {key_chars} characters long; it must have at least \
                     {CLUSTER_KEY_CHARS_MIN} (it is the shared secret of the HA handshake)"
                ),
            );
        }
        if key_chars > CLUSTER_KEY_CHARS_MAX {
            return invalid(
                "cluster_key",
                format!("is {key_chars} characters long, more than {CLUSTER_KEY_CHARS_MAX}"),
            );
        }

        if self.listen.port() == 0 {
            return invalid(
                "listen",
                format!(
                    "{} has port 0: the peer must know the port, so give a fixed one",
                    self.listen
                ),
            );
        }
        for (key, addr) in [("peer", self.peer), ("gateway", self.gateway)] {
            if addr.port() == 0 || addr.ip().is_unspecified() {
                return invalid(
                    key,
                    format!("{addr} is not an address one can connect to (give a host and a port)"),
                );
            }
        }
        if self.peer == self.listen {
            return invalid(
                "peer",
                format!(
                    "{} is this server's own ha.listen: the peer is the other server",
                    self.peer
                ),
            );
        }
        for (other, addr) in [("listen", self.listen), ("peer", self.peer)] {
            if self.gateway == addr {
                return invalid(
                    "gateway",
                    format!(
                        "{} is also ha.{other}: the gateway is a responder on a third machine \
                         (`twinmq gateway`)",
                        self.gateway
                    ),
                );
            }
        }
        if self.lock_file.as_os_str().is_empty() {
            return invalid(
                "lock_file",
                "must name the lock file on storage both servers reach".to_owned(),
            );
        }

        for (key, value) in [
            ("ping_interval_ms", self.ping_interval_ms),
            (
                "active_lock_reacquisition_interval_ms",
                self.active_lock_reacquisition_interval_ms,
            ),
            (
                "passive_lock_reacquisition_interval_ms",
                self.passive_lock_reacquisition_interval_ms,
            ),
        ] {
            if !(HA_INTERVAL_MS_MIN..=HA_INTERVAL_MS_MAX).contains(&value) {
                return invalid(
                    key,
                    format!("{value} is outside {HA_INTERVAL_MS_MIN}..={HA_INTERVAL_MS_MAX}"),
                );
            }
        }
        if self.saved_journals_max > SAVED_JOURNALS_MAX_LIMIT {
            return invalid(
                "saved_journals_max",
                format!(
                    "{} is more than {SAVED_JOURNALS_MAX_LIMIT}",
                    self.saved_journals_max
                ),
            );
        }
        if !(1..=HEARTBEAT_MISSES_MAX_LIMIT).contains(&self.heartbeat_misses_max) {
            return invalid(
                "heartbeat_misses_max",
                format!(
                    "{} is outside 1..={HEARTBEAT_MISSES_MAX_LIMIT}",
                    self.heartbeat_misses_max
                ),
            );
        }
        for (key, value) in [
            ("max_wait_timeout_ms", self.max_wait_timeout_ms),
            (
                "socket_creation_timeout_ms",
                self.socket_creation_timeout_ms,
            ),
            (
                "socket_initialization_timeout_ms",
                self.socket_initialization_timeout_ms,
            ),
        ] {
            if !(HA_TIMEOUT_MS_MIN..=HA_TIMEOUT_MS_MAX).contains(&value) {
                return invalid(
                    key,
                    format!("{value} is outside {HA_TIMEOUT_MS_MIN}..={HA_TIMEOUT_MS_MAX}"),
                );
            }
        }

        let active = self.rounded_active_ms();
        if active != self.active_lock_reacquisition_interval_ms {
            warnings.push(format!(
                "ha.active_lock_reacquisition_interval_ms: {} is not a multiple of half \
                 ha.ping_interval_ms ({} / 2); {active} is used",
                self.active_lock_reacquisition_interval_ms, self.ping_interval_ms
            ));
        }
        // The seed's rule: a passive must not retry the lock before a live
        // active has had two chances to re-validate it (and fence itself).
        let passive = self.passive_lock_reacquisition_interval_ms;
        if u64::from(passive) <= 2 * u64::from(active) {
            return invalid(
                "passive_lock_reacquisition_interval_ms",
                format!(
                    "{passive} must be more than twice \
                     ha.active_lock_reacquisition_interval_ms = {active} (more than {})",
                    2 * u64::from(active)
                ),
            );
        }

        if self.heartbeat_misses_max == 1 {
            warnings.push(
                "ha.heartbeat_misses_max = 1: a single late heartbeat makes the passive take \
                 over; 2 or more avoid failovers on ordinary jitter"
                    .to_owned(),
            );
        }
        Ok(warnings)
    }

    /// The timing keys as durations. The active interval is the normalized
    /// one, whether or not [`Self::normalize`] has run.
    pub fn timings(&self) -> HaTimings {
        let ms = |value: u32| Duration::from_millis(value.into());
        HaTimings {
            ping_interval: ms(self.ping_interval_ms),
            heartbeat_misses_max: self.heartbeat_misses_max,
            active_lock_reacquisition_interval: ms(self.rounded_active_ms()),
            passive_lock_reacquisition_interval: ms(self.passive_lock_reacquisition_interval_ms),
            max_wait_timeout: ms(self.max_wait_timeout_ms),
            socket_creation_timeout: ms(self.socket_creation_timeout_ms),
            socket_initialization_timeout: ms(self.socket_initialization_timeout_ms),
        }
    }

    /// The longest a passive needs to take over from an active that went
    /// silent (killed, crashed, cut off):
    ///
    /// ```text
    ///   heartbeat_misses_max × ping_interval     detection: the peer counts as dead
    /// + passive_lock_reacquisition_interval      the next lock attempt, at worst a full interval later
    /// + ping_interval                            scheduling slack (timers fire on ping ticks)
    /// ```
    ///
    /// It assumes the lock is free once the active is gone: true at once
    /// locally, where the kernel drops a dead process's lock; on NFS, a
    /// crashed client's lock lasts until the server's lease time expires,
    /// which comes on top.
    pub fn worst_case_failover(&self) -> Duration {
        self.timings().worst_case_failover()
    }

    /// The socket options of HA links: `[net.ha]`, with its connect and
    /// handshake timeouts replaced by `socket_creation_timeout_ms` and
    /// `socket_initialization_timeout_ms`, which govern HA links.
    pub fn link_socket_options(
        &self,
        net_ha: &crate::net::SocketOptions,
    ) -> crate::net::SocketOptions {
        crate::net::SocketOptions {
            connect_timeout_ms: self.socket_creation_timeout_ms,
            handshake_timeout_ms: self.socket_initialization_timeout_ms,
            ..net_ha.clone()
        }
    }
}

/// Checks a cluster id: 1..=64 of `A-Z a-z 0-9 . _ -`. Returns why not.
/// The lock file applies the same rule to the id it reads.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    check_word(id, CLUSTER_ID_CHARS_MAX)
}

/// Checks an identifier that ends up in files, logs and the handshake: 1 to
/// `chars_max` of `A-Z a-z 0-9 . _ -`, and not `.` or `..`.
pub(crate) fn check_word(word: &str, chars_max: usize) -> Result<(), String> {
    if word.is_empty() || word.chars().count() > chars_max {
        return Err(format!("{word:?} must be 1 to {chars_max} characters long"));
    }
    if let Some(found) = word
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{word:?} may only use letters, digits and . _ - (found {found:?})"
        ));
    }
    if word == "." || word == ".." {
        return Err(format!("{word:?} is not a usable name"));
    }
    Ok(())
}

impl fmt::Display for HaMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaMode::Replicated => "replicated",
            HaMode::Shared => "shared",
        })
    }
}

impl HaRole {
    /// The capitalized name that starts the log lines operators know from
    /// the seed: `Primary Server switched to ACTIVE`.
    pub fn title(self) -> &'static str {
        match self {
            HaRole::Primary => "Primary",
            HaRole::Secondary => "Secondary",
        }
    }
}

impl fmt::Display for HaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaRole::Primary => "primary",
            HaRole::Secondary => "secondary",
        })
    }
}

impl fmt::Display for HaStandby {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaStandby::Hot => "hot",
            HaStandby::Warm => "warm",
        })
    }
}

impl fmt::Display for HaStandalone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaStandalone::Serve => "serve",
            HaStandalone::Refuse => "refuse",
        })
    }
}

impl fmt::Display for HaAckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HaAckMode::Replicated => "replicated",
            HaAckMode::Local => "local",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigError, Profile};

    const ORIGIN: &str = "test.toml";

    const SERVER: &str = r#"
[server]
name = "primary"
data_dir = "./data/primary"
"#;

    /// The required keys of `[ha]`, nothing else.
    const HA_REQUIRED: &str = r#"
[ha]
mode = "replicated"
role = "primary"
cluster_id = "twinmq-local"
cluster_key = "change-me-please"
listen = "127.0.0.1:2000"
peer = "127.0.0.1:3000"
lock_file = "./data/pair/ha.lock"
gateway = "127.0.0.1:2100"
"#;

    fn parse(text: &str) -> Result<(Profile, Vec<String>), ConfigError> {
        Profile::parse_with_warnings(text, ORIGIN)
    }

    /// A profile with `[ha]` holding the required keys, with any key in
    /// `extra` replacing the required one of the same name.
    fn ha_profile(extra: &str) -> String {
        let replaced: Vec<&str> = extra
            .lines()
            .filter_map(|line| line.split(" =").next())
            .collect();
        let kept: Vec<&str> = HA_REQUIRED
            .lines()
            .filter(|line| {
                !replaced
                    .iter()
                    .any(|key| line.starts_with(&format!("{key} =")))
            })
            .collect();
        format!("{SERVER}{}\n{extra}\n", kept.join("\n"))
    }

    fn ha(extra: &str) -> HaConfig {
        parse(&ha_profile(extra)).unwrap().0.ha.unwrap()
    }

    #[test]
    fn profile_without_ha_section_is_a_single_server() {
        let (profile, warnings) = parse(SERVER).unwrap();
        assert_eq!(profile.ha, None);
        assert_eq!(profile.net.ha, crate::net::SocketOptions::default());
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn required_keys_alone_get_the_defaults() {
        let (profile, warnings) = parse(&ha_profile("")).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let ha = profile.ha.unwrap();
        assert_eq!(
            ha,
            HaConfig {
                mode: HaMode::Replicated,
                role: HaRole::Primary,
                precedence: None,
                cluster_id: "twinmq-local".to_owned(),
                cluster_key: ClusterKey::from("change-me-please"),
                listen: "127.0.0.1:2000".parse().unwrap(),
                peer: "127.0.0.1:3000".parse().unwrap(),
                peer_client: None,
                lock_file: PathBuf::from("./data/pair/ha.lock"),
                gateway: "127.0.0.1:2100".parse().unwrap(),
                ping_interval_ms: 100,
                heartbeat_misses_max: 3,
                active_lock_reacquisition_interval_ms: 100,
                passive_lock_reacquisition_interval_ms: 250,
                max_wait_timeout_ms: 5_000,
                socket_creation_timeout_ms: 1_000,
                socket_initialization_timeout_ms: 1_000,
                failback: false,
                standby: HaStandby::Hot,
                standalone: HaStandalone::Serve,
                ack_mode: HaAckMode::Replicated,
                saved_journals_max: 2,
            }
        );
        assert_eq!(ha.precedence(), 0);
        let ms = Duration::from_millis;
        assert_eq!(
            ha.timings(),
            HaTimings {
                ping_interval: ms(100),
                heartbeat_misses_max: 3,
                active_lock_reacquisition_interval: ms(100),
                passive_lock_reacquisition_interval: ms(250),
                max_wait_timeout: ms(5_000),
                socket_creation_timeout: ms(1_000),
                socket_initialization_timeout: ms(1_000),
            }
        );
        // The net.ha table defaults like net.client: Nagle off.
        assert!(profile.net.ha.nodelay);
    }

    #[test]
    fn every_key_is_read() {
        let ha = ha(r#"mode = "shared"
role = "secondary"
precedence = 7
ping_interval_ms = 200
heartbeat_misses_max = 5
active_lock_reacquisition_interval_ms = 300
passive_lock_reacquisition_interval_ms = 700
max_wait_timeout_ms = 9000
socket_creation_timeout_ms = 1500
socket_initialization_timeout_ms = 2500
failback = true
standby = "warm"
standalone = "refuse"
ack_mode = "local""#);
        assert_eq!(ha.mode, HaMode::Shared);
        assert_eq!(ha.role, HaRole::Secondary);
        assert_eq!(ha.precedence(), 7);
        assert!(ha.failback);
        assert_eq!(ha.standby, HaStandby::Warm);
        assert_eq!(ha.standalone, HaStandalone::Refuse);
        assert_eq!(ha.ack_mode, HaAckMode::Local);
        let timings = ha.timings();
        assert_eq!(timings.ping_interval, Duration::from_millis(200));
        assert_eq!(timings.heartbeat_misses_max, 5);
        assert_eq!(
            timings.active_lock_reacquisition_interval,
            Duration::from_millis(300)
        );
        assert_eq!(
            timings.passive_lock_reacquisition_interval,
            Duration::from_millis(700)
        );
        assert_eq!(timings.max_wait_timeout, Duration::from_millis(9_000));
        assert_eq!(
            timings.socket_creation_timeout,
            Duration::from_millis(1_500)
        );
        assert_eq!(
            timings.socket_initialization_timeout,
            Duration::from_millis(2_500)
        );
    }

    #[test]
    fn precedence_defaults_by_role() {
        assert_eq!(ha("").precedence(), PRECEDENCE_PRIMARY_DEFAULT);
        assert_eq!(
            ha("role = \"secondary\"").precedence(),
            PRECEDENCE_SECONDARY_DEFAULT
        );
        assert_eq!(ha("role = \"secondary\"\nprecedence = 0").precedence(), 0);
    }

    #[test]
    fn active_interval_is_rounded_up_to_half_a_ping_with_a_warning() {
        let text = ha_profile(
            "active_lock_reacquisition_interval_ms = 120\n\
             passive_lock_reacquisition_interval_ms = 400",
        );
        let (profile, warnings) = parse(&text).unwrap();
        let ha = profile.ha.unwrap();
        assert_eq!(ha.active_lock_reacquisition_interval_ms, 150);
        assert_eq!(
            ha.timings().active_lock_reacquisition_interval,
            Duration::from_millis(150)
        );
        assert_eq!(
            warnings,
            vec![
                "ha.active_lock_reacquisition_interval_ms: 120 is not a multiple of half \
                 ha.ping_interval_ms (100 / 2); rounded up to 150"
                    .to_owned()
            ]
        );
        // Normalizing again changes nothing.
        let mut again = ha.clone();
        assert!(again.normalize().is_empty());
        assert_eq!(again, ha);
    }

    #[test]
    fn odd_ping_interval_rounds_to_whole_multiples_of_the_ping() {
        // Half of 15 ms is not a whole millisecond; 105 = 7 × 15 is the next
        // multiple of 7.5 that is.
        let mut ha = ha("");
        ha.ping_interval_ms = 15;
        ha.active_lock_reacquisition_interval_ms = 100;
        assert_eq!(ha.normalize().len(), 1);
        assert_eq!(ha.active_lock_reacquisition_interval_ms, 105);
    }

    #[test]
    fn timings_and_validate_round_even_without_normalize() {
        let mut ha = ha("");
        ha.active_lock_reacquisition_interval_ms = 101;
        ha.passive_lock_reacquisition_interval_ms = 301;
        assert_eq!(
            ha.timings().active_lock_reacquisition_interval,
            Duration::from_millis(150)
        );
        let warnings = ha.validate().unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("150 is used"), "{warnings:?}");
    }

    #[test]
    fn passive_must_exceed_twice_the_active_interval() {
        let error = parse(&ha_profile(
            "active_lock_reacquisition_interval_ms = 100\n\
             passive_lock_reacquisition_interval_ms = 200",
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "profile test.toml: ha.passive_lock_reacquisition_interval_ms: 200 must be more \
             than twice ha.active_lock_reacquisition_interval_ms = 100 (more than 200)"
        );
        // Just above twice is enough.
        ha("active_lock_reacquisition_interval_ms = 100\n\
            passive_lock_reacquisition_interval_ms = 201");
    }

    #[test]
    fn the_passive_rule_uses_the_rounded_active_interval() {
        // 190 > 2 × 90, but 90 rounds up to 100 and 190 < 200.
        let error = parse(&ha_profile(
            "active_lock_reacquisition_interval_ms = 90\n\
             passive_lock_reacquisition_interval_ms = 190",
        ))
        .unwrap_err();
        assert!(
            error.to_string().contains(
                "190 must be more than twice ha.active_lock_reacquisition_interval_ms = 100"
            ),
            "{error}"
        );
    }

    #[test]
    fn invalid_values_name_the_key_and_why() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "cluster_id = \"\"",
                "ha.cluster_id",
                "must be 1 to 64 characters",
            ),
            (
                "cluster_id = \"pair one\"",
                "ha.cluster_id",
                "may only use letters, digits and . _ - (found ' ')",
            ),
            (
                "cluster_id = \"..\"",
                "ha.cluster_id",
                "is not a usable name",
            ),
            (
                "cluster_key = \"short-secret\"",
                "ha.cluster_key",
                "is 12 characters long; it must have at least 16",
            ),
            (
                "listen = \"127.0.0.1:3000\"",
                "ha.peer",
                "127.0.0.1:3000 is this server's own ha.listen",
            ),
            ("listen = \"127.0.0.1:0\"", "ha.listen", "has port 0"),
            (
                "peer = \"0.0.0.0:3000\"",
                "ha.peer",
                "is not an address one can connect to",
            ),
            (
                "peer = \"127.0.0.1:0\"",
                "ha.peer",
                "is not an address one can connect to",
            ),
            (
                "gateway = \"127.0.0.1:3000\"",
                "ha.gateway",
                "127.0.0.1:3000 is also ha.peer",
            ),
            (
                "gateway = \"127.0.0.1:2000\"",
                "ha.gateway",
                "127.0.0.1:2000 is also ha.listen",
            ),
            (
                "lock_file = \"\"",
                "ha.lock_file",
                "must name the lock file",
            ),
            (
                "ping_interval_ms = 9",
                "ha.ping_interval_ms",
                "9 is outside 10..=60000",
            ),
            (
                "ping_interval_ms = 60001",
                "ha.ping_interval_ms",
                "60001 is outside 10..=60000",
            ),
            (
                "saved_journals_max = 101",
                "ha.saved_journals_max",
                "101 is more than 100",
            ),
            (
                "heartbeat_misses_max = 0",
                "ha.heartbeat_misses_max",
                "0 is outside 1..=100",
            ),
            (
                "heartbeat_misses_max = 101",
                "ha.heartbeat_misses_max",
                "101 is outside 1..=100",
            ),
            (
                "active_lock_reacquisition_interval_ms = 0",
                "ha.active_lock_reacquisition_interval_ms",
                "0 is outside 10..=60000",
            ),
            (
                "passive_lock_reacquisition_interval_ms = 70000",
                "ha.passive_lock_reacquisition_interval_ms",
                "70000 is outside 10..=60000",
            ),
            (
                "max_wait_timeout_ms = 5",
                "ha.max_wait_timeout_ms",
                "5 is outside 10..=600000",
            ),
            (
                "socket_creation_timeout_ms = 600001",
                "ha.socket_creation_timeout_ms",
                "600001 is outside 10..=600000",
            ),
            (
                "socket_initialization_timeout_ms = 0",
                "ha.socket_initialization_timeout_ms",
                "0 is outside 10..=600000",
            ),
            (
                "listen = \"127.0.0.1:1856\"",
                "ha.listen",
                "takes the same port as server.client_listen = 127.0.0.1:1856",
            ),
            (
                "listen = \"0.0.0.0:1858\"",
                "ha.listen",
                "takes the same port as server.admin_listen = 127.0.0.1:1858",
            ),
        ];
        for &(extra, key, why) in cases {
            let error = parse(&ha_profile(extra)).unwrap_err();
            crate::config::tests::assert_invalid(&error, ORIGIN, key, why, extra);
        }
    }

    #[test]
    fn net_ha_is_validated_under_its_own_name() {
        let error = parse(&format!(
            "{}[net.ha]\nsend_buffer_bytes = 1000000000\n",
            ha_profile("")
        ))
        .unwrap_err();
        assert!(
            matches!(&error, ConfigError::Invalid { key, .. } if key == "net.ha.send_buffer_bytes"),
            "{error:?}"
        );
    }

    #[test]
    fn net_ha_timeouts_are_not_used_and_say_so() {
        let (profile, warnings) = parse(&format!(
            "{}[net.ha]\nnodelay = false\nconnect_timeout_ms = 250\n",
            ha_profile("socket_creation_timeout_ms = 400")
        ))
        .unwrap();
        assert_eq!(
            warnings,
            vec![
                "net.ha.connect_timeout_ms = 250 is not used: HA links use \
                 ha.socket_creation_timeout_ms"
                    .to_owned()
            ]
        );
        let ha = profile.ha.unwrap();
        let link = ha.link_socket_options(&profile.net.ha);
        assert!(!link.nodelay);
        assert_eq!(link.connect_timeout_ms, 400);
        assert_eq!(link.handshake_timeout_ms, 1_000);
    }

    #[test]
    fn a_single_allowed_heartbeat_miss_warns() {
        let (_, warnings) = parse(&ha_profile("heartbeat_misses_max = 1")).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("ha.heartbeat_misses_max = 1: "));
    }

    #[test]
    fn unknown_words_and_keys_are_rejected_by_name() {
        let cases = [
            (
                "mode = \"mirrored\"",
                "unknown variant `mirrored`, expected `replicated` or `shared`",
            ),
            (
                "role = \"backup\"",
                "unknown variant `backup`, expected `primary` or `secondary`",
            ),
            (
                "standby = \"cold\"",
                "unknown variant `cold`, expected `hot` or `warm`",
            ),
            (
                "standalone = \"yes\"",
                "unknown variant `yes`, expected `serve` or `refuse`",
            ),
            (
                "ack_mode = \"fast\"",
                "unknown variant `fast`, expected `replicated` or `local`",
            ),
            ("ping_interval = 100", "unknown field `ping_interval`"),
            (
                "peer = \"peer.example:3000\"",
                "peer = \"peer.example:3000\"",
            ),
        ];
        for (extra, expected) in cases {
            let error = parse(&ha_profile(extra)).unwrap_err();
            assert!(matches!(error, ConfigError::Parse { .. }), "{error:?}");
            let shown = error.to_string();
            assert!(shown.contains(expected), "{extra}: {shown}");
        }
    }

    #[test]
    fn missing_required_keys_are_named() {
        for key in [
            "mode",
            "role",
            "cluster_id",
            "cluster_key",
            "listen",
            "peer",
            "lock_file",
            "gateway",
        ] {
            let text: String = HA_REQUIRED
                .lines()
                .filter(|line| !line.starts_with(&format!("{key} =")))
                .map(|line| format!("{line}\n"))
                .collect();
            let shown = parse(&format!("{SERVER}{text}")).unwrap_err().to_string();
            assert!(shown.contains(&format!("missing field `{key}`")), "{shown}");
        }
    }

    #[test]
    fn worst_case_failover_is_detection_plus_a_passive_interval_plus_a_ping() {
        // 3 × 100 + 250 + 100.
        assert_eq!(ha("").worst_case_failover(), Duration::from_millis(650));
        let ha = ha("ping_interval_ms = 200\nheartbeat_misses_max = 4\n\
                     active_lock_reacquisition_interval_ms = 200\n\
                     passive_lock_reacquisition_interval_ms = 500");
        assert_eq!(ha.timings().heartbeat_timeout(), Duration::from_millis(800));
        assert_eq!(ha.worst_case_failover(), Duration::from_millis(1_500));
    }

    #[test]
    fn debug_never_shows_the_cluster_key() {
        let shown = format!("{:?}", parse(&ha_profile("")).unwrap().0);
        assert!(!shown.contains("change-me-please"), "{shown}");
        assert!(shown.contains("<16 characters redacted>"), "{shown}");
        // And neither does a refusal of a short key.
        let error = parse(&ha_profile("cluster_key = \"hunter2-hunter2\"")).unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn words_print_as_the_profile_spells_them() {
        assert_eq!(HaMode::Replicated.to_string(), "replicated");
        assert_eq!(HaMode::Shared.to_string(), "shared");
        assert_eq!(HaRole::Primary.to_string(), "primary");
        assert_eq!(HaRole::Secondary.title(), "Secondary");
        assert_eq!(HaStandby::Warm.to_string(), "warm");
        assert_eq!(HaStandalone::Refuse.to_string(), "refuse");
        assert_eq!(HaAckMode::Replicated.to_string(), "replicated");
        assert_eq!(HaAckMode::Local.to_string(), "local");
    }
}
