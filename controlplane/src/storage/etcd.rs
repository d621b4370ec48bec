//! The etcd store: every key lives under `/knode/`, a revision is etcd's
//! `mod_revision`, each write or delete is ONE etcd transaction (the
//! precondition and claim compares, then the puts and deletes), and expiry
//! is an etcd lease. It keeps no state besides the connections, so any
//! number of agents may share one cluster; it must never cache or order
//! writes itself — etcd does that.
//!
//! Requests stick to one member and move to the next when it fails, as
//! etcd's Go client does. etcd-client's own balancer spreads requests over
//! every endpoint but never drops a failing one: a killed member is only
//! refused connections (cheap to retry), but a hung one gets its share of
//! requests, each waiting out the full timeout.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, GetResponse,
    KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchResponse,
};
use tokio::sync::mpsc;

use super::{ttl_secs, Precondition, RawEvent, RawWatch, Storage, Stored, Write, WriteError};
use crate::api::{Error, Expiry, Result};

/// Where knode's keys live in etcd.
pub const ROOT: &str = "/knode/";

/// How long to wait for a TCP connection to one member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may wait for its answer; a member that does not
/// answer in time counts as failed and the next attempt may go elsewhere.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on connections with open streams (watches), so a dead
/// member's watch fails within interval + timeout. etcd refuses pings
/// more often than every 5 s (`--grpc-keepalive-min-time`).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one operation keeps retrying transient failures (a dead
/// member, an election) before it gives up.
const RETRY_BUDGET: Duration = Duration::from_secs(6);
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Keys per page when listing: keeps each response far below the gRPC
/// message limit however many objects there are.
const PAGE: i64 = 500;
/// The largest response accepted (etcd's own request limit is 1.5 MiB per
/// value, so a page of large values needs more than tonic's 4 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// Events buffered for a slow watcher.
const WATCH_BUFFER: usize = 256;
/// Transaction attempts when the writer turns out to own some of the
/// claims it asks for (each attempt learns which).
const CLAIM_ROUNDS: usize = 8;

/// How long a member that failed a request is passed over.
const COOLDOWN: Duration = Duration::from_secs(10);

/// TLS for etcd (`etcds://` endpoints): the CA that signed the members'
/// certificates, and a client certificate and key when the cluster asks
/// for one (`--client-cert-auth`). All PEM files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<std::path::PathBuf>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// The client TLS settings, or `None` when nothing is configured.
    fn options(&self) -> Result<Option<etcd_client::TlsOptions>> {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p)
                .map_err(|e| Error::BadRequest(format!("etcd-{what} {}: {e}", p.display())))
        };
        if self == &TlsFiles::default() {
            return Ok(None);
        }
        let mut t = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.ca {
            t = t.ca_certificate(etcd_client::Certificate::from_pem(read("cafile", ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                t = t.identity(etcd_client::Identity::from_pem(
                    read("certfile", c)?,
                    read("keyfile", k)?,
                ));
            }
            (None, None) => {}
            _ => {
                return Err(Error::BadRequest(
                    "etcd-certfile and etcd-keyfile: give both or neither".into(),
                ))
            }
        }
        Ok(Some(t))
    }
}

/// The etcd store. Cloning shares the connections.
#[derive(Clone)]
pub struct Etcd {
    members: Arc<Members>,
}

/// One client per endpoint and which one requests go to.
struct Members {
    endpoints: Vec<String>,
    clients: Vec<Client>,
    pick: Mutex<Pick>,
}

#[derive(Debug)]
struct Pick {
    /// The member requests go to.
    current: usize,
    /// Until when each member is passed over after a failure.
    bad_until: Vec<Option<Instant>>,
}

impl Pick {
    /// The member to use at `now`: the current one unless it failed
    /// recently, else the next that did not, else the one whose failure
    /// is oldest.
    fn choose(&mut self, now: Instant) -> usize {
        let n = self.bad_until.len();
        let ok = |i: usize| self.bad_until[i].is_none_or(|t| t <= now);
        let chosen = (0..n)
            .map(|k| (self.current + k) % n)
            .find(|&i| ok(i))
            .or_else(|| (0..n).min_by_key(|&i| self.bad_until[i]))
            .unwrap_or(0);
        self.current = chosen;
        chosen
    }

