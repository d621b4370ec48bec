//! `knode get` output, rendered the way kubectl 1.3x renders it: tables
//! (and their `-o wide` columns), `-o name`, `-o json` and `-o yaml`.
//! Pure functions from objects to strings: no I/O, no store access and no
//! clock (the caller passes `now`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::str::FromStr;

use controlplane::endpoints::{endpoints_for, Endpoints};
use controlplane::objects::SubnetLease;
use controlplane::{Kind, Object};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStatus, Namespace, Node, Pod, PodCondition, Secret,
    Service, ServicePort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;
use serde_json::{json, Map, Value};

mod pod;
mod workloads;
use pod::pod_cells;
use workloads::*;

/// What kubectl prints for an absent value.
const NONE: &str = "<none>";
/// What kubectl prints for an unknown value (e.g. no creationTimestamp).
const UNKNOWN: &str = "<unknown>";
/// kubectl's tabwriter: minimum column width and padding after each cell.
const MIN_WIDTH: usize = 6;
const PADDING: usize = 3;
/// kubectl's JSON printer indents with four spaces (`json.Indent(.., "    ")`).
const JSON_INDENT: &[u8] = b"    ";
/// kubectl shows at most this many `ip:port` pairs in the ENDPOINTS column.
const MAX_ENDPOINTS: usize = 3;
/// kubectl truncates LoadBalancer ingress lists longer than this (not wide).
const LOAD_BALANCER_WIDTH: usize = 16;

/// The `-o` output formats `knode get` supports; `Table` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl FromStr for Output {
    type Err = String;

    /// Parses the `-o` argument: `wide`, `yaml`, `json` or `name`.
    fn from_str(s: &str) -> Result<Output, String> {
        match s {
            "wide" => Ok(Output::Wide),
            "yaml" => Ok(Output::Yaml),
            "json" => Ok(Output::Json),
            "name" => Ok(Output::Name),
            _ => Err(format!(
                "unable to match a printer suitable for the output format {s:?}, \
                 allowed formats are: json,name,wide,yaml"
            )),
        }
    }
}

/// How to render: the format, whether a NAMESPACE column is wanted
/// (`--all-namespaces`), and the time AGE is measured against.
#[derive(Debug, Clone)]
pub struct PrintOptions {
    pub output: Output,
    pub all_namespaces: bool,
    pub now: Timestamp,
}

/// Renders objects of one kind.
///
/// `single`: the user asked for one object by name, so yaml/json print that
/// object itself instead of a `List`. Tables and `-o name` of no items are
/// empty (the caller prints [`no_resources`]); yaml/json of no items is an
/// empty `List`, as kubectl prints. Table rows are only printed for items
/// of `kind` (others would not fit the columns).
pub fn objects(kind: Kind, items: &[Object], single: bool, opts: &PrintOptions) -> String {
    match opts.output {
        Output::Table | Output::Wide => {
            let wide = opts.output == Output::Wide;
            let ns_column = opts.all_namespaces && kind.namespaced();
            let rows = items
                .iter()
                .filter(|o| o.kind() == kind)
                .map(|o| {
                    let mut row = Vec::new();
                    if ns_column {
                        row.push(o.namespace().to_string());
                    }
                    row.extend(cells(o, wide, opts.now));
                    row
                })
                .collect();
            table(headers(kind, wide), ns_column, rows)
        }
        Output::Name => items
            .iter()
            .map(|o| format!("{}/{}\n", crate::cli::resource(o.kind()), o.name()))
            .collect(),
        Output::Json | Output::Yaml => document(
            items.iter().map(Object::to_value).collect(),
            single,
            opts.output,
        ),
    }
}

