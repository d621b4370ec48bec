//! containerd's side of images: blobs in the content store (streamed
//! through the Write API with their expected digest and size, labelled for
//! containerd's garbage collector), layers unpacked into overlayfs
//! snapshots, and image records. Everything that writes runs under one
//! lease, so GC cannot take half-made work. Knows no registry or archive.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image as ImageRecord, Info, InfoRequest,
    ReadContentRequest, UpdateImageRequest, UpdateRequest, WriteAction, WriteContentRequest,
    WriteContentResponse,
};
use containerd_client::tonic::codec::Streaming;
use containerd_client::tonic::{Code, Request, Status};
use tokio::sync::mpsc;

use super::media::{self, gc, Descriptor, Index, Manifest};
use crate::{is_already_exists, is_not_found, status_error, Runtime, SNAPSHOTTER};

/// Bytes per Write message (containerd accepts up to 16 MiB).
const CHUNK: usize = 1 << 20;
/// How long a lease outlives a crashed agent.
const LEASE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long to wait for another writer of the same blob (a concurrent
/// pull of the same image) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(3600);

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A name unique to this process and moment.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// One image operation's writes, under one containerd lease.
pub struct Session<'a> {
    pub rt: &'a Runtime,
    lease: String,
}

impl<'a> Session<'a> {
    /// Creates the lease. It expires by itself after a day, should the
    /// agent die before [`Session::end`].
    pub async fn begin(rt: &'a Runtime) -> Result<Session<'a>> {
        let id = unique("knode-image");
        let expire = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(LEASE_TTL)?)?
            .round(jiff::Unit::Second)?;
        let labels = HashMap::from([(gc::EXPIRE.to_string(), expire.to_string())]);
        rt.leases()
            .create(rt.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(status_error)
            .context("create a containerd lease")?;
        Ok(Session { rt, lease: id })
    }

    /// Deletes the lease: from now on only what an image record refers to
    /// (through the GC labels) is kept.
    pub async fn end(self) {
        let req = self.rt.req(DeleteLeaseRequest {
            id: self.lease.clone(),
            sync: false,
        });
        if let Err(s) = self.rt.leases().delete(req).await {
            if !is_not_found(&s) {
                tracing::warn!(lease = %self.lease, error = %s.message(), "delete the image lease");
            }
        }
    }

    /// A request in our namespace that adds what it creates to the lease.
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = self.rt.req(msg);
        if let Ok(v) = self.lease.parse() {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// Opens a writer for `desc`, or `None` when the store has it already.
    /// Waits while another writer (a concurrent pull) holds the same blob.
    pub async fn open(&self, desc: &Descriptor) -> Result<Option<Writer>> {
        let started = Instant::now();
        loop {
            if info(self.rt, &desc.digest).await?.is_some() {
                return Ok(None);
            }
            match Writer::open(self, desc).await {
                Ok(w) => return Ok(w),
                // "ref ... locked": someone else is writing this blob (a
                // lost connection is Unavailable too, but not "locked").
                Err(s)
                    if s.code() == Code::Unavailable
                        && s.message().contains("locked")
                        && started.elapsed() < LOCK_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => {
                    return Err(status_error(s)).with_context(|| format!("write {}", desc.digest))
                }
            }
        }
    }

    /// Stores `data` as `desc` with `labels`; a blob already present only
    /// gets the labels.
    pub async fn put(
        &self,
        desc: &Descriptor,
        data: &[u8],
        labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        match self.open(desc).await? {
            Some(mut w) => {
                w.write(data).await?;
                w.commit(labels).await
            }
            None => self.label(&desc.digest, labels).await,
        }
    }

    /// Adds `labels` to a blob that has not all of them yet.
    pub async fn label(&self, digest: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let Some(have) = info(self.rt, digest).await? else {
            bail!("{digest}: not in the content store");
        };
        let missing: HashMap<String, String> = labels
            .iter()
            .filter(|(k, v)| have.labels.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let paths = missing.keys().map(|k| format!("labels.{k}")).collect();
        let req = UpdateRequest {
            info: Some(Info {
                digest: digest.to_string(),
                labels: missing,
                ..Info::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
        };
        self.rt
            .content()
            .update(self.req(req))
            .await
            .map_err(status_error)
            .with_context(|| format!("label {digest}"))?;
        Ok(())
    }

    /// Unpacks `layers` (bottom first) into overlayfs snapshots named by
    /// their chain IDs and returns the top one. Layers already unpacked
    /// (by an earlier pull or another image sharing them) are skipped;
    /// each applied layer is checked against its diffID.
    pub async fn unpack(&self, layers: &[Descriptor], diff_ids: &[String]) -> Result<String> {
        if layers.len() != diff_ids.len() {
            bail!(
                "the manifest has {} layers but the config's rootfs.diff_ids has {}",
                layers.len(),
                diff_ids.len()
            );
        }
        let chains = media::chain_ids(diff_ids);
        let mut parent = String::new();
        for (i, (layer, chain)) in layers.iter().zip(&chains).enumerate() {
            if !snapshot_exists(self.rt, chain).await? {
                self.apply_layer(layer, &diff_ids[i], &parent, chain)
                    .await
                    .with_context(|| format!("unpack layer {i} ({})", layer.digest))?;
            }
            parent = chain.clone();
        }
        Ok(parent)
    }

    async fn apply_layer(
        &self,
        layer: &Descriptor,
        diff_id: &str,
        parent: &str,
        chain: &str,
    ) -> Result<()> {
        let key = format!("{} {chain}", unique("extract"));
        let prep = PrepareSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: key.clone(),
            parent: parent.into(),
            labels: HashMap::new(),
        };
        let mounts = self
            .rt
            .snapshots()
            .prepare(self.req(prep))
            .await
            .map_err(status_error)
            .context("prepare a snapshot")?
            .into_inner()
            .mounts;
        let result = async {
            let applied = self
                .rt
                .diff()
                .apply(self.req(ApplyRequest {
                    diff: Some(layer.to_containerd()),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                }))
                .await
                .map_err(status_error)
                .context("apply the layer")?
                .into_inner()
                .applied
                .map(|d| d.digest)
                .unwrap_or_default();
            if applied != diff_id {
                bail!(
                    "the layer unpacks to {applied}, but the config says its diffID is {diff_id}"
                );
            }
            let commit = CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: chain.into(),
                key: key.clone(),
                labels: HashMap::new(),
            };
            match self.rt.snapshots().commit(self.req(commit)).await {
                Ok(_) => Ok(false),
                // Someone unpacked the same layer meanwhile: theirs is as good.
                Err(s) if is_already_exists(&s) => Ok(true),
                Err(s) => Err(status_error(s)).context("commit the snapshot"),
            }
        }
        .await;
        if !matches!(result, Ok(false)) {
            let rm = RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key,
            };
            let _ = self.rt.snapshots().remove(self.req(rm)).await;
        }
        result.map(|_| ())
    }

    /// Creates or repoints the image record `name` at `target`.
    pub async fn put_image(&self, name: &str, target: &Descriptor) -> Result<()> {
        let image = ImageRecord {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target.to_containerd()),
            created_at: None,
            updated_at: None,
        };
        let create = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match self.rt.images().create(self.req(create)).await {
            Ok(_) => return Ok(()),
            Err(s) if is_already_exists(&s) => {}
            Err(s) => return Err(status_error(s)).with_context(|| format!("create image {name}")),
        }
        let update = UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["target".into()],
            }),
            source_date_epoch: None,
        };
        self.rt
            .images()
            .update(self.req(update))
            .await
            .map_err(status_error)
            .with_context(|| format!("update image {name}"))?;
        Ok(())
    }
}

