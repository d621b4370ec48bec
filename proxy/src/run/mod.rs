//! The proxy controller the agent starts: list+watch Services and
//! EndpointSlices (as kube-proxy does; the EndpointSlice controller keeps
//! the slices from pods, readiness and lost nodes), keep the service view
//! current (recomputing only the Services a change touches, each from its
//! own slices), and hand each new view to a dedicated sync thread that
//! debounces (min sync period), checks the canary and runs full resyncs.

mod state;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use controlplane::api::{ControlPlane, Scope};
use controlplane::watcher::{Update, Watcher};
use controlplane::Kind;

use crate::conntrack::netlink::NetlinkConntrack;
use crate::iptables::{Backend, ExecIptables};
use crate::metrics::Metrics;
use crate::nft::NftSyncer;
use crate::rules::NodeConfig;
use crate::sync::{Proxier, Syncer, DEFAULT_FULL_SYNC_PERIOD};
use crate::view::ServicePort;
use crate::{Error, Result};
use state::{strip_slice, View};

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The node and the rule options.
    pub node: NodeConfig,
    /// At most one sync per this period (kube-proxy `--iptables-min-sync-period`, 1 s; 0 for tests).
    pub min_sync_period: Duration,
    /// Health allows a change to wait twice this (kube-proxy `--iptables-sync-period`, 30 s).
    pub sync_period: Duration,
    /// A full sync at least this often (kube-proxy's FullSyncPeriod, 1 h).
    pub full_sync_period: Duration,
    /// How often the canary chains are checked.
    pub canary_period: Duration,
    /// nftables or iptables; the agent picks it ([`ProxyMode::detect`]).
    pub mode: ProxyMode,
    /// The iptables backend; `None` detects it ([`Backend::detect`]).
    pub backend: Option<Backend>,
    /// Program this network namespace instead of the agent's own (tests).
    pub netns: Option<PathBuf>,
}

impl ProxyConfig {
    /// kube-proxy's defaults for `node`.
    pub fn new(node: NodeConfig) -> ProxyConfig {
        ProxyConfig {
            node,
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            full_sync_period: DEFAULT_FULL_SYNC_PERIOD,
            canary_period: Duration::from_secs(5),
            mode: ProxyMode::Nftables,
            backend: None,
            netns: None,
        }
    }
}

/// kube-proxy's `--proxy-mode`: how Services are programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Table `ip kube-proxy`, changed by set/map elements ([`crate::nft`]).
    Nftables,
    /// kube-proxy's iptables chains through `iptables-restore`.
    Iptables,
}

impl ProxyMode {
    /// `nftables` or `iptables`.
    pub fn parse(s: &str) -> Option<ProxyMode> {
        match s {
            "nftables" => Some(ProxyMode::Nftables),
            "iptables" => Some(ProxyMode::Iptables),
            _ => None,
        }
    }

    /// The name `proxy-mode` takes.
    pub fn name(self) -> &'static str {
        match self {
            ProxyMode::Nftables => "nftables",
            ProxyMode::Iptables => "iptables",
        }
    }

    /// nftables when the calling thread's kernel answers nf_tables requests
    /// (one generation read), else iptables.
    pub fn detect() -> ProxyMode {
        let nft = hostnet::nftables::NfTablesSocket::open()
            .and_then(|s| hostnet::nftables::NfTables::generation(&s));
        match nft {
            Ok(_) => ProxyMode::Nftables,
            Err(e) => {
                tracing::info!(error = %e, "proxy: no nf_tables; using iptables mode");
                ProxyMode::Iptables
            }
        }
    }
}

