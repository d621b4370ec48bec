//! iptables through its own tools: `iptables-restore` for changes (one exec,
//! atomic per table) and `iptables-save` to read. Whichever backend (nft or
//! legacy) the host's `iptables` alternative points at is used. Callers build
//! payloads; this module never interpolates user strings itself.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::{Error, Result};

/// IPv4 or IPv6 tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn prefix(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }
}

/// Applies `payload` with `iptables-restore --noflush` (or a full restore of
/// the tables it names when `noflush` is false), waiting for the xtables lock.
pub fn restore(family: Family, payload: &str, noflush: bool) -> Result<()> {
    let cmd = format!("{}-restore", family.prefix());
    let mut c = Command::new(&cmd);
    c.arg("-w").arg("5");
    if noflush {
        c.arg("--noflush");
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run {cmd}"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(payload.as_bytes())
            .map_err(|e| Error::io(format!("write rules to {cmd}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for {cmd}"), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(cmd, &out))
    }
}

/// The rules of `table` as `iptables-save -t TABLE` prints them.
pub fn save(family: Family, table: &str) -> Result<String> {
    let cmd = format!("{}-save", family.prefix());
    let out = Command::new(&cmd)
        .args(["-t", table])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("run {cmd}"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(cmd, &out))
    }
}

/// Only `chains` of `table`, in `iptables-save`'s form (declarations and
/// `-A` lines; a chain that does not exist is left out), so
/// [`chain_rules`] and [`has_chain`] read it like a saved table. On the nft
/// backend each chain is one `iptables -S CHAIN`, which reads only that
/// chain: `iptables-nft-save` decodes every rule of the table and takes
/// 33 s with 10k Services in it. On legacy any read copies the whole table
/// out of the kernel, so one `iptables-save` is the cheapest there.
pub fn read_chains(family: Family, table: &str, chains: &[&str]) -> Result<String> {
    if is_legacy(family) {
        let saved = save(family, table)?;
        return Ok(only_chains(&saved, chains));
    }
    let cmd = family.prefix();
    let mut out = format!("*{table}\n");
    for chain in chains {
        let o = Command::new(cmd)
            .args(["-w", "5", "-t", table, "-S", chain])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::io(format!("run {cmd}"), e))?;
        if !o.status.success() {
            if chain_absent(&String::from_utf8_lossy(&o.stderr)) {
                continue;
            }
            return Err(failed(format!("{cmd} -t {table} -S {chain}"), &o));
        }
        out.push_str(&listed_as_saved(&String::from_utf8_lossy(&o.stdout)));
    }
    out.push_str("COMMIT\n");
    Ok(out)
}

/// Whether a failed `iptables -S CHAIN` said the chain does not exist
/// (rather than failing for another reason, such as the xtables lock).
/// Legacy says "No chain/target/match by that name"; iptables-nft 1.8.9
/// calls a missing chain "incompatible".
pub fn chain_absent(stderr: &str) -> bool {
    ["No chain/target/match", "does not exist", "incompatible"]
        .iter()
        .any(|m| stderr.contains(m))
}

