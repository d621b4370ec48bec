//! OCI runtime specs for a pod's pause and app containers, built the way
//! containerd's CRI plugin builds them (default mounts, the docker default
//! capabilities, masked /proc paths, namespaces joined through the pause
//! process) from the Pod, the image config and what the agent prepared.
//! Pure apart from reading three host facts; it creates nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use oci_spec::image::{Config as ImageConfig, ImageConfiguration};
use oci_spec::runtime::{
    Capabilities, Linux, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxMemory,
    LinuxNamespace, LinuxNamespaceType, LinuxResources, Mount as OciMount, Process, Root, Spec,
    User as OciUser,
};

mod cgroups;
pub mod expand;
pub mod mountinfo;
pub use controlplane::quantity;
pub use expand::expand;
pub mod resources;
mod seccomp;
pub mod security;
#[cfg(test)]
mod tests;

pub use cgroups::{cgroups_path, remove_pod_cgroups};

/// The sysctls a pod may set (kubelet's safe set; kubelet refuses the
/// others unless an operator allows them).
pub const SAFE_SYSCTLS: [&str; 13] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_syn_retries",
];

/// The PATH a process gets unless its image sets one (containerd's).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotations the CRI plugin puts on its specs; tools that read them
/// (and operators) understand ours too.
pub mod annotations {
    /// `sandbox` (the pause container) or `container`.
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
    pub const CONTAINER_TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
}

/// The pod's own files on the host, bind-mounted into every container
/// (made by `pods::files`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFiles {
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
    pub hostname: PathBuf,
    /// A tmpfs for /dev/shm, shared by the pod's containers.
    pub shm: PathBuf,
}

/// What the pause container's spec is made from.
pub struct SandboxParams<'a> {
    pub pod: &'a Pod,
    pub image: &'a ImageConfiguration,
    /// The pinned network namespace the pause container joins.
    pub netns: &'a Path,
    pub hostname: &'a str,
    pub files: &'a PodFiles,
    pub cgroups_path: String,
    pub policy: &'a NodePolicy,
}

/// What this node allows pods beyond the defaults (the agent's config).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePolicy {
    /// `securityContext.privileged: true` runs (`allow-privileged`);
    /// otherwise it is refused.
    pub allow_privileged: bool,
    /// Where `Localhost` seccomp profiles are read from (kubelet's
    /// `<root-dir>/seccomp`); `None` refuses them.
    pub seccomp_root: Option<PathBuf>,
}

/// A bind mount of a host path (a volume) into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// What an app container's spec is made from.
pub struct ContainerParams<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfiguration,
    /// The pause process, whose namespaces the container joins.
    pub sandbox_pid: u32,
    /// The container's resolved environment (`pods::env`).
    pub env: &'a [(String, String)],
    /// Volume mounts (`pods::volumes::mounts_for`).
    pub mounts: &'a [Mount],
    pub files: &'a PodFiles,
    pub cgroups_path: String,
    pub policy: &'a NodePolicy,
}

/// A pod that cannot be run as written: the field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Path of the offending field (`spec.containers[1].resources.limits.memory`).
    pub field: String,
    pub message: String,
}

impl SpecError {
    /// An error about `field` (empty when it is not about one field).
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> SpecError {
        SpecError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for SpecError {}

/// Facts about this host that shape a spec. Read per spec (cheap), passed
/// explicitly so tests can pin them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Host {
    /// The agent's own oom_score_adj: without CAP_SYS_RESOURCE a container
    /// cannot get a lower one (runc fails), so every value is clamped here.
    pub oom_floor: i32,
    /// Node memory in bytes, for the Burstable OOM score.
    pub memory_capacity: i64,
    /// /sys/fs/cgroup is cgroup v2: containers get a cgroup namespace.
    pub cgroup2: bool,
}

impl Host {
    pub(crate) fn read() -> Host {
        let oom_floor = std::fs::read_to_string("/proc/self/oom_score_adj")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let memory_capacity = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| mem_total(&m))
            .unwrap_or(i64::MAX);
        let cgroup2 = nix::sys::statfs::statfs("/sys/fs/cgroup")
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        Host {
            oom_floor,
            memory_capacity,
            cgroup2,
        }
    }
}

