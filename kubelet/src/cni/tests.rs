//! The CNI caller against fake plugins: small shell scripts (test fixtures)
//! that record their environment and stdin and print canned results.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cache::{base64_decode, base64_encode};
use super::*;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A bin dir, a conf dir, a cache dir and the fakes' log, removed on drop.
struct Fixture {
    root: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("knode-cni-unit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "conf", "cache", "log"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let f = Fixture { root };
        f.plugin("knode-loopback", &result_body("lo", "127.0.0.1/8"));
        f
    }

    fn dir(&self, d: &str) -> PathBuf {
        self.root.join(d)
    }

    fn cni(&self) -> Cni {
        Cni::new(self.dir("bin"), self.dir("conf"), self.dir("cache"))
    }

    /// A fake plugin: records `<name> <command>` in `calls`, its stdin and
    /// its CNI_* environment, then runs `body`.
    fn plugin(&self, name: &str, body: &str) {
        let log = self.dir("log");
        let script = format!(
            "#!/bin/sh\n\
             log='{log}'\n\
             echo \"{name} $CNI_COMMAND\" >> \"$log/calls\"\n\
             cat > \"$log/{name}-$CNI_COMMAND.stdin\"\n\
             env | grep '^CNI_' > \"$log/{name}-$CNI_COMMAND.env\"\n\
             {body}\n",
            log = log.display()
        );
        let path = self.dir("bin").join(name);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn conf(&self, file: &str, v: &Value) -> Vec<u8> {
        let bytes = serde_json::to_vec_pretty(v).unwrap();
        std::fs::write(self.dir("conf").join(file), &bytes).unwrap();
        bytes
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir("log").join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn stdin(&self, name: &str, cmd: &str) -> Value {
        let p = self.dir("log").join(format!("{name}-{cmd}.stdin"));
        serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap()
    }

    fn env(&self, name: &str, cmd: &str) -> HashMap<String, String> {
        let p = self.dir("log").join(format!("{name}-{cmd}.env"));
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cache_file(&self, net: &str, id: &str, ifname: &str) -> PathBuf {
        self.dir("cache")
            .join("results")
            .join(format!("{net}-{id}-{ifname}"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A body that prints a one-interface result on ADD.
fn result_body(ifname: &str, address: &str) -> String {
    format!(
        "[ \"$CNI_COMMAND\" = ADD ] && printf '%s' '{}'\nexit 0",
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [{ "name": ifname, "mac": "0a:00:00:00:00:01", "sandbox": "/x" }],
            "ips": [{ "address": address, "interface": 0 }],
        })
    )
}

fn attachment(id: &str) -> Attachment {
    Attachment {
        container_id: id.to_string(),
        netns: PathBuf::from("/run/netns/test-pod"),
        ifname: "eth0".into(),
        pod_namespace: "default".into(),
        pod_name: "web-1".into(),
        pod_uid: "0b1c-22".into(),
    }
}

fn two_plugin_list() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "net",
        "plugins": [
            { "type": "a", "bridge": "br-test" },
            { "type": "b", "extra": 1 }
        ]
    })
}

/// Two chained fakes: `a` gives 10.1.2.3, `b` (reading `a`'s result as
/// prevResult) reports a different one, so the final result is `b`'s.
fn chain_fixture() -> (Fixture, Vec<u8>) {
    let f = Fixture::new();
    f.plugin("a", &result_body("eth0", "10.1.2.3/24"));
    f.plugin("b", &result_body("eth0", "10.1.2.4/24"));
    let bytes = f.conf("10-net.conflist", &two_plugin_list());
    (f, bytes)
}

#[tokio::test]
async fn add_runs_loopback_then_the_chain_with_the_spec_environment() {
    let (f, _) = chain_fixture();
    let r = f.cni().add(&attachment("ctr1")).await.unwrap();
    assert_eq!(f.calls(), ["knode-loopback ADD", "a ADD", "b ADD"]);
    assert_eq!(r.ips, vec!["10.1.2.4/24".parse().unwrap()]);
    assert_eq!(r.ips[0].addr().to_string(), "10.1.2.4");

    let env = f.env("a", "ADD");
    assert_eq!(env["CNI_COMMAND"], "ADD");
    assert_eq!(env["CNI_CONTAINERID"], "ctr1");
    assert_eq!(env["CNI_NETNS"], "/run/netns/test-pod");
    assert_eq!(env["CNI_IFNAME"], "eth0");
    assert_eq!(env["CNI_PATH"], f.dir("bin").display().to_string());
    assert_eq!(
        env["CNI_ARGS"],
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;\
         K8S_POD_INFRA_CONTAINER_ID=ctr1;K8S_POD_UID=0b1c-22"
    );
    assert_eq!(f.env("knode-loopback", "ADD")["CNI_IFNAME"], "lo");

    // Name and version injected; prevResult only from the second plugin on.
    let a = f.stdin("a", "ADD");
    assert_eq!(a["name"], "net");
    assert_eq!(a["cniVersion"], "1.0.0");
    assert_eq!(a["bridge"], "br-test");
    assert!(a.get("prevResult").is_none(), "{a}");
    let b = f.stdin("b", "ADD");
    assert_eq!(b["prevResult"]["ips"][0]["address"], "10.1.2.3/24");
    assert_eq!(b["extra"], 1);
}

#[tokio::test]
async fn add_caches_the_result_in_libcni_format() {
    let (f, conflist) = chain_fixture();
    let r = f.cni().add(&attachment("ctr1")).await.unwrap();
    let file = f.cache_file("net", "ctr1", "eth0");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["kind"], "cniCacheV1");
    assert_eq!(v["containerId"], "ctr1");
    assert_eq!(v["ifName"], "eth0");
    assert_eq!(v["networkName"], "net");
    assert_eq!(v["netns"], "/run/netns/test-pod");
    assert_eq!(
        base64_decode(v["config"].as_str().unwrap()).unwrap(),
        conflist,
        "the conflist's own bytes"
    );
    assert_eq!(
        v["cniArgs"],
        json!([
            ["IgnoreUnknown", "1"],
            ["K8S_POD_NAMESPACE", "default"],
            ["K8S_POD_NAME", "web-1"],
            ["K8S_POD_INFRA_CONTAINER_ID", "ctr1"],
            ["K8S_POD_UID", "0b1c-22"]
        ])
    );
    assert_eq!(v["result"], r.raw);
    assert!(f.cache_file("cni-loopback", "ctr1", "lo").is_file());

    let cni = f.cni();
    assert_eq!(cni.cached("ctr1", "eth0").unwrap(), Some(r));
    assert_eq!(cni.cached("ctr2", "eth0").unwrap(), None);
    assert_eq!(cni.cached("ctr1", "eth1").unwrap(), None);
    f.cni().add(&attachment("ctr0")).await.unwrap();
    assert_eq!(cni.cached_ids().unwrap(), ["ctr0", "ctr1"]);
}

#[tokio::test]
async fn del_uses_the_cached_config_and_result_even_after_the_conflist_changed() {
    let (f, _) = chain_fixture();
    let cni = f.cni();
    let added = cni.add(&attachment("ctr1")).await.unwrap();
    // The operator replaces the network; DEL must still undo what ADD did.
    f.plugin("c", "exit 0");
    f.conf(
        "10-net.conflist",
        &json!({ "cniVersion": "1.0.0", "name": "other", "plugins": [{ "type": "c" }] }),
    );
    cni.del(&attachment("ctr1")).await.unwrap();
    assert_eq!(
        f.calls()[3..],
        ["b DEL", "a DEL", "knode-loopback DEL"],
        "reverse order, old plugins"
    );
    let b = f.stdin("b", "DEL");
    assert_eq!(b["name"], "net");
    assert_eq!(b["prevResult"], added.raw);
    assert_eq!(f.stdin("a", "DEL")["prevResult"], added.raw);
    assert_eq!(f.stdin("a", "DEL")["bridge"], "br-test");
    assert_eq!(f.env("a", "DEL")["CNI_CONTAINERID"], "ctr1");
    assert_eq!(
        f.stdin("knode-loopback", "DEL")["prevResult"]["ips"][0]["address"],
        "127.0.0.1/8"
    );
    assert!(!f.cache_file("net", "ctr1", "eth0").exists());
    assert!(!f.cache_file("cni-loopback", "ctr1", "lo").exists());
    assert_eq!(cni.cached_ids().unwrap(), Vec::<String>::new());
    assert_eq!(cni.cached("ctr1", "eth0").unwrap(), None);
}

#[tokio::test]
async fn del_without_a_cache_uses_the_current_config_and_no_prev_result() {
    let (f, _) = chain_fixture();
    let cni = f.cni();
    cni.del(&attachment("gone")).await.unwrap();
    assert_eq!(f.calls(), ["b DEL", "a DEL", "knode-loopback DEL"]);
    assert!(f.stdin("b", "DEL").get("prevResult").is_none());
    assert_eq!(f.stdin("b", "DEL")["name"], "net");
    // Twice is fine: deleting what is gone succeeds.
    cni.del(&attachment("gone")).await.unwrap();
}

#[tokio::test]
async fn del_before_0_4_0_gets_no_prev_result() {
    let f = Fixture::new();
    f.plugin("a", &result_body("eth0", "10.1.2.3/24"));
    f.conf(
        "10-old.conflist",
        &json!({ "cniVersion": "0.3.1", "name": "old", "plugins": [{ "type": "a" }] }),
    );
    let cni = f.cni();
    cni.add(&attachment("ctr1")).await.unwrap();
    cni.del(&attachment("ctr1")).await.unwrap();
    assert!(f.stdin("a", "DEL").get("prevResult").is_none());
    assert!(!f.cache_file("old", "ctr1", "eth0").exists());
}

#[tokio::test]
async fn a_failing_plugin_names_itself_and_carries_its_message_and_is_undone() {
    let (f, _) = chain_fixture();
    f.plugin(
        "b",
        r#"if [ "$CNI_COMMAND" = ADD ]; then
  printf '%s' '{"cniVersion":"1.0.0","code":7,"msg":"bad bridge","details":"no such thing"}'
  exit 1
fi"#,
    );
    let cni = f.cni();
    let e = format!("{:#}", cni.add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("CNI ADD b"), "{e}");
    assert!(e.contains("[7] bad bridge: no such thing"), "{e}");
    assert!(e.contains("network \"net\""), "{e}");
    // The spec's rule: DEL every plugin of the list, in reverse.
    assert_eq!(
        f.calls(),
        ["knode-loopback ADD", "a ADD", "b ADD", "b DEL", "a DEL"]
    );
    assert!(!f.cache_file("net", "ctr1", "eth0").exists());
    assert_eq!(cni.cached("ctr1", "eth0").unwrap(), None);
    // What is left (loopback) goes with an ordinary DEL.
    assert_eq!(cni.cached_ids().unwrap(), ["ctr1"]);
    cni.del(&attachment("ctr1")).await.unwrap();
    assert_eq!(cni.cached_ids().unwrap(), Vec::<String>::new());
}

#[tokio::test]
async fn a_plugin_without_error_json_reports_its_stderr() {
    let (f, _) = chain_fixture();
    f.plugin("a", "echo 'cannot open /dev/thing' >&2\nexit 3");
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("CNI ADD a"), "{e}");
    assert!(e.contains("cannot open /dev/thing"), "{e}");
    assert!(e.contains("exit status: 3"), "{e}");
}

