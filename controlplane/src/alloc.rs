//! ClusterIP and NodePort allocation: choosing or validating a value against
//! the set already in use. Pure logic only — it neither reads nor records
//! the used set; backends run it inside their transaction or lock over the
//! stored allocations so that check-and-take is atomic.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

/// The default `--service-node-port-range`, as in Kubernetes.
pub const DEFAULT_NODE_PORT_RANGE: RangeInclusive<u16> = 30000..=32767;

/// Why a value could not be allocated or an allocator could not be built.
///
/// `Display` reads like the API server without the field; use
/// [`AllocError::field_error`] to show it to a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The service CIDR has fewer than 4 addresses.
    #[error("service IP range {cidr} is too small: it needs at least 4 addresses")]
    RangeTooSmall {
        /// The rejected range.
        cidr: IpNet,
    },
    /// A node port range could not be parsed or is unusable.
    #[error("invalid port range {input:?}: {reason}")]
    InvalidPortRange {
        /// The text as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The requested IP is outside the service CIDR.
    #[error("Invalid value: \"{ip}\": provided IP is not in the valid range. The range of valid IPs is {cidr}")]
    OutOfRange {
        /// The requested IP.
        ip: IpAddr,
        /// The service CIDR.
        cidr: IpNet,
    },
    /// The requested IP is the network, broadcast (IPv4) or first address.
    #[error("Invalid value: \"{0}\": provided IP is reserved (the network, broadcast and first addresses of the range cannot be allocated)")]
    Reserved(IpAddr),
    /// The requested IP is already in use.
    #[error("Invalid value: \"{0}\": provided IP is already allocated")]
    Taken(IpAddr),
    /// Every allocatable IP is in use.
    #[error("failed to allocate a service IP from {cidr}: range is full")]
    Exhausted {
        /// The service CIDR.
        cidr: IpNet,
    },
    /// The requested port is outside the node port range.
    #[error("Invalid value: {port}: provided port is not in the valid range. The range of valid ports is {}-{}", .range.start(), .range.end())]
    PortOutOfRange {
        /// The requested port.
        port: u16,
        /// The node port range.
        range: RangeInclusive<u16>,
    },
    /// The requested port is already in use.
    #[error("Invalid value: {0}: provided port is already allocated")]
    PortTaken(u16),
    /// Every port in the range is in use.
    #[error("failed to allocate a node port from {}-{}: range is full", .range.start(), .range.end())]
    PortsExhausted {
        /// The node port range.
        range: RangeInclusive<u16>,
    },
}

impl AllocError {
    /// The error as the API server would show it for `field`, e.g.
    /// `spec.clusterIP: Invalid value: "10.96.0.5": provided IP is already allocated`.
    pub fn field_error(&self, field: &str) -> String {
        format!("{field}: {self}")
    }
}

/// Allocates ClusterIPs from a service CIDR.
///
/// Offset 0 (network address) and offset 1 (kept for the `kubernetes`
/// Service, see [`IpAllocator::kubernetes_service_ip`]) are never handed
/// out, nor the IPv4 broadcast address. Work is proportional to the number
/// of used addresses, never to the size of the range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllocator {
    cidr: IpNet,
}

impl IpAllocator {
    /// An allocator over `cidr` (host bits are cleared: `10.96.0.7/12` is
    /// `10.96.0.0/12`). Ranges with fewer than 4 addresses are refused.
    pub fn new(cidr: IpNet) -> Result<Self, AllocError> {
        let cidr = cidr.trunc();
        if cidr.max_prefix_len() - cidr.prefix_len() < 2 {
            return Err(AllocError::RangeTooSmall { cidr });
        }
        Ok(Self { cidr })
    }

