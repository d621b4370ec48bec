//! Deployments end to end on one embedded node: a real `knode agent` runs
//! the controller manager and the pods (private containerd, busybox).
//! Checked as a user sees it: pods Running, `knode scale`, `knode rollout
//! status|history|undo`, ReplicaSets scaled, and a delete that takes the
//! ReplicaSets and pods with it.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use knode_tests::node::{is_running, tail, Node};
use serde_json::Value;

const BUSYBOX: &str = knode_tests::image::BUSYBOX;
const WAIT: Duration = Duration::from_secs(180);

fn manifest(replicas: u32, version: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n{}",
        pod_template(version)
    )
}

/// The selector and template every workload here uses: app=web, busybox
/// sleeping, the version in an env var.
fn pod_template(version: &str) -> String {
    format!(
        r#"  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {BUSYBOX}
        command: ["sleep", "3600"]
        env: [{{name: VERSION, value: "{version}"}}]
"#
    )
}

fn items(n: &Node, kind: &str) -> Result<Vec<Value>> {
    let out = n.knode(&["get", kind, "-o", "json"])?;
    // Nothing at all: kubectl's "No resources found" goes to stderr.
    if out.trim().is_empty() {
        return Ok(vec![]);
    }
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["items"].as_array().cloned().unwrap_or_default())
}

/// The pods of the Deployment (label app=web).
fn web_pods(n: &Node) -> Result<Vec<Value>> {
    Ok(items(n, "pods")?
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "web")
        .collect())
}

fn version(p: &Value) -> &str {
    p["spec"]["containers"][0]["env"][0]["value"]
        .as_str()
        .unwrap_or_default()
}

