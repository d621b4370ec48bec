//! The checks themselves: a command in the container through containerd,
//! an HTTP(S) GET ([`super::http`]), a TCP connect and a gRPC health check
//! ([`super::grpc`]) from the node to the pod. Network probes close with an
//! RST (SO_LINGER 0) so that a probe every second for every pod leaves no
//! socket in TIME_WAIT (kubelet's conntrack exhaustion, kubernetes#89898).
//! Each check is bounded by the probe's timeout.

use std::path::PathBuf;
use std::time::Duration;

use runtime::exec::{self, ExecIo, INTERRUPTED};
use runtime::Runtime;
use tokio::net::TcpStream;

use super::grpc;
use super::http::{self, Url};
use super::{Handler, Outcome};

/// Where a probe is aimed.
#[derive(Clone)]
pub struct Target {
    /// The pod's IP, the default host of network probes.
    pub pod_ip: Option<String>,
    /// The running container (for exec).
    pub container_id: String,
    pub rt: Runtime,
    /// Where exec FIFOs are made.
    pub fifo_parent: PathBuf,
}

/// Runs `handler` once against `target`, within `timeout`.
pub async fn run(handler: &Handler, target: &Target, timeout: Duration) -> Outcome {
    match handler {
        Handler::Exec { command } => run_exec(command, target, timeout).await,
        Handler::Http {
            scheme,
            host,
            port,
            path,
            headers,
        } => {
            let Some(host) = host.clone().or_else(|| target.pod_ip.clone()) else {
                return Outcome::Failure("the pod has no IP yet".into());
            };
            let url = Url {
                scheme: *scheme,
                // Kept bare: brackets are added where an address is written.
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: *port,
                path: path.clone(),
            };
            let shown = url.to_string();
            match tokio::time::timeout(timeout, http::get(url, headers)).await {
                Ok(o) => o,
                Err(_) => Outcome::Failure(format!("Get \"{shown}\": context deadline exceeded")),
            }
        }
        Handler::Grpc { port, service } => {
            let Some(host) = target.pod_ip.as_deref() else {
                return Outcome::Failure("the pod has no IP yet".into());
            };
            grpc::check(host, *port, service, timeout).await
        }
        Handler::Tcp { host, port } => {
            let Some(host) = host.clone().or_else(|| target.pod_ip.clone()) else {
                return Outcome::Failure("the pod has no IP yet".into());
            };
            let addr = join_host_port(&host, *port);
            match tokio::time::timeout(timeout, connect(&addr)).await {
                // Dropped at once: closed with an RST.
                Ok(Ok(_)) => Outcome::Success,
                Ok(Err(e)) => Outcome::Failure(e),
                Err(_) => Outcome::Failure(format!("dial tcp {addr}: i/o timeout")),
            }
        }
    }
}

async fn run_exec(command: &[String], target: &Target, timeout: Duration) -> Outcome {
    let io = ExecIo {
        fifo_parent: &target.fifo_parent,
        stdin: None,
        stdout: Box::new(tokio::io::sink()),
        stderr: Box::new(tokio::io::sink()),
        tty: false,
        resize: None,
    };
    let expired = tokio::time::sleep(timeout);
    match exec::exec(&target.rt, &target.container_id, command, io, expired).await {
        Ok(0) => Outcome::Success,
        Ok(INTERRUPTED) => Outcome::Failure(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
        Ok(code) => Outcome::Failure(format!("command {command:?} exited with {code}")),
        Err(e) => Outcome::Failure(format!("exec {command:?}: {e:#}")),
    }
}

/// `host:port`, with brackets for an IPv6 host.
pub(super) fn join_host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", addr_host(host))
}

/// `host`, in brackets when it is an IPv6 address.
pub(super) fn addr_host(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Connects to `addr` for a probe: the stream closes with an RST when it
/// is dropped, however the probe ends, so no TIME_WAIT is left behind on
/// the node. The error is Go's `dial tcp ADDR: ...`.
pub(super) async fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("dial tcp {addr}: {e}"))?;
    // Deprecated because a non-zero linger blocks the thread on drop; a
    // zero linger never does: the kernel sends the RST and frees at once.
    #[allow(deprecated)]
    s.set_linger(Some(Duration::ZERO))
        .map_err(|e| format!("dial tcp {addr}: set SO_LINGER: {e}"))?;
    Ok(s)
}
