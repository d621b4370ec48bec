//! Images for pods: import from an OCI layout or docker archive, pull from
//! a registry, the pause image built from our own binary, and the
//! unpacking of every layer into containerd's overlayfs snapshotter. The
//! pod code asks [`ensure`] for an image by reference and gets back its
//! config and the snapshot its rootfs is prepared from; nothing here
//! creates containers.

mod auth;
mod build;
mod http;
mod import;
pub mod keyring;
mod media;
mod pull;
mod reference;
mod registry;
mod store;

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use containerd_client::services::v1::{DeleteImageRequest, ListImagesRequest};
use oci_spec::image::ImageConfiguration;

pub use auth::Registries;
pub use keyring::Keyring;
pub use reference::{normalize, Reference};

use self::media::{Descriptor, Manifest};
use self::registry::MAX_MANIFEST;
use self::store::Session;
use super::{is_not_found, status_error, Runtime};

/// Image configs larger than this are refused.
const MAX_CONFIG: u64 = 16 << 20;
/// An index may point at an index, but not without end.
const MAX_INDEX_DEPTH: usize = 2;

/// An image that is present and unpacked.
#[derive(Debug, Clone)]
pub struct Image {
    /// The normalized reference: `docker.io/library/busybox:latest`.
    pub name: String,
    /// The digest of what the name points at (the manifest, or the index
    /// for a multi-platform image): the repo digest users pull by.
    pub digest: String,
    /// The image's config: entrypoint, cmd, env, user, working dir...
    pub config: ImageConfiguration,
    /// The snapshot of the top layer: the parent of a container's rootfs.
    pub chain_id: String,
}

/// When to pull, as a container's `imagePullPolicy` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` for `:latest` or no tag, else
    /// `IfNotPresent` (a digest pins the content, so it too).
    pub fn default_for(reference: &str) -> PullPolicy {
        if reference::is_latest(reference) {
            PullPolicy::Always
        } else {
            PullPolicy::IfNotPresent
        }
    }

    /// A container's policy: `imagePullPolicy` when set, else the default.
    /// A value the API server would have refused gets the default too.
    pub fn for_container(reference: &str, policy: Option<&str>) -> PullPolicy {
        policy
            .filter(|p| !p.is_empty())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| PullPolicy::default_for(reference))
    }
}

impl FromStr for PullPolicy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<PullPolicy> {
        match s {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            _ => bail!("imagePullPolicy: {s:?} is not Always, IfNotPresent or Never"),
        }
    }
}

/// Why [`ensure`] or [`pull`] gave no image; each maps to the waiting
/// reason kubelet reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullError {
    /// Not present and the policy is `Never` (`ErrImageNeverPull`). Holds
    /// the normalized reference.
    NeverPull(String),
    /// The reference cannot be parsed (`InvalidImageName`).
    InvalidName(String),
    /// The pull failed (`ErrImagePull`).
    Pull { reference: String, message: String },
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PullError::NeverPull(r) => {
                write!(f, "image {r} is not present and the pull policy is Never")
            }
            PullError::InvalidName(m) => f.write_str(m),
            PullError::Pull { reference, message } => write!(f, "pull {reference}: {message}"),
        }
    }
}

impl std::error::Error for PullError {}

/// Told how far each layer's download or import is. Called often; an
/// implementation should be cheap.
pub trait Progress: Send + Sync {
    /// `done` of `total` bytes of layer `digest` are stored; `done ==
    /// total` once it is complete (or was there already).
    fn layer(&self, digest: &str, done: u64, total: u64);
}

/// Progress that nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn layer(&self, _: &str, _: u64, _: u64) {}
}

/// The image `name` if it is present and unpacked, without pulling.
pub async fn get(rt: &Runtime, name: &str) -> Result<Option<Image>> {
    let name = normalize(name)?;
    let Some(l) = local(rt, &name).await? else {
        return Ok(None);
    };
    if !l.unpacked(rt).await? {
        return Ok(None);
    }
    Ok(Some(l.image(name)))
}

