//! Spec building for many pod shapes, and (as root, with runc) one real
//! run of a generated spec.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{Capability, LinuxNamespaceType, Spec};
use serde_json::json;

use super::*;

const GIB: i64 = 1 << 30;

fn host() -> Host {
    Host {
        oom_floor: -1000,
        memory_capacity: 8 * GIB,
        cgroup2: false,
    }
}

fn pod(spec: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "shop", "uid": "0b6c-uid"},
        "spec": spec,
    }))
    .unwrap()
}

fn image(config: serde_json::Value) -> ImageConfiguration {
    serde_json::from_value(json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap()
}

fn files() -> PodFiles {
    PodFiles {
        hosts: "/run/knode/pods/0b6c-uid/hosts".into(),
        resolv_conf: "/run/knode/pods/0b6c-uid/resolv.conf".into(),
        hostname: "/run/knode/pods/0b6c-uid/hostname".into(),
        shm: "/run/knode/pods/0b6c-uid/shm".into(),
    }
}

fn sandbox(p: &Pod, h: &Host) -> Result<Spec, SpecError> {
    let img = image(json!({"Entrypoint": ["/pause"]}));
    let f = files();
    sandbox_spec_on(
        &SandboxParams {
            pod: p,
            image: &img,
            netns: Path::new("/run/netns/knode-0b6c-uid"),
            hostname: "web",
            files: &f,
            cgroups_path: cgroups_path("0b6c-uid", "0b6c-uid-pause"),
            policy: &NodePolicy::default(),
        },
        h,
    )
}

fn container_with(
    p: &Pod,
    i: usize,
    img: serde_json::Value,
    env: &[(&str, &str)],
    mounts: &[Mount],
    h: &Host,
) -> Result<Spec, SpecError> {
    let img = image(img);
    let f = files();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = &p.spec.as_ref().unwrap().containers[i];
    container_spec_on(
        &ContainerParams {
            pod: p,
            container: c,
            image: &img,
            sandbox_pid: 4242,
            env: &env,
            mounts,
            files: &f,
            cgroups_path: cgroups_path("0b6c-uid", "0b6c-uid-c0-0"),
            policy: &NodePolicy::default(),
        },
        h,
    )
}

fn container(p: &Pod) -> Spec {
    container_with(p, 0, json!({"Cmd": ["sh"]}), &[], &[], &host()).unwrap()
}

fn process(s: &Spec) -> &oci_spec::runtime::Process {
    s.process().as_ref().unwrap()
}

fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
    s.linux().as_ref().unwrap()
}

fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    linux(s)
        .namespaces()
        .iter()
        .flatten()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

