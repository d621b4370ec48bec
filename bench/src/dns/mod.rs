//! `bench dns`: knode's DNS server against dnsmasq and unbound serving the
//! same 10k Services (and 50k pods) from local data, in one namespace, on
//! the same pinned CPU, forwarding to the same upstream. Interleaved
//! rounds of dnsperf (saturating for QPS, paced with per-query latencies
//! for p50/p99) and of our own load generator as the cross-check, for
//! cluster names and for cached external names; memory of each server.

pub mod live;
mod load;
mod report;
mod servers;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns_tests::{TempDir, TestNs};

use crate::controlplane::procfs;
use crate::Opts;
use servers::{Proc, Records};

/// Services and pods in the zone.
const SERVICES: usize = 10_000;
const PODS: usize = 50_000;
/// Distinct external names asked (all cached after the warm-up).
const EXTERNAL_NAMES: usize = 1_000;
/// Rounds; each runs every measurement on every server, order rotated.
const ROUNDS: usize = 5;
/// Length of one measurement.
const RUN: Duration = Duration::from_secs(3);
/// dnsperf's rate for the latency runs (below every server's saturation).
const PACED_QPS: u32 = 10_000;
/// The servers' CPU and the load generators' CPU.
const SERVER_CPU: usize = 1;
const LOAD_CPU: usize = 0;
/// Our load generator: threads × queries outstanding each. One thread:
/// two threads pinned to one CPU take turns in scheduler time slices
/// (milliseconds) once the CPU is saturated, and the answers waiting for
/// the thread that is not running show up as a server's tail.
const LOAD_THREADS: usize = 1;
const LOAD_DEPTH: usize = 32;

/// Which names a measurement asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    Cluster,
    External,
}

/// One measurement of one server in one round.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// dnsperf saturating: answers/s, lost queries, the server's CPU busy
    /// share and its CPU time per answer (µs; the figure least moved by
    /// other load on the machine).
    pub qps: f64,
    pub lost: u64,
    pub busy: f64,
    pub cpu_us: f64,
    /// dnsperf paced at PACED_QPS: per-query latency p50/p99 (ms).
    pub p50: f64,
    pub p99: f64,
    /// Our load generator: answers/s, p50/p99 (ms), bad and lost answers.
    pub own_qps: f64,
    pub own_p50: f64,
    pub own_p99: f64,
    pub own_bad: u64,
    pub own_lost: u64,
}

/// Query files for dnsperf and name lists for our generator.
struct Workload {
    cluster: Vec<String>,
    external: Vec<String>,
}

impl Workload {
    fn new(records: &Records) -> Workload {
        // Every Service once, in a scattered (but fixed) order.
        let n = records.services.len();
        let cluster = (0..n)
            .map(|i| {
                let (ns, name, _) = &records.services[i * 7919 % n];
                Records::service_fqdn(ns, name)
            })
            .collect();
        let external = (0..EXTERNAL_NAMES)
            .map(|i| format!("host-{i}.{}", servers::EXTERNAL_DOMAIN))
            .collect();
        Workload { cluster, external }
    }

    fn names(&self, which: Names) -> &[String] {
        match which {
            Names::Cluster => &self.cluster,
            Names::External => &self.external,
        }
    }

    fn write(&self, dir: &Path) -> Result<()> {
        for (which, file) in [
            (Names::Cluster, "cluster.queries"),
            (Names::External, "external.queries"),
        ] {
            let text: String = self
                .names(which)
                .iter()
                .map(|n| format!("{n} A\n"))
                .collect();
            std::fs::write(dir.join(file), text)?;
        }
        Ok(())
    }
}

fn query_file(dir: &Path, which: Names) -> String {
    let f = match which {
        Names::Cluster => "cluster.queries",
        Names::External => "external.queries",
    };
    dir.join(f).display().to_string()
}

/// dnsperf in `ns` on LOAD_CPU against `server`, with `extra` options;
/// its stdout.
fn dnsperf(ns: &TestNs, server: SocketAddr, file: &str, extra: &[&str]) -> Result<String> {
    let (cpu, port) = (LOAD_CPU.to_string(), server.port().to_string());
    let ip = server.ip().to_string();
    let mut argv = vec![
        "taskset", "-c", &cpu, "dnsperf", "-s", &ip, "-p", &port, "-d", file, "-t", "1",
    ];
    argv.extend_from_slice(extra);
    ns.sh(&argv)
}