/// The engine of `cfg.mode`, after removing the other mode's rules (a node
/// restarted with the other mode must not keep both). Runs on the sync
/// thread, in the namespace the proxy programs.
fn proxier(cfg: &ProxyConfig) -> Result<Box<dyn Proxier>> {
    let ct = match NetlinkConntrack::open() {
        Ok(ct) => Some(Arc::new(ct)),
        Err(e) => {
            tracing::warn!(error = %e, "proxy: no UDP conntrack cleanup");
            None
        }
    };
    let backend = || cfg.backend.unwrap_or_else(Backend::detect);
    match cfg.mode {
        ProxyMode::Nftables => {
            let nft = Arc::new(hostnet::nftables::NfTablesSocket::open()?);
            match crate::sync::cleanup(&ExecIptables::new(backend())) {
                Ok(true) => tracing::info!("proxy: removed the iptables mode's rules"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "proxy: remove the iptables mode's rules"),
            }
            let mut s =
                NftSyncer::new(nft, cfg.node.clone()).with_full_sync_period(cfg.full_sync_period);
            if let Some(ct) = ct {
                s = s.with_conntrack(ct);
            }
            Ok(Box::new(s))
        }
        ProxyMode::Iptables => {
            if let Ok(nft) = hostnet::nftables::NfTablesSocket::open() {
                match crate::nft::cleanup(&nft) {
                    Ok(true) => tracing::info!("proxy: removed the nftables mode's table"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "proxy: remove table ip kube-proxy"),
                }
            }
            let backend = backend();
            tracing::info!(?backend, "proxy: iptables backend");
            let mut s = Syncer::new(Arc::new(ExecIptables::new(backend)), cfg.node.clone())
                .with_full_sync_period(cfg.full_sync_period);
            if let Some(ct) = ct {
                s = s.with_conntrack(ct);
            }
            Ok(Box::new(s))
        }
    }
}

/// A new desired view and when its oldest change not yet handed over
/// arrived.
struct Desired {
    services: Vec<ServicePort>,
    at: Instant,
}

/// Hands the newest view from the controller to the sync thread. It holds
/// at most one view, and the controller only builds a new one once the
/// sync thread took the last: however long an `iptables-restore` takes and
/// however fast objects change, memory holds a bounded number of copies
/// of the service view (a queue of them grew to a gigabyte at 10k
/// Services while a restore ran).
#[derive(Default)]
struct Mailbox {
    /// The view not yet taken, and whether the controller is gone.
    slot: Mutex<(Option<Desired>, bool)>,
    ready: Condvar,
}

impl Mailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Desired>, bool)> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the last view was taken (a new one may be built).
    fn is_empty(&self) -> bool {
        self.lock().0.is_none()
    }

    fn put(&self, d: Desired) {
        self.lock().0 = Some(d);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.lock().1 = true;
        self.ready.notify_one();
    }

    /// The view, if one arrives within `timeout`; `Err(())` once closed.
    fn take(&self, timeout: Duration) -> std::result::Result<Option<Desired>, ()> {
        let guard = self.lock();
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, timeout, |(d, closed)| d.is_none() && !*closed)
            .unwrap_or_else(|p| p.into_inner());
        match guard.0.take() {
            Some(d) => Ok(Some(d)),
            None if guard.1 => Err(()),
            None => Ok(None),
        }
    }
}

/// Closes the mailbox when the controller stops (its future dropped).
struct CloseOnDrop(Arc<Mailbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Runs the proxy until the control-plane watch or the sync thread fails
/// (it never returns otherwise; drop the future to stop it, which also
/// stops the sync thread). `metrics` is what the agent serves on
/// `/metrics` and `/healthz`; build it with `Metrics::new(cfg.sync_period)`.
pub async fn run(cp: Arc<dyn ControlPlane>, cfg: ProxyConfig, metrics: Arc<Metrics>) -> Result<()> {
    let mailbox = Arc::new(Mailbox::default());
    let _close = CloseOnDrop(Arc::clone(&mailbox));
    let rx = Arc::clone(&mailbox);
    let thread_cfg = cfg.clone();
    let thread_metrics = Arc::clone(&metrics);
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("proxy-sync".into())
        .spawn(move || {
            let r = sync_thread(&rx, &thread_cfg, &thread_metrics);
            let _ = done_tx.send(r);
        })
        .map_err(|e| Error::Iptables {
            what: "start the proxy sync thread".into(),
            detail: e.to_string(),
        })?;

    let mut state = View::new(cfg.node.node_name.clone());
    let mut services = Watcher::new(Arc::clone(&cp), Scope::all(Kind::Service));
    // Only what the proxy reads is kept of each slice.
    let mut slices = Watcher::new(cp, Scope::all(Kind::EndpointSlice)).with_transform(strip_slice);
    let (mut services_synced, mut slices_synced) = (false, false);
    let mut pending: Option<Instant> = None;
    // While the sync thread has not taken the last view, look again then.
    let mut retry_at: Option<Instant> = None;
    loop {
        let flush_at = pending.map(|p| (p + Duration::from_millis(10)).max(retry_at.unwrap_or(p)));
        tokio::select! {
            u = services.next() => match u {
                Update::Synced => services_synced = true,
                Update::Event(ev) => {
                    state.service_event(&ev);
                    pending.get_or_insert_with(Instant::now);
                }
            },
            u = slices.next() => match u {
                Update::Synced => slices_synced = true,
                Update::Event(ev) => {
                    state.slice_event(&ev);
                    pending.get_or_insert_with(Instant::now);
                }
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now).into()), if flush_at.is_some() && services_synced && slices_synced => {
                if !mailbox.is_empty() {
                    retry_at = Some(Instant::now() + Duration::from_millis(10));
                    continue;
                }
                retry_at = None;
                let at = pending.take().unwrap_or_else(Instant::now);
                state.recompute(services.store(), slices.store());
                metrics.queued(at);
                mailbox.put(Desired { services: state.flatten(), at });
            }
            r = &mut done_rx => return r.unwrap_or(Ok(())),
        }
    }
}