/// A blob being written: messages go out one at a time and each answer
/// is checked before the next (containerd answers every message).
pub struct Writer {
    tx: mpsc::Sender<WriteContentRequest>,
    rx: Streaming<WriteContentResponse>,
    buf: Vec<u8>,
    offset: u64,
    total: u64,
    expected: String,
}

impl Writer {
    /// `Ok(None)` when the blob exists already (someone committed it
    /// between our check and now).
    async fn open(s: &Session<'_>, desc: &Descriptor) -> Result<Option<Writer>, Status> {
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(2);
        let first = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: format!("knode-{}", desc.digest),
            total: desc.size as i64,
            expected: desc.digest.clone(),
            ..Default::default()
        };
        // The channel has room: this cannot block.
        let _ = tx.send(first).await;
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut rx = match s.rt.content().write(s.req(stream)).await {
            Ok(r) => r.into_inner(),
            Err(st) if is_already_exists(&st) => return Ok(None),
            Err(st) => return Err(st),
        };
        match rx.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Status::unknown("the content store closed the write")),
            Err(st) if is_already_exists(&st) => return Ok(None),
            Err(st) => return Err(st),
        }
        Ok(Some(Writer {
            tx,
            rx,
            buf: Vec::with_capacity(CHUNK),
            offset: 0,
            total: desc.size,
            expected: desc.digest.clone(),
        }))
    }

    /// Appends `data`, sending whole chunks as they fill.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            let n = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == CHUNK {
                let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
                self.send(WriteAction::Write, chunk, HashMap::new()).await?;
            }
        }
        Ok(())
    }

    /// Sends what is left and commits: containerd checks size and digest
    /// and stores the blob with `labels`.
    pub async fn commit(mut self, labels: &BTreeMap<String, String>) -> Result<()> {
        let rest = std::mem::take(&mut self.buf);
        if self.offset + rest.len() as u64 != self.total {
            bail!(
                "{}: got {} bytes, the descriptor says {}",
                self.expected,
                self.offset + rest.len() as u64,
                self.total
            );
        }
        let labels = labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        match self.send(WriteAction::Commit, rest, labels).await {
            Ok(()) => Ok(()),
            Err(e) if e.downcast_ref::<Status>().is_some_and(is_already_exists) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &mut self,
        action: WriteAction,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let len = data.len() as u64;
        let msg = WriteContentRequest {
            action: action as i32,
            r#ref: String::new(),
            total: self.total as i64,
            expected: self.expected.clone(),
            offset: self.offset as i64,
            data,
            labels,
        };
        let what = || format!("write {}", self.expected);
        if self.tx.send(msg).await.is_err() {
            // The stream ended: containerd's answer says why.
            return match self.rx.message().await {
                Err(s) => Err(anyhow::Error::new(s)).with_context(what),
                Ok(_) => bail!("{}: containerd closed the write stream", what()),
            };
        }
        match self.rx.message().await {
            Ok(Some(r)) if r.offset as u64 == self.offset + len => {
                self.offset += len;
                Ok(())
            }
            Ok(Some(r)) => bail!(
                "{}: containerd is at offset {}, expected {}",
                what(),
                r.offset,
                self.offset + len
            ),
            Ok(None) => bail!("{}: containerd closed the write stream", what()),
            Err(s) => Err(anyhow::Error::new(s)).with_context(what),
        }
    }
}

