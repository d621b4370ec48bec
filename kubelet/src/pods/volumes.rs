//! The pod's volumes, in kubelet's layout under
//! `<data_dir>/pods/<uid>/volumes/<plugin>/<name>`: emptyDir (a directory,
//! or a tmpfs for `medium: Memory`), hostPath (checked or created by its
//! type), configMap, secret, downwardAPI and projected (written atomically
//! like kubelet's AtomicWriter; all but configMap on a tmpfs, so secret
//! values never touch the disk). Also
//! the bind mounts a container asks for. Nothing here runs a shell.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Container, KeyToPath, Pod, Secret, Volume};
use nix::mount::MsFlags;

use super::files::{is_mount_point, unmount_all_under};
use runtime::spec::quantity::non_negative;
use runtime::spec::{valid_uid, Mount};

/// Plugin directory names, as kubelet names them (`volumes/<plugin>/<name>`).
pub const EMPTY_DIR: &str = "kubernetes.io~empty-dir";
pub const CONFIG_MAP: &str = "kubernetes.io~configmap";
pub const SECRET: &str = "kubernetes.io~secret";
pub const DOWNWARD_API: &str = "kubernetes.io~downward-api";
pub const PROJECTED: &str = "kubernetes.io~projected";
/// The mode of files in configMap and secret volumes unless the pod says.
pub const DEFAULT_MODE: u32 = 0o644;
/// The AtomicWriter's pointer to the current payload directory.
const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// Why a volume could not be set up or mounted: the pod's spec (or a
/// referenced object) does not allow it (`Invalid`, with the field path),
/// or a file system operation failed (`Io`). The same shape as the pod
/// files' errors.
pub use super::files::FilesError as VolumeError;

use super::projected;

pub type Result<T, E = VolumeError> = std::result::Result<T, E>;

