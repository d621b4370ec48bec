//! Test objects the controllers' unit tests share.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

/// The labels `app: web`.
pub fn app() -> BTreeMap<String, String> {
    [("app".to_string(), "web".to_string())].into()
}

/// A template labelled `app: web` with one container `c` running `image`.
pub fn template(image: &str) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(app()),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// The metadata of an owner `web` in `default` with `uid`.
pub fn owner_meta(uid: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some("web".into()),
        namespace: Some("default".into()),
        uid: Some(uid.into()),
        generation: Some(1),
        ..Default::default()
    }
}

/// The selector `app: web`.
pub fn selector() -> LabelSelector {
    LabelSelector {
        match_labels: Some(app()),
        ..Default::default()
    }
}

/// A pod status in `phase`, Ready or not.
pub fn status(phase: &str, ready: bool) -> PodStatus {
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(vec![PodCondition {
            type_: "Ready".into(),
            status: if ready { "True" } else { "False" }.into(),
            ..Default::default()
        }]),
        ..Default::default()
    }
}