/// The image for a container: present (and unpacked) or pulled, as
/// `policy` says.
pub async fn ensure(
    rt: &Runtime,
    reference: &str,
    policy: PullPolicy,
    regs: &Registries,
    keyring: &Keyring,
    progress: &dyn Progress,
) -> Result<Image, PullError> {
    let name = normalize(reference).map_err(|e| PullError::InvalidName(format!("{e:#}")))?;
    if policy != PullPolicy::Always {
        match present(rt, &name).await {
            Ok(Some(img)) => return Ok(img),
            Ok(None) => {}
            Err(e) => {
                return Err(PullError::Pull {
                    reference: name,
                    message: format!("the local copy: {e:#}"),
                })
            }
        }
        if policy == PullPolicy::Never {
            return Err(PullError::NeverPull(name));
        }
    }
    pull(rt, &name, regs, keyring, progress).await
}

/// Pulls `reference` from its registry, stores and unpacks it. Blobs the
/// store has already are not downloaded again.
pub async fn pull(
    rt: &Runtime,
    reference: &str,
    regs: &Registries,
    keyring: &Keyring,
    progress: &dyn Progress,
) -> Result<Image, PullError> {
    let r = Reference::parse(reference).map_err(|e| PullError::InvalidName(format!("{e:#}")))?;
    pull::pull(rt, &r, regs, keyring, progress)
        .await
        .map_err(|e| PullError::Pull {
            reference: r.to_string(),
            message: format!("{e:#}"),
        })
}

/// Imports every image of an OCI layout tar or a docker archive (`docker
/// save`), and unpacks it.
pub async fn import_archive(
    rt: &Runtime,
    path: &Path,
    progress: &dyn Progress,
) -> Result<Vec<Image>> {
    import::import(rt, path, progress)
        .await
        .with_context(|| format!("import {}", path.display()))
}

/// The pause image made of `binary` (our static `knode-pause`), built and
/// stored when missing: `knode.io/pause:<version>-<12 hex of its sha256>`.
/// No registry is involved; quick when the image is there.
pub async fn ensure_pause(rt: &Runtime, binary: &Path) -> Result<Image> {
    let data = tokio::fs::read(binary)
        .await
        .with_context(|| format!("read {}", binary.display()))?;
    let name = pause_name(&data);
    if let Some(img) = get(rt, &name).await? {
        return Ok(img);
    }
    let built = build::pause(&data)?;
    let s = Session::begin(rt).await?;
    let r = store_built(&s, &name, &built).await;
    s.end().await;
    let img = r.with_context(|| format!("store {name}"))?;
    tracing::info!(image = %img.name, "built the pause image");
    Ok(img)
}

/// The pause image's name for `binary`.
pub fn pause_name(binary: &[u8]) -> String {
    let digest = media::sha256(binary);
    format!(
        "knode.io/pause:{}-{}",
        env!("CARGO_PKG_VERSION"),
        &digest["sha256:".len().."sha256:".len() + 12]
    )
}

/// An image record as `knode image ls` shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub digest: String,
    /// Bytes of manifest, config and layers as stored (compressed), if the
    /// content is all there.
    pub size: Option<u64>,
}

