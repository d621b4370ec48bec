//! One pod's worker: a task that owns everything the agent does for one
//! pod uid. It wakes on a new version of the pod, on a container exit, on
//! a back-off timer or on the periodic resync, and each time converges:
//! sandbox (netns, CNI, pause), then each container (start, or restart by
//! policy and back-off), then writes the status back if it changed. On
//! deletion it tears down in CRI order and ends.
//!
//! All state is recoverable from containerd (ownership and run labels), the
//! CNI cache and the pinned netns, so a worker started after an agent
//! restart adopts what runs instead of starting it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use controlplane::objects::Object;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, PodStatus};
use tokio::sync::mpsc;

use super::backoff::Backoff;
use super::context::{services_for, Context, Refs};
use super::probe::{self, handlers::Target, Registration};
use super::sandbox::{self, Sandbox};
use super::status::{self, ContainerView, PodView, State, Terminated};
use super::{env, hooks, volumes};
use crate::events::Type as EventType;
use runtime::image::{self, Image, PullError, PullPolicy};
use runtime::task::{self, NewContainer, Owned, TaskState};
use runtime::{container_id, labels, run_labels, spec};

/// How often a worker re-checks its pod even when nothing happened.
const RESYNC: Duration = Duration::from_secs(10);

/// The longest a postStart hook may run before it counts as failed.
const POST_START_LIMIT: Duration = Duration::from_secs(300);

/// What wakes a worker.
#[derive(Debug)]
pub enum Msg {
    /// A newer version of the pod.
    Update(Box<Pod>),
    /// The pod is gone from the control plane: tear down.
    Deleted,
    /// A task of ours exited.
    Exited(String),
    /// A probe's result changed.
    Probe(probe::scheduler::Change),
}

/// Starts a worker for `pod`; `owned` are the containers containerd
/// already holds for its uid (adoption after a restart).
pub fn spawn(ctx: Arc<Context>, pod: Pod, owned: Vec<Owned>) -> mpsc::UnboundedSender<Msg> {
    let (tx, rx) = mpsc::unbounded_channel();
    let w = Worker::new(ctx, pod, owned, tx.clone());
    tokio::spawn(w.run(rx));
    tx
}

/// One container's slot: the init containers' first, in order, then the
/// app containers'.
#[derive(Debug, Default)]
struct Slot {
    name: String,
    /// An init container (its index is in `spec.initContainers`).
    init: bool,
    /// An init container with `restartPolicy: Always`: a sidecar that
    /// keeps running beside the app containers.
    sidecar: bool,
    /// Index in `spec.initContainers` or `spec.containers`.
    index: usize,
    image: String,
    /// The latest run, if any: its attempt and containerd id.
    current: Option<(u32, String)>,
    running_since: Option<Option<Timestamp>>,
    /// The latest finished run.
    last: Option<Terminated>,
    /// The run finished before `last` (the last state shown while `last`
    /// is the current state).
    previous: Option<Terminated>,
    /// When `last` finished, on the monotonic clock (for the back-off).
    finished: Option<Instant>,
    /// Why it is not running, when it is waiting.
    waiting: Option<(String, Option<String>)>,
    /// Whether the latest run is still to be accounted as exited.
    image_id: String,
    /// The run whose probes are registered with the prober.
    probed: Option<String>,
    /// The readiness probe's result for the current run.
    ready: bool,
    /// The startup probe's result for the current run.
    started: bool,
    /// A run being killed for a failed probe: not probed again.
    killed: Option<String>,
    /// The current run is being replaced (its image changed): restart it
    /// when it exits, whatever the policy, without back-off.
    replace: bool,
}

struct Worker {
    ctx: Arc<Context>,
    pod: Pod,
    uid: String,
    tx: mpsc::UnboundedSender<Msg>,
    sandbox: Option<Sandbox>,
    volumes: Option<HashMap<String, std::path::PathBuf>>,
    slots: Vec<Slot>,
    backoff: Backoff,
    /// Ids with a waiter task, so each exit is reported once.
    waited: std::collections::HashSet<String>,
    /// When the next back-off ends.
    wake_at: Option<Instant>,
    start_time: Option<Timestamp>,
    written: Option<PodStatus>,
    /// The pod reached a terminal phase and its sandbox was removed.
    finished: bool,
    /// Every init container has completed (sidecars: started) once.
    initialized: bool,
    /// `activeDeadlineSeconds` passed: nothing runs or restarts any more.
    deadline_exceeded: bool,
    /// The IPs it had (primary first), still reported after the sandbox is gone.
    last_ips: Vec<String>,
    /// Images found or pulled during this pass, by reference.
    prefetched: HashMap<String, Image>,
    /// A new pause container's start, awaited at the end of the pass.
    pause_starting: Option<sandbox::Starting>,
}

impl Worker {
    fn new(
        ctx: Arc<Context>,
        pod: Pod,
        owned: Vec<Owned>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> Worker {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let slot = |c: &Container, init: bool, index: usize| Slot {
            name: c.name.clone(),
            init,
            sidecar: init && c.restart_policy.as_deref() == Some("Always"),
            index,
            image: c.image.clone().unwrap_or_default(),
            waiting: Some(("ContainerCreating".into(), None)),
            ..Default::default()
        };
        let slots = init_containers(&pod)
            .iter()
            .enumerate()
            .map(|(i, c)| slot(c, true, i))
            .chain(
                containers(&pod)
                    .iter()
                    .enumerate()
                    .map(|(i, c)| slot(c, false, i)),
            )
            .collect();
        let start_time = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0);
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        let last_ips = pod
            .status
            .as_ref()
            .and_then(|s| match (&s.pod_ips, &s.pod_ip) {
                (Some(ips), _) if !ips.is_empty() => {
                    Some(ips.iter().map(|i| i.ip.clone()).collect())
                }
                (_, Some(ip)) => Some(vec![ip.clone()]),
                _ => None,
            })
            .unwrap_or_default();
        let initialized = init_containers(&pod).is_empty();
        let mut w = Worker {
            ctx,
            pod,
            uid,
            tx,
            sandbox: None,
            volumes: None,
            slots,
            backoff: Backoff::default(),
            waited: Default::default(),
            wake_at: None,
            start_time,
            written: None,
            // A pod the control plane already shows as finished (an agent
            // restart) never runs again, as with kubelet.
            finished,
            initialized,
            deadline_exceeded: false,
            last_ips,
            prefetched: HashMap::new(),
            pause_starting: None,
        };
        w.adopt(owned);
        w
    }

