//! The pod manager: watches every pod, runs one worker per pod bound to
//! this node, binds unscheduled pods, hands workers what containerd already
//! runs for them (adoption after a restart), and once the first full list
//! is in, removes what no pod owns (containers, netns, CNI attachments,
//! volumes).
//!
//! Scheduling is deliberately minimal: a pod without `spec.nodeName` whose
//! nodeSelector matches this node's labels is bound by compare-and-set, so
//! with several nodes the first to see it takes it and the others get a
//! conflict and leave it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use anyhow::Result;
use controlplane::objects::{Kind, Object};
use controlplane::watcher::{Update, Watcher};
use controlplane::{ObjectRef, Scope, WatchEvent};
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::mpsc;

use super::context::{Context, Host};
use super::sandbox;
use super::volumes;
use super::worker::{self, Msg};
use runtime::labels;
use runtime::task::{self, Owned};

/// Runs until the task is dropped.
pub async fn run(ctx: Arc<Context>) -> Result<()> {
    let mut adopt: HashMap<String, Vec<Owned>> = HashMap::new();
    for o in task::list_owned(&ctx.rt, labels::POD_UID).await? {
        if let Some(uid) = o.labels.get(labels::POD_UID).cloned() {
            adopt.entry(uid).or_default().push(o);
        }
    }
    tracing::info!(pods = adopt.len(), "containers found in containerd");
    let mut m = Manager {
        ctx: ctx.clone(),
        workers: HashMap::new(),
        adopt,
        pod_ips: HashMap::new(),
        swept: false,
    };
    let mut pods = Watcher::new(ctx.cp.clone(), Scope::all(Kind::Pod));
    loop {
        match pods.next().await {
            Update::Event(WatchEvent::Added(Object::Pod(p)))
            | Update::Event(WatchEvent::Modified(Object::Pod(p))) => m.on_pod(*p),
            Update::Event(WatchEvent::Deleted(Object::Pod(p))) => m.on_deleted(&p),
            Update::Event(_) => {}
            Update::Synced => {
                if !m.swept {
                    m.swept = true;
                    m.sweep().await;
                }
            }
        }
    }
}

struct Manager {
    ctx: Arc<Context>,
    workers: HashMap<String, mpsc::UnboundedSender<Msg>>,
    /// Containers found at startup, by pod uid, until a worker takes them.
    adopt: HashMap<String, Vec<Owned>>,
    /// The addresses of this node's pods, as their status says.
    pod_ips: HashMap<String, String>,
    swept: bool,
}

impl Manager {
    fn on_pod(&mut self, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() {
            if self.ctx.config.bind_pending && self.selects_us(&pod) {
                tokio::spawn(bind(self.ctx.clone(), pod));
            }
            return;
        }
        if node != self.ctx.node_name {
            // Not ours (any more): a worker we had tears down.
            if let Some(tx) = self.workers.remove(&uid) {
                let _ = tx.send(Msg::Deleted);
            }
            return;
        }
        if let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) {
            self.pod_ips.insert(uid.clone(), ip);
        }
        if let Some(tx) = self.workers.get(&uid) {
            if tx.send(Msg::Update(Box::new(pod.clone()))).is_ok() {
                return;
            }
        }
        let owned = self.adopt.remove(&uid).unwrap_or_default();
        let tx = worker::spawn(self.ctx.clone(), pod, owned);
        self.workers.insert(uid, tx);
    }

    fn on_deleted(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.pod_ips.remove(&uid);
        if let Some(tx) = self.workers.remove(&uid) {
            let _ = tx.send(Msg::Deleted);
        }
    }

    /// nodeSelector against this node's well-known labels.
    fn selects_us(&self, pod: &Pod) -> bool {
        let ours = BTreeMap::from([
            (
                "kubernetes.io/hostname".to_string(),
                self.ctx.node_name.clone(),
            ),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
        ]);
        pod.spec
            .as_ref()
            .and_then(|s| s.node_selector.as_ref())
            .is_none_or(|sel| sel.iter().all(|(k, v)| ours.get(k) == Some(v)))
    }

    /// Removes what no pod of this node owns. Runs once, after the first
    /// full list, so every live pod already has its worker.
    async fn sweep(&mut self) {
        let live: HashSet<String> = self.workers.keys().cloned().collect();
        if let Some(h) = self.ctx.hostports.clone() {
            // hostPorts left by pods deleted while the agent was down.
            let ips = self
                .pod_ips
                .iter()
                .filter(|(u, _)| live.contains(*u))
                .filter_map(|(_, ip)| ip.parse().ok())
                .collect();
            match tokio::task::spawn_blocking(move || h.sweep(&ips)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(elements = n, "removed hostPorts no pod holds"),
                Ok(Err(e)) => tracing::warn!(error = %e, "sweep hostPorts"),
                Err(e) => tracing::warn!(error = %e, "sweep hostPorts"),
            }
        }
        let mut orphans: HashSet<String> = self.adopt.drain().map(|(uid, _)| uid).collect();
        orphans.extend(uids_on_node(&self.ctx.host()));
        orphans.retain(|u| !live.contains(u) && !u.is_empty());
        for uid in orphans {
            tracing::info!(uid = %uid, "removing what no pod owns");
            let ctx = self.ctx.clone();
            tokio::spawn(async move {
                for id in owned_by(&ctx, &uid).await {
                    let _ = task::stop(&ctx.rt, &id, sandbox::ORPHAN_GRACE).await;
                }
                if let Err(e) = sandbox::remove_pod(&ctx.host(), &uid, None).await {
                    tracing::warn!(uid = %uid, error = %format!("{e:#}"), "remove orphan");
                }
            });
        }
    }
}

/// The uids of pods that left something on this node besides containers:
/// pinned namespaces in our netns dir, CNI attachments of our sandboxes,
/// volume dirs. Unreadable sources are logged and skipped.
pub fn uids_on_node(host: &Host<'_>) -> HashSet<String> {
    let mut uids = HashSet::new();
    if let Ok(dir) = std::fs::read_dir(&host.config.netns_dir) {
        for e in dir.flatten() {
            if let Some(uid) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("knode-"))
            {
                uids.insert(uid.to_string());
            }
        }
    }
    match host.cni.cached_ids() {
        Ok(ids) => uids.extend(
            ids.iter()
                .filter_map(|id| id.strip_suffix("-pause"))
                .map(str::to_string),
        ),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "list CNI cache"),
    }
    match volumes::orphans(&host.config.data_dir) {
        Ok(found) => uids.extend(found),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "list pod volume dirs"),
    }
    uids.retain(|u| !u.is_empty());
    uids
}

/// The containers of pod `uid` (for a graceful stop of orphans).
async fn owned_by(ctx: &Context, uid: &str) -> Vec<String> {
    task::list_owned(&ctx.rt, labels::POD_UID)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.labels.get(labels::POD_UID).map(String::as_str) == Some(uid))
        .map(|o| o.id)
        .collect()
}

/// Binds `pod` to this node by compare-and-set; losing the race is fine.
async fn bind(ctx: Arc<Context>, mut pod: Pod) {
    let key = ObjectRef::new(
        Kind::Pod,
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or_default(),
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(ctx.node_name.clone());
    }
    match ctx.cp.update(Object::from(pod), None).await {
        Ok(_) => tracing::info!(pod = %key, node = %ctx.node_name, "bound"),
        Err(e) if e.is_conflict() || e.is_not_found() => {}
        Err(e) => tracing::warn!(pod = %key, error = %e, "bind"),
    }
}
