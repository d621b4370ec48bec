//! Wires the Kubernetes API (the `apiserver` crate) into the agent: the
//! node's certificates, the admin kubeconfig at `write-kubeconfig`, the
//! HTTPS listener on `api-bind-address:api-port`, and `knode kubeconfig`.
//! Tables use the CLI's printers, so kubectl and `knode get` agree.

use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use apiserver::auth::TokenFile;
use apiserver::pki::{self, ServingNames};
use apiserver::table::Columns;
use controlplane::api::ObjectRef;
use controlplane::backend::Backend;
use controlplane::{ControlPlane, Kind, Object};
use tokio::task::JoinHandle;

use crate::config::Config;

/// The CLI's kubectl-shaped columns, for server-side tables.
struct CliColumns;

impl Columns for CliColumns {
    fn headers(&self, kind: Kind, wide: bool) -> Vec<&'static str> {
        crate::cli::print::headers(kind, wide)
    }

    fn cells(&self, obj: &Object) -> Vec<String> {
        crate::cli::print::cells(obj, true, jiff::Timestamp::now())
    }
}

/// `https://host:port` as a client on this machine reaches the API.
fn server_url(config: &Config) -> String {
    let host: IpAddr = match config.api_bind_address.parse() {
        Ok(ip) if !IpAddr::is_unspecified(&ip) => ip,
        _ => IpAddr::from([127, 0, 0, 1]),
    };
    match host {
        IpAddr::V6(v6) => format!("https://[{v6}]:{}", config.api_port),
        IpAddr::V4(v4) => format!("https://{v4}:{}", config.api_port),
    }
}

/// The names the serving certificate carries.
fn serving_names(config: &Config) -> ServingNames {
    let mut ips: Vec<IpAddr> = vec![IpAddr::from([127, 0, 0, 1])];
    // The `kubernetes` Service's ClusterIP: the first address of the range.
    if let Some(ip) = config
        .service_cidr
        .split(',')
        .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
        .filter_map(|n| n.hosts().next())
        .next()
    {
        ips.push(ip);
    }
    for ip in [&config.node_ip, &config.public_ip].into_iter().flatten() {
        ips.extend(ip.parse::<IpAddr>().ok());
    }
    for bind in [&config.api_bind_address, &config.kubelet_bind_address] {
        ips.extend(
            bind.parse::<IpAddr>()
                .ok()
                .filter(|i| !i.is_unspecified() && !ips.contains(i)),
        );
    }
    ips.dedup();
    let dns = [
        config.node_name.as_str(),
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    .map(String::from)
    .to_vec();
    ServingNames { dns, ips }
}

/// The port the node API listens on (what the Node reports in
/// `status.daemonEndpoints`); 0 when it does not.
pub fn kubelet_port(config: &Config) -> u16 {
    if config.enabled("pods") {
        config.kubelet_port
    } else {
        0
    }
}

/// Creates or loads the certificates, writes the admin kubeconfig and
/// starts serving the API and the node API (kubelet's port); `None` when
/// both are off (`api-port` and `kubelet-port` 0, or no pods here).
pub async fn start(config: &Config, cp: Arc<dyn ControlPlane>) -> Result<Option<JoinHandle<()>>> {
    if config.api_port == 0 && kubelet_port(config) == 0 {
        return Ok(None);
    }
    if matches!(config.backend()?, Backend::Etcd { .. }) {
        // Every agent of a shared store serves the cluster's one CA.
        let token = cluster_token(config, cp.as_ref()).await?;
        apiserver::bootstrap::shared_ca(cp.as_ref(), &config.data_dir, &token).await?;
    }
    let pki = pki::ensure(&config.data_dir, &serving_names(config), &config.node_name)?;
    let tokens = match &config.token_auth_file {
        Some(p) => TokenFile::load(p)?,
        None => TokenFile::default(),
    };
    let mut tasks = Vec::new();
    if kubelet_port(config) != 0 {
        tasks.push(tokio::spawn(
            serve_node_api(config, cp.clone(), &pki, tokens.clone()).await?,
        ));
    }
    if config.api_port != 0 {
        tasks.push(tokio::spawn(serve_api(config, cp, &pki, tokens).await?));
    }
    Ok(Some(tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    })))
}

/// What the node's pods are served with: their logs, commands and ports.
fn node_settings(
    config: &Config,
    cp: Arc<dyn ControlPlane>,
    pki: &pki::Pki,
    authorizer: Arc<dyn apiserver::auth::Authorizer>,
    tokens: TokenFile,
    address: String,
) -> Result<apiserver::Settings> {
    Ok(apiserver::Settings {
        cp: cp.clone(),
        tls: apiserver::tls::server_config(pki)?,
        authorizer,
        tokens,
        columns: Arc::new(CliColumns),
        logs: Arc::new(crate::pod_logs::NodeLogs {
            cp,
            node_name: config.node_name.clone(),
            log_dir: config.log_dir.clone(),
        }),
        exec: Arc::new(crate::pod_exec::NodeExec {
            node_name: config.node_name.clone(),
            containerd_socket: config.containerd_socket.clone(),
            containerd_namespace: config.containerd_namespace.clone(),
            fifo_parent: config.run_dir.join("exec"),
            log_dir: config.log_dir.clone(),
        }),
        portforward: Arc::new(crate::pod_portforward::NodePortForward {
            node_name: config.node_name.clone(),
            netns_dir: config.netns_dir.clone(),
        }),
        address,
        proxy: None,
        node_api: false,
    })
}

