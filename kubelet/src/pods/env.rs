//! A container's environment, built as kubelet builds it: the Services'
//! docker-link variables, `envFrom` sources, then `env` entries with
//! `$(VAR)` expansion and `valueFrom` references. Pure: ConfigMaps and
//! Secrets come through lookups, node facts through [`EnvSources`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ObjectFieldSelector, Pod, ResourceFieldSelector, Secret, Service,
};

use runtime::spec::expand;
use runtime::spec::quantity::Quantity;

/// Where `valueFrom`/`envFrom` references are resolved (all in the pod's
/// namespace) and the node facts the downward API exposes.
pub struct EnvSources<'a> {
    pub config_maps: &'a dyn Fn(&str) -> Option<ConfigMap>,
    pub secrets: &'a dyn Fn(&str) -> Option<Secret>,
    pub pod_ip: &'a str,
    /// Every pod IP, comma-separated (`status.podIPs`, as kubelet gives it).
    pub pod_ips: &'a str,
    pub host_ip: &'a str,
    pub node_name: &'a str,
}

/// Why a container's environment cannot be built; the message is what
/// kubelet reports with CreateContainerConfigError.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvError(pub String);

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EnvError {}

/// The namespace whose `kubernetes` Service every pod sees.
const MASTER_NAMESPACE: &str = "default";
const MASTER_SERVICE: &str = "kubernetes";

/// Service env vars for every service visible to the pod, as kubelet's
/// getServiceEnvVarMap + envvars.FromServices: the services of the pod's
/// namespace (only with `enableServiceLinks`) and the `kubernetes` service
/// of `default` (always), each with a ClusterIP. Ordered by service name.
pub fn service_env(
    services: &[Service],
    pod_namespace: &str,
    enable_service_links: bool,
) -> Vec<(String, String)> {
    let mut visible: BTreeMap<&str, &Service> = BTreeMap::new();
    for svc in services {
        if !has_cluster_ip(svc) {
            continue;
        }
        let name = svc.metadata.name.as_deref().unwrap_or_default();
        let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
        if ns == MASTER_NAMESPACE && name == MASTER_SERVICE {
            visible.entry(name).or_insert(svc);
        } else if ns == pod_namespace && enable_service_links {
            visible.insert(name, svc);
        }
    }
    visible.values().flat_map(|s| service_vars(s)).collect()
}

fn has_cluster_ip(svc: &Service) -> bool {
    let ip = svc
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .unwrap_or_default();
    !ip.is_empty() && ip != "None"
}

/// `my-svc` → `MY_SVC`.
fn env_name(s: &str) -> String {
    s.replace('-', "_").to_uppercase()
}

/// envvars.FromServices for one service: `_SERVICE_HOST`, `_SERVICE_PORT`
/// (+ one per named port) and the docker link variables.
fn service_vars(svc: &Service) -> Vec<(String, String)> {
    let Some(spec) = svc.spec.as_ref() else {
        return Vec::new();
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let ip = spec.cluster_ip.clone().unwrap_or_default();
    let Some(first) = ports.first() else {
        return Vec::new();
    };
    let prefix = env_name(svc.metadata.name.as_deref().unwrap_or_default());
    let mut out = vec![
        (format!("{prefix}_SERVICE_HOST"), ip.clone()),
        (format!("{prefix}_SERVICE_PORT"), first.port.to_string()),
    ];
    for p in ports {
        if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{prefix}_SERVICE_PORT_{}", env_name(n)),
                p.port.to_string(),
            ));
        }
    }
    // An IPv6 address needs brackets in a URL.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let url = format!("{}://{host}:{}", proto.to_lowercase(), p.port);
        if i == 0 {
            out.push((format!("{prefix}_PORT"), url.clone()));
        }
        let pp = format!("{prefix}_PORT_{}_{}", p.port, proto.to_uppercase());
        out.push((pp.clone(), url));
        out.push((format!("{pp}_PROTO"), proto.to_lowercase()));
        out.push((format!("{pp}_PORT"), p.port.to_string()));
        out.push((format!("{pp}_ADDR"), ip.clone()));
    }
    out
}

