//! The image formats as JSON: descriptors, manifests and indexes in their
//! OCI and docker spellings, platform selection from an index, and layer
//! chain IDs. Pure: no I/O, so every rule here is tested with plain data.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::reference::validate_digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1";

/// What a registry is asked for, best first.
pub const MANIFEST_ACCEPT: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

/// Annotations that name an image inside an OCI layout.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// A content descriptor (OCI and docker share the shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: None,
        }
    }

    /// The annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The same descriptor as containerd's API spells it.
    pub fn to_containerd(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size as i64,
            annotations: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// An image manifest: one config and its layers, bottom first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An index (OCI) or manifest list (docker): one manifest per platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// What a piece of JSON content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Index,
    Manifest,
}

/// The kind of `media_type`; `body` decides when the type is missing or
/// generic (some registries answer `application/json`).
pub fn kind(media_type: &str, body: &[u8]) -> Result<Kind> {
    let mt = media_type.split(';').next().unwrap_or("").trim();
    match mt {
        OCI_INDEX | DOCKER_LIST => return Ok(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => return Ok(Kind::Manifest),
        _ if mt.starts_with(DOCKER_SCHEMA1) => {
            bail!("docker schema 1 manifests are not supported (push the image again with a current client)")
        }
        _ => {}
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(body).context("manifest is not JSON")?;
    match p.media_type.as_deref() {
        Some(m) if m != mt && !m.is_empty() => return kind(m, b"{}"),
        _ => {}
    }
    if p.manifests.is_some() {
        Ok(Kind::Index)
    } else if p.config.is_some() {
        Ok(Kind::Manifest)
    } else {
        bail!("unknown manifest type {media_type:?}")
    }
}

/// The media type to record for content of `kind` (containerd's image
/// record wants one even when the registry sent none).
pub fn media_type_of(kind: Kind, declared: &str, body: &[u8]) -> String {
    let mt = declared.split(';').next().unwrap_or("").trim();
    if matches!(mt, OCI_INDEX | DOCKER_LIST | OCI_MANIFEST | DOCKER_MANIFEST) {
        return mt.to_string();
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
    }
    if let Ok(Probe {
        media_type: Some(m),
    }) = serde_json::from_slice::<Probe>(body)
    {
        if !m.is_empty() {
            return m;
        }
    }
    match kind {
        Kind::Index => OCI_INDEX.into(),
        Kind::Manifest => OCI_MANIFEST.into(),
    }
}

/// Parses a manifest and checks every digest in it.
pub fn parse_manifest(body: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(body).context("parse the image manifest")?;
    validate_digest(&m.config.digest).context("manifest config")?;
    for (i, l) in m.layers.iter().enumerate() {
        validate_digest(&l.digest).with_context(|| format!("manifest layers[{i}]"))?;
    }
    Ok(m)
}

/// Parses an index and checks every digest in it.
pub fn parse_index(body: &[u8]) -> Result<Index> {
    let x: Index = serde_json::from_slice(body).context("parse the image index")?;
    for (i, d) in x.manifests.iter().enumerate() {
        validate_digest(&d.digest).with_context(|| format!("index manifests[{i}]"))?;
    }
    Ok(x)
}

/// `sha256:<hex>` of `data`.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The chain ID of every layer, bottom first (OCI image spec: the first is
/// its diffID, each next is `sha256(parent + " " + diffID)`). The last is
/// the snapshot a container's rootfs is prepared from.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(parent) => sha256(format!("{parent} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The top layer's chain ID (empty for an image without layers).
pub fn chain_id(diff_ids: &[String]) -> String {
    chain_ids(diff_ids).pop().unwrap_or_default()
}

/// The platform this node runs: `linux` and the GOARCH spelling of the
/// CPU, with arm64's implied variant.
pub fn host_platform() -> Platform {
    let (architecture, variant) = match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "arm" => ("arm", None),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "riscv64" => ("riscv64", None),
        "s390x" => ("s390x", None),
        other => (other, None),
    };
    Platform {
        architecture: architecture.into(),
        os: "linux".into(),
        variant: variant.map(str::to_string),
    }
}

/// The manifest of `index` that runs on `want`: an exact platform match
/// first (for arm64, `v8` and no variant are the same), then one with
/// another variant of the same architecture, then one without a platform
/// (single-image indexes often leave it out). In index order among equals.
pub fn select<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let norm_arch = |a: &str| match a {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        a => a.to_string(),
    };
    let norm_variant = |arch: &str, v: Option<&str>| match (arch, v) {
        ("arm64", Some("v8")) | ("amd64", Some("v1")) => None,
        (_, v) => v.map(str::to_string),
    };
    let want_arch = norm_arch(&want.architecture);
    let want_variant = norm_variant(&want_arch, want.variant.as_deref());
    let rank = |d: &Descriptor| -> Option<u8> {
        let Some(p) = &d.platform else { return Some(2) };
        let arch = norm_arch(&p.architecture);
        if p.os != want.os || arch != want_arch {
            return None;
        }
        if norm_variant(&arch, p.variant.as_deref()) == want_variant {
            Some(0)
        } else {
            Some(1)
        }
    };
    index
        .manifests
        .iter()
        .filter(|d| {
            matches!(
                d.media_type.as_str(),
                OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST | ""
            )
        })
        .filter_map(|d| rank(d).map(|r| (r, d)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, d)| d)
}

