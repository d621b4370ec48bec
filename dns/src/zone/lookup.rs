//! Answering a question from the zone, per the Kubernetes DNS specification:
//! records are computed here from the zone's index, never stored. Decides
//! NOERROR vs NODATA vs NXDOMAIN and adds the SOA to negative answers; does
//! not encode messages or forward anything.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::names::{dashed, parse_dashed, parse_reverse};
use super::{Addr, Namespace, Svc, SvcKind, Zone};

/// The schema version served at `dns-version.<zone>` (spec 1.1.0).
const SCHEMA_VERSION: &str = "1.1.0";

/// An authoritative answer from the zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `NoError` (with records, or empty for NODATA) or `NXDomain`.
    pub rcode: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The authority section: the zone's SOA for negative answers.
    pub authority: Vec<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

/// What a name below the origin turned out to be.
enum Found {
    Records(Vec<Record>, Vec<Record>),
    /// The name exists but has no record of the asked type.
    NoData,
    NxDomain,
}

impl Zone {
    /// Answers `qtype` at `qname`, or `None` when the name is not this
    /// zone's to answer (outside the cluster domain, or a reverse name of an
    /// IP no Service owns): the caller forwards those. Case-insensitive.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let lower = qname.to_lowercase();
        let found = if self.origin.zone_of(&lower) {
            self.lookup_in_zone(qname, &lower, qtype)
        } else {
            let ip = parse_reverse(&lower)?;
            let owners = self.ptr.get(&ip)?;
            match qtype {
                RecordType::PTR => Found::Records(
                    owners
                        .iter()
                        .filter_map(|o| self.ptr_target(&o.ns, &o.svc, ip))
                        .map(|t| self.record(qname, RData::PTR(PTR(t))))
                        .collect(),
                    Vec::new(),
                ),
                _ => Found::NoData,
            }
        };
        Some(self.answer(found))
    }

    fn lookup_in_zone(&self, qname: &Name, lower: &Name, qtype: RecordType) -> Found {
        let below = usize::from(lower.num_labels() - self.origin.num_labels());
        let mut labels: Vec<&str> = Vec::with_capacity(below);
        for label in lower.iter().take(below) {
            let Ok(label) = std::str::from_utf8(label) else {
                return Found::NxDomain;
            };
            labels.push(label);
        }
        labels.reverse(); // from the zone down: ["svc", ns, svc, ...]
        match labels.as_slice() {
            [] => match qtype {
                RecordType::SOA => Found::Records(vec![self.soa_record()], Vec::new()),
                RecordType::NS => {
                    let ns = RData::NS(NS(self.child(&["dns", "ns"])));
                    Found::Records(vec![self.record(qname, ns)], Vec::new())
                }
                _ => Found::NoData,
            },
            ["dns-version"] => match qtype {
                RecordType::TXT => {
                    let txt = RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_string()]));
                    Found::Records(vec![self.record(qname, txt)], Vec::new())
                }
                _ => Found::NoData,
            },
            ["svc"] | ["pod"] => Found::NoData,
            ["svc", ns] => match self.namespaces.get(*ns) {
                Some(n) if n.services.values().any(|s| s.kind.is_some()) => Found::NoData,
                _ => Found::NxDomain,
            },
            ["pod", ns] => match self.namespaces.get(*ns) {
                Some(n) if !n.pods.is_empty() => Found::NoData,
                _ => Found::NxDomain,
            },
            ["pod", ns, ip] => match parse_dashed(ip) {
                Some(ip) if self.pod_ips.get(&ip).is_some_and(|n| **n == **ns) => {
                    self.addresses(qname, qtype, [ip])
                }
                _ => Found::NxDomain,
            },
            ["svc", ns, svc, rest @ ..] => match self.service(ns, svc) {
                Some((n, svc)) => self.lookup_service(qname, qtype, n, svc, rest),
                None => Found::NxDomain,
            },
            _ => Found::NxDomain,
        }
    }

    /// Names at and below `<svc>.<ns>.svc.<zone>`; `rest` is what is left
    /// below the Service, from the top.
    fn lookup_service(
        &self,
        qname: &Name,
        qtype: RecordType,
        ns: &Namespace,
        svc: &Svc,
        rest: &[&str],
    ) -> Found {
        let Some(kind) = &svc.kind else {
            return Found::NxDomain;
        };
        match (kind, rest) {
            (SvcKind::ExternalName(target), []) => {
                let cname = self.record(qname, RData::CNAME(CNAME(target.clone())));
                Found::Records(vec![cname], Vec::new())
            }
            (SvcKind::ExternalName(_), _) => Found::NxDomain,
            (SvcKind::ClusterIp(ips), []) => self.addresses(qname, qtype, ips.iter().copied()),
            (SvcKind::Headless, []) => {
                self.addresses(qname, qtype, unique(svc.ready_addrs().map(|a| a.ip)))
            }
            (SvcKind::Headless, [host]) if !host.starts_with('_') => {
                let ips: Vec<IpAddr> = unique(
                    svc.ready_addrs()
                        .filter(|a| self.host_label(ns, svc, a) == *host)
                        .map(|a| a.ip),
                );
                if ips.is_empty() {
                    Found::NxDomain
                } else {
                    self.addresses(qname, qtype, ips)
                }
            }
            (_, [proto]) => {
                if svc.ports.iter().any(|p| *p.proto == **proto) {
                    Found::NoData
                } else {
                    Found::NxDomain
                }
            }
            (_, [proto, port]) => self.srv(qname, qtype, ns, svc, kind, proto, port),
            _ => Found::NxDomain,
        }
    }

    /// SRV records at `_<port>._<proto>.<svc>.<ns>.svc.<zone>`.
    #[allow(clippy::too_many_arguments)]
    fn srv(
        &self,
        qname: &Name,
        qtype: RecordType,
        ns: &Namespace,
        svc: &Svc,
        kind: &SvcKind,
        proto: &str,
        port: &str,
    ) -> Found {
        let matches = |p: &super::Port| *p.proto == *proto && *p.name == *port;
        let Some(svc_port) = svc.ports.iter().find(|p| matches(p)) else {
            return Found::NxDomain;
        };
        if qtype != RecordType::SRV && qtype != RecordType::ANY {
            return Found::NoData;
        }
        let svc_name = self.child(&["svc", &ns.name, &svc.name]);
        let mut answers = Vec::new();
        let mut extra = Vec::new();
        match kind {
            SvcKind::ClusterIp(ips) => {
                let srv = SRV::new(0, 100, svc_port.port, svc_name.clone());
                answers.push(self.record(qname, RData::SRV(srv)));
                extra.extend(ips.iter().map(|ip| self.address_record(&svc_name, *ip)));
            }
            _ => {
                let targets: Vec<(u16, &Addr)> = svc
                    .subsets
                    .iter()
                    .filter_map(|s| s.ports.iter().find(|p| matches(p)).map(|p| (s, p.port)))
                    .flat_map(|(s, port)| {
                        s.addrs.iter().filter(|a| a.ready).map(move |a| (port, a))
                    })
                    .collect();
                let weight = u16::try_from(100 / targets.len().max(1))
                    .unwrap_or(1)
                    .max(1);
                for (target_port, addr) in targets {
                    let host = self.host_label(ns, svc, addr);
                    let target = svc_name
                        .prepend_label(host.as_bytes())
                        .unwrap_or(svc_name.clone());
                    extra.push(self.address_record(&target, addr.ip));
                    let srv = SRV::new(0, weight, target_port, target);
                    answers.push(self.record(qname, RData::SRV(srv)));
                }
            }
        }
        if answers.is_empty() {
            Found::NoData
        } else {
            Found::Records(answers, extra)
        }
    }

    /// A/AAAA records for `ips` at `qname`; NODATA when none matches `qtype`.
    fn addresses(
        &self,
        qname: &Name,
        qtype: RecordType,
        ips: impl IntoIterator<Item = IpAddr>,
    ) -> Found {
        let want = |ip: &IpAddr| match qtype {
            RecordType::A => ip.is_ipv4(),
            RecordType::AAAA => ip.is_ipv6(),
            RecordType::ANY => true,
            _ => false,
        };
        let records: Vec<Record> = ips
            .into_iter()
            .filter(want)
            .map(|ip| self.address_record(qname, ip))
            .collect();
        if records.is_empty() {
            Found::NoData
        } else {
            Found::Records(records, Vec::new())
        }
    }

    /// The label naming an endpoint under a headless Service: the pod's
    /// hostname when its subdomain is this Service, else the dashed IP.
    fn host_label(&self, ns: &Namespace, svc: &Svc, addr: &Addr) -> String {
        let named = addr
            .pod
            .as_deref()
            .and_then(|p| ns.pods.get(p))
            .and_then(|p| p.host.as_deref())
            .filter(|(_, sub)| **sub == *svc.name)
            .map(|(host, _)| host.to_string());
        named.unwrap_or_else(|| dashed(addr.ip))
    }

    /// The name a PTR for `ip` owned by `ns/svc` points at.
    fn ptr_target(&self, ns: &str, svc: &str, ip: IpAddr) -> Option<Name> {
        let (n, s) = self.service(ns, svc)?;
        let svc_name = self.child(&["svc", ns, svc]);
        match s.kind.as_ref()? {
            SvcKind::ClusterIp(_) => Some(svc_name),
            SvcKind::Headless => {
                let addr = s.ready_addrs().find(|a| a.ip == ip)?;
                svc_name
                    .prepend_label(self.host_label(n, s, addr).as_bytes())
                    .ok()
            }
            SvcKind::ExternalName(_) => None,
        }
    }

    fn service(&self, ns: &str, svc: &str) -> Option<(&Namespace, &Svc)> {
        let n = self.namespaces.get(ns)?;
        Some((n, n.services.get(svc)?))
    }

    /// `labels` (from the zone down) below the origin.
    fn child(&self, labels: &[&str]) -> Name {
        labels.iter().fold(self.origin.clone(), |name, l| {
            name.prepend_label(l.as_bytes()).unwrap_or(name)
        })
    }

    fn record(&self, name: &Name, data: RData) -> Record {
        Record::from_rdata(name.clone(), self.ttl, data)
    }

    fn address_record(&self, name: &Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => self.record(name, RData::A(A(v4))),
            IpAddr::V6(v6) => self.record(name, RData::AAAA(AAAA(v6))),
        }
    }

    /// The zone's SOA record (its minimum is the negative TTL).
    pub fn soa_record(&self) -> Record {
        let soa = SOA::new(
            self.child(&["dns", "ns"]),
            self.child(&["hostmaster"]),
            self.serial,
            7200,
            1800,
            86400,
            self.ttl,
        );
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    fn answer(&self, found: Found) -> Answer {
        match found {
            Found::Records(answers, additionals) => Answer {
                rcode: ResponseCode::NoError,
                answers,
                authority: Vec::new(),
                additionals,
            },
            Found::NoData | Found::NxDomain => Answer {
                rcode: if matches!(found, Found::NxDomain) {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                },
                answers: Vec::new(),
                authority: vec![self.soa_record()],
                additionals: Vec::new(),
            },
        }
    }
}

fn unique(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = ips.into_iter().collect();
    ips.sort();
    ips.dedup();
    ips
}
