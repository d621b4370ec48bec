//! Configuration: `/etc/knode/config.yaml` with every key also a flag;
//! flags win. Keys are the flag names (`control-plane`, `data-dir`, ...).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/knode/config.yaml";

/// Everything the agent and the CLI can be told, after merging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub control_plane: String,
    pub data_dir: PathBuf,
    pub run_dir: PathBuf,
    pub node_name: String,
    pub service_cidr: String,
    pub service_node_port_range: String,
    pub cluster_cidr: String,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub log_dir: PathBuf,
    pub netns_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_cache_dir: PathBuf,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    pub pod_manifest_path: PathBuf,
    pub registry_config: PathBuf,
    /// Registries reached over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// This node's address (default: the overlay's public IP, else the
    /// first global IPv4 address).
    pub node_ip: Option<String>,
    /// Overlay backend proposed for a new cluster: `vxlan` or `host-gw`.
    pub backend: String,
    /// The underlay interface (name or address).
    pub iface: Option<String>,
    /// The node's public IP on the underlay.
    pub public_ip: Option<String>,
    /// The node's IPv6 underlay address (dual-stack; default: `iface`'s first global one).
    pub public_ipv6: Option<String>,
    /// flannel's subnet file.
    pub subnet_file: PathBuf,
    pub subnet_lease_ttl: Duration,
    pub subnet_lease_renew_margin: Duration,
    pub overlay_resync_period: Duration,
    /// Masquerade pod traffic that leaves the cluster network.
    pub ip_masq: bool,
    /// Parts of the agent turned off ([`PARTS`]).
    pub disable: Vec<String>,
    /// At most one proxy sync per this period (0 for tests).
    pub proxy_min_sync_period: Duration,
    /// /healthz fails when a proxy change waited twice this.
    pub proxy_sync_period: Duration,
    /// A full proxy sync at least this often.
    pub proxy_full_sync_period: Duration,
    /// Where the proxy serves `/metrics` and `/healthz`; empty: nowhere.
    pub metrics_bind_address: String,
    /// Addresses NodePorts answer on; empty: every local address.
    pub nodeport_addresses: Vec<String>,
    /// Masquerade all traffic to ClusterIPs.
    pub masquerade_all: bool,
    /// The heartbeat Lease's lifetime; renewed every quarter of it.
    pub node_lease_duration: Duration,
    /// The controller manager's leader Lease lifetime.
    pub leader_elect_lease_duration: Duration,
    /// Where the Kubernetes API listens over HTTPS (`api-bind-address`,
    /// `api-port`; port 0 turns it off).
    pub api_bind_address: String,
    pub api_port: u16,
    /// Where the node API (the kubelet port: pods' logs, exec, attach and
    /// port-forward for the API servers) listens (`kubelet-bind-address`,
    /// `kubelet-port`; port 0 turns it off).
    pub kubelet_bind_address: String,
    pub kubelet_port: u16,
    /// Where the admin kubeconfig is written (mode 0600).
    pub write_kubeconfig: PathBuf,
    /// kube-apiserver's static token CSV (`token,user,uid,"groups"`).
    pub token_auth_file: Option<PathBuf>,
    /// The cluster token: on etcd, the key the shared CA is sealed with
    /// (none: `<data-dir>/token`, written by the agent that made the CA).
    pub token: Option<String>,
    /// Answer NodePorts on 127.0.0.1 too (sets route_localnet).
    pub localhost_nodeports: bool,
    /// Containers may run `privileged: true`.
    pub allow_privileged: bool,
    /// A container log file is rotated before it grows past this (bytes).
    pub container_log_max_size: u64,
    /// At most this many log files per container run, the live one included.
    pub container_log_max_files: u32,
    /// Drop traffic of pod addresses NetworkPolicy has not programmed yet
    /// (`None`: when this agent runs the node's pods, whose kubelet
    /// reports each new address; see docs/network-policy.md).
    pub network_policy_guard: Option<bool>,
    /// The cluster DNS address: kube-dns's ClusterIP, served on every node.
    pub cluster_dns: Ipv4Addr,
    /// The cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// The host's resolver file: DNS upstreams and host-DNS pods' file
    /// (empty: none).
    pub resolv_conf: PathBuf,
    /// The node-local DNS address (NodeLocal DNSCache's 169.254.20.10).
    pub node_local_dns: Ipv4Addr,
    /// `nftables` or `iptables`; `None`: nftables where the kernel has it.
    pub proxy_mode: Option<proxy::ProxyMode>,
}

