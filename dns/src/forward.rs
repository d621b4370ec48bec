//! Forwarding names outside the cluster zone: picks the upstreams (a stub
//! domain's, else the defaults from resolv.conf), asks them over UDP with a
//! TCP retry on truncation, and keeps answers in the [`Cache`]. Owns no
//! listening socket; the server calls [`Forwarder::resolve`]. Notices a
//! changed resolv.conf ([`ResolvConfWatch`]); the caller swaps upstreams.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::Name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::cache::Cache;
use crate::resolvconf::ResolvConf;
use crate::{Error, Result};

/// The stub file systemd-resolved puts in /etc/resolv.conf.
const SYSTEMD_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));
/// Where systemd-resolved keeps the real upstreams.
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// How to forward.
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// Default upstreams, tried in order ([`Forwarder::set_upstreams`]
    /// replaces them later).
    pub upstreams: Vec<SocketAddr>,
    /// Domain -> upstreams for names in that domain (longest match wins).
    pub stub_domains: Vec<(Name, Vec<SocketAddr>)>,
    /// Most answers cached.
    pub cache_size: usize,
    /// Longest time an answer is cached, in seconds.
    pub max_cache_ttl: u32,
    /// How long to wait for one upstream before trying the next.
    pub timeout: Duration,
}

impl ForwardConfig {
    /// Forwarding to `upstreams` with the defaults: 10,000 cached answers,
    /// at most an hour, 2 s per upstream, no stub domains.
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self {
            upstreams,
            stub_domains: Vec::new(),
            cache_size: 10_000,
            max_cache_ttl: 3600,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The upstreams named in the resolv.conf at `path` (kubelet's
/// `resolv-conf`), port 53. When its only nameserver is systemd-resolved's
/// stub 127.0.0.53, `systemd_path` (normally [`SYSTEMD_RESOLV_CONF`]) is
/// read instead, as kubelet advises.
pub fn upstreams_from_resolv_conf(path: &Path, systemd_path: &Path) -> Result<Vec<SocketAddr>> {
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map(|text| ResolvConf::parse(&text))
            .map_err(|source| Error::Read {
                path: p.display().to_string(),
                source,
            })
    };
    let mut conf = read(path)?;
    let mut from = path;
    if conf.nameservers == [SYSTEMD_STUB] {
        conf = read(systemd_path)?;
        from = systemd_path;
    }
    if conf.nameservers.is_empty() {
        return Err(Error::Config {
            field: "resolv-conf",
            problem: format!("{} names no nameserver", from.display()),
        });
    }
    Ok(conf
        .nameservers
        .iter()
        .map(|ip| SocketAddr::new(*ip, 53))
        .collect())
}

/// What identifies one version of a file: inode, modification time, size.
type FileStamp = Option<(u64, SystemTime, u64)>;

fn file_stamp(path: &Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.modified().ok()?, m.len()))
}

/// Notices when `resolv-conf` (or systemd-resolved's real file, which
/// [`upstreams_from_resolv_conf`] may read instead) is replaced or
/// rewritten: compares inode, mtime and size with the last look. Polled by
/// the caller on a timer.
#[derive(Debug)]
pub struct ResolvConfWatch {
    paths: [PathBuf; 2],
    last: [FileStamp; 2],
}

impl ResolvConfWatch {
    /// Watches `path` and `systemd_path` from their state now.
    pub fn new(path: &Path, systemd_path: &Path) -> Self {
        let paths = [path.to_path_buf(), systemd_path.to_path_buf()];
        let last = [file_stamp(&paths[0]), file_stamp(&paths[1])];
        Self { paths, last }
    }

    /// True when either file changed (appeared, went, or was written)
    /// since the last call (or since [`ResolvConfWatch::new`]).
    pub fn changed(&mut self) -> bool {
        let now = [file_stamp(&self.paths[0]), file_stamp(&self.paths[1])];
        let changed = now != self.last;
        self.last = now;
        changed
    }
}

/// Asks upstreams and caches their answers.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwardConfig,
    /// The default upstreams, replaced when resolv.conf changes.
    upstreams: RwLock<Vec<SocketAddr>>,
    cache: Mutex<Cache>,
}