    /// Member `i` failed at `now`: pass it over for a while.
    fn failed(&mut self, i: usize, now: Instant) {
        if let Some(slot) = self.bad_until.get_mut(i) {
            *slot = Some(now + COOLDOWN);
        }
    }
}

impl Members {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pick> {
        // Pick's fields are always consistent; a poisoned lock is usable.
        self.pick.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The member to send a request to, and its client (`None` only
    /// without endpoints, which [`Etcd::connect`] refuses).
    fn choose(&self) -> Option<(usize, Client)> {
        let i = self.lock().choose(Instant::now());
        Some((i, self.clients.get(i)?.clone()))
    }

    fn failed(&self, i: usize, e: &etcd_client::Error) {
        if let Some(ep) = self.endpoints.get(i) {
            tracing::warn!(endpoint = %ep, error = %e, "etcd member failed a request; trying another");
        }
        self.lock().failed(i, Instant::now());
    }
}

/// Which failures an operation may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, lease grants, watch creation: any transient failure.
    Idempotent,
    /// Transactions: only failures that prove the request was never
    /// handled (no connection, no leader), as etcd's own client does.
    IfNotSent,
}

/// The etcd key of a storage key.
fn full(key: &str) -> String {
    format!("{ROOT}{key}")
}

/// The storage key of an etcd key (keys outside [`ROOT`] are kept whole).
fn strip(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.strip_prefix(ROOT).unwrap_or(&s).to_string()
}

/// The end of etcd's range for keys starting with `prefix`: the prefix
/// with its last byte below 0xff incremented (etcd's `GetPrefixRangeEnd`).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or empty): every key from `prefix` on.
    vec![0]
}

/// The first key after `key` in etcd's byte order.
fn next_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

fn rev_u64(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

fn rev_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

/// Sorted and without duplicates or `except`.
fn unique_keys(keys: Vec<String>, except: &str) -> Vec<String> {
    keys.into_iter()
        .filter(|k| k != except)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn stored(kv: &KeyValue) -> Stored {
    Stored {
        key: strip(kv.key()),
        value: kv.value().to_vec(),
        revision: rev_u64(kv.mod_revision()),
    }
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| rev_u64(h.revision()))
}

/// gRPC status codes (tonic's `Code` values; this crate does not depend
/// on tonic, so they are compared as numbers).
mod code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const ABORTED: i32 = 10;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
}

/// The gRPC status code and message of an etcd-client error, if it has one.
fn grpc_status(e: &etcd_client::Error) -> Option<(i32, &str)> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some((s.code() as i32, s.message())),
        _ => None,
    }
}

/// Whether `e`'s chain shows the request never reached a member: the
/// connection could not be made, or the member has no leader (etcd checks
/// that before it looks at the request).
fn not_sent(e: &etcd_client::Error) -> bool {
    if grpc_status(e).is_some_and(|(_, msg)| msg.contains("etcdserver: no leader")) {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ) {
                return true;
            }
        }
        let text = err.to_string();
        if text.contains("tcp connect error") || text.contains("Connection refused") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether retrying an idempotent request may help.
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(_) => grpc_status(e).is_some_and(|(c, _)| {
            matches!(
                c,
                code::UNAVAILABLE
                    | code::DEADLINE_EXCEEDED
                    | code::UNKNOWN
                    | code::CANCELLED
                    | code::ABORTED
                    | code::INTERNAL
            )
        }),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => not_sent(e),
    }
}

/// What `what` on `target` failed with, as an API error: a request etcd
/// refuses as malformed (e.g. a value over its size limit) is a bad
/// request, anything else means the store is unavailable.
fn failed(what: &str, target: &str, e: &etcd_client::Error) -> Error {
    let msg = format!("etcd {what} on {target}: {e}");
    match grpc_status(e) {
        Some((code::INVALID_ARGUMENT, _)) => Error::BadRequest(msg),
        _ => Error::Unavailable(msg),
    }
}

