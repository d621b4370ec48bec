//! The overlay benchmark's report: throughput medians and ratios to the
//! underlay, join-convergence percentiles ours vs `ip -batch`, scale times
//! and the agent's memory, the targets, the stdout table,
//! `overlay.json` and `overlay.svg` (three panels). Pure formatting of
//! measured values; it starts nothing.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::join::{self, Side};
use super::scale;
use super::throughput::{self, Path};
use super::udp;
use super::Results;
use crate::report::{emit, grouped_bars, host_facts, with_targets, Group, Series};
use crate::stats::{percentile, round3, Summary};
use crate::Opts;

/// Target: pod-to-pod throughput / underlay throughput (medians).
pub const MIN_POD_RATIO: f64 = 0.85;
/// The most retransmits one run of the underlay reference may show and
/// still count as clean: a tail-loss probe or two while the machine is
/// busy, not the thousands that reordering between CPU backlogs caused.
pub const MAX_REFERENCE_RETRANSMITS: u64 = 10;
/// Target: udp backend throughput / kernel vxlan throughput (medians), 1 and 4 streams.
pub const MIN_UDP_RATIO: f64 = 0.7;
/// Target: join convergence p99, in ms.
pub const MAX_JOIN_P99_MS: f64 = 500.0;
/// Target: programming the scale's peers, in seconds (median).
pub const MAX_SCALE_S: f64 = 2.0;

/// The join and scale panels' two series.
const SIDES: [Series<'static>; 2] = [
    Series {
        label: "ours (knode)",
        color: "#2a7ab9",
    },
    Series {
        label: "reference (ip -batch)",
        color: "#c0504d",
    },
];

/// The median of `v` (none when empty).
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| percentile(&v, 50.0))
}

fn mib(kib: u64) -> f64 {
    round3(kib as f64 / 1024.0)
}

fn summary_json(s: Option<Summary>) -> Value {
    s.map_or(Value::Null, |s| {
        json!({"n": s.n, "p50_ms": round3(s.p50), "p99_ms": round3(s.p99), "mean_ms": round3(s.mean),
               "min_ms": round3(s.min), "max_ms": round3(s.max)})
    })
}

/// Median Gbit/s of a path.
fn gbps(t: &throughput::Outcome, p: Path) -> Option<f64> {
    median(&t.gbps(p))
}

/// a / b, when both are there and b is not 0.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// One join series of one side.
fn join_of(r: &Results, side: Side, f: impl Fn(&join::Sample) -> Duration) -> Option<Summary> {
    let k = Side::ALL.iter().position(|s| *s == side)?;
    Summary::of(&r.join.samples[k].iter().map(f).collect::<Vec<_>>())
}

/// Reach times of one join side.
fn join_reach(r: &Results, side: Side) -> Option<Summary> {
    join_of(r, side, |s| s.reach)
}

/// One scale series over the rounds.
fn scale_of(r: &Results, f: impl Fn(&scale::Round) -> Duration) -> Option<Summary> {
    Summary::of(&r.scale.rounds.iter().map(f).collect::<Vec<_>>())
}

/// Median MiB of one memory reading over the rounds.
fn mem_of(r: &Results, f: impl Fn(&scale::Round) -> u64) -> Option<f64> {
    median(&r.scale.rounds.iter().map(|x| mib(f(x))).collect::<Vec<_>>())
}

/// The three scale totals: (stored, live, reference) medians in seconds.
fn scale_secs(r: &Results) -> [Option<f64>; 3] {
    let s = |x: Option<Summary>| x.map(|s| s.p50 / 1e3);
    [
        s(scale_of(r, |x| x.stored.total)),
        s(scale_of(r, |x| x.live.total)),
        s(scale_of(r, |x| x.reference)),
    ]
}

fn target(what: String, value: Option<f64>, met: bool, limit: Value) -> Value {
    json!({"what": what, "value": value.map(round3), "limit": limit, "met": met})
}