/// The store's record of `digest`, or `None`.
pub async fn info(rt: &Runtime, digest: &str) -> Result<Option<Info>> {
    let req = rt.req(InfoRequest {
        digest: digest.to_string(),
    });
    match rt.content().info(req).await {
        Ok(r) => Ok(r.into_inner().info),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_error(s)).with_context(|| format!("look up {digest}")),
    }
}

/// Reads a whole blob (manifests, configs: small). `Ok(None)` when the
/// store does not have it; an error when it is larger than `limit`.
pub async fn read(rt: &Runtime, digest: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some(i) = info(rt, digest).await? else {
        return Ok(None);
    };
    if i.size as u64 > limit {
        bail!(
            "{digest}: {} bytes is more than the {limit} allowed",
            i.size
        );
    }
    let req = rt.req(ReadContentRequest {
        digest: digest.to_string(),
        offset: 0,
        size: 0,
    });
    let mut stream = match rt.content().read(req).await {
        Ok(r) => r.into_inner(),
        Err(s) if is_not_found(&s) => return Ok(None),
        Err(s) => return Err(status_error(s)).with_context(|| format!("read {digest}")),
    };
    let mut out = Vec::with_capacity(i.size as usize);
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                out.extend_from_slice(&m.data);
                if out.len() as u64 > limit {
                    bail!("{digest}: more than the {limit} bytes allowed");
                }
            }
            Ok(None) => break,
            Err(s) if is_not_found(&s) => return Ok(None),
            Err(s) => return Err(status_error(s)).with_context(|| format!("read {digest}")),
        }
    }
    if media::sha256(&out) != digest {
        bail!("{digest}: the content store returned data with another digest");
    }
    Ok(Some(out))
}

