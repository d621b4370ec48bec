//! The controller manager: waits to lead, then starts the informers
//! (Pods, ReplicaSets, Deployments, StatefulSets, ControllerRevisions,
//! DaemonSets, Nodes, Jobs, Services, EndpointSlices, node Leases) and
//! the scheduler,
//! connects their changes to the work
//! queues, and runs one worker per controller; stops them all when
//! leadership is lost, and tries again.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use controlplane::{ControlPlane, Kind, Object, ObjectRef};
use tokio::task::JoinHandle;

use crate::cronjob::CronJobController;
use crate::daemonset::DaemonSetController;
use crate::deployment::DeploymentController;
use crate::endpointslice::{EndpointSliceController, Index as SliceIndex};
use crate::expectations::Expectations;
use crate::gc::GarbageCollector;
use crate::informer::{Cache, Informer};
use crate::job::JobController;
use crate::leader::{Config, Elector};
use crate::nodelifecycle::NodeLifecycleController;
use crate::queue::Queue;
use crate::replicaset::ReplicaSetController;
use crate::scheduler::{Scheduler, Usages};
use crate::statefulset::StatefulSetController;
use crate::Result;

/// Every key is synced again this often, repairing what a missed event left.
const RESYNC: Duration = Duration::from_secs(60);

/// Runs the controller manager for `identity` (the node name) until the
/// task is aborted.
pub async fn run(cp: Arc<dyn ControlPlane>, identity: String) {
    run_with(cp, Config::new(&identity)).await
}

/// Runs the controller manager with the given election settings.
pub async fn run_with(cp: Arc<dyn ControlPlane>, election: Config) {
    let mut elector = Elector::new(cp.clone(), election);
    loop {
        elector.acquire().await;
        let tasks = start(cp.clone());
        elector.hold().await;
        for t in tasks {
            t.abort();
        }
    }
}

