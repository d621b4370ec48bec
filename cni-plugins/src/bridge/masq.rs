//! ipMasq as one rule set per network (not a chain per container): a chain
//! `KNODE-MASQ-<hash(network)>` that accepts traffic inside the network's
//! subnets and masquerades the rest, jumped to from POSTROUTING once per
//! subnet. ADD ensures it; DEL never touches iptables.
//!
//! To keep iptables execs off the per-pod path, a stamp under /run (keyed by
//! the namespace cookie, so it dies with the namespace and the boot) records
//! what was installed; the rules are re-verified when the stamp is older than
//! [`REVERIFY`], which bounds how long an outside flush goes unrepaired.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hostnet::iptables::{self, Family};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

use crate::skel::{CniError, Code, Context, Result};

/// Default directory for stamps and the setup lock.
pub const STATE_DIR: &str = "/run/knode/cni/masq";

/// Rules older than this are checked against iptables again on the next ADD.
pub const REVERIFY: Duration = Duration::from_secs(60);

/// The masquerade rule set of one network in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasqRules {
    pub network: String,
    pub family: Family,
    /// The network's subnets in this family, sorted.
    pub subnets: Vec<IpNet>,
}

impl MasqRules {
    /// The rule sets (one per family present) for `network` covering `addrs`.
    pub fn for_addresses(network: &str, addrs: &[IpNet]) -> Vec<MasqRules> {
        let mut out = Vec::new();
        for family in [Family::V4, Family::V6] {
            let mut subnets: Vec<IpNet> = addrs
                .iter()
                .filter(|a| {
                    matches!(
                        (family, a.addr()),
                        (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
                    )
                })
                .map(|a| a.trunc())
                .collect();
            subnets.sort();
            subnets.dedup();
            if !subnets.is_empty() {
                out.push(MasqRules {
                    network: network.to_string(),
                    family,
                    subnets,
                });
            }
        }
        out
    }

    /// The chain name: `KNODE-MASQ-` and 16 hex digits of sha256(network).
    pub fn chain(&self) -> String {
        let h = Sha256::digest(self.network.as_bytes());
        let hex: String = h.iter().take(8).map(|b| format!("{b:02X}")).collect();
        format!("KNODE-MASQ-{hex}")
    }

    fn multicast(&self) -> &'static str {
        match self.family {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        }
    }

    /// The POSTROUTING rule (after `-A POSTROUTING `) for one subnet, exactly
    /// as iptables-save prints it back.
    fn jump(&self, subnet: &IpNet) -> String {
        format!(
            "-s {subnet} -m comment --comment \"knode-bridge ipMasq {}\" -j {}",
            self.network,
            self.chain()
        )
    }

    /// The chain's own rules (after `-A CHAIN `), as iptables-save prints them.
    fn chain_rules(&self) -> Vec<String> {
        let mut rules: Vec<String> = self
            .subnets
            .iter()
            .map(|s| format!("-d {s} -j ACCEPT"))
            .collect();
        rules.push(format!("! -d {} -j MASQUERADE", self.multicast()));
        rules
    }

    /// The `iptables-restore --noflush` payload that makes the nat table hold
    /// exactly this rule set, given the table as saved now. Pure.
    pub fn payload(&self, saved_nat: &str) -> String {
        let chain = self.chain();
        let mut p = String::from("*nat\n");
        // Declaring the chain flushes it under --noflush: its rules are rewritten whole.
        p.push_str(&format!(":{chain} - [0:0]\n"));
        for r in self.chain_rules() {
            p.push_str(&format!("-A {chain} {r}\n"));
        }
        let present = iptables::chain_rules(saved_nat, "POSTROUTING");
        let wanted: Vec<String> = self.subnets.iter().map(|s| self.jump(s)).collect();
        let target = format!("-j {chain}");
        for rule in &present {
            if rule.ends_with(target.as_str()) && !wanted.iter().any(|w| w == rule) {
                p.push_str(&format!("-D POSTROUTING {rule}\n"));
            }
        }
        for w in &wanted {
            if !present.iter().any(|r| r == w) {
                p.push_str(&format!("-A POSTROUTING {w}\n"));
            }
        }
        p.push_str("COMMIT\n");
        p
    }

    /// What is missing from a saved nat table, or `None` when the rule set is whole.
    pub fn missing(&self, saved_nat: &str) -> Option<String> {
        let chain = self.chain();
        if !iptables::has_chain(saved_nat, &chain) {
            return Some(format!("chain {chain} is missing"));
        }
        let have = iptables::chain_rules(saved_nat, &chain);
        let want = self.chain_rules();
        if have.len() != want.len() || have.iter().zip(&want).any(|(h, w)| h != w) {
            return Some(format!("chain {chain} does not hold the expected rules"));
        }
        let post = iptables::chain_rules(saved_nat, "POSTROUTING");
        for s in &self.subnets {
            let j = self.jump(s);
            if !post.iter().any(|r| *r == j) {
                return Some(format!("POSTROUTING rule for {s} -> {chain} is missing"));
            }
        }
        None
    }

