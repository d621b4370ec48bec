//! One cluster CA for every agent of a shared (etcd) control plane, as
//! k3s keeps its bootstrap data: the first agent to serve the API creates
//! the CA and stores it in the Secret `kube-system/knode-bootstrap`, its
//! private key sealed with a key derived from the cluster token
//! (PBKDF2-HMAC-SHA256 over a random salt, then AES-256-GCM); every other
//! agent opens it with the same token, so all of them serve one CA and a
//! client certificate from one is good at all. A wrong token is refused at
//! start, never answered with a second CA.
//!
//! The sealed form is `salt (16) | nonce (12) | ciphertext and tag`, so
//! nothing else needs storing; the certificate itself is public and kept
//! in the clear beside it.

use std::path::Path;

use controlplane::api::{ControlPlane, Error as CpError, ObjectRef};
use controlplane::{Kind, Object};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::pki;
use crate::{Error, Result};

/// Where the shared CA is kept.
pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "knode-bootstrap";
/// The Secret's keys.
const CERT: &str = "ca.crt";
const SEALED_KEY: &str = "ca.key.sealed";

const SALT_LEN: usize = 16;
/// PBKDF2 rounds: a stolen Secret costs a guesser this much per try.
const ROUNDS: u32 = 200_000;

fn err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Pki(format!("{what}: {e}"))
}

fn key_for(token: &str, salt: &[u8]) -> Result<LessSafeKey> {
    let mut key = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(ROUNDS).expect("nonzero"),
        salt,
        token.as_bytes(),
        &mut key,
    );
    let unbound = UnboundKey::new(&AES_256_GCM, &key).map_err(|e| err("derive the key", e))?;
    Ok(LessSafeKey::new(unbound))
}

/// Seals `plain` with `token`.
pub fn seal(token: &str, plain: &[u8]) -> Result<Vec<u8>> {
    let rng = SystemRandom::new();
    let mut head = [0u8; SALT_LEN + NONCE_LEN];
    rng.fill(&mut head).map_err(|e| err("random salt", e))?;
    let (salt, nonce) = head.split_at(SALT_LEN);
    let key = key_for(token, salt)?;
    let mut body = plain.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|e| err("nonce", e))?;
    key.seal_in_place_append_tag(nonce, Aad::from(NAME), &mut body)
        .map_err(|e| err("seal", e))?;
    let mut out = head.to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Opens what [`seal`] made with the same token.
pub fn open(token: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    if sealed.len() < SALT_LEN + NONCE_LEN + AES_256_GCM.tag_len() {
        return Err(Error::Pki(format!(
            "{NAMESPACE}/{NAME}: {SEALED_KEY} is too short"
        )));
    }
    let (salt, rest) = sealed.split_at(SALT_LEN);
    let (nonce, body) = rest.split_at(NONCE_LEN);
    let key = key_for(token, salt)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|e| err("nonce", e))?;
    let mut body = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(NAME), &mut body)
        .map_err(|_| {
            Error::Pki(format!(
                "the cluster CA in {NAMESPACE}/{NAME} does not open with this token: \
                 set `token` to the cluster's (the first agent wrote it to <data-dir>/token)"
            ))
        })?;
    Ok(plain.to_vec())
}

/// A new cluster token: 32 random bytes, hex.
pub fn new_token() -> Result<String> {
    let mut b = [0u8; 32];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|e| err("random token", e))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The CA (certificate and key PEM) of the cluster behind `cp`: the stored
/// one, opened with `token`; or, when none is stored yet, this agent's own
/// (`<data-dir>/tls`, created if missing), sealed and stored for the others.
/// Two agents starting at once store one CA: the second create fails and
/// that agent reads the first's. The result is installed in
/// `<data-dir>/tls` for [`pki::ensure`].
pub async fn shared_ca(cp: &dyn ControlPlane, data_dir: &Path, token: &str) -> Result<()> {
    let what = ObjectRef::new(Kind::Secret, NAMESPACE, NAME);
    loop {
        match cp.get(&what).await {
            Ok(o) => {
                let (cert, key) = read_secret(&o, token)?;
                return pki::install_ca(data_dir, &cert, &key);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(err("read the cluster CA", e)),
        }
        let (cert, key) = pki::local_ca(data_dir)?;
        let secret = secret(&cert, &seal(token, key.as_bytes())?)?;
        match cp.create(secret, None).await {
            Ok(_) => {
                tracing::info!("stored this agent's CA as the cluster's ({NAMESPACE}/{NAME})");
                return Ok(());
            }
            Err(CpError::AlreadyExists { .. }) => continue,
            Err(e) => return Err(err("store the cluster CA", e)),
        }
    }
}

fn secret(cert: &str, sealed: &[u8]) -> Result<Object> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    Object::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": NAME, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/managed-by": "knode"}},
        "type": "Opaque",
        "data": {CERT: b64(cert.as_bytes()), SEALED_KEY: b64(sealed)},
    }))
    .map_err(|e| err("build the bootstrap Secret", e))
}

fn read_secret(o: &Object, token: &str) -> Result<(String, String)> {
    let Object::Secret(s) = o else {
        return Err(Error::Pki(format!("{NAMESPACE}/{NAME} is not a Secret")));
    };
    let field = |k: &str| {
        s.data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.clone())
            .ok_or_else(|| Error::Pki(format!("{NAMESPACE}/{NAME}: data.{k} missing")))
    };
    let cert = String::from_utf8(field(CERT)?)
        .map_err(|_| Error::Pki(format!("{NAMESPACE}/{NAME}: {CERT} is not PEM")))?;
    let key = String::from_utf8(open(token, &field(SEALED_KEY)?)?)
        .map_err(|_| Error::Pki(format!("{NAMESPACE}/{NAME}: the CA key is not PEM")))?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_token_and_untampered() {
        let sealed = seal("tok-1", b"secret key").unwrap();
        assert_eq!(open("tok-1", &sealed).unwrap(), b"secret key");
        let e = open("tok-2", &sealed).unwrap_err().to_string();
        assert!(e.contains("does not open with this token"), "{e}");
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(open("tok-1", &bad).is_err());
        assert!(open("tok-1", &sealed[..20])
            .unwrap_err()
            .to_string()
            .contains("too short"));
        assert_ne!(
            seal("tok-1", b"secret key").unwrap(),
            sealed,
            "fresh salt and nonce"
        );
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().unwrap());
    }

    #[test]
    fn the_secret_round_trips() {
        let sealed = seal("tok", b"KEY PEM").unwrap();
        let o = secret("CERT PEM", &sealed).unwrap();
        assert_eq!(
            read_secret(&o, "tok").unwrap(),
            ("CERT PEM".to_string(), "KEY PEM".to_string())
        );
        assert!(read_secret(&o, "other").is_err());
    }
}
