//! The CNI benchmark's report: percentiles per (impl, op, ipMasq), ratios
//! ours/reference, the targets, the stdout table, `cni.json` and
//! `cni.svg`. Pure formatting of measured samples; it runs no plugin.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{on_off, Impl, Round};
use crate::report::{emit, grouped_bars, host_facts, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// A latency target: ours/reference for `op` at p50 with ipMasq on.
struct Target {
    op: &'static str,
    max_ratio: f64,
}

const TARGETS: [Target; 2] = [
    Target {
        op: "ADD",
        max_ratio: 0.2,
    },
    Target {
        op: "DEL",
        max_ratio: 0.1,
    },
];

/// One summarised series.
struct Row {
    ip_masq: bool,
    imp: Impl,
    op: &'static str,
    s: Summary,
    first_add: Option<f64>,
}

fn rows(rounds: &[Round]) -> Vec<Row> {
    let mut out = Vec::new();
    for r in rounds {
        for op in ["ADD", "DEL"] {
            for (k, imp) in Impl::ALL.into_iter().enumerate() {
                let smp = &r.samples[k];
                let v = if op == "ADD" { &smp.add } else { &smp.del };
                if let Some(s) = Summary::of(v) {
                    let first_add = (op == "ADD").then(|| smp.first_add.map(ms)).flatten();
                    out.push(Row {
                        ip_masq: r.ip_masq,
                        imp,
                        op,
                        s,
                        first_add,
                    });
                }
            }
        }
    }
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn find<'a>(rows: &'a [Row], ip_masq: bool, imp: Impl, op: &str) -> Option<&'a Summary> {
    rows.iter()
        .find(|r| r.ip_masq == ip_masq && r.imp == imp && r.op == op)
        .map(|r| &r.s)
}

/// ours/reference at p50 and p99 for `op`.
fn ratio(rows: &[Row], ip_masq: bool, op: &str) -> Option<(f64, f64)> {
    let o = find(rows, ip_masq, Impl::Ours, op)?;
    let r = find(rows, ip_masq, Impl::Reference, op)?;
    Some((o.p50 / r.p50, o.p99 / r.p99))
}

/// Prints the table, writes `cni.json` and `cni.svg`; fails if nothing was measured.
pub fn write(opts: &Opts, rounds: &[Round]) -> Result<()> {
    let rows = rows(rounds);
    let mut results = Vec::new();
    for r in &rows {
        let mut v = json!({
            "impl": r.imp.name(), "op": r.op, "ipMasq": r.ip_masq, "n": r.s.n,
            "p50_ms": round3(r.s.p50), "p99_ms": round3(r.s.p99), "mean_ms": round3(r.s.mean),
            "min_ms": round3(r.s.min), "max_ms": round3(r.s.max),
        });
        if let Some(f) = r.first_add {
            v["first_add_ms"] = json!(round3(f));
        }
        results.push(v);
    }
    let mut ratios = Vec::new();
    for r in rounds {
        for op in ["ADD", "DEL"] {
            if let Some((p50, p99)) = ratio(&rows, r.ip_masq, op) {
                ratios.push(json!({ "op": op, "ipMasq": r.ip_masq, "p50": round3(p50), "p99": round3(p99) }));
            }
        }
    }
    let mut targets = Vec::new();
    let mut all_met = true;
    for t in &TARGETS {
        let got = ratio(&rows, true, t.op).map(|r| r.0);
        let met = got.is_some_and(|g| g <= t.max_ratio);
        all_met &= met;
        targets.push(json!({
            "what": format!("ours {} p50 <= {} x reference {} p50 (ipMasq on)", t.op, t.max_ratio, t.op),
            "op": t.op, "ipMasq": true, "metric": "p50", "max_ratio": t.max_ratio,
            "ratio": got.map(round3), "met": met,
        }));
    }
    let mut doc = host_facts();
    doc["benchmark"] = json!("cni");
    doc["method"] = json!(format!(
        "wall-clock spawn-to-exit of each plugin exec, run from a thread in a host netns the harness creates; \
         per round {} pods per side, interleaved (ADD ours, ADD ref per pod, then DEL ours, DEL ref with prevResult), \
         after {} untimed ADD/DEL warm-up pairs per side (first_add_ms is the first warm-up ADD); \
         our DEL returns when the veth pair is down and renamed and a child deletes it, so after each of \
         our DELs the harness waits, untimed, for that delete to finish before the next call",
        opts.pods, opts.warmup
    ));
    doc["ours"] = json!("knode-bridge + knode-host-local");
    doc["reference"] = json!("/usr/lib/cni/bridge + host-local");
    doc["pods"] = json!(opts.pods);
    doc["warmup"] = json!(opts.warmup);
    doc["rounds"] = json!(rounds
        .iter()
        .map(|r| json!({ "ipMasq": r.ip_masq }))
        .collect::<Vec<_>>());
    doc["results"] = Value::Array(results);
    doc["ratios"] = Value::Array(ratios);
    doc["targets"] = Value::Array(targets);
    doc["met"] = json!(all_met);

    emit(
        &opts.out,
        "cni",
        &table(opts, rounds, &rows, &doc),
        &doc,
        &chart(opts, &rows, &doc),
    )
}

