//! Choosing a backend from `--control-plane`: `embedded` (the default),
//! `etcd://host:2379,host2:2379`, or `kubeconfig:/path` (reserved for the
//! Kubernetes API server backend).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use crate::api::{ControlPlane, Error, Result};
use crate::registry::{Allocators, Registry};
use crate::rest::client::Client;
use crate::storage::embedded::Embedded;
use crate::storage::etcd::{Etcd, TlsFiles};

/// Which control plane to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The local redb store, served by the agent on its socket.
    Embedded,
    /// An etcd cluster; endpoints as URLs (`http://host:2379`), TLS for
    /// `https://` ones.
    Etcd {
        endpoints: Vec<String>,
        tls: TlsFiles,
    },
    /// A Kubernetes API server.
    Kubernetes { kubeconfig: PathBuf },
}

impl Backend {
    /// Sets the TLS files of an etcd backend (other backends ignore them).
    pub fn with_tls(mut self, files: TlsFiles) -> Backend {
        if let Backend::Etcd { tls, .. } = &mut self {
            *tls = files;
        }
        self
    }
}

impl FromStr for Backend {
    type Err = Error;

    fn from_str(s: &str) -> Result<Backend> {
        let bad = |why: &str| {
            Error::BadRequest(format!(
                "control-plane {s:?}: {why} (want `embedded`, `etcd://host:port[,host:port...]` or `kubeconfig:/path`)"
            ))
        };
        if s == "embedded" {
            return Ok(Backend::Embedded);
        }
        if let Some(rest) = s.strip_prefix("kubeconfig:") {
            if rest.is_empty() {
                return Err(bad("the kubeconfig path is empty"));
            }
            return Ok(Backend::Kubernetes {
                kubeconfig: rest.into(),
            });
        }
        let (scheme, rest) = if let Some(r) = s.strip_prefix("etcd://") {
            ("http", r)
        } else if let Some(r) = s.strip_prefix("etcds://") {
            ("https", r)
        } else {
            return Err(bad("unknown kind"));
        };
        let mut endpoints = Vec::new();
        for hp in rest.split(',') {
            let hp = hp.trim().trim_end_matches('/');
            let Some((host, port)) = hp.rsplit_once(':') else {
                return Err(bad(&format!("endpoint {hp:?} needs host:port")));
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(&format!("endpoint {hp:?} needs host:port")));
            }
            endpoints.push(format!("{scheme}://{hp}"));
        }
        Ok(Backend::Etcd {
            endpoints,
            tls: TlsFiles::default(),
        })
    }
}

/// The control plane the agent runs and serves: the registry over the
/// backend's storage, with the `default` and `kube-system` namespaces (and
/// `kube-system/kube-dns` when the allocators keep a DNS address) in place.
pub async fn open(backend: &Backend, data_dir: &Path, alloc: Allocators) -> Result<Arc<Registry>> {
    let registry = match backend {
        Backend::Embedded => Registry::new(Arc::new(Embedded::open(data_dir)?), alloc),
        Backend::Etcd { endpoints, tls } => {
            Registry::new(Arc::new(Etcd::connect_with(endpoints, tls).await?), alloc)
        }
        Backend::Kubernetes { kubeconfig } => {
            return Err(Error::Unavailable(format!(
                "control-plane kubeconfig:{}: the Kubernetes API server backend is not built yet; use embedded or etcd://",
                kubeconfig.display()
            )))
        }
    };
    registry.bootstrap().await?;
    Ok(Arc::new(registry))
}

/// The control plane as the CLI reaches it: the agent's socket for the
/// embedded store (only the agent opens the file), etcd directly.
pub async fn connect(
    backend: &Backend,
    socket: &Path,
    alloc: Allocators,
) -> Result<Arc<dyn ControlPlane>> {
    match backend {
        Backend::Embedded => Ok(Arc::new(Client::new(socket))),
        other => Ok(open(other, Path::new(""), alloc).await?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("embedded".parse::<Backend>().unwrap(), Backend::Embedded);
        assert_eq!(
            "etcd://127.0.0.1:2379,h2:2380".parse::<Backend>().unwrap(),
            Backend::Etcd {
                endpoints: vec!["http://127.0.0.1:2379".into(), "http://h2:2380".into()],
                tls: TlsFiles::default(),
            }
        );
        assert_eq!(
            "etcds://h:2379".parse::<Backend>().unwrap(),
            Backend::Etcd {
                endpoints: vec!["https://h:2379".into()],
                tls: TlsFiles::default(),
            }
        );
        assert!(matches!(
            "kubeconfig:/etc/k.conf".parse::<Backend>().unwrap(),
            Backend::Kubernetes { .. }
        ));
        for bad in [
            "",
            "etcd",
            "etcd://h",
            "etcd://:1",
            "etcd://h:x",
            "zk://h:1",
            "kubeconfig:",
        ] {
            let e = bad.parse::<Backend>().unwrap_err().to_string();
            assert!(e.contains("control-plane"), "{bad}: {e}");
        }
    }
}