/// kubelet's IsEnvVarName: `[-._a-zA-Z][-._a-zA-Z0-9]*`.
fn is_env_var_name(s: &str) -> bool {
    let ok = |c: u8, first: bool| {
        c.is_ascii_alphabetic()
            || c == b'-'
            || c == b'.'
            || c == b'_'
            || (!first && c.is_ascii_digit())
    };
    let b = s.as_bytes();
    !b.is_empty() && ok(b[0], true) && b[1..].iter().all(|&c| ok(c, false))
}

/// An environment where setting a name again replaces its value in place.
#[derive(Default)]
struct Vars {
    list: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Vars {
    fn set(&mut self, k: String, v: String) {
        match self.index.get(&k) {
            Some(&i) => self.list[i].1 = v,
            None => {
                self.index.insert(k.clone(), self.list.len());
                self.list.push((k, v));
            }
        }
    }

    fn get(&self, k: &str) -> Option<String> {
        self.index.get(k).map(|&i| self.list[i].1.clone())
    }
}

/// The pod's namespace, for messages.
fn pod_namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().unwrap_or("default")
}

/// A Secret's values: `data`, then `stringData` (which the API server
/// merges into `data` on write; a store that does not still works).
fn secret_values(s: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Fetches ConfigMaps and Secrets once per container.
struct Refs<'a> {
    src: &'a EnvSources<'a>,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Refs<'_> {
    fn config_map(&mut self, name: &str) -> Option<&BTreeMap<String, String>> {
        let src = self.src;
        self.config_maps
            .entry(name.to_string())
            .or_insert_with(|| (src.config_maps)(name).map(|c| c.data.unwrap_or_default()))
            .as_ref()
    }

    fn secret(&mut self, name: &str) -> Option<&BTreeMap<String, String>> {
        let src = self.src;
        self.secrets
            .entry(name.to_string())
            .or_insert_with(|| (src.secrets)(name).map(|s| secret_values(&s)))
            .as_ref()
    }
}

/// The container's env, as kubelet's makeEnvironmentVariables: the service
/// env first, then `envFrom` (in order; invalid names skipped), then `env`
/// entries in order (`$(VAR)` expanded from what precedes them, or
/// resolved from `valueFrom`). A name set again keeps its first position
/// and takes the later value.
pub fn container_env(
    pod: &Pod,
    c: &Container,
    service_env: &[(String, String)],
    src: &EnvSources,
) -> Result<Vec<(String, String)>, EnvError> {
    let ns = pod_namespace(pod);
    let mut refs = Refs {
        src,
        config_maps: HashMap::new(),
        secrets: HashMap::new(),
    };
    let mut vars = Vars::default();
    for (k, v) in service_env {
        vars.set(k.clone(), v.clone());
    }

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        let (values, skipped_from) = if let Some(r) = &from.config_map_ref {
            let optional = r.optional == Some(true);
            match refs.config_map(&r.name) {
                Some(d) => (d.clone(), format!("configMap {ns}/{}", r.name)),
                None if optional => continue,
                None => return Err(EnvError(format!("configmap {:?} not found", r.name))),
            }
        } else if let Some(r) = &from.secret_ref {
            let optional = r.optional == Some(true);
            match refs.secret(&r.name) {
                Some(d) => (d.clone(), format!("secret {ns}/{}", r.name)),
                None if optional => continue,
                None => return Err(EnvError(format!("secret {:?} not found", r.name))),
            }
        } else {
            continue;
        };
        let mut invalid = Vec::new();
        for (k, v) in values {
            let name = format!("{prefix}{k}");
            if is_env_var_name(&name) {
                vars.set(name, v);
            } else {
                invalid.push(name);
            }
        }
        if !invalid.is_empty() {
            tracing::warn!(
                pod = %pod.metadata.name.as_deref().unwrap_or_default(),
                container = %c.name,
                keys = %invalid.join(", "),
                "keys from the envFrom {skipped_from} were skipped since they are not valid environment variable names"
            );
        }
    }

    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) if !v.is_empty() => expand(v, &|name| vars.get(name)),
            (_, Some(from)) => {
                let resolved = if let Some(f) = &from.field_ref {
                    Some(field_value(pod, f, src)?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_value(pod, Some(c), r)?)
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match refs.config_map(&r.name) {
                        None if optional => None,
                        None => return Err(EnvError(format!("configmap {:?} not found", r.name))),
                        Some(d) => match d.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in ConfigMap {}/{}",
                                    r.key, ns, r.name
                                )))
                            }
                        },
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match refs.secret(&r.name) {
                        None if optional => None,
                        None => return Err(EnvError(format!("secret {:?} not found", r.name))),
                        Some(d) => match d.get(&r.key) {
                            Some(v) => Some(v.clone()),
                            None if optional => None,
                            None => {
                                return Err(EnvError(format!(
                                    "couldn't find key {} in Secret {}/{}",
                                    r.key, ns, r.name
                                )))
                            }
                        },
                    }
                } else {
                    Some(String::new())
                };
                match resolved {
                    Some(v) => v,
                    // An optional reference that is missing sets nothing.
                    None => continue,
                }
            }
            _ => String::new(),
        };
        vars.set(e.name.clone(), value);
    }
    Ok(vars.list)
}

