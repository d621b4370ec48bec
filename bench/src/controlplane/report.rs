//! The control-plane benchmark's report: percentiles, throughput, memory,
//! ratios ours/reference, the stdout table, `controlplane.json` and
//! `controlplane.svg` (three panels). Pure formatting of measured values.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Value};

use super::apply::Outcome as Apply;
use super::mem::{Reading, AGENT, ETCD};
use super::watch::Samples;
use super::Side;
use super::{Results, FILL_CONCURRENCY, PAYLOAD_BYTES};
use crate::report::{emit, grouped_bars, host_facts, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Watch latency of one side: (event, ack).
fn watch_summary(s: &Samples) -> Option<(Summary, Summary)> {
    Some((Summary::of(&s.event)?, Summary::of(&s.ack)?))
}

fn find_watch(r: &Results, side: Side) -> Option<(Summary, Summary)> {
    r.watch
        .iter()
        .find(|s| s.side == side)
        .and_then(watch_summary)
}

fn find_apply(r: &Results, side: Side) -> Option<(&Apply, Summary)> {
    let a = r.apply.iter().find(|a| a.side == side)?;
    Some((a, Summary::of(&a.took)?))
}

/// The median of per-round CPU times, in seconds.
fn median_s(v: &[std::time::Duration]) -> f64 {
    Summary::of(v).map_or(0.0, |s| s.p50 / 1e3)
}

/// Pods per second at the median round (`s` in milliseconds).
fn pods_per_s(a: &Apply, s: &Summary) -> f64 {
    a.pods as f64 / (s.p50 / 1e3)
}

fn find_mem<'a>(r: &'a Results, process: &str, when: &str) -> Option<&'a Reading> {
    r.mem
        .readings
        .iter()
        .find(|x| x.process == process && x.when == when)
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

/// ours/reference ratios: watch p50/p99 against etcd-raw, apply time
/// against raw puts, the agent's memory against etcd's.
fn ratios(r: &Results) -> Value {
    let mut watch = Vec::new();
    if let Some((floor, _)) = find_watch(r, Side::EtcdRaw) {
        for side in [Side::Embedded, Side::Etcd] {
            if let Some((ev, _)) = find_watch(r, side) {
                watch.push(json!({
                    "ours": side.name(), "reference": Side::EtcdRaw.name(),
                    "p50": round3(ev.p50 / floor.p50), "p99": round3(ev.p99 / floor.p99),
                }));
            }
        }
    }
    let mut apply = Vec::new();
    if let Some((_, floor)) = find_apply(r, Side::EtcdRaw) {
        for side in [Side::Embedded, Side::Etcd] {
            if let Some((_, s)) = find_apply(r, side) {
                apply.push(json!({
                    "ours": side.name(), "reference": Side::EtcdRaw.name(),
                    "median_time": round3(s.p50 / floor.p50),
                }));
            }
        }
    }
    let mut mem = Vec::new();
    for when in ["idle", "filled", "after list"] {
        if let (Some(a), Some(e)) = (find_mem(r, AGENT, when), find_mem(r, ETCD, when)) {
            mem.push(json!({
                "ours": AGENT, "reference": ETCD, "when": when,
                "vmrss": round3(a.mem.rss_kib as f64 / e.mem.rss_kib as f64),
                "vmhwm": round3(a.mem.hwm_kib as f64 / e.mem.hwm_kib as f64),
            }));
        }
    }
    json!({ "watch_event_latency": watch, "apply_time": apply, "memory": mem })
}

