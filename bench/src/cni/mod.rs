//! The CNI benchmark: wall-clock ADD/DEL latency of `knode-bridge` +
//! `knode-host-local` against the reference `bridge` + `host-local`, run
//! interleaved from a host namespace this harness creates. It never touches
//! the root namespace; every namespace and temp dir it makes is dropped
//! (deleted) on return, success or not.

mod report;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns_tests::{first_ip, unique, CniCall, TempDir, TestNs, REFERENCE_CNI_DIR};
use serde_json::{json, Value};

use crate::Opts;

/// The most pods per side one /24 subnet holds (gateway and warm-up aside).
const MAX_PODS: usize = 240;

/// Which plugin pair a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    Ours,
    Reference,
}

impl Impl {
    /// Both, in the order each step runs them.
    pub const ALL: [Impl; 2] = [Impl::Ours, Impl::Reference];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Reference => "reference",
        }
    }
}

/// The latencies of one side in one round.
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// The very first ADD (a warm-up one unless warm-up is 0): setup costs.
    pub first_add: Option<Duration>,
    /// Timed ADDs (warm-up excluded).
    pub add: Vec<Duration>,
    /// Timed DELs (warm-up excluded).
    pub del: Vec<Duration>,
}

/// One round: both sides with ipMasq on or off.
#[derive(Debug, Clone)]
pub struct Round {
    pub ip_masq: bool,
    /// Indexed like [`Impl::ALL`].
    pub samples: [Samples; 2],
}

/// One side's plugin and network config (its IPAM data dir lives as long as it).
struct Side {
    imp: Impl,
    plugin: PathBuf,
    conf: Value,
    _data: TempDir,
}

impl Side {
    fn new(imp: Impl, ip_masq: bool) -> Result<Side> {
        let data = TempDir::new(&format!("bench-ipam-{}", imp.name()))?;
        let (plugin, ipam, net, bridge, subnet) = match imp {
            Impl::Ours => (
                crate::built("knode-bridge")?,
                "knode-host-local",
                "bench-ours",
                "kbo",
                "10.201.0.0/24",
            ),
            Impl::Reference => (
                reference("bridge")?,
                "host-local",
                "bench-ref",
                "kbr",
                "10.202.0.0/24",
            ),
        };
        match imp {
            Impl::Ours => crate::built(ipam)?,
            Impl::Reference => reference(ipam)?,
        };
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": unique(&format!("{net}-")),
            "type": plugin.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            "bridge": unique(bridge),
            "isGateway": true,
            "isDefaultGateway": true,
            "ipMasq": ip_masq,
            "ipam": { "type": ipam, "ranges": [[{ "subnet": subnet }]], "dataDir": data.path() },
        });
        Ok(Side {
            imp,
            plugin,
            conf,
            _data: data,
        })
    }

    /// Execs the plugin once (from the calling thread's namespace) and times
    /// it from spawn to exit; fails with the plugin's output unless it succeeded.
    fn exec(
        &self,
        command: &'static str,
        id: &str,
        pod: &TestNs,
        conf: &Value,
    ) -> Result<(Duration, Value)> {
        let call = CniCall::new(&self.plugin, command, id, Some(pod.path()), "eth0");
        let t0 = Instant::now();
        let out = call.run(conf)?;
        let took = t0.elapsed();
        let what = format!("{command} {} ({id})", self.imp.name());
        let result = out.expect_ok(&what)?;
        if command == "ADD" && first_ip(&result).is_none() {
            bail!("{what}: result has no IPv4 address: {result}");
        }
        Ok((took, result))
    }

    fn add(&self, id: &str, pod: &TestNs, s: &mut Samples) -> Result<(Duration, Value)> {
        let r = self.exec("ADD", id, pod, &self.conf)?;
        s.first_add.get_or_insert(r.0);
        Ok(r)
    }

    fn del(&self, id: &str, pod: &TestNs, prev: &Value) -> Result<Duration> {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.clone();
        Ok(self.exec("DEL", id, pod, &conf)?.0)
    }
}

