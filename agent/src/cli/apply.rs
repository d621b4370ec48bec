//! `knode apply -f FILE|DIR|-`.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use controlplane::api;
use controlplane::Kind;

use super::{connect, read_manifests, set_namespace, short_ref};
use crate::config::Config;

#[derive(Args)]
pub struct ApplyArgs {
    /// Manifest file, directory, or - for stdin (repeatable).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub files: Vec<String>,
    /// Namespace for objects whose manifest names none.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

pub async fn run(config: &Config, args: ApplyArgs) -> Result<ExitCode> {
    let mut objects = read_manifests(&args.files)?;
    set_namespace(&mut objects, args.namespace.as_deref())?;
    // Namespaces first, then what pods consume, then pods: the same order
    // kubectl users rely on when one file holds all of it.
    objects.sort_by_key(|o| Kind::ALL.iter().position(|k| *k == o.kind()));
    let cp = connect(config).await?;
    let mut failed = 0;
    for obj in objects {
        let name = short_ref(&obj);
        match api::apply(cp.as_ref(), obj).await {
            Ok((what, _)) => println!("{name} {what}"),
            Err(e) => {
                failed += 1;
                eprintln!("error: {name}: {e}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
