//! The DNS benchmark's report: medians over rounds for each server, knode's
//! ratio to the best reference, the goals of the DNS issue, a table, the
//! JSON result and a chart. Pure formatting of what `bench dns` measured.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Value};

use super::{Results, Sample, PACED_QPS, PODS, ROUNDS, RUN, SERVICES};
use crate::report::{emit as write_out, grouped_bars, host_facts, with_targets, Group, Series};
use crate::stats::{percentile, round3};
use crate::Opts;

/// Median of `f` over one server's rounds.
fn median(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().map(f).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

/// One row: a metric's median per server and knode's ratio to the best
/// reference (`higher` says which way is better).
struct Row {
    label: &'static str,
    key: &'static str,
    values: Vec<f64>,
    higher: bool,
}

impl Row {
    fn new(
        label: &'static str,
        key: &'static str,
        per_server: &[Vec<Sample>],
        higher: bool,
        f: impl Fn(&Sample) -> f64 + Copy,
    ) -> Row {
        Row {
            label,
            key,
            values: per_server.iter().map(|s| median(s, f)).collect(),
            higher,
        }
    }

    /// The best reference's value (servers after the first).
    fn best_reference(&self) -> f64 {
        let refs = self.values[1..].iter().copied();
        if self.higher {
            refs.fold(f64::MIN, f64::max)
        } else {
            refs.fold(f64::MAX, f64::min)
        }
    }

    fn ratio(&self) -> f64 {
        self.values[0] / self.best_reference()
    }
}

fn rows(per_server: &[Vec<Sample>]) -> Vec<Row> {
    vec![
        Row::new("q/s (dnsperf)", "qps", per_server, true, |s| s.qps),
        Row::new("q/s (own generator)", "own_qps", per_server, true, |s| {
            s.own_qps
        }),
        Row::new(
            "p50 ms (dnsperf, paced)",
            "p50_ms",
            per_server,
            false,
            |s| s.p50,
        ),
        Row::new(
            "p99 ms (dnsperf, paced)",
            "p99_ms",
            per_server,
            false,
            |s| s.p99,
        ),
        Row::new(
            "p50 ms (own, saturating)",
            "own_p50_ms",
            per_server,
            false,
            |s| s.own_p50,
        ),
        Row::new(
            "p99 ms (own, saturating)",
            "own_p99_ms",
            per_server,
            false,
            |s| s.own_p99,
        ),
        Row::new("server CPU busy (q/s run)", "busy", per_server, true, |s| {
            s.busy
        }),
        Row::new(
            "server CPU us/answer (q/s run)",
            "cpu_us_per_answer",
            per_server,
            false,
            |s| s.cpu_us,
        ),
    ]
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn emit(opts: &Opts, r: &Results) -> Result<()> {
    let mut table = String::new();
    let _ = write!(table, "{:<32}", "");
    for s in &r.servers {
        let _ = write!(table, "{s:>12}");
    }
    let _ = writeln!(table, "{:>16}", "knode/best ref");
    let mut doc = host_facts();
    let mut targets = Vec::new();
    let mut groups = Vec::new();
    for (kind, per_server) in [("cluster", &r.cluster), ("external", &r.external)] {
        let _ = writeln!(table, "{kind} names");
        let mut section = json!({});
        for row in rows(per_server) {
            let _ = write!(table, "  {:<30}", row.label);
            for v in &row.values {
                let _ = write!(table, "{v:>12.3}");
            }
            let _ = writeln!(table, "{:>16.2}", row.ratio());
            let by_server: serde_json::Map<String, Value> = r
                .servers
                .iter()
                .zip(&row.values)
                .map(|(s, v)| (s.to_string(), json!(round3(*v))))
                .collect();
            section[row.key] =
                json!({"median": by_server, "knode_over_best_reference": round3(row.ratio())});
            if row.key == "qps" || row.key == "cpu_us_per_answer" {
                targets.push(json!({
                    "what": format!("{kind} names {} at least as good as the best of dnsmasq and unbound", row.label),
                    "knode": round3(row.values[0]), "best_reference": round3(row.best_reference()),
                    "met": if row.higher { row.ratio() >= 1.0 } else { row.ratio() <= 1.0 },
                }));
            }
            if row.key == "qps" || row.key == "own_qps" {
                groups.push(Group {
                    label: format!("{kind}, {}", row.label.trim_start_matches("q/s ")),
                    values: row.values.iter().map(|v| v / 1000.0).collect(),
                });
            }
        }
        let rounds: serde_json::Map<String, Value> = r
            .servers
            .iter()
            .zip(per_server)
            .map(|(s, samples)| {
                let qps: Vec<f64> = samples.iter().map(|x| round3(x.qps)).collect();
                let own: Vec<f64> = samples.iter().map(|x| round3(x.own_qps)).collect();
                let lost: u64 = samples.iter().map(|x| x.lost + x.own_lost).sum();
                let bad: u64 = samples.iter().map(|x| x.own_bad).sum();
                (
                    s.to_string(),
                    json!({"qps_per_round": qps, "own_qps_per_round": own, "lost": lost, "bad_answers": bad}),
                )
            })
            .collect();
        section["rounds"] = Value::Object(rounds);
        doc[kind] = section;
    }
    let _ = writeln!(table, "memory ({SERVICES} Services + {PODS} pods)");
    for (label, vals) in [
        ("VmRSS loaded, MiB", &r.rss_loaded),
        ("VmHWM after the run, MiB", &r.hwm_end),
    ] {
        let _ = write!(table, "  {label:<30}");
        for v in vals.iter() {
            let _ = write!(table, "{:>12.1}", mib(*v));
        }
        let _ = writeln!(table);
    }
    let _ = writeln!(
        table,
        "upstream queries during the measured rounds: {} (external names all cached)\n\
         load average before the rounds {}, after {}",
        r.upstream_during, r.load[0], r.load[1]
    );
    let servers_json = |vals: &[u64]| -> Value {
        r.servers
            .iter()
            .zip(vals)
            .map(|(s, v)| (s.to_string(), json!(round3(mib(*v)))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    doc["memory_mib"] = json!({
        "rss_loaded": servers_json(&r.rss_loaded),
        "hwm_after_run": servers_json(&r.hwm_end),
    });
    doc["upstream_queries_during_rounds"] = json!(r.upstream_during);
    doc["answers_checked_with_dig"] = json!(r.checked);
    doc["loadavg_before"] = json!(r.load[0]);
    doc["loadavg_after"] = json!(r.load[1]);
    doc["setup"] = json!({
        "services": SERVICES, "pods": PODS, "rounds": ROUNDS, "run_s": RUN.as_secs(),
        "paced_qps": PACED_QPS,
        "pinning": "every server on CPU 1 (knode: one tokio worker; unbound: num-threads 1; dnsmasq: single-threaded), dnsperf and our generator on CPU 0",
        "dnsperf": "saturating: -c 4 -q 64; paced: -Q 10000 -v, p50/p99 from per-query latencies",
        "own_generator": "2 threads x 16 outstanding UDP queries, closed loop",
    });
    targets.push(json!({
        "what": "knode DNS server process VmRSS with 10k Services + 50k pods <= 20 MiB",
        "mib": round3(mib(r.rss_loaded[0])), "met": mib(r.rss_loaded[0]) <= 20.0,
    }));
    let doc = with_targets(doc, targets);
    let svg = grouped_bars(
        "Cluster DNS: queries per second, one pinned CPU per server",
        &[
            format!("{SERVICES} Services + {PODS} pods from local data; medians of {ROUNDS} interleaved rounds"),
            "external names: cached answers of a dnsmasq upstream".to_string(),
        ],
        "k queries/s",
        &[
            Series { label: "knode", color: "#2a7ab9" },
            Series { label: "dnsmasq", color: "#c0504d" },
            Series { label: "unbound", color: "#9bbb59" },
        ],
        &groups,
    );
    write_out(&opts.out, "dns", &table, &doc, &svg)
}
