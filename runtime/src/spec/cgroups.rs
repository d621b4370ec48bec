//! Where runc puts a pod's containers in the cgroup tree (cgroupfs layout,
//! `/knode/pod<uid>/<container id>` in every hierarchy) and how the agent
//! removes the pod's directory once its containers are gone. runc removes
//! each container's own directory; the pod level is ours.

use std::io;
use std::path::{Path, PathBuf};

/// The parent of every pod's cgroup, under each hierarchy's root.
pub const ROOT: &str = "knode";

/// A container's `linux.cgroupsPath`: absolute, so runc places it at the
/// same spot in every hierarchy whatever cgroup the agent itself is in.
pub fn cgroups_path(pod_uid: &str, container_id: &str) -> String {
    format!("/{ROOT}/pod{pod_uid}/{container_id}")
}

/// Removes the pod's (empty) cgroup directories in every mounted v1
/// hierarchy and in the v2 one, children first. Missing directories are
/// fine; a directory that still holds processes is an error.
pub fn remove_pod_cgroups(pod_uid: &str) -> io::Result<()> {
    if !super::valid_uid(pod_uid) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pod uid {pod_uid:?} is not a valid path component"),
        ));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    for mnt in cgroup_mounts(&mountinfo) {
        remove_tree(&mnt.join(ROOT).join(format!("pod{pod_uid}")))?;
    }
    Ok(())
}

/// Mount points of cgroup (v1) and cgroup2 file systems, one per
/// hierarchy (co-mounted controllers such as `cpu,cpuacct` appear once).
pub(crate) fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for e in super::mountinfo::parse(mountinfo) {
        if (e.fstype == "cgroup" || e.fstype == "cgroup2") && !out.contains(&e.mount_point) {
            out.push(e.mount_point);
        }
    }
    out
}

/// rmdir of a cgroup directory and its sub-cgroups, deepest first. Only
/// directories are removed: a cgroup's files vanish with it.
fn remove_tree(dir: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("rmdir {}: {e}", dir.display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 23 0:40 / /mnt/with\\040space rw - cgroup cgroup rw,pids
";

    #[test]
    fn path_layout() {
        assert_eq!(cgroups_path("u-1", "u-1-pause"), "/knode/podu-1/u-1-pause");
    }

    #[test]
    fn finds_each_hierarchy_once() {
        let m = cgroup_mounts(HYBRID);
        let want: Vec<PathBuf> = [
            "/sys/fs/cgroup/cpu,cpuacct",
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/systemd",
            "/sys/fs/cgroup/unified",
            "/mnt/with space",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(m, want);
    }

    #[test]
    fn refuses_a_uid_that_walks_out() {
        assert!(remove_pod_cgroups("../x").is_err());
        assert!(remove_pod_cgroups("").is_err());
    }

    #[test]
    fn removes_nested_dirs_and_tolerates_missing() {
        let base = std::env::temp_dir().join(format!("knode-cg-{}", std::process::id()));
        let pod = base.join("podX");
        std::fs::create_dir_all(pod.join("c1")).unwrap();
        std::fs::create_dir_all(pod.join("c2/sub")).unwrap();
        remove_tree(&pod).unwrap();
        assert!(!pod.exists());
        remove_tree(&pod).unwrap();
        std::fs::remove_dir(&base).unwrap();
    }
}
