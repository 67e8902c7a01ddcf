//! Server profiles: the TOML file a server starts from, its types, and the
//! checks that run before anything else starts.
//!
//! ```text
//!   profile.toml ──toml + serde──▶ Profile ──validate()──▶ Profile the server may use
//!                 (shape: unknown   (values: ranges and
//!                  keys, types)      combinations)
//! ```
//!
//! A profile has the sections `[server]` (required), `[journal]`, `[broker]`
//! and `[net.client]`; `profiles/README.md` lists every key. Unknown keys, bad
//! values and impossible combinations stop start-up with a [`ConfigError`]
//! naming the profile, the key (`server.shards`) and why. Defaults live here,
//! as named constants with their reasons, next to the key they fill.
//!
//! What it must never do: open files other than the profile, bind sockets or
//! create directories (that is start-up's work, after the profile is known
//! good), or quietly replace a bad value with a default.

mod broker;
mod error;
mod journal;
mod server;

pub use broker::{
    AUTO_CREATE_DEFAULT, BrokerConfig, DEAD_LETTER_QUEUE_DEFAULT, DEFAULT_PREFETCH_DEFAULT,
    DEFAULT_PREFETCH_MAX, MAX_DELIVERIES_DEFAULT,
};
pub use error::ConfigError;
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
    /// `[net.*]`.
    #[serde(default)]
    pub net: NetConfig,
}

/// `[net.*]`: socket options per kind of connection. HA links will get their
/// own table beside `client`.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// `[net.client]`: client listener sockets and the connections they
    /// accept.
    pub client: SocketOptions,
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

    /// Parses and validates profile text. `origin` names it in errors (a
    /// path, or something like `<test>`).
    pub fn parse(text: &str, origin: &str) -> Result<Profile, ConfigError> {
        let profile: Profile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            // toml's Display names the key, its line and column, and quotes
            // the line; keep all of it.
            message: e.to_string().trim_end().to_owned(),
        })?;
        profile
            .validate()
            .map_err(|(key, why)| ConfigError::Invalid {
                origin: origin.to_owned(),
                key,
                why,
            })?;
        Ok(profile)
    }

    /// Checks every section and the combinations between keys; returns the
    /// first offending key in full and why.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.server.validate()?;
        self.journal.validate()?;
        self.broker.validate()?;
        self.net.client.validate("net.client")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
