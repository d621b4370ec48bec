//! `knode delete -f FILE` and `knode delete KIND NAME...`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use controlplane::defaults::DEFAULT_NAMESPACE;
use controlplane::{Kind, ObjectRef};

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
    let cp = connect(config).await?;
    let mut failed = 0;
    for r in refs {
        match cp.delete(&r, None).await {
            Ok(_) => println!("{} \"{}\" deleted", super::resource(r.kind), r.name),
            Err(e) if e.is_not_found() && args.ignore_not_found => {}
            Err(e) => {
                failed += 1;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
