//! The pod's own files under `<run_dir>/pods/<uid>/`: hosts, resolv.conf,
//! hostname and a tmpfs for /dev/shm, made as kubelet and the CRI plugin
//! make them. Files are rewritten in place, never renamed over, so the
//! containers that bind-mount them see the new content.

use std::fmt;
use std::fs;
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use nix::mount::{MntFlags, MsFlags};

use runtime::spec::{mountinfo, pod_hostname, valid_uid, PodFiles};

/// Size of the pod's /dev/shm (the CRI plugin's defaultShmSize).
pub const SHM_SIZE: u64 = 64 << 20;
/// Where the host's resolver configuration is read.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of real upstream servers, used when
/// /etc/resolv.conf only points at its loopback stub (unreachable from a
/// pod's network namespace).
const RESOLVED_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// At most this many nameservers are used (glibc reads no more).
const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains (kubelet's MaxDNSSearchPaths).
const MAX_SEARCHES: usize = 32;

/// Why the pod's files could not be made.
#[derive(Debug)]
pub enum FilesError {
    /// The pod asks for something invalid (field path and why).
    Invalid { field: String, message: String },
    /// A file system operation failed.
    Io { what: String, source: io::Error },
}

impl fmt::Display for FilesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilesError::Invalid { field, message } => write!(f, "{field}: {message}"),
            FilesError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for FilesError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FilesError::Io { source, .. } => Some(source),
            FilesError::Invalid { .. } => None,
        }
    }
}

pub type Result<T, E = FilesError> = std::result::Result<T, E>;

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> FilesError {
    let what = what.into();
    move |source| FilesError::Io { what, source }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> FilesError {
    FilesError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// `<run_dir>/pods/<uid>`.
pub fn pod_run_dir(run_dir: &Path, uid: &str) -> PathBuf {
    run_dir.join("pods").join(uid)
}

fn checked_uid(pod: &Pod) -> Result<&str> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    if !valid_uid(uid) {
        return Err(invalid(
            "metadata.uid",
            format!("{uid:?} is not a valid pod uid"),
        ));
    }
    Ok(uid)
}

/// Makes (or refreshes) the pod's files. Idempotent: a second call
/// rewrites /etc/hosts with the pod IPs once they are known and leaves the
/// /dev/shm mount alone.
pub fn prepare(config: &crate::Config, pod: &Pod, pod_ips: &[String]) -> Result<PodFiles> {
    let run_dir = &config.run_dir;
    let uid = checked_uid(pod)?;
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let host_ipc = spec.and_then(|s| s.host_ipc) == Some(true);
    let dir = pod_run_dir(run_dir, uid);
    fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;

    let hostname = if host_network {
        read_host_file("/proc/sys/kernel/hostname")?
            .trim()
            .to_string()
    } else {
        pod_hostname(pod)
    };
    let node_hosts = if host_network {
        Some(read_host_file("/etc/hosts")?)
    } else {
        None
    };
    let files = PodFiles {
        hosts: dir.join("hosts"),
        resolv_conf: dir.join("resolv.conf"),
        hostname: dir.join("hostname"),
        shm: if host_ipc {
            PathBuf::from("/dev/shm")
        } else {
            dir.join("shm")
        },
    };
    let hosts = hosts_content(pod, pod_ips, &hostname, node_hosts.as_deref())?;
    let resolv = match &config.dns {
        None => resolv_content(&host_resolv_conf(Path::new(HOST_RESOLV_CONF))?, pod)?,
        Some(dns) if dns.resolv_conf.as_os_str().is_empty() => {
            cluster_resolv_content(None, pod, dns)?
        }
        Some(dns) => cluster_resolv_content(Some(&host_resolv_conf(&dns.resolv_conf)?), pod, dns)?,
    };
    write_in_place(&files.hostname, format!("{hostname}\n").as_bytes())?;
    write_in_place(&files.hosts, hosts.as_bytes())?;
    write_in_place(&files.resolv_conf, resolv.as_bytes())?;
    if !host_ipc {
        mount_shm(&files.shm)?;
    }
    Ok(files)
}

/// Unmounts the pod's /dev/shm and removes its directory. Missing is fine.
pub fn cleanup(run_dir: &Path, uid: &str) -> Result<()> {
    if !valid_uid(uid) {
        return Err(invalid(
            "metadata.uid",
            format!("{uid:?} is not a valid pod uid"),
        ));
    }
    let dir = pod_run_dir(run_dir, uid);
    if !dir.exists() {
        return Ok(());
    }
    unmount_all_under(&dir)?;
    match fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(io_err(format!("remove {}", dir.display()))(e))
        }
        _ => Ok(()),
    }
}

