//! Configuration: `/etc/knode/config.yaml` with every key also a flag;
//! flags win. Keys are the flag names (`control-plane`, `data-dir`, ...).

use std::path::{Path, PathBuf};

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
    /// This node's address (default: the first global IPv4 address).
    pub node_ip: Option<String>,
}

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
        };
        if c.node_name.is_empty() {
            bail!("node-name: required (the hostname is empty)");
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

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        controlplane::rest::server::socket_path(&self.run_dir)
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
