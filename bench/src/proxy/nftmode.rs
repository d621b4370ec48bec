//! The nftables mode beside the iptables mode (`bench proxy-nft`): full
//! syncs of table `ip kube-proxy` at 1k/10k/50k Services x 5 endpoints;
//! partial syncs (one endpoint changed) at 10k and 50k, interleaved at 10k
//! with the iptables mode's partial sync (legacy backend) into a table of
//! the same size and with `iptables-legacy-restore` of the same payload
//! (the cross-check); the cost of adding a Service with session affinity;
//! first-packet connect latency at 100/10k/50k in both modes and network
//! programming latency at 10k in both modes, interleaved. Medians, p99,
//! ratios and the load average around each part to stdout and
//! `proxy-nft.json`. Namespaces are the harness's own.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hostnet::nftables::{NfTables, NfTablesSocket};
use netns_tests::TestNs;
use proxy::nft::ruleset::{names, table};
use proxy::{Backend, NftSyncer, Proxier, ProxyMode, ServicePort, SyncOutcome};
use serde_json::json;

use super::connect::{self, Change, Path};
use super::{node, restore_direct, services, setup, sync, Fed};
use crate::report::{host_facts, write_file};
use crate::stats::{round3, Summary};
use crate::Opts;

const FULL_SIZES: [usize; 3] = [1_000, 10_000, 50_000];
const PARTIAL_SIZES: [usize; 2] = [10_000, 50_000];
const FULL_REPS: usize = 3;
const PARTIAL_REPS: usize = 25;
const PROFILE_REPS: usize = 400;
const AFFINITY_REPS: usize = 15;
const CONNECT_SIZES: [usize; 3] = [100, 10_000, 50_000];
const PROGRAMMING_SERVICES: usize = 10_000;
const PROGRAMMING_SAMPLES: usize = 25;

/// The 1, 5 and 15 minute load averages, as `uptime` prints them.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// An nftables engine in a fresh namespace.
fn nft_setup() -> Result<(TestNs, NftSyncer)> {
    let ns = TestNs::new("bpn")?;
    let s =
        ns.run(|| -> Result<NftSyncer> {
            let nft = NfTablesSocket::open()?;
            Ok(NftSyncer::new(Arc::new(nft), node())
                .with_full_sync_period(Duration::from_secs(86_400)))
        })??;
    Ok((ns, s))
}

fn nft_sync(ns: &TestNs, s: &mut NftSyncer, desired: &[ServicePort]) -> Result<Duration> {
    Ok(nft_outcome(ns, s, desired)?.duration)
}

fn nft_outcome(ns: &TestNs, s: &mut NftSyncer, desired: &[ServicePort]) -> Result<SyncOutcome> {
    ns.run(|| s.sync(desired))?
        .map_err(|e| anyhow!("nft sync: {e}"))
}

/// A sync of the Services `fed` says changed, as the agent runs it.
fn nft_fed(ns: &TestNs, s: &mut NftSyncer, fed: &mut Fed) -> Result<SyncOutcome> {
    ns.run(|| fed.sync(s))?
        .map_err(|e| anyhow!("nft sync: {e}"))
}

/// Adding one Service at 10k: without affinity, with affinity and a
/// timeout already in the table (elements only), with a timeout new to
/// the table (two sets and two rules more), interleaved.
fn affinity_cost(out: &mut String) -> Result<serde_json::Value> {
    let n = 10_000;
    let mut desired = services(n);
    desired[0].affinity_seconds = Some(10_800);
    let (ns, mut s) = nft_setup()?;
    let mut fed = Fed::new(&desired);
    nft_fed(&ns, &mut s, &mut fed)?;
    let kinds = ["plain", "affinity, timeout in use", "affinity, new timeout"];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    let load_before = load();
    for rep in 0..AFFINITY_REPS {
        for (k, kind) in kinds.iter().enumerate() {
            let mut sp = desired[1].clone();
            sp.name.name = format!("added-{rep}-{k}");
            sp.cluster_ip = Ipv4Addr::new(10, 100, rep as u8, k as u8 + 1);
            sp.affinity_seconds = match *kind {
                "plain" => None,
                "affinity, timeout in use" => Some(10_800),
                _ => Some(60 + rep as u32),
            };
            fed.set(&sp);
            samples[k].push(nft_fed(&ns, &mut s, &mut fed)?.duration);
        }
    }
    let mut rows = Vec::new();
    for (kind, v) in kinds.iter().zip(&samples) {
        let sum = Summary::of(v);
        if let Some(x) = &sum {
            out.push_str(&format!(
                "add a Service at 10k, {kind:<25} p50 {:>7.2}ms p99 {:>7.2}ms\n",
                x.p50, x.p99
            ));
        }
        rows.push(json!({"what": kind, "ms": summary_json(&sum)}));
    }
    Ok(json!({"results": rows, "load_before": load_before, "load_after": load()}))
}