/// Detaches every mount at or below `dir` (deepest first) and checks that
/// none is left, so that removing `dir` never reaches into a file system
/// that is still mounted.
pub(crate) fn unmount_all_under(dir: &Path) -> Result<()> {
    let what = || format!("read the mount table for {}", dir.display());
    for mp in mountinfo::under(dir).map_err(io_err(what()))? {
        match nix::mount::umount2(&mp, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) | Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => return Err(io_err(format!("unmount {}", mp.display()))(e.into())),
        }
    }
    let left = mountinfo::under(dir).map_err(io_err(what()))?;
    if let Some(mp) = left.first() {
        return Err(io_err(format!("unmount {}", mp.display()))(
            io::Error::other("still mounted"),
        ));
    }
    Ok(())
}

fn read_host_file(path: &str) -> Result<String> {
    fs::read_to_string(path).map_err(io_err(format!("read {path}")))
}

/// The host's resolver configuration at `path` (empty if there is none).
fn host_resolv_conf(path: &Path) -> Result<String> {
    let main = match fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
    };
    let servers = parse_resolv(&main).servers;
    let all_loopback = !servers.is_empty()
        && servers
            .iter()
            .all(|s| s.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if all_loopback {
        if let Ok(upstream) = fs::read_to_string(RESOLVED_RESOLV_CONF) {
            return Ok(upstream);
        }
    }
    Ok(main)
}

