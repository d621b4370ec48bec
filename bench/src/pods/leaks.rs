//! Everything a pod can leave on a node, counted: containerd containers and
//! active snapshots in the agent's namespace, netns pins, veths in the
//! node's host namespace, host-local IP reservations, CNI cache entries,
//! the pod's run/data dirs and its log dir. It reads the node the
//! benchmark made (its temp dir, its containerd, its host namespace) and
//! nothing else.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use knode_tests::node::Node;

/// One count per kind of leftover, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaks {
    pub counts: Vec<(&'static str, usize)>,
}

impl Leaks {
    /// Counts what the node holds now.
    pub fn read(node: &Node) -> Result<Leaks> {
        let veths = node
            .host_sh(&["ip", "-o", "link", "show", "type", "veth"])
            .context("list veths in the host namespace")?;
        let mut counts = vec![
            ("containerd containers", node.containers()?.len()),
            ("active snapshots", node.active_snapshots()?.len()),
            ("host veths", nonblank_lines(&veths)),
        ];
        counts.extend(Leaks::read_files(node)?.counts);
        Ok(Leaks { counts })
    }

    /// Only the counts read from the node's dirs (no process is run):
    /// cheap enough to poll while the agent tears pods down.
    pub fn read_files(node: &Node) -> Result<Leaks> {
        let counts = vec![
            ("netns pins", entries(&node.path("netns"))?),
            (
                "IP reservations",
                files_where(&node.path("ipam"), &|n| n.parse::<IpAddr>().is_ok())?,
            ),
            (
                "CNI cache entries",
                files_where(&node.path("cni-cache"), &|_| true)?,
            ),
            ("pod run dirs", entries(&node.agent.run_dir().join("pods"))?),
            (
                "pod data dirs",
                entries(&node.agent.data_dir().join("pods"))?,
            ),
            ("pod log dirs", entries(&node.path("logs"))?),
        ];
        Ok(Leaks { counts })
    }

    /// The sum of every count.
    pub fn total(&self) -> usize {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    /// The non-zero counts, as `name N, name N`.
    pub fn describe_nonzero(&self) -> String {
        let v: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }
}

/// Entries of `dir` (0 when it does not exist).
fn entries(dir: &Path) -> Result<usize> {
    match std::fs::read_dir(dir) {
        Ok(it) => Ok(it.count()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e).with_context(|| format!("read {}", dir.display())),
    }
}

/// Files anywhere below `dir` whose name passes `keep` (0 when `dir` does
/// not exist).
fn files_where(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<usize> {
    let it = match std::fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut n = 0;
    for e in it {
        let e = e.with_context(|| format!("read {}", dir.display()))?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            n += files_where(&e.path(), keep)?;
        } else if keep(&e.file_name().to_string_lossy()) {
            n += 1;
        }
    }
    Ok(n)
}

fn nonblank_lines(text: &str) -> usize {
    text.lines().filter(|l| !l.trim().is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use knode_tests::TempDir;

    #[test]
    fn counts_files_below_and_entries() -> Result<()> {
        let d = TempDir::new("bench-leaks")?;
        let net = d.path().join("ipam/knode");
        std::fs::create_dir_all(&net)?;
        for f in ["10.244.0.2", "10.244.0.3", "lock", "last_reserved_ip.0"] {
            std::fs::write(net.join(f), "x")?;
        }
        let ips = files_where(&d.path().join("ipam"), &|n| n.parse::<IpAddr>().is_ok())?;
        assert_eq!(ips, 2);
        assert_eq!(files_where(&d.path().join("ipam"), &|_| true)?, 4);
        assert_eq!(entries(&d.path().join("ipam"))?, 1);
        assert_eq!(entries(&d.path().join("missing"))?, 0);
        assert_eq!(files_where(&d.path().join("missing"), &|_| true)?, 0);
        Ok(())
    }

    #[test]
    fn totals_and_description() {
        let l = Leaks {
            counts: vec![("a", 0), ("b", 2), ("c", 1)],
        };
        assert_eq!(l.total(), 3);
        assert_eq!(l.describe_nonzero(), "b 2, c 1");
        let none = Leaks {
            counts: vec![("a", 0)],
        };
        assert_eq!(none.describe_nonzero(), "none");
        assert_eq!(nonblank_lines("x\n\n  \ny\n"), 2);
    }
}