pub(super) fn config(field: impl Into<String>, message: impl Into<String>) -> VolumeError {
    VolumeError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

/// `<data_dir>/pods/<uid>`.
fn pod_dir(data_dir: &Path, uid: &str) -> PathBuf {
    data_dir.join("pods").join(uid)
}

/// Sets up every volume of the pod and returns each one's host path by
/// name. Idempotent: existing directories and tmpfs mounts are kept, and
/// configMap/secret contents are rewritten (atomically) only if changed,
/// so calling it again also refreshes them.
pub fn prepare(
    data_dir: &Path,
    pod: &Pod,
    config_maps: &dyn Fn(&str) -> Option<ConfigMap>,
    secrets: &dyn Fn(&str) -> Option<Secret>,
) -> Result<HashMap<String, PathBuf>> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if !valid_uid(uid) {
        return Err(config(
            "metadata.uid",
            format!("{uid:?} is not a valid pod uid"),
        ));
    }
    let root = pod_dir(data_dir, uid).join("volumes");
    let spec = pod.spec.as_ref();
    let fs_group = spec
        .and_then(|s| s.security_context.as_ref())
        .and_then(|s| s.fs_group)
        .map(|g| {
            u32::try_from(g).map_err(|_| {
                config(
                    "spec.securityContext.fsGroup",
                    format!("{g} is not a group id"),
                )
            })
        })
        .transpose()?;
    let mut out = HashMap::new();
    for (i, v) in spec
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let field = format!("spec.volumes[{i}]");
        if !is_component(&v.name) {
            return Err(config(
                format!("{field}.name"),
                format!("{:?} is not a volume name", v.name),
            ));
        }
        if out.contains_key(&v.name) {
            return Err(config(
                format!("{field}.name"),
                format!("{:?} is used twice", v.name),
            ));
        }
        let path = setup(&root, pod, v, &field, fs_group, config_maps, secrets)?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// A safe single path component.
fn is_component(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']) && s.len() <= 253
}

fn setup(
    root: &Path,
    pod: &Pod,
    v: &Volume,
    field: &str,
    fs_group: Option<u32>,
    config_maps: &dyn Fn(&str) -> Option<ConfigMap>,
    secrets: &dyn Fn(&str) -> Option<Secret>,
) -> Result<PathBuf> {
    if let Some(e) = &v.empty_dir {
        let dir = root.join(EMPTY_DIR).join(&v.name);
        make_dir(&dir, 0o777)?;
        match e.medium.as_deref().unwrap_or_default() {
            "" => {}
            "Memory" => {
                let size = match &e.size_limit {
                    Some(q) => {
                        non_negative(&q.0)
                            .ok()
                            .and_then(|q| q.value())
                            .ok_or_else(|| {
                                config(
                                    format!("{field}.emptyDir.sizeLimit"),
                                    format!("{:?} is not a size", q.0),
                                )
                            })?
                    }
                    None => 0,
                };
                mount_tmpfs(&dir, size, 0o777)?;
            }
            other => {
                return Err(config(
                    format!("{field}.emptyDir.medium"),
                    format!("medium {other:?} is not supported (\"\" or Memory)"),
                ))
            }
        }
        if let Some(g) = fs_group {
            // The directory only: what is inside was made by containers,
            // and walking it could be steered through their symlinks.
            set_group_ownership(&dir, g, false, false)?;
        }
        return Ok(dir);
    }
    if let Some(h) = &v.host_path {
        return host_path(
            &h.path,
            h.type_.as_deref().unwrap_or_default(),
            &format!("{field}.hostPath"),
        );
    }
    if let Some(c) = &v.config_map {
        let f = format!("{field}.configMap");
        let data = match config_maps(&c.name) {
            Some(cm) => Some(config_map_data(cm)),
            None if c.optional == Some(true) => None,
            None => return Err(config(&f, format!("configmap {:?} not found", c.name))),
        };
        let payload = payload(
            data.unwrap_or_default(),
            c.items.as_deref(),
            c.default_mode,
            c.optional == Some(true),
            &f,
            |k| format!("configmap references non-existent config key: {k}"),
        )?;
        let dir = root.join(CONFIG_MAP).join(&v.name);
        write_volume(&dir, &payload, false, fs_group)?;
        return Ok(dir);
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let f = format!("{field}.secret");
        let data = match secrets(&name) {
            Some(sec) => Some(secret_data(sec)),
            None if s.optional == Some(true) => None,
            None => return Err(config(&f, format!("secret {name:?} not found"))),
        };
        let payload = payload(
            data.unwrap_or_default(),
            s.items.as_deref(),
            s.default_mode,
            s.optional == Some(true),
            &f,
            |k| format!("references non-existent secret key: {k}"),
        )?;
        let dir = root.join(SECRET).join(&v.name);
        // On a tmpfs: secret values never reach a disk.
        write_volume(&dir, &payload, true, fs_group)?;
        return Ok(dir);
    }
    if let Some(d) = &v.downward_api {
        let f = format!("{field}.downwardAPI");
        let default = mode(d.default_mode, || format!("{f}.defaultMode"))?;
        let payload =
            projected::downward_api(pod, d.items.as_deref().unwrap_or_default(), default, &f)?;
        let dir = root.join(DOWNWARD_API).join(&v.name);
        // kubelet keeps these on a memory-backed emptyDir too.
        write_volume(&dir, &payload, true, fs_group)?;
        return Ok(dir);
    }
    if let Some(p) = &v.projected {
        let payload =
            projected::projected(pod, p, &format!("{field}.projected"), config_maps, secrets)?;
        let dir = root.join(PROJECTED).join(&v.name);
        write_volume(&dir, &payload, true, fs_group)?;
        return Ok(dir);
    }
    Err(config(
        field,
        format!(
            "volume {:?}: type {} is not supported (emptyDir, hostPath, configMap, secret, downwardAPI, projected)",
            v.name,
            volume_type(v)
        ),
    ))
}

/// The name of the volume source `v` uses, for messages.
fn volume_type(v: &Volume) -> &'static str {
    let types: [(bool, &'static str); 20] = [
        (v.persistent_volume_claim.is_some(), "persistentVolumeClaim"),
        (v.projected.is_some(), "projected"),
        (v.downward_api.is_some(), "downwardAPI"),
        (v.nfs.is_some(), "nfs"),
        (v.csi.is_some(), "csi"),
        (v.ephemeral.is_some(), "ephemeral"),
        (v.image.is_some(), "image"),
        (v.iscsi.is_some(), "iscsi"),
        (v.git_repo.is_some(), "gitRepo"),
        (v.glusterfs.is_some(), "glusterfs"),
        (v.rbd.is_some(), "rbd"),
        (v.cephfs.is_some(), "cephfs"),
        (v.fc.is_some(), "fc"),
        (v.flex_volume.is_some(), "flexVolume"),
        (v.aws_elastic_block_store.is_some(), "awsElasticBlockStore"),
        (v.gce_persistent_disk.is_some(), "gcePersistentDisk"),
        (v.azure_disk.is_some(), "azureDisk"),
        (v.azure_file.is_some(), "azureFile"),
        (v.cinder.is_some(), "cinder"),
        (v.vsphere_volume.is_some(), "vsphereVolume"),
    ];
    types
        .iter()
        .find(|(set, _)| *set)
        .map_or("(none given)", |(_, name)| name)
}

/// A ConfigMap's `data` and `binaryData` as file contents by key.
pub(super) fn config_map_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = cm
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    d.extend(
        cm.binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    d
}

/// A Secret's `data` and `stringData` as file contents by key.
pub(crate) fn secret_data(sec: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = sec
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    d.extend(
        sec.string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    d
}

/// Writes a payload volume at `dir` (on a tmpfs with `tmpfs`), owned by
/// the pod's fsGroup if it has one.
fn write_volume(dir: &Path, payload: &Payload, tmpfs: bool, fs_group: Option<u32>) -> Result<()> {
    make_dir(dir, 0o755)?;
    if tmpfs {
        mount_tmpfs(dir, 0, 0o755)?;
    }
    write_atomic(dir, payload)?;
    if let Some(g) = fs_group {
        set_group_ownership(dir, g, true, true)?;
    }
    Ok(())
}

/// kubelet's hostPath type check (messages as kubelet words them).
fn host_path(path: &str, typ: &str, field: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(config(
            format!("{field}.path"),
            format!("{path:?} must be an absolute path without '..'"),
        ));
    }
    let meta = fs::metadata(p).ok();
    let ft = meta.as_ref().map(|m| m.file_type());
    let failed = |what: &str| {
        config(
            field,
            format!("hostPath type check failed: {path} is not {what}"),
        )
    };
    match typ {
        "" => {}
        "DirectoryOrCreate" if ft.is_none() => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(p)
                .map_err(io_err(format!("create hostPath directory {path}")))?;
        }
        "DirectoryOrCreate" | "Directory" => {
            if !ft.is_some_and(|t| t.is_dir()) {
                return Err(failed("a directory"));
            }
        }
        "FileOrCreate" if ft.is_none() => {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(p)
                .map_err(io_err(format!("create hostPath file {path}")))?;
        }
        "FileOrCreate" | "File" => {
            if !ft.is_some_and(|t| t.is_file()) {
                return Err(failed("a file"));
            }
        }
        "Socket" => {
            if !ft.is_some_and(|t| t.is_socket()) {
                return Err(failed("a socket file"));
            }
        }
        "CharDevice" => {
            if !ft.is_some_and(|t| t.is_char_device()) {
                return Err(failed("a character device"));
            }
        }
        "BlockDevice" => {
            if !ft.is_some_and(|t| t.is_block_device()) {
                return Err(failed("a block device"));
            }
        }
        other => {
            return Err(config(
                format!("{field}.type"),
                format!("{other} is an invalid volume type"),
            ))
        }
    }
    Ok(p.to_path_buf())
}

