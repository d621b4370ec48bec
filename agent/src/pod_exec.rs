//! The API's `pods/<name>/exec` for the pods of this node: the command
//! runs in the container's running task through this node's containerd,
//! as `knode exec` runs it, with the client's streams and terminal. A pod
//! on another node is refused naming that node (the kubelet port that
//! would reach it is not built yet); `attach` is not served yet.

use std::path::PathBuf;

use apiserver::exec::{PodExec, Session, StreamQuery, Streams, Verb};
use async_trait::async_trait;
use controlplane::Error;
use k8s_openapi::api::core::v1::Pod;
use kubelet::logs::view;
use runtime::exec::{self, ExecIo};
use runtime::Runtime;

use crate::pod_logs::served_here;

/// Commands in this node's pods.
pub struct NodeExec {
    pub node_name: String,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    /// Where each exec's FIFOs live for its time (`<run-dir>/exec`).
    pub fifo_parent: PathBuf,
}

#[async_trait]
impl PodExec for NodeExec {
    async fn prepare(
        &self,
        pod: &Pod,
        verb: Verb,
        q: &StreamQuery,
    ) -> Result<Box<dyn Session>, Error> {
        served_here(pod, &self.node_name, "runs commands in")?;
        if verb == Verb::Attach {
            return Err(Error::BadRequest(
                "pods/attach is not served yet: use exec".into(),
            ));
        }
        let name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // kube-apiserver's rules: the named one, the annotated default, the
        // only one; its words when the name is not the pod's.
        let container = match q.container.as_deref() {
            Some(c) => view::named(pod, &name, c).map_err(|_| {
                Error::BadRequest(format!("container {c} is not valid for pod {name}"))
            })?,
            None => view::log_container(pod, &name, None).map_err(Error::BadRequest)?,
        };
        let rt = Runtime::connect(&self.containerd_socket, &self.containerd_namespace)
            .await
            .map_err(|e| Error::Unavailable(format!("containerd: {e:#}")))?;
        let id = exec::find_running(&rt, &uid, &container)
            .await
            .map_err(|e| Error::Unavailable(format!("{e:#}")))?
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "container {container} is not running in pod {name}"
                ))
            })?;
        Ok(Box::new(Exec {
            rt,
            container_id: id,
            command: q.command.clone(),
            tty: q.tty,
            fifo_parent: self.fifo_parent.clone(),
        }))
    }
}

/// One command, ready to run.
struct Exec {
    rt: Runtime,
    container_id: String,
    command: Vec<String>,
    tty: bool,
    fifo_parent: PathBuf,
}

#[async_trait]
impl Session for Exec {
    async fn run(self: Box<Self>, io: Streams) -> Result<i32, String> {
        let exec_io = ExecIo {
            fifo_parent: &self.fifo_parent,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            tty: self.tty,
            resize: Some(io.resize),
        };
        exec::exec(
            &self.rt,
            &self.container_id,
            &self.command,
            exec_io,
            io.gone,
        )
        .await
        .map_err(|e| format!("{e:#}"))
    }
}
