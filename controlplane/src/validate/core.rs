//! Validation of the core `v1` kinds (Pod, Service, ConfigMap, Secret)
//! and knode's SubnetLease.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, PodSpec, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{config_key, dns_label, dns_subdomain, labels_ok, protocol, Errs};
use crate::objects::SubnetLease;

/// ConfigMap keys (`data` and `binaryData`).
pub(crate) fn config_map(c: &ConfigMap, e: &mut Errs) {
    data_keys(e, c.data.iter().flat_map(|d| d.keys()));
    data_keys(e, c.binary_data.iter().flat_map(|d| d.keys()));
}

/// Secret keys (`data` and `stringData`).
pub(crate) fn secret(s: &Secret, e: &mut Errs) {
    data_keys(e, s.data.iter().flat_map(|d| d.keys()));
    data_keys(e, s.string_data.iter().flat_map(|d| d.keys()));
}

fn data_keys<'a>(e: &mut Errs, keys: impl Iterator<Item = &'a String>) {
    for k in keys {
        config_key(e, "data", k);
    }
}

/// A SubnetLease is named after its subnet, which has no host bits.
pub(crate) fn subnet_lease(l: &SubnetLease, e: &mut Errs) {
    let want = SubnetLease::name_for(&l.spec.subnet);
    if l.metadata.name.as_deref() != Some(want.as_str()) {
        e.add("metadata.name", format!("must be {want}"));
    }
    if l.spec.subnet.trunc() != l.spec.subnet {
        e.add(
            "spec.subnet",
            format!("{} has host bits set", l.spec.subnet),
        );
    }
    if let Some(s6) = l.spec.ipv6_subnet {
        if !matches!(s6, ipnet::IpNet::V6(_)) {
            e.add("spec.IPv6Subnet", format!("{s6} is not an IPv6 subnet"));
        } else if s6.trunc() != s6 {
            e.add("spec.IPv6Subnet", format!("{s6} has host bits set"));
        }
    }
    if let Some(ip) = l.spec.public_ipv6 {
        if !ip.is_ipv6() {
            e.add("spec.PublicIPv6", format!("{ip} is not an IPv6 address"));
        }
    }
}

/// A Pod.
pub(crate) fn pod(p: &Pod, e: &mut Errs) {
    let Some(spec) = &p.spec else {
        e.add("spec", "required");
        return;
    };
    pod_spec(spec, "spec", e);
}

/// What a Pod's update may change, as kube-apiserver allows: container and
/// init container images, `activeDeadlineSeconds`, additions to
/// `tolerations`, and the binding (an unbound pod getting its node).
pub(crate) fn pod_update(old: &Pod, new: &Pod, e: &mut Errs) {
    let (Some(o), Some(n)) = (&old.spec, &new.spec) else {
        return;
    };
    let mut masked = n.clone();
    for (m, c) in masked.containers.iter_mut().zip(&o.containers) {
        m.image = c.image.clone();
    }
    if let (Some(ms), Some(cs)) = (masked.init_containers.as_mut(), o.init_containers.as_ref()) {
        for (m, c) in ms.iter_mut().zip(cs) {
            m.image = c.image.clone();
        }
    }
    masked.active_deadline_seconds = o.active_deadline_seconds;
    let old_tolerations = o.tolerations.as_deref().unwrap_or(&[]);
    let kept = old_tolerations
        .iter()
        .all(|t| n.tolerations.iter().flatten().any(|u| u == t));
    if kept {
        masked.tolerations = o.tolerations.clone();
    }
    if o.node_name.as_deref().unwrap_or_default().is_empty() {
        masked.node_name = o.node_name.clone();
    }
    if masked != *o {
        e.forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        );
    }
    if let (Some(was), Some(now)) = (o.active_deadline_seconds, n.active_deadline_seconds) {
        if now > was {
            e.invalid(
                "spec.activeDeadlineSeconds",
                now,
                "must be less than or equal to previous value",
            );
        }
    }
}

