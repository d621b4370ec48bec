//! A container's cgroup limits and OOM score from its resources, with
//! kubelet's formulas: CPU shares from requests, a CFS quota from limits,
//! the QoS class and memory request → oom_score_adj. The caller clamps
//! the score to what the agent may set (it lacks CAP_SYS_RESOURCE).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::quantity::{non_negative, Quantity};
use super::SpecError;

/// CFS period every container gets (kubelet's default).
pub const CPU_PERIOD: u64 = 100_000;
/// The smallest quota kubelet sets (1 ms of every 100 ms).
pub const MIN_QUOTA: i64 = 1_000;
/// Shares for a container without a CPU request.
pub const MIN_SHARES: u64 = 2;
/// The kernel's ceiling for cpu.shares.
pub const MAX_SHARES: u64 = 262_144;
/// The pause container's shares (containerd's DefaultSandboxCPUshares).
pub const SANDBOX_SHARES: u64 = 2;
/// Guaranteed and critical pods: last to be killed.
pub const GUARANTEED_OOM: i32 = -997;
/// BestEffort pods: first to be killed.
pub const BEST_EFFORT_OOM: i32 = 1000;
/// The pause container (kubelet's PodInfraOOMAdj).
pub const SANDBOX_OOM: i32 = -998;
/// Pods at or above this priority are critical (SystemCriticalPriority).
const CRITICAL_PRIORITY: i32 = 2_000_000_000;

/// What goes into `linux.resources` for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub shares: u64,
    /// CFS quota in µs per [`CPU_PERIOD`]; `None` without a CPU limit.
    pub quota: Option<i64>,
    /// Memory limit in bytes; `None` without a memory limit.
    pub memory: Option<i64>,
}

/// A pod's quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// One container's CPU and memory, parsed. A request left out defaults to
/// the limit, as the API server's defaulting does.
#[derive(Debug, Default, Clone, Copy)]
struct Parsed {
    cpu_request: Option<Quantity>,
    cpu_limit: Option<Quantity>,
    memory_request: Option<Quantity>,
    memory_limit: Option<Quantity>,
}

fn lookup(
    map: Option<&BTreeMap<String, K8sQuantity>>,
    name: &str,
    field: &str,
) -> Result<Option<Quantity>, SpecError> {
    let Some(q) = map.and_then(|m| m.get(name)) else {
        return Ok(None);
    };
    non_negative(&q.0)
        .map(Some)
        .map_err(|e| SpecError::new(format!("{field}.{name}"), e.0))
}

fn parse(c: &Container, field: &str) -> Result<Parsed, SpecError> {
    let r = c.resources.as_ref();
    let limits = r.and_then(|r| r.limits.as_ref());
    let requests = r.and_then(|r| r.requests.as_ref());
    let lf = format!("{field}.resources.limits");
    let rf = format!("{field}.resources.requests");
    let cpu_limit = lookup(limits, "cpu", &lf)?;
    let memory_limit = lookup(limits, "memory", &lf)?;
    Ok(Parsed {
        cpu_request: lookup(requests, "cpu", &rf)?.or(cpu_limit),
        cpu_limit,
        memory_request: lookup(requests, "memory", &rf)?.or(memory_limit),
        memory_limit,
    })
}

fn milli(q: Option<Quantity>, field: &str) -> Result<i64, SpecError> {
    match q {
        None => Ok(0),
        Some(q) => q
            .milli_value()
            .ok_or_else(|| SpecError::new(field, "value is out of range")),
    }
}

fn bytes(q: Option<Quantity>, field: &str) -> Result<i64, SpecError> {
    match q {
        None => Ok(0),
        Some(q) => q
            .value()
            .ok_or_else(|| SpecError::new(field, "value is out of range")),
    }
}

/// kubelet's MilliCPUToShares.
pub fn milli_cpu_to_shares(milli: i64) -> u64 {
    if milli <= 0 {
        return MIN_SHARES;
    }
    let shares = (milli as u128 * 1024 / 1000) as u64;
    shares.clamp(MIN_SHARES, MAX_SHARES)
}

/// kubelet's MilliCPUToQuota for [`CPU_PERIOD`]; `None` for no limit.
pub fn milli_cpu_to_quota(milli: i64) -> Option<i64> {
    if milli <= 0 {
        return None;
    }
    let quota = (milli as i128 * CPU_PERIOD as i128 / 1000).min(i64::MAX as i128) as i64;
    Some(quota.max(MIN_QUOTA))
}