    /// Rebuilds the slots from the containers containerd holds: the
    /// highest attempt of each container is its current run, the one
    /// before it its last state.
    fn adopt(&mut self, owned: Vec<Owned>) {
        let mut by_name: HashMap<String, Vec<(u32, Owned)>> = HashMap::new();
        for o in owned {
            let kind = o.labels.get(labels::KIND).map(String::as_str);
            if kind != Some(labels::KIND_CONTAINER) && kind != Some(labels::KIND_INIT_CONTAINER) {
                continue;
            }
            let (Some(name), Some(attempt)) = (
                o.labels.get(labels::CONTAINER_NAME).cloned(),
                o.labels
                    .get(labels::ATTEMPT)
                    .and_then(|a| a.parse::<u32>().ok()),
            ) else {
                continue;
            };
            by_name.entry(name).or_default().push((attempt, o));
        }
        for slot in &mut self.slots {
            let Some(mut runs) = by_name.remove(&slot.name) else {
                continue;
            };
            runs.sort_by_key(|(a, _)| *a);
            let (attempt, cur) = runs.pop().expect("non-empty");
            if let Some((_, prev)) = runs.pop() {
                slot.last = terminated_from_labels(&prev);
            }
            slot.running_since = None;
            if let Some(t) = terminated_from_labels(&cur) {
                // It finished while we watched (and we labelled it).
                slot.previous = slot.last.take();
                slot.last = Some(t);
                slot.finished = Some(Instant::now());
            }
            slot.current = Some((attempt, cur.id.clone()));
            slot.waiting = None;
        }
        if !by_name.is_empty() {
            tracing::info!(pod = %self.key(), stale = ?by_name.keys().collect::<Vec<_>>(), "containers not in the spec are left alone until the pod is deleted");
        }
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or_default(),
            self.pod.metadata.name.as_deref().unwrap_or_default()
        )
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            if self.pod.metadata.deletion_timestamp.is_some() {
                // Graceful deletion: stop, tear down, then remove the object.
                let (ctx, pod) = (self.ctx.clone(), self.pod.clone());
                self.teardown().await;
                remove_object(&ctx, &pod).await;
                return;
            }
            if let Err(e) = self.sync().await {
                tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "sync");
            }
            let wake = self
                .wake_at
                .map(|t| t.min(Instant::now() + RESYNC))
                .unwrap_or(Instant::now() + RESYNC);
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = tokio::time::sleep_until(wake.into()) => continue,
            };
            match msg {
                None | Some(Msg::Deleted) => break,
                Some(Msg::Update(p)) => self.pod = *p,
                Some(Msg::Exited(id)) => {
                    self.waited.remove(&id);
                }
                Some(Msg::Probe(c)) => self.on_probe(c),
            }
            // Coalesce whatever else is queued.
            loop {
                match rx.try_recv() {
                    Ok(Msg::Update(p)) => self.pod = *p,
                    Ok(Msg::Exited(id)) => {
                        self.waited.remove(&id);
                    }
                    Ok(Msg::Probe(c)) => self.on_probe(c),
                    Ok(Msg::Deleted) => {
                        self.teardown().await;
                        return;
                    }
                    Err(_) => break,
                }
            }
        }
        self.teardown().await;
    }

    /// One convergence pass.
    async fn sync(&mut self) -> Result<()> {
        self.wake_at = None;
        if self.start_time.is_none() {
            self.start_time = Some(Timestamp::now());
        }
        self.check_deadline().await;
        // Images are looked up (or pulled) while the sandbox is made.
        let wanted: Vec<(String, PullPolicy)> = if self.sandbox.is_none() && !self.finished {
            (0..self.slots.len())
                .filter(|i| self.slots[*i].running_since.is_none())
                .map(|i| self.container(i))
                .map(|c| {
                    let r = c.image.clone().unwrap_or_default();
                    let p = PullPolicy::for_container(&r, c.image_pull_policy.as_deref());
                    (r, p)
                })
                .collect()
        } else {
            Vec::new()
        };
        let t0 = Instant::now();
        let fetching = prefetch(self.ctx.clone(), self.pod.clone(), wanted);
        let (sandbox, images) = tokio::join!(self.ensure_sandbox(), fetching);
        self.prefetched = images;
        tracing::debug!(pod = %self.key(), ms = t0.elapsed().as_millis() as u64, "sandbox ready");
        match sandbox {
            Ok(()) => {}
            Err(e) => {
                let msg = format!("{e:#}");
                for s in &mut self.slots {
                    if s.running_since.is_none() {
                        s.waiting = Some(("ContainerCreating".into(), Some(msg.clone())));
                    }
                }
                self.write_status().await;
                return Err(e);
            }
        }
        if self.sync_init().await {
            for i in 0..self.slots.len() {
                if !self.slots[i].init {
                    self.sync_one(i).await;
                }
            }
        } else {
            for s in self.slots.iter_mut().filter(|s| !s.init) {
                s.waiting = Some(("PodInitializing".into(), None));
            }
        }
        // A pod that reached Succeeded or Failed runs nothing more: as
        // kubelet does, its sandbox goes and its IP is released; the
        // exited containers stay for their logs until the pod is deleted.
        if self.sandbox.is_some() && matches!(status::phase(&self.view()), "Succeeded" | "Failed") {
            self.last_ips = self
                .sandbox
                .as_ref()
                .map(|s| s.ips.clone())
                .unwrap_or_default();
            sandbox::teardown(&self.ctx, &self.pod).await?;
            self.sandbox = None;
            self.finished = true;
            tracing::info!(pod = %self.key(), "pod finished; sandbox removed");
        }
        self.prefetched.clear();
        if let Some(starting) = self.pause_starting.take() {
            let started = starting.await.map_err(anyhow::Error::from).and_then(|r| r);
            if let Err(e) = started {
                // The next pass finds the pause container not running and
                // makes the sandbox again.
                tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "start the pause container");
            }
        }
        tracing::debug!(pod = %self.key(), ms = t0.elapsed().as_millis() as u64, "containers done");
        self.write_status().await;
        tracing::debug!(pod = %self.key(), ms = t0.elapsed().as_millis() as u64, "status written");
        Ok(())
    }

    async fn ensure_sandbox(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if let Some(sb) = &self.sandbox {
            match task::state(&self.ctx.rt, &sb.id).await? {
                TaskState::Running { .. } | TaskState::Other { .. } => {}
                _ => {
                    // The pause container died: every container loses its
                    // namespaces. Stop them and make a new sandbox, as
                    // kubelet does; they restart by their policy.
                    tracing::warn!(pod = %self.key(), "sandbox exited; recreating it");
                    self.stop_all(Duration::from_secs(2)).await;
                    sandbox::teardown(&self.ctx, &self.pod).await?;
                    self.sandbox = None;
                }
            }
        }
        if self.sandbox.is_none() {
            if self.volumes.is_none() {
                let refs = Refs::fetch(self.ctx.cp.as_ref(), &self.pod).await?;
                let v = {
                    let cm = |n: &str| refs.config_maps.get(n).cloned();
                    let sec = |n: &str| refs.secrets.get(n).cloned();
                    volumes::prepare(&self.ctx.config.data_dir, &self.pod, &cm, &sec)
                        .context("volumes")?
                };
                self.volumes = Some(v);
            }
            let (sb, starting) = sandbox::ensure(&self.ctx, &self.pod).await?;
            self.sandbox = Some(sb);
            self.pause_starting = starting;
        }
        Ok(())
    }

    async fn sync_container(&mut self, i: usize) -> Result<()> {
        let rt = self.ctx.rt.clone();
        if let Some((_, id)) = self.slots[i].current.clone() {
            match task::state(&rt, &id).await? {
                TaskState::Running { .. } | TaskState::Other { .. } => {
                    if self.slots[i].running_since.is_none() {
                        let started = task::labels(&rt, &id)
                            .await?
                            .and_then(|l| l.get(run_labels::STARTED_AT)?.parse().ok());
                        self.slots[i].running_since = Some(started);
                    }
                    self.slots[i].waiting = None;
                    self.watch_exit(&id);
                    self.probe(i, &id);
                    self.replace_if_changed(i, &id);
                    return Ok(());
                }
                TaskState::Stopped {
                    exit_code,
                    exited_at,
                } => {
                    self.record_exit(i, &id, exit_code, exited_at).await?;
                }
                TaskState::Created => {
                    // Created but never started (an interrupted start).
                    let attempt = self.slots[i].current.as_ref().map_or(0, |(a, _)| *a);
                    return self.start(i, Some(attempt)).await;
                }
                TaskState::None => {
                    let recorded = self.slots[i]
                        .last
                        .as_ref()
                        .is_some_and(|t| t.container_id.as_deref() == Some(id.as_str()));
                    if !recorded {
                        // No task and no exit on record: the start was
                        // interrupted before the task existed. Same run,
                        // finished from the top (the record or its rootfs
                        // may be missing too).
                        let attempt = self.slots[i].current.as_ref().map_or(0, |(a, _)| *a);
                        return self.start(i, Some(attempt)).await;
                    }
                }
            }
        } else {
            return self.start(i, None).await;
        }
        // Finished: restart by policy and back-off.
        let Some(last) = self.slots[i].last.clone() else {
            return Ok(());
        };
        if self.slots[i].replace && !self.deadline_exceeded {
            // A changed container restarts at once, as kubelet does.
            self.slots[i].replace = false;
            return self.start(i, None).await;
        }
        let policy = self.restart_policy(i);
        let restart = policy == "Always" || (policy == "OnFailure" && last.exit_code != 0);
        if !restart || self.deadline_exceeded {
            self.slots[i].waiting = None;
            return Ok(());
        }
        let key = format!("{}/{}", self.uid, self.slots[i].name);
        let finished = self.slots[i].finished.unwrap_or_else(Instant::now);
        let now = Instant::now();
        if let Some(until) = self.backoff.wait_until(&key, finished, now) {
            let delay = self.backoff.delay(&key).unwrap_or_default();
            if self.slots[i]
                .waiting
                .as_ref()
                .is_none_or(|(r, _)| r != "CrashLoopBackOff")
            {
                let msg = format!(
                    "Back-off restarting failed container {} in pod {}_{}({})",
                    self.slots[i].name,
                    self.pod.metadata.name.as_deref().unwrap_or_default(),
                    namespace(&self.pod),
                    self.uid
                );
                self.event(Some(i), EventType::Warning, "BackOff", msg);
            }
            self.slots[i].waiting = Some((
                "CrashLoopBackOff".into(),
                Some(format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    delay.as_secs(),
                    self.slots[i].name,
                    self.pod.metadata.name.as_deref().unwrap_or_default(),
                    namespace(&self.pod),
                    self.uid
                )),
            ));
            self.wake(until);
            return Ok(());
        }
        self.backoff.advance(&key, finished);
        self.start(i, None).await
    }

    /// Accounts an exited run: labels it with its exit (so a restarted
    /// agent still knows), deletes the task, remembers it as last state.
    async fn record_exit(
        &mut self,
        i: usize,
        id: &str,
        exit_code: u32,
        exited_at: Option<Timestamp>,
    ) -> Result<()> {
        let rt = &self.ctx.rt;
        let finished_at = exited_at.unwrap_or_else(Timestamp::now);
        let started_at = match self.slots[i].running_since {
            Some(s) => s,
            None => task::labels(rt, id)
                .await?
                .and_then(|l| l.get(run_labels::STARTED_AT)?.parse().ok()),
        };
        let mut l = HashMap::new();
        l.insert(run_labels::EXIT_CODE.to_string(), exit_code.to_string());
        l.insert(run_labels::FINISHED_AT.to_string(), finished_at.to_string());
        task::set_labels(rt, id, l).await?;
        task::delete_task(rt, id).await?;
        self.unprobe(i);
        let slot = &mut self.slots[i];
        slot.previous = slot.last.take();
        slot.last = Some(Terminated {
            exit_code: exit_code as i32,
            started_at,
            finished_at: Some(finished_at),
            container_id: Some(id.to_string()),
        });
        let ago = Timestamp::now()
            .duration_since(finished_at)
            .unsigned_abs()
            .min(Duration::from_secs(3600));
        slot.finished = Some(Instant::now().checked_sub(ago).unwrap_or_else(Instant::now));
        slot.running_since = None;
        Ok(())
    }

    /// Starts run `attempt` of container `i` (the next one when `None`).
    async fn start(&mut self, i: usize, attempt: Option<u32>) -> Result<()> {
        if self.deadline_exceeded {
            return Ok(());
        }
        let t0 = Instant::now();
        let Some(sb) = self.sandbox.clone() else {
            return Ok(());
        };
        let ctx = self.ctx.clone();
        let pod = self.pod.clone();
        let c = self.container(i).clone();
        let attempt =
            attempt.unwrap_or_else(|| self.slots[i].current.as_ref().map_or(0, |(a, _)| a + 1));
        let ns = namespace(&pod);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();

        // Image.
        let image_ref = c.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_container(&image_ref, c.image_pull_policy.as_deref());
        let found = match self.prefetched.get(&image_ref) {
            Some(img) => Ok(img.clone()),
            None => {
                let keyring = super::context::pull_keyring(ctx.cp.as_ref(), &pod).await;
                image::ensure(
                    &ctx.rt,
                    &image_ref,
                    policy,
                    &ctx.registries,
                    &keyring,
                    &image::NoProgress,
                )
                .await
            }
        };
        let img = match found {
            Ok(img) => img,
            Err(e) => {
                let reason = match &e {
                    PullError::NeverPull(_) => "ErrImageNeverPull",
                    _ if matches!(self.slots[i].waiting.as_ref(), Some((r, _)) if r == "ErrImagePull" || r == "ImagePullBackOff") => {
                        "ImagePullBackOff"
                    }
                    _ => "ErrImagePull",
                };
                self.slots[i].waiting = Some((reason.into(), Some(e.to_string())));
                if reason == "ImagePullBackOff" {
                    self.event(
                        Some(i),
                        EventType::Normal,
                        "BackOff",
                        format!("Back-off pulling image {image_ref:?}"),
                    );
                } else {
                    self.event(
                        Some(i),
                        EventType::Warning,
                        "Failed",
                        format!("Failed to pull image {image_ref:?}: {e}"),
                    );
                }
                let key = format!("pull/{}/{}", self.uid, c.name);
                let now = Instant::now();
                let until = self
                    .backoff
                    .wait_until(&key, now, now)
                    .unwrap_or_else(|| now + self.backoff.advance(&key, now));
                self.wake(until);
                return Ok(());
            }
        };
        self.slots[i].image_id = img.digest.clone();
        self.slots[i].image = image_ref.clone();
        self.event(
            Some(i),
            EventType::Normal,
            "Pulled",
            format!("Container image {image_ref:?} is present on the node"),
        );

        // Env, mounts, spec: errors here are the user's configuration.
        let config_error = |e: String| ("CreateContainerConfigError".to_string(), Some(e));
        let config_event = |w: &Worker, e: &str| {
            w.event(Some(i), EventType::Warning, "Failed", format!("Error: {e}"));
        };
        let services = services_for(ctx.cp.as_ref(), &ns).await?;
        let refs = Refs::fetch(ctx.cp.as_ref(), &pod).await?;
        let enable_links = pod
            .spec
            .as_ref()
            .and_then(|s| s.enable_service_links)
            .unwrap_or(true);
        let svc_env = env::service_env(&services, &ns, enable_links);
        let env = {
            let cm = |n: &str| refs.config_maps.get(n).cloned();
            let sec = |n: &str| refs.secrets.get(n).cloned();
            let pod_ips = sb.ips.join(",");
            let sources = env::EnvSources {
                config_maps: &cm,
                secrets: &sec,
                pod_ip: sb.ip.as_deref().unwrap_or_default(),
                pod_ips: &pod_ips,
                host_ip: &ctx.node_ip,
                node_name: &ctx.node_name,
            };
            env::container_env(&pod, &c, &svc_env, &sources)
        };
        let env = match env {
            Ok(e) => e,
            Err(e) => {
                config_event(self, &e.to_string());
                self.slots[i].waiting = Some(config_error(e.to_string()));
                return Ok(());
            }
        };
        if let Err(e) = probe::specs(&c).and_then(|_| hooks::check(&c)) {
            config_event(self, &e);
            self.slots[i].waiting = Some(config_error(e));
            return Ok(());
        }
        let empty = HashMap::new();
        let field = match self.slots[i].init {
            true => format!("spec.initContainers[{}]", self.slots[i].index),
            false => format!("spec.containers[{}]", self.slots[i].index),
        };
        let mounts =
            match volumes::mounts_of(&pod, &field, &c, self.volumes.as_ref().unwrap_or(&empty)) {
                Ok(m) => m,
                Err(e) => {
                    config_event(self, &e.to_string());
                    self.slots[i].waiting = Some(config_error(e.to_string()));
                    return Ok(());
                }
            };
        let id = self.cid(i, attempt);
        let params = spec::ContainerParams {
            pod: &pod,
            container: &c,
            image: &img.config,
            sandbox_pid: sb.pid,
            env: &env,
            mounts: &mounts,
            files: &sb.files,
            cgroups_path: spec::cgroups_path(&self.uid, &id),
            policy: &self.ctx.config.node_policy(),
        };
        let oci = match spec::container_spec(&params) {
            Ok(s) => s,
            Err(e) => {
                config_event(self, &e.to_string());
                self.slots[i].waiting = Some(config_error(e.to_string()));
                return Ok(());
            }
        };

        let mut l = HashMap::new();
        let kind = match self.slots[i].init {
            true => labels::KIND_INIT_CONTAINER,
            false => labels::KIND_CONTAINER,
        };
        l.insert(labels::KIND.to_string(), kind.to_string());
        l.insert(labels::POD_UID.to_string(), self.uid.clone());
        l.insert(labels::POD_NAME.to_string(), pod_name.clone());
        l.insert(labels::POD_NAMESPACE.to_string(), ns.clone());
        l.insert(labels::CONTAINER_NAME.to_string(), c.name.clone());
        l.insert(labels::ATTEMPT.to_string(), attempt.to_string());
        task::create(
            &ctx.rt,
            &NewContainer {
                id: &id,
                image: &img.name,
                parent_snapshot: &img.chain_id,
                spec: &oci,
                labels: l,
            },
        )
        .await?;
        tracing::debug!(pod = %self.key(), ms = t0.elapsed().as_millis() as u64, "container: created");
        self.event(
            Some(i),
            EventType::Normal,
            "Created",
            format!("Created container: {}", c.name),
        );
        // The run is on record before it starts: a crash from here on is
        // found and finished by the next pass (or the next agent).
        self.slots[i].current = Some((attempt, id.clone()));
        self.launch(i, attempt, &id).await
    }

    /// Starts the task of run `attempt` (container `id`, already created).
    async fn launch(&mut self, i: usize, attempt: u32, id: &str) -> Result<()> {
        let ctx = self.ctx.clone();
        let ns = namespace(&self.pod);
        let pod_name = self.pod.metadata.name.clone().unwrap_or_default();
        let name = self.slots[i].name.clone();
        let id = id.to_string();
        let log = crate::logs::path(
            &ctx.config.log_dir,
            &ns,
            &pod_name,
            &self.uid,
            &name,
            attempt,
        );
        let uri = crate::logs::stdio_uri(&ctx.knode_exe, &log, ctx.config.log_rotation);
        let started = Timestamp::now();
        if let Err(e) = task::start(&ctx.rt, &id, Some(&uri)).await {
            self.event(
                Some(i),
                EventType::Warning,
                "Failed",
                format!("Error: {e:#}"),
            );
            self.slots[i].waiting = Some(("RunContainerError".into(), Some(format!("{e:#}"))));
            // Account it as a failed run so the back-off applies.
            self.slots[i].previous = self.slots[i].last.take();
            self.slots[i].last = Some(Terminated {
                exit_code: 128,
                started_at: None,
                finished_at: Some(started),
                container_id: Some(id.clone()),
            });
            self.slots[i].finished = Some(Instant::now());
            let mut l = HashMap::new();
            l.insert(run_labels::EXIT_CODE.to_string(), "128".to_string());
            l.insert(run_labels::FINISHED_AT.to_string(), started.to_string());
            let _ = task::set_labels(&ctx.rt, &id, l).await;
            return Err(e);
        }
        tracing::debug!(pod = %self.key(), "container: task started");
        // Recorded for a restarted agent; off the start's critical path.
        let l = HashMap::from([(run_labels::STARTED_AT.to_string(), started.to_string())]);
        let (rt, cid) = (ctx.rt.clone(), id.clone());
        tokio::spawn(async move {
            if let Err(e) = task::set_labels(&rt, &cid, l).await {
                tracing::warn!(container = %cid, error = %format!("{e:#}"), "record the start time");
            }
        });
        self.slots[i].running_since = Some(Some(started));
        self.slots[i].waiting = None;
        self.watch_exit(&id);
        self.probe(i, &id);
        self.post_start(i, &id);
        // Keep the previous run (its log and exit for --previous), remove
        // older ones.
        if attempt >= 2 {
            for old in 0..attempt - 1 {
                task::remove(&ctx.rt, &self.cid(i, old)).await?;
            }
        }
        tracing::info!(pod = %self.key(), container = %name, attempt, "container started");
        self.event(
            Some(i),
            EventType::Normal,
            "Started",
            format!("Started container {name}"),
        );
        Ok(())
    }

    /// Records an Event about this pod (about container `i` when given).
    fn event(&self, i: Option<usize>, ty: EventType, reason: &str, message: String) {
        let field = i.map(|i| match self.slots[i].init {
            true => format!("spec.initContainers{{{}}}", self.slots[i].name),
            false => format!("spec.containers{{{}}}", self.slots[i].name),
        });
        self.ctx.events.pod(&self.pod, field, ty, reason, message);
    }

    /// Makes sure an exit of `id` wakes this worker.
    fn watch_exit(&mut self, id: &str) {
        if !self.waited.insert(id.to_string()) {
            return;
        }
        let rt = self.ctx.rt.clone();
        let tx = self.tx.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            // An error (containerd restarting) also wakes the worker, whose
            // next pass reads the task state and waits again.
            let _ = task::wait(&rt, &id).await;
            let _ = tx.send(Msg::Exited(id));
        });
    }

    fn wake(&mut self, at: Instant) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }

    /// The spec of container `i`.
    fn container(&self, i: usize) -> &Container {
        let s = &self.slots[i];
        match s.init {
            true => &init_containers(&self.pod)[s.index],
            false => &containers(&self.pod)[s.index],
        }
    }

    /// The containerd id of run `attempt` of container `i`.
    fn cid(&self, i: usize, attempt: u32) -> String {
        let s = &self.slots[i];
        match s.init {
            true => runtime::init_container_id(&self.uid, s.index, attempt),
            false => container_id(&self.uid, s.index, attempt),
        }
    }

    /// When container `i` is restarted: a sidecar always; another init
    /// container on failure unless the pod says Never; an app container by
    /// the pod's policy.
    fn restart_policy(&self, i: usize) -> String {
        let pod = restart_policy(&self.pod);
        match (self.slots[i].init, self.slots[i].sidecar) {
            (true, true) => "Always".into(),
            (true, false) if pod == "Never" => pod,
            (true, false) => "OnFailure".into(),
            (false, _) => pod,
        }
    }

    async fn sync_one(&mut self, i: usize) {
        if let Err(e) = self.sync_container(i).await {
            tracing::warn!(pod = %self.key(), container = %self.slots[i].name, error = %format!("{e:#}"), "container");
        }
    }

    /// Runs the init containers one after another, each to completion (a
    /// sidecar until it is running and started), restarting a failed one
    /// by policy and back-off. True once all are done, when the app
    /// containers may run; sidecars are kept running from then on.
    async fn sync_init(&mut self) -> bool {
        for i in 0..self.slots.len() {
            if !self.slots[i].init {
                continue;
            }
            let completed = |s: &Slot| {
                !s.sidecar
                    && s.running_since.is_none()
                    && s.current.is_some()
                    && s.last.as_ref().is_some_and(|t| {
                        t.exit_code == 0
                            && t.container_id.as_deref() == s.current.as_ref().map(|c| c.1.as_str())
                    })
            };
            if completed(&self.slots[i]) {
                continue;
            }
            if self.finished {
                return false;
            }
            self.sync_one(i).await;
            let s = &self.slots[i];
            let up = s.sidecar
                && s.running_since.is_some()
                && (self.container(i).startup_probe.is_none() || s.started);
            if up || completed(&self.slots[i]) {
                continue;
            }
            self.initialized = false;
            return false;
        }
        self.initialized = true;
        true
    }

    /// The pod's spec now names another image for container `i` (the one
    /// change Kubernetes allows to a running pod's containers): its run
    /// `id` is stopped, preStop and grace as usual, and restarted with it.
    fn replace_if_changed(&mut self, i: usize, id: &str) {
        let want = self.container(i).image.clone().unwrap_or_default();
        if self.slots[i].replace || self.slots[i].image == want {
            return;
        }
        tracing::info!(pod = %self.key(), container = %self.slots[i].name, from = %self.slots[i].image, to = %want, "container definition changed, will be restarted");
        self.slots[i].replace = true;
        tokio::spawn(self.stopper(i, id, self.grace()));
    }

    /// The pod's termination grace period.
    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    /// `activeDeadlineSeconds`: once the pod has been active that long it
    /// fails (DeadlineExceeded) and every container is stopped, as kubelet
    /// does; before that, the worker wakes at the deadline.
    async fn check_deadline(&mut self) {
        let deadline = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.active_deadline_seconds)
            .filter(|d| *d >= 0);
        let (Some(deadline), Some(start)) = (deadline, self.start_time) else {
            return;
        };
        if self.deadline_exceeded || self.finished {
            return;
        }
        let active = Timestamp::now().duration_since(start).as_secs();
        if active < deadline {
            let left = Duration::from_secs((deadline - active) as u64);
            self.wake(Instant::now() + left);
            return;
        }
        tracing::info!(pod = %self.key(), deadline, "pod was active on the node longer than the specified deadline");
        self.event(
            None,
            EventType::Normal,
            "DeadlineExceeded",
            "Pod was active on the node longer than the specified deadline".into(),
        );
        self.deadline_exceeded = true;
        let grace = self.grace();
        self.stop_all(grace).await;
    }

    /// Runs container `i`'s postStart hook for the run `id` that just
    /// started, beside it; if the hook fails, the run is stopped (preStop
    /// and grace as usual) and restarts by its policy and back-off.
    fn post_start(&self, i: usize, id: &str) {
        let Ok(Some(hook)) = hooks::of(self.container(i), hooks::Point::PostStart) else {
            return;
        };
        let (target, key, name) = (self.target(id), self.key(), self.slots[i].name.clone());
        let stop = self.stopper(i, id, self.grace());
        tokio::spawn(async move {
            // Bounded, so a hung hook cannot pin the run forever.
            if let Err(e) = hooks::run(&hook, &target, POST_START_LIMIT).await {
                tracing::warn!(pod = %key, container = %name, error = %e, "postStart hook failed; stopping the container");
                stop.await;
            }
        });
    }

    /// Registers the probes of container `i`'s running run `id`, once.
    fn probe(&mut self, i: usize, id: &str) {
        if self.slots[i].probed.as_deref() == Some(id)
            || self.slots[i].killed.as_deref() == Some(id)
        {
            return;
        }
        self.unprobe(i);
        self.slots[i].probed = Some(id.to_string());
        let c = self.container(i).clone();
        let specs = match probe::specs(&c) {
            Ok(s) => s,
            Err(e) => {
                // Checked before the start; only a run adopted from an
                // older agent can get here.
                tracing::warn!(pod = %self.key(), container = %c.name, error = %e, "probes not run");
                Vec::new()
            }
        };
        if specs.is_empty() {
            return;
        }
        let ago = self.slots[i]
            .running_since
            .flatten()
            .map(|t| Timestamp::now().duration_since(t).unsigned_abs())
            .unwrap_or_default();
        let tx = self.tx.clone();
        self.ctx.prober.add(Registration {
            container_id: id.to_string(),
            pod: self.key(),
            container: c.name.clone(),
            specs,
            target: self.target(id),
            started: Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
            notify: std::sync::Arc::new(move |c| {
                let _ = tx.send(Msg::Probe(c));
            }),
        });
    }

    /// Stops probing container `i`'s run and forgets its results.
    fn unprobe(&mut self, i: usize) {
        if let Some(id) = self.slots[i].probed.take() {
            self.ctx.prober.remove(&id);
        }
        self.slots[i].ready = false;
        self.slots[i].started = false;
    }

    /// A probe run failed or changed its result. Every failed run is an
    /// `Unhealthy` event (the recorder counts repeats), as with kubelet; on
    /// a change readiness and startup are recorded, and a failed liveness
    /// or startup probe kills the run, which then restarts by the pod's
    /// policy and back-off.
    fn on_probe(&mut self, c: probe::scheduler::Change) {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.probed.as_deref() == Some(c.container_id.as_str()))
        else {
            return;
        };
        if let Some(why) = &c.message {
            let msg = format!("{} probe failed: {why}", c.kind);
            self.event(Some(i), EventType::Warning, "Unhealthy", msg);
        }
        if !c.changed {
            return;
        }
        match (c.kind, c.result) {
            (probe::Kind::Readiness, ok) => self.slots[i].ready = ok,
            (probe::Kind::Startup, true) => self.slots[i].started = true,
            (probe::Kind::Liveness | probe::Kind::Startup, false) => {
                let name = self.slots[i].name.clone();
                tracing::info!(pod = %self.key(), container = %name, probe = %c.kind, reason = c.message.as_deref().unwrap_or(""), "container failed its probe, will be restarted");
                let spec = self.container(i);
                let grace = spec
                    .liveness_probe
                    .as_ref()
                    .filter(|_| c.kind == probe::Kind::Liveness)
                    .or(spec.startup_probe.as_ref())
                    .and_then(|p| p.termination_grace_period_seconds)
                    .or_else(|| {
                        self.pod
                            .spec
                            .as_ref()
                            .and_then(|s| s.termination_grace_period_seconds)
                    })
                    .unwrap_or(30)
                    .max(0) as u64;
                // No more probing of a run that is being killed.
                self.unprobe(i);
                self.slots[i].killed = Some(c.container_id.clone());
                let stop = self.stopper(i, &c.container_id, Duration::from_secs(grace));
                tokio::spawn(stop);
            }
            (probe::Kind::Liveness, true) => {}
        }
    }

    /// Writes the status if it differs from what was last written.
    async fn write_status(&mut self) {
        let view = self.view();
        let prev = self.written.as_ref().or(self.pod.status.as_ref());
        let st = status::pod_status(prev, &view, Timestamp::now());
        if self.written.as_ref() == Some(&st) {
            return;
        }
        let mut p = self.pod.clone();
        p.status = Some(st.clone());
        p.metadata.resource_version = None;
        match self.ctx.cp.update_status(Object::from(p)).await {
            Ok(_) => self.written = Some(st),
            Err(e) if e.is_not_found() => {}
            Err(e) => tracing::warn!(pod = %self.key(), error = %e, "write status"),
        }
    }

    /// What the agent observes of the pod now.
    fn view(&self) -> PodView {
        PodView {
            sandbox_ready: self.sandbox.is_some(),
            pod_ips: self
                .sandbox
                .as_ref()
                .map(|s| s.ips.clone())
                .unwrap_or_else(|| self.last_ips.clone()),
            host_ip: self.ctx.node_ip.clone(),
            start_time: self.start_time,
            restart_policy: restart_policy(&self.pod),
            readiness_gates: self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.readiness_gates.as_ref())
                .map(|g| g.iter().map(|g| g.condition_type.clone()).collect())
                .unwrap_or_default(),
            initialized: self.initialized,
            failed: self.deadline_exceeded.then(|| {
                (
                    "DeadlineExceeded".to_string(),
                    "Pod was active on the node longer than the specified deadline".to_string(),
                )
            }),
            init_containers: (0..self.slots.len())
                .filter(|i| self.slots[*i].init)
                .map(|i| self.container_view(i))
                .collect(),
            containers: (0..self.slots.len())
                .filter(|i| !self.slots[*i].init)
                .map(|i| self.container_view(i))
                .collect(),
        }
    }

    /// Container `i` as its status shows it.
    fn container_view(&self, i: usize) -> ContainerView {
        let s = &self.slots[i];
        let state = if let Some(started) = s.running_since {
            State::Running {
                started_at: started,
            }
        } else if let Some((reason, message)) = &s.waiting {
            State::Waiting {
                reason: reason.clone(),
                message: message.clone(),
            }
        } else if let Some(t) = &s.last {
            State::Terminated(t.clone())
        } else {
            State::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            }
        };
        // The last state is the run before the current one.
        let last = match &state {
            State::Terminated(_) => s.previous.clone(),
            _ => s.last.clone(),
        };
        let running = matches!(state, State::Running { .. });
        let c = self.container(i);
        let started = running && (c.startup_probe.is_none() || s.started);
        let ready = match &state {
            // A completed init container counts as ready, as kubelet shows it.
            State::Terminated(t) if s.init && !s.sidecar => t.exit_code == 0,
            _ => started && (c.readiness_probe.is_none() || s.ready),
        };
        ContainerView {
            ready,
            started,
            name: s.name.clone(),
            image: s.image.clone(),
            image_id: s.image_id.clone(),
            container_id: s.current.as_ref().map(|(_, id)| id.clone()),
            state,
            last,
            restart_count: s.current.as_ref().map_or(0, |(a, _)| *a as i32),
        }
    }

    /// Stops every container with `grace`: the app containers all at once,
    /// then the init containers (sidecars stop after what they serve).
    async fn stop_all(&mut self, grace: Duration) {
        self.stop_some(grace, false).await;
        self.stop_some(grace, true).await;
    }

    async fn stop_some(&mut self, grace: Duration, init: bool) {
        let mut stops = tokio::task::JoinSet::new();
        for i in 0..self.slots.len() {
            if self.slots[i].init != init {
                continue;
            }
            if let Some((_, id)) = self.slots[i].current.clone() {
                stops.spawn(self.stopper(i, &id, grace));
            }
        }
        while stops.join_next().await.is_some() {}
    }

    /// Where probes and hooks of run `id` are aimed.
    fn target(&self, id: &str) -> Target {
        Target {
            pod_ip: self.sandbox.as_ref().and_then(|s| s.ip.clone()),
            container_id: id.to_string(),
            rt: self.ctx.rt.clone(),
            fifo_parent: self.ctx.config.run_dir.join("exec"),
        }
    }

    /// Stops run `id` of container `i` as kubelet does: its preStop hook
    /// first (if it runs), inside `grace`; then SIGTERM with what is left
    /// of it (at least 2 s), then SIGKILL.
    fn stopper(
        &self,
        i: usize,
        id: &str,
        grace: Duration,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let hook = hooks::of(self.container(i), hooks::Point::PreStop)
            .ok()
            .flatten();
        let (target, key, name) = (self.target(id), self.key(), self.slots[i].name.clone());
        self.event(
            Some(i),
            EventType::Normal,
            "Killing",
            format!("Stopping container {name}"),
        );
        async move {
            let t0 = Instant::now();
            let running = matches!(
                task::state(&target.rt, &target.container_id).await,
                Ok(TaskState::Running { .. })
            );
            if let (Some(hook), true) = (hook, running) {
                if let Err(e) = hooks::run(&hook, &target, grace).await {
                    tracing::warn!(pod = %key, container = %name, error = %e, "preStop hook failed");
                }
            }
            let left = grace
                .saturating_sub(t0.elapsed())
                .max(Duration::from_secs(2));
            if let Err(e) = task::stop(&target.rt, &target.container_id, left).await {
                tracing::warn!(pod = %key, container = %name, error = %format!("{e:#}"), "stop");
            }
        }
    }

    /// Deletion: stop containers gracefully, then remove everything in CRI
    /// order. Retried until it succeeds, so nothing the pod held is lost
    /// track of; the orphan sweep of a later agent start is the backstop.
    async fn teardown(mut self) {
        // The delete's grace when it set one, else the pod's.
        let grace = Duration::from_secs(
            self.pod
                .metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    self.pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0) as u64,
        );
        for i in 0..self.slots.len() {
            self.unprobe(i);
        }
        self.stop_all(grace).await;
        let mut delay = Duration::from_millis(500);
        loop {
            match sandbox::remove_pod(&self.ctx.host(), &self.uid, Some(&self.pod)).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %self.key(), error = %format!("{e:#}"), "teardown; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
        tracing::info!(pod = %self.key(), uid = %self.uid, "pod removed");
    }
}