fn table(opts: &Opts, rounds: &[Round], rows: &[Row], doc: &Value) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nCNI ADD/DEL latency (ms): {} pods per side, interleaved, {} warm-up pairs excluded",
        opts.pods, opts.warmup
    );
    let _ = writeln!(
        t,
        "{:<7}{:<5}{:<11}{:>9}{:>9}{:>9}{:>11}",
        "ipMasq", "op", "impl", "p50", "p99", "mean", "first_add"
    );
    for r in rounds {
        for op in ["ADD", "DEL"] {
            for row in rows.iter().filter(|x| x.ip_masq == r.ip_masq && x.op == op) {
                let first = row.first_add.map(|f| format!("{f:.3}")).unwrap_or_default();
                let _ = writeln!(
                    t,
                    "{:<7}{:<5}{:<11}{:>9.3}{:>9.3}{:>9.3}{:>11}",
                    on_off(r.ip_masq),
                    op,
                    row.imp.name(),
                    row.s.p50,
                    row.s.p99,
                    row.s.mean,
                    first
                );
            }
            if let Some((p50, p99)) = ratio(rows, r.ip_masq, op) {
                let _ = writeln!(
                    t,
                    "{:<7}{:<5}{:<11}{:>9.3}{:>9.3}",
                    "", op, "ours/ref", p50, p99
                );
            }
        }
    }
    for tg in doc["targets"].as_array().into_iter().flatten() {
        let ratio = tg["ratio"]
            .as_f64()
            .map(|r| format!("{r:.3}"))
            .unwrap_or_else(|| "n/a".into());
        let met = if tg["met"].as_bool() == Some(true) {
            "MET"
        } else {
            "NOT MET"
        };
        let _ = writeln!(
            t,
            "target: {} -> ratio {ratio}: {met}",
            tg["what"].as_str().unwrap_or_default()
        );
    }
    t
}

fn chart(opts: &Opts, rows: &[Row], doc: &Value) -> String {
    let mut groups = Vec::new();
    for op in ["ADD", "DEL"] {
        let (o, r) = (
            find(rows, true, Impl::Ours, op),
            find(rows, true, Impl::Reference, op),
        );
        if let (Some(o), Some(r)) = (o, r) {
            groups.push(Group {
                label: format!("{op} p50"),
                values: vec![round3(o.p50), round3(r.p50)],
            });
            groups.push(Group {
                label: format!("{op} p99"),
                values: vec![round3(o.p99), round3(r.p99)],
            });
        }
    }
    let mut subtitles = vec![format!(
        "ipMasq on, {} pods per side, interleaved, warm-up excluded; {}; kernel {}",
        opts.pods,
        doc["date"].as_str().unwrap_or_default(),
        doc["kernel"].as_str().unwrap_or_default()
    )];
    let verdicts: Vec<String> = doc["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let met = if t["met"].as_bool() == Some(true) {
                "met"
            } else {
                "not met"
            };
            let ratio = t["ratio"]
                .as_f64()
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "n/a".into());
            format!(
                "{} p50 {ratio} (target <= {}, {met})",
                t["op"].as_str().unwrap_or_default(),
                t["max_ratio"]
            )
        })
        .collect();
    subtitles.push(format!("ours/reference: {}", verdicts.join("; ")));
    grouped_bars(
        "CNI ADD/DEL latency: knode-bridge vs reference bridge",
        &subtitles,
        "milliseconds (lower is better)",
        &[
            Series {
                label: "ours (knode-bridge)",
                color: "#2a7ab9",
            },
            Series {
                label: "reference (bridge)",
                color: "#c0504d",
            },
        ],
        &groups,
    )
}
