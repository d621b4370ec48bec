//! `knode delete -f FILE` and `knode delete KIND NAME...`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use controlplane::defaults::DEFAULT_NAMESPACE;
use controlplane::{ControlPlane, DeleteOptions, Kind, ObjectRef};

use super::{connect, read_manifests, set_namespace};
use crate::config::Config;

#[derive(Args)]
pub struct DeleteArgs {
    /// KIND NAME [NAME...] (when no -f is given).
    pub what: Vec<String>,
    /// Manifest file, directory, or - for stdin (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<String>,
    /// Namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Succeed when an object is already gone.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Seconds a pod's containers get to stop (-1: the pod's own
    /// terminationGracePeriodSeconds). 0 only with --force (else 1).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Remove at once, without waiting for the kubelet to stop the pod's
    /// containers (implies --grace-period=0).
    #[arg(long)]
    pub force: bool,
    /// Wait until each object is gone before returning (as kubectl).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub wait: bool,
    /// What happens to dependents: `background` (the garbage collector
    /// deletes them) or `orphan` (they lose their owner reference and stay).
    #[arg(long, default_value = "background", value_parser = ["background", "orphan"])]
    pub cascade: String,
}

/// kubectl's grace period rules: -1 leaves it to the object; `--force`
/// means 0 unless a period is given; 0 without `--force` means 1.
fn grace_of(args: &DeleteArgs) -> Result<Option<i64>> {
    match (args.grace_period, args.force) {
        (g, _) if g < -1 => bail!("--grace-period: must be -1 or more, not {g}"),
        (-1, true) => Ok(Some(0)),
        (-1, false) => Ok(None),
        (0, false) => Ok(Some(1)),
        (g, _) => Ok(Some(g)),
    }
}

/// Waits until `r` (the object with `uid`) is gone.
async fn wait_gone(cp: &dyn ControlPlane, r: &ObjectRef, uid: Option<&str>) -> Result<()> {
    let mut delay = Duration::from_millis(50);
    loop {
        match cp.get(r).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
            Ok(o) if o.meta().uid.as_deref() != uid => return Ok(()),
            Ok(_) => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

pub async fn run(config: &Config, args: DeleteArgs) -> Result<ExitCode> {
    let mut refs = Vec::new();
    if !args.files.is_empty() {
        if !args.what.is_empty() {
            bail!("give either -f or KIND NAME, not both");
        }
        let mut objects = read_manifests(&args.files)?;
        set_namespace(&mut objects, args.namespace.as_deref())?;
        for o in &mut objects {
            controlplane::defaults::apply(o);
        }
        // Pods before what they use; namespaces last.
        objects.sort_by_key(|o| std::cmp::Reverse(Kind::ALL.iter().position(|k| *k == o.kind())));
        refs.extend(objects.iter().map(ObjectRef::of));
    } else {
        let [kind, names @ ..] = args.what.as_slice() else {
            bail!("give -f FILE or KIND NAME");
        };
        let Some(kind) = Kind::from_cli(kind) else {
            bail!("unknown kind {kind:?} (known: {})", super::known_kinds());
        };
        if names.is_empty() {
            bail!("delete {}: give at least one name", kind.plural());
        }
        let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        refs.extend(names.iter().map(|n| ObjectRef::new(kind, ns, n)));
    }
    let grace = grace_of(&args)?;
    if args.force {
        eprintln!("Warning: Immediate deletion does not wait for confirmation that the running resource has been terminated. The resource may continue to run on the cluster indefinitely.");
    }
    let opts = DeleteOptions {
        grace_period_seconds: grace,
        ..Default::default()
    };
    let cp = connect(config).await?;
    let mut failed = 0;
    let mut deleted = Vec::new();
    for r in refs {
        if args.cascade == "orphan" {
            match cp.get(&r).await {
                Ok(owner) => {
                    if let Err(e) = controllers::gc::orphan_dependents(cp.as_ref(), &owner).await {
                        failed += 1;
                        eprintln!("error: {e}");
                        continue;
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {e}");
                    continue;
                }
            }
        }
        match cp.delete_with(&r, &opts).await {
            Ok(o) => {
                let what = if args.force {
                    "force deleted"
                } else {
                    "deleted"
                };
                println!("{} \"{}\" {what}", super::resource(r.kind), r.name);
                deleted.push((r, o.meta().uid.clone()));
            }
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    if args.wait {
        for (r, uid) in &deleted {
            if let Err(e) = wait_gone(cp.as_ref(), r, uid.as_deref()).await {
                failed += 1;
                eprintln!("error: waiting for {r} to go: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
