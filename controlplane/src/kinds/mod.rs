//! Kinds as data: one [`KindInfo`] per kind (names, group/version, scope,
//! subresources, and its strategy: defaulting, validation, what create and
//! update may change), listed once in the [`kinds!`] table below. Generic
//! code (registry, REST paths, CLI lookups) reads the table; it must not
//! grow a `match` per kind. Adding a kind is one line here, its descriptor
//! in the group's file, and its own validation and defaulting.

mod apps;
mod base;
mod batch;
mod network;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::objects::SubnetLease;
use crate::validate::Errs;

/// Kind-specific validation, after the generic metadata checks.
pub type ValidateFn = fn(&Object, &mut Errs);
/// Kind-specific checks of an update against the stored object
/// (immutable fields), after [`ValidateFn`].
pub type ValidateUpdateFn = fn(old: &Object, new: &Object, &mut Errs);
/// Fills defaults in place; never overrides what the user wrote.
pub type DefaultFn = fn(&mut Object);
/// Resets what a create may not set (e.g. status).
pub type PrepareFn = fn(&mut Object);
/// Copies onto `want` what the server assigned to `current` that a
/// manifest applied again leaves out.
pub type CarryFn = fn(current: &Object, want: &mut Object);
/// Copies the status of `from` onto `to` (both of the same kind).
pub type CopyStatusFn = fn(from: &Object, to: &mut Object);

/// What `metadata.name` must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label (Namespace, Service: they become DNS labels).
    Label,
}

/// A subresource a kind serves beside the object itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: writes only the status; the main resource keeps it.
    Status,
    /// `/scale`: an `autoscaling/v1` Scale over `spec.replicas`.
    Scale,
    /// `/binding`: assigns a pod to a node.
    Binding,
}

impl Subresource {
    /// The path segment (`status`, `scale`, `binding`).
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
        }
    }
}

/// The verbs every kind serves (discovery lists them).
/// The Kubernetes version knode speaks (the kinds' schema, k8s-openapi's
/// feature): major and minor.
pub const KUBE_MAJOR: &str = "1";
pub const KUBE_MINOR: &str = "33";

/// The version string the API's `/version` and each Node's kubeletVersion
/// report: `v1.33.0-knode.<version>`, so tools that parse it as semver see
/// the Kubernetes version they are talking to.
pub fn kube_version() -> String {
    format!(
        "v{KUBE_MAJOR}.{KUBE_MINOR}.0-knode.{}",
        env!("CARGO_PKG_VERSION")
    )
}

pub const STANDARD_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// How the API server treats one kind: kube-apiserver's strategy hooks.
#[derive(Debug, Clone, Copy)]
pub struct Strategy {
    /// Defaulting, before validation (create, update and apply).
    pub default: Option<DefaultFn>,
    /// Validation beyond the generic metadata checks.
    pub validate: Option<ValidateFn>,
    /// Extra checks of an update against the stored object.
    pub validate_update: Option<ValidateUpdateFn>,
    /// Resets fields a create may not set.
    pub prepare_create: Option<PrepareFn>,
    /// Present when the kind has a status that only `/status` writes:
    /// copies it from one object to another.
    pub status: Option<CopyStatusFn>,
    /// Keeps server-assigned fields across an apply.
    pub carry: Option<CarryFn>,
    /// A `/status` write also sets the annotations (kube's Deployment
    /// status strategy keeps the written metadata but labels: its
    /// controller records `deployment.kubernetes.io/revision` that way,
    /// without bumping the generation as a spec write would).
    pub status_annotations: bool,
}

impl Strategy {
    /// No hooks: stored as given after the generic checks.
    pub const PLAIN: Strategy = Strategy {
        default: None,
        validate: None,
        validate_update: None,
        prepare_create: None,
        status: None,
        carry: None,
        status_annotations: false,
    };
}

/// Everything knode knows about one kind, as data.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// The `kind` field (`Deployment`).
    pub kind: &'static str,
    /// The `apiVersion` field (`apps/v1`, or `v1` for the core group).
    pub api_version: &'static str,
    /// The resource name in paths and storage keys (`deployments`).
    pub plural: &'static str,
    /// The singular resource name (`deployment`).
    pub singular: &'static str,
    /// kubectl's short names (`deploy`).
    pub short_names: &'static [&'static str],
    /// Categories (`all`).
    pub categories: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// What `metadata.name` must be.
    pub name_rule: NameRule,
    /// Subresources served beside the object.
    pub subresources: &'static [Subresource],
    /// Verbs served (discovery).
    pub verbs: &'static [&'static str],
    /// Whether objects may be written with a TTL (heartbeat objects).
    pub ttl: bool,
    /// Defaulting, validation and update rules.
    pub strategy: Strategy,
}

