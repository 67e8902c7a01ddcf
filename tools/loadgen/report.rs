//! The final report: as text for a person, as one JSON object (`--json`)
//! for scripts.

use serde::Serialize;
use std::fmt::Write;
use twinmq::bench::Latency;

/// Messages and bytes over the measured time.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub messages: u64,
    pub msgs_s: f64,
    pub mib_s: f64,
}

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    pub fn of(latency: &Latency) -> Percentiles {
        Percentiles {
            samples: latency.len(),
            p50_us: latency.quantile_us(0.5),
            p99_us: latency.quantile_us(0.99),
            p999_us: latency.quantile_us(0.999),
            max_us: latency.quantile_us(1.0),
        }
    }
}

/// Acknowledged against delivered, over the whole run (warm-up included).
#[derive(Debug, Clone, Serialize)]
pub struct Checker {
    pub attempted: u64,
    pub acknowledged: u64,
    /// Distinct sends delivered to at least one consumer.
    pub delivered: u64,
    /// Whether there were consumers to check against.
    pub checked: bool,
    /// Acknowledged and never delivered.
    pub lost: u64,
    /// Delivered under two message ids: enqueued twice.
    pub duplicated: u64,
}

/// What the clients' durable connections rode through.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClientFigures {
    pub reconnects: u64,
    pub replayed: u64,
    pub duplicate_acks: u64,
    pub stale_acks: u64,
    pub acked_redeliveries_dropped: u64,
}

/// One scheduled SIGKILL of the active.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// Seconds into the run.
    pub at_s: f64,
    /// Longest gap between acknowledgements around it; `None` when no
    /// acknowledgement came after it.
    pub unavailable_ms: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub producers: usize,
    pub consumers: usize,
    pub destinations: usize,
    pub topic: bool,
    pub size: String,
    pub persistent: bool,
    pub ack_mode: String,
    pub window: usize,
    pub rate: Option<f64>,
    pub warmup_s: f64,
    pub measured_s: f64,
    /// Sends meant to go after the warm-up and acknowledged.
    pub sent: Throughput,
    /// Deliveries of those.
    pub delivered: Throughput,
    pub send_to_ack: Percentiles,
    pub send_to_deliver: Percentiles,
    pub errors: u64,
    pub checker: Checker,
    pub client: ClientFigures,
    pub failovers: Vec<Failover>,
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "twinmq-load: {} — {} producer(s) × window {}{}, {} consumer(s), {} {}(s), {} B, {}, ack {}",
            self.target,
            self.producers,
            self.window,
            self.rate
                .map(|r| format!(" at {r:.0} msgs/s (open loop)"))
                .unwrap_or_default(),
            self.consumers,
            self.destinations,
            if self.topic { "topic" } else { "queue" },
            self.size,
            if self.persistent {
                "persistent"
            } else {
                "non-persistent"
            },
            self.ack_mode
        );
        let _ = writeln!(
            out,
            "measured {:.1} s after {:.1} s of warm-up",
            self.measured_s, self.warmup_s
        );
        for (what, t) in [("sent (acked)", &self.sent), ("delivered", &self.delivered)] {
            let _ = writeln!(
                out,
                "  {what:<14} {:>10} msgs  {:>10.0} msgs/s  {:>8.1} MiB/s",
                t.messages, t.msgs_s, t.mib_s
            );
        }
        for (what, p) in [
            ("send-to-ack", &self.send_to_ack),
            ("send-to-deliver", &self.send_to_deliver),
        ] {
            let _ = writeln!(
                out,
                "  {what:<16} p50 {:>8.0} µs  p99 {:>8.0} µs  p99.9 {:>8.0} µs  max {:>8.0} µs",
                p.p50_us, p.p99_us, p.p999_us, p.max_us
            );
        }
        let c = &self.checker;
        let _ = writeln!(
            out,
            "  checker: attempted {}, acknowledged {}, delivered {}, {}",
            c.attempted,
            c.acknowledged,
            c.delivered,
            if c.checked {
                format!("lost {}, duplicated {}", c.lost, c.duplicated)
            } else {
                "not checked (no consumers)".to_owned()
            }
        );
        let k = &self.client;
        let _ = writeln!(
            out,
            "  errors {}; clients: {} reconnect(s), {} replayed ({} acked as duplicates), {} stale ack(s)",
            self.errors, k.reconnects, k.replayed, k.duplicate_acks, k.stale_acks
        );
        for f in &self.failovers {
            let _ = writeln!(
                out,
                "  failover at {:.1} s: {}",
                f.at_s,
                f.unavailable_ms
                    .map(|ms| format!("unavailable {ms:.0} ms"))
                    .unwrap_or_else(|| "no acknowledgement after it".into())
            );
        }
        out
    }
}
