//! `knode agent`: opens the control plane and serves it on the API socket,
//! registers the node and runs its pods through containerd. The proxy and
//! the overlay join it as they are built.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use controlplane::backend::{self, Backend};
use controlplane::registry::Allocators;
use controlplane::rest::server;
use controlplane::ControlPlane;

use crate::cni;
use crate::config::Config;
use crate::node;
use crate::pods::context::Context as PodContext;
use crate::pods::{manager, static_pods};
use crate::runtime::{image, Runtime};

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
    /// This node's pod subnet (default: the first /24 of the cluster CIDR).
    #[arg(long, value_name = "CIDR")]
    pub pod_cidr: Option<String>,
}

pub async fn run(config: &Config, args: AgentArgs) -> Result<ExitCode> {
    let backend: Backend = config.backend()?;
    let alloc = Allocators::parse(&config.service_cidr, &config.service_node_port_range)?;
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
    let pods = start_node(config, &args, cp.clone() as Arc<dyn ControlPlane>).await?;
    notify_ready();
    wait_for_signal().await;
    tracing::info!("stopping");
    serving.abort();
    // Pods keep running: a restarted agent adopts them.
    for t in pods {
        t.abort();
    }
    // Only our own socket: a new agent may already have replaced it.
    let _ = std::fs::remove_file(&socket);
    Ok(ExitCode::SUCCESS)
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

/// Brings up the node side: containerd, the pause image, the pod network
/// config, the Node object and its heartbeat, the pod manager and static
/// pods. Returns the tasks to stop at shutdown.
async fn start_node(
    config: &Config,
    args: &AgentArgs,
    cp: Arc<dyn ControlPlane>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let node_ip = node::detect_ip(config.node_ip.as_deref())?;
    let pod_cidr = match &args.pod_cidr {
        Some(c) => c.clone(),
        None => first_subnet(&config.cluster_cidr)?,
    };
    let rt = connect_containerd(config).await;
    let version = rt.version().await.unwrap_or_default();
    let knode_exe = std::env::current_exe().context("locate the knode binary")?;
    let pause_bin = knode_exe.with_file_name("knode-pause");
    let pause = image::ensure_pause(&rt, &pause_bin)
        .await
        .with_context(|| format!("pause image from {}", pause_bin.display()))?;
    if let Some(written) = cni::ensure_default_conflist(&config.cni_conf_dir, &pod_cidr)? {
        tracing::info!(file = %written.display(), subnet = %pod_cidr, "wrote the default pod network");
    }
    let id = node::Identity {
        name: config.node_name.clone(),
        ip: node_ip,
        pod_cidr: Some(pod_cidr),
    };
    node::register(cp.as_ref(), &id, &version).await?;
    let ctx = Arc::new(PodContext {
        cp: cp.clone(),
        rt,
        cni: cni::Cni::new(
            config.cni_bin_dir.clone(),
            config.cni_conf_dir.clone(),
            config.cni_cache_dir.clone(),
        ),
        config: config.clone(),
        node_name: config.node_name.clone(),
        node_ip: node_ip.to_string(),
        knode_exe,
        pause,
        registries: image::Registries::load(config)?,
    });
    let mut tasks = vec![tokio::spawn(node::heartbeat(cp, config.node_name.clone()))];
    let c = ctx.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = manager::run(c).await {
            tracing::error!(error = %format!("{e:#}"), "pod manager stopped");
        }
    }));
    tasks.push(tokio::spawn(static_pods::run(ctx)));
    tracing::info!(node = %config.node_name, ip = %node_ip, containerd = %version, "node ready");
    Ok(tasks)
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

/// The first /24 of the cluster CIDR (one node needs no more).
fn first_subnet(cluster_cidr: &str) -> Result<String> {
    let net: std::net::Ipv4Addr = cluster_cidr
        .split_once('/')
        .map(|(a, _)| a)
        .unwrap_or(cluster_cidr)
        .parse()
        .map_err(|_| anyhow::anyhow!("cluster-cidr: {cluster_cidr:?} is not an IPv4 CIDR"))?;
    Ok(format!("{net}/24"))
}
