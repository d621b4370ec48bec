//! Allocation policy over a [`Store`]: the reference's round-robin walk
//! (start after `last_reserved_ip.N`, wrap through the set's ranges, skip
//! gateway/network/broadcast), one address per range set and attachment,
//! all-or-nothing ADD, hinted release, CHECK, GC and fullness for STATUS.
//! It must not know paths, locking or the CNI environment.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::config::{ip_from_u128, ip_to_u128, Range, RangeSet};
use super::store::{Owner, Store};
use crate::skel::{Attachment, CniError, Code, IpConfig, Result};

/// The candidate addresses of a range set in allocation order, each with the
/// index of its range: after `last` when the set holds it, otherwise from the
/// first range's start; wrapping once around all ranges.
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    ranges: &'a [Range],
    pos: (usize, u128),
    first: (usize, u128),
    started: bool,
    done: bool,
}

/// Starts a [`Walk`] over `set`.
pub fn walk(set: &RangeSet, last: Option<IpAddr>) -> Walk<'_> {
    let ranges = set.ranges.as_slice();
    let from_last = last.and_then(|ip| {
        ranges
            .iter()
            .position(|r| r.contains(ip))
            .map(|i| (i, ip_to_u128(ip)))
    });
    let first = match (from_last, ranges.first()) {
        (Some((i, n)), _) => advance(ranges, (i, n)),
        (None, Some(r)) => (0, ip_to_u128(r.start)),
        (None, None) => (0, 0),
    };
    Walk {
        ranges,
        pos: first,
        first,
        started: false,
        done: ranges.is_empty(),
    }
}

fn advance(ranges: &[Range], (i, n): (usize, u128)) -> (usize, u128) {
    match ranges.get(i) {
        Some(r) if n < ip_to_u128(r.end) => (i, n + 1),
        _ => {
            let next = (i + 1) % ranges.len().max(1);
            (next, ranges.get(next).map_or(0, |r| ip_to_u128(r.start)))
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        if self.done {
            return None;
        }
        if self.started {
            let next = advance(self.ranges, self.pos);
            if next == self.first {
                self.done = true;
                return None;
            }
            self.pos = next;
        }
        self.started = true;
        let like = self.ranges.get(self.pos.0)?.start;
        Some((self.pos.0, ip_from_u128(self.pos.1, like)))
    }
}

/// The result entry for `ip` from range `r`.
fn ip_config(r: &Range, ip: IpAddr) -> IpConfig {
    // The prefix comes from a valid subnet, so this cannot fail; fall back to
    // a host prefix rather than panic.
    let address = IpNet::new(ip, r.subnet.prefix_len()).unwrap_or_else(|_| IpNet::from(ip));
    IpConfig {
        address,
        gateway: Some(r.gateway),
        interface: None,
    }
}

/// ADD: one address per range set for `(container_id, ifname)`.
/// `requested[i]` is the static IP asked for in set `i`. An address the
/// attachment already holds in a set is returned again (a retried ADD). On
/// any error, everything reserved by this call is released again.
pub fn allocate_all(
    store: &mut dyn Store,
    sets: &[RangeSet],
    requested: &[Option<IpAddr>],
    container_id: &str,
    ifname: &str,
) -> Result<Vec<IpConfig>> {
    let owner = Owner::new(container_id, ifname);
    // One pass over the reservations answers both "does this attachment hold
    // one already?" (the reference's GetByID) and "which candidates are taken?".
    let all = store.list()?;
    let taken: HashSet<IpAddr> = all.iter().map(|(ip, _)| *ip).collect();
    let mine: Vec<IpAddr> = all
        .iter()
        .filter(|(_, o)| o.matches(container_id, ifname))
        .map(|(ip, _)| *ip)
        .collect();

    let mut fresh: Vec<IpAddr> = Vec::new();
    let mut out = Vec::with_capacity(sets.len());
    for (idx, set) in sets.iter().enumerate() {
        let held = mine.iter().copied().find(|ip| set.contains(*ip));
        let want = requested.get(idx).copied().flatten();
        let got = match (held, want) {
            (Some(h), None) => Ok(h),
            (Some(h), Some(w)) if h == w => Ok(h),
            (Some(h), Some(w)) => Err(CniError::new(
                Code::InvalidConfig,
                format!(
                    "container {container_id} interface {ifname} already holds {h} \
                     in range set {set}; cannot also take requested IP {w}"
                ),
            )),
            (None, Some(w)) => {
                reserve_requested(store, set, idx, &owner, w).inspect(|ip| fresh.push(*ip))
            }
            (None, None) => {
                reserve_next(store, set, idx, &owner, &taken).inspect(|ip| fresh.push(*ip))
            }
        };
        let config = got.and_then(|ip| {
            let r = set.range_for(ip);
            r.map(|r| ip_config(r, ip)).ok_or_else(|| {
                CniError::new(
                    Code::Store,
                    format!("{ip} was reserved but is not in range set {set}"),
                )
            })
        });
        match config {
            Ok(c) => out.push(c),
            Err(e) => return Err(roll_back(store, &fresh, e)),
        }
    }
    Ok(out)
}

/// Releases what a failed ADD reserved; failures to do so join `e`'s details.
fn roll_back(store: &mut dyn Store, fresh: &[IpAddr], mut e: CniError) -> CniError {
    let failed: Vec<String> = fresh
        .iter()
        .filter_map(|ip| store.release(*ip).err())
        .map(|u| u.to_string())
        .collect();
    if !failed.is_empty() {
        let sep = if e.details.is_empty() { "" } else { "; " };
        e.details = format!("{}{sep}rollback failed: {}", e.details, failed.join("; "));
    }
    e
}

fn reserve_requested(
    store: &mut dyn Store,
    set: &RangeSet,
    idx: usize,
    owner: &Owner,
    ip: IpAddr,
) -> Result<IpAddr> {
    if !set.allocatable(ip) {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!("requested IP {ip} cannot be allocated from range set {set}"),
        ));
    }
    if store.reserve(ip, owner, idx)? {
        return Ok(ip);
    }
    // Held by someone else (a stale holder may still be awaiting DEL or GC).
    Err(CniError::new(
        Code::TryAgainLater,
        format!("requested IP {ip} is already reserved in range set {set}"),
    ))
}

