//! Network configuration as libcni reads it: the first `.conflist`, `.conf`
//! or `.json` in the config dir by name (a single-plugin `.conf` wrapped as
//! a one-plugin list), validated before any plugin runs, and the per-plugin
//! config each invocation gets on stdin. It runs nothing.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

/// The extensions libcni's `ConfFiles` accepts, in no particular order.
const EXTENSIONS: &[&str] = &["conflist", "conf", "json"];

/// The file `ensure_default_conflist` writes.
pub const DEFAULT_CONFLIST: &str = "10-knode.conflist";
/// The default conflist's network name.
pub const DEFAULT_NETWORK: &str = "knode";
/// Where host-local keeps reservations when a config names no `dataDir`.
pub const DEFAULT_IPAM_DIR: &str = "/var/lib/cni/networks";

/// One network: a plugin list with the name and version every plugin gets.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub name: String,
    pub cni_version: String,
    /// `disableCheck`: CHECK is a no-op for this network.
    pub disable_check: bool,
    /// The plugin configs in ADD order; each is an object with a valid `type`.
    pub plugins: Vec<Map<String, Value>>,
    /// The bytes cached with a result, so DEL runs what ADD ran.
    pub bytes: Vec<u8>,
    /// Where the list came from, for messages.
    pub source: String,
}

impl NetworkList {
    /// Loads the network `conf_dir` defines: its first config file by name.
    /// A broken first file is an error, not a reason to use the next one
    /// (as in containerd), so a typo never silently moves pods elsewhere.
    pub fn load(conf_dir: &Path) -> Result<NetworkList> {
        let files = conf_files(conf_dir)?;
        let Some(file) = files.first() else {
            bail!(
                "no CNI network config (*.conflist, *.conf, *.json) in {}",
                conf_dir.display()
            );
        };
        let bytes = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
        let source = file.display().to_string();
        if file.extension().is_some_and(|e| e == "conflist") {
            NetworkList::from_list(bytes, &source)
        } else {
            NetworkList::from_conf(&bytes, &source)
        }
    }

    /// Parses cached config bytes: a list, or a single plugin config (as
    /// libcni caches for a network added with `AddNetwork`).
    pub fn from_cached(bytes: Vec<u8>, source: &str) -> Result<NetworkList> {
        let v: Value = parse(&bytes, source)?;
        if v.get("plugins").is_some() {
            NetworkList::from_list(bytes, source)
        } else {
            NetworkList::from_conf(&bytes, source)
        }
    }

    /// Parses a `.conflist`.
    pub fn from_list(bytes: Vec<u8>, source: &str) -> Result<NetworkList> {
        let v = parse(&bytes, source)?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("CNI config {source}: not a JSON object"))?;
        let name = network_name(obj, source)?;
        let cni_version = cni_version(obj, source)?;
        let disable_check = match obj.get("disableCheck") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            // libcni also takes the string form.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(other) => bail!("CNI config {source}: disableCheck: {other} is not a boolean"),
        };
        let list = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("CNI config {source}: plugins: missing or not a list"))?;
        if list.is_empty() {
            bail!("CNI config {source}: plugins: empty");
        }
        let mut plugins = Vec::with_capacity(list.len());
        for (i, p) in list.iter().enumerate() {
            let p = p
                .as_object()
                .ok_or_else(|| anyhow!("CNI config {source}: plugins[{i}]: not a JSON object"))?;
            let ty = p.get("type").and_then(Value::as_str).unwrap_or_default();
            check_type(ty).with_context(|| format!("CNI config {source}: plugins[{i}].type"))?;
            plugins.push(p.clone());
        }
        Ok(NetworkList {
            name,
            cni_version,
            disable_check,
            plugins,
            bytes,
            source: source.to_string(),
        })
    }

    /// Parses a single-plugin `.conf` and wraps it as a one-plugin list, as
    /// libcni's `ConfListFromConf` does (the wrapping list is what is cached).
    pub fn from_conf(bytes: &[u8], source: &str) -> Result<NetworkList> {
        let v = parse(bytes, source)?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("CNI config {source}: not a JSON object"))?;
        if obj.contains_key("plugins") {
            bail!("CNI config {source}: a plugin list in a single-plugin file (name it .conflist)");
        }
        let name = network_name(obj, source)?;
        let cni_version = cni_version(obj, source)?;
        let ty = obj.get("type").and_then(Value::as_str).unwrap_or_default();
        check_type(ty).with_context(|| format!("CNI config {source}: type"))?;
        let wrapped = json!({ "cniVersion": cni_version, "name": name, "plugins": [v] });
        NetworkList::from_list(wrapped.to_string().into_bytes(), source)
    }

    /// The built-in network that brings `lo` up (as containerd's CRI plugin
    /// does with its `cni-loopback` network).
    pub fn loopback(plugin_type: &str) -> NetworkList {
        let v = json!({
            "cniVersion": "1.0.0",
            "name": LOOPBACK_NETWORK,
            "plugins": [{ "type": plugin_type }],
        });
        NetworkList::from_list(v.to_string().into_bytes(), "built-in loopback network")
            .expect("the built-in loopback network is valid")
    }

    /// The plugin `i`'s `type`.
    pub fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// What plugin `i` gets on stdin: its config with the list's `name` and
    /// `cniVersion` and, when given, `prevResult` (libcni's `buildOneConfig`).
    pub fn plugin_conf(&self, i: usize, prev: Option<&Value>) -> Value {
        let mut conf = self.plugins[i].clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        match prev {
            Some(p) => conf.insert("prevResult".into(), p.clone()),
            None => conf.remove("prevResult"),
        };
        Value::Object(conf)
    }

    /// True when the list's version is at least `min` (CHECK and cached
    /// results on DEL came with 0.4.0).
    pub fn version_at_least(&self, min: (u32, u32, u32)) -> bool {
        parse_version(&self.cni_version).is_some_and(|v| v >= min)
    }
}

