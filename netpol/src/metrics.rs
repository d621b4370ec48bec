//! The engine's metrics as Prometheus text: syncs and their durations,
//! element changes, failures, gate calls (pod networked -> programmed),
//! and the sizes the engine holds. Recorded by the controller and the
//! gate, rendered by the agent's `/metrics`; no I/O here.

use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::SyncOutcome;

/// Duration buckets, seconds: 0.5 ms to 4 s.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0,
];

#[derive(Debug, Clone, Default)]
struct Seconds {
    /// Cumulative counts per bucket of [`BUCKETS`].
    le: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Seconds {
    fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(self.le.iter_mut()) {
            *n += u64::from(v <= *bound);
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, n) in BUCKETS.iter().zip(self.le.iter()) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.count);
    }
}

#[derive(Debug, Default)]
struct Inner {
    sync: Seconds,
    gate: Seconds,
    full_syncs: u64,
    partial_syncs: u64,
    failures: u64,
    elements: u64,
    policies: usize,
    pods: usize,
    set_elements: usize,
    /// Packets dropped, by reason, as last read from the kernel.
    dropped: Vec<(&'static str, u64)>,
}

/// Shared by the recorders and the renderer.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// No syncs yet.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One sync done; `size` is the engine's (policies, pods, elements).
    pub fn synced(&self, o: &SyncOutcome, size: (usize, usize, usize)) {
        let mut m = self.lock();
        m.sync.observe(o.duration);
        if o.full {
            m.full_syncs += 1;
        } else {
            m.partial_syncs += 1;
        }
        m.elements += o.elements as u64;
        (m.policies, m.pods, m.set_elements) = size;
    }

    /// One sync failed.
    pub fn failed(&self) {
        self.lock().failures += 1;
    }

    /// One gate call done, `d` after the kubelet asked.
    pub fn gated(&self, d: Duration) {
        self.lock().gate.observe(d);
    }

    /// Packets dropped so far, by reason (read from the table's counters).
    pub fn set_dropped(&self, dropped: Vec<(&'static str, u64)>) {
        self.lock().dropped = dropped;
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let m = self.lock();
        let mut out = String::new();
        m.sync.render(
            &mut out,
            "knode_network_policy_sync_duration_seconds",
            "How long one nftables transaction of the policy engine took",
        );
        m.gate.render(
            &mut out,
            "knode_network_policy_pod_gate_duration_seconds",
            "From the kubelet's report of a new pod address to its policies in the kernel",
        );
        let _ = writeln!(
            out,
            "# HELP knode_network_policy_syncs_total Policy engine syncs\n# TYPE knode_network_policy_syncs_total counter\nknode_network_policy_syncs_total{{kind=\"full\"}} {}\nknode_network_policy_syncs_total{{kind=\"partial\"}} {}",
            m.full_syncs, m.partial_syncs
        );
        let counters = [
            (
                "sync_failures_total",
                "Policy engine syncs the kernel refused",
                m.failures,
            ),
            (
                "elements_changed_total",
                "Set elements added or deleted",
                m.elements,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP knode_network_policy_{name} {help}\n# TYPE knode_network_policy_{name} counter\nknode_network_policy_{name} {v}");
        }
        let gauges = [
            ("policies", "NetworkPolicies the engine holds", m.policies),
            ("pods", "Pods the engine holds", m.pods),
            (
                "set_elements",
                "Set elements the engine wrote",
                m.set_elements,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP knode_network_policy_{name} {help}\n# TYPE knode_network_policy_{name} gauge\nknode_network_policy_{name} {v}");
        }
        if !m.dropped.is_empty() {
            let name = "knode_network_policy_dropped_packets_total";
            let _ = writeln!(
                out,
                "# HELP {name} Packets dropped by network policy, by reason\n# TYPE {name} counter"
            );
            for (reason, n) in &m.dropped {
                let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_syncs_and_sizes() {
        let m = Metrics::new();
        let o = SyncOutcome {
            full: true,
            elements: 3,
            duration: Duration::from_millis(3),
            ..SyncOutcome::default()
        };
        m.synced(&o, (1, 2, 3));
        m.gated(Duration::from_micros(700));
        m.set_dropped(vec![("no-policy-allows", 5)]);
        let text = m.render();
        assert!(
            text.contains("knode_network_policy_syncs_total{kind=\"full\"} 1"),
            "{text}"
        );
        assert!(text.contains("knode_network_policy_sync_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("knode_network_policy_sync_duration_seconds_bucket{le=\"0.002\"} 0"));
        assert!(text.contains("knode_network_policy_pod_gate_duration_seconds_count 1"));
        assert!(text.contains("knode_network_policy_set_elements 3"));
        assert!(text
            .contains("knode_network_policy_dropped_packets_total{reason=\"no-policy-allows\"} 5"));
    }
}