/// Prints the table, writes `controlplane.json` and `controlplane.svg`.
pub fn write(opts: &Opts, r: &Results) -> Result<()> {
    let mut doc = host_facts();
    doc["benchmark"] = json!("controlplane");
    doc["etcd"] = json!(r.etcd_version);
    doc["method"] = json!(format!(
        "one run, all on loopback. Watch: a watch per side opened first, then {} untimed and {} timed \
         creates of a new ConfigMap ({PAYLOAD_BYTES}-byte payload) per side, one at a time, interleaved \
         (the side going first rotates); latency from just before the write until the watcher has \
         the ADDED event (ack = until the write returned). Apply: one `knode apply -n NS -f DIR` of {} pod \
         manifests per side and round, process start to exit, {} rounds interleaved (the side going \
         first rotates), each round into a fresh namespace, then the pods are listed and counted; the \
         raw reference puts the same JSON files sequentially with etcd-client in process; seconds \
         and pods/s are at the median round; client/server CPU is user+system time from /proc \
         (the CLI as a reaped child, the bench itself for raw; the agent or etcd) per round, median. Memory: a fresh \
         agent and a fresh etcd, VmRSS/VmHWM from /proc/PID/status idle (after one list), after \
         {} ConfigMaps were created in each ({FILL_CONCURRENCY} in flight, interleaved chunks; the \
         agent through its socket, etcd through our etcd backend) and after one full list",
        opts.warmup,
        r.watch.first().map_or(0, |s| s.event.len()),
        r.apply.first().map_or(0, |a| a.pods),
        r.apply.first().map_or(0, |a| a.took.len()),
        r.mem.objects,
    ));
    doc["parameters"] = json!({
        "watch_writes": r.watch.first().map_or(0, |s| s.event.len()),
        "watch_warmup": opts.warmup,
        "apply_pods": r.apply.first().map_or(0, |a| a.pods),
        "apply_rounds": r.apply.first().map_or(0, |a| a.took.len()),
        "held_objects": r.mem.objects,
        "payload_bytes": PAYLOAD_BYTES,
        "fill_concurrency": FILL_CONCURRENCY,
    });
    doc["watch"] = Value::Array(
        r.watch
            .iter()
            .filter_map(|s| {
                let (ev, ack) = watch_summary(s)?;
                Some(json!({
                    "side": s.side.name(), "how": s.side.watch_about(),
                    "event": summary_json(&ev), "ack": summary_json(&ack),
                }))
            })
            .collect(),
    );
    doc["apply"] = Value::Array(
        Side::ALL
            .iter()
            .filter_map(|&side| {
                let (a, s) = find_apply(r, side)?;
                Some(json!({
                    "side": side.name(), "how": side.apply_about(), "pods": a.pods,
                    "rounds_s": a.took.iter().map(|d| round3(d.as_secs_f64())).collect::<Vec<_>>(),
                    "median_s": round3(s.p50 / 1e3), "min_s": round3(s.min / 1e3),
                    "max_s": round3(s.max / 1e3),
                    "pods_per_s": round3(pods_per_s(a, &s)), "listed": a.listed,
                    "client": side.client(), "client_cpu_median_s": round3(median_s(&a.client_cpu)),
                    "server": side.server(), "server_cpu_median_s": round3(median_s(&a.server_cpu)),
                }))
            })
            .collect(),
    );
    doc["memory"] = Value::Array(
        r.mem
            .readings
            .iter()
            .map(|x| {
                json!({
                    "process": x.process, "when": x.when, "objects": x.objects,
                    "vmrss_kib": x.mem.rss_kib, "vmhwm_kib": x.mem.hwm_kib,
                })
            })
            .collect(),
    );
    doc["fill"] = Value::Array(
        r.mem
            .fill
            .iter()
            .map(|(p, d)| {
                json!({
                    "process": p, "objects": r.mem.objects,
                    "seconds": round3(d.as_secs_f64()),
                    "objects_per_s": round3(r.mem.objects as f64 / d.as_secs_f64()),
                })
            })
            .collect(),
    );
    doc["ratios"] = ratios(r);

    emit(&opts.out, "controlplane", &table(r), &doc, &chart(r, &doc))
}

