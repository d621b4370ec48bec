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

    /// The namespace this runtime works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
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
