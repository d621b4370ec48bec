//! containerd, through its native gRPC API. Every request carries the
//! agent's containerd namespace, so several agents can share one containerd
//! without seeing each other's containers or images.

use std::path::Path;

use anyhow::{Context, Result};
use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, diff_client::DiffClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};

pub mod exec;
pub mod image;
pub mod spec;
pub mod task;

/// The snapshotter every image is unpacked into and every rootfs is
/// prepared from.
pub const SNAPSHOTTER: &str = "overlayfs";

/// A connection to containerd, bound to one namespace.
#[derive(Clone)]
pub struct Runtime {
    channel: Channel,
    namespace: String,
}

impl Runtime {
    /// Connects to containerd's socket. Fails if containerd does not
    /// answer a version request.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Runtime> {
        let channel = containerd_client::connect(socket)
            .await
            .with_context(|| format!("connect to containerd at {}", socket.display()))?;
        let rt = Runtime {
            channel,
            namespace: namespace.to_string(),
        };
        rt.version()
            .await
            .with_context(|| format!("containerd at {}", socket.display()))?;
        Ok(rt)
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String> {
        let v = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(status_error)?;
        Ok(v.into_inner().version)
    }

    /// Wraps `msg` in a request that names our namespace.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        // The namespace was validated as a containerd namespace name
        // (letters, digits, `-`, `_`, `.`), so it is a valid header value.
        if let Ok(v) = self.namespace.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        r
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
}

/// Turns a gRPC status into an error that keeps containerd's message.
pub fn status_error(s: Status) -> anyhow::Error {
    anyhow::anyhow!("containerd: {} ({:?})", s.message(), s.code())
}

/// True when `e` came from containerd saying "not found".
pub fn is_not_found(s: &Status) -> bool {
    s.code() == Code::NotFound
}

/// True when `e` came from containerd saying "already exists".
pub fn is_already_exists(s: &Status) -> bool {
    s.code() == Code::AlreadyExists
}

/// Labels on every containerd container the agent creates. A restarted
/// agent finds what it owns by these, and nothing else.
pub mod labels {
    /// `sandbox` (the pause container), `container` (an app container) or
    /// `init-container`.
    pub const KIND: &str = "io.knode.kind";
    pub const POD_UID: &str = "io.knode.pod.uid";
    pub const POD_NAME: &str = "io.knode.pod.name";
    pub const POD_NAMESPACE: &str = "io.knode.pod.namespace";
    pub const CONTAINER_NAME: &str = "io.knode.container.name";
    /// How many times this container was started before (0 first).
    pub const ATTEMPT: &str = "io.knode.container.attempt";
    pub const KIND_SANDBOX: &str = "sandbox";
    pub const KIND_CONTAINER: &str = "container";
    pub const KIND_INIT_CONTAINER: &str = "init-container";
}

/// The containerd id of a pod's pause container.
pub fn sandbox_id(pod_uid: &str) -> String {
    format!("{pod_uid}-pause")
}

/// The containerd id of one start of an app container: the pod uid, the
/// container's index in `spec.containers`, and the attempt. Names are not
/// used because uid + name could exceed containerd's 76-character limit.
pub fn container_id(pod_uid: &str, index: usize, attempt: u32) -> String {
    format!("{pod_uid}-c{index}-{attempt}")
}

/// The containerd id of one start of an init container (its index in
/// `spec.initContainers`), in the shape of [`container_id`].
pub fn init_container_id(pod_uid: &str, index: usize, attempt: u32) -> String {
    format!("{pod_uid}-i{index}-{attempt}")
}

/// Labels the agent adds to a container as it runs, so that a restarted
/// agent can report a container's times and exit code without having
/// watched it.
pub mod run_labels {
    pub const STARTED_AT: &str = "io.knode.started-at";
    pub const FINISHED_AT: &str = "io.knode.finished-at";
    pub const EXIT_CODE: &str = "io.knode.exit-code";
}
