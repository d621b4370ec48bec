//! `knode`: the node agent and its CLI in one binary. `main` parses flags,
//! merges them over the config file, picks the control-plane backend and
//! hands over to the agent or to one CLI command.

mod agent;
mod api;
mod cleanup;
mod cli;
mod config;
mod dns;
mod netpol;
mod pod_exec;
mod pod_logs;
mod pod_portforward;
mod proxy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, File, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(
    name = "knode",
    version,
    about = "A Kubernetes-style node: agent and CLI"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand takes; each is also a config-file key.
#[derive(Args)]
struct Global {
    /// Config file (keys are the flag names).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// `embedded`, `etcd://host:2379[,host:2379...]` or `kubeconfig:/path`.
    #[arg(long, global = true, value_name = "BACKEND")]
    control_plane: Option<String>,
    /// Where the agent keeps its state (the embedded store lives here).
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Where the agent's API socket (knode.sock) lives.
    #[arg(long, global = true, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Service CIDR(s) that ClusterIPs are allocated from: one CIDR, or an
    /// IPv4 and an IPv6 one separated by a comma (dual-stack Services), as
    /// kube-apiserver's --service-cluster-ip-range.
    #[arg(
        long,
        global = true,
        value_name = "CIDR[,CIDR]",
        alias = "service-cluster-ip-range"
    )]
    service_cidr: Option<String>,
    /// NodePort range, `FIRST-LAST`.
    #[arg(long, global = true, value_name = "RANGE")]
    service_node_port_range: Option<String>,
    /// CA certificate (PEM) for `etcds://` endpoints.
    #[arg(long, global = true, value_name = "FILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, global = true, value_name = "FILE")]
    etcd_certfile: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, global = true, value_name = "FILE")]
    etcd_keyfile: Option<PathBuf>,
    /// Where container logs go (`<ns>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, global = true, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Where pod network namespaces are pinned.
    #[arg(long, global = true, value_name = "DIR")]
    netns_dir: Option<PathBuf>,
    /// Where CNI plugin binaries are looked up.
    #[arg(long, global = true, value_name = "DIR")]
    cni_bin_dir: Option<PathBuf>,
    /// Where the CNI network configuration (.conflist) is read.
    #[arg(long, global = true, value_name = "DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// Where CNI results are cached for DEL.
    #[arg(long, global = true, value_name = "DIR")]
    cni_cache_dir: Option<PathBuf>,
    /// containerd's gRPC socket.
    #[arg(long, global = true, value_name = "PATH")]
    containerd_socket: Option<PathBuf>,
    /// containerd namespace the agent's containers and images live in.
    #[arg(long, global = true, value_name = "NAME")]
    containerd_namespace: Option<String>,
    /// Directory of static pod manifests.
    #[arg(long, global = true, value_name = "DIR")]
    pod_manifest_path: Option<PathBuf>,
    /// docker-config-style file with registry credentials (`auths`).
    #[arg(long, global = true, value_name = "FILE")]
    registry_config: Option<PathBuf>,
    /// A registry reached over plain HTTP (`host:port`); repeatable.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST")]
    insecure_registries: Vec<String>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (serves the embedded control plane on the socket).
    Agent(Box<agent::AgentArgs>),
    /// Create or update objects from manifests.
    Apply(cli::apply::ApplyArgs),
    /// Show objects.
    Get(cli::get::GetArgs),
    /// Delete objects by manifest or by kind and name.
    Delete(cli::delete::DeleteArgs),
    /// Set the replicas of a Deployment, ReplicaSet or StatefulSet.
    Scale(cli::scale::ScaleArgs),
    /// Manage a Deployment's rollout: status, undo, restart, history, pause, resume.
    Rollout(cli::rollout::RolloutArgs),
    /// Print a container's logs.
    Logs(cli::logs::LogsArgs),
    /// Run a command in a pod's container.
    Exec(cli::exec::ExecArgs),
    /// Write a container's stdout/stderr to its CRI log file (started by
    /// containerd's shim through the task's binary log URI as
    /// `log-writer PATH [max-size BYTES max-files N]`, pairs in any order;
    /// handled before this parser).
    #[command(hide = true)]
    LogWriter {
        /// The log file.
        path: PathBuf,
    },
    /// Import, pull, list and remove images (containerd, directly).
    Image(cli::image::ImageArgs),
    /// Print the admin kubeconfig of the local agent's Kubernetes API.
    Kubeconfig,
    /// Print the version.
    Version,
}

