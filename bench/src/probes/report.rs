//! The probes benchmark's report: per round, each probe set's CPU above
//! the same round's set without probes, divided by the probes the pods
//! counted; medians over rounds, the target, the stdout table,
//! `probes.json` and `probes.svg`. Pure arithmetic and formatting.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Value};

use super::cpu::Part;
use super::{Probes, Results, Window, PERIOD_S, SETTLE, WINDOW};
use crate::report::{emit, grouped_bars, host_facts, with_targets, Group, Series};
use crate::stats::{percentile, round3};
use crate::Opts;

/// Target: the agent's own CPU for 100 httpGet probes/s, in % of a core.
pub const MAX_AGENT_PCT_PER_100_HTTP: f64 = 2.0;

/// What one probe set cost in one round, against that round's reference.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    pub round: usize,
    pub probes: Probes,
    /// Probes counted per second (httpGet + exec).
    pub per_s: f64,
    /// CPU above the reference, % of a core.
    pub over: BTreeMap<Part, f64>,
    /// `over` per 100 probes/s.
    pub per_100: BTreeMap<Part, f64>,
}

/// The cost of every probe set of every round that has a reference window.
pub fn costs(windows: &[Window]) -> Vec<Cost> {
    let mut out = Vec::new();
    for w in windows.iter().filter(|w| w.probes != Probes::None) {
        let Some(base) = windows
            .iter()
            .find(|b| b.round == w.round && b.probes == Probes::None)
        else {
            continue;
        };
        let per_s = (w.http + w.exec) as f64 / w.length.as_secs_f64();
        let mut over = BTreeMap::new();
        let mut per_100 = BTreeMap::new();
        for part in Part::ALL {
            let o = w.cpu[&part] - base.cpu[&part];
            over.insert(part, o);
            if per_s > 0.0 {
                per_100.insert(part, o / per_s * 100.0);
            }
        }
        out.push(Cost {
            round: w.round,
            probes: w.probes,
            per_s,
            over,
            per_100,
        });
    }
    out
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(percentile(&v, 50.0))
}

/// Medians over rounds for one probe set: probes/s, and per part the CPU
/// above the reference and that per 100 probes/s.
pub struct Median {
    pub per_s: Option<f64>,
    pub over: BTreeMap<Part, f64>,
    pub per_100: BTreeMap<Part, f64>,
}

pub fn median_of(costs: &[Cost], probes: Probes) -> Median {
    let of = |f: &dyn Fn(&Cost) -> Option<f64>| {
        median(
            costs
                .iter()
                .filter(|c| c.probes == probes)
                .filter_map(f)
                .collect(),
        )
    };
    let mut over = BTreeMap::new();
    let mut per_100 = BTreeMap::new();
    for part in Part::ALL {
        if let Some(x) = of(&|c| c.over.get(&part).copied()) {
            over.insert(part, x);
        }
        if let Some(x) = of(&|c| c.per_100.get(&part).copied()) {
            per_100.insert(part, x);
        }
    }
    Median {
        per_s: of(&|c| Some(c.per_s)),
        over,
        per_100,
    }
}

fn parts_json(m: &BTreeMap<Part, f64>) -> Value {
    let mut v = json!({});
    for (p, x) in m {
        v[p.name()] = json!(round3(*x));
    }
    v
}

const SETS: [Probes; 3] = [Probes::Http, Probes::Exec, Probes::Both];

