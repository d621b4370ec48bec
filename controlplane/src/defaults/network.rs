//! Defaulting of `networking.k8s.io/v1` NetworkPolicy and
//! `discovery.k8s.io/v1` EndpointSlice: protocols TCP, and a policy's
//! types from its rules.

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// NetworkPolicy: every port's protocol TCP; policyTypes `Ingress`, plus
/// `Egress` when there are egress rules.
pub(crate) fn network_policy(np: &mut NetworkPolicy) {
    let Some(s) = np.spec.as_mut() else { return };
    let ports = s
        .ingress
        .iter_mut()
        .flatten()
        .flat_map(|r| r.ports.iter_mut().flatten())
        .chain(
            s.egress
                .iter_mut()
                .flatten()
                .flat_map(|r| r.ports.iter_mut().flatten()),
        );
    for p in ports {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    if s.policy_types.as_ref().is_none_or(Vec::is_empty) {
        let mut types = vec!["Ingress".to_string()];
        if s.egress.as_ref().is_some_and(|e| !e.is_empty()) {
            types.push("Egress".into());
        }
        s.policy_types = Some(types);
    }
}

/// EndpointSlice: every port's name "" and protocol TCP.
pub(crate) fn endpoint_slice(s: &mut EndpointSlice) {
    for p in s.ports.iter_mut().flatten() {
        p.name.get_or_insert_with(String::new);
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}