fn table(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nWatch-event latency (ms), write until the watcher has the event; interleaved"
    );
    let _ = writeln!(
        t,
        "{:<10}{:>6}{:>9}{:>9}{:>9}{:>11}{:>11}",
        "side", "n", "p50", "p99", "mean", "ack p50", "ack p99"
    );
    for side in Side::ALL {
        if let Some((ev, ack)) = find_watch(r, side) {
            let _ = writeln!(
                t,
                "{:<10}{:>6}{:>9.3}{:>9.3}{:>9.3}{:>11.3}{:>11.3}",
                side.name(),
                ev.n,
                ev.p50,
                ev.p99,
                ev.mean,
                ack.p50,
                ack.p99
            );
        }
    }
    let _ = writeln!(
        t,
        "\nApply throughput: one `knode apply -f DIR` per round (raw: sequential puts), seconds"
    );
    let _ = writeln!(
        t,
        "{:<10}{:>6}{:>8}{:>9}{:>9}{:>9}{:>10}   median CPU s: client, server",
        "side", "pods", "rounds", "median", "min", "max", "pods/s"
    );
    for side in Side::ALL {
        if let Some((a, s)) = find_apply(r, side) {
            let _ = writeln!(
                t,
                "{:<10}{:>6}{:>8}{:>9.3}{:>9.3}{:>9.3}{:>10.1}   {} {:.2}, {} {:.2}",
                side.name(),
                a.pods,
                s.n,
                s.p50 / 1e3,
                s.min / 1e3,
                s.max / 1e3,
                pods_per_s(a, &s),
                side.client(),
                median_s(&a.client_cpu),
                side.server(),
                median_s(&a.server_cpu)
            );
        }
    }
    let _ = writeln!(t, "\nMemory (MiB)");
    let _ = writeln!(
        t,
        "{:<38}{:<12}{:>8}{:>9}{:>9}",
        "process", "when", "objects", "VmRSS", "VmHWM"
    );
    for x in &r.mem.readings {
        let _ = writeln!(
            t,
            "{:<38}{:<12}{:>8}{:>9.1}{:>9.1}",
            x.process,
            x.when,
            x.objects,
            mib(x.mem.rss_kib),
            mib(x.mem.hwm_kib)
        );
    }
    for (p, d) in &r.mem.fill {
        let _ = writeln!(
            t,
            "fill {p}: {} objects in {:.3} s ({:.0}/s)",
            r.mem.objects,
            d.as_secs_f64(),
            r.mem.objects as f64 / d.as_secs_f64()
        );
    }
    t
}

