//! A Service's IP families as kube-apiserver settles them: defaulting of
//! `spec.ipFamilyPolicy`, `spec.ipFamilies` and `spec.clusterIPs`, their
//! validation against each other and against the cluster's service ranges,
//! and the upgrade/downgrade rules of an update. Pure: it says which
//! address each family should get (kept, requested or to allocate); the
//! registry allocates and claims.

use std::net::IpAddr;

/// `IPv4` or `IPv6`, as `spec.ipFamilies` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The API's name.
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv6() {
            IpFamily::V6
        } else {
            IpFamily::V4
        }
    }

    fn parse(s: &str) -> Option<IpFamily> {
        match s {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }

    fn other(self) -> IpFamily {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

pub const SINGLE_STACK: &str = "SingleStack";
pub const PREFER_DUAL_STACK: &str = "PreferDualStack";
pub const REQUIRE_DUAL_STACK: &str = "RequireDualStack";

/// What a family's address will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The stored Service holds it already: no new claim.
    Kept(IpAddr),
    /// Asked for by the user: validate and claim.
    Requested(IpAddr),
    /// Pick a free one.
    Allocate,
}

/// The settled fields of a Service (not ExternalName).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub policy: &'static str,
    pub families: Vec<IpFamily>,
    /// `clusterIP: None`: families but no addresses.
    pub headless: bool,
    /// One per family, in order (empty when headless).
    pub ips: Vec<Want>,
}

/// The requested fields of a Service, as strings from its spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub cluster_ip: Option<String>,
    pub cluster_ips: Vec<String>,
    pub families: Vec<String>,
    pub policy: Option<String>,
}

