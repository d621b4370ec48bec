//! Interop with the reference CNI plugins in /usr/lib/cni: our bridge
//! chained with the reference portmap, and reservations written by the
//! reference host-local honoured (and released) by ours.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use netns_tests::{
    first_ip, our_bin, require_root, unique, CniCall, TempDir, TestNs, REFERENCE_CNI_DIR,
};
use serde_json::{json, Value};

fn reference(name: &str) -> std::path::PathBuf {
    let p = Path::new(REFERENCE_CNI_DIR).join(name);
    if !p.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} missing: install containernetworking-plugins (make test does)",
            p.display()
        );
    }
    p
}

/// Runs a conflist's plugins in order as a runtime does: each gets the
/// network name and version, its runtimeConfig, and the previous result.
fn add_chain(
    host: &TestNs,
    list: &Value,
    id: &str,
    pod: &TestNs,
    runtime: &Value,
) -> Result<Vec<Value>> {
    let mut prev: Option<Value> = None;
    let mut confs = Vec::new();
    for p in list["plugins"].as_array().context("plugins")? {
        let mut conf = p.clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        conf["name"] = list["name"].clone();
        conf["runtimeConfig"] = runtime.clone();
        if let Some(r) = &prev {
            conf["prevResult"] = r.clone();
        }
        let ty = conf["type"].as_str().context("type")?.to_string();
        let bin = if ty.starts_with("knode-") {
            our_bin(&ty)
        } else {
            reference(&ty)
        };
        let call = CniCall::new(&bin, "ADD", id, Some(pod.path()), "eth0");
        prev = Some(
            host.run(|| call.run(&conf))??
                .expect_ok(&format!("ADD {ty}"))?,
        );
        confs.push(conf);
    }
    let last = prev.context("empty chain")?;
    // DEL configs carry the final result, in reverse order.
    Ok(confs
        .into_iter()
        .rev()
        .map(|mut c| {
            c["prevResult"] = last.clone();
            c
        })
        .collect())
}

#[test]
fn bridge_chains_with_reference_portmap() -> Result<()> {
    if !require_root("bridge_chains_with_reference_portmap") {
        return Ok(());
    }
    if !reference("portmap").is_file() {
        eprintln!("SKIP bridge_chains_with_reference_portmap: no reference portmap");
        return Ok(());
    }
    let host = TestNs::new("host")?;
    let pod = TestNs::new("pod")?;
    let data = TempDir::new("ipam")?;
    let list = json!({
        "cniVersion": "1.0.0",
        "name": unique("pm"),
        "plugins": [
            { "type": "knode-bridge", "bridge": unique("kb"), "isGateway": true, "isDefaultGateway": true,
              "ipMasq": true,
              "ipam": { "type": "knode-host-local", "ranges": [[{ "subnet": "10.98.0.0/24" }]], "dataDir": data.path() } },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    let runtime = json!({ "portMappings": [{ "hostPort": 18080, "containerPort": 8080, "protocol": "tcp" }] });
    let dels = add_chain(&host, &list, "ctr-pm", &pod, &runtime)?;
    let pod_ip = first_ip(&dels[0]["prevResult"]).context("pod ip")?;

    // A server in the pod; a client in the host namespace through the host port.
    let mut server = pod
        .cmd(&[
            "socat",
            "TCP-LISTEN:8080,reuseaddr,fork",
            "SYSTEM:echo hello-from-pod",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut answer = String::new();
    for _ in 0..50 {
        let out = host
            .cmd(&["socat", "-T", "2", "-", "TCP:10.98.0.1:18080"])
            .output()?;
        answer = String::from_utf8_lossy(&out.stdout).into_owned();
        if answer.contains("hello-from-pod") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        answer.contains("hello-from-pod"),
        "host port 18080 reaches {pod_ip}:8080, got {answer:?}"
    );

    for conf in &dels {
        let ty = conf["type"].as_str().unwrap_or_default();
        let bin = if ty.starts_with("knode-") {
            our_bin(ty)
        } else {
            reference(ty)
        };
        let call = CniCall::new(&bin, "DEL", "ctr-pm", Some(pod.path()), "eth0");
        host.run(|| call.run(conf))??
            .expect_ok(&format!("DEL {ty}"))?;
    }
    Ok(())
}

#[test]
fn reference_host_local_reservations_are_honoured() -> Result<()> {
    if !require_root("reference_host_local_reservations_are_honoured") {
        return Ok(());
    }
    let reference_bin = reference("host-local");
    if !reference_bin.is_file() {
        eprintln!("SKIP reference_host_local_reservations_are_honoured: no reference host-local");
        return Ok(());
    }
    let host = TestNs::new("host")?;
    let data = TempDir::new("ipam")?;
    let name = unique("ref");
    let ipam = |ty: &str| {
        json!({
            "cniVersion": "1.0.0", "name": name, "type": "knode-bridge",
            "ipam": { "type": ty, "dataDir": data.path(),
                      "ranges": [[{ "subnet": "10.99.0.0/24", "rangeStart": "10.99.0.2", "rangeEnd": "10.99.0.3" }]] }
        })
    };
    // The reference plugin reserves first.
    let conf = ipam("host-local");
    let call = CniCall::new(&reference_bin, "ADD", "ref-ctr", Some(host.path()), "eth0");
    let r = host.run(|| call.run(&conf))??.expect_ok("reference ADD")?;
    let taken = first_ip(&r).context("reference ip")?;

    // Ours hands out the other address, then finds the range full.
    let conf = ipam("knode-host-local");
    let ours = our_bin("knode-host-local");
    let call = CniCall::new(&ours, "ADD", "our-ctr", Some(host.path()), "eth0");
    let r = host.run(|| call.run(&conf))??.expect_ok("our ADD")?;
    let mine = first_ip(&r).context("our ip")?;
    assert_ne!(mine, taken);
    let call = CniCall::new(&ours, "ADD", "our-ctr-2", Some(host.path()), "eth0");
    let out = host.run(|| call.run(&conf))??;
    assert!(
        !out.ok && out.code() == Some(100),
        "range is full: {}",
        out.stdout
    );

    // Ours releases the reference's reservation by container ID...
    let call = CniCall::new(&ours, "DEL", "ref-ctr", None, "eth0");
    host.run(|| call.run(&conf))??
        .expect_ok("our DEL of the reference's reservation")?;
    assert!(!data.path().join(&name).join(&taken).exists());
    // ...and the reference honours ours.
    let conf = ipam("host-local");
    let call = CniCall::new(
        &reference_bin,
        "ADD",
        "ref-ctr-2",
        Some(host.path()),
        "eth0",
    );
    let r = host
        .run(|| call.run(&conf))??
        .expect_ok("reference ADD 2")?;
    assert_eq!(first_ip(&r).as_deref(), Some(taken.as_str()));
    Ok(())
}
