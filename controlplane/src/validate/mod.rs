//! Validation with the API server's kind of message: every problem names
//! its field path and the reason (`spec.containers[0].image: required`).
//! Runs after defaulting; reads only, changes nothing. The generic checks
//! (metadata) live here; each kind's own rules live in a file per API
//! group and are reached through its descriptor in [`crate::kinds`].

pub(crate) mod apps;
pub(crate) mod batch;
pub(crate) mod core;
pub(crate) mod network;
pub(crate) mod policy;
pub(crate) mod selector;

use std::collections::BTreeMap;
use std::fmt;

use crate::kinds::NameRule;
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

/// The errors found so far in one object; kinds' validation hooks add to it.
#[derive(Debug, Default)]
pub struct Errs(Vec<FieldError>);

impl Errs {
    /// Records that `path` is invalid because of `reason`.
    pub fn add(&mut self, path: impl Into<String>, reason: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            reason: reason.into(),
        });
    }

    /// kube-apiserver's `Invalid value: <value>: <msg>`; `value` is
    /// printed as given (quote strings with `{:?}`).
    pub fn invalid(&mut self, path: impl Into<String>, value: impl fmt::Display, msg: &str) {
        self.add(path, format!("Invalid value: {value}: {msg}"));
    }

    /// `Required value` (with a detail when `msg` is not empty).
    pub fn required(&mut self, path: impl Into<String>, msg: &str) {
        if msg.is_empty() {
            self.add(path, "Required value");
        } else {
            self.add(path, format!("Required value: {msg}"));
        }
    }

    /// `Unsupported value: "x": supported values: "A", "B"`.
    pub fn not_supported(&mut self, path: impl Into<String>, value: &str, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        self.add(
            path,
            format!(
                "Unsupported value: {value:?}: supported values: {}",
                list.join(", ")
            ),
        );
    }

    /// `Forbidden: <msg>`.
    pub fn forbidden(&mut self, path: impl Into<String>, msg: &str) {
        self.add(path, format!("Forbidden: {msg}"));
    }

    /// `value`, if set, must not be negative.
    pub fn nonnegative(&mut self, path: impl Into<String>, value: Option<impl Into<i64>>) {
        if let Some(v) = value.map(Into::into).filter(|v| *v < 0) {
            self.invalid(path, v, "must be greater than or equal to 0");
        }
    }

    /// Whether nothing was found so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was found, else every error of `obj`.
    fn into_result(self, obj: &Object) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid {
                object: obj.describe(),
                errors: self.0,
            })
        }
    }
}

/// Validates a (defaulted) object.
pub fn validate(obj: &Object) -> Result<(), Invalid> {
    let mut e = Errs::default();
    let kind = obj.kind();
    let name = obj.name();
    if name.is_empty() {
        e.add("metadata.name", "required");
    } else if let Some(why) = match kind.info().name_rule {
        NameRule::Label => dns_label(name),
        NameRule::Subdomain => dns_subdomain(name),
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
    if let Some(hook) = kind.info().strategy.validate {
        hook(obj, &mut e);
    }
    e.into_result(obj)
}

pub(crate) fn protocol(e: &mut Errs, path: &str, p: Option<&str>) {
    if let Some(p) = p {
        if !["TCP", "UDP", "SCTP"].contains(&p) {
            e.add(path, format!("{p:?}: must be TCP, UDP or SCTP"));
        }
    }
}

pub(crate) fn labels_ok(e: &mut Errs, path: &str, labels: &BTreeMap<String, String>) {
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

pub(crate) fn config_key(e: &mut Errs, path: &str, k: &str) {
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

/// Checks an update of `old` to `new` (both validated) against the
/// kind's update rules (immutable fields).
pub fn validate_update(old: &Object, new: &Object) -> Result<(), Invalid> {
    let Some(hook) = new.kind().info().strategy.validate_update else {
        return Ok(());
    };
    let mut e = Errs::default();
    hook(old, new, &mut e);
    e.into_result(new)
}

/// What the registry would say of a manifest at create: its defaults, a
/// uid and the kind's create preparation, then validation; each error as
/// `path: reason`.
#[cfg(test)]
pub(crate) fn create_errors(yaml: &str) -> Vec<String> {
    let mut o = crate::manifest::parse("t", yaml)
        .expect("manifest parses")
        .remove(0);
    crate::defaults::apply(&mut o);
    o.meta_mut().uid = Some("u-1".into());
    if let Some(prepare) = o.kind().info().strategy.prepare_create {
        prepare(&mut o);
    }
    match validate(&o) {
        Ok(()) => Vec::new(),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
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

    fn update(old: &str, new: &str) -> Result<(), Invalid> {
        let mut a = manifest::parse("t", old).unwrap().remove(0);
        let mut b = manifest::parse("t", new).unwrap().remove(0);
        defaults::apply(&mut a);
        defaults::apply(&mut b);
        validate_update(&a, &b)
    }

    #[test]
    fn a_pods_node_hostname_and_subdomain_are_dns_names() {
        let e = create_errors(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  nodeName: ../../etc\n  hostname: A_B\n  subdomain: x.y\n  containers: [{name: c, image: busybox}]\n",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("spec.nodeName: \"../../etc\""), "{e:?}");
        assert!(e[1].starts_with("spec.hostname: \"A_B\""), "{e:?}");
        assert!(e[2].starts_with("spec.subdomain: \"x.y\""), "{e:?}");
    }

    #[test]
    fn a_pod_update_may_change_images_deadline_and_binding_only() {
        let pod = |extra: &str, image: &str| {
            format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n{extra}  containers: [{{name: c, image: {image}}}]\n")
        };
        update(&pod("", "busybox:1"), &pod("", "busybox:2")).unwrap();
        update(&pod("", "busybox"), &pod("  nodeName: n1\n", "busybox")).unwrap();
        update(
            &pod("  activeDeadlineSeconds: 60\n", "busybox"),
            &pod("  activeDeadlineSeconds: 30\n", "busybox"),
        )
        .unwrap();
        let p = paths(update(
            &pod("  activeDeadlineSeconds: 30\n", "busybox"),
            &pod("  activeDeadlineSeconds: 60\n", "busybox"),
        ));
        assert_eq!(
            p,
            vec!["spec.activeDeadlineSeconds: Invalid value: 60: must be less than or equal to previous value"]
        );
        let p = paths(update(
            &pod("", "busybox"),
            &pod("  hostNetwork: true\n", "busybox"),
        ));
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`"), "{p:?}");
        // Moving a bound pod to another node is not a binding.
        assert!(update(
            &pod("  nodeName: n1\n", "busybox"),
            &pod("  nodeName: n2\n", "busybox")
        )
        .is_err());
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
