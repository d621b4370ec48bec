//! The nftables mode beside the iptables mode (`bench proxy-nft`): full
//! syncs of table `ip kube-proxy` at 1k/10k/50k Services x 5 endpoints,
//! and partial syncs (one endpoint changed) at 10k and 50k, interleaved
//! at 10k with the iptables mode's partial sync (legacy backend) into a
//! table of the same size. Medians, p99 and ratios to stdout and
//! `proxy-nft.json`. Namespaces are the harness's own.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hostnet::nftables::{NfTables, NfTablesSocket};
use netns_tests::TestNs;
use proxy::nft::ruleset::{names, table};
use proxy::{Backend, NftSyncer, Proxier, ServicePort};
use serde_json::json;

use super::{node, services, setup, sync};
use crate::report::{host_facts, write_file};
use crate::stats::{round3, Summary};
use crate::Opts;

const FULL_SIZES: [usize; 3] = [1_000, 10_000, 50_000];
const PARTIAL_SIZES: [usize; 2] = [10_000, 50_000];
const FULL_REPS: usize = 3;
const PARTIAL_REPS: usize = 25;

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
    let o = ns
        .run(|| s.sync(desired))?
        .map_err(|e| anyhow!("nft sync: {e}"))?;
    Ok(o.duration)
}

/// Changes endpoint 1 of one Service (a different one each `rep`).
fn change(desired: &mut [ServicePort], rep: usize) {
    let n = desired.len();
    let sp = &mut desired[(rep * 7919) % n];
    sp.endpoints[1].ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + rep as u32);
}

fn summary_json(s: &Option<Summary>) -> serde_json::Value {
    match s {
        Some(s) => json!({"p50": round3(s.p50), "p99": round3(s.p99), "n": s.n}),
        None => json!(null),
    }
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
        nft_sync(&ns, &mut s, &desired)?;
        // At 10k the iptables mode (legacy, its faster backend here) runs
        // beside it, one sample each in turn.
        let mut ipt = if n == 10_000 {
            let (ins, _, mut is) = setup(Backend::Legacy)?;
            sync(&ins, &mut is, &desired)?;
            Some((ins, is, desired.clone(), Vec::new()))
        } else {
            None
        };
        let mut ours = Vec::new();
        for rep in 0..PARTIAL_REPS {
            change(&mut desired, rep);
            ours.push(nft_sync(&ns, &mut s, &desired)?);
            if let Some((ins, is, d, samples)) = ipt.as_mut() {
                change(d, rep);
                samples.push(sync(ins, is, d)?);
            }
        }
        let nft = Summary::of(&ours);
        line(&mut table_out, "partial/nftables", n, &nft);
        let mut row = json!({"what": "partial/nftables", "services": n, "ms": summary_json(&nft)});
        if let Some((_, _, _, samples)) = ipt {
            let i = Summary::of(&samples);
            line(&mut table_out, "partial/iptables-legacy", n, &i);
            if let (Some(a), Some(b)) = (&nft, &i) {
                row["iptables_legacy_ms"] = summary_json(&i);
                row["ratio_p50_iptables_over_nftables"] = json!(round3(b.p50 / a.p50));
                table_out.push_str(&format!(
                    "ratio iptables/nftables p50 at {n}: {:.0}x\n",
                    b.p50 / a.p50
                ));
            }
        }
        rows.push(row);
    }
    table_out.push_str(&format!(
        "map and set sizes at 10k Services x 5 endpoints: {sizes}\n"
    ));
    print!("{table_out}");
    let mut doc = host_facts();
    doc["results"] = json!(rows);
    doc["sizes_at_10k"] = sizes;
    doc["target_partial_ms"] = json!(5.0);
    write_file(
        &opts.out,
        "proxy-nft.json",
        &serde_json::to_string_pretty(&doc)?,
    )
}
