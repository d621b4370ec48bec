//! Descriptors of the kinds a node itself uses: core `v1` (Namespace,
//! ConfigMap, Secret, Service, Pod, Node), `coordination.k8s.io/v1` Lease
//! and knode's SubnetLease. Data only; the rules live in `validate` and
//! `defaults`.

use super::{
    carry_hook, copy_status, mut_hook, validate_hook, validate_update_hook, KindInfo, NameRule,
    Strategy, Subresource,
};
use crate::{defaults, validate};

pub(super) static NAMESPACE: KindInfo = KindInfo {
    short_names: &["ns"],
    name_rule: NameRule::Label,
    subresources: &[Subresource::Status],
    strategy: Strategy {
        status: Some(copy_status!(Namespace)),
        ..Strategy::PLAIN
    },
    ..KindInfo::cluster("Namespace", "v1", "namespaces", "namespace")
};

pub(super) static CONFIG_MAP: KindInfo = KindInfo {
    short_names: &["cm"],
    strategy: Strategy {
        validate: Some(validate_hook!(ConfigMap, validate::core::config_map)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("ConfigMap", "v1", "configmaps", "configmap")
};

pub(super) static SECRET: KindInfo = KindInfo {
    strategy: Strategy {
        default: Some(mut_hook!(Secret, defaults::core::secret)),
        validate: Some(validate_hook!(Secret, validate::core::secret)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("Secret", "v1", "secrets", "secret")
};

pub(super) static SERVICE: KindInfo = KindInfo {
    short_names: &["svc"],
    categories: &["all"],
    name_rule: NameRule::Label,
    subresources: &[Subresource::Status],
    strategy: Strategy {
        default: Some(mut_hook!(Service, defaults::core::service)),
        validate: Some(validate_hook!(Service, validate::core::service)),
        status: Some(copy_status!(Service)),
        carry: Some(carry_hook!(Service, defaults::core::carry_service)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("Service", "v1", "services", "service")
};

pub(super) static POD: KindInfo = KindInfo {
    short_names: &["po"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Binding],
    strategy: Strategy {
        default: Some(mut_hook!(Pod, defaults::core::pod)),
        validate: Some(validate_hook!(Pod, validate::core::pod)),
        validate_update: Some(validate_update_hook!(Pod, validate::core::pod_update)),
        prepare_create: Some(mut_hook!(Pod, defaults::core::pod_status_pending)),
        status: Some(copy_status!(Pod)),
        carry: Some(carry_hook!(Pod, defaults::core::carry_pod)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("Pod", "v1", "pods", "pod")
};

pub(super) static NODE: KindInfo = KindInfo {
    short_names: &["no"],
    subresources: &[Subresource::Status],
    ttl: true,
    strategy: Strategy {
        status: Some(copy_status!(Node)),
        ..Strategy::PLAIN
    },
    ..KindInfo::cluster("Node", "v1", "nodes", "node")
};

pub(super) static LEASE: KindInfo = KindInfo {
    ttl: true,
    ..KindInfo::namespaced("Lease", "coordination.k8s.io/v1", "leases", "lease")
};

pub(super) static SUBNET_LEASE: KindInfo = KindInfo {
    ttl: true,
    strategy: Strategy {
        validate: Some(validate_hook!(SubnetLease, validate::core::subnet_lease)),
        ..Strategy::PLAIN
    },
    ..KindInfo::cluster("SubnetLease", "knode.io/v1", "subnetleases", "subnetlease")
};

/// Events expire as kube-apiserver's `--event-ttl` makes them (the
/// kubelet writes them with a TTL of an hour).
pub(super) static EVENT: KindInfo = KindInfo {
    short_names: &["ev"],
    ttl: true,
    strategy: Strategy {
        validate: Some(validate_hook!(Event, validate::core::event)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("Event", "v1", "events", "event")
};
