//! Refusal throttling per client address, so PSKs cannot be guessed at speed
//! and one address cannot keep the CA busy (or its audit log growing) with
//! refusals of any kind.
//!
//! Every refusal counts against its address, with a weight ([`Weight`]):
//! a failed authentication (a PSK, a renewal or admin client certificate)
//! weighs one full failure; any other refusal (unreadable body or CSR, wrong
//! content type, body too large, policy refusal, Puppet certname mismatch)
//! weighs a quarter, since it reveals nothing but still costs work. An
//! address gets a window at its first refusal; once the weights in the
//! window reach `max_failures`, the address is blocked for one full window:
//! every request from it to a refusing route is answered 429
//! `too_many_failures` with `Retry-After`, before its body is read. With the
//! default of 10, one refusal never blocks anyone: a host retrying after a
//! fix has nine PSK failures or 39 other refusals in hand.
//!
//! The address is the TCP peer's (or the PROXY header's, from a trusted
//! proxy); `X-Forwarded-For` and friends are ignored. IPv4-mapped IPv6
//! counts as IPv4; other IPv6 addresses count per prefix (`/64` by default,
//! `--throttle-ipv6-prefix`), since one host usually owns a whole /64.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] addresses are tracked, in a
//! least-recently-used order (a slab of nodes linked by index, and a map
//! from key to node: O(1) per request). A new address beyond the bound
//! evicts the least recently used one. There is no shared entry an
//! attacker could fill to block everyone; the price is that an attacker
//! with more than `MAX_TRACKED` addresses (or prefixes) can cycle a blocked
//! one out, which each of those addresses must first earn by refusals.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses tracked at once.
pub const MAX_TRACKED: usize = 65_536;

/// Weight units of one full failure: a light refusal is one unit.
const UNITS: u32 = 4;

/// How much a refusal counts against its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// A failed authentication: PSK (403), renewal or admin certificate.
    Full,
    /// Any other refusal: a quarter of a failure.
    Light,
}

impl Weight {
    fn units(self) -> u32 {
        match self {
            Weight::Full => UNITS,
            Weight::Light => 1,
        }
    }
}

/// How many refusals an address may have in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed in one window (a light refusal is a quarter of one);
    /// reaching it blocks the address.
    pub max_failures: u32,
    /// Window length, and how long an address stays blocked.
    pub window: Duration,
    /// IPv6 addresses count per prefix of this length (1 to 128).
    pub ipv6_prefix: u8,
}

impl Default for ThrottleConfig {
    fn default() -> ThrottleConfig {
        ThrottleConfig {
            max_failures: 10,
            window: Duration::from_secs(600),
            ipv6_prefix: 64,
        }
    }
}

/// `serve` flags for the throttle and the refusal audit.
#[derive(Debug, Clone, clap::Args)]
pub struct ThrottleArgs {
    /// Failed authentications (403) one client address may cause per window
    /// before its requests are refused with 429 for one window; any other
    /// refusal (400, 413, 422) counts as a quarter of one.
    #[arg(long, env = "CA_THROTTLE_FAILURES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub throttle_failures: u32,
    /// The throttle window.
    #[arg(long, env = "CA_THROTTLE_WINDOW", default_value = "10m")]
    pub throttle_window: humantime::Duration,
    /// IPv6 clients are throttled per prefix of this length (one host usually
    /// owns a /64).
    #[arg(long, env = "CA_THROTTLE_IPV6_PREFIX", default_value_t = 64,
          value_parser = clap::value_parser!(u8).range(1..=128))]
    pub throttle_ipv6_prefix: u8,
    /// Repeated refusals are counted in memory and written to the audit log
    /// at most this often per row (0s: at once, for tests).
    #[arg(long, env = "CA_AUDIT_FLUSH_INTERVAL", default_value = "1s")]
    pub audit_flush_interval: humantime::Duration,
}

impl From<&ThrottleArgs> for ThrottleConfig {
    fn from(a: &ThrottleArgs) -> ThrottleConfig {
        ThrottleConfig {
            max_failures: a.throttle_failures,
            window: a.throttle_window.into(),
            ipv6_prefix: a.throttle_ipv6_prefix,
        }
    }
}

/// Whom an entry counts: an IPv4 address or an IPv6 prefix. The listener
/// counts connections per the same key (`edge/server.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key {
    V4([u8; 4]),
    V6(u128),
}

