//! `SocketOptions`: the per-socket settings of a profile's `[net.*]` section.

use std::time::Duration;

/// Nagle's algorithm is off by default: the broker writes whole frames and
/// batches them itself, so holding a small frame back for up to an RTT only
/// adds latency to acks and deliveries.
pub const NODELAY_DEFAULT: bool = true;

/// Keepalive idle time by default. Half a minute finds a peer that vanished
/// without a FIN (power loss, a dropped NAT entry) within about two minutes
/// (see [`KEEPALIVE_PROBES`]) while costing one tiny packet per idle
/// connection per half minute.
pub const KEEPALIVE_SECS_DEFAULT: u32 = 30;

/// Unanswered keepalive probes, sent `keepalive_secs` apart, before the
/// kernel drops a connection. With the Linux default (9 probes, 75 s apart) a
/// dead peer would hold its connection and its unacked messages for over ten
/// minutes.
pub const KEEPALIVE_PROBES: u32 = 3;

/// Linux refuses a `TCP_KEEPIDLE` or `TCP_KEEPINTVL` above this
/// (`MAX_TCP_KEEPIDLE`); checking it here turns a start-up `EINVAL` into a
/// message naming the key.
pub const KEEPALIVE_SECS_MAX: u32 = 32_767;

/// Connect timeout by default: a few round trips on a congested LAN, yet short
/// enough that a failover does not wait long on a peer that is gone.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u32 = 3_000;

/// Time a new connection has to complete its protocol handshake by default;
/// longer than the connect timeout because it includes the first exchange of
/// frames, short enough that idle half-open connections do not pile up.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u32 = 5_000;

/// Shortest timeout accepted; zero would mean "fail at once" to some callers
/// and "wait forever" to others, so it is refused.
pub const TIMEOUT_MS_MIN: u32 = 1;

/// Longest timeout accepted (ten minutes): anything longer is a typo in
/// practice, and would keep a failed peer's resources for too long.
pub const TIMEOUT_MS_MAX: u32 = 600_000;

/// `TCP_USER_TIMEOUT` by default, for every `[net.*]` table: 0 keeps the
/// kernel's behaviour (retransmitting unacknowledged data for about 15
/// minutes, per `net.ipv4.tcp_retries2`). A bound tighter than the network's
/// worst retransmission burst drops healthy connections, so no value suits
/// every deployment; operators set it per table, `[net.ha]` first.
pub const TCP_USER_TIMEOUT_MS_DEFAULT: u32 = 0;

/// Largest socket buffer accepted. The kernel caps requests at
/// `net.core.wmem_max` / `rmem_max` anyway; this bound catches typos (an extra
/// zero) before they reach it.
pub const SOCKET_BUFFER_BYTES_MAX: u32 = 64 * 1024 * 1024;