/// The range responses of a transaction branch, in order.
fn gets(resp: &TxnResponse) -> Vec<GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// What a failed write transaction's read-back says.
#[derive(Debug, PartialEq)]
enum Verdict {
    Refused(WriteError),
    /// The writer owns claims it asked for (or no longer owns ones it
    /// thought it did): try again comparing those by owner.
    Again,
}

/// Explains why the compares of a write failed from the values the
/// failure branch read in the same transaction: `current` is the key's
/// `mod_revision` (None when absent), `claims` each claim's owner.
fn judge(
    w: &Write,
    current: Option<u64>,
    claims: &[(String, Option<String>)],
    owned: &mut BTreeSet<String>,
) -> Verdict {
    match (w.precondition, current) {
        (Precondition::Absent, Some(_)) => return Verdict::Refused(WriteError::Exists),
        (Precondition::Exists | Precondition::Revision(_), None) => {
            return Verdict::Refused(WriteError::NotFound)
        }
        (Precondition::Revision(want), Some(cur)) if want != cur => {
            return Verdict::Refused(WriteError::RevisionMismatch { current: cur })
        }
        _ => {}
    }
    let mut changed = false;
    for (claim, owner) in claims {
        match owner {
            Some(owner) if *owner != w.key => {
                return Verdict::Refused(WriteError::ClaimTaken {
                    claim: claim.clone(),
                    owner: owner.clone(),
                })
            }
            Some(_) => changed |= owned.insert(claim.clone()),
            None => changed |= owned.remove(claim),
        }
    }
    if changed {
        Verdict::Again
    } else {
        Verdict::Refused(WriteError::Other(Error::Internal(format!(
            "etcd txn on {}: its compares failed but the values read back satisfy them",
            full(&w.key)
        ))))
    }
}

impl Etcd {
    /// Connects to the cluster at `endpoints` (`http://127.0.0.1:2379`,
    /// ...). Requests go to the first member, and move to the next when
    /// it fails or does not answer in time. Fails when no member answers.
    pub async fn connect(endpoints: &[String]) -> Result<Etcd> {
        Etcd::connect_with(endpoints, &TlsFiles::default()).await
    }