/// Starts informers and controllers; returns their tasks.
pub fn start(cp: Arc<dyn ControlPlane>) -> Vec<JoinHandle<()>> {
    // Pods are cached stripped to what the controllers and the scheduler
    // read (most of the manager's memory is pods).
    let (pod_inf, pods) = Informer::new(cp.clone(), Kind::Pod);
    let mut pod_inf = pod_inf.with_transform(crate::pods::strip_pod);
    let (mut rs_inf, rss) = Informer::new(cp.clone(), Kind::ReplicaSet);
    let (mut d_inf, deps) = Informer::new(cp.clone(), Kind::Deployment);
    let (mut sts_inf, sets) = Informer::new(cp.clone(), Kind::StatefulSet);
    let (mut rev_inf, revs) = Informer::new(cp.clone(), Kind::ControllerRevision);
    let (mut ds_inf, daemons) = Informer::new(cp.clone(), Kind::DaemonSet);
    let (mut node_inf, nodes) = Informer::new(cp.clone(), Kind::Node);
    let (mut job_inf, jobs) = Informer::new(cp.clone(), Kind::Job);
    let (mut cj_inf, cron_jobs) = Informer::new(cp.clone(), Kind::CronJob);
    let cj_q = Queue::new();
    let (mut svc_inf, services) = Informer::new(cp.clone(), Kind::Service);
    let (mut slice_inf, slices) = Informer::new(cp.clone(), Kind::EndpointSlice);
    let (mut lease_inf, leases) = Informer::new(cp.clone(), Kind::Lease);
    let slice_q = Queue::new();
    let slice_ix = Arc::new(SliceIndex::default());
    let sched_q = Queue::new();
    let node_q = Queue::new();
    let usages = Arc::new(Usages::default());
    let unschedulable = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    // Pods that fit nowhere are tried again when room may have appeared.
    let retry_unschedulable = {
        let (unschedulable, sched_q) = (unschedulable.clone(), sched_q.clone());
        move || {
            let keys: Vec<ObjectRef> = unschedulable
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            for k in keys {
                sched_q.add(k);
            }
        }
    };
    let (ds_q, job_q) = (Queue::new(), Queue::new());
    let (rs_q, d_q, gc_q, sts_q) = (Queue::new(), Queue::new(), Queue::new(), Queue::new());
    let dependents = vec![
        (Kind::Pod, pods.clone()),
        (Kind::ReplicaSet, rss.clone()),
        (Kind::ControllerRevision, revs.clone()),
        (Kind::EndpointSlice, slices.clone()),
        (Kind::Job, jobs.clone()),
    ];
    let gc_caches = vec![
        (Kind::CronJob, cron_jobs.clone()),
        (Kind::Service, services.clone()),
        (Kind::EndpointSlice, slices.clone()),
        (Kind::Pod, pods.clone()),
        (Kind::ReplicaSet, rss.clone()),
        (Kind::Deployment, deps.clone()),
        (Kind::StatefulSet, sets.clone()),
        (Kind::ControllerRevision, revs.clone()),
        (Kind::DaemonSet, daemons.clone()),
        (Kind::Job, jobs.clone()),
    ];

    // Pods: their ReplicaSets and StatefulSets, and the collector.
    {
        let (rss, rs_q, gc_q) = (rss.clone(), rs_q.clone(), gc_q.clone());
        let (sets, sts_q) = (sets.clone(), sts_q.clone());
        let (daemons, ds_q) = (daemons.clone(), ds_q.clone());
        let (jobs, job_q) = (jobs.clone(), job_q.clone());
        let (slice_ix, slice_q) = (slice_ix.clone(), slice_q.clone());
        let (usages, sched_q, retry) =
            (usages.clone(), sched_q.clone(), retry_unschedulable.clone());
        pod_inf.on_change(Box::new(move |old, new| {
            for k in slice_ix.pod_changed(old, new) {
                slice_q.add(k);
            }
            if usages.pod_changed(old, new) {
                retry();
            }
            if let Some(o @ Object::Pod(p)) = new {
                if crate::scheduler::pending(p) {
                    sched_q.add(ObjectRef::of(o));
                }
            }
            for o in old.iter().chain(new.iter()) {
                ReplicaSetController::keys_for_pod(&rss, o)
                    .into_iter()
                    .for_each(|k| rs_q.add(k));
                StatefulSetController::keys_for_pod(&sets, o)
                    .into_iter()
                    .for_each(|k| sts_q.add(k));
                DaemonSetController::keys_for_pod(&daemons, o)
                    .into_iter()
                    .for_each(|k| ds_q.add(k));
                JobController::keys_for_pod(&jobs, o)
                    .into_iter()
                    .for_each(|k| job_q.add(k));
            }
            collect_if_owned(&gc_q, new);
        }));
    }
    // ReplicaSets: themselves, their Deployment, the collector; a deleted
    // one's pods are checked by the collector.
    {
        let (deps, rs_q, d_q, gc_q, dependents) = (
            deps.clone(),
            rs_q.clone(),
            d_q.clone(),
            gc_q.clone(),
            dependents.clone(),
        );
        rs_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                rs_q.add(ObjectRef::of(o));
            }
            for o in old.iter().chain(new.iter()) {
                DeploymentController::keys_for_rs(&deps, o)
                    .into_iter()
                    .for_each(|k| d_q.add(k));
            }
            // One made after its Deployment went (a sync on a stale
            // cache) is collected even when this event comes after the
            // Deployment's deletion.
            collect_if_owned(&gc_q, new);
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }
    {
        let (d_q, gc_q, dependents) = (d_q.clone(), gc_q.clone(), dependents.clone());
        d_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                d_q.add(ObjectRef::of(o));
            }
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }

    // StatefulSets: themselves and the collector; their revisions only
    // matter to the collector.
    {
        let (sts_q, gc_q, dependents) = (sts_q.clone(), gc_q.clone(), dependents.clone());
        sts_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                sts_q.add(ObjectRef::of(o));
            }
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }
    {
        let gc_q = gc_q.clone();
        rev_inf.on_change(Box::new(move |_, new| {
            collect_if_owned(&gc_q, new);
        }));
    }

    // DaemonSets: themselves and the collector; any Node change concerns
    // every DaemonSet.
    {
        let (ds_q, gc_q, dependents) = (ds_q.clone(), gc_q.clone(), dependents.clone());
        ds_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                ds_q.add(ObjectRef::of(o));
            }
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }
    {
        let (daemons, ds_q) = (daemons.clone(), ds_q.clone());
        node_inf.on_change(Box::new(move |_, _| {
            for o in daemons.all() {
                ds_q.add(ObjectRef::of(&o));
            }
        }));
    }

    {
        let (cj_q, gc_q, dependents) = (cj_q.clone(), gc_q.clone(), dependents.clone());
        cj_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                cj_q.add(ObjectRef::of(o));
            }
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }

    // Services and their slices: the EndpointSlice controller (and the
    // collector, for slices whose Service went). A node lost or back
    // concerns every Service.
    {
        let (slice_ix, slice_q, gc_q, dependents) = (
            slice_ix.clone(),
            slice_q.clone(),
            gc_q.clone(),
            dependents.clone(),
        );
        svc_inf.on_change(Box::new(move |old, new| {
            if let Some(k) = slice_ix.service_changed(old, new) {
                slice_q.add(k);
            }
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }
    {
        let (slice_ix, slice_q, gc_q) = (slice_ix.clone(), slice_q.clone(), gc_q.clone());
        slice_inf.on_change(Box::new(move |old, new| {
            for k in slice_ix.slice_changed(old, new) {
                slice_q.add(k);
            }
            collect_if_owned(&gc_q, new);
        }));
    }
    // A node or its heartbeat Lease: the node lifecycle controller.
    {
        let node_q = node_q.clone();
        node_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                node_q.add(ObjectRef::of(o));
            }
        }));
    }
    {
        let node_q = node_q.clone();
        lease_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new
                .or(old)
                .filter(|o| o.namespace() == crate::endpointslice::NODE_LEASE_NAMESPACE)
            {
                node_q.add(ObjectRef::new(Kind::Node, "", o.name()));
            }
        }));
    }
    for inf in [&mut node_inf, &mut lease_inf] {
        let (slice_ix, slice_q) = (slice_ix.clone(), slice_q.clone());
        let (nodes, leases, services) = (nodes.clone(), leases.clone(), services.clone());
        let retry = retry_unschedulable.clone();
        inf.on_change(Box::new(move |_, _| {
            retry();
            if slice_ix.nodes_changed(&nodes, &leases) {
                for o in services.all() {
                    slice_q.add(ObjectRef::of(&o));
                }
            }
        }));
    }

    {
        let (job_q, gc_q, dependents) = (job_q.clone(), gc_q.clone(), dependents.clone());
        let cj_q = cj_q.clone();
        job_inf.on_change(Box::new(move |old, new| {
            if let Some(o) = new.or(old) {
                job_q.add(ObjectRef::of(o));
                if let Some(k) = CronJobController::key_for_job(o) {
                    cj_q.add(k);
                }
            }
            collect_if_owned(&gc_q, new);
            owner_changed(&dependents, &gc_q, old, new);
        }));
    }

    let rs_c = Arc::new(ReplicaSetController {
        cp: cp.clone(),
        replica_sets: rss.clone(),
        pods: pods.clone(),
        expectations: Expectations::default(),
    });
    let d_c = Arc::new(DeploymentController {
        cp: cp.clone(),
        deployments: deps.clone(),
        replica_sets: rss.clone(),
        pods: pods.clone(),
    });
    let sts_c = Arc::new(StatefulSetController {
        cp: cp.clone(),
        sets: sets.clone(),
        pods: pods.clone(),
        revisions: revs.clone(),
    });
    let ds_c = Arc::new(DaemonSetController {
        cp: cp.clone(),
        sets: daemons.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
    });
    let job_c = Arc::new(JobController {
        cp: cp.clone(),
        jobs: jobs.clone(),
        pods: pods.clone(),
    });
    let slice_c = Arc::new(EndpointSliceController {
        cp: cp.clone(),
        services: services.clone(),
        pods: pods.clone(),
        slices: slices.clone(),
        nodes: nodes.clone(),
        index: slice_ix,
        expectations: Expectations::default(),
    });
    let sched = Arc::new(Scheduler {
        cp: cp.clone(),
        pods: pods.clone(),
        nodes: nodes.clone(),
        leases: leases.clone(),
        usages,
        unschedulable,
        events: controlplane::events::Recorder::component(cp.clone(), crate::scheduler::NAME, None),
        queue: sched_q.clone(),
        binds: Arc::new(tokio::sync::Semaphore::new(
            crate::scheduler::BINDS_IN_FLIGHT,
        )),
    });
    let cj_c = Arc::new(CronJobController {
        cp: cp.clone(),
        cron_jobs: cron_jobs.clone(),
        jobs: jobs.clone(),
        events: controlplane::events::Recorder::component(cp.clone(), "cronjob-controller", None),
    });
    let nl = Arc::new(NodeLifecycleController {
        cp: cp.clone(),
        nodes: nodes.clone(),
        leases: leases.clone(),
        pods: pods.clone(),
        events: controlplane::events::Recorder::component(cp.clone(), "node-controller", None),
    });
    let gc = Arc::new(GarbageCollector {
        cp,
        caches: gc_caches,
    });
    let all = vec![
        pods.clone(),
        rss.clone(),
        deps.clone(),
        sets.clone(),
        revs.clone(),
        daemons.clone(),
        nodes.clone(),
        jobs.clone(),
        services.clone(),
        slices.clone(),
        leases.clone(),
        cron_jobs.clone(),
    ];
    vec![
        tokio::spawn(pod_inf.run()),
        tokio::spawn(rs_inf.run()),
        tokio::spawn(d_inf.run()),
        tokio::spawn(sts_inf.run()),
        tokio::spawn(rev_inf.run()),
        tokio::spawn(ds_inf.run()),
        tokio::spawn(node_inf.run()),
        tokio::spawn(job_inf.run()),
        tokio::spawn(svc_inf.run()),
        tokio::spawn(cj_inf.run()),
        tokio::spawn(slice_inf.run()),
        tokio::spawn(lease_inf.run()),
        tokio::spawn(worker("replicaset", rs_q.clone(), all.clone(), move |k| {
            let c = rs_c.clone();
            async move { c.sync(&k).await }
        })),
        tokio::spawn(worker("deployment", d_q.clone(), all.clone(), move |k| {
            let c = d_c.clone();
            async move { c.sync(&k).await }
        })),
        tokio::spawn(worker(
            "statefulset",
            sts_q.clone(),
            all.clone(),
            move |k| {
                let c = sts_c.clone();
                async move { c.sync(&k).await }
            },
        )),
        tokio::spawn(worker("daemonset", ds_q.clone(), all.clone(), move |k| {
            let c = ds_c.clone();
            async move { c.sync(&k).await }
        })),
        tokio::spawn(worker("job", job_q.clone(), all.clone(), move |k| {
            let c = job_c.clone();
            async move { c.sync(&k).await }
        })),
        tokio::spawn(worker(
            "endpointslice",
            slice_q.clone(),
            all.clone(),
            move |k| {
                let c = slice_c.clone();
                async move { c.sync(&k).await }
            },
        )),
        tokio::spawn(worker(
            "scheduler",
            sched_q.clone(),
            all.clone(),
            move |k| {
                let c = sched.clone();
                async move { c.sync(&k).await }
            },
        )),
        tokio::spawn(worker("cronjob", cj_q.clone(), all.clone(), move |k| {
            let c = cj_c.clone();
            async move { c.sync(&k).await }
        })),
        tokio::spawn(worker(
            "nodelifecycle",
            node_q.clone(),
            all.clone(),
            move |k| {
                let c = nl.clone();
                async move { c.sync(&k).await }
            },
        )),
        tokio::spawn(worker("garbagecollector", gc_q, all, move |k| {
            let c = gc.clone();
            async move { c.sync(&k).await }
        })),
        tokio::spawn(resync(vec![
            (rss, rs_q),
            (deps, d_q),
            (sets, sts_q),
            (daemons, ds_q),
            (jobs, job_q),
            (services, slice_q),
            (nodes, node_q),
            (cron_jobs, cj_q),
        ])),
    ]
}

