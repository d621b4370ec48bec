//! `knode image import`: an OCI layout tar (`index.json` + `blobs/`) or a
//! docker archive (`docker save`: `manifest.json` + layer tars). The tar is
//! indexed once, then each blob is streamed from its place in the file into
//! containerd, so a large archive is never held in memory.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::media::{self, Descriptor, Kind, Manifest};
use super::reference::normalize;
use super::registry::MAX_MANIFEST;
use super::store::{self, Session};
use super::{finish, layer_diff_ids, parse_config, Image, Progress, MAX_CONFIG, MAX_INDEX_DEPTH};
use crate::Runtime;

/// Imports every image in the archive at `path`.
pub async fn import(rt: &Runtime, path: &Path, progress: &dyn Progress) -> Result<Vec<Image>> {
    let p = path.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || Archive::scan(&p))
        .await
        .context("index the archive")??;
    let s = Session::begin(rt).await?;
    let result = if archive.has("manifest.json") {
        docker(&s, &archive, progress).await
    } else if archive.has("index.json") {
        oci(&s, &archive, progress).await
    } else {
        Err(anyhow::anyhow!(
            "neither an OCI layout (no index.json) nor a docker archive (no manifest.json)"
        ))
    };
    s.end().await;
    result
}

/// Where each file of the tar lies.
pub struct Archive {
    path: PathBuf,
    files: HashMap<String, Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    offset: u64,
    size: u64,
}