/// `MemTotal` of /proc/meminfo, in bytes.
pub fn mem_total(meminfo: &str) -> Option<i64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// True for a pod uid that is safe as one path component (and in a
/// cgroup path): letters, digits, `-`, `_`, `.`, not `.`/`..`.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid != "."
        && uid != ".."
        && uid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// The pod's hostname as kubelet derives it: `spec.hostname`, else the pod
/// name cut to 63 characters (without a trailing `-` or `.`).
pub fn pod_hostname(pod: &Pod) -> String {
    if let Some(h) = pod.spec.as_ref().and_then(|s| s.hostname.as_deref()) {
        if !h.is_empty() {
            return h.to_string();
        }
    }
    truncate_hostname(pod.metadata.name.as_deref().unwrap_or_default())
}

/// kubelet's truncatePodHostnameIfNeeded: at most 63 characters (the
/// kernel's limit is 64), not ending in `-` or `.`.
fn truncate_hostname(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let mut end = 63;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches(['-', '.']).to_string()
}

/// The spec of the pod's pause container.
pub fn sandbox_spec(p: &SandboxParams) -> Result<Spec, SpecError> {
    sandbox_spec_on(p, &Host::read())
}

/// The spec of one app container.
pub fn container_spec(p: &ContainerParams) -> Result<Spec, SpecError> {
    container_spec_on(p, &Host::read())
}

/// The pod-wide facts both specs need.
struct PodFacts<'a> {
    spec: &'a PodSpec,
    uid: &'a str,
    name: &'a str,
    namespace: &'a str,
    host_network: bool,
    host_pid: bool,
    host_ipc: bool,
}

fn pod_facts(pod: &Pod) -> Result<PodFacts<'_>, SpecError> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| SpecError::new("spec", "missing"))?;
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if !valid_uid(uid) {
        return Err(SpecError::new(
            "metadata.uid",
            format!("{uid:?} is not a valid pod uid"),
        ));
    }
    Ok(PodFacts {
        spec,
        uid,
        name: pod.metadata.name.as_deref().unwrap_or_default(),
        namespace: pod.metadata.namespace.as_deref().unwrap_or("default"),
        host_network: spec.host_network == Some(true),
        host_pid: spec.host_pid == Some(true),
        host_ipc: spec.host_ipc == Some(true),
    })
}

fn image_config(image: &ImageConfiguration) -> ImageConfig {
    image.config().clone().unwrap_or_default()
}

pub(crate) fn sandbox_spec_on(p: &SandboxParams, host: &Host) -> Result<Spec, SpecError> {
    let pod = pod_facts(p.pod)?;
    let img = image_config(p.image);
    let psc = pod.spec.security_context.as_ref();

    let args: Vec<String> = img
        .entrypoint()
        .iter()
        .flatten()
        .chain(img.cmd().iter().flatten())
        .cloned()
        .collect();
    if args.is_empty() {
        return Err(SpecError::new(
            "",
            "the pause image has neither an Entrypoint nor a Cmd",
        ));
    }
    let user = security::user(psc, None, img.user().as_deref(), "spec", pod.name, None)?;
    let mut env = Env::default();
    env.set(DEFAULT_PATH.to_string());
    for e in img.env().iter().flatten() {
        env.set(e.clone());
    }
    let mut process = process(
        user,
        args,
        env.into_vec(),
        cwd(None, &img),
        security::capabilities(None, "spec")?,
        host.oom_floor.max(resources::SANDBOX_OOM),
    );
    // The pause process never needs to gain privileges.
    process.set_no_new_privileges(Some(true));

    let extra = vec![
        bind(&p.files.shm, "/dev/shm", &["rbind", "ro"]),
        bind(&p.files.resolv_conf, "/etc/resolv.conf", &["rbind", "ro"]),
    ];
    let mounts = assemble_mounts(default_mounts(), extra);

    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if !pod.host_pid {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    if !pod.host_ipc {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None));
    }
    if !pod.host_network {
        namespaces.push(namespace(LinuxNamespaceType::Uts, None));
        namespaces.push(namespace(
            LinuxNamespaceType::Network,
            Some(p.netns.to_path_buf()),
        ));
    }
    if host.cgroup2 {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }

    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(resources::SANDBOX_SHARES));
    let mut res = LinuxResources::default();
    res.set_devices(Some(vec![deny_all_devices()]));
    res.set_cpu(Some(cpu));

    let mut sysctl = HashMap::new();
    for (i, s) in psc
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        // `net/ipv4/tcp_syncookies` is the same as `net.ipv4.tcp_syncookies`.
        let name = if s.name.contains('/') {
            s.name
                .chars()
                .map(|c| match c {
                    '/' => '.',
                    '.' => '/',
                    c => c,
                })
                .collect()
        } else {
            s.name.clone()
        };
        if !SAFE_SYSCTLS.contains(&name.as_str()) {
            return Err(SpecError::new(
                format!("spec.securityContext.sysctls[{i}].name"),
                format!(
                    "{:?} is not allowed on this node (only kubelet's safe sysctls: {})",
                    s.name,
                    SAFE_SYSCTLS.join(", ")
                ),
            ));
        }
        sysctl.insert(name, s.value.clone());
    }

    let mut linux = linux(p.cgroups_path.clone(), namespaces, res, true);
    if !sysctl.is_empty() {
        linux.set_sysctl(Some(sysctl));
    }
    linux.set_seccomp(seccomp::profile(
        psc.and_then(|s| s.seccomp_profile.as_ref()),
        "spec.securityContext.seccompProfile",
        &security::capabilities(None, "spec")?,
        p.policy.seccomp_root.as_deref(),
    )?);

    let mut ann = pod_annotations(&pod);
    ann.insert(
        annotations::CONTAINER_TYPE.into(),
        annotations::CONTAINER_TYPE_SANDBOX.into(),
    );

    let mut spec = base_spec(process, mounts, linux, ann, true);
    spec.set_hostname((!pod.host_network).then(|| truncate_hostname(p.hostname)));
    Ok(spec)
}

