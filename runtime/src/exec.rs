//! Running a command in a running container (`knode exec`, the API's
//! `pods/exec`, exec probes): a process spec taken from the container's
//! own (env, cwd, user, capabilities, limits) with the command swapped in,
//! started with the Tasks service's Exec, its stdio through FIFOs in a
//! private directory (or a terminal the shim makes, resized with
//! ResizePty), its exit code returned and its process record deleted.
//! Finding which container is the one that runs is here too; which pod and
//! container the user meant is the caller's.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use containerd_client::services::v1::{
    CloseIoRequest, DeleteProcessRequest, ExecProcessRequest, GetContainerRequest, KillRequest,
    ListContainersRequest, ResizePtyRequest, StartRequest, WaitRequest,
};
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use super::task::{self, TaskState};
use super::{is_not_found, labels, status_error, Runtime};

/// The Any type URL containerd uses for an OCI process spec.
const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// The exit code reported when the user interrupted the command (128 +
/// SIGINT, as a shell reports it).
pub const INTERRUPTED: i32 = 130;

/// How long output may lag behind the process's exit before the exec is
/// deleted to close it: a background child it left behind can hold the
/// output open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Where the command's stdio goes.
pub struct ExecIo<'a> {
    /// The directory under which a private (0700) directory holds the
    /// FIFOs for the time of the command (e.g. `<run-dir>/exec`).
    pub fifo_parent: &'a Path,
    /// Input for the command; `None` gives it none. The channel closing is
    /// the end of input.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Box<dyn AsyncWrite + Send + Unpin>,
    /// Unused with a terminal: the terminal's output is all on stdout.
    pub stderr: Box<dyn AsyncWrite + Send + Unpin>,
    /// Run the command on a terminal (a pty the shim makes).
    pub tty: bool,
    /// Terminal sizes (width, height) to apply while it runs.
    pub resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// Runs `argv` in the running container `container_id` and returns its
/// exit code once it has exited and its output has been copied. When
/// `interrupt` completes first the command is killed and the result is
/// [`INTERRUPTED`].
pub async fn exec(
    rt: &Runtime,
    container_id: &str,
    argv: &[String],
    io: ExecIo<'_>,
    interrupt: impl Future<Output = ()>,
) -> Result<i32> {
    let spec = container_spec(rt, container_id).await?;
    let mut process =
        process_spec(&spec, argv, io.tty).with_context(|| format!("exec in {container_id}"))?;
    let mut resize = io.resize;
    // The terminal starts at the size the client has sent so far (kubectl
    // sends it as it connects); later sizes are applied as they come.
    if let Some((width, height)) = resize.as_mut().and_then(latest).filter(|_| io.tty) {
        process["consoleSize"] = serde_json::json!({"width": width, "height": height});
    }
    let exec_id = new_exec_id()?;
    let dir = FifoDir::create(io.fifo_parent, &exec_id)?;
    let stdout = dir.fifo("stdout")?;
    // A terminal has one output: the shim takes no stderr then.
    let stderr = match io.tty {
        false => Some(dir.fifo("stderr")?),
        true => None,
    };
    let stdin = match io.stdin.is_some() {
        true => Some(dir.fifo("stdin")?),
        false => None,
    };
    // Our read ends are open before the shim opens its write ends (it
    // waits for a reader); reading starts only once it has (after Start),
    // as a FIFO without a writer reads as ended.
    let out_rx = pipe::OpenOptions::new()
        .open_receiver(&stdout)
        .with_context(|| format!("open {}", stdout.display()))?;
    let err_rx = match &stderr {
        Some(p) => Some(
            pipe::OpenOptions::new()
                .open_receiver(p)
                .with_context(|| format!("open {}", p.display()))?,
        ),
        None => None,
    };
    // Read-write, so the open never waits for (or fails without) the
    // shim's reader; the shim holds its own writer until CloseIO.
    let in_tx = match &stdin {
        Some(p) => Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)
                .with_context(|| format!("open {}", p.display()))?,
        ),
        None => None,
    };
    let path_str = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let req = ExecProcessRequest {
        container_id: container_id.into(),
        stdin: path_str(&stdin),
        stdout: stdout.display().to_string(),
        stderr: path_str(&stderr),
        terminal: io.tty,
        spec: Some(prost_types::Any {
            type_url: PROCESS_TYPE_URL.into(),
            value: serde_json::to_vec(&process).context("encode the process spec")?,
        }),
        exec_id: exec_id.clone(),
    };
    rt.tasks()
        .exec(rt.req(req))
        .await
        .map_err(status_error)
        .with_context(|| format!("exec in container {container_id}"))?;
    let p = Proc {
        rt,
        container_id,
        exec_id: &exec_id,
    };
    let streams = Streams {
        out: (out_rx, io.stdout),
        err: err_rx.map(|r| (r, io.stderr)),
        stdin: in_tx.zip(io.stdin),
        resize,
    };
    let result = p.run(streams, interrupt).await;
    if result.is_err() {
        let _ = p.kill().await;
    }
    // Whatever happened, the process record goes (also on error).
    let deleted = p.delete().await;
    drop(dir);
    let code = result?;
    deleted?;
    Ok(code)
}