/// Every image record in the namespace, by name.
pub async fn list(rt: &Runtime) -> Result<Vec<Listed>> {
    let images = rt
        .images()
        .list(rt.req(ListImagesRequest { filters: vec![] }))
        .await
        .map_err(status_error)
        .context("list images")?
        .into_inner()
        .images;
    let mut out = Vec::new();
    for i in images {
        let digest = i
            .target
            .as_ref()
            .map(|t| t.digest.clone())
            .unwrap_or_default();
        let size = match local(rt, &i.name).await {
            Ok(Some(l)) => Some(
                l.manifest.config.size
                    + l.manifest.layers.iter().map(|d| d.size).sum::<u64>()
                    + l.target.size,
            ),
            _ => None,
        };
        out.push(Listed {
            name: i.name,
            digest,
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Deletes the image record `name` and waits for containerd's GC to
/// remove the content and snapshots nothing else uses (as the CRI plugin
/// does). False when there was no such image.
pub async fn remove(rt: &Runtime, name: &str) -> Result<bool> {
    let name = normalize(name)?;
    let req = rt.req(DeleteImageRequest {
        name: name.clone(),
        sync: true,
        target: None,
    });
    match rt.images().delete(req).await {
        Ok(_) => Ok(true),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(status_error(s)).with_context(|| format!("delete image {name}")),
    }
}

/// An image as the store has it: record, manifest and config present.
struct Local {
    target: Descriptor,
    manifest: Manifest,
    config: ImageConfiguration,
    diff_ids: Vec<String>,
    chain_id: String,
}

impl Local {
    async fn unpacked(&self, rt: &Runtime) -> Result<bool> {
        Ok(self.chain_id.is_empty() || store::snapshot_exists(rt, &self.chain_id).await?)
    }

    fn image(self, name: String) -> Image {
        Image {
            name,
            digest: self.target.digest,
            config: self.config,
            chain_id: self.chain_id,
        }
    }
}

/// Reads the record `name` and its manifest and config for this node's
/// platform; `None` when any of them is missing.
async fn local(rt: &Runtime, name: &str) -> Result<Option<Local>> {
    let Some(target) = store::image_target(rt, name).await? else {
        return Ok(None);
    };
    let mut desc = target.clone();
    let mut depth = 0;
    let manifest = loop {
        let Some(body) = store::read(rt, &desc.digest, MAX_MANIFEST as u64).await? else {
            return Ok(None);
        };
        if media::kind(&desc.media_type, &body)? == media::Kind::Manifest {
            break media::parse_manifest(&body)?;
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            bail!("{name}: indexes nested more than {MAX_INDEX_DEPTH} deep");
        }
        let ix = media::parse_index(&body)?;
        let want = media::host_platform();
        let Some(d) = media::select(&ix, &want) else {
            bail!(
                "{name}: the image has no manifest for {}/{}",
                want.os,
                want.architecture
            );
        };
        desc = d.clone();
    };
    let Some(config_bytes) = store::read(rt, &manifest.config.digest, MAX_CONFIG).await? else {
        return Ok(None);
    };
    let (config, diff_ids) = parse_config(&config_bytes)?;
    let chain_id = media::chain_id(&diff_ids);
    Ok(Some(Local {
        target,
        manifest,
        config,
        diff_ids,
        chain_id,
    }))
}

/// The image `name` when present, unpacking it first when its content is
/// stored but its snapshots are not (e.g. `ctr image pull` without unpack).
async fn present(rt: &Runtime, name: &str) -> Result<Option<Image>> {
    let Some(l) = local(rt, name).await? else {
        return Ok(None);
    };
    if !l.unpacked(rt).await? {
        for layer in &l.manifest.layers {
            if store::info(rt, &layer.digest).await?.is_none() {
                return Ok(None);
            }
        }
        let s = Session::begin(rt).await?;
        let r = unpack_and_label(&s, &l.manifest, &l.diff_ids).await;
        s.end().await;
        r?;
    }
    Ok(Some(l.image(name.to_string())))
}

/// Unpacks the layers and labels the config with the top snapshot, so
/// GC keeps the snapshots as long as the image.
async fn unpack_and_label(s: &Session<'_>, m: &Manifest, diff_ids: &[String]) -> Result<String> {
    let chain = s.unpack(&m.layers, diff_ids).await?;
    s.label(&m.config.digest, &store::config_labels(&chain))
        .await?;
    Ok(chain)
}

/// The last step of every way in: unpack, then point the image records
/// at `target`. All blobs must be stored already.
async fn finish(
    s: &Session<'_>,
    names: &[String],
    target: &Descriptor,
    manifest: &Manifest,
    config_bytes: &[u8],
) -> Result<Vec<Image>> {
    let (config, diff_ids) = parse_config(config_bytes)?;
    let chain_id = unpack_and_label(s, manifest, &diff_ids).await?;
    let mut out = Vec::new();
    for name in names {
        s.put_image(name, target).await?;
        out.push(Image {
            name: name.clone(),
            digest: target.digest.clone(),
            config: config.clone(),
            chain_id: chain_id.clone(),
        });
    }
    Ok(out)
}

/// Stores a built image (the pause image) and unpacks it.
async fn store_built(s: &Session<'_>, name: &str, b: &build::Built) -> Result<Image> {
    for (i, layer) in b.layers.iter().enumerate() {
        let desc = &b.manifest.layers[i];
        s.put(desc, layer, &store::layer_labels(&b.diff_ids[i]))
            .await?;
    }
    let chain = media::chain_id(&b.diff_ids);
    s.put(&b.manifest.config, &b.config, &store::config_labels(&chain))
        .await?;
    s.put(
        &b.manifest_desc,
        &b.manifest_bytes,
        &store::manifest_labels(&b.manifest),
    )
    .await?;
    let mut images = finish(
        s,
        &[name.to_string()],
        &b.manifest_desc,
        &b.manifest,
        &b.config,
    )
    .await?;
    images.pop().ok_or_else(|| anyhow!("no image stored"))
}

/// Parses an image config and checks its diffIDs (they become snapshot
/// names, so they must be digests).
fn parse_config(bytes: &[u8]) -> Result<(ImageConfiguration, Vec<String>)> {
    let config: ImageConfiguration =
        serde_json::from_slice(bytes).context("parse the image config")?;
    let diff_ids = config.rootfs().diff_ids().clone();
    for (i, d) in diff_ids.iter().enumerate() {
        reference::validate_digest(d)
            .with_context(|| format!("image config rootfs.diff_ids[{i}]"))?;
    }
    Ok((config, diff_ids))
}

/// The layers' diff ids from the config, checked against the manifest (one
/// per layer); reports every layer to `progress` as not started.
fn layer_diff_ids(
    manifest: &media::Manifest,
    config: &[u8],
    progress: &dyn Progress,
) -> Result<Vec<String>> {
    let (_, diff_ids) = parse_config(config)?;
    if manifest.layers.len() != diff_ids.len() {
        anyhow::bail!(
            "the manifest has {} layers but the config's rootfs.diff_ids has {}",
            manifest.layers.len(),
            diff_ids.len()
        );
    }
    for l in &manifest.layers {
        progress.layer(&l.digest, 0, l.size);
    }
    Ok(diff_ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults_like_kubernetes() {
        use PullPolicy::*;
        assert_eq!(PullPolicy::for_container("busybox", None), Always);
        assert_eq!(PullPolicy::for_container("busybox:latest", None), Always);
        assert_eq!(
            PullPolicy::for_container("busybox:1.36", None),
            IfNotPresent
        );
        assert_eq!(PullPolicy::for_container("h:5000/a/b", Some("")), Always);
        assert_eq!(PullPolicy::for_container("busybox", Some("Never")), Never);
        assert_eq!(
            PullPolicy::for_container("busybox:1", Some("Always")),
            Always
        );
        assert_eq!(
            PullPolicy::for_container("busybox", Some("sometimes")),
            Always
        );
        let d = format!("busybox@sha256:{}", "a".repeat(64));
        assert_eq!(PullPolicy::for_container(&d, None), IfNotPresent);
        let e = "sometimes".parse::<PullPolicy>().unwrap_err().to_string();
        assert!(e.contains("imagePullPolicy"), "{e}");
    }

    #[test]
    fn pull_errors_read_well() {
        let e = PullError::Pull {
            reference: "docker.io/library/nope:1".into(),
            message: "manifest unknown (404)".into(),
        };
        assert_eq!(
            e.to_string(),
            "pull docker.io/library/nope:1: manifest unknown (404)"
        );
        let n = PullError::NeverPull("docker.io/library/a:1".into());
        assert_eq!(
            n.to_string(),
            "image docker.io/library/a:1 is not present and the pull policy is Never"
        );
    }

    #[test]
    fn pause_name_carries_version_and_binary_digest() {
        let n = pause_name(b"");
        assert_eq!(
            n,
            format!("knode.io/pause:{}-e3b0c44298fc", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(normalize(&n).unwrap(), n);
    }

    /// The pod workers run on a multi-threaded runtime: every future they
    /// await must be Send. Checked by the compiler, never run.
    #[allow(dead_code)]
    fn futures_are_send(rt: &Runtime, regs: &Registries, path: &Path) {
        fn send<T: Send>(_: T) {}
        let k = Keyring::default();
        send(ensure(rt, "a", PullPolicy::Always, regs, &k, &NoProgress));
        send(pull(rt, "a", regs, &k, &NoProgress));
        send(get(rt, "a"));
        send(import_archive(rt, path, &NoProgress));
        send(ensure_pause(rt, path));
    }

    #[test]
    fn configs_with_bad_diff_ids_are_refused() {
        let c = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:../x"]}}"#;
        let e = format!("{:#}", parse_config(c).unwrap_err());
        assert!(e.contains("rootfs.diff_ids[0]"), "{e}");
    }
}
