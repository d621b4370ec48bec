//! Images end to end: `knode image import|pull|ls` against a private
//! containerd, with busybox images built from the machine's busybox-static
//! and a private docker-registry on loopback. What a user would check:
//! `ctr` sees the image, its layers are unpacked into overlayfs snapshots,
//! `ctr run` starts a container from it, and containerd's GC keeps what an
//! image uses and frees it when the image goes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use knode_tests::containerd::{require_containerd, Containerd};
use knode_tests::image::{
    foreign_arch, goarch, require_busybox, sha256, write_oci_index, TestImage, BUSYBOX,
};
use knode_tests::registry::{require_registry, Registry};
use knode_tests::{our_bin, require_root, unique, TempDir};

/// A private containerd, one namespace in it, and a scratch dir.
struct Env {
    containerd: Containerd,
    ns: String,
    dir: TempDir,
}

impl Env {
    fn start(test: &str) -> Option<Env> {
        if !require_root(test) || !require_containerd(test) || !require_busybox(test) {
            return None;
        }
        let dir = TempDir::new("image").expect("temp dir");
        std::fs::write(dir.path().join("config.yaml"), "").expect("empty config");
        Some(Env {
            containerd: Containerd::start().expect("start containerd"),
            ns: unique("img"),
            dir,
        })
    }

    /// `knode [global flags] ARGS`, isolated from the machine's config:
    /// an empty config file and no registry credentials unless given.
    fn knode(&self, global: &[&str], args: &[&str]) -> Output {
        let mut cmd = Command::new(our_bin("knode"));
        cmd.arg("--config")
            .arg(self.dir.path().join("config.yaml"))
            .arg("--containerd-socket")
            .arg(self.containerd.socket())
            .args(["--containerd-namespace", &self.ns]);
        if !global.contains(&"--registry-config") {
            cmd.arg("--registry-config")
                .arg(self.dir.path().join("no-registries.json"));
        }
        cmd.args(global).args(args).output().expect("run knode")
    }