fn mount_list(s: &Spec) -> Vec<(String, String, Vec<String>)> {
    s.mounts()
        .iter()
        .flatten()
        .map(|m| {
            (
                m.destination().to_string_lossy().into_owned(),
                m.source()
                    .as_ref()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                m.options().clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn find_mount(s: &Spec, dst: &str) -> Option<(String, Vec<String>)> {
    mount_list(s)
        .into_iter()
        .find(|(d, _, _)| d == dst)
        .map(|(_, src, o)| (src, o))
}

#[test]
fn sandbox_holds_the_pod_namespaces() {
    let p = pod(json!({"containers": [{"name": "app", "image": "busybox"}]}));
    let s = sandbox(&p, &host()).unwrap();
    assert_eq!(
        process(&s).args().as_ref().unwrap(),
        &vec!["/pause".to_string()]
    );
    assert_eq!(s.hostname().as_deref(), Some("web"));
    let ns = namespaces(&s);
    assert!(ns.contains(&(
        LinuxNamespaceType::Network,
        Some("/run/netns/knode-0b6c-uid".into())
    )));
    for t in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ] {
        assert!(ns.contains(&(t, None)), "{t:?} in {ns:?}");
    }
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(s.root().as_ref().unwrap().path(), Path::new("rootfs"));
    assert_eq!(
        find_mount(&s, "/dev/shm").unwrap(),
        (
            "/run/knode/pods/0b6c-uid/shm".to_string(),
            vec!["rbind".to_string(), "ro".to_string()]
        )
    );
    assert!(find_mount(&s, "/etc/resolv.conf").is_some());
    assert!(find_mount(&s, "/sys/fs/cgroup").is_none());
    assert_eq!(process(&s).oom_score_adj(), Some(-998));
    let l = linux(&s);
    assert_eq!(
        l.cgroups_path().as_deref(),
        Some(Path::new("/knode/pod0b6c-uid/0b6c-uid-pause"))
    );
    assert_eq!(
        l.resources()
            .as_ref()
            .unwrap()
            .cpu()
            .as_ref()
            .unwrap()
            .shares(),
        Some(2)
    );
    assert!(l
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/proc/kcore".to_string()));
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a[annotations::CONTAINER_TYPE], "sandbox");
    assert_eq!(a[annotations::SANDBOX_ID], "0b6c-uid-pause");
    assert_eq!(a[annotations::SANDBOX_NAMESPACE], "shop");
}

#[test]
fn oom_scores_are_clamped_to_the_agents_own() {
    let p = pod(json!({"containers": [{"name": "app", "image": "busybox"}]}));
    let floor = Host {
        oom_floor: 0,
        ..host()
    };
    assert_eq!(
        process(&sandbox(&p, &floor).unwrap()).oom_score_adj(),
        Some(0)
    );
    let g = pod(json!({"containers": [{"name": "app", "image": "b",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}));
    let s = container_with(&g, 0, json!({"Cmd": ["sh"]}), &[], &[], &floor).unwrap();
    assert_eq!(process(&s).oom_score_adj(), Some(0), "-997 clamped");
    assert_eq!(process(&container(&g)).oom_score_adj(), Some(-997));
    let high = Host {
        oom_floor: 500,
        ..host()
    };
    assert_eq!(
        process(&sandbox(&p, &high).unwrap()).oom_score_adj(),
        Some(500)
    );
    let best = container_with(&p, 0, json!({"Cmd": ["sh"]}), &[], &[], &high).unwrap();
    assert_eq!(
        process(&best).oom_score_adj(),
        Some(1000),
        "above the floor stays"
    );
}

#[test]
fn sandbox_host_namespaces_and_sysctls() {
    let p = pod(
        json!({"hostNetwork": true, "hostPID": true, "hostIPC": true,
        "securityContext": {"sysctls": [{"name": "kernel.shm_rmid_forced", "value": "1"}]},
        "containers": [{"name": "app", "image": "b"}]}),
    );
    let s = sandbox(&p, &host()).unwrap();
    let ns: Vec<_> = namespaces(&s).into_iter().map(|(t, _)| t).collect();
    assert_eq!(ns, vec![LinuxNamespaceType::Mount]);
    assert_eq!(
        s.hostname(),
        &None,
        "no UTS namespace of its own: no hostname"
    );
    assert_eq!(
        linux(&s).sysctl().as_ref().unwrap()["kernel.shm_rmid_forced"],
        "1"
    );
    let slash = pod(json!({
        "securityContext": {"sysctls": [{"name": "net/ipv4/ip_unprivileged_port_start", "value": "0"}]},
        "containers": [{"name": "app", "image": "b"}]}));
    let s = sandbox(&slash, &host()).unwrap();
    assert_eq!(
        linux(&s).sysctl().as_ref().unwrap()["net.ipv4.ip_unprivileged_port_start"],
        "0"
    );
    for name in ["../x", "net.core.somaxconn", "kernel.panic"] {
        let bad = pod(
            json!({"securityContext": {"sysctls": [{"name": name, "value": "1"}]},
            "containers": [{"name": "app", "image": "b"}]}),
        );
        let e = sandbox(&bad, &host()).unwrap_err();
        assert_eq!(e.field, "spec.securityContext.sysctls[0].name");
        assert!(e.message.contains("is not allowed on this node"), "{e}");
    }
}

#[test]
fn sandbox_needs_a_command_and_a_uid() {
    let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
    let img = image(json!({}));
    let f = files();
    let params = SandboxParams {
        pod: &p,
        image: &img,
        netns: Path::new("/n"),
        hostname: "web",
        files: &f,
        cgroups_path: String::new(),
        policy: &NodePolicy::default(),
    };
    assert!(sandbox_spec_on(&params, &host())
        .unwrap_err()
        .to_string()
        .contains("neither an Entrypoint nor a Cmd"));
    let mut nouid = p.clone();
    nouid.metadata.uid = Some("../../etc".into());
    assert_eq!(sandbox(&nouid, &host()).unwrap_err().field, "metadata.uid");
}

fn args_of(
    command: Option<&[&str]>,
    args: Option<&[&str]>,
    img: serde_json::Value,
) -> Result<Vec<String>, SpecError> {
    let mut c = json!({"name": "app", "image": "b"});
    if let Some(cmd) = command {
        c["command"] = json!(cmd);
    }
    if let Some(a) = args {
        c["args"] = json!(a);
    }
    let p = pod(json!({"containers": [c]}));
    container_with(&p, 0, img, &[("WHO", "world")], &[], &host())
        .map(|s| process(&s).args().clone().unwrap())
}

#[test]
fn kubernetes_command_rules() {
    let img = json!({"Entrypoint": ["/entry"], "Cmd": ["--default"]});
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        args_of(None, None, img.clone()).unwrap(),
        v(&["/entry", "--default"])
    );
    assert_eq!(
        args_of(None, Some(&["-x"]), img.clone()).unwrap(),
        v(&["/entry", "-x"])
    );
    assert_eq!(
        args_of(Some(&["/bin/sh"]), None, img.clone()).unwrap(),
        v(&["/bin/sh"]),
        "image Cmd dropped"
    );
    assert_eq!(
        args_of(Some(&["/bin/sh"]), Some(&["-c", "echo"]), img.clone()).unwrap(),
        v(&["/bin/sh", "-c", "echo"])
    );
    assert_eq!(
        args_of(None, None, json!({"Entrypoint": [""], "Cmd": ["run"]})).unwrap(),
        v(&["run"])
    );
    assert_eq!(
        args_of(
            Some(&["echo"]),
            Some(&["hello $(WHO)", "$(MISSING)", "$$(WHO)"]),
            img
        )
        .unwrap(),
        v(&["echo", "hello world", "$(MISSING)", "$(WHO)"])
    );
    let e = args_of(None, None, json!({})).unwrap_err();
    assert_eq!(e.field, "spec.containers[0].command");
}

#[test]
fn environment_order_and_overrides() {
    let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
    let s = container_with(
        &p,
        0,
        json!({"Cmd": ["sh"], "Env": ["PATH=/img/bin", "LANG=C", "KEEP=1"]}),
        &[("LANG", "en_US.UTF-8"), ("EXTRA", "x=y")],
        &[],
        &host(),
    )
    .unwrap();
    assert_eq!(
        process(&s).env().clone().unwrap(),
        vec![
            "PATH=/img/bin",
            "HOSTNAME=web",
            "LANG=en_US.UTF-8",
            "KEEP=1",
            "EXTRA=x=y"
        ]
    );
    let none = container(&p);
    assert_eq!(process(&none).env().as_ref().unwrap()[0], DEFAULT_PATH);
}

#[test]
fn working_dir_and_user() {
    let p = pod(
        json!({"containers": [{"name": "app", "image": "b", "workingDir": "/srv",
        "securityContext": {"runAsUser": 1000, "runAsGroup": 3000}}],
        "securityContext": {"supplementalGroups": [4000], "fsGroup": 2000}}),
    );
    let s = container_with(
        &p,
        0,
        json!({"Cmd": ["sh"], "WorkingDir": "/img", "User": "nobody"}),
        &[],
        &[],
        &host(),
    )
    .unwrap();
    assert_eq!(process(&s).cwd(), Path::new("/srv"));
    let u = process(&s).user();
    assert_eq!((u.uid(), u.gid()), (1000, 3000));
    assert_eq!(u.additional_gids().clone().unwrap(), vec![2000, 4000]);
    let img_dir = container_with(
        &pod(json!({"containers": [{"name": "a", "image": "b"}]})),
        0,
        json!({"Cmd": ["sh"], "WorkingDir": "/img", "User": "1001:1002"}),
        &[],
        &[],
        &host(),
    )
    .unwrap();
    assert_eq!(process(&img_dir).cwd(), Path::new("/img"));
    assert_eq!(
        (
            process(&img_dir).user().uid(),
            process(&img_dir).user().gid()
        ),
        (1001, 1002)
    );
    let rel = pod(json!({"containers": [{"name": "a", "image": "b", "workingDir": "srv"}]}));
    assert_eq!(
        container_with(&rel, 0, json!({"Cmd": ["sh"]}), &[], &[], &host())
            .unwrap_err()
            .field,
        "spec.containers[0].workingDir"
    );
    let named = pod(json!({"containers": [{"name": "a", "image": "b"}]}));
    let e = container_with(
        &named,
        0,
        json!({"Cmd": ["sh"], "User": "nobody"}),
        &[],
        &[],
        &host(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains(r#"image user "nobody": only numeric users"#),
        "{e}"
    );
}

#[test]
fn app_containers_join_the_sandbox() {
    let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
    let s = container(&p);
    let ns = namespaces(&s);
    assert!(ns.contains(&(
        LinuxNamespaceType::Network,
        Some("/proc/4242/ns/net".into())
    )));
    assert!(ns.contains(&(LinuxNamespaceType::Ipc, Some("/proc/4242/ns/ipc".into()))));
    assert!(ns.contains(&(LinuxNamespaceType::Uts, Some("/proc/4242/ns/uts".into()))));
    assert!(
        ns.contains(&(LinuxNamespaceType::Pid, None)),
        "own PID namespace"
    );
    assert!(s.hostname().is_none());
    let shared =
        pod(json!({"shareProcessNamespace": true, "containers": [{"name": "app", "image": "b"}]}));
    assert!(namespaces(&container(&shared))
        .contains(&(LinuxNamespaceType::Pid, Some("/proc/4242/ns/pid".into()))));
    let host_pid = pod(json!({"hostPID": true, "containers": [{"name": "app", "image": "b"}]}));
    assert!(!namespaces(&container(&host_pid))
        .iter()
        .any(|(t, _)| *t == LinuxNamespaceType::Pid));
    let cg2 = container_with(
        &p,
        0,
        json!({"Cmd": ["sh"]}),
        &[],
        &[],
        &Host {
            cgroup2: true,
            ..host()
        },
    )
    .unwrap();
    assert!(namespaces(&cg2).contains(&(LinuxNamespaceType::Cgroup, None)));
    let a = s.annotations().as_ref().unwrap();
    assert_eq!(a[annotations::CONTAINER_TYPE], "container");
    assert_eq!(a[annotations::CONTAINER_NAME], "app");
    let mut no_pid = ContainerParams {
        pod: &p,
        container: &p.spec.as_ref().unwrap().containers[0],
        image: &image(json!({"Cmd": ["sh"]})),
        sandbox_pid: 0,
        env: &[],
        mounts: &[],
        files: &files(),
        cgroups_path: String::new(),
        policy: &NodePolicy::default(),
    };
    assert!(container_spec_on(&no_pid, &host()).is_err());
    no_pid.sandbox_pid = 1;
    assert!(container_spec_on(&no_pid, &host()).is_ok());
}

#[test]
fn mounts_defaults_pod_files_and_volumes() {
    let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
    let vols = [
        Mount {
            host_path: "/var/lib/knode/pods/u/volumes/kubernetes.io~empty-dir/data/sub".into(),
            container_path: "/data/deep".into(),
            read_only: false,
        },
        Mount {
            host_path: "/var/lib/knode/pods/u/volumes/kubernetes.io~configmap/cfg".into(),
            container_path: "/data".into(),
            read_only: true,
        },
    ];
    let s = container_with(&p, 0, json!({"Cmd": ["sh"]}), &[], &vols, &host()).unwrap();
    let dsts: Vec<String> = mount_list(&s).into_iter().map(|(d, _, _)| d).collect();
    assert_eq!(
        dsts,
        vec![
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
            "/data",
            "/data/deep",
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/dev/shm",
        ]
    );
    let (src, o) = find_mount(&s, "/data").unwrap();
    assert!(src.ends_with("configmap/cfg"));
    assert_eq!(o, vec!["rbind", "rprivate", "ro"]);
    assert_eq!(
        find_mount(&s, "/data/deep").unwrap().1,
        vec!["rbind", "rprivate", "rw"]
    );
    assert_eq!(
        find_mount(&s, "/dev/shm").unwrap().0,
        "/run/knode/pods/0b6c-uid/shm"
    );
    assert_eq!(
        find_mount(&s, "/etc/hosts").unwrap().1,
        vec!["rbind", "rprivate", "rw"]
    );
    assert_eq!(
        find_mount(&s, "/sys/fs/cgroup").unwrap().1.last().unwrap(),
        "ro"
    );

    // A volume at /etc/hosts replaces the pod's file; one at /dev takes
    // every default under /dev with it.
    let over = [
        Mount {
            host_path: "/h".into(),
            container_path: "/etc/hosts".into(),
            read_only: true,
        },
        Mount {
            host_path: "/d".into(),
            container_path: "/dev".into(),
            read_only: false,
        },
    ];
    let s = container_with(&p, 0, json!({"Cmd": ["sh"]}), &[], &over, &host()).unwrap();
    assert_eq!(find_mount(&s, "/etc/hosts").unwrap().0, "/h");
    assert_eq!(
        mount_list(&s)
            .iter()
            .filter(|(d, _, _)| d == "/etc/hosts")
            .count(),
        1
    );
    assert!(find_mount(&s, "/dev/pts").is_none());
    assert_eq!(
        find_mount(&s, "/dev/shm").unwrap().0,
        "/run/knode/pods/0b6c-uid/shm"
    );

    let rel = [Mount {
        host_path: "/h".into(),
        container_path: "data".into(),
        read_only: false,
    }];
    assert!(container_with(&p, 0, json!({"Cmd": ["sh"]}), &[], &rel, &host()).is_err());
}

#[test]
fn read_only_root_filesystem() {
    let p = pod(json!({"containers": [{"name": "app", "image": "b",
        "securityContext": {"readOnlyRootFilesystem": true}}]}));
    let s = container(&p);
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(
        find_mount(&s, "/etc/resolv.conf")
            .unwrap()
            .1
            .last()
            .unwrap(),
        "ro"
    );
    assert_eq!(find_mount(&s, "/dev/shm").unwrap().1.last().unwrap(), "rw");
    let rw = container(&pod(json!({"containers": [{"name": "app", "image": "b"}]})));
    assert_eq!(rw.root().as_ref().unwrap().readonly(), Some(false));
}

#[test]
fn resources_become_cgroup_limits() {
    let p = pod(
        json!({"containers": [{"name": "app", "image": "b"}, {"name": "side", "image": "b",
        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}}}]}),
    );
    let s = container_with(&p, 1, json!({"Cmd": ["sh"]}), &[], &[], &host()).unwrap();
    let r = linux(&s).resources().as_ref().unwrap();
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(256), Some(50_000), Some(100_000))
    );
    assert_eq!(r.memory().as_ref().unwrap().limit(), Some(128 << 20));
    // Burstable: 1000 - 1000 * 64Mi / 8Gi.
    assert_eq!(process(&s).oom_score_adj(), Some(993));
    let d = &r.devices().as_ref().unwrap()[0];
    assert!(!d.allow());
    assert_eq!(d.access().as_deref(), Some("rwm"));

    let bare = container(&p);
    let r = linux(&bare).resources().as_ref().unwrap();
    assert_eq!(r.cpu().as_ref().unwrap().quota(), None);
    assert!(r.memory().is_none());

    let bad = pod(
        json!({"containers": [{"name": "a", "image": "b"}, {"name": "b", "image": "b",
        "resources": {"limits": {"memory": "12Qi"}}}]}),
    );
    let e = container_with(&bad, 1, json!({"Cmd": ["sh"]}), &[], &[], &host()).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"spec.containers[1].resources.limits.memory: "12Qi" is not a quantity"#
    );
}

#[test]
fn security_context() {
    let p = pod(
        json!({"containers": [{"name": "app", "image": "b", "securityContext": {
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
        "allowPrivilegeEscalation": false}}]}),
    );
    let s = container(&p);
    let caps = process(&s).capabilities().as_ref().unwrap();
    let bounding = caps.bounding().as_ref().unwrap();
    assert!(bounding.contains(&Capability::NetAdmin));
    assert!(!bounding.contains(&Capability::Mknod));
    assert!(!bounding.contains(&Capability::SysAdmin));
    assert_eq!(caps.effective(), caps.bounding());
    assert!(caps.ambient().is_none() && caps.inheritable().is_none());
    assert_eq!(process(&s).no_new_privileges(), Some(true));
    assert_eq!(
        process(&container(&pod(
            json!({"containers": [{"name": "a", "image": "b"}]})
        )))
        .no_new_privileges(),
        Some(false)
    );

    let privileged = pod(
        json!({"containers": [{"name": "a", "image": "b"}, {"name": "p", "image": "b",
        "securityContext": {"privileged": true}}]}),
    );
    let e = container_with(&privileged, 1, json!({"Cmd": ["sh"]}), &[], &[], &host()).unwrap_err();
    assert_eq!(e.field, "spec.containers[1].securityContext.privileged");
    assert!(e.message.contains("allow-privileged"), "{e}");

    let unmasked = pod(
        json!({"containers": [{"name": "a", "image": "b", "securityContext": {"procMount": "Unmasked"}}]}),
    );
    let s = container(&unmasked);
    assert!(linux(&s).masked_paths().is_none() && linux(&s).readonly_paths().is_none());

    let non_root = pod(
        json!({"securityContext": {"runAsNonRoot": true}, "containers": [{"name": "a", "image": "b"}]}),
    );
    let e = container_with(&non_root, 0, json!({"Cmd": ["sh"]}), &[], &[], &host()).unwrap_err();
    assert!(
        e.message
            .contains("runAsNonRoot and image will run as root"),
        "{e}"
    );
    assert!(
        sandbox(&non_root, &host()).is_ok(),
        "the pause container is not checked"
    );
}

/// An app container's spec under a node policy.
fn container_on(p: &Pod, i: usize, policy: &NodePolicy) -> Result<Spec, SpecError> {
    let img = image(json!({"Cmd": ["sh"]}));
    let f = files();
    container_spec_on(
        &ContainerParams {
            pod: p,
            container: &p.spec.as_ref().unwrap().containers[i],
            image: &img,
            sandbox_pid: 4242,
            env: &[],
            mounts: &[],
            files: &f,
            cgroups_path: cgroups_path("0b6c-uid", "0b6c-uid-c0-0"),
            policy,
        },
        &host(),
    )
}

#[test]
fn privileged_when_the_node_allows_it() {
    let allow = NodePolicy {
        allow_privileged: true,
        seccomp_root: None,
    };
    let p = pod(
        json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "p", "image": "b", "securityContext": {"privileged": true,
        "capabilities": {"drop": ["ALL"]}}}]}),
    );
    let s = container_on(&p, 0, &allow).unwrap();
    let caps = process(&s).capabilities().as_ref().unwrap();
    assert_eq!(
        caps.bounding().as_ref().unwrap(),
        &security::all_capabilities()
    );
    assert!(caps
        .bounding()
        .as_ref()
        .unwrap()
        .contains(&Capability::SysAdmin));
    assert_eq!(process(&s).no_new_privileges(), Some(false));
    assert!(linux(&s).masked_paths().is_none() && linux(&s).readonly_paths().is_none());
    assert!(linux(&s).seccomp().is_none(), "privileged runs unconfined");
    let devices = linux(&s)
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap();
    assert_eq!(devices, &vec![security::allow_all_devices()]);
    let host_devs = linux(&s).devices().as_ref().unwrap();
    assert!(host_devs.iter().any(|d| d.path() == Path::new("/dev/null")));
    assert!(!host_devs.iter().any(|d| d.path().starts_with("/dev/pts")));
    for m in s.mounts().as_ref().unwrap() {
        if matches!(m.typ().as_deref(), Some("sysfs") | Some("cgroup")) {
            assert!(
                !m.options().as_ref().unwrap().contains(&"ro".to_string()),
                "{m:?}"
            );
        }
    }
    // Still refused by default, and a contradiction is named.
    assert_eq!(
        container_on(&p, 0, &NodePolicy::default())
            .unwrap_err()
            .field,
        "spec.containers[0].securityContext.privileged"
    );
    let contradiction = pod(json!({"containers": [{"name": "p", "image": "b",
        "securityContext": {"privileged": true, "allowPrivilegeEscalation": false}}]}));
    assert_eq!(
        container_on(&contradiction, 0, &allow).unwrap_err().field,
        "spec.containers[0].securityContext.allowPrivilegeEscalation"
    );
}