pub(crate) fn container_spec_on(p: &ContainerParams, host: &Host) -> Result<Spec, SpecError> {
    let pod = pod_facts(p.pod)?;
    let c = p.container;
    let field = container_field(pod.spec, c);
    let img = image_config(p.image);
    let psc = pod.spec.security_context.as_ref();
    let sc = c.security_context.as_ref();

    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    if privileged && !p.policy.allow_privileged {
        return Err(SpecError::new(
            format!("{field}.securityContext.privileged"),
            "privileged containers are not allowed on this node (agent config allow-privileged)",
        ));
    }
    if privileged && sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        return Err(SpecError::new(
            format!("{field}.securityContext.allowPrivilegeEscalation"),
            "cannot be false when privileged is true",
        ));
    }
    let unmasked = match sc.and_then(|s| s.proc_mount.as_deref()) {
        None | Some("Default") => false,
        Some("Unmasked") => true,
        Some(other) => {
            return Err(SpecError::new(
                format!("{field}.securityContext.procMount"),
                format!("{other:?} is not Default or Unmasked"),
            ))
        }
    };
    if p.sandbox_pid == 0 {
        return Err(SpecError::new("", "the pod's pause process is not running"));
    }

    let args = process_args(c, &img, &field, p.env)?;
    let mut env = Env::default();
    env.set(DEFAULT_PATH.to_string());
    let hostname = if pod.host_network {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    } else {
        pod_hostname(p.pod)
    };
    env.set(format!("HOSTNAME={hostname}"));
    for e in img.env().iter().flatten() {
        env.set(e.clone());
    }
    for (k, v) in p.env {
        env.set(format!("{k}={v}"));
    }
    let working_dir = c.working_dir.as_deref().filter(|w| !w.is_empty());
    if let Some(w) = working_dir {
        if !w.starts_with('/') {
            return Err(SpecError::new(
                format!("{field}.workingDir"),
                format!("{w:?} must be an absolute path"),
            ));
        }
    }
    let user = security::user(
        psc,
        sc,
        img.user().as_deref(),
        &field,
        pod.name,
        Some(&c.name),
    )?;
    // A privileged container gets every capability, whatever add/drop say
    // (containerd's WithPrivileged).
    let caps = match privileged {
        true => security::all_capabilities(),
        false => security::capabilities(sc, &field)?,
    };
    let oom = resources::oom_score_adj(p.pod, c, &field, host.memory_capacity)?;
    let mut process = process(
        user,
        args,
        env.into_vec(),
        cwd(working_dir, &img),
        caps.clone(),
        oom.max(host.oom_floor),
    );
    process.set_no_new_privileges(Some(
        sc.and_then(|s| s.allow_privilege_escalation) == Some(false),
    ));

    let read_only_root = sc.and_then(|s| s.read_only_root_filesystem) == Some(true);
    let mut mounts = container_mounts(p, read_only_root, &field)?;
    if privileged {
        // /sys and the cgroup view writable, as the CRI plugin mounts them.
        for m in &mut mounts {
            if matches!(m.typ().as_deref(), Some("sysfs") | Some("cgroup")) {
                let opts = m.options().clone().unwrap_or_default();
                m.set_options(Some(opts.into_iter().filter(|o| o != "ro").collect()));
            }
        }
    }

    let ns_path = |kind: &str| Some(PathBuf::from(format!("/proc/{}/ns/{kind}", p.sandbox_pid)));
    let mut namespaces = vec![
        namespace(LinuxNamespaceType::Mount, None),
        namespace(LinuxNamespaceType::Network, ns_path("net")),
        namespace(LinuxNamespaceType::Ipc, ns_path("ipc")),
        namespace(LinuxNamespaceType::Uts, ns_path("uts")),
    ];
    if pod.host_pid {
        // The pause container is in the host's PID namespace; so is this.
    } else if pod.spec.share_process_namespace == Some(true) {
        namespaces.push(namespace(LinuxNamespaceType::Pid, ns_path("pid")));
    } else {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    if host.cgroup2 {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }

    let limits = resources::limits(c, &field)?;
    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(limits.shares));
    if let Some(q) = limits.quota {
        cpu.set_quota(Some(q));
        cpu.set_period(Some(resources::CPU_PERIOD));
    }
    let mut res = LinuxResources::default();
    res.set_devices(Some(vec![match privileged {
        true => security::allow_all_devices(),
        false => deny_all_devices(),
    }]));
    res.set_cpu(Some(cpu));
    if let Some(m) = limits.memory {
        let mut mem = LinuxMemory::default();
        mem.set_limit(Some(m));
        res.set_memory(Some(mem));
    }

    let mut linux = linux(
        p.cgroups_path.clone(),
        namespaces,
        res,
        !unmasked && !privileged,
    );
    if privileged {
        linux.set_devices(Some(security::host_devices()));
    }
    let seccomp_profile = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|s| (s, format!("{field}.securityContext.seccompProfile")))
        .or_else(|| {
            psc.and_then(|s| s.seccomp_profile.as_ref())
                .map(|s| (s, "spec.securityContext.seccompProfile".to_string()))
        });
    linux.set_seccomp(match seccomp_profile {
        // Privileged containers run unconfined (the CRI plugin's rule).
        _ if privileged => None,
        Some((s, f)) => seccomp::profile(Some(s), &f, &caps, p.policy.seccomp_root.as_deref())?,
        None => None,
    });

    let mut ann = pod_annotations(&pod);
    ann.insert(
        annotations::CONTAINER_TYPE.into(),
        annotations::CONTAINER_TYPE_CONTAINER.into(),
    );
    ann.insert(annotations::CONTAINER_NAME.into(), c.name.clone());
    Ok(base_spec(process, mounts, linux, ann, read_only_root))
}

