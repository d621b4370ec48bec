//! The API's `pods/<name>/exec` and `attach` for the pods of this node.
//! Exec runs the command in the container's running task through this
//! node's containerd, as `knode exec` runs it, with the client's streams
//! and terminal. Attach streams the running container's output from now
//! on, read from its log as the log writer writes it (stdout and stderr
//! apart), until the container stops; the containers knode runs have no
//! stdin or terminal to attach to, so those are refused. The API sends a
//! pod of another node to that node's API (its kubelet port); one that
//! still arrives here is refused naming that node.

use std::path::PathBuf;
use std::time::Duration;

use apiserver::exec::{PodExec, Session, StreamQuery, Streams, Verb};
use async_trait::async_trait;
use controlplane::Error;
use k8s_openapi::api::core::v1::Pod;
use kubelet::logs::cri::Stream;
use kubelet::logs::reader::{Follower, Message};
use kubelet::logs::{self, view};
use runtime::exec::{self, ExecIo};
use runtime::task::{self, TaskState};
use runtime::Runtime;
use tokio::io::AsyncWriteExt;

use crate::pod_logs::served_here;

/// Commands in this node's pods.
pub struct NodeExec {
    pub node_name: String,
    pub containerd_socket: PathBuf,
    pub containerd_namespace: String,
    /// Where each exec's FIFOs live for its time (`<run-dir>/exec`).
    pub fifo_parent: PathBuf,
    /// The containers' logs (what attach reads).
    pub log_dir: PathBuf,
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
        if verb == Verb::Attach && (q.stdin || q.tty) {
            return Err(Error::BadRequest(
                "stdin, tty: the containers knode runs have no stdin or terminal open (spec.containers[].stdin and tty are not supported): attach to the output only".into(),
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
            .map_err(|e| Error::Internal(format!("containerd: {e:#}")))?;
        let id = exec::find_running(&rt, &uid, &container)
            .await
            .map_err(|e| Error::Internal(format!("containerd: {e:#}")))?
            .ok_or_else(|| {
                Error::BadRequest(format!(
                    "container {container} is not running in pod {name}"
                ))
            })?;
        if verb == Verb::Attach {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            return Ok(Box::new(Attach {
                rt,
                container_id: id,
                dir: logs::container_log_dir(&self.log_dir, &ns, &name, &uid, &container),
            }));
        }
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

/// How often attach reads the log for new output, and how many reads
/// between checks that the container still runs.
const POLL: Duration = Duration::from_millis(100);
const POLLS_PER_CHECK: u32 = 10;

/// One attach: the running container's output from now on.
struct Attach {
    rt: Runtime,
    container_id: String,
    /// The container's log directory (a file per run).
    dir: PathBuf,
}

#[async_trait]
impl Session for Attach {
    async fn run(self: Box<Self>, mut io: Streams) -> Result<i32, String> {
        let read_err = |e: std::io::Error| format!("read {}: {e}", self.dir.display());
        // The latest run is the running one; what it wrote before now is
        // the log's, not the attach's.
        let mut follower = Follower::new(&self.dir, None);
        follower.poll(&mut |_| {}).map_err(read_err)?;
        let mut tick = tokio::time::interval(POLL);
        for n in 1u32.. {
            tokio::select! {
                _ = &mut io.gone => return Ok(0),
                _ = tick.tick() => {}
            }
            let mut lines = Vec::new();
            follower.poll(&mut |m| lines.push(m)).map_err(read_err)?;
            let stopped = n % POLLS_PER_CHECK == 0
                && !matches!(
                    task::state(&self.rt, &self.container_id).await,
                    Ok(TaskState::Running { .. })
                );
            if stopped {
                follower.poll(&mut |m| lines.push(m)).map_err(read_err)?;
                follower.finish(&mut |m| lines.push(m)).map_err(read_err)?;
            }
            if write(&mut io, &lines).await.is_err() {
                return Ok(0);
            }
            if stopped {
                return Ok(0);
            }
        }
        Ok(0)
    }
}

/// Writes each line to the stream it came from.
async fn write(io: &mut Streams, lines: &[Message]) -> std::io::Result<()> {
    for m in lines {
        match m.stream {
            Stream::Stdout => io.stdout.write_all(&m.content).await?,
            Stream::Stderr => io.stderr.write_all(&m.content).await?,
        }
    }
    io.stdout.flush().await?;
    io.stderr.flush().await
}
