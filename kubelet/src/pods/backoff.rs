//! kubelet's container restart back-off: a crashed container is restarted
//! at once the first time, then only after 10 s, 20 s, 40 s … up to 5 min
//! measured from when it last finished. A container that ran for longer
//! than twice the cap (10 min) before it exited starts again from 10 s.
//! Time is passed in, so the rules are tested without sleeping.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The first delay.
pub const INITIAL: Duration = Duration::from_secs(10);
/// The cap.
pub const MAX: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    /// When the back-off last advanced (the finish that caused it).
    last: Instant,
}

/// Back-off state per key (pod uid + container name).
#[derive(Debug, Default)]
pub struct Backoff {
    entries: HashMap<String, Entry>,
}

impl Backoff {
    /// When a container that finished at `finished` may start again, or
    /// `None` if it may start now.
    pub fn wait_until(&self, key: &str, finished: Instant, now: Instant) -> Option<Instant> {
        let e = self.entries.get(key)?;
        if expired(e, finished) {
            return None;
        }
        let until = finished + e.delay;
        (now < until).then_some(until)
    }

    /// Records a restart of a container that finished at `finished`, and
    /// returns the delay that will apply to its next crash.
    pub fn advance(&mut self, key: &str, finished: Instant) -> Duration {
        let delay = match self.entries.get(key) {
            Some(e) if !expired(e, finished) => (e.delay * 2).min(MAX),
            _ => INITIAL,
        };
        self.entries.insert(
            key.to_string(),
            Entry {
                delay,
                last: finished,
            },
        );
        delay
    }

    /// The delay currently in force for `key` (for status messages).
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }
}

/// An entry older than twice the cap no longer counts: the container ran
/// long enough to be considered healthy again.
fn expired(e: &Entry, finished: Instant) -> bool {
    finished.saturating_duration_since(e.last) > MAX * 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        assert_eq!(b.wait_until("c", t0, t0), None);
        assert_eq!(b.advance("c", t0), INITIAL);
        let mut finished = t0;
        let mut want = INITIAL;
        for _ in 0..8 {
            finished += Duration::from_secs(1);
            let until = b.wait_until("c", finished, finished).unwrap();
            assert_eq!(until - finished, want);
            // Still waiting just before, free just after.
            assert!(b
                .wait_until("c", finished, until - Duration::from_millis(1))
                .is_some());
            assert_eq!(b.wait_until("c", finished, until), None);
            want = b.advance("c", finished);
        }
        assert_eq!(b.delay("c"), Some(MAX));
    }

    #[test]
    fn a_long_run_resets_the_back_off() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.advance("c", t0);
        b.advance("c", t0 + Duration::from_secs(1));
        assert_eq!(b.delay("c"), Some(Duration::from_secs(20)));
        // It then ran for 11 minutes before crashing again.
        let later = t0 + Duration::from_secs(661);
        assert_eq!(b.wait_until("c", later, later), None);
        assert_eq!(b.advance("c", later), INITIAL);
    }

    #[test]
    fn keys_are_independent() {
        let mut b = Backoff::default();
        let t0 = Instant::now();
        b.advance("a", t0);
        assert!(b.wait_until("a", t0, t0).is_some());
        assert_eq!(b.wait_until("b", t0, t0), None);
    }
}