/// Writes `content` into `path` without replacing the inode (bind mounts
/// keep pointing at it); skips the write when nothing changed.
fn write_in_place(path: &Path, content: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(io_err(format!("open {}", path.display())))?;
    f.write_all(content)
        .map_err(io_err(format!("write {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// True when `path` is the root of a mount (a different device than its
/// parent directory).
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let (a, b) = (nix::sys::stat::stat(path)?, nix::sys::stat::stat(parent)?);
    Ok(a.st_dev != b.st_dev)
}

/// A tmpfs at `shm` (mode 1777, 64 MiB, nosuid/nodev/noexec), unless one is
/// there already.
fn mount_shm(shm: &Path) -> Result<()> {
    let what = || format!("mount the pod's /dev/shm at {}", shm.display());
    fs::create_dir_all(shm).map_err(io_err(what()))?;
    if is_mount_point(shm).map_err(io_err(what()))? {
        return Ok(());
    }
    fs::set_permissions(shm, fs::Permissions::from_mode(0o700)).map_err(io_err(what()))?;
    let data = format!("mode=1777,size={SHM_SIZE}");
    nix::mount::mount(
        Some("shm"),
        shm,
        Some("tmpfs"),
        MsFlags::MS_NOEXEC | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .map_err(|e| io_err(what())(e.into()))
}

/// kubelet's /etc/hosts for a pod: the loopback entries, each of the pod's
/// IPs with its hostname (once known; both families on a dual-stack
/// network, as kubelet writes them), then `hostAliases`. A hostNetwork pod
/// gets the node's file plus its aliases.
pub fn hosts_content(
    pod: &Pod,
    pod_ips: &[String],
    hostname: &str,
    node_hosts: Option<&str>,
) -> Result<String> {
    let mut out = String::new();
    match node_hosts {
        Some(node) => out.push_str(node),
        None => {
            out.push_str(
                "# Kubernetes-managed hosts file.\n\
                 127.0.0.1\tlocalhost\n\
                 ::1\tlocalhost ip6-localhost ip6-loopback\n\
                 fe00::0\tip6-localnet\n\
                 fe00::0\tip6-mcastprefix\n\
                 fe00::1\tip6-allnodes\n\
                 fe00::2\tip6-allrouters\n",
            );
            for ip in pod_ips.iter().filter(|ip| !ip.is_empty()) {
                if ip.parse::<IpAddr>().is_err() {
                    return Err(invalid(
                        "status.podIP",
                        format!("{ip:?} is not an IP address"),
                    ));
                }
                out.push_str(&format!("{ip}\t{hostname}\n"));
            }
        }
    }
    let aliases = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_aliases.as_deref())
        .unwrap_or_default();
    if !aliases.is_empty() {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("\n# Entries added by HostAliases.\n");
        for (i, a) in aliases.iter().enumerate() {
            if a.ip.parse::<IpAddr>().is_err() {
                return Err(invalid(
                    format!("spec.hostAliases[{i}].ip"),
                    format!("{:?} is not an IP address", a.ip),
                ));
            }
            let names = a.hostnames.as_deref().unwrap_or_default();
            for (j, n) in names.iter().enumerate() {
                if !is_dns_token(n) {
                    return Err(invalid(
                        format!("spec.hostAliases[{i}].hostnames[{j}]"),
                        format!("{n:?} is not a host name"),
                    ));
                }
            }
            out.push_str(&format!("{}\t{}\n", a.ip, names.join("\t")));
        }
    }
    Ok(out)
}

/// A name or option that can go on a hosts/resolv.conf line as one token.
fn is_dns_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'#' && b != b';')
}

/// What a resolv.conf says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Resolv {
    servers: Vec<String>,
    searches: Vec<String>,
    options: Vec<String>,
}

/// kubelet's parseResolvConf: `nameserver` lines, the last `search` (or
/// `domain`) line, `options` lines.
fn parse_resolv(text: &str) -> Resolv {
    let mut r = Resolv::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => r.servers.extend(fields.next().map(str::to_string)),
            Some("search") | Some("domain") => r.searches = fields.map(str::to_string).collect(),
            Some("options") => r.options.extend(fields.map(str::to_string)),
            _ => {}
        }
    }
    r
}

fn push_unique(list: &mut Vec<String>, v: String) {
    if !list.contains(&v) {
        list.push(v);
    }
}

/// The pod's resolv.conf. The node runs no cluster DNS, so `ClusterFirst`
/// behaves as `Default` (the host's resolvers), as kubelet does without
/// `--cluster-dns`; `None` starts empty. `dnsConfig` is merged on top:
/// nameservers and searches appended without duplicates, options replaced
/// by name.
/// A pod's resolv.conf with cluster DNS on: `dns::resolvconf` by
/// `dnsPolicy` (ClusterFirst: the cluster nameservers, search
/// `<ns>.svc.<zone> svc.<zone> <zone>` + the host's, `ndots:5`) from the
/// host's file `host` (`None`: no `resolv-conf`). `dnsPolicy` and
/// `dnsConfig` are checked as [`resolv_content`] checks them.
pub fn cluster_resolv_content(
    host: Option<&str>,
    pod: &Pod,
    dns: &crate::ClusterDns,
) -> Result<String> {
    resolv_content(host.unwrap_or_default(), pod)?;
    let parsed = host.map(dns::resolvconf::ResolvConf::parse);
    let node = dns::resolvconf::NodeDns {
        host: parsed.as_ref(),
        cluster_dns: &dns.servers,
        cluster_domain: &dns.domain,
    };
    Ok(dns::resolvconf::pod_resolv_conf_for(pod, &node).render())
}