/// `cluster-cidr` split into its IPv4 and (dual-stack) IPv6 networks;
/// the error names the key.
pub fn cluster_cidrs(value: &str) -> Result<(ipnet::Ipv4Net, Option<ipnet::Ipv6Net>)> {
    overlay::config::split_cluster_cidr(value).map_err(|e| match e {
        overlay::Error::Config(msg) => anyhow::anyhow!(msg),
        other => anyhow::anyhow!(other),
    })
}

impl Config {
    /// The kubelet's share of the config: where pods keep their state.
    pub fn kubelet(&self) -> kubelet::Config {
        kubelet::Config {
            data_dir: self.data_dir.clone(),
            run_dir: self.run_dir.clone(),
            log_dir: self.log_dir.clone(),
            netns_dir: self.netns_dir.clone(),
            pod_manifest_path: self.pod_manifest_path.clone(),
            dns: self.enabled("dns").then(|| kubelet::ClusterDns {
                servers: vec![IpAddr::V4(self.cluster_dns)],
                domain: self.cluster_domain.clone(),
                resolv_conf: self.resolv_conf.clone(),
            }),
            bind_pending: !self.enabled("controllers"),
            allow_privileged: self.allow_privileged,
            log_rotation: Some(kubelet::logs::writer::Rotation {
                max_size: self.container_log_max_size,
                max_files: self.container_log_max_files,
            }),
        }
    }
}

/// The parts of the agent `--disable` can turn off.
pub const PARTS: [&str; 6] = [
    "pods",
    "overlay",
    "proxy",
    "dns",
    "network-policy",
    "controllers",
];

