//! The CNI caller: attaches a pod's network namespace the way libcni does
//! (loopback first, then the config dir's network with chained
//! `prevResult`s, the final result cached for DEL), so any conformant plugin
//! works. Plugins run in the caller's network namespace (their host side);
//! this module never touches a link itself.

mod cache;
mod conf;
mod exec;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

pub use conf::{
    ensure_default_conflist, remove_default_conflist, PodNetwork, DEFAULT_IPAM_DIR, DEFAULT_NETWORK,
};
use conf::{NetworkList, LOOPBACK_NETWORK};

/// How long one plugin call may take before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The CNI runtime of one node.
#[derive(Debug, Clone)]
pub struct Cni {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    cache_dir: PathBuf,
    timeout: Duration,
}

/// One pod interface: what the plugins get in the environment.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// The sandbox's container id (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The pinned network namespace (`CNI_NETNS`); may be gone for DEL.
    pub netns: PathBuf,
    /// The interface inside the pod, usually `eth0`.
    pub ifname: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// What ADD produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AddResult {
    /// The pod's addresses on the attachment's interface, in result order.
    pub ips: Vec<IpPrefix>,
    /// The final result as the last plugin printed it.
    pub raw: Value,
}

/// An address with its prefix length, as in a result's `ips[].address`.
/// (Our own small type rather than `ipnet`, so this module builds with
/// nothing but std, tokio, serde_json, nix and anyhow.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpPrefix {
    /// The address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[allow(dead_code)] // the agent reports bare pod IPs; kept for callers that need the subnet
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;

    /// `ADDR/LEN`; a bare address gets the full length.
    fn from_str(s: &str) -> std::result::Result<IpPrefix, String> {
        let (a, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        };
        Ok(IpPrefix { addr, prefix_len })
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl AddResult {
    /// Reads the addresses of `ifname` from a CNI result: entries of `ips`
    /// whose `interface` is that interface (or unset), and the 0.2.0
    /// `ip4`/`ip6` form.
    pub fn from_result(raw: Value, ifname: &str) -> AddResult {
        let ifaces = raw["interfaces"].as_array();
        let ours = |ip: &Value| match ip["interface"].as_u64() {
            None => true,
            Some(i) => ifaces
                .and_then(|l| l.get(usize::try_from(i).ok()?))
                .is_some_and(|iface| iface["name"] == ifname),
        };
        let addr = |s: &str| s.parse::<IpPrefix>().ok();
        let mut ips: Vec<IpPrefix> = raw["ips"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|ip| ours(ip))
            .filter_map(|ip| addr(ip["address"].as_str()?))
            .collect();
        for legacy in ["ip4", "ip6"] {
            if let Some(ip) = raw[legacy]["ip"].as_str().and_then(addr) {
                ips.push(ip);
            }
        }
        AddResult { ips, raw }
    }
}

impl Attachment {
    /// Checks what reaches the plugins' environment: libcni's rules for the
    /// container id and interface name, and CNI_ARGS values that cannot
    /// break the `K=V;K=V` list.
    fn validate(&self) -> Result<()> {
        if !conf::valid_id(&self.container_id) {
            bail!(
                "container_id: {:?} is not a CNI container id (letters, digits, `_`, `.`, `-`)",
                self.container_id
            );
        }
        let n = &self.ifname;
        if n.is_empty()
            || n.len() > 15
            || n == "."
            || n == ".."
            || n == "lo"
            || n.chars()
                .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
        {
            bail!("ifname: {n:?} is not a usable interface name (1-15 characters, no `/`, `:` or spaces, not lo)");
        }
        for (field, v) in [
            ("pod_namespace", &self.pod_namespace),
            ("pod_name", &self.pod_name),
            ("pod_uid", &self.pod_uid),
        ] {
            if v.contains([';', '=', '\0']) {
                bail!("{field}: {v:?} may not contain `;`, `=` or NUL (it goes into CNI_ARGS)");
            }
        }
        Ok(())
    }

    /// CNI_ARGS as key/value pairs, in the order Kubernetes runtimes send them.
    fn cni_args(&self) -> Vec<(String, String)> {
        [
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", self.pod_namespace.as_str()),
            ("K8S_POD_NAME", self.pod_name.as_str()),
            ("K8S_POD_INFRA_CONTAINER_ID", self.container_id.as_str()),
            ("K8S_POD_UID", self.pod_uid.as_str()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Cni {
    /// A runtime that runs plugins from `bin_dir`, reads the network from
    /// `conf_dir` and caches results under `cache_dir`.
    pub fn new(bin_dir: PathBuf, conf_dir: PathBuf, cache_dir: PathBuf) -> Cni {
        Cni {
            bin_dir,
            conf_dir,
            cache_dir,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same runtime with another per-plugin timeout.
    #[allow(dead_code)] // the agent keeps the default; tests shorten it
    pub fn with_timeout(mut self, timeout: Duration) -> Cni {
        self.timeout = timeout;
        self
    }

    /// ADD: brings `lo` up, then runs every plugin of the network config in
    /// order, each with the previous one's result, and caches the final
    /// result. When a plugin fails, the network's plugins are DELeted in
    /// reverse (as the spec asks) before the error is returned.
    pub async fn add(&self, a: &Attachment) -> Result<AddResult> {
        a.validate()?;
        if a.netns.as_os_str().is_empty() {
            bail!("netns: required for ADD");
        }
        let network = NetworkList::load(&self.conf_dir)?;
        let loopback = NetworkList::loopback(self.loopback_type());
        // Every binary must be there before anything is attached.
        for list in [&loopback, &network] {
            for i in 0..list.plugins.len() {
                exec::find(&self.bin_dir, list.plugin_type(i))
                    .with_context(|| format!("network {:?} ({})", list.name, list.source))?;
            }
        }
        let args = a.cni_args();
        self.add_list(&loopback, a, "lo", &args).await?;
        let result = match self.add_list(&network, a, &a.ifname, &args).await {
            Ok(r) => r,
            Err(e) => {
                let args = cache::join_args(&args);
                let inv = self.invocation("DEL", a, &a.ifname, &args);
                return Err(match self.del_list(&network, inv, None).await {
                    Ok(()) => e,
                    Err(undo) => anyhow::anyhow!("{e:#}; undoing it failed too: {undo:#}"),
                });
            }
        };
        Ok(AddResult::from_result(result, &a.ifname))
    }

    /// DEL: runs the network's plugins in reverse with the config and result
    /// cached at ADD (without a cache entry: the current config and no
    /// `prevResult`, as libcni does), then loopback's, and drops the cache
    /// entries. Deleting what is already gone succeeds.
    pub async fn del(&self, a: &Attachment) -> Result<()> {
        a.validate()?;
        let cached = self.find_cached(&a.container_id, &a.ifname)?;
        self.del_network(a, &a.ifname, cached, || NetworkList::load(&self.conf_dir))
            .await?;
        let lo = self.find_cached_in(LOOPBACK_NETWORK, &a.container_id, "lo")?;
        self.del_network(a, "lo", lo, || {
            Ok(NetworkList::loopback(self.loopback_type()))
        })
        .await
    }

    /// CHECK: runs every plugin of the current network config with the
    /// cached result as `prevResult`; fails when there is none to check.
    #[allow(dead_code)] // like kubelet, the pod worker does not CHECK (yet)
    pub async fn check(&self, a: &Attachment) -> Result<()> {
        a.validate()?;
        let network = NetworkList::load(&self.conf_dir)?;
        if !network.version_at_least((0, 4, 0)) {
            bail!(
                "network {:?}: cniVersion {} has no CHECK (0.4.0 and later)",
                network.name,
                network.cni_version
            );
        }
        if network.disable_check {
            return Ok(());
        }
        let Some((_, entry)) = self.find_cached_in(&network.name, &a.container_id, &a.ifname)?
        else {
            bail!(
                "CNI CHECK {}/{}: no cached result in network {:?}",
                a.container_id,
                a.ifname,
                network.name
            );
        };
        let args = entry.cni_args_string();
        let inv = self.invocation("CHECK", a, &a.ifname, &args);
        for i in 0..network.plugins.len() {
            let c = network.plugin_conf(i, Some(&entry.result));
            exec::run(&self.bin_dir, network.plugin_type(i), inv, &c, self.timeout)
                .await
                .with_context(|| format!("network {:?}", network.name))?;
        }
        Ok(())
    }

    /// The cached result of an attachment, whatever network it was added to
    /// (the agent reads the pod IP back after a restart).
    pub fn cached(&self, container_id: &str, ifname: &str) -> Result<Option<AddResult>> {
        Ok(self
            .find_cached(container_id, ifname)?
            .map(|(_, e)| AddResult::from_result(e.result, ifname)))
    }

    /// The container ids with a cached result, sorted, each once (orphan
    /// cleanup DELs those no pod owns).
    pub fn cached_ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = cache::list(&self.cache_dir, "")?
            .into_iter()
            .map(|(_, e)| e.container_id)
            .collect();
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// `knode-loopback` when installed, else the reference `loopback`.
    fn loopback_type(&self) -> &'static str {
        if self.bin_dir.join("knode-loopback").is_file() {
            "knode-loopback"
        } else {
            "loopback"
        }
    }

    fn invocation<'a>(
        &self,
        command: &'static str,
        a: &'a Attachment,
        ifname: &'a str,
        args: &'a str,
    ) -> exec::Invocation<'a> {
        exec::Invocation {
            command,
            container_id: &a.container_id,
            netns: &a.netns,
            ifname,
            args,
        }
    }

    /// Runs one list's ADD chain and caches its result.
    async fn add_list(
        &self,
        list: &NetworkList,
        a: &Attachment,
        ifname: &str,
        args: &[(String, String)],
    ) -> Result<Value> {
        let args_string = cache::join_args(args);
        let inv = self.invocation("ADD", a, ifname, &args_string);
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            let ty = list.plugin_type(i);
            let c = list.plugin_conf(i, prev.as_ref());
            let out = exec::run(&self.bin_dir, ty, inv, &c, self.timeout)
                .await
                .with_context(|| format!("network {:?}", list.name))?;
            let result: Value = serde_json::from_slice(&out).with_context(|| {
                format!(
                    "network {:?}: CNI ADD {ty}: the result is not JSON: {:?}",
                    list.name,
                    String::from_utf8_lossy(&out)
                )
            })?;
            prev = Some(result);
        }
        let result = prev.unwrap_or(Value::Null);
        let entry = cache::Entry {
            container_id: a.container_id.clone(),
            ifname: ifname.to_string(),
            network: list.name.clone(),
            netns: a.netns.display().to_string(),
            config: list.bytes.clone(),
            cni_args: args.to_vec(),
            result: result.clone(),
        };
        cache::write(&self.cache_dir, &entry)
            .with_context(|| format!("network {:?}: cache the result", list.name))?;
        Ok(result)
    }

    /// DELs one network of an attachment: from its cache entry when there is
    /// one, else from `current()` without a `prevResult`.
    async fn del_network(
        &self,
        a: &Attachment,
        ifname: &str,
        cached: Option<(PathBuf, cache::Entry)>,
        current: impl FnOnce() -> Result<NetworkList>,
    ) -> Result<()> {
        match cached {
            Some((file, entry)) => {
                let list =
                    NetworkList::from_cached(entry.config.clone(), &file.display().to_string())?;
                // Cached results on DEL came with 0.4.0.
                let prev = list.version_at_least((0, 4, 0)).then_some(&entry.result);
                let args = entry.cni_args_string();
                let inv = self.invocation("DEL", a, ifname, &args);
                self.del_list(&list, inv, prev).await?;
                cache::remove(&file)
            }
            None => {
                let list = current()?;
                let args = cache::join_args(&a.cni_args());
                let inv = self.invocation("DEL", a, ifname, &args);
                self.del_list(&list, inv, None).await
            }
        }
    }

    /// Runs one list's plugins with DEL, last first.
    async fn del_list(
        &self,
        list: &NetworkList,
        inv: exec::Invocation<'_>,
        prev: Option<&Value>,
    ) -> Result<()> {
        for i in (0..list.plugins.len()).rev() {
            let c = list.plugin_conf(i, prev);
            exec::run(&self.bin_dir, list.plugin_type(i), inv, &c, self.timeout)
                .await
                .with_context(|| format!("network {:?}", list.name))?;
        }
        Ok(())
    }

    /// The cache entry of an attachment in any network but the loopback one.
    fn find_cached(&self, id: &str, ifname: &str) -> Result<Option<(PathBuf, cache::Entry)>> {
        let suffix = format!("-{id}-{ifname}");
        Ok(cache::list(&self.cache_dir, &suffix)?
            .into_iter()
            .find(|(_, e)| {
                e.container_id == id && e.ifname == ifname && e.network != LOOPBACK_NETWORK
            }))
    }

    /// The cache entry of an attachment in one network.
    fn find_cached_in(
        &self,
        network: &str,
        id: &str,
        ifname: &str,
    ) -> Result<Option<(PathBuf, cache::Entry)>> {
        let file = cache::path(&self.cache_dir, network, id, ifname);
        Ok(cache::read(&file)?
            .filter(|e| e.container_id == id && e.ifname == ifname && e.network == network)
            .map(|e| (file, e)))
    }
}

#[cfg(test)]
mod tests;
