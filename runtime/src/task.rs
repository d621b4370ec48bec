//! Containers and their tasks: the few containerd calls the pod code needs,
//! each idempotent so that a step repeated after a crash finds its own
//! earlier work instead of failing (create → exists is fine, delete → gone
//! is fine).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use containerd_client::services::v1::snapshots::{
    MountsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    container::Runtime as ContainerRuntime, Container, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteTaskRequest, GetContainerRequest, GetRequest, KillRequest,
    ListContainersRequest, StartRequest, UpdateContainerRequest, WaitRequest,
};
use containerd_client::types::v1::Status as ProcStatus;
use containerd_client::types::Mount;

use super::{is_already_exists, is_not_found, status_error, Runtime, SNAPSHOTTER};

/// containerd's runtime for every container: runc through shim v2.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// The Any type URL containerd uses for an OCI runtime spec.
const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// What the pod code asks to be created.
pub struct NewContainer<'a> {
    pub id: &'a str,
    pub image: &'a str,
    /// The image's top layer snapshot, parent of the container's rootfs.
    pub parent_snapshot: &'a str,
    pub spec: &'a oci_spec::runtime::Spec,
    pub labels: HashMap<String, String>,
}

/// A container the agent owns, as containerd lists it.
#[derive(Debug, Clone)]
pub struct Owned {
    pub id: String,
    pub labels: HashMap<String, String>,
}

/// A task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// No task (never started, or deleted after it exited).
    None,
    Created,
    Running {
        pid: u32,
    },
    /// Exited; not yet deleted.
    Stopped {
        exit_code: u32,
        exited_at: Option<jiff::Timestamp>,
    },
    /// Paused or in between: treated as running by the pod code.
    Other {
        pid: u32,
    },
}

/// Creates the container record and its rootfs snapshot. Either may
/// already exist from an interrupted earlier attempt; they are reused.
pub async fn create(rt: &Runtime, c: &NewContainer<'_>) -> Result<()> {
    // The container record first: it references the snapshot key, so
    // containerd's garbage collector keeps the snapshot from the moment it
    // exists. (A snapshot prepared first is unreferenced until the record
    // exists, and a crash in between lets GC take it.)
    let spec = serde_json::to_vec(c.spec).context("encode the OCI spec")?;
    let container = Container {
        id: c.id.into(),
        labels: c.labels.clone(),
        image: c.image.into(),
        runtime: Some(ContainerRuntime {
            name: RUNC_V2.into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: SPEC_TYPE_URL.into(),
            value: spec,
        }),
        snapshotter: SNAPSHOTTER.into(),
        snapshot_key: c.id.into(),
        ..Default::default()
    };
    let req = CreateContainerRequest {
        container: Some(container),
    };
    match rt.containers().create(rt.req(req)).await {
        Ok(_) => {}
        Err(s) if is_already_exists(&s) => {}
        Err(s) => return Err(status_error(s)).context(format!("create container {}", c.id)),
    }
    let prep = PrepareSnapshotRequest {
        snapshotter: SNAPSHOTTER.into(),
        key: c.id.into(),
        parent: c.parent_snapshot.into(),
        labels: HashMap::new(),
    };
    match rt.snapshots().prepare(rt.req(prep)).await {
        Ok(_) => Ok(()),
        Err(s) if is_already_exists(&s) => Ok(()),
        Err(s) => Err(status_error(s)).context(format!("prepare rootfs of {}", c.id)),
    }
}

/// Creates and starts the container's task; returns its pid. `log_uri`
/// receives stdout and stderr (none for the pause container).
pub async fn start(rt: &Runtime, id: &str, log_uri: Option<&str>) -> Result<u32> {
    // The common case is a new container: create its task straight away
    // and look at the state only when one already exists.
    if create_task(rt, id, log_uri).await?.is_none() {
        match state(rt, id).await? {
            TaskState::Running { pid } | TaskState::Other { pid } => return Ok(pid),
            TaskState::Created => {}
            TaskState::Stopped { .. } | TaskState::None => {
                delete_task(rt, id).await?;
                create_task(rt, id, log_uri).await?;
            }
        }
    }
    start_created(rt, id).await
}