/// A pod's spec, or a template's, at `at` (`spec`, `spec.template.spec`).
pub(crate) fn pod_spec(spec: &PodSpec, at: &str, e: &mut Errs) {
    if spec.containers.is_empty() {
        e.add(
            format!("{at}.containers"),
            "at least one container is required",
        );
    }
    if let Some(rp) = &spec.restart_policy {
        if !["Always", "OnFailure", "Never"].contains(&rp.as_str()) {
            e.add(
                format!("{at}.restartPolicy"),
                format!("{rp:?}: must be Always, OnFailure or Never"),
            );
        }
    }
    // kube-apiserver's ValidateNodeName: a node's name is a DNS subdomain
    // (so it can never be a path like "../../etc").
    if let Some(n) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        if let Some(why) = dns_subdomain(n) {
            e.add(format!("{at}.nodeName"), format!("{n:?}: {why}"));
        }
    }
    if let Some(h) = spec.hostname.as_deref().filter(|h| !h.is_empty()) {
        if let Some(why) = dns_label(h) {
            e.add(format!("{at}.hostname"), format!("{h:?}: {why}"));
        }
    }
    if let Some(d) = spec.subdomain.as_deref().filter(|d| !d.is_empty()) {
        if let Some(why) = dns_label(d) {
            e.add(format!("{at}.subdomain"), format!("{d:?}: {why}"));
        }
    }
    if spec.termination_grace_period_seconds.is_some_and(|s| s < 0) {
        e.add(
            format!("{at}.terminationGracePeriodSeconds"),
            "must be >= 0",
        );
    }
    let volumes: HashSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let mut seen_vol = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("{at}.volumes[{i}]");
        if let Some(why) = dns_label(&v.name) {
            e.add(format!("{path}.name"), format!("{:?}: {why}", v.name));
        }
        if !seen_vol.insert(v.name.as_str()) {
            e.add(
                format!("{path}.name"),
                format!("{:?}: duplicate volume name", v.name),
            );
        }
        let sources = [
            v.empty_dir.is_some(),
            v.host_path.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.downward_api.is_some(),
            v.projected.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            e.add(
                path,
                "exactly one of emptyDir, hostPath, configMap, secret, downwardAPI or projected is required",
            );
        }
    }
    let mut names = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let path = format!("{at}.containers[{i}]");
        if let Some(why) = dns_label(&c.name) {
            e.add(format!("{path}.name"), format!("{:?}: {why}", c.name));
        } else if !names.insert(c.name.as_str()) {
            e.add(
                format!("{path}.name"),
                format!("{:?}: duplicate container name", c.name),
            );
        }
        if c.image.as_deref().unwrap_or_default().trim().is_empty() {
            e.add(format!("{path}.image"), "required");
        }
        if let Some(pp) = &c.image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&pp.as_str()) {
                e.add(
                    format!("{path}.imagePullPolicy"),
                    format!("{pp:?}: must be Always, IfNotPresent or Never"),
                );
            }
        }
        for (j, port) in c.ports.iter().flatten().enumerate() {
            let pp = format!("{path}.ports[{j}]");
            if !(1..=65535).contains(&port.container_port) {
                e.add(
                    format!("{pp}.containerPort"),
                    format!("{}: must be 1-65535", port.container_port),
                );
            }
            if let Some(h) = port.host_port.filter(|h| !(0..=65535).contains(h)) {
                e.add(format!("{pp}.hostPort"), format!("{h}: must be 1-65535"));
            }
            if let Some(ip) = port.host_ip.as_deref().filter(|ip| !ip.is_empty()) {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    e.add(
                        format!("{pp}.hostIP"),
                        format!("{ip:?}: must be an IP address"),
                    );
                }
            }
            protocol(e, &format!("{pp}.protocol"), port.protocol.as_deref());
        }
        for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
            if !volumes.contains(m.name.as_str()) {
                e.add(
                    format!("{path}.volumeMounts[{j}].name"),
                    format!("{:?}: no such volume", m.name),
                );
            }
            if !m.mount_path.starts_with('/') {
                e.add(
                    format!("{path}.volumeMounts[{j}].mountPath"),
                    "must be an absolute path",
                );
            }
        }
        for (j, env) in c.env.iter().flatten().enumerate() {
            if env.name.is_empty() || env.name.contains('=') {
                e.add(
                    format!("{path}.env[{j}].name"),
                    format!("{:?}: must be non-empty without '='", env.name),
                );
            }
        }
    }
}

