//! The mount table of this process (/proc/self/mountinfo), for the few
//! places that must know what is mounted: cgroup hierarchies, and the
//! tmpfs mounts under a pod's directories before they are removed.

use std::io;
use std::path::{Path, PathBuf};

/// One mount: where, and what file system type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses mountinfo text (`id parent maj:min root mountpoint opts
/// [optional...] - fstype source superopts`), skipping malformed lines.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            Some(Entry {
                mount_point: PathBuf::from(unescape(mp)),
                fstype: fstype.to_string(),
            })
        })
        .collect()
}

/// This process's mounts.
pub fn read() -> io::Result<Vec<Entry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// Mount points at or below `root`, deepest first (the order to unmount).
pub fn under(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = read()?
        .into_iter()
        .map(|e| e.mount_point)
        .filter(|m| m.starts_with(root))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    out.dedup();
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.len() >= i + 4
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
            && b[i + 1] <= b'3'
        {
            let d = |k: usize| u32::from(b[i + k] - b'0');
            out.push((d(1) * 64 + d(2) * 8 + d(3)) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let t = "50 23 0:40 / /mnt/with\\040space rw - tmpfs tmpfs rw\n\
                 51 23 0:41 / /x rw shared:1 master:2 - cgroup cgroup rw,pids\n\
                 garbage\n\
                 52 23 0:42 / /tail\\\\ rw - tmpfs t rw\n";
        let e = parse(t);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(e[0].fstype, "tmpfs");
        assert_eq!(e[1].fstype, "cgroup");
        assert_eq!(e[2].mount_point, PathBuf::from("/tail\\\\"));
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("end\\04"), "end\\04");
    }
}