/// Builds the JSON document of a run.
pub fn document(r: &Results) -> Value {
    let costs = costs(&r.windows);
    let mut doc = host_facts();
    doc["benchmark"] = json!("probes");
    doc["containerd"] = json!(r.containerd_version);
    doc["load_average"] = json!({"before": r.load_before, "after": r.load_after});
    doc["method"] = json!(format!(
        "one node: a private containerd, a host network namespace, `knode agent` inside it. {} pods \
         of busybox `httpd -f -p 8080` ({}) per set; sets: no probe (the reference), an httpGet \
         readiness probe on /healthz, an exec liveness probe (`sh -c 'echo -n . >> /tmp/probes'`), \
         both; every probe period {PERIOD_S} s, timeout 1 s. Per round each set in turn (the order \
         rotates per round): one `knode apply` of the set, wait until all Running, {} s quiet, \
         then a {} s window: CPU (utime+stime, plus cutime+cstime of reaped children such as runc \
         and the exec'd commands) of the agent, its containerd and every shim of that containerd \
         from /proc/PID/stat at both ends; probes counted in the pods over the same window \
         (httpGet: Tcp PassiveOpens of each pod's network namespace from /proc/PID/net/snmp; exec: \
         bytes appended to /tmp/probes, read through /proc/PID/root); then the set deleted and \
         waited for. Cost of a set = its CPU minus the same round's no-probe set, per 100 probes \
         counted per second; medians over rounds. The pods' own CPU (httpd, the log writers) is \
         not counted",
        r.pods,
        r.image,
        SETTLE.as_secs(),
        WINDOW.as_secs(),
    ));
    doc["parameters"] = json!({
        "pods": r.pods, "rounds": r.windows.iter().map(|w| w.round).max().map_or(0, |m| m + 1),
        "window_s": WINDOW.as_secs(), "period_s": PERIOD_S, "image": r.image,
        "scaled": r.pods != super::PODS,
    });
    doc["windows"] = Value::Array(
        r.windows
            .iter()
            .map(|w| {
                json!({
                    "round": w.round, "probes": w.probes.name(),
                    "window_s": round3(w.length.as_secs_f64()),
                    "cpu_pct_of_core": parts_json(&w.cpu),
                    "http_probes": w.http, "exec_probes": w.exec,
                    "apply_until_running_s": round3(w.started_s),
                })
            })
            .collect(),
    );
    let mut sets = Vec::new();
    for p in SETS {
        let m = median_of(&costs, p);
        sets.push(json!({
            "probes": p.name(), "about": p.about(),
            "probes_per_s": m.per_s.map(round3),
            "cpu_over_reference_pct_of_core": parts_json(&m.over),
            "cpu_per_100_probes_per_s_pct_of_core": parts_json(&m.per_100),
        }));
    }
    doc["per_probe_kind"] = Value::Array(sets);
    let agent_http = median_of(&costs, Probes::Http)
        .per_100
        .get(&Part::Agent)
        .copied();
    with_targets(
        doc,
        vec![json!({
            "what": format!(
                "agent's own CPU <= {MAX_AGENT_PCT_PER_100_HTTP} % of a core per 100 httpGet probes/s"
            ),
            "max_pct": MAX_AGENT_PCT_PER_100_HTTP, "pct": agent_http.map(round3),
            "met": agent_http.is_some_and(|x| x <= MAX_AGENT_PCT_PER_100_HTTP),
        })],
    )
}

/// Prints the table, writes `probes.json` and `probes.svg`.
pub fn write(opts: &Opts, r: &Results) -> Result<()> {
    let doc = document(r);
    emit(&opts.out, "probes", &table(r, &doc), &doc, &chart(r, &doc))
}

