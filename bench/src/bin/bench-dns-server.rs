//! `bench-dns-server RECORDS LISTEN UPSTREAM`: knode's DNS server (the
//! `dns` crate the agent runs) as a process of its own for `bench dns`, so
//! that it can be pinned and measured like the reference servers. Loads
//! Services and pods from RECORDS (`svc NS NAME IP` / `pod NS NAME IP`
//! lines), serves UDP+TCP on LISTEN with one runtime thread, forwards other
//! names to UPSTREAM, and prints `ready` once it listens.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context, Result};
use dns::{ForwardConfig, Forwarder, Server, ServerConfig, Sockets, Zone, ZoneConfig};
use k8s_openapi::api::core::v1::{Pod, PodIP, PodStatus, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}

/// The zone of the records file.
fn load(path: &str) -> Result<Zone> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    let mut zone = Zone::new(&ZoneConfig::default())?;
    for (i, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["svc", ns, name, ip] => zone.upsert_service(&Service {
                metadata: meta(ns, name),
                spec: Some(ServiceSpec {
                    cluster_ip: Some(ip.to_string()),
                    cluster_ips: Some(vec![ip.to_string()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ["pod", ns, name, ip] => zone.upsert_pod(&Pod {
                metadata: meta(ns, name),
                status: Some(PodStatus {
                    pod_ip: Some(ip.to_string()),
                    pod_ips: Some(vec![PodIP { ip: ip.to_string() }]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            [] => {}
            _ => bail!("{path}:{}: not `svc|pod NS NAME IP`", i + 1),
        }
    }
    Ok(zone)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [records, listen, upstream] = args.as_slice() else {
        bail!("usage: bench-dns-server RECORDS LISTEN UPSTREAM");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN")?;
    let upstream: SocketAddr = upstream.parse().context("UPSTREAM")?;
    let zone = load(records)?;
    // One worker, as the reference servers get one thread each.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let forwarder = Forwarder::new(ForwardConfig::new(vec![upstream]));
        // The load comes from one address: no per-client limit (neither
        // reference server has one on by default).
        let config = ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        };
        let server = Server::new(
            Arc::new(RwLock::new(zone)),
            Some(Arc::new(forwarder)),
            config,
        );
        let _running = server.spawn(Sockets::bind(&[listen]).await?);
        println!("ready");
        std::future::pending::<()>().await;
        Ok(())
    })
}