    /// Like [`Etcd::connect`], with TLS settings for `https://` endpoints.
    pub async fn connect_with(endpoints: &[String], tls: &TlsFiles) -> Result<Etcd> {
        if endpoints.is_empty() {
            return Err(Error::BadRequest(
                "connect to etcd: no endpoints given".into(),
            ));
        }
        let list = endpoints.join(",");
        let opts = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let opts = match tls.options()? {
            Some(t) => opts.with_tls(t),
            None => opts,
        };
        let mut clients = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            // Connects lazily: this only checks the URL.
            let client = Client::connect([ep], Some(opts.clone()))
                .await
                .map_err(|e| Error::Unavailable(format!("connect to etcd at {ep}: {e}")))?;
            clients.push(client);
        }
        let etcd = Etcd {
            members: Arc::new(Members {
                endpoints: endpoints.to_vec(),
                clients,
                pick: Mutex::new(Pick {
                    current: 0,
                    bad_until: vec![None; endpoints.len()],
                }),
            }),
        };
        // Ask something to know that some member works.
        etcd.call("probe", &list, Retry::Idempotent, |c, _| async move {
            c.kv_client()
                .get(ROOT, Some(GetOptions::new().with_keys_only().with_limit(1)))
                .await
        })
        .await?;
        tracing::info!(endpoints = %list, "connected to etcd");
        Ok(etcd)
    }

    /// The endpoints it was connected with.
    pub fn endpoints(&self) -> &[String] {
        &self.members.endpoints
    }

    /// Runs `f`, retrying what `retry` allows until [`RETRY_BUDGET`] is
    /// spent; the error names `what` was done to `target`.
    async fn call<T, F, Fut>(&self, what: &str, target: &str, retry: Retry, mut f: F) -> Result<T>
    where
        F: FnMut(Client, usize) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let start = Instant::now();
        let mut delay = FIRST_BACKOFF;
        loop {
            let Some((member, client)) = self.members.choose() else {
                return Err(Error::Internal(format!(
                    "etcd {what} on {target}: no endpoints"
                )));
            };
            let e = match f(client, member).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if transient(&e) {
                self.members.failed(member, &e);
            }
            let again = match retry {
                Retry::Idempotent => transient(&e),
                Retry::IfNotSent => not_sent(&e),
            };
            if !again || start.elapsed() + delay > RETRY_BUDGET {
                return Err(failed(what, target, &e));
            }
            tracing::debug!(%what, %target, error = %e, "etcd request failed; retrying");
            // Straight to another member when there is one not known bad.
            let next = self.members.lock().choose(Instant::now());
            if next == member {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// A lease of `ttl` (rounded up to whole seconds) for `key`.
    async fn grant(&self, ttl: Duration, key: &str) -> Result<i64> {
        let secs = ttl_secs(ttl);
        let resp = self
            .call("lease grant", key, Retry::Idempotent, |c, _| async move {
                c.lease_client().grant(secs, None).await
            })
            .await?;
        Ok(resp.id())
    }

    /// Gives back a lease nobody uses (best effort: it expires anyway).
    async fn revoke(&self, lease: Option<i64>) {
        if let Some(id) = lease {
            let Some((_, client)) = self.members.choose() else {
                return;
            };
            if let Err(e) = client.lease_client().revoke(id).await {
                tracing::debug!(lease = id, error = %e, "revoking an unused etcd lease");
            }
        }
    }

    /// The write transaction: `owned` claims are compared by owner, the
    /// others must be absent.
    fn write_txn(
        w: &Write,
        claims: &[String],
        release: &[String],
        owned: &BTreeSet<String>,
        lease: Option<i64>,
    ) -> Txn {
        let key = full(&w.key);
        let mut when = match w.precondition {
            Precondition::Absent => {
                vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)]
            }
            Precondition::Exists => {
                vec![Compare::create_revision(key.clone(), CompareOp::Greater, 0)]
            }
            Precondition::Revision(rev) => vec![
                Compare::create_revision(key.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(key.clone(), CompareOp::Equal, rev_i64(rev)),
            ],
        };
        for c in claims {
            when.push(if owned.contains(c) {
                Compare::value(full(c), CompareOp::Equal, w.key.clone())
            } else {
                Compare::create_revision(full(c), CompareOp::Equal, 0)
            });
        }
        let put = match (w.expiry, lease) {
            (_, Some(id)) => Some(PutOptions::new().with_lease(id)),
            // Nothing to keep on a key being created.
            (Expiry::Keep, None) if w.precondition != Precondition::Absent => {
                Some(PutOptions::new().with_ignore_lease())
            }
            // A plain put detaches any lease.
            _ => None,
        };
        let mut then = vec![TxnOp::put(key.clone(), w.value.clone(), put)];
        // A key both claimed and released ends up free, as in the
        // embedded store (etcd refuses a put and a delete of one key).
        then.extend(
            claims
                .iter()
                .filter(|c| !release.contains(c))
                .map(|c| TxnOp::put(full(c), w.key.clone(), None)),
        );
        then.extend(release.iter().map(|c| TxnOp::delete(full(c), None)));
        let mut otherwise = vec![TxnOp::get(key, Some(GetOptions::new().with_keys_only()))];
        otherwise.extend(claims.iter().map(|c| TxnOp::get(full(c), None)));
        Txn::new().when(when).and_then(then).or_else(otherwise)
    }
}

