//! `knode logs POD [-n NS] [-c CONTAINER] [-f] [-p] [--tail N] [--timestamps]`:
//! a container's output, read from its CRI log files on this node (the pod
//! comes from the control plane, for its uid and containers). Also the
//! pod and container lookup that `knode exec` shares.

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use controlplane::defaults::DEFAULT_NAMESPACE;
use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use k8s_openapi::api::core::v1::Pod;

use super::connect;
use crate::config::Config;
use kubelet::logs::{self, reader, view};

#[derive(Args)]
pub struct LogsArgs {
    /// The pod.
    pub pod: String,
    /// Namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// The container (required when the pod has several).
    #[arg(short, long)]
    pub container: Option<String>,
    /// Keep printing new output (and the next run's) until the pod is
    /// deleted.
    #[arg(short, long)]
    pub follow: bool,
    /// The previous run of the container instead of the current one.
    #[arg(short, long)]
    pub previous: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub tail: i64,
    /// Each line starts with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
}

pub async fn run(config: &Config, args: LogsArgs) -> Result<ExitCode> {
    let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let cp = connect(config).await?;
    let pod = get_pod(cp.as_ref(), ns, &args.pod).await?;
    let uid = pod_uid(&pod)?;
    let container = log_container(&pod, &args.pod, args.container.as_deref())?;
    let dir = logs::container_log_dir(&config.log_dir, ns, &args.pod, &uid, &container);
    let runs = reader::attempts(&dir).with_context(|| format!("read {}", dir.display()))?;
    let picked = reader::pick(&runs, args.previous, view::restart_count(&pod, &container));
    let mut out = Printer::new(args.timestamps, args.tail);
    if args.previous {
        let Some(run) = picked else {
            bail!(
                "previous terminated container \"{container}\" in pod \"{}\" not found",
                args.pod
            );
        };
        // A finished run's file does not grow: nothing to follow.
        let r = print_file(&dir, run, &mut out);
        return out.finish(r);
    }
    if !args.follow {
        let Some(run) = picked else {
            bail!(
                "container \"{container}\" in pod \"{}\" has not started yet (no log in {})",
                args.pod,
                dir.display()
            );
        };
        let r = print_file(&dir, run, &mut out);
        return out.finish(r);
    }
    let r = follow(cp.as_ref(), ns, &args.pod, &uid, &dir, picked, &mut out).await;
    out.finish(r)
}

/// Prints one run's whole file.
fn print_file(dir: &Path, run: u32, out: &mut Printer) -> Result<()> {
    let path = reader::file(dir, run);
    let Printer { shaper, out: w } = out;
    let malformed = view::read_run(dir, run, shaper, &mut |b| w.write_all(b))
        .with_context(|| format!("read {}", path.display()))?;
    warn_malformed(malformed, &path);
    Ok(())
}

/// Prints what there is, then what comes, until the pod is deleted (or
/// replaced by one with another uid).
async fn follow(
    cp: &dyn ControlPlane,
    ns: &str,
    pod: &str,
    uid: &str,
    dir: &Path,
    start: Option<u32>,
    out: &mut Printer,
) -> Result<()> {
    let Printer { shaper, out: w } = out;
    let mut to = Stdout {
        w,
        cp,
        ns,
        pod,
        uid,
    };
    let malformed = view::follow(dir, start, shaper, &mut to)
        .await
        .with_context(|| format!("read {}", dir.display()))?;
    warn_malformed(malformed, dir);
    Ok(())
}

/// Following to stdout.
struct Stdout<'a> {
    w: &'a mut io::BufWriter<io::Stdout>,
    cp: &'a dyn ControlPlane,
    ns: &'a str,
    pod: &'a str,
    uid: &'a str,
}

impl view::Follower for Stdout<'_> {
    fn write<'a>(&'a mut self, bytes: &'a [u8]) -> view::IoFuture<'a, ()> {
        let r = self.w.write_all(bytes).and_then(|_| self.w.flush());
        Box::pin(async move { r })
    }

    fn alive(&mut self) -> view::IoFuture<'_, bool> {
        Box::pin(async move {
            pod_exists(self.cp, self.ns, self.pod, self.uid)
                .await
                .map_err(io::Error::other)
        })
    }
}