/// `knode get endpoints`: one row per Service, like kubectl's Endpoints
/// table (`NAME ENDPOINTS AGE`, AGE of the Service). Only the Service and
/// Pod variants of `services` and `pods` are used. For yaml/json, one v1
/// `Endpoints`-shaped object per Service, as a `List` unless `single`.
pub fn endpoints(
    services: &[Object],
    pods: &[Object],
    single: bool,
    opts: &PrintOptions,
) -> String {
    let pods: Vec<Pod> = pods
        .iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some((**p).clone()),
            _ => None,
        })
        .collect();
    let services: Vec<(&Service, Option<Vec<Endpoints>>)> = services
        .iter()
        .filter_map(|o| match o {
            Object::Service(s) => Some((s.as_ref(), endpoints_for(s, &pods))),
            _ => None,
        })
        .collect();

    match opts.output {
        Output::Table | Output::Wide => {
            let rows = services
                .iter()
                .map(|(svc, subsets)| {
                    let mut row = Vec::new();
                    if opts.all_namespaces {
                        row.push(svc.metadata.namespace.clone().unwrap_or_default());
                    }
                    row.push(svc.metadata.name.clone().unwrap_or_default());
                    row.push(format_endpoints(subsets.as_deref().unwrap_or(&[])));
                    row.push(age(&svc.metadata, opts.now));
                    row
                })
                .collect();
            table(vec!["NAME", "ENDPOINTS", "AGE"], opts.all_namespaces, rows)
        }
        Output::Name => services
            .iter()
            .map(|(svc, _)| format!("endpoints/{}\n", svc.metadata.name.as_deref().unwrap_or("")))
            .collect(),
        Output::Json | Output::Yaml => document(
            services
                .iter()
                .map(|(svc, subsets)| endpoints_value(svc, subsets.as_deref().unwrap_or(&[])))
                .collect(),
            single,
            opts.output,
        ),
    }
}

/// kubectl's message for an empty listing: "No resources found in default
/// namespace." for one namespace, "No resources found" for all namespaces
/// or cluster-scoped kinds. No trailing newline.
pub fn no_resources(namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("No resources found in {ns} namespace."),
        None => "No resources found".to_string(),
    }
}

/// kubectl's AGE: apimachinery's `duration.HumanDuration(now - since)`.
/// Precise at first (`90s`, `3m12s`, `5h30m`, `3d4h`, `3y45d`), coarser as
/// it grows; `0s` up to a second in the future, `<invalid>` beyond.
pub fn human_age(since: Timestamp, now: Timestamp) -> String {
    // Truncates toward zero, like Go's int(d.Seconds()).
    let seconds = now.duration_since(since).as_secs();
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return with_rest(minutes, "m", seconds % 60, "s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return with_rest(hours, "h", minutes % 60, "m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return with_rest(days, "d", hours % 24, "h");
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return with_rest(years, "y", days % 365, "d");
    }
    format!("{years}y")
}

/// `3m12s`, or `3m` when the rest is zero.
fn with_rest(n: i64, unit: &str, rest: i64, rest_unit: &str) -> String {
    if rest == 0 {
        format!("{n}{unit}")
    } else {
        format!("{n}{unit}{rest}{rest_unit}")
    }
}

/// Lays out rows like kubectl's tabwriter (min width 6, padding 3): every
/// column but the last padded to its widest cell plus three spaces. Empty
/// when there are no rows.
fn table(headers: Vec<&str>, ns_column: bool, rows: Vec<Vec<String>>) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    let header = ns_column
        .then_some("NAMESPACE")
        .into_iter()
        .chain(headers)
        .map(str::to_string)
        .collect();
    all.push(header);
    all.extend(rows);

    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|j| {
            let widest = all
                .iter()
                .filter_map(|row| row.get(j))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0);
            (widest + PADDING).max(MIN_WIDTH)
        })
        .collect();

    let mut out = String::new();
    for row in &all {
        let mut line = String::new();
        for (j, cell) in row.iter().enumerate() {
            if j + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}", width = widths[j]);
            }
        }
        out.push_str(line.trim_end_matches(' '));
        out.push('\n');
    }
    out
}

