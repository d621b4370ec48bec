//! The iptables boundary: restore (one exec per sync), save, listing one
//! chain, and the survey a full sync reads (chain names over netlink on
//! nft, [`nft`]), behind [`Iptables`] with an exec implementation pinned to
//! one backend (nft or legacy, chosen to match the host) and a recording
//! fake. Payloads come from the caller; nothing here builds rules.

mod fake;
mod legacy;
pub mod nft;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

pub use fake::{Call, FakeIptables};

use crate::rules::names::KUBE_PROXY_CANARY;
use crate::rules::Table;
use crate::{Error, Result};

/// What the proxy asks of iptables, in the calling thread's network namespace.
pub trait Iptables: Send + Sync {
    /// Applies `payload` (both tables) with one `iptables-restore --noflush`.
    fn restore(&self, payload: &str) -> Result<()>;
    /// `iptables-save -t TABLE`.
    fn save(&self, table: Table) -> Result<String>;
    /// `iptables -t TABLE -S CHAIN`, or `None` when the chain does not
    /// exist; any other failure is an error.
    fn list_chain(&self, table: Table, chain: &str) -> Result<Option<String>>;

    /// What a full sync reads of `table`: every chain's name and the rules
    /// of the chains named in `listed` that exist. One `iptables-save`
    /// unless an implementation knows a cheaper way.
    fn survey(&self, table: Table, listed: &[&str]) -> Result<Survey> {
        Ok(Survey::from_save(&self.save(table)?, listed))
    }

    /// A value that changes whenever `table` does, when the backend has a
    /// cheap one; the canary check skips a table whose stamp is the one it
    /// last found intact.
    fn table_stamp(&self, _table: Table) -> Option<u64> {
        None
    }
}

/// Chain names of one table and the rules of some of its chains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Survey {
    pub chains: Vec<String>,
    /// Chain -> its `-A CHAIN ...` lines, for the chains asked for.
    pub rules: HashMap<String, Vec<String>>,
}

impl Survey {
    /// From what `iptables-save -t TABLE` printed.
    pub fn from_save(saved: &str, listed: &[&str]) -> Survey {
        let chains: Vec<String> = saved
            .lines()
            .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
            .map(str::to_string)
            .collect();
        let mut rules: HashMap<String, Vec<String>> = listed
            .iter()
            .filter(|c| chains.iter().any(|n| n == *c))
            .map(|c| (c.to_string(), Vec::new()))
            .collect();
        for line in saved.lines() {
            let Some(chain) = line.strip_prefix("-A ").and_then(|r| r.split(' ').next()) else {
                continue;
            };
            if let Some(r) = rules.get_mut(chain) {
                r.push(line.to_string());
            }
        }
        Survey { chains, rules }
    }
}

/// Which kernel API the iptables tools drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// nf_tables (`iptables-nft`).
    Nft,
    /// The legacy xtables API (`iptables-legacy`).
    Legacy,
}

impl Backend {
    fn tool(self, suffix: &str) -> String {
        match self {
            Backend::Nft => format!("iptables-nft{suffix}"),
            Backend::Legacy => format!("iptables-legacy{suffix}"),
        }
    }

    /// The backend to program, decided the way kube-proxy's image decides
    /// (kubernetes-sigs/iptables-wrappers): rules must go where the host's
    /// other rules are, or they are never consulted in the right order.
    /// The kubelet's hint chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY in
    /// mangle) decide first, nft before legacy; otherwise the backend with
    /// more rules; on a tie (a fresh host or namespace) `default`, the
    /// backend the host's `iptables` command uses.
    pub fn choose(nft_save: &str, legacy_save: &str, default: Backend) -> Backend {
        let hinted = |saved: &str| {
            saved.lines().any(|l| {
                l.starts_with(":KUBE-IPTABLES-HINT ") || l.starts_with(":KUBE-KUBELET-CANARY ")
            })
        };
        if hinted(nft_save) {
            return Backend::Nft;
        }
        if hinted(legacy_save) {
            return Backend::Legacy;
        }
        let rules = |saved: &str| saved.lines().filter(|l| l.starts_with('-')).count();
        match rules(legacy_save).cmp(&rules(nft_save)) {
            std::cmp::Ordering::Greater => Backend::Legacy,
            std::cmp::Ordering::Less => Backend::Nft,
            std::cmp::Ordering::Equal => default,
        }
    }