/// One file of a configMap/secret volume: its bytes and mode.
pub(super) type Payload = BTreeMap<String, (Vec<u8>, u32)>;

pub(super) fn mode(m: Option<i32>, field: impl FnOnce() -> String) -> Result<u32> {
    match m {
        None => Ok(DEFAULT_MODE),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(config(
            field(),
            format!("{m:#o} is not a file mode (0 to 0777)"),
        )),
    }
}

/// kubelet's volume payload: every key (as file name), or the listed
/// `items` (key → path, mode). Item paths are relative, without `..`.
pub(super) fn payload(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    optional: bool,
    field: &str,
    missing_key: impl Fn(&str) -> String,
) -> Result<Payload> {
    let default = mode(default_mode, || format!("{field}.defaultMode"))?;
    let mut out = Payload::new();
    match items {
        None | Some([]) => {
            for (k, v) in data {
                check_item_path(&k, &format!("{field}.data[{k:?}]"))?;
                out.insert(k, (v, default));
            }
        }
        Some(items) => {
            for (i, it) in items.iter().enumerate() {
                let f = format!("{field}.items[{i}]");
                let m = item(&it.path, it.mode, default, &f)?;
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), (v.clone(), m));
                    }
                    None if optional => {}
                    None => return Err(config(format!("{f}.key"), missing_key(&it.key))),
                }
            }
        }
    }
    Ok(out)
}

/// One listed item (`f`) of a payload: its path checked, its mode.
pub(super) fn item(path: &str, m: Option<i32>, default: u32, f: &str) -> Result<u32> {
    check_item_path(path, &format!("{f}.path"))?;
    match m {
        None => Ok(default),
        Some(_) => mode(m, || format!("{f}.mode")),
    }
}

/// kubelet's validatePath for payload paths: relative, no `..` element,
/// nothing starting with `..` (the writer's own names).
fn check_item_path(p: &str, field: &str) -> Result<()> {
    let bad = |why: &str| config(field, format!("{p:?} {why}"));
    if p.is_empty() {
        return Err(bad("must not be empty"));
    }
    if p.starts_with('/') {
        return Err(bad("must be a relative path"));
    }
    if p.len() > 4096 || p.contains('\0') {
        return Err(bad("is not a valid path"));
    }
    if p.split('/').any(|c| c == ".." || c.starts_with("..")) {
        return Err(bad("must not contain '..'"));
    }
    Ok(())
}

fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    let what = || format!("create {}", dir.display());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io_err(what()))?;
    // The umask may have narrowed it.
    fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_err(what()))
}

/// A tmpfs at `dir` (`size` bytes, 0 for the kernel's default), unless one
/// is there already.
fn mount_tmpfs(dir: &Path, size: i64, mode: u32) -> Result<()> {
    let what = || format!("mount a tmpfs at {}", dir.display());
    if is_mount_point(dir).map_err(io_err(what()))? {
        return Ok(());
    }
    let mut data = format!("mode={mode:o}");
    if size > 0 {
        data.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| io_err(what())(e.into()))
}

/// The files below the current payload directory, as a payload.
fn read_payload(data_dir: &Path) -> io::Result<Payload> {
    fn walk(base: &Path, dir: &Path, out: &mut Payload) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            let ft = e.file_type()?;
            let path = e.path();
            if ft.is_dir() {
                walk(base, &path, out)?;
            } else if ft.is_file() {
                let rel = path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                let m = e.metadata()?.permissions().mode() & 0o7777;
                out.insert(rel, (fs::read(&path)?, m));
            }
        }
        Ok(())
    }
    let mut out = Payload::new();
    walk(data_dir, data_dir, &mut out)?;
    Ok(out)
}

/// The first path element of each payload file (what the user sees at the
/// top of the volume, each a symlink into `..data`).
fn top_level(payload: &Payload) -> HashSet<String> {
    payload
        .keys()
        .filter_map(|p| p.split('/').find(|c| !c.is_empty() && *c != "."))
        .map(str::to_string)
        .collect()
}

