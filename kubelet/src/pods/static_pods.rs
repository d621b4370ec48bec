//! Static pods: Pod manifests in `--pod-manifest-path` run on this node
//! without anyone applying them. As kubelet does with mirror pods, each one
//! is published to the control plane as `<name>-<node>`, bound to this
//! node and annotated with its source file, so it is seen with `knode get`
//! and run by the ordinary pod worker. The directory is re-read every 20 s
//! (kubelet's file-check frequency): a new or changed file is applied, a
//! removed file's pods are deleted, and a mirror pod someone deleted is
//! made again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use controlplane::objects::{Kind, Object};
use controlplane::{ObjectRef, Scope};

use super::context::Context;

/// How often the directory is re-read.
pub const CHECK_EVERY: Duration = Duration::from_secs(20);
/// kubelet's annotation for where a pod came from.
pub const SOURCE: &str = "kubernetes.io/config.source";
/// The manifest file a static pod came from.
pub const FILE: &str = "knode.io/static-pod-file";

/// Runs until the task is dropped.
pub async fn run(ctx: Arc<Context>) {
    let dir = ctx.config.pod_manifest_path.clone();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sync(&ctx, &dir).await {
            tracing::warn!(dir = %dir.display(), error = %format!("{e:#}"), "static pods");
        }
    }
}

/// One pass: apply every pod in the directory, delete ours that are gone.
pub async fn sync(ctx: &Context, dir: &Path) -> anyhow::Result<()> {
    let want = read_dir(dir, &ctx.node_name);
    let mut keep = BTreeMap::new();
    for (file, obj) in want {
        let r = ObjectRef::of(&obj);
        match controlplane::api::apply(ctx.cp.as_ref(), obj).await {
            Ok((applied, _)) => {
                if !matches!(applied, controlplane::api::Applied::Unchanged) {
                    tracing::info!(pod = %r, file = %file.display(), "static pod {applied:?}");
                }
            }
            Err(e) => tracing::warn!(pod = %r, file = %file.display(), error = %e, "static pod"),
        }
        keep.insert(r, ());
    }
    let list = ctx.cp.list(&Scope::all(Kind::Pod)).await?;
    for o in list.items {
        let Object::Pod(p) = &o else { continue };
        let ours = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&ctx.node_name)
            && annotation(p, SOURCE) == Some("file");
        let r = ObjectRef::of(&o);
        if ours && !keep.contains_key(&r) {
            tracing::info!(pod = %r, "static pod file removed; deleting the pod");
            if let Err(e) = ctx.cp.delete(&r, None).await {
                if !e.is_not_found() {
                    tracing::warn!(pod = %r, error = %e, "delete static pod");
                }
            }
        }
    }
    Ok(())
}

fn annotation<'a>(p: &'a k8s_openapi::api::core::v1::Pod, key: &str) -> Option<&'a str> {
    p.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

/// The static pods the directory describes, as this node publishes them.
/// A file that does not parse is logged and skipped; the others still run.
pub fn read_dir(dir: &Path, node: &str) -> Vec<(PathBuf, Object)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            !name.starts_with('.')
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml" | "json")
                )
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(file = %f.display(), error = %e, "read static pod manifest");
                continue;
            }
        };
        let objects = match controlplane::manifest::parse(&f.display().to_string(), &text) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "static pod manifest");
                continue;
            }
        };
        for o in objects {
            let Object::Pod(mut p) = o else {
                tracing::warn!(file = %f.display(), kind = %o.kind(), "only Pods can be static; skipped");
                continue;
            };
            let name = p.metadata.name.clone().unwrap_or_default();
            p.metadata.name = Some(format!("{name}-{node}"));
            if p.metadata
                .namespace
                .as_deref()
                .unwrap_or_default()
                .is_empty()
            {
                p.metadata.namespace = Some("default".into());
            }
            let ann = p.metadata.annotations.get_or_insert_with(Default::default);
            ann.insert(SOURCE.into(), "file".into());
            ann.insert(FILE.into(), f.display().to_string());
            p.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
            out.push((f.clone(), Object::Pod(p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_are_renamed_bound_and_annotated_and_bad_files_skipped() {
        let dir = std::env::temp_dir().join(format!("knode-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("web.yaml"),
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: c\n    image: busybox\n",
        )
        .unwrap();
        std::fs::write(dir.join("broken.yaml"), "kind: [\n").unwrap();
        std::fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let got = read_dir(&dir, "n1");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(got.len(), 1);
        let Object::Pod(p) = &got[0].1 else { panic!() };
        assert_eq!(p.metadata.name.as_deref(), Some("web-n1"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(p.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
        assert_eq!(annotation(p, SOURCE), Some("file"));
    }

    #[test]
    fn a_missing_dir_is_no_static_pods() {
        assert!(read_dir(Path::new("/nonexistent/knode-manifests"), "n1").is_empty());
    }
}