/// A dependent with owners is checked by the collector.
fn collect_if_owned(gc_q: &Queue, new: Option<&Object>) {
    if let Some(n) = new.filter(|n| {
        n.meta()
            .owner_references
            .as_ref()
            .is_some_and(|r| !r.is_empty())
    }) {
        gc_q.add(ObjectRef::of(n));
    }
}

/// An owner was deleted (or replaced): its dependents are checked.
fn owner_changed(
    dependents: &[(Kind, Cache)],
    gc_q: &Queue,
    old: Option<&Object>,
    new: Option<&Object>,
) {
    let Some(old) = old else { return };
    let replaced = new.is_some_and(|n| n.meta().uid != old.meta().uid);
    if new.is_none() || replaced {
        let uid = old.meta().uid.clone().unwrap_or_default();
        for k in GarbageCollector::dependents_of(dependents, old.namespace(), &uid) {
            gc_q.add(k);
        }
    }
}

/// Queues every object of each cache periodically.
async fn resync(sets: Vec<(Cache, Queue)>) {
    loop {
        tokio::time::sleep(RESYNC).await;
        for (cache, q) in &sets {
            for o in cache.all() {
                q.add(ObjectRef::of(&o));
            }
        }
    }
}

/// Processes keys of `queue` with `sync` once the caches are synced:
/// success forgets the key's failures (and may ask for a later sync), an
/// error requeues it with back-off.
async fn worker<F, Fut>(name: &'static str, queue: Queue, caches: Vec<Cache>, sync: F)
where
    F: Fn(ObjectRef) -> Fut,
    Fut: Future<Output = Result<Option<Duration>>>,
{
    for c in &caches {
        c.wait_synced().await;
    }
    tracing::debug!(controller = name, "caches synced");
    loop {
        let key = queue.get().await;
        match sync(key.clone()).await {
            Ok(again) => {
                queue.forget(&key);
                if let Some(d) = again {
                    queue.add_after(key.clone(), d);
                }
            }
            Err(e) => {
                let conflict = matches!(&e, crate::Error::Write { source, .. } | crate::Error::ControlPlane(source) if source.is_conflict() || matches!(source, controlplane::Error::AlreadyExists { .. }));
                if conflict {
                    tracing::debug!(controller = name, object = %key, error = %e, "sync conflicted; retrying");
                } else {
                    tracing::warn!(controller = name, object = %key, error = %e, "sync failed; retrying");
                }
                queue.add_rate_limited(key.clone());
            }
        }
        queue.done(&key);
    }
}