/// `spec.containers[i]` (or `spec.initContainers[i]`) of `c`, by name.
fn container_field(spec: &PodSpec, c: &Container) -> String {
    if let Some(i) = spec.containers.iter().position(|x| x.name == c.name) {
        return format!("spec.containers[{i}]");
    }
    let init = spec.init_containers.as_deref().unwrap_or_default();
    if let Some(i) = init.iter().position(|x| x.name == c.name) {
        return format!("spec.initContainers[{i}]");
    }
    format!("spec.containers[{:?}]", c.name)
}

/// Kubernetes' command rules: `command` replaces the image's Entrypoint
/// and then the image's Cmd is dropped; `args` replaces Cmd. Both expand
/// `$(VAR)` from the container's environment, as kubelet does.
fn process_args(
    c: &Container,
    img: &ImageConfig,
    field: &str,
    env: &[(String, String)],
) -> Result<Vec<String>, SpecError> {
    let vars: HashMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let lookup = |name: &str| vars.get(name).map(|v| v.to_string());
    let expand = |list: Option<&Vec<String>>| -> Vec<String> {
        list.into_iter()
            .flatten()
            .map(|s| expand(s, &lookup))
            .collect()
    };
    let mut command = expand(c.command.as_ref());
    let mut args = expand(c.args.as_ref());
    if command.is_empty() {
        if args.is_empty() {
            args = img.cmd().clone().unwrap_or_default();
        }
        let entrypoint = img.entrypoint().clone().unwrap_or_default();
        // An image built with `ENTRYPOINT [""]` has no entrypoint.
        if entrypoint != [""] {
            command = entrypoint;
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(SpecError::new(
            format!("{field}.command"),
            "no command specified: neither the pod nor the image gives one",
        ));
    }
    Ok(command)
}

fn cwd(working_dir: Option<&str>, img: &ImageConfig) -> PathBuf {
    if let Some(w) = working_dir {
        return PathBuf::from(w);
    }
    match img.working_dir().as_deref() {
        Some(w) if !w.is_empty() => {
            if w.starts_with('/') {
                PathBuf::from(w)
            } else {
                PathBuf::from("/").join(w)
            }
        }
        _ => PathBuf::from("/"),
    }
}

/// An environment where a later `KEY=value` replaces an earlier one in
/// place (containerd's replaceOrAppendEnvValues).
#[derive(Default)]
struct Env {
    list: Vec<String>,
    index: HashMap<String, usize>,
}

impl Env {
    fn set(&mut self, entry: String) {
        let key = entry.split('=').next().unwrap_or_default().to_string();
        match self.index.get(&key) {
            Some(&i) => self.list[i] = entry,
            None => {
                self.index.insert(key, self.list.len());
                self.list.push(entry);
            }
        }
    }

    fn into_vec(self) -> Vec<String> {
        self.list
    }
}

fn process(
    user: security::User,
    args: Vec<String>,
    env: Vec<String>,
    cwd: PathBuf,
    caps: Capabilities,
    oom_score_adj: i32,
) -> Process {
    let mut u = OciUser::default();
    u.set_uid(user.uid);
    u.set_gid(user.gid);
    u.set_additional_gids((!user.additional_gids.is_empty()).then_some(user.additional_gids));
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps));
    // Neither inheritable nor ambient: a non-root process gains nothing
    // across exec (the CRI plugin clears both).
    c.set_inheritable(None);
    c.set_ambient(None);

    let mut p = Process::default();
    p.set_terminal(Some(false));
    p.set_user(u);
    p.set_args(Some(args));
    p.set_env(Some(env));
    p.set_cwd(cwd);
    p.set_capabilities(Some(c));
    // No rlimits: containers inherit the runtime's, as under the CRI plugin.
    p.set_rlimits(None);
    p.set_apparmor_profile(None);
    p.set_selinux_label(None);
    p.set_oom_score_adj(Some(oom_score_adj));
    p
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> LinuxNamespace {
    let mut n = LinuxNamespace::default();
    n.set_typ(typ);
    n.set_path(path);
    n
}