/// A number after `label` on a line of dnsperf's statistics.
fn stat(out: &str, label: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.trim_start().starts_with(label))?;
    line.split(':')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Latencies (ms) of dnsperf's `-v` lines (`> NOERROR name A 0.000188`).
fn verbose_latencies(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.starts_with("> NOERROR "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        .map(|s| s * 1e3)
        .collect()
}

/// Every measurement of one server for one kind of name.
fn measure(ns: &TestNs, p: &Proc, dir: &Path, w: &Workload, which: Names) -> Result<Sample> {
    let file = query_file(dir, which);
    let secs = RUN.as_secs().to_string();
    let mut s = Sample::default();

    let (before, _) = procfs::cpu(Some(p.pid()))?;
    let t = std::time::Instant::now();
    let out = dnsperf(ns, p.addr, &file, &["-l", &secs, "-c", "4", "-q", "64"])?;
    let (after, _) = procfs::cpu(Some(p.pid()))?;
    s.busy = (after - before).as_secs_f64() / t.elapsed().as_secs_f64();
    s.qps = stat(&out, "Queries per second").context("dnsperf: no QPS")?;
    s.lost = stat(&out, "Queries lost").unwrap_or(0.0) as u64;
    let completed = stat(&out, "Queries completed").context("dnsperf: no count")?;
    s.cpu_us = (after - before).as_secs_f64() * 1e6 / completed.max(1.0);

    let rate = PACED_QPS.to_string();
    let out = dnsperf(ns, p.addr, &file, &["-l", &secs, "-Q", &rate, "-v"])?;
    let mut lat = verbose_latencies(&out);
    if lat.is_empty() {
        bail!("dnsperf -v against {}: no NOERROR answers", p.name);
    }
    lat.sort_by(f64::total_cmp);
    s.p50 = crate::stats::percentile(&lat, 50.0);
    s.p99 = crate::stats::percentile(&lat, 99.0);

    let names = w.names(which);
    let own = ns.run(|| load::run(p.addr, names, LOAD_THREADS, LOAD_DEPTH, RUN, LOAD_CPU))??;
    let summary = crate::stats::Summary::of(&own.latencies).context("no answer at all")?;
    s.own_qps = own.qps;
    s.own_p50 = summary.p50;
    s.own_p99 = summary.p99;
    s.own_bad = own.bad;
    s.own_lost = own.lost;
    Ok(s)
}

/// Upstream queries logged so far.
fn upstream_queries(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(": query["))
        .count()
}

/// Checks with `dig` that every server gives the same answers: sample
/// Services and pods, an external name, NXDOMAIN for a missing cluster name.
fn check_answers(ns: &TestNs, procs: &[Proc], records: &Records) -> Result<usize> {
    let all: Vec<(String, &str)> = records.names().collect();
    let step = all.len() / 20;
    let mut checked = 0;
    for p in procs {
        for (name, ip) in all.iter().step_by(step.max(1)) {
            let got = servers::dig(ns, p.addr, name)?;
            if got != *ip {
                bail!("{} answers {name} with {got:?}, not {ip}", p.name);
            }
            checked += 1;
        }
        let ext = format!("check.{}", servers::EXTERNAL_DOMAIN);
        let got = servers::dig(ns, p.addr, &ext)?;
        if got != servers::EXTERNAL_IP {
            bail!("{} answers {ext} with {got:?} (forwarding broken)", p.name);
        }
        let missing = format!("nope.ns-0.svc.{}", servers::DOMAIN);
        let status = servers::dig_status(ns, p.addr, &missing)?;
        if status != "NXDOMAIN" {
            bail!("{} answers {missing} with {status}, not NXDOMAIN", p.name);
        }
        checked += 2;
    }
    Ok(checked)
}

/// What the run produced, for the report.
pub struct Results {
    /// Server names in column order.
    pub servers: Vec<&'static str>,
    /// `[server][round]` samples for cluster and external names.
    pub cluster: Vec<Vec<Sample>>,
    pub external: Vec<Vec<Sample>>,
    /// VmRSS (KiB) after loading the records, and VmHWM after the run.
    pub rss_loaded: Vec<u64>,
    pub hwm_end: Vec<u64>,
    /// Upstream queries during the measured rounds (all cached: ~0).
    pub upstream_during: usize,
    /// Answers `dig` checked before measuring.
    pub checked: usize,
    /// The machine's load averages before the first round and after the
    /// last (the machine may be shared: q/s falls with load for every
    /// server alike, CPU per answer much less).
    pub load: [String; 2],
}