impl Default for Config {
    fn default() -> Self {
        Config {
            control_plane: "embedded".into(),
            data_dir: "/var/lib/knode".into(),
            run_dir: "/run/knode".into(),
            node_name: hostname(),
            service_cidr: "10.96.0.0/12".into(),
            service_node_port_range: "30000-32767".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            log_dir: "/var/log/pods".into(),
            netns_dir: "/run/netns".into(),
            cni_bin_dir: "/opt/cni/bin".into(),
            cni_conf_dir: "/etc/cni/net.d".into(),
            cni_cache_dir: "/var/lib/cni".into(),
            containerd_socket: "/run/containerd/containerd.sock".into(),
            containerd_namespace: "knode".into(),
            pod_manifest_path: "/etc/knode/manifests".into(),
            registry_config: "/etc/knode/registries.json".into(),
            insecure_registries: Vec::new(),
            node_ip: None,
            backend: "vxlan".into(),
            iface: None,
            public_ip: None,
            public_ipv6: None,
            subnet_file: "/run/flannel/subnet.env".into(),
            subnet_lease_ttl: Duration::from_secs(24 * 3600),
            subnet_lease_renew_margin: Duration::from_secs(3600),
            overlay_resync_period: Duration::from_secs(5),
            ip_masq: true,
            disable: Vec::new(),
            proxy_min_sync_period: Duration::from_secs(1),
            proxy_sync_period: Duration::from_secs(30),
            // kube-proxy's FullSyncPeriod.
            proxy_full_sync_period: Duration::from_secs(3600),
            metrics_bind_address: "127.0.0.1:10249".into(),
            nodeport_addresses: Vec::new(),
            masquerade_all: false,
            localhost_nodeports: false,
            allow_privileged: false,
            container_log_max_size: 10 << 20,
            container_log_max_files: 5,
            network_policy_guard: None,
            proxy_mode: None,
            // kubelet's nodeLeaseDurationSeconds.
            node_lease_duration: Duration::from_secs(40),
            // kube-controller-manager's --leader-elect-lease-duration.
            leader_elect_lease_duration: Duration::from_secs(15),
            cluster_dns: Ipv4Addr::new(10, 96, 0, 10),
            cluster_domain: "cluster.local".into(),
            resolv_conf: "/etc/resolv.conf".into(),
            node_local_dns: Ipv4Addr::new(169, 254, 20, 10),
            api_bind_address: "127.0.0.1".into(),
            api_port: 6443,
            kubelet_bind_address: "127.0.0.1".into(),
            kubelet_port: 10250,
            write_kubeconfig: "/etc/knode/knode.yaml".into(),
            token_auth_file: None,
            token: None,
        }
    }
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct File {
    pub control_plane: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub run_dir: Option<PathBuf>,
    pub node_name: Option<String>,
    pub service_cidr: Option<String>,
    pub service_node_port_range: Option<String>,
    pub cluster_cidr: Option<String>,
    pub etcd_cafile: Option<PathBuf>,
    pub etcd_certfile: Option<PathBuf>,
    pub etcd_keyfile: Option<PathBuf>,
    pub log_dir: Option<PathBuf>,
    pub netns_dir: Option<PathBuf>,
    pub cni_bin_dir: Option<PathBuf>,
    pub cni_conf_dir: Option<PathBuf>,
    pub cni_cache_dir: Option<PathBuf>,
    pub containerd_socket: Option<PathBuf>,
    pub containerd_namespace: Option<String>,
    pub pod_manifest_path: Option<PathBuf>,
    pub registry_config: Option<PathBuf>,
    pub insecure_registries: Option<Vec<String>>,
    pub node_ip: Option<String>,
    pub backend: Option<String>,
    pub iface: Option<String>,
    pub public_ip: Option<String>,
    pub public_ipv6: Option<String>,
    pub subnet_file: Option<PathBuf>,
    /// A duration such as `24h`, `90s` or `1h30m`.
    pub subnet_lease_ttl: Option<String>,
    pub subnet_lease_renew_margin: Option<String>,
    pub overlay_resync_period: Option<String>,
    pub ip_masq: Option<bool>,
    pub disable: Option<Vec<String>>,
    pub proxy_min_sync_period: Option<String>,
    pub proxy_sync_period: Option<String>,
    pub proxy_full_sync_period: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub nodeport_addresses: Option<Vec<String>>,
    pub masquerade_all: Option<bool>,
    pub localhost_nodeports: Option<bool>,
    pub allow_privileged: Option<bool>,
    /// A size such as `10Mi`.
    pub container_log_max_size: Option<String>,
    pub container_log_max_files: Option<u32>,
    pub network_policy_guard: Option<bool>,
    pub node_lease_duration: Option<String>,
    pub leader_elect_lease_duration: Option<String>,
    pub cluster_dns: Option<String>,
    pub cluster_domain: Option<String>,
    pub resolv_conf: Option<PathBuf>,
    pub node_local_dns: Option<String>,
    pub proxy_mode: Option<String>,
    pub api_bind_address: Option<String>,
    pub api_port: Option<u16>,
    pub kubelet_bind_address: Option<String>,
    pub kubelet_port: Option<u16>,
    pub write_kubeconfig: Option<PathBuf>,
    pub token_auth_file: Option<PathBuf>,
    pub token: Option<String>,
}

impl File {
    /// Reads `path`. A missing file is an empty config unless `required`
    /// (the user named it with `--config`).
    pub fn load(path: &Path, required: bool) -> Result<File> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(File::default())
            }
            Err(e) => return Err(e).with_context(|| format!("read config {}", path.display())),
        };
        if text.trim().is_empty() {
            return Ok(File::default());
        }
        serde_yaml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }
}

