//! The control plane as the agent, proxy and overlay see it: Kubernetes
//! object types plus our SubnetLease, the API-server duties that fall to
//! this layer (defaulting, validation, IP/port allocation, endpoints), and
//! later the ControlPlane trait with its backends. No I/O in the pure parts.

pub mod alloc;
pub mod defaults;
pub mod endpoints;
pub mod manifest;
pub mod objects;
pub mod validate;
