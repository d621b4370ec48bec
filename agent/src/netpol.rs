//! NetworkPolicy inside the agent: the kernel settings it needs, the
//! policy controller (restarted with a backoff when it stops), and the
//! gate the kubelet calls between a pod's CNI ADD and its first container.
//! With `--disable network-policy` the table is removed, so a node that
//! turns enforcement off keeps no stale isolation (or guard).

use std::sync::Arc;

use anyhow::{Context, Result};
use controlplane::ControlPlane;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use kubelet::pods::context::NetworkGate;

use crate::config::Config;

/// What [`start`] started.
pub struct Started {
    pub task: tokio::task::JoinHandle<()>,
    /// For the kubelet.
    pub gate: Arc<dyn NetworkGate>,
    /// Rendered on the agent's `/metrics`.
    pub metrics: Arc<netpol::Metrics>,
}

/// Starts enforcement for this node, whose pods live in `pod_cidrs` (one
/// per address family: a table and an engine each).
pub fn start(config: &Config, cp: Arc<dyn ControlPlane>, pod_cidrs: &[String]) -> Result<Started> {
    crate::proxy::kernel_settings("network policy");
    let guard = config
        .network_policy_guard
        .unwrap_or_else(|| config.enabled("pods"));
    let nft = Arc::new(
        hostnet::nftables::NfTablesSocket::open().context("network policy: open nf_tables")?,
    );
    let mut engines = Vec::new();
    for pod_cidr in pod_cidrs {
        let cidr: IpNet = pod_cidr
            .parse()
            .with_context(|| format!("network policy: pod CIDR {pod_cidr:?} is not a CIDR"))?;
        let node = netpol::NodeConfig {
            node_name: config.node_name.clone(),
            family: netpol::IpFamily::of(cidr.network()),
            guard_cidr: guard.then_some(cidr),
        };
        tracing::info!(guard, pod_cidr = %cidr, "network policy: starting");
        engines.push(netpol::Engine::new(nft.clone(), node));
    }
    let metrics = Arc::new(netpol::Metrics::new());
    let shared = netpol::Shared::new(engines, Arc::clone(&metrics));
    let cfg = netpol::Config::default();
    let gate = netpol::Gate::new(Arc::clone(&shared), &cfg);
    let task = tokio::spawn(crate::proxy::supervise("network policy", move || {
        netpol::run(Arc::clone(&cp), Arc::clone(&shared), cfg.clone())
    }));
    Ok(Started {
        task,
        gate: Arc::new(KubeletGate(gate)),
        metrics,
    })
}

/// Removes tables `ip knode-policy` and `ip6 knode-policy` if a previous
/// run left them (the part is disabled now). Failures are logged.
pub fn remove_table() {
    let removed = hostnet::nftables::NfTablesSocket::open()
        .map_err(netpol::Error::from)
        .and_then(|nft| netpol::cleanup(&nft));
    match removed {
        Ok(true) => tracing::info!("network policy disabled: removed table knode-policy"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "network policy disabled: remove table knode-policy")
        }
    }
}

struct KubeletGate(netpol::Gate);

impl NetworkGate for KubeletGate {
    fn pod_networked(&self, pod: &Pod, ips: &[String]) -> Result<()> {
        Ok(self.0.pod_networked(pod, ips)?)
    }
}