/// First-packet connect latency, both modes at `CONNECT_SIZES`.
fn connect_section(out: &mut String) -> Result<serde_json::Value> {
    let nodes: Vec<(ProxyMode, usize)> = CONNECT_SIZES
        .iter()
        .flat_map(|&n| [(ProxyMode::Nftables, n), (ProxyMode::Iptables, n)])
        .collect();
    let load_before = load();
    let measured = connect::measure(&nodes)?;
    let load_after = load();
    let us = |x: f64| round3(x * 1e3);
    out.push_str(
        "\nconnect, µs               ClusterIP last p50/p99   first p50/p99   direct p50/p99\n",
    );
    let mut rows = Vec::new();
    let mut last_p50 = std::collections::BTreeMap::new();
    for node in &measured {
        let of = |p: Path| Summary::of(node.of(p));
        let (last, first, direct) = (of(Path::Last), of(Path::First), of(Path::Direct));
        let cell = |s: &Option<Summary>| {
            s.map_or("      -       -".into(), |s| {
                format!("{:>7.1} {:>7.1}", us(s.p50), us(s.p99))
            })
        };
        let label = if node.services == 0 {
            "no rules".to_string()
        } else {
            format!("{} {}", node.mode.name(), node.services)
        };
        out.push_str(&format!(
            "{label:<24}  {}        {}   {}\n",
            cell(&last),
            cell(&first),
            cell(&direct)
        ));
        let j = |s: &Option<Summary>| {
            s.map_or(
                json!(null),
                |s| json!({"p50": us(s.p50), "p99": us(s.p99), "n": s.n}),
            )
        };
        rows.push(json!({
            "mode": node.mode.name(), "services": node.services,
            "clusterip_last_us": j(&last), "clusterip_first_us": j(&first), "direct_us": j(&direct),
        }));
        if let Some(l) = last {
            last_p50.insert((node.mode.name(), node.services), (l.p50, l.p99));
        }
    }
    let mut ratios = Vec::new();
    for &n in &CONNECT_SIZES {
        if let (Some(a), Some(b)) = (
            last_p50.get(&("nftables", n)),
            last_p50.get(&("iptables", n)),
        ) {
            out.push_str(&format!(
                "ratio iptables/nftables at {n}: p50 {:.2}, p99 {:.2}\n",
                b.0 / a.0,
                b.1 / a.1
            ));
            ratios.push(
                json!({"services": n, "iptables_over_nftables_p50": round3(b.0 / a.0),
                               "iptables_over_nftables_p99": round3(b.1 / a.1)}),
            );
        }
    }
    let (lo, hi) = (CONNECT_SIZES[0], CONNECT_SIZES[CONNECT_SIZES.len() - 1]);
    let mut growth = json!({});
    for mode in ["nftables", "iptables"] {
        if let (Some(a), Some(b)) = (last_p50.get(&(mode, lo)), last_p50.get(&(mode, hi))) {
            out.push_str(&format!(
                "{mode}: p50 at {hi} over p50 at {lo}: {:.2}\n",
                b.0 / a.0
            ));
            growth[mode] = json!(round3(b.0 / a.0));
        }
    }
    out.push_str(&format!("(load {load_before} -> {load_after})\n"));
    Ok(json!({
        "method": format!(
            "client, node and server network namespaces joined by veth; the node forwards and holds N \
             Services x {} endpoints, programmed by the proxy in one mode (iptables: legacy backend); the \
             first and the last Service balance over 5 addresses of a TCP listener in the server namespace. \
             Each sample is a new TCP connection (new conntrack entry), timed from connect() to \
             established. {} warm-up and {} timed rounds, each one connection per node and path, nodes \
             (both modes, every size, and a node without rules) and paths interleaved.",
            super::ENDPOINTS, connect::WARMUP, connect::SAMPLES
        ),
        "results": rows, "ratios": ratios, "p50_growth_last": growth,
        "load_before": load_before, "load_after": load_after,
    }))
}

