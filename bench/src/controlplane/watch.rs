//! Watch-event latency: from just before a write until a watcher opened
//! beforehand sees its event, for the embedded agent (REST client on its
//! socket), our etcd backend (`Registry` over `Etcd`) and raw etcd-client
//! put + watch on the same etcd. It only creates ConfigMaps (and raw keys
//! under [`RAW_PREFIX`]); it never reads or deletes anything else.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use controlplane::registry::{Allocators, Registry};
use controlplane::rest::client::Client;
use controlplane::storage::etcd::Etcd;
use controlplane::{ControlPlane, Kind, Scope, Watch, WatchEvent};
use etcd_client::{WatchOptions, WatchStream};

use super::{configmap, Side, PAYLOAD_BYTES};

/// Where the raw reference writes and watches (outside knode's `/knode/`).
pub const RAW_PREFIX: &str = "/bench-raw/watch/";
/// How long one event may take before the run fails.
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Side {
    /// What it measures, for the report.
    pub fn watch_about(self) -> &'static str {
        match self {
            Side::Embedded => "REST client on a `knode agent` socket (embedded redb store)",
            Side::Etcd => "Registry over our Etcd storage, in process, against etcd",
            Side::EtcdRaw => "raw etcd-client put + prefix watch on the same etcd (floor)",
        }
    }
}

/// One side's timings.
#[derive(Debug, Clone)]
pub struct Samples {
    pub side: Side,
    /// Write start until the watcher has the event.
    pub event: Vec<Duration>,
    /// Write start until the write returned.
    pub ack: Vec<Duration>,
}

/// An open watch and the way to write into what it watches.
pub(crate) enum Target {
    Cp {
        cp: Arc<dyn ControlPlane>,
        watch: Watch,
    },
    Raw {
        // Boxed: both are kilobytes large, the other variant is not.
        client: Box<etcd_client::Client>,
        stream: Box<WatchStream>,
    },
}

fn scope() -> Scope {
    Scope::namespaced(Kind::ConfigMap, "default")
}

pub(crate) async fn open(side: Side, socket: &Path, endpoints: &[String]) -> Result<Target> {
    let cp: Arc<dyn ControlPlane> = match side {
        Side::Embedded => Arc::new(Client::new(socket)),
        Side::Etcd => {
            let reg = Registry::new(
                Arc::new(Etcd::connect(endpoints).await?),
                Allocators::default(),
            );
            reg.bootstrap().await?;
            Arc::new(reg)
        }
        Side::EtcdRaw => {
            let mut client = etcd_client::Client::connect(endpoints, None).await?;
            let mut stream = client
                .watch(RAW_PREFIX, Some(WatchOptions::new().with_prefix()))
                .await?;
            // The first response confirms the watch exists.
            let created = stream
                .message()
                .await?
                .ok_or_else(|| anyhow!("raw watch on {RAW_PREFIX}: the stream ended at once"))?;
            if !created.created() || created.canceled() {
                bail!("raw watch on {RAW_PREFIX} was not created: {created:?}");
            }
            return Ok(Target::Raw {
                client: Box::new(client),
                stream: Box::new(stream),
            });
        }
    };
    let list = cp.list(&scope()).await?;
    let watch = cp.watch(&scope(), list.revision).await?;
    Ok(Target::Cp { cp, watch })
}

/// One write of a new ConfigMap `name`: (until acknowledged, until seen).
pub(crate) async fn once(target: &mut Target, name: &str) -> Result<(Duration, Duration)> {
    let obj = configmap(name, PAYLOAD_BYTES)?;
    match target {
        Target::Cp { cp, watch } => {
            let t0 = Instant::now();
            let write = async {
                let r = cp.create(obj, None).await;
                (r, t0.elapsed())
            };
            let seen = tokio::time::timeout(EVENT_TIMEOUT, async {
                loop {
                    match watch.next().await {
                        Some(Ok(WatchEvent::Added(o))) if o.name() == name => {
                            return Ok::<_, anyhow::Error>(t0.elapsed())
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => bail!("watch ended: {e}"),
                        None => bail!("watch closed"),
                    }
                }
            });
            let ((written, ack), seen) = tokio::join!(write, seen);
            written.with_context(|| format!("create ConfigMap {name}"))?;
            let event =
                seen.map_err(|_| anyhow!("no ADDED event for {name} in {EVENT_TIMEOUT:?}"))??;
            Ok((ack, event))
        }
        Target::Raw { client, stream } => {
            let key = format!("{RAW_PREFIX}{name}");
            let value = serde_json::to_vec(&obj.to_value())?;
            let mut kv = client.kv_client();
            let t0 = Instant::now();
            let write = async {
                let r = kv.put(key.clone(), value, None).await;
                (r, t0.elapsed())
            };
            let seen = tokio::time::timeout(EVENT_TIMEOUT, async {
                loop {
                    let Some(resp) = stream.message().await? else {
                        bail!("raw watch closed");
                    };
                    if resp
                        .events()
                        .iter()
                        .any(|e| e.kv().is_some_and(|kv| kv.key() == key.as_bytes()))
                    {
                        return Ok::<_, anyhow::Error>(t0.elapsed());
                    }
                }
            });
            let ((written, ack), seen) = tokio::join!(write, seen);
            written.with_context(|| format!("raw put {key}"))?;
            let event = seen.map_err(|_| anyhow!("no event for {key} in {EVENT_TIMEOUT:?}"))??;
            Ok((ack, event))
        }
    }
}

/// Opens a watch per side, then writes `warmup` untimed and `writes` timed
/// ConfigMaps per side, one at a time, rotating which side goes first.
pub async fn measure(
    socket: &Path,
    endpoints: &[String],
    warmup: usize,
    writes: usize,
) -> Result<Vec<Samples>> {
    let mut targets = Vec::with_capacity(Side::ALL.len());
    for side in Side::ALL {
        let t = open(side, socket, endpoints)
            .await
            .with_context(|| format!("open the {} watch", side.name()))?;
        targets.push(t);
    }
    let mut samples: Vec<Samples> = Side::ALL
        .iter()
        .map(|&side| Samples {
            side,
            event: Vec::with_capacity(writes),
            ack: Vec::with_capacity(writes),
        })
        .collect();
    let n = targets.len();
    for i in 0..warmup + writes {
        let name = if i < warmup {
            format!("warm-{i}")
        } else {
            format!("w-{}", i - warmup)
        };
        for j in 0..n {
            let k = (i + j) % n;
            let (ack, event) = once(&mut targets[k], &name)
                .await
                .with_context(|| format!("{} write {name}", Side::ALL[k].name()))?;
            if i >= warmup {
                samples[k].ack.push(ack);
                samples[k].event.push(event);
            }
        }
    }
    Ok(samples)
}