    /// The service CIDR.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// Whether `ip` lies inside the CIDR (reserved addresses included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip)
    }

    /// The first address of the range (`10.96.0.1` for `10.96.0.0/12`),
    /// which [`allocate`](Self::allocate) refuses: the API layer assigns it
    /// to the `kubernetes` Service directly.
    pub fn kubernetes_service_ip(&self) -> IpAddr {
        self.ip_at(1)
    }

    /// Validates `requested` or picks a free IP, using a time-based seed.
    /// See [`allocate_with_seed`](Self::allocate_with_seed).
    pub fn allocate(
        &self,
        used: &BTreeSet<IpAddr>,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, AllocError> {
        self.allocate_with_seed(used, requested, time_seed())
    }

    /// With `requested`, returns it if it is inside the CIDR, not reserved
    /// and not in `used`. Without, scans forward (wrapping) from an offset
    /// derived from `seed` and returns the first allocatable IP not in
    /// `used`. The same inputs always give the same answer. Entries of
    /// `used` outside the range are ignored.
    pub fn allocate_with_seed(
        &self,
        used: &BTreeSet<IpAddr>,
        requested: Option<IpAddr>,
        seed: u64,
    ) -> Result<IpAddr, AllocError> {
        let (lo, hi) = self.allocatable_offsets();
        if let Some(ip) = requested {
            let offset = self.offset_of(ip).ok_or(AllocError::OutOfRange {
                ip,
                cidr: self.cidr,
            })?;
            if offset < lo || offset > hi {
                return Err(AllocError::Reserved(ip));
            }
            if used.contains(&ip) {
                return Err(AllocError::Taken(ip));
            }
            return Ok(ip);
        }

        // `count` cannot overflow: lo is 2, so hi - lo < u128::MAX.
        let count = hi - lo + 1;
        let used_here = used
            .iter()
            .filter_map(|ip| self.offset_of(*ip))
            .filter(|off| (lo..=hi).contains(off))
            .count();
        let used_here = u128::try_from(used_here).unwrap_or(u128::MAX);
        if used_here >= count {
            return Err(AllocError::Exhausted { cidr: self.cidr });
        }
        // At most `used_here` candidates can be taken, so this finds one
        // within `used_here + 1` steps.
        let mut cursor = seed_u128(seed) % count;
        for _ in 0..=used_here {
            let ip = self.ip_at(lo + cursor);
            if !used.contains(&ip) {
                return Ok(ip);
            }
            cursor = if cursor + 1 == count { 0 } else { cursor + 1 };
        }
        Err(AllocError::Exhausted { cidr: self.cidr })
    }

    /// The first and last allocatable offsets from the network address.
    fn allocatable_offsets(&self) -> (u128, u128) {
        match self.cidr {
            IpNet::V4(net) => (2, u128::from(u32::from(net.hostmask())) - 1),
            IpNet::V6(net) => (2, u128::from(net.hostmask())),
        }
    }

    /// `ip`'s offset from the network address, if it is inside the CIDR.
    fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        match (self.cidr, ip) {
            (IpNet::V4(net), IpAddr::V4(v4)) if net.contains(&v4) => {
                Some(u128::from(u32::from(v4) - u32::from(net.network())))
            }
            (IpNet::V6(net), IpAddr::V6(v6)) if net.contains(&v6) => {
                Some(u128::from(v6) - u128::from(net.network()))
            }
            _ => None,
        }
    }

    /// The address at `offset` (callers keep it within the host part).
    fn ip_at(&self, offset: u128) -> IpAddr {
        match self.cidr {
            IpNet::V4(net) => {
                let offset = u32::try_from(offset).unwrap_or(0) & u32::from(net.hostmask());
                IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | offset))
            }
            IpNet::V6(net) => {
                let offset = offset & u128::from(net.hostmask());
                IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | offset))
            }
        }
    }
}

impl fmt::Display for IpAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.cidr.fmt(f)
    }
}

/// Allocates NodePorts from an inclusive port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortAllocator {
    range: RangeInclusive<u16>,
}

impl Default for PortAllocator {
    /// The Kubernetes default range, 30000-32767.
    fn default() -> Self {
        Self {
            range: DEFAULT_NODE_PORT_RANGE,
        }
    }
}

impl PortAllocator {
    /// An allocator over `range`; refuses an empty range or one that
    /// includes port 0.
    pub fn new(range: RangeInclusive<u16>) -> Result<Self, AllocError> {
        let invalid = |reason: &str| AllocError::InvalidPortRange {
            input: format!("{}-{}", range.start(), range.end()),
            reason: reason.to_string(),
        };
        if *range.start() == 0 {
            return Err(invalid("port 0 cannot be allocated"));
        }
        if range.start() > range.end() {
            return Err(invalid("the first port is above the last"));
        }
        Ok(Self { range })
    }