/// kubelet's AtomicWriter: the payload goes into a fresh timestamped
/// directory, `..data` is switched to it with one rename, the top-level
/// names are symlinks through `..data`, and the old directory goes. A
/// reader sees the old payload or the new one, never a mix.
fn write_atomic(target: &Path, payload: &Payload) -> Result<()> {
    let err = |what: &str| io_err(format!("{what} in {}", target.display()));
    let data_link = target.join(DATA_LINK);
    let old_dir = fs::read_link(&data_link).ok();
    let old_payload = match &old_dir {
        Some(d) => read_payload(&target.join(d)).ok(),
        None => None,
    };
    let new_top = top_level(payload);

    if old_payload.as_ref() != Some(payload) {
        // 1. The new payload in its own directory.
        let (name, dir) = new_payload_dir(target).map_err(err("create a payload directory"))?;
        for (rel, (bytes, mode)) in payload {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(err("create a payload directory"))?;
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io_err(format!("write {}", path.display())))?;
            f.write_all(bytes)
                .map_err(io_err(format!("write {}", path.display())))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
        // 2. Switch `..data` in one step.
        let tmp = target.join(DATA_LINK_TMP);
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err("remove a stale ..data_tmp")(e)),
        }
        std::os::unix::fs::symlink(&name, &tmp).map_err(err("link ..data_tmp"))?;
        fs::rename(&tmp, &data_link).map_err(err("switch ..data"))?;
    }

    // 3. User-visible names point through `..data`.
    for name in &new_top {
        let link = target.join(name);
        let want = Path::new(DATA_LINK).join(name);
        match fs::read_link(&link) {
            Ok(cur) if cur == want => continue,
            Ok(_) => fs::remove_file(&link).map_err(err("replace a link"))?,
            Err(_) if fs::symlink_metadata(&link).is_ok() => {
                return Err(err("link a payload file")(io::Error::other(format!(
                    "{name} exists and is not a link"
                ))))
            }
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&want, &link).map_err(err("link a payload file"))?;
    }
    // 4. Names the new payload no longer has, and old payload directories.
    let current = fs::read_link(&data_link).ok();
    for e in fs::read_dir(target).map_err(err("list"))? {
        let e = e.map_err(err("list"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with("..") {
            let is_payload_dir = name != DATA_LINK && name != DATA_LINK_TMP;
            if is_payload_dir && current.as_deref() != Some(Path::new(&name)) {
                fs::remove_dir_all(&path).map_err(err("remove an old payload"))?;
            }
        } else if !new_top.contains(&name) && e.file_type().is_ok_and(|t| t.is_symlink()) {
            fs::remove_file(&path).map_err(err("remove a stale link"))?;
        }
    }
    Ok(())
}

/// A new, empty `..<timestamp>` directory in `target`.
fn new_payload_dir(target: &Path) -> io::Result<(String, PathBuf)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    for n in 0..100u32 {
        let name = format!("..{}_{:09}_{n}", now.as_secs(), now.subsec_nanos());
        let dir = target.join(&name);
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
                return Ok((name, dir));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free payload directory name"))
}

/// kubelet's SetVolumeOwnership: the volume's files belong to the pod's
/// fsGroup, group-readable (and group-writable unless `read_only`), and
/// directories pass the group on (setgid). Links are not followed; only
/// trees the agent wrote itself are walked (`recursive`).
fn set_group_ownership(dir: &Path, gid: u32, read_only: bool, recursive: bool) -> Result<()> {
    fn walk(p: &Path, gid: u32, read_only: bool, recursive: bool) -> io::Result<()> {
        let meta = fs::symlink_metadata(p)?;
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        std::os::unix::fs::lchown(p, None, Some(gid))?;
        let mut mask = if read_only { 0o440 } else { 0o660 };
        if meta.is_dir() {
            mask |= 0o110 | 0o2000;
        }
        let mode = meta.mode() & 0o7777;
        if mode | mask != mode {
            fs::set_permissions(p, fs::Permissions::from_mode(mode | mask))?;
        }
        if meta.is_dir() && recursive {
            for e in fs::read_dir(p)? {
                walk(&e?.path(), gid, read_only, recursive)?;
            }
        }
        Ok(())
    }
    walk(dir, gid, read_only, recursive)
        .map_err(io_err(format!("set fsGroup {gid} on {}", dir.display())))
}

/// The bind mounts container `container_index` (in `spec.containers`) asks
/// for. configMap and secret volumes are always read-only. A `subPath`
/// must stay inside its volume, also through symlinks.
pub fn mounts_for(
    pod: &Pod,
    container_index: usize,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<Mount>> {
    let spec = pod.spec.as_ref().ok_or_else(|| config("spec", "missing"))?;
    let cf = format!("spec.containers[{container_index}]");
    let c = spec
        .containers
        .get(container_index)
        .ok_or_else(|| config(&cf, "no such container"))?;
    mounts_of(pod, &cf, c, volumes)
}

/// [`mounts_for`] of any container of `pod` (an init container too),
/// `cf` being its field path for errors.
pub fn mounts_of(
    pod: &Pod,
    cf: &str,
    c: &Container,
    volumes: &HashMap<String, PathBuf>,
) -> Result<Vec<Mount>> {
    let spec = pod.spec.as_ref().ok_or_else(|| config("spec", "missing"))?;
    let read_only_source: HashSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.config_map.is_some()
                || v.secret.is_some()
                || v.downward_api.is_some()
                || v.projected.is_some()
        })
        .map(|v| v.name.as_str())
        .collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (j, vm) in c.volume_mounts.iter().flatten().enumerate() {
        let f = format!("{cf}.volumeMounts[{j}]");
        let host = volumes.get(&vm.name).ok_or_else(|| {
            config(
                format!("{f}.name"),
                format!("volume {:?} not found", vm.name),
            )
        })?;
        let mp = Path::new(&vm.mount_path);
        if !mp.is_absolute() || vm.mount_path.contains(['\0', ':']) {
            return Err(config(
                format!("{f}.mountPath"),
                format!("{:?} must be an absolute path", vm.mount_path),
            ));
        }
        if mp.components().any(|c| c == Component::ParentDir) {
            return Err(config(format!("{f}.mountPath"), "must not contain '..'"));
        }
        if !seen.insert(mp.components().collect::<PathBuf>()) {
            return Err(config(
                format!("{f}.mountPath"),
                format!("{:?} is mounted twice", vm.mount_path),
            ));
        }
        match vm.mount_propagation.as_deref() {
            None | Some("None") => {}
            Some(other) => {
                return Err(config(
                    format!("{f}.mountPropagation"),
                    format!("{other} is not supported by this node (only None)"),
                ))
            }
        }
        if vm.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(config(
                format!("{f}.subPathExpr"),
                "is not supported by this node; use subPath",
            ));
        }
        if vm.recursive_read_only.as_deref() == Some("Enabled") {
            return Err(config(
                format!("{f}.recursiveReadOnly"),
                "Enabled is not supported by this node's runtime (use IfPossible or Disabled)",
            ));
        }
        let host_path = match vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
            None => host.clone(),
            Some(sub) => sub_path(host, sub, &format!("{f}.subPath"))?,
        };
        out.push(Mount {
            host_path,
            container_path: vm.mount_path.clone(),
            read_only: vm.read_only == Some(true) || read_only_source.contains(vm.name.as_str()),
        });
    }
    Ok(out)
}