pub fn run(opts: &Opts) -> Result<()> {
    for tool in ["dnsperf", "dnsmasq", "unbound", "dig", "taskset"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("{tool} not found: run `scripts/bootstrap.sh --bench` (make bench does)");
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!("servers and load run on CPUs {SERVER_CPU} and {LOAD_CPU}: needs 2 CPUs, has {cpus}");
    }
    let ns = TestNs::new("dnsb")?;
    let tmp = TempDir::new("dnsb")?;
    let dir = tmp.path();
    let records = Records::new(SERVICES, PODS);
    let work = Workload::new(&records);
    work.write(dir)?;

    let lab = servers::Lab {
        ns: &ns,
        cpu: SERVER_CPU,
        upstream: "127.0.1.53:53".parse()?,
        dir,
    };
    let up_log = dir.join("upstream.log");
    let _upstream = lab.upstream(&up_log)?;
    let mut procs = vec![
        lab.knode("127.0.0.11:53".parse()?, &records)?,
        lab.dnsmasq("127.0.0.12:53".parse()?, &records)?,
        lab.unbound("127.0.0.13:53".parse()?, &records)?,
    ];
    let (first, first_ip) = records.names().next().context("no records")?;
    for p in &mut procs {
        servers::wait_answers(p, &ns, &first, first_ip)?;
    }
    let checked = check_answers(&ns, &procs, &records)?;
    let rss_loaded = procs
        .iter()
        .map(|p| Ok(procfs::mem(p.pid())?.rss_kib))
        .collect::<Result<Vec<_>>>()?;
    eprintln!(
        "dns: 3 servers loaded with {SERVICES} Services + {PODS} pods, {checked} answers agree; \
         warming caches"
    );
    // Warm-up: every name once (external ones reach the upstream once per server).
    for p in &procs {
        for which in [Names::Cluster, Names::External] {
            dnsperf(
                &ns,
                p.addr,
                &query_file(dir, which),
                &["-n", "1", "-q", "16"],
            )?;
        }
    }
    let upstream_before = upstream_queries(&up_log);
    let load_before = crate::overlay::loadavg();

    let mut cluster = vec![Vec::new(); procs.len()];
    let mut external = vec![Vec::new(); procs.len()];
    for round in 0..ROUNDS {
        for i in 0..procs.len() {
            let k = (round + i) % procs.len();
            let p = &mut procs[k];
            p.alive()?;
            cluster[k].push(measure(&ns, p, dir, &work, Names::Cluster)?);
            external[k].push(measure(&ns, p, dir, &work, Names::External)?);
            eprintln!(
                "dns: round {}/{ROUNDS} {:<8} cluster {:>7.0} q/s  external {:>7.0} q/s",
                round + 1,
                p.name,
                cluster[k][round].qps,
                external[k][round].qps
            );
        }
    }
    let upstream_during = upstream_queries(&up_log) - upstream_before;
    let hwm_end = procs
        .iter()
        .map(|p| Ok(procfs::mem(p.pid())?.hwm_kib))
        .collect::<Result<Vec<_>>>()?;
    let results = Results {
        servers: procs.iter().map(|p| p.name).collect(),
        cluster,
        external,
        rss_loaded,
        hwm_end,
        upstream_during,
        checked,
        load: [load_before, crate::overlay::loadavg()],
    };
    report::emit(opts, &results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsperf_statistics_and_verbose_lines_are_read() {
        let out = "> NOERROR a.b A 0.000188\n> NOERROR c.d A 0.001000\n> SERVFAIL e A 0.1\n\
                   \n  Queries completed:    9 (75.00%)\n  Queries lost:         3 (0.00%)\n  \
                   Queries per second:   41234.5\n";
        assert_eq!(stat(out, "Queries per second"), Some(41234.5));
        assert_eq!(stat(out, "Queries lost"), Some(3.0));
        assert_eq!(stat(out, "Queries completed"), Some(9.0));
        assert_eq!(verbose_latencies(out), [0.188, 1.0]);
    }

    #[test]
    fn the_workload_asks_every_service_once() {
        let r = Records::new(1000, 10);
        let w = Workload::new(&r);
        let mut names = w.cluster.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 1000);
        assert_eq!(w.external.len(), EXTERNAL_NAMES);
    }
}
