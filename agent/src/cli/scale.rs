//! `knode scale KIND/NAME --replicas=N`, as kubectl does it: through the
//! `/scale` subresource of the kind.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use controlplane::defaults::DEFAULT_NAMESPACE;
use controlplane::{Kind, ObjectRef};

use super::connect;
use crate::config::Config;

#[derive(Args)]
pub struct ScaleArgs {
    /// `KIND/NAME` or `KIND NAME` (deployment, replicaset, statefulset).
    #[arg(required = true, num_args = 1..=2)]
    pub what: Vec<String>,
    /// The new number of replicas.
    #[arg(long)]
    pub replicas: i64,
    /// Namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
}

/// `KIND/NAME` or `KIND NAME` as a reference in `ns`.
pub fn target(what: &[String], ns: Option<&str>) -> Result<ObjectRef> {
    let (kind, name) = match what {
        [one] => match one.split_once('/') {
            Some((k, n)) => (k, n),
            None => bail!("give KIND/NAME or KIND NAME (got {one:?})"),
        },
        [k, n] => (k.as_str(), n.as_str()),
        _ => bail!("give KIND/NAME or KIND NAME"),
    };
    let Some(kind) = Kind::from_cli(kind) else {
        bail!("unknown kind {kind:?} (known: {})", super::known_kinds());
    };
    if name.is_empty() {
        bail!("{}: a name is required", kind.plural());
    }
    Ok(ObjectRef::new(kind, ns.unwrap_or(DEFAULT_NAMESPACE), name))
}

pub async fn run(config: &Config, args: ScaleArgs) -> Result<ExitCode> {
    if args.replicas < 0 {
        bail!("--replicas: must be 0 or more (got {})", args.replicas);
    }
    let r = target(&args.what, args.namespace.as_deref())?;
    let cp = connect(config).await?;
    controlplane::scale::set_replicas(cp.as_ref(), &r, args.replicas, None).await?;
    println!("{}/{} scaled", super::resource(r.kind), r.name);
    Ok(ExitCode::SUCCESS)
}
