//! Server profiles: the TOML file a server starts from, its types, and the
//! checks that run before anything else starts.
//!
//! ```text
//!   profile.toml ──toml + serde──▶ Profile ──validate()──▶ Profile the server may use
//!                 (shape: unknown   (values: ranges and
//!                  keys, types)      combinations)
//! ```
//!
//! A profile has the sections `[server]` (required), `[journal]`, `[broker]`,
//! `[ha]` (present only for a server of an HA pair), `[net.client]` and
//! `[net.ha]`; `profiles/README.md` lists every key. Unknown keys, bad values
//! and impossible combinations stop start-up with a [`ConfigError`] naming the
//! profile, the key (`server.shards`) and why. Values that work but are not
//! exact (an interval that must be a multiple of another) are normalized
//! first, and each change is logged as a warning. Defaults live here, as
//! named constants with their reasons, next to the key they fill.
//!
//! What it must never do: open files other than the profile, bind sockets or
//! create directories (that is start-up's work, after the profile is known
//! good), or quietly replace a bad value with a default.

mod broker;
mod error;
mod ha;
mod journal;
mod server;

pub use broker::{
    AUTO_CREATE_DEFAULT, BrokerConfig, DEAD_LETTER_QUEUE_DEFAULT, DEFAULT_PREFETCH_DEFAULT,
    DEFAULT_PREFETCH_MAX, MAX_DELIVERIES_DEFAULT,
};
pub use error::ConfigError;
pub(crate) use ha::check_word;
pub use ha::{
    ACTIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT, CLUSTER_ID_CHARS_MAX, CLUSTER_KEY_CHARS_MAX,
    CLUSTER_KEY_CHARS_MIN, ClusterKey, FAILBACK_DEFAULT, HA_INTERVAL_MS_MAX, HA_INTERVAL_MS_MIN,
    HA_TIMEOUT_MS_MAX, HA_TIMEOUT_MS_MIN, HEARTBEAT_MISSES_MAX_DEFAULT, HEARTBEAT_MISSES_MAX_LIMIT,
    HaAckMode, HaConfig, HaMode, HaRole, HaStandalone, HaStandby, HaTimings,
    MAX_WAIT_TIMEOUT_MS_DEFAULT, PASSIVE_LOCK_REACQUISITION_INTERVAL_MS_DEFAULT,
    PING_INTERVAL_MS_DEFAULT, PRECEDENCE_PRIMARY_DEFAULT, PRECEDENCE_SECONDARY_DEFAULT,
    SOCKET_CREATION_TIMEOUT_MS_DEFAULT, SOCKET_INITIALIZATION_TIMEOUT_MS_DEFAULT, check_cluster_id,
};
pub use journal::{FLUSH_LINGER_US_MAX, JournalConfig};
pub use server::{
    ADMIN_LISTEN_DEFAULT, ADMIN_PORT_DEFAULT, CLIENT_LISTEN_DEFAULT, CLIENT_PORT_DEFAULT,
    MAX_CONNECTIONS_DEFAULT, MAX_CONNECTIONS_MAX, SERVER_NAME_CHARS_MAX, SHARDS_MAX, ServerConfig,
};

use crate::net::SocketOptions;
use std::path::Path;

/// A key that failed validation, spelled in full (`journal.durability`), and
/// why. The same shape as [`SocketOptions::validate`] returns.
pub type Invalid = (String, String);

/// A whole server profile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// `[server]`, the only required section.
    pub server: ServerConfig,
    /// `[journal]`.
    #[serde(default)]
    pub journal: JournalConfig,
    /// `[broker]`.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// `[ha]`: absent for a single server.
    #[serde(default)]
    pub ha: Option<HaConfig>,
    /// `[net.*]`.
    #[serde(default)]
    pub net: NetConfig,
}

/// `[net.*]`: socket options per kind of connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// `[net.client]`: client listener sockets and the connections they
    /// accept.
    pub client: SocketOptions,
    /// `[net.ha]`: the HA listener and the links between the two servers.
    /// Its connect and handshake timeouts are not used: `[ha]` has its own
    /// (see [`HaConfig::link_socket_options`]).
    pub ha: SocketOptions,
}

impl Profile {
    /// Reads, parses and validates the profile at `path`. Errors name `path`.
    pub fn load(path: &Path) -> Result<Profile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Profile::parse(&text, &path.display().to_string())
    }

    /// Parses, normalizes and validates profile text, and logs each warning
    /// (`tracing::warn`). `origin` names it in errors (a path, or something
    /// like `<test>`).
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ConfigError> {
        let (profile, warnings) = Profile::parse_with_warnings(text, origin)?;
        for warning in &warnings {
            tracing::warn!("profile {origin}: {warning}");
        }
        Ok(profile)
    }

    /// [`Self::parse`] without the logging: the profile and its warnings.
    pub fn parse_with_warnings(
        text: &str,
        origin: &str,
    ) -> Result<(Profile, Vec<String>), ConfigError> {
        let mut profile: Profile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            // toml's Display names the key, its line and column, and quotes
            // the line; keep all of it.
            message: e.to_string().trim_end().to_owned(),
        })?;
        let mut warnings = profile.normalize();
        warnings.extend(
            profile
                .validate()
                .map_err(|(key, why)| ConfigError::Invalid {
                    origin: origin.to_owned(),
                    key,
                    why,
                })?,
        );
        Ok((profile, warnings))
    }

    /// Adjusts values that are usable but not exact (see
    /// [`HaConfig::normalize`]); returns what changed, one line each.
    pub fn normalize(&mut self) -> Vec<String> {
        match &mut self.ha {
            Some(ha) => ha.normalize(),
            None => Vec::new(),
        }
    }

    /// Checks every section and the combinations between keys; returns the
    /// first offending key in full and why, or the warnings about values
    /// that work but deserve a second look.
    pub fn validate(&self) -> Result<Vec<String>, Invalid> {
        let mut warnings = Vec::new();
        self.server.validate()?;
        self.journal.validate()?;
        self.broker.validate()?;
        self.net.client.validate("net.client")?;
        self.net.ha.validate("net.ha")?;
        if let Some(ha) = &self.ha {
            warnings.extend(ha.validate()?);
            for (key, other) in [
                ("client_listen", self.server.client_listen),
                ("admin_listen", self.server.admin_listen),
            ] {
                if server::listeners_collide(ha.listen, other) {
                    return Err((
                        "ha.listen".to_owned(),
                        format!(
                            "{} takes the same port as server.{key} = {other}: \
                             the listeners need different ports",
                            ha.listen
                        ),
                    ));
                }
            }
        }
        // [net.ha] shares its type with [net.client], but HA links take
        // their timeouts from [ha]; say so rather than ignore a value
        // someone set on purpose.
        let defaults = SocketOptions::default();
        for (key, value, default, instead) in [
            (
                "connect_timeout_ms",
                self.net.ha.connect_timeout_ms,
                defaults.connect_timeout_ms,
                "ha.socket_creation_timeout_ms",
            ),
            (
                "handshake_timeout_ms",
                self.net.ha.handshake_timeout_ms,
                defaults.handshake_timeout_ms,
                "ha.socket_initialization_timeout_ms",
            ),
        ] {
            if value != default {
                warnings.push(format!(
                    "net.ha.{key} = {value} is not used: HA links use {instead}"
                ));
            }
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests;