fn reference(name: &str) -> Result<PathBuf> {
    let p = Path::new(REFERENCE_CNI_DIR).join(name);
    if !p.is_file() {
        bail!(
            "{} missing: install containernetworking-plugins (make bootstrap does)",
            p.display()
        );
    }
    Ok(p)
}

/// Runs the benchmark (ipMasq on, then off) and writes `cni.json` and `cni.svg` to `opts.out`.
pub fn run(opts: &Opts) -> Result<()> {
    if opts.pods == 0 || opts.pods > MAX_PODS {
        bail!(
            "--pods {}: must be 1-{MAX_PODS} (one /24 per side)",
            opts.pods
        );
    }
    eprintln!("cni: creating {} pod namespaces", 2 * opts.pods + 2);
    // Created once, outside the timed region, and reused by both rounds (DEL
    // empties them); deleting them mid-run would put the kernel's namespace
    // cleanup inside the second round's measurements.
    let pods = (0..2 * opts.pods)
        .map(|_| TestNs::new("bp"))
        .collect::<Result<Vec<_>>>()?;
    let warm = [TestNs::new("bw")?, TestNs::new("bw")?];
    let mut hosts = Vec::new();
    let mut rounds = Vec::new();
    for ip_masq in [true, false] {
        eprintln!(
            "cni: round ipMasq={}: {} warm-up + {} timed ADD/DEL per side",
            on_off(ip_masq),
            opts.warmup,
            opts.pods
        );
        let host = TestNs::new("bh")?;
        let sides = [
            Side::new(Impl::Ours, ip_masq)?,
            Side::new(Impl::Reference, ip_masq)?,
        ];
        let samples = host
            .run(|| measure(&sides, &pods, &warm, opts.warmup))?
            .with_context(|| format!("round ipMasq={}", on_off(ip_masq)))?;
        rounds.push(Round { ip_masq, samples });
        hosts.push(host); // kept until the end, like the pods
    }
    report::write(opts, &rounds)
}

/// The round's calls, all from this thread (inside the host namespace).
fn measure(
    sides: &[Side; 2],
    pods: &[TestNs],
    warm: &[TestNs; 2],
    warmup: usize,
) -> Result<[Samples; 2]> {
    let mut samples: [Samples; 2] = Default::default();
    for w in 0..warmup {
        let mut prev = Vec::with_capacity(2);
        for (k, side) in sides.iter().enumerate() {
            let id = format!("warm-{}-{w}", side.imp.name());
            prev.push((id.clone(), side.add(&id, &warm[k], &mut samples[k])?.1));
        }
        for (k, side) in sides.iter().enumerate() {
            side.del(&prev[k].0, &warm[k], &prev[k].1)?;
        }
        wait_for_reaper()?;
    }
    let n = pods.len() / 2;
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        let mut pair = Vec::with_capacity(2);
        for (k, side) in sides.iter().enumerate() {
            let id = format!("bench-{}-{i}", side.imp.name());
            let (took, result) = side.add(&id, &pods[2 * i + k], &mut samples[k])?;
            samples[k].add.push(took);
            pair.push((id, result));
        }
        results.push(pair);
    }
    for (i, pair) in results.iter().enumerate() {
        for (k, side) in sides.iter().enumerate() {
            let took = side.del(&pair[k].0, &pods[2 * i + k], &pair[k].1)?;
            samples[k].del.push(took);
            if side.imp == Impl::Ours {
                wait_for_reaper()?;
            }
        }
    }
    Ok(samples)
}

/// Our DEL returns once the veth pair is down and renamed, and a child
/// deletes it (the kernel's slow part). Waits, untimed, until that delete is
/// done, so it cannot slow the reference's next call and skew the ratio.
fn wait_for_reaper() -> Result<()> {
    let mut nl = hostnet::Netlink::new()?;
    for _ in 0..2000 {
        let links = nl.link().list()?;
        if !links
            .iter()
            .any(|l| l.name.starts_with(cni_plugins::bridge::TOMBSTONE_PREFIX))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("a DEL's veth pair was still not deleted after 2 s")
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}
