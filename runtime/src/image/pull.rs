//! Pulling by reference: tag → manifest (an index picks this node's
//! platform) → config and layers into the content store, three layers at
//! a time, each checked against its digest and size by containerd on
//! commit → image record and unpack, as for an import.

use std::future::Future;
use std::pin::Pin;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;

use super::keyring::Keyring;
use super::media::{self, Descriptor, Kind, Manifest};
use super::reference::Reference;
use super::registry::Client;
use super::store::{self, Session};
use super::{finish, layer_diff_ids, Image, Progress, Registries, MAX_CONFIG, MAX_INDEX_DEPTH};
use crate::Runtime;

/// Layers downloaded at once (containerd's default too).
const PARALLEL_LAYERS: usize = 3;

type LayerFetch<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

pub async fn pull(
    rt: &Runtime,
    r: &Reference,
    regs: &Registries,
    keyring: &Keyring,
    progress: &dyn Progress,
) -> Result<Image> {
    // kubelet's order: the pod's pull secrets (most specific key), then
    // the node's credentials.
    let secret = keyring.lookup(r).first().map(|c| (*c).clone());
    let client = Client::new(regs, r)?.with_secret(secret);
    let mut fetched = client.manifest(r.object()).await?;
    let mut kind = media::kind(&fetched.media_type, &fetched.body)?;
    let mut desc = Descriptor::new(
        &media::media_type_of(kind, &fetched.media_type, &fetched.body),
        fetched.digest.clone(),
        fetched.body.len() as u64,
    );
    let mut parents: Vec<(Descriptor, Vec<u8>, media::Index)> = Vec::new();
    while kind == Kind::Index {
        if parents.len() >= MAX_INDEX_DEPTH {
            bail!("indexes nested more than {MAX_INDEX_DEPTH} deep");
        }
        let ix = media::parse_index(&fetched.body)?;
        let want = media::host_platform();
        let Some(next) = media::select(&ix, &want).cloned() else {
            let have: Vec<String> = ix
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            bail!(
                "no image for {}/{} (the index has: {})",
                want.os,
                want.architecture,
                have.join(", ")
            );
        };
        let f = client.manifest(&next.digest).await?;
        if f.body.len() as u64 != next.size {
            bail!(
                "manifest {}: {} bytes, the index says {}",
                next.digest,
                f.body.len(),
                next.size
            );
        }
        let declared = if next.media_type.is_empty() {
            f.media_type.clone()
        } else {
            next.media_type.clone()
        };
        kind = media::kind(&declared, &f.body)?;
        parents.push((desc, std::mem::replace(&mut fetched, f).body, ix));
        desc = Descriptor::new(
            &media::media_type_of(kind, &declared, &fetched.body),
            next.digest,
            next.size,
        );
    }
    let manifest = media::parse_manifest(&fetched.body)?;
    let target = parents.first().map_or(&desc, |(d, _, _)| d).clone();

    let s = Session::begin(rt).await?;
    let result = store_all(
        &s,
        &client,
        r,
        &target,
        &desc,
        &fetched.body,
        &manifest,
        &parents,
        progress,
    )
    .await;
    s.end().await;
    result?.pop().context("no image stored")
}

#[allow(clippy::too_many_arguments)]
async fn store_all(
    s: &Session<'_>,
    client: &Client<'_>,
    r: &Reference,
    target: &Descriptor,
    manifest_desc: &Descriptor,
    manifest_bytes: &[u8],
    manifest: &Manifest,
    parents: &[(Descriptor, Vec<u8>, media::Index)],
    progress: &dyn Progress,
) -> Result<Vec<Image>> {
    // The config first: its diffIDs label the layers.
    let config = match store::read(s.rt, &manifest.config.digest, MAX_CONFIG).await? {
        Some(c) => c,
        None => {
            if manifest.config.size > MAX_CONFIG {
                bail!(
                    "config {}: {} bytes is too large",
                    manifest.config.digest,
                    manifest.config.size
                );
            }
            let body = client
                .blob(&manifest.config.digest)
                .await?
                .bytes(MAX_CONFIG as usize)
                .await
                .context("the image config")?;
            if media::sha256(&body) != manifest.config.digest {
                bail!(
                    "config {}: the registry sent other content",
                    manifest.config.digest
                );
            }
            body
        }
    };
    let diff_ids = layer_diff_ids(manifest, &config, progress)?;
    // Boxed and collected first: a lazily mapped stream of borrowing
    // futures would make this future !Send for the compiler.
    let fetches: Vec<LayerFetch<'_>> = manifest
        .layers
        .iter()
        .zip(&diff_ids)
        .map(|(l, d)| -> LayerFetch<'_> { Box::pin(fetch_layer(s, client, l, d, progress)) })
        .collect();
    let mut fetches = futures_util::stream::iter(fetches).buffer_unordered(PARALLEL_LAYERS);
    while let Some(r) = fetches.next().await {
        r?;
    }
    drop(fetches);
    let chain = media::chain_id(&diff_ids);
    s.put(&manifest.config, &config, &store::config_labels(&chain))
        .await?;
    s.put(
        manifest_desc,
        manifest_bytes,
        &store::manifest_labels(manifest),
    )
    .await?;
    for (d, body, ix) in parents.iter().rev() {
        s.put(d, body, &store::index_labels(ix)).await?;
    }
    finish(s, &[r.to_string()], target, manifest, &config).await
}

/// Downloads one layer into the store unless it is there already.
async fn fetch_layer(
    s: &Session<'_>,
    client: &Client<'_>,
    layer: &Descriptor,
    diff_id: &str,
    progress: &dyn Progress,
) -> Result<()> {
    let labels = store::layer_labels(diff_id);
    let Some(mut w) = s.open(layer).await? else {
        s.label(&layer.digest, &labels).await?;
        progress.layer(&layer.digest, layer.size, layer.size);
        return Ok(());
    };
    let mut resp = client.blob(&layer.digest).await?;
    let mut done = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("blob {}", layer.digest))?
    {
        done += chunk.len() as u64;
        if done > layer.size {
            bail!(
                "blob {}: more than the {} bytes its descriptor says",
                layer.digest,
                layer.size
            );
        }
        w.write(&chunk).await?;
        progress.layer(&layer.digest, done, layer.size);
    }
    w.commit(&labels)
        .await
        .with_context(|| format!("store blob {}", layer.digest))
}
