//! Keepalive deadlines: a client that sends nothing for 1.5 x its keepalive is gone
//! [MQTT-3.1.2-24]. Pure time arithmetic; the connection owns the timer.

use std::time::{Duration, Instant};

/// The keepalive rule of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    grace: Option<Duration>,
}

impl KeepAlive {
    /// The rule for a CONNECT keepalive of `secs` seconds; 0 turns it off.
    pub fn new(secs: u16) -> Self {
        KeepAlive {
            grace: (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500)),
        }
    }

    /// The keepalive the client asked for, in seconds (0 = off).
    pub fn secs(&self) -> u16 {
        self.grace.map_or(0, |g| {
            u16::try_from(g.as_millis() / 1500).unwrap_or(u16::MAX)
        })
    }

    /// The longest silence allowed, or `None` if keepalive is off.
    pub fn grace(&self) -> Option<Duration> {
        self.grace
    }

    /// When the connection expires if nothing arrives after `last_packet`.
    pub fn deadline(&self, last_packet: Instant) -> Option<Instant> {
        self.grace.map(|g| last_packet + g)
    }

    /// True if a connection whose last packet came at `last_packet` has expired at `now`.
    pub fn expired(&self, last_packet: Instant, now: Instant) -> bool {
        self.deadline(last_packet).is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_a_half_times() {
        // [MQTT-3.1.2-24]
        let t0 = Instant::now();
        let k = KeepAlive::new(10);
        assert_eq!(k.grace(), Some(Duration::from_secs(15)));
        assert!(!k.expired(t0, t0 + Duration::from_millis(14_999)));
        assert!(k.expired(t0, t0 + Duration::from_secs(15)));
        let k = KeepAlive::new(1);
        assert_eq!(k.deadline(t0), Some(t0 + Duration::from_millis(1500)));
        let k = KeepAlive::new(65_535);
        assert_eq!(k.grace(), Some(Duration::from_millis(98_302_500)));
    }

    #[test]
    fn zero_is_off() {
        let t0 = Instant::now();
        let k = KeepAlive::new(0);
        assert_eq!(k.deadline(t0), None);
        assert!(!k.expired(t0, t0 + Duration::from_secs(1_000_000)));
    }
}