#[tokio::test]
async fn a_result_that_is_not_json_is_an_error() {
    let (f, _) = chain_fixture();
    f.plugin("b", "echo not-json");
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("CNI ADD b") && e.contains("not JSON"), "{e}");
}

#[tokio::test]
async fn bad_type_names_are_refused_before_anything_runs() {
    for ty in ["../a", "/bin/sh", "a/b", "..", ""] {
        let f = Fixture::new();
        f.plugin("a", &result_body("eth0", "10.1.2.3/24"));
        f.conf(
            "10-net.conflist",
            &json!({ "cniVersion": "1.0.0", "name": "net", "plugins": [{ "type": "a" }, { "type": ty }] }),
        );
        let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
        assert!(e.contains("plugins[1].type"), "{ty:?}: {e}");
        assert!(f.calls().is_empty(), "{ty:?}: nothing runs");
    }
}

#[tokio::test]
async fn a_missing_plugin_is_reported_before_anything_runs() {
    let (f, _) = chain_fixture();
    std::fs::remove_file(f.dir("bin").join("b")).unwrap();
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("\"b\" not found in"), "{e}");
    assert!(f.calls().is_empty());
}

#[tokio::test]
async fn a_hanging_plugin_is_killed_with_its_children() {
    let (f, _) = chain_fixture();
    f.plugin("a", "sleep 30 &\necho $! > \"$log/sleep.pid\"\nwait");
    let cni = f.cni().with_timeout(Duration::from_millis(500));
    let t = Instant::now();
    let e = format!("{:#}", cni.add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("CNI ADD a") && e.contains("killed"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let pid = std::fs::read_to_string(f.dir("log").join("sleep.pid")).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie waiting for a reaper: either way, not sleeping.
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        let state = state.rsplit(") ").next().unwrap_or("").chars().next();
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the plugin's child still runs: {state:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn check_runs_the_chain_with_the_cached_result() {
    let (f, _) = chain_fixture();
    let cni = f.cni();
    let e = format!("{:#}", cni.check(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("no cached result"), "{e}");
    let added = cni.add(&attachment("ctr1")).await.unwrap();
    cni.check(&attachment("ctr1")).await.unwrap();
    assert_eq!(f.calls()[3..], ["a CHECK", "b CHECK"]);
    assert_eq!(f.stdin("a", "CHECK")["prevResult"], added.raw);
    assert_eq!(f.stdin("b", "CHECK")["prevResult"], added.raw);

    f.plugin(
        "b",
        r#"printf '%s' '{"code":105,"msg":"veth gone"}'; exit 1"#,
    );
    let e = format!("{:#}", cni.check(&attachment("ctr1")).await.unwrap_err());
    assert!(
        e.contains("CNI CHECK b") && e.contains("[105] veth gone"),
        "{e}"
    );
}

#[tokio::test]
async fn check_is_skipped_with_disable_check() {
    let (f, _) = chain_fixture();
    let mut list = two_plugin_list();
    list["disableCheck"] = json!(true);
    f.conf("10-net.conflist", &list);
    let cni = f.cni();
    cni.add(&attachment("ctr1")).await.unwrap();
    cni.check(&attachment("ctr1")).await.unwrap();
    assert_eq!(f.calls().len(), 3, "no CHECK ran");
}

#[tokio::test]
async fn the_first_config_file_by_name_wins_and_a_single_conf_is_wrapped() {
    let f = Fixture::new();
    f.plugin("a", &result_body("eth0", "10.1.2.3/24"));
    f.plugin("b", &result_body("eth0", "10.1.2.4/24"));
    std::fs::write(f.dir("conf").join("01-notes.txt"), "not a config").unwrap();
    std::fs::create_dir(f.dir("conf").join("05-dir.conf")).unwrap();
    f.conf(
        "10-single.conf",
        &json!({ "cniVersion": "1.0.0", "name": "single", "type": "a", "k": "v" }),
    );
    f.conf("20-net.conflist", &two_plugin_list());
    let r = f.cni().add(&attachment("ctr1")).await.unwrap();
    assert_eq!(f.calls(), ["knode-loopback ADD", "a ADD"]);
    assert_eq!(r.ips[0].to_string(), "10.1.2.3/24");
    assert_eq!(f.stdin("a", "ADD")["k"], "v");
    let v: Value =
        serde_json::from_slice(&std::fs::read(f.cache_file("single", "ctr1", "eth0")).unwrap())
            .unwrap();
    let cached: Value =
        serde_json::from_slice(&base64_decode(v["config"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(cached["name"], "single");
    assert_eq!(cached["plugins"][0]["type"], "a");
}

#[tokio::test]
async fn a_broken_first_config_is_an_error_naming_the_file_and_field() {
    let (f, _) = chain_fixture();
    std::fs::write(f.dir("conf").join("00-broken.conflist"), "{ nope").unwrap();
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(
        e.contains("00-broken.conflist") && e.contains("invalid JSON"),
        "{e}"
    );
    f.conf(
        "00-broken.conflist",
        &json!({ "cniVersion": "1.0.0", "name": "bad name!", "plugins": [{ "type": "a" }] }),
    );
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("name:"), "{e}");
    f.conf(
        "00-broken.conflist",
        &json!({ "cniVersion": "one", "name": "n", "plugins": [{ "type": "a" }] }),
    );
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("cniVersion"), "{e}");
    assert!(f.calls().is_empty());

    std::fs::remove_file(f.dir("conf").join("00-broken.conflist")).unwrap();
    std::fs::remove_file(f.dir("conf").join("10-net.conflist")).unwrap();
    let e = format!("{:#}", f.cni().add(&attachment("ctr1")).await.unwrap_err());
    assert!(e.contains("no CNI network config"), "{e}");
}

#[tokio::test]
async fn the_reference_loopback_is_used_when_ours_is_absent() {
    let (f, _) = chain_fixture();
    std::fs::remove_file(f.dir("bin").join("knode-loopback")).unwrap();
    f.plugin("loopback", &result_body("lo", "127.0.0.1/8"));
    f.cni().add(&attachment("ctr1")).await.unwrap();
    assert_eq!(f.calls()[0], "loopback ADD");
}

#[tokio::test]
async fn bad_attachments_are_refused_naming_the_field() {
    let (f, _) = chain_fixture();
    type Edit = fn(&mut Attachment);
    let cases: [(&str, Edit); 6] = [
        ("pod_name", |a| a.pod_name = "a;b".into()),
        ("pod_namespace", |a| a.pod_namespace = "x=y".into()),
        ("pod_uid", |a| a.pod_uid = "u\0".into()),
        ("container_id", |a| a.container_id = "../x".into()),
        ("ifname", |a| a.ifname = "a-very-long-ifname".into()),
        ("ifname", |a| a.ifname = "lo".into()),
    ];
    for (field, edit) in cases {
        let mut a = attachment("ctr1");
        edit(&mut a);
        let e = format!("{:#}", f.cni().add(&a).await.unwrap_err());
        assert!(e.starts_with(field), "{field}: {e}");
        let e = format!("{:#}", f.cni().del(&a).await.unwrap_err());
        assert!(e.starts_with(field), "{field}: {e}");
    }
    let mut a = attachment("ctr1");
    a.netns = PathBuf::new();
    let e = format!("{:#}", f.cni().add(&a).await.unwrap_err());
    assert!(e.starts_with("netns"), "{e}");
    assert!(f.calls().is_empty());
}

#[test]
fn ips_are_those_of_the_pod_interface() {
    let raw = json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            { "name": "cni0" }, { "name": "veth1" }, { "name": "eth0", "sandbox": "/run/netns/p" }
        ],
        "ips": [
            { "address": "10.9.9.1/24", "interface": 0 },
            { "address": "10.0.0.5/24", "interface": 2 },
            { "address": "fd00::5/64", "interface": 2 },
            { "address": "10.0.0.6/24" }
        ]
    });
    let r = AddResult::from_result(raw, "eth0");
    let ips: Vec<String> = r.ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, ["10.0.0.5/24", "fd00::5/64", "10.0.0.6/24"]);
    let old = AddResult::from_result(json!({ "ip4": { "ip": "10.0.0.7/16" } }), "eth0");
    assert_eq!(old.ips[0].to_string(), "10.0.0.7/16");
}