    /// The backend whose chain names carry a marker: the kubelet's hint
    /// chains first, then the canary of a proxy that ran before; nft
    /// before legacy. `None` when neither has one.
    pub fn marked(nft: &[&str], legacy: &[&str]) -> Option<Backend> {
        let hints = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];
        let canary = [KUBE_PROXY_CANARY];
        for marks in [&hints[..], &canary[..]] {
            for (names, backend) in [(nft, Backend::Nft), (legacy, Backend::Legacy)] {
                if names.iter().any(|n| marks.contains(n)) {
                    return Some(backend);
                }
            }
        }
        None
    }

    /// The backend to program in the calling thread's namespace: the
    /// [`Backend::marked`] one, else [`Backend::choose`] over what both
    /// backends' `iptables-save` print. The markers are looked for in chain
    /// names alone (one netlink dump on nft): `iptables-nft-save` takes 33 s
    /// on a node with 10k Services, and such a node has a marker. A backend
    /// whose tools are missing counts as empty.
    pub fn detect() -> Backend {
        let save = |b: Backend| {
            output(Command::new(b.tool("-save")))
                .map(|o| o.stdout)
                .unwrap_or_default()
        };
        let nft_chains = nft::chains().unwrap_or_default();
        let legacy_save = save(Backend::Legacy);
        let legacy_names: Vec<&str> = legacy_save
            .lines()
            .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
            .collect();
        let nft_names: Vec<&str> = nft_chains.values().flatten().map(String::as_str).collect();
        if let Some(b) = Backend::marked(&nft_names, &legacy_names) {
            return b;
        }
        let mut version = Command::new("iptables");
        version.arg("--version");
        let default = output(version)
            .map(|o| {
                if o.stdout.contains("legacy") {
                    Backend::Legacy
                } else {
                    Backend::Nft
                }
            })
            .unwrap_or(Backend::Nft);
        Backend::choose(&save(Backend::Nft), &legacy_save, default)
    }
}

/// iptables through its own tools, pinned to one backend.
///
/// (hostnet::iptables runs whichever `iptables-restore` is on PATH; the
/// proxy must follow the host's backend instead, so it names the tool.)
#[derive(Debug, Clone)]
pub struct ExecIptables {
    backend: Backend,
}

impl ExecIptables {
    /// Tools of `backend`.
    pub fn new(backend: Backend) -> ExecIptables {
        ExecIptables { backend }
    }

    /// The backend it drives.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

impl Iptables for ExecIptables {
    fn restore(&self, payload: &str) -> Result<()> {
        let mut c = Command::new(self.backend.tool("-restore"));
        c.args(["-w", "5", "--noflush"]);
        let out = run(c, Some(payload))?;
        if out.ok {
            Ok(())
        } else {
            Err(out.failure(&format!("{} --noflush", self.backend.tool("-restore"))))
        }
    }

    fn save(&self, table: Table) -> Result<String> {
        let mut c = Command::new(self.backend.tool("-save"));
        c.args(["-t", table.name()]);
        let out = run(c, None)?;
        if out.ok {
            Ok(out.stdout)
        } else {
            Err(out.failure(&format!(
                "{} -t {}",
                self.backend.tool("-save"),
                table.name()
            )))
        }
    }

    fn list_chain(&self, table: Table, chain: &str) -> Result<Option<String>> {
        let mut c = Command::new(self.backend.tool(""));
        c.args(["-w", "5", "-t", table.name(), "-S", chain]);
        let out = run(c, None)?;
        if out.ok {
            Ok(Some(out.stdout))
        } else if hostnet::iptables::chain_absent(&out.stderr) {
            Ok(None)
        } else {
            Err(out.failure(&format!(
                "{} -t {} -S {chain}",
                self.backend.tool(""),
                table.name()
            )))
        }
    }

    /// Legacy only: reading one chain there copies the whole table (0.4 s
    /// at 10k Services), while its stamp is 84 bytes. On nft a chain is
    /// listed alone (2 ms) and needs none.
    fn table_stamp(&self, table: Table) -> Option<u64> {
        match self.backend {
            Backend::Legacy => legacy::stamp(table.name()),
            Backend::Nft => None,
        }
    }