/// Whether the pod (this very pod: same uid) still exists. An unreachable
/// control plane (an agent restarting) is not a deleted pod.
async fn pod_exists(cp: &dyn ControlPlane, ns: &str, name: &str, uid: &str) -> Result<bool> {
    match cp.get(&ObjectRef::new(Kind::Pod, ns, name)).await {
        Ok(o) => Ok(o.meta().uid.as_deref() == Some(uid)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(controlplane::Error::Unavailable(_)) => Ok(true),
        Err(e) => Err(e).with_context(|| format!("get pod {name}")),
    }
}

fn warn_malformed(n: u64, path: &Path) {
    if n > 0 {
        eprintln!(
            "warning: skipped {n} line(s) of {} that are not in the CRI log format",
            path.display()
        );
    }
}

/// Writes to stdout, shaped by `--tail` and `--timestamps`.
struct Printer {
    out: io::BufWriter<io::Stdout>,
    shaper: view::Shaper,
}

impl Printer {
    fn new(timestamps: bool, tail: i64) -> Printer {
        Printer {
            out: io::BufWriter::new(io::stdout()),
            shaper: view::Shaper::new(view::Options {
                tail: usize::try_from(tail).ok(),
                timestamps,
                ..Default::default()
            }),
        }
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().context("write to stdout")
    }

    /// The command's result: a reader that went away (`| head`) is not an
    /// error.
    fn finish(&mut self, r: Result<()>) -> Result<ExitCode> {
        let r = r.and_then(|_| self.flush());
        match r {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(e)
                if e.downcast_ref::<io::Error>()
                    .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) =>
            {
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(e),
        }
    }
}

/// The pod `ns/name`, with a kubectl-like error when it does not exist.
pub async fn get_pod(cp: &dyn ControlPlane, ns: &str, name: &str) -> Result<Pod> {
    match cp.get(&ObjectRef::new(Kind::Pod, ns, name)).await {
        Ok(Object::Pod(p)) => Ok(*p),
        Ok(o) => bail!("{} is not a pod", o.describe()),
        Err(e) if e.is_not_found() => {
            bail!("pods \"{name}\" not found in namespace \"{ns}\"")
        }
        Err(e) => Err(e).with_context(|| format!("get pod {ns}/{name}")),
    }
}

/// The pod's uid (its log dir and its containers' labels carry it).
pub fn pod_uid(pod: &Pod) -> Result<String> {
    match pod.metadata.uid.as_deref() {
        Some(u) if !u.is_empty() => Ok(u.to_string()),
        _ => Err(anyhow!(
            "pod {:?} has no metadata.uid",
            pod.metadata.name.as_deref().unwrap_or_default()
        )),
    }
}

/// The container `knode logs` reads (kubectl's rules: [`view::log_container`]).
pub fn log_container(pod: &Pod, pod_name: &str, wanted: Option<&str>) -> Result<String> {
    view::log_container(pod, pod_name, wanted).map_err(|e| anyhow!(e))
}

/// The container `knode exec` runs in: `-c`, else the annotated default,
/// else the first, saying so on stderr when there was a choice (as
/// kubectl exec).
pub fn exec_container(pod: &Pod, pod_name: &str, wanted: Option<&str>) -> Result<String> {
    if let Some(w) = wanted {
        return view::named(pod, pod_name, w).map_err(|e| anyhow!(e));
    }
    if let Some(d) = view::annotated_default(pod) {
        return Ok(d);
    }
    let (app, _) = view::names(pod);
    match app.as_slice() {
        [] => bail!("pod \"{pod_name}\" has no containers"),
        [only] => Ok(only.clone()),
        [first, ..] => {
            eprintln!("Defaulted container \"{first}\" out of: {}", app.join(", "));
            Ok(first.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(app: &[&str], init: &[&str], default: Option<&str>) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "web", "uid": "u1"},
            "spec": {
                "containers": app.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>(),
            }
        });
        if !init.is_empty() {
            v["spec"]["initContainers"] = init
                .iter()
                .map(|n| serde_json::json!({"name": n}))
                .collect();
        }
        if let Some(d) = default {
            v["metadata"]["annotations"] = serde_json::json!({ view::DEFAULT_CONTAINER: d });
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_only_container_needs_no_name() {
        assert_eq!(
            log_container(&pod(&["a"], &[], None), "web", None).unwrap(),
            "a"
        );
    }

    #[test]
    fn with_several_the_user_must_choose_like_kubectl() {
        let e = log_container(&pod(&["a", "b"], &[], None), "web", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a container name must be specified for pod web, choose one of: [a b]"
        );
        let e = log_container(&pod(&["a", "b"], &["init"], None), "web", None).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("or one of the init containers: [init]"),
            "{e}"
        );
        // The annotation chooses, as it does for kubectl.
        assert_eq!(
            log_container(&pod(&["a", "b"], &[], Some("b")), "web", None).unwrap(),
            "b"
        );
        // exec takes the first.
        assert_eq!(
            exec_container(&pod(&["a", "b"], &[], None), "web", None).unwrap(),
            "a"
        );
    }

    #[test]
    fn a_named_container_must_exist() {
        let p = pod(&["a", "b"], &["init"], None);
        assert_eq!(log_container(&p, "web", Some("init")).unwrap(), "init");
        let e = exec_container(&p, "web", Some("c")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"c\" not found in pod \"web\" (choose one of: [a b init])"
        );
    }
}
