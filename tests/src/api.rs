//! An agent serving the Kubernetes API over HTTPS on a free loopback
//! port, and the real clients that talk to it (kubectl; the Python client
//! in `target/python`, made by scripts/python-client.sh).

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::agent::Agent;

pub fn kubectl_present() -> bool {
    let ok = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "kubectl is missing (scripts/bootstrap.sh installs it)"
        );
        eprintln!("skipped: no kubectl on this machine");
    }
    ok
}

pub struct Api {
    pub agent: Agent,
    pub port: u16,
}

/// An agent with pods disabled and the API on a free port.
impl Api {
    pub fn start() -> Api {
        Api::start_with(&[])
    }

    /// [`Api::start`] with extra global flags (`--log-dir`, ...).
    pub fn start_with(extra: &[&str]) -> Api {
        Api::start_agent(extra, &[])
    }

    /// [`Api::start`] with extra global and agent flags.
    pub fn start_agent(extra: &[&str], agent_flags: &[&str]) -> Api {
        let port = crate::free_port().unwrap();
        let mut flags = vec!["--disable", "pods", "--api-port"];
        let port_s = port.to_string();
        flags.push(&port_s);
        flags.extend_from_slice(agent_flags);
        let agent = Agent::start_with_flags(extra, &flags).unwrap();
        // The socket answers before the API has written its kubeconfig.
        let api = Api { agent, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !api.kubeconfig().exists()
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no API in 20s:\n{}",
                api.agent.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        api
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.agent.dir().join("kubeconfig.yaml")
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args)
            .output()
            .unwrap()
    }

    /// Creates pod `web` on this node (`test-node`) and pod `far` on
    /// `other-node`, each with containers `app` and `side` (busybox);
    /// returns web's uid.
    pub fn web_and_far_pods(&self) -> String {
        let pod = |name: &str, node: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  containers:\n  - {{name: app, image: busybox}}\n  - {{name: side, image: busybox}}\n"
            )
        };
        let file = self.agent.dir().join("pods.yaml");
        std::fs::write(
            &file,
            format!(
                "{}---\n{}",
                pod("web", "test-node"),
                pod("far", "other-node")
            ),
        )
        .unwrap();
        self.ok(&["apply", "-f", file.to_str().unwrap()]);
        self.ok(&["get", "pod", "web", "-o", "jsonpath={.metadata.uid}"])
    }

    /// stdout of a kubectl that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args);
        assert!(
            o.status.success(),
            "kubectl {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.agent.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// Polls `f` until it answers (20 s at most).
pub fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The Python of the virtualenv scripts/python-client.sh made, if it is
/// there with the `kubernetes` client (in CI it must be).
pub fn python() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/python/bin/python");
    let ok = p.exists()
        && Command::new(&p)
            .args(["-c", "import kubernetes"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "no Python client in target/python (scripts/python-client.sh makes it)"
        );
        eprintln!("skipped: no Python client (run scripts/python-client.sh)");
    }
    ok.then_some(p)
}
