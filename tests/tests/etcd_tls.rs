//! `etcds://`: the etcd backend over TLS with client certificates, against
//! a real etcd that requires them. Certificates are made by `openssl` for
//! 127.0.0.1 in a temp dir.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use controlplane::backend::{self, Backend};
use controlplane::registry::Allocators;
use controlplane::storage::etcd::TlsFiles;
use controlplane::{Kind, ObjectRef};
use knode_tests::etcd::require_etcd;
use knode_tests::{free_port, TempDir};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=knode-test-ca",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN=knode-test-{who}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &format!("{who}.pem"),
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

struct Etcd(Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_with_client_certificates() {
    if !require_etcd("etcds_with_client_certificates") {
        return;
    }
    let dir = TempDir::new("etcd-tls").unwrap();
    let d = dir.path();
    make_certs(d);
    let (client_port, peer_port) = (free_port().unwrap(), free_port().unwrap());
    let client_url = format!("https://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let log = std::fs::File::create(d.join("etcd.log")).unwrap();
    let p = |f: &str| d.join(f).display().to_string();
    let child = Command::new("etcd")
        .args(["--name", "tls", "--data-dir", &p("data")])
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("tls={peer_url}")])
        .args([
            "--cert-file",
            &p("server.pem"),
            "--key-file",
            &p("server.key"),
        ])
        .args(["--trusted-ca-file", &p("ca.pem"), "--client-cert-auth"])
        .env_clear()
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start etcd");
    let _etcd = Etcd(child);

    let backend: Backend = format!("etcds://127.0.0.1:{client_port}").parse().unwrap();
    let tls = TlsFiles {
        ca: Some(d.join("ca.pem")),
        cert: Some(d.join("client.pem")),
        key: Some(d.join("client.key")),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let cp = loop {
        match backend::open(
            &backend.clone().with_tls(tls.clone()),
            Path::new(""),
            Allocators::default(),
        )
        .await
        {
            Ok(cp) => break cp,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "no TLS connection in 20 s: {e}\n{}",
                std::fs::read_to_string(d.join("etcd.log")).unwrap_or_default()
            ),
        }
    };
    // The registry bootstrapped the default namespace through TLS.
    use controlplane::ControlPlane;
    let ns = cp
        .get(&ObjectRef::new(Kind::Namespace, "", "default"))
        .await
        .unwrap();
    assert_eq!(ns.name(), "default");

    // Without the client certificate etcd refuses us.
    let no_cert = TlsFiles {
        ca: Some(d.join("ca.pem")),
        cert: None,
        key: None,
    };
    let e = backend::open(
        &backend.clone().with_tls(no_cert),
        Path::new(""),
        Allocators::default(),
    )
    .await
    .err()
    .expect("etcd requires a client certificate");
    assert!(e.to_string().contains("etcd"), "{e}");

    // Half a key pair is a configuration error that names the keys.
    let half = TlsFiles {
        ca: None,
        cert: Some(d.join("client.pem")),
        key: None,
    };
    let e = backend::open(
        &backend.with_tls(half),
        Path::new(""),
        Allocators::default(),
    )
    .await
    .err()
    .expect("half a key pair is refused");
    assert!(e.to_string().contains("etcd-keyfile"), "{e}");
}