/// The name of the built-in loopback network (its cache entries carry it).
pub const LOOPBACK_NETWORK: &str = "cni-loopback";

/// The config files in `dir` in the order libcni's `ConfFiles` lists them:
/// by file name, directories skipped.
pub fn conf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    let mut files = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("read {}", dir.display()))?;
        let path = e.path();
        let wanted = path
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| EXTENSIONS.contains(&x));
        if wanted && !path.is_dir() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Refuses plugin types that are not plain file names: a config must not
/// make the agent run something outside the plugin directory.
pub fn check_type(ty: &str) -> Result<()> {
    if ty.is_empty() {
        bail!("missing or empty");
    }
    if ty == "." || ty == ".." || ty.contains('/') || ty.contains('\0') {
        bail!("{ty:?} is not a plain file name");
    }
    Ok(())
}

/// libcni's rule for container ids and network names.
pub fn valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `a.b.c` as numbers.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let v = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(v)
}

fn parse(bytes: &[u8], source: &str) -> Result<Value> {
    serde_json::from_slice(bytes).with_context(|| format!("CNI config {source}: invalid JSON"))
}

fn network_name(obj: &Map<String, Value>, source: &str) -> Result<String> {
    let name = obj.get("name").and_then(Value::as_str).unwrap_or_default();
    if !valid_id(name) {
        bail!(
            "CNI config {source}: name: {name:?} is not a network name (letters, digits, `_`, `.`, `-`)"
        );
    }
    Ok(name.to_string())
}

fn cni_version(obj: &Map<String, Value>, source: &str) -> Result<String> {
    let v = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if parse_version(v).is_none() {
        bail!("CNI config {source}: cniVersion: {v:?} is not a version like 1.0.0");
    }
    Ok(v.to_string())
}

/// The agent's default pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodNetwork<'a> {
    /// This node's pod subnet (the overlay's lease, or a fixed one).
    pub subnet: &'a str,
    /// Its second subnet, of the other family, on a dual-stack network:
    /// host-local then hands every pod one address of each (one range set each).
    pub subnet6: Option<&'a str>,
    /// The pods' MTU (the overlay's), or the bridge plugin's default.
    pub mtu: Option<u32>,
    /// Masquerade in the bridge plugin (off when the overlay masquerades
    /// only what leaves the cluster network).
    pub ip_masq: bool,
}