/// Settings applied to every socket of one kind (listener and its accepted
/// connections, or outgoing connections).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketOptions {
    /// `TCP_NODELAY`: send small writes at once instead of waiting for acks.
    pub nodelay: bool,
    /// `SO_SNDBUF` to request; 0 leaves the kernel default (and its
    /// autotuning) alone.
    pub send_buffer_bytes: u32,
    /// `SO_RCVBUF` to request; 0 leaves the kernel default (and its
    /// autotuning) alone.
    pub recv_buffer_bytes: u32,
    /// TCP keepalive idle time and probe interval in seconds; 0 turns
    /// keepalive off.
    pub keepalive_secs: u32,
    /// How long `connect` waits for the TCP handshake.
    pub connect_timeout_ms: u32,
    /// How long a new connection may take to complete the protocol handshake;
    /// enforced by the protocol layer, not here.
    pub handshake_timeout_ms: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before
    /// the kernel drops the connection; 0 keeps the kernel default. Keepalive
    /// only probes an *idle* connection, so while data is queued a dead peer
    /// would otherwise hold the connection for the kernel's full
    /// retransmission time (about 15 minutes); with this set, a dead HA peer
    /// is noticed within the bound even while replication data is in flight.
    pub tcp_user_timeout_ms: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: NODELAY_DEFAULT,
            send_buffer_bytes: 0,
            recv_buffer_bytes: 0,
            keepalive_secs: KEEPALIVE_SECS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            tcp_user_timeout_ms: TCP_USER_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl SocketOptions {
    /// Checks every option. On failure returns the offending key, spelled
    /// `{prefix}.{field}` (for example `net.client.connect_timeout_ms`), and
    /// why it is refused.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let invalid = |field: &str, why: String| Err((format!("{prefix}.{field}"), why));
        for (field, value) in [
            ("send_buffer_bytes", self.send_buffer_bytes),
            ("recv_buffer_bytes", self.recv_buffer_bytes),
        ] {
            if value > SOCKET_BUFFER_BYTES_MAX {
                return invalid(
                    field,
                    format!(
                        "{value} exceeds {SOCKET_BUFFER_BYTES_MAX} (use 0 for the kernel default)"
                    ),
                );
            }
        }
        if self.keepalive_secs > KEEPALIVE_SECS_MAX {
            return invalid(
                "keepalive_secs",
                format!(
                    "{} exceeds {KEEPALIVE_SECS_MAX}, the kernel's limit (use 0 to turn keepalive off)",
                    self.keepalive_secs
                ),
            );
        }
        for (field, value) in [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
        ] {
            if !(TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&value) {
                return invalid(
                    field,
                    format!("{value} is outside {TIMEOUT_MS_MIN}..={TIMEOUT_MS_MAX}"),
                );
            }
        }
        // Unlike the timeouts above, 0 has one meaning here (the kernel
        // default), so only the upper bound applies.
        if self.tcp_user_timeout_ms > TIMEOUT_MS_MAX {
            return invalid(
                "tcp_user_timeout_ms",
                format!(
                    "{} exceeds {TIMEOUT_MS_MAX} (use 0 for the kernel default)",
                    self.tcp_user_timeout_ms
                ),
            );
        }
        Ok(())
    }

    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.into())
    }

    /// `handshake_timeout_ms` as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.into())
    }

    /// Keepalive idle time, or `None` when keepalive is off.
    pub fn keepalive(&self) -> Option<Duration> {
        (self.keepalive_secs > 0).then(|| Duration::from_secs(self.keepalive_secs.into()))
    }

    /// `TCP_USER_TIMEOUT` to set, or `None` for the kernel default.
    pub fn tcp_user_timeout(&self) -> Option<Duration> {
        (self.tcp_user_timeout_ms > 0)
            .then(|| Duration::from_millis(self.tcp_user_timeout_ms.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let options = SocketOptions::default();
        options.validate("net.client").unwrap();
        assert!(options.nodelay);
        assert_eq!(options.send_buffer_bytes, 0);
        assert_eq!(options.recv_buffer_bytes, 0);
        assert_eq!(options.keepalive(), Some(Duration::from_secs(30)));
        assert_eq!(options.connect_timeout(), Duration::from_millis(3_000));
        assert_eq!(options.handshake_timeout(), Duration::from_millis(5_000));
        assert_eq!(options.tcp_user_timeout(), None);
    }

    #[test]
    fn bad_options_name_the_prefixed_key_and_why() {
        let cases = [
            (
                SocketOptions {
                    connect_timeout_ms: 0,
                    ..SocketOptions::default()
                },
                "net.client.connect_timeout_ms",
                "0 is outside 1..=600000",
            ),
            (
                SocketOptions {
                    handshake_timeout_ms: 600_001,
                    ..SocketOptions::default()
                },
                "net.client.handshake_timeout_ms",
                "600001 is outside 1..=600000",
            ),
            (
                SocketOptions {
                    send_buffer_bytes: SOCKET_BUFFER_BYTES_MAX + 1,
                    ..SocketOptions::default()
                },
                "net.client.send_buffer_bytes",
                "exceeds 67108864",
            ),
            (
                SocketOptions {
                    recv_buffer_bytes: u32::MAX,
                    ..SocketOptions::default()
                },
                "net.client.recv_buffer_bytes",
                "exceeds 67108864",
            ),
            (
                SocketOptions {
                    keepalive_secs: KEEPALIVE_SECS_MAX + 1,
                    ..SocketOptions::default()
                },
                "net.client.keepalive_secs",
                "kernel's limit",
            ),
            (
                SocketOptions {
                    tcp_user_timeout_ms: TIMEOUT_MS_MAX + 1,
                    ..SocketOptions::default()
                },
                "net.client.tcp_user_timeout_ms",
                "600001 exceeds 600000 (use 0 for the kernel default)",
            ),
        ];
        for (options, key, why) in cases {
            let (got_key, got_why) = options.validate("net.client").unwrap_err();
            assert_eq!(got_key, key);
            assert!(got_why.contains(why), "{key}: {got_why}");
        }
    }

    #[test]
    fn zero_keepalive_turns_it_off() {
        let options = SocketOptions {
            keepalive_secs: 0,
            ..SocketOptions::default()
        };
        options.validate("net.client").unwrap();
        assert_eq!(options.keepalive(), None);
    }

    #[test]
    fn tcp_user_timeout_accepts_zero_and_the_maximum() {
        for (value, expected) in [
            (0, None),
            (1, Some(Duration::from_millis(1))),
            (TIMEOUT_MS_MAX, Some(Duration::from_millis(600_000))),
        ] {
            let options = SocketOptions {
                tcp_user_timeout_ms: value,
                ..SocketOptions::default()
            };
            options.validate("net.ha").unwrap();
            assert_eq!(options.tcp_user_timeout(), expected);
        }
    }

    #[test]
    fn toml_fills_missing_fields_with_defaults_and_rejects_unknown_ones() {
        let options: SocketOptions = toml::from_str("nodelay = false").unwrap();
        assert_eq!(
            options,
            SocketOptions {
                nodelay: false,
                ..SocketOptions::default()
            }
        );
        let error = toml::from_str::<SocketOptions>("no_delay = false")
            .unwrap_err()
            .to_string();
        assert!(error.contains("no_delay"), "{error}");
    }
}
