//! The pods of one namespace as the control plane sees them: a list and
//! then a watch over the agent's socket (the REST client the CLI uses), so
//! the moment a status write lands is timestamped as it arrives instead of
//! being found by polling. It only reads; it never writes a pod.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use controlplane::rest::client::Client;
use controlplane::{ControlPlane, Kind, Object, Scope, Watch, WatchEvent};
use serde_json::Value;

/// What the benchmark needs to know about one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// Running with a podIP and every container running (what
    /// `knode_tests::node::Node::wait_running` waits for).
    pub running: bool,
    /// Its phase and its containers' waiting reasons, for error messages.
    pub detail: String,
}

/// The latest state of every pod in the namespace, by name.
#[derive(Debug, Default)]
pub struct Pods {
    by_name: HashMap<String, PodState>,
}

impl Pods {
    /// True when pod `name` exists and is running.
    pub fn running(&self, name: &str) -> bool {
        self.by_name.get(name).is_some_and(|p| p.running)
    }

    /// True when pod `name` exists (in any state).
    pub fn exists(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// What pod `name` last looked like, for error messages.
    pub fn detail(&self, name: &str) -> String {
        self.by_name
            .get(name)
            .map_or_else(|| "not listed".into(), |p| p.detail.clone())
    }

    /// How many of `names` are running.
    pub fn count_running<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> usize {
        names.into_iter().filter(|n| self.running(n)).count()
    }

    /// How many of `names` still exist.
    pub fn count_existing<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> usize {
        names.into_iter().filter(|n| self.exists(n)).count()
    }

    fn apply(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                self.by_name.insert(o.name().to_string(), state_of(o));
            }
            WatchEvent::Deleted(o) => {
                self.by_name.remove(o.name());
            }
        }
    }
}

/// A pod's state from its JSON form: Running, a podIP, and a non-empty list
/// of container statuses that are all running.
pub fn running(pod: &Value) -> bool {
    let st = &pod["status"];
    st["phase"] == "Running"
        && st["podIP"].as_str().is_some_and(|ip| !ip.is_empty())
        && st["containerStatuses"].as_array().is_some_and(|cs| {
            !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object())
        })
}

fn state_of(o: &Object) -> PodState {
    let v = o.to_value();
    PodState {
        running: running(&v),
        detail: detail(&v),
    }
}

/// `phase Pending, node N, c: waiting ContainerCreating (message)`.
fn detail(pod: &Value) -> String {
    let st = &pod["status"];
    let mut d = format!(
        "phase {}, node {}",
        st["phase"].as_str().unwrap_or("(none)"),
        pod["spec"]["nodeName"].as_str().unwrap_or("(unbound)")
    );
    for c in st["containerStatuses"].as_array().into_iter().flatten() {
        let state = c["state"].as_object().and_then(|m| m.iter().next());
        let (what, info) = state.map_or(("unknown", &Value::Null), |(k, v)| (k.as_str(), v));
        d.push_str(&format!(
            ", {}: {what} {} {}",
            c["name"].as_str().unwrap_or_default(),
            info["reason"].as_str().unwrap_or_default(),
            info["message"].as_str().unwrap_or_default()
        ));
    }
    d.trim_end().to_string()
}

/// A list+watch of the pods of one namespace.
pub struct PodWatch {
    client: Client,
    scope: Scope,
    watch: Watch,
    pods: Pods,
    /// How often the watch had to be reopened (it ended or failed).
    pub reopened: usize,
}

impl PodWatch {
    /// Lists the pods of `namespace` through the agent socket and watches from there.
    pub async fn open(socket: &Path, namespace: &str) -> Result<PodWatch> {
        let client = Client::new(socket);
        let scope = Scope::namespaced(Kind::Pod, namespace);
        let (pods, watch) = list_and_watch(&client, &scope).await?;
        Ok(PodWatch {
            client,
            scope,
            watch,
            pods,
            reopened: 0,
        })
    }

    /// The client it reads with (to delete pods through the same socket).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Applies events as they arrive until `done` holds, and returns the
    /// moment it first did (at once when it already holds). A watch that
    /// ends is reopened from a fresh list. Fails after `timeout`, saying
    /// `what` was awaited and how far it got (`progress`).
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Pods) -> bool,
        progress: impl Fn(&Pods) -> String,
    ) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(&self.pods) {
                return Ok(Instant::now());
            }
            match tokio::time::timeout_at(deadline, self.watch.next()).await {
                Err(_) => bail!(
                    "{what}: not reached in {timeout:?} ({})",
                    progress(&self.pods)
                ),
                Ok(Some(Ok(ev))) => self.pods.apply(&ev),
                Ok(Some(Err(_)) | None) => self.reopen().await?,
            }
        }
    }

    async fn reopen(&mut self) -> Result<()> {
        let (pods, watch) = list_and_watch(&self.client, &self.scope)
            .await
            .context("reopen the pod watch")?;
        self.pods = pods;
        self.watch = watch;
        self.reopened += 1;
        Ok(())
    }
}

async fn list_and_watch(client: &Client, scope: &Scope) -> Result<(Pods, Watch)> {
    let list = client
        .list(scope)
        .await
        .map_err(|e| anyhow!("list pods: {e}"))?;
    let mut pods = Pods::default();
    for o in &list.items {
        pods.by_name.insert(o.name().to_string(), state_of(o));
    }
    let watch = client
        .watch(scope, list.revision)
        .await
        .map_err(|e| anyhow!("watch pods from revision {}: {e}", list.revision))?;
    Ok((pods, watch))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, status: Value) -> Object {
        Object::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": status,
        }))
        .expect("pod")
    }

    fn up() -> Value {
        json!({
            "phase": "Running", "podIP": "10.244.0.5",
            "containerStatuses": [{"name": "c", "state": {"running": {}}}],
        })
    }

    #[test]
    fn running_needs_phase_ip_and_every_container() {
        assert!(running(&pod("a", up()).to_value()));
        let mut no_ip = up();
        no_ip["podIP"] = Value::Null;
        assert!(!running(&pod("a", no_ip).to_value()));
        let mut pending = up();
        pending["phase"] = json!("Pending");
        assert!(!running(&pod("a", pending).to_value()));
        let mut waiting = up();
        waiting["containerStatuses"] = json!([
            {"name": "c", "state": {"running": {}}},
            {"name": "d", "state": {"waiting": {"reason": "ContainerCreating"}}},
        ]);
        assert!(!running(&pod("a", waiting).to_value()));
        let mut none = up();
        none["containerStatuses"] = json!([]);
        assert!(!running(&pod("a", none).to_value()));
    }

    #[test]
    fn events_track_state_and_deletion() {
        let mut p = Pods::default();
        p.apply(&WatchEvent::Added(pod("a", json!({"phase": "Pending"}))));
        assert!(p.exists("a") && !p.running("a"));
        p.apply(&WatchEvent::Modified(pod("a", up())));
        assert!(p.running("a"));
        let names = vec!["a".to_string(), "b".to_string()];
        assert_eq!((p.count_running(&names), p.count_existing(&names)), (1, 1));
        p.apply(&WatchEvent::Deleted(pod("a", up())));
        assert!(!p.exists("a"));
        assert_eq!(p.count_existing(&names), 0);
    }
}
