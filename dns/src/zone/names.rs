//! Name forms of the cluster zone that encode an IP: dashed pod/endpoint
//! labels (`10-244-1-5`, `fd00--5`) and reverse (`in-addr.arpa`/`ip6.arpa`)
//! names. Pure string work; knows nothing of the zone's contents.

use std::net::IpAddr;

use hickory_proto::rr::Name;

/// The dashed label of `ip`: dots (v4) or colons (v6) replaced by `-`.
pub(crate) fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

/// The IP a dashed label names, if it is one.
pub(crate) fn parse_dashed(label: &str) -> Option<IpAddr> {
    if label.len() > 39 || label.is_empty() {
        return None;
    }
    if let Ok(v4) = label.replace('-', ".").parse() {
        return Some(IpAddr::V4(v4));
    }
    label.replace('-', ":").parse().ok().map(IpAddr::V6)
}

/// The single IP a reverse name (`4.3.2.1.in-addr.arpa.`, or a full
/// 32-nibble `ip6.arpa.` name) stands for; `None` for a partial prefix or
/// anything else.
pub(crate) fn parse_reverse(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dashed_round_trips_both_families() {
        for ip in ["10.244.1.5", "fd00::5", "2001:db8::a:1"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(parse_dashed(&dashed(ip)), Some(ip));
        }
        assert_eq!(dashed("10.0.0.1".parse().unwrap()), "10-0-0-1");
        assert_eq!(parse_dashed("web-0"), None);
        assert_eq!(parse_dashed(""), None);
    }

    #[test]
    fn reverse_names_parse_only_full_addresses() {
        let v4 = Name::from_ascii("10.0.96.10.in-addr.arpa.").unwrap();
        assert_eq!(parse_reverse(&v4), Some("10.96.0.10".parse().unwrap()));
        let partial = Name::from_ascii("96.10.in-addr.arpa.").unwrap();
        assert_eq!(parse_reverse(&partial), None);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let IpAddr::V6(a) = v6 else { unreachable!() };
        let nibbles: Vec<String> = a
            .octets()
            .iter()
            .rev()
            .flat_map(|b| [format!("{:x}", b & 0xf), format!("{:x}", b >> 4)])
            .collect();
        let v6_name = Name::from_ascii(format!("{}.ip6.arpa.", nibbles.join("."))).unwrap();
        assert_eq!(parse_reverse(&v6_name), Some(v6));
        assert_eq!(
            parse_reverse(&Name::from_ascii("example.com.").unwrap()),
            None
        );
    }
}
