//! `knode agent`: opens the control plane and serves it on the API socket,
//! registers the node, leases its subnet (the overlay), programs Services
//! (the proxy) and runs its pods through containerd; each part can be
//! turned off with `--disable`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use controlplane::backend::{self, Backend};
use controlplane::rest::server;
use controlplane::ControlPlane;

use crate::config::Config;
use kubelet::cni;
use kubelet::node;
use kubelet::pods::context::Context as PodContext;
use kubelet::pods::probe::Prober;
use kubelet::pods::{manager, static_pods};
use overlay::Overlay;
use runtime::{image, Runtime};
use std::net::IpAddr;

/// Flags only the agent takes.
#[derive(Args)]
pub struct AgentArgs {
    /// This node's name (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// This node's IP (default: the source address of the default route,
    /// else the first global IPv4 address).
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<String>,
    /// This node's pod subnet when the overlay is disabled (default: the
    /// first /24 of the cluster CIDR); with the overlay, the lease decides.
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<String>,
    /// The cluster's pod network, proposed to the control plane by the
    /// first node (default 10.244.0.0/16).
    #[arg(long, value_name = "CIDR")]
    pub cluster_cidr: Option<String>,
    /// Overlay backend proposed with it: `vxlan` (default), `host-gw` or `udp`.
    #[arg(long, value_name = "TYPE")]
    pub backend: Option<String>,
    /// Underlay interface, by name or address (default: the default route's).
    #[arg(long, value_name = "NAME|IP")]
    pub iface: Option<String>,
    /// This node's public IP on the underlay (must be on the interface).
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<String>,
    /// This node's IPv6 underlay address, for a dual-stack cluster CIDR
    /// (default: the interface's first global IPv6 address, if any).
    #[arg(long, value_name = "IPV6")]
    pub public_ipv6: Option<String>,
    /// flannel's subnet file (default /run/flannel/subnet.env).
    #[arg(long, value_name = "FILE")]
    pub subnet_file: Option<std::path::PathBuf>,
    /// Subnet lease lifetime without renewal (default 24h).
    #[arg(long, value_name = "DURATION")]
    pub subnet_lease_ttl: Option<String>,
    /// Renew the subnet lease this long before it expires (default 1h).
    #[arg(long, value_name = "DURATION")]
    pub subnet_lease_renew_margin: Option<String>,
    /// How often overlay routes, entries and rules are checked (default 5s).
    #[arg(long, value_name = "DURATION")]
    pub overlay_resync_period: Option<String>,
    /// Masquerade pod traffic leaving the cluster network (default true).
    #[arg(long, value_name = "BOOL")]
    pub ip_masq: Option<bool>,
    /// Parts of the agent to turn off, comma-separated: pods, overlay,
    /// proxy, dns, network-policy, controllers.
    #[arg(long, value_name = "PARTS", value_delimiter = ',')]
    pub disable: Vec<String>,
    /// At most one proxy sync per this period (default 1s; 0 for tests).
    #[arg(long, value_name = "DURATION")]
    pub proxy_min_sync_period: Option<String>,
    /// /healthz fails when a proxy change waited twice this (default 30s).
    #[arg(long, value_name = "DURATION")]
    pub proxy_sync_period: Option<String>,
    /// A full proxy sync (every chain rewritten, stale ones removed) at
    /// least this often (default 1h).
    #[arg(long, value_name = "DURATION")]
    pub proxy_full_sync_period: Option<String>,
    /// Where the proxy serves /metrics and /healthz (default
    /// 127.0.0.1:10249; empty turns it off).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_bind_address: Option<String>,
    /// Addresses NodePorts answer on, comma-separated (default: every
    /// local address).
    #[arg(long, value_name = "IPS", value_delimiter = ',')]
    pub nodeport_addresses: Vec<String>,
    /// Masquerade all traffic to ClusterIPs (default false).
    #[arg(long, value_name = "BOOL")]
    pub masquerade_all: Option<bool>,
    /// Answer NodePorts on 127.0.0.1 too (default false).
    #[arg(long, value_name = "BOOL")]
    pub localhost_nodeports: Option<bool>,
    /// Let containers run `privileged: true` (default false: refused).
    #[arg(long, value_name = "BOOL")]
    pub allow_privileged: Option<bool>,
    /// Rotate a container's log file before it grows past this size
    /// (default 10Mi).
    #[arg(long, value_name = "SIZE")]
    pub container_log_max_size: Option<String>,
    /// Keep at most this many log files per container run, the live one
    /// included (default 5, at least 2).
    #[arg(long, value_name = "N")]
    pub container_log_max_files: Option<u32>,
    /// Drop traffic of pod addresses NetworkPolicy has not programmed yet
    /// (default: true when this agent runs the pods).
    #[arg(long, value_name = "BOOL")]
    pub network_policy_guard: Option<bool>,
    /// `nftables` or `iptables` (default: nftables where the kernel has
    /// nf_tables).
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,
    /// The node's heartbeat Lease lifetime (default 40s, renewed every
    /// quarter of it); a node whose Lease expired is lost and its pods
    /// leave every Service.
    #[arg(long, value_name = "DURATION")]
    pub node_lease_duration: Option<String>,
    /// How long the controller manager's leader Lease lasts without
    /// renewal before another agent takes over (default 15s, as
    /// kube-controller-manager's --leader-elect-lease-duration).
    #[arg(long, value_name = "DURATION")]
    pub leader_elect_lease_duration: Option<String>,
    /// The cluster DNS address, kube-system/kube-dns's ClusterIP, served
    /// on every node (default 10.96.0.10).
    #[arg(long, value_name = "IP")]
    pub cluster_dns: Option<String>,
    /// The cluster domain (default cluster.local).
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// The host's resolver file: DNS upstreams, and the file host-DNS pods
    /// get (default /etc/resolv.conf; empty for none).
    #[arg(long, value_name = "FILE")]
    pub resolv_conf: Option<std::path::PathBuf>,
    /// The node-local DNS address, also served on every node (default
    /// 169.254.20.10).
    #[arg(long, value_name = "IP")]
    pub node_local_dns: Option<String>,
    /// Remove what knode made on this node (pods, cni0, the vxlan device,
    /// routes, iptables rules, the subnet file, the DNS table and addresses
    /// on lo) and exit; parts turned off
    /// with --disable are left alone. The agent must be stopped.
    #[arg(long)]
    pub cleanup: bool,
    /// Where the Kubernetes API listens (default 127.0.0.1).
    #[arg(long, value_name = "IP")]
    pub api_bind_address: Option<String>,
    /// The Kubernetes API's HTTPS port (default 6443; 0 turns it off).
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Where the node API (kubelet's port) listens (default 127.0.0.1;
    /// a multi-node cluster sets the node's address or 0.0.0.0).
    #[arg(long, value_name = "IP")]
    pub kubelet_bind_address: Option<String>,
    /// The node API's HTTPS port (default 10250; 0 turns it off).
    #[arg(long, value_name = "PORT")]
    pub kubelet_port: Option<u16>,
    /// Where the admin kubeconfig is written (default /etc/knode/knode.yaml).
    #[arg(long, value_name = "FILE")]
    pub write_kubeconfig: Option<std::path::PathBuf>,
    /// Static bearer tokens, kube-apiserver's CSV (token,user,uid,"groups").
    #[arg(long, value_name = "FILE")]
    pub token_auth_file: Option<std::path::PathBuf>,
    /// The cluster token (etcd: the shared CA is sealed with it).
    #[arg(long, env = "KNODE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub async fn run(config: &Config, args: AgentArgs) -> Result<ExitCode> {
    if args.cleanup {
        return crate::cleanup::run(config).await;
    }
    let backend: Backend = config.backend()?;
    let alloc = config.allocators()?;
    let cp = backend::open(&backend, &config.data_dir, alloc)
        .await
        .with_context(|| format!("open the control plane ({})", config.control_plane))?;
    let socket = config.socket();
    let listener = server::bind(&socket).await?;
    tracing::info!(
        control_plane = %config.control_plane,
        data_dir = %config.data_dir.display(),
        socket = %socket.display(),
        node = %config.node_name,
        "knode agent serving"
    );
    let serving = tokio::spawn(server::serve(listener, cp.clone() as Arc<dyn ControlPlane>));
    let api = crate::api::start(config, cp.clone() as Arc<dyn ControlPlane>).await?;
    let mut node = start_node(config, &args, cp.clone() as Arc<dyn ControlPlane>).await?;
    if config.enabled("controllers") {
        // Leader-elected: on a shared etcd only one agent's run at a time.
        let cp = cp.clone() as Arc<dyn ControlPlane>;
        let election = controllers::leader::Config::with_lease(
            &config.node_name,
            config.leader_elect_lease_duration,
        );
        node.tasks
            .push(tokio::spawn(controllers::manager::run_with(cp, election)));
    }
    notify_ready();
    let failed = tokio::select! {
        _ = wait_for_signal() => None,
        Some(e) = overlay_failure(node.overlay) => Some(e),
    };
    tracing::info!("stopping");
    serving.abort();
    if let Some(api) = api {
        api.abort();
    }
    // Pods and the data plane keep running: a restarted agent adopts them.
    for t in node.tasks {
        t.abort();
    }
    // Only our own socket: a new agent may already have replaced it.
    let _ = std::fs::remove_file(&socket);
    match failed {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Resolves when the overlay stops for good (it cannot hold a lease).
async fn overlay_failure(
    overlay: Option<tokio::task::JoinHandle<overlay::Result<()>>>,
) -> Option<anyhow::Error> {
    let Some(task) = overlay else {
        return std::future::pending().await;
    };
    Some(match task.await {
        Ok(Ok(())) => anyhow::anyhow!("the overlay stopped"),
        Ok(Err(e)) => anyhow::Error::new(e).context("overlay"),
        Err(e) => anyhow::anyhow!("the overlay task failed: {e}"),
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Tells systemd (`Type=notify`) that the agent is serving.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "sd_notify socket");
            return;
        }
    };
    let p = path.to_string_lossy();
    let r = if let Some(abstract_name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", &*p)
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, socket = %p, "sd_notify READY=1");
    }
}

/// What [`start_node`] started.
struct Started {
    /// Stopped at shutdown.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Ends only when the overlay gives up.
    overlay: Option<tokio::task::JoinHandle<overlay::Result<()>>>,
}

/// Brings up the node side: the overlay (lease, device, rules), the pod
/// network config, the proxy, the Node object and its heartbeat, then containerd, the
/// pause image, the pod manager and static pods, each unless disabled.
async fn start_node(
    config: &Config,
    args: &AgentArgs,
    cp: Arc<dyn ControlPlane>,
) -> Result<Started> {
    let overlay = if config.enabled("overlay") {
        Some(
            Overlay::start(cp.clone(), overlay_settings(config)?)
                .await
                .context("start the overlay")?,
        )
    } else {
        None
    };
    let node_ip = match (&config.node_ip, &overlay) {
        (None, Some(o)) => IpAddr::V4(o.public_ip()),
        _ => node::detect_ip(config.node_ip.as_deref())?,
    };
    // The pod CIDRs: the IPv4 one first (the node IP's family: kubelet
    // puts that family first in podIPs), then the IPv6 one if dual-stack.
    let pod_cidrs: Vec<String> = match (&overlay, &args.pod_cidr) {
        (Some(o), _) => subnet_strings(o.subnets()),
        (None, Some(c)) => vec![c.clone()],
        (None, None) => vec![first_subnet(&config.cluster_cidr)?],
    };
    let mtu = overlay.as_ref().map(Overlay::mtu);
    write_pod_network(config, &pod_cidrs, mtu)?;
    let id = node::Identity {
        name: config.node_name.clone(),
        ip: node_ip,
        pod_cidrs: pod_cidrs.clone(),
        kubelet_port: crate::api::kubelet_port(config),
    };
    let mut tasks = vec![];
    // Before the proxy (whose /metrics renders its metrics too) and the
    // kubelet (which calls its gate before a pod's first container).
    let network_policy = if config.enabled("network-policy") {
        let started =
            crate::netpol::start(config, cp.clone(), &pod_cidrs).context("start network policy")?;
        tasks.push(started.task);
        Some((started.gate, started.metrics))
    } else {
        crate::netpol::remove_table();
        None
    };
    if config.enabled("proxy") {
        let also = network_policy.as_ref().map(|(_, m)| Arc::clone(m));
        tasks.extend(
            crate::proxy::start(config, cp.clone(), also)
                .await
                .context("start the proxy")?,
        );
    }
    if config.enabled("dns") {
        tasks.extend(
            crate::dns::start(config, cp.clone())
                .await
                .context("start the cluster DNS")?,
        );
    }
    let overlay = match overlay {
        Some(o) => {
            tasks.push(tokio::spawn(follow_subnet(
                config.clone(),
                cp.clone(),
                pod_cidrs.clone(),
                o.subscribe(),
                mtu,
            )));
            Some(tokio::spawn(o.run()))
        }
        None => None,
    };
    if !config.enabled("pods") {
        node::register(cp.as_ref(), &id, "", config.node_lease_duration).await?;
        tasks.push(tokio::spawn(node::heartbeat(
            cp,
            config.node_name.clone(),
            config.node_lease_duration,
        )));
        tracing::info!(node = %config.node_name, ip = %node_ip, "node ready (pods disabled)");
        return Ok(Started { tasks, overlay });
    }
    let rt = connect_containerd(config).await;
    let version = rt.version().await.unwrap_or_default();
    let knode_exe = std::env::current_exe().context("locate the knode binary")?;
    let pause_bin = knode_exe.with_file_name("knode-pause");
    let pause = image::ensure_pause(&rt, &pause_bin)
        .await
        .with_context(|| format!("pause image from {}", pause_bin.display()))?;
    node::register(cp.as_ref(), &id, &version, config.node_lease_duration).await?;
    let ctx = Arc::new(PodContext {
        cp: cp.clone(),
        rt,
        cni: cni::Cni::new(
            config.cni_bin_dir.clone(),
            config.cni_conf_dir.clone(),
            config.cni_cache_dir.clone(),
        ),
        config: config.kubelet(),
        node_name: config.node_name.clone(),
        node_ip: node_ip.to_string(),
        knode_exe,
        pause,
        registries: image::Registries::load(&config.registry_config, &config.insecure_registries)?,
        prober: Prober::start(),
        events: kubelet::events::Recorder::new(cp.clone(), &config.node_name),
        network_gate: network_policy.map(|(gate, _)| gate),
        hostports: match hostnet::nftables::NfTablesSocket::open() {
            Ok(nft) => Some(Arc::new(kubelet::hostport::HostPorts::new(Arc::new(nft)))),
            Err(e) => {
                tracing::warn!(error = %e, "hostPorts: nf_tables unavailable; hostPorts are not programmed");
                None
            }
        },
    });
    tasks.push(tokio::spawn(node::heartbeat(
        cp,
        config.node_name.clone(),
        config.node_lease_duration,
    )));
    let c = ctx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = manager::run(c).await {
            tracing::error!(error = %format!("{e:#}"), "pod manager stopped");
        }
    }));
    tasks.push(tokio::spawn(static_pods::run(ctx)));
    tracing::info!(node = %config.node_name, ip = %node_ip, containerd = %version, "node ready");
    Ok(Started { tasks, overlay })
}

