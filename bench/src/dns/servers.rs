//! The DNS servers `bench dns` compares, started in its namespace and
//! pinned to one CPU the same way: knode's (`bench-dns-server`), dnsmasq
//! and unbound, each loaded with the same Services and pods from local
//! data and forwarding to the same upstream (a dnsmasq standing in for
//! the internet). Writes their data files; kills them on drop.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netns_tests::TestNs;

/// The cluster's records: `(namespace, name, ip)` of Services and pods.
pub struct Records {
    pub services: Vec<(String, String, String)>,
    pub pods: Vec<(String, String, String)>,
}

/// The zone every server is given.
pub const DOMAIN: &str = "cluster.local";
/// External names live under this domain at the upstream.
pub const EXTERNAL_DOMAIN: &str = "example.test";
/// The upstream's answer for every external name.
pub const EXTERNAL_IP: &str = "192.0.2.1";

impl Records {
    /// `services` ClusterIP Services and `pods` pods in 100 namespaces.
    pub fn new(services: usize, pods: usize) -> Records {
        let services = (0..services)
            .map(|s| {
                (
                    format!("ns-{}", s % 100),
                    format!("svc-{s}"),
                    format!("10.96.{}.{}", 1 + s / 250, s % 250 + 1),
                )
            })
            .collect();
        let pods = (0..pods)
            .map(|n| {
                (
                    format!("ns-{}", n % 100),
                    format!("pod-{n}"),
                    format!("10.{}.{}.{}", 128 + n / 65536, (n / 256) % 256, n % 256),
                )
            })
            .collect();
        Records { services, pods }
    }

    /// A Service's name in the zone.
    pub fn service_fqdn(ns: &str, name: &str) -> String {
        format!("{name}.{ns}.svc.{DOMAIN}")
    }

    /// A pod's record name (`a-b-c-d.<ns>.pod.<zone>`).
    pub fn pod_fqdn(ns: &str, ip: &str) -> String {
        format!("{}.{ns}.pod.{DOMAIN}", ip.replace('.', "-"))
    }

    /// Every `(name, ip)` the servers hold.
    pub fn names(&self) -> impl Iterator<Item = (String, &str)> {
        let svcs = self
            .services
            .iter()
            .map(|(ns, n, ip)| (Self::service_fqdn(ns, n), ip.as_str()));
        let pods = self
            .pods
            .iter()
            .map(|(ns, _, ip)| (Self::pod_fqdn(ns, ip), ip.as_str()));
        svcs.chain(pods)
    }

    /// For `bench-dns-server`: `svc|pod NS NAME IP` lines.
    fn knode_file(&self) -> String {
        let mut s = String::new();
        for (ns, n, ip) in &self.services {
            let _ = writeln!(s, "svc {ns} {n} {ip}");
        }
        for (ns, n, ip) in &self.pods {
            let _ = writeln!(s, "pod {ns} {n} {ip}");
        }
        s
    }

    /// For dnsmasq: a hosts file.
    fn hosts_file(&self) -> String {
        let mut s = String::new();
        for (name, ip) in self.names() {
            let _ = writeln!(s, "{ip} {name}");
        }
        s
    }

    /// For unbound: its whole config, the records as `local-data`.
    fn unbound_conf(&self, listen: SocketAddr, upstream: SocketAddr, dir: &Path) -> String {
        let mut s = format!(
            "server:\n  interface: {}\n  port: {}\n  num-threads: 1\n  do-daemonize: no\n  \
             chroot: \"\"\n  username: \"\"\n  directory: \"{}\"\n  pidfile: \"\"\n  \
             use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  do-ip6: no\n  \
             access-control: 127.0.0.0/8 allow\n  do-not-query-localhost: no\n  \
             module-config: \"iterator\"\n  local-zone: \"{DOMAIN}.\" static\n  \
             local-zone: \"{EXTERNAL_DOMAIN}.\" nodefault\n  local-zone: \"test.\" nodefault\n",
            listen.ip(),
            listen.port(),
            dir.display()
        );
        for (name, ip) in self.names() {
            let _ = writeln!(s, "  local-data: \"{name}. 5 IN A {ip}\"");
        }
        let _ = write!(
            s,
            "remote-control:\n  control-enable: no\nforward-zone:\n  name: \".\"\n  \
             forward-addr: {}@{}\n",
            upstream.ip(),
            upstream.port()
        );
        s
    }
}

/// One server process; killed on drop.
pub struct Proc {
    /// Its short name in results (`knode`, `dnsmasq`, `unbound`, `upstream`).
    pub name: &'static str,
    /// Where it answers.
    pub addr: SocketAddr,
    child: Child,
}

impl Proc {
    /// Its pid (the server's own: nsenter and taskset exec it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if it has exited.
    pub fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq_args(listen: SocketAddr) -> Vec<String> {
    vec![
        "dnsmasq".into(),
        "--keep-in-foreground".into(),
        "--conf-file=/dev/null".into(),
        "--user=root".into(),
        "--pid-file=".into(),
        "--no-hosts".into(),
        "--no-resolv".into(),
        "--bind-interfaces".into(),
        format!("--listen-address={}", listen.ip()),
        format!("--port={}", listen.port()),
    ]
}

/// Where the servers run: the namespace, the CPU they are pinned to, the
/// upstream they forward to and the directory for their files.
pub struct Lab<'a> {
    pub ns: &'a TestNs,
    pub cpu: usize,
    pub upstream: SocketAddr,
    pub dir: &'a Path,
}