#[async_trait]
impl Storage for Etcd {
    async fn get(&self, key: &str) -> Result<Option<Stored>> {
        let k = full(key);
        let resp = self
            .call("get", &k, Retry::Idempotent, |c, _| {
                let k = k.clone();
                async move { c.kv_client().get(k, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(stored))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, u64)> {
        let start = full(prefix);
        let end = range_end(start.as_bytes());
        let mut from = start.clone().into_bytes();
        let mut revision = 0i64;
        let mut out = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                // Later pages read the same snapshot as the first.
                opts = opts.with_revision(revision);
            }
            let resp = self
                .call("list", &start, Retry::Idempotent, |c, _| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move {
                        c.kv_client()
                            .max_decoding_message_size(MAX_MESSAGE)
                            .get(from, Some(opts))
                            .await
                    }
                })
                .await?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            out.extend(resp.kvs().iter().map(stored));
            match resp.kvs().last() {
                Some(last) if resp.more() => from = next_key(last.key()),
                _ => break,
            }
        }
        Ok((out, rev_u64(revision)))
    }

    async fn write(&self, w: Write) -> Result<u64, WriteError> {
        let key = full(&w.key);
        let claims = unique_keys(w.claim.clone(), &w.key);
        let release = unique_keys(w.release.clone(), &w.key);
        let lease = match w.expiry {
            Expiry::After(ttl) => Some(self.grant(ttl, &key).await?),
            Expiry::Never | Expiry::Keep => None,
        };
        let mut owned = BTreeSet::new();
        for _ in 0..CLAIM_ROUNDS {
            let txn = Self::write_txn(&w, &claims, &release, &owned, lease);
            let resp = self
                .call("txn", &key, Retry::IfNotSent, |c, _| {
                    let txn = txn.clone();
                    async move { c.kv_client().txn(txn).await }
                })
                .await;
            // No revoke on failure here: the transaction may have been
            // applied with the lease (an answer lost in a timeout), and
            // revoking would delete the key. An unused lease just expires.
            let resp = resp?;
            if resp.succeeded() {
                return Ok(header_revision(resp.header()));
            }
            let got = gets(&resp);
            let current = got
                .first()
                .and_then(|g| g.kvs().first())
                .map(|kv| rev_u64(kv.mod_revision()));
            let owners: Vec<(String, Option<String>)> = claims
                .iter()
                .zip(got.iter().skip(1))
                .map(|(c, g)| {
                    let owner = g
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                    (c.clone(), owner)
                })
                .collect();
            match judge(&w, current, &owners, &mut owned) {
                Verdict::Again => continue,
                Verdict::Refused(e) => {
                    self.revoke(lease).await;
                    return Err(e);
                }
            }
        }
        self.revoke(lease).await;
        Err(WriteError::Other(Error::Unavailable(format!(
            "etcd txn on {key}: its claims kept changing owner; tried {CLAIM_ROUNDS} times"
        ))))
    }

    async fn delete(
        &self,
        key: &str,
        revision: Option<u64>,
        release: Vec<String>,
    ) -> Result<(Stored, u64), WriteError> {
        let k = full(key);
        let release = unique_keys(release, key);
        let mut when = vec![Compare::create_revision(k.clone(), CompareOp::Greater, 0)];
        if let Some(rev) = revision {
            when.push(Compare::mod_revision(
                k.clone(),
                CompareOp::Equal,
                rev_i64(rev),
            ));
        }
        let mut then = vec![TxnOp::delete(
            k.clone(),
            Some(DeleteOptions::new().with_prev_key()),
        )];
        then.extend(release.iter().map(|c| TxnOp::delete(full(c), None)));
        let txn = Txn::new()
            .when(when)
            .and_then(then)
            .or_else(vec![TxnOp::get(
                k.clone(),
                Some(GetOptions::new().with_keys_only()),
            )]);
        let resp = self
            .call("delete txn", &k, Retry::IfNotSent, |c, _| {
                let txn = txn.clone();
                async move { c.kv_client().txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            return match gets(&resp).first().and_then(|g| g.kvs().first()) {
                None => Err(WriteError::NotFound),
                Some(kv) => Err(WriteError::RevisionMismatch {
                    current: rev_u64(kv.mod_revision()),
                }),
            };
        }
        let last = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(d) => d.prev_kvs().first().map(stored),
            _ => None,
        });
        // Absent prev_kv would mean the compare lied; report it as gone.
        let last = last.ok_or(WriteError::NotFound)?;
        Ok((last, header_revision(resp.header())))
    }

