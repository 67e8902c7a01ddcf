//! Destination names: `/queue/NAME` and `/topic/NAME` everywhere (CLI,
//! client API, logs, journal), the convention of STOMP brokers.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Longest destination name (after the `/queue/` or `/topic/` prefix).
pub const DESTINATION_NAME_BYTES_MAX: usize = 200;

/// Whether a destination is a queue (competing consumers) or a topic (fan-out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestinationKind {
    Queue,
    Topic,
}

/// A validated destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    kind: DestinationKind,
    /// The whole text, prefix included, kept so that encoding a frame or a
    /// record needs no formatting; shared, so that the copies a send hands
    /// around (request, command, a connection's last destination) cost no
    /// allocation. (Ordering by it orders queues first, as by kind then
    /// name.)
    text: Arc<str>,
}

/// Length of `/queue/` and `/topic/` alike.
const PREFIX_BYTES: usize = 7;

/// Why a destination string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("destination {0:?} must start with /queue/ or /topic/")]
    Prefix(String),
    #[error("destination {0:?} has an empty name")]
    Empty(String),
    #[error("destination {text:?} is longer than {max} bytes", max = DESTINATION_NAME_BYTES_MAX)]
    TooLong { text: String },
    #[error("destination {text:?} may only use letters, digits and . _ - : (found {found:?})")]
    Character { text: String, found: char },
}

impl Destination {
    pub fn new(kind: DestinationKind, name: &str) -> Result<Destination, DestinationError> {
        Destination::validated(kind, &format!("{}{name}", prefix(kind)))
    }

    /// Checks the name part of `text` (which starts with `kind`'s prefix)
    /// and keeps the whole text: one allocation, exactly its size.
    fn validated(kind: DestinationKind, text: &str) -> Result<Destination, DestinationError> {
        let name = &text[PREFIX_BYTES..];
        if name.is_empty() {
            return Err(DestinationError::Empty(text.to_owned()));
        }
        if name.len() > DESTINATION_NAME_BYTES_MAX {
            return Err(DestinationError::TooLong {
                text: text.to_owned(),
            });
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(DestinationError::Character {
                text: text.to_owned(),
                found,
            });
        }
        Ok(Destination {
            kind,
            text: Arc::from(text),
        })
    }

    pub fn queue(name: &str) -> Result<Destination, DestinationError> {
        Destination::new(DestinationKind::Queue, name)
    }

    pub fn topic(name: &str) -> Result<Destination, DestinationError> {
        Destination::new(DestinationKind::Topic, name)
    }

    pub fn kind(&self) -> DestinationKind {
        self.kind
    }

    /// The name without its prefix.
    pub fn name(&self) -> &str {
        &self.text[PREFIX_BYTES..]
    }

    /// The whole destination as written, e.g. `/queue/orders`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_queue(&self) -> bool {
        self.kind == DestinationKind::Queue
    }
}

const _: () = assert!("/queue/".len() == PREFIX_BYTES && "/topic/".len() == PREFIX_BYTES);

fn prefix(kind: DestinationKind) -> &'static str {
    match kind {
        DestinationKind::Queue => "/queue/",
        DestinationKind::Topic => "/topic/",
    }
}

impl FromStr for Destination {
    type Err = DestinationError;
    fn from_str(text: &str) -> Result<Destination, DestinationError> {
        match [DestinationKind::Queue, DestinationKind::Topic]
            .into_iter()
            .find(|&kind| text.starts_with(prefix(kind)))
        {
            Some(kind) => Destination::validated(kind, text),
            None => Err(DestinationError::Prefix(text.to_owned())),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse_and_print_with_their_prefix() {
        let queue: Destination = "/queue/orders.eu-1".parse().unwrap();
        assert!(queue.is_queue());
        assert_eq!(queue.name(), "orders.eu-1");
        assert_eq!(queue.to_string(), "/queue/orders.eu-1");
        let topic: Destination = "/topic/prices".parse().unwrap();
        assert_eq!(topic.kind(), DestinationKind::Topic);
    }

    #[test]
    fn bad_destinations_say_why() {
        assert!(matches!(
            "orders".parse::<Destination>(),
            Err(DestinationError::Prefix(_))
        ));
        assert!(matches!(
            "/queue/".parse::<Destination>(),
            Err(DestinationError::Empty(_))
        ));
        assert!(matches!(
            "/topic/a b".parse::<Destination>(),
            Err(DestinationError::Character { found: ' ', .. })
        ));
        let long = format!("/queue/{}", "x".repeat(201));
        assert!(matches!(
            long.parse::<Destination>(),
            Err(DestinationError::TooLong { .. })
        ));
    }
}
