//! Reads the subject of a DER certificate (common name and organizations),
//! which kube-apiserver maps to a user name and groups. Only the few DER
//! shapes of a certificate's outer structure are walked; anything
//! unexpected is `None`, never a panic. Verification is rustls's job.

/// The identity a client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// `CN`: the user name.
    pub common_name: String,
    /// Every `O`: the groups.
    pub organizations: Vec<String>,
}

/// One DER element: its tag, its contents, and what follows it.
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
/// 2.5.4.3 and 2.5.4.10.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// The subject of the DER certificate `der`.
pub fn subject(der: &[u8]) -> Option<Subject> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] version (optional), serial, signature, issuer, validity, subject.
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = element(rest)? else {
        return None;
    };
    let mut out = Subject {
        common_name: String::new(),
        organizations: Vec::new(),
    };
    while !name.is_empty() {
        let (SET, mut set, next) = element(name)? else {
            return None;
        };
        name = next;
        while !set.is_empty() {
            let (SEQUENCE, atv, next) = element(set)? else {
                return None;
            };
            set = next;
            let (OID, oid, value) = element(atv)? else {
                return None;
            };
            let (_, text, _) = element(value)?;
            let text = String::from_utf8_lossy(text).into_owned();
            match oid {
                OID_CN => out.common_name = text,
                OID_O => out.organizations.push(text),
                _ => {}
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_none_not_a_panic() {
        for b in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x02, 0x30, 0x05],
        ] {
            assert_eq!(subject(b), None);
        }
        // Every prefix of a real certificate is refused cleanly too.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        // (rcgen keeps one value per attribute type.)
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "g1");
        let der = p.self_signed(&key).unwrap().der().to_vec();
        let s = subject(&der).unwrap();
        assert_eq!(s.common_name, "rcgen self signed cert");
        assert_eq!(s.organizations, ["g1"]);
        for n in 0..der.len() {
            assert_eq!(subject(&der[..n]), None);
        }
    }
}
