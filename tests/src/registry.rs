//! A private Docker registry per test: Debian's `docker-registry`
//! (distribution 2.8) on a 127.0.0.1 port, its storage in a temp dir,
//! optionally behind htpasswd (Basic) auth, killed on drop (also when the
//! test fails). Images are pushed to it with skopeo from OCI layout tars.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, TempDir};

/// The registry server (Debian package `docker-registry`).
pub const REGISTRY: &str = "/usr/bin/docker-registry";
/// Copies images between archives and registries (Debian package `skopeo`).
pub const SKOPEO: &str = "/usr/bin/skopeo";

/// The user of a registry started with [`Registry::start_with_auth`].
pub const USER: &str = "knode";
/// Its password.
pub const PASSWORD: &str = "knode-secret";
/// bcrypt of [`PASSWORD`] (the only hash distribution's htpasswd accepts),
/// made once with `perl -e 'print crypt("knode-secret", q($2b$05$abcdefghijklmnopqrstuu))'`.
const PASSWORD_BCRYPT: &str = "$2b$05$abcdefghijklmnopqrstuu5J.6AT1Bi834SMEbYfDVorhcYT6oqS2";

const START_TIMEOUT: Duration = Duration::from_secs(20);
const PORT_RETRIES: usize = 3;

/// True when the test may run. Without the registry or skopeo it skips
/// with a reason, except under `CI=true`, where a skip is a failure.
pub fn require_registry(test: &str) -> bool {
    if Path::new(REGISTRY).is_file() && Path::new(SKOPEO).is_file() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {REGISTRY} and {SKOPEO} (Debian docker-registry, skopeo), and CI=true forbids skipping");
    }
    eprintln!(
        "SKIP {test}: needs {REGISTRY} and {SKOPEO} (apt-get install docker-registry skopeo)"
    );
    false
}

/// One running registry.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    auth: bool,
    // Dropped last: the registry is dead before its storage goes.
    dir: TempDir,
}

impl Registry {
    /// A registry anyone may push to and pull from.
    pub fn start() -> Result<Registry> {
        Self::start_inner(false)
    }

    /// A registry that wants [`USER`] / [`PASSWORD`] (HTTP Basic) for
    /// everything.
    pub fn start_with_auth() -> Result<Registry> {
        Self::start_inner(true)
    }

    fn start_inner(auth: bool) -> Result<Registry> {
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let dir = TempDir::new("registry")?;
            let port = free_port()?;
            let child = Self::spawn(&dir, port, auth)?;
            let mut r = Registry {
                child: Some(child),
                port,
                auth,
                dir,
            };
            match r.wait_ready() {
                Ok(()) => return Ok(r),
                // The picked port was taken meanwhile: another one.
                Err(e) if r.log().contains("address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port for the registry")))
    }

    fn spawn(dir: &TempDir, port: u16, auth: bool) -> Result<Child> {
        let d = dir.path();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            data = d.join("data").display(),
        );
        if auth {
            std::fs::write(d.join("htpasswd"), format!("{USER}:{PASSWORD_BCRYPT}\n"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: knode-test\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        std::fs::write(d.join("config.yml"), config)?;
        let log = std::fs::File::create(d.join("registry.log"))?;
        Command::new(REGISTRY)
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start docker-registry")
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    bail!("docker-registry exited with {status}:\n{}", self.log());
                }
            }
            if let Some(code) = self.status_of("/v2/") {
                if code == 200 || code == 401 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "docker-registry did not answer in {START_TIMEOUT:?}:\n{}",
            self.log()
        )
    }

    /// The HTTP status of a plain GET of `path`, if the registry answers.
    fn status_of(&self, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        line.split(' ').nth(1)?.parse().ok()
    }

    /// `127.0.0.1:PORT`, as image references and `--insecure-registry` name it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// A docker-config file with this registry's credentials, for
    /// `--registry-config`.
    pub fn docker_config(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("registries.json");
        std::fs::write(&path, self.docker_config_json())?;
        Ok(path)
    }

    /// The docker-config JSON with this registry's credentials (also the
    /// `.dockerconfigjson` of a pull Secret).
    pub fn docker_config_json(&self) -> String {
        let auth = base64(format!("{USER}:{PASSWORD}").as_bytes());
        serde_json::json!({ "auths": { self.host(): { "auth": auth } } }).to_string()
    }

    /// Pushes the OCI layout tar `archive` as `repo:tag` (e.g.
    /// `test/busybox:1`) with skopeo; an index is pushed whole.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> Result<()> {
        let mut cmd = Command::new(SKOPEO);
        cmd.args([
            "--insecure-policy",
            "copy",
            "--all",
            "--dest-tls-verify=false",
        ]);
        if self.auth {
            cmd.arg("--dest-creds").arg(format!("{USER}:{PASSWORD}"));
        }
        cmd.arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{repo_tag}", self.host()))
            // skopeo unpacks the archive here and keeps no auth of the user's.
            .env("TMPDIR", self.dir.path())
            .env(
                "REGISTRY_AUTH_FILE",
                self.dir.path().join("skopeo-auth.json"),
            );
        let out = cmd.output().context("run skopeo")?;
        if !out.status.success() {
            bail!(
                "skopeo copy to {}/{repo_tag}: {}\nregistry log:\n{}",
                self.host(),
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log()
            );
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Standard base64 with padding (docker-config `auth` values).
/// Standard base64 with padding (RFC 4648).
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"user:pa:ss"), "dXNlcjpwYTpzcw==");
    }
}