/// Three grouped-bar panels stacked in one SVG: watch latency, apply
/// throughput, memory.
fn chart(r: &Results, doc: &Value) -> String {
    let sub = format!(
        "{}; kernel {}; {}",
        doc["date"].as_str().unwrap_or_default(),
        doc["kernel"].as_str().unwrap_or_default(),
        doc["etcd"]
            .as_str()
            .unwrap_or_default()
            .replace("etcd Version:", "etcd")
    );
    let three = [
        Series {
            label: "embedded (knode agent)",
            color: "#2a7ab9",
        },
        Series {
            label: "etcd (our backend)",
            color: "#6aa84f",
        },
        Series {
            label: "etcd-raw (reference)",
            color: "#c0504d",
        },
    ];
    let mut groups = Vec::new();
    let sums: Vec<Option<Summary>> = Side::ALL
        .iter()
        .map(|s| find_watch(r, *s).map(|x| x.0))
        .collect();
    if sums.iter().all(Option::is_some) {
        let sums: Vec<Summary> = sums.into_iter().flatten().collect();
        groups.push(Group {
            label: "event p50".into(),
            values: sums.iter().map(|s| round3(s.p50)).collect(),
        });
        groups.push(Group {
            label: "event p99".into(),
            values: sums.iter().map(|s| round3(s.p99)).collect(),
        });
    }
    let n = r.watch.first().map_or(0, |s| s.event.len());
    let watch = grouped_bars(
        "Watch-event latency: write until the watcher has the event",
        &[format!("{n} creates per side, interleaved; {sub}")],
        "milliseconds (lower is better)",
        &three,
        &groups,
    );

    let pods = r.apply.first().map_or(0, |a| a.pods);
    let apply_values: Vec<f64> = Side::ALL
        .iter()
        .filter_map(|&side| find_apply(r, side).map(|(a, s)| round3(pods_per_s(a, &s))))
        .collect();
    let apply_groups = if apply_values.len() == 3 {
        vec![Group {
            label: format!("{pods} pods, one `knode apply -f DIR` (raw: sequential puts)"),
            values: apply_values,
        }]
    } else {
        Vec::new()
    };
    let rounds = r.apply.first().map_or(0, |a| a.took.len());
    let apply = grouped_bars(
        "Apply throughput (median round)",
        &[format!(
            "{pods} pod manifests, {rounds} interleaved rounds; {sub}"
        )],
        "pods per second (higher is better)",
        &three,
        &apply_groups,
    );

    let mut mem_groups = Vec::new();
    for (when, label) in [
        ("idle", "idle VmRSS"),
        ("filled", "filled VmRSS"),
        ("after list", "after 1 list VmRSS"),
        ("after list", "after 1 list VmHWM"),
    ] {
        if let (Some(a), Some(e)) = (find_mem(r, AGENT, when), find_mem(r, ETCD, when)) {
            let pick = |x: &Reading| {
                if label.ends_with("VmHWM") {
                    x.mem.hwm_kib
                } else {
                    x.mem.rss_kib
                }
            };
            mem_groups.push(Group {
                label: label.into(),
                values: vec![round3(mib(pick(a))), round3(mib(pick(e)))],
            });
        }
    }
    let mem = grouped_bars(
        &format!("Memory holding {} ConfigMaps", r.mem.objects),
        &[format!(
            "{PAYLOAD_BYTES}-byte payload each; fresh processes; {sub}"
        )],
        "MiB (lower is better)",
        &[
            Series {
                label: "knode agent (embedded)",
                color: "#2a7ab9",
            },
            Series {
                label: "etcd (via our backend)",
                color: "#c0504d",
            },
        ],
        &mem_groups,
    );
    stack(&[watch, apply, mem])
}

/// Stacks complete SVG documents vertically into one (each keeps its own
/// size; nested `<svg>` elements are positioned with `y`).
fn stack(panels: &[String]) -> String {
    let (w, h) = panels
        .iter()
        .map(|p| size(p))
        .fold((0.0_f64, 0.0_f64), |(w, h), (pw, ph)| (w.max(pw), h + ph));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\n"
    );
    let mut y = 0.0;
    for p in panels {
        let (_, ph) = size(p);
        s.push_str(&p.replacen("<svg ", &format!("<svg x=\"0\" y=\"{y}\" "), 1));
        y += ph;
    }
    s.push_str("</svg>\n");
    s
}

/// The `width` and `height` of an SVG document's root element.
fn size(svg: &str) -> (f64, f64) {
    let head = svg.split('>').next().unwrap_or_default();
    let attr = |name: &str| {
        head.split(&format!(" {name}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (attr("width"), attr("height"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_stack_vertically() {
        let a =
            "<svg xmlns=\"x\" width=\"760\" height=\"440\" viewBox=\"0 0 760 440\"><rect/></svg>\n";
        assert_eq!(size(a), (760.0, 440.0));
        let s = stack(&[a.to_string(), a.to_string()]);
        assert!(
            s.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"880\"")
        );
        assert!(s.contains("<svg x=\"0\" y=\"0\" xmlns"));
        assert!(s.contains("<svg x=\"0\" y=\"440\" xmlns"));
        assert!(s.ends_with("</svg>\n</svg>\n"));
    }
}