/// The downward API's `fieldRef` (kubelet's podFieldSelectorRuntimeValue).
fn field_value(pod: &Pod, f: &ObjectFieldSelector, src: &EnvSources) -> Result<String, EnvError> {
    let spec = pod.spec.as_ref();
    let md = &pod.metadata;
    let path = f.field_path.as_str();
    let map_value = |map: Option<&BTreeMap<String, String>>, key: &str| {
        map.and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    let subscript = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
    };
    Ok(match path {
        "metadata.name" => md.name.clone().unwrap_or_default(),
        "metadata.namespace" => pod_namespace(pod).to_string(),
        "metadata.uid" => md.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(md.labels.as_ref()),
        "metadata.annotations" => format_map(md.annotations.as_ref()),
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| src.node_name.to_string()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => src.host_ip.to_string(),
        "status.podIP" => src.pod_ip.to_string(),
        "status.podIPs" => src.pod_ips.to_string(),
        _ => {
            if let Some(k) = subscript("metadata.labels") {
                map_value(md.labels.as_ref(), k)
            } else if let Some(k) = subscript("metadata.annotations") {
                map_value(md.annotations.as_ref(), k)
            } else {
                return Err(EnvError(format!("unsupported fieldPath: {path}")));
            }
        }
    })
}

/// The fieldPaths a downward API volume may use: the pod's metadata only
/// (the API server's validVolumeDownwardAPIFieldPathExpressions).
pub(crate) fn volume_field_value(pod: &Pod, f: &ObjectFieldSelector) -> Result<String, EnvError> {
    let path = f.field_path.as_str();
    let allowed = matches!(
        path,
        "metadata.name"
            | "metadata.namespace"
            | "metadata.uid"
            | "metadata.labels"
            | "metadata.annotations"
    ) || path.starts_with("metadata.labels['")
        || path.starts_with("metadata.annotations['");
    if !allowed {
        return Err(EnvError(format!(
            "unsupported fieldPath in a volume: {path} (metadata.name, metadata.namespace, \
             metadata.uid, metadata.labels, metadata.annotations; the others only as env vars)"
        )));
    }
    let src = EnvSources {
        config_maps: &|_| None,
        secrets: &|_| None,
        pod_ip: "",
        pod_ips: "",
        host_ip: "",
        node_name: "",
    };
    field_value(pod, f, &src)
}

