//! The proxy benchmark's report: p50/p99 per measurement, the ratio to a
//! direct iptables-restore of the same payload, the targets; the
//! connect latency via ClusterIP against a direct connect; the memory
//! readings; the stdout table, `proxy.json` and `proxy.svg`. Formatting only.

use std::fmt::Write as _;

use anyhow::Result;
use serde_json::{json, Value};

use super::connect::{self, Path};
use super::rss::{self, Outcome};
use super::{Pair, Results};
use crate::controlplane::procfs::Mem;
use crate::report::{grouped_bars, host_facts, write_file, Group, Series};
use crate::stats::{round3, Summary};
use crate::Opts;

/// What the memory measurements gave.
pub struct Memory {
    pub syncer: Outcome,
    /// The agent's readings, or why there are none.
    pub agent: std::result::Result<Outcome, String>,
    /// The same agent with its proxy disabled (the reference).
    pub agent_without_proxy: std::result::Result<Outcome, String>,
    /// The agent with its proxy, every Service and Pod in one namespace.
    pub agent_one_namespace: std::result::Result<Outcome, String>,
}

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
pub fn write(opts: &Opts, all: &[Results], nodes: &[connect::Node], mem: &Memory) -> Result<()> {
    let mut rows = Vec::new();
    for r in all {
        let b = format!("{:?}", r.backend).to_lowercase();
        for (n, p) in &r.full {
            rows.extend(entry(&format!("full/{b}"), *n, p));
        }
        if let Some((n, p)) = &r.partial {
            rows.extend(entry(&format!("partial/{b}"), *n, p));
        }
        if let Some((n, p)) = &r.resync {
            rows.extend(entry(&format!("resync/{b}"), *n, p));
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
    let (connect_doc, connect_table, connect_groups, floor) = connect_section(nodes);
    table.push_str(&connect_table);
    let (memory_doc, memory_table, memory_groups) = memory_section(mem);
    table.push_str(&memory_table);
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
        "partial_10k_nft": target("partial/nft", PARTIAL_10K_MS),
    });
    doc["connect"] = connect_doc;
    doc["memory"] = memory_doc;
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
    let sync_chart = grouped_bars(
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
    let connect_chart = grouped_bars(
        "first-packet connect latency, p50 (lower is better)",
        &[
            format!(
                "fresh TCP connection, connect() to established, {} per path; legacy backend",
                connect::SAMPLES
            ),
            format!("direct connect through a node without any proxy rules: {floor}"),
        ],
        "µs",
        &[
            Series {
                label: "ClusterIP, last in KUBE-SERVICES",
                color: "#2b6cb0",
            },
            Series {
                label: "ClusterIP, first",
                color: "#90cdf4",
            },
            Series {
                label: "direct to the pod IP (reference)",
                color: "#a0aec0",
            },
        ],
        &connect_groups,
    );
    let memory_chart = grouped_bars(
        &format!(
            "memory holding {} Services x {} endpoints",
            rss::SERVICES,
            super::ENDPOINTS
        ),
        &["VmRSS of the process (lower is better)".to_string()],
        "MiB",
        &[
            Series {
                label: "before",
                color: "#a0aec0",
            },
            Series {
                label: "holding them, synced",
                color: "#2b6cb0",
            },
        ],
        &memory_groups,
    );
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"1320\" viewBox=\"0 0 760 1320\">\n{sync_chart}{}{}</svg>\n",
        connect_chart.replacen("<svg ", "<svg y=\"440\" ", 1),
        memory_chart.replacen("<svg ", "<svg y=\"880\" ", 1),
    );
    write_file(&opts.out, "proxy.svg", &svg)
}

/// Microseconds, to 0.1.
fn us(ms: f64) -> f64 {
    (ms * 1e4).round() / 10.0
}

fn us_json(s: &Summary) -> Value {
    json!({"p50": us(s.p50), "p99": us(s.p99), "n": s.n})
}

