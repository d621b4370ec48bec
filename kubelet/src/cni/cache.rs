//! The result cache, in libcni's on-disk format
//! (`<cache>/results/<network>-<container>-<ifname>`, kind `cniCacheV1`), so
//! DEL runs the config and result that ADD produced and other CNI tools can
//! read what we wrote. It runs no plugin.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

const KIND: &str = "cniCacheV1";

/// One cached attachment.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub container_id: String,
    pub ifname: String,
    pub network: String,
    pub netns: String,
    /// The network config the result came from (the list's bytes).
    pub config: Vec<u8>,
    /// CNI_ARGS as key/value pairs.
    pub cni_args: Vec<(String, String)>,
    pub result: Value,
}

impl Entry {
    /// CNI_ARGS as the plugins get it.
    pub fn cni_args_string(&self) -> String {
        join_args(&self.cni_args)
    }
}

/// `K=V;K=V`.
pub fn join_args(args: &[(String, String)]) -> String {
    let pairs: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join(";")
}

/// The results directory of a cache dir.
pub fn results_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("results")
}

/// The file an attachment's result lives in.
pub fn path(cache_dir: &Path, network: &str, container_id: &str, ifname: &str) -> PathBuf {
    results_dir(cache_dir).join(format!("{network}-{container_id}-{ifname}"))
}

/// Writes `e` (0600, directory 0700, as libcni does; written aside and
/// renamed so a crash never leaves half an entry).
pub fn write(cache_dir: &Path, e: &Entry) -> Result<PathBuf> {
    let dir = results_dir(cache_dir);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    let mut v = json!({
        "kind": KIND,
        "containerId": e.container_id,
        "config": base64_encode(&e.config),
        "ifName": e.ifname,
        "networkName": e.network,
        "result": e.result,
    });
    if !e.netns.is_empty() {
        v["netns"] = Value::String(e.netns.clone());
    }
    if !e.cni_args.is_empty() {
        v["cniArgs"] = e.cni_args.iter().map(|(k, val)| json!([k, val])).collect();
    }
    let file = path(cache_dir, &e.network, &e.container_id, &e.ifname);
    let tmp = dir.join(format!(
        ".{}.tmp",
        file.file_name().unwrap_or_default().to_string_lossy()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("write {}", tmp.display()))?;
    f.write_all(v.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &file).with_context(|| format!("write {}", file.display()))?;
    Ok(file)
}

/// Reads the entry at `file`; `None` if there is none.
pub fn read(file: &Path) -> Result<Option<Entry>> {
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
    };
    parse(&bytes)
        .map(Some)
        .with_context(|| format!("CNI cache entry {}", file.display()))
}

/// Removes an entry; one already gone is fine.
pub fn remove(file: &Path) -> Result<()> {
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("remove {}", file.display()))
        }
        _ => Ok(()),
    }
}

/// Every readable entry whose file name ends in `suffix`, by file name.
/// Files that are not `cniCacheV1` entries (older formats) are skipped, as
/// libcni does.
pub fn list(cache_dir: &Path, suffix: &str) -> Result<Vec<(PathBuf, Entry)>> {
    let dir = results_dir(cache_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut files = Vec::new();
    for e in rd {
        let path = e.with_context(|| format!("read {}", dir.display()))?.path();
        let name = path.file_name().unwrap_or_default().as_encoded_bytes();
        // Dot files are our half-written entries.
        if !name.starts_with(b".") && name.ends_with(suffix.as_bytes()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files
        .into_iter()
        .filter_map(|f| {
            let e = std::fs::read(&f).ok().and_then(|b| parse(&b).ok())?;
            Some((f, e))
        })
        .collect())
}

fn parse(bytes: &[u8]) -> Result<Entry> {
    let v: Value = serde_json::from_slice(bytes).context("invalid JSON")?;
    if v["kind"] != KIND {
        bail!("kind: {} is not {KIND:?}", v["kind"]);
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let config = base64_decode(v["config"].as_str().unwrap_or_default())
        .ok_or_else(|| anyhow!("config: not base64"))?;
    let mut cni_args = Vec::new();
    for pair in v["cniArgs"].as_array().into_iter().flatten() {
        match (pair[0].as_str(), pair[1].as_str()) {
            (Some(k), Some(val)) => cni_args.push((k.to_string(), val.to_string())),
            _ => bail!("cniArgs: {pair} is not a [key, value] pair"),
        }
    }
    let e = Entry {
        container_id: s("containerId"),
        ifname: s("ifName"),
        network: s("networkName"),
        netns: s("netns"),
        config,
        cni_args,
        result: v.get("result").cloned().unwrap_or(Value::Null),
    };
    if e.container_id.is_empty() || e.ifname.is_empty() || e.network.is_empty() {
        bail!("containerId, ifName and networkName are required");
    }
    Ok(e)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding: how Go's encoding/json writes a `[]byte`.
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`base64_encode`]; `None` on anything else.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (ci, chunk) in bytes.chunks(4).enumerate() {
        let last = ci == bytes.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            let d = B64.iter().position(|&x| x == c)? as u32;
            n = (n << 6) | d;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}
