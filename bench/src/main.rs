//! `bench`: knode's benchmark harness (`make bench`). This file owns the CLI
//! (std-only argument parsing), the root check and the list of benchmarks;
//! each benchmark lives in its own module and measures ours and the
//! reference side by side. Nothing here touches the root network namespace.

mod api;
mod cni;
mod controlplane;
mod dns;
mod netpol;
mod overlay;
mod pods;
mod portforward;
mod probes;
mod proxy;
mod readiness;
mod report;
mod scheduler;
mod stats;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

/// Our release-built binary `name`, or an error that says how to build it.
pub fn built(name: &str) -> Result<PathBuf> {
    let p = netns_tests::bin_dir().join(name);
    if !p.is_file() {
        bail!(
            "{} not built: run `cargo build --release --bins` (scripts/bench.sh does)",
            p.display()
        );
    }
    Ok(p)
}

/// Every binary a benchmark that runs agents and pods needs.
pub fn require_node_bins() -> Result<()> {
    for bin in [
        "knode",
        "knode-bridge",
        "knode-host-local",
        "knode-loopback",
    ] {
        built(bin)?;
    }
    Ok(())
}

/// Options shared by every benchmark.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Pods per side (CNI).
    pub pods: usize,
    /// Untimed ADD/DEL pairs per side before measuring.
    pub warmup: usize,
    /// Where `<name>.json` and the chart go.
    pub out: PathBuf,
}

/// A benchmark: its subcommand name, a one-line description, its entry point.
struct Bench {
    name: &'static str,
    about: &'static str,
    run: fn(&Opts) -> Result<()>,
}

const BENCHES: &[Bench] = &[
    Bench {
        name: "api",
        about: "Kubernetes API at 10,000 pods: kubectl get pods -A time and agent RSS (embedded, etcd); watch p50/p99 and list objects/s, HTTPS vs socket",
        run: api::run,
    },
    Bench {
        name: "cni",
        about:
            "ADD/DEL latency of knode-bridge + knode-host-local vs the reference bridge + host-local",
        run: cni::run,
    },
    Bench {
        name: "controlplane",
        about: "watch latency, apply throughput and memory: embedded agent and etcd backend vs raw etcd",
        run: controlplane::run,
    },
    Bench {
        name: "pods",
        about: "pod start latency vs `ctr run -d`, churn of 100 pods with leak counts, agent memory",
        run: pods::run,
    },
    Bench {
        name: "portforward",
        about: "kubectl port-forward (WebSocket tunnel, SPDY) vs direct TCP to the pod: 100 MB download MB/s, connect p50/p99",
        run: portforward::run,
    },
    Bench {
        name: "probes",
        about: "CPU of 100 pods' httpGet/exec probes every 1 s (agent, containerd, shims) vs the same pods without probes",
        run: probes::run,
    },
    Bench {
        name: "readiness",
        about: "readiness probe passes/fails -> ClusterIP sends/stops traffic (nftables proxy), p50/p99",
        run: readiness::run,
    },
    Bench {
        name: "proxy",
        about: "full sync at 1k/5k/10k Services and a partial sync at 10k vs iptables-restore of the same payload",
        run: proxy::run,
    },
    Bench {
        name: "proxy-nft",
        about: "nftables mode: full sync at 1k/10k/50k, partial sync at 10k/50k beside the iptables mode's",
        run: proxy::nftmode::run,
    },
    Bench {
        name: "proxy-nft-partial",
        about: "nftables mode alone: 400 partial syncs at 10k and 50k Services, whole and transaction",
        run: proxy::nftmode::run_partial,
    },
    Bench {
        name: "proxy-nft-memory",
        about: "nftables mode alone: the agent's memory at 10k Services and 50k Pods, proxy on vs off",
        run: proxy::nftmode::run_memory,
    },
    Bench {
        name: "dns",
        about: "cluster DNS vs dnsmasq and unbound with the same 10k Services: dnsperf q/s and p50/p99, cached external names, memory",
        run: dns::run,
    },
    Bench {
        name: "dns-live",
        about: "cluster DNS: Service created on one node -> resolvable on another, p50/p99 (two agents on etcd)",
        run: dns::live::run,
    },
    Bench {
        name: "netpol",
        about: "NetworkPolicy programming: 1,000 policies over 10,000 pods, full sync, one pod, one policy",
        run: netpol::run,
    },
    Bench {
        name: "netpol-packet",
        about: "NetworkPolicy per-packet cost: TCP connect latency and iperf3 with 1,000 policies vs no table",
        run: netpol::run_packet,
    },
    Bench {
        name: "scheduler",
        about: "scheduler throughput: 1,000 pending pods bound over 3 nodes on the embedded control plane",
        run: scheduler::run,
    },
    Bench {
        name: "deployment",
        about: "a Deployment of 100 replicas on 3 real nodes on etcd: apply -> all Running vs the same pods written directly, spread",
        run: workloads::run_deployment,
    },
    Bench {
        name: "deployment-one-node",
        about: "the same on one real node (embedded control plane), the reference's pods bound by the scheduler",
        run: workloads::run_deployment_one_node,
    },
    Bench {
        name: "controller-memory",
        about: "the controller manager's memory at 10,000 pods in 1,000 Deployments: the agent with controllers on vs off",
        run: workloads::run_memory,
    },
    Bench {
        name: "overlay",
        about: "iperf3 pod-to-pod vs raw underlay and raw vxlan, join convergence and 1,000 leases vs ip -batch",
        run: overlay::run,
    },
    Bench {
        name: "overlay-throughput",
        about: "only the iperf3 part of `overlay` (quicker while working on the data path)",
        run: overlay::run_throughput,
    },
];

