//! Events about pods, as kubelet and the scheduler record them
//! (`kubectl describe pod` and `kubectl get events` read them): Pulled,
//! Created, Started, Killing, BackOff, Unhealthy, Failed, Scheduled,
//! FailedScheduling.
//!
//! Recording never blocks a pod worker: events go through a bounded queue
//! to one writer task, and when the queue is full they are dropped, as
//! client-go's broadcaster drops them. A repeat of the same reason and
//! message about the same pod updates the first Event's `count` and
//! `lastTimestamp` instead of writing a new one (kube's correlator). Each
//! Event lives an hour (kube-apiserver's `--event-ttl`), as a lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::objects::Object;
use crate::{ControlPlane, Kind, ObjectRef};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use tokio::sync::mpsc;

/// How long an Event is kept.
pub const EVENT_TTL: Duration = Duration::from_secs(3600);
/// Events waiting to be written; more are dropped.
const QUEUE: usize = 1024;
/// Remembered (pod, reason, message) keys for aggregation.
const REMEMBERED: usize = 4096;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Normal => "Normal",
            Type::Warning => "Warning",
        }
    }
}

struct Record {
    about: ObjectReference,
    ty: Type,
    reason: String,
    message: String,
    at: jiff::Timestamp,
}

/// Records Events as one component (on one host, for a kubelet).
#[derive(Clone)]
pub struct Recorder {
    tx: Option<mpsc::Sender<Record>>,
}

impl Recorder {
    /// A recorder writing through `cp` as the kubelet of `node`.
    pub fn new(cp: Arc<dyn ControlPlane>, node: &str) -> Recorder {
        Recorder::component(cp, "kubelet", Some(node))
    }

    /// A recorder writing through `cp` as `component` (`default-scheduler`),
    /// on `host` when it runs on one node for it.
    pub fn component(cp: Arc<dyn ControlPlane>, component: &str, host: Option<&str>) -> Recorder {
        let (tx, rx) = mpsc::channel(QUEUE);
        let source = EventSource {
            component: Some(component.into()),
            host: host.map(str::to_string),
        };
        tokio::spawn(writer(cp, source, rx));
        Recorder { tx: Some(tx) }
    }

    /// A recorder that records nothing (tests, and tools without a node).
    pub fn none() -> Recorder {
        Recorder { tx: None }
    }

    /// Records `reason`/`message` about `pod` (`field`: the container's
    /// path, `spec.containers{c}`, as kubelet sets it).
    pub fn pod(&self, pod: &Pod, field: Option<String>, ty: Type, reason: &str, message: String) {
        let about = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: pod.metadata.namespace.clone(),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            field_path: field,
        };
        self.record(about, ty, reason, message);
    }

    /// Records `reason`/`message` about any object.
    pub fn about(&self, obj: &Object, ty: Type, reason: &str, message: String) {
        let meta = obj.meta();
        let about = ObjectReference {
            api_version: Some(obj.kind().api_version().into()),
            kind: Some(obj.kind().name().into()),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: None,
        };
        self.record(about, ty, reason, message);
    }

    fn record(&self, about: ObjectReference, ty: Type, reason: &str, message: String) {
        let Some(tx) = &self.tx else { return };
        let rec = Record {
            about,
            ty,
            reason: reason.into(),
            message,
            at: jiff::Timestamp::now(),
        };
        if tx.try_send(rec).is_err() {
            tracing::debug!(reason, "event queue full; event dropped");
        }
    }
}

/// The key events aggregate by.
type Key = (String, String, String, String);

