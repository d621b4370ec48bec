//! The host-local IPAM config: parses and validates the `ipam` section of the
//! network config (`ranges`, the legacy single range, `routes`, `dataDir`,
//! `resolvConf`), `runtimeConfig.ipRanges` and the requested static IPs, with
//! the reference plugin's defaults. Pure: it must not touch the reservation
//! store; the only file it reads is `resolvConf`, in [`read_resolv_conf`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::skel::{validate_network_name, CniError, Code, Dns, Result, Route};

/// Where reservations live when `ipam.dataDir` is not set (as the reference).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One allocatable range: `start..=end` inside `subnet`, with its gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet, host bits cleared.
    pub subnet: IpNet,
    /// First address handed out (inclusive).
    pub start: IpAddr,
    /// Last address handed out (inclusive).
    pub end: IpAddr,
    /// The gateway reported in results; never handed out.
    pub gateway: IpAddr,
}

impl Range {
    /// True when `ip` lies in `start..=end` (same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.start.is_ipv4() && self.start <= ip && ip <= self.end
    }

    /// True when `ip` may be handed out: inside the range and not the
    /// gateway, the network address or (IPv4) the broadcast address.
    pub fn allocatable(&self, ip: IpAddr) -> bool {
        self.contains(ip)
            && ip != self.gateway
            && ip != self.subnet.network()
            && !(ip.is_ipv4() && ip == self.subnet.broadcast())
    }

    /// How many addresses [`Range::allocatable`] accepts.
    pub fn capacity(&self) -> u128 {
        let span = ip_to_u128(self.end)
            .saturating_sub(ip_to_u128(self.start))
            .saturating_add(1);
        let mut excluded = [Some(self.gateway), Some(self.subnet.network()), None];
        if self.start.is_ipv4() {
            excluded[2] = Some(self.subnet.broadcast());
        }
        let mut skip = 0;
        for (i, ip) in excluded.iter().enumerate() {
            // Count each excluded address once, even when two coincide.
            if let Some(ip) = ip {
                if self.contains(*ip) && !excluded[..i].contains(&Some(*ip)) {
                    skip += 1;
                }
            }
        }
        span.saturating_sub(skip)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// A range set: every ADD gets one address from each set. All ranges share
/// one family and do not overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// The ranges, walked in this order.
    pub ranges: Vec<Range>,
}

impl RangeSet {
    /// The range holding `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// True when one of the ranges holds `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    /// True when `ip` may be handed out from this set.
    pub fn allocatable(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some_and(|r| r.allocatable(ip))
    }

    /// How many addresses the set can hand out.
    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |n, r| n.saturating_add(r.capacity()))
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// The validated host-local config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The network name; the store directory is `data_dir/name`.
    pub name: String,
    /// `ipam.dataDir`, or [`DEFAULT_DATA_DIR`].
    pub data_dir: PathBuf,
    /// `runtimeConfig.ipRanges`, then the legacy range, then `ipam.ranges`;
    /// the index is the `N` of `last_reserved_ip.N`.
    pub range_sets: Vec<RangeSet>,
    /// `ipam.routes`, returned as they are.
    pub routes: Vec<Route>,
    /// `ipam.resolvConf`, when set.
    pub resolv_conf: Option<PathBuf>,
}