fn deny_all_devices() -> LinuxDeviceCgroup {
    let mut d = LinuxDeviceCgroup::default();
    d.set_allow(false);
    d.set_access(Some("rwm".into()));
    d
}

fn linux(
    cgroups_path: String,
    namespaces: Vec<LinuxNamespace>,
    res: LinuxResources,
    masked: bool,
) -> Linux {
    let mut l = Linux::default();
    l.set_cgroups_path(Some(PathBuf::from(cgroups_path)));
    l.set_namespaces(Some(namespaces));
    l.set_resources(Some(res));
    l.set_devices(None);
    l.set_uid_mappings(None);
    l.set_gid_mappings(None);
    l.set_sysctl(None);
    l.set_seccomp(None);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    if masked {
        l.set_masked_paths(Some(strings(&security::MASKED_PATHS)));
        l.set_readonly_paths(Some(strings(&security::READONLY_PATHS)));
    } else {
        l.set_masked_paths(None);
        l.set_readonly_paths(None);
    }
    l
}

fn pod_annotations(pod: &PodFacts) -> HashMap<String, String> {
    HashMap::from([
        (
            annotations::SANDBOX_ID.to_string(),
            crate::sandbox_id(pod.uid),
        ),
        (annotations::SANDBOX_NAME.to_string(), pod.name.to_string()),
        (
            annotations::SANDBOX_NAMESPACE.to_string(),
            pod.namespace.to_string(),
        ),
        (annotations::SANDBOX_UID.to_string(), pod.uid.to_string()),
    ])
}

