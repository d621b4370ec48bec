//! Test images made from the machine's busybox-static, without the agent:
//! one uncompressed layer (`/bin/busybox` and a symlink per applet,
//! `/etc/passwd`, `/etc/group`, `/tmp`, `/root`; optionally one of our
//! binaries with the libraries it links), an OCI config, written as an OCI
//! layout tar or as a docker archive (`docker save`). Same input, same
//! bytes: every entry is root-owned with time zero.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

/// Debian's statically linked busybox (package `busybox-static`).
pub const BUSYBOX_BIN: &str = "/bin/busybox";
/// The name the test busybox image is imported under.
pub const BUSYBOX: &str = "knode.test/busybox:1";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An image in memory.
pub struct TestImage {
    pub name: String,
    pub layer: Vec<u8>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

impl TestImage {
    /// busybox with every applet linked in `/bin`; runs `sh` by default.
    pub fn busybox(name: &str) -> Result<TestImage> {
        Self::from_layer(name, busybox_layer(&[])?, &["sh"])
    }

    /// [`TestImage::busybox`] plus a binary of this machine at
    /// `/bin/<its file name>`, with the shared libraries and the dynamic
    /// loader `ldd` lists for it at the paths it lists them (busybox brings
    /// no libc); runs `sh` by default.
    pub fn busybox_with_binary(name: &str, bin: &Path) -> Result<TestImage> {
        let file_name = bin
            .file_name()
            .and_then(|f| f.to_str())
            .with_context(|| format!("no file name in {}", bin.display()))?;
        let mut extra = vec![(format!("bin/{file_name}"), read(bin)?)];
        for lib in shared_libraries(bin)? {
            let rel = lib.strip_prefix("/").unwrap_or(&lib);
            extra.push((rel.display().to_string(), read(&lib)?));
        }
        Self::from_layer(name, busybox_layer(&extra)?, &["sh"])
    }

    /// An image of one uncompressed layer running `cmd`, for this machine.
    pub fn from_layer(name: &str, layer: Vec<u8>, cmd: &[&str]) -> Result<TestImage> {
        Self::for_arch(name, layer, cmd, goarch())
    }

    /// An image of one uncompressed layer running `cmd`, for linux/`arch`.
    pub fn for_arch(name: &str, layer: Vec<u8>, cmd: &[&str], arch: &str) -> Result<TestImage> {
        let config = serde_json::to_vec(&json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Cmd": cmd,
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            },
            "rootfs": { "type": "layers", "diff_ids": [sha256(&layer)] },
        }))?;
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": OCI_CONFIG, "digest": sha256(&config), "size": config.len() },
            "layers": [{ "mediaType": OCI_LAYER, "digest": sha256(&layer), "size": layer.len() }],
        }))?;
        Ok(TestImage {
            name: name.to_string(),
            layer,
            config,
            manifest,
        })
    }

    /// The layer's diffID, which is also the image's top chain ID (one layer).
    pub fn chain_id(&self) -> String {
        sha256(&self.layer)
    }

    /// The manifest's digest.
    pub fn manifest_digest(&self) -> String {
        sha256(&self.manifest)
    }

    /// Writes an OCI layout tar: `oci-layout`, `index.json` (the name in
    /// `org.opencontainers.image.ref.name`), `blobs/sha256/...`.
    pub fn write_oci(&self, path: &Path) -> Result<()> {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST,
                "digest": self.manifest_digest(),
                "size": self.manifest.len(),
                "annotations": { "org.opencontainers.image.ref.name": self.name },
            }],
        }))?;
        let mut t = tar::Builder::new(Vec::new());
        file(
            &mut t,
            "oci-layout",
            0o644,
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        file(&mut t, "index.json", 0o644, &index)?;
        dir(&mut t, "blobs", 0o755)?;
        dir(&mut t, "blobs/sha256", 0o755)?;
        for blob in [&self.manifest, &self.config, &self.layer] {
            file(&mut t, &blob_path(blob), 0o644, blob)?;
        }
        std::fs::write(path, t.into_inner()?).with_context(|| format!("write {}", path.display()))
    }

    /// Writes a docker archive as `docker save` does: `manifest.json`
    /// (Config, RepoTags, Layers), `<id>.json`, `<id>/layer.tar`.
    pub fn write_docker(&self, path: &Path) -> Result<()> {
        let config_id = &sha256(&self.config)[7..];
        let layer_id = &sha256(&self.layer)[7..];
        let manifest = serde_json::to_vec(&json!([{
            "Config": format!("{config_id}.json"),
            "RepoTags": [self.name],
            "Layers": [format!("{layer_id}/layer.tar")],
        }]))?;
        let mut t = tar::Builder::new(Vec::new());
        dir(&mut t, layer_id, 0o755)?;
        file(&mut t, &format!("{layer_id}/layer.tar"), 0o644, &self.layer)?;
        file(&mut t, &format!("{config_id}.json"), 0o644, &self.config)?;
        file(&mut t, "manifest.json", 0o644, &manifest)?;
        std::fs::write(path, t.into_inner()?).with_context(|| format!("write {}", path.display()))
    }
}