impl IpamConfig {
    /// Parses the whole network config (stdin) and validates its `ipam` part.
    /// Errors are `InvalidConfig` with the field path, or `Decode` for bad JSON.
    pub fn parse(stdin: &[u8]) -> Result<IpamConfig> {
        let root = parse_root(stdin)?;
        let name = match root.get("name") {
            None | Some(Value::Null) => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(invalid("name", "must be a string")),
        };
        validate_network_name(name)?;
        let ipam = match root.get("ipam") {
            None | Some(Value::Null) => return Err(invalid("ipam", "required for host-local")),
            Some(Value::Object(m)) => m,
            Some(_) => return Err(invalid("ipam", "must be an object")),
        };

        let mut sets: Vec<(String, RangeSet)> = Vec::new();
        if let Some(rc) = object_field(&root, "runtimeConfig", "runtimeConfig")? {
            if let Some(v) = rc.get("ipRanges").filter(|v| !v.is_null()) {
                sets.extend(parse_range_sets(v, "runtimeConfig.ipRanges")?);
            }
        }
        if let Some(legacy) = parse_legacy(ipam)? {
            sets.push((
                "ipam".to_string(),
                RangeSet {
                    ranges: vec![legacy],
                },
            ));
        }
        if let Some(v) = ipam.get("ranges").filter(|v| !v.is_null()) {
            sets.extend(parse_range_sets(v, "ipam.ranges")?);
        }
        if sets.is_empty() {
            return Err(invalid(
                "ipam.ranges",
                "no IP ranges specified (set ipam.ranges or ipam.subnet)",
            ));
        }
        for (i, (path_a, a)) in sets.iter().enumerate() {
            for (path_b, b) in &sets[..i] {
                for ra in &a.ranges {
                    if let Some(rb) = b.ranges.iter().find(|rb| overlaps(ra, rb)) {
                        return Err(invalid(
                            path_a,
                            format!("range set overlaps {path_b}: {ra} overlaps {rb}"),
                        ));
                    }
                }
            }
        }

        let routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(rs)) => rs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    serde_json::from_value::<Route>(r.clone()).map_err(|e| {
                        CniError::new(
                            Code::InvalidConfig,
                            format!("ipam.routes[{i}]: not a route {{dst, gw?}}"),
                        )
                        .with_details(e)
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            Some(_) => return Err(invalid("ipam.routes", "must be an array")),
        };
        let data_dir = match str_field(ipam, "dataDir", "ipam.dataDir")? {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_DATA_DIR),
        };
        let resolv_conf = str_field(ipam, "resolvConf", "ipam.resolvConf")?
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);

        Ok(IpamConfig {
            name: name.to_string(),
            data_dir,
            range_sets: sets.into_iter().map(|(_, s)| s).collect(),
            routes,
            resolv_conf,
        })
    }

    /// Places each requested IP in its range set: at most one per set, never
    /// a gateway, network or broadcast address. `InvalidConfig` otherwise.
    pub fn assign_requested(&self, requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
        let mut out = vec![None; self.range_sets.len()];
        for &ip in requested {
            let found = self
                .range_sets
                .iter()
                .enumerate()
                .find_map(|(i, s)| s.range_for(ip).map(|r| (i, r)));
            let Some((i, r)) = found else {
                let sets: Vec<String> = self.range_sets.iter().map(|s| s.to_string()).collect();
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!(
                        "requested IP {ip} is not in any range set ({})",
                        sets.join("; ")
                    ),
                ));
            };
            if !r.allocatable(ip) {
                let what = if ip == r.gateway {
                    "the gateway"
                } else {
                    "the network or broadcast address"
                };
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("requested IP {ip} is {what} of {}", r.subnet),
                ));
            }
            match out.get_mut(i) {
                Some(Some(other)) if *other != ip => {
                    return Err(CniError::new(
                        Code::InvalidConfig,
                        format!(
                            "requested IPs {other} and {ip} are both in range set {i} ({}); \
                             one address per range set",
                            self.range_sets[i]
                        ),
                    ))
                }
                Some(slot) => *slot = Some(ip),
                None => {}
            }
        }
        Ok(out)
    }
}

/// The static IPs asked for in `CNI_ARGS` (`IP=a,b`), `args.cni.ips` and
/// `runtimeConfig.ips` (plain or with a prefix), deduplicated, in that order.
pub fn requested_ips(stdin: &[u8], cni_args: &[(String, String)]) -> Result<Vec<IpAddr>> {
    let root = parse_root(stdin)?;
    let mut out: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !out.contains(&ip) {
            out.push(ip);
        }
    };
    for (k, v) in cni_args.iter().filter(|(k, _)| k == "IP") {
        for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ip = parse_ip_text(s).ok_or_else(|| {
                CniError::new(
                    Code::InvalidEnv,
                    format!("CNI_ARGS: {k}={v:?}: {s:?} is not an IP address"),
                )
            })?;
            push(ip);
        }
    }
    let args_ips = object_field(&root, "args", "args")?
        .map(|a| object_field(a, "cni", "args.cni"))
        .transpose()?
        .flatten()
        .and_then(|c| c.get("ips"));
    let runtime_ips =
        object_field(&root, "runtimeConfig", "runtimeConfig")?.and_then(|r| r.get("ips"));
    for (path, list) in [
        ("args.cni.ips", args_ips),
        ("runtimeConfig.ips", runtime_ips),
    ] {
        match list {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = item
                        .as_str()
                        .and_then(|s| {
                            parse_ip_text(s)
                                .or_else(|| s.parse::<IpNet>().ok().map(|n| canonical(n.addr())))
                        })
                        .ok_or_else(|| {
                            invalid(
                                &format!("{path}[{i}]"),
                                format!("{item} is not an IP address"),
                            )
                        })?;
                    push(ip);
                }
            }
            Some(_) => return Err(invalid(path, "must be an array of IP addresses")),
        }
    }
    Ok(out)
}

