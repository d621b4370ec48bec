//! `knode get KIND [NAME] [-n NS | -A] [-o wide|yaml|json|name]`.

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use controlplane::defaults::DEFAULT_NAMESPACE;
use controlplane::{Kind, Object, ObjectRef, Scope};

use super::connect;
use super::print::{self, Output, PrintOptions};
use crate::config::Config;

#[derive(Args)]
pub struct GetArgs {
    /// A kind by plural, singular or short name (`pods`, `deploy`, `netpol`,
    /// `endpoints`, ...).
    pub kind: String,
    /// One object's name.
    pub name: Option<String>,
    /// Namespace (default: `default`).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// wide, yaml, json or name.
    #[arg(short, long)]
    pub output: Option<Output>,
}

pub async fn run(config: &Config, args: GetArgs) -> Result<ExitCode> {
    if args.all_namespaces && args.namespace.is_some() {
        bail!("give either -n or -A, not both");
    }
    let opts = PrintOptions {
        output: args.output.unwrap_or(Output::Table),
        all_namespaces: args.all_namespaces && args.name.is_none(),
        now: jiff::Timestamp::now(),
    };
    let ns = args.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    let cp = connect(config).await?;
    let is_endpoints = matches!(
        args.kind.to_ascii_lowercase().as_str(),
        "endpoints" | "ep" | "endpoint"
    );
    let kind = if is_endpoints {
        Kind::Service
    } else {
        match Kind::from_cli(&args.kind) {
            Some(k) => k,
            None => bail!(
                "unknown kind {:?} (known: {})",
                args.kind,
                super::known_kinds()
            ),
        }
    };
    let scope = if args.all_namespaces {
        Scope::all(kind)
    } else {
        Scope::namespaced(kind, ns)
    };
    let items: Vec<Object> = match &args.name {
        Some(name) => vec![cp.get(&ObjectRef::new(kind, ns, name)).await?],
        None => cp.list(&scope).await?.items,
    };
    if items.is_empty() {
        let shown_ns = (kind.namespaced() && !args.all_namespaces).then_some(ns);
        eprintln!("{}", print::no_resources(shown_ns));
        return Ok(ExitCode::SUCCESS);
    }
    let single = args.name.is_some();
    let out = if is_endpoints {
        let pods = cp
            .list(&Scope {
                kind: Kind::Pod,
                namespace: scope.namespace.clone(),
            })
            .await?
            .items;
        print::endpoints(&items, &pods, single, &opts)
    } else {
        print::objects(kind, &items, single, &opts)
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}