impl KindInfo {
    /// A namespaced kind with the common settings: no short names or
    /// categories, DNS-subdomain names, no subresources, the standard
    /// verbs, no TTL, no hooks. Descriptors override what differs.
    pub const fn namespaced(
        kind: &'static str,
        api_version: &'static str,
        plural: &'static str,
        singular: &'static str,
    ) -> KindInfo {
        KindInfo {
            kind,
            api_version,
            plural,
            singular,
            short_names: &[],
            categories: &[],
            namespaced: true,
            name_rule: NameRule::Subdomain,
            subresources: &[],
            verbs: STANDARD_VERBS,
            ttl: false,
            strategy: Strategy::PLAIN,
        }
    }

    /// A cluster-scoped kind, otherwise as [`KindInfo::namespaced`].
    pub const fn cluster(
        kind: &'static str,
        api_version: &'static str,
        plural: &'static str,
        singular: &'static str,
    ) -> KindInfo {
        KindInfo {
            namespaced: false,
            ..KindInfo::namespaced(kind, api_version, plural, singular)
        }
    }

    /// The API group, "" for the core group.
    pub fn group(&self) -> &'static str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// The version (`v1`).
    pub fn version(&self) -> &'static str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version, |(_, v)| v)
    }

    /// Whether the kind serves `sub`.
    pub fn has(&self, sub: Subresource) -> bool {
        self.subresources.contains(&sub)
    }
}

/// Wraps a typed hook `fn(&current T, &mut want T)` as a [`CarryFn`].
macro_rules! carry_hook {
    ($v:ident, $f:path) => {
        |current: &$crate::kinds::Object, want: &mut $crate::kinds::Object| {
            if let ($crate::kinds::Object::$v(c), $crate::kinds::Object::$v(w)) = (current, want) {
                $f(c, w)
            }
        }
    };
}

/// A [`PrepareFn`] that clears the status of a variant (a create may not
/// set it).
macro_rules! reset_status {
    ($v:ident) => {
        |o: &mut $crate::kinds::Object| {
            if let $crate::kinds::Object::$v(x) = o {
                x.status = None;
            }
        }
    };
}

/// Wraps a typed hook `fn(&T, &mut Errs)` as a [`ValidateFn`] for the
/// variant `$v`.
macro_rules! validate_hook {
    ($v:ident, $f:path) => {
        |o: &$crate::kinds::Object, e: &mut $crate::validate::Errs| {
            if let $crate::kinds::Object::$v(x) = o {
                $f(x, e)
            }
        }
    };
}

/// Wraps a typed hook `fn(&old T, &new T, &mut Errs)` as a [`ValidateUpdateFn`].
macro_rules! validate_update_hook {
    ($v:ident, $f:path) => {
        |old: &$crate::kinds::Object,
         new: &$crate::kinds::Object,
         e: &mut $crate::validate::Errs| {
            if let ($crate::kinds::Object::$v(a), $crate::kinds::Object::$v(b)) = (old, new) {
                $f(a, b, e)
            }
        }
    };
}

/// Wraps a typed hook `fn(&mut T)` as a [`DefaultFn`] or [`PrepareFn`].
macro_rules! mut_hook {
    ($v:ident, $f:path) => {
        |o: &mut $crate::kinds::Object| {
            if let $crate::kinds::Object::$v(x) = o {
                $f(x)
            }
        }
    };
}

/// The [`CopyStatusFn`] of a variant whose type has a `status` field.
macro_rules! copy_status {
    ($v:ident) => {
        |from: &$crate::kinds::Object, to: &mut $crate::kinds::Object| {
            if let ($crate::kinds::Object::$v(f), $crate::kinds::Object::$v(t)) = (from, to) {
                t.status = f.status.clone();
            }
        }
    };
}

pub(crate) use {
    carry_hook, copy_status, mut_hook, reset_status, validate_hook, validate_update_hook,
};