/// What `all` runs: every benchmark but the parts of one (`overlay-throughput`).
/// Benchmarks that run a part of another (for work on one path), left
/// out of `all`.
const PARTS: [&str; 4] = [
    "deployment-one-node",
    "overlay-throughput",
    "proxy-nft-partial",
    "proxy-nft-memory",
];

fn everything() -> impl Iterator<Item = &'static Bench> {
    BENCHES.iter().filter(|b| !PARTS.contains(&b.name))
}

fn usage() -> String {
    let mut u = String::from(
        "usage: bench [all | BENCH...] [--pods N] [--warmup N] [--out DIR]\n\
         runs every benchmark when none (or `all`) is named; needs root (network namespaces)\n\
         \x20 --pods N     pods per side (default 200)\n\
         \x20 --warmup N   untimed warm-up pairs per side (default 5)\n\
         \x20 --out DIR    result directory (default bench/results)\nbenchmarks:\n",
    );
    for b in BENCHES {
        u.push_str(&format!("  {:<13} {}\n", b.name, b.about));
    }
    u
}

/// Parses the arguments into options and the benchmarks to run (in order).
fn parse(args: &[String]) -> Result<(Opts, Vec<&'static Bench>)> {
    let mut opts = Opts {
        pods: 200,
        warmup: 5,
        out: PathBuf::from("bench/results"),
    };
    let mut picked: Vec<&'static Bench> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match a.as_str() {
            "--pods" => opts.pods = value("--pods")?.parse().context("--pods: not a number")?,
            "--warmup" => {
                opts.warmup = value("--warmup")?
                    .parse()
                    .context("--warmup: not a number")?
            }
            "--out" => opts.out = PathBuf::from(value("--out")?),
            "all" => picked.extend(everything()),
            name => match BENCHES.iter().find(|b| b.name == name) {
                Some(b) => picked.push(b),
                None => bail!("unknown argument {name:?}"),
            },
        }
    }
    if picked.is_empty() {
        picked.extend(everything());
    }
    let mut seen = Vec::new();
    picked.retain(|b| {
        let first = !seen.contains(&b.name);
        seen.push(b.name);
        first
    });
    Ok((opts, picked))
}

/// The effective uid, from /proc/self/status (std only).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        print!("{}", usage());
        return ExitCode::SUCCESS;
    }
    let (opts, picked) = match parse(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: {e:#}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if euid() != Some(0) {
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("bench: needs root (network namespaces), and CI=true forbids skipping");
            return ExitCode::FAILURE;
        }
        eprintln!("SKIP bench: needs root (network namespaces)");
        return ExitCode::SUCCESS;
    }
    let mut failed = false;
    for b in picked {
        eprintln!("== bench {}: {}", b.name, b.about);
        if let Err(e) = (b.run)(&opts) {
            eprintln!("bench {}: FAILED: {e:#}", b.name);
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn no_benchmark_named_means_all() -> Result<()> {
        let (opts, picked) = parse(&args(&["--pods", "10", "--out", "/tmp/x"]))?;
        assert_eq!(picked.len(), BENCHES.len() - PARTS.len());
        assert!(picked.iter().all(|b| !PARTS.contains(&b.name)));
        assert_eq!((opts.pods, opts.warmup), (10, 5));
        assert_eq!(opts.out, PathBuf::from("/tmp/x"));
        Ok(())
    }

    #[test]
    fn named_benchmarks_and_bad_arguments() -> Result<()> {
        let (_, picked) = parse(&args(&["cni", "controlplane", "cni"]))?;
        assert_eq!(
            picked.iter().map(|b| b.name).collect::<Vec<_>>(),
            ["cni", "controlplane"]
        );
        assert!(parse(&args(&["nope"])).is_err());
        assert!(parse(&args(&["--pods"])).is_err());
        assert!(parse(&args(&["--pods", "x"])).is_err());
        Ok(())
    }
}
