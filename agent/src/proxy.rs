//! The service proxy inside the agent: the kernel settings it needs, the
//! proxy controller (restarted with a backoff when its watch or sync
//! thread fails), and `/metrics` and `/healthz` on the metrics address
//! (kube-proxy's 10249 on loopback by default).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use controlplane::ControlPlane;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use proxy::{Health, Metrics, NodeConfig, ProxyConfig};

use crate::config::Config;

/// Starts the proxy for this node: returns its tasks (the controller and,
/// unless the metrics address is empty, the metrics server).
/// `also` (network policy's metrics) is rendered after the proxy's.
pub async fn start(
    config: &Config,
    cp: Arc<dyn ControlPlane>,
    also: Option<Arc<netpol::Metrics>>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let cfg = proxy_config(config)?;
    kernel_settings("proxy");
    let metrics = Arc::new(Metrics::new(cfg.sync_period));
    let mut tasks = Vec::new();
    if let Some(addr) = metrics_addr(&config.metrics_bind_address)? {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics-bind-address: listen on {addr}"))?;
        tracing::info!(address = %addr, "proxy metrics and health serving");
        tasks.push(tokio::spawn(serve(listener, Arc::clone(&metrics), also)));
    }
    let m = Arc::clone(&metrics);
    tasks.push(tokio::spawn(supervise("proxy", move || {
        proxy::run(Arc::clone(&cp), cfg.clone(), Arc::clone(&m))
    })));
    Ok(tasks)
}

/// The proxy's settings from the agent's config.
pub fn proxy_config(config: &Config) -> Result<ProxyConfig> {
    // A dual-stack cluster CIDR makes a dual-stack proxy (nftables mode:
    // tables `ip kube-proxy` and `ip6 kube-proxy`).
    let (cluster_cidr, cluster_cidr_v6) = crate::config::cluster_cidrs(&config.cluster_cidr)?;
    let node_ips = config
        .nodeport_addresses
        .iter()
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| anyhow::anyhow!("nodeport-addresses: {a:?} is not an IPv4 address"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut cfg = ProxyConfig::new(NodeConfig {
        node_name: config.node_name.clone(),
        node_ips,
        cluster_cidr: Some(cluster_cidr),
        cluster_cidr_v6,
        masquerade_all: config.masquerade_all,
        localhost_nodeports: config.localhost_nodeports,
    });
    cfg.min_sync_period = config.proxy_min_sync_period;
    cfg.sync_period = config.proxy_sync_period;
    cfg.full_sync_period = config.proxy_full_sync_period;
    cfg.mode = config.proxy_mode.unwrap_or_else(proxy::ProxyMode::detect);
    Ok(cfg)
}

/// `host:port`, or `None` when empty (metrics off).
fn metrics_addr(v: &str) -> Result<Option<SocketAddr>> {
    if v.is_empty() {
        return Ok(None);
    }
    v.parse().map(Some).map_err(|_| {
        anyhow::anyhow!(
            "metrics-bind-address: {v:?} is not an address like 127.0.0.1:10249 (empty turns it off)"
        )
    })
}

/// What the proxy and network policy need from the kernel, as kube-proxy
/// expects it: routed forwarding and bridged pod traffic through the IP
/// hooks (so a reply from a backend on the same bridge is un-NATed, and
/// traffic between pods of one node meets the policy chains on
/// `forward`). (`route_localnet` for localhost NodePorts is the proxy
/// sync thread's, in the namespace it programs.) Failures are logged, not
/// fatal: the operator may have set these another way.
pub(crate) fn kernel_settings(part: &str) {
    let ensure = |key: &str| {
        if let Err(e) = hostnet::sysctl::ensure(key, "1") {
            tracing::warn!(part, key, error = %e, "sysctl");
        }
    };
    ensure("net/ipv4/ip_forward");
    if !std::path::Path::new("/proc/sys/net/bridge").exists() {
        // Fixed arguments only: no user input reaches this command.
        let ok = std::process::Command::new("modprobe")
            .arg("br_netfilter")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            tracing::warn!(part, "modprobe br_netfilter failed; traffic between pods on one node bypasses the IP hooks");
        }
    }
    ensure("net/bridge/bridge-nf-call-iptables");
    // The same for IPv6 Services (the kernel's default, made sure of).
    ensure("net/bridge/bridge-nf-call-ip6tables");
}

/// Runs a part's controller (`run` makes a fresh one) for ever,
/// restarting it after it stops or fails with a backoff (1 s, doubling
/// to 30 s; back to 1 s after a minute of running).
pub(crate) async fn supervise<F, Fut, E>(part: &'static str, mut run: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = Instant::now();
        let r = run().await;
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        match r {
            Ok(()) => tracing::warn!(part, retry_in = ?backoff, "stopped; restarting"),
            Err(e) => {
                tracing::error!(part, error = %e, retry_in = ?backoff, "failed; restarting")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Serves `/metrics` (Prometheus text) and `/healthz` (200, or 503 when a
/// change has waited more than two sync periods).
async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    also: Option<Arc<netpol::Metrics>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let m = Arc::clone(&metrics);
        let also = also.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let m = Arc::clone(&m);
                let also = also.clone();
                async move { Ok::<_, Infallible>(respond(&req, &m, also.as_deref())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond<B>(
    req: &Request<B>,
    metrics: &Metrics,
    also: Option<&netpol::Metrics>,
) -> Response<Full<Bytes>> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            metrics.render() + &also.map(netpol::Metrics::render).unwrap_or_default(),
        ),
        (&Method::GET, "/healthz") => match metrics.health(Instant::now()) {
            Health::Healthy => (StatusCode::OK, "ok\n".to_string()),
            Health::Stale(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "a change has waited {} ms without being applied\n",
                    d.as_millis()
                ),
            ),
        },
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "not found\n".to_string()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_string()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_address_is_validated_and_can_be_turned_off() {
        assert_eq!(
            metrics_addr("127.0.0.1:10249").unwrap(),
            Some("127.0.0.1:10249".parse().unwrap())
        );
        assert_eq!(metrics_addr("").unwrap(), None);
        let e = metrics_addr("localhost").unwrap_err().to_string();
        assert!(e.starts_with("metrics-bind-address: \"localhost\""), "{e}");
    }

    #[test]
    fn health_and_metrics_answer_by_path() {
        let m = Metrics::new(Duration::from_secs(30));
        let get = |p: &str| Request::get(p).body(()).unwrap();
        assert_eq!(respond(&get("/healthz"), &m, None).status(), StatusCode::OK);
        assert_eq!(
            respond(&get("/metrics"), &m, Some(&netpol::Metrics::new())).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&get("/nope"), &m, None).status(),
            StatusCode::NOT_FOUND
        );
        // A change queued long ago and never applied: unhealthy.
        m.queued(Instant::now() - Duration::from_secs(61));
        assert_eq!(
            respond(&get("/healthz"), &m, None).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let post = Request::post("/healthz").body(()).unwrap();
        assert_eq!(
            respond(&post, &m, None).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