async fn writer(cp: Arc<dyn ControlPlane>, source: EventSource, mut rx: mpsc::Receiver<Record>) {
    // Key -> (Event name, count).
    let mut seen: HashMap<Key, (String, i32)> = HashMap::new();
    let mut serial: u64 = 0;
    while let Some(r) = rx.recv().await {
        let ns = r.about.namespace.clone().unwrap_or_default();
        let key = (
            r.about.uid.clone().unwrap_or_default(),
            r.about.field_path.clone().unwrap_or_default(),
            r.reason.clone(),
            r.message.clone(),
        );
        if let Some((name, count)) = seen.get_mut(&key) {
            if bump(cp.as_ref(), &ns, name, *count + 1, r.at).await {
                *count += 1;
                continue;
            }
        }
        serial += 1;
        let name = format!(
            "{}.{:x}",
            r.about.name.as_deref().unwrap_or("pod"),
            r.at.as_nanosecond() as u64 ^ serial
        );
        let time = Some(Time(r.at));
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns),
                ..Default::default()
            },
            involved_object: r.about,
            reason: Some(r.reason),
            message: Some(r.message),
            type_: Some(r.ty.as_str().into()),
            source: Some(source.clone()),
            reporting_component: source.component.clone(),
            reporting_instance: source.host.clone(),
            first_timestamp: time.clone(),
            last_timestamp: time,
            count: Some(1),
            ..Default::default()
        };
        match cp.create(Object::from(ev), Some(EVENT_TTL)).await {
            Ok(_) => {
                if seen.len() >= REMEMBERED {
                    seen.clear();
                }
                seen.insert(key, (name, 1));
            }
            Err(e) => tracing::debug!(error = %e, "record an event"),
        }
    }
}

/// Sets a recorded Event's count and lastTimestamp; false when it is gone
/// (expired) or cannot be written, so a new one is made.
async fn bump(
    cp: &dyn ControlPlane,
    ns: &str,
    name: &str,
    count: i32,
    at: jiff::Timestamp,
) -> bool {
    let what = ObjectRef::new(Kind::Event, ns, name);
    let Ok(Object::Event(mut ev)) = cp.get(&what).await else {
        return false;
    };
    ev.count = Some(count);
    ev.last_timestamp = Some(Time(at));
    cp.update(Object::Event(ev), Some(EVENT_TTL)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u-1"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap()
    }

    async fn events(cp: &dyn ControlPlane, n: usize) -> Vec<Event> {
        for _ in 0..200 {
            let list = cp
                .list(&Scope::namespaced(Kind::Event, "default"))
                .await
                .unwrap();
            let evs: Vec<Event> = list
                .items
                .into_iter()
                .filter_map(|o| match o {
                    Object::Event(e) => Some(*e),
                    _ => None,
                })
                .collect();
            let counted: i32 = evs.iter().map(|e| e.count.unwrap_or(0)).sum();
            if counted as usize >= n {
                return evs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("events not written");
    }

    #[tokio::test]
    async fn events_are_written_and_repeats_counted() {
        let dir = std::env::temp_dir().join(format!("knode-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cp: Arc<dyn ControlPlane> =
            crate::backend::open(&crate::backend::Backend::Embedded, &dir, Default::default())
                .await
                .unwrap();
        let rec = Recorder::new(cp.clone(), "n1");
        let field = Some("spec.containers{c}".to_string());
        rec.pod(
            &pod(),
            field.clone(),
            Type::Normal,
            "Started",
            "Started container c".into(),
        );
        for _ in 0..3 {
            rec.pod(
                &pod(),
                field.clone(),
                Type::Warning,
                "BackOff",
                "Back-off restarting failed container c".into(),
            );
        }
        let evs = events(cp.as_ref(), 4).await;
        assert_eq!(evs.len(), 2, "{evs:?}");
        let backoff = evs
            .iter()
            .find(|e| e.reason.as_deref() == Some("BackOff"))
            .unwrap();
        assert_eq!(backoff.count, Some(3));
        assert_eq!(backoff.type_.as_deref(), Some("Warning"));
        assert_eq!(backoff.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(backoff.involved_object.field_path, field);
        assert_eq!(backoff.source.as_ref().unwrap().host.as_deref(), Some("n1"));
        assert!(backoff.last_timestamp.is_some() && backoff.first_timestamp.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