/// Creates the task (its init process exists, with its namespaces, but
/// has not run yet); returns its pid, or `None` when a task already exists.
pub async fn create_task(rt: &Runtime, id: &str, log_uri: Option<&str>) -> Result<Option<u32>> {
    let mounts = rootfs_mounts(rt, id).await?;
    let uri = log_uri.unwrap_or_default().to_string();
    let req = CreateTaskRequest {
        container_id: id.into(),
        rootfs: mounts,
        stdout: uri.clone(),
        stderr: uri,
        ..Default::default()
    };
    match rt.tasks().create(rt.req(req)).await {
        Ok(r) => Ok(Some(r.into_inner().pid)),
        Err(s) if is_already_exists(&s) => Ok(None),
        Err(s) => Err(status_error(s)).context(format!("create task {id}")),
    }
}

/// Starts a task made by [`create_task`].
pub async fn start_created(rt: &Runtime, id: &str) -> Result<u32> {
    let r = rt
        .tasks()
        .start(rt.req(StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await
        .map_err(status_error)
        .with_context(|| format!("start task {id}"))?;
    Ok(r.into_inner().pid)
}

async fn rootfs_mounts(rt: &Runtime, id: &str) -> Result<Vec<Mount>> {
    let r = rt
        .snapshots()
        .mounts(rt.req(MountsRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.into(),
        }))
        .await
        .map_err(status_error)
        .with_context(|| format!("rootfs mounts of {id}"))?;
    Ok(r.into_inner().mounts)
}

/// The task's state; `TaskState::None` when there is no task.
pub async fn state(rt: &Runtime, id: &str) -> Result<TaskState> {
    let r = rt
        .tasks()
        .get(rt.req(GetRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await;
    let p = match r {
        Ok(r) => r.into_inner().process.unwrap_or_default(),
        Err(s) if is_not_found(&s) => return Ok(TaskState::None),
        Err(s) => return Err(status_error(s)).context(format!("get task {id}")),
    };
    Ok(
        match ProcStatus::try_from(p.status).unwrap_or(ProcStatus::Unknown) {
            ProcStatus::Created => TaskState::Created,
            ProcStatus::Running => TaskState::Running { pid: p.pid },
            ProcStatus::Stopped => TaskState::Stopped {
                exit_code: p.exit_status,
                exited_at: p.exited_at.and_then(timestamp),
            },
            _ => TaskState::Other { pid: p.pid },
        },
    )
}

/// Waits for the task to exit; returns its exit code and time. Returns
/// immediately for a task that already exited.
pub async fn wait(rt: &Runtime, id: &str) -> Result<(u32, Option<jiff::Timestamp>)> {
    let r = rt
        .tasks()
        .wait(rt.req(WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await
        .map_err(status_error)
        .with_context(|| format!("wait for task {id}"))?
        .into_inner();
    Ok((r.exit_status, r.exited_at.and_then(timestamp)))
}

/// Sends `signal` to the task's init process (`all`: every process in it).
/// A task that is gone is not an error.
pub async fn kill(rt: &Runtime, id: &str, signal: i32, all: bool) -> Result<()> {
    let r = rt
        .tasks()
        .kill(rt.req(KillRequest {
            container_id: id.into(),
            exec_id: String::new(),
            signal: signal as u32,
            all,
        }))
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(s) if is_not_found(&s) => Ok(()),
        Err(s) => Err(status_error(s)).context(format!("signal task {id}")),
    }
}

/// Stops a task gracefully: SIGTERM, then SIGKILL after `grace`. Returns
/// once the task has exited (or there was none).
pub async fn stop(rt: &Runtime, id: &str, grace: Duration) -> Result<()> {
    match state(rt, id).await? {
        TaskState::None | TaskState::Stopped { .. } => return Ok(()),
        TaskState::Created => {
            // Never started: nothing to be graceful with.
            return kill(rt, id, libc::SIGKILL, true).await;
        }
        _ => {}
    }
    if !grace.is_zero() {
        kill(rt, id, libc::SIGTERM, false).await?;
        if tokio::time::timeout(grace, wait(rt, id)).await.is_ok() {
            return Ok(());
        }
    }
    kill(rt, id, libc::SIGKILL, true).await?;
    // A SIGKILLed task exits at once; bound the wait all the same so a
    // wedged shim cannot hold up a pod's teardown forever.
    let _ = tokio::time::timeout(Duration::from_secs(10), wait(rt, id)).await;
    Ok(())
}

/// Deletes the task (it must have exited); returns its exit code if there
/// was a task.
pub async fn delete_task(rt: &Runtime, id: &str) -> Result<Option<u32>> {
    let r = rt
        .tasks()
        .delete(rt.req(DeleteTaskRequest {
            container_id: id.into(),
        }))
        .await;
    match r {
        Ok(r) => Ok(Some(r.into_inner().exit_status)),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_error(s)).context(format!("delete task {id}")),
    }
}

/// Removes the container completely: kills and deletes its task, deletes
/// the container record and its rootfs snapshot. Each part that is already
/// gone is skipped.
pub async fn remove(rt: &Runtime, id: &str) -> Result<()> {
    if !matches!(state(rt, id).await?, TaskState::None) {
        kill(rt, id, libc::SIGKILL, true).await?;
        let _ = tokio::time::timeout(Duration::from_secs(10), wait(rt, id)).await;
        delete_task(rt, id).await?;
    }
    match rt
        .containers()
        .delete(rt.req(DeleteContainerRequest { id: id.into() }))
        .await
    {
        Ok(_) => {}
        Err(s) if is_not_found(&s) => {}
        Err(s) => return Err(status_error(s)).context(format!("delete container {id}")),
    }
    match rt
        .snapshots()
        .remove(rt.req(RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.into(),
            key: id.into(),
        }))
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if is_not_found(&s) => Ok(()),
        Err(s) => Err(status_error(s)).context(format!("remove rootfs of {id}")),
    }
}

/// Every container carrying `label` (with any value) in our namespace.
pub async fn list_owned(rt: &Runtime, label: &str) -> Result<Vec<Owned>> {
    let r = rt
        .containers()
        .list(rt.req(ListContainersRequest {
            filters: vec![format!("labels.\"{label}\"")],
        }))
        .await
        .map_err(status_error)
        .context("list containers")?;
    Ok(r.into_inner()
        .containers
        .into_iter()
        .map(|c| Owned {
            id: c.id,
            labels: c.labels,
        })
        .collect())
}

/// The container's labels, or `None` if it does not exist.
pub async fn labels(rt: &Runtime, id: &str) -> Result<Option<HashMap<String, String>>> {
    match rt
        .containers()
        .get(rt.req(GetContainerRequest { id: id.into() }))
        .await
    {
        Ok(r) => Ok(r.into_inner().container.map(|c| c.labels)),
        Err(s) if is_not_found(&s) => Ok(None),
        Err(s) => Err(status_error(s)).context(format!("get container {id}")),
    }
}

/// Sets (adds or replaces) labels on a container; others are kept.
pub async fn set_labels(rt: &Runtime, id: &str, labels: HashMap<String, String>) -> Result<()> {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let req = UpdateContainerRequest {
        container: Some(Container {
            id: id.into(),
            labels,
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask { paths }),
    };
    rt.containers()
        .update(rt.req(req))
        .await
        .map_err(status_error)
        .with_context(|| format!("label container {id}"))?;
    Ok(())
}

fn timestamp(t: prost_types::Timestamp) -> Option<jiff::Timestamp> {
    if t.seconds <= 0 {
        return None;
    }
    jiff::Timestamp::new(t.seconds, t.nanos).ok()
}