/// The targets, each with what was measured and whether it was met.
fn targets(r: &Results) -> Vec<Value> {
    let pod = ratio(
        gbps(&r.throughput, Path::Pod),
        gbps(&r.throughput, Path::Underlay),
    );
    let p99 = join_reach(r, Side::Ours).map(|s| s.p99);
    let [stored, live, _] = scale_secs(r);
    let peers = r.scale.peers;
    let dirty = r.throughput.retransmits(Path::Underlay).into_iter().max();
    let pod6 = ratio(
        gbps(&r.throughput6, Path::Pod),
        gbps(&r.throughput6, Path::Underlay),
    );
    let dirty6 = r.throughput6.retransmits(Path::Underlay).into_iter().max();
    vec![
        target(
            format!("pod-to-pod throughput >= {MIN_POD_RATIO} x underlay (medians)"),
            pod,
            pod.is_some_and(|x| x >= MIN_POD_RATIO),
            json!({"min_ratio": MIN_POD_RATIO}),
        ),
        target(
            format!("the underlay reference is clean: no run retransmits more than {MAX_REFERENCE_RETRANSMITS} segments (value: the most in one run)"),
            dirty.map(|x| x as f64),
            dirty.is_some_and(|x| x <= MAX_REFERENCE_RETRANSMITS),
            json!({"max_retransmits": MAX_REFERENCE_RETRANSMITS}),
        ),
        udp_target(&r.udp, 1),
        udp_target(&r.udp, 4),
        target(
            format!("join convergence p99 <= {MAX_JOIN_P99_MS} ms"),
            p99,
            p99.is_some_and(|x| x <= MAX_JOIN_P99_MS),
            json!({"max_ms": MAX_JOIN_P99_MS}),
        ),
        target(
            format!("{peers} leases stored before the agent starts: start -> all routes <= {MAX_SCALE_S} s (median)"),
            stored,
            stored.is_some_and(|x| x <= MAX_SCALE_S),
            json!({"max_s": MAX_SCALE_S}),
        ),
        target(
            format!("{peers} leases written while the agent runs: first write -> all routes <= {MAX_SCALE_S} s (median)"),
            live,
            live.is_some_and(|x| x <= MAX_SCALE_S),
            json!({"max_s": MAX_SCALE_S}),
        ),
        target(
            format!("IPv6 pod-to-pod throughput over vxlan >= {MIN_POD_RATIO} x the IPv6 underlay (medians)"),
            pod6,
            pod6.is_some_and(|x| x >= MIN_POD_RATIO),
            json!({"min_ratio": MIN_POD_RATIO}),
        ),
        target(
            format!("the IPv6 underlay reference is clean: no run retransmits more than {MAX_REFERENCE_RETRANSMITS} segments (value: the most in one run)"),
            dirty6.map(|x| x as f64),
            dirty6.is_some_and(|x| x <= MAX_REFERENCE_RETRANSMITS),
            json!({"max_retransmits": MAX_REFERENCE_RETRANSMITS}),
        ),
    ]
}

/// udp / vxlan pod-to-pod throughput with `streams` streams (medians).
fn udp_ratio(u: &udp::Outcome, streams: u32) -> Option<f64> {
    ratio(
        median(&u.gbps(true, streams)),
        median(&u.gbps(false, streams)),
    )
}

fn udp_target(u: &udp::Outcome, streams: u32) -> Value {
    let v = udp_ratio(u, streams);
    target(
        format!("udp backend pod-to-pod throughput >= {MIN_UDP_RATIO} x kernel vxlan, {streams} stream(s) (medians)"),
        v,
        v.is_some_and(|x| x >= MIN_UDP_RATIO),
        json!({"min_ratio": MIN_UDP_RATIO}),
    )
}

/// Ping round trips of one side (0 vxlan, 1 udp): p50 and p99 in ms.
fn rtt(u: &udp::Outcome, k: usize) -> (Option<f64>, Option<f64>) {
    let mut v = u.rtt_ms[k].clone();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (None, None);
    }
    (Some(percentile(&v, 50.0)), Some(percentile(&v, 99.0)))
}

/// Agent CPU seconds per Gbit carried on the udp path, with `streams` streams.
fn udp_cpu_per_gbit(u: &udp::Outcome, streams: u32) -> Option<f64> {
    let (cpu, gbit) = u.of(true, streams).fold((0.0, 0.0), |(c, g), r| {
        (
            c + r.agent_cpu_s,
            g + r.gbps * f64::from(u.seconds + u.omit),
        )
    });
    (gbit > 0.0).then(|| cpu / gbit)
}

