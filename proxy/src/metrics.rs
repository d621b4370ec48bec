//! The proxy's metrics under kube-proxy's names, rendered as Prometheus
//! text, and its health (kube-proxy's `/healthz` rule: unhealthy while a
//! queued change waits longer than two sync periods). Shared by the sync
//! thread that records and the HTTP handler that renders; no I/O here.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sync::SyncOutcome;

/// Sync duration buckets: kube-proxy's exponential 1 ms .. 16 s.
const SYNC_BUCKETS: [f64; 15] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192, 16.384,
];
/// Network programming latency buckets (seconds), kube-proxy's shape.
const PROGRAMMING_BUCKETS: [f64; 16] = [
    0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0, 1200.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug, Clone)]
struct Inner {
    sync: Histogram,
    full: Histogram,
    partial: Histogram,
    programming: Histogram,
    filter_rules: usize,
    nat_rules: usize,
    restore_failures: u64,
    last_sync: Option<SystemTime>,
    last_queued: Option<SystemTime>,
    /// The oldest change queued and not yet applied, per address family
    /// (a dual-stack node runs a pipeline for each).
    pending_since: BTreeMap<&'static str, Instant>,
}

/// Metrics and health of one proxy. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    inner: Mutex<Inner>,
    sync_period: Duration,
}

/// The health verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// A change has waited this long without being applied.
    Stale(Duration),
}

impl Metrics {
    /// Metrics whose health allows a change to wait `2 * sync_period`.
    pub fn new(sync_period: Duration) -> Metrics {
        Metrics {
            inner: Mutex::new(Inner {
                sync: Histogram::new(&SYNC_BUCKETS),
                full: Histogram::new(&SYNC_BUCKETS),
                partial: Histogram::new(&SYNC_BUCKETS),
                programming: Histogram::new(&PROGRAMMING_BUCKETS),
                filter_rules: 0,
                nat_rules: 0,
                restore_failures: 0,
                last_sync: None,
                last_queued: None,
                pending_since: BTreeMap::new(),
            }),
            sync_period,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A change arrived at `at` (keeps the oldest unapplied one).
    pub fn queued(&self, at: Instant) {
        self.queued_in("IPv4", at);
    }

    /// A change of `family`'s pipeline arrived at `at`.
    pub fn queued_in(&self, family: &'static str, at: Instant) {
        let mut m = self.lock();
        let p = m.pending_since.entry(family).or_insert(at);
        *p = (*p).min(at);
        m.last_queued = Some(SystemTime::now());
    }

    /// A sync succeeded; it applied every change queued up to `queued_at`.
    pub fn synced(&self, outcome: &SyncOutcome, queued_at: Option<Instant>) {
        self.synced_in("IPv4", outcome, queued_at);
    }

    /// A sync of `family`'s pipeline succeeded (see [`Metrics::synced`]).
    pub fn synced_in(
        &self,
        family: &'static str,
        outcome: &SyncOutcome,
        queued_at: Option<Instant>,
    ) {
        let mut m = self.lock();
        let secs = outcome.duration.as_secs_f64();
        m.sync.observe(secs);
        if outcome.full {
            m.full.observe(secs);
        } else {
            m.partial.observe(secs);
        }
        m.filter_rules = outcome.filter_rules;
        m.nat_rules = outcome.nat_rules;
        m.last_sync = Some(SystemTime::now());
        if let Some(q) = queued_at {
            m.programming.observe(q.elapsed().as_secs_f64());
            if m.pending_since.get(family).is_some_and(|p| *p <= q) {
                m.pending_since.remove(family);
            }
        }
    }

    /// An iptables-restore failed.
    pub fn restore_failed(&self) {
        self.lock().restore_failures += 1;
    }

    /// kube-proxy's health rule at `now`.
    pub fn health(&self, now: Instant) -> Health {
        match self.lock().pending_since.values().min().copied() {
            Some(p) if now.saturating_duration_since(p) > 2 * self.sync_period => {
                Health::Stale(now.saturating_duration_since(p))
            }
            _ => Health::Healthy,
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let m = self.lock().clone();
        let mut out = String::new();
        m.sync.render(
            &mut out,
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
        );
        m.full.render(
            &mut out,
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
        );
        m.partial.render(
            &mut out,
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
        );
        m.programming.render(
            &mut out,
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
        );
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_iptables_total Total number of iptables rules owned by kube-proxy\n# TYPE kubeproxy_sync_proxy_rules_iptables_total gauge");
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_iptables_total{{table=\"filter\"}} {}",
            m.filter_rules
        );
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_iptables_total{{table=\"nat\"}} {}",
            m.nat_rules
        );
        let _ = writeln!(out, "# HELP kubeproxy_sync_proxy_rules_iptables_restore_failures_total Cumulative proxy iptables restore failures\n# TYPE kubeproxy_sync_proxy_rules_iptables_restore_failures_total counter");
        let _ = writeln!(
            out,
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total {}",
            m.restore_failures
        );
        for (name, help, t) in [
            (
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                m.last_sync,
            ),
            (
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
                m.last_queued,
            ),
        ] {
            let secs = t
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {secs}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(full: bool, ms: u64) -> SyncOutcome {
        SyncOutcome {
            full,
            chains_written: 1,
            chains_deleted: 0,
            filter_rules: 4,
            nat_rules: 12,
            elements_changed: 0,
            conntrack_deleted: 0,
            restored: true,
            duration: Duration::from_millis(ms),
            apply: Duration::from_millis(ms),
        }
    }

    #[test]
    fn renders_kube_proxy_names() {
        let m = Metrics::new(Duration::from_secs(30));
        m.synced(&outcome(true, 20), None);
        m.synced(&outcome(false, 3), Some(Instant::now()));
        m.restore_failed();
        let text = m.render();
        for want in [
            "kubeproxy_sync_proxy_rules_duration_seconds_count 2",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{le=\"0.004\"} 1",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds_bucket{le=\"0.002\"} 0",
            "kubeproxy_network_programming_duration_seconds_count 1",
            "kubeproxy_sync_proxy_rules_iptables_total{table=\"nat\"} 12",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total 1",
            "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }

    #[test]
    fn unhealthy_when_a_change_waits_two_sync_periods() {
        let period = Duration::from_millis(100);
        let m = Metrics::new(period);
        let t0 = Instant::now();
        assert_eq!(m.health(t0), Health::Healthy);
        m.queued(t0);
        assert_eq!(m.health(t0 + period), Health::Healthy);
        assert!(matches!(m.health(t0 + 3 * period), Health::Stale(_)));
        // A later change does not hide the older one.
        m.queued(t0 + period);
        assert!(matches!(m.health(t0 + 3 * period), Health::Stale(_)));
        // Applying everything queued up to now makes it healthy again.
        m.synced(&outcome(false, 1), Some(t0 + period));
        assert_eq!(m.health(t0 + 3 * period), Health::Healthy);
    }

    #[test]
    fn a_sync_of_one_family_does_not_clear_the_other_familys_wait() {
        let period = Duration::from_millis(100);
        let m = Metrics::new(period);
        let t0 = Instant::now();
        m.queued_in("IPv6", t0);
        m.queued_in("IPv4", t0 + period);
        m.synced_in("IPv4", &outcome(false, 1), Some(t0 + period));
        assert!(matches!(m.health(t0 + 3 * period), Health::Stale(_)));
        m.synced_in("IPv6", &outcome(false, 1), Some(t0));
        assert_eq!(m.health(t0 + 3 * period), Health::Healthy);
    }
}