/// The column headers of `kind` (without NAMESPACE).
pub(crate) fn headers(kind: Kind, wide: bool) -> Vec<&'static str> {
    let (base, extra): (&[&'static str], &[&'static str]) = match kind {
        Kind::Pod => (
            &["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            &["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
        ),
        Kind::Service => (
            &[
                "NAME",
                "TYPE",
                "CLUSTER-IP",
                "EXTERNAL-IP",
                "PORT(S)",
                "AGE",
            ],
            &["SELECTOR"],
        ),
        Kind::Node => (
            &["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
            &[
                "INTERNAL-IP",
                "EXTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ],
        ),
        Kind::Namespace => (&["NAME", "STATUS", "AGE"], &[]),
        Kind::ConfigMap => (&["NAME", "DATA", "AGE"], &[]),
        Kind::Secret => (&["NAME", "TYPE", "DATA", "AGE"], &[]),
        Kind::Lease => (&["NAME", "HOLDER", "AGE"], &[]),
        Kind::SubnetLease => (
            &["NAME", "SUBNET", "PUBLIC-IP", "BACKEND", "AGE"],
            &["IPV6-SUBNET", "PUBLIC-IPV6"],
        ),
        Kind::Deployment => (
            &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            CONTAINERS_IMAGES_SELECTOR,
        ),
        Kind::ReplicaSet => (
            &["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
            CONTAINERS_IMAGES_SELECTOR,
        ),
        Kind::DaemonSet => (
            &[
                "NAME",
                "DESIRED",
                "CURRENT",
                "READY",
                "UP-TO-DATE",
                "AVAILABLE",
                "NODE SELECTOR",
                "AGE",
            ],
            CONTAINERS_IMAGES_SELECTOR,
        ),
        Kind::StatefulSet => (&["NAME", "READY", "AGE"], &["CONTAINERS", "IMAGES"]),
        Kind::ControllerRevision => (&["NAME", "CONTROLLER", "REVISION", "AGE"], &[]),
        Kind::Job => (
            &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
            CONTAINERS_IMAGES_SELECTOR,
        ),
        Kind::CronJob => (
            &[
                "NAME",
                "SCHEDULE",
                "TIMEZONE",
                "SUSPEND",
                "ACTIVE",
                "LAST SCHEDULE",
                "AGE",
            ],
            CONTAINERS_IMAGES_SELECTOR,
        ),
        Kind::EndpointSlice => (&["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], &[]),
        Kind::NetworkPolicy => (&["NAME", "POD-SELECTOR", "AGE"], &[]),
        Kind::PodDisruptionBudget => (
            &[
                "NAME",
                "MIN AVAILABLE",
                "MAX UNAVAILABLE",
                "ALLOWED DISRUPTIONS",
                "AGE",
            ],
            &[],
        ),
        Kind::Event => (
            &["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
            &["SUBOBJECT", "SOURCE", "FIRST SEEN", "COUNT", "NAME"],
        ),
    };
    let mut h = base.to_vec();
    if wide {
        h.extend_from_slice(extra);
    }
    h
}

/// The cells of one object's row (without NAMESPACE).
pub(crate) fn cells(obj: &Object, wide: bool, now: Timestamp) -> Vec<String> {
    match obj {
        Object::Pod(p) => pod_cells(p, wide, now),
        Object::Service(s) => service_cells(s, wide, now),
        Object::Node(n) => node_cells(n, wide, now),
        Object::Namespace(ns) => namespace_cells(ns, now),
        Object::ConfigMap(cm) => configmap_cells(cm, now),
        Object::Secret(s) => secret_cells(s, now),
        Object::Lease(l) => lease_cells(l, now),
        Object::SubnetLease(l) => subnet_lease_cells(l, wide, now),
        Object::Deployment(d) => deployment_cells(d, wide, now),
        Object::ReplicaSet(r) => replica_set_cells(r, wide, now),
        Object::DaemonSet(d) => daemon_set_cells(d, wide, now),
        Object::StatefulSet(s) => stateful_set_cells(s, wide, now),
        Object::ControllerRevision(r) => controller_revision_cells(r, now),
        Object::Job(j) => job_cells(j, wide, now),
        Object::CronJob(c) => cron_job_cells(c, wide, now),
        Object::EndpointSlice(s) => endpoint_slice_cells(s, now),
        Object::NetworkPolicy(np) => network_policy_cells(np, now),
        Object::PodDisruptionBudget(p) => pdb_cells(p, now),
        Object::Event(ev) => event_cells(ev, wide, now),
    }
}

/// `metadata.name`, or "".
fn name(meta: &ObjectMeta) -> String {
    meta.name.clone().unwrap_or_default()
}

/// AGE from `metadata.creationTimestamp`, `<unknown>` when unset.
fn age(meta: &ObjectMeta, now: Timestamp) -> String {
    match &meta.creation_timestamp {
        Some(t) => human_age(t.0, now),
        None => UNKNOWN.to_string(),
    }
}

/// `s`, or `<none>` when empty.
fn or_none(s: impl Into<String>) -> String {
    let s = s.into();
    if s.is_empty() {
        NONE.to_string()
    } else {
        s
    }
}

/// kubectl's PORT(S): `80/TCP`, `80:30080/TCP`, comma-joined.
fn format_ports(ports: &[ServicePort]) -> String {
    ports
        .iter()
        .map(|p| {
            let protocol = p.protocol.as_deref().unwrap_or("TCP");
            match p.node_port.filter(|n| *n > 0) {
                Some(node_port) => format!("{}:{node_port}/{protocol}", p.port),
                None => format!("{}/{protocol}", p.port),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// kubectl's EXTERNAL-IP (`getServiceExternalIP`).
fn service_external_ip(svc: &Service, wide: bool) -> String {
    let spec = svc.spec.clone().unwrap_or_default();
    let external_ips = spec.external_ips.unwrap_or_default();
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" | "NodePort" => or_none(external_ips.join(",")),
        "LoadBalancer" => {
            let ingress: BTreeSet<String> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref()?.ingress.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| {
                    non_empty(&i.ip)
                        .or(non_empty(&i.hostname))
                        .map(str::to_string)
                })
                .collect();
            let mut lb = ingress.into_iter().collect::<Vec<_>>().join(",");
            if !wide && lb.chars().count() > LOAD_BALANCER_WIDTH {
                lb = lb.chars().take(LOAD_BALANCER_WIDTH - 3).collect::<String>() + "...";
            }
            let all: Vec<&str> = lb
                .split(',')
                .filter(|s| !s.is_empty())
                .chain(external_ips.iter().map(String::as_str))
                .collect();
            if all.is_empty() {
                "<pending>".to_string()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => spec.external_name.unwrap_or_default(),
        _ => UNKNOWN.to_string(),
    }
}

fn service_cells(svc: &Service, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = svc.spec.clone().unwrap_or_default();
    let cluster_ip = spec
        .cluster_ips
        .as_ref()
        .and_then(|ips| ips.first().cloned())
        .or(spec.cluster_ip.clone())
        .unwrap_or_default();
    let mut row = vec![
        name(&svc.metadata),
        spec.type_
            .clone()
            .unwrap_or_else(|| "ClusterIP".to_string()),
        or_none(cluster_ip),
        service_external_ip(svc, wide),
        or_none(format_ports(spec.ports.as_deref().unwrap_or(&[]))),
        age(&svc.metadata, now),
    ];
    if wide {
        let selector = spec
            .selector
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        row.push(or_none(selector));
    }
    row
}

fn node_cells(node: &Node, wide: bool, now: Timestamp) -> Vec<String> {
    let spec = node.spec.clone().unwrap_or_default();
    let status = node.status.clone().unwrap_or_default();
    // The last Ready condition wins, as in kubectl's condition map.
    let ready = status
        .conditions
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .rev()
        .find(|c| c.type_ == "Ready");
    let mut state = match ready {
        Some(c) if c.status == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if spec.unschedulable == Some(true) {
        state.push_str(",SchedulingDisabled");
    }
    let address = |t: &str| {
        status
            .addresses
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .find(|a| a.type_ == t)
            .map(|a| a.address.clone())
            .unwrap_or_default()
    };
    let info = status.node_info.clone().unwrap_or_default();
    let mut row = vec![
        name(&node.metadata),
        state,
        roles(&node.metadata),
        age(&node.metadata, now),
        info.kubelet_version.clone(),
    ];
    if wide {
        let unknown = |s: String| if s.is_empty() { UNKNOWN.to_string() } else { s };
        row.extend([
            or_none(address("InternalIP")),
            or_none(address("ExternalIP")),
            unknown(info.os_image),
            unknown(info.kernel_version),
            unknown(info.container_runtime_version),
        ]);
    }
    row
}

/// kubectl's ROLES: each `node-role.kubernetes.io/<role>` label (and
/// `kubernetes.io/role`), sorted and comma-joined, or `<none>`.
fn roles(meta: &ObjectMeta) -> String {
    let mut roles: Vec<&str> = meta
        .labels
        .iter()
        .flatten()
        .filter_map(|(k, v)| match k.strip_prefix("node-role.kubernetes.io/") {
            Some(r) if !r.is_empty() => Some(r),
            _ if k == "kubernetes.io/role" && !v.is_empty() => Some(v.as_str()),
            _ => None,
        })
        .collect();
    roles.sort_unstable();
    roles.dedup();
    or_none(roles.join(","))
}

fn namespace_cells(ns: &Namespace, now: Timestamp) -> Vec<String> {
    let phase = ns
        .status
        .as_ref()
        .and_then(|s| non_empty(&s.phase))
        .unwrap_or("Active");
    vec![
        name(&ns.metadata),
        phase.to_string(),
        age(&ns.metadata, now),
    ]
}

fn configmap_cells(cm: &ConfigMap, now: Timestamp) -> Vec<String> {
    let data =
        cm.data.as_ref().map_or(0, |d| d.len()) + cm.binary_data.as_ref().map_or(0, |d| d.len());
    vec![name(&cm.metadata), data.to_string(), age(&cm.metadata, now)]
}

fn secret_cells(secret: &Secret, now: Timestamp) -> Vec<String> {
    // An API server folds stringData into data and defaults the type; a
    // stored manifest may not have been through one.
    let keys: BTreeSet<&str> = secret
        .data
        .iter()
        .flat_map(|d| d.keys())
        .chain(secret.string_data.iter().flat_map(|d| d.keys()))
        .map(String::as_str)
        .collect();
    let type_ = non_empty(&secret.type_).unwrap_or("Opaque");
    vec![
        name(&secret.metadata),
        type_.to_string(),
        keys.len().to_string(),
        age(&secret.metadata, now),
    ]
}

fn lease_cells(lease: &Lease, now: Timestamp) -> Vec<String> {
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .unwrap_or_default();
    vec![name(&lease.metadata), holder, age(&lease.metadata, now)]
}

fn subnet_lease_cells(lease: &SubnetLease, wide: bool, now: Timestamp) -> Vec<String> {
    let mut cells = vec![
        name(&lease.metadata),
        lease.spec.subnet.to_string(),
        lease.spec.public_ip.to_string(),
        or_none(lease.spec.backend_type.clone()),
        age(&lease.metadata, now),
    ];
    if wide {
        // Dual-stack: the paired IPv6 subnet and the IPv6 underlay address.
        let s = &lease.spec;
        cells.push(s.ipv6_subnet.map_or(NONE.into(), |n| n.to_string()));
        cells.push(s.public_ipv6.map_or(NONE.into(), |ip| ip.to_string()));
    }
    cells
}

/// `values` as kubectl prints them for `-o json`/`-o yaml`: the one value
/// itself when `single`, else a `List`.
fn document(mut values: Vec<Value>, single: bool, output: Output) -> String {
    let doc = if single && values.len() == 1 {
        values.remove(0)
    } else {
        json!({
            "apiVersion": "v1",
            "items": values,
            "kind": "List",
            "metadata": {"resourceVersion": ""},
        })
    };
    if output == Output::Yaml {
        serde_yaml::to_string(&doc).unwrap_or_else(|e| format!("# cannot encode as YAML: {e}\n"))
    } else {
        to_json(&doc)
    }
}

/// Pretty JSON indented like kubectl's, with a trailing newline.
fn to_json(value: &Value) -> String {
    let mut buf = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(JSON_INDENT);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, formatter);
    if let Err(e) = value.serialize(&mut ser) {
        return format!("cannot encode as JSON: {e}\n");
    }
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    s.push('\n');
    s
}

/// `ip:port` (`[ip]:port` for IPv6), like Go's `net.JoinHostPort`.
fn host_port(ip: std::net::IpAddr, port: i32) -> String {
    if ip.is_ipv6() {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// kubectl's ENDPOINTS column (`formatEndpoints`): every ready address for
/// every port, at most three shown, `<none>` when there are none.
fn format_endpoints(subsets: &[Endpoints]) -> String {
    let mut shown = Vec::new();
    let mut count = 0;
    for ss in subsets {
        let ready: Vec<_> = ss.addresses.iter().filter(|a| a.ready).collect();
        let pairs: Vec<String> = if ss.ports.is_empty() {
            ready.iter().map(|a| a.ip.to_string()).collect()
        } else {
            ss.ports
                .iter()
                .flat_map(|p| ready.iter().map(|a| host_port(a.ip, p.port)))
                .collect()
        };
        count += pairs.len();
        shown.extend(
            pairs
                .into_iter()
                .take(MAX_ENDPOINTS.saturating_sub(shown.len())),
        );
    }
    if shown.is_empty() {
        NONE.to_string()
    } else if count > MAX_ENDPOINTS {
        format!("{} + {} more...", shown.join(","), count - MAX_ENDPOINTS)
    } else {
        shown.join(",")
    }
}

/// A v1 `Endpoints` object for `svc` with `subsets`.
fn endpoints_value(svc: &Service, subsets: &[Endpoints]) -> Value {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let mut metadata = Map::new();
    metadata.insert("name".into(), name(&svc.metadata).into());
    metadata.insert("namespace".into(), namespace.clone().into());

    let address = |e: &controlplane::endpoints::Endpoint| {
        let (pod_ns, pod_name) = e.pod.split_once('/').unwrap_or((&namespace, &e.pod));
        let mut a = Map::new();
        a.insert("ip".into(), e.ip.to_string().into());
        if let Some(node) = &e.node {
            a.insert("nodeName".into(), node.clone().into());
        }
        a.insert(
            "targetRef".into(),
            json!({"kind": "Pod", "name": pod_name, "namespace": pod_ns}),
        );
        Value::Object(a)
    };
    let subsets: Vec<Value> = subsets
        .iter()
        .map(|ss| {
            let mut s = Map::new();
            let (ready, not_ready): (Vec<_>, Vec<_>) = ss.addresses.iter().partition(|a| a.ready);
            if !ready.is_empty() {
                s.insert("addresses".into(), ready.into_iter().map(address).collect());
            }
            if !not_ready.is_empty() {
                s.insert(
                    "notReadyAddresses".into(),
                    not_ready.into_iter().map(address).collect(),
                );
            }
            if !ss.ports.is_empty() {
                let ports = ss
                    .ports
                    .iter()
                    .map(|p| {
                        let mut port = Map::new();
                        if let Some(n) = &p.name {
                            port.insert("name".into(), n.clone().into());
                        }
                        port.insert("port".into(), p.port.into());
                        port.insert("protocol".into(), p.protocol.clone().into());
                        Value::Object(port)
                    })
                    .collect();
                s.insert("ports".into(), ports);
            }
            Value::Object(s)
        })
        .collect();

    let mut v = Map::new();
    v.insert("apiVersion".into(), "v1".into());
    v.insert("kind".into(), "Endpoints".into());
    v.insert("metadata".into(), Value::Object(metadata));
    if !subsets.is_empty() {
        v.insert("subsets".into(), subsets.into());
    }
    Value::Object(v)
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests;
