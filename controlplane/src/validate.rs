//! Validation with the API server's kind of message: every problem names
//! its field path and the reason (`spec.containers[0].image: required`).
//! Runs after defaulting; reads only, changes nothing.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::objects::Object;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Every invalid field of one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub object: String,
    pub errors: Vec<FieldError>,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is invalid: ", self.object)?;
        let parts: Vec<String> = self.errors.iter().map(|e| e.to_string()).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for Invalid {}

#[derive(Default)]
struct Errs(Vec<FieldError>);

impl Errs {
    fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }
}

/// Validates a (defaulted) object.
pub fn validate(obj: &Object) -> Result<(), Invalid> {
    let mut e = Errs::default();
    let kind = obj.kind();
    let name = obj.name();
    if name.is_empty() {
        e.add("metadata.name", "required");
    } else if let Some(why) = match obj {
        Object::Service(_) | Object::Namespace(_) => dns_label(name),
        _ => dns_subdomain(name),
    } {
        e.add("metadata.name", format!("{name:?}: {why}"));
    }
    if kind.namespaced() {
        if let Some(why) = dns_label(obj.namespace()) {
            e.add(
                "metadata.namespace",
                format!("{:?}: {why}", obj.namespace()),
            );
        }
    }
    if let Some(labels) = &obj.meta().labels {
        labels_ok(&mut e, "metadata.labels", labels);
    }
    match obj {
        Object::Pod(p) => pod(&mut e, p),
        Object::Service(s) => service(&mut e, s),
        Object::ConfigMap(c) => {
            for k in c
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(c.binary_data.iter().flat_map(|d| d.keys()))
            {
                config_key(&mut e, "data", k);
            }
        }
        Object::Secret(s) => {
            for k in s
                .data
                .iter()
                .flat_map(|d| d.keys())
                .chain(s.string_data.iter().flat_map(|d| d.keys()))
            {
                config_key(&mut e, "data", k);
            }
        }
        Object::SubnetLease(l) => {
            if l.metadata.name.as_deref()
                != Some(crate::objects::SubnetLease::name_for(&l.spec.subnet).as_str())
            {
                e.add(
                    "metadata.name",
                    format!(
                        "must be {}",
                        crate::objects::SubnetLease::name_for(&l.spec.subnet)
                    ),
                );
            }
            if l.spec.subnet.trunc() != l.spec.subnet {
                e.add(
                    "spec.subnet",
                    format!("{} has host bits set", l.spec.subnet),
                );
            }
        }
        _ => {}
    }
    if e.0.is_empty() {
        Ok(())
    } else {
        Err(Invalid {
            object: obj.describe(),
            errors: e.0,
        })
    }
}

fn pod(e: &mut Errs, p: &Pod) {
    let Some(spec) = &p.spec else {
        e.add("spec", "required");
        return;
    };
    if spec.containers.is_empty() {
        e.add("spec.containers", "at least one container is required");
    }
    if let Some(rp) = &spec.restart_policy {
        if !["Always", "OnFailure", "Never"].contains(&rp.as_str()) {
            e.add(
                "spec.restartPolicy",
                format!("{rp:?}: must be Always, OnFailure or Never"),
            );
        }
    }
    if spec.termination_grace_period_seconds.is_some_and(|s| s < 0) {
        e.add("spec.terminationGracePeriodSeconds", "must be >= 0");
    }
    let volumes: HashSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let mut seen_vol = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let path = format!("spec.volumes[{i}]");
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
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            e.add(
                path,
                "exactly one of emptyDir, hostPath, configMap or secret is required",
            );
        }
    }
    let mut names = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
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

fn service(e: &mut Errs, s: &Service) {
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

fn protocol(e: &mut Errs, path: &str, p: Option<&str>) {
    if let Some(p) = p {
        if !["TCP", "UDP", "SCTP"].contains(&p) {
            e.add(path, format!("{p:?}: must be TCP, UDP or SCTP"));
        }
    }
}

fn labels_ok(e: &mut Errs, path: &str, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let (prefix, name) = k
            .rsplit_once('/')
            .map_or((None, k.as_str()), |(p, n)| (Some(p), n));
        let bad_key = name.is_empty()
            || name.len() > 63
            || !label_chars(name)
            || prefix.is_some_and(|p| dns_subdomain(p).is_some());
        if bad_key {
            e.add(format!("{path}[{k:?}]"), "invalid label key");
        }
        if v.len() > 63 || (!v.is_empty() && !label_chars(v)) {
            e.add(
                format!("{path}[{k:?}]"),
                format!("{v:?}: invalid label value"),
            );
        }
    }
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn config_key(e: &mut Errs, path: &str, k: &str) {
    let ok = !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        e.add(
            format!("{path}[{k:?}]"),
            "keys must be alphanumeric, '-', '_' or '.'",
        );
    }
}

