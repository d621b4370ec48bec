//! CPU time of the node's moving parts, read from /proc: the agent, its
//! containerd, and every shim of that containerd (found by the `-address`
//! in their command lines), each with the CPU of the children it reaped
//! (runc and the commands `exec` probes run). Parsing is pure; reading
//! touches nothing but /proc.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::controlplane::procfs;

/// Whose CPU a reading sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    Agent,
    Containerd,
    Shims,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Agent, Part::Containerd, Part::Shims];

    /// Its name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Part::Agent => "agent",
            Part::Containerd => "containerd",
            Part::Shims => "shims",
        }
    }
}

/// The processes of one node, by pid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Procs {
    pub agent: u32,
    pub containerd: u32,
    pub shims: Vec<u32>,
}

/// What a process's command line makes it, for a node whose containerd
/// listens on `socket`: its containerd, one of its shims, or neither.
pub fn classify(argv: &[String], socket: &str) -> Option<Part> {
    let prog = Path::new(argv.first()?).file_name()?.to_str()?;
    let names_socket = |flag: &str| {
        argv.windows(2)
            .any(|w| w[0] == flag && (w[1] == socket || w[1] == format!("unix://{socket}")))
    };
    if prog.starts_with("containerd-shim") && names_socket("-address") {
        return Some(Part::Shims);
    }
    // The private containerd is started with `--config DIR/config.toml`,
    // beside its socket.
    let dir = Path::new(socket).parent()?.to_str()?;
    let config = format!("{dir}/config.toml");
    if prog == "containerd"
        && argv
            .windows(2)
            .any(|w| w[0] == "--config" && w[1] == config)
    {
        return Some(Part::Containerd);
    }
    None
}

/// Splits /proc/PID/cmdline (NUL-separated) into arguments.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

impl Procs {
    /// The agent `agent` and the containerd on `socket` with its shims, as
    /// they are now.
    pub fn find(agent: u32, socket: &Path) -> Result<Procs> {
        let socket_s = socket.display().to_string();
        let mut containerd = None;
        let mut shims = Vec::new();
        for entry in std::fs::read_dir("/proc").context("read /proc")? {
            let Some(pid) = entry?
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // A process may exit while we look: skip it.
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            match classify(&parse_cmdline(&raw), &socket_s) {
                Some(Part::Shims) => shims.push(pid),
                Some(Part::Containerd) => containerd = Some(pid),
                _ => {}
            }
        }
        let containerd =
            containerd.with_context(|| format!("no containerd process serving {socket_s}"))?;
        shims.sort_unstable();
        Ok(Procs {
            agent,
            containerd,
            shims,
        })
    }

    /// Own + reaped children's CPU of each part, now.
    pub fn read(&self) -> Result<BTreeMap<Part, Duration>> {
        let total = |pid: u32| -> Result<Duration> {
            let (own, children) = procfs::cpu(Some(pid))?;
            Ok(own + children)
        };
        let mut shims = Duration::ZERO;
        for pid in &self.shims {
            shims += total(*pid).with_context(|| format!("shim {pid} went away"))?;
        }
        Ok(BTreeMap::from([
            (
                Part::Agent,
                total(self.agent).context("the agent went away")?,
            ),
            (
                Part::Containerd,
                total(self.containerd).context("containerd went away")?,
            ),
            (Part::Shims, shims),
        ]))
    }
}

/// CPU used between two readings, in % of one core over `window`.
pub fn percent(
    before: &BTreeMap<Part, Duration>,
    after: &BTreeMap<Part, Duration>,
    window: Duration,
) -> Result<BTreeMap<Part, f64>> {
    let mut out = BTreeMap::new();
    for part in Part::ALL {
        let (Some(a), Some(b)) = (after.get(&part), before.get(&part)) else {
            bail!("no {} reading", part.name());
        };
        let used = a.checked_sub(*b).with_context(|| {
            format!("{}'s CPU time went backwards ({b:?} -> {a:?})", part.name())
        })?;
        out.insert(part, used.as_secs_f64() / window.as_secs_f64() * 100.0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn shims_and_containerd_are_told_by_their_socket() {
        let sock = "/tmp/knode-containerd-42/containerd.sock";
        let shim = argv(&format!(
            "/usr/bin/containerd-shim-runc-v2 -namespace k -id abc -address {sock}"
        ));
        assert_eq!(classify(&shim, sock), Some(Part::Shims));
        let other = argv("/usr/bin/containerd-shim-runc-v2 -namespace k -id a -address /x.sock");
        assert_eq!(classify(&other, sock), None);
        let cd = argv("/usr/bin/containerd --config /tmp/knode-containerd-42/config.toml");
        assert_eq!(classify(&cd, sock), Some(Part::Containerd));
        let cd_other = argv("/usr/bin/containerd --config /etc/containerd/config.toml");
        assert_eq!(classify(&cd_other, sock), None);
        assert_eq!(classify(&[], sock), None);
    }

    #[test]
    fn cmdline_splits_on_nul() {
        assert_eq!(parse_cmdline(b"a\0-b\0c d\0"), ["a", "-b", "c d"]);
        assert!(parse_cmdline(b"").is_empty());
    }

    #[test]
    fn percent_of_a_core_per_part() -> Result<()> {
        let ms = Duration::from_millis;
        let before = BTreeMap::from([
            (Part::Agent, ms(100)),
            (Part::Containerd, ms(0)),
            (Part::Shims, ms(50)),
        ]);
        let after = BTreeMap::from([
            (Part::Agent, ms(300)),
            (Part::Containerd, ms(1000)),
            (Part::Shims, ms(50)),
        ]);
        let p = percent(&before, &after, Duration::from_secs(10))?;
        assert!((p[&Part::Agent] - 2.0).abs() < 1e-9);
        assert!((p[&Part::Containerd] - 10.0).abs() < 1e-9);
        assert_eq!(p[&Part::Shims], 0.0);
        assert!(percent(&after, &before, Duration::from_secs(1)).is_err());
        Ok(())
    }
}
