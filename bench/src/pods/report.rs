//! The pods benchmark's report: start-latency percentiles and the ratio
//! ours/`ctr run`, the churn's phases and leftovers, the agent's memory,
//! the targets, the stdout table, `pods.json` and `pods.svg` (three
//! panels). Pure formatting of measured values; it starts nothing.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Map, Value};

use super::procfs::Mem;
use super::start::Side;
use super::{Results, START_SAMPLES};
use crate::report::{emit, grouped_bars, host_facts, with_targets, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Target: ours p50 / `ctr run` p50.
pub const MAX_START_RATIO: f64 = 1.5;
/// Target: the agent's VmRSS with the churn's pods running, in MiB.
pub const MAX_RSS_MIB: f64 = 40.0;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn secs(d: Duration) -> f64 {
    round3(d.as_secs_f64())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "n": s.n, "p50_ms": round3(s.p50), "p99_ms": round3(s.p99), "mean_ms": round3(s.mean),
        "min_ms": round3(s.min), "max_ms": round3(s.max),
    })
}

/// The start summaries: (ours until Running, ours until apply returned, raw).
fn start_summaries(r: &Results) -> (Option<Summary>, Option<Summary>, Option<Summary>) {
    (
        Summary::of(&r.start.ours),
        Summary::of(&r.start.ours_ack),
        Summary::of(&r.start.raw),
    )
}

/// ours/raw at p50 and p99.
fn start_ratio(r: &Results) -> Option<(f64, f64)> {
    let (o, _, raw) = start_summaries(r);
    let (o, raw) = (o?, raw?);
    Some((o.p50 / raw.p50, o.p99 / raw.p99))
}