#[test]
fn default_conflist_is_written_once_and_never_over_an_existing_config() {
    let f = Fixture::new();
    let conf = f.dir("conf").join("sub");
    let net = |subnet| PodNetwork {
        subnet,
        subnet6: None,
        mtu: None,
        ip_masq: true,
    };
    let written = ensure_default_conflist(&conf, &net("10.244.3.0/24")).unwrap();
    assert_eq!(written, Some(conf.join("10-knode.conflist")));
    let list = NetworkList::load(&conf).unwrap();
    assert_eq!(
        (list.name.as_str(), list.cni_version.as_str()),
        ("knode", "1.0.0")
    );
    let v: Value = serde_json::from_slice(&list.bytes).unwrap();
    let p = &v["plugins"][0];
    assert_eq!(p["type"], "knode-bridge");
    assert_eq!(p["bridge"], "cni0");
    assert_eq!(
        (
            p["isGateway"].clone(),
            p["ipMasq"].clone(),
            p["hairpinMode"].clone()
        ),
        (json!(true), json!(true), json!(true))
    );
    assert_eq!(p["ipam"]["type"], "knode-host-local");
    assert_eq!(
        p["ipam"]["ranges"],
        json!([[{ "subnet": "10.244.3.0/24" }]])
    );
    assert_eq!(p["ipam"]["routes"], json!([{ "dst": "0.0.0.0/0" }]));
    assert_eq!(
        ensure_default_conflist(&conf, &net("10.244.3.0/24")).unwrap(),
        None
    );
    // Its own file follows a new lease and the overlay's MTU.
    let overlay = PodNetwork {
        subnet: "10.244.9.0/24",
        subnet6: None,
        mtu: Some(1450),
        ip_masq: false,
    };
    assert!(ensure_default_conflist(&conf, &overlay).unwrap().is_some());
    let v: Value = serde_json::from_slice(&NetworkList::load(&conf).unwrap().bytes).unwrap();
    let p = &v["plugins"][0];
    assert_eq!(
        p["ipam"]["ranges"],
        json!([[{ "subnet": "10.244.9.0/24" }]])
    );
    assert_eq!(
        (p["mtu"].clone(), p["ipMasq"].clone()),
        (json!(1450), json!(false))
    );

    // A dual-stack lease: one range set per family, a default route each,
    // and the file is still the agent's own (rewritten as the lease moves).
    let dual = PodNetwork {
        subnet6: Some("fd00:10:244:9::/64"),
        ..overlay
    };
    assert!(ensure_default_conflist(&conf, &dual).unwrap().is_some());
    let v: Value = serde_json::from_slice(&NetworkList::load(&conf).unwrap().bytes).unwrap();
    let p = &v["plugins"][0];
    assert_eq!(
        p["ipam"]["ranges"],
        json!([[{ "subnet": "10.244.9.0/24" }], [{ "subnet": "fd00:10:244:9::/64" }]])
    );
    assert_eq!(
        p["ipam"]["routes"],
        json!([{ "dst": "0.0.0.0/0" }, { "dst": "::/0" }])
    );
    assert_eq!(ensure_default_conflist(&conf, &dual).unwrap(), None);
    assert!(ensure_default_conflist(&conf, &overlay).unwrap().is_some());

    // An operator's edit of that file makes it theirs: it is never rewritten.
    let edited = f.dir("conf").join("edited");
    ensure_default_conflist(&edited, &net("10.244.3.0/24")).unwrap();
    let file = edited.join("10-knode.conflist");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    v["plugins"][0]["ipam"]["dataDir"] = json!("/srv/ipam");
    std::fs::write(&file, v.to_string()).unwrap();
    assert_eq!(
        ensure_default_conflist(&edited, &net("10.244.7.0/24")).unwrap(),
        None
    );
    let kept: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(kept, v);

    let other = f.dir("conf").join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("99-mine.conf"), "{}").unwrap();
    assert_eq!(
        ensure_default_conflist(&other, &net("10.244.3.0/24")).unwrap(),
        None
    );
    assert!(!other.join("10-knode.conflist").exists());

    let v6 = f.dir("conf").join("v6");
    ensure_default_conflist(&v6, &net("fd00:10::/64")).unwrap();
    let v: Value = serde_json::from_slice(&NetworkList::load(&v6).unwrap().bytes).unwrap();
    assert_eq!(
        v["plugins"][0]["ipam"]["routes"],
        json!([{ "dst": "::/0" }])
    );

    for bad in ["10.244.0.0", "banana/24", "10.244.0.0/33", ""] {
        let e = ensure_default_conflist(&f.dir("conf").join("bad"), &net(bad)).unwrap_err();
        assert!(e.to_string().starts_with("subnet:"), "{bad}: {e}");
    }
}

#[test]
fn base64_matches_go() {
    let cases = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, enc) in cases {
        assert_eq!(base64_encode(plain.as_bytes()), enc);
        assert_eq!(base64_decode(enc).unwrap(), plain.as_bytes());
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(base64_decode(&base64_encode(&all)).unwrap(), all);
    for bad in ["Zm9", "Zg=a", "Z===", "Zg==Zg==", "Zm9v!A=="] {
        assert_eq!(base64_decode(bad), None, "{bad}");
    }
}

#[test]
fn plugin_types_must_be_plain_file_names() {
    for ok in ["bridge", "knode-bridge", "a.b"] {
        conf::check_type(ok).unwrap();
    }
    for bad in ["", ".", "..", "a/b", "/usr/bin/x", "a\0b"] {
        assert!(conf::check_type(bad).is_err(), "{bad:?}");
    }
}