/// Reads `resolvConf` into a [`Dns`].
pub fn read_resolv_conf(path: &Path) -> Result<Dns> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            Code::Io,
            format!("ipam.resolvConf: read {}", path.display()),
        )
        .with_details(e)
    })?;
    Ok(parse_resolv_conf(&text))
}

/// Parses resolv.conf text: `nameserver`, `domain`, `search` and `options`
/// lines; comments and anything else are ignored (as the reference does).
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(key), rest) = (
            fields.next(),
            fields.map(str::to_string).collect::<Vec<_>>(),
        ) else {
            continue;
        };
        let Some(first) = rest.first().cloned() else {
            continue;
        };
        match key {
            "nameserver" => dns.nameservers.push(first),
            "domain" => dns.domain = first,
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

/// An address as a number (IPv4 in the low 32 bits).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The address `n` in the family of `like` (`n` must fit that family).
pub fn ip_from_u128(n: u128, like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// IPv4-mapped IPv6 addresses become IPv4, as Go's `To4()` does.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

fn parse_ip_text(s: &str) -> Option<IpAddr> {
    s.trim().parse::<IpAddr>().ok().map(canonical)
}

fn parse_root(stdin: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CniError::new(
            Code::Decode,
            "decode network config: not a JSON object",
        )),
        Err(e) => {
            Err(CniError::new(Code::Decode, "decode network config from stdin").with_details(e))
        }
    }
}

fn invalid(path: &str, msg: impl fmt::Display) -> CniError {
    CniError::new(Code::InvalidConfig, format!("{path}: {msg}"))
}

fn object_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(invalid(path, "must be an object")),
    }
}

fn str_field<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(path, "must be a string")),
    }
}

fn ip_field(obj: &Map<String, Value>, key: &str, path: &str) -> Result<Option<IpAddr>> {
    match str_field(obj, key, &format!("{path}.{key}"))? {
        None => Ok(None),
        Some(s) => parse_ip_text(s).map(Some).ok_or_else(|| {
            invalid(
                &format!("{path}.{key}"),
                format!("{s:?} is not an IP address"),
            )
        }),
    }
}

/// The legacy single range at the top of `ipam`, when `subnet` is set.
fn parse_legacy(ipam: &Map<String, Value>) -> Result<Option<Range>> {
    let has = |k: &str| ipam.get(k).is_some_and(|v| !v.is_null());
    if has("subnet") {
        return parse_range(ipam, "ipam").map(Some);
    }
    if let Some(k) = ["rangeStart", "rangeEnd", "gateway"]
        .into_iter()
        .find(|k| has(k))
    {
        return Err(invalid(
            &format!("ipam.{k}"),
            "set without ipam.subnet (put it in a range of ipam.ranges, or add ipam.subnet)",
        ));
    }
    Ok(None)
}

fn parse_range_sets(v: &Value, path: &str) -> Result<Vec<(String, RangeSet)>> {
    let Value::Array(sets) = v else {
        return Err(invalid(path, "must be an array of range sets"));
    };
    sets.iter()
        .enumerate()
        .map(|(i, set)| {
            let spath = format!("{path}[{i}]");
            let Value::Array(ranges) = set else {
                return Err(invalid(&spath, "must be an array of ranges"));
            };
            if ranges.is_empty() {
                return Err(invalid(&spath, "empty range set"));
            }
            let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
            for (j, r) in ranges.iter().enumerate() {
                let rpath = format!("{spath}[{j}]");
                let Value::Object(obj) = r else {
                    return Err(invalid(
                        &rpath,
                        "must be an object {subnet, rangeStart?, rangeEnd?, gateway?}",
                    ));
                };
                let range = parse_range(obj, &rpath)?;
                if let Some(first) = out.first() {
                    if first.start.is_ipv4() != range.start.is_ipv4() {
                        return Err(invalid(
                            &format!("{rpath}.subnet"),
                            format!(
                                "{} is not the same address family as {spath}[0] ({})",
                                range.subnet, first.subnet
                            ),
                        ));
                    }
                }
                if let Some((k, other)) = out.iter().enumerate().find(|(_, o)| overlaps(o, &range))
                {
                    return Err(invalid(
                        &rpath,
                        format!("{range} overlaps {spath}[{k}] ({other})"),
                    ));
                }
                out.push(range);
            }
            Ok((spath, RangeSet { ranges: out }))
        })
        .collect()
}

