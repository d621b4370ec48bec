//! Descriptors of the kinds a node itself uses: core `v1` (Namespace,
//! ConfigMap, Secret, Service, Pod, Node), `coordination.k8s.io/v1` Lease
//! and knode's SubnetLease. Data only; the rules live in `validate` and
//! `defaults`.

use super::{
    copy_status, mut_hook, validate_hook, KindInfo, NameRule, Strategy, Subresource, STANDARD_VERBS,
};
use crate::{defaults, validate};

pub(super) static NAMESPACE: KindInfo = KindInfo {
    kind: "Namespace",
    api_version: "v1",
    plural: "namespaces",
    singular: "namespace",
    short_names: &["ns"],
    categories: &[],
    namespaced: false,
    name_rule: NameRule::Label,
    subresources: &[Subresource::Status],
    verbs: STANDARD_VERBS,
    ttl: false,
    strategy: Strategy {
        status: Some(copy_status!(Namespace)),
        ..Strategy::PLAIN
    },
};

pub(super) static CONFIG_MAP: KindInfo = KindInfo {
    kind: "ConfigMap",
    api_version: "v1",
    plural: "configmaps",
    singular: "configmap",
    short_names: &["cm"],
    categories: &[],
    namespaced: true,
    name_rule: NameRule::Subdomain,
    subresources: &[],
    verbs: STANDARD_VERBS,
    ttl: false,
    strategy: Strategy {
        validate: Some(validate_hook!(ConfigMap, validate::core::config_map)),
        ..Strategy::PLAIN
    },
};

pub(super) static SECRET: KindInfo = KindInfo {
    kind: "Secret",
    api_version: "v1",
    plural: "secrets",
    singular: "secret",
    short_names: &[],
    categories: &[],
    namespaced: true,
    name_rule: NameRule::Subdomain,
    subresources: &[],
    verbs: STANDARD_VERBS,
    ttl: false,
    strategy: Strategy {
        default: Some(mut_hook!(Secret, defaults::core::secret)),
        validate: Some(validate_hook!(Secret, validate::core::secret)),
        ..Strategy::PLAIN
    },
};

pub(super) static SERVICE: KindInfo = KindInfo {
    kind: "Service",
    api_version: "v1",
    plural: "services",
    singular: "service",
    short_names: &["svc"],
    categories: &["all"],
    namespaced: true,
    name_rule: NameRule::Label,
    subresources: &[Subresource::Status],
    verbs: STANDARD_VERBS,
    ttl: false,
    strategy: Strategy {
        default: Some(mut_hook!(Service, defaults::core::service)),
        validate: Some(validate_hook!(Service, validate::core::service)),
        status: Some(copy_status!(Service)),
        ..Strategy::PLAIN
    },
};

pub(super) static POD: KindInfo = KindInfo {
    kind: "Pod",
    api_version: "v1",
    plural: "pods",
    singular: "pod",
    short_names: &["po"],
    categories: &["all"],
    namespaced: true,
    name_rule: NameRule::Subdomain,
    subresources: &[Subresource::Status],
    verbs: STANDARD_VERBS,
    ttl: false,
    strategy: Strategy {
        default: Some(mut_hook!(Pod, defaults::core::pod)),
        validate: Some(validate_hook!(Pod, validate::core::pod)),
        validate_update: None,
        prepare_create: Some(mut_hook!(Pod, defaults::core::pod_status_pending)),
        status: Some(copy_status!(Pod)),
    },
};

pub(super) static NODE: KindInfo = KindInfo {
    kind: "Node",
    api_version: "v1",
    plural: "nodes",
    singular: "node",
    short_names: &["no"],
    categories: &[],
    namespaced: false,
    name_rule: NameRule::Subdomain,
    subresources: &[Subresource::Status],
    verbs: STANDARD_VERBS,
    ttl: true,
    strategy: Strategy {
        status: Some(copy_status!(Node)),
        ..Strategy::PLAIN
    },
};

pub(super) static LEASE: KindInfo = KindInfo {
    kind: "Lease",
    api_version: "coordination.k8s.io/v1",
    plural: "leases",
    singular: "lease",
    short_names: &[],
    categories: &[],
    namespaced: true,
    name_rule: NameRule::Subdomain,
    subresources: &[],
    verbs: STANDARD_VERBS,
    ttl: true,
    strategy: Strategy::PLAIN,
};

pub(super) static SUBNET_LEASE: KindInfo = KindInfo {
    kind: "SubnetLease",
    api_version: "knode.io/v1",
    plural: "subnetleases",
    singular: "subnetlease",
    short_names: &[],
    categories: &[],
    namespaced: false,
    name_rule: NameRule::Subdomain,
    subresources: &[],
    verbs: STANDARD_VERBS,
    ttl: true,
    strategy: Strategy {
        validate: Some(validate_hook!(SubnetLease, validate::core::subnet_lease)),
        ..Strategy::PLAIN
    },
};