/// Network programming latency at `PROGRAMMING_SERVICES`, both modes.
fn programming_section(out: &mut String) -> Result<serde_json::Value> {
    let load_before = load();
    let measured = connect::programming(PROGRAMMING_SERVICES, PROGRAMMING_SAMPLES)?;
    let load_after = load();
    out.push_str(&format!(
        "\nnetwork programming at {PROGRAMMING_SERVICES} Services (change handed to the proxy -> a connection succeeds)\n"
    ));
    let mut rows = Vec::new();
    let mut p50 = std::collections::BTreeMap::new();
    for m in &measured {
        let what = match m.change {
            Change::Service => "new Service",
            Change::Endpoints => "endpoints changed",
        };
        let sum = Summary::of(&m.samples);
        if let Some(x) = &sum {
            out.push_str(&format!(
                "{:<9} {what:<18} p50 {:>8.2}ms p99 {:>8.2}ms\n",
                m.mode.name(),
                x.p50,
                x.p99
            ));
            p50.insert((m.mode.name(), what), x.p50);
        }
        rows.push(
            json!({"mode": m.mode.name(), "change": what, "services": m.services,
                         "ms": summary_json(&sum)}),
        );
    }
    for what in ["new Service", "endpoints changed"] {
        if let (Some(a), Some(b)) = (p50.get(&("nftables", what)), p50.get(&("iptables", what))) {
            out.push_str(&format!(
                "ratio iptables/nftables p50, {what}: {:.0}x\n",
                b / a
            ));
        }
    }
    out.push_str(&format!("(load {load_before} -> {load_after})\n"));
    Ok(json!({
        "method": "a node per mode holding the Services, a client retrying a fresh TCP connection to the \
                   changed ClusterIP (refused at once before the change); a sample runs from the sync's start \
                   to the first connection established. Modes and kinds of change interleaved.",
        "results": rows, "load_before": load_before, "load_after": load_after,
    }))
}

/// Partial syncs only (`bench proxy-nft-partial`), nftables mode alone, at
/// 10k and 50k Services: the whole sync and the transaction in it, p50 and
/// p99 of `PROFILE_REPS` each; quick enough to run under `perf`.
pub fn run_partial(_opts: &Opts) -> Result<()> {
    for n in PARTIAL_SIZES {
        let mut desired = services(n);
        let (ns, mut s) = nft_setup()?;
        let mut fed = Fed::new(&desired);
        nft_fed(&ns, &mut s, &mut fed)?;
        let (mut whole, mut apply) = (Vec::new(), Vec::new());
        for rep in 0..PROFILE_REPS {
            fed.set(change(&mut desired, rep));
            let o = nft_fed(&ns, &mut s, &mut fed)?;
            whole.push(o.duration);
            apply.push(o.apply);
        }
        for (what, v) in [("sync", &whole), ("of which transaction", &apply)] {
            if let Some(s) = Summary::of(v) {
                println!(
                    "partial/nftables {n:>6} {what:<21} p50 {:>7.3}ms p99 {:>7.3}ms",
                    s.p50, s.p99
                );
            }
        }
    }
    Ok(())
}

/// Changes endpoint 1 of one Service (a different one each `rep`);
/// returns that Service.
fn change(desired: &mut [ServicePort], rep: usize) -> &ServicePort {
    let n = desired.len();
    let sp = &mut desired[(rep * 7919) % n];
    sp.endpoints[1].ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + rep as u32);
    sp
}

fn summary_json(s: &Option<Summary>) -> serde_json::Value {
    match s {
        Some(s) => json!({"p50": round3(s.p50), "p99": round3(s.p99), "n": s.n}),
        None => json!(null),
    }
}