/// The udp-vs-vxlan part of the document.
pub fn udp_json(u: &udp::Outcome) -> Value {
    let series = |is_udp: bool, streams: u32| {
        let v = u.gbps(is_udp, streams);
        json!({
            "gbps": v.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
            "median_gbps": median(&v).map(round3),
            "retransmits": u.of(is_udp, streams).map(|r| r.retransmits).collect::<Vec<_>>(),
        })
    };
    let (vp50, vp99) = rtt(u, 0);
    let (up50, up99) = rtt(u, 1);
    json!({
        "seconds": u.seconds, "omit_seconds": u.omit,
        "loadavg_before": u.load[0], "loadavg_after": u.load[1],
        "vxlan_1": series(false, 1), "udp_1": series(true, 1),
        "vxlan_4": series(false, 4), "udp_4": series(true, 4),
        "ratio_udp_over_vxlan_1": udp_ratio(u, 1).map(round3),
        "ratio_udp_over_vxlan_4": udp_ratio(u, 4).map(round3),
        "udp_agent_cpu_seconds_per_gbit_1": udp_cpu_per_gbit(u, 1).map(round3),
        "udp_agent_cpu_seconds_per_gbit_4": udp_cpu_per_gbit(u, 4).map(round3),
        "ping_ms": {
            "pings": u.rtt_ms[0].len() + u.rtt_ms[1].len(),
            "vxlan_p50": vp50.map(round3), "vxlan_p99": vp99.map(round3),
            "udp_p50": up50.map(round3), "udp_p99": up99.map(round3),
        },
    })
}

/// The udp-vs-vxlan table.
pub fn udp_table(u: &udp::Outcome, j: &Value) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nudp backend vs kernel vxlan, pod to pod (Gbit/s, iperf3 TCP, interleaved); load {} before, {} after",
        u.load[0], u.load[1]
    );
    let _ = writeln!(t, "{:<14}{:>9}  retransmits per run", "path", "median");
    for key in ["vxlan_1", "udp_1", "vxlan_4", "udp_4"] {
        let _ = writeln!(
            t,
            "{key:<14}{:>9}  {}",
            fmt(j[key]["median_gbps"].as_f64()),
            j[key]["retransmits"]
        );
    }
    let p = &j["ping_ms"];
    let _ = writeln!(
        t,
        "udp/vxlan: 1 stream {}, 4 streams {}; udp agent CPU s per Gbit: {} (1), {} (4)\nping ms p50/p99: vxlan {}/{}, udp {}/{}",
        fmt(j["ratio_udp_over_vxlan_1"].as_f64()),
        fmt(j["ratio_udp_over_vxlan_4"].as_f64()),
        fmt(j["udp_agent_cpu_seconds_per_gbit_1"].as_f64()),
        fmt(j["udp_agent_cpu_seconds_per_gbit_4"].as_f64()),
        fmt(p["vxlan_p50"].as_f64()),
        fmt(p["vxlan_p99"].as_f64()),
        fmt(p["udp_p50"].as_f64()),
        fmt(p["udp_p99"].as_f64())
    );
    t
}

/// The throughput part of the document.
pub fn throughput_json(t: &throughput::Outcome) -> Value {
    let paths: Vec<Value> = t
        .paths
        .iter()
        .map(|&p| {
            let runs: Vec<&throughput::Run> = t.runs.iter().filter(|x| x.path == p).collect();
            let v = t.gbps(p);
            json!({
                "path": p.name(), "about": if t.ipv6 { p.about6() } else { p.about() },
                "gbps": v.iter().map(|x| round3(*x)).collect::<Vec<_>>(),
                "median_gbps": median(&v).map(round3),
                "min_gbps": v.iter().copied().reduce(f64::min).map(round3),
                "max_gbps": v.iter().copied().reduce(f64::max).map(round3),
                "retransmits": runs.iter().map(|x| x.retransmits).collect::<Vec<_>>(),
                "median_retransmits": median(&runs.iter().map(|x| x.retransmits as f64).collect::<Vec<_>>()),
            })
        })
        .collect();
    let per_round: Vec<Option<f64>> = (0..t.rounds)
        .map(|round| {
            let of = |p: Path| {
                t.runs
                    .iter()
                    .find(|x| x.round == round && x.path == p)
                    .map(|x| x.gbps)
            };
            ratio(of(Path::Pod), of(Path::Underlay)).map(round3)
        })
        .collect();
    let (pod, vx, ul) = (
        gbps(t, Path::Pod),
        gbps(t, Path::Vxlan),
        gbps(t, Path::Underlay),
    );
    json!({
        "family": if t.ipv6 { "IPv6" } else { "IPv4" },
        "rounds": t.rounds, "seconds": t.seconds, "omit_seconds": t.omit,
        "loadavg_before": t.load[0], "loadavg_after": t.load[1],
        "paths": paths,
        "ratios": {
            "pod_over_underlay": ratio(pod, ul).map(round3),
            "vxlan_over_underlay": ratio(vx, ul).map(round3),
            "pod_over_vxlan": ratio(pod, vx).map(round3),
            "underlay_over_veth_pair": ratio(ul, gbps(t, Path::Veth)).map(round3),
        },
        "pod_over_underlay_per_round": per_round,
    })
}