/// The memory readings: (when, chart label, pods running, reading).
fn memory(r: &Results) -> [(&'static str, String, usize, Mem); 3] {
    [
        (
            "idle, before any pod",
            "0 pods, before".into(),
            0,
            r.mem_idle,
        ),
        (
            "pods running (churn)",
            format!("{} pods running", r.churn.pods),
            r.churn.pods,
            r.churn.mem_running,
        ),
        (
            "idle, after the churn",
            "0 pods, after the churn".into(),
            0,
            r.mem_after,
        ),
    ]
}

/// `containerd 1.6.20~ds1` from `containerd --version`'s line.
fn containerd_short(line: &str) -> String {
    match line.split_whitespace().nth(2) {
        Some(v) => format!("containerd {v}"),
        None => line.to_string(),
    }
}

/// A JSON key from a leftover's name (`IP reservations` -> `ip_reservations`).
fn key(name: &str) -> String {
    name.to_ascii_lowercase().replace(' ', "_")
}

/// The targets, each with what was measured and whether it was met.
fn targets(r: &Results) -> Vec<Value> {
    let ratio = start_ratio(r).map(|x| x.0);
    let rss = mib(r.churn.mem_running.rss_kib);
    let leaked = r.churn.leaks.total();
    vec![
        json!({
            "what": format!("ours pod start p50 <= {MAX_START_RATIO} x `ctr run -d` p50"),
            "max_ratio": MAX_START_RATIO, "ratio": ratio.map(round3),
            "met": ratio.is_some_and(|x| x <= MAX_START_RATIO),
        }),
        json!({
            "what": format!("agent VmRSS with {} pods running <= {MAX_RSS_MIB} MiB", r.churn.pods),
            "max_mib": MAX_RSS_MIB, "mib": round3(rss), "met": rss <= MAX_RSS_MIB,
        }),
        json!({
            "what": "nothing left on the node after the churn's delete",
            "leaked": leaked, "met": leaked == 0,
        }),
    ]
}

/// Builds the JSON document of a run.
pub fn document(r: &Results) -> Value {
    let (ours, ack, raw) = start_summaries(r);
    let mut doc = host_facts();
    doc["benchmark"] = json!("pods");
    doc["containerd"] = json!(r.containerd_version);
    doc["runc"] = json!(r.runc_version);
    doc["method"] = json!(format!(
        "one node: a private containerd, a host network namespace, `knode agent` inside it with \
         every path in a temp dir; busybox image ({}) imported into the agent's containerd \
         namespace and, for the reference, into `{}` with ctr. Start: {} untimed and {} timed \
         starts per side, one at a time, interleaved (the side going first alternates). Ours: \
         spawn of `knode apply -f -` of a one-container pod (sleep 3600, imagePullPolicy \
         IfNotPresent, terminationGracePeriodSeconds 0) until a watch on the agent socket, opened \
         beforehand, delivers the pod Running with a podIP and its container running. Reference: \
         spawn of `ctr run -d --snapshotter overlayfs IMAGE ID sleep 3600` until it returns (task \
         RUNNING, checked untimed). Cleanup between samples (untimed, so every sample starts on a \
         clean node): ours deleted through the socket, then waited until the watch has it gone and \
         the node holds no container, netns pin or log dir; reference `ctr tasks kill -s SIGKILL`, \
         `ctr tasks rm -f`, `ctr containers rm`. Churn: one `knode apply -f -` of {} pods until \
         the watch shows all Running, {} s quiet, memory read, then one `knode delete -f -` of \
         the same manifest until the watch lists none, then until every leftover count is 0 \
         (dirs polled every 50 ms, containerd and veths checked once they are empty); leftovers \
         are counted after that (or after the timeout). Memory: VmRSS/VmHWM of the agent from \
         /proc/PID/status after {} s quiet",
        r.image,
        super::RAW_NAMESPACE,
        r.warmup,
        r.start.ours.len(),
        r.churn.pods,
        super::SETTLE.as_secs(),
        super::SETTLE.as_secs(),
    ));
    doc["parameters"] = json!({
        "start_samples": r.start.ours.len(),
        "warmup": r.warmup,
        "churn_pods": r.churn.pods,
        "image": r.image,
        "reference_image": r.raw_image,
        "cleanup_between_start_samples": "deleted after each sample and waited for, untimed",
        "termination_grace_period_seconds": 0,
        "watch_reopened": r.watch_reopened,
    });
    let mut start = Vec::new();
    if let Some(o) = &ours {
        let mut v = json!({
            "side": Side::Ours.name(), "how": Side::Ours.about(),
            "running": summary_json(o),
        });
        if let Some(a) = &ack {
            v["apply_returned"] = summary_json(a);
        }
        if let Some(f) = r.start.ours_first {
            v["first_ms"] = json!(round3(ms(f)));
        }
        start.push(v);
    }
    if let Some(x) = &raw {
        let mut v = json!({
            "side": Side::Raw.name(), "how": Side::Raw.about(),
            "running": summary_json(x),
        });
        if let Some(f) = r.start.raw_first {
            v["first_ms"] = json!(round3(ms(f)));
        }
        start.push(v);
    }
    doc["start"] = Value::Array(start);
    doc["ratios"] = match start_ratio(r) {
        Some((p50, p99)) => json!({ "start_p50": round3(p50), "start_p99": round3(p99) }),
        None => json!({}),
    };
    let c = &r.churn;
    let mut leaks = Map::new();
    for (name, n) in &c.leaks.counts {
        leaks.insert(key(name), json!(n));
    }
    doc["churn"] = json!({
        "pods": c.pods,
        "apply_returned_s": secs(c.apply_returned),
        "all_running_s": secs(c.all_running),
        "running_pods_per_s": round3(c.pods as f64 / c.all_running.as_secs_f64()),
        "delete_returned_s": secs(c.delete_returned),
        "all_deleted_s": secs(c.all_deleted),
        "node_clean_s": c.node_clean.map(secs),
        "leaks": leaks,
        "leaked_total": c.leaks.total(),
    });
    doc["memory"] = Value::Array(
        memory(r)
            .iter()
            .map(|(when, _, pods, m)| {
                json!({
                    "process": "knode agent", "when": when, "pods": pods,
                    "vmrss_kib": m.rss_kib, "vmhwm_kib": m.hwm_kib,
                    "vmrss_mib": round3(mib(m.rss_kib)), "vmhwm_mib": round3(mib(m.hwm_kib)),
                })
            })
            .collect(),
    );
    with_targets(doc, targets(r))
}

/// Prints the table, writes `pods.json` and `pods.svg`.
pub fn write(opts: &Opts, r: &Results) -> Result<()> {
    let doc = document(r);
    emit(&opts.out, "pods", &table(r, &doc), &doc, &chart(r, &doc))
}

fn table(r: &Results, doc: &Value) -> String {
    let (ours, ack, raw) = start_summaries(r);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nPod start latency (ms): {} per side, interleaved, {} warm-up pairs excluded",
        r.start.ours.len(),
        r.warmup
    );
    let _ = writeln!(
        t,
        "{:<36}{:>6}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "side", "n", "p50", "p99", "mean", "min", "max"
    );
    for (label, s) in [
        ("ours: apply until Running + podIP", ours),
        ("ours: until `knode apply` returned", ack),
        ("reference: `ctr run -d`", raw),
    ] {
        if let Some(s) = s {
            let _ = writeln!(
                t,
                "{label:<36}{:>6}{:>9.1}{:>9.1}{:>9.1}{:>9.1}{:>9.1}",
                s.n, s.p50, s.p99, s.mean, s.min, s.max
            );
        }
    }
    if let Some((p50, p99)) = start_ratio(r) {
        let _ = writeln!(t, "{:<36}{:>6}{p50:>9.3}{p99:>9.3}", "ours/reference", "");
    }
    let c = &r.churn;
    let _ = writeln!(
        t,
        "\nChurn: {} pods in one manifest (seconds from the command's spawn)",
        c.pods
    );
    let clean = c.node_clean.map_or_else(
        || "not clean in time".into(),
        |d| format!("{:.3}", d.as_secs_f64()),
    );
    for (label, v) in [
        (
            "`knode apply` returned",
            format!("{:.3}", c.apply_returned.as_secs_f64()),
        ),
        (
            "all Running with a podIP",
            format!("{:.3}", c.all_running.as_secs_f64()),
        ),
        (
            "`knode delete` returned",
            format!("{:.3}", c.delete_returned.as_secs_f64()),
        ),
        (
            "none listed by the control plane",
            format!("{:.3}", c.all_deleted.as_secs_f64()),
        ),
        ("nothing left on the node", clean),
    ] {
        let _ = writeln!(t, "  {label:<34}{v:>10}");
    }
    let leaks: Vec<String> = c
        .leaks
        .counts
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(t, "  leftovers: {}", leaks.join(", "));
    let _ = writeln!(t, "\nknode agent memory (MiB)");
    let _ = writeln!(
        t,
        "  {:<28}{:>6}{:>9}{:>9}",
        "when", "pods", "VmRSS", "VmHWM"
    );
    for (when, _, pods, m) in memory(r) {
        let _ = writeln!(
            t,
            "  {when:<28}{pods:>6}{:>9.1}{:>9.1}",
            mib(m.rss_kib),
            mib(m.hwm_kib)
        );
    }
    for tg in doc["targets"].as_array().into_iter().flatten() {
        let met = if tg["met"] == true { "MET" } else { "NOT MET" };
        let got = if let Some(x) = tg["ratio"].as_f64() {
            format!("ratio {x:.3}")
        } else if let Some(x) = tg["mib"].as_f64() {
            format!("{x:.1} MiB")
        } else if let Some(x) = tg["leaked"].as_u64() {
            format!("{x} left")
        } else {
            "n/a".into()
        };
        let _ = writeln!(
            t,
            "target: {} -> {got}: {met}",
            tg["what"].as_str().unwrap_or_default()
        );
    }
    t
}