/// The agent's memory holding `rss::SERVICES` Services and their ready
/// Pods, its proxy in nftables mode and without a proxy: the proxy's share
/// is the difference of the two processes' VmRSS once filled (and synced),
/// and, as a cross-check that does not depend on both starting alike, the
/// difference of their growth from idle. Measured twice: with the proxy
/// and the control plane alone (the bench writes the EndpointSlices), the
/// figure for the goal; and with the usual parts (controllers, DNS,
/// network policy), whose own memory is large and varies by more than the
/// proxy's share from run to run.
fn memory_section(out: &mut String) -> Result<serde_json::Value> {
    use super::rss::{self, Outcome, Parts};
    let mib = |kib: u64| kib as f64 / 1024.0;
    let readings = |o: &Outcome| -> serde_json::Value {
        o.readings
            .iter()
            .map(|r| {
                json!({"when": r.when, "services": r.services,
                            "vmrss_kib": r.mem.rss_kib, "vmhwm_kib": r.mem.hwm_kib})
            })
            .collect()
    };
    let phases = |o: &Outcome| -> serde_json::Value {
        o.phases
            .iter()
            .map(|(p, d)| json!({"phase": p, "s": round3(d.as_secs_f64())}))
            .collect()
    };
    let mut doc = json!({
        "method": format!("a real `knode agent` (embedded control plane, --disable pods,overlay, plus \
            dns,network-policy,controllers for `proxy_alone`, plus proxy for the reference) in a node namespace, \
            filled through its socket with {} Services and their {} Pods (created, then marked ready with a pod \
            IP) and their EndpointSlices (written by the bench for `proxy_alone`, by the EndpointSlice controller \
            for `usual`); VmRSS/VmHWM idle, filled, and with the proxy once `service-ips` and \
            `service-endpoints` hold every Service and endpoint", rss::SERVICES, rss::SERVICES * super::ENDPOINTS),
        "target_share_mib": 60.0,
    });
    for (label, parts) in [("proxy_alone", Parts::ProxyAlone), ("usual", Parts::Usual)] {
        let without = super::agent_rss(None, rss::PER_NAMESPACE, parts);
        let with = super::agent_rss(Some(ProxyMode::Nftables), rss::PER_NAMESPACE, parts);
        out.push_str(&format!(
            "\nagent memory ({label}) at {} Services x {} endpoints ({} per namespace), VmRSS / VmHWM MiB\n",
            rss::SERVICES,
            super::ENDPOINTS,
            rss::PER_NAMESPACE
        ));
        let mut part = json!({});
        for (name, o) in [("without_proxy", &without), ("nftables", &with)] {
            match o {
                Ok(o) => {
                    for r in &o.readings {
                        out.push_str(&format!(
                            "{name:<14} {:<13} {:>7.1} / {:>7.1}\n",
                            r.when,
                            mib(r.mem.rss_kib),
                            mib(r.mem.hwm_kib)
                        ));
                    }
                    part[name] =
                        json!({"readings": readings(o), "phases": phases(o), "relists": o.relists});
                }
                Err(e) => {
                    out.push_str(&format!("{name}: not measured: {e}\n"));
                    part[name] = json!({"error": e});
                }
            }
        }
        if let (Ok(w), Ok(wo)) = (&with, &without) {
            let last = |o: &Outcome| o.readings.last().map(|r| r.mem);
            let first = |o: &Outcome| o.readings.first().map(|r| r.mem);
            if let (Some(a), Some(b), Some(ai), Some(bi)) = (last(w), last(wo), first(w), first(wo))
            {
                let share = mib(a.rss_kib) - mib(b.rss_kib);
                let by_growth =
                    (mib(a.rss_kib) - mib(ai.rss_kib)) - (mib(b.rss_kib) - mib(bi.rss_kib));
                let hwm = mib(a.hwm_kib) - mib(b.hwm_kib);
                out.push_str(&format!(
                    "proxy's share ({label}): {share:.1} MiB VmRSS ({by_growth:.1} MiB by growth from idle), \
                     {hwm:.1} MiB VmHWM (goal <= 60 MiB)\n"
                ));
                part["share_mib"] = json!(round3(share));
                part["share_by_growth_mib"] = json!(round3(by_growth));
                part["share_hwm_mib"] = json!(round3(hwm));
                part["met"] = json!(share <= 60.0 && by_growth <= 60.0);
            }
        }
        doc[label] = part;
    }
    Ok(doc)
}

/// The memory part of `proxy-nft` alone (`bench proxy-nft-memory`).
pub fn run_memory(_opts: &Opts) -> Result<()> {
    let mut out = String::new();
    memory_section(&mut out)?;
    print!("{out}");
    Ok(())
}