fn join_json(r: &Results) -> Value {
    let (o, x) = (join_reach(r, Side::Ours), join_reach(r, Side::Reference));
    let side = |s: Side| {
        json!({
            "reach": summary_json(join_reach(r, s)),
            "write": summary_json(join_of(r, s, |x| x.write)),
            "write_return_to_reach": summary_json(join_of(r, s, |x| x.reach.saturating_sub(x.write))),
            "answered_probe_rtt": summary_json(join_of(r, s, |x| x.rtt)),
        })
    };
    json!({
        "samples": join::SAMPLES, "warmup": r.join.warmup,
        "ours": side(Side::Ours), "reference": side(Side::Reference),
        "ratio_ours_over_reference": {
            "p50": ratio(o.map(|s| s.p50), x.map(|s| s.p50)).map(round3),
            "p99": ratio(o.map(|s| s.p99), x.map(|s| s.p99)).map(round3),
        },
    })
}

fn scale_json(r: &Results) -> Value {
    let sub = |a: Duration, b: Duration| a.saturating_sub(b);
    let [stored, live, reference] = scale_secs(r);
    json!({
        "peers": r.scale.peers, "rounds": r.scale.rounds.len(), "writers": scale::WRITERS,
        "stored": {
            "start_to_all_routes": summary_json(scale_of(r, |x| x.stored.total)),
            "start_to_subnet_file": summary_json(scale_of(r, |x| x.stored.startup)),
            "subnet_file_to_all_routes": summary_json(scale_of(r, |x| sub(x.stored.total, x.stored.startup))),
        },
        "live": {
            "first_write_to_all_routes": summary_json(scale_of(r, |x| x.live.total)),
            "first_write_to_last_stored": summary_json(scale_of(r, |x| x.live.writes)),
            "last_stored_to_all_routes": summary_json(scale_of(r, |x| sub(x.live.total, x.live.writes))),
        },
        "reference": summary_json(scale_of(r, |x| x.reference)),
        "ratios_p50": {
            "stored_over_reference": ratio(stored, reference).map(round3),
            "live_over_reference": ratio(live, reference).map(round3),
        },
        "agent_memory_mib": {
            "rss_no_peers": mem_of(r, |x| x.live.mem_idle.rss_kib),
            "rss_peers_written_live": mem_of(r, |x| x.live.mem.rss_kib),
            "rss_peers_stored_at_start": mem_of(r, |x| x.stored.mem.rss_kib),
            "hwm_peers_stored_at_start": mem_of(r, |x| x.stored.mem.hwm_kib),
        },
    })
}

