//! Agents on one etcd serve one cluster CA: the first agent makes it and
//! the cluster token, the CA goes into the store sealed with the token,
//! and an agent that joins with the token serves certificates of the same
//! CA, so one admin kubeconfig works against every agent. Without the
//! token, or with a wrong one, a joining agent stops with an error that
//! says so.

use std::time::{Duration, Instant};

use knode_tests::agent::Agent;
use knode_tests::api::{kubectl_present, Api};
use knode_tests::etcd::{require_etcd, EtcdCluster};

/// Waits for `agent` to exit with `text` in its log.
fn refused(agent: &Agent, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "no {text:?} in 30 s:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ca_data(api: &Api) -> String {
    let cfg = std::fs::read_to_string(api.kubeconfig()).unwrap();
    cfg.lines()
        .find(|l| l.contains("certificate-authority-data"))
        .unwrap()
        .to_string()
}

#[test]
fn agents_on_etcd_serve_one_ca_sealed_with_the_cluster_token() {
    if !kubectl_present() || !require_etcd("agents_on_etcd_serve_one_ca") {
        return;
    }
    let etcd = EtcdCluster::start(1).unwrap();
    let cp = etcd.control_plane();
    let global = ["--control-plane", cp.as_str()];
    let a = Api::start_agent(&global, &["--node-name", "a"]);
    let token_file = a.agent.data_dir().join("token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();
    assert_eq!(token.len(), 64, "a new token: {token:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Without the token, or with another, a second agent does not start
    // serving a CA of its own.
    let api_off = |name: &'static str, more: &[&'static str]| {
        let port = knode_tests::free_port().unwrap().to_string();
        let mut flags = vec![
            "--disable".to_string(),
            "pods".into(),
            "--node-name".into(),
            name.into(),
        ];
        flags.extend(["--api-port".to_string(), port]);
        flags.extend(more.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        // The socket may come up before the API gives up; either way the
        // log says why.
        match Agent::start_with_flags(&global, &flags) {
            Ok(agent) => wait_log(agent),
            Err(e) => format!("{e:#}"),
        }
    };
    let no_token = api_off("c", &[]);
    assert!(no_token.contains("sealed with its token"), "{no_token}");
    let wrong = api_off("d", &["--token", "not-the-token"]);
    assert!(wrong.contains("does not open with this token"), "{wrong}");

    let b = Api::start_agent(&global, &["--node-name", "b", "--token", token]);
    assert_eq!(ca_data(&a), ca_data(&b), "one CA");
    // a's admin identity, checked against b's serving certificate.
    let server = format!("https://127.0.0.1:{}", b.port);
    let out = a.ok(&["--server", &server, "get", "nodes", "-o", "name"]);
    assert!(out.contains("node/a") && out.contains("node/b"), "{out}");
    let out = b.ok(&[
        "--server",
        &format!("https://127.0.0.1:{}", a.port),
        "get",
        "ns",
    ]);
    assert!(out.contains("kube-system"), "{out}");
}

/// The log once the agent has said why it stopped.
fn wait_log(agent: Agent) -> String {
    refused(&agent, "token");
    agent.log()
}
