//! Chain names and rule comments exactly as kube-proxy spells them: the
//! fixed chains, the per-service-port hash (first 16 characters of
//! base32(sha256(...))) and `-m comment` arguments quoted for
//! iptables-restore's tokenizer. User-supplied text goes nowhere else.

use std::fmt;

use sha2::{Digest, Sha256};

/// nat: entry from PREROUTING/OUTPUT; filter: REJECT for services without endpoints.
pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
/// nat: NodePort dispatch; filter: health-check node ports (empty for now).
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
/// filter: REJECT/DROP for NodePorts without (local) endpoints.
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
/// filter: accept forwarded service traffic.
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
/// filter: the martian-packet guard needed by localhost NodePorts.
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
/// nat: marks a packet for masquerade.
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// nat: masquerades marked packets.
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
/// nat and filter: its rule disappearing means someone flushed the table.
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";
/// The masquerade mark bit (kube-proxy's default `--iptables-masquerade-bit` 14).
pub const MASQ_MARK: &str = "0x4000";

/// Prefixes of the per-service and per-endpoint chains: a chain with one of
/// these that the desired ruleset does not name is stale and deleted on a
/// full sync.
pub const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// `TCP`, `UDP` or `SCTP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses a Service port's protocol (`None` for anything else).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lowercase name iptables matches on (`-m tcp -p tcp`) and kube-proxy hashes.
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number (conntrack tuples).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// One port of one Service: `namespace/name:port` (`:port` only when the
/// port has a name), kube-proxy's `ServicePortName`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The Service port's name, "" when unnamed.
    pub port: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

/// kube-proxy's `portProtoHash`: the first 16 characters of the standard
/// base32 encoding of sha256(`ns/name:port` + lowercase protocol).
pub fn port_proto_hash(port_name: &str, protocol: Protocol) -> String {
    hash16(&[port_name, protocol.lower()])
}

/// `KUBE-SEP-` + kube-proxy's `servicePortEndpointChainName` hash:
/// sha256(`ns/name:port` + protocol + `ip:port`).
pub fn endpoint_chain(port_name: &str, protocol: Protocol, endpoint: &str) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&[port_name, protocol.lower(), endpoint])
    )
}

/// The first 16 base32 characters of sha256 over the concatenated parts.
/// 16 characters carry exactly 80 bits, the first 10 bytes, so padding
/// never shows.
fn hash16(parts: &[&str]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let bits = digest[..10]
        .iter()
        .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
    (0..16)
        .map(|i| ALPHABET[((bits >> (75 - 5 * i)) & 31) as usize] as char)
        .collect()
}

/// The longest comment the kernel keeps (XT_MAX_COMMENT_LEN minus the NUL).
const MAX_COMMENT: usize = 255;

/// `text` as one iptables-restore argument: bare when it holds only
/// characters that never need quoting (as kube-proxy writes `ns/svc:port`),
/// otherwise in double quotes with `\` and `"` escaped. Control characters
/// (a newline would end the rule and start another) become `?`, and the
/// text is cut to what the comment match accepts, so no input can add an
/// argument or a line.
pub fn comment_arg(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if clean.len() + c.len_utf8() > MAX_COMMENT {
            break;
        }
        clean.push(c);
    }
    let bare = !clean.is_empty()
        && clean
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:".contains(&b));
    if bare {
        return clean;
    }
    let mut out = String::with_capacity(clean.len() + 2);
    out.push('"');
    for c in clean.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_kube_proxy() {
        // Chain names every Kubernetes cluster has, and kube-proxy's own test fixtures.
        assert_eq!(
            port_proto_hash("kube-system/kube-dns:dns", Protocol::Udp),
            "TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            port_proto_hash("default/kubernetes:https", Protocol::Tcp),
            "NPX46M4PTMTKRN6Y"
        );
        assert_eq!(
            port_proto_hash("ns1/svc1:p80", Protocol::Tcp),
            "XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            endpoint_chain("ns1/svc1:p80", Protocol::Tcp, "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            endpoint_chain("ns4/svc4:p80", Protocol::Tcp, "10.180.0.5:80"),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ"
        );
    }

    #[test]
    fn port_names_print_like_kube_proxy() {
        let named = ServicePortName {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port: "p80".into(),
        };
        assert_eq!(named.to_string(), "ns1/svc1:p80");
        let unnamed = ServicePortName {
            port: String::new(),
            ..named
        };
        assert_eq!(unnamed.to_string(), "ns1/svc1");
    }

    #[test]
    fn comments_are_bare_only_when_safe() {
        assert_eq!(comment_arg("ns1/svc1:p80"), "ns1/svc1:p80");
        assert_eq!(
            comment_arg("ns1/svc1:p80 cluster IP"),
            "\"ns1/svc1:p80 cluster IP\""
        );
        assert_eq!(comment_arg(""), "\"\"");
        assert_eq!(comment_arg(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(comment_arg("a\nb\rc\0"), "\"a?b?c?\"");
        assert_eq!(comment_arg(&"x".repeat(400)).len(), MAX_COMMENT);
        // Cut on a character boundary, never inside one.
        let long = "é".repeat(200);
        assert!(comment_arg(&long).len() <= MAX_COMMENT + 2);
    }
}