/// The connect latency: JSON, table lines, chart groups and the floor's p50 as text.
fn connect_section(nodes: &[connect::Node]) -> (Value, String, Vec<Group>, String) {
    let mut table = String::from(
        "\nconnect, µs        ClusterIP last p50/p99  first p50/p99  direct p50/p99  ratio last/direct p50 p99\n",
    );
    let mut results = Vec::new();
    let mut groups = Vec::new();
    let mut p50s: Vec<(usize, [f64; 3])> = Vec::new();
    for node in nodes.iter().filter(|n| n.services > 0) {
        let (Some(last), Some(first), Some(direct)) = (
            Summary::of(node.of(Path::Last)),
            Summary::of(node.of(Path::First)),
            Summary::of(node.of(Path::Direct)),
        ) else {
            continue;
        };
        let _ = writeln!(
            table,
            "{:>6} Services  {:>9.1} {:>9.1}  {:>6.1} {:>6.1}  {:>6.1} {:>6.1}  {:>10.2} {:.2}",
            node.services,
            us(last.p50),
            us(last.p99),
            us(first.p50),
            us(first.p99),
            us(direct.p50),
            us(direct.p99),
            last.p50 / direct.p50,
            last.p99 / direct.p99
        );
        results.push(json!({
            "services": node.services, "endpoints_per_service": super::ENDPOINTS, "backend": "legacy",
            "ours_clusterip_last_us": us_json(&last),
            "ours_clusterip_first_us": us_json(&first),
            "reference_direct_us": us_json(&direct),
            "ratio_p50": round3(last.p50 / direct.p50),
            "ratio_p99": round3(last.p99 / direct.p99),
            "ratio_first_p50": round3(first.p50 / direct.p50),
        }));
        groups.push(Group {
            label: format!("{} Services", node.services),
            values: vec![us(last.p50), us(first.p50), us(direct.p50)],
        });
        p50s.push((node.services, [last.p50, first.p50, direct.p50]));
    }
    let floor = nodes
        .iter()
        .find(|n| n.services == 0)
        .and_then(|n| Summary::of(n.of(Path::Direct)));
    let floor_text = floor.map_or("not measured".to_string(), |f| {
        format!("p50 {:.1} µs, p99 {:.1} µs", us(f.p50), us(f.p99))
    });
    let _ = writeln!(table, "direct, node without proxy rules: {floor_text}");
    let growth = match (p50s.first(), p50s.last()) {
        (Some((a, lo)), Some((b, hi))) if a != b => {
            let g = |k: usize| round3(hi[k] / lo[k]);
            let _ = writeln!(
                table,
                "p50 growth {a} -> {b} Services: ClusterIP last x{:.2}, first x{:.2}, direct x{:.2}",
                g(0),
                g(1),
                g(2)
            );
            json!({"from_services": a, "to_services": b,
                   "clusterip_last": g(0), "clusterip_first": g(1), "direct": g(2)})
        }
        _ => Value::Null,
    };
    let doc = json!({
        "method": format!(
            "client, node and server network namespaces joined by veth; the node forwards and its nat table \
             holds N Services x {} endpoints written by proxy::Syncer (legacy backend); the first and the last \
             Service in KUBE-SERVICES balance over 5 addresses of a TCP listener in the server namespace, the \
             others over fake pod IPs. Each sample is a new TCP connection from the client namespace (new \
             source port, so the SYN is a new conntrack entry that walks the nat chains), timed from connect() \
             (socket creation included) to established, then closed. Reference: a direct connect to a backend \
             pod IP:port through the same node (no DNAT; it still walks KUBE-SERVICES without a match). \
             {} warm-up and {} timed rounds, each round one connection per node and path, nodes and paths \
             interleaved.",
            super::ENDPOINTS, connect::WARMUP, connect::SAMPLES
        ),
        "results": results,
        "direct_no_rules_us": floor.as_ref().map(us_json),
        "p50_growth": growth,
    });
    (doc, table, groups, floor_text)
}

fn mib(kib: u64) -> f64 {
    round3(kib as f64 / 1024.0)
}

fn mem_json(m: &Mem) -> Value {
    json!({"vmrss_kib": m.rss_kib, "vmhwm_kib": m.hwm_kib})
}

fn readings_json(o: &Outcome) -> Value {
    let readings: Vec<Value> = o
        .readings
        .iter()
        .map(|r| {
            let mut v = mem_json(&r.mem);
            v["when"] = json!(r.when);
            v["services"] = json!(r.services);
            v
        })
        .collect();
    let phases: serde_json::Map<String, Value> = o
        .phases
        .iter()
        .map(|(k, d)| {
            (
                format!("{}_s", k.replace(' ', "_")),
                json!(round3(d.as_secs_f64())),
            )
        })
        .collect();
    json!({"readings": readings, "phases": phases, "after_malloc_trim": o.trimmed.as_ref().map(mem_json), "watch_relists": o.relists})
}