fn table(r: &Results, doc: &Value) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nProbe CPU: {} pods per set, {} s windows, % of one core (load {} -> {})",
        r.pods,
        WINDOW.as_secs(),
        r.load_before,
        r.load_after
    );
    let _ = writeln!(
        t,
        "{:<6}{:<6}{:>9}{:>11}{:>9}{:>8}{:>8}",
        "round", "set", "agent", "containerd", "shims", "http", "exec"
    );
    for w in &r.windows {
        let _ = writeln!(
            t,
            "{:<6}{:<6}{:>9.2}{:>11.2}{:>9.2}{:>8}{:>8}",
            w.round,
            w.probes.name(),
            w.cpu[&Part::Agent],
            w.cpu[&Part::Containerd],
            w.cpu[&Part::Shims],
            w.http,
            w.exec
        );
    }
    let costs = costs(&r.windows);
    let _ = writeln!(
        t,
        "\nPer 100 probes/s above the no-probe set (medians over rounds), % of one core"
    );
    let _ = writeln!(
        t,
        "{:<6}{:>10}{:>9}{:>11}{:>9}",
        "set", "probes/s", "agent", "containerd", "shims"
    );
    for p in SETS {
        let m = median_of(&costs, p);
        let g = |part| m.per_100.get(&part).copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            t,
            "{:<6}{:>10.1}{:>9.2}{:>11.2}{:>9.2}",
            p.name(),
            m.per_s.unwrap_or(f64::NAN),
            g(Part::Agent),
            g(Part::Containerd),
            g(Part::Shims)
        );
    }
    for tg in doc["targets"].as_array().into_iter().flatten() {
        let met = if tg["met"] == true { "MET" } else { "NOT MET" };
        let _ = writeln!(
            t,
            "target: {} -> {}: {met}",
            tg["what"].as_str().unwrap_or_default(),
            tg["pct"]
        );
    }
    t
}

fn chart(r: &Results, doc: &Value) -> String {
    let costs = costs(&r.windows);
    let groups: Vec<Group> = SETS
        .iter()
        .map(|p| {
            let m = median_of(&costs, *p);
            Group {
                label: format!("{} ({:.0} probes/s)", p.name(), m.per_s.unwrap_or(0.0)),
                values: Part::ALL
                    .iter()
                    .map(|part| round3(m.per_100.get(part).copied().unwrap_or(0.0)))
                    .collect(),
            }
        })
        .collect();
    grouped_bars(
        "CPU per 100 probes/s above the same pods without probes",
        &[
            format!(
                "{} pods per set, period {PERIOD_S} s, {} s windows, medians of {} rounds; agent \
                 target <= {MAX_AGENT_PCT_PER_100_HTTP} % for httpGet ({})",
                r.pods,
                WINDOW.as_secs(),
                doc["parameters"]["rounds"],
                if doc["met"] == true { "met" } else { "not met" }
            ),
            format!(
                "{}; kernel {}; load {} -> {}",
                doc["date"].as_str().unwrap_or_default(),
                doc["kernel"].as_str().unwrap_or_default(),
                r.load_before,
                r.load_after
            ),
        ],
        "% of one core (lower is better)",
        &[
            Series {
                label: "knode agent",
                color: "#2a7ab9",
            },
            Series {
                label: "containerd",
                color: "#c0504d",
            },
            Series {
                label: "shims (+ runc, exec'd commands)",
                color: "#9bbb59",
            },
        ],
        &groups,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn window(round: usize, probes: Probes, agent: f64, http: u64, exec: u64) -> Window {
        Window {
            round,
            probes,
            length: Duration::from_secs(10),
            cpu: BTreeMap::from([
                (Part::Agent, agent),
                (Part::Containerd, 1.0),
                (Part::Shims, 0.5),
            ]),
            http,
            exec,
            started_s: 1.0,
        }
    }

    #[test]
    fn cost_is_above_the_same_rounds_reference_per_100_probes() {
        let w = [
            window(0, Probes::None, 0.5, 0, 0),
            window(0, Probes::Http, 1.5, 1000, 0),
            window(1, Probes::Http, 9.0, 1000, 0),
            window(1, Probes::None, 8.0, 0, 0),
            // No reference in round 2: not a cost.
            window(2, Probes::Exec, 3.0, 0, 500),
        ];
        let c = costs(&w);
        assert_eq!(c.len(), 2);
        for x in &c {
            assert!((x.per_s - 100.0).abs() < 1e-9);
            assert!((x.per_100[&Part::Agent] - 1.0).abs() < 1e-9);
            assert_eq!(x.per_100[&Part::Containerd], 0.0);
        }
        let m = median_of(&c, Probes::Http);
        assert!((m.per_100[&Part::Agent] - 1.0).abs() < 1e-9);
        assert!(median_of(&c, Probes::Exec).per_s.is_none());
    }
}