/// Writes an OCI layout tar whose `index.json` names `name`: an image
/// index (multi-platform) of `images`, each with its `linux/<arch>`.
pub fn write_oci_index(path: &Path, name: &str, images: &[(&TestImage, &str)]) -> Result<String> {
    let manifests: Vec<_> = images
        .iter()
        .map(|(i, arch)| {
            json!({
                "mediaType": OCI_MANIFEST,
                "digest": i.manifest_digest(),
                "size": i.manifest.len(),
                "platform": { "os": "linux", "architecture": arch },
            })
        })
        .collect();
    let index_blob = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_INDEX,
            "digest": sha256(&index_blob),
            "size": index_blob.len(),
            "annotations": { "org.opencontainers.image.ref.name": name },
        }],
    }))?;
    let mut t = tar::Builder::new(Vec::new());
    file(
        &mut t,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    file(&mut t, "index.json", 0o644, &index)?;
    file(&mut t, &blob_path(&index_blob), 0o644, &index_blob)?;
    let mut seen = std::collections::BTreeSet::new();
    for (i, _) in images {
        for blob in [&i.manifest, &i.config, &i.layer] {
            if seen.insert(sha256(blob)) {
                file(&mut t, &blob_path(blob), 0o644, blob)?;
            }
        }
    }
    std::fs::write(path, t.into_inner()?).with_context(|| format!("write {}", path.display()))?;
    Ok(sha256(&index_blob))
}

/// An architecture that is not this machine's (for the other half of a
/// multi-platform index).
pub fn foreign_arch() -> &'static str {
    if goarch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// This machine's architecture as images spell it.
pub fn goarch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Writes the busybox image ([`BUSYBOX`]) as an OCI layout tar in `dir`.
pub fn busybox_oci_tar(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("busybox-oci.tar");
    TestImage::busybox(BUSYBOX)?.write_oci(&path)?;
    Ok(path)
}

/// True when the test may run. Without busybox-static it skips with a
/// reason, except under `CI=true`, where a skip is a failure.
pub fn require_busybox(test: &str) -> bool {
    if Path::new(BUSYBOX_BIN).is_file() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {BUSYBOX_BIN} (Debian busybox-static), and CI=true forbids skipping");
    }
    eprintln!("SKIP {test}: needs {BUSYBOX_BIN} (apt-get install busybox-static)");
    false
}

/// The busybox layer, with `extra` files (path in the image, contents;
/// mode 0755) and the directories above them.
fn busybox_layer(extra: &[(String, Vec<u8>)]) -> Result<Vec<u8>> {
    let bin = std::fs::read(BUSYBOX_BIN)
        .with_context(|| format!("read {BUSYBOX_BIN} (apt-get install busybox-static)"))?;
    let out = Command::new(BUSYBOX_BIN)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    if !out.status.success() {
        bail!("busybox --list failed");
    }
    let applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_string)
        .collect();
    let mut t = tar::Builder::new(Vec::new());
    dir(&mut t, "bin", 0o755)?;
    dir(&mut t, "etc", 0o755)?;
    dir(&mut t, "root", 0o700)?;
    dir(&mut t, "tmp", 0o1777)?;
    file(&mut t, "bin/busybox", 0o755, &bin)?;
    for a in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        t.append_link(&mut h, format!("bin/{a}"), "busybox")?;
    }
    file(
        &mut t,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    file(&mut t, "etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    let mut dirs: BTreeSet<PathBuf> = ["bin", "etc", "root", "tmp"]
        .iter()
        .map(PathBuf::from)
        .collect();
    for (path, data) in extra {
        let parents: Vec<&Path> = Path::new(path)
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        for p in parents.into_iter().rev() {
            if dirs.insert(p.to_path_buf()) {
                dir(&mut t, &p.display().to_string(), 0o755)?;
            }
        }
        file(&mut t, path, 0o755, data)?;
    }
    Ok(t.into_inner()?)
}

/// The shared libraries and the dynamic loader `ldd` lists for `bin`, as
/// paths on this machine; none for a static binary.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .with_context(|| format!("ldd {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if text.contains("not a dynamic executable") || err.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!("ldd {}: {}", bin.display(), err.trim());
    }
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        // `libc.so.6 => /lib/.../libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`,
        // or the vDSO, which has no file.
        let target = line.split_once("=>").map_or(line, |(_, t)| t.trim());
        if target.starts_with("not found") {
            bail!("ldd {}: {line}", bin.display());
        }
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn blob_path(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha256(data)[7..])
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn dir(t: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    t.append_data(&mut h, format!("{path}/"), &[][..])?;
    Ok(())
}

fn file(t: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]) -> Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    t.append_data(&mut h, path, data)?;
    Ok(())
}
