//! `knode agent`: opens the control plane and serves it on the API socket.
//! At this stage the agent runs only the control plane; pods, the proxy
//! and the overlay join it as they are built.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use controlplane::backend::{self, Backend};
use controlplane::registry::Allocators;
use controlplane::rest::server;
use controlplane::ControlPlane;

use crate::config::Config;

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
}

pub async fn run(config: &Config, _args: AgentArgs) -> Result<ExitCode> {
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
    notify_ready();
    wait_for_signal().await;
    tracing::info!("stopping");
    serving.abort();
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
