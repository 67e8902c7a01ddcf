//! `[broker]`: destination and delivery behaviour.

use super::Invalid;
use crate::protocol::Destination;

/// Whether SEND or SUBSCRIBE to an unknown destination creates it by default:
/// the convention of STOMP brokers, and what a first-time user expects.
pub const AUTO_CREATE_DEFAULT: bool = true;

/// Prefetch used when a SUBSCRIBE asks for 0, by default: enough unacked
/// deliveries in flight to keep a consumer busy across a network round trip
/// without letting one slow consumer hoard a queue.
pub const DEFAULT_PREFETCH_DEFAULT: u32 = 256;

/// Largest prefetch a profile may set: bounds the deliveries, and so the
/// memory, one subscription can hold unacknowledged.
pub const DEFAULT_PREFETCH_MAX: u32 = 65_535;

/// Deliveries of a queue message before it moves to the dead-letter queue,
/// by default. Ten survives consumer crashes and restarts; a message that
/// fails more often is poison and would otherwise block its queue forever.
pub const MAX_DELIVERIES_DEFAULT: u32 = 10;

/// How long a producer may stay silent before the broker may forget its
/// last sequence (and so stop recognising its replayed duplicates), by
/// default: a week, longer than any client outbox waits to replay.
pub const PRODUCER_IDLE_EXPIRY_S_DEFAULT: u64 = 7 * 24 * 3600;

/// Dead-letter queue by default.
pub const DEAD_LETTER_QUEUE_DEFAULT: &str = "/queue/DLQ";

/// `[broker]`: how destinations are created and messages delivered. Every
/// key is optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// SEND or SUBSCRIBE to an unknown destination creates it.
    pub auto_create: bool,
    /// Prefetch used when a SUBSCRIBE asks for 0; 1..=65535.
    pub default_prefetch: u32,
    /// Deliveries before a queue message moves to the dead-letter queue;
    /// 0 means never.
    pub max_deliveries: u32,
    /// Where such messages go; must be a `/queue/` destination.
    pub dead_letter_queue: String,
    /// Seconds after a producer's last send when the broker may drop its
    /// duplicate-detection state; at least 1.
    pub producer_idle_expiry_s: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            auto_create: AUTO_CREATE_DEFAULT,
            default_prefetch: DEFAULT_PREFETCH_DEFAULT,
            max_deliveries: MAX_DELIVERIES_DEFAULT,
            dead_letter_queue: DEAD_LETTER_QUEUE_DEFAULT.to_owned(),
            producer_idle_expiry_s: PRODUCER_IDLE_EXPIRY_S_DEFAULT,
        }
    }
}

impl BrokerConfig {
    /// Checks every key of the section, naming the offending one.
    pub fn validate(&self) -> Result<(), Invalid> {
        let invalid = |key: &str, why: String| Err((format!("broker.{key}"), why));
        if !(1..=DEFAULT_PREFETCH_MAX).contains(&self.default_prefetch) {
            return invalid(
                "default_prefetch",
                format!(
                    "{} is outside 1..={DEFAULT_PREFETCH_MAX}",
                    self.default_prefetch
                ),
            );
        }
        if self.producer_idle_expiry_s == 0 {
            return invalid(
                "producer_idle_expiry_s",
                "0 would forget every producer at once, so a replayed send could be \
                 enqueued twice: use at least 1"
                    .into(),
            );
        }
        let queue: Destination = match self.dead_letter_queue.parse() {
            Ok(queue) => queue,
            Err(e) => return invalid("dead_letter_queue", e.to_string()),
        };
        if !queue.is_queue() {
            return invalid(
                "dead_letter_queue",
                format!(
                    "{queue} is a topic: dead letters must wait until someone reads them, \
                     so this must be a /queue/ destination"
                ),
            );
        }
        Ok(())
    }
}