impl Forwarder {
    /// A forwarder for `config`, with stub domains lowercased.
    pub fn new(mut config: ForwardConfig) -> Self {
        for (domain, _) in &mut config.stub_domains {
            *domain = domain.to_lowercase();
        }
        let cache = Cache::new(config.cache_size, config.max_cache_ttl);
        Self {
            upstreams: RwLock::new(config.upstreams.clone()),
            config,
            cache: Mutex::new(cache),
        }
    }

    /// Replaces the default upstreams (stub domains keep theirs); answers
    /// already cached stay until their TTL.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        *self.upstreams.write().unwrap_or_else(|e| e.into_inner()) = upstreams;
    }

    /// The default upstreams now.
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.upstreams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True when some name can be forwarded (an upstream or a stub domain).
    pub fn can_forward(&self) -> bool {
        !self.config.stub_domains.is_empty()
            || !self
                .upstreams
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
    }

    /// Completes `response` from a live cached answer to `query` (no
    /// upstream asked); false when there is none.
    pub fn answer_cached(&self, query: &Query, response: &mut Message) -> bool {
        self.cache().answer(query, Instant::now(), response)
    }

    /// Appends to `out` the cached response to `query` at `now`, within
    /// `limit` bytes (see [`Cache::write`]); false when there is none.
    pub fn write_cached(
        &self,
        query: &crate::wire::QueryView<'_>,
        now: Instant,
        limit: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        self.cache().write(query, now, limit, out)
    }

    /// The response to `query`, from the cache or the first upstream that
    /// answers. Its id is arbitrary: the caller copies what it needs.
    pub async fn resolve(&self, query: &Query) -> Result<Message> {
        if let Some(hit) = self.cache().get(query, Instant::now()) {
            return Ok(hit);
        }
        let upstreams = self.upstreams_for(query.name());
        let mut last = None;
        for upstream in upstreams {
            match self.exchange(upstream, query).await {
                Ok(response) => {
                    self.cache().insert(query, &response, Instant::now());
                    return Ok(response);
                }
                Err(e) => {
                    tracing::debug!(upstream = %upstream, name = %query.name(), error = %e, "upstream failed");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Upstream {
            upstream: "none".into(),
            problem: "no upstream configured".into(),
        }))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn upstreams_for(&self, name: &Name) -> Vec<SocketAddr> {
        let lower = name.to_lowercase();
        self.config
            .stub_domains
            .iter()
            .filter(|(domain, _)| domain.zone_of(&lower))
            .max_by_key(|(domain, _)| domain.num_labels())
            .map_or_else(|| self.upstreams(), |(_, ups)| ups.clone())
    }

    /// One question to one upstream: UDP, then TCP if the answer was
    /// truncated.
    async fn exchange(&self, upstream: SocketAddr, query: &Query) -> Result<Message> {
        let mut request = Message::query();
        request.metadata.recursion_desired = true;
        request.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(crate::wire::MAX_UDP_SIZE as u16);
        request.set_edns(edns);
        let bytes = request.to_vec().map_err(|e| upstream_err(upstream, e))?;
        let id = request.metadata.id;
        let response = timeout(self.config.timeout, udp_exchange(upstream, &bytes, id))
            .await
            .map_err(|_| upstream_err(upstream, "timed out over UDP"))??;
        if !response.metadata.truncation {
            return Ok(response);
        }
        timeout(self.config.timeout, tcp_exchange(upstream, &bytes, id))
            .await
            .map_err(|_| upstream_err(upstream, "timed out over TCP"))?
    }
}

async fn udp_exchange(upstream: SocketAddr, bytes: &[u8], id: u16) -> Result<Message> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    socket
        .connect(upstream)
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    socket
        .send(bytes)
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| upstream_err(upstream, e))?;
        // Anything not answering our id is ignored (spoofing, stale replies).
        if let Ok(m) = Message::from_vec(&buf[..n]) {
            if m.metadata.id == id {
                return Ok(m);
            }
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, bytes: &[u8], id: u16) -> Result<Message> {
    let mut stream = TcpStream::connect(upstream)
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    let len = u16::try_from(bytes.len()).map_err(|e| upstream_err(upstream, e))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    stream
        .write_all(&framed)
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    let len = stream
        .read_u16()
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    let mut buf = vec![0u8; usize::from(len)];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| upstream_err(upstream, e))?;
    let m = Message::from_vec(&buf).map_err(|e| upstream_err(upstream, e))?;
    if m.metadata.id != id {
        return Err(upstream_err(upstream, "TCP answer with another id"));
    }
    Ok(m)
}