/// Builds the JSON document of a run.
pub fn document(r: &Results) -> Value {
    let mut doc = host_facts();
    doc["benchmark"] = json!("overlay");
    doc["cpus"] = json!(r.cpus);
    doc["iperf3"] = json!(r.iperf3_version);
    doc["etcd"] = json!(r.etcd_version);
    doc["setup"] = json!(
        "nodes are network namespaces joined by veth to a bridge in an underlay namespace \
         (198.18.0.0/24, MTU 1500); etcd (one member) listens on the bridge; `knode agent \
         --disable pods --iface eth0 --backend vxlan` per node with the etcd control plane, \
         lease TTL and resync at their defaults; pods are made with our CNI plugins from the \
         conflist the agent writes"
    );
    doc["method"] = json!({
        "throughput": format!(
            "iperf3 TCP, one stream, from node 0 to node 1 on three paths; a 1 s warm-up run per \
             path, then {} rounds, each running every path once (the first path rotates), {} s \
             measured after {} s left out; Gbit/s is end.sum_received.bits_per_second. pod: \
             client in a pod on node 0, server in a pod on node 1. vxlan: node 0's VTEP address \
             -> node 1's over knode.1 (the raw kernel VXLAN path, no bridge or veth hop). \
             underlay: node 0 eth0 -> node 1 eth0. veth: two fresh namespaces on one veth \
             pair, a check of the underlay without its bridge. Every underlay veth end has \
             receive packet steering over all CPUs (rps_cpus), so a flow stays in order as on \
             a NIC's queue; without it one flow's segments overtake each other between CPU \
             backlogs and the reference retransmits thousands of segments per run",
            r.throughput.rounds, r.throughput.seconds, r.throughput.omit
        ),
        "throughput_ipv6": "a dual-stack cluster (2 nodes, --cluster-cidr 10.244.0.0/16,fd00:10:244::/56) \
                whose underlay also has IPv6 addresses (fd00:198:18::/64, so IPv6 pod traffic goes over \
                knode-v6.1 on the IPv6 underlay); the same loop as throughput over IPv6: pod (the pods' \
                IPv6 addresses), vxlan (the nodes' IPv6 VTEP addresses over knode-v6.1), underlay (eth0's \
                IPv6 addresses, the same steered veths and bridge), veth (the same check pair, over IPv6)",
        "udp": "a second cluster (2 nodes, --backend udp) beside the first; its pods and the vxlan \
                cluster's pods measured by the same interleaved loop: iperf3 TCP with 1 and 4 \
                streams (-P 4), 5 rounds of 3 s after 1 s left out; the udp agents' utime+stime \
                read around each run (CPU seconds per Gbit carried); then 5 alternating blocks \
                of 100 pings 10 ms apart per backend, pod 0 -> pod 1",
        "join": format!(
            "a joiner node set up by hand (node 2: knode.1 with a fixed MAC, VNI 1, port 8472, \
             nolearning, address <subnet>.0/32, target <subnet>.1 on lo, the route, neighbour \
             and FDB entry back to node 0's subnet; a second device, VNI 2, for the reference, \
             with its own subnet and a policy rule so its answers go back over it). Node 0's pod \
             sends a UDP probe every 1 ms to the target, which a socket on the joiner echoes; \
             reach is from just before the write until the first echo. Ours: the joiner's \
             SubnetLease created through our etcd backend from a thread in the joiner's \
             namespace; node 0's agent programs the route, neighbour and FDB entry. Reference: \
             the same three entries on node 0's second vxlan device with `bridge -batch` then \
             `ip -batch` (spawned from a thread in node 0). After each sample the lease is \
             deleted (or the entries removed) and the route is gone again before the next. \
             {} warm-up and {} timed samples per side, alternating which goes first",
            r.join.warmup,
            join::SAMPLES
        ),
        "scale": format!(
            "{} fake peers (subnets 10.244.0.0/24 .. 10.247.231.0/24, public IPs 198.18.1-4.x \
             that nothing is sent to, VTEP MACs from the index), network config \
             {} stored before any agent. Each round: live: an agent on a fresh node holding \
             its lease, then the leases created by {} concurrent writers through our etcd \
             backend, timed from the first write until the node's kernel holds every route \
             (polled every 5 ms over netlink; routes go in after their neighbour and FDB \
             entry); stored: with the leases in etcd, an agent spawned on a fresh node, timed \
             from the spawn (start_to_subnet_file: until it holds its lease, before any peer is \
             programmed) until every route; reference: on a fresh node with a hand-made \
             knode.1, `bridge -batch` of the {} FDB entries then `ip -batch` of the {} \
             neighbours and {} routes (the commands the agent's changes amount to), spawn until \
             exit. {} rounds; the reference runs first in even rounds and last in odd ones. \
             Memory: VmRSS/VmHWM of the agent 1 s after the peers are in",
            r.scale.peers,
            scale::NET_CONF,
            scale::WRITERS,
            r.scale.peers,
            r.scale.peers,
            r.scale.peers,
            r.scale.rounds.len()
        ),
    });
    doc["throughput"] = throughput_json(&r.throughput);
    doc["throughput_ipv6"] = throughput_json(&r.throughput6);
    doc["udp"] = udp_json(&r.udp);
    doc["join"] = join_json(r);
    doc["scale"] = scale_json(r);
    with_targets(doc, targets(r))
}