/// `volume/sub`, created as a directory if missing (as kubelet does),
/// refused if it leaves the volume, by `..` or through a symlink a
/// container planted. The check is made on the resolved path; a container
/// racing to swap a directory for a link in between is not stopped here.
fn sub_path(volume: &Path, sub: &str, field: &str) -> Result<PathBuf> {
    let rel = Path::new(sub);
    if rel.is_absolute()
        || rel.components().any(|c| c == Component::ParentDir)
        || sub.contains('\0')
    {
        return Err(config(
            field,
            format!("{sub:?} must be a relative path without '..'"),
        ));
    }
    let path = volume.join(rel);
    if fs::symlink_metadata(&path).is_err() {
        let mode = fs::metadata(volume)
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0o755);
        // Creating through a planted link would already escape: resolve the
        // existing part first.
        let existing = path.ancestors().find(|a| a.exists()).unwrap_or(volume);
        check_inside(volume, existing, sub, field)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&path)
            .map_err(io_err(format!("create subPath {}", path.display())))?;
    }
    check_inside(volume, &path, sub, field)?;
    Ok(path)
}

fn check_inside(volume: &Path, path: &Path, sub: &str, field: &str) -> Result<()> {
    let what = || format!("resolve subPath {}", path.display());
    let base = volume.canonicalize().map_err(io_err(what()))?;
    let real = path.canonicalize().map_err(io_err(what()))?;
    if !real.starts_with(&base) {
        return Err(config(
            field,
            format!("{sub:?} resolves outside the volume"),
        ));
    }
    Ok(())
}