/// `key="value"` lines, sorted, as the downward API formats a map.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The downward API's `resourceFieldRef` (kubelet's
/// ExtractContainerResourceValue): a limit left out is the node's
/// capacity; the value is divided by `divisor` and rounded up.
pub(crate) fn resource_value(
    pod: &Pod,
    c: Option<&Container>,
    r: &ResourceFieldSelector,
) -> Result<String, EnvError> {
    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => c.ok_or_else(|| EnvError("containerName is required".into()))?,
        Some(name) => {
            let spec = pod.spec.as_ref();
            let all = spec
                .map(|s| s.containers.iter())
                .into_iter()
                .flatten()
                .chain(
                    spec.and_then(|s| s.init_containers.as_ref())
                        .into_iter()
                        .flatten(),
                );
            all.into_iter()
                .find(|x| x.name == name)
                .ok_or_else(|| EnvError(format!("container {name} not found")))?
        }
    };
    let parse = |s: &str, what: &str| {
        Quantity::parse(s).map_err(|e| EnvError(format!("resourceFieldRef {what}: {e}")))
    };
    let divisor = match &r.divisor {
        Some(d) => parse(&d.0, "divisor")?,
        None => parse("1", "divisor")?,
    };
    let res = target.resources.as_ref();
    let (section, name) = r
        .resource
        .split_once('.')
        .ok_or_else(|| EnvError(format!("unsupported container resource : {}", r.resource)))?;
    let map = match section {
        "limits" => res.and_then(|x| x.limits.as_ref()),
        "requests" => res.and_then(|x| x.requests.as_ref()),
        _ => {
            return Err(EnvError(format!(
                "unsupported container resource : {}",
                r.resource
            )))
        }
    };
    let given = match map.and_then(|m| m.get(name)) {
        Some(q) => Some(parse(&q.0, &r.resource)?),
        // A request left out defaults to the limit.
        None if section == "requests" => res
            .and_then(|x| x.limits.as_ref())
            .and_then(|m| m.get(name))
            .map(|q| parse(&q.0, &r.resource))
            .transpose()?,
        None => None,
    };
    let out_of_range = || {
        EnvError(format!(
            "resourceFieldRef {}: value is out of range",
            r.resource
        ))
    };
    let value = match name {
        "cpu" => {
            let milli = match given {
                Some(q) => q.milli_value().ok_or_else(out_of_range)?,
                None if section == "limits" => node_milli_cpu(),
                None => 0,
            };
            let d = divisor.milli_value().filter(|d| *d > 0).ok_or_else(|| {
                EnvError(format!(
                    "resourceFieldRef {}: divisor must be positive",
                    r.resource
                ))
            })?;
            div_ceil(milli, d)
        }
        "memory" => {
            let bytes = match given {
                Some(q) => q.value().ok_or_else(out_of_range)?,
                None if section == "limits" => node_memory(),
                None => 0,
            };
            let d = divisor.value().filter(|d| *d > 0).ok_or_else(|| {
                EnvError(format!(
                    "resourceFieldRef {}: divisor must be positive",
                    r.resource
                ))
            })?;
            div_ceil(bytes, d)
        }
        _ => {
            return Err(EnvError(format!(
                "unsupported container resource : {}",
                r.resource
            )))
        }
    };
    Ok(value.to_string())
}

fn div_ceil(a: i64, b: i64) -> i64 {
    (a as i128 + b as i128 - 1).div_euclid(b as i128) as i64
}

/// The node's CPUs in millicores (the default for an unset CPU limit).
fn node_milli_cpu() -> i64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000
}

