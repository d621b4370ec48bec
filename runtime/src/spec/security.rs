//! Who a container's process runs as and what it may do: the user from
//! the security context or the image, the docker default capability set
//! with the pod's add/drop, and the /proc and /sys paths hidden or made
//! read-only (kubelet's defaults).

use std::collections::HashSet;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
use oci_spec::runtime::{
    Capabilities, Capability, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType,
};

use super::SpecError;

/// The capabilities a non-privileged container keeps (containerd's and
/// docker's default set).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability runc knows (`add: [ALL]`).
const ALL_CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Paths under /proc and /sys a container cannot read (kubelet's
/// defaultMaskedPaths).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths under /proc a container sees read-only (defaultReadonlyPaths).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Parses a Kubernetes capability name (`NET_ADMIN`, also `CAP_NET_ADMIN`).
fn capability(name: &str) -> Option<Capability> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).ok()
}

fn set(names: &[&str]) -> Capabilities {
    names.iter().filter_map(|n| capability(n)).collect()
}

/// The default set with the security context's `add` and `drop` applied
/// (`ALL` first, then the named ones, as containerd does).
pub fn capabilities(sc: Option<&SecurityContext>, field: &str) -> Result<Capabilities, SpecError> {
    let mut caps = set(&DEFAULT_CAPS);
    let Some(c) = sc.and_then(|s| s.capabilities.as_ref()) else {
        return Ok(caps);
    };
    let add = c.add.as_deref().unwrap_or_default();
    let drop = c.drop.as_deref().unwrap_or_default();
    let is_all = |n: &String| n.eq_ignore_ascii_case("ALL");
    if add.iter().any(is_all) {
        caps = set(&ALL_CAPS);
    }
    if drop.iter().any(is_all) {
        caps = HashSet::new();
    }
    let parse = |list: &[String], key: &str| -> Result<Vec<Capability>, SpecError> {
        list.iter()
            .enumerate()
            .filter(|(_, n)| !is_all(n))
            .map(|(i, n)| {
                capability(n).ok_or_else(|| {
                    SpecError::new(
                        format!("{field}.securityContext.capabilities.{key}[{i}]"),
                        format!("unknown capability {n:?}"),
                    )
                })
            })
            .collect()
    };
    for cap in parse(add, "add")? {
        caps.insert(cap);
    }
    for cap in parse(drop, "drop")? {
        caps.remove(&cap);
    }
    Ok(caps)
}

/// What a privileged container holds: every capability this process has
/// (containerd's WithAllCurrentCapabilities; a host whose bounding set
/// lacks one could not grant it anyway).
pub fn all_capabilities() -> Capabilities {
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        });
    held_capabilities(eff.unwrap_or(u64::MAX))
}

/// The capabilities whose bits are set in `mask` (`ALL_CAPS` is in the
/// kernel's order: index = capability number).
fn held_capabilities(mask: u64) -> Capabilities {
    let names: Vec<&str> = ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    set(&names)
}

/// The device cgroup rule of a privileged container: every device, rwm.
pub fn allow_all_devices() -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(true);
    d.set_typ(Some(LinuxDeviceType::A));
    d.set_access(Some("rwm".into()));
    d
}

/// The host's devices under /dev, as containerd's WithHostDevices lists
/// them for a privileged container (character and block devices; not
/// /dev/console, not the pts, shm, fd and mqueue trees, no links).
pub fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    devices_under(std::path::Path::new("/dev"), &mut out);
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

fn devices_under(dir: &std::path::Path, out: &mut Vec<LinuxDevice>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    const SKIP: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = meta.file_type();
        if ft.is_dir() {
            if !SKIP.iter().any(|s| e.file_name() == *s) {
                devices_under(&path, out);
            }
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if path == std::path::Path::new("/dev/console") {
            continue;
        }
        let rdev = meta.rdev();
        let mut d = LinuxDevice::default();
        d.set_path(path);
        d.set_typ(typ);
        d.set_major(i64::from(nix::sys::stat::major(rdev) as u32));
        d.set_minor(i64::from(nix::sys::stat::minor(rdev) as u32));
        d.set_file_mode(Some(meta.mode() & 0o777));
        d.set_uid(Some(meta.uid()));
        d.set_gid(Some(meta.gid()));
        out.push(d);
    }
}