/// Runs the comparison and writes `proxy-nft.json`.
pub fn run(opts: &Opts) -> Result<()> {
    let mut rows = Vec::new();
    let mut table_out = String::from("what                     services  p50       p99\n");
    let line = |table_out: &mut String, what: &str, n: usize, s: &Option<Summary>| {
        if let Some(s) = s {
            table_out.push_str(&format!(
                "{what:<24} {n:>8}  {:>7.2}ms {:>7.2}ms\n",
                s.p50, s.p99
            ));
        }
    };
    let mut sizes = json!({});
    for n in FULL_SIZES {
        let desired = services(n);
        let mut samples = Vec::new();
        for rep in 0..FULL_REPS {
            let (ns, mut s) = nft_setup()?;
            samples.push(nft_sync(&ns, &mut s, &desired)?);
            eprintln!("proxy-nft: full {n} rep {rep}: {:?}", samples[rep]);
            if rep == 0 && n == 10_000 {
                sizes = ns.run(|| -> Result<serde_json::Value> {
                    let nft = NfTablesSocket::open()?;
                    let count = |set: &str| nft.elements(&table(), set).map(|e| e.len());
                    Ok(json!({
                        "service-endpoints": count(names::SERVICE_ENDPOINTS)?,
                        "service-ips": count(names::SERVICE_IPS)?,
                        "service-ips-5": count("service-ips-5")?,
                        "hairpin": count(names::HAIRPIN)?,
                    }))
                })??;
            }
        }
        let s = Summary::of(&samples);
        line(&mut table_out, "full/nftables", n, &s);
        rows.push(json!({"what": "full/nftables", "services": n, "ms": summary_json(&s)}));
    }

    for n in PARTIAL_SIZES {
        let mut desired = services(n);
        let (ns, mut s) = nft_setup()?;
        let mut fed = Fed::new(&desired);
        nft_fed(&ns, &mut s, &mut fed)?;
        // At 10k the iptables mode (legacy, its faster backend here) runs
        // beside it, one sample each in turn.
        // At 10k the iptables mode (legacy, its faster backend here) runs
        // beside it, one sample each in turn, and so does
        // `iptables-legacy-restore` of the iptables mode's payload into a
        // table of the same size (the cross-check of that reference).
        let mut ipt = if n == 10_000 {
            let (ins, cap, mut is) = setup(Backend::Legacy)?;
            sync(&ins, &mut is, &desired)?;
            let reference = TestNs::new("bpr")?;
            restore_direct(&reference, Backend::Legacy, &cap.last())?;
            Some((
                ins,
                cap,
                is,
                reference,
                desired.clone(),
                Vec::new(),
                Vec::new(),
            ))
        } else {
            None
        };
        let load_before = load();
        let (mut ours, mut ours_apply) = (Vec::new(), Vec::new());
        for rep in 0..PARTIAL_REPS {
            fed.set(change(&mut desired, rep));
            let o = nft_fed(&ns, &mut s, &mut fed)?;
            ours.push(o.duration);
            ours_apply.push(o.apply);
            if let Some((ins, cap, is, reference, d, samples, direct)) = ipt.as_mut() {
                change(d, rep);
                samples.push(sync(ins, is, d)?);
                direct.push(restore_direct(reference, Backend::Legacy, &cap.last())?);
            }
        }
        let nft = Summary::of(&ours);
        let nft_apply = Summary::of(&ours_apply);
        line(&mut table_out, "partial/nftables", n, &nft);
        line(&mut table_out, "  of which transaction", n, &nft_apply);
        let mut row = json!({
            "what": "partial/nftables", "services": n, "ms": summary_json(&nft),
            "transaction_ms": summary_json(&nft_apply),
            "load_before": load_before, "load_after": load(),
        });
        if let Some((_, _, _, _, _, samples, direct)) = ipt {
            let i = Summary::of(&samples);
            let d = Summary::of(&direct);
            line(&mut table_out, "partial/iptables-legacy", n, &i);
            line(&mut table_out, "  restore alone", n, &d);
            if let (Some(a), Some(b)) = (&nft, &i) {
                row["iptables_legacy_ms"] = summary_json(&i);
                row["iptables_legacy_restore_alone_ms"] = summary_json(&d);
                row["ratio_p50_iptables_over_nftables"] = json!(round3(b.p50 / a.p50));
                table_out.push_str(&format!(
                    "ratio iptables/nftables p50 at {n}: {:.0}x (load {} -> {})\n",
                    b.p50 / a.p50,
                    row["load_before"].as_str().unwrap_or("?"),
                    row["load_after"].as_str().unwrap_or("?"),
                ));
            }
        }
        rows.push(row);
    }
    table_out.push_str(&format!(
        "map and set sizes at 10k Services x 5 endpoints: {sizes}\n"
    ));
    let affinity = affinity_cost(&mut table_out)?;
    let connect = connect_section(&mut table_out)?;
    let programming = programming_section(&mut table_out)?;
    let memory = memory_section(&mut table_out)?;
    print!("{table_out}");
    let mut doc = host_facts();
    doc["results"] = json!(rows);
    doc["affinity_add_at_10k"] = affinity;
    doc["connect"] = connect;
    doc["programming"] = programming;
    doc["memory"] = memory;
    doc["sizes_at_10k"] = sizes;
    doc["target_partial_ms"] = json!(5.0);
    write_file(
        &opts.out,
        "proxy-nft.json",
        &serde_json::to_string_pretty(&doc)?,
    )
}