impl Lab<'_> {
    /// `argv` in the namespace pinned to the CPU, stderr to `<name>.stderr`.
    fn command(&self, name: &str, argv: &[String]) -> Result<Command> {
        let cpu = self.cpu.to_string();
        let mut full = vec!["taskset", "-c", &cpu];
        full.extend(argv.iter().map(String::as_str));
        let mut c = self.ns.cmd(&full);
        let log = self.dir.join(format!("{name}.stderr"));
        let err =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        c.stdout(Stdio::null()).stderr(err);
        Ok(c)
    }

    fn start(&self, name: &'static str, addr: SocketAddr, mut c: Command) -> Result<Proc> {
        let child = c.spawn().with_context(|| format!("start {name}"))?;
        Ok(Proc { name, addr, child })
    }

    /// The stand-in for the internet, at the upstream address: answers
    /// every `*.example.test` with [`EXTERNAL_IP`], TTL 600 s, and logs
    /// each query it gets to `log`.
    pub fn upstream(&self, log: &Path) -> Result<Proc> {
        let mut args = dnsmasq_args(self.upstream);
        args.extend([
            format!("--address=/{EXTERNAL_DOMAIN}/{EXTERNAL_IP}"),
            "--local-ttl=600".into(),
            "--log-queries".into(),
            format!("--log-facility={}", log.display()),
        ]);
        self.start("upstream", self.upstream, self.command("upstream", &args)?)
    }

    /// knode's server with `records`; returns once it says it listens.
    pub fn knode(&self, addr: SocketAddr, records: &Records) -> Result<Proc> {
        let file = self.dir.join("knode.records");
        std::fs::write(&file, records.knode_file())?;
        let bin = crate::built("bench-dns-server")?;
        let argv = [
            bin.display().to_string(),
            file.display().to_string(),
            addr.to_string(),
            self.upstream.to_string(),
        ];
        let mut c = self.command("knode", &argv)?;
        c.stdout(Stdio::piped());
        let mut p = self.start("knode", addr, c)?;
        let out = p.child.stdout.take().context("knode's stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if line.trim() != "ready" {
            let err = std::fs::read_to_string(self.dir.join("knode.stderr")).unwrap_or_default();
            bail!("bench-dns-server did not start: {}", err.trim());
        }
        Ok(p)
    }

    /// dnsmasq with `records` as a hosts file (TTL 5 s like knode's),
    /// NXDOMAIN for other names of the zone, a 10,000-answer cache
    /// (knode's size) in front of the upstream.
    pub fn dnsmasq(&self, addr: SocketAddr, records: &Records) -> Result<Proc> {
        let hosts = self.dir.join("dnsmasq.hosts");
        std::fs::write(&hosts, records.hosts_file())?;
        let mut args = dnsmasq_args(addr);
        args.extend([
            format!("--addn-hosts={}", hosts.display()),
            format!("--local=/{DOMAIN}/"),
            "--local-ttl=5".into(),
            format!("--server={}#{}", self.upstream.ip(), self.upstream.port()),
            "--cache-size=10000".into(),
            "--dns-forward-max=1024".into(),
        ]);
        self.start("dnsmasq", addr, self.command("dnsmasq", &args)?)
    }

    /// unbound, one thread, `records` as local-data of a static zone,
    /// forwarding everything else to the upstream, validator off (and
    /// `test.` forwarded too, not blocked as unbound's defaults block it).
    pub fn unbound(&self, addr: SocketAddr, records: &Records) -> Result<Proc> {
        let conf = self.dir.join("unbound.conf");
        std::fs::write(&conf, records.unbound_conf(addr, self.upstream, self.dir))?;
        let argv = [
            "unbound".into(),
            "-d".into(),
            "-c".into(),
            conf.display().to_string(),
        ];
        self.start("unbound", addr, self.command("unbound", &argv)?)
    }
}

/// `dig` (with `flags` first) of `name`'s A record at `server`, inside `ns`.
fn dig_with(ns: &TestNs, flags: &[&str], server: SocketAddr, name: &str) -> Result<String> {
    let (at, port) = (format!("@{}", server.ip()), server.port().to_string());
    let mut argv = vec!["dig"];
    argv.extend_from_slice(flags);
    argv.extend(["+tries=1", "+time=1", &at, "-p", &port, name, "A"]);
    ns.sh(&argv)
}

/// `dig +short` of `name`'s A record at `server`, inside `ns`.
pub fn dig(ns: &TestNs, server: SocketAddr, name: &str) -> Result<String> {
    Ok(dig_with(ns, &["+short"], server, name)?.trim().to_string())
}

/// The rcode `dig` reports for `name` at `server` (e.g. `NXDOMAIN`).
pub fn dig_status(ns: &TestNs, server: SocketAddr, name: &str) -> Result<String> {
    let out = dig_with(ns, &[], server, name)?;
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .map(str::to_string)
        .with_context(|| format!("dig {name} @{server}: no status in {out}"))
}

/// Waits until `server` answers `name` with `ip` (a server loading its
/// data answers nothing or SERVFAIL first).
pub fn wait_answers(p: &mut Proc, ns: &TestNs, name: &str, ip: &str) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        p.alive()?;
        if dig(ns, p.addr, name).is_ok_and(|a| a == ip) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{} at {} never answered {name} with {ip}", p.name, p.addr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