/// The overlay's settings from the agent's config.
fn overlay_settings(config: &Config) -> Result<overlay::Settings> {
    let public_ip = match &config.public_ip {
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| anyhow::anyhow!("public-ip: {ip:?} is not an IPv4 address"))?,
        ),
        None => None,
    };
    Ok(overlay::Settings {
        node: config.node_name.clone(),
        cluster_cidr: config.cluster_cidr.clone(),
        backend: config.backend.clone(),
        iface: config.iface.clone(),
        public_ip,
        public_ipv6: match &config.public_ipv6 {
            Some(ip) => Some(
                ip.parse()
                    .map_err(|_| anyhow::anyhow!("public-ipv6: {ip:?} is not an IPv6 address"))?,
            ),
            None => None,
        },
        subnet_file: config.subnet_file.clone(),
        lease_ttl: config.subnet_lease_ttl,
        renew_margin: config.subnet_lease_renew_margin,
        resync: config.overlay_resync_period,
        ip_masq: config.ip_masq,
    })
}

/// The overlay's subnets as the Node's podCIDRs (IPv4 first).
fn subnet_strings(s: overlay::Subnets) -> Vec<String> {
    std::iter::once(s.v4.to_string())
        .chain(s.v6.map(|n| n.to_string()))
        .collect()
}