impl Config {
    /// Defaults, overlaid by the file, overlaid by `flags`.
    pub fn merge(file: File, flags: File) -> Result<Config> {
        let d = Config::default();
        let c = Config {
            control_plane: flags
                .control_plane
                .or(file.control_plane)
                .unwrap_or(d.control_plane),
            data_dir: flags.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            run_dir: flags.run_dir.or(file.run_dir).unwrap_or(d.run_dir),
            node_name: flags.node_name.or(file.node_name).unwrap_or(d.node_name),
            service_cidr: flags
                .service_cidr
                .or(file.service_cidr)
                .unwrap_or(d.service_cidr),
            service_node_port_range: flags
                .service_node_port_range
                .or(file.service_node_port_range)
                .unwrap_or(d.service_node_port_range),
            cluster_cidr: flags
                .cluster_cidr
                .or(file.cluster_cidr)
                .unwrap_or(d.cluster_cidr),
            etcd_cafile: flags.etcd_cafile.or(file.etcd_cafile),
            etcd_certfile: flags.etcd_certfile.or(file.etcd_certfile),
            etcd_keyfile: flags.etcd_keyfile.or(file.etcd_keyfile),
            log_dir: flags.log_dir.or(file.log_dir).unwrap_or(d.log_dir),
            netns_dir: flags.netns_dir.or(file.netns_dir).unwrap_or(d.netns_dir),
            cni_bin_dir: flags
                .cni_bin_dir
                .or(file.cni_bin_dir)
                .unwrap_or(d.cni_bin_dir),
            cni_conf_dir: flags
                .cni_conf_dir
                .or(file.cni_conf_dir)
                .unwrap_or(d.cni_conf_dir),
            cni_cache_dir: flags
                .cni_cache_dir
                .or(file.cni_cache_dir)
                .unwrap_or(d.cni_cache_dir),
            containerd_socket: flags
                .containerd_socket
                .or(file.containerd_socket)
                .unwrap_or(d.containerd_socket),
            containerd_namespace: flags
                .containerd_namespace
                .or(file.containerd_namespace)
                .unwrap_or(d.containerd_namespace),
            pod_manifest_path: flags
                .pod_manifest_path
                .or(file.pod_manifest_path)
                .unwrap_or(d.pod_manifest_path),
            registry_config: flags
                .registry_config
                .or(file.registry_config)
                .unwrap_or(d.registry_config),
            insecure_registries: flags
                .insecure_registries
                .or(file.insecure_registries)
                .unwrap_or(d.insecure_registries),
            node_ip: flags.node_ip.or(file.node_ip),
            backend: flags.backend.or(file.backend).unwrap_or(d.backend),
            iface: flags.iface.or(file.iface),
            public_ip: flags.public_ip.or(file.public_ip),
            public_ipv6: flags.public_ipv6.or(file.public_ipv6),
            subnet_file: flags
                .subnet_file
                .or(file.subnet_file)
                .unwrap_or(d.subnet_file),
            subnet_lease_ttl: duration(
                "subnet-lease-ttl",
                flags.subnet_lease_ttl.or(file.subnet_lease_ttl),
                d.subnet_lease_ttl,
            )?,
            subnet_lease_renew_margin: duration(
                "subnet-lease-renew-margin",
                flags
                    .subnet_lease_renew_margin
                    .or(file.subnet_lease_renew_margin),
                d.subnet_lease_renew_margin,
            )?,
            overlay_resync_period: duration(
                "overlay-resync-period",
                flags.overlay_resync_period.or(file.overlay_resync_period),
                d.overlay_resync_period,
            )?,
            ip_masq: flags.ip_masq.or(file.ip_masq).unwrap_or(d.ip_masq),
            disable: flags.disable.or(file.disable).unwrap_or(d.disable),
            proxy_min_sync_period: duration(
                "proxy-min-sync-period",
                flags.proxy_min_sync_period.or(file.proxy_min_sync_period),
                d.proxy_min_sync_period,
            )?,
            proxy_sync_period: duration(
                "proxy-sync-period",
                flags.proxy_sync_period.or(file.proxy_sync_period),
                d.proxy_sync_period,
            )?,
            proxy_full_sync_period: duration(
                "proxy-full-sync-period",
                flags.proxy_full_sync_period.or(file.proxy_full_sync_period),
                d.proxy_full_sync_period,
            )?,
            metrics_bind_address: flags
                .metrics_bind_address
                .or(file.metrics_bind_address)
                .unwrap_or(d.metrics_bind_address),
            nodeport_addresses: flags
                .nodeport_addresses
                .or(file.nodeport_addresses)
                .unwrap_or(d.nodeport_addresses),
            masquerade_all: flags
                .masquerade_all
                .or(file.masquerade_all)
                .unwrap_or(d.masquerade_all),
            localhost_nodeports: flags
                .localhost_nodeports
                .or(file.localhost_nodeports)
                .unwrap_or(d.localhost_nodeports),
            allow_privileged: flags
                .allow_privileged
                .or(file.allow_privileged)
                .unwrap_or(d.allow_privileged),
            container_log_max_size: match flags
                .container_log_max_size
                .or(file.container_log_max_size)
            {
                None => d.container_log_max_size,
                Some(s) => controlplane::quantity::Quantity::parse(&s)
                    .ok()
                    .and_then(|q| q.value())
                    .and_then(|v| u64::try_from(v).ok())
                    .filter(|v| *v > 0)
                    .with_context(|| {
                        format!("container-log-max-size: {s:?} is not a size above 0 like 10Mi")
                    })?,
            },
            container_log_max_files: flags
                .container_log_max_files
                .or(file.container_log_max_files)
                .unwrap_or(d.container_log_max_files),
            network_policy_guard: flags.network_policy_guard.or(file.network_policy_guard),
            proxy_mode: match flags.proxy_mode.or(file.proxy_mode) {
                None => d.proxy_mode,
                Some(m) => Some(proxy::ProxyMode::parse(&m).ok_or_else(|| {
                    anyhow::anyhow!("proxy-mode: {m:?} is not nftables or iptables")
                })?),
            },
            node_lease_duration: duration(
                "node-lease-duration",
                flags.node_lease_duration.or(file.node_lease_duration),
                d.node_lease_duration,
            )?,
            leader_elect_lease_duration: duration(
                "leader-elect-lease-duration",
                flags
                    .leader_elect_lease_duration
                    .or(file.leader_elect_lease_duration),
                d.leader_elect_lease_duration,
            )?,
            cluster_dns: ipv4(
                "cluster-dns",
                flags.cluster_dns.or(file.cluster_dns),
                d.cluster_dns,
            )?,
            cluster_domain: flags
                .cluster_domain
                .or(file.cluster_domain)
                .map(|d| d.trim_end_matches('.').to_ascii_lowercase())
                .unwrap_or(d.cluster_domain),
            resolv_conf: flags
                .resolv_conf
                .or(file.resolv_conf)
                .unwrap_or(d.resolv_conf),
            node_local_dns: ipv4(
                "node-local-dns",
                flags.node_local_dns.or(file.node_local_dns),
                d.node_local_dns,
            )?,
            api_bind_address: flags
                .api_bind_address
                .or(file.api_bind_address)
                .unwrap_or(d.api_bind_address),
            api_port: flags.api_port.or(file.api_port).unwrap_or(d.api_port),
            kubelet_bind_address: flags
                .kubelet_bind_address
                .or(file.kubelet_bind_address)
                .unwrap_or(d.kubelet_bind_address),
            kubelet_port: flags
                .kubelet_port
                .or(file.kubelet_port)
                .unwrap_or(d.kubelet_port),
            write_kubeconfig: flags
                .write_kubeconfig
                .or(file.write_kubeconfig)
                .unwrap_or(d.write_kubeconfig),
            token_auth_file: flags.token_auth_file.or(file.token_auth_file),
            token: flags.token.or(file.token).filter(|t| !t.is_empty()),
        };
        if !is_domain(&c.cluster_domain) {
            bail!(
                "cluster-domain: {:?} is not a DNS domain like cluster.local",
                c.cluster_domain
            );
        }
        if c.node_local_dns == c.cluster_dns {
            bail!(
                "node-local-dns: must differ from cluster-dns ({})",
                c.cluster_dns
            );
        }
        for (key, ip) in [
            ("cluster-dns", c.cluster_dns),
            ("node-local-dns", c.node_local_dns),
        ] {
            if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
                bail!("{key}: {ip} cannot be a node's DNS address (unspecified, loopback, multicast or broadcast)");
            }
        }
        if c.api_bind_address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "api-bind-address: {:?} is not an IP address",
                c.api_bind_address
            );
        }
        if c.kubelet_bind_address.parse::<std::net::IpAddr>().is_err() {
            bail!(
                "kubelet-bind-address: {:?} is not an IP address",
                c.kubelet_bind_address
            );
        }
        if !c.metrics_bind_address.is_empty()
            && c.metrics_bind_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            bail!(
                "metrics-bind-address: {:?} is not an address like 127.0.0.1:10249 (empty turns it off)",
                c.metrics_bind_address
            );
        }
        for a in &c.nodeport_addresses {
            if a.parse::<std::net::Ipv4Addr>().is_err() {
                bail!("nodeport-addresses: {a:?} is not an IPv4 address");
            }
        }
        let (_, v6) = cluster_cidrs(&c.cluster_cidr)?;
        if v6.is_some() && c.enabled("proxy") && c.proxy_mode == Some(proxy::ProxyMode::Iptables) {
            bail!(
                "proxy-mode: iptables programs IPv4 Services only and cluster-cidr {:?} is dual-stack: use proxy-mode nftables (the default) for IPv6 Services",
                c.cluster_cidr
            );
        }
        // One CIDR or an IPv4,IPv6 pair, refused at start with the reason.
        if let Err(e) =
            controlplane::registry::Allocators::parse(&c.service_cidr, &c.service_node_port_range)
        {
            match e {
                controlplane::Error::BadRequest(why) => bail!("{why}"),
                other => return Err(other.into()),
            }
        }
        if c.container_log_max_files < 2 {
            bail!(
                "container-log-max-files: {} must be at least 2 (the live file and one rotated), as kubelet's",
                c.container_log_max_files
            );
        }
        if c.node_lease_duration < Duration::from_secs(4) {
            bail!("node-lease-duration: at least 4s (it is renewed every quarter of it)");
        }
        if c.leader_elect_lease_duration < Duration::from_secs(2) {
            bail!("leader-elect-lease-duration: at least 2s (the leader renews every 2/15 of it)");
        }
        if c.proxy_sync_period.is_zero() {
            bail!("proxy-sync-period: must be more than 0 (health allows a change to wait twice this)");
        }
        if c.node_name.is_empty() {
            bail!("node-name: required (the hostname is empty)");
        }
        for part in &c.disable {
            if !PARTS.contains(&part.as_str()) {
                bail!(
                    "disable: {part:?} is not a part of the agent (parts: {})",
                    PARTS.join(", ")
                );
            }
        }
        if !["vxlan", "host-gw", "udp"].contains(&c.backend.as_str()) {
            bail!(
                "backend: {:?} is not a backend (vxlan, host-gw or udp)",
                c.backend
            );
        }
        if let Some(ip) = &c.public_ip {
            if ip.parse::<std::net::Ipv4Addr>().is_err() {
                bail!("public-ip: {ip:?} is not an IPv4 address");
            }
        }
        if let Some(ip) = &c.public_ipv6 {
            if ip.parse::<std::net::Ipv6Addr>().is_err() {
                bail!("public-ipv6: {ip:?} is not an IPv6 address");
            }
        }
        Ok(c)
    }

    /// The control-plane backend, with its TLS files.
    pub fn backend(&self) -> Result<controlplane::backend::Backend> {
        let b: controlplane::backend::Backend = self.control_plane.parse()?;
        Ok(b.with_tls(controlplane::storage::etcd::TlsFiles {
            ca: self.etcd_cafile.clone(),
            cert: self.etcd_certfile.clone(),
            key: self.etcd_keyfile.clone(),
        }))
    }

    /// The control plane's allocators: `service-cidr`, the NodePort
    /// range and, with DNS on, `cluster-dns` kept for `kube-system/kube-dns`
    /// (when it lies outside the service CIDR that Service cannot exist:
    /// said at start, and DNS still answers on the address).
    pub fn allocators(&self) -> Result<controlplane::registry::Allocators> {
        let alloc = controlplane::registry::Allocators::parse(
            &self.service_cidr,
            &self.service_node_port_range,
        )?;
        if !self.enabled("dns") {
            return Ok(alloc);
        }
        match alloc
            .clone()
            .with_dns_service_ip(IpAddr::V4(self.cluster_dns))
        {
            Ok(a) => Ok(a),
            Err(e) => {
                tracing::warn!("{e}: no kube-system/kube-dns Service will be kept");
                Ok(alloc)
            }
        }
    }

    /// Whether `part` ([`PARTS`]) runs.
    pub fn enabled(&self, part: &str) -> bool {
        !self.disable.iter().any(|p| p == part)
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        controlplane::rest::server::socket_path(&self.run_dir)
    }
}