/// Writes the default pod network, `10-knode.conflist`, when `conf_dir`
/// holds no network config, or rewrites it when it is the agent's own and
/// the subnet or MTU changed. The agent's own file is one that is exactly
/// what the agent renders for its subnet, MTU and masquerade setting: any
/// edit (a `dataDir`, another plugin, a changed bridge name) makes it the
/// operator's, and an operator's config always wins. Returns the path
/// written, or `None` when nothing was written.
pub fn ensure_default_conflist(conf_dir: &Path, net: &PodNetwork) -> Result<Option<PathBuf>> {
    let text = render_default(net)?;
    let path = conf_dir.join(DEFAULT_CONFLIST);
    let existing = conf_files(conf_dir)?;
    let ours = existing.len() == 1 && existing[0] == path && is_generated(&path);
    if !existing.is_empty() && !ours {
        return Ok(None);
    }
    if ours && std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(None);
    }
    std::fs::create_dir_all(conf_dir).with_context(|| format!("create {}", conf_dir.display()))?;
    // Written aside and renamed: a runtime reading the dir never sees half a file.
    let tmp = conf_dir.join(format!(".{DEFAULT_CONFLIST}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(Some(path))
}

/// Removes the default conflist when it is the agent's own (never an
/// operator's). Returns whether it removed it.
pub fn remove_default_conflist(conf_dir: &Path) -> Result<bool> {
    let path = conf_dir.join(DEFAULT_CONFLIST);
    if !is_generated(&path) {
        return Ok(false);
    }
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(true)
}

/// The text of the default conflist for `net`.
fn render_default(net: &PodNetwork) -> Result<String> {
    let default_route = |subnet: &str| match subnet.split_once('/') {
        Some((ip, len)) => match (ip.parse::<std::net::IpAddr>(), len.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(0..=32)) => Ok("0.0.0.0/0"),
            (Ok(std::net::IpAddr::V6(_)), Ok(0..=128)) => Ok("::/0"),
            _ => Err(anyhow::anyhow!(
                "subnet: {subnet:?} is not a CIDR like 10.244.0.0/24"
            )),
        },
        None => Err(anyhow::anyhow!(
            "subnet: {subnet:?} is not a CIDR like 10.244.0.0/24"
        )),
    };
    // One range set per family (the reference host-local's dual-stack
    // form), and a default route for each.
    let mut ranges = vec![json!([{ "subnet": net.subnet }])];
    let mut routes = vec![json!({ "dst": default_route(net.subnet)? })];
    if let Some(s6) = net.subnet6 {
        let dst = default_route(s6)?;
        if dst == routes[0]["dst"] {
            bail!(
                "subnet6: {s6:?} is of the same family as subnet {:?}",
                net.subnet
            );
        }
        ranges.push(json!([{ "subnet": s6 }]));
        routes.push(json!({ "dst": dst }));
    }
    let mut bridge = json!({
        "type": "knode-bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": net.ip_masq,
        "hairpinMode": true,
        "ipam": {
            "type": "knode-host-local",
            "ranges": ranges,
            "routes": routes,
        },
    });
    if let Some(mtu) = net.mtu {
        bridge["mtu"] = json!(mtu);
    }
    // 1.0.0, not 1.1.0: containerd 1.6's CRI plugin and the reference
    // plugins of most distributions read it too.
    let list = json!({
        "cniVersion": "1.0.0",
        "name": DEFAULT_NETWORK,
        "plugins": [bridge],
    });
    let mut text = serde_json::to_string_pretty(&list).expect("a JSON value serializes");
    text.push('\n');
    Ok(text)
}

/// Whether `path` is a conflist the agent wrote: its text is exactly the
/// rendering of its own subnet, MTU and masquerade setting.
fn is_generated(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(v) = serde_json::from_str::<Value>(&text) else {
        return false;
    };
    let p = &v["plugins"][0];
    let (Some(subnet), Some(ip_masq)) = (
        p["ipam"]["ranges"][0][0]["subnet"].as_str(),
        p["ipMasq"].as_bool(),
    ) else {
        return false;
    };
    let mtu = p["mtu"].as_u64().and_then(|m| u32::try_from(m).ok());
    let net = PodNetwork {
        subnet,
        subnet6: p["ipam"]["ranges"][1][0]["subnet"].as_str(),
        mtu,
        ip_masq,
    };
    render_default(&net).is_ok_and(|r| r == text)
}