/// The node's memory in bytes (the default for an unset memory limit).
fn node_memory() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| runtime::spec::mem_total(&m))
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(ns: &str, name: &str, ip: &str, ports: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": ports},
        }))
        .unwrap()
    }

    fn get<'a>(env: &'a [(String, String)], k: &str) -> Option<&'a str> {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn redis_master_docker_link_vars() {
        let s = [svc(
            "default",
            "redis-master",
            "10.96.0.20",
            json!([{"port": 6379}]),
        )];
        let env = service_env(&s, "default", true);
        let want = [
            ("REDIS_MASTER_SERVICE_HOST", "10.96.0.20"),
            ("REDIS_MASTER_SERVICE_PORT", "6379"),
            ("REDIS_MASTER_PORT", "tcp://10.96.0.20:6379"),
            ("REDIS_MASTER_PORT_6379_TCP", "tcp://10.96.0.20:6379"),
            ("REDIS_MASTER_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_MASTER_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_MASTER_PORT_6379_TCP_ADDR", "10.96.0.20"),
        ];
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn named_ports_and_protocols() {
        let s = [svc(
            "web",
            "dns-svc",
            "10.96.0.10",
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
        )];
        let env = service_env(&s, "web", true);
        assert_eq!(get(&env, "DNS_SVC_SERVICE_PORT"), Some("53"));
        assert_eq!(get(&env, "DNS_SVC_SERVICE_PORT_DNS"), Some("53"));
        assert_eq!(get(&env, "DNS_SVC_SERVICE_PORT_DNS_TCP"), Some("53"));
        assert_eq!(get(&env, "DNS_SVC_PORT"), Some("udp://10.96.0.10:53"));
        assert_eq!(get(&env, "DNS_SVC_PORT_53_UDP_PROTO"), Some("udp"));
        assert_eq!(
            get(&env, "DNS_SVC_PORT_53_TCP"),
            Some("tcp://10.96.0.10:53")
        );
    }

    #[test]
    fn visibility_rules() {
        let s = [
            svc(
                "default",
                "kubernetes",
                "10.96.0.1",
                json!([{"name": "https", "port": 443}]),
            ),
            svc("web", "front", "10.96.0.5", json!([{"port": 80}])),
            svc("other", "back", "10.96.0.6", json!([{"port": 80}])),
            svc("web", "headless", "None", json!([{"port": 80}])),
            svc("web", "noports", "10.96.0.7", json!([])),
        ];
        let env = service_env(&s, "web", true);
        assert_eq!(get(&env, "KUBERNETES_SERVICE_HOST"), Some("10.96.0.1"));
        assert_eq!(get(&env, "KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get(&env, "FRONT_SERVICE_HOST"), Some("10.96.0.5"));
        assert!(get(&env, "BACK_SERVICE_HOST").is_none(), "other namespace");
        assert!(get(&env, "HEADLESS_SERVICE_HOST").is_none());
        assert!(get(&env, "NOPORTS_SERVICE_HOST").is_none());
        let off = service_env(&s, "web", false);
        assert!(get(&off, "FRONT_SERVICE_HOST").is_none());
        assert_eq!(get(&off, "KUBERNETES_SERVICE_PORT"), Some("443"));
        assert!(service_env(&s[1..], "web", false).is_empty());
    }

    #[test]
    fn expansion_rules() {
        let vars: HashMap<&str, &str> = [("A", "1"), ("B", "two")].into();
        let l = |n: &str| vars.get(n).map(|v| v.to_string());
        let cases = [
            ("$(A)", "1"),
            ("x$(A)y$(B)z", "x1ytwoz"),
            ("$(C)", "$(C)"),
            ("$$(A)", "$(A)"),
            ("$$$(A)", "$1"),
            ("$$", "$"),
            ("$", "$"),
            ("a$", "a$"),
            ("$(A", "$(A"),
            ("$x", "$x"),
            ("$()", "$()"),
            ("é$(A)ü", "é1ü"),
            ("$é", "$é"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, &l), want, "{input:?}");
        }
    }

    fn pod(env: serde_json::Value, env_from: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web", "tier": "front"}, "annotations": {"a": "b"}},
            "spec": {"nodeName": "", "serviceAccountName": "sa",
                "containers": [{"name": "app", "image": "b", "env": env, "envFrom": env_from,
                    "resources": {"limits": {"memory": "128Mi", "cpu": "1500m"}, "requests": {"cpu": "250m"}}}]},
        }))
        .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    fn cm(name: &str, data: serde_json::Value) -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}, "data": data})).unwrap()
    }

    fn with_sources<T>(f: impl FnOnce(&EnvSources) -> T) -> T {
        let cms = |n: &str| match n {
            "cfg" => Some(cm(
                "cfg",
                json!({"mode": "fast", "LEVEL": "3", "bad key": "x"}),
            )),
            _ => None,
        };
        let secs = |n: &str| -> Option<Secret> {
            (n == "creds").then(|| {
                serde_json::from_value(json!({"metadata": {"name": "creds"},
                    "data": {"password": "czNjcjN0"}, "stringData": {"user": "admin"}}))
                .unwrap()
            })
        };
        f(&EnvSources {
            config_maps: &cms,
            secrets: &secs,
            pod_ip: "10.244.0.7",
            pod_ips: "10.244.0.7,fd00:10:244::7",
            host_ip: "192.0.2.10",
            node_name: "node-a",
        })
    }

    fn env_of(
        env: serde_json::Value,
        env_from: serde_json::Value,
    ) -> Result<Vec<(String, String)>, EnvError> {
        let (p, c) = pod(env, env_from);
        let svc = vec![("FRONT_SERVICE_HOST".to_string(), "10.96.0.5".to_string())];
        with_sources(|s| container_env(&p, &c, &svc, s))
    }

    #[test]
    fn env_entries_in_order_with_expansion() {
        let env = env_of(
            json!([
                {"name": "FIRST", "value": "1"},
                {"name": "URL", "value": "http://$(FRONT_SERVICE_HOST):$(PORT)/$(FIRST)"},
                {"name": "PORT", "value": "8080"},
                {"name": "ESC", "value": "$$(FIRST)"},
                {"name": "EMPTY"},
                {"name": "FIRST", "value": "again"},
            ]),
            json!(null),
        )
        .unwrap();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            ["FRONT_SERVICE_HOST", "FIRST", "URL", "PORT", "ESC", "EMPTY"]
        );
        assert_eq!(
            get(&env, "URL"),
            Some("http://10.96.0.5:$(PORT)/1"),
            "later vars are not visible"
        );
        assert_eq!(get(&env, "ESC"), Some("$(FIRST)"));
        assert_eq!(get(&env, "EMPTY"), Some(""));
        assert_eq!(get(&env, "FIRST"), Some("again"));
    }

    #[test]
    fn value_from_references() {
        let env = env_of(
            json!([
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                {"name": "USER", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "user"}}},
                {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": true}}},
                {"name": "OPTKEY", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k", "optional": true}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "IPS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIPs"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "LABELS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "CPUM", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu", "divisor": "1m"}}},
            ]),
            json!(null),
        )
        .unwrap();
        let want = [
            ("MODE", "fast"),
            ("PW", "s3cr3t"),
            ("USER", "admin"),
            ("POD", "web"),
            ("NS", "shop"),
            ("UID", "u-1"),
            ("IP", "10.244.0.7"),
            ("IPS", "10.244.0.7,fd00:10:244::7"),
            ("HOST", "192.0.2.10"),
            ("NODE", "node-a"),
            ("SA", "sa"),
            ("APP", "web"),
            ("LABELS", "app=\"web\"\ntier=\"front\""),
            ("MEM", "128"),
            ("CPU", "2"),
            ("CPUM", "250"),
        ];
        for (k, v) in want {
            assert_eq!(get(&env, k), Some(v), "{k}");
        }
        assert!(get(&env, "OPT").is_none() && get(&env, "OPTKEY").is_none());
    }

    #[test]
    fn missing_references_read_like_kubelet() {
        let e = |v: serde_json::Value| env_of(json!([v]), json!(null)).unwrap_err().to_string();
        assert_eq!(
            e(json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "x", "key": "k"}}})),
            "configmap \"x\" not found"
        );
        assert_eq!(
            e(json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}})),
            "couldn't find key k in ConfigMap shop/cfg"
        );
        assert_eq!(
            e(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})),
            "secret \"s\" not found"
        );
        assert_eq!(
            e(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}})),
            "couldn't find key k in Secret shop/creds"
        );
        assert_eq!(
            e(json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.bogus"}}})),
            "unsupported fieldPath: spec.bogus"
        );
        let from = env_of(json!(null), json!([{"configMapRef": {"name": "gone"}}])).unwrap_err();
        assert_eq!(from.to_string(), "configmap \"gone\" not found");
        assert!(env_of(
            json!(null),
            json!([{"secretRef": {"name": "gone", "optional": true}}])
        )
        .is_ok());
    }

    #[test]
    fn env_from_with_prefix_then_env_wins() {
        let env = env_of(
            json!([{"name": "CFG_mode", "value": "slow"}]),
            json!([{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}]),
        )
        .unwrap();
        assert_eq!(get(&env, "CFG_LEVEL"), Some("3"));
        assert_eq!(get(&env, "CFG_mode"), Some("slow"));
        assert!(
            get(&env, "CFG_bad key").is_none(),
            "invalid names are skipped"
        );
        assert_eq!(get(&env, "password"), Some("s3cr3t"));
        assert_eq!(get(&env, "user"), Some("admin"));
    }

    #[test]
    fn env_var_names() {
        for ok in ["A", "a_b", "_x", "-x", ".x", "x1.y-z"] {
            assert!(is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1a", "a b", "a=b", "ü"] {
            assert!(!is_env_var_name(bad), "{bad}");
        }
    }
}