/// Prints the table, writes `overlay.json` and `overlay.svg`.
pub fn write(opts: &Opts, r: &Results) -> Result<()> {
    let doc = document(r);
    emit(&opts.out, "overlay", &table(r, &doc), &doc, &chart(r, &doc))
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".into(), |x| format!("{x:.3}"))
}

/// The throughput table: medians, retransmits, ratios, a warning for an unclean reference.
pub fn throughput_table(tput: &throughput::Outcome, tp: &Value) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nOverlay {} throughput (Gbit/s, iperf3 TCP): {} interleaved rounds of {} s; load {} before, {} after",
        if tput.ipv6 { "IPv6" } else { "IPv4" },
        tput.rounds,
        tput.seconds,
        tput.load[0],
        tput.load[1]
    );
    let _ = writeln!(
        t,
        "{:<10}{:>9}{:>9}{:>9}  retransmits per run",
        "path", "median", "min", "max"
    );
    for p in tp["paths"].as_array().into_iter().flatten() {
        let _ = writeln!(
            t,
            "{:<10}{:>9}{:>9}{:>9}  {}",
            p["path"].as_str().unwrap_or_default(),
            fmt(p["median_gbps"].as_f64()),
            fmt(p["min_gbps"].as_f64()),
            fmt(p["max_gbps"].as_f64()),
            p["retransmits"]
        );
    }
    if tput
        .retransmits(Path::Underlay)
        .iter()
        .any(|x| *x > MAX_REFERENCE_RETRANSMITS)
    {
        let _ = writeln!(
            t,
            "WARNING: the underlay reference retransmitted more than {MAX_REFERENCE_RETRANSMITS} segments in a run: it is not clean, and ratios to it flatter us"
        );
    }
    let ra = &tp["ratios"];
    let _ = writeln!(
        t,
        "pod/underlay {}  vxlan/underlay {}  pod/vxlan {}",
        fmt(ra["pod_over_underlay"].as_f64()),
        fmt(ra["vxlan_over_underlay"].as_f64()),
        fmt(ra["pod_over_vxlan"].as_f64())
    );
    t
}

fn table(r: &Results, doc: &Value) -> String {
    let mut t = throughput_table(&r.throughput, &doc["throughput"]);
    t.push_str(&throughput_table(&r.throughput6, &doc["throughput_ipv6"]));
    t.push_str(&udp_table(&r.udp, &doc["udp"]));
    let _ = writeln!(
        t,
        "\nJoin convergence (ms, write -> remote pod answers): {} samples per side, interleaved",
        join::SAMPLES
    );
    let _ = writeln!(
        t,
        "{:<11}{:>9}{:>9}{:>9}{:>9}{:>11}",
        "side", "p50", "p99", "mean", "max", "write p50"
    );
    for side in Side::ALL {
        if let Some(s) = join_reach(r, side) {
            let w = join_of(r, side, |x| x.write).map(|w| w.p50);
            let _ = writeln!(
                t,
                "{:<11}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>11}",
                side.name(),
                s.p50,
                s.p99,
                s.mean,
                s.max,
                fmt(w)
            );
        }
    }
    let sc = &doc["scale"];
    let _ = writeln!(
        t,
        "\nScale: {} remote leases, {} rounds (ms)",
        r.scale.peers,
        r.scale.rounds.len()
    );
    let _ = writeln!(t, "{:<44}{:>9}{:>9}", "", "p50", "max");
    for (label, v) in [
        (
            "stored: agent spawn -> all routes",
            &sc["stored"]["start_to_all_routes"],
        ),
        (
            "  of which spawn -> lease held",
            &sc["stored"]["start_to_subnet_file"],
        ),
        (
            "live: first write -> all routes",
            &sc["live"]["first_write_to_all_routes"],
        ),
        (
            "  of which first write -> last stored",
            &sc["live"]["first_write_to_last_stored"],
        ),
        ("reference: bridge -batch + ip -batch", &sc["reference"]),
    ] {
        let _ = writeln!(
            t,
            "{label:<44}{:>9}{:>9}",
            fmt(v["p50_ms"].as_f64()),
            fmt(v["max_ms"].as_f64())
        );
    }
    let m = &sc["agent_memory_mib"];
    let _ = writeln!(
        t,
        "agent VmRSS: {} MiB with no peer, {} MiB with {} (started with them stored)",
        fmt(m["rss_no_peers"].as_f64()),
        fmt(m["rss_peers_stored_at_start"].as_f64()),
        r.scale.peers
    );
    for tg in doc["targets"].as_array().into_iter().flatten() {
        let met = if tg["met"] == true { "MET" } else { "NOT MET" };
        let _ = writeln!(
            t,
            "target: {} -> {}: {met}",
            tg["what"].as_str().unwrap_or_default(),
            fmt(tg["value"].as_f64())
        );
    }
    t
}