/// The process's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// One part of an image's `User` (`1000`, `root`): a number, or `root`,
/// which is uid/gid 0 in every image. Other names would need the image's
/// /etc/passwd, which is not readable before the rootfs is mounted.
fn image_id(part: &str, what: &str, user: &str) -> Result<u32, String> {
    if part == "root" {
        return Ok(0);
    }
    part.parse::<u32>().map_err(|_| {
        format!("image {what} {user:?}: only numeric users and groups (or root) are supported; set securityContext.runAsUser/runAsGroup")
    })
}

fn id(v: i64, field: String) -> Result<u32, SpecError> {
    if !(0..=i64::from(i32::MAX)).contains(&v) {
        return Err(SpecError::new(
            field,
            format!("{v} must be between 0 and 2147483647"),
        ));
    }
    Ok(v as u32)
}

/// Resolves the user the way kubelet and containerd do together: the
/// container's runAsUser/runAsGroup, then the pod's, then the image's
/// `User` (`uid[:gid]`). The group defaults to 0 unless it comes from the
/// image alongside the uid. `runAsNonRoot` refuses uid 0. The pod's
/// supplementalGroups and fsGroup become additional groups. Without a
/// `container_name` (the pause container) runAsNonRoot is not checked, as
/// kubelet does not check it for the sandbox.
pub fn user(
    pod_sc: Option<&PodSecurityContext>,
    sc: Option<&SecurityContext>,
    image_user: Option<&str>,
    field: &str,
    pod_name: &str,
    container_name: Option<&str>,
) -> Result<User, SpecError> {
    let (c_uid, c_gid) = (
        sc.and_then(|s| s.run_as_user),
        sc.and_then(|s| s.run_as_group),
    );
    let (p_uid, p_gid) = (
        pod_sc.and_then(|s| s.run_as_user),
        pod_sc.and_then(|s| s.run_as_group),
    );
    let explicit_uid = match (c_uid, p_uid) {
        (Some(v), _) => Some(id(v, format!("{field}.securityContext.runAsUser"))?),
        (None, Some(v)) => Some(id(v, "spec.securityContext.runAsUser".into())?),
        _ => None,
    };
    let explicit_gid = match (c_gid, p_gid) {
        (Some(v), _) => Some(id(v, format!("{field}.securityContext.runAsGroup"))?),
        (None, Some(v)) => Some(id(v, "spec.securityContext.runAsGroup".into())?),
        _ => None,
    };
    let image_user = image_user.map(str::trim).filter(|u| !u.is_empty());
    let (uid, image_gid) = match (explicit_uid, image_user) {
        (Some(uid), _) => (uid, None),
        (None, None) => (0, None),
        (None, Some(u)) => {
            let (name, group) = match u.split_once(':') {
                Some((n, g)) => (n, Some(g)),
                None => (u, None),
            };
            let err = |m: String| SpecError::new(format!("{field}.image"), m);
            let uid = image_id(name, "user", u).map_err(err)?;
            let gid = match group {
                // The group only matters when runAsGroup does not set one.
                Some(g) if explicit_gid.is_none() => Some(image_id(g, "group", u).map_err(err)?),
                _ => None,
            };
            (uid, gid)
        }
    };
    let gid = explicit_gid.or(image_gid).unwrap_or(0);

    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if let (true, 0, Some(c)) = (non_root, uid, container_name) {
        let who = format!("(pod: {pod_name:?}, container: {c})");
        let message = if explicit_uid.is_some() {
            format!("container's runAsUser breaks non-root policy {who}")
        } else {
            format!("container has runAsNonRoot and image will run as root {who}")
        };
        return Err(SpecError::new(
            format!("{field}.securityContext.runAsNonRoot"),
            message,
        ));
    }

    let mut additional = Vec::new();
    if let Some(p) = pod_sc {
        for (i, g) in p.supplemental_groups.iter().flatten().enumerate() {
            additional.push(id(
                *g,
                format!("spec.securityContext.supplementalGroups[{i}]"),
            )?);
        }
        if let Some(g) = p.fs_group {
            additional.push(id(g, "spec.securityContext.fsGroup".into())?);
        }
    }
    additional.sort_unstable();
    additional.dedup();
    Ok(User {
        uid,
        gid,
        additional_gids: additional,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Capabilities as K8sCaps;

    fn caps_of(add: &[&str], drop: &[&str]) -> Result<Capabilities, SpecError> {
        let v = |l: &[&str]| Some(l.iter().map(|s| s.to_string()).collect());
        let sc = SecurityContext {
            capabilities: Some(K8sCaps {
                add: v(add),
                drop: v(drop),
            }),
            ..Default::default()
        };
        capabilities(Some(&sc), "spec.containers[0]")
    }

    #[test]
    fn every_listed_capability_parses() {
        assert_eq!(set(&DEFAULT_CAPS).len(), DEFAULT_CAPS.len());
        assert_eq!(set(&ALL_CAPS).len(), ALL_CAPS.len());
        assert_eq!(capability("cap_net_admin"), Some(Capability::NetAdmin));
    }

    #[test]
    fn add_and_drop() {
        let c = caps_of(&["NET_ADMIN"], &["KILL"]).unwrap();
        assert!(c.contains(&Capability::NetAdmin));
        assert!(!c.contains(&Capability::Kill));
        assert!(c.contains(&Capability::Chown));
        let c = caps_of(&["NET_BIND_SERVICE"], &["ALL"]).unwrap();
        assert_eq!(c, [Capability::NetBindService].into_iter().collect());
        let c = caps_of(&["ALL"], &["SYS_ADMIN"]).unwrap();
        assert_eq!(c.len(), ALL_CAPS.len() - 1);
        let e = caps_of(&["NET_ADMIN", "FLY"], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"spec.containers[0].securityContext.capabilities.add[1]: unknown capability "FLY""#
        );
        assert_eq!(capabilities(None, "x").unwrap(), set(&DEFAULT_CAPS));
        let held = held_capabilities(0x1fffeffffff);
        assert_eq!(held.len(), ALL_CAPS.len() - 1);
        assert!(!held.contains(&Capability::SysResource) && held.contains(&Capability::SysAdmin));
        assert_eq!(held_capabilities(1 << 21), set(&["SYS_ADMIN"]));
    }

    fn u(
        pod: Option<PodSecurityContext>,
        c: Option<SecurityContext>,
        image: Option<&str>,
    ) -> Result<User, SpecError> {
        user(
            pod.as_ref(),
            c.as_ref(),
            image,
            "spec.containers[0]",
            "p",
            Some("c"),
        )
    }

    #[test]
    fn user_precedence() {
        assert_eq!(
            u(None, None, None).unwrap(),
            User {
                uid: 0,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(u(None, None, Some("1000:2000")).unwrap().gid, 2000);
        assert_eq!(
            u(None, None, Some("1000")).unwrap(),
            User {
                uid: 1000,
                gid: 0,
                additional_gids: vec![]
            }
        );
        assert_eq!(u(None, None, Some("root")).unwrap().uid, 0);
        let pod = PodSecurityContext {
            run_as_user: Some(10),
            run_as_group: Some(11),
            supplemental_groups: Some(vec![7, 5, 7]),
            fs_group: Some(6),
            ..Default::default()
        };
        let c = SecurityContext {
            run_as_user: Some(20),
            ..Default::default()
        };
        let got = u(Some(pod.clone()), Some(c), Some("nobody")).unwrap();
        assert_eq!(
            got,
            User {
                uid: 20,
                gid: 11,
                additional_gids: vec![5, 6, 7]
            }
        );
        assert_eq!(u(Some(pod), None, None).unwrap().uid, 10);
        // runAsGroup overrides the image's group, and then a named group is fine.
        let g = SecurityContext {
            run_as_group: Some(3),
            ..Default::default()
        };
        assert_eq!(
            u(None, Some(g), Some("1000:staff")).unwrap(),
            User {
                uid: 1000,
                gid: 3,
                additional_gids: vec![]
            }
        );
    }

    #[test]
    fn user_errors() {
        let e = u(None, None, Some("nobody")).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.containers[0].image: image user \"nobody\": only numeric users"),
            "{e}"
        );
        let bad = SecurityContext {
            run_as_user: Some(-1),
            ..Default::default()
        };
        let e = u(None, Some(bad), None).unwrap_err().to_string();
        assert!(
            e.starts_with("spec.containers[0].securityContext.runAsUser: -1 must be"),
            "{e}"
        );
        let nr = SecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        };
        let e = u(None, Some(nr.clone()), None).unwrap_err().to_string();
        assert!(
            e.contains("container has runAsNonRoot and image will run as root"),
            "{e}"
        );
        assert_eq!(u(None, Some(nr.clone()), Some("65534")).unwrap().uid, 65534);
        let pod = PodSecurityContext {
            run_as_user: Some(0),
            ..Default::default()
        };
        let e = u(Some(pod), Some(nr), Some("65534"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("runAsUser breaks non-root policy"), "{e}");
    }
}