    async fn watch(&self, prefix: &str, revision: u64) -> Result<RawWatch> {
        let key = full(prefix);
        let opts = WatchOptions::new()
            .with_range(range_end(key.as_bytes()))
            .with_start_revision(rev_i64(revision.saturating_add(1)))
            .with_prev_key();
        let (stream, first, member) = self
            .call("watch", &key, Retry::Idempotent, |c, member| {
                let (key, opts) = (key.clone(), opts.clone());
                async move {
                    let mut stream = c.watch_client().watch(key, Some(opts)).await?;
                    let first = stream.message().await?;
                    Ok((stream, first, member))
                }
            })
            .await?;
        let first = first.ok_or_else(|| {
            Error::Unavailable(format!("etcd watch on {key}: the stream ended at once"))
        })?;
        if first.canceled() {
            return Err(match rev_u64(first.compact_revision()) {
                0 => Error::Unavailable(format!(
                    "etcd watch on {key} from revision {revision}: refused: {}",
                    first.cancel_reason()
                )),
                oldest => Error::Compacted {
                    requested: revision,
                    oldest,
                },
            });
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watch_id = first.watch_id();
        let members = self.members.clone();
        tokio::spawn(async move {
            let (mut sender, mut responses) = stream.split();
            let mut seen = revision;
            // The creation answer may already carry events.
            let mut next = Some(first);
            loop {
                let resp = match next.take() {
                    Some(r) => r,
                    None => {
                        let msg = tokio::select! {
                            _ = tx.closed() => {
                                // Nobody listens: stop etcd's side too
                                // (dropping the stream resets it anyway).
                                let _ = sender.cancel(watch_id).await;
                                return;
                            }
                            m = responses.message() => m,
                        };
                        match msg {
                            Ok(Some(r)) => r,
                            Ok(None) => {
                                let e = format!(
                                    "etcd watch on {key}: the stream ended after revision {seen}"
                                );
                                let _ = tx.send(Err(Error::Unavailable(e))).await;
                                return;
                            }
                            Err(e) => {
                                // The next request (the watcher's relist)
                                // should not wait on this member.
                                if transient(&e) {
                                    members.failed(member, &e);
                                }
                                let e = format!("etcd watch on {key} after revision {seen}: {e}");
                                let _ = tx.send(Err(Error::Unavailable(e))).await;
                                return;
                            }
                        }
                    }
                };
                match events(&resp, seen) {
                    Ok(evs) => {
                        for ev in evs {
                            seen = ev.revision();
                            if tx.send(Ok(ev)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// The events of one watch response, or why the watch must end: etcd
/// compacted past it or canceled it (the watcher relists), or a deletion
/// came without its last value (compacted away; relisting repairs it).
fn events(resp: &WatchResponse, seen: u64) -> Result<Vec<RawEvent>> {
    if resp.compact_revision() > 0 || resp.canceled() {
        let oldest = match rev_u64(resp.compact_revision()) {
            0 => seen + 1,
            r => r,
        };
        return Err(Error::Compacted {
            requested: seen,
            oldest,
        });
    }
    let mut out = Vec::with_capacity(resp.events().len());
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let at = rev_u64(kv.mod_revision());
        match ev.event_type() {
            EventType::Put => out.push(RawEvent::Put {
                stored: stored(kv),
                created: kv.version() == 1,
            }),
            EventType::Delete => {
                let Some(prev) = ev.prev_kv() else {
                    return Err(Error::Compacted {
                        requested: seen,
                        oldest: at,
                    });
                };
                out.push(RawEvent::Delete {
                    last: stored(prev),
                    revision: at,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_live_under_the_root() {
        assert_eq!(full("pods/default/web"), "/knode/pods/default/web");
        assert_eq!(strip(b"/knode/pods/default/web"), "pods/default/web");
        assert_eq!(strip(b"/other/x"), "/other/x");
    }

    #[test]
    fn prefix_ranges_stop_at_the_next_prefix() {
        assert_eq!(range_end(b"/knode/pods/"), b"/knode/pods0".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff"), vec![0]);
        assert!(b"/knode/pods/x".as_slice() < range_end(b"/knode/pods/").as_slice());
        assert!(b"/knode/podsx".as_slice() > range_end(b"/knode/pods/").as_slice());
        assert_eq!(next_key(b"a"), b"a\0".to_vec());
    }

    #[test]
    fn requests_stick_to_a_member_until_it_fails() {
        let t0 = Instant::now();
        let mut p = Pick {
            current: 1,
            bad_until: vec![None; 3],
        };
        assert_eq!(p.choose(t0), 1);
        assert_eq!(p.choose(t0), 1);
        p.failed(1, t0);
        assert_eq!(p.choose(t0), 2);
        p.failed(2, t0);
        assert_eq!(p.choose(t0), 0);
        // It stays on the working member after the others cool down.
        assert_eq!(p.choose(t0 + COOLDOWN * 2), 0);
        // Every member failed: the one that failed longest ago.
        p.failed(0, t0 + Duration::from_secs(1));
        assert_eq!(p.choose(t0 + Duration::from_secs(2)), 1);
    }

    #[test]
    fn claim_lists_are_deduplicated_without_the_owner() {
        let got = unique_keys(
            vec!["c/2".into(), "c/1".into(), "c/2".into(), "svc".into()],
            "svc",
        );
        assert_eq!(got, vec!["c/1".to_string(), "c/2".to_string()]);
    }

    fn write(pre: Precondition) -> Write {
        Write {
            key: "services/default/a".into(),
            value: b"{}".to_vec(),
            precondition: pre,
            expiry: Expiry::Never,
            claim: vec!["claims/clusterip/10.96.0.10".into()],
            release: Vec::new(),
        }
    }

    #[test]
    fn failed_compares_are_explained() {
        let mut owned = BTreeSet::new();
        let free = [("claims/clusterip/10.96.0.10".to_string(), None)];
        assert_eq!(
            judge(&write(Precondition::Absent), Some(3), &free, &mut owned),
            Verdict::Refused(WriteError::Exists)
        );
        assert_eq!(
            judge(&write(Precondition::Revision(4)), None, &free, &mut owned),
            Verdict::Refused(WriteError::NotFound)
        );
        assert_eq!(
            judge(
                &write(Precondition::Revision(4)),
                Some(7),
                &free,
                &mut owned
            ),
            Verdict::Refused(WriteError::RevisionMismatch { current: 7 })
        );
        let taken = [(
            "claims/clusterip/10.96.0.10".to_string(),
            Some("services/default/b".to_string()),
        )];
        assert_eq!(
            judge(&write(Precondition::Absent), None, &taken, &mut owned),
            Verdict::Refused(WriteError::ClaimTaken {
                claim: "claims/clusterip/10.96.0.10".into(),
                owner: "services/default/b".into(),
            })
        );
    }

    #[test]
    fn claims_the_writer_owns_are_compared_by_owner_next_time() {
        let mut owned = BTreeSet::new();
        let mine = [(
            "claims/clusterip/10.96.0.10".to_string(),
            Some("services/default/a".to_string()),
        )];
        let w = write(Precondition::Revision(5));
        assert_eq!(judge(&w, Some(5), &mine, &mut owned), Verdict::Again);
        assert!(owned.contains("claims/clusterip/10.96.0.10"));
        // Same state again: nothing left to learn, so it is an error.
        assert!(matches!(
            judge(&w, Some(5), &mine, &mut owned),
            Verdict::Refused(WriteError::Other(Error::Internal(_)))
        ));
        // Released meanwhile: compare it as absent again.
        let free = [("claims/clusterip/10.96.0.10".to_string(), None)];
        assert_eq!(judge(&w, Some(5), &free, &mut owned), Verdict::Again);
        assert!(owned.is_empty());
    }
}