/// A Service.
pub(crate) fn service(s: &Service, e: &mut Errs) {
    let Some(spec) = &s.spec else {
        e.add("spec", "required");
        return;
    };
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
        e.add(
            "spec.type",
            format!("{ty:?}: must be ClusterIP, NodePort, LoadBalancer or ExternalName"),
        );
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" {
        e.add("spec.ports", "at least one port is required");
    }
    if let Some(sel) = &spec.selector {
        labels_ok(e, "spec.selector", sel);
    }
    if let Some(aff) = &spec.session_affinity {
        if aff != "None" && aff != "ClientIP" {
            e.add(
                "spec.sessionAffinity",
                format!("{aff:?}: must be None or ClientIP"),
            );
        }
    }
    for (field, v) in [
        ("spec.externalTrafficPolicy", &spec.external_traffic_policy),
        ("spec.internalTrafficPolicy", &spec.internal_traffic_policy),
    ] {
        if let Some(v) = v {
            if v != "Cluster" && v != "Local" {
                e.add(field, format!("{v:?}: must be Cluster or Local"));
            }
        }
    }
    let mut names = HashSet::new();
    let mut pairs = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let path = format!("spec.ports[{i}]");
        match p.name.as_deref() {
            None | Some("") if ports.len() > 1 => e.add(
                format!("{path}.name"),
                "required when there are several ports",
            ),
            Some(n) if !n.is_empty() => {
                if let Some(why) = dns_label(n) {
                    e.add(format!("{path}.name"), format!("{n:?}: {why}"));
                } else if !names.insert(n) {
                    e.add(
                        format!("{path}.name"),
                        format!("{n:?}: duplicate port name"),
                    );
                }
            }
            _ => {}
        }
        if !(1..=65535).contains(&p.port) {
            e.add(
                format!("{path}.port"),
                format!("{}: must be 1-65535", p.port),
            );
        }
        protocol(e, &format!("{path}.protocol"), p.protocol.as_deref());
        if !pairs.insert((p.port, p.protocol.clone().unwrap_or_default())) {
            e.add(
                format!("{path}.port"),
                format!("{}: duplicate port and protocol", p.port),
            );
        }
        match &p.target_port {
            Some(IntOrString::Int(t)) if !(1..=65535).contains(t) => {
                e.add(
                    format!("{path}.targetPort"),
                    format!("{t}: must be 1-65535"),
                );
            }
            Some(IntOrString::String(n)) if dns_label(n).is_some() || n.len() > 15 => {
                e.add(
                    format!("{path}.targetPort"),
                    format!("{n:?}: must be a port number or a port name"),
                );
            }
            _ => {}
        }
        if let Some(np) = p.node_port {
            if ty != "NodePort" && ty != "LoadBalancer" {
                e.add(
                    format!("{path}.nodePort"),
                    "may only be set when type is NodePort or LoadBalancer",
                );
            } else if !(1..=65535).contains(&np) {
                e.add(format!("{path}.nodePort"), format!("{np}: must be 1-65535"));
            }
        }
    }
    if let Some(ip) = spec.cluster_ip.as_deref() {
        if !ip.is_empty() && ip != "None" && ip.parse::<std::net::IpAddr>().is_err() {
            e.add(
                "spec.clusterIP",
                format!("{ip:?}: must be an IP address, \"None\" or empty"),
            );
        }
    }
}

/// A core Event: a namespaced event is about an object of its namespace.
pub(crate) fn event(ev: &Event, e: &mut Errs) {
    let ns = ev.metadata.namespace.as_deref().unwrap_or_default();
    let about = ev.involved_object.namespace.as_deref().unwrap_or_default();
    if !about.is_empty() && about != ns {
        e.invalid(
            "involvedObject.namespace",
            format!("{about:?}"),
            "does not match event.namespace",
        );
    }
    if let Some(t) = ev.type_.as_deref() {
        if !t.is_empty() && t != "Normal" && t != "Warning" {
            e.not_supported("type", t, &["Normal", "Warning"]);
        }
    }
}
