//! Descriptors of `apps/v1`: Deployment, ReplicaSet, DaemonSet,
//! StatefulSet, ControllerRevision. Data only; the rules live in
//! `validate::apps` and `defaults::apps`.

use super::{
    copy_status, mut_hook, reset_status, validate_hook, validate_update_hook, KindInfo, Strategy,
    Subresource,
};
use crate::{defaults, validate};

pub(super) static DEPLOYMENT: KindInfo = KindInfo {
    short_names: &["deploy"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    strategy: Strategy {
        default: Some(mut_hook!(Deployment, defaults::apps::deployment)),
        validate: Some(validate_hook!(Deployment, validate::apps::deployment)),
        validate_update: Some(validate_update_hook!(
            Deployment,
            validate::apps::deployment_update
        )),
        prepare_create: Some(reset_status!(Deployment)),
        status: Some(copy_status!(Deployment)),
        status_annotations: true,
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("Deployment", "apps/v1", "deployments", "deployment")
};

pub(super) static REPLICA_SET: KindInfo = KindInfo {
    short_names: &["rs"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    strategy: Strategy {
        default: Some(mut_hook!(ReplicaSet, defaults::apps::replica_set)),
        validate: Some(validate_hook!(ReplicaSet, validate::apps::replica_set)),
        validate_update: Some(validate_update_hook!(
            ReplicaSet,
            validate::apps::replica_set_update
        )),
        prepare_create: Some(reset_status!(ReplicaSet)),
        status: Some(copy_status!(ReplicaSet)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("ReplicaSet", "apps/v1", "replicasets", "replicaset")
};

pub(super) static DAEMON_SET: KindInfo = KindInfo {
    short_names: &["ds"],
    categories: &["all"],
    subresources: &[Subresource::Status],
    strategy: Strategy {
        default: Some(mut_hook!(DaemonSet, defaults::apps::daemon_set)),
        validate: Some(validate_hook!(DaemonSet, validate::apps::daemon_set)),
        validate_update: Some(validate_update_hook!(
            DaemonSet,
            validate::apps::daemon_set_update
        )),
        prepare_create: Some(reset_status!(DaemonSet)),
        status: Some(copy_status!(DaemonSet)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("DaemonSet", "apps/v1", "daemonsets", "daemonset")
};

pub(super) static STATEFUL_SET: KindInfo = KindInfo {
    short_names: &["sts"],
    categories: &["all"],
    subresources: &[Subresource::Status, Subresource::Scale],
    strategy: Strategy {
        default: Some(mut_hook!(StatefulSet, defaults::apps::stateful_set)),
        validate: Some(validate_hook!(StatefulSet, validate::apps::stateful_set)),
        validate_update: Some(validate_update_hook!(
            StatefulSet,
            validate::apps::stateful_set_update
        )),
        prepare_create: Some(reset_status!(StatefulSet)),
        status: Some(copy_status!(StatefulSet)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced("StatefulSet", "apps/v1", "statefulsets", "statefulset")
};

pub(super) static CONTROLLER_REVISION: KindInfo = KindInfo {
    strategy: Strategy {
        validate: Some(validate_hook!(
            ControllerRevision,
            validate::apps::controller_revision
        )),
        validate_update: Some(validate_update_hook!(
            ControllerRevision,
            validate::apps::controller_revision_update
        )),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced(
        "ControllerRevision",
        "apps/v1",
        "controllerrevisions",
        "controllerrevision",
    )
};
