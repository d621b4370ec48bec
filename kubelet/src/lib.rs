//! The node's kubelet: the pod manager and one worker per pod (sandbox,
//! volumes, containers, restart back-off, status), the CNI caller, the
//! container log writer and reader, and the Node object with its heartbeat.
//! It drives containerd through `runtime` and the cluster through
//! `controlplane`; it reads no config file and parses no flags.

pub mod cni;
pub use controlplane::events;
pub mod hostport;
pub mod logs;
pub mod node;
pub mod pods;

use std::net::IpAddr;
use std::path::PathBuf;

/// The kubelet's node-local settings: where it keeps pod state, files,
/// logs and network namespaces. The `knode` binary fills it from its
/// config file and flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pod volumes (emptyDir, ConfigMap, Secret) live under here.
    pub data_dir: PathBuf,
    /// Per-pod files (hosts, resolv.conf, hostname) live under here.
    pub run_dir: PathBuf,
    /// Container logs (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    pub log_dir: PathBuf,
    /// Where pod network namespaces are pinned (`knode-<uid>`).
    pub netns_dir: PathBuf,
    /// Static pod manifests.
    pub pod_manifest_path: PathBuf,
    /// Cluster DNS for pods' resolv.conf by `dnsPolicy`; `None` (the
    /// agent's DNS turned off) gives every pod the host's resolvers.
    pub dns: Option<ClusterDns>,
    /// Bind pending pods that select this node to it, first come first
    /// served: only where no scheduler runs (the agent's controllers are
    /// turned off), as before the scheduler existed.
    pub bind_pending: bool,
    /// Containers may run `privileged: true` (`allow-privileged`).
    pub allow_privileged: bool,
    /// Container log rotation (`container-log-max-size`,
    /// `container-log-max-files`); `None` never rotates.
    pub log_rotation: Option<logs::writer::Rotation>,
}

impl Config {
    /// What pods may ask of this node beyond the defaults: privileged
    /// containers if allowed, Localhost seccomp profiles from
    /// `<data_dir>/seccomp` (kubelet's `<root-dir>/seccomp`).
    pub fn node_policy(&self) -> runtime::spec::NodePolicy {
        runtime::spec::NodePolicy {
            allow_privileged: self.allow_privileged,
            seccomp_root: Some(self.data_dir.join("seccomp")),
        }
    }
}

/// What pods need to know of the cluster DNS (kubelet's `clusterDNS`,
/// `clusterDomain`, `resolvConf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// The nameservers of ClusterFirst pods.
    pub servers: Vec<IpAddr>,
    /// The cluster domain, e.g. `cluster.local`.
    pub domain: String,
    /// The host's resolver file pods' files are built from; empty for none.
    pub resolv_conf: PathBuf,
}