    /// On nft, the chain names come from one netlink dump and each listed
    /// chain from `iptables -S CHAIN` (which reads only that chain):
    /// `iptables-nft-save` decodes every rule of the table, 33 s at 10k
    /// Services. On legacy any read copies the whole table out of the
    /// kernel, so one `iptables-save` (0.5 s at 10k) is the cheapest.
    fn survey(&self, table: Table, listed: &[&str]) -> Result<Survey> {
        if self.backend == Backend::Legacy {
            return Ok(Survey::from_save(&self.save(table)?, listed));
        }
        let chains = nft::chains()?.remove(table.name()).unwrap_or_default();
        let mut rules = HashMap::new();
        for c in listed.iter().filter(|c| chains.iter().any(|n| n == *c)) {
            // A failed listing (the xtables lock held for 5 s, say) is an
            // error, not an empty chain that would get its jumps twice.
            if let Some(text) = self.list_chain(table, c)? {
                let lines = text.lines().filter(|l| l.starts_with("-A "));
                rules.insert(c.to_string(), lines.map(str::to_string).collect());
            }
        }
        Ok(Survey { chains, rules })
    }
}

/// What a finished tool printed.
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
    status: String,
}

impl Output {
    fn failure(&self, what: &str) -> Error {
        Error::Iptables {
            what: what.to_string(),
            detail: format!("{}: {}", self.status, self.stderr.trim()),
        }
    }
}

fn output(c: Command) -> Result<Output> {
    run(c, None)
}

/// Runs `c`, feeding `stdin` when given.
fn run(mut c: Command, stdin: Option<&str>) -> Result<Output> {
    let name = c.get_program().to_string_lossy().into_owned();
    let spawn_err = |e: std::io::Error| Error::Iptables {
        what: format!("run {name}"),
        detail: e.to_string(),
    };
    let mut child = c
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok(Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        status: out.status.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_survey_from_save_names_every_chain_and_lists_those_asked_for() {
        let saved = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                     :KUBE-SVC-A - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n\
                     -A KUBE-SVC-A -j KUBE-SEP-B\nCOMMIT\n";
        let s = Survey::from_save(saved, &["PREROUTING", "OUTPUT", "POSTROUTING"]);
        assert_eq!(s.chains, ["PREROUTING", "OUTPUT", "KUBE-SVC-A"]);
        assert_eq!(s.rules["PREROUTING"], ["-A PREROUTING -j KUBE-SERVICES"]);
        assert!(s.rules["OUTPUT"].is_empty(), "present and empty");
        assert!(!s.rules.contains_key("POSTROUTING"), "absent");
    }

    #[test]
    fn markers_pick_the_backend_hints_first_then_the_proxy_canary() {
        let none: &[&str] = &[];
        assert_eq!(Backend::marked(none, none), None);
        assert_eq!(
            Backend::marked(&["INPUT", "KUBE-SERVICES"], &["OUTPUT"]),
            None,
            "a KUBE chain alone is no marker"
        );
        assert_eq!(
            Backend::marked(&["KUBE-PROXY-CANARY"], &["KUBE-IPTABLES-HINT"]),
            Some(Backend::Legacy),
            "the kubelet's hint wins over a proxy canary"
        );
        assert_eq!(
            Backend::marked(&["KUBE-PROXY-CANARY"], none),
            Some(Backend::Nft)
        );
        assert_eq!(
            Backend::marked(none, &["KUBE-PROXY-CANARY"]),
            Some(Backend::Legacy)
        );
        assert_eq!(
            Backend::marked(&["KUBE-KUBELET-CANARY"], &["KUBE-KUBELET-CANARY"]),
            Some(Backend::Nft)
        );
    }

    #[test]
    fn backend_follows_hints_then_rule_counts_then_the_default() {
        let hint = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        let busy = "*filter\n-A INPUT -j ACCEPT\n-A FORWARD -j ACCEPT\nCOMMIT\n";
        let one = "*filter\n-A INPUT -j ACCEPT\nCOMMIT\n";
        assert_eq!(Backend::choose(hint, busy, Backend::Legacy), Backend::Nft);
        assert_eq!(Backend::choose(busy, hint, Backend::Nft), Backend::Legacy);
        assert_eq!(Backend::choose(one, busy, Backend::Nft), Backend::Legacy);
        assert_eq!(Backend::choose(busy, one, Backend::Legacy), Backend::Nft);
        assert_eq!(Backend::choose("", "", Backend::Legacy), Backend::Legacy);
        assert_eq!(Backend::choose(one, one, Backend::Nft), Backend::Nft);
    }
}
