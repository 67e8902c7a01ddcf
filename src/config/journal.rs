//! `[journal]`: the options every shard journal is opened with.

use super::Invalid;
use crate::journal::{Durability, JournalError, JournalOptions};
use std::time::Duration;

/// Longest flush linger accepted. A linger holds an idle server's acks back
/// to gather bigger batches; past 100 ms it costs more latency than any flush
/// it saves, so a larger value is most likely milliseconds written as
/// microseconds.
pub const FLUSH_LINGER_US_MAX: u64 = 100_000;

/// `[journal]`: options of each shard's journal (see `JournalOptions`, whose
/// defaults these are). Every key is optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Size of each segment file; a multiple of 4096.
    pub segment_bytes: u64,
    /// Cap on the new bytes of one write batch, and so on a record's size.
    pub batch_bytes_max: usize,
    /// How long a batch may wait for more records when no flush is in
    /// flight; 0 flushes at once.
    pub flush_linger_us: u64,
    /// `"direct-dsync"` or `"write-fdatasync"`. Kept as text so that a bad
    /// value is reported by `validate` under its key rather than by the TOML
    /// parser.
    pub durability: String,
    /// Segment files kept zero-filled or recycled, ready for rotation.
    pub spare_segments: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        let options = JournalOptions::default();
        JournalConfig {
            segment_bytes: options.segment_bytes,
            batch_bytes_max: options.batch_bytes_max,
            flush_linger_us: options.flush_linger.as_micros() as u64,
            durability: options.durability.to_string(),
            spare_segments: options.spare_segments,
        }
    }
}

impl JournalConfig {
    /// Checks every key of the section, with the journal's own rules (such
    /// as `batch_bytes_max` against `segment_bytes`), naming the offending
    /// key as `journal.{key}`.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.try_options().map(drop)
    }

    /// The journal options this section describes.
    ///
    /// # Panics
    ///
    /// If `durability` is not a known mode. [`Self::validate`] rules that
    /// out, and `Profile::load` and `Profile::parse` always run it, so only a
    /// config built or changed in code without validating can get here.
    pub fn options(&self) -> JournalOptions {
        let durability = self.durability.parse().unwrap_or_else(|why| {
            panic!("JournalConfig::options on a config that failed validate(): {why}")
        });
        self.options_with(durability)
    }

    fn options_with(&self, durability: Durability) -> JournalOptions {
        JournalOptions {
            segment_bytes: self.segment_bytes,
            batch_bytes_max: self.batch_bytes_max,
            flush_linger: Duration::from_micros(self.flush_linger_us),
            durability,
            spare_segments: self.spare_segments,
            ..JournalOptions::default()
        }
    }

    fn try_options(&self) -> Result<JournalOptions, Invalid> {
        let durability = self
            .durability
            .parse()
            .map_err(|why| ("journal.durability".to_owned(), why))?;
        if self.flush_linger_us > FLUSH_LINGER_US_MAX {
            return Err((
                "journal.flush_linger_us".to_owned(),
                format!(
                    "{} exceeds {FLUSH_LINGER_US_MAX} (the value is in microseconds)",
                    self.flush_linger_us
                ),
            ));
        }
        let options = self.options_with(durability);
        options.validate().map_err(|error| match error {
            JournalError::InvalidOption { key, why } => (format!("journal.{key}"), why),
            // validate() only reports invalid options; keep anything else
            // readable rather than assume it away.
            other => ("journal".to_owned(), other.to_string()),
        })?;
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_journal_defaults() {
        let config = JournalConfig::default();
        config.validate().unwrap();
        let options = config.options();
        let defaults = JournalOptions::default();
        assert_eq!(options.segment_bytes, defaults.segment_bytes);
        assert_eq!(options.batch_bytes_max, defaults.batch_bytes_max);
        assert_eq!(options.flush_linger, defaults.flush_linger);
        assert_eq!(options.durability, defaults.durability);
        assert_eq!(options.spare_segments, defaults.spare_segments);
        assert!(options.faults.is_none());
    }

    #[test]
    fn every_key_reaches_the_journal_options() {
        let config = JournalConfig {
            segment_bytes: 1 << 20,
            batch_bytes_max: 64 * 1024,
            flush_linger_us: 250,
            durability: "write-fdatasync".to_owned(),
            spare_segments: 5,
        };
        config.validate().unwrap();
        let options = config.options();
        assert_eq!(options.segment_bytes, 1 << 20);
        assert_eq!(options.batch_bytes_max, 64 * 1024);
        assert_eq!(options.flush_linger, Duration::from_micros(250));
        assert_eq!(options.durability, Durability::WriteFdatasync);
        assert_eq!(options.spare_segments, 5);
    }

    #[test]
    #[should_panic(expected = "failed validate()")]
    fn options_of_an_unvalidated_bad_durability_panic() {
        let config = JournalConfig {
            durability: "fast".to_owned(),
            ..JournalConfig::default()
        };
        config.options();
    }
}