/// The node API on `kubelet-bind-address:kubelet-port`: TLS with the
/// serving certificate, client certificates of the cluster CA only, and
/// only API servers (node and admin identities) answered.
async fn serve_node_api(
    config: &Config,
    cp: Arc<dyn ControlPlane>,
    pki: &pki::Pki,
    tokens: TokenFile,
) -> Result<impl std::future::Future<Output = ()>> {
    let addr = match config.kubelet_bind_address.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]:{}", config.kubelet_port),
        _ => format!("{}:{}", config.kubelet_bind_address, config.kubelet_port),
    };
    let listener = apiserver::server::bind(&addr)
        .await
        .context("the node API (kubelet-port)")?;
    tracing::info!(address = %addr, "node API (kubelet port) serving");
    let mut settings = node_settings(
        config,
        cp,
        pki,
        Arc::new(apiserver::nodeapi::ApiServers),
        tokens,
        addr,
    )?;
    settings.node_api = true;
    Ok(apiserver::serve(listener, settings))
}

/// The Kubernetes API on `api-bind-address:api-port`, with the admin and
/// node kubeconfigs written for it.
async fn serve_api(
    config: &Config,
    cp: Arc<dyn ControlPlane>,
    pki: &pki::Pki,
    tokens: TokenFile,
) -> Result<impl std::future::Future<Output = ()>> {
    let pki = pki.clone();
    let server = server_url(config);
    let kubeconfig = pki::admin_kubeconfig(&pki, &server);
    // Also kept beside the certificates (as k3s keeps cred/admin.kubeconfig)
    // for `knode kubeconfig`, which knows the data dir but not the agent's flags.
    pki::write_private(&own_copy(config), &kubeconfig, 0o600)?;
    pki::write_private(&config.write_kubeconfig, &kubeconfig, 0o600)
        .context("write the admin kubeconfig")?;
    // The node's own identity (system:node:<name>), for what a kubelet may
    // do and no more.
    pki::write_private(
        &pki::dir(&config.data_dir).join("node.kubeconfig"),
        &pki::node_kubeconfig(&pki, &server),
        0o600,
    )?;
    let addr = format!("{}:{}", config.api_bind_address, config.api_port);
    let listener = apiserver::server::bind(&addr).await?;
    tracing::info!(address = %addr, kubeconfig = %config.write_kubeconfig.display(), "Kubernetes API serving");
    let mut settings = node_settings(
        config,
        cp.clone(),
        &pki,
        Arc::new(apiserver::authz::Cluster::new(cp.clone())),
        tokens,
        server.trim_start_matches("https://").to_string(),
    )?;
    // Pods of other nodes are reached through their node API.
    settings.proxy = Some(Arc::new(apiserver::nodeapi::Proxy::new(
        cp.clone(),
        &config.node_name,
        apiserver::tls::node_client_config(&pki)?,
    )));
    let advertised = advertise_address(config);
    tracing::info!(address = ?advertised, "kubernetes Service: this agent's endpoint");
    let serving = apiserver::serve(listener, settings);
    let advertising = apiserver::advertise::run(cp, config.node_name.clone(), advertised);
    Ok(async move {
        tokio::join!(serving, advertising);
    })
}

/// What pods dial to reach this agent's API (the `kubernetes` Service's
/// endpoint): the bind address, or the node's IP when bound to every
/// address; none when the API listens on loopback only.
fn advertise_address(config: &Config) -> Option<std::net::SocketAddr> {
    let ip: IpAddr = config.api_bind_address.parse().ok()?;
    let ip = if ip.is_loopback() {
        return None;
    } else if ip.is_unspecified() {
        match kubelet::node::detect_ip(config.node_ip.as_deref()) {
            Ok(ip) => ip,
            Err(e) => {
                tracing::warn!(error = %e, "kubernetes Service: no address to advertise");
                return None;
            }
        }
    } else {
        ip
    };
    Some(std::net::SocketAddr::new(ip, config.api_port))
}

/// The cluster token: configured (`token`), or the one this agent wrote
/// when it made the cluster's CA, or, when the store has no CA yet, a new
/// one written to `<data-dir>/token` (0600) for the other agents to join
/// with. Without a token, an agent of a cluster that has a CA stops with
/// an error that says where the token is.
async fn cluster_token(config: &Config, cp: &dyn ControlPlane) -> Result<String> {
    if let Some(t) = &config.token {
        return Ok(t.clone());
    }
    let path = config.data_dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    }
    let stored = ObjectRef::new(
        Kind::Secret,
        apiserver::bootstrap::NAMESPACE,
        apiserver::bootstrap::NAME,
    );
    match cp.get(&stored).await {
        Ok(_) => bail!(
            "this cluster's CA is sealed with its token: set `token` (config key, or --token) \
             to the token the cluster's first agent wrote to its <data-dir>/token"
        ),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e).context("read the cluster CA"),
    }
    let token = apiserver::bootstrap::new_token()?;
    pki::write_private(&path, &format!("{token}\n"), 0o600)?;
    tracing::info!(path = %path.display(), "made the cluster token; other agents join with it (config key `token`)");
    Ok(token)
}

/// The agent's own copy of the admin kubeconfig.
fn own_copy(config: &Config) -> std::path::PathBuf {
    pki::dir(&config.data_dir).join("admin.kubeconfig")
}

/// `knode kubeconfig`: the admin kubeconfig the agent wrote.
pub fn print_kubeconfig(config: &Config) -> Result<ExitCode> {
    let path = own_copy(config);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (has the agent run with its Kubernetes API on?)",
            path.display()
        )
    })?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
