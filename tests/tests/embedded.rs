//! The embedded control plane, through a real `knode agent` process.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controlplane::rest::client::Client;
use controlplane::{ControlPlane, Kind, Object, Scope};
use knode_tests::agent::Agent;
use knode_tests::require_root;
use serde_json::json;

fn configmap(name: &str) -> Object {
    Object::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"n": name}}))
    .unwrap()
}

/// A stream of writes, a SIGKILL in the middle of it, a restart: every
/// write the agent acknowledged is there afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let mut agent = Agent::start().unwrap();
    let client = Arc::new(Client::new(&agent.socket()));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (client, acked) = (client.clone(), acked.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            for i in 0.. {
                let name = format!("cm-{i}");
                match client.create(configmap(&name), None).await {
                    Ok(_) => acked.lock().unwrap().push(name),
                    Err(_) => {
                        failures += 1;
                        if failures > 20 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };
    // Let a good number of writes land, then kill mid-stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < 150 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.kill9().unwrap();
    writer.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 150,
        "only {} writes before the kill",
        acked.len()
    );

    agent.restart().unwrap();
    let listed = client
        .list(&Scope::namespaced(Kind::ConfigMap, "default"))
        .await
        .unwrap();
    let have: std::collections::BTreeSet<&str> = listed.items.iter().map(Object::name).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|n| !have.contains(n.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    // Revisions continue after the restart: the next write is newer than all.
    let max = listed
        .items
        .iter()
        .map(|o| {
            o.meta()
                .resource_version
                .clone()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .max()
        .unwrap();
    let next = client
        .create(configmap("after-restart"), None)
        .await
        .unwrap();
    let next_rev: u64 = next
        .meta()
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(next_rev > max, "revision went back: {next_rev} <= {max}");
}

/// The socket is root-only: another user can neither connect nor use the CLI.
#[test]
fn a_non_root_user_cannot_use_the_socket() {
    if !require_root("a_non_root_user_cannot_use_the_socket") {
        return;
    }
    let agent = Agent::start().unwrap();
    let meta = std::fs::metadata(agent.socket()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let bin: PathBuf = knode_tests::our_bin("knode");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(agent.flags())
        .args(["get", "pods"]);
    let out = cmd.output().expect("run setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody could use the socket: {err}");
    assert!(
        err.contains("Permission denied") || err.contains("permission denied"),
        "{err}"
    );

    // Root still can.
    let out = agent.knode(&["get", "pods"]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A watcher whose agent restarts while the store changes underneath it
/// relists and delivers exactly the difference: nothing stale remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_relists_across_an_agent_restart_as_a_diff() {
    use controlplane::registry::{Allocators, Registry};
    use controlplane::storage::embedded::Embedded;
    use controlplane::watcher::{Update, Watcher};
    use controlplane::{ObjectRef, WatchEvent};

    let mut agent = Agent::start().unwrap();
    let client: Arc<dyn ControlPlane> = Arc::new(Client::new(&agent.socket()));
    for name in ["stays", "changes", "goes"] {
        client.create(configmap(name), None).await.unwrap();
    }
    let mut w = Watcher::new(
        client.clone(),
        Scope::namespaced(Kind::ConfigMap, "default"),
    );
    let mut added = Vec::new();
    loop {
        match next(&mut w).await {
            Update::Event(WatchEvent::Added(o)) => added.push(o.name().to_string()),
            Update::Synced => break,
            other => panic!("unexpected {other:?} during the first list"),
        }
    }
    added.sort();
    assert_eq!(added, ["changes", "goes", "stays"]);

    // Change the store while no agent serves it.
    agent.kill9().unwrap();
    {
        let store = Embedded::open(&agent.data_dir()).unwrap();
        let reg = Registry::new(Arc::new(store), Allocators::default());
        let mut changed = reg
            .get(&ObjectRef::new(Kind::ConfigMap, "default", "changes"))
            .await
            .unwrap();
        if let Object::ConfigMap(cm) = &mut changed {
            cm.data = Some([("n".to_string(), "new".to_string())].into());
        }
        reg.update(changed, None).await.unwrap();
        reg.delete(&ObjectRef::new(Kind::ConfigMap, "default", "goes"), None)
            .await
            .unwrap();
        reg.create(configmap("new"), None).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    agent.restart().unwrap();

    let mut events = Vec::new();
    while let Update::Event(ev) = next(&mut w).await {
        events.push((ev.type_name(), ev.object().name().to_string()));
    }
    events.sort();
    assert_eq!(
        events,
        [
            ("ADDED", "new".to_string()),
            ("DELETED", "goes".to_string()),
            ("MODIFIED", "changes".to_string()),
        ]
    );
    assert!(w.relists() >= 2, "relists: {}", w.relists());
    let names: Vec<&str> = w.store().keys().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["changes", "new", "stays"]);
}

async fn next(w: &mut controlplane::watcher::Watcher) -> controlplane::watcher::Update {
    tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("an update within 20 s")
}

fn drop_data(o: &mut Object) {
    if let Object::ConfigMap(cm) = o {
        cm.data = None;
    }
}

/// A watcher's transform applies to the first list, to watch events and
/// to what it stores (the proxy keeps only the endpoint fields of pods).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_transform_applies_to_lists_events_and_its_store() {
    use controlplane::watcher::{Update, Watcher};
    use controlplane::{ObjectRef, WatchEvent};

    let agent = Agent::start().unwrap();
    let client: Arc<dyn ControlPlane> = Arc::new(Client::new(&agent.socket()));
    client.create(configmap("listed"), None).await.unwrap();
    let mut w = Watcher::new(
        client.clone(),
        Scope::namespaced(Kind::ConfigMap, "default"),
    )
    .with_transform(drop_data);
    let has_data = |o: &Object| matches!(o, Object::ConfigMap(cm) if cm.data.is_some());
    match next(&mut w).await {
        Update::Event(WatchEvent::Added(o)) => assert!(!has_data(&o), "listed: {o:?}"),
        other => panic!("expected the listed object, got {other:?}"),
    }
    assert_eq!(next(&mut w).await, Update::Synced);
    client.create(configmap("watched"), None).await.unwrap();
    match next(&mut w).await {
        Update::Event(WatchEvent::Added(o)) => {
            assert_eq!(o.name(), "watched");
            assert!(!has_data(&o), "watched: {o:?}");
        }
        other => panic!("expected the new object, got {other:?}"),
    }
    let stored = w
        .store()
        .get(&ObjectRef::new(Kind::ConfigMap, "default", "watched"))
        .expect("stored");
    assert!(!has_data(stored));
    assert!(stored.meta().resource_version.is_some());
}

/// The workload and network kinds through the CLI as a user types it:
/// `apply -f` (created, then unchanged), `get` in kubectl's columns and
/// by short name, `get -o yaml` of one object, `delete -f`.
#[test]
fn the_cli_applies_gets_and_deletes_every_kind() {
    let agent = Agent::start().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/kinds.yaml");
    let run = |args: &[&str]| {
        let out = agent.knode(args).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "knode {args:?}: {}\n{text}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log()
        );
        text
    };
    let applied = run(&["apply", "-f", example]);
    for line in [
        "networkpolicy.networking.k8s.io/db-from-web created",
        "deployment.apps/web created",
        "statefulset.apps/db created",
        "job.batch/pi created",
        "cronjob.batch/tick created",
        "poddisruptionbudget.policy/web created",
        "endpointslice.discovery.k8s.io/web-abc12 created",
        "event/web.17b2c3d4 created",
    ] {
        assert!(applied.contains(line), "{line:?} not in:\n{applied}");
    }
    let again = run(&["apply", "-f", example]);
    assert!(
        again.lines().all(|l| l.ends_with(" unchanged")),
        "applied twice:\n{again}"
    );
    let deploy = run(&["get", "deploy"]);
    assert!(
        deploy.starts_with(
            "NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    0/3     0            0"
        ),
        "{deploy}"
    );
    assert!(run(&["get", "sts"]).starts_with("NAME   READY   AGE\ndb     0/2"));
    let jobs = run(&["get", "jobs"]);
    assert!(
        jobs.starts_with("NAME   STATUS    COMPLETIONS   DURATION   AGE\npi     Running   0/5"),
        "{jobs}"
    );
    let slices = run(&["get", "endpointslices"]);
    assert!(
        slices.contains("web-abc12   IPv4          80      10.244.1.5"),
        "{slices}"
    );
    let netpol = run(&["get", "netpol"]);
    assert!(netpol.contains("db-from-web   app=db"), "{netpol}");
    let yaml = run(&["get", "deployment.apps", "web", "-o", "yaml"]);
    for want in [
        "kind: Deployment",
        "progressDeadlineSeconds: 600",
        "maxSurge: 25%",
    ] {
        assert!(yaml.contains(want), "{want:?} not in:\n{yaml}");
    }
    // Bad input is refused naming the field, as kube-apiserver does.
    let bad = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80, endPort: 79}]}]\n";
    let out = agent.knode_stdin(&["apply", "-f", "-"], Some(bad)).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.ingress[0].ports[0].endPort: Invalid value: 79: must be greater than or equal to `port`"),
        "{err}"
    );
    let deleted = run(&["delete", "-f", example]);
    assert!(
        deleted.contains("deployment.apps \"web\" deleted"),
        "{deleted}"
    );
    let left = agent.knode(&["get", "deploy"]).unwrap();
    assert!(
        String::from_utf8_lossy(&left.stderr).contains("No resources found"),
        "{left:?}"
    );
}