/// Unmounts the pod's tmpfs volumes and removes its volume directory.
/// hostPath volumes live elsewhere and are never touched. Missing is fine.
pub fn cleanup(data_dir: &Path, uid: &str) -> Result<()> {
    if !valid_uid(uid) {
        return Err(config(
            "metadata.uid",
            format!("{uid:?} is not a valid pod uid"),
        ));
    }
    let dir = pod_dir(data_dir, uid);
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(&dir)?;
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("remove {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// The uids of every pod with a directory under `<data_dir>/pods`; the
/// agent removes those no pod owns.
pub fn orphans(data_dir: &Path) -> Result<Vec<String>> {
    let pods = data_dir.join("pods");
    let entries = match fs::read_dir(&pods) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(format!("list {}", pods.display()))(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(format!("list {}", pods.display())))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if valid_uid(&name) && e.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A temp dir removed on drop (unmounting anything left below it).
    struct Tmp(PathBuf);
    impl Tmp {
        fn new(tag: &str) -> Tmp {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "knode-vol-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = unmount_all_under(&self.0);
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn root_or_skip(name: &str) -> bool {
        if nix::unistd::Uid::effective().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} needs root (CI=true: skipping is a failure)"
        );
        eprintln!("skipping {name}: needs root (tmpfs mounts, chown)");
        false
    }

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "shop", "uid": "u-1"}, "spec": spec}),
        )
        .unwrap()
    }

    fn no_cm(_: &str) -> Option<ConfigMap> {
        None
    }
    fn no_secret(_: &str) -> Option<Secret> {
        None
    }

    fn cm(name: &str) -> Option<ConfigMap> {
        (name == "cfg").then(|| {
            serde_json::from_value(json!({"metadata": {"name": "cfg"},
                "data": {"app.conf": "port=80\n", "level": "debug"},
                "binaryData": {"blob": "AAEC"}}))
            .unwrap()
        })
    }

    fn err(r: Result<impl std::fmt::Debug>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn item_paths_stay_inside() {
        for ok in ["a", "a/b", "a.b", ".hidden", "a/.b"] {
            assert!(check_item_path(ok, "f").is_ok(), "{ok}");
        }
        for bad in [
            "", "/abs", "..", "../x", "a/../b", "..data", "a/..b", "a\0b",
        ] {
            assert!(check_item_path(bad, "f").is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_items_modes_and_missing_keys() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("k".to_string(), b"v".to_vec()),
            ("k2".to_string(), b"w".to_vec()),
        ]
        .into();
        let all = payload(data.clone(), None, Some(0o600), false, "f", |k| {
            k.to_string()
        })
        .unwrap();
        assert_eq!(all["k"], (b"v".to_vec(), 0o600));
        assert_eq!(all.len(), 2);
        let items: Vec<KeyToPath> = serde_json::from_value(
            json!([{"key": "k", "path": "sub/file", "mode": 0o400}, {"key": "k2", "path": "two"}]),
        )
        .unwrap();
        let p = payload(data.clone(), Some(&items), None, false, "f", |k| {
            k.to_string()
        })
        .unwrap();
        assert_eq!(p["sub/file"], (b"v".to_vec(), 0o400));
        assert_eq!(p["two"], (b"w".to_vec(), DEFAULT_MODE));
        let missing: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "nope", "path": "x"}])).unwrap();
        let e = payload(
            data.clone(),
            Some(&missing),
            None,
            false,
            "spec.volumes[0].configMap",
            |k| format!("configmap references non-existent config key: {k}"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "spec.volumes[0].configMap.items[0].key: configmap references non-existent config key: nope");
        assert!(payload(data.clone(), Some(&missing), None, true, "f", |k| k
            .to_string())
        .unwrap()
        .is_empty());
        let escape: Vec<KeyToPath> =
            serde_json::from_value(json!([{"key": "k", "path": "../../etc/passwd"}])).unwrap();
        assert!(err(payload(
            data.clone(),
            Some(&escape),
            None,
            false,
            "f",
            |k| k.to_string()
        ))
        .starts_with("f.items[0].path: "));
        assert!(
            err(payload(data, None, Some(0o1777), false, "f", |k| k.to_string()))
                .starts_with("f.defaultMode: ")
        );
    }

    #[test]
    fn atomic_writer_swaps_payloads() {
        let t = Tmp::new("atomic");
        let v1: Payload = [
            ("a".to_string(), (b"1".to_vec(), 0o644)),
            ("d/b".to_string(), (b"2".to_vec(), 0o600)),
        ]
        .into();
        write_atomic(&t.0, &v1).unwrap();
        assert_eq!(fs::read_to_string(t.0.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(t.0.join("d/b")).unwrap(), "2");
        assert_eq!(fs::read_link(t.0.join("a")).unwrap(), Path::new("..data/a"));
        assert_eq!(
            fs::metadata(t.0.join("d/b")).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let first = fs::read_link(t.0.join(DATA_LINK)).unwrap();

        // Same payload: nothing moves.
        write_atomic(&t.0, &v1).unwrap();
        assert_eq!(fs::read_link(t.0.join(DATA_LINK)).unwrap(), first);

        let v2: Payload = [
            ("a".to_string(), (b"one".to_vec(), 0o644)),
            ("c".to_string(), (b"3".to_vec(), 0o644)),
        ]
        .into();
        write_atomic(&t.0, &v2).unwrap();
        assert_ne!(fs::read_link(t.0.join(DATA_LINK)).unwrap(), first);
        assert_eq!(fs::read_to_string(t.0.join("a")).unwrap(), "one");
        assert!(
            fs::symlink_metadata(t.0.join("d")).is_err(),
            "a name the payload dropped is gone"
        );
        let mut names: Vec<String> = fs::read_dir(&t.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "..data, one payload dir, a, c: {names:?}");
    }

    #[test]
    fn host_path_types() {
        let t = Tmp::new("hostpath");
        let d = t.0.join("dir");
        let f = t.0.join("file");
        let ds = d.to_string_lossy().into_owned();
        let fs_ = f.to_string_lossy().into_owned();
        assert_eq!(
            err(host_path(&ds, "Directory", "spec.volumes[0].hostPath")),
            format!(
                "spec.volumes[0].hostPath: hostPath type check failed: {ds} is not a directory"
            )
        );
        assert_eq!(host_path(&ds, "DirectoryOrCreate", "x").unwrap(), d);
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert!(host_path(&ds, "Directory", "x").is_ok());
        assert!(err(host_path(&ds, "File", "x")).ends_with("is not a file"));
        assert!(err(host_path(&fs_, "File", "x")).ends_with("is not a file"));
        assert_eq!(host_path(&fs_, "FileOrCreate", "x").unwrap(), f);
        assert!(f.is_file());
        assert!(host_path(&fs_, "File", "x").is_ok());
        assert!(err(host_path(&fs_, "Socket", "x")).ends_with("is not a socket file"));
        assert!(err(host_path(&fs_, "BlockDevice", "x")).ends_with("is not a block device"));
        assert!(host_path("/dev/null", "CharDevice", "x").is_ok());
        assert!(err(host_path(&fs_, "CharDevice", "x")).ends_with("is not a character device"));
        assert!(
            host_path("/nonexistent/whatever", "", "x").is_ok(),
            "no type: no check"
        );
        assert!(err(host_path(&fs_, "Weird", "x")).contains("Weird is an invalid volume type"));
        assert!(err(host_path("relative", "", "f")).starts_with("f.path: "));
        assert!(err(host_path("/a/../etc", "", "f")).starts_with("f.path: "));
    }

    #[test]
    fn prepare_empty_dir_config_map_and_host_path() {
        let t = Tmp::new("prep");
        let hp = t.0.join("host");
        let p = pod(json!({
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "conf/app.conf"}]}},
                {"name": "all", "configMap": {"name": "cfg", "defaultMode": 0o640}},
                {"name": "opt", "configMap": {"name": "missing", "optional": true}},
                {"name": "host", "hostPath": {"path": hp.to_string_lossy(), "type": "DirectoryOrCreate"}},
            ],
            "containers": [{"name": "app", "image": "b", "volumeMounts": [
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "cfg", "mountPath": "/etc/app"},
                {"name": "host", "mountPath": "/host", "readOnly": true},
                {"name": "scratch", "mountPath": "/logs", "subPath": "logs/app"},
            ]}],
        }));
        let v = prepare(&t.0, &p, &cm, &no_secret).unwrap();
        let vol = t.0.join("pods/u-1/volumes");
        assert_eq!(v["scratch"], vol.join(EMPTY_DIR).join("scratch"));
        assert_eq!(
            fs::metadata(&v["scratch"]).unwrap().permissions().mode() & 0o777,
            0o777
        );
        assert_eq!(
            fs::read_to_string(v["cfg"].join("conf/app.conf")).unwrap(),
            "port=80\n"
        );
        assert!(!v["cfg"].join("level").exists(), "only the listed items");
        assert_eq!(
            fs::read(v["all"].join("blob")).unwrap(),
            vec![0, 1, 2],
            "binaryData too"
        );
        assert_eq!(
            fs::metadata(v["all"].join("level"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o640
        );
        assert!(
            v["opt"].join(DATA_LINK).exists(),
            "optional and missing: an empty payload"
        );
        assert!(!v["opt"].join("level").exists());
        assert_eq!(v["host"], hp);
        assert!(hp.is_dir());
        // Idempotent.
        assert_eq!(prepare(&t.0, &p, &cm, &no_secret).unwrap(), v);

        let m = mounts_for(&p, 0, &v).unwrap();
        assert_eq!(
            m[0],
            Mount {
                host_path: v["scratch"].clone(),
                container_path: "/scratch".into(),
                read_only: false
            }
        );
        assert!(m[1].read_only, "configMap mounts are read-only");
        assert!(m[2].read_only);
        assert_eq!(m[3].host_path, v["scratch"].join("logs/app"));
        assert!(m[3].host_path.is_dir(), "subPath made");

        assert_eq!(orphans(&t.0).unwrap(), vec!["u-1".to_string()]);
        if nix::unistd::Uid::effective().is_root() {
            cleanup(&t.0, "u-1").unwrap();
            assert!(!t.0.join("pods/u-1").exists());
            assert!(hp.is_dir(), "hostPath volumes are never removed");
            assert!(orphans(&t.0).unwrap().is_empty());
        }
    }

    #[test]
    fn prepare_errors_name_the_volume() {
        let t = Tmp::new("errs");
        let e = |spec: serde_json::Value| {
            prepare(&t.0, &pod(spec), &no_cm, &no_secret)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(
                json!({"volumes": [{"name": "a", "emptyDir": {}}, {"name": "c", "configMap": {"name": "x"}}], "containers": []})
            ),
            "spec.volumes[1].configMap: configmap \"x\" not found"
        );
        assert_eq!(
            e(
                json!({"volumes": [{"name": "s", "secret": {"secretName": "db"}}], "containers": []})
            ),
            "spec.volumes[0].secret: secret \"db\" not found"
        );
        assert_eq!(
            e(json!({"volumes": [{"name": "pvc", "persistentVolumeClaim": {"claimName": "c"}}], "containers": []})),
            "spec.volumes[0]: volume \"pvc\": type persistentVolumeClaim is not supported (emptyDir, hostPath, configMap, secret, downwardAPI, projected)"
        );
        assert!(
            e(json!({"volumes": [{"name": "../x", "emptyDir": {}}], "containers": []}))
                .starts_with("spec.volumes[0].name: ")
        );
        assert!(e(json!({"volumes": [{"name": "a", "emptyDir": {"medium": "HugePages"}}], "containers": []})).starts_with("spec.volumes[0].emptyDir.medium: "));
        assert!(e(json!({"volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}], "containers": []})).contains("used twice"));
        let mut bad_uid = pod(json!({"containers": []}));
        bad_uid.metadata.uid = Some("..".into());
        assert!(prepare(&t.0, &bad_uid, &no_cm, &no_secret).is_err());
    }

    #[test]
    fn mount_errors_and_sub_path_escapes() {
        let t = Tmp::new("mounts");
        let vol = t.0.join("vol");
        fs::create_dir_all(&vol).unwrap();
        std::os::unix::fs::symlink("/", vol.join("evil")).unwrap();
        std::os::unix::fs::symlink("/etc", vol.join("evil2")).unwrap();
        let vols: HashMap<String, PathBuf> = [("v".to_string(), vol.clone())].into();
        let m = |vm: serde_json::Value| {
            let p = pod(json!({"volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": "a", "image": "b", "volumeMounts": [vm]}]}));
            mounts_for(&p, 0, &vols)
        };
        assert!(err(m(
            json!({"name": "v", "mountPath": "/x", "subPath": "evil"})
        ))
        .contains("resolves outside the volume"));
        assert!(err(m(
            json!({"name": "v", "mountPath": "/x", "subPath": "evil2/newdir"})
        ))
        .contains("resolves outside the volume"));
        assert!(
            !Path::new("/etc/newdir").exists(),
            "nothing was created through the link"
        );
        assert!(err(m(
            json!({"name": "v", "mountPath": "/x", "subPath": "../x"})
        ))
        .starts_with("spec.containers[0].volumeMounts[0].subPath: "));
        assert!(err(m(
            json!({"name": "v", "mountPath": "/x", "subPath": "/abs"})
        ))
        .starts_with("spec.containers[0].volumeMounts[0].subPath: "));
        assert_eq!(
            err(m(json!({"name": "w", "mountPath": "/x"}))),
            "spec.containers[0].volumeMounts[0].name: volume \"w\" not found"
        );
        assert!(err(m(json!({"name": "v", "mountPath": "rel"})))
            .starts_with("spec.containers[0].volumeMounts[0].mountPath: "));
        assert!(err(m(
            json!({"name": "v", "mountPath": "/x", "mountPropagation": "Bidirectional"})
        ))
        .contains("mountPropagation"));
        assert!(err(m(
            json!({"name": "v", "mountPath": "/x", "subPathExpr": "$(POD)"})
        ))
        .contains("subPathExpr"));
        assert!(m(json!({"name": "v", "mountPath": "/x", "subPath": "ok/dir"})).is_ok());
        let p = pod(json!({"containers": []}));
        assert!(err(mounts_for(&p, 0, &vols)).starts_with("spec.containers[0]: no such container"));
    }

    #[test]
    fn secrets_and_memory_on_tmpfs() {
        if !root_or_skip("secrets_and_memory_on_tmpfs") {
            return;
        }
        let t = Tmp::new("tmpfs");
        let secrets = |n: &str| -> Option<Secret> {
            (n == "db").then(|| {
                serde_json::from_value(
                    json!({"metadata": {"name": "db"}, "data": {"password": "aHVudGVyMg=="}}),
                )
                .unwrap()
            })
        };
        let p = pod(json!({
            "securityContext": {"fsGroup": 4321},
            "volumes": [
                {"name": "creds", "secret": {"secretName": "db", "defaultMode": 0o400}},
                {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            ],
            "containers": [],
        }));
        let v = prepare(&t.0, &p, &no_cm, &secrets).unwrap();
        let tmpfs = nix::sys::statfs::TMPFS_MAGIC;
        for name in ["creds", "mem"] {
            assert_eq!(
                nix::sys::statfs::statfs(&v[name])
                    .unwrap()
                    .filesystem_type(),
                tmpfs,
                "{name}"
            );
        }
        let mem = nix::sys::statvfs::statvfs(&v["mem"]).unwrap();
        assert_eq!(mem.blocks() as u64 * mem.fragment_size() as u64, 16 << 20);
        let pw = v["creds"].join("password");
        assert_eq!(fs::read_to_string(&pw).unwrap(), "hunter2");
        let meta = fs::metadata(&pw).unwrap();
        assert_eq!(meta.gid(), 4321, "fsGroup owns the secret");
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o440,
            "0400 plus group read"
        );
        assert_eq!(fs::metadata(&v["mem"]).unwrap().gid(), 4321);
        // Again: no second mount on top.
        prepare(&t.0, &p, &no_cm, &secrets).unwrap();
        assert_eq!(runtime::spec::mountinfo::under(&t.0).unwrap().len(), 2);
        cleanup(&t.0, "u-1").unwrap();
        assert!(runtime::spec::mountinfo::under(&t.0).unwrap().is_empty());
        assert!(!t.0.join("pods/u-1").exists());
        cleanup(&t.0, "u-1").unwrap();
    }

    #[test]
    fn downward_api_and_projected_volumes_are_read_only_tmpfs() {
        if !root_or_skip("downward_api_and_projected_volumes_are_read_only_tmpfs") {
            return;
        }
        let t = Tmp::new("projected");
        let p = pod(json!({
            "volumes": [
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                {"name": "all", "projected": {"sources": [
                    {"configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "app.conf"}]}},
                    {"downwardAPI": {"items": [{"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}}]}}]}},
            ],
            "containers": [{"name": "app", "image": "b", "volumeMounts": [
                {"name": "info", "mountPath": "/info"},
                {"name": "all", "mountPath": "/all"},
            ]}],
        }));
        let v = prepare(&t.0, &p, &cm, &no_secret).unwrap();
        assert_eq!(
            v["info"],
            t.0.join("pods/u-1/volumes").join(DOWNWARD_API).join("info")
        );
        assert_eq!(
            fs::read_to_string(v["info"].join("name")).unwrap(),
            p.metadata.name.clone().unwrap()
        );
        assert_eq!(
            fs::read_to_string(v["all"].join("app.conf")).unwrap(),
            "port=80\n"
        );
        assert_eq!(fs::read_to_string(v["all"].join("uid")).unwrap(), "u-1");
        for name in ["info", "all"] {
            assert_eq!(
                nix::sys::statfs::statfs(&v[name])
                    .unwrap()
                    .filesystem_type(),
                nix::sys::statfs::TMPFS_MAGIC,
                "{name}"
            );
        }
        let m = mounts_for(&p, 0, &v).unwrap();
        assert!(m.iter().all(|m| m.read_only), "{m:?}");
        cleanup(&t.0, "u-1").unwrap();
        assert!(runtime::spec::mountinfo::under(&t.0).unwrap().is_empty());
    }
}