/// containerd's garbage-collection labels: what a blob refers to.
pub mod gc {
    /// On an index or manifest, for each child.
    pub fn content_ref(kind: &str, i: usize) -> String {
        format!("containerd.io/gc.ref.content.{kind}.{i}")
    }
    pub const CONFIG: &str = "containerd.io/gc.ref.content.config";
    /// On a layer: the digest of its uncompressed tar (its diffID).
    pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
    /// On a config: the snapshot its layers were unpacked into.
    pub fn snapshot_ref(snapshotter: &str) -> String {
        format!("containerd.io/gc.ref.snapshot.{snapshotter}")
    }
    /// On a lease: when containerd may drop it (so a crash mid-pull does
    /// not pin content for ever).
    pub const EXPIRE: &str = "containerd.io/gc.expire";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(d: &str, p: Option<(&str, &str, Option<&str>)>) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: d.into(),
            size: 1,
            platform: p.map(|(os, a, v)| Platform {
                architecture: a.into(),
                os: os.into(),
                variant: v.map(str::to_string),
            }),
            annotations: None,
        }
    }

    fn plat(a: &str, v: Option<&str>) -> Platform {
        Platform {
            architecture: a.into(),
            os: "linux".into(),
            variant: v.map(str::to_string),
        }
    }

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a =
            "sha256:a9286defaba7b3a519d585ba0e37d0b2cbee74ebfe590960b0b1d6a5e97d1e1d".to_string();
        let b =
            "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef".to_string();
        assert_eq!(chain_id(&[]), "");
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], sha256(format!("{a} {b}").as_bytes()));
        // Computed independently: printf '%s' "$a $b" | sha256sum
        assert_eq!(
            ids[1],
            "sha256:363d66ffb09c089031918cec3ca0f1a8b03b046ebe719f9152617ccb9886660b"
        );
    }

    #[test]
    fn sha256_of_nothing() {
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn selects_the_host_platform() {
        let idx = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![
                desc("arm", Some(("linux", "arm", Some("v7")))),
                desc("win", Some(("windows", "amd64", None))),
                desc("amd64v3", Some(("linux", "amd64", Some("v3")))),
                desc("amd64", Some(("linux", "amd64", None))),
                desc("arm64", Some(("linux", "arm64", Some("v8")))),
                desc("unknown", Some(("unknown", "unknown", None))),
            ],
        };
        assert_eq!(select(&idx, &plat("amd64", None)).unwrap().digest, "amd64");
        assert_eq!(select(&idx, &plat("arm64", None)).unwrap().digest, "arm64");
        assert_eq!(
            select(&idx, &plat("arm64", Some("v8"))).unwrap().digest,
            "arm64"
        );
        assert!(select(&idx, &plat("s390x", None)).is_none());
        // Only another variant: taken.
        let only_v3 = Index {
            manifests: vec![desc("v3", Some(("linux", "x86_64", Some("v3"))))],
            ..idx.clone()
        };
        assert_eq!(select(&only_v3, &plat("amd64", None)).unwrap().digest, "v3");
        // No platform at all (a one-image OCI layout): taken, but a match wins.
        let bare = Index {
            manifests: vec![
                desc("bare", None),
                desc("amd64", Some(("linux", "amd64", None))),
            ],
            ..idx.clone()
        };
        assert_eq!(select(&bare, &plat("amd64", None)).unwrap().digest, "amd64");
        assert_eq!(select(&bare, &plat("arm64", None)).unwrap().digest, "bare");
        assert_eq!(host_platform().os, "linux");
    }

    #[test]
    fn kinds_from_media_type_or_body() {
        assert_eq!(kind(OCI_INDEX, b"").unwrap(), Kind::Index);
        assert_eq!(
            kind(&format!("{DOCKER_MANIFEST}; charset=utf-8"), b"").unwrap(),
            Kind::Manifest
        );
        assert_eq!(
            kind("application/json", br#"{"manifests": []}"#).unwrap(),
            Kind::Index
        );
        assert_eq!(
            kind(
                "",
                format!(r#"{{"mediaType": "{DOCKER_LIST}"}}"#).as_bytes()
            )
            .unwrap(),
            Kind::Index
        );
        assert_eq!(
            kind("", br#"{"config": {}, "layers": []}"#).unwrap(),
            Kind::Manifest
        );
        let e = kind(
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            b"",
        )
        .unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        assert!(kind("text/html", b"<html>").is_err());
        assert_eq!(
            media_type_of(Kind::Manifest, "application/json", b"{}"),
            OCI_MANIFEST
        );
    }

    #[test]
    fn parses_docker_and_oci_manifests_and_refuses_bad_digests() {
        let good = "sha256:".to_string() + &"a".repeat(64);
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","size":7,"digest":"{good}"}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","size":9,"digest":"{good}"}}]}}"#
        );
        let m = parse_manifest(m.as_bytes()).unwrap();
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.size, 7);
        let bad =
            r#"{"schemaVersion":2,"config":{"size":7,"digest":"sha256:../../etc"},"layers":[]}"#;
        let e = parse_manifest(bad.as_bytes()).unwrap_err();
        assert!(format!("{e:#}").contains("manifest config"), "{e:#}");
        let neg = format!(r#"{{"schemaVersion":2,"manifests":[{{"size":-1,"digest":"{good}"}}]}}"#);
        assert!(parse_index(neg.as_bytes()).is_err());
    }
}