/// The memory readings: JSON, table lines and chart groups (first and last reading of each).
fn memory_section(mem: &Memory) -> (Value, String, Vec<Group>) {
    let mut table = String::from("\nmemory (VmRSS / VmHWM, MiB)\n");
    let mut groups = Vec::new();
    let mut add = |who: &str, what: String, o: &std::result::Result<Outcome, String>| -> Value {
        let o = match o {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(table, "{who}: not measured: {e}");
                return json!({"what": what, "error": e});
            }
        };
        let trimmed = o.trimmed.iter().map(|m| ("+ malloc_trim(0)", m));
        let rows = o
            .readings
            .iter()
            .map(|r| (r.when.as_str(), &r.mem))
            .chain(trimmed);
        for (when, m) in rows {
            let _ = writeln!(
                table,
                "{who:<34} {when:<16} {:>7.1} / {:>7.1}",
                mib(m.rss_kib),
                mib(m.hwm_kib)
            );
        }
        let mut v = readings_json(o);
        v["what"] = json!(what);
        if let (Some(a), Some(b)) = (o.readings.first(), o.readings.last()) {
            v["vmrss_growth_kib"] = json!(b.mem.rss_kib.saturating_sub(a.mem.rss_kib));
            groups.push(Group {
                label: who.to_string(),
                values: vec![mib(a.mem.rss_kib), mib(b.mem.rss_kib)],
            });
        }
        v
    };
    let (n, eps) = (rss::SERVICES, super::ENDPOINTS);
    let syncer = add(
        "proxy::Syncer (child process)",
        format!(
            "a fresh child process of the bench binary: VmRSS/VmHWM at its start, after building the service \
             view (Vec<ServicePort>, {n} Services x {eps} endpoints), after one full sync of it with \
             proxy::Syncer (legacy backend, in a namespace it made) while holding both, and once more after \
             glibc's malloc_trim(0) gave free heap pages back (what the restore payload left behind). The \
             proxy's sync-side state only: no control-plane watch caches, no runtime"
        ),
        &Ok(mem.syncer.clone()),
    );
    let agent_what = |proxy: &str, per_namespace: usize| {
        format!(
            "a real `knode agent` (embedded control plane, --disable {proxy}) in a node \
             namespace, VmRSS/VmHWM idle and after {n} Services ({per_namespace} per namespace) and {} Pods (created, \
             then marked ready and given a pod IP) were created through its socket",
            n * eps
        )
    };
    let synced_what = ", and once its proxy (legacy iptables) had written a KUBE-SVC chain per Service and a KUBE-SEP chain per Pod: \
               the whole process (control plane store and watches, the proxy's watch caches, view and Syncer)";
    let agent = add(
        "knode agent (embedded)",
        agent_what("pods,overlay", rss::PER_NAMESPACE) + synced_what,
        &mem.agent,
    );
    let one_namespace = add(
        "knode agent, one namespace",
        agent_what("pods,overlay", n) + synced_what,
        &mem.agent_one_namespace,
    );
    let reference = add(
        "knode agent, proxy disabled (ref)",
        agent_what("pods,overlay,proxy", rss::PER_NAMESPACE)
            + ": the same agent and objects without the proxy (the reference)",
        &mem.agent_without_proxy,
    );
    let last = |o: &std::result::Result<Outcome, String>| {
        o.as_ref()
            .ok()
            .and_then(|o| o.readings.last())
            .map(|r| r.mem.rss_kib)
    };
    let share = match (last(&mem.agent), last(&mem.agent_without_proxy)) {
        (Some(with), Some(without)) => {
            let _ = writeln!(
                table,
                "the proxy's share of the agent at {n} Services: {:.1} MiB VmRSS (with - without)",
                (with as f64 - without as f64) / 1024.0
            );
            json!(with as i64 - without as i64)
        }
        _ => Value::Null,
    };
    for (who, o) in [
        ("spread out", &mem.agent),
        ("one namespace", &mem.agent_one_namespace),
    ] {
        let phase = |name: &str| {
            o.as_ref()
                .ok()
                .and_then(|o| o.phases.iter().find(|(k, _)| *k == name))
                .map_or("-".to_string(), |(_, d)| {
                    format!("{:.1} s", d.as_secs_f64())
                })
        };
        let _ = writeln!(
            table,
            "agent with proxy, {who:<14} fill {}, rules in place {} after it",
            phase("fill"),
            phase("sync after fill")
        );
    }
    let doc = json!({
        "syncer": syncer, "agent": agent, "agent_without_proxy": reference,
        "agent_one_namespace": one_namespace,
        "proxy_share_of_agent_vmrss_kib": share,
    });
    (doc, table, groups)
}