impl Archive {
    /// Reads the tar's headers (skipping the data) and resolves symlinks
    /// and hard links between its files.
    pub fn scan(path: &Path) -> Result<Archive> {
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut files = HashMap::new();
        let mut links = Vec::new();
        let entries = ar.entries_with_seek().context("read the tar")?;
        for e in entries {
            let e = e.context("read the tar")?;
            let name = clean(&e.path().context("tar entry path")?);
            match e.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    files.insert(
                        name,
                        Span {
                            offset: e.raw_file_position(),
                            size: e.size(),
                        },
                    );
                }
                tar::EntryType::Symlink => {
                    if let Some(target) = e.link_name()? {
                        let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                        links.push((name.clone(), clean(&dir.join(target))));
                    }
                }
                tar::EntryType::Link => {
                    if let Some(target) = e.link_name()? {
                        links.push((name.clone(), clean(&target)));
                    }
                }
                _ => {}
            }
        }
        // Links to links resolve over a few rounds.
        for _ in 0..8 {
            let mut changed = false;
            for (name, target) in &links {
                if !files.contains_key(name) {
                    if let Some(span) = files.get(target).copied() {
                        files.insert(name.clone(), span);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        Ok(Archive {
            path: path.to_path_buf(),
            files,
        })
    }

    fn has(&self, name: &str) -> bool {
        self.files.contains_key(name)
    }

    fn span(&self, name: &str) -> Result<Span> {
        self.files
            .get(&clean(Path::new(name)))
            .copied()
            .with_context(|| format!("{name}: not in the archive"))
    }

    /// The whole file `name`, refused when larger than `limit`.
    async fn read(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let span = self.span(name)?;
        if span.size > limit {
            bail!(
                "{name}: {} bytes is more than the {limit} allowed",
                span.size
            );
        }
        let mut out = vec![0; span.size as usize];
        self.open(span)
            .await?
            .read_exact(&mut out)
            .await
            .with_context(|| format!("read {name}"))?;
        Ok(out)
    }

    async fn open(&self, span: Span) -> Result<tokio::io::Take<tokio::fs::File>> {
        let mut f = tokio::fs::File::open(&self.path)
            .await
            .with_context(|| format!("open {}", self.path.display()))?;
        f.seek(SeekFrom::Start(span.offset)).await?;
        Ok(f.take(span.size))
    }

    /// Streams file `name` into the store as `desc` with `labels`.
    async fn put(
        &self,
        s: &Session<'_>,
        name: &str,
        desc: &Descriptor,
        labels: &std::collections::BTreeMap<String, String>,
        progress: Option<&dyn Progress>,
    ) -> Result<()> {
        let span = self.span(name)?;
        if span.size != desc.size {
            bail!(
                "{name}: {} bytes in the archive, but its descriptor says {}",
                span.size,
                desc.size
            );
        }
        let report = |done| {
            if let Some(p) = progress {
                p.layer(&desc.digest, done, desc.size);
            }
        };
        report(0);
        let Some(mut w) = s.open(desc).await? else {
            s.label(&desc.digest, labels).await?;
            report(desc.size);
            return Ok(());
        };
        let mut f = self.open(span).await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0;
        loop {
            let n = f
                .read(&mut buf)
                .await
                .with_context(|| format!("read {name}"))?;
            if n == 0 {
                break;
            }
            w.write(&buf[..n]).await?;
            done += n as u64;
            report(done);
        }
        w.commit(labels)
            .await
            .with_context(|| format!("store {name}"))
    }
}

/// An archive path without `./`, `..` or a leading `/`.
fn clean(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    parts.join("/")
}

fn blob_path(digest: &str) -> String {
    // Digests were validated: `sha256:<hex>`.
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// OCI layout: each entry of `index.json` is an image, named by its
/// `io.containerd.image.name` or `org.opencontainers.image.ref.name`
/// annotation.
async fn oci(s: &Session<'_>, a: &Archive, progress: &dyn Progress) -> Result<Vec<Image>> {
    let index = media::parse_index(&a.read("index.json", MAX_MANIFEST as u64).await?)
        .context("index.json")?;
    if index.manifests.is_empty() {
        bail!("index.json lists no image");
    }
    let mut out = Vec::new();
    for (i, top) in index.manifests.iter().enumerate() {
        let what = format!("index.json manifests[{i}]");
        let name = top
            .annotation(media::ANNOTATION_CONTAINERD_NAME)
            .or_else(|| top.annotation(media::ANNOTATION_REF_NAME))
            .with_context(|| {
                format!(
                    "{what}: no {} annotation, so the image has no name",
                    media::ANNOTATION_REF_NAME
                )
            })?;
        let name = normalize(name).with_context(|| format!("{what}: the name"))?;
        let imgs = oci_image(s, a, top, &name, progress)
            .await
            .with_context(|| format!("{what} ({name})"))?;
        out.extend(imgs);
    }
    Ok(out)
}

async fn oci_image(
    s: &Session<'_>,
    a: &Archive,
    top: &Descriptor,
    name: &str,
    progress: &dyn Progress,
) -> Result<Vec<Image>> {
    // Walk index → manifest for this platform, keeping the indexes to
    // store them with their labels.
    let mut parents: Vec<(Descriptor, Vec<u8>, media::Index)> = Vec::new();
    let mut desc = top.clone();
    let (manifest, manifest_bytes) = loop {
        let body = a
            .read(&blob_path(&desc.digest), MAX_MANIFEST as u64)
            .await?;
        if media::sha256(&body) != desc.digest || body.len() as u64 != desc.size {
            bail!("{}: the blob does not match its descriptor", desc.digest);
        }
        let kind = media::kind(&desc.media_type, &body)?;
        desc.media_type = media::media_type_of(kind, &desc.media_type, &body);
        if kind == Kind::Manifest {
            break (media::parse_manifest(&body)?, body);
        }
        if parents.len() >= MAX_INDEX_DEPTH {
            bail!("indexes nested more than {MAX_INDEX_DEPTH} deep");
        }
        let ix = media::parse_index(&body)?;
        let want = media::host_platform();
        let Some(next) = media::select(&ix, &want).cloned() else {
            bail!("no manifest for {}/{}", want.os, want.architecture);
        };
        parents.push((desc.clone(), body, ix));
        desc = next;
    };
    let config = a
        .read(&blob_path(&manifest.config.digest), MAX_CONFIG)
        .await
        .context("the image config")?;
    let diff_ids = layer_diff_ids(&manifest, &config, progress)?;
    for (l, d) in manifest.layers.iter().zip(&diff_ids) {
        a.put(
            s,
            &blob_path(&l.digest),
            l,
            &store::layer_labels(d),
            Some(progress),
        )
        .await?;
    }
    let chain = media::chain_id(&diff_ids);
    a.put(
        s,
        &blob_path(&manifest.config.digest),
        &manifest.config,
        &store::config_labels(&chain),
        None,
    )
    .await?;
    s.put(&desc, &manifest_bytes, &store::manifest_labels(&manifest))
        .await?;
    for (d, body, ix) in parents.iter().rev() {
        s.put(d, body, &store::index_labels(ix)).await?;
    }
    let target = parents.first().map_or(&desc, |(d, _, _)| d);
    finish(s, &[name.to_string()], target, &manifest, &config).await
}

/// One image of a docker archive's `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// docker archive: `manifest.json` names each image's config, tags and
/// layer files; a docker v2 manifest is made for each, as containerd's
/// importer does.
async fn docker(s: &Session<'_>, a: &Archive, progress: &dyn Progress) -> Result<Vec<Image>> {
    let text = a.read("manifest.json", MAX_MANIFEST as u64).await?;
    let entries: Vec<DockerEntry> = serde_json::from_slice(&text).context("parse manifest.json")?;
    if entries.is_empty() {
        bail!("manifest.json lists no image");
    }
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let what = format!("manifest.json[{i}]");
        let tags = e.repo_tags.as_deref().unwrap_or_default();
        if tags.is_empty() {
            bail!("{what}: no RepoTags, so the image has no name");
        }
        let names = tags
            .iter()
            .enumerate()
            .map(|(j, t)| normalize(t).with_context(|| format!("{what}.RepoTags[{j}]")))
            .collect::<Result<Vec<_>>>()?;
        let imgs = docker_image(s, a, e, &names, progress)
            .await
            .with_context(|| format!("{what} ({})", names[0]))?;
        out.extend(imgs);
    }
    Ok(out)
}

async fn docker_image(
    s: &Session<'_>,
    a: &Archive,
    e: &DockerEntry,
    names: &[String],
    progress: &dyn Progress,
) -> Result<Vec<Image>> {
    let config = a.read(&e.config, MAX_CONFIG).await.context("Config")?;
    let (_, diff_ids) = parse_config(&config).context("Config")?;
    if e.layers.len() != diff_ids.len() {
        bail!(
            "Layers lists {} files but the config's rootfs.diff_ids has {}",
            e.layers.len(),
            diff_ids.len()
        );
    }
    let mut layers = Vec::new();
    for (j, (file, diff_id)) in e.layers.iter().zip(&diff_ids).enumerate() {
        let desc = docker_layer(a, file, diff_id)
            .await
            .with_context(|| format!("Layers[{j}] ({file})"))?;
        layers.push(desc);
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::DOCKER_MANIFEST.into()),
        config: Descriptor::new(
            media::DOCKER_CONFIG,
            media::sha256(&config),
            config.len() as u64,
        ),
        layers,
    };
    for l in &manifest.layers {
        progress.layer(&l.digest, 0, l.size);
    }
    for ((file, l), d) in e.layers.iter().zip(&manifest.layers).zip(&diff_ids) {
        a.put(s, file, l, &store::layer_labels(d), Some(progress))
            .await?;
    }
    let chain = media::chain_id(&diff_ids);
    s.put(&manifest.config, &config, &store::config_labels(&chain))
        .await?;
    let bytes = serde_json::to_vec(&manifest).context("encode the manifest")?;
    let desc = Descriptor::new(
        media::DOCKER_MANIFEST,
        media::sha256(&bytes),
        bytes.len() as u64,
    );
    s.put(&desc, &bytes, &store::manifest_labels(&manifest))
        .await?;
    finish(s, names, &desc, &manifest, &config).await
}

/// A layer file's descriptor: its compression from its first bytes, its
/// digest from the config when uncompressed (containerd checks it on
/// commit), else by hashing the file.
async fn docker_layer(a: &Archive, file: &str, diff_id: &str) -> Result<Descriptor> {
    let span = a.span(file)?;
    let mut head = [0u8; 4];
    let n = a.open(span).await?.read(&mut head).await?;
    let head = &head[..n];
    let media_type = if head.starts_with(&[0x1f, 0x8b]) {
        media::DOCKER_LAYER_GZIP
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        media::OCI_LAYER_ZSTD
    } else {
        media::DOCKER_LAYER
    };
    let digest = if media_type == media::DOCKER_LAYER {
        diff_id.to_string()
    } else {
        use sha2::{Digest as _, Sha256};
        let mut f = a.open(span).await?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        format!("sha256:{}", media::hex(&h.finalize()))
    };
    Ok(Descriptor::new(media_type, digest, span.size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::build;

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean(Path::new("./blobs/sha256/ab")), "blobs/sha256/ab");
        assert_eq!(clean(Path::new("/a/../b")), "b");
        assert_eq!(clean(Path::new("../../etc/passwd")), "etc/passwd");
        assert_eq!(blob_path("sha256:abc"), "blobs/sha256/abc");
    }

    #[tokio::test]
    async fn scans_a_layout_tar_and_resolves_links() {
        let b = build::pause(b"#!pause").unwrap();
        let tar = build::oci_layout("knode.test/pause:1", &b).unwrap();
        let dir = std::env::temp_dir().join(format!("knode-import-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("layout.tar");
        std::fs::write(&path, &tar).unwrap();
        let a = Archive::scan(&path).unwrap();
        assert!(a.has("index.json") && a.has("oci-layout"));
        let index = media::parse_index(&a.read("index.json", 1 << 20).await.unwrap()).unwrap();
        assert_eq!(
            index.manifests[0].annotation(media::ANNOTATION_REF_NAME),
            Some("knode.test/pause:1")
        );
        let m = a
            .read(&blob_path(&b.manifest_desc.digest), 1 << 20)
            .await
            .unwrap();
        assert_eq!(m, b.manifest_bytes);
        assert!(a
            .read("index.json", 3)
            .await
            .unwrap_err()
            .to_string()
            .contains("allowed"));

        // docker archives link duplicate layers: `b/layer.tar -> ../a/layer.tar`.
        let linked = {
            let mut t = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(5);
            h.set_mode(0o644);
            t.append_data(&mut h, "a/layer.tar", &b"hello"[..]).unwrap();
            let mut l = tar::Header::new_gnu();
            l.set_entry_type(tar::EntryType::Symlink);
            l.set_size(0);
            t.append_link(&mut l, "b/layer.tar", "../a/layer.tar")
                .unwrap();
            t.into_inner().unwrap()
        };
        std::fs::write(&path, linked).unwrap();
        let a = Archive::scan(&path).unwrap();
        assert_eq!(a.read("b/layer.tar", 10).await.unwrap(), b"hello");
        assert_eq!(
            docker_layer(&a, "b/layer.tar", "sha256:x")
                .await
                .unwrap()
                .media_type,
            media::DOCKER_LAYER
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