impl Fields {
    /// The fields of a Service spec.
    pub fn of(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Fields {
        Fields {
            cluster_ip: spec.cluster_ip.clone().filter(|s| !s.is_empty()),
            cluster_ips: spec
                .cluster_ips
                .iter()
                .flatten()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            families: spec.ip_families.clone().unwrap_or_default(),
            policy: spec.ip_family_policy.clone(),
        }
    }
}

/// A field error: (path, reason).
pub type FieldErr = (String, String);

fn err(path: impl Into<String>, reason: impl Into<String>) -> FieldErr {
    (path.into(), reason.into())
}

/// Settles `want` (the request) against `old` (the stored Service's
/// fields, on an update) and `cluster` (the families of the service
/// ranges, primary first), as kube-apiserver's defaulting, validation and
/// `initIPFamilyFields` do.
pub fn plan(want: &Fields, old: Option<&Fields>, cluster: &[IpFamily]) -> Result<Plan, FieldErr> {
    // clusterIP and clusterIPs: one defaults the other; they must agree.
    let mut ips: Vec<String> = want.cluster_ips.clone();
    match (&want.cluster_ip, ips.first()) {
        (Some(ip), None) => ips.push(ip.clone()),
        (Some(ip), Some(first)) if ip != first => {
            return Err(err(
                "spec.clusterIPs[0]",
                format!("Invalid value: {first:?}: must match `clusterIP` {ip:?}"),
            ))
        }
        _ => {}
    }
    let old_ips: Vec<String> = old.map(settled_ips).unwrap_or_default();
    // An update that leaves the addresses out keeps them (as an apply of
    // the same manifest would); one that gives the primary only keeps the
    // secondary unless the policy asks for a downgrade (below).
    let mut kept_secondary = false;
    if old.is_some() {
        if ips.is_empty() {
            ips = old_ips.clone();
        } else if ips.len() == 1 && old_ips.len() == 2 && ips[0] == old_ips[0] {
            ips.push(old_ips[1].clone());
            kept_secondary = true;
        }
    }
    let headless = ips.first().map(String::as_str) == Some("None");
    if headless && ips.len() > 1 {
        return Err(err(
            "spec.clusterIPs[1]",
            format!(
                "Invalid value: {:?}: must be empty when the first value is 'None'",
                ips[1]
            ),
        ));
    }
    if ips.len() > 2 {
        return Err(err(
            "spec.clusterIPs",
            "Invalid value: may specify no more than 2 values (one per IP family)",
        ));
    }
    let mut parsed: Vec<IpAddr> = Vec::new();
    if !headless {
        for (i, text) in ips.iter().enumerate() {
            let ip = text.parse::<IpAddr>().map_err(|_| {
                let path = if i == 0 {
                    "spec.clusterIP".to_string()
                } else {
                    format!("spec.clusterIPs[{i}]")
                };
                err(
                    path,
                    format!("Invalid value: {text:?}: must be a valid IP address or \"None\""),
                )
            })?;
            if parsed.iter().any(|p| IpFamily::of(*p) == IpFamily::of(ip)) {
                return Err(err(
                    format!("spec.clusterIPs[{i}]"),
                    format!("Invalid value: {text:?}: may specify no more than one IP for each IP family"),
                ));
            }
            parsed.push(ip);
        }
    }

    // ipFamilies: known names, no repeats, matching the addresses.
    if want.families.len() > 2 {
        return Err(err(
            "spec.ipFamilies",
            "Invalid value: may specify no more than 2 values",
        ));
    }
    let mut families: Vec<IpFamily> = Vec::new();
    for (i, f) in want.families.iter().enumerate() {
        let path = format!("spec.ipFamilies[{i}]");
        let fam = IpFamily::parse(f).ok_or_else(|| {
            err(
                &path,
                format!("Unsupported value: {f:?}: supported values: \"IPv4\", \"IPv6\""),
            )
        })?;
        if families.contains(&fam) {
            return Err(err(path, format!("Duplicate value: {f:?}")));
        }
        families.push(fam);
    }
    for (i, ip) in parsed.iter().enumerate() {
        match families.get(i) {
            Some(f) if *f != IpFamily::of(*ip) => {
                return Err(err(
                    format!("spec.clusterIPs[{i}]"),
                    format!(
                        "Invalid value: \"{ip}\": expected an {} value as indicated by `ipFamilies[{i}]`",
                        f.name()
                    ),
                ))
            }
            Some(_) => {}
            None => families.push(IpFamily::of(*ip)),
        }
    }

    // ipFamilyPolicy: given, else the stored one, else from the counts.
    let policy = match want.policy.as_deref().or(old.and_then(|o| o.policy.as_deref())) {
        Some(SINGLE_STACK) => SINGLE_STACK,
        Some(PREFER_DUAL_STACK) => PREFER_DUAL_STACK,
        Some(REQUIRE_DUAL_STACK) => REQUIRE_DUAL_STACK,
        Some(other) => {
            return Err(err(
                "spec.ipFamilyPolicy",
                format!("Unsupported value: {other:?}: supported values: \"SingleStack\", \"PreferDualStack\", \"RequireDualStack\""),
            ))
        }
        None if families.len() == 2 || parsed.len() == 2 => REQUIRE_DUAL_STACK,
        None => SINGLE_STACK,
    };
    // A downgrade: a SingleStack Service drops the secondary it had.
    if policy == SINGLE_STACK && kept_secondary {
        parsed.pop();
        if families.len() == 2 && want.families.len() < 2 {
            families.pop();
        }
    }
    if policy == SINGLE_STACK && (families.len() == 2 || parsed.len() == 2) {
        return Err(err(
            "spec.ipFamilyPolicy",
            "Invalid value: \"SingleStack\": must be 'RequireDualStack' or 'PreferDualStack' when multiple IP families are specified",
        ));
    }

    // Against the cluster.
    if policy == REQUIRE_DUAL_STACK && cluster.len() < 2 {
        return Err(err(
            "spec.ipFamilyPolicy",
            "Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services",
        ));
    }
    for (i, f) in families.iter().enumerate() {
        if !cluster.contains(f) {
            return Err(err(
                format!("spec.ipFamilies[{i}]"),
                format!(
                    "Invalid value: {:?}: ipfamily {} is not configured on cluster",
                    f.name(),
                    f.name()
                ),
            ));
        }
    }
    // A PreferDualStack Service keeps what it has when the cluster's
    // families change (kube-apiserver neither upgrades nor downgrades it
    // on its own).
    let prefer_kept = policy == PREFER_DUAL_STACK
        && old.is_some_and(|o| o.policy.as_deref() == Some(PREFER_DUAL_STACK))
        && ips == old_ips
        && !headless
        && !parsed.is_empty();
    if families.is_empty() {
        families.push(cluster[0]);
    }
    if policy != SINGLE_STACK && families.len() == 1 && cluster.len() == 2 && !prefer_kept {
        families.push(families[0].other());
    }

    // Immutability: the primary address and family stay.
    if let Some(o) = old {
        if let (Some(before), Some(now)) = (old_ips.first(), ips.first()) {
            if before != now {
                return Err(err(
                    "spec.clusterIP",
                    format!("Invalid value: {now:?}: field is immutable"),
                ));
            }
        }
        if let Some(before) = o.families.first() {
            if families.first().map(|f| f.name()) != Some(before.as_str()) && !before.is_empty() {
                return Err(err(
                    "spec.ipFamilies[0]",
                    format!(
                        "Invalid value: {:?}: may not change once set",
                        families[0].name()
                    ),
                ));
            }
        }
        if let (Some(before), Some(now)) = (old_ips.get(1), parsed.get(1)) {
            if before != &now.to_string() {
                return Err(err(
                    "spec.clusterIPs[1]",
                    format!("Invalid value: \"{now}\": may not change once set"),
                ));
            }
        }
    }

    let wants = if headless {
        Vec::new()
    } else {
        families
            .iter()
            .enumerate()
            .map(|(i, _)| match parsed.get(i) {
                Some(ip) if old_ips.get(i) == Some(&ip.to_string()) => Want::Kept(*ip),
                Some(ip) => Want::Requested(*ip),
                None => Want::Allocate,
            })
            .collect()
    };
    Ok(Plan {
        policy,
        families,
        headless,
        ips: wants,
    })
}

/// A stored Service's addresses: `clusterIPs`, else `[clusterIP]`.
fn settled_ips(f: &Fields) -> Vec<String> {
    if f.cluster_ips.is_empty() {
        f.cluster_ip.iter().cloned().collect()
    } else {
        f.cluster_ips.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use IpFamily::{V4, V6};

    fn f(ip: Option<&str>, ips: &[&str], families: &[&str], policy: Option<&str>) -> Fields {
        Fields {
            cluster_ip: ip.map(Into::into),
            cluster_ips: ips.iter().map(|s| s.to_string()).collect(),
            families: families.iter().map(|s| s.to_string()).collect(),
            policy: policy.map(Into::into),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const DUAL: &[IpFamily] = &[V4, V6];
    const DUAL6: &[IpFamily] = &[V6, V4];
    const SINGLE: &[IpFamily] = &[V4];

    #[test]
    fn creates_default_as_kube_apiserver() {
        use Want::*;
        // (request, cluster) -> (policy, families, ips)
        type Case = (
            Fields,
            &'static [IpFamily],
            &'static str,
            Vec<IpFamily>,
            Vec<Want>,
        );
        let cases: Vec<Case> = vec![
            (
                f(None, &[], &[], None),
                SINGLE,
                SINGLE_STACK,
                vec![V4],
                vec![Allocate],
            ),
            (
                f(None, &[], &[], None),
                DUAL,
                SINGLE_STACK,
                vec![V4],
                vec![Allocate],
            ),
            (
                f(None, &[], &[], None),
                DUAL6,
                SINGLE_STACK,
                vec![V6],
                vec![Allocate],
            ),
            (
                f(None, &[], &[], Some(PREFER_DUAL_STACK)),
                SINGLE,
                PREFER_DUAL_STACK,
                vec![V4],
                vec![Allocate],
            ),
            (
                f(None, &[], &[], Some(PREFER_DUAL_STACK)),
                DUAL,
                PREFER_DUAL_STACK,
                vec![V4, V6],
                vec![Allocate, Allocate],
            ),
            (
                f(None, &[], &[], Some(REQUIRE_DUAL_STACK)),
                DUAL6,
                REQUIRE_DUAL_STACK,
                vec![V6, V4],
                vec![Allocate, Allocate],
            ),
            (
                f(None, &[], &["IPv6"], None),
                DUAL,
                SINGLE_STACK,
                vec![V6],
                vec![Allocate],
            ),
            (
                f(None, &[], &["IPv6", "IPv4"], None),
                DUAL,
                REQUIRE_DUAL_STACK,
                vec![V6, V4],
                vec![Allocate, Allocate],
            ),
            (
                f(Some("fd00::5"), &[], &[], None),
                DUAL,
                SINGLE_STACK,
                vec![V6],
                vec![Requested(ip("fd00::5"))],
            ),
            (
                f(None, &["10.96.0.5", "fd00::5"], &[], None),
                DUAL,
                REQUIRE_DUAL_STACK,
                vec![V4, V6],
                vec![Requested(ip("10.96.0.5")), Requested(ip("fd00::5"))],
            ),
            (
                f(Some("10.96.0.5"), &[], &[], Some(PREFER_DUAL_STACK)),
                DUAL,
                PREFER_DUAL_STACK,
                vec![V4, V6],
                vec![Requested(ip("10.96.0.5")), Allocate],
            ),
            // Headless: families, no addresses.
            (
                f(Some("None"), &[], &[], Some(REQUIRE_DUAL_STACK)),
                DUAL,
                REQUIRE_DUAL_STACK,
                vec![V4, V6],
                vec![],
            ),
            (
                f(Some("None"), &[], &[], None),
                DUAL,
                SINGLE_STACK,
                vec![V4],
                vec![],
            ),
        ];
        for (i, (req, cluster, policy, families, ips)) in cases.into_iter().enumerate() {
            let p = plan(&req, None, cluster).unwrap_or_else(|e| panic!("case {i}: {e:?}"));
            assert_eq!(
                (p.policy, &p.families, &p.ips),
                (policy, &families, &ips),
                "case {i}"
            );
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        let cases: Vec<(Fields, &[IpFamily], &str, &str)> = vec![
            (
                f(None, &[], &[], Some(REQUIRE_DUAL_STACK)),
                SINGLE,
                "spec.ipFamilyPolicy",
                "not configured for dual-stack",
            ),
            (
                f(None, &[], &["IPv6"], None),
                SINGLE,
                "spec.ipFamilies[0]",
                "ipfamily IPv6 is not configured on cluster",
            ),
            (
                f(None, &[], &["IPv4", "IPv6"], Some(PREFER_DUAL_STACK)),
                SINGLE,
                "spec.ipFamilies[1]",
                "not configured",
            ),
            (
                f(None, &[], &["IPv4", "IPv6"], Some(SINGLE_STACK)),
                DUAL,
                "spec.ipFamilyPolicy",
                "when multiple IP families",
            ),
            (
                f(None, &["10.96.0.5", "fd00::5"], &[], Some(SINGLE_STACK)),
                DUAL,
                "spec.ipFamilyPolicy",
                "multiple",
            ),
            (
                f(Some("10.96.0.5"), &["10.96.0.6"], &[], None),
                DUAL,
                "spec.clusterIPs[0]",
                "must match `clusterIP`",
            ),
            (
                f(None, &["10.96.0.5", "10.96.0.6"], &[], None),
                DUAL,
                "spec.clusterIPs[1]",
                "no more than one IP for each IP family",
            ),
            (
                f(None, &["fd00::5"], &["IPv4"], None),
                DUAL,
                "spec.clusterIPs[0]",
                "expected an IPv4 value",
            ),
            (
                f(None, &[], &["IPv4", "IPv4"], None),
                DUAL,
                "spec.ipFamilies[1]",
                "Duplicate",
            ),
            (
                f(None, &[], &["IPv5"], None),
                DUAL,
                "spec.ipFamilies[0]",
                "Unsupported value",
            ),
            (
                f(None, &[], &[], Some("Both")),
                DUAL,
                "spec.ipFamilyPolicy",
                "Unsupported value",
            ),
            (
                f(Some("nope"), &[], &[], None),
                DUAL,
                "spec.clusterIP",
                "must be a valid IP",
            ),
            (
                f(None, &["None", "fd00::5"], &[], None),
                DUAL,
                "spec.clusterIPs[1]",
                "must be empty",
            ),
            (
                f(None, &["10.96.0.5", "fd00::5", "fd00::6"], &[], None),
                DUAL,
                "spec.clusterIPs",
                "no more than 2",
            ),
        ];
        for (i, (req, cluster, path, reason)) in cases.into_iter().enumerate() {
            let (p, r) = plan(&req, None, cluster).expect_err(&format!("case {i}"));
            assert_eq!(p, path, "case {i}: {r}");
            assert!(r.contains(reason), "case {i}: {r}");
        }
    }

    fn stored(ips: &[&str], families: &[&str], policy: &str) -> Fields {
        f(ips.first().copied(), ips, families, Some(policy))
    }

    #[test]
    fn updates_upgrade_downgrade_and_keep_as_kube_apiserver() {
        use Want::*;
        let single = stored(&["10.96.0.5"], &["IPv4"], SINGLE_STACK);
        let dual = stored(
            &["10.96.0.5", "fd00::5"],
            &["IPv4", "IPv6"],
            REQUIRE_DUAL_STACK,
        );
        // Same manifest again (nothing given): unchanged.
        let p = plan(&f(None, &[], &[], None), Some(&dual), DUAL).unwrap();
        assert_eq!(p.ips, [Kept(ip("10.96.0.5")), Kept(ip("fd00::5"))]);
        assert_eq!(p.policy, REQUIRE_DUAL_STACK);
        // Upgrade: policy to RequireDualStack allocates the secondary.
        let p = plan(
            &f(None, &[], &[], Some(REQUIRE_DUAL_STACK)),
            Some(&single),
            DUAL,
        )
        .unwrap();
        assert_eq!(p.ips, [Kept(ip("10.96.0.5")), Allocate]);
        assert_eq!(p.families, [V4, V6]);
        // Downgrade: policy to SingleStack with the primary only.
        let p = plan(
            &f(
                Some("10.96.0.5"),
                &["10.96.0.5"],
                &["IPv4"],
                Some(SINGLE_STACK),
            ),
            Some(&dual),
            DUAL,
        )
        .unwrap();
        assert_eq!(p.ips, [Kept(ip("10.96.0.5"))]);
        assert_eq!(p.families, [V4]);
        // PreferDualStack on a cluster that became dual-stack: kept as is.
        let prefer = stored(&["10.96.0.5"], &["IPv4"], PREFER_DUAL_STACK);
        let p = plan(&f(None, &[], &[], None), Some(&prefer), DUAL).unwrap();
        assert_eq!(p.ips, [Kept(ip("10.96.0.5"))]);
        // Immutable: primary address, primary family, the secondary.
        let e = plan(&f(Some("10.96.0.6"), &[], &[], None), Some(&single), DUAL).unwrap_err();
        assert_eq!(e.0, "spec.clusterIP");
        let headless = stored(&["None"], &["IPv4"], SINGLE_STACK);
        let e = plan(&f(None, &[], &["IPv6"], None), Some(&headless), DUAL).unwrap_err();
        assert_eq!(e.0, "spec.ipFamilies[0]", "{e:?}");
        let e = plan(
            &f(None, &["10.96.0.5", "fd00::6"], &[], None),
            Some(&dual),
            DUAL,
        )
        .unwrap_err();
        assert_eq!(e.0, "spec.clusterIPs[1]", "{e:?}");
    }
}
