//! Failed logins, counted per client address and per account, so password guessing is slowed
//! to a crawl without locking the real user out.
//!
//! - An address with `per_address` failures in a window is refused (429) until the window
//!   ends, whatever account it tries.
//! - An account with `per_account` failures in a window is refused only to addresses that
//!   have themselves failed in that window: a guesser spread over many addresses stops, and
//!   the user, logging in from an address that has not failed, still gets in.
//!
//! Both maps are bounded; when full, the oldest windows are dropped first.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses and accounts tracked at once, each.
const MAX_TRACKED: usize = 65_536;

/// The limits.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Failures an address may make in a window.
    pub per_address: u32,
    /// Failures an account may see in a window.
    pub per_account: u32,
    /// The window.
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits { per_address: 20, per_account: 10, window: Duration::from_secs(60) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Default)]
struct Counts<K> {
    map: HashMap<K, Window>,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    fn current(&self, k: &K, window: Duration) -> Option<Window> {
        self.map.get(k).copied().filter(|w| w.start.elapsed() < window)
    }

    fn bump(&mut self, k: &K, window: Duration) {
        if self.map.len() >= MAX_TRACKED && !self.map.contains_key(k) {
            self.map.retain(|_, w| w.start.elapsed() < window);
            if self.map.len() >= MAX_TRACKED {
                if let Some(oldest) = self.map.iter().min_by_key(|(_, w)| w.start).map(|(k, _)| k.clone()) {
                    self.map.remove(&oldest);
                }
            }
        }
        let w = self.map.entry(k.clone()).or_insert(Window { start: Instant::now(), failures: 0 });
        if w.start.elapsed() >= window {
            *w = Window { start: Instant::now(), failures: 0 };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

/// Counts failed logins and says when to refuse.
pub struct LoginLimiter {
    limits: LoginLimits,
    state: Mutex<(Counts<IpAddr>, Counts<String>)>,
}

impl LoginLimiter {
    /// A limiter with these limits.
    pub fn new(limits: LoginLimits) -> Self {
        LoginLimiter { limits, state: Mutex::new((Counts { map: HashMap::new() }, Counts { map: HashMap::new() })) }
    }

    /// `Err(retry_after)` when this attempt must be refused without checking the password.
    pub fn check(&self, account: &str, addr: Option<IpAddr>) -> Result<(), Duration> {
        let w = self.limits.window;
        let st = self.state.lock().expect("limiter lock");
        let left = |win: Window| w.saturating_sub(win.start.elapsed()).max(Duration::from_secs(1));
        let by_addr = addr.and_then(|a| st.0.current(&a, w));
        if let Some(a) = by_addr.filter(|a| a.failures >= self.limits.per_address) {
            return Err(left(a));
        }
        if let (Some(_), Some(acct)) = (by_addr, st.1.current(&account.to_string(), w)) {
            if acct.failures >= self.limits.per_account {
                return Err(left(acct));
            }
        }
        Ok(())
    }

    /// Records a failed attempt.
    pub fn failed(&self, account: &str, addr: Option<IpAddr>) {
        let w = self.limits.window;
        let mut st = self.state.lock().expect("limiter lock");
        if let Some(a) = addr {
            st.0.bump(&a, w);
        }
        st.1.bump(&account.to_string(), w);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn a_guesser_is_stopped_and_the_user_is_not() {
        let l = LoginLimiter::new(LoginLimits { per_address: 5, per_account: 3, window: Duration::from_secs(60) });
        for _ in 0..3 {
            assert!(l.check("alice", ip("10.0.0.9")).is_ok());
            l.failed("alice", ip("10.0.0.9"));
        }
        // The guessing address is refused for alice now...
        let retry = l.check("alice", ip("10.0.0.9")).unwrap_err();
        assert!(retry <= Duration::from_secs(60) && retry >= Duration::from_secs(1));
        // ...but alice from her own address still gets to try her password.
        assert!(l.check("alice", ip("10.0.0.1")).is_ok());
        // Another account from the guessing address is tried until the address limit.
        assert!(l.check("bob", ip("10.0.0.9")).is_ok());
        l.failed("bob", ip("10.0.0.9"));
        l.failed("bob", ip("10.0.0.9"));
        assert!(l.check("carol", ip("10.0.0.9")).is_err(), "address limit reached");
        assert!(l.check("carol", ip("10.0.0.2")).is_ok());
    }

    #[test]
    fn windows_end() {
        let l = LoginLimiter::new(LoginLimits { per_address: 1, per_account: 1, window: Duration::from_millis(50) });
        l.failed("a", ip("10.0.0.1"));
        assert!(l.check("a", ip("10.0.0.1")).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(l.check("a", ip("10.0.0.1")).is_ok());
    }
}
