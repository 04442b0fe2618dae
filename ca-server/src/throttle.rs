//! Failed-PSK throttling per client address, so PSKs cannot be guessed at
//! speed and one address cannot keep the signer busy with refusals.
//!
//! Each address (an IPv4 address, or the /64 of an IPv6 address, since one
//! host usually owns a whole /64) gets a window that opens at its first PSK
//! failure. Once `max_failures` failures fall into the window, the address is
//! blocked for one full window: every `/v1/sign` request from it is answered
//! 429 `too_many_failures` with `Retry-After`, before its body is parsed.
//! The address is the TCP peer's; `X-Forwarded-For` and friends are ignored.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked; beyond
//! that, expired entries are pruned, and if none can go, new addresses share
//! one overflow entry (which then fills and blocks as one, failing closed).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// How many PSK failures an address may have in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed in one window; the next request is refused.
    pub max_failures: u32,
    /// Window length, and how long an address stays blocked.
    pub window: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> ThrottleConfig {
        ThrottleConfig {
            max_failures: 10,
            window: Duration::from_secs(600),
        }
    }
}

/// `serve` flags for the throttle.
#[derive(Debug, Clone, clap::Args)]
pub struct ThrottleArgs {
    /// PSK failures (403) one client address may cause per window before its
    /// requests are refused with 429 for one window.
    #[arg(long, env = "CA_THROTTLE_FAILURES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub throttle_failures: u32,
    /// The throttle window.
    #[arg(long, env = "CA_THROTTLE_WINDOW", default_value = "10m")]
    pub throttle_window: humantime::Duration,
}

impl From<&ThrottleArgs> for ThrottleConfig {
    fn from(a: &ThrottleArgs) -> ThrottleConfig {
        ThrottleConfig {
            max_failures: a.throttle_failures,
            window: a.throttle_window.into(),
        }
    }
}

/// Whom an entry counts: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4([u8; 4]),
    V6Prefix([u8; 8]),
    Overflow,
}

/// The throttle key of an address: IPv4-mapped IPv6 counts as IPv4.
fn key_of(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::V4(v4.octets()),
            None => {
                let mut prefix = [0u8; 8];
                prefix.copy_from_slice(&v6.octets()[..8]);
                Key::V6Prefix(prefix)
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    failures: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn expired(&self, window: Duration, now: Instant) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.window_start) >= window,
        }
    }
}

/// The per-address failure counter.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle {
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> ThrottleConfig {
        self.config
    }

    /// `Err(retry_after)` while `ip` is blocked.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut entries = self.entries.lock().expect("throttle lock");
        let key = tracked_key(&entries, key_of(ip));
        match entries.get(&key).copied() {
            Some(e) if e.expired(self.config.window, now) => {
                entries.remove(&key);
                Ok(())
            }
            Some(Entry {
                blocked_until: Some(until),
                ..
            }) => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Counts one PSK failure of `ip`; `Some(retry_after)` if this failure
    /// blocked the address.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let window = self.config.window;
        let mut entries = self.entries.lock().expect("throttle lock");
        let mut key = key_of(ip);
        if !entries.contains_key(&key) && entries.len() >= MAX_TRACKED {
            entries.retain(|_, e| !e.expired(window, now));
            if entries.len() >= MAX_TRACKED {
                key = Key::Overflow;
            }
        }
        let entry = entries.entry(key).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if entry.expired(window, now) {
            *entry = Entry {
                window_start: now,
                failures: 0,
                blocked_until: None,
            };
        }
        if entry.blocked_until.is_some() {
            return None; // already blocked (a request admitted just before the block)
        }
        entry.failures += 1;
        if entry.failures >= self.config.max_failures {
            entry.blocked_until = Some(now + window);
            return Some(window);
        }
        None
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.entries.lock().expect("throttle lock").len()
    }
}

/// Addresses that could not get an entry of their own share the overflow one.
fn tracked_key(entries: &HashMap<Key, Entry>, key: Key) -> Key {
    if entries.contains_key(&key) || entries.len() < MAX_TRACKED {
        key
    } else {
        Key::Overflow
    }
}

/// Whole seconds for a `Retry-After` header, rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(max: u32, secs: u64) -> Throttle {
        Throttle::new(ThrottleConfig {
            max_failures: max,
            window: Duration::from_secs(secs),
        })
    }

    #[test]
    fn blocks_after_the_limit_for_one_window_then_forgets() {
        let t = throttle(3, 60);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(t.record_failure(ip, t0), None);
        assert_eq!(t.record_failure(ip, t0), None);
        assert!(t.check(ip, t0).is_ok());
        assert_eq!(t.record_failure(ip, t0), Some(Duration::from_secs(60)));
        let at = t0 + Duration::from_secs(20);
        assert_eq!(t.check(ip, at), Err(Duration::from_secs(40)));
        // Another address is not affected.
        assert!(t.check("192.0.2.8".parse().unwrap(), at).is_ok());
        let later = t0 + Duration::from_secs(60);
        assert!(t.check(ip, later).is_ok());
        assert_eq!(t.tracked(), 0);
        assert_eq!(t.record_failure(ip, later), None, "a fresh window");
    }

    #[test]
    fn failures_spread_over_windows_do_not_block() {
        let t = throttle(3, 10);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + Duration::from_secs(6 * i);
            assert_eq!(t.record_failure(ip, now), None, "failure {i}");
            assert!(t.check(ip, now).is_ok());
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = throttle(2, 60);
        let now = Instant::now();
        t.record_failure("2001:db8:1:2::1".parse().unwrap(), now);
        t.record_failure("2001:db8:1:2::ffff".parse().unwrap(), now);
        assert!(
            t.check("2001:db8:1:2:abcd::9".parse().unwrap(), now)
                .is_err()
        );
        assert!(t.check("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        t.record_failure("::ffff:192.0.2.1".parse().unwrap(), now);
        t.record_failure("192.0.2.1".parse().unwrap(), now);
        assert!(t.check("192.0.2.1".parse().unwrap(), now).is_err());
    }

    #[test]
    fn memory_is_bounded_and_overflow_fails_closed() {
        let t = throttle(2, 60);
        let now = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
            t.record_failure(ip, now);
        }
        assert_eq!(t.tracked(), MAX_TRACKED);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        t.record_failure(a, now);
        t.record_failure(b, now);
        assert_eq!(t.tracked(), MAX_TRACKED + 1, "one overflow entry");
        assert!(t.check(a, now).is_err(), "the shared overflow entry blocks");
        // Once the window is over, the old entries are pruned to make room.
        let later = now + Duration::from_secs(61);
        t.record_failure(a, later);
        assert!(t.tracked() <= 2);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(600)), 600);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
