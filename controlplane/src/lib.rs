//! The control plane as the agent, proxy and overlay see it: Kubernetes
//! object types plus our SubnetLease, the API-server duties that fall to
//! this layer (defaulting, validation, IP/port allocation, endpoints), the
//! [`api::ControlPlane`] abstraction, the [`registry::Registry`] that
//! implements it over raw [`storage`] (embedded redb or etcd), and the
//! Kubernetes-style REST API the agent serves on its unix socket.

pub mod alloc;
pub mod api;
pub mod backend;
pub mod cron;
pub mod defaults;
pub mod endpoints;
pub mod events;
pub mod fields;
pub mod kinds;
pub mod labels;
pub mod manifest;
pub mod objects;
pub mod quantity;
pub mod registry;
pub mod rest;
pub mod scale;
pub mod storage;
pub mod validate;
pub mod watcher;

pub use api::{
    ControlPlane, DeleteOptions, Error, ObjectList, ObjectRef, Result, Scope, Watch, WatchEvent,
};
pub use objects::{Kind, Object};
