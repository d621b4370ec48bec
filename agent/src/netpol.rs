//! NetworkPolicy inside the agent: the kernel settings it needs, the
//! policy controller (restarted with a backoff when it stops), and the
//! gate the kubelet calls between a pod's CNI ADD and its first container.
//! With `--disable network-policy` the table is removed, so a node that
//! turns enforcement off keeps no stale isolation (or guard).

use std::sync::Arc;

use anyhow::{Context, Result};
use controlplane::ControlPlane;
use ipnet::Ipv4Net;
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

/// Starts enforcement for this node, whose pods live in `pod_cidr`.
pub fn start(config: &Config, cp: Arc<dyn ControlPlane>, pod_cidr: &str) -> Result<Started> {
    crate::proxy::kernel_settings("network policy");
    let cidr: Ipv4Net = pod_cidr
        .parse()
        .with_context(|| format!("network policy: pod CIDR {pod_cidr:?} is not an IPv4 CIDR"))?;
    let guard = config
        .network_policy_guard
        .unwrap_or_else(|| config.enabled("pods"));
    let node = netpol::NodeConfig {
        node_name: config.node_name.clone(),
        guard_cidr: guard.then_some(cidr),
    };
    let nft =
        hostnet::nftables::NfTablesSocket::open().context("network policy: open nf_tables")?;
    let metrics = Arc::new(netpol::Metrics::new());
    let shared = netpol::Shared::new(
        netpol::Engine::new(Arc::new(nft), node),
        Arc::clone(&metrics),
    );
    let cfg = netpol::Config::default();
    let gate = netpol::Gate::new(Arc::clone(&shared), &cfg);
    tracing::info!(guard, pod_cidr = %cidr, "network policy: starting");
    let task = tokio::spawn(crate::proxy::supervise("network policy", move || {
        netpol::run(Arc::clone(&cp), Arc::clone(&shared), cfg.clone())
    }));
    Ok(Started {
        task,
        gate: Arc::new(KubeletGate(gate)),
        metrics,
    })
}

/// Removes table `ip knode-policy` if a previous run left it (the part
/// is disabled now). Failures are logged.
pub fn remove_table() {
    let removed = hostnet::nftables::NfTablesSocket::open()
        .map_err(netpol::Error::from)
        .and_then(|nft| netpol::cleanup(&nft));
    match removed {
        Ok(true) => tracing::info!("network policy disabled: removed table ip knode-policy"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "network policy disabled: remove table ip knode-policy")
        }
    }
}

struct KubeletGate(netpol::Gate);

impl NetworkGate for KubeletGate {
    fn pod_networked(&self, pod: &Pod, ip: &str) -> Result<()> {
        Ok(self.0.pod_networked(pod, ip)?)
    }
}