fn reserve_next(
    store: &mut dyn Store,
    set: &RangeSet,
    idx: usize,
    owner: &Owner,
    taken: &HashSet<IpAddr>,
) -> Result<IpAddr> {
    let last = store.last_reserved(idx).filter(|ip| set.contains(*ip));
    for (r, ip) in walk(set, last) {
        let free = set.ranges.get(r).is_some_and(|r| r.allocatable(ip)) && !taken.contains(&ip);
        // The exclusive create is the authority; `taken` only saves syscalls.
        if free && store.reserve(ip, owner, idx)? {
            return Ok(ip);
        }
    }
    Err(CniError::new(
        Code::RangeExhausted,
        format!("no IP addresses available in range set {set}"),
    ))
}

/// DEL: releases what `(container_id, ifname)` holds. The `hint` addresses
/// (from `prevResult`) are checked first; the directory is scanned only when
/// they do not account for one address per range set. Releasing nothing is
/// success. Returns the released addresses.
pub fn release(
    store: &mut dyn Store,
    sets: &[RangeSet],
    container_id: &str,
    ifname: &str,
    hint: &[IpAddr],
) -> Result<Vec<IpAddr>> {
    let mut covered = vec![false; sets.len()];
    let mut released = Vec::new();
    let mut errors: Vec<CniError> = Vec::new();
    for &ip in hint {
        let Some(idx) = sets.iter().position(|s| s.contains(ip)) else {
            continue;
        };
        match store.owner(ip) {
            Ok(Some(o)) if o.matches(container_id, ifname) => match store.release(ip) {
                Ok(_) => {
                    released.push(ip);
                    if let Some(c) = covered.get_mut(idx) {
                        *c = true;
                    }
                }
                Err(e) => errors.push(e),
            },
            Ok(_) => {}
            Err(e) => errors.push(e),
        }
    }
    if !covered.iter().all(|c| *c) || !errors.is_empty() {
        for (ip, o) in store.list()? {
            if o.matches(container_id, ifname) {
                match store.release(ip) {
                    Ok(_) => released.push(ip),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    match errors.into_iter().next() {
        // Releasing continued past the failure; report the first one so the runtime retries.
        Some(e) => Err(e),
        None => Ok(released),
    }
}

/// CHECK: every address of `prev` inside our range sets must be reserved for
/// `(container_id, ifname)`. When `prev` lists none of ours, the attachment
/// must hold at least one reservation (the reference's check).
pub fn check(
    store: &mut dyn Store,
    sets: &[RangeSet],
    container_id: &str,
    ifname: &str,
    prev: &[IpAddr],
) -> Result<()> {
    let ours: Vec<IpAddr> = prev
        .iter()
        .copied()
        .filter(|ip| sets.iter().any(|s| s.contains(*ip)))
        .collect();
    let who = format!("container {container_id} interface {ifname}");
    if ours.is_empty() {
        if store
            .list()?
            .iter()
            .any(|(_, o)| o.matches(container_id, ifname))
        {
            return Ok(());
        }
        return Err(CniError::new(
            Code::CheckFailed,
            format!("no address is reserved for {who}"),
        ));
    }
    for ip in ours {
        match store.owner(ip)? {
            Some(o) if o.matches(container_id, ifname) => {}
            Some(o) => {
                return Err(CniError::new(
                    Code::CheckFailed,
                    format!(
                        "{ip} from prevResult is reserved for container {}, not {who}",
                        o.container_id
                    ),
                ))
            }
            None => {
                return Err(CniError::new(
                    Code::CheckFailed,
                    format!(
                        "{ip} from prevResult is not reserved (expected it reserved for {who})"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// GC: releases every reservation whose attachment is not in `valid`. An
/// old-format reservation (container ID only) stays when any valid
/// attachment has its container ID. Returns the released addresses.
pub fn gc(store: &mut dyn Store, valid: &[Attachment]) -> Result<Vec<IpAddr>> {
    let pairs: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.trim(), a.ifname.as_str()))
        .collect();
    let ids: HashSet<&str> = valid.iter().map(|a| a.container_id.trim()).collect();
    let mut released = Vec::new();
    let mut first_err = None;
    for (ip, o) in store.list()? {
        let keep = match &o.ifname {
            Some(i) => pairs.contains(&(o.container_id.as_str(), i.as_str())),
            None => ids.contains(o.container_id.as_str()),
        };
        if !keep {
            match store.release(ip) {
                Ok(_) => released.push(ip),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(released),
    }
}

/// STATUS: `(set index, reserved, capacity)` of each range set with no
/// address left (ADD needs one from every set, so any full set blocks it).
pub fn full_sets(store: &mut dyn Store, sets: &[RangeSet]) -> Result<Vec<(usize, u128, u128)>> {
    let ips = store.reserved_ips()?;
    Ok(sets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let used = ips.iter().filter(|ip| s.allocatable(**ip)).count() as u128;
            let cap = s.capacity();
            (used >= cap).then_some((i, used, cap))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::ipam::config::IpamConfig;

    /// What a test asks the fake store to do.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Reserve(IpAddr),
        Release(IpAddr),
        Owner(IpAddr),
        List,
    }

    /// An in-memory store that records calls.
    #[derive(Default)]
    struct FakeStore {
        files: BTreeMap<IpAddr, Owner>,
        last: HashMap<usize, IpAddr>,
        calls: Vec<Call>,
    }

    impl Store for FakeStore {
        fn reserve(&mut self, ip: IpAddr, owner: &Owner, set: usize) -> Result<bool> {
            self.calls.push(Call::Reserve(ip));
            if self.files.contains_key(&ip) {
                return Ok(false);
            }
            self.files.insert(ip, owner.clone());
            self.last.insert(set, ip);
            Ok(true)
        }
        fn release(&mut self, ip: IpAddr) -> Result<bool> {
            self.calls.push(Call::Release(ip));
            Ok(self.files.remove(&ip).is_some())
        }
        fn owner(&mut self, ip: IpAddr) -> Result<Option<Owner>> {
            self.calls.push(Call::Owner(ip));
            Ok(self.files.get(&ip).cloned())
        }
        fn last_reserved(&mut self, set: usize) -> Option<IpAddr> {
            self.last.get(&set).copied()
        }
        fn list(&mut self) -> Result<Vec<(IpAddr, Owner)>> {
            self.calls.push(Call::List);
            Ok(self.files.iter().map(|(ip, o)| (*ip, o.clone())).collect())
        }
        fn reserved_ips(&mut self) -> Result<Vec<IpAddr>> {
            Ok(self.files.keys().copied().collect())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test IP")
    }

    fn sets(ranges: &str) -> Vec<RangeSet> {
        IpamConfig::parse(format!(r#"{{"name":"n","ipam":{{"ranges":{ranges}}}}}"#).as_bytes())
            .expect("valid config")
            .range_sets
    }

    fn add(store: &mut FakeStore, sets: &[RangeSet], id: &str) -> Result<Vec<IpAddr>> {
        let none = vec![None; sets.len()];
        allocate_all(store, sets, &none, id, "eth0")
            .map(|c| c.iter().map(|c| c.address.addr()).collect())
    }

    #[test]
    fn walk_wraps_through_ranges_after_last() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/29"},{"subnet":"10.2.0.0/30"}]]"#);
        let all: Vec<String> = walk(&s[0], None).map(|(_, ip)| ip.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6", "10.2.0.1",
                "10.2.0.2"
            ]
        );
        let from: Vec<String> = walk(&s[0], Some(ip("10.1.0.6")))
            .map(|(_, ip)| ip.to_string())
            .collect();
        assert_eq!(
            from,
            [
                "10.2.0.1", "10.2.0.2", "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5",
                "10.1.0.6"
            ]
        );
        assert_eq!(
            walk(&s[0], Some(ip("10.9.9.9"))).count(),
            8,
            "unknown last starts at the beginning"
        );
    }

    #[test]
    fn round_robin_skips_gateway_and_continues_after_last() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/29","gateway":"10.1.0.3"}]]"#);
        let mut st = FakeStore::default();
        assert_eq!(add(&mut st, &s, "a").expect("a"), [ip("10.1.0.1")]);
        assert_eq!(add(&mut st, &s, "b").expect("b"), [ip("10.1.0.2")]);
        assert_eq!(
            add(&mut st, &s, "c").expect("c"),
            [ip("10.1.0.4")],
            "gateway skipped"
        );
        release(&mut st, &s, "b", "eth0", &[]).expect("del b");
        assert_eq!(
            add(&mut st, &s, "d").expect("d"),
            [ip("10.1.0.5")],
            "freed .2 is not reused yet"
        );
        assert_eq!(add(&mut st, &s, "e").expect("e"), [ip("10.1.0.6")]);
        assert_eq!(
            add(&mut st, &s, "f").expect("f"),
            [ip("10.1.0.2")],
            "wrapped to the freed one"
        );
        let e = add(&mut st, &s, "g").expect_err("full");
        assert_eq!(e.code, Code::RangeExhausted);
        assert_eq!(
            e.msg,
            "no IP addresses available in range set 10.1.0.1-10.1.0.6"
        );
    }

    #[test]
    fn exhaustion_in_second_set_leaves_nothing_behind() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.2.0.0/30"}]]"#);
        let mut st = FakeStore::default();
        assert_eq!(
            add(&mut st, &s, "a").expect("a"),
            [ip("10.1.0.2"), ip("10.2.0.2")]
        );
        let before = st.files.clone();
        let e = add(&mut st, &s, "b").expect_err("set 1 full");
        assert_eq!(e.code, Code::RangeExhausted);
        assert_eq!(
            e.msg,
            "no IP addresses available in range set 10.2.0.1-10.2.0.2"
        );
        assert_eq!(st.files, before, "10.1.0.3 taken for b was released again");
        assert!(st.calls.contains(&Call::Release(ip("10.1.0.3"))));
    }

    #[test]
    fn retried_add_returns_the_same_addresses() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]]"#);
        let mut st = FakeStore::default();
        let first = add(&mut st, &s, "a").expect("first");
        let again = add(&mut st, &s, "a").expect("retry");
        assert_eq!(first, again);
        assert_eq!(st.files.len(), 2);
        // A second interface of the same container gets its own addresses.
        let none = vec![None; 2];
        let other = allocate_all(&mut st, &s, &none, "a", "net1").expect("net1");
        assert_ne!(other[0].address.addr(), first[0]);
        assert_eq!(other[0].gateway, Some(ip("10.1.0.1")));
        assert_eq!(other[1].address.to_string(), "fd00::3/120");
    }

    #[test]
    fn requested_ips_are_reserved_or_refused() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/24"}]]"#);
        let mut st = FakeStore::default();
        let got = allocate_all(&mut st, &s, &[Some(ip("10.1.0.50"))], "a", "eth0").expect("static");
        assert_eq!(got[0].address.to_string(), "10.1.0.50/24");
        assert_eq!(
            allocate_all(&mut st, &s, &[Some(ip("10.1.0.50"))], "a", "eth0")
                .expect("retry")
                .len(),
            1
        );
        let e =
            allocate_all(&mut st, &s, &[Some(ip("10.1.0.50"))], "b", "eth0").expect_err("taken");
        assert_eq!(e.code, Code::TryAgainLater);
        let e = allocate_all(&mut st, &s, &[Some(ip("10.1.0.51"))], "a", "eth0")
            .expect_err("already holds");
        assert_eq!(e.code, Code::InvalidConfig);
    }

    #[test]
    fn release_uses_the_hint_and_scans_only_when_needed() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]]"#);
        let mut st = FakeStore::default();
        let a = add(&mut st, &s, "a").expect("a");
        add(&mut st, &s, "b").expect("b");
        st.calls.clear();
        assert_eq!(release(&mut st, &s, "a", "eth0", &a).expect("del"), a);
        assert!(
            !st.calls.contains(&Call::List),
            "full hint: no scan: {:?}",
            st.calls
        );
        assert_eq!(st.files.len(), 2);

        // A hint naming someone else's address releases nothing of theirs and falls back to a scan.
        st.calls.clear();
        let b_v4 = ip("10.1.0.3");
        assert_eq!(
            release(&mut st, &s, "c", "eth0", &[b_v4]).expect("del c"),
            Vec::<IpAddr>::new()
        );
        assert!(st.calls.contains(&Call::List));
        assert!(st.files.contains_key(&b_v4));

        // No hint: scan.
        assert_eq!(
            release(&mut st, &s, "b", "eth0", &[]).expect("del b").len(),
            2
        );
        assert!(st.files.is_empty());
    }

    #[test]
    fn check_compares_prev_result_with_reservations() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/24"}]]"#);
        let mut st = FakeStore::default();
        let a = add(&mut st, &s, "a").expect("a");
        add(&mut st, &s, "b").expect("b");
        check(&mut st, &s, "a", "eth0", &a).expect("a holds its address");
        check(&mut st, &s, "a", "eth0", &[ip("192.168.0.1")])
            .expect("foreign IPs are not ours to check");
        let e = check(&mut st, &s, "a", "eth0", &[ip("10.1.0.3")]).expect_err("b's address");
        assert_eq!(e.code, Code::CheckFailed);
        assert!(e.msg.contains("reserved for container b"), "{}", e.msg);
        let e = check(&mut st, &s, "a", "eth0", &[ip("10.1.0.9")]).expect_err("free address");
        assert_eq!(e.code, Code::CheckFailed);
        let e = check(&mut st, &s, "z", "eth0", &[]).expect_err("nothing held");
        assert_eq!(e.code, Code::CheckFailed);
    }

    #[test]
    fn gc_keeps_valid_attachments_and_old_files_by_container() {
        let mut st = FakeStore::default();
        st.files.insert(ip("10.1.0.2"), Owner::new("a", "eth0"));
        st.files.insert(ip("10.1.0.3"), Owner::new("a", "net1"));
        st.files.insert(ip("10.1.0.4"), Owner::parse(b"b"));
        st.files.insert(ip("10.1.0.5"), Owner::parse(b"c"));
        let valid = [
            Attachment {
                container_id: "a".into(),
                ifname: "eth0".into(),
            },
            Attachment {
                container_id: "b".into(),
                ifname: "eth0".into(),
            },
        ];
        assert_eq!(
            gc(&mut st, &valid).expect("gc"),
            [ip("10.1.0.3"), ip("10.1.0.5")]
        );
        assert_eq!(
            st.files.keys().copied().collect::<Vec<_>>(),
            [ip("10.1.0.2"), ip("10.1.0.4")]
        );
    }

    #[test]
    fn full_sets_counts_only_allocatable_reservations() {
        let s = sets(r#"[[{"subnet":"10.1.0.0/30"}],[{"subnet":"10.2.0.0/29"}]]"#);
        let mut st = FakeStore::default();
        assert!(full_sets(&mut st, &s).expect("status").is_empty());
        add(&mut st, &s, "a").expect("a");
        assert_eq!(full_sets(&mut st, &s).expect("status"), [(0, 1, 1)]);
    }
}