/// Why `s` is not a DNS-1123 label (lowercase alphanumerics and '-', at most 63).
pub fn dns_label(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    if b.is_empty() {
        Some("required")
    } else if b.len() > 63 {
        Some("must be at most 63 characters")
    } else if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        || b[0] == b'-'
        || b[b.len() - 1] == b'-'
    {
        Some("must be lowercase alphanumerics or '-', starting and ending alphanumeric")
    } else {
        None
    }
}

/// Why `s` is not a DNS-1123 subdomain (labels joined by '.', at most 253).
pub fn dns_subdomain(s: &str) -> Option<&'static str> {
    if s.len() > 253 {
        return Some("must be at most 253 characters");
    }
    s.split('.')
        .find_map(dns_label)
        .map(|_| "must be lowercase alphanumerics, '-' or '.'")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{defaults, manifest};

    fn check(yaml: &str) -> Result<(), Invalid> {
        let mut o = manifest::parse("t", yaml).unwrap().remove(0);
        defaults::apply(&mut o);
        validate(&o)
    }

    fn paths(r: Result<(), Invalid>) -> Vec<String> {
        r.unwrap_err()
            .errors
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn missing_image_names_the_field() {
        let p = paths(check(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers: [{name: c}]\n",
        ));
        assert_eq!(p, vec!["spec.containers[0].image: required"]);
    }

    #[test]
    fn good_objects_pass() {
        check("apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  volumes: [{name: data, emptyDir: {}}]\n  containers: [{name: c, image: busybox, ports: [{containerPort: 80}], volumeMounts: [{name: data, mountPath: /data}]}]\n").unwrap();
        check("apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  type: NodePort\n  selector: {app: web}\n  ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, targetPort: dns}]\n").unwrap();
        check("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {index.html: hi}\n")
            .unwrap();
    }

    #[test]
    fn many_problems_are_all_reported() {
        let p = paths(check("apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\nspec:\n  restartPolicy: Sometimes\n  containers:\n  - {name: c, image: x, ports: [{containerPort: 70000, protocol: ICMP}], volumeMounts: [{name: nope, mountPath: rel}]}\n  - {name: c, image: y}\n"));
        let joined = p.join("\n");
        for want in [
            "metadata.name: \"Web_1\"",
            "spec.restartPolicy: \"Sometimes\"",
            "spec.containers[0].ports[0].containerPort: 70000",
            "spec.containers[0].ports[0].protocol: \"ICMP\"",
            "spec.containers[0].volumeMounts[0].name: \"nope\": no such volume",
            "spec.containers[0].volumeMounts[0].mountPath: must be an absolute path",
            "spec.containers[1].name: \"c\": duplicate container name",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
    }

    #[test]
    fn service_rules() {
        let p = paths(check("apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec:\n  ports: [{port: 80, nodePort: 30000}, {port: 0}]\n"));
        let joined = p.join("\n");
        assert!(
            joined.contains("spec.ports[0].name: required when there are several ports"),
            "{joined}"
        );
        assert!(
            joined.contains("spec.ports[0].nodePort: may only be set when type is NodePort"),
            "{joined}"
        );
        assert!(
            joined.contains("spec.ports[1].port: 0: must be 1-65535"),
            "{joined}"
        );
        let p = paths(check(
            "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {}\n",
        ));
        assert_eq!(p, vec!["spec.ports: at least one port is required"]);
    }

    #[test]
    fn names_and_labels() {
        assert!(dns_label("web-1").is_none());
        assert!(
            dns_label("-web").is_some() && dns_label("Web").is_some() && dns_label("").is_some()
        );
        assert!(dns_subdomain("a.b-c.d").is_none() && dns_subdomain("a..b").is_some());
        let p = paths(check("apiVersion: v1\nkind: Namespace\nmetadata: {name: ok, labels: {'bad key!': v, good: 'bad value!'}}\n"));
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