/// The end of a graceful deletion: the pod's containers, sandbox and IP
/// are gone, so its object goes too (grace 0, only this uid). Retried
/// until the control plane answers; gone already is fine.
async fn remove_object(ctx: &Context, pod: &Pod) {
    let what = controlplane::ObjectRef::of(&Object::from(pod.clone()));
    let opts = controlplane::DeleteOptions {
        uid: pod.metadata.uid.clone(),
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let mut delay = Duration::from_millis(200);
    loop {
        match ctx.cp.delete_with(&what, &opts).await {
            Ok(_) => return,
            // Gone, or a new pod of that name: nothing of ours is left.
            Err(e) if e.is_not_found() || e.is_conflict() => return,
            Err(e) => {
                tracing::warn!(pod = %what, error = %e, "remove the deleted pod; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Looks up (pulling by policy) each image; the ones found are kept for
/// the containers' starts, errors are left for the start to report.
async fn prefetch(
    ctx: Arc<Context>,
    pod: Pod,
    wanted: Vec<(String, PullPolicy)>,
) -> HashMap<String, Image> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let keyring = super::context::pull_keyring(ctx.cp.as_ref(), &pod).await;
    for (r, policy) in wanted {
        if out.contains_key(&r) {
            continue;
        }
        if let Ok(img) = image::ensure(
            &ctx.rt,
            &r,
            policy,
            &ctx.registries,
            &keyring,
            &image::NoProgress,
        )
        .await
        {
            out.insert(r, img);
        }
    }
    out
}

fn terminated_from_labels(o: &Owned) -> Option<Terminated> {
    let code = o.labels.get(run_labels::EXIT_CODE)?.parse().ok()?;
    Some(Terminated {
        exit_code: code,
        started_at: o
            .labels
            .get(run_labels::STARTED_AT)
            .and_then(|t| t.parse().ok()),
        finished_at: o
            .labels
            .get(run_labels::FINISHED_AT)
            .and_then(|t| t.parse().ok()),
        container_id: Some(o.id.clone()),
    })
}

fn containers(pod: &Pod) -> &[Container] {
    pod.spec.as_ref().map_or(&[], |s| s.containers.as_slice())
}

fn init_containers(pod: &Pod) -> &[Container] {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or(&[])
}

fn restart_policy(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.clone())
        .unwrap_or_else(|| "Always".into())
}

pub fn namespace(pod: &Pod) -> String {
    pod.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}