fn init_logging(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KNODE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    // Before clap, logging, config and the async runtime: none of them may
    // fail a container's log writer, whose `key value` arguments come in
    // the shim's (random) order.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(args) = kubelet::logs::writer::Args::from_argv(&argv) {
        return match args {
            Ok(a) => kubelet::logs::writer::run(&a),
            Err(e) => {
                eprintln!("knode log-writer: {e}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    let is_agent = matches!(cli.command, Command::Agent(_));
    init_logging(cli.global.log_json, if is_agent { "info" } else { "warn" });
    if let Command::Version = cli.command {
        println!("knode {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent::run(&config, *args).await,
            Command::Apply(args) => cli::apply::run(&config, args).await,
            Command::Get(args) => cli::get::run(&config, args).await,
            Command::Delete(args) => cli::delete::run(&config, args).await,
            Command::Scale(args) => cli::scale::run(&config, args).await,
            Command::Rollout(args) => cli::rollout::run(&config, args).await,
            Command::Image(args) => cli::image::run(&config, args).await,
            Command::Logs(args) => cli::logs::run(&config, args).await,
            Command::Exec(args) => cli::exec::run(&config, args).await,
            Command::Kubeconfig => api::print_kubeconfig(&config),
            Command::Version | Command::LogWriter { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let g = &cli.global;
    let (path, required) = match &g.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG), false),
    };
    let file = File::load(&path, required)?;
    let agent = match &cli.command {
        Command::Agent(a) => Some(a.as_ref()),
        _ => None,
    };
    let flag = |f: fn(&agent::AgentArgs) -> Option<String>| agent.and_then(f);
    let flags = File {
        control_plane: g.control_plane.clone(),
        data_dir: g.data_dir.clone(),
        run_dir: g.run_dir.clone(),
        node_name: flag(|a| a.node_name.clone()),
        service_cidr: g.service_cidr.clone(),
        service_node_port_range: g.service_node_port_range.clone(),
        cluster_cidr: flag(|a| a.cluster_cidr.clone()),
        etcd_cafile: g.etcd_cafile.clone(),
        etcd_certfile: g.etcd_certfile.clone(),
        etcd_keyfile: g.etcd_keyfile.clone(),
        log_dir: g.log_dir.clone(),
        netns_dir: g.netns_dir.clone(),
        cni_bin_dir: g.cni_bin_dir.clone(),
        cni_conf_dir: g.cni_conf_dir.clone(),
        cni_cache_dir: g.cni_cache_dir.clone(),
        containerd_socket: g.containerd_socket.clone(),
        containerd_namespace: g.containerd_namespace.clone(),
        pod_manifest_path: g.pod_manifest_path.clone(),
        registry_config: g.registry_config.clone(),
        insecure_registries: (!g.insecure_registries.is_empty())
            .then(|| g.insecure_registries.clone()),
        node_ip: flag(|a| a.node_ip.clone()),
        backend: flag(|a| a.backend.clone()),
        iface: flag(|a| a.iface.clone()),
        public_ip: flag(|a| a.public_ip.clone()),
        public_ipv6: flag(|a| a.public_ipv6.clone()),
        subnet_file: agent.and_then(|a| a.subnet_file.clone()),
        subnet_lease_ttl: flag(|a| a.subnet_lease_ttl.clone()),
        subnet_lease_renew_margin: flag(|a| a.subnet_lease_renew_margin.clone()),
        overlay_resync_period: flag(|a| a.overlay_resync_period.clone()),
        ip_masq: agent.and_then(|a| a.ip_masq),
        disable: agent.and_then(|a| (!a.disable.is_empty()).then(|| a.disable.clone())),
        proxy_min_sync_period: flag(|a| a.proxy_min_sync_period.clone()),
        proxy_sync_period: flag(|a| a.proxy_sync_period.clone()),
        proxy_full_sync_period: flag(|a| a.proxy_full_sync_period.clone()),
        metrics_bind_address: flag(|a| a.metrics_bind_address.clone()),
        nodeport_addresses: agent
            .and_then(|a| (!a.nodeport_addresses.is_empty()).then(|| a.nodeport_addresses.clone())),
        masquerade_all: agent.and_then(|a| a.masquerade_all),
        localhost_nodeports: agent.and_then(|a| a.localhost_nodeports),
        allow_privileged: agent.and_then(|a| a.allow_privileged),
        container_log_max_size: flag(|a| a.container_log_max_size.clone()),
        container_log_max_files: agent.and_then(|a| a.container_log_max_files),
        network_policy_guard: agent.and_then(|a| a.network_policy_guard),
        proxy_mode: flag(|a| a.proxy_mode.clone()),
        node_lease_duration: flag(|a| a.node_lease_duration.clone()),
        leader_elect_lease_duration: flag(|a| a.leader_elect_lease_duration.clone()),
        cluster_dns: flag(|a| a.cluster_dns.clone()),
        cluster_domain: flag(|a| a.cluster_domain.clone()),
        resolv_conf: agent.and_then(|a| a.resolv_conf.clone()),
        node_local_dns: flag(|a| a.node_local_dns.clone()),
        api_bind_address: flag(|a| a.api_bind_address.clone()),
        api_port: agent.and_then(|a| a.api_port),
        kubelet_bind_address: flag(|a| a.kubelet_bind_address.clone()),
        kubelet_port: agent.and_then(|a| a.kubelet_port),
        write_kubeconfig: agent.and_then(|a| a.write_kubeconfig.clone()),
        token_auth_file: agent.and_then(|a| a.token_auth_file.clone()),
        token: flag(|a| a.token.clone()),
    };
    Config::merge(file, flags)
}