/// `iptables -S CHAIN` output in `iptables-save`'s form: `-P CHAIN POLICY`
/// and `-N CHAIN` become declarations, rules stay as they are.
fn listed_as_saved(listed: &str) -> String {
    let mut out = String::new();
    for line in listed.lines() {
        if let Some(rest) = line.strip_prefix("-P ") {
            let mut parts = rest.split(' ');
            let (chain, policy) = (parts.next().unwrap_or(""), parts.next().unwrap_or("-"));
            out.push_str(&format!(":{chain} {policy} [0:0]\n"));
        } else if let Some(chain) = line.strip_prefix("-N ") {
            out.push_str(&format!(":{chain} - [0:0]\n"));
        } else if line.starts_with("-A ") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The lines of a saved table that declare or fill one of `chains`.
fn only_chains(saved: &str, chains: &[&str]) -> String {
    let mut out = String::new();
    for line in saved.lines() {
        let name = line
            .strip_prefix(':')
            .or_else(|| line.strip_prefix("-A "))
            .and_then(|r| r.split(' ').next());
        let keep = match name {
            Some(n) => chains.contains(&n),
            None => line.starts_with('*') || line == "COMMIT",
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Whether the host's `iptables` (or `ip6tables`) drives the legacy API,
/// asked once per process.
fn is_legacy(family: Family) -> bool {
    static V4: OnceLock<bool> = OnceLock::new();
    static V6: OnceLock<bool> = OnceLock::new();
    let cell = match family {
        Family::V4 => &V4,
        Family::V6 => &V6,
    };
    *cell.get_or_init(|| {
        Command::new(family.prefix())
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("legacy"))
    })
}

fn failed(cmd: String, out: &std::process::Output) -> Error {
    Error::Command {
        cmd,
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// The rules of `chain` in a saved table, as they appear after `-A CHAIN `.
pub fn chain_rules<'a>(saved: &'a str, chain: &str) -> Vec<&'a str> {
    let prefix = format!("-A {chain} ");
    saved
        .lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// True when `chain` is declared in a saved table.
pub fn has_chain(saved: &str, chain: &str) -> bool {
    let decl = format!(":{chain} ");
    saved.lines().any(|l| l.starts_with(decl.as_str()))
}

/// Removes from `table` every chain `ours` names and the jumps to them
/// (one save, at most one restore). Returns whether anything was there.
pub fn remove_chains(family: Family, table: &str, ours: impl Fn(&str) -> bool) -> Result<bool> {
    let saved = save(family, table)?;
    match removal_payload(table, &saved, ours) {
        Some(p) => {
            restore(family, &p, true)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The restore input (for `--noflush`) that removes, from one saved
/// `table`, every chain whose name `ours` accepts and every rule of another
/// chain that jumps to one: rules first, then flushes, then deletions, so
/// chains that jump to each other go too. `None` when there is nothing.
pub fn removal_payload(table: &str, saved: &str, ours: impl Fn(&str) -> bool) -> Option<String> {
    let chains: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split(' ').next())
        .filter(|c| ours(c))
        .collect();
    let mut out = format!("*{table}\n");
    let mut any = false;
    for line in saved.lines() {
        let Some(rule) = line.strip_prefix("-A ") else {
            continue;
        };
        let Some((chain, _)) = rule.split_once(' ') else {
            continue;
        };
        let target = rule
            .rsplit_once("-j ")
            .map(|(_, t)| t.split(' ').next().unwrap_or(""));
        if !ours(chain) && target.is_some_and(&ours) {
            out.push_str(&format!("-D {rule}\n"));
            any = true;
        }
    }
    for c in &chains {
        out.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    (any || !chains.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_payload_takes_our_chains_and_the_jumps_to_them() {
        let saved = "*nat\n:POSTROUTING ACCEPT [0:0]\n:KNODE-MASQ-X - [0:0]\n:OTHER - [0:0]\n\
            -A POSTROUTING -s 10.1.0.0/24 -j KNODE-MASQ-X\n-A POSTROUTING -j OTHER\n\
            -A KNODE-MASQ-X -d 10.1.0.0/24 -j ACCEPT\n-A OTHER -j RETURN\nCOMMIT\n";
        let p = removal_payload("nat", saved, |c| c.starts_with("KNODE-")).unwrap();
        assert_eq!(
            p,
            "*nat\n-D POSTROUTING -s 10.1.0.0/24 -j KNODE-MASQ-X\n-F KNODE-MASQ-X\n-X KNODE-MASQ-X\nCOMMIT\n"
        );
        assert_eq!(
            removal_payload("nat", saved, |c| c.starts_with("KUBE-")),
            None
        );
    }

    const SAVED: &str = "*nat\n:POSTROUTING ACCEPT [0:0]\n:KNODE-MASQ-X - [0:0]\n-A POSTROUTING -s 10.1.0.0/24 -j KNODE-MASQ-X\n-A KNODE-MASQ-X -d 10.1.0.0/24 -j ACCEPT\nCOMMIT\n";

    #[test]
    fn listed_chains_read_like_a_saved_table() {
        let listed = "-P POSTROUTING ACCEPT\n-A POSTROUTING -s 10.1.0.0/24 -j KNODE-MASQ-X\n\
            -N KNODE-MASQ-X\n-A KNODE-MASQ-X -d 10.1.0.0/24 -j ACCEPT\n";
        let text = format!("*nat\n{}COMMIT\n", listed_as_saved(listed));
        assert!(has_chain(&text, "POSTROUTING") && has_chain(&text, "KNODE-MASQ-X"));
        assert_eq!(
            chain_rules(&text, "KNODE-MASQ-X"),
            chain_rules(SAVED, "KNODE-MASQ-X")
        );
        // A missing chain as either backend reports it; a held lock is not one.
        assert!(chain_absent(
            "iptables: No chain/target/match by that name."
        ));
        assert!(chain_absent(
            "iptables v1.8.9 (nf_tables): chain `NOPE' in table `nat' is incompatible, use 'nft' tool."
        ));
        assert!(!chain_absent(
            "Another app is currently holding the xtables lock. Stopped waiting after 5s."
        ));
        // The legacy path keeps only the chains asked for.
        let only = only_chains(SAVED, &["KNODE-MASQ-X"]);
        assert_eq!(
            only,
            "*nat\n:KNODE-MASQ-X - [0:0]\n-A KNODE-MASQ-X -d 10.1.0.0/24 -j ACCEPT\nCOMMIT\n"
        );
    }

    #[test]
    fn reads_chains_and_rules() {
        assert!(has_chain(SAVED, "KNODE-MASQ-X"));
        assert!(!has_chain(SAVED, "KNODE-MASQ"));
        assert_eq!(
            chain_rules(SAVED, "POSTROUTING"),
            vec!["-s 10.1.0.0/24 -j KNODE-MASQ-X"]
        );
    }
}