/// Three grouped-bar panels stacked in one SVG: start latency, churn, memory.
fn chart(r: &Results, doc: &Value) -> String {
    let sub = format!(
        "{}; kernel {}; {}",
        doc["date"].as_str().unwrap_or_default(),
        doc["kernel"].as_str().unwrap_or_default(),
        containerd_short(&r.containerd_version)
    );
    let verdict = |i: usize| {
        if doc["targets"][i]["met"] == true {
            "met"
        } else {
            "not met"
        }
    };

    let (ours, _, raw) = start_summaries(r);
    let mut groups = Vec::new();
    if let (Some(o), Some(x)) = (ours, raw) {
        for (label, a, b) in [
            ("p50", o.p50, x.p50),
            ("p99", o.p99, x.p99),
            ("mean", o.mean, x.mean),
        ] {
            groups.push(Group {
                label: label.into(),
                values: vec![round3(a), round3(b)],
            });
        }
    }
    let ratio = start_ratio(r).map_or_else(|| "n/a".into(), |x| format!("{:.3}", x.0));
    let n = if r.start.ours.is_empty() {
        START_SAMPLES
    } else {
        r.start.ours.len()
    };
    let start = grouped_bars(
        "Pod start: apply until Running with a podIP vs `ctr run -d`",
        &[
            format!(
                "{n} per side, interleaved, warm-up excluded; ours/reference p50 {ratio} \
                 (target <= {MAX_START_RATIO}, {})",
                verdict(0)
            ),
            sub.clone(),
        ],
        "milliseconds (lower is better)",
        &[
            Series {
                label: "ours (knode apply -> Running)",
                color: "#2a7ab9",
            },
            Series {
                label: "reference (ctr run -d)",
                color: "#c0504d",
            },
        ],
        &groups,
    );

    let c = &r.churn;
    let mut churn_groups = vec![
        Group {
            label: "apply -> all Running".into(),
            values: vec![secs(c.all_running)],
        },
        Group {
            label: "delete -> none listed".into(),
            values: vec![secs(c.all_deleted)],
        },
    ];
    if let Some(d) = c.node_clean {
        churn_groups.push(Group {
            label: "delete -> node clean".into(),
            values: vec![secs(d)],
        });
    }
    let churn = grouped_bars(
        &format!(
            "Churn: {} pods applied at once, then deleted at once",
            c.pods
        ),
        &[
            format!(
                "seconds from the command's spawn; leftovers after the delete: {} ({})",
                c.leaks.total(),
                c.leaks.describe_nonzero()
            ),
            sub.clone(),
        ],
        "seconds (lower is better)",
        &[Series {
            label: "knode agent",
            color: "#2a7ab9",
        }],
        &churn_groups,
    );

    let mem_groups: Vec<Group> = memory(r)
        .into_iter()
        .map(|(_, label, _, m)| Group {
            label,
            values: vec![round3(mib(m.rss_kib)), round3(mib(m.hwm_kib))],
        })
        .collect();
    let mem = grouped_bars(
        "knode agent memory",
        &[
            format!(
                "VmRSS with {} pods {:.1} MiB (target <= {MAX_RSS_MIB}, {}); VmHWM: peak since start",
                c.pods,
                mib(c.mem_running.rss_kib),
                verdict(1)
            ),
            sub,
        ],
        "MiB (lower is better)",
        &[
            Series {
                label: "VmRSS",
                color: "#2a7ab9",
            },
            Series {
                label: "VmHWM",
                color: "#9bbbd9",
            },
        ],
        &mem_groups,
    );
    stack(&[start, churn, mem])
}