/// A pod's resolv.conf without cluster DNS: the host's file for every
/// policy but None, with `dnsConfig` merged in.
pub fn resolv_content(host: &str, pod: &Pod) -> Result<String> {
    let spec = pod.spec.as_ref();
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let mut r = match policy {
        "None" => Resolv::default(),
        "Default" | "ClusterFirst" | "ClusterFirstWithHostNet" => parse_resolv(host),
        other => {
            return Err(invalid(
                "spec.dnsPolicy",
                format!("{other:?} is not ClusterFirst, ClusterFirstWithHostNet, Default or None"),
            ))
        }
    };
    let cfg = spec.and_then(|s| s.dns_config.as_ref());
    for (i, ns) in cfg
        .and_then(|c| c.nameservers.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if ns.parse::<IpAddr>().is_err() {
            return Err(invalid(
                format!("spec.dnsConfig.nameservers[{i}]"),
                format!("{ns:?} is not an IP address"),
            ));
        }
        push_unique(&mut r.servers, ns.clone());
    }
    for (i, s) in cfg
        .and_then(|c| c.searches.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if !is_dns_token(s) {
            return Err(invalid(
                format!("spec.dnsConfig.searches[{i}]"),
                format!("{s:?} is not a search domain"),
            ));
        }
        push_unique(&mut r.searches, s.clone());
    }
    for (i, o) in cfg
        .and_then(|c| c.options.as_deref())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let name = o.name.as_deref().unwrap_or_default();
        let value = o.value.as_deref().filter(|v| !v.is_empty());
        let rendered = match value {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        };
        if !is_dns_token(&rendered) || name.contains(':') {
            return Err(invalid(
                format!("spec.dnsConfig.options[{i}]"),
                format!("{rendered:?} is not a resolver option"),
            ));
        }
        r.options.retain(|x| x.split(':').next() != Some(name));
        r.options.push(rendered);
    }
    if policy != "None" && cfg.is_none() && !host.is_empty() {
        // Nothing to merge: the host's file as it is (as the CRI plugin
        // copies it), comments and all.
        return Ok(host.to_string());
    }
    r.servers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    let mut out = String::new();
    if !r.searches.is_empty() {
        out.push_str(&format!("search {}\n", r.searches.join(" ")));
    }
    for s in &r.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !r.options.is_empty() {
        out.push_str(&format!("options {}\n", r.options.join(" ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{HostAlias, PodDNSConfig, PodDNSConfigOption, PodSpec};

    fn pod(spec: PodSpec) -> Pod {
        let mut p = Pod {
            spec: Some(spec),
            ..Default::default()
        };
        p.metadata.name = Some("web".into());
        p.metadata.uid = Some("uid-1".into());
        p
    }

    #[test]
    fn managed_hosts_file() {
        let p = pod(PodSpec {
            host_aliases: Some(vec![HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: Some(vec!["foo.local".into(), "bar".into()]),
            }]),
            ..Default::default()
        });
        let ips = ["10.244.0.5".to_string(), "fd00:10:244::5".to_string()];
        let h = hosts_content(&p, &ips, "web", None).unwrap();
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(
            h.contains("\n10.244.0.5\tweb\nfd00:10:244::5\tweb\n"),
            "{h}"
        );
        assert!(
            h.ends_with("\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar\n"),
            "{h}"
        );
        let before_ip = hosts_content(&pod(PodSpec::default()), &[], "web", None).unwrap();
        assert!(!before_ip.contains("web"));
        assert!(before_ip.ends_with("fe00::2\tip6-allrouters\n"));
    }

    #[test]
    fn host_network_hosts_file_is_the_nodes() {
        let h = hosts_content(
            &pod(PodSpec::default()),
            &["1.2.3.4".to_string()],
            "n",
            Some("127.0.0.1 localhost"),
        )
        .unwrap();
        assert_eq!(h, "127.0.0.1 localhost");
    }

    #[test]
    fn hosts_refuses_injection() {
        let p = pod(PodSpec {
            host_aliases: Some(vec![HostAlias {
                ip: "10.1.2.3".into(),
                hostnames: Some(vec!["a\n6.6.6.6 evil".into()]),
            }]),
            ..Default::default()
        });
        let e = hosts_content(&p, &[], "web", None).unwrap_err().to_string();
        assert!(e.starts_with("spec.hostAliases[0].hostnames[0]: "), "{e}");
        let p = pod(PodSpec {
            host_aliases: Some(vec![HostAlias {
                ip: "nope".into(),
                hostnames: None,
            }]),
            ..Default::default()
        });
        assert!(hosts_content(&p, &[], "w", None)
            .unwrap_err()
            .to_string()
            .starts_with("spec.hostAliases[0].ip"));
        assert!(hosts_content(&pod(PodSpec::default()), &["x\ny".to_string()], "w", None).is_err());
    }

    const HOST: &str = "# generated\nnameserver 192.0.2.1\nnameserver 192.0.2.2\nsearch a.example b.example\noptions ndots:2 edns0\n";

    #[test]
    fn with_cluster_dns_the_policy_decides_the_file() {
        let dns = crate::ClusterDns {
            servers: vec!["10.96.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
            resolv_conf: "/etc/resolv.conf".into(),
        };
        let mut p = pod(PodSpec::default());
        p.metadata.namespace = Some("prod".into());
        assert_eq!(
            cluster_resolv_content(Some(HOST), &p, &dns).unwrap(),
            "search prod.svc.cluster.local svc.cluster.local cluster.local a.example b.example\n\
             nameserver 10.96.0.10\noptions ndots:5\n"
        );
        let mut d = p.clone();
        d.spec.as_mut().unwrap().dns_policy = Some("Default".into());
        let got = cluster_resolv_content(Some(HOST), &d, &dns).unwrap();
        assert!(
            got.contains("nameserver 192.0.2.1\n") && !got.contains("10.96.0.10"),
            "{got}"
        );
        let mut host_net = p.clone();
        host_net.spec.as_mut().unwrap().host_network = Some(true);
        let got = cluster_resolv_content(Some(HOST), &host_net, &dns).unwrap();
        assert!(!got.contains("10.96.0.10"), "{got}");
        host_net.spec.as_mut().unwrap().dns_policy = Some("ClusterFirstWithHostNet".into());
        let got = cluster_resolv_content(Some(HOST), &host_net, &dns).unwrap();
        assert!(got.contains("nameserver 10.96.0.10\n"), "{got}");
        let mut none = p.clone();
        let spec = none.spec.as_mut().unwrap();
        spec.dns_policy = Some("None".into());
        spec.dns_config = Some(PodDNSConfig {
            nameservers: Some(vec!["1.1.1.1".into()]),
            searches: Some(vec!["x.example".into()]),
            options: None,
        });
        assert_eq!(
            cluster_resolv_content(Some(HOST), &none, &dns).unwrap(),
            "search x.example\nnameserver 1.1.1.1\n"
        );
        // Bad input is still refused by name.
        none.spec.as_mut().unwrap().dns_policy = Some("Sometimes".into());
        assert!(cluster_resolv_content(Some(HOST), &none, &dns)
            .unwrap_err()
            .to_string()
            .starts_with("spec.dnsPolicy"));
    }

    #[test]
    fn resolv_default_copies_the_host() {
        assert_eq!(
            resolv_content(HOST, &pod(PodSpec::default())).unwrap(),
            HOST
        );
        let d = pod(PodSpec {
            dns_policy: Some("Default".into()),
            ..Default::default()
        });
        assert_eq!(resolv_content(HOST, &d).unwrap(), HOST);
    }

    #[test]
    fn resolv_merges_dns_config() {
        let p = pod(PodSpec {
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["192.0.2.2".into(), "192.0.2.9".into()]),
                searches: Some(vec!["c.example".into()]),
                options: Some(vec![
                    PodDNSConfigOption {
                        name: Some("ndots".into()),
                        value: Some("5".into()),
                    },
                    PodDNSConfigOption {
                        name: Some("single-request".into()),
                        value: None,
                    },
                ]),
            }),
            ..Default::default()
        });
        assert_eq!(
            resolv_content(HOST, &p).unwrap(),
            "search a.example b.example c.example\n\
             nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver 192.0.2.9\n\
             options edns0 ndots:5 single-request\n"
        );
    }

    #[test]
    fn resolv_none_uses_only_dns_config() {
        let p = pod(PodSpec {
            dns_policy: Some("None".into()),
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["1.1.1.1".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(resolv_content(HOST, &p).unwrap(), "nameserver 1.1.1.1\n");
        let bad = pod(PodSpec {
            dns_config: Some(PodDNSConfig {
                nameservers: Some(vec!["dns.example".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            resolv_content(HOST, &bad).unwrap_err().to_string(),
            "spec.dnsConfig.nameservers[0]: \"dns.example\" is not an IP address"
        );
        let policy = pod(PodSpec {
            dns_policy: Some("Cluster".into()),
            ..Default::default()
        });
        assert!(resolv_content(HOST, &policy)
            .unwrap_err()
            .to_string()
            .starts_with("spec.dnsPolicy: "));
    }

    #[test]
    fn resolv_parse_takes_the_last_search_line() {
        let r = parse_resolv("search x\ndomain y ; c\nnameserver 1.1.1.1 # c\n");
        assert_eq!(r.searches, vec!["y"]);
        assert_eq!(r.servers, vec!["1.1.1.1"]);
    }

    fn root_or_skip(name: &str) -> bool {
        if nix::unistd::Uid::effective().is_root() {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name} needs root (CI=true: skipping is a failure)"
        );
        eprintln!("skipping {name}: needs root (tmpfs mounts)");
        false
    }

    #[test]
    fn prepare_and_cleanup_for_real() {
        if !root_or_skip("prepare_and_cleanup_for_real") {
            return;
        }
        let run = std::env::temp_dir().join(format!("knode-files-test-{}", std::process::id()));
        let p = pod(PodSpec::default());
        let config = crate::Config {
            data_dir: run.join("data"),
            run_dir: run.clone(),
            log_dir: run.join("logs"),
            netns_dir: run.join("netns"),
            pod_manifest_path: run.join("manifests"),
            dns: None,
            bind_pending: false,
            allow_privileged: false,
            log_rotation: None,
        };
        let f = prepare(&config, &p, &[]).unwrap();
        assert_eq!(f.hosts, run.join("pods/uid-1/hosts"));
        assert_eq!(fs::read_to_string(&f.hostname).unwrap(), "web\n");
        assert!(is_mount_point(&f.shm).unwrap(), "shm is a tmpfs");
        let st = nix::sys::statfs::statfs(&f.shm).unwrap();
        assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        let meta = fs::metadata(&f.shm).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o1777);
        let inode = fs::metadata(&f.hosts)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();

        // Again, now with the IP: same inode, new content, one shm mount.
        let f2 = prepare(&config, &p, &["10.244.0.9".to_string()]).unwrap();
        assert_eq!(f, f2);
        let hosts = fs::read_to_string(&f.hosts).unwrap();
        assert!(hosts.contains("10.244.0.9\tweb\n"));
        assert_eq!(
            fs::metadata(&f.hosts)
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap(),
            inode
        );
        assert_eq!(mountinfo::under(&run).unwrap().len(), 1);

        cleanup(&run, "uid-1").unwrap();
        assert!(!run.join("pods/uid-1").exists());
        assert!(mountinfo::under(&run).unwrap().is_empty());
        cleanup(&run, "uid-1").unwrap();
        assert!(cleanup(&run, "../x").is_err());
        fs::remove_dir_all(&run).unwrap();
    }
}