/// The throttle key of an address: IPv4-mapped IPv6 counts as IPv4.
pub fn key_of(ip: IpAddr, ipv6_prefix: u8) -> Key {
    match ip {
        IpAddr::V4(v4) => Key::V4(v4.octets()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::V4(v4.octets()),
            None => {
                let bits = u32::from(ipv6_prefix.clamp(1, 128));
                let mask = u128::MAX << (128 - bits);
                Key::V6(u128::from(v6) & mask)
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: Instant,
    /// Weight units counted in this window.
    units: u32,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn fresh(now: Instant) -> Entry {
        Entry {
            window_start: now,
            units: 0,
            blocked_until: None,
        }
    }

    fn expired(&self, window: Duration, now: Instant) -> bool {
        match self.blocked_until {
            Some(until) => now >= until,
            None => now.duration_since(self.window_start) >= window,
        }
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node {
    key: Key,
    entry: Entry,
    prev: usize,
    next: usize,
}

/// Entries in least-recently-used order: a slab of nodes doubly linked by
/// index (`head` most recent, `tail` least), and the index of each key.
#[derive(Debug)]
struct Lru {
    nodes: Vec<Node>,
    free: Vec<usize>,
    index: HashMap<Key, usize>,
    head: usize,
    tail: usize,
    capacity: usize,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            nodes: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        match prev {
            NIL => self.head = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.nodes[n].prev = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.nodes[h].prev = i,
        }
        self.head = i;
    }

    /// The entry of `key`, marked most recently used.
    fn touch(&mut self, key: &Key) -> Option<&mut Entry> {
        let i = *self.index.get(key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(&mut self.nodes[i].entry)
    }

    /// The entry of `key`, created (most recently used) if missing; a new
    /// key beyond the capacity evicts the least recently used one.
    fn get_or_insert(&mut self, key: Key, fresh: Entry) -> &mut Entry {
        if self.index.contains_key(&key) {
            return self.touch(&key).expect("present");
        }
        if self.len() >= self.capacity && self.tail != NIL {
            let lru = self.tail;
            self.remove_at(lru);
        }
        let node = Node {
            key,
            entry: fresh,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.index.insert(key, i);
        self.push_front(i);
        &mut self.nodes[i].entry
    }

    fn remove(&mut self, key: &Key) {
        if let Some(&i) = self.index.get(key) {
            self.remove_at(i);
        }
    }

    fn remove_at(&mut self, i: usize) {
        self.unlink(i);
        self.index.remove(&self.nodes[i].key);
        self.free.push(i);
    }
}

/// The per-address refusal counter.
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    entries: Mutex<Lru>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle::with_capacity(config, MAX_TRACKED)
    }

    fn with_capacity(config: ThrottleConfig, capacity: usize) -> Throttle {
        Throttle {
            config,
            entries: Mutex::new(Lru::new(capacity.max(1))),
        }
    }

    pub fn config(&self) -> ThrottleConfig {
        self.config
    }

    /// `Err(retry_after)` while `ip` is blocked.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = key_of(ip, self.config.ipv6_prefix);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(entry) = entries.touch(&key) else {
            return Ok(());
        };
        if entry.expired(self.config.window, now) {
            entries.remove(&key);
            return Ok(());
        }
        match entry.blocked_until {
            Some(until) => Err(until - now),
            None => Ok(()),
        }
    }

    /// Counts one refusal of `ip` with `weight`; `Some(retry_after)` if this
    /// refusal blocked the address.
    pub fn record_failure(&self, ip: IpAddr, now: Instant, weight: Weight) -> Option<Duration> {
        let window = self.config.window;
        let key = key_of(ip, self.config.ipv6_prefix);
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries.get_or_insert(key, Entry::fresh(now));
        if entry.expired(window, now) {
            *entry = Entry::fresh(now);
        }
        if entry.blocked_until.is_some() {
            return None; // already blocked (a request admitted just before the block)
        }
        entry.units += weight.units();
        if entry.units >= self.config.max_failures.saturating_mul(UNITS) {
            entry.blocked_until = Some(now + window);
            return Some(window);
        }
        None
    }

    /// Addresses currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
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
            ..Default::default()
        })
    }

    fn v4(i: u32) -> IpAddr {
        IpAddr::from((0x0a00_0000u32 + i).to_be_bytes())
    }

    #[test]
    fn blocks_after_the_limit_for_one_window_then_forgets() {
        let t = throttle(3, 60);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(t.record_failure(ip, t0, Weight::Full), None);
        assert_eq!(t.record_failure(ip, t0, Weight::Full), None);
        assert!(t.check(ip, t0).is_ok());
        assert_eq!(
            t.record_failure(ip, t0, Weight::Full),
            Some(Duration::from_secs(60))
        );
        let at = t0 + Duration::from_secs(20);
        assert_eq!(t.check(ip, at), Err(Duration::from_secs(40)));
        // Another address is not affected.
        assert!(t.check("192.0.2.8".parse().unwrap(), at).is_ok());
        let later = t0 + Duration::from_secs(60);
        assert!(t.check(ip, later).is_ok());
        assert_eq!(t.tracked(), 0);
        assert_eq!(
            t.record_failure(ip, later, Weight::Full),
            None,
            "a fresh window"
        );
    }

    #[test]
    fn failures_spread_over_windows_do_not_block() {
        let t = throttle(3, 10);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            let now = t0 + Duration::from_secs(6 * i);
            assert_eq!(t.record_failure(ip, now, Weight::Full), None, "failure {i}");
            assert!(t.check(ip, now).is_ok());
        }
    }

    #[test]
    fn a_light_refusal_weighs_a_quarter_and_one_refusal_never_blocks() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        let t = throttle(10, 60);
        for i in 0..39 {
            assert_eq!(
                t.record_failure(ip, now, Weight::Light),
                None,
                "refusal {i}"
            );
        }
        assert!(t.check(ip, now).is_ok());
        assert!(
            t.record_failure(ip, now, Weight::Light).is_some(),
            "the 40th"
        );
        assert!(t.check(ip, now).is_err());
        // Mixed: 9 full failures and 3 light refusals stay under 10.
        let t = throttle(10, 60);
        for _ in 0..9 {
            t.record_failure(ip, now, Weight::Full);
        }
        for _ in 0..3 {
            assert_eq!(t.record_failure(ip, now, Weight::Light), None);
        }
        assert!(t.record_failure(ip, now, Weight::Light).is_some());
        // Even the strictest setting lets one light refusal through.
        let t = throttle(1, 60);
        assert_eq!(t.record_failure(ip, now, Weight::Light), None);
        assert!(t.check(ip, now).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let t = throttle(2, 60);
        let now = Instant::now();
        t.record_failure("2001:db8:1:2::1".parse().unwrap(), now, Weight::Full);
        t.record_failure("2001:db8:1:2::ffff".parse().unwrap(), now, Weight::Full);
        assert!(
            t.check("2001:db8:1:2:abcd::9".parse().unwrap(), now)
                .is_err()
        );
        assert!(t.check("2001:db8:1:3::1".parse().unwrap(), now).is_ok());
        t.record_failure("::ffff:192.0.2.1".parse().unwrap(), now, Weight::Full);
        t.record_failure("192.0.2.1".parse().unwrap(), now, Weight::Full);
        assert!(t.check("192.0.2.1".parse().unwrap(), now).is_err());
    }

    #[test]
    fn a_configured_ipv6_prefix_of_56_aggregates_the_whole_56() {
        let t = Throttle::new(ThrottleConfig {
            max_failures: 2,
            window: Duration::from_secs(60),
            ipv6_prefix: 56,
        });
        let now = Instant::now();
        // Two /64s inside 2001:db8:1:200::/56.
        t.record_failure("2001:db8:1:201::1".parse().unwrap(), now, Weight::Full);
        t.record_failure("2001:db8:1:2ff::1".parse().unwrap(), now, Weight::Full);
        assert!(t.check("2001:db8:1:2aa::7".parse().unwrap(), now).is_err());
        // The next /56 is not affected; IPv4 is untouched by the prefix.
        assert!(t.check("2001:db8:1:300::1".parse().unwrap(), now).is_ok());
        assert_eq!(t.tracked(), 1);
        assert_eq!(
            key_of("2001:db8::1".parse().unwrap(), 128),
            Key::V6(u128::from(
                "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap()
            ))
        );
    }

    #[test]
    fn filling_the_table_does_not_block_a_fresh_address() {
        let t = throttle(2, 60);
        let now = Instant::now();
        // More addresses than fit, each blocked.
        for i in 0..(MAX_TRACKED as u32 + 100) {
            t.record_failure(v4(i), now, Weight::Full);
            t.record_failure(v4(i), now, Weight::Full);
        }
        assert_eq!(t.tracked(), MAX_TRACKED);
        let fresh: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(t.check(fresh, now).is_ok(), "no shared overflow entry");
        assert_eq!(t.record_failure(fresh, now, Weight::Full), None);
        assert!(t.check(fresh, now).is_ok(), "one failure of its own");
        // The most recent ones are still blocked; the oldest were evicted.
        assert!(t.check(v4(MAX_TRACKED as u32 + 99), now).is_err());
        assert!(t.check(v4(0), now).is_ok());
        assert_eq!(t.tracked(), MAX_TRACKED);
    }

    #[test]
    fn the_least_recently_used_entry_goes_first_and_a_busy_blocked_one_stays() {
        let t = Throttle::with_capacity(
            ThrottleConfig {
                max_failures: 2,
                window: Duration::from_secs(60),
                ..Default::default()
            },
            3,
        );
        let now = Instant::now();
        let (a, b, c, d, e) = (v4(1), v4(2), v4(3), v4(4), v4(5));
        t.record_failure(a, now, Weight::Full);
        t.record_failure(a, now, Weight::Full); // a blocked
        t.record_failure(b, now, Weight::Full); // b: one failure
        t.record_failure(c, now, Weight::Full);
        // a keeps trying: recently used, so b is now the least recent.
        assert!(t.check(a, now).is_err());
        t.record_failure(d, now, Weight::Full); // evicts b
        t.record_failure(b, now, Weight::Full); // b again from scratch: evicts c
        assert!(t.check(b, now).is_ok(), "b's first failure was forgotten");
        assert!(t.check(a, now).is_err(), "a is still blocked");
        t.record_failure(e, now, Weight::Full); // evicts d (a was touched above)
        assert!(t.check(a, now).is_err());
        assert_eq!(t.tracked(), 3);
        // c and d were evicted: a new failure starts from one.
        assert_eq!(t.record_failure(c, now, Weight::Full), None);
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(600)), 600);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
