//! The API's `pods/<name>/log` for the pods of this node: the CRI log
//! files the kubelet's log writer keeps, read with kubelet::logs::view as
//! `knode logs` reads them. The API sends a pod of another node to that
//! node's API (its kubelet port, apiserver::nodeapi) before asking here;
//! one that still arrives (the node API asked for another node's pod) is
//! refused with a clear reason.

use std::path::PathBuf;
use std::sync::Arc;

use apiserver::logs::{LogQuery, PodLogs};
use async_trait::async_trait;
use bytes::Bytes;
use controlplane::{ControlPlane, Error, Kind, ObjectRef};
use k8s_openapi::api::core::v1::Pod;
use kubelet::logs::{self, reader, view};
use tokio::sync::mpsc;

/// Chunks in flight to a slow reader before reading pauses.
const IN_FLIGHT: usize = 16;

/// This node's pods' logs.
pub struct NodeLogs {
    pub cp: Arc<dyn ControlPlane>,
    pub node_name: String,
    pub log_dir: PathBuf,
}

#[async_trait]
impl PodLogs for NodeLogs {
    async fn logs(&self, pod: &Pod, q: &LogQuery) -> Result<mpsc::Receiver<Bytes>, Error> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        served_here(pod, &self.node_name, "reads the logs of")?;
        let container =
            view::log_container(pod, &name, q.container.as_deref()).map_err(Error::BadRequest)?;
        let dir = logs::container_log_dir(&self.log_dir, &ns, &name, &uid, &container);
        let runs = reader::attempts(&dir).unwrap_or_default();
        let picked = reader::pick(&runs, q.previous, view::restart_count(pod, &container));
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let mut shaper = view::Shaper::new(view::Options {
            tail: q.tail_lines,
            since: q.since,
            limit_bytes: q.limit_bytes,
            timestamps: q.timestamps,
        });
        if q.previous || !q.follow {
            let Some(run) = picked else {
                return Err(Error::BadRequest(if q.previous {
                    format!(
                        "previous terminated container \"{container}\" in pod \"{name}\" not found"
                    )
                } else {
                    format!("container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating")
                }));
            };
            tokio::task::spawn_blocking(move || {
                let sink = &mut |b: &[u8]| send_blocking(&tx, b);
                if let Err(e) = view::read_run(&dir, run, &mut shaper, sink) {
                    tracing::debug!(error = %e, "pod log read ended");
                }
            });
            return Ok(rx);
        }
        let mut to = Remote {
            tx,
            cp: self.cp.clone(),
            pod: ObjectRef::new(Kind::Pod, &ns, &name),
            uid,
        };
        tokio::spawn(async move {
            if let Err(e) = view::follow(&dir, picked, &mut shaper, &mut to).await {
                tracing::debug!(error = %e, "pod log follow ended");
            }
        });
        Ok(rx)
    }
}

/// Refuses a pod this node does not run, naming the node that does
/// (`what` this API does: "reads the logs of"); the API proxies such a
/// pod to its node before it gets here.
pub fn served_here(pod: &Pod, node_name: &str, what: &str) -> Result<(), Error> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        None | Some("") => Err(Error::BadRequest(format!(
            "pod {name} does not have a host assigned"
        ))),
        Some(n) if n != node_name => Err(Error::BadRequest(format!(
            "pod {name} runs on node {n}: this API {what} node {node_name}'s pods only (ask the API of node {n})"
        ))),
        Some(_) => Ok(()),
    }
}

/// Following into an API response.
struct Remote {
    tx: mpsc::Sender<Bytes>,
    cp: Arc<dyn ControlPlane>,
    pod: ObjectRef,
    uid: String,
}

impl view::Follower for Remote {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> view::IoFuture<'a, ()> {
        Box::pin(send(&self.tx, bytes))
    }

    fn alive(&mut self) -> view::IoFuture<'_, bool> {
        Box::pin(async move {
            match self.cp.get(&self.pod).await {
                Ok(o) => Ok(o.meta().uid.as_deref() == Some(self.uid.as_str())),
                Err(e) if e.is_not_found() => Ok(false),
                // An unreachable control plane is not a deleted pod.
                Err(_) => Ok(true),
            }
        })
    }
}

fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader went away")
}

async fn send(tx: &mpsc::Sender<Bytes>, b: &[u8]) -> std::io::Result<()> {
    if b.is_empty() {
        return Ok(());
    }
    tx.send(Bytes::copy_from_slice(b)).await.map_err(|_| gone())
}

fn send_blocking(tx: &mpsc::Sender<Bytes>, b: &[u8]) -> std::io::Result<()> {
    if b.is_empty() {
        return Ok(());
    }
    tx.blocking_send(Bytes::copy_from_slice(b))
        .map_err(|_| gone())
}