#[test]
fn localhost_seccomp_profiles_come_from_the_node_directory() {
    let root = std::env::temp_dir().join(format!("knode-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(root.join("profiles")).unwrap();
    std::fs::write(
        root.join("profiles/deny-mkdir.json"),
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    std::fs::write(root.join("bad.json"), "{").unwrap();
    let policy = NodePolicy {
        allow_privileged: false,
        seccomp_root: Some(root.clone()),
    };
    let with = |name: &str| {
        pod(
            json!({"containers": [{"name": "a", "image": "b", "securityContext":
            {"seccompProfile": {"type": "Localhost", "localhostProfile": name}}}]}),
        )
    };
    let s = container_on(&with("profiles/deny-mkdir.json"), 0, &policy).unwrap();
    let json = serde_json::to_value(linux(&s).seccomp().as_ref().unwrap()).unwrap();
    assert_eq!(json["defaultAction"], "SCMP_ACT_ALLOW");
    assert_eq!(json["syscalls"][0]["names"], json!(["mkdir"]));
    let field = "spec.containers[0].securityContext.seccompProfile.localhostProfile";
    for bad in ["../etc/passwd", "/abs.json", "missing.json", "bad.json", ""] {
        let e = container_on(&with(bad), 0, &policy).unwrap_err();
        assert_eq!(e.field, field, "{bad}: {e}");
    }
    let e = container_on(&with("missing.json"), 0, &policy).unwrap_err();
    assert!(e.message.contains("missing.json"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn seccomp_profiles() {
    let rd = pod(
        json!({"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "a", "image": "b"}, {"name": "u", "image": "b",
            "securityContext": {"seccompProfile": {"type": "Unconfined"}}}]}),
    );
    let s = container(&rd);
    let sc = linux(&s).seccomp().as_ref().unwrap();
    let json = serde_json::to_value(sc).unwrap();
    assert_eq!(json["defaultAction"], "SCMP_ACT_ERRNO");
    let rules = json["syscalls"].as_array().unwrap();
    assert!(rules[0]["names"]
        .as_array()
        .unwrap()
        .contains(&json!("read")));
    let clone3 = rules
        .iter()
        .find(|r| r["names"] == json!(["clone3"]))
        .unwrap();
    assert_eq!(
        (clone3["action"].clone(), clone3["errnoRet"].clone()),
        (json!("SCMP_ACT_ERRNO"), json!(38))
    );
    assert!(!rules
        .iter()
        .any(|r| r["names"].as_array().unwrap().contains(&json!("mount"))));
    assert!(linux(&sandbox(&rd, &host()).unwrap()).seccomp().is_some());
    let unconfined = container_with(&rd, 1, json!({"Cmd": ["sh"]}), &[], &[], &host()).unwrap();
    assert!(
        linux(&unconfined).seccomp().is_none(),
        "the container's own profile wins"
    );
    let local = pod(json!({"containers": [{"name": "a", "image": "b",
        "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "x.json"}}}]}));
    assert_eq!(
        container_with(&local, 0, json!({"Cmd": ["sh"]}), &[], &[], &host())
            .unwrap_err()
            .field,
        "spec.containers[0].securityContext.seccompProfile.type"
    );
    let admin = seccomp::runtime_default(&[Capability::SysAdmin].into_iter().collect()).unwrap();
    let json = serde_json::to_value(&admin).unwrap();
    assert!(json["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["names"].as_array().unwrap().contains(&json!("mount"))));
}

#[test]
fn hostnames_follow_kubelet() {
    let mut p = pod(json!({"containers": []}));
    assert_eq!(pod_hostname(&p), "web");
    p.metadata.name = Some(format!("{}-{}", "a".repeat(62), "b"));
    assert_eq!(
        pod_hostname(&p),
        "a".repeat(62),
        "cut to 63 without the trailing '-'"
    );
    p.spec.as_mut().unwrap().hostname = Some("custom".into());
    assert_eq!(pod_hostname(&p), "custom");
    assert_eq!(
        truncate_hostname(&"é".repeat(40)).len(),
        62,
        "cut on a character boundary"
    );
    let long = "x".repeat(80);
    let img = image(json!({"Entrypoint": ["/pause"]}));
    let f = files();
    let s = sandbox_spec_on(
        &SandboxParams {
            pod: &p,
            image: &img,
            netns: Path::new("/n"),
            hostname: &long,
            files: &f,
            cgroups_path: String::new(),
            policy: &NodePolicy::default(),
        },
        &host(),
    )
    .unwrap();
    assert_eq!(s.hostname().as_deref(), Some("x".repeat(63).as_str()));
}

#[test]
fn spec_serializes_as_runc_expects() {
    let p = pod(json!({"containers": [{"name": "app", "image": "b"}]}));
    let v = serde_json::to_value(container(&p)).unwrap();
    assert_eq!(v["ociVersion"], "1.0.2-dev");
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["process"]["user"]["uid"], 0);
    assert_eq!(
        v["linux"]["cgroupsPath"],
        "/knode/pod0b6c-uid/0b6c-uid-c0-0"
    );
    assert!(v["process"].get("rlimits").is_none());
    assert!(v["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .contains(&json!("CAP_CHOWN")));
}

#[test]
fn meminfo_total() {
    assert_eq!(
        mem_total("MemTotal:       16318412 kB\nMemFree: 1 kB\n"),
        Some(16318412 * 1024)
    );
    assert_eq!(mem_total("nothing"), None);
}

/// runc accepts and runs what we generate: a sandbox-shaped spec (own
/// namespaces) and an app container joining it, from a busybox rootfs,
/// with the real cgroup path, then the pod cgroup is removed.
#[test]
fn runc_runs_generated_specs() {
    let name = "runc_runs_generated_specs";
    if !nix::unistd::Uid::effective().is_root()
        || which("runc").is_none()
        || !Path::new("/bin/busybox").exists()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} needs root, runc and /bin/busybox"
        );
        eprintln!("skipping {name}: needs root, runc and a static /bin/busybox");
        return;
    }
    let base = std::env::temp_dir().join(format!("knode-spec-runc-{}", std::process::id()));
    let uid = format!("spectest{}", std::process::id());
    let result = std::panic::catch_unwind(|| run_pair(&base, &uid));
    let _ = std::process::Command::new("runc")
        .arg("--root")
        .arg(base.join("state"))
        .args(["delete", "-f", &format!("{uid}-app")])
        .status();
    let _ = std::process::Command::new("runc")
        .arg("--root")
        .arg(base.join("state"))
        .args(["delete", "-f", &format!("{uid}-pause")])
        .status();
    let _ = std::fs::remove_dir_all(&base);
    remove_pod_cgroups(&uid).unwrap();
    for m in cgroups::cgroup_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap()) {
        assert!(
            !m.join("knode").join(format!("pod{uid}")).exists(),
            "pod cgroup left in {}",
            m.display()
        );
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.exists())
}

fn bundle(base: &Path, name: &str, spec: &Spec) -> PathBuf {
    let dir = base.join(name);
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(spec).unwrap(),
    )
    .unwrap();
    dir
}

fn run_pair(base: &Path, uid: &str) {
    let state = base.join("state");
    let fdir = base.join("files");
    std::fs::create_dir_all(fdir.join("shm")).unwrap();
    let f = PodFiles {
        hosts: fdir.join("hosts"),
        resolv_conf: fdir.join("resolv.conf"),
        hostname: fdir.join("hostname"),
        shm: fdir.join("shm"),
    };
    for (p, c) in [
        (&f.hosts, "127.0.0.1\tlocalhost\n"),
        (&f.resolv_conf, "nameserver 127.0.0.1\n"),
        (&f.hostname, "web\n"),
    ] {
        std::fs::write(p, c).unwrap();
    }
    let mut p = pod(
        json!({"shareProcessNamespace": true, "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "app", "image": "b",
            "command": ["/bin/busybox", "sh", "-c"],
            "args": ["test \"$(/bin/busybox cat /etc/hostname)\" = web && test \"$GREETING\" = hi && test \"$(/bin/busybox hostname)\" = web && /bin/busybox touch /data/ok"],
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]}),
    );
    p.metadata.uid = Some(uid.to_string());
    let h = Host::read();
    // The sandbox: sleeps, holding its namespaces. Its own netns stands in
    // for the pinned one (a fresh, empty namespace path is not available
    // without the agent), so the test runs it with a new one.
    let img = image(json!({"Entrypoint": ["/bin/busybox", "sleep", "30"]}));
    let mut sb = sandbox_spec_on(
        &SandboxParams {
            pod: &p,
            image: &img,
            netns: Path::new("/unused"),
            hostname: "web",
            files: &f,
            cgroups_path: cgroups_path(uid, &format!("{uid}-pause")),
            policy: &NodePolicy::default(),
        },
        &h,
    )
    .unwrap();
    let mut l = sb.linux().clone().unwrap();
    let ns: Vec<_> = l
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|mut n| {
            n.set_path(None);
            n
        })
        .collect();
    l.set_namespaces(Some(ns));
    sb.set_linux(Some(l));
    let sb_dir = bundle(base, "pause", &sb);
    let run = |args: &[&str], dir: &Path| {
        std::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    // Detached, its stdio must not be our pipes (output() would wait for
    // the container to close them).
    let log = base.join("pause.stderr");
    let status = std::process::Command::new("runc")
        .arg("--root")
        .arg(&state)
        .args(["run", "-d", "--bundle", ".", &format!("{uid}-pause")])
        .current_dir(&sb_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "runc run pause: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let st = run(&["state", &format!("{uid}-pause")], &sb_dir);
    let state_json: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let pid = state_json["pid"].as_u64().unwrap() as u32;

    let data = base.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let app_img = image(json!({"Env": ["GREETING=hello"]}));
    let env = vec![("GREETING".to_string(), "hi".to_string())];
    let mounts = vec![Mount {
        host_path: data.clone(),
        container_path: "/data".into(),
        read_only: false,
    }];
    let app = container_spec_on(
        &ContainerParams {
            pod: &p,
            container: &p.spec.as_ref().unwrap().containers[0],
            image: &app_img,
            sandbox_pid: pid,
            env: &env,
            mounts: &mounts,
            files: &f,
            cgroups_path: cgroups_path(uid, &format!("{uid}-app")),
            policy: &NodePolicy::default(),
        },
        &h,
    )
    .unwrap();
    let app_dir = bundle(base, "app", &app);
    let out = run(&["run", "--bundle", ".", &format!("{uid}-app")], &app_dir);
    assert!(
        out.status.success(),
        "runc run app: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        data.join("ok").exists(),
        "the app ran its checks and wrote to the volume"
    );
    let memory = cgroups::cgroup_mounts(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
        .into_iter()
        .find(|m| m.ends_with("memory"));
    if let Some(m) = memory {
        assert!(
            m.join(format!("knode/pod{uid}")).exists(),
            "runc used our cgroup path"
        );
    }
    let _ = run(&["kill", &format!("{uid}-pause"), "KILL"], &sb_dir);
    for _ in 0..50 {
        let st = run(&["state", &format!("{uid}-pause")], &sb_dir);
        if String::from_utf8_lossy(&st.stdout).contains("\"stopped\"") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