    /// Parses `"<first>-<last>"`, e.g. `"30000-32767"` (surrounding
    /// whitespace allowed), as given to `--service-node-port-range`.
    pub fn parse(text: &str) -> Result<Self, AllocError> {
        let invalid = |reason: String| AllocError::InvalidPortRange {
            input: text.to_string(),
            reason,
        };
        let (first, last) = text
            .trim()
            .split_once('-')
            .ok_or_else(|| invalid("expected <first>-<last>, e.g. 30000-32767".to_string()))?;
        let port = |which: &str, s: &str| {
            s.trim().parse::<u16>().map_err(|_| {
                invalid(format!(
                    "{which} port {:?} is not a number from 1 to 65535",
                    s.trim()
                ))
            })
        };
        let (first, last) = (port("first", first)?, port("last", last)?);
        Self::new(first..=last).map_err(|e| match e {
            AllocError::InvalidPortRange { reason, .. } => invalid(reason),
            other => other,
        })
    }

    /// The port range.
    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    /// Whether `port` lies inside the range.
    pub fn contains(&self, port: u16) -> bool {
        self.range.contains(&port)
    }

    /// Validates `requested` or picks a free port, using a time-based seed.
    /// See [`allocate_with_seed`](Self::allocate_with_seed).
    pub fn allocate(
        &self,
        used: &BTreeSet<u16>,
        requested: Option<u16>,
    ) -> Result<u16, AllocError> {
        self.allocate_with_seed(used, requested, time_seed())
    }

    /// With `requested`, returns it if it is in the range and not in `used`.
    /// Without, scans forward (wrapping) from an offset derived from `seed`
    /// and returns the first port not in `used`. Deterministic in its inputs.
    pub fn allocate_with_seed(
        &self,
        used: &BTreeSet<u16>,
        requested: Option<u16>,
        seed: u64,
    ) -> Result<u16, AllocError> {
        if let Some(port) = requested {
            if !self.contains(port) {
                return Err(AllocError::PortOutOfRange {
                    port,
                    range: self.range.clone(),
                });
            }
            if used.contains(&port) {
                return Err(AllocError::PortTaken(port));
            }
            return Ok(port);
        }

        let (lo, hi) = (u32::from(*self.range.start()), u32::from(*self.range.end()));
        let count = hi - lo + 1;
        let used_here = used.range(self.range.clone()).count();
        if used_here >= count as usize {
            return Err(AllocError::PortsExhausted {
                range: self.range.clone(),
            });
        }
        let mut cursor = u32::try_from(seed_u128(seed) % u128::from(count)).unwrap_or(0);
        for _ in 0..=used_here {
            let port = u16::try_from(lo + cursor).unwrap_or(*self.range.start());
            if !used.contains(&port) {
                return Ok(port);
            }
            cursor = (cursor + 1) % count;
        }
        Err(AllocError::PortsExhausted {
            range: self.range.clone(),
        })
    }
}

impl FromStr for PortAllocator {
    type Err = AllocError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for PortAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range.start(), self.range.end())
    }
}

