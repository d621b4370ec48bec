//! The offload arithmetic of the udp data path, pure: the virtio-net header
//! the TUN puts before each packet, the Internet checksum, cutting a TCP
//! super-packet (TSO, up to 64 KB) into MSS-sized segments (headers only:
//! the payload is never copied, the caller points iovecs at it), and
//! finding runs of received segments of one TCP flow that can go back into
//! the TUN as one super-packet. No I/O, no allocation per packet.

/// `struct virtio_net_hdr`'s size (TUNSETVNETHDRSZ's default).
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum at csum_start + csum_offset is partial.
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`s.
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_ECN: u8 = 0x80;
/// The most segments one UDP GSO send may carry (the kernel's UDP_MAX_SEGMENTS).
pub const MAX_SEGMENTS: usize = 64;
/// The most payload one UDP send may carry (an IPv4 datagram's limit).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Longest IPv4 + TCP headers (60 + 60).
pub const MAX_HEADERS: usize = 120;

/// The virtio-net header (little-endian on the wire of the TUN, as on
/// every host this runs on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn write(&self, b: &mut [u8; VNET_HDR_LEN]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

/// The one's complement sum of `data` as 16-bit big-endian words, folded
/// to 16 bits and added to `seed` (not folded again). Native-endian 32-bit
/// words are summed into a u64 (which the compiler vectorizes); the one's
/// complement sum does not depend on byte order but for a final swap
/// (RFC 1071, 2.(B)).
pub fn sum(data: &[u8], seed: u64) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_ne_bytes(c.try_into().expect("4 bytes")));
    }
    // The tail starts at an even offset; a missing byte is a zero pad.
    let rest = chunks.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_ne_bytes(tail));
    let folded = fold(acc);
    let network = if cfg!(target_endian = "little") {
        folded.swap_bytes()
    } else {
        folded
    };
    seed + u64::from(network)
}

/// Folds a sum to 16 bits (not inverted).
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The IPv4 pseudo-header's sum for `proto` and an L4 length of `len`.
pub fn pseudo_sum(ip: &[u8], proto: u8, len: usize) -> u64 {
    sum(&ip[12..20], u64::from(proto) + len as u64)
}

/// Recomputes an IPv4 header's checksum in place.
pub fn ipv4_checksum(ip: &mut [u8]) {
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    ip[10..12].fill(0);
    let c = !fold(sum(&ip[..ihl], 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Completes a partial checksum (VIRTIO_NET_HDR_F_NEEDS_CSUM): the field at
/// `start + offset` holds the pseudo-header's sum; the result covers
/// everything from `start`. False when the offsets do not fit.
pub fn complete_checksum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let field = start + offset;
    if field + 2 > pkt.len() {
        return false;
    }
    let c = !fold(sum(&pkt[start..], 0));
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// A TCP/IPv4 super-packet's layout: header lengths and the MSS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpGso {
    pub ihl: usize,
    /// IPv4 + TCP header length.
    pub hlen: usize,
    pub mss: usize,
}

impl TcpGso {
    /// Reads the layout of `pkt` (an IPv4 TCP packet) with MSS `mss`.
    pub fn of(pkt: &[u8], mss: u16) -> Option<TcpGso> {
        if pkt.len() < 40 || pkt[0] >> 4 != 4 || pkt[9] != 6 || mss == 0 {
            return None;
        }
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let thl = usize::from(*pkt.get(ihl + 12)? >> 4) * 4;
        let hlen = ihl + thl;
        (ihl >= 20 && thl >= 20 && hlen <= pkt.len()).then_some(TcpGso {
            ihl,
            hlen,
            mss: usize::from(mss),
        })
    }

    /// How many segments `pkt` makes.
    pub fn segments(&self, pkt: &[u8]) -> usize {
        (pkt.len() - self.hlen).div_ceil(self.mss).max(1)
    }

    /// Writes segment `i`'s headers into `out` (at least `hlen` long) and
    /// returns its payload range in `pkt`. IPv4 length, id and checksum,
    /// TCP sequence number, flags (FIN and PSH on the last segment only,
    /// CWR on the first only) and the full TCP checksum are set.
    pub fn segment(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> std::ops::Range<usize> {
        let start = self.hlen + i * self.mss;
        let end = (start + self.mss).min(pkt.len());
        let seg_len = end - start;
        let out = &mut out[..self.hlen];
        out.copy_from_slice(&pkt[..self.hlen]);
        let total = (self.hlen + seg_len) as u16;
        out[2..4].copy_from_slice(&total.to_be_bytes());
        let id = u16::from_be_bytes([pkt[4], pkt[5]]).wrapping_add(i as u16);
        out[4..6].copy_from_slice(&id.to_be_bytes());
        ipv4_checksum(&mut out[..self.ihl]);
        let t = self.ihl;
        let seq = u32::from_be_bytes([pkt[t + 4], pkt[t + 5], pkt[t + 6], pkt[t + 7]])
            .wrapping_add((i * self.mss) as u32);
        out[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
        let last = end == pkt.len();
        if !last {
            out[t + 13] &= !0x09; // FIN, PSH
        }
        if i > 0 {
            out[t + 13] &= !0x80; // CWR
        }
        out[t + 16..t + 18].fill(0);
        let tcp_len = self.hlen - t + seg_len;
        let s = sum(&out[t..], pseudo_sum(out, 6, tcp_len));
        let c = !fold(sum(&pkt[start..end], s));
        out[t + 16..t + 18].copy_from_slice(&c.to_be_bytes());
        start..end
    }
}

/// What identifies a TCP segment's place in a run that can be merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    /// Source and destination addresses and ports.
    addrs: [u8; 8],
    ports: [u8; 4],
    hlen: usize,
    ihl: usize,
}

fn flow_of(p: &[u8]) -> Option<(Flow, u32, usize)> {
    let g = TcpGso::of(p, 1)?;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    // Options other than the timestamp's length, fragments and any flag
    // but ACK and PSH end a run.
    if total != p.len() || p[6] & 0x3f != 0 || p[7] != 0 || g.ihl != 20 {
        return None;
    }
    let t = g.ihl;
    if p[t + 13] & !0x18 != 0 {
        return None;
    }
    let seq = u32::from_be_bytes([p[t + 4], p[t + 5], p[t + 6], p[t + 7]]);
    let mut addrs = [0; 8];
    addrs.copy_from_slice(&p[12..20]);
    let mut ports = [0; 4];
    ports.copy_from_slice(&p[t..t + 4]);
    Some((
        Flow {
            addrs,
            ports,
            hlen: g.hlen,
            ihl: g.ihl,
        },
        seq,
        p.len() - g.hlen,
    ))
}

/// How many of `packets` (in order, the first included) form one run of a
/// TCP flow that can be written as one super-packet: same flow and header
/// length, consecutive sequence numbers, the same ACK number and TCP
/// options, every segment but the last of the first one's size, no PSH
/// but on the last, at most 64 KB in all. 1 when the first cannot start a run.
pub fn run_len(packets: &[&[u8]]) -> usize {
    let Some(first) = packets.first() else {
        return 0;
    };
    let Some((flow, mut next_seq, mss)) = flow_of(first) else {
        return 1;
    };
    if mss == 0 || first[flow.ihl + 13] & 0x08 != 0 {
        return 1;
    }
    next_seq = next_seq.wrapping_add(mss as u32);
    let t = flow.ihl;
    let mut total = first.len();
    let mut n = 1;
    for p in &packets[1..] {
        let Some((f, seq, len)) = flow_of(p) else {
            break;
        };
        if f != flow
            || seq != next_seq
            || len == 0
            || len > mss
            || total + len > 65_535
            || p[t + 8..t + 12] != first[t + 8..t + 12]
            || p[t + 14..t + 16] != first[t + 14..t + 16]
            || p[t + 20..flow.hlen] != first[t + 20..flow.hlen]
        {
            break;
        }
        total += len;
        n += 1;
        next_seq = next_seq.wrapping_add(len as u32);
        if len < mss || p[t + 13] & 0x08 != 0 {
            break;
        }
    }
    n
}

/// The headers and virtio-net header of the super-packet made of `run`
/// (packets [`run_len`] accepted): the first packet's headers with the
/// total length, IPv4 checksum and the TCP pseudo-header sum (a partial
/// checksum the kernel completes or trusts), written into `hdrs`; returns
/// the vnet header. Only call for runs of 2 or more.
pub fn merge_headers(run: &[&[u8]], hdrs: &mut [u8]) -> VnetHdr {
    let first = run[0];
    let (flow, _, mss) = flow_of(first).expect("run_len accepted it");
    let payload: usize = run.iter().map(|p| p.len() - flow.hlen).sum();
    let total = flow.hlen + payload;
    let h = &mut hdrs[..flow.hlen];
    h.copy_from_slice(&first[..flow.hlen]);
    h[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ipv4_checksum(&mut h[..flow.ihl]);
    let t = flow.ihl;
    // PSH of the last segment.
    h[t + 13] |= run[run.len() - 1][t + 13] & 0x08;
    let partial = fold(pseudo_sum(h, 6, total - t));
    h[t + 16..t + 18].copy_from_slice(&partial.to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: flow.hlen as u16,
        gso_size: mss as u16,
        csum_start: t as u16,
        csum_offset: 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP/IPv4 packet 10.0.0.1:1000 -> 10.0.0.2:2000 with `payload`,
    /// seq `seq`, flags `flags`, correct checksums.
    fn tcp(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&7u16.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 0, 0, 2]);
        p[20..22].copy_from_slice(&1000u16.to_be_bytes());
        p[22..24].copy_from_slice(&2000u16.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[28..32].copy_from_slice(&99u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        p.extend_from_slice(payload);
        ipv4_checksum(&mut p[..20]);
        let s = pseudo_sum(&p, 6, p.len() - 20);
        let c = !fold(sum(&p[20..], s));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn valid(p: &[u8]) -> bool {
        fold(sum(&p[..20], 0)) == 0xffff
            && fold(sum(&p[20..], pseudo_sum(p, 6, p.len() - 20))) == 0xffff
    }

    /// The textbook sum: big-endian 16-bit words, a last odd byte padded.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u64 = 0;
        for c in data.chunks(2) {
            s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        fold(s)
    }

    #[test]
    fn the_fast_sum_is_the_textbook_sum() {
        let data: Vec<u8> = (0..4099u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in (0..70).chain([1499, 1500, 4096, 4099]) {
            assert_eq!(fold(sum(&data[..len], 0)), naive(&data[..len]), "{len}");
        }
        assert_eq!(fold(sum(&[0xff; 64], 0)), naive(&[0xff; 64]));
        assert_eq!(fold(sum(&[1, 2, 3], 0x1_0000)), naive(&[1, 2, 3]) + 1);
    }

    #[test]
    fn checksums_match_rfc1071() {
        // RFC 1071's example words sum to 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(fold(sum(&[0xff, 0xff, 0x01], 0)), 0x0100);
        assert!(valid(&tcp(1, 0x10, b"hello, odd length")));
    }

    #[test]
    fn vnet_headers_round_trip() {
        let h = VnetHdr {
            flags: 1,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1420,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut b = [0; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
    }

    #[test]
    fn a_super_packet_cut_and_merged_again() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let sp = tcp(1_000, 0x18, &payload); // ACK|PSH
        let g = TcpGso::of(&sp, 1200).unwrap();
        assert_eq!(g.segments(&sp), 3);
        let mut segs = Vec::new();
        for i in 0..3 {
            let mut h = [0u8; MAX_HEADERS];
            let r = g.segment(&sp, i, &mut h);
            let mut s = h[..g.hlen].to_vec();
            s.extend_from_slice(&sp[r]);
            assert!(valid(&s), "segment {i}");
            segs.push(s);
        }
        assert_eq!(segs[2].len(), 40 + 600);
        assert_eq!(segs[0][33] & 0x08, 0, "PSH only on the last");
        assert_eq!(segs[2][33] & 0x08, 0x08);
        assert_eq!(
            u32::from_be_bytes(segs[1][24..28].try_into().unwrap()),
            2_200
        );
        let refs: Vec<&[u8]> = segs.iter().map(Vec::as_slice).collect();
        assert_eq!(run_len(&refs), 3);
        let mut h = [0u8; MAX_HEADERS];
        let v = merge_headers(&refs, &mut h);
        assert_eq!((v.gso_size, v.hdr_len, v.gso_type), (1200, 40, GSO_TCPV4));
        // Completing the partial checksum over the merged packet gives the original.
        let mut merged = h[..40].to_vec();
        for s in &segs {
            merged.extend_from_slice(&s[40..]);
        }
        assert!(complete_checksum(&mut merged, 20, 16));
        assert_eq!(merged, sp);
    }

    #[test]
    fn runs_stop_at_gaps_other_flows_and_flags() {
        let a = tcp(0, 0x10, &[1; 100]);
        let b = tcp(100, 0x10, &[2; 100]);
        let gap = tcp(300, 0x10, &[3; 100]);
        let syn = tcp(200, 0x12, &[]);
        assert_eq!(run_len(&[&a, &b, &gap]), 2);
        assert_eq!(run_len(&[&a, &syn]), 1);
        let mut other = tcp(100, 0x10, &[2; 100]);
        other[22] = 9;
        assert_eq!(run_len(&[&a, &other]), 1);
        let short = tcp(100, 0x10, &[2; 50]);
        let after = tcp(150, 0x10, &[2; 100]);
        assert_eq!(
            run_len(&[&a, &short, &after]),
            2,
            "a short segment ends a run"
        );
        assert_eq!(run_len(&[&[0x60u8; 40][..]]), 1);
    }
}
