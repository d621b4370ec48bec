//! The API's `pods/<name>/portforward` for the pods of this node: a port
//! is reached as kubelet and containerd reach it, from inside the pod's
//! network namespace (pinned at `<netns-dir>/knode-<uid>`), so a server
//! bound to the pod's 127.0.0.1 answers too. A blocking thread enters the
//! namespace, connects, and hands back the socket, which keeps the
//! namespace it was created in. A pod on another node reaches here only
//! when the node API is asked for it, and is refused naming that node.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use apiserver::portforward::{Dial, PodPortForward};
use async_trait::async_trait;
use controlplane::Error;
use hostnet::netns::NetNs;
use k8s_openapi::api::core::v1::Pod;

use crate::pod_logs::served_here;

/// How long a connect inside the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// This node's pods' ports.
pub struct NodePortForward {
    pub node_name: String,
    /// Where pod network namespaces are pinned (`--netns-dir`).
    pub netns_dir: PathBuf,
}

#[async_trait]
impl PodPortForward for NodePortForward {
    async fn prepare(&self, pod: &Pod) -> Result<Arc<dyn Dial>, Error> {
        served_here(pod, &self.node_name, "forwards ports of")?;
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            return Ok(Arc::new(PodNetns { netns: None }));
        }
        let netns = self.netns_dir.join(format!("knode-{uid}"));
        if !netns.exists() {
            return Err(Error::BadRequest(format!(
                "pod {name} has no network yet (its sandbox is not running on node {})",
                self.node_name
            )));
        }
        Ok(Arc::new(PodNetns { netns: Some(netns) }))
    }
}

/// Connects inside one pod's network namespace (the node's own for
/// `hostNetwork` pods).
struct PodNetns {
    netns: Option<PathBuf>,
}

#[async_trait]
impl Dial for PodNetns {
    async fn dial(&self, port: u16) -> Result<tokio::net::TcpStream, String> {
        let netns = self.netns.clone();
        let std = tokio::task::spawn_blocking(move || -> Result<TcpStream, String> {
            let Some(path) = netns else {
                return connect_local(port);
            };
            let ns = NetNs::open(&path).map_err(|e| e.to_string())?;
            ns.run(|| connect_local(port))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("in network namespace {}: {e}", path.display()))
        })
        .await
        .map_err(|e| format!("connect thread: {e}"))??;
        std.set_nonblocking(true)
            .and_then(|()| std.set_nodelay(true))
            .map_err(|e| format!("socket: {e}"))?;
        tokio::net::TcpStream::from_std(std).map_err(|e| format!("socket: {e}"))
    }
}

/// Connects to localhost:`port` in the calling thread's namespace, IPv4
/// then IPv6 (as containerd does); the IPv4 error when both fail.
fn connect_local(port: u16) -> Result<TcpStream, String> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
                .map_err(|_| format!("failed to connect to localhost:{port} inside the pod: {e4}"))
        }
    }
}
