//! Defaulting of the core `v1` kinds: Pod, Service, Secret.

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Secret, Service, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::image_pull_policy;

/// A Secret's type is `Opaque` unless given.
pub(crate) fn secret(s: &mut Secret) {
    s.type_.get_or_insert_with(|| "Opaque".to_string());
}

/// A new pod starts `Pending`, whatever status the request carried.
pub(crate) fn pod_status_pending(p: &mut Pod) {
    p.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
}

/// Pod and container defaults.
pub(crate) fn pod(p: &mut Pod) {
    if let Some(spec) = p.spec.as_mut() {
        pod_spec(spec);
        default_toleration_seconds(spec);
    }
}

/// kube-apiserver's DefaultTolerationSeconds admission (its defaults,
/// `--default-not-ready-toleration-seconds` and
/// `--default-unreachable-toleration-seconds`).
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

/// A pod that does not already tolerate `node.kubernetes.io/not-ready` or
/// `node.kubernetes.io/unreachable` with effect NoExecute tolerates each
/// for [`DEFAULT_TOLERATION_SECONDS`]: its node lost, it is evicted after
/// that long (the node lifecycle controller). Pods only, not templates,
/// as the admission plugin.
fn default_toleration_seconds(spec: &mut PodSpec) {
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
        let has = tolerations.iter().any(|t| {
            let effect = t.effect.as_deref().unwrap_or_default();
            (effect.is_empty() || effect == "NoExecute")
                && (t.key.as_deref() == Some(key)
                    || (t.key.as_deref().unwrap_or_default().is_empty()
                        && t.operator.as_deref() == Some("Exists")))
        });
        if !has {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(DEFAULT_TOLERATION_SECONDS),
                value: None,
            });
        }
    }
}

/// The defaults of a pod's spec, or of a workload's pod template.
pub(crate) fn pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.enable_service_links.get_or_insert(true);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if c.image_pull_policy.is_none() {
            c.image_pull_policy =
                Some(image_pull_policy(c.image.as_deref().unwrap_or_default()).into());
        }
        c.termination_message_path
            .get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy
            .get_or_insert_with(|| "File".into());
        for port in c.ports.iter_mut().flatten() {
            port.protocol.get_or_insert_with(|| "TCP".into());
        }
    }
}

/// Service defaults (type, affinity, traffic policies, ports).
pub(crate) fn service(s: &mut Service) {
    let Some(spec) = s.spec.as_mut() else { return };
    let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
    spec.session_affinity.get_or_insert_with(|| "None".into());
    spec.internal_traffic_policy
        .get_or_insert_with(|| "Cluster".into());
    if ty == "NodePort" || ty == "LoadBalancer" {
        spec.external_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
    }
    for port in spec.ports.iter_mut().flatten() {
        port.protocol.get_or_insert_with(|| "TCP".into());
        if port.target_port.is_none() {
            port.target_port = Some(IntOrString::Int(port.port));
        }
    }
}

/// A pod's node is assigned once (by the agent that binds it); a manifest
/// applied again without `nodeName` keeps it there.
pub(crate) fn carry_pod(current: &Pod, want: &mut Pod) {
    if let (Some(cs), Some(ws)) = (&current.spec, &mut want.spec) {
        if ws.node_name.as_deref().unwrap_or_default().is_empty() {
            ws.node_name = cs.node_name.clone();
        }
    }
}

/// What the allocator gave a Service (ClusterIP(s), IP families,
/// NodePorts) stays when a manifest applied again leaves it out.
pub(crate) fn carry_service(current: &Service, want: &mut Service) {
    let (Some(cs), Some(ws)) = (&current.spec, &mut want.spec) else {
        return;
    };
    if ws.cluster_ip.as_deref().unwrap_or_default().is_empty() {
        ws.cluster_ip = cs.cluster_ip.clone();
    }
    if ws.cluster_ips.is_none() && ws.cluster_ip == cs.cluster_ip {
        ws.cluster_ips = cs.cluster_ips.clone();
    }
    if ws.ip_families.is_none() {
        ws.ip_families = cs.ip_families.clone();
    }
    if ws.ip_family_policy.is_none() {
        ws.ip_family_policy = cs.ip_family_policy.clone();
    }
    if ws.type_ == cs.type_ {
        for p in ws.ports.iter_mut().flatten() {
            if p.node_port.is_none() {
                p.node_port = cs
                    .ports
                    .iter()
                    .flatten()
                    .find(|q| q.port == p.port && q.protocol == p.protocol)
                    .and_then(|q| q.node_port);
            }
        }
    }
}