/// The default conflist for `subnets` (one, or IPv4 and IPv6): with the
/// overlay, its MTU and no masquerading in the bridge (the overlay
/// masquerades only what leaves the cluster network).
fn write_pod_network(config: &Config, subnets: &[String], mtu: Option<u32>) -> Result<()> {
    let net = cni::PodNetwork {
        subnet: &subnets[0],
        subnet6: subnets.get(1).map(String::as_str),
        mtu,
        ip_masq: mtu.is_none(),
    };
    if let Some(written) = cni::ensure_default_conflist(&config.cni_conf_dir, &net)? {
        tracing::info!(file = %written.display(), subnets = %subnets.join(","), "wrote the default pod network");
    }
    Ok(())
}

/// Follows the overlay's subnet: when a lost lease is replaced by another
/// subnet, the conflist and the Node's podCIDR follow.
async fn follow_subnet(
    config: Config,
    cp: Arc<dyn ControlPlane>,
    mut current: Vec<String>,
    mut subnets: tokio::sync::watch::Receiver<overlay::Subnets>,
    mtu: Option<u32>,
) {
    while subnets.changed().await.is_ok() {
        let next = subnet_strings(*subnets.borrow_and_update());
        if current == next {
            continue;
        }
        if let Err(e) = write_pod_network(&config, &next, mtu) {
            tracing::error!(error = %format!("{e:#}"), "rewrite the pod network for the new subnet");
        }
        current = next;
        if let Err(e) = node::set_pod_cidrs(cp.as_ref(), &config.node_name, &current).await {
            tracing::error!(error = %format!("{e:#}"), "update the Node's podCIDR");
        }
    }
}

/// Waits for containerd: the agent is useless without it, and systemd may
/// start both at once.
async fn connect_containerd(config: &Config) -> Runtime {
    let mut logged = std::time::Instant::now() - std::time::Duration::from_secs(60);
    loop {
        match Runtime::connect(&config.containerd_socket, &config.containerd_namespace).await {
            Ok(rt) => return rt,
            Err(e) => {
                if logged.elapsed() >= std::time::Duration::from_secs(10) {
                    tracing::warn!(error = %format!("{e:#}"), "waiting for containerd");
                    logged = std::time::Instant::now();
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// The first /24 of the cluster CIDR's IPv4 network (one node needs no more).
fn first_subnet(cluster_cidr: &str) -> Result<String> {
    let (v4, _) = crate::config::cluster_cidrs(cluster_cidr)?;
    Ok(format!("{}/24", v4.network()))
}
