//! One scheduler for every probe on the node: a single task with a timer
//! heap, not a thread or a loop per probe. A due probe runs as a future
//! (never two runs of one probe at once); its outcome comes back here,
//! goes through the probe's thresholds, and the pod's worker is told of
//! every failed run (kubelet records an `Unhealthy` event for each) and of
//! every change of result. Liveness and readiness wait while a startup
//! probe has not passed, as kubelet's do.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::handlers::{self, Target};
use super::{Counter, Kind, Outcome, Spec};

/// One probe run that failed or changed the probe's result, for the
/// worker of its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub container_id: String,
    pub kind: Kind,
    /// The probe's result after this run (through its thresholds).
    pub result: bool,
    /// Whether this run changed the result.
    pub changed: bool,
    /// Why this run failed, when it did.
    pub message: Option<String>,
}

/// The probes of one running container.
pub struct Registration {
    /// The containerd id of the run being probed.
    pub container_id: String,
    /// `namespace/pod` and container name, for logs.
    pub pod: String,
    pub container: String,
    pub specs: Vec<Spec>,
    pub target: Target,
    /// When the run started; initial delays count from here.
    pub started: Instant,
    /// Where result changes go.
    pub notify: Arc<dyn Fn(Change) + Send + Sync>,
}

/// The handle workers use; cheap to clone.
#[derive(Clone)]
pub struct Prober {
    tx: mpsc::UnboundedSender<Cmd>,
}

enum Cmd {
    Add(Registration),
    Remove(String),
    Done {
        key: Key,
        gen: u64,
        began: Instant,
        outcome: Outcome,
    },
}

type Key = (String, Kind);

struct Entry {
    spec: Spec,
    target: Arc<Target>,
    counter: Counter,
    gen: u64,
    running: bool,
    pod: Arc<str>,
    container: Arc<str>,
    notify: Arc<dyn Fn(Change) + Send + Sync>,
}

impl Prober {
    /// Starts the scheduler task; it ends when every handle is dropped.
    pub fn start() -> Prober {
        let (tx, rx) = mpsc::unbounded_channel();
        let s = Scheduler {
            tx: tx.clone(),
            entries: HashMap::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            awaiting_startup: HashSet::new(),
        };
        tokio::spawn(s.run(rx));
        Prober { tx }
    }

    /// Starts probing a container run (replacing what it had).
    pub fn add(&self, r: Registration) {
        let _ = self.tx.send(Cmd::Add(r));
    }

    /// Stops probing the run `container_id` (it exited or is going).
    pub fn remove(&self, container_id: &str) {
        let _ = self.tx.send(Cmd::Remove(container_id.to_string()));
    }
}

struct Scheduler {
    tx: mpsc::UnboundedSender<Cmd>,
    entries: HashMap<Key, Entry>,
    heap: BinaryHeap<Reverse<(Instant, u64, Key)>>,
    seq: u64,
    /// Containers whose startup probe has not passed yet.
    awaiting_startup: HashSet<String>,
}

impl Scheduler {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Cmd>) {
        loop {
            let next = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let cmd = match next {
                Some(t) => tokio::select! {
                    c = rx.recv() => c,
                    _ = tokio::time::sleep_until(t.into()) => {
                        self.run_due(Instant::now());
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            match cmd {
                // Only our own clone is left: nobody can add probes any more.
                None => return,
                Some(Cmd::Add(r)) => self.add(r),
                Some(Cmd::Remove(id)) => self.remove(&id),
                Some(Cmd::Done {
                    key,
                    gen,
                    began,
                    outcome,
                }) => self.done(key, gen, began, outcome),
            }
        }
    }

    fn add(&mut self, r: Registration) {
        self.remove(&r.container_id);
        let target = Arc::new(r.target);
        let (pod, container): (Arc<str>, Arc<str>) = (r.pod.into(), r.container.into());
        if r.specs.iter().any(|s| s.kind == Kind::Startup) {
            self.awaiting_startup.insert(r.container_id.clone());
        }
        for spec in r.specs {
            let key = (r.container_id.clone(), spec.kind);
            let due = r.started + spec.initial_delay;
            self.seq += 1;
            let gen = self.seq;
            self.entries.insert(
                key.clone(),
                Entry {
                    counter: Counter::new(spec.initial()),
                    spec,
                    target: target.clone(),
                    gen,
                    running: false,
                    pod: pod.clone(),
                    container: container.clone(),
                    notify: r.notify.clone(),
                },
            );
            self.heap.push(Reverse((due, gen, key)));
        }
    }

    fn remove(&mut self, container_id: &str) {
        for kind in [Kind::Liveness, Kind::Readiness, Kind::Startup] {
            self.entries.remove(&(container_id.to_string(), kind));
        }
        self.awaiting_startup.remove(container_id);
        // Stale heap items are dropped when they come due.
    }

    fn run_due(&mut self, now: Instant) {
        while let Some(Reverse((t, gen, _))) = self.heap.peek() {
            if *t > now {
                break;
            }
            let gen = *gen;
            let Some(Reverse((_, _, key))) = self.heap.pop() else {
                break;
            };
            let waiting = key.1 != Kind::Startup && self.awaiting_startup.contains(&key.0);
            let Some(e) = self.entries.get_mut(&key).filter(|e| e.gen == gen) else {
                continue;
            };
            if waiting {
                let next = now + e.spec.period;
                self.heap.push(Reverse((next, gen, key)));
                continue;
            }
            if e.running {
                continue;
            }
            e.running = true;
            let (spec, target, tx) = (e.spec.clone(), e.target.clone(), self.tx.clone());
            tokio::spawn(async move {
                let outcome = handlers::run(&spec.handler, &target, spec.timeout).await;
                let _ = tx.send(Cmd::Done {
                    key,
                    gen,
                    began: now,
                    outcome,
                });
            });
        }
    }

    fn done(&mut self, key: Key, gen: u64, began: Instant, outcome: Outcome) {
        let Some(e) = self.entries.get_mut(&key).filter(|e| e.gen == gen) else {
            return;
        };
        e.running = false;
        let ok = outcome == Outcome::Success;
        let message = match outcome {
            Outcome::Success => None,
            Outcome::Failure(m) => {
                tracing::debug!(pod = %e.pod, container = %e.container, probe = %key.1, reason = %m, "probe failed");
                Some(m)
            }
        };
        let changed = e.counter.observe(ok, &e.spec);
        if let Some(result) = changed {
            tracing::info!(pod = %e.pod, container = %e.container, probe = %key.1, result, message = message.as_deref().unwrap_or(""), "probe result changed");
        }
        if changed.is_some() || message.is_some() {
            (e.notify)(Change {
                container_id: key.0.clone(),
                kind: key.1,
                result: changed.unwrap_or_else(|| e.counter.result()),
                changed: changed.is_some(),
                message,
            });
        }
        if key.1 == Kind::Startup && e.counter.result() {
            // Passed: startup probes run no more; the others begin.
            self.entries.remove(&key);
            self.awaiting_startup.remove(&key.0);
            return;
        }
        let next = (began + e.spec.period).max(Instant::now());
        self.heap.push(Reverse((next, gen, key)));
    }
}