    /// `knode ...` that must succeed; its stdout.
    fn knode_ok(&self, global: &[&str], args: &[&str]) -> String {
        let out = self.knode(global, args);
        assert!(
            out.status.success(),
            "knode {} {}: {}",
            global.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `knode ...` that must fail; its stderr.
    fn knode_err(&self, global: &[&str], args: &[&str]) -> String {
        let out = self.knode(global, args);
        assert!(
            !out.status.success(),
            "knode {} {} succeeded: {}",
            global.join(" "),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn ctr(&self, args: &[&str]) -> String {
        self.containerd.ctr_out(&self.ns, args).expect("ctr")
    }

    fn images(&self) -> Vec<String> {
        self.containerd
            .ids(&self.ns, &["images", "ls", "-q"])
            .expect("ctr images ls")
    }

    fn has_snapshot(&self, key: &str) -> bool {
        self.ctr(&["snapshots", "--snapshotter", "overlayfs", "ls"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(key))
    }

    /// `ctr run --rm IMAGE ID ARGS...`: the container's output.
    /// Runs `args` in a container of `image`; its stdout. The command's
    /// output goes to a file in a bind-mounted directory, not through
    /// `ctr run`'s stdio, which can come back empty for a command that
    /// exits at once on a loaded machine.
    fn run(&self, image: &str, args: &[&str]) -> Result<String> {
        let id = unique("run");
        let out = self.dir.path().join(&id);
        std::fs::create_dir_all(&out)?;
        let mount = format!(
            "type=bind,src={},dst=/knode-out,options=rbind:rw",
            out.display()
        );
        let mut a = vec![
            "run",
            "--rm",
            "--snapshotter",
            "overlayfs",
            "--mount",
            &mount,
            image,
            &id,
            "/bin/sh",
            "-c",
            "\"$@\" > /knode-out/stdout",
            "sh",
        ];
        a.extend_from_slice(args);
        self.containerd.ctr_out(&self.ns, &a)?;
        std::fs::read_to_string(out.join("stdout"))
            .with_context(|| format!("{image}: {args:?} wrote no output"))
    }

    /// The `ctr content ls` line of `digest`.
    fn content_line(&self, digest: &str) -> Option<String> {
        self.ctr(&["content", "ls"])
            .lines()
            .find(|l| l.starts_with(digest))
            .map(str::to_string)
    }

    fn write(&self, name: &str, f: impl FnOnce(&Path) -> Result<()>) -> PathBuf {
        let p = self.dir.path().join(name);
        f(&p).expect("write archive");
        p
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out waiting for {what}")
}

#[test]
fn an_oci_layout_is_imported_unpacked_and_runs() -> Result<()> {
    let Some(env) = Env::start("an_oci_layout_is_imported_unpacked_and_runs") else {
        return Ok(());
    };
    let img = TestImage::busybox(BUSYBOX)?;
    let tar = env.write("busybox-oci.tar", |p| img.write_oci(p));

    let out = env.knode_ok(&[], &["image", "import", &tar.display().to_string()]);
    assert!(
        out.contains(&format!("imported {BUSYBOX} ({})", img.manifest_digest())),
        "{out}"
    );
    assert!(
        env.images().contains(&BUSYBOX.to_string()),
        "{:?}",
        env.images()
    );
    assert!(
        env.has_snapshot(&img.chain_id()),
        "no snapshot {}",
        img.chain_id()
    );
    assert_eq!(env.run(BUSYBOX, &["/bin/echo", "hi"])?.trim(), "hi");
    assert_eq!(env.run(BUSYBOX, &["id", "-u"])?.trim(), "0");

    // containerd's GC labels, as containerd itself would set them.
    let manifest = env
        .content_line(&img.manifest_digest())
        .expect("manifest stored");
    assert!(
        manifest.contains(&format!(
            "containerd.io/gc.ref.content.config={}",
            sha256(&img.config)
        )) && manifest.contains(&format!(
            "containerd.io/gc.ref.content.l.0={}",
            img.chain_id()
        )),
        "{manifest}"
    );
    let config = env
        .content_line(&sha256(&img.config))
        .expect("config stored");
    assert!(
        config.contains(&format!(
            "containerd.io/gc.ref.snapshot.overlayfs={}",
            img.chain_id()
        )),
        "{config}"
    );
    let layer = env.content_line(&img.chain_id()).expect("layer stored");
    assert!(
        layer.contains(&format!("containerd.io/uncompressed={}", img.chain_id())),
        "{layer}"
    );
    // The lease that protected the import is gone.
    assert_eq!(env.ctr(&["leases", "ls", "-q"]).trim(), "");

    // Again: nothing to do, same answer.
    let again = env.knode_ok(&[], &["image", "import", &tar.display().to_string()]);
    assert_eq!(again, out);

    let ls = env.knode_ok(&[], &["image", "ls"]);
    let short = &img.manifest_digest()[7..19];
    assert!(
        ls.starts_with("NAME")
            && ls
                .lines()
                .any(|l| l.starts_with(BUSYBOX) && l.contains(short)),
        "{ls}"
    );

    // Not an image archive: a clear error, nothing created.
    let junk = env.write("junk.tar", |p| Ok(std::fs::write(p, b"not a tar at all")?));
    let e = env.knode_err(&[], &["image", "import", &junk.display().to_string()]);
    assert!(e.contains("junk.tar"), "{e}");
    Ok(())
}

#[test]
fn a_docker_archive_imports_and_gc_keeps_what_images_use() -> Result<()> {
    let Some(env) = Env::start("a_docker_archive_imports_and_gc_keeps_what_images_use") else {
        return Ok(());
    };
    let oci = TestImage::busybox(BUSYBOX)?;
    // `knode.test` has a dot: it is the registry, not a docker.io user.
    let docker_name = "knode.test/busybox-docker:2";
    let docker = TestImage::busybox(docker_name)?;
    let oci_tar = env.write("oci.tar", |p| oci.write_oci(p));
    let docker_tar = env.write("docker.tar", |p| docker.write_docker(p));

    let out = env.knode_ok(&[], &["image", "import", &docker_tar.display().to_string()]);
    assert!(
        out.contains(&format!("imported {docker_name} (sha256:")),
        "{out}"
    );
    assert_eq!(
        env.run(docker_name, &["/bin/echo", "from docker"])?.trim(),
        "from docker"
    );
    let layer = env.content_line(&docker.chain_id()).expect("layer stored");
    assert!(layer.contains("containerd.io/uncompressed="), "{layer}");

    // Both images share the one layer and its snapshot.
    env.knode_ok(&[], &["image", "import", &oci_tar.display().to_string()]);
    let chain = oci.chain_id();
    assert_eq!(chain, docker.chain_id());
    assert!(env.has_snapshot(&chain));

    // Removing one image runs GC; the other keeps layer and snapshot.
    let removed = env.knode_ok(&[], &["image", "rm", docker_name]);
    assert!(removed.contains(docker_name), "{removed}");
    assert!(env.has_snapshot(&chain), "GC took a snapshot an image uses");
    assert!(
        env.content_line(&chain).is_some(),
        "GC took a layer an image uses"
    );
    assert_eq!(env.run(BUSYBOX, &["/bin/echo", "still"])?.trim(), "still");

    // Removing the last one frees everything: nothing was left leased.
    env.knode_ok(&[], &["image", "rm", BUSYBOX]);
    wait_until("GC to free the layer and its snapshot", || {
        !env.has_snapshot(&chain) && env.content_line(&chain).is_none()
    })?;
    let e = env.knode_err(&[], &["image", "rm", BUSYBOX]);
    assert!(e.contains("not found"), "{e}");
    Ok(())
}

#[test]
fn a_pull_from_a_loopback_registry_is_unpacked_and_runs() -> Result<()> {
    let test = "a_pull_from_a_loopback_registry_is_unpacked_and_runs";
    if !require_registry(test) {
        return Ok(());
    }
    let Some(env) = Env::start(test) else {
        return Ok(());
    };
    let reg = Registry::start()?;
    let img = TestImage::busybox(BUSYBOX)?;
    let tar = env.write("oci.tar", |p| img.write_oci(p));
    reg.push(&tar, "test/busybox:1")?;
    let host = reg.host();
    let reference = format!("{host}/test/busybox:1");

    // Not listed as insecure: https only, and the error says so.
    let e = env.knode_err(&[], &["image", "pull", &reference]);
    assert!(e.contains("TLS") && e.contains("https"), "{e}");
    assert!(env.images().is_empty());

    let insecure = ["--insecure-registry", host.as_str()];
    let out = env.knode_ok(&insecure, &["image", "pull", &reference]);
    assert!(
        out.contains(&format!("pulled {reference} (sha256:")),
        "{out}"
    );
    assert!(env.images().contains(&reference), "{:?}", env.images());
    assert!(env.has_snapshot(&img.chain_id()));
    assert_eq!(
        env.run(&reference, &["/bin/echo", "pulled"])?.trim(),
        "pulled"
    );
    assert_eq!(env.ctr(&["leases", "ls", "-q"]).trim(), "");

    // Again: the content is there; only the manifest is fetched.
    env.knode_ok(&insecure, &["image", "pull", &reference]);

    // Wrong names say what the registry said.
    let e = env.knode_err(
        &insecure,
        &["image", "pull", &format!("{host}/test/busybox:2")],
    );
    assert!(e.contains("manifest unknown (404)"), "{e}");
    let e = env.knode_err(
        &insecure,
        &["image", "pull", &format!("{host}/test/nope:1")],
    );
    assert!(e.contains("(404)") && e.contains("unknown"), "{e}");
    let e = env.knode_err(&insecure, &["image", "pull", "Bad/Name"]);
    assert!(e.contains("lowercase"), "{e}");
    Ok(())
}

#[test]
fn a_pull_uses_the_credentials_of_the_registry_config() -> Result<()> {
    let test = "a_pull_uses_the_credentials_of_the_registry_config";
    if !require_registry(test) {
        return Ok(());
    }
    let Some(env) = Env::start(test) else {
        return Ok(());
    };
    let reg = Registry::start_with_auth()?;
    let img = TestImage::busybox(BUSYBOX)?;
    let tar = env.write("oci.tar", |p| img.write_oci(p));
    reg.push(&tar, "private/busybox:1")?;
    let host = reg.host();
    let reference = format!("{host}/private/busybox:1");
    let insecure = ["--insecure-registry", host.as_str()];

    let e = env.knode_err(&insecure, &["image", "pull", &reference]);
    assert!(e.contains("401") && e.contains("no credentials"), "{e}");

    let wrong = env.dir.path().join("wrong.json");
    std::fs::write(
        &wrong,
        format!(r#"{{"auths": {{"{host}": {{"username": "knode", "password": "nope"}}}}}}"#),
    )?;
    let wrong = wrong.display().to_string();
    let e = env.knode_err(
        &[&insecure[..], &["--registry-config", &wrong]].concat(),
        &["image", "pull", &reference],
    );
    assert!(e.contains("401") && e.contains("refused"), "{e}");

    let good = reg.docker_config(env.dir.path())?.display().to_string();
    env.knode_ok(
        &[&insecure[..], &["--registry-config", &good]].concat(),
        &["image", "pull", &reference],
    );
    assert!(env.has_snapshot(&img.chain_id()));
    assert_eq!(
        env.run(&reference, &["/bin/echo", "authorized"])?.trim(),
        "authorized"
    );
    Ok(())
}

#[test]
fn a_multi_platform_index_gives_this_nodes_image() -> Result<()> {
    let test = "a_multi_platform_index_gives_this_nodes_image";
    if !require_registry(test) {
        return Ok(());
    }
    let Some(env) = Env::start(test) else {
        return Ok(());
    };
    let name = "knode.test/multi:1";
    let native = TestImage::busybox(name)?;
    // The other platform's image: a layer this node must never fetch.
    let other_layer = {
        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(7);
        h.set_mode(0o644);
        t.append_data(&mut h, "foreign", &b"foreign"[..])?;
        t.into_inner()?
    };
    let other = TestImage::for_arch(name, other_layer, &["/foreign"], foreign_arch())?;
    let tar = env.dir.path().join("multi.tar");
    // The foreign image comes first: picking the first entry would be wrong.
    let index = write_oci_index(&tar, name, &[(&other, foreign_arch()), (&native, goarch())])?;

    let out = env.knode_ok(&[], &["image", "import", &tar.display().to_string()]);
    assert!(out.contains(&format!("imported {name} ({index})")), "{out}");
    assert!(env.has_snapshot(&native.chain_id()));
    assert!(!env.has_snapshot(&other.chain_id()));
    assert!(
        env.content_line(&other.chain_id()).is_none(),
        "the foreign layer was imported"
    );
    let idx = env.content_line(&index).expect("index stored");
    assert!(
        idx.contains(&format!(
            "containerd.io/gc.ref.content.m.1={}",
            native.manifest_digest()
        )),
        "{idx}"
    );
    assert_eq!(env.run(name, &["/bin/echo", "native"])?.trim(), "native");

    let reg = Registry::start()?;
    reg.push(&tar, "test/multi:1")?;
    let reference = format!("{}/test/multi:1", reg.host());
    let out = env.knode_ok(
        &["--insecure-registry", &reg.host()],
        &["image", "pull", &reference],
    );
    assert!(
        out.contains(&format!("pulled {reference} (sha256:")),
        "{out}"
    );
    // skopeo re-encodes the index on push, so its digest differs; the
    // record still points at an index (ctr lists its platforms).
    let listed = env.ctr(&["images", "ls"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&reference))
        .unwrap_or_default();
    assert!(line.contains("index") || line.contains("list"), "{listed}");
    assert!(
        env.content_line(&other.chain_id()).is_none(),
        "the foreign layer was pulled"
    );
    assert_eq!(
        env.run(&reference, &["/bin/echo", "pulled native"])?.trim(),
        "pulled native"
    );
    Ok(())
}