fn parse_range(obj: &Map<String, Value>, path: &str) -> Result<Range> {
    let spath = format!("{path}.subnet");
    let text = str_field(obj, "subnet", &spath)?.ok_or_else(|| invalid(&spath, "required"))?;
    let subnet: IpNet = text
        .trim()
        .parse()
        .map_err(|_| invalid(&spath, format!("{text:?} is not a CIDR subnet")))?;
    let subnet = subnet.trunc();
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(invalid(
            &spath,
            format!("{subnet} is too small to allocate from"),
        ));
    }
    let inside = |key: &str, ip: Option<IpAddr>| -> Result<Option<IpAddr>> {
        match ip {
            Some(ip) if !subnet.contains(&ip) => Err(invalid(
                &format!("{path}.{key}"),
                format!("{ip} is outside subnet {subnet}"),
            )),
            other => Ok(other),
        }
    };
    let network = ip_to_u128(subnet.network());
    let first = ip_from_u128(network + 1, subnet.network());
    let gateway = inside("gateway", ip_field(obj, "gateway", path)?)?.unwrap_or(first);
    let start = inside("rangeStart", ip_field(obj, "rangeStart", path)?)?.unwrap_or(first);
    let end = match inside("rangeEnd", ip_field(obj, "rangeEnd", path)?)? {
        Some(end) => end,
        None if subnet.network().is_ipv4() => {
            ip_from_u128(ip_to_u128(subnet.broadcast()) - 1, first)
        }
        None => subnet.broadcast(),
    };
    if end < start {
        return Err(invalid(
            &format!("{path}.rangeEnd"),
            format!("{end} is before rangeStart {start}"),
        ));
    }
    Ok(Range {
        subnet,
        start,
        end,
        gateway,
    })
}