/// The cgroup limits of container `c` (`field` is its path in the pod).
pub fn limits(c: &Container, field: &str) -> Result<Limits, SpecError> {
    let p = parse(c, field)?;
    let cpu_req = milli(p.cpu_request, &format!("{field}.resources.requests.cpu"))?;
    let cpu_lim = milli(p.cpu_limit, &format!("{field}.resources.limits.cpu"))?;
    let mem_lim = bytes(p.memory_limit, &format!("{field}.resources.limits.memory"))?;
    Ok(Limits {
        shares: milli_cpu_to_shares(cpu_req),
        quota: milli_cpu_to_quota(cpu_lim),
        memory: (mem_lim > 0).then_some(mem_lim),
    })
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = (String, &Container)> {
    let spec = pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let apps = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    init.iter()
        .enumerate()
        .map(|(i, c)| (format!("spec.initContainers[{i}]"), c))
        .chain(
            apps.iter()
                .enumerate()
                .map(|(i, c)| (format!("spec.containers[{i}]"), c)),
        )
}

/// kubelet's GetPodQOS: Guaranteed when every container limits CPU and
/// memory and requests what it limits; BestEffort when nothing requests or
/// limits either; Burstable otherwise.
pub fn qos_class(pod: &Pod) -> Result<Qos, SpecError> {
    let (mut req_cpu, mut req_mem, mut lim_cpu, mut lim_mem) = (0i128, 0i128, 0i128, 0i128);
    let (mut any_req, mut any_lim) = (false, false);
    let mut guaranteed = true;
    for (field, c) in all_containers(pod) {
        let p = parse(c, &field)?;
        let m = |q: Option<Quantity>| q.and_then(|q| q.milli_value()).unwrap_or(0) as i128;
        let (rc, rm, lc, lm) = (
            m(p.cpu_request),
            m(p.memory_request),
            m(p.cpu_limit),
            m(p.memory_limit),
        );
        req_cpu += rc;
        req_mem += rm;
        lim_cpu += lc;
        lim_mem += lm;
        any_req |= rc > 0 || rm > 0;
        any_lim |= lc > 0 || lm > 0;
        if lc == 0 || lm == 0 {
            guaranteed = false;
        }
    }
    if !any_req && !any_lim {
        return Ok(Qos::BestEffort);
    }
    if guaranteed && req_cpu == lim_cpu && req_mem == lim_mem {
        return Ok(Qos::Guaranteed);
    }
    Ok(Qos::Burstable)
}

/// kubelet's IsCriticalPod: static pods and system-critical priorities.
pub fn is_critical(pod: &Pod) -> bool {
    let static_pod = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubernetes.io/config.source"))
        .is_some_and(|s| s != "api");
    let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
    static_pod || priority >= CRITICAL_PRIORITY
}

/// kubelet's GetContainerOOMScoreAdjust (before clamping): critical and
/// Guaranteed -997, BestEffort 1000, Burstable by the share of the node's
/// memory the container requests, kept within 3..=999.
pub fn oom_score_adj(
    pod: &Pod,
    c: &Container,
    field: &str,
    memory_capacity: i64,
) -> Result<i32, SpecError> {
    if is_critical(pod) {
        return Ok(GUARANTEED_OOM);
    }
    match qos_class(pod)? {
        Qos::Guaranteed => return Ok(GUARANTEED_OOM),
        Qos::BestEffort => return Ok(BEST_EFFORT_OOM),
        Qos::Burstable => {}
    }
    let request = bytes(
        parse(c, field)?.memory_request,
        &format!("{field}.resources.requests.memory"),
    )? as i128;
    let capacity = memory_capacity.max(1) as i128;
    let adj = (1000 - (1000 * request) / capacity).max(i32::MIN as i128) as i32;
    if adj < 1000 + GUARANTEED_OOM {
        return Ok(1000 + GUARANTEED_OOM);
    }
    if adj == BEST_EFFORT_OOM {
        return Ok(adj - 1);
    }
    Ok(adj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Container {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| {
                kv.iter()
                    .map(|(k, v)| (k.to_string(), K8sQuantity(v.to_string())))
                    .collect()
            })
        };
        Container {
            name: "c".into(),
            resources: Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: map(requests),
                limits: map(limits),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(cs: Vec<Container>) -> Pod {
        Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: cs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn shares_and_quota_follow_kubelet() {
        assert_eq!(milli_cpu_to_shares(0), 2);
        assert_eq!(milli_cpu_to_shares(1), 2);
        assert_eq!(milli_cpu_to_shares(100), 102);
        assert_eq!(milli_cpu_to_shares(1000), 1024);
        assert_eq!(milli_cpu_to_shares(1_000_000), MAX_SHARES);
        assert_eq!(milli_cpu_to_quota(0), None);
        assert_eq!(milli_cpu_to_quota(5), Some(1000));
        assert_eq!(milli_cpu_to_quota(500), Some(50_000));
        assert_eq!(milli_cpu_to_quota(2000), Some(200_000));
    }

    #[test]
    fn limits_of_a_container() {
        let c = container(&[("cpu", "250m")], &[("cpu", "1"), ("memory", "128Mi")]);
        let l = limits(&c, "spec.containers[0]").unwrap();
        assert_eq!(
            l,
            Limits {
                shares: 256,
                quota: Some(100_000),
                memory: Some(128 << 20)
            }
        );
        // A request left out defaults to the limit.
        let c = container(&[], &[("cpu", "500m")]);
        assert_eq!(limits(&c, "x").unwrap().shares, 512);
        let none = limits(&container(&[], &[]), "x").unwrap();
        assert_eq!((none.shares, none.quota, none.memory), (2, None, None));
    }

    #[test]
    fn bad_quantities_name_the_field() {
        let c = container(&[], &[("memory", "12Qi")]);
        let e = limits(&c, "spec.containers[1]").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"spec.containers[1].resources.limits.memory: "12Qi" is not a quantity"#
        );
        let c = container(&[("cpu", "-1")], &[]);
        let e = limits(&c, "spec.containers[0]").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.containers[0].resources.requests.cpu: "),
            "{e}"
        );
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&pod(vec![container(&[], &[])])).unwrap(),
            Qos::BestEffort
        );
        let g = container(&[], &[("cpu", "1"), ("memory", "1Gi")]);
        assert_eq!(qos_class(&pod(vec![g.clone()])).unwrap(), Qos::Guaranteed);
        let g2 = container(
            &[("cpu", "1000m"), ("memory", "1024Mi")],
            &[("cpu", "1"), ("memory", "1Gi")],
        );
        assert_eq!(qos_class(&pod(vec![g2])).unwrap(), Qos::Guaranteed);
        let b = container(
            &[("cpu", "500m"), ("memory", "1Gi")],
            &[("cpu", "1"), ("memory", "1Gi")],
        );
        assert_eq!(qos_class(&pod(vec![b])).unwrap(), Qos::Burstable);
        let only_mem = container(&[], &[("memory", "1Gi")]);
        assert_eq!(qos_class(&pod(vec![only_mem])).unwrap(), Qos::Burstable);
        // One best-effort container makes a guaranteed pod burstable.
        assert_eq!(
            qos_class(&pod(vec![g, container(&[], &[])])).unwrap(),
            Qos::Burstable
        );
    }

    #[test]
    fn oom_scores() {
        let gib = 1i64 << 30;
        let best = pod(vec![container(&[], &[])]);
        assert_eq!(
            oom_score_adj(
                &best,
                &best.spec.as_ref().unwrap().containers[0],
                "x",
                8 * gib
            )
            .unwrap(),
            1000
        );
        let g = pod(vec![container(&[], &[("cpu", "1"), ("memory", "1Gi")])]);
        assert_eq!(
            oom_score_adj(&g, &g.spec.as_ref().unwrap().containers[0], "x", 8 * gib).unwrap(),
            -997
        );
        let b = pod(vec![container(&[("memory", "1Gi")], &[])]);
        let c = &b.spec.as_ref().unwrap().containers[0];
        assert_eq!(oom_score_adj(&b, c, "x", 10 * gib).unwrap(), 900);
        assert_eq!(
            oom_score_adj(&b, c, "x", gib).unwrap(),
            3,
            "floor above Guaranteed"
        );
        let tiny = pod(vec![container(&[("cpu", "1m")], &[])]);
        assert_eq!(
            oom_score_adj(&tiny, &tiny.spec.as_ref().unwrap().containers[0], "x", gib).unwrap(),
            999
        );
        let mut st = best.clone();
        st.metadata.annotations = Some(
            [(
                "kubernetes.io/config.source".to_string(),
                "file".to_string(),
            )]
            .into(),
        );
        assert_eq!(
            oom_score_adj(&st, &st.spec.as_ref().unwrap().containers[0], "x", gib).unwrap(),
            -997
        );
    }
}
