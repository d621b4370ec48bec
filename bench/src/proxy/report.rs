//! The proxy benchmark's report: p50/p99 per measurement, the ratio to a
//! direct iptables-restore of the same payload, the targets, the
//! stdout table, `proxy.json` and `proxy.svg`. Formatting only.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Value};

use super::{Pair, Results};
use crate::report::{grouped_bars, host_facts, write_file, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// Full sync at 10k Services: 2 s; partial sync at 10k: 100 ms.
const FULL_10K_MS: f64 = 2_000.0;
const PARTIAL_10K_MS: f64 = 100.0;

fn entry(what: &str, services: usize, p: &Pair) -> Option<(Value, Summary, Summary)> {
    let ours = Summary::of(&p.ours)?;
    let reference = Summary::of(&p.reference)?;
    let v = json!({
        "what": what, "services": services, "endpoints_per_service": super::ENDPOINTS,
        "payload_lines": p.lines,
        "ours_ms": {"p50": round3(ours.p50), "p99": round3(ours.p99), "n": ours.n},
        "iptables_restore_ms": {"p50": round3(reference.p50), "p99": round3(reference.p99), "n": reference.n},
        "ratio_p50": round3(ours.p50 / reference.p50),
    });
    Some((v, ours, reference))
}

/// Prints the table and writes the files.
pub fn write(opts: &Opts, all: &[Results]) -> Result<()> {
    let mut rows = Vec::new();
    for r in all {
        let b = format!("{:?}", r.backend).to_lowercase();
        for (n, p) in &r.full {
            rows.extend(entry(&format!("full/{b}"), *n, p));
        }
        let n = r.full.last().map_or(0, |(n, _)| *n);
        if let Some(p) = &r.partial {
            rows.extend(entry(&format!("partial/{b}"), n, p));
        }
    }

    let mut table =
        String::from("what            services  ours p50  ours p99  restore p50  ratio\n");
    for (v, ours, reference) in &rows {
        let _ = writeln!(
            table,
            "{:<15} {:>8}  {:>7.1}ms {:>7.1}ms {:>10.1}ms  {:.2}",
            v["what"].as_str().unwrap_or_default(),
            v["services"],
            ours.p50,
            ours.p99,
            reference.p50,
            ours.p50 / reference.p50
        );
    }
    print!("{table}");
    let target = |what: &str, limit: f64| {
        rows.iter()
            .find(|(v, _, _)| v["what"] == what && v["services"] == 10_000)
            .map(|(_, o, _)| json!({"limit_ms": limit, "p50_ms": round3(o.p50), "met": o.p50 <= limit}))
    };
    let mut doc = host_facts();
    doc["results"] = rows.iter().map(|(v, _, _)| v.clone()).collect();
    doc["targets"] = json!({
        "full_10k": target("full/legacy", FULL_10K_MS),
        "partial_10k": target("partial/legacy", PARTIAL_10K_MS),
    });
    write_file(
        &opts.out,
        "proxy.json",
        &serde_json::to_string_pretty(&doc)?,
    )?;

    let groups: Vec<Group> = rows
        .iter()
        .map(|(v, o, rf)| Group {
            label: format!(
                "{} {}",
                v["what"].as_str().unwrap_or_default(),
                v["services"]
            ),
            values: vec![round3(o.p50), round3(rf.p50)],
        })
        .collect();
    let svg = grouped_bars(
        "proxy sync, p50 (lower is better)",
        &[format!(
            "{} endpoints per Service; backend after the slash",
            super::ENDPOINTS
        )],
        "ms",
        &[
            Series {
                label: "knode proxy sync",
                color: "#2b6cb0",
            },
            Series {
                label: "iptables-restore of the same payload",
                color: "#a0aec0",
            },
        ],
        &groups,
    );
    write_file(&opts.out, "proxy.svg", &svg)
}
