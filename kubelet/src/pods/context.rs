//! What every pod worker shares: the connections (control plane,
//! containerd, CNI), the node's identity and paths; and the reads of the
//! cluster objects a container refers to (Services for env vars,
//! ConfigMaps and Secrets for env and volumes).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use controlplane::objects::{Kind, Object};
use controlplane::{ControlPlane, ObjectRef, Scope};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};

use super::probe::Prober;
use crate::cni::Cni;
use crate::Config;
use runtime::image::{Image, Registries};
use runtime::Runtime;

/// Shared by the manager and every pod worker.
pub struct Context {
    pub cp: Arc<dyn ControlPlane>,
    pub rt: Runtime,
    pub cni: Cni,
    pub config: Config,
    pub node_name: String,
    pub node_ip: String,
    /// The `knode` binary: containerd's shim runs it as the log writer.
    pub knode_exe: PathBuf,
    pub pause: Image,
    pub registries: Registries,
    /// The node's one probe scheduler.
    pub prober: Prober,
    /// Events about this node's pods.
    pub events: crate::events::Recorder,
    /// Told of every pod address between CNI ADD and the first container
    /// (NetworkPolicy); `None` when nothing needs to know.
    pub network_gate: Option<Arc<dyn NetworkGate>>,
    /// The node's hostPorts (`None`: nf_tables unavailable; hostPorts
    /// are then not programmed).
    pub hostports: Option<Arc<crate::hostport::HostPorts>>,
}

/// What must hold a new pod's address before any of its containers
/// (init containers included) runs: NetworkPolicy programs the pod's
/// isolation here, so no packet passes that its policies forbid. Called
/// again for a sandbox adopted after a restart (it must be idempotent).
pub trait NetworkGate: Send + Sync {
    /// `pod` has addresses `ips` on this node (one per family). Blocks
    /// until it is enforced; an error fails the sandbox (the worker
    /// retries).
    fn pod_networked(&self, pod: &Pod, ips: &[String]) -> Result<()>;
}

impl Context {
    /// Where a pod's netns is pinned.
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        self.host().netns_path(uid)
    }

    /// What tearing a pod down needs.
    pub fn host(&self) -> Host<'_> {
        Host {
            rt: &self.rt,
            cni: &self.cni,
            config: &self.config,
            hostports: self.hostports.as_deref(),
        }
    }
}

/// The node-side handles that remove a pod (no control plane needed:
/// `knode agent --cleanup` uses them too).
pub struct Host<'a> {
    pub rt: &'a Runtime,
    pub cni: &'a Cni,
    pub config: &'a Config,
    /// Releases a removed pod's hostPorts (`None`: nothing to release, or
    /// the caller removes the whole table).
    pub hostports: Option<&'a crate::hostport::HostPorts>,
}

impl Host<'_> {
    /// Where a pod's netns is pinned.
    pub fn netns_path(&self, uid: &str) -> PathBuf {
        self.config.netns_dir.join(format!("knode-{uid}"))
    }
}

/// The ConfigMaps and Secrets one pod refers to (env, envFrom, volumes),
/// read from the control plane when they are needed, so a container always
/// starts with what exists at that moment, as kubelet's direct gets do.
#[derive(Default)]
pub struct Refs {
    pub config_maps: HashMap<String, ConfigMap>,
    pub secrets: HashMap<String, Secret>,
}

impl Refs {
    /// Reads every ConfigMap and Secret `pod` names. Missing ones are left
    /// out: whether that is an error (non-optional) is for env/volumes.
    pub async fn fetch(cp: &dyn ControlPlane, pod: &Pod) -> Result<Refs> {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let (cms, secs) = referenced(pod);
        let mut r = Refs::default();
        for name in cms {
            match cp.get(&ObjectRef::new(Kind::ConfigMap, ns, &name)).await {
                Ok(Object::ConfigMap(c)) => {
                    r.config_maps.insert(name, *c);
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        for name in secs {
            match cp.get(&ObjectRef::new(Kind::Secret, ns, &name)).await {
                Ok(Object::Secret(s)) => {
                    r.secrets.insert(name, *s);
                }
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(r)
    }
}

/// The registry credentials of the pod's `imagePullSecrets`, read now (as
/// kubelet reads them for each pull). A Secret that is missing, of another
/// type or unreadable is skipped with a warning, as kubelet does: the pull
/// then goes with the node's credentials.
pub async fn pull_keyring(cp: &dyn ControlPlane, pod: &Pod) -> runtime::image::Keyring {
    let mut k = runtime::image::Keyring::default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let names = pod
        .spec
        .iter()
        .flat_map(|s| s.image_pull_secrets.iter().flatten());
    for (i, r) in names.enumerate() {
        let field = format!("spec.imagePullSecrets[{i}]");
        let secret = match cp.get(&ObjectRef::new(Kind::Secret, ns, &r.name)).await {
            Ok(Object::Secret(s)) => s,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(pod = ?pod.metadata.name, secret = %r.name, %field, error = %e, "image pull secret not read; pulling without it");
                continue;
            }
        };
        let data = super::volumes::secret_data(*secret.clone());
        if let Err(e) = k.add_secret(secret.type_.as_deref().unwrap_or("Opaque"), &data) {
            tracing::warn!(pod = ?pod.metadata.name, secret = %r.name, %field, error = %format!("{e:#}"), "image pull secret not usable; pulling without it");
        }
    }
    k
}

/// Names of the ConfigMaps and Secrets a pod refers to.
fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secs) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else {
        return (cms, secs);
    };
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        for e in c.env.iter().flatten() {
            if let Some(v) = &e.value_from {
                if let Some(r) = &v.config_map_key_ref {
                    cms.insert(r.name.clone());
                }
                if let Some(r) = &v.secret_key_ref {
                    secs.insert(r.name.clone());
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &f.secret_ref {
                secs.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secs.insert(s);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &s.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(s) = &s.secret {
                secs.insert(s.name.clone());
            }
        }
    }
    (cms, secs)
}

/// The Services a pod's env vars are made from: those of its namespace,
/// plus `default/kubernetes` (kubelet adds the master service everywhere).
pub async fn services_for(cp: &dyn ControlPlane, namespace: &str) -> Result<Vec<Service>> {
    let mut out = Vec::new();
    for ns in [namespace, "default"] {
        let list = cp.list(&Scope::namespaced(Kind::Service, ns)).await?;
        for o in list.items {
            if let Object::Service(s) = o {
                let keep = ns == namespace || s.metadata.name.as_deref() == Some("kubernetes");
                if keep {
                    out.push(*s);
                }
            }
        }
        if namespace == "default" {
            break;
        }
    }
    Ok(out)
}
