//! The table's own invariants, and lookups by every name a user may type.

use super::*;
use crate::api::{ObjectRef, Scope};
use crate::rest::{collection_path, object_path, parse_path, Target};

#[test]
fn every_kind_is_findable_by_each_of_its_names() {
    for k in Kind::ALL {
        let i = k.info();
        assert_eq!(Kind::from_kind(i.kind), Some(k), "{k}");
        assert_eq!(Kind::from_plural(i.api_version, i.plural), Some(k), "{k}");
        assert_eq!(Kind::from_cli(i.plural), Some(k), "{k}");
        assert_eq!(Kind::from_cli(i.singular), Some(k), "{k}");
        assert_eq!(Kind::from_cli(&i.kind.to_ascii_uppercase()), Some(k), "{k}");
        for s in i.short_names {
            assert_eq!(Kind::from_cli(s), Some(k), "{k} {s}");
        }
        if !i.group().is_empty() {
            let qualified = format!("{}.{}", i.plural, i.group());
            assert_eq!(Kind::from_cli(&qualified), Some(k), "{qualified}");
        }
    }
}

#[test]
fn descriptors_are_consistent() {
    // (Unique names: every name finding its own kind above proves it.)
    for k in Kind::ALL {
        let i = k.info();
        assert_eq!(i.singular, i.kind.to_ascii_lowercase(), "{k}");
        assert_eq!(
            i.api_version,
            if i.group().is_empty() {
                i.version().to_string()
            } else {
                format!("{}/{}", i.group(), i.version())
            }
        );
        assert_eq!(
            i.has(Subresource::Status),
            i.strategy.status.is_some(),
            "{k}: the status subresource and its copy hook go together"
        );
    }
}

#[test]
fn cli_names_of_the_core_kinds() {
    assert_eq!(Kind::from_cli("po"), Some(Kind::Pod));
    assert_eq!(Kind::from_cli("Services"), Some(Kind::Service));
    assert_eq!(Kind::from_cli("svc"), Some(Kind::Service));
    assert_eq!(Kind::from_cli("subnetleases"), Some(Kind::SubnetLease));
    assert_eq!(
        Kind::from_cli("leases.coordination.k8s.io"),
        Some(Kind::Lease)
    );
    assert_eq!(Kind::from_cli("pods.apps"), None);
    assert_eq!(Kind::from_cli("nonsense"), None);
    assert!(Kind::in_category("all").any(|k| k == Kind::Pod));
    assert!(!Kind::in_category("all").any(|k| k == Kind::Secret));
}

#[test]
fn rest_paths_have_kube_apiservers_shape_for_every_kind() {
    for k in Kind::ALL {
        let i = k.info();
        let root = if i.group().is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{}", i.api_version)
        };
        let (coll, one) = if i.namespaced {
            (
                format!("{root}/namespaces/ns1/{}", i.plural),
                format!("{root}/namespaces/ns1/{}/x", i.plural),
            )
        } else {
            (
                format!("{root}/{}", i.plural),
                format!("{root}/{}/x", i.plural),
            )
        };
        let what = ObjectRef::new(k, "ns1", "x");
        assert_eq!(collection_path(&Scope::namespaced(k, "ns1")), coll);
        assert_eq!(object_path(&what), one);
        assert_eq!(parse_path(&one), Some(Target::Object(what.clone())));
        assert_eq!(
            parse_path(&format!("{root}/{}", i.plural)),
            Some(Target::Collection(Scope::all(k)))
        );
        let status = parse_path(&format!("{one}/status"));
        if i.has(Subresource::Status) {
            assert_eq!(status, Some(Target::Status(what.clone())));
        } else {
            assert_eq!(status, None, "{k} has no status subresource");
        }
        let scale = parse_path(&format!("{one}/scale"));
        if i.has(Subresource::Scale) {
            assert_eq!(scale, Some(Target::Scale(what)));
        } else {
            assert_eq!(scale, None, "{k} has no scale subresource");
        }
        assert_eq!(parse_path(&format!("{one}/exec")), None);
    }
}