/// Waits until `done` holds for the pods; fails with them and the log.
fn wait_pods(n: &Node, what: &str, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
    let deadline = Instant::now() + WAIT;
    loop {
        let pods = web_pods(n)?;
        if done(&pods) {
            return Ok(pods);
        }
        if Instant::now() > deadline {
            let brief: Vec<String> = pods
                .iter()
                .map(|p| {
                    format!(
                        "{} {} {}",
                        p["metadata"]["name"],
                        p["status"]["phase"],
                        version(p)
                    )
                })
                .collect();
            bail!(
                "{what}: not after {WAIT:?}; pods: {brief:#?}\nagent log:\n{}",
                tail(&n.agent.log(), 80)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exactly `count` pods, all Running with template `version`.
fn settled(count: usize, v: &'static str) -> impl Fn(&[Value]) -> bool {
    move |pods| pods.len() == count && pods.iter().all(|p| is_running(p) && version(p) == v)
}

fn rollout_status(n: &Node) -> Result<String> {
    n.knode(&["rollout", "status", "deployment/web", "--timeout=180s"])
}

#[test]
fn a_deployment_scales_rolls_out_rolls_back_and_is_deleted_with_its_pods() -> Result<()> {
    let Some(n) =
        Node::for_test("a_deployment_scales_rolls_out_rolls_back_and_is_deleted_with_its_pods")
    else {
        return Ok(());
    };
    n.apply(&manifest(3, "v1"))?;
    wait_pods(&n, "3 running pods", settled(3, "v1"))?;
    let out = rollout_status(&n)?;
    assert!(
        out.ends_with("deployment \"web\" successfully rolled out\n"),
        "{out}"
    );

    let out = n.knode(&["scale", "deployment/web", "--replicas=5"])?;
    assert_eq!(out, "deployment.apps/web scaled\n");
    wait_pods(&n, "scaled to 5", settled(5, "v1"))?;
    n.knode(&["scale", "deployment", "web", "--replicas=2"])?;
    wait_pods(&n, "scaled to 2", settled(2, "v1"))?;

    // A template change rolls out: new pods, the old ReplicaSet at 0.
    n.apply(&manifest(2, "v2"))?;
    let out = rollout_status(&n)?;
    assert!(out.contains("successfully rolled out"), "{out}");
    wait_pods(&n, "rolled out to v2", settled(2, "v2"))?;
    let rss = items(&n, "replicasets")?;
    assert_eq!(rss.len(), 2, "{rss:#?}");
    let by_rev = |r: &str| {
        rss.iter()
            .find(|rs| rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == r)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(by_rev("1")["spec"]["replicas"], 0, "{rss:#?}");
    assert_eq!(by_rev("2")["spec"]["replicas"], 2, "{rss:#?}");
    let hash = by_rev("2")["metadata"]["labels"]["pod-template-hash"].clone();
    assert_eq!(
        by_rev("2")["metadata"]["name"],
        format!("web-{}", hash.as_str().unwrap_or("?"))
    );
    let history = n.knode(&["rollout", "history", "deployment/web"])?;
    assert!(
        history.contains("REVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n"),
        "{history}"
    );

    // Undo: back to v1's template, which becomes revision 3.
    let out = n.knode(&["rollout", "undo", "deployment/web"])?;
    assert_eq!(out, "deployment.apps/web rolled back\n");
    rollout_status(&n)?;
    wait_pods(&n, "rolled back to v1", settled(2, "v1"))?;
    let d: Value = serde_json::from_str(&n.knode(&["get", "deployment", "web", "-o", "json"])?)?;
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "v1"
    );
    let history = n.knode(&["rollout", "history", "deployment/web"])?;
    assert!(
        history.contains("\n2         <none>\n3         <none>\n"),
        "{history}"
    );
    let conds = d["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable"),
        "{conds:#?}"
    );
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Available" && c["status"] == "True"),
        "{conds:#?}"
    );

    // Deleting the Deployment takes its ReplicaSets and pods.
    n.knode(&["delete", "deployment", "web"])?;
    wait_pods(&n, "pods gone", |p| p.is_empty())?;
    let deadline = Instant::now() + WAIT;
    while !items(&n, "replicasets")?.is_empty() {
        assert!(Instant::now() < deadline, "ReplicaSets left behind");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn names(pods: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// `rollout restart` replaces every pod through a new revision; a delete
/// with `--cascade=orphan` leaves the ReplicaSet and its pods running,
/// without an owner.
#[test]
fn a_restart_replaces_the_pods_and_an_orphaning_delete_keeps_them() -> Result<()> {
    let Some(n) = Node::for_test("a_restart_replaces_the_pods_and_an_orphaning_delete_keeps_them")
    else {
        return Ok(());
    };
    n.apply(&manifest(2, "v1"))?;
    let before = names(&wait_pods(&n, "2 running pods", settled(2, "v1"))?);
    assert_eq!(
        n.knode(&["rollout", "restart", "deployment/web"])?,
        "deployment.apps/web restarted\n"
    );
    rollout_status(&n)?;
    let after = wait_pods(&n, "2 new pods", |p| {
        settled(2, "v1")(p) && names(p).iter().all(|name| !before.contains(name))
    })?;
    assert!(after
        .iter()
        .all(|p| p["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"].is_string()));

    n.knode(&["delete", "deployment", "web", "--cascade=orphan"])?;
    let kept = names(&after);
    // The ReplicaSets lose their owner and stay; so do the running pods.
    let deadline = Instant::now() + WAIT;
    loop {
        let rss = items(&n, "replicasets")?;
        if !rss.is_empty()
            && rss.iter().all(|rs| {
                rs["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(|r| r.is_empty())
            })
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ReplicaSets not orphaned: {rss:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give the collector every chance to act wrongly: the pods' ReplicaSet
    // is synced again by a scale, and the pods are still the same.
    let rs_name = items(&n, "replicasets")?
        .iter()
        .find(|rs| rs["spec"]["replicas"] == 2)
        .and_then(|rs| rs["metadata"]["name"].as_str().map(str::to_string))
        .unwrap_or_default();
    n.knode(&["scale", &format!("replicaset/{rs_name}"), "--replicas=3"])?;
    let now = wait_pods(&n, "3 pods of the orphaned ReplicaSet", settled(3, "v1"))?;
    assert!(
        kept.iter().all(|k| names(&now).contains(k)),
        "{kept:?} vs {:?}",
        names(&now)
    );
    Ok(())
}

fn stateful_manifest(replicas: u32, version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  clusterIP: None\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: web}}\nspec:\n  serviceName: web\n  replicas: {replicas}\n{}",
        pod_template(version)
    )
}

fn created_at(p: &Value) -> String {
    p["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn ready_at(p: &Value) -> String {
    p["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready" && c["status"] == "True")
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn by_name<'a>(pods: &'a [Value], name: &str) -> &'a Value {
    pods.iter()
        .find(|p| p["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no pod {name} in {pods:#?}"))
}

#[test]
fn a_statefulset_starts_pods_in_order_with_stable_names_rolls_from_the_top_and_scales_down(
) -> Result<()> {
    let Some(n) = Node::for_test("a_statefulset_starts_pods_in_order") else {
        return Ok(());
    };
    n.apply(&stateful_manifest(2, "v1"))?;
    let pods = wait_pods(&n, "2 running pods", settled(2, "v1"))?;
    let mut got = names(&pods);
    got.sort();
    assert_eq!(got, ["web-0", "web-1"]);
    // OrderedReady: web-1 was made only once web-0 was ready.
    let (p0, p1) = (by_name(&pods, "web-0"), by_name(&pods, "web-1"));
    assert!(
        created_at(p1) >= ready_at(p0) && !ready_at(p0).is_empty(),
        "web-1 created {} before web-0 was ready {}",
        created_at(p1),
        ready_at(p0)
    );
    let host = n.knode(&["exec", "web-1", "--", "hostname"])?;
    assert_eq!(host, "web-1\n");
    assert_eq!(p1["spec"]["subdomain"], "web");

    // A new template rolls from the highest ordinal down.
    n.apply(&stateful_manifest(2, "v2"))?;
    let pods = wait_pods(&n, "2 pods at v2", settled(2, "v2"))?;
    let (p0, p1) = (by_name(&pods, "web-0"), by_name(&pods, "web-1"));
    assert!(
        created_at(p1) <= created_at(p0),
        "web-1 ({}) should be replaced before web-0 ({})",
        created_at(p1),
        created_at(p0)
    );
    let set: Value =
        serde_json::from_str(&n.knode(&["get", "statefulset", "web", "-o", "json"])?)?;
    let deadline = Instant::now() + WAIT;
    let mut set = set;
    while set["status"]["currentRevision"] != set["status"]["updateRevision"]
        || set["status"]["readyReplicas"] != 2
    {
        assert!(
            Instant::now() < deadline,
            "status never settled: {:#}",
            set["status"]
        );
        std::thread::sleep(Duration::from_millis(200));
        set = serde_json::from_str(&n.knode(&["get", "statefulset", "web", "-o", "json"])?)?;
    }
    assert_eq!(set["status"]["updatedReplicas"], 2);

    // Scale down removes the highest ordinal.
    n.knode(&["scale", "statefulset/web", "--replicas=1"])?;
    let pods = wait_pods(&n, "scaled to 1", settled(1, "v2"))?;
    assert_eq!(names(&pods), ["web-0"]);
    // Deleting the set takes its pods.
    n.knode(&["delete", "statefulset", "web"])?;
    wait_pods(&n, "pods collected", |p| p.is_empty())?;
    Ok(())
}

#[test]
fn a_daemonset_runs_one_pod_on_the_node_rolls_it_and_is_deleted_with_it() -> Result<()> {
    let Some(n) = Node::for_test("a_daemonset_runs_one_pod_on_the_node") else {
        return Ok(());
    };
    let ds = |v: &str| {
        format!(
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: web}}\nspec:\n{}",
            pod_template(v)
        )
    };
    n.apply(&ds("v1"))?;
    let pods = wait_pods(&n, "one pod on the node", settled(1, "v1"))?;
    assert_eq!(pods[0]["spec"]["nodeName"], "test-node");
    n.apply(&ds("v2"))?;
    wait_pods(&n, "the pod at v2", settled(1, "v2"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        let d: Value =
            serde_json::from_str(&n.knode(&["get", "daemonset", "web", "-o", "json"])?)?;
        let s = &d["status"];
        if s["desiredNumberScheduled"] == 1
            && s["numberReady"] == 1
            && s["updatedNumberScheduled"] == 1
        {
            break;
        }
        assert!(Instant::now() < deadline, "status: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    n.knode(&["delete", "daemonset", "web"])?;
    wait_pods(&n, "pods collected", |p| p.is_empty())?;
    Ok(())
}

fn job_manifest(name: &str, command: &str, extra: &str) -> String {
    job_manifest_of(name, command, 2, extra)
}

fn job_manifest_of(name: &str, command: &str, completions: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: {name}}}
spec:
  completions: {completions}
  backoffLimit: 1
{extra}  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: {BUSYBOX}
        command: ["sh", "-c", "{command}"]
"#
    )
}

/// Waits for the Job's condition `kind` (Complete or Failed); its status.
fn wait_job(n: &Node, name: &str, kind: &str) -> Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let j: Value = serde_json::from_str(&n.knode(&["get", "job", name, "-o", "json"])?)?;
        let done = j["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == kind && c["status"] == "True");
        if done {
            return Ok(j["status"].clone());
        }
        if Instant::now() > deadline {
            bail!(
                "job {name} not {kind}: {:#}\n{}",
                j["status"],
                tail(&n.agent.log(), 60)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn jobs_complete_fail_by_their_backoff_limit_and_go_after_their_ttl() -> Result<()> {
    let Some(n) = Node::for_test("jobs_complete_fail_by_their_backoff_limit") else {
        return Ok(());
    };
    // The issue's check: completions 5, parallelism 2: 5 succeeded pods,
    // and no more were made.
    n.apply(&job_manifest_of("ok", "sleep 1", 5, "  parallelism: 2\n"))?;
    let s = wait_job(&n, "ok", "Complete")?;
    assert_eq!(s["succeeded"], 5, "{s:#}");
    assert!(s["completionTime"].is_string(), "{s:#}");
    let ok_pods: Vec<Value> = web_pods(&n)?
        .into_iter()
        .filter(|p| {
            p["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("ok-"))
        })
        .collect();
    assert_eq!(ok_pods.len(), 5, "{ok_pods:#?}");
    assert!(
        ok_pods.iter().all(|p| p["status"]["phase"] == "Succeeded"),
        "{ok_pods:#?}"
    );
    n.apply(&job_manifest("bad", "exit 3", ""))?;
    let s = wait_job(&n, "bad", "Failed")?;
    let failed = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Failed")
        .unwrap()
        .clone();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{s:#}");
    assert_eq!(s["failed"], 2, "{s:#}");
    // A finished Job with ttlSecondsAfterFinished goes, and its pods with it.
    n.apply(&job_manifest(
        "brief",
        "true",
        "  ttlSecondsAfterFinished: 1\n",
    ))?;
    let deadline = Instant::now() + WAIT;
    while n
        .knode(&["get", "job", "brief", "-o", "name"])
        .is_ok_and(|o| !o.trim().is_empty())
    {
        assert!(Instant::now() < deadline, "job brief never went");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_pods(&n, "the brief job's pods collected", |pods| {
        pods.iter().all(|p| {
            !p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("brief-")
        })
    })?;
    Ok(())
}

#[test]
fn a_cron_job_every_minute_runs_its_job_to_completion() -> Result<()> {
    let Some(n) = Node::for_test("a_cron_job_every_minute_runs") else {
        return Ok(());
    };
    n.apply(&format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {{name: tick}}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          containers:
          - name: app
            image: {BUSYBOX}
            command: ["true"]
"#
    ))?;
    // Within a minute (plus the run) a Job named after its minute
    // completes, and the CronJob records the time and the success.
    let deadline = Instant::now() + Duration::from_secs(60) + WAIT;
    let cj = loop {
        let cj: Value = serde_json::from_str(&n.knode(&["get", "cronjob", "tick", "-o", "json"])?)?;
        if cj["status"]["lastSuccessfulTime"].is_string() {
            break cj;
        }
        if Instant::now() > deadline {
            bail!("no successful run: {cj:#}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(cj["status"]["lastScheduleTime"].is_string(), "{cj:#}");
    let jobs: Value = serde_json::from_str(&n.knode(&["get", "jobs", "-o", "json"])?)?;
    let done = jobs["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| {
            let name = j["metadata"]["name"].as_str().unwrap_or_default();
            // tick-<minutes since the epoch>
            name.strip_prefix("tick-")
                .is_some_and(|m| m.parse::<u64>().is_ok())
                && j["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
        })
        .cloned()
        .unwrap_or(Value::Null);
    let s = &done["status"];
    assert_eq!(s["succeeded"], 1, "{s:#}");
    Ok(())
}