fn base_spec(
    process: Process,
    mounts: Vec<OciMount>,
    linux: Linux,
    annotations: HashMap<String, String>,
    read_only_root: bool,
) -> Spec {
    let mut root = Root::default();
    // containerd mounts the snapshot at <bundle>/rootfs.
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(read_only_root));
    let mut s = Spec::default();
    s.set_version("1.0.2-dev".to_string());
    s.set_process(Some(process));
    s.set_root(Some(root));
    s.set_hostname(None);
    s.set_mounts(Some(mounts));
    s.set_linux(Some(linux));
    s.set_annotations(Some(annotations));
    s
}

fn oci_mount(dst: &str, typ: &str, src: &str, opts: &[&str]) -> OciMount {
    let mut m = OciMount::default();
    m.set_destination(PathBuf::from(dst));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(PathBuf::from(src)));
    m.set_options(Some(opts.iter().map(|s| s.to_string()).collect()));
    m
}

fn bind(src: &Path, dst: &str, opts: &[&str]) -> OciMount {
    let mut m = oci_mount(dst, "bind", "", opts);
    m.set_source(Some(src.to_path_buf()));
    m
}

/// containerd's default mounts, without /run (the CRI plugin drops it).
fn default_mounts() -> Vec<OciMount> {
    vec![
        oci_mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        oci_mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        oci_mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        oci_mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        oci_mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        oci_mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
    ]
}

/// Normalizes a container path for comparison (`/a//b/` → `/a/b`).
fn clean(path: &str) -> String {
    let mut out = String::new();
    for c in Path::new(path).components() {
        if let Component::Normal(n) = c {
            out.push('/');
            out.push_str(&n.to_string_lossy());
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The CRI plugin's WithMounts: the default mounts no supplied mount
/// replaces (and nothing under /dev if /dev itself is supplied), then the
/// supplied ones, shallow paths first so none hides a deeper one.
fn assemble_mounts(defaults: Vec<OciMount>, mut extra: Vec<OciMount>) -> Vec<OciMount> {
    let dst = |m: &OciMount| clean(&m.destination().to_string_lossy());
    let supplied: HashSet<String> = extra.iter().map(dst).collect();
    let dev_supplied = supplied.contains("/dev");
    extra.sort_by_key(|m| Path::new(&dst(m)).components().count());
    defaults
        .into_iter()
        .filter(|m| {
            let d = dst(m);
            let under_supplied_dev = dev_supplied && d.starts_with("/dev/");
            !supplied.contains(&d) && !under_supplied_dev
        })
        .chain(extra)
        .collect()
}

/// The app container's mounts: defaults, a read-only cgroup view, the
/// pod's files and /dev/shm unless a volume takes their place, volumes.
fn container_mounts(
    p: &ContainerParams,
    read_only_root: bool,
    field: &str,
) -> Result<Vec<OciMount>, SpecError> {
    let mut defaults = default_mounts();
    defaults.push(oci_mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", "ro"],
    ));
    let mut user = HashSet::new();
    let mut extra = Vec::new();
    for m in p.mounts {
        if !m.container_path.starts_with('/') {
            return Err(SpecError::new(
                format!("{field}.volumeMounts"),
                format!("mount path {:?} must be absolute", m.container_path),
            ));
        }
        if !user.insert(clean(&m.container_path)) {
            return Err(SpecError::new(
                format!("{field}.volumeMounts"),
                format!("{:?} is mounted twice", m.container_path),
            ));
        }
        let rw = if m.read_only { "ro" } else { "rw" };
        extra.push(bind(
            &m.host_path,
            &m.container_path,
            &["rbind", "rprivate", rw],
        ));
    }
    let files_rw = if read_only_root { "ro" } else { "rw" };
    for (dst, src) in [
        ("/etc/hostname", &p.files.hostname),
        ("/etc/hosts", &p.files.hosts),
        ("/etc/resolv.conf", &p.files.resolv_conf),
    ] {
        if !user.contains(dst) {
            extra.push(bind(src, dst, &["rbind", "rprivate", files_rw]));
        }
    }
    if !user.contains("/dev/shm") {
        extra.push(bind(&p.files.shm, "/dev/shm", &["rbind", "rprivate", "rw"]));
    }
    Ok(assemble_mounts(defaults, extra))
}