fn overlaps(a: &Range, b: &Range) -> bool {
    a.start.is_ipv4() == b.start.is_ipv4() && a.start <= b.end && b.start <= a.end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ipam: &str) -> Result<IpamConfig> {
        IpamConfig::parse(
            format!(r#"{{"cniVersion":"1.0.0","name":"net","type":"bridge","ipam":{ipam}}}"#)
                .as_bytes(),
        )
    }

    fn err(ipam: &str) -> CniError {
        match parse(ipam) {
            Ok(c) => panic!("expected an error for {ipam}, got {c:?}"),
            Err(e) => e,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    #[test]
    fn legacy_range_gets_reference_defaults() {
        let c = parse(r#"{"type":"host-local","subnet":"10.1.0.0/24"}"#).expect("valid");
        assert_eq!(c.name, "net");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.range_sets.len(), 1);
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.0.1"), ip("10.1.0.254"), ip("10.1.0.1"))
        );
        assert_eq!(r.capacity(), 253);
        assert_eq!(c.range_sets[0].to_string(), "10.1.0.1-10.1.0.254");
    }

    #[test]
    fn ipv6_defaults_end_at_the_last_address() {
        let c = parse(r#"{"ranges":[[{"subnet":"fd00:1::/120"}]]}"#).expect("valid");
        let r = &c.range_sets[0].ranges[0];
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("fd00:1::1"), ip("fd00:1::ff"), ip("fd00:1::1"))
        );
        assert_eq!(r.capacity(), 254);
    }

    #[test]
    fn ranges_routes_datadir_and_host_bits() {
        let c = parse(
            r#"{"subnet":"10.9.0.0/16","ranges":[[{"subnet":"10.1.0.7/24","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20","gateway":"10.1.0.254"},{"subnet":"10.2.0.0/24"}],[{"subnet":"fd00::/64"}]],
               "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.0.0.0/8","gw":"10.1.0.1"}],"dataDir":"/tmp/x","resolvConf":"/etc/r"}"#,
        )
        .expect("valid");
        assert_eq!(c.range_sets.len(), 3, "legacy first, then ranges");
        assert_eq!(c.range_sets[0].ranges[0].subnet.to_string(), "10.9.0.0/16");
        let r = &c.range_sets[1].ranges[0];
        assert_eq!(r.subnet.to_string(), "10.1.0.0/24");
        assert_eq!(
            (r.start, r.end, r.gateway),
            (ip("10.1.0.10"), ip("10.1.0.20"), ip("10.1.0.254"))
        );
        assert_eq!(
            c.range_sets[1].to_string(),
            "10.1.0.10-10.1.0.20,10.2.0.1-10.2.0.254"
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(ip("10.1.0.1")));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/r")));
    }

    #[test]
    fn runtime_ip_ranges_come_first() {
        let c = IpamConfig::parse(
            br#"{"name":"n","runtimeConfig":{"ipRanges":[[{"subnet":"10.5.0.0/24"}]]},"ipam":{"ranges":[[{"subnet":"10.6.0.0/24"}]]}}"#,
        )
        .expect("valid");
        assert_eq!(c.range_sets[0].ranges[0].subnet.to_string(), "10.5.0.0/24");
        assert_eq!(c.range_sets[1].ranges[0].subnet.to_string(), "10.6.0.0/24");
    }

    #[test]
    fn every_validation_error_names_its_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"type":"host-local"}"#, "ipam.ranges: no IP ranges specified"),
            (r#"{"ranges":[]}"#, "ipam.ranges: no IP ranges specified"),
            (r#"{"ranges":[[]]}"#, "ipam.ranges[0]: empty range set"),
            (r#"{"ranges":{}}"#, "ipam.ranges: must be an array"),
            (r#"{"ranges":[{}]}"#, "ipam.ranges[0]: must be an array"),
            (r#"{"ranges":[[1]]}"#, "ipam.ranges[0][0]: must be an object"),
            (r#"{"ranges":[[{}]]}"#, "ipam.ranges[0][0].subnet: required"),
            (r#"{"ranges":[[{"subnet":"nope"}]]}"#, "ipam.ranges[0][0].subnet: \"nope\" is not a CIDR"),
            (r#"{"ranges":[[{"subnet":"10.1.0.0/31"}]]}"#, "ipam.ranges[0][0].subnet: 10.1.0.0/31 is too small"),
            (r#"{"ranges":[[{"subnet":"fd00::/127"}]]}"#, "ipam.ranges[0][0].subnet: fd00::/127 is too small"),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.3.0.0/24","rangeStart":"10.2.0.5"}]]}"#,
                "ipam.ranges[0][1].rangeStart: 10.2.0.5 is outside subnet 10.3.0.0/24",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24","rangeEnd":"10.1.1.5"}]]}"#,
                "ipam.ranges[0][0].rangeEnd: 10.1.1.5 is outside subnet 10.1.0.0/24",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24","gateway":"fd00::1"}]]}"#,
                "ipam.ranges[0][0].gateway: fd00::1 is outside subnet 10.1.0.0/24",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24","gateway":"x"}]]}"#,
                "ipam.ranges[0][0].gateway: \"x\" is not an IP address",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.3"}]]}"#,
                "ipam.ranges[0][0].rangeEnd: 10.1.0.3 is before rangeStart 10.1.0.9",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"fd00::/64"}]]}"#,
                "ipam.ranges[0][1].subnet: fd00::/64 is not the same address family",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.128/25"}]]}"#,
                "ipam.ranges[0][1]: 10.1.0.129-10.1.0.254 overlaps ipam.ranges[0][0] (10.1.0.1-10.1.0.254)",
            ),
            (
                r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/16"}]]}"#,
                "ipam.ranges[1]: range set overlaps ipam.ranges[0]",
            ),
            (
                r#"{"subnet":"10.1.0.0/24","ranges":[[{"subnet":"10.1.0.0/24"}]]}"#,
                "ipam.ranges[0]: range set overlaps ipam: ",
            ),
            (r#"{"rangeStart":"10.1.0.5"}"#, "ipam.rangeStart: set without ipam.subnet"),
            (r#"{"subnet":"10.1.0.0/24","routes":[{"dst":"x"}]}"#, "ipam.routes[0]: not a route"),
            (r#"{"subnet":"10.1.0.0/24","routes":{}}"#, "ipam.routes: must be an array"),
            (r#"{"subnet":"10.1.0.0/24","dataDir":5}"#, "ipam.dataDir: must be a string"),
        ];
        for (ipam, want) in cases {
            let e = err(ipam);
            assert_eq!(e.code, Code::InvalidConfig, "{ipam}: {e}");
            assert!(
                e.msg.starts_with(want),
                "{ipam}:\n got  {}\n want {want}…",
                e.msg
            );
        }
    }

    #[test]
    fn ipam_and_name_are_required() {
        let e = IpamConfig::parse(br#"{"name":"n"}"#).expect_err("no ipam");
        assert_eq!(
            (e.code, e.msg.as_str()),
            (Code::InvalidConfig, "ipam: required for host-local")
        );
        for name in ["", ".", "..", "a/b"] {
            let conf = format!(r#"{{"name":"{name}","ipam":{{"subnet":"10.1.0.0/24"}}}}"#);
            let e = IpamConfig::parse(conf.as_bytes()).expect_err("bad name");
            assert_eq!(e.code, Code::InvalidConfig);
            assert!(e.msg.starts_with("name: "), "{}", e.msg);
        }
        let e = IpamConfig::parse(b"[1]").expect_err("not an object");
        assert_eq!(e.code, Code::Decode);
    }

    #[test]
    fn requested_ips_from_all_three_sources() {
        let stdin = br#"{"name":"n","args":{"cni":{"ips":["10.1.0.7","fd00::7"]}},"runtimeConfig":{"ips":["10.1.0.8/24","10.1.0.5"]},"ipam":{}}"#;
        let args = vec![("IP".to_string(), "10.1.0.5, 10.1.0.6".to_string())];
        let got = requested_ips(stdin, &args).expect("valid");
        let want: Vec<IpAddr> = ["10.1.0.5", "10.1.0.6", "10.1.0.7", "fd00::7", "10.1.0.8"]
            .map(ip)
            .to_vec();
        assert_eq!(got, want);
        let e = requested_ips(stdin, &[("IP".into(), "bogus".into())]).expect_err("bad CNI_ARGS");
        assert_eq!(e.code, Code::InvalidEnv);
        let e = requested_ips(br#"{"args":{"cni":{"ips":[5]}}}"#, &[]).expect_err("bad ips");
        assert!(e.msg.starts_with("args.cni.ips[0]: "), "{}", e.msg);
        assert_eq!(
            requested_ips(br#"{"args":{"cni":{"ips":["::ffff:10.1.0.9"]}}}"#, &[]).expect("mapped"),
            vec![ip("10.1.0.9")]
        );
    }

    #[test]
    fn requested_ips_are_placed_per_range_set() {
        let c = parse(r#"{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}"#)
            .expect("valid");
        assert_eq!(
            c.assign_requested(&[ip("fd00::5")]).expect("ok"),
            vec![None, Some(ip("fd00::5"))]
        );
        for (bad, want) in [
            (
                vec![ip("10.2.0.5")],
                "requested IP 10.2.0.5 is not in any range set",
            ),
            (vec![ip("10.1.0.1")], "requested IP 10.1.0.1 is the gateway"),
            (
                vec![ip("10.1.0.5"), ip("10.1.0.6")],
                "requested IPs 10.1.0.5 and 10.1.0.6 are both in range set 0",
            ),
        ] {
            let e = c.assign_requested(&bad).expect_err("invalid request");
            assert_eq!(e.code, Code::InvalidConfig);
            assert!(e.msg.starts_with(want), "{}", e.msg);
        }
    }

    #[test]
    fn resolv_conf_lines() {
        let dns = parse_resolv_conf(
            "# comment\n; other\nnameserver 10.0.0.10\nnameserver fd00::10\ndomain example.com\nsearch a.svc b.svc\noptions ndots:5 edns0\nsortlist x\nnameserver\n",
        );
        assert_eq!(dns.nameservers, vec!["10.0.0.10", "fd00::10"]);
        assert_eq!(dns.domain, "example.com");
        assert_eq!(dns.search, vec!["a.svc", "b.svc"]);
        assert_eq!(dns.options, vec!["ndots:5", "edns0"]);
        let e = read_resolv_conf(Path::new("/nonexistent/knode/resolv.conf")).expect_err("missing");
        assert_eq!(e.code, Code::Io);
    }

    #[test]
    fn range_membership_and_capacity() {
        let c = parse(r#"{"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.0","rangeEnd":"10.1.0.255"}]]}"#)
            .expect("valid");
        let r = &c.range_sets[0].ranges[0];
        assert!(r.contains(ip("10.1.0.0")) && !r.allocatable(ip("10.1.0.0")));
        assert!(!r.allocatable(ip("10.1.0.255")) && !r.allocatable(ip("10.1.0.1")));
        assert!(r.allocatable(ip("10.1.0.2")) && !r.contains(ip("fd00::1")));
        assert_eq!(r.capacity(), 253);
    }
}