fn upstream_err(upstream: SocketAddr, problem: impl std::fmt::Display) -> Error {
    Error::Upstream {
        upstream: upstream.to_string(),
        problem: problem.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_domains_win_by_longest_match() {
        let a: SocketAddr = "127.0.0.1:1053".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:1053".parse().unwrap();
        let c: SocketAddr = "127.0.0.3:1053".parse().unwrap();
        let mut cfg = ForwardConfig::new(vec![a]);
        cfg.stub_domains = vec![
            (Name::from_ascii("Corp.").unwrap(), vec![b]),
            (Name::from_ascii("lab.corp.").unwrap(), vec![c]),
        ];
        let f = Forwarder::new(cfg);
        let up = |n: &str| f.upstreams_for(&Name::from_ascii(n).unwrap());
        assert_eq!(up("x.example.com."), [a]);
        assert_eq!(up("db.CORP."), [b]);
        assert_eq!(up("x.lab.corp."), [c]);
        f.set_upstreams(vec![c, b]);
        assert_eq!(up("x.example.com."), [c, b], "new defaults");
        assert_eq!(up("db.CORP."), [b], "stub domains keep theirs");
        f.set_upstreams(Vec::new());
        assert!(f.can_forward(), "stub domains still forward");
        assert!(!Forwarder::new(ForwardConfig::new(Vec::new())).can_forward());
    }

    #[test]
    fn a_rewritten_or_replaced_resolv_conf_is_noticed() {
        let dir = std::env::temp_dir().join(format!("knode-dns-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (conf, real) = (dir.join("resolv.conf"), dir.join("real.conf"));
        std::fs::write(&conf, "nameserver 192.0.2.1\n").unwrap();
        let mut watch = ResolvConfWatch::new(&conf, &real);
        assert!(!watch.changed(), "nothing happened");
        // Rewritten in place (another size, so a coarse mtime cannot hide it).
        std::fs::write(&conf, "nameserver 192.0.2.2\nnameserver 192.0.2.3\n").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed(), "reported once");
        let ups = upstreams_from_resolv_conf(&conf, &real).unwrap();
        assert_eq!(ups.len(), 2);
        // Replaced by rename, as resolvconf and NetworkManager do: a new
        // inode even with the same size.
        let tmp = dir.join("resolv.conf.new");
        std::fs::write(&tmp, "nameserver 192.0.2.4\nnameserver 192.0.2.5\n").unwrap();
        std::fs::rename(&tmp, &conf).unwrap();
        assert!(watch.changed());
        // systemd-resolved's real file appearing counts too.
        std::fs::write(&real, "nameserver 192.0.2.6\n").unwrap();
        assert!(watch.changed());
        std::fs::remove_file(&conf).unwrap();
        assert!(watch.changed(), "a file going away");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn resolv_conf_falls_back_to_systemd_real_file() {
        let dir = std::env::temp_dir().join(format!("knode-dns-fwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stub = dir.join("stub.conf");
        let real = dir.join("real.conf");
        std::fs::write(
            &stub,
            "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
        )
        .unwrap();
        std::fs::write(&real, "nameserver 192.0.2.1\nnameserver 2001:db8::1\n").unwrap();
        let ups = upstreams_from_resolv_conf(&stub, &real).unwrap();
        assert_eq!(
            ups,
            [
                "192.0.2.1:53".parse().unwrap(),
                "[2001:db8::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(upstreams_from_resolv_conf(&real, &stub).unwrap().len(), 2);
        std::fs::write(&stub, "search example.com\n").unwrap();
        let err = upstreams_from_resolv_conf(&stub, &real)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("resolv-conf") && err.contains("no nameserver"),
            "{err}"
        );
        let err = upstreams_from_resolv_conf(&dir.join("missing"), &real)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
