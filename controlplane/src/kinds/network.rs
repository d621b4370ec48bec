//! Descriptors of the kinds that shape traffic and disruption:
//! `networking.k8s.io/v1` NetworkPolicy, `discovery.k8s.io/v1`
//! EndpointSlice, `policy/v1` PodDisruptionBudget. Data only; the rules
//! live in `validate` and `defaults`.

use super::{
    copy_status, mut_hook, reset_status, validate_hook, validate_update_hook, KindInfo, Strategy,
    Subresource,
};
use crate::{defaults, validate};

pub(super) static NETWORK_POLICY: KindInfo = KindInfo {
    short_names: &["netpol"],
    strategy: Strategy {
        default: Some(mut_hook!(NetworkPolicy, defaults::network::network_policy)),
        validate: Some(validate_hook!(
            NetworkPolicy,
            validate::network::network_policy
        )),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced(
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "networkpolicies",
        "networkpolicy",
    )
};

pub(super) static ENDPOINT_SLICE: KindInfo = KindInfo {
    strategy: Strategy {
        default: Some(mut_hook!(EndpointSlice, defaults::network::endpoint_slice)),
        validate: Some(validate_hook!(
            EndpointSlice,
            validate::network::endpoint_slice
        )),
        validate_update: Some(validate_update_hook!(
            EndpointSlice,
            validate::network::endpoint_slice_update
        )),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced(
        "EndpointSlice",
        "discovery.k8s.io/v1",
        "endpointslices",
        "endpointslice",
    )
};

pub(super) static POD_DISRUPTION_BUDGET: KindInfo = KindInfo {
    short_names: &["pdb"],
    subresources: &[Subresource::Status],
    strategy: Strategy {
        validate: Some(validate_hook!(
            PodDisruptionBudget,
            validate::policy::pod_disruption_budget
        )),
        prepare_create: Some(reset_status!(PodDisruptionBudget)),
        status: Some(copy_status!(PodDisruptionBudget)),
        ..Strategy::PLAIN
    },
    ..KindInfo::namespaced(
        "PodDisruptionBudget",
        "policy/v1",
        "poddisruptionbudgets",
        "poddisruptionbudget",
    )
};
