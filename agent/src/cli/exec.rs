//! `knode exec POD [-n NS] [-c CONTAINER] [-i] -- COMMAND [ARG...]`: runs a
//! command in a pod's running container through this node's containerd
//! (the CLI runs as root on the node) and exits with the command's code.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use clap::Args;
use controlplane::defaults::DEFAULT_NAMESPACE;
use tokio::sync::mpsc;

use super::connect;
use super::logs::{exec_container, get_pod, pod_uid};
use crate::config::Config;
use runtime::exec::{self, ExecIo};
use runtime::Runtime;

#[derive(Args)]
pub struct ExecArgs {
    /// The pod.
    pub pod: String,
    /// Namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The container (default: the pod's only, or first, container).
    #[arg(short, long)]
    pub container: Option<String>,
    /// Pass stdin to the command.
    #[arg(short = 'i', long)]
    pub stdin: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

pub async fn run(config: &Config, args: ExecArgs) -> Result<ExitCode> {
    let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let cp = connect(config).await?;
    let pod = get_pod(cp.as_ref(), ns, &args.pod).await?;
    let uid = pod_uid(&pod)?;
    let container = exec_container(&pod, &args.pod, args.container.as_deref())?;
    let rt = Runtime::connect(&config.containerd_socket, &config.containerd_namespace).await?;
    let id = exec::find_running(&rt, &uid, &container)
        .await?
        .ok_or_else(|| {
            anyhow!(
                "container \"{container}\" in pod \"{}\" is not running",
                args.pod
            )
        })?;
    let io = ExecIo {
        fifo_parent: &config.run_dir.join("exec"),
        stdin: args.stdin.then(read_stdin),
        stdout: Box::new(async_fd(std::io::stdout().as_fd())?),
        stderr: Box::new(async_fd(std::io::stderr().as_fd())?),
        tty: false,
        resize: None,
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler: never interrupt.
            std::future::pending::<()>().await;
        }
    };
    let code = exec::exec(&rt, &id, &args.command, io, interrupt).await?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// An async writer on a copy of one of our descriptors (a terminal, pipe
/// or file alike; writes run on tokio's blocking pool).
fn async_fd(fd: BorrowedFd<'_>) -> Result<tokio::fs::File> {
    let fd = fd.try_clone_to_owned().context("dup stdout/stderr")?;
    Ok(tokio::fs::File::from_std(std::fs::File::from(fd)))
}

/// Our stdin as a channel. A plain thread reads it: a read blocked on a
/// terminal must not keep the process from exiting when the command is
/// done (tokio's stdin would hold the runtime's shutdown).
fn read_stdin() -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}
