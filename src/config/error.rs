//! The one error type of profile loading.

use std::io;
use std::path::PathBuf;

/// Why a profile cannot be used. Each stops start-up; the message names the
/// profile, and for `Parse` and `Invalid` the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The profile file could not be read.
    #[error("cannot read profile {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The text is not TOML, or not shaped like a profile: an unknown key, a
    /// missing required key, or a value of the wrong type. `message` is
    /// toml's own, which names the key with its line and column.
    #[error("profile {origin}: {message}")]
    Parse { origin: String, message: String },
    /// A value out of range, or values that cannot work together.
    #[error("profile {origin}: {key}: {why}")]
    Invalid {
        origin: String,
        key: String,
        why: String,
    },
}
