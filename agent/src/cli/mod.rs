//! The CLI subcommands: apply, get, delete, scale, rollout — over any
//! control plane.

pub mod apply;
pub mod delete;
pub mod exec;
pub mod get;
pub mod image;
pub mod logs;
pub mod print;
pub mod rollout;
pub mod scale;

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use controlplane::backend::{self, Backend};
use controlplane::{manifest, ControlPlane, Kind, Object};

use crate::config::Config;

/// The control plane as this CLI invocation reaches it.
pub async fn connect(config: &Config) -> Result<Arc<dyn ControlPlane>> {
    let b: Backend = config.backend()?;
    let alloc = config.allocators()?;
    Ok(backend::connect(&b, &config.socket(), alloc).await?)
}

/// Every object in the `-f` arguments: files, directories (their `.yaml`,
/// `.yml` and `.json` files in name order) or `-` for stdin. Everything is
/// parsed before anything is sent, so a bad document changes nothing.
pub fn read_manifests(sources: &[String]) -> Result<Vec<Object>> {
    if sources.is_empty() {
        bail!("-f: required (a file, a directory, or - for stdin)");
    }
    let mut out = Vec::new();
    for src in sources {
        if src == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("read manifests from stdin")?;
            out.extend(manifest::parse("<stdin>", &text)?);
            continue;
        }
        let path = Path::new(src);
        let files = if path.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("read directory {src}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("-f {src}: the directory holds no .yaml, .yml or .json file");
            }
            files
        } else {
            vec![path.to_path_buf()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("read manifest {}", f.display()))?;
            out.extend(manifest::parse(&f.display().to_string(), &text)?);
        }
    }
    Ok(out)
}

/// Puts objects without a namespace into `ns`; refuses one that names a
/// different namespace, as kubectl does.
pub fn set_namespace(objects: &mut [Object], ns: Option<&str>) -> Result<()> {
    let Some(ns) = ns else { return Ok(()) };
    for o in objects.iter_mut().filter(|o| o.kind().namespaced()) {
        match o.meta().namespace.as_deref() {
            None | Some("") => o.meta_mut().namespace = Some(ns.to_string()),
            Some(have) if have != ns => bail!(
                "{}: the namespace from the manifest ({have}) does not match the namespace given with -n ({ns})",
                o.describe()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// `pod/web`-style reference as kubectl prints it.
pub fn short_ref(o: &Object) -> String {
    format!("{}/{}", resource(o.kind()), o.name())
}

/// A kind as kubectl names it in messages: singular, qualified by its
/// group (`pod`, `deployment.apps`, `lease.coordination.k8s.io`).
pub fn resource(kind: Kind) -> String {
    let i = kind.info();
    match i.group() {
        "" => i.singular.to_string(),
        g => format!("{}.{g}", i.singular),
    }
}

/// The kinds `get` and `delete` know, by plural, for messages.
pub fn known_kinds() -> String {
    let mut names: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
    names.push("endpoints");
    names.sort_unstable();
    names.join(", ")
}
