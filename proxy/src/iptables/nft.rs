//! The names of the chains iptables-nft keeps in nf_tables, read with one
//! netlink dump (NFT_MSG_GETCHAIN) instead of `iptables-nft-save`: the
//! tool decodes every rule to print it, which takes 33 s at 10k Services
//! (230k rules) where the dump of 60k chain names takes milliseconds.

use std::collections::BTreeMap;

use crate::nfnetlink::{attrs, io, string, NfSocket, Request, NLM_F_DUMP};
use crate::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
/// The family iptables-nft's IPv4 tables live in.
const NFPROTO_IPV4: u8 = 2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
/// Dumps interrupted by a concurrent change are asked again this often.
const ATTEMPTS: usize = 3;

/// Chain names of every IPv4 nf_tables table in the calling thread's
/// network namespace, by table name.
pub fn chains() -> Result<BTreeMap<String, Vec<String>>> {
    let sock = NfSocket::open()?;
    let req = Request {
        what: "dump the nf_tables chains",
        subsys: NFNL_SUBSYS_NFTABLES,
        msg_type: NFT_MSG_GETCHAIN,
        family: NFPROTO_IPV4,
        flags: NLM_F_DUMP,
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let r = sock.exchange(req, &[], |msg| {
            if let Some((table, chain)) = parse_chain(msg) {
                out.entry(table.to_string())
                    .or_default()
                    .push(chain.to_string());
            }
            Ok(())
        });
        match r {
            Ok(()) => return Ok(out),
            Err(Error::Netlink { source, .. })
                if source.raw_os_error() == Some(libc::EINTR) && attempt < ATTEMPTS => {}
            Err(Error::Netlink { source, .. }) if source.raw_os_error() == Some(libc::EINTR) => {
                return Err(io(req.what)(std::io::Error::other(format!(
                    "the ruleset kept changing during {ATTEMPTS} dumps"
                ))))
            }
            Err(e) => return Err(e),
        }
    }
}

/// (table, chain) of one NFT_MSG_NEWCHAIN message's attributes.
fn parse_chain(msg: &[u8]) -> Option<(&str, &str)> {
    let (mut table, mut chain) = (None, None);
    for (ty, p) in attrs(msg) {
        match ty {
            NFTA_CHAIN_TABLE => table = string(p),
            NFTA_CHAIN_NAME => chain = string(p),
            _ => {}
        }
    }
    Some((table?, chain?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nfnetlink::put;

    #[test]
    fn a_dumped_chain_names_its_table() {
        let mut msg = Vec::new();
        put(&mut msg, NFTA_CHAIN_TABLE, b"nat\0");
        put(&mut msg, 2, &7u64.to_be_bytes());
        put(&mut msg, NFTA_CHAIN_NAME, b"KUBE-SVC-ABC\0");
        assert_eq!(parse_chain(&msg), Some(("nat", "KUBE-SVC-ABC")));
        assert_eq!(parse_chain(&msg[..8]), None, "no name, no chain");
    }
}
