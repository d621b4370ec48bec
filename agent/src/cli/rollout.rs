//! `knode rollout status|undo|restart|history|pause|resume deployment/NAME`,
//! in kubectl's words. The decisions (status messages, which template an
//! undo restores) are `controllers::deployment::rollout`'s; this file
//! reads and writes.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use controllers::deployment::rollout::{history, rollout_status, undo_template, RolloutStatus};
use controllers::deployment::CHANGE_CAUSE;
use controlplane::watcher::{Update, Watcher};
use controlplane::{ControlPlane, Kind, Object, ObjectRef, Scope};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::connect;
use super::scale::target;
use crate::config::Config;

#[derive(Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub action: Action,
}

/// The target and namespace every action takes.
#[derive(Args)]
pub struct Target {
    /// `deployment/NAME` or `deployment NAME`.
    #[arg(required = true, num_args = 1..=2)]
    pub what: Vec<String>,
    /// Namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Subcommand)]
pub enum Action {
    /// Wait until the rollout finishes, printing its progress.
    Status {
        #[command(flatten)]
        target: Target,
        /// Give up after this long (e.g. 90s, 5m; default: wait for ever).
        #[arg(long)]
        timeout: Option<String>,
        /// Print the status once and return (`--watch=false`).
        #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// Roll back to the previous revision (or `--to-revision`).
    Undo {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
    },
    /// Restart every pod by a new rollout (`kubectl.kubernetes.io/restartedAt`).
    Restart {
        #[command(flatten)]
        target: Target,
    },
    /// List the revisions.
    History {
        #[command(flatten)]
        target: Target,
    },
    /// Stop rolling out template changes.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Roll out again after a pause.
    Resume {
        #[command(flatten)]
        target: Target,
    },
}

fn deployment_ref(t: &Target) -> Result<ObjectRef> {
    let r = target(&t.what, t.namespace.as_deref())?;
    if r.kind != Kind::Deployment {
        bail!(
            "rollout: only deployments are supported so far (got {})",
            r.kind.plural()
        );
    }
    Ok(r)
}

async fn get_deployment(cp: &dyn ControlPlane, r: &ObjectRef) -> Result<Deployment> {
    match cp.get(r).await? {
        Object::Deployment(d) => Ok(*d),
        o => bail!("{} is not a Deployment", o.describe()),
    }
}

async fn replica_sets(cp: &dyn ControlPlane, ns: &str) -> Result<Vec<ReplicaSet>> {
    Ok(cp
        .list(&Scope::namespaced(Kind::ReplicaSet, ns))
        .await?
        .items
        .into_iter()
        .filter_map(|o| match o {
            Object::ReplicaSet(rs) => Some(*rs),
            _ => None,
        })
        .collect())
}

/// Reads the Deployment, changes it with `f`, writes it; retries on conflict.
async fn modify(cp: &dyn ControlPlane, r: &ObjectRef, f: impl Fn(&mut Deployment)) -> Result<()> {
    for _ in 0..10 {
        let mut d = get_deployment(cp, r).await?;
        f(&mut d);
        match cp.update(Object::from(d), None).await {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("{r}: the object kept changing; tried 10 times")
}

pub async fn run(config: &Config, args: RolloutArgs) -> Result<ExitCode> {
    let shared = connect(config).await?;
    let cp = shared.as_ref();
    match args.action {
        Action::Status {
            target,
            timeout,
            watch,
        } => {
            let r = deployment_ref(&target)?;
            let limit = timeout.map(|t| parse_duration(&t)).transpose()?;
            let wait = status(shared.clone(), &r, watch);
            match limit {
                None => wait.await,
                Some(l) => match tokio::time::timeout(l, wait).await {
                    Ok(r) => r,
                    Err(_) => bail!("timed out waiting for the condition"),
                },
            }
        }
        Action::Undo {
            target,
            to_revision,
        } => {
            let r = deployment_ref(&target)?;
            let d = get_deployment(cp, &r).await?;
            let rss = replica_sets(cp, &r.namespace).await?;
            let (rev, template) = undo_template(&d, &rss, to_revision)?;
            let current = d.spec.as_ref().map(|s| &s.template);
            if current.is_some_and(|c| controllers::pods::same_template(c, &template)) {
                println!("deployment.apps/{} skipped rollback (current template already matches revision {rev})", r.name);
                return Ok(ExitCode::SUCCESS);
            }
            modify(cp, &r, |d| {
                if let Some(s) = d.spec.as_mut() {
                    s.template = template.clone();
                }
            })
            .await?;
            println!("deployment.apps/{} rolled back", r.name);
            Ok(ExitCode::SUCCESS)
        }
        Action::Restart { target } => {
            let r = deployment_ref(&target)?;
            let now = k8s_openapi::jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            modify(cp, &r, |d| {
                if let Some(s) = d.spec.as_mut() {
                    s.template
                        .metadata
                        .get_or_insert_with(Default::default)
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert("kubectl.kubernetes.io/restartedAt".into(), now.clone());
                }
            })
            .await?;
            println!("deployment.apps/{} restarted", r.name);
            Ok(ExitCode::SUCCESS)
        }
        Action::History { target } => {
            let r = deployment_ref(&target)?;
            let d = get_deployment(cp, &r).await?;
            let rss = replica_sets(cp, &r.namespace).await?;
            println!("deployment.apps/{} ", r.name);
            println!("REVISION  CHANGE-CAUSE");
            for (rev, rs) in history(&d, &rss) {
                let cause = rs
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(CHANGE_CAUSE))
                    .map_or("<none>", String::as_str);
                println!("{rev:<10}{cause}");
            }
            println!();
            Ok(ExitCode::SUCCESS)
        }
        Action::Pause { target } => pause(cp, &target, true).await,
        Action::Resume { target } => pause(cp, &target, false).await,
    }
}

async fn pause(cp: &dyn ControlPlane, t: &Target, paused: bool) -> Result<ExitCode> {
    let r = deployment_ref(t)?;
    let d = get_deployment(cp, &r).await?;
    let word = if paused { "paused" } else { "resumed" };
    if d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false) == paused {
        bail!("deployments.apps {:?} is already {word}", r.name);
    }
    modify(cp, &r, |d| {
        if let Some(s) = d.spec.as_mut() {
            s.paused = paused.then_some(true);
        }
    })
    .await?;
    println!("deployment.apps/{} {word}", r.name);
    Ok(ExitCode::SUCCESS)
}

/// Prints each new status message until the rollout is done (or once,
/// without `watch`); fails when the progress deadline passed.
async fn status(shared: Arc<dyn ControlPlane>, r: &ObjectRef, watch: bool) -> Result<ExitCode> {
    let d = get_deployment(shared.as_ref(), r).await?;
    let mut last = String::new();
    let mut report = |d: &Deployment| -> Result<bool> {
        match rollout_status(d) {
            RolloutStatus::Done(m) => {
                println!("{m}");
                Ok(true)
            }
            RolloutStatus::Failed(m) => bail!("{m}"),
            RolloutStatus::Waiting(m) => {
                if m != last {
                    println!("{m}");
                    last = m;
                }
                Ok(false)
            }
        }
    };
    if report(&d)? || !watch {
        return Ok(ExitCode::SUCCESS);
    }
    let mut w = Watcher::new(shared, Scope::namespaced(Kind::Deployment, &r.namespace));
    loop {
        let Update::Event(ev) = w.next().await else {
            continue;
        };
        if ev.object().name() != r.name {
            continue;
        }
        match ev {
            controlplane::WatchEvent::Deleted(_) => bail!("deployment {:?} was deleted", r.name),
            controlplane::WatchEvent::Added(Object::Deployment(d))
            | controlplane::WatchEvent::Modified(Object::Deployment(d))
                if report(&d)? =>
            {
                return Ok(ExitCode::SUCCESS)
            }
            _ => {}
        }
    }
}

/// `90s`, `5m`, `1h` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--timeout: {s:?} is not a duration like 90s or 5m"))?;
    Ok(Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("--timeout: {s:?} is not a duration like 90s or 5m"),
    }))
}
