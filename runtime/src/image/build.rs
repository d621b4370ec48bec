//! Images made in memory from a few files: an uncompressed layer tar
//! (root-owned, time zero, so the same files give the same digests), an
//! OCI config and manifest. The pause image is built here. Pure: the
//! caller stores the result.

use anyhow::{Context, Result};
use serde_json::json;

use super::media::{self, Descriptor, Manifest};

/// One thing in a layer. Paths are relative to the root (`bin/sh`).
/// (The pause image needs only a file; directories and links are used by
/// the tests' images.)
#[cfg_attr(not(test), allow(dead_code))]
pub enum Entry<'a> {
    Dir {
        path: &'a str,
        mode: u32,
    },
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    Symlink {
        path: &'a str,
        target: &'a str,
    },
}

/// An uncompressed layer tar of `entries`, in the given order.
pub fn layer(entries: &[Entry<'_>]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match e {
            Entry::Dir { path, mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", path.trim_end_matches('/')), &[][..])
                    .with_context(|| format!("layer: add directory {path}"))?;
            }
            Entry::File { path, mode, data } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data)
                    .with_context(|| format!("layer: add file {path}"))?;
            }
            Entry::Symlink { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)
                    .with_context(|| format!("layer: add symlink {path}"))?;
            }
        }
    }
    b.into_inner().context("layer: finish the tar")
}

/// An image built in memory: blobs and the descriptors that name them.
pub struct Built {
    /// Uncompressed layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
    /// Their digests, which are also their diffIDs (uncompressed).
    pub diff_ids: Vec<String>,
    pub config: Vec<u8>,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_desc: Descriptor,
}

/// An OCI image of `layers` for this node's platform whose process is
/// `entrypoint`.
pub fn image(layers: Vec<Vec<u8>>, entrypoint: &[&str]) -> Result<Built> {
    let diff_ids: Vec<String> = layers.iter().map(|l| media::sha256(l)).collect();
    let platform = media::host_platform();
    let config = serde_json::to_vec(&json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {
            "Entrypoint": entrypoint,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    }))
    .context("encode the image config")?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        config: Descriptor::new(
            media::OCI_CONFIG,
            media::sha256(&config),
            config.len() as u64,
        ),
        layers: layers
            .iter()
            .zip(&diff_ids)
            .map(|(l, d)| Descriptor::new(media::OCI_LAYER, d.clone(), l.len() as u64))
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest).context("encode the manifest")?;
    let manifest_desc = Descriptor::new(
        media::OCI_MANIFEST,
        media::sha256(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    Ok(Built {
        layers,
        diff_ids,
        config,
        manifest,
        manifest_bytes,
        manifest_desc,
    })
}

/// The pause image: `/pause` (mode 0755, root) and nothing else; its
/// entrypoint is `/pause`.
pub fn pause(binary: &[u8]) -> Result<Built> {
    let l = layer(&[Entry::File {
        path: "pause",
        mode: 0o755,
        data: binary,
    }])?;
    image(vec![l], &["/pause"])
}

/// An OCI layout tar (`oci-layout`, `index.json`, `blobs/sha256/...`)
/// holding `b` under `name`.
#[cfg(test)]
pub fn oci_layout(name: &str, b: &Built) -> Result<Vec<u8>> {
    let mut index_desc = b.manifest_desc.clone();
    index_desc.annotations = Some(
        [(media::ANNOTATION_REF_NAME.to_string(), name.to_string())]
            .into_iter()
            .collect(),
    );
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [index_desc],
    }))?;
    let mut files: Vec<(String, &[u8])> = vec![
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json".into(), &index),
    ];
    let blob = |d: &str| format!("blobs/sha256/{}", &d["sha256:".len()..]);
    files.push((blob(&b.manifest_desc.digest), &b.manifest_bytes));
    files.push((blob(&b.manifest.config.digest), &b.config));
    for (l, d) in b.layers.iter().zip(&b.diff_ids) {
        files.push((blob(d), l));
    }
    let entries: Vec<Entry<'_>> = files
        .iter()
        .map(|(p, data)| Entry::File {
            path: p,
            mode: 0o644,
            data,
        })
        .collect();
    layer(&entries)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn layers_are_reproducible_and_root_owned() {
        let entries = [
            Entry::Dir {
                path: "bin",
                mode: 0o755,
            },
            Entry::File {
                path: "bin/busybox",
                mode: 0o755,
                data: b"\x7fELF",
            },
            Entry::Symlink {
                path: "bin/sh",
                target: "busybox",
            },
        ];
        let a = layer(&entries).unwrap();
        assert_eq!(a, layer(&entries).unwrap());
        let mut ar = tar::Archive::new(&a[..]);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header().clone();
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            let path = e.path().unwrap().display().to_string();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            seen.push((path, h.mode().unwrap(), data, link));
        }
        assert_eq!(seen[0].0, "bin/");
        assert_eq!(
            (seen[1].0.as_str(), seen[1].1, seen[1].2.as_slice()),
            ("bin/busybox", 0o755, &b"\x7fELF"[..])
        );
        assert_eq!(seen[2].3.as_deref(), Some("busybox"));
    }

    #[test]
    fn the_pause_image_runs_pause() {
        let b = pause(b"binary").unwrap();
        assert_eq!(b.layers.len(), 1);
        assert_eq!(b.diff_ids[0], media::sha256(&b.layers[0]));
        let cfg: oci_spec::image::ImageConfiguration = serde_json::from_slice(&b.config).unwrap();
        assert_eq!(
            cfg.config().as_ref().unwrap().entrypoint().as_deref(),
            Some(&["/pause".to_string()][..])
        );
        assert_eq!(cfg.rootfs().diff_ids(), &b.diff_ids);
        assert_eq!(cfg.os().to_string(), "linux");
        let m = media::parse_manifest(&b.manifest_bytes).unwrap();
        assert_eq!(m.config.digest, media::sha256(&b.config));
        assert_eq!(m.layers[0].digest, b.diff_ids[0]);
        assert_eq!(b.manifest_desc.digest, media::sha256(&b.manifest_bytes));
        // Same binary, same image.
        assert_eq!(pause(b"binary").unwrap().manifest_desc, b.manifest_desc);
    }
}