struct Streams {
    out: (pipe::Receiver, Box<dyn AsyncWrite + Send + Unpin>),
    err: Option<(pipe::Receiver, Box<dyn AsyncWrite + Send + Unpin>)>,
    stdin: Option<(pipe::Sender, mpsc::Receiver<Bytes>)>,
    resize: Option<mpsc::Receiver<(u16, u16)>>,
}

/// One exec process of one container.
struct Proc<'a> {
    rt: &'a Runtime,
    container_id: &'a str,
    exec_id: &'a str,
}

impl Proc<'_> {
    async fn run(&self, s: Streams, interrupt: impl Future<Output = ()>) -> Result<i32> {
        let (rt, cid, eid) = (self.rt, self.container_id, self.exec_id);
        rt.tasks()
            .start(rt.req(StartRequest {
                container_id: cid.into(),
                exec_id: eid.into(),
            }))
            .await
            .map_err(status_error)
            .with_context(|| format!("start {:?} in container {cid}", eid))?;
        let out = tokio::spawn(copy(s.out.0, s.out.1));
        let err = s.err.map(|(r, w)| tokio::spawn(copy(r, w)));
        let resize = s.resize.map(|mut sizes| {
            let (rt, cid, eid) = (rt.clone(), cid.to_string(), eid.to_string());
            tokio::spawn(async move {
                while let Some((width, height)) = sizes.recv().await {
                    let r = rt
                        .tasks()
                        .resize_pty(rt.req(ResizePtyRequest {
                            container_id: cid.clone(),
                            exec_id: eid.clone(),
                            width: width.into(),
                            height: height.into(),
                        }))
                        .await;
                    if let Err(e) = r {
                        tracing::debug!(container = %cid, error = %e, "resize the exec's terminal");
                    }
                }
            })
        });
        let feed = s.stdin.map(|(tx, rx)| {
            let (rt, cid, eid) = (rt.clone(), cid.to_string(), eid.to_string());
            tokio::spawn(async move { feed_stdin(&rt, &cid, &eid, tx, rx).await })
        });
        let mut tasks = rt.tasks();
        let wait = tasks.wait(rt.req(WaitRequest {
            container_id: cid.into(),
            exec_id: eid.into(),
        }));
        tokio::pin!(interrupt);
        let code = tokio::select! {
            r = wait => {
                let r = r.map_err(status_error)
                    .with_context(|| format!("wait for the command in container {cid}"))?;
                r.into_inner().exit_status as i32
            }
            _ = &mut interrupt => {
                self.kill().await?;
                INTERRUPTED
            }
        };
        if let Some(f) = feed {
            f.abort();
        }
        if let Some(r) = resize {
            r.abort();
        }
        // The shim closes the output FIFOs once it has copied everything
        // the process wrote; deleting the exec closes them at once.
        let copies = async {
            let _ = out.await;
            if let Some(err) = err {
                let _ = err.await;
            }
        };
        tokio::pin!(copies);
        if tokio::time::timeout(OUTPUT_GRACE, &mut copies)
            .await
            .is_err()
        {
            self.delete().await?;
            let _ = tokio::time::timeout(Duration::from_secs(5), copies).await;
        }
        Ok(code)
    }

    async fn kill(&self) -> Result<()> {
        let r = self
            .rt
            .tasks()
            .kill(self.rt.req(KillRequest {
                container_id: self.container_id.into(),
                exec_id: self.exec_id.into(),
                signal: libc::SIGKILL as u32,
                all: false,
            }))
            .await;
        match r {
            Ok(_) => {}
            Err(s) if is_not_found(&s) => {}
            Err(s) => return Err(status_error(s)).context("kill the command"),
        }
        // Bounded: a wedged shim must not hold the CLI forever.
        let mut tasks = self.rt.tasks();
        let wait = tasks.wait(self.rt.req(WaitRequest {
            container_id: self.container_id.into(),
            exec_id: self.exec_id.into(),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        Ok(())
    }

    async fn delete(&self) -> Result<()> {
        let r = self
            .rt
            .tasks()
            .delete_process(self.rt.req(DeleteProcessRequest {
                container_id: self.container_id.into(),
                exec_id: self.exec_id.into(),
            }))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(s) if is_not_found(&s) => Ok(()),
            Err(s) => Err(status_error(s)).context(format!("delete exec {}", self.exec_id)),
        }
    }
}

/// Copies one output FIFO to its writer until the shim closes it. A
/// writer that fails (a closed pipe on our side) stops the copy.
async fn copy(mut from: pipe::Receiver, mut to: Box<dyn AsyncWrite + Send + Unpin>) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

/// Writes the input into the stdin FIFO; at its end closes our writer and
/// asks the shim to close the process's stdin.
async fn feed_stdin(
    rt: &Runtime,
    container_id: &str,
    exec_id: &str,
    mut tx: pipe::Sender,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<()> {
    while let Some(chunk) = rx.recv().await {
        tx.write_all(&chunk).await.context("write stdin")?;
    }
    drop(tx);
    rt.tasks()
        .close_io(rt.req(CloseIoRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            stdin: true,
        }))
        .await
        .map_err(status_error)
        .context("close stdin")?;
    Ok(())
}

/// The last of the sizes waiting in `sizes`, if any.
fn latest(sizes: &mut mpsc::Receiver<(u16, u16)>) -> Option<(u16, u16)> {
    let mut last = None;
    while let Ok(s) = sizes.try_recv() {
        last = Some(s);
    }
    last
}

/// The container's OCI spec as JSON.
async fn container_spec(rt: &Runtime, id: &str) -> Result<Vec<u8>> {
    let r = rt
        .containers()
        .get(rt.req(GetContainerRequest { id: id.into() }))
        .await;
    let c = match r {
        Ok(r) => r.into_inner().container,
        Err(s) if is_not_found(&s) => bail!("container {id} not found in containerd"),
        Err(s) => return Err(status_error(s)).context(format!("get container {id}")),
    };
    c.and_then(|c| c.spec)
        .map(|s| s.value)
        .ok_or_else(|| anyhow!("container {id} has no OCI spec"))
}

/// The process spec of an exec: the container's own process (so the
/// command runs with its env, cwd, user, capabilities, rlimits and security
/// profile, as CRI does) with `argv` as its args, on a terminal or not.
pub fn process_spec(container_spec: &[u8], argv: &[String], tty: bool) -> Result<Value> {
    if argv.is_empty() {
        bail!("command: required");
    }
    let mut spec: Value =
        serde_json::from_slice(container_spec).context("decode the container's OCI spec")?;
    let mut p = match spec.get_mut("process").map(Value::take) {
        Some(p @ Value::Object(_)) => p,
        _ => bail!("the container's OCI spec has no process"),
    };
    p["args"] = Value::from(argv.to_vec());
    p["terminal"] = Value::Bool(tty);
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    Ok(p)
}

/// The containerd filter that selects the runs of one container of a pod.
pub fn container_filter(pod_uid: &str, container: &str) -> String {
    format!(
        "labels.{}=={},labels.{}=={}",
        quote(labels::POD_UID),
        quote(pod_uid),
        quote(labels::CONTAINER_NAME),
        quote(container)
    )
}

/// A quoted string in containerd's filter syntax (Go string escapes).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The containerd id of the latest run of the pod's container `container`
/// whose task runs, or `None` when no run is running.
pub async fn find_running(rt: &Runtime, pod_uid: &str, container: &str) -> Result<Option<String>> {
    let r = rt
        .containers()
        .list(rt.req(ListContainersRequest {
            filters: vec![container_filter(pod_uid, container)],
        }))
        .await
        .map_err(status_error)
        .context("list containers")?;
    let mut runs: Vec<(u32, String)> = r
        .into_inner()
        .containers
        .into_iter()
        .map(|c| {
            let attempt = c
                .labels
                .get(labels::ATTEMPT)
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            (attempt, c.id)
        })
        .collect();
    runs.sort_unstable_by(|a, b| b.cmp(a));
    for (_, id) in runs {
        if let TaskState::Running { .. } = task::state(rt, &id).await? {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// `exec-` and 16 random hex digits: unique among the container's execs.
fn new_exec_id() -> Result<String> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("read /dev/urandom for an exec id")?;
    Ok(format!("exec-{:016x}", u64::from_be_bytes(b)))
}

/// A private directory (0700) for one exec's FIFOs, removed on drop.
struct FifoDir(PathBuf);

impl FifoDir {
    fn create(parent: &Path, exec_id: &str) -> Result<FifoDir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("create {}", parent.display()))?;
        let dir = parent.join(exec_id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create {}", dir.display()))?;
        Ok(FifoDir(dir))
    }

    fn fifo(&self, name: &str) -> Result<PathBuf> {
        let p = self.0.join(name);
        nix::unistd::mkfifo(
            &p,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .with_context(|| format!("mkfifo {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_runs_as_the_container_does_with_the_new_command() {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": true,
                "consoleSize": {"height": 10, "width": 80},
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                "args": ["httpd", "-f"],
                "env": ["PATH=/bin", "GREETING=hi"],
                "cwd": "/www",
                "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"]},
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs"}
        });
        let argv = vec!["sh".to_string(), "-c".into(), "echo $GREETING".into()];
        let p = process_spec(&serde_json::to_vec(&spec).unwrap(), &argv, false).unwrap();
        assert_eq!(p["args"], serde_json::json!(["sh", "-c", "echo $GREETING"]));
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["env"], spec["process"]["env"]);
        assert_eq!(p["cwd"], "/www");
        assert_eq!(p["user"], spec["process"]["user"]);
        assert_eq!(p["capabilities"], spec["process"]["capabilities"]);
        assert_eq!(p["noNewPrivileges"], true);
    }

    #[test]
    fn bad_specs_and_commands_are_refused_with_a_reason() {
        let e = process_spec(b"{}", &["true".into()], false).unwrap_err();
        assert!(format!("{e:#}").contains("no process"), "{e:#}");
        let e = process_spec(b"not json", &["true".into()], false).unwrap_err();
        assert!(format!("{e:#}").contains("OCI spec"), "{e:#}");
        let e = process_spec(br#"{"process":{}}"#, &[], false).unwrap_err();
        assert!(format!("{e:#}").contains("command"), "{e:#}");
    }

    #[test]
    fn the_filter_quotes_label_values() {
        assert_eq!(
            container_filter("1234-ab", "web"),
            r#"labels."io.knode.pod.uid"=="1234-ab",labels."io.knode.container.name"=="web""#
        );
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quote("a\nb"), r#""a\u000ab""#);
    }

    #[test]
    fn exec_ids_are_random() {
        let a = new_exec_id().unwrap();
        let b = new_exec_id().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("exec-") && a.len() == 21, "{a}");
    }
}