/// A seed from the wall clock; only spreads picks, never needed for safety.
fn time_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// splitmix64: spreads nearby seeds over the whole range.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 128 well-mixed bits from `seed`, enough to start anywhere in an IPv6 range.
fn seed_u128(seed: u64) -> u128 {
    (u128::from(mix(seed)) << 64) | u128::from(mix(seed ^ 0xD6E8_FEB8_6659_FD93))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("valid IP")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("valid CIDR")
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| ip(s)).collect()
    }

    fn alloc(cidr: &str) -> IpAllocator {
        IpAllocator::new(net(cidr)).expect("usable CIDR")
    }

    #[test]
    fn refuses_ranges_below_four_addresses() {
        for cidr in ["10.0.0.0/31", "10.0.0.0/32", "fd00::/127", "fd00::/128"] {
            assert_eq!(
                IpAllocator::new(net(cidr)),
                Err(AllocError::RangeTooSmall { cidr: net(cidr) })
            );
        }
        assert!(IpAllocator::new(net("10.0.0.0/30")).is_ok());
        assert!(IpAllocator::new(net("fd00::/126")).is_ok());
        assert_eq!(
            AllocError::RangeTooSmall {
                cidr: net("10.0.0.0/31")
            }
            .to_string(),
            "service IP range 10.0.0.0/31 is too small: it needs at least 4 addresses"
        );
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(alloc("10.96.0.7/12").cidr(), net("10.96.0.0/12"));
        assert_eq!(alloc("10.96.0.7/12").to_string(), "10.96.0.0/12");
    }

    #[test]
    fn contains_and_kubernetes_service_ip() {
        let a = alloc("10.96.0.0/12");
        assert!(a.contains(ip("10.96.0.0")));
        assert!(a.contains(ip("10.111.255.255")));
        assert!(!a.contains(ip("10.112.0.0")));
        assert!(!a.contains(ip("fd00::1")));
        assert_eq!(a.kubernetes_service_ip(), ip("10.96.0.1"));
        assert_eq!(
            alloc("fd00:10::/108").kubernetes_service_ip(),
            ip("fd00:10::1")
        );
    }

    #[test]
    fn requested_ip_is_granted_when_free() {
        let a = alloc("10.96.0.0/12");
        let used = ips(&["10.96.0.10"]);
        assert_eq!(
            a.allocate(&used, Some(ip("10.96.0.5"))),
            Ok(ip("10.96.0.5"))
        );
        assert_eq!(
            a.allocate(&used, Some(ip("10.111.255.254"))),
            Ok(ip("10.111.255.254"))
        );
    }

    #[test]
    fn requested_ip_errors_read_like_the_api_server() {
        let a = alloc("10.96.0.0/12");
        let used = ips(&["10.96.0.5"]);

        let taken = a.allocate(&used, Some(ip("10.96.0.5"))).unwrap_err();
        assert_eq!(taken, AllocError::Taken(ip("10.96.0.5")));
        assert_eq!(
            taken.field_error("spec.clusterIP"),
            r#"spec.clusterIP: Invalid value: "10.96.0.5": provided IP is already allocated"#
        );

        let outside = a.allocate(&used, Some(ip("10.1.2.3"))).unwrap_err();
        assert_eq!(
            outside,
            AllocError::OutOfRange {
                ip: ip("10.1.2.3"),
                cidr: net("10.96.0.0/12")
            }
        );
        assert_eq!(
            outside.field_error("spec.clusterIP"),
            r#"spec.clusterIP: Invalid value: "10.1.2.3": provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"#
        );

        let other_family = a.allocate(&used, Some(ip("fd00::5"))).unwrap_err();
        assert!(matches!(other_family, AllocError::OutOfRange { .. }));
    }

    #[test]
    fn network_first_and_broadcast_are_reserved() {
        let a = alloc("10.96.0.0/12");
        for reserved in ["10.96.0.0", "10.96.0.1", "10.111.255.255"] {
            let err = a
                .allocate(&BTreeSet::new(), Some(ip(reserved)))
                .unwrap_err();
            assert_eq!(err, AllocError::Reserved(ip(reserved)));
            assert!(err.field_error("spec.clusterIP").starts_with(&format!(
                r#"spec.clusterIP: Invalid value: "{reserved}": provided IP is reserved"#
            )));
        }
    }

    #[test]
    fn ipv6_has_no_broadcast_but_keeps_network_and_first() {
        let a = alloc("fd00::/126");
        let none = BTreeSet::new();
        assert_eq!(
            a.allocate(&none, Some(ip("fd00::"))),
            Err(AllocError::Reserved(ip("fd00::")))
        );
        assert_eq!(
            a.allocate(&none, Some(ip("fd00::1"))),
            Err(AllocError::Reserved(ip("fd00::1")))
        );
        assert_eq!(a.allocate(&none, Some(ip("fd00::3"))), Ok(ip("fd00::3")));
        let mut got = BTreeSet::new();
        for seed in 0..2 {
            let next = a
                .allocate_with_seed(&got, None, seed)
                .expect("free address");
            got.insert(next);
        }
        assert_eq!(got, ips(&["fd00::2", "fd00::3"]));
        assert_eq!(
            a.allocate_with_seed(&got, None, 7),
            Err(AllocError::Exhausted {
                cidr: net("fd00::/126")
            })
        );
    }

    #[test]
    fn small_range_is_exhausted_after_every_usable_address() {
        // /29: .0 network, .1 kubernetes, .7 broadcast; .2-.6 usable.
        let a = alloc("10.0.0.0/29");
        let mut used = ips(&["192.168.0.1", "fd00::2"]); // ignored: not in range
        for seed in 0..5 {
            let next = a
                .allocate_with_seed(&used, None, seed)
                .expect("free address");
            assert!(!used.contains(&next));
            used.insert(next);
        }
        let handed_out: BTreeSet<IpAddr> =
            used.iter().copied().filter(|i| a.contains(*i)).collect();
        assert_eq!(
            handed_out,
            ips(&["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"])
        );
        let full = a.allocate_with_seed(&used, None, 99).unwrap_err();
        assert_eq!(
            full,
            AllocError::Exhausted {
                cidr: net("10.0.0.0/29")
            }
        );
        assert_eq!(
            full.field_error("spec.clusterIP"),
            "spec.clusterIP: failed to allocate a service IP from 10.0.0.0/29: range is full"
        );
        // A request still gets the precise error, not "full".
        assert_eq!(
            a.allocate(&used, Some(ip("10.0.0.4"))),
            Err(AllocError::Taken(ip("10.0.0.4")))
        );
    }

    #[test]
    fn scan_wraps_around_to_the_only_free_address() {
        let a = alloc("10.0.0.0/29");
        let used = ips(&["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]);
        for seed in 0..64 {
            assert_eq!(a.allocate_with_seed(&used, None, seed), Ok(ip("10.0.0.2")));
        }
    }

    #[test]
    fn seeded_allocation_is_deterministic_and_spread() {
        let a = alloc("10.96.0.0/12");
        let used = ips(&["10.96.0.10"]);
        let first: Vec<IpAddr> = (0..100)
            .map(|s| a.allocate_with_seed(&used, None, s).expect("free"))
            .collect();
        let again: Vec<IpAddr> = (0..100)
            .map(|s| a.allocate_with_seed(&used, None, s).expect("free"))
            .collect();
        assert_eq!(first, again);
        let distinct: BTreeSet<IpAddr> = first.iter().copied().collect();
        assert!(
            distinct.len() > 90,
            "seeds should spread picks: {}",
            distinct.len()
        );
        for pick in &first {
            assert!(a.contains(*pick));
            assert_ne!(*pick, ip("10.96.0.0"));
            assert_ne!(*pick, ip("10.96.0.1"));
            assert_ne!(*pick, ip("10.111.255.255"));
        }
    }

    #[test]
    fn unseeded_allocation_picks_a_free_address() {
        let a = alloc("10.0.0.0/30");
        assert_eq!(a.allocate(&BTreeSet::new(), None), Ok(ip("10.0.0.2")));
    }

    #[test]
    fn huge_ipv6_ranges_allocate_without_walking_the_range() {
        for cidr in ["fd00::/64", "::/0"] {
            let a = alloc(cidr);
            let seed = 42;
            let first = a
                .allocate_with_seed(&BTreeSet::new(), None, seed)
                .expect("free");
            // Occupy a long run starting at the seed's pick: the scan must step past it.
            let IpAddr::V6(start) = first else {
                panic!("expected IPv6, got {first}");
            };
            let used: BTreeSet<IpAddr> = (0..10_000u128)
                .map(|i| IpAddr::V6(Ipv6Addr::from(u128::from(start).wrapping_add(i))))
                .filter(|i| a.contains(*i))
                .collect();
            let next = a.allocate_with_seed(&used, None, seed).expect("free");
            assert!(a.contains(next));
            assert!(!used.contains(&next));
            assert_eq!(
                a.allocate(&used, Some(next)),
                Ok(next),
                "requested IPv6 address is granted"
            );
        }
        assert!(matches!(
            alloc("fd00::/64").allocate(&BTreeSet::new(), Some(ip("10.0.0.5"))),
            Err(AllocError::OutOfRange { .. })
        ));
    }

    #[test]
    fn default_port_range_is_kubernetes() {
        let p = PortAllocator::default();
        assert_eq!(p.range(), &(30000..=32767));
        assert_eq!(p.to_string(), "30000-32767");
        assert!(p.contains(30000) && p.contains(32767));
        assert!(!p.contains(29999) && !p.contains(32768));
    }

    #[test]
    fn port_range_parsing() {
        assert_eq!(
            PortAllocator::parse("30000-32767"),
            Ok(PortAllocator::default())
        );
        assert_eq!(
            " 1000 - 1000 "
                .parse::<PortAllocator>()
                .map(|p| p.to_string()),
            Ok("1000-1000".to_string())
        );
        let cases = [
            ("", "expected <first>-<last>"),
            ("30000", "expected <first>-<last>"),
            (
                "a-32767",
                r#"first port "a" is not a number from 1 to 65535"#,
            ),
            ("30000-", r#"last port "" is not a number from 1 to 65535"#),
            (
                "30000-70000",
                r#"last port "70000" is not a number from 1 to 65535"#,
            ),
            ("-5-10", r#"first port "" is not a number"#),
            ("0-100", "port 0 cannot be allocated"),
            ("32767-30000", "the first port is above the last"),
        ];
        for (input, reason) in cases {
            let err = PortAllocator::parse(input).unwrap_err();
            let AllocError::InvalidPortRange {
                input: got,
                reason: why,
            } = &err
            else {
                panic!("{input:?}: unexpected error {err:?}");
            };
            assert_eq!(got, input);
            assert!(why.contains(reason), "{input:?}: {why}");
            assert!(err
                .to_string()
                .starts_with(&format!("invalid port range {input:?}: ")));
        }
        assert!(PortAllocator::new(0..=10).is_err());
    }

    #[test]
    fn requested_port_errors_read_like_the_api_server() {
        let p = PortAllocator::default();
        let used: BTreeSet<u16> = [30080].into();
        assert_eq!(p.allocate(&used, Some(30081)), Ok(30081));

        let taken = p.allocate(&used, Some(30080)).unwrap_err();
        assert_eq!(taken, AllocError::PortTaken(30080));
        assert_eq!(
            taken.field_error("spec.ports[0].nodePort"),
            "spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"
        );

        let outside = p.allocate(&used, Some(80)).unwrap_err();
        assert_eq!(
            outside,
            AllocError::PortOutOfRange {
                port: 80,
                range: 30000..=32767
            }
        );
        assert_eq!(
            outside.field_error("spec.ports[1].nodePort"),
            "spec.ports[1].nodePort: Invalid value: 80: provided port is not in the valid range. The range of valid ports is 30000-32767"
        );
    }

    #[test]
    fn ports_exhaust_and_wrap() {
        let p = PortAllocator::parse("30000-30004").expect("range");
        let mut used: BTreeSet<u16> = [80, 40000].into(); // outside: ignored
        for seed in 0..5 {
            let port = p.allocate_with_seed(&used, None, seed).expect("free port");
            assert!(p.contains(port) && !used.contains(&port));
            used.insert(port);
        }
        let full = p.allocate_with_seed(&used, None, 5).unwrap_err();
        assert_eq!(
            full,
            AllocError::PortsExhausted {
                range: 30000..=30004
            }
        );
        assert_eq!(
            full.field_error("spec.ports[0].nodePort"),
            "spec.ports[0].nodePort: failed to allocate a node port from 30000-30004: range is full"
        );

        let only_first_free: BTreeSet<u16> = (30001..=30004).collect();
        for seed in 0..64 {
            assert_eq!(
                p.allocate_with_seed(&only_first_free, None, seed),
                Ok(30000)
            );
        }
    }

    #[test]
    fn seeded_port_allocation_is_deterministic() {
        let p = PortAllocator::default();
        let used = BTreeSet::new();
        let picks: Vec<u16> = (0..50)
            .map(|s| p.allocate_with_seed(&used, None, s).expect("free"))
            .collect();
        let again: Vec<u16> = (0..50)
            .map(|s| p.allocate_with_seed(&used, None, s).expect("free"))
            .collect();
        assert_eq!(picks, again);
        assert!(picks.iter().collect::<BTreeSet<_>>().len() > 40);
        assert!(p.allocate(&used, None).is_ok_and(|port| p.contains(port)));

        let whole = PortAllocator::new(1..=u16::MAX).expect("range");
        let all_but_max: BTreeSet<u16> = (1..u16::MAX).collect();
        assert_eq!(
            whole.allocate_with_seed(&all_but_max, None, 3),
            Ok(u16::MAX)
        );
    }
}