/// The sync thread: enters the namespace, builds the mode's engine, then syncs
/// whenever the view changed (no sooner than the min sync period after the
/// last sync), a full sync is due, or the canary is gone.
fn sync_thread(rx: &Mailbox, cfg: &ProxyConfig, metrics: &Metrics) -> Result<()> {
    let ns = cfg.netns.as_ref().map(hostnet::NetNs::open).transpose()?;
    let _guard = ns.as_ref().map(hostnet::NetNs::enter).transpose()?;
    if cfg.node.localhost_nodeports {
        hostnet::sysctl::ensure("net/ipv4/conf/all/route_localnet", "1")?;
    }
    tracing::info!(mode = cfg.mode.name(), "proxy: mode");
    let mut syncer = proxier(cfg)?;

    let mut desired: Option<Vec<ServicePort>> = None;
    let mut queued: Option<Instant> = None;
    let mut last_sync: Option<Instant> = None;
    let mut retry_after = cfg.min_sync_period;
    let mut last_canary = Instant::now();
    loop {
        let now = Instant::now();
        let earliest = last_sync.map_or(now, |t| t + retry_after);
        let dirty = queued.is_some() || syncer.next_is_full();
        let wake = if dirty && desired.is_some() {
            earliest
        } else {
            (last_canary + cfg.canary_period).min(now + Duration::from_secs(1))
        };
        match rx.take(wake.saturating_duration_since(now)) {
            Ok(Some(d)) => {
                queued = Some(queued.map_or(d.at, |q| q.max(d.at)));
                desired = Some(d.services);
            }
            Ok(None) => {}
            Err(()) => return Ok(()),
        }
        let now = Instant::now();
        if now >= last_canary + cfg.canary_period && last_sync.is_some() {
            syncer.check_canary();
            last_canary = now;
        }
        let Some(view) = &desired else { continue };
        let due = queued.is_some() || syncer.next_is_full();
        if !due || last_sync.is_some_and(|t| now < t + retry_after) {
            continue;
        }
        last_sync = Some(now);
        match syncer.sync(view) {
            Ok(outcome) => {
                metrics.synced(&outcome, queued.take());
                retry_after = cfg.min_sync_period;
                tracing::debug!(full = outcome.full, written = outcome.chains_written, took = ?outcome.duration, "proxy: synced");
            }
            Err(e) => {
                metrics.restore_failed();
                retry_after = cfg.min_sync_period.max(Duration::from_secs(1));
                tracing::warn!(error = %e, "proxy: sync failed; retrying with a full sync");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(n: usize) -> Desired {
        Desired {
            services: Vec::with_capacity(n),
            at: Instant::now(),
        }
    }

    #[test]
    fn the_mailbox_holds_only_the_newest_view_and_reports_its_close() {
        let m = Mailbox::default();
        assert!(m.is_empty());
        assert!(matches!(m.take(Duration::ZERO), Ok(None)));
        m.put(view(1));
        m.put(view(2));
        assert!(!m.is_empty());
        let got = m.take(Duration::ZERO).unwrap().unwrap();
        assert_eq!(
            got.services.capacity(),
            2,
            "the newer view replaced the older"
        );
        assert!(m.is_empty());
        // A waiting sync thread wakes when the controller goes.
        let m = Arc::new(m);
        let waiter = {
            let m = Arc::clone(&m);
            std::thread::spawn(move || m.take(Duration::from_secs(10)).is_err())
        };
        drop(CloseOnDrop(Arc::clone(&m)));
        assert!(waiter.join().unwrap(), "closed");
    }
}
