//! imagePullSecrets end to end: a private docker-registry behind htpasswd
//! on the machine's loopback, reached from the test node's namespace
//! through a unix-socket bridge (socat on both loopbacks; no packet leaves
//! them). The agent has no registry credentials of its own: a pod without
//! the secret fails to pull; with a kubernetes.io/dockerconfigjson Secret
//! in `imagePullSecrets` it runs.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use knode_tests::node::Node;
use knode_tests::registry::{base64, require_registry, Registry};
use knode_tests::TempDir;

/// Two socat processes forwarding 127.0.0.1:`port` in the node's
/// namespace to 127.0.0.1:`port` in the test's, over a unix socket.
struct Bridge {
    children: Vec<Child>,
}

impl Bridge {
    fn start(n: &Node, port: u16, dir: &TempDir) -> Result<Bridge> {
        let sock = dir.path().join("registry.sock");
        let outer = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
            .arg(format!("TCP:127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .spawn()
            .context("socat (test side)")?;
        let mut b = Bridge {
            children: vec![outer],
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            anyhow::ensure!(std::time::Instant::now() < deadline, "socat made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        let inner = Command::new("nsenter")
            .arg(format!("--net={}", n.host.path().display()))
            .arg("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!("UNIX-CONNECT:{}", sock.display()))
            .stdin(Stdio::null())
            .spawn()
            .context("socat (node side)")?;
        b.children.push(inner);
        Ok(b)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn pod(name: &str, image: &str, secret: bool) -> String {
    let secrets = if secret {
        "  imagePullSecrets: [{name: regcred}]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n{secrets}  containers:\n  - name: c\n    image: {image}\n    command: [\"sleep\", \"3600\"]\n"
    )
}

#[test]
fn image_pull_secrets_authenticate_the_pods_pull() -> Result<()> {
    let test = "image_pull_secrets_authenticate_the_pods_pull";
    if !require_registry(test) {
        return Ok(());
    }
    let reg = Registry::start_with_auth()?;
    let dir = TempDir::new("pullsecret")?;
    let tar = knode_tests::image::busybox_oci_tar(dir.path())?;
    reg.push(&tar, "private/busybox:1")?;
    let host = reg.host();
    let port: u16 = host.rsplit(':').next().unwrap_or_default().parse()?;
    let Some(n) = Node::for_test_with(test, &["--insecure-registry", &host]) else {
        return Ok(());
    };
    let _bridge = Bridge::start(&n, port, &dir)?;
    let image = format!("{host}/private/busybox:1");

    n.apply(&pod("nosecret", &image, false))?;
    let p = n.wait_pod("nosecret", Duration::from_secs(60), |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"]
            .as_str()
            .is_some_and(|r| r == "ErrImagePull" || r == "ImagePullBackOff")
    })?;
    let msg = p["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("401"), "{msg}");

    n.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: regcred}}\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
        base64(reg.docker_config_json().as_bytes())
    ))?;
    n.apply(&pod("withsecret", &image, true))?;
    n.wait_running("withsecret")?;
    Ok(())
}