/// Generates [`Kind`] and [`Object`] from the table: one variant each per
/// kind, and the conversions between them.
macro_rules! kinds {
    ($($(#[$doc:meta])* $variant:ident($ty:ty) = $info:path,)+) => {
        /// The kinds knode stores. Declared in the order manifests are
        /// best applied (what others use first).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $($(#[$doc])* $variant,)+
        }

        impl Kind {
            /// Every kind, in the order manifests are best applied.
            pub const ALL: [Kind; [$(stringify!($variant)),+].len()] = [$(Kind::$variant,)+];

            /// The kind's descriptor.
            pub fn info(self) -> &'static KindInfo {
                match self {
                    $(Kind::$variant => &$info,)+
                }
            }
        }

        /// One stored object of any kind. Each variant is boxed: the
        /// types differ in size from a few hundred bytes to about 3 KB
        /// (a Pod inline is 2.2 KB, a PodTemplate-holding kind more), and
        /// every cache of objects (watch stores of 10k Services and slices)
        /// would otherwise pay the largest for each entry. Build one with
        /// `Object::from(value)` or `value.into()`.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Object {
            $($(#[$doc])* $variant(Box<$ty>),)+
        }

        impl Object {
            /// The object's kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$variant(_) => Kind::$variant,)+
                }
            }

            /// Its metadata.
            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => &o.metadata,)+
                }
            }

            /// Its metadata, mutably.
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(o) => &mut o.metadata,)+
                }
            }

            /// Decodes `v` as an object of `kind` (its `apiVersion` and
            /// `kind` already checked).
            pub(crate) fn decode(kind: Kind, v: Value) -> serde_json::Result<Object> {
                match kind {
                    $(Kind::$variant => serde_json::from_value::<$ty>(v).map(Object::from),)+
                }
            }

            /// Encodes the typed value (without `apiVersion` and `kind`).
            pub(crate) fn encode(&self) -> serde_json::Result<Value> {
                match self {
                    $(Object::$variant(o) => serde_json::to_value(o),)+
                }
            }
        }

        $(
            impl From<$ty> for Object {
                fn from(o: $ty) -> Object {
                    Object::$variant(Box::new(o))
                }
            }
        )+
    };
}

kinds! {
    Namespace(Namespace) = base::NAMESPACE,
    ConfigMap(ConfigMap) = base::CONFIG_MAP,
    Secret(Secret) = base::SECRET,
    /// Before pods: a pod is isolated before it starts.
    NetworkPolicy(NetworkPolicy) = network::NETWORK_POLICY,
    Service(Service) = base::SERVICE,
    Pod(Pod) = base::POD,
    ControllerRevision(ControllerRevision) = apps::CONTROLLER_REVISION,
    ReplicaSet(ReplicaSet) = apps::REPLICA_SET,
    Deployment(Deployment) = apps::DEPLOYMENT,
    DaemonSet(DaemonSet) = apps::DAEMON_SET,
    StatefulSet(StatefulSet) = apps::STATEFUL_SET,
    Job(Job) = batch::JOB,
    CronJob(CronJob) = batch::CRON_JOB,
    PodDisruptionBudget(PodDisruptionBudget) = network::POD_DISRUPTION_BUDGET,
    EndpointSlice(EndpointSlice) = network::ENDPOINT_SLICE,
    Event(Event) = base::EVENT,
    Node(Node) = base::NODE,
    Lease(Lease) = base::LEASE,
    /// knode's flannel-shaped subnet lease.
    SubnetLease(SubnetLease) = base::SUBNET_LEASE,
}

impl Kind {
    /// The `kind` field.
    pub fn name(self) -> &'static str {
        self.info().kind
    }

    /// The `apiVersion` field.
    pub fn api_version(self) -> &'static str {
        self.info().api_version
    }

    /// The plural resource name used in REST paths and storage keys.
    pub fn plural(self) -> &'static str {
        self.info().plural
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self.info().namespaced
    }

    /// Parses a `kind` field exactly (`Pod`).
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == kind)
    }

    /// The kind served at `plural` in `api_version` (`apps/v1`, `v1`).
    pub fn from_plural(api_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == plural && k.api_version() == api_version)
    }

    /// Parses what a CLI user types: kind, plural, singular or short name,
    /// any case, optionally qualified by its group (`pod`, `pods`, `po`,
    /// `deploy`, `deployments.apps`).
    pub fn from_cli(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        let matches = |k: &Kind, name: &str| {
            let i = k.info();
            i.kind.eq_ignore_ascii_case(name)
                || i.plural == name
                || i.singular == name
                || i.short_names.contains(&name)
        };
        Kind::ALL.into_iter().find(|k| matches(k, &s)).or_else(|| {
            let (name, group) = s.split_once('.')?;
            Kind::ALL
                .into_iter()
                .find(|k| k.info().group() == group && matches(k, name))
        })
    }

    /// The kinds in category `cat` (`all`).
    pub fn in_category(cat: &str) -> impl Iterator<Item = Kind> + '_ {
        Kind::ALL
            .into_iter()
            .filter(move |k| k.info().categories.contains(&cat))
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod round_trip;
#[cfg(test)]
mod tests;