/// A configured IPv4 address, or the default; the error names the key.
fn ipv4(key: &str, v: Option<String>, default: Ipv4Addr) -> Result<Ipv4Addr> {
    match v {
        None => Ok(default),
        Some(s) => s
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}: {s:?} is not an IPv4 address")),
    }
}

/// A DNS domain: dot-separated labels of letters, digits and `-`, each 1
/// to 63 characters, 253 in all.
fn is_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A configured duration, or the default; the error names the key.
fn duration(key: &str, v: Option<String>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).with_context(|| format!("{key}: {s:?}")),
    }
}

/// `500ms`, `90s`, `5m`, `24h`, or a sum such as `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        bail!("empty duration (e.g. 30s, 5m, 24h)");
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            bail!("expected a number (e.g. 30s, 5m, 24h)");
        }
        let n: u64 = rest[..digits].parse().context("number too large")?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "" => bail!("a unit is required (ms, s, m or h)"),
            u => bail!("unknown unit {u:?} (ms, s, m or h)"),
        };
        total += unit;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the file takes, from serde's own list of known fields.
    fn known_keys() -> Vec<String> {
        let e = serde_yaml::from_str::<File>("no-such-key: 1")
            .unwrap_err()
            .to_string();
        let list = e
            .split("expected one of ")
            .nth(1)
            .expect("serde lists the fields");
        list.split(", ")
            .map(|k| {
                k.trim_matches(|c: char| c == '`' || c.is_whitespace())
                    .to_string()
            })
            .map(|k| k.split('`').next().unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn proxy_and_network_keys_are_checked_before_anything_starts() {
        for (yaml, want) in [
            (
                "metrics-bind-address: localhost",
                "metrics-bind-address: \"localhost\"",
            ),
            (
                "nodeport-addresses: [10.0.0.1, nope]",
                "nodeport-addresses: \"nope\"",
            ),
            ("cluster-cidr: 10.244.0.0", "cluster-cidr: \"10.244.0.0\""),
            (
                "node-lease-duration: 1s",
                "node-lease-duration: at least 4s",
            ),
            (
                "container-log-max-size: lots",
                "container-log-max-size: \"lots\" is not a size",
            ),
            (
                "container-log-max-files: 1",
                "container-log-max-files: 1 must be at least 2",
            ),
            (
                "proxy-sync-period: 0s",
                "proxy-sync-period: must be more than 0",
            ),
            (
                "proxy-mode: iptables\ncluster-cidr: 10.244.0.0/16,fd00:10:244::/56",
                "proxy-mode: iptables programs IPv4 Services only",
            ),
            (
                "service-cidr: 10.96.0.0/12,10.97.0.0/16",
                "service-cidr \"10.96.0.0/12,10.97.0.0/16\": a dual-stack range needs one IPv4 and one IPv6",
            ),
        ] {
            let file: File = serde_yaml::from_str(yaml).unwrap();
            let e = Config::merge(file, File::default())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
        let ok: File =
            serde_yaml::from_str("metrics-bind-address: \"\"\nnodeport-addresses: [192.0.2.1]")
                .unwrap();
        assert!(Config::merge(ok, File::default()).is_ok());
    }

    #[test]
    fn the_shipped_config_and_the_reference_name_every_key_with_valid_defaults() {
        let shipped = include_str!("../../deploy/config.yaml");
        let reference = include_str!("../../docs/configuration.md");
        let mut in_file = Vec::new();
        for line in shipped.lines() {
            let Some((key, value)) = line
                .strip_prefix("# ")
                .and_then(|l| l.split_once(": "))
                .filter(|(k, _)| {
                    !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                })
            else {
                continue;
            };
            in_file.push(key.to_string());
            let value = value.split("  #").next().unwrap_or_default().trim();
            if value.starts_with('<') {
                continue;
            }
            // Each shown value is one the agent accepts.
            let one: File = serde_yaml::from_str(&format!("{key}: {value}"))
                .unwrap_or_else(|e| panic!("deploy/config.yaml {key}: {e}"));
            Config::merge(one, File::default())
                .unwrap_or_else(|e| panic!("deploy/config.yaml {key}: {e:#}"));
        }
        let keys = known_keys();
        assert!(
            keys.len() >= 37 && keys.contains(&"node-lease-duration".to_string()),
            "{keys:?}"
        );
        for key in keys {
            assert!(in_file.contains(&key), "deploy/config.yaml lacks {key}");
            assert!(
                reference.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: File =
            serde_yaml::from_str("control-plane: etcd://127.0.0.1:2379\ndata-dir: /srv/k\n")
                .unwrap();
        let flags = File {
            data_dir: Some("/tmp/x".into()),
            ..File::default()
        };
        let c = Config::merge(file, flags).unwrap();
        assert_eq!(c.control_plane, "etcd://127.0.0.1:2379");
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.run_dir, PathBuf::from("/run/knode"));
        assert_eq!(c.socket(), PathBuf::from("/run/knode/knode.sock"));
    }

    #[test]
    fn overlay_keys_parse_and_bad_values_name_the_key() {
        let file: File = serde_yaml::from_str(
            "subnet-lease-ttl: 1h30m\nip-masq: false\ndisable: [pods]\nbackend: host-gw\n",
        )
        .unwrap();
        let c = Config::merge(file, File::default()).unwrap();
        assert_eq!(c.subnet_lease_ttl, Duration::from_secs(5400));
        assert_eq!(c.subnet_lease_renew_margin, Duration::from_secs(3600));
        assert!(!c.ip_masq && !c.enabled("pods") && c.enabled("overlay"));
        let bad = |f: File| format!("{:#}", Config::merge(f, File::default()).unwrap_err());
        let e = bad(File {
            subnet_lease_ttl: Some("10 parsecs".into()),
            ..File::default()
        });
        assert!(e.starts_with("subnet-lease-ttl: \"10 parsecs\""), "{e}");
        assert!(bad(File {
            disable: Some(vec!["kubelet".into()]),
            ..File::default()
        })
        .contains("disable: \"kubelet\" is not a part"));
        assert!(bad(File {
            backend: Some("ipip".into()),
            ..File::default()
        })
        .contains("backend: \"ipip\" is not a backend (vxlan, host-gw or udp)"));
        assert!(bad(File {
            public_ip: Some("eth0".into()),
            ..File::default()
        })
        .contains("public-ip"));
        assert!(bad(File {
            public_ipv6: Some("198.18.0.1".into()),
            ..File::default()
        })
        .contains("public-ipv6: \"198.18.0.1\" is not an IPv6 address"));
        for (cidr, want) in [
            (
                "10.244.0.0/16,10.1.0.0/16",
                "cluster-cidr: \"10.244.0.0/16,10.1.0.0/16\" has two IPv4 CIDRs",
            ),
            ("10.244.0.0/16,fd00::/56,fd01::/56", "has 3 CIDRs"),
            (
                "10.244.0.0/16,bogus",
                "cluster-cidr: \"bogus\" is not a CIDR",
            ),
        ] {
            let e = bad(File {
                cluster_cidr: Some(cidr.into()),
                ..File::default()
            });
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5").is_err() && parse_duration("h").is_err());
    }

    #[test]
    fn dns_keys_default_like_kubelet_and_bad_values_name_the_key() {
        let c = Config::merge(File::default(), File::default()).unwrap();
        assert_eq!(c.cluster_dns, Ipv4Addr::new(10, 96, 0, 10));
        assert_eq!(c.cluster_domain, "cluster.local");
        assert_eq!(c.resolv_conf, PathBuf::from("/etc/resolv.conf"));
        assert_eq!(c.node_local_dns, Ipv4Addr::new(169, 254, 20, 10));
        let k = c.kubelet().dns.expect("dns on by default");
        assert_eq!(k.servers, vec![IpAddr::from([10, 96, 0, 10])]);
        let off: File =
            serde_yaml::from_str("disable: [dns]\ncluster-domain: Corp.Example.\n").unwrap();
        let c = Config::merge(off, File::default()).unwrap();
        assert!(c.kubelet().dns.is_none() && !c.enabled("dns"));
        assert_eq!(c.cluster_domain, "corp.example");
        for (yaml, want) in [
            (
                "cluster-dns: 10.96.0",
                "cluster-dns: \"10.96.0\" is not an IPv4 address",
            ),
            ("cluster-dns: 127.0.0.1", "cluster-dns: 127.0.0.1 cannot be"),
            (
                "cluster-domain: bad_domain",
                "cluster-domain: \"bad_domain\"",
            ),
            ("node-local-dns: nope", "node-local-dns: \"nope\""),
            ("node-local-dns: 10.96.0.10", "node-local-dns: must differ"),
        ] {
            let file: File = serde_yaml::from_str(yaml).unwrap();
            let e = format!("{:#}", Config::merge(file, File::default()).unwrap_err());
            assert!(e.starts_with(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = serde_yaml::from_str::<File>("control-plain: embedded\n").unwrap_err();
        assert!(e.to_string().contains("control-plain"), "{e}");
    }

    #[test]
    fn a_named_config_must_exist() {
        let p = Path::new("/nonexistent/knode.yaml");
        assert!(File::load(p, false).is_ok());
        let e = File::load(p, true).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/knode.yaml"));
    }
}