/// True when the overlayfs snapshot `key` exists.
pub async fn snapshot_exists(rt: &Runtime, key: &str) -> Result<bool> {
    let req = rt.req(StatSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: key.to_string(),
    });
    match rt.snapshots().stat(req).await {
        Ok(_) => Ok(true),
        Err(s) if is_not_found(&s) => Ok(false),
        Err(s) => Err(status_error(s)).with_context(|| format!("stat snapshot {key}")),
    }
}

/// The image record `name`'s target, or `None`.
pub async fn image_target(rt: &Runtime, name: &str) -> Result<Option<Descriptor>> {
    let req = rt.req(GetImageRequest {
        name: name.to_string(),
    });
    match rt.images().get(req).await {
        Ok(r) => Ok(r
            .into_inner()
            .image
            .and_then(|i| i.target)
            .map(|t| Descriptor::new(&t.media_type, t.digest, t.size.max(0) as u64))),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_error(s)).with_context(|| format!("get image {name}")),
    }
}

/// GC labels of an index: every manifest it lists (as containerd sets
/// them, also for platforms not fetched).
pub fn index_labels(index: &Index) -> BTreeMap<String, String> {
    index
        .manifests
        .iter()
        .enumerate()
        .map(|(i, d)| (gc::content_ref("m", i), d.digest.clone()))
        .collect()
}

/// GC labels of a manifest: its config and layers.
pub fn manifest_labels(m: &Manifest) -> BTreeMap<String, String> {
    let mut l: BTreeMap<String, String> = m
        .layers
        .iter()
        .enumerate()
        .map(|(i, d)| (gc::content_ref("l", i), d.digest.clone()))
        .collect();
    l.insert(gc::CONFIG.into(), m.config.digest.clone());
    l
}

/// GC label of a config: the snapshot of its top layer.
pub fn config_labels(chain_id: &str) -> BTreeMap<String, String> {
    if chain_id.is_empty() {
        return BTreeMap::new();
    }
    BTreeMap::from([(gc::snapshot_ref(SNAPSHOTTER), chain_id.to_string())])
}

/// Label of a layer: its uncompressed digest.
pub fn layer_labels(diff_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(gc::UNCOMPRESSED.to_string(), diff_id.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gc_labels_point_at_children() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let m = Manifest {
            schema_version: 2,
            media_type: None,
            config: Descriptor::new(media::OCI_CONFIG, d('c'), 1),
            layers: vec![
                Descriptor::new(media::OCI_LAYER, d('1'), 1),
                Descriptor::new(media::OCI_LAYER, d('2'), 1),
            ],
        };
        let l = manifest_labels(&m);
        assert_eq!(l["containerd.io/gc.ref.content.config"], d('c'));
        assert_eq!(l["containerd.io/gc.ref.content.l.0"], d('1'));
        assert_eq!(l["containerd.io/gc.ref.content.l.1"], d('2'));
        let ix = Index {
            schema_version: 2,
            media_type: None,
            manifests: vec![Descriptor::new(media::OCI_MANIFEST, d('m'), 1)],
        };
        assert_eq!(
            index_labels(&ix)["containerd.io/gc.ref.content.m.0"],
            d('m')
        );
        assert_eq!(
            config_labels(&d('x'))["containerd.io/gc.ref.snapshot.overlayfs"],
            d('x')
        );
        assert!(config_labels("").is_empty());
        assert_eq!(layer_labels(&d('u'))["containerd.io/uncompressed"], d('u'));
    }
}