fn chart(r: &Results, doc: &Value) -> String {
    let sub = format!(
        "{}; kernel {}; {} CPUs",
        doc["date"].as_str().unwrap_or_default(),
        doc["kernel"].as_str().unwrap_or_default(),
        r.cpus
    );
    let verdict = |i: usize| {
        let t = &doc["targets"][i];
        let met = if t["met"] == true { "met" } else { "not met" };
        format!("{} ({met})", fmt(t["value"].as_f64()))
    };
    let tp_groups: Vec<Group> = Path::ALL
        .iter()
        .map(|&p| {
            let v = r.throughput.gbps(p);
            Group {
                label: match p {
                    Path::Pod => "pod -> pod (knode)".into(),
                    Path::Vxlan => "VTEP -> VTEP (raw vxlan)".into(),
                    Path::Underlay => "eth0 -> eth0 (underlay)".into(),
                    Path::Veth => "veth pair (check)".into(),
                },
                values: vec![
                    median(&v).map_or(0.0, round3),
                    v.iter().copied().reduce(f64::min).map_or(0.0, round3),
                ],
            }
        })
        .collect();
    let tp = grouped_bars(
        "Cross-node TCP throughput (iperf3)",
        &[
            format!(
                "pod/underlay {} (target >= {MIN_POD_RATIO}); vxlan/underlay {}; {} rounds x {} s, interleaved",
                verdict(0),
                fmt(doc["throughput"]["ratios"]["vxlan_over_underlay"].as_f64()),
                r.throughput.rounds,
                r.throughput.seconds
            ),
            sub.clone(),
        ],
        "Gbit/s (higher is better)",
        &[
            Series {
                label: "median",
                color: "#2a7ab9",
            },
            Series {
                label: "slowest round",
                color: "#9bbbd9",
            },
        ],
        &tp_groups,
    );

    let (o, x) = (join_reach(r, Side::Ours), join_reach(r, Side::Reference));
    let val =
        |s: Option<Summary>, p99: bool| s.map_or(0.0, |s| round3(if p99 { s.p99 } else { s.p50 }));
    let join_groups: Vec<Group> = [("p50", false), ("p99", true)]
        .into_iter()
        .map(|(label, p99)| Group {
            label: label.into(),
            values: vec![val(o, p99), val(x, p99)],
        })
        .collect();
    let join = grouped_bars(
        "Join convergence: lease written -> remote pod answers",
        &[
            format!(
                "{} samples per side, interleaved; p99 {} ms (target <= {MAX_JOIN_P99_MS}); reference: the same entries by `ip -batch`",
                join::SAMPLES,
                verdict(4)
            ),
            sub.clone(),
        ],
        "milliseconds (lower is better)",
        &SIDES,
        &join_groups,
    );

    let [stored, live, reference] = scale_secs(r);
    let secs = |v: Option<f64>| round3(v.unwrap_or(0.0));
    let scale_groups = vec![
        Group {
            label: "leases stored, agent starts".into(),
            values: vec![secs(stored), secs(reference)],
        },
        Group {
            label: "leases written live".into(),
            values: vec![secs(live), secs(reference)],
        },
    ];
    let scale = grouped_bars(
        &format!("Programming {} remote leases (median)", r.scale.peers),
        &[
            format!(
                "stored {} s, live {} s (target <= {MAX_SCALE_S} s); reference: bridge -batch + ip -batch",
                verdict(5),
                verdict(6)
            ),
            sub,
        ],
        "seconds (lower is better)",
        &SIDES,
        &scale_groups,
    );
    // Each panel keeps grouped_bars' fixed 760 x 440 size.
    let panels = [tp, join, scale];
    let h = 440 * panels.len();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"760\" height=\"{h}\" viewBox=\"0 0 760 {h}\">\n"
    );
    for (i, p) in panels.iter().enumerate() {
        svg.push_str(&p.replacen("<svg ", &format!("<svg x=\"0\" y=\"{}\" ", 440 * i), 1));
    }
    svg.push_str("</svg>\n");
    svg
}