/// Stacks complete SVG documents vertically into one (nested `<svg>`
/// elements positioned with `y`); every panel has the chart's fixed size.
fn stack(panels: &[String]) -> String {
    let (w, h) = (760.0, 440.0);
    let total = h * panels.len() as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{total}\" viewBox=\"0 0 {w} {total}\">\n"
    );
    for (i, p) in panels.iter().enumerate() {
        s.push_str(&p.replacen("<svg ", &format!("<svg x=\"0\" y=\"{}\" ", h * i as f64), 1));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::super::churn::Churn;
    use super::super::leaks::Leaks;
    use super::super::start::Samples;
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn results(leaked: usize, rss_mib: u64) -> Results {
        let mem = |mib: u64| Mem {
            rss_kib: mib * 1024,
            hwm_kib: mib * 1024 + 512,
        };
        Results {
            image: "example.test/busybox:1".into(),
            raw_image: "example.test/busybox:1".into(),
            warmup: 1,
            start: Samples {
                ours: vec![d(300), d(200), d(400)],
                ours_ack: vec![d(20), d(30), d(25)],
                raw: vec![d(200), d(150), d(250)],
                ours_first: Some(d(900)),
                raw_first: Some(d(500)),
            },
            churn: Churn {
                pods: 100,
                apply_returned: d(400),
                all_running: d(20_000),
                mem_running: mem(rss_mib),
                delete_returned: d(300),
                all_deleted: d(350),
                node_clean: (leaked == 0).then(|| d(9_000)),
                leaks: Leaks {
                    counts: vec![("containerd containers", leaked), ("IP reservations", 0)],
                },
            },
            mem_idle: mem(10),
            mem_after: mem(12),
            watch_reopened: 0,
            containerd_version: "containerd 1.6".into(),
            runc_version: "runc 1.1".into(),
        }
    }

    #[test]
    fn document_has_ratios_targets_and_leaks() {
        let doc = document(&results(0, 30));
        assert_eq!(doc["benchmark"], "pods");
        assert_eq!(doc["start"][0]["running"]["p50_ms"], 300.0);
        assert_eq!(doc["start"][1]["running"]["p50_ms"], 200.0);
        assert_eq!(doc["ratios"]["start_p50"], 1.5);
        assert_eq!(doc["churn"]["leaks"]["ip_reservations"], 0);
        assert_eq!(doc["churn"]["node_clean_s"], 9.0);
        assert_eq!(doc["churn"]["running_pods_per_s"], 5.0);
        assert_eq!(doc["memory"][1]["vmrss_mib"], 30.0);
        assert_eq!(doc["met"], true);
    }

    #[test]
    fn leaks_and_memory_fail_their_targets() {
        let doc = document(&results(2, 41));
        assert_eq!(doc["targets"][1]["met"], false);
        assert_eq!(doc["targets"][2]["leaked"], 2);
        assert_eq!(doc["targets"][2]["met"], false);
        assert_eq!(doc["churn"]["node_clean_s"], Value::Null);
        assert_eq!(doc["churn"]["leaks"]["containerd_containers"], 2);
        assert_eq!(doc["met"], false);
    }

    #[test]
    fn containerd_version_is_shortened() {
        assert_eq!(
            containerd_short("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1"),
            "containerd 1.6.20~ds1"
        );
        assert_eq!(containerd_short("unknown"), "unknown");
    }

    #[test]
    fn chart_and_table_show_every_part() {
        let r = results(0, 30);
        let doc = document(&r);
        let svg = chart(&r, &doc);
        assert_eq!(svg.matches("<svg ").count(), 4);
        assert!(svg.contains("y=\"880\""));
        assert!(svg.contains(">300.000</text>") && svg.contains(">200.000</text>"));
        let t = table(&r, &doc);
        assert!(t.contains("ours/reference"));
        assert!(
            t.contains("target: ours pod start p50 <= 1.5 x `ctr run -d` p50 -> ratio 1.500: MET")
        );
        assert!(t.contains("leftovers: containerd containers 0, IP reservations 0"));
    }
}