    fn stamp_text(&self) -> String {
        let subnets: Vec<String> = self.subnets.iter().map(|s| s.to_string()).collect();
        subnets.join(",")
    }
}

/// Ensures each rule set, with stamps under `state_dir`.
pub fn ensure(rules: &[MasqRules], state_dir: &Path) -> Result<()> {
    let cookie = hostnet::netns::current_cookie()
        .cni(Code::Iptables, || "identify network namespace".into())?;
    let dir = state_dir.join(cookie.to_string());
    for r in rules {
        let stamp = dir.join(format!(
            "{}.{}",
            r.chain(),
            if r.family == Family::V4 { 4 } else { 6 }
        ));
        if fresh(&stamp, &r.stamp_text()) {
            continue;
        }
        fs::create_dir_all(&dir).cni(Code::Iptables, || format!("create {}", dir.display()))?;
        let _lock = crate::lockfile::lock_exclusive(&dir.join("lock"), Code::Iptables)?;
        if fresh(&stamp, &r.stamp_text()) {
            continue; // another ADD installed it while we waited
        }
        let saved = iptables::read_chains(r.family, "nat", &["POSTROUTING", &r.chain()])
            .cni(Code::Iptables, || "read nat table".into())?;
        if r.missing(&saved).is_some() {
            iptables::restore(r.family, &r.payload(&saved), true).cni(Code::Iptables, || {
                format!("install ipMasq rules for network {}", r.network)
            })?;
        }
        write_stamp(&stamp, &r.stamp_text())?;
    }
    Ok(())
}

/// Checks each rule set against iptables itself (CHECK; never the stamp).
pub fn verify(rules: &[MasqRules]) -> Result<()> {
    for r in rules {
        let saved = iptables::read_chains(r.family, "nat", &["POSTROUTING", &r.chain()])
            .cni(Code::Iptables, || "read nat table".into())?;
        if let Some(why) = r.missing(&saved) {
            return Err(CniError::new(
                Code::CheckFailed,
                format!("ipMasq for network {}: {why}", r.network),
            ));
        }
    }
    Ok(())
}

fn fresh(stamp: &Path, text: &str) -> bool {
    let Ok(meta) = fs::metadata(stamp) else {
        return false;
    };
    let young = meta
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .is_some_and(|age| age < REVERIFY);
    young && fs::read_to_string(stamp).is_ok_and(|s| s == text)
}

fn write_stamp(stamp: &Path, text: &str) -> Result<()> {
    let tmp: PathBuf = stamp.with_extension(format!("tmp{}", std::process::id()));
    let mut f =
        fs::File::create(&tmp).cni(Code::Iptables, || format!("write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .cni(Code::Iptables, || format!("write {}", tmp.display()))?;
    fs::rename(&tmp, stamp).cni(Code::Iptables, || format!("rename {}", stamp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> MasqRules {
        MasqRules::for_addresses(
            "pods",
            &[
                "10.1.0.7/24".parse().unwrap(),
                "fd00::7/64".parse().unwrap(),
            ],
        )
        .into_iter()
        .next()
        .unwrap()
    }

    #[test]
    fn one_rule_set_per_family_with_subnets() {
        let all = MasqRules::for_addresses(
            "pods",
            &[
                "10.1.0.7/24".parse().unwrap(),
                "10.1.0.9/24".parse().unwrap(),
                "fd00::7/64".parse().unwrap(),
            ],
        );
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0].subnets,
            vec!["10.1.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(all[1].family, Family::V6);
        assert!(
            all[0].chain().len() <= 28,
            "iptables chain names are at most 28 chars"
        );
    }

    #[test]
    fn payload_adds_the_jump_once() {
        let r = rules();
        let empty = "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
        let p = r.payload(empty);
        let chain = r.chain();
        assert!(p.contains(&format!(":{chain} - [0:0]\n")));
        assert!(p.contains(&format!("-A {chain} -d 10.1.0.0/24 -j ACCEPT\n")));
        assert!(p.contains(&format!("-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE\n")));
        assert!(p.contains(
            "-A POSTROUTING -s 10.1.0.0/24 -m comment --comment \"knode-bridge ipMasq pods\""
        ));
        assert!(r.missing(empty).is_some());
        // Once installed (as iptables-save prints it), nothing is appended again.
        let installed = format!(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:{chain} - [0:0]\n-A POSTROUTING {}\n-A {chain} -d 10.1.0.0/24 -j ACCEPT\n-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE\nCOMMIT\n",
            r.jump(&r.subnets[0])
        );
        assert_eq!(r.missing(&installed), None);
        assert!(!r.payload(&installed).contains("-A POSTROUTING"));
    }

    #[test]
    fn stale_subnet_jump_is_removed() {
        let r = rules();
        let chain = r.chain();
        let old = format!(
            "*nat\n:{chain} - [0:0]\n-A POSTROUTING -s 10.9.0.0/24 -m comment --comment \"knode-bridge ipMasq pods\" -j {chain}\nCOMMIT\n"
        );
        let p = r.payload(&old);
        assert!(p.contains("-D POSTROUTING -s 10.9.0.0/24"));
        assert!(p.contains("-A POSTROUTING -s 10.1.0.0/24"));
    }
}
