use serde_json::json;

use super::*;

/// A tiny protobuf writer for building bodies as client-go does.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn varint(mut self, mut v: u64) -> W {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.0.push(b);
                return self;
            }
            self.0.push(b | 0x80);
        }
    }
    fn int(self, field: u64, v: i64) -> W {
        self.varint(field << 3).varint(v as u64)
    }
    fn bytes(self, field: u64, b: &[u8]) -> W {
        let mut w = self.varint(field << 3 | 2).varint(b.len() as u64);
        w.0.extend_from_slice(b);
        w
    }
    fn str(self, field: u64, s: &str) -> W {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u64, m: W) -> W {
        self.bytes(field, &m.0)
    }
    fn entry(self, field: u64, k: &str, v: &[u8]) -> W {
        self.msg(field, W::default().str(1, k).bytes(2, v))
    }
}

fn envelope(api_version: &str, kind: &str, raw: W) -> Vec<u8> {
    let unknown = W::default()
        .msg(1, W::default().str(1, api_version).str(2, kind))
        .msg(2, raw);
    [MAGIC, &unknown.0].concat()
}

/// ObjectMeta as Go writes it: every non-pointer scalar, zero or not.
fn meta(name: &str) -> W {
    W::default()
        .str(1, name)
        .str(2, "")
        .str(3, "default")
        .str(4, "")
        .str(5, "")
        .str(6, "")
        .int(7, 0)
        .msg(8, W::default())
        .entry(11, "app", b"web")
}

#[test]
fn a_configmap_as_kubectl_create_sends_it() {
    let raw = W::default()
        .msg(1, meta("settings"))
        .entry(2, "a", b"1")
        .entry(2, "empty", b"")
        .entry(3, "bin", &[0, 1, 2]);
    let v = decode(&envelope("v1", "ConfigMap", raw)).unwrap();
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default", "labels": {"app": "web"}},
            "data": {"a": "1", "empty": ""}, "binaryData": {"bin": "AAEC"}})
    );
}

#[test]
fn zero_is_kept_where_go_would_write_it() {
    // DeploymentSpec: replicas is a pointer (kept at 0), minReadySeconds
    // is not (dropped at 0); the template's containers, a strategy with
    // an int-or-string and a quantity.
    let container = W::default().str(1, "c").str(2, "nginx").msg(
        8,
        W::default().msg(
            1,
            W::default()
                .str(1, "cpu")
                .msg(2, W::default().str(1, "250m")),
        ),
    );
    let spec = W::default()
        .int(1, 0)
        .msg(2, W::default().entry(1, "app", b"web"))
        .msg(
            3,
            W::default()
                .msg(1, meta("").entry(11, "app", b"web"))
                .msg(2, W::default().msg(2, container)),
        )
        .msg(
            4,
            W::default().str(1, "RollingUpdate").msg(
                2,
                W::default()
                    .msg(1, W::default().int(1, 1).str(3, "25%"))
                    .msg(2, W::default().int(1, 0).int(2, 1)),
            ),
        )
        .int(5, 0);
    let v = decode(&envelope(
        "apps/v1",
        "Deployment",
        W::default().msg(1, meta("web")).msg(2, spec),
    ))
    .unwrap();
    let spec = &v["spec"];
    assert_eq!(spec["replicas"], json!(0), "{v}");
    assert!(spec.get("minReadySeconds").is_none(), "{v}");
    assert_eq!(spec["selector"], json!({"matchLabels": {"app": "web"}}));
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}})
    );
    let c = &spec["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "c");
    assert_eq!(c["resources"]["limits"]["cpu"], "250m");
    // And it is a Deployment the object model reads.
    controlplane::Object::from_value(v).unwrap();
}

#[test]
fn times_are_rfc3339_and_zero_times_are_left_out() {
    let m = W::default()
        .str(1, "x")
        .msg(8, W::default())
        .msg(9, W::default().int(1, 1_700_000_000));
    let v = decode(&envelope("v1", "Namespace", W::default().msg(1, m))).unwrap();
    assert_eq!(
        v["metadata"],
        json!({"name": "x", "deletionTimestamp": "2023-11-14T22:13:20Z"})
    );
}

#[test]
fn delete_options_ride_in_any_group() {
    let raw = W::default()
        .int(1, 0)
        .msg(2, W::default().str(1, "u-1"))
        .str(4, "Orphan");
    let v = decode(&envelope("apps/v1", "DeleteOptions", raw)).unwrap();
    assert_eq!(v["gracePeriodSeconds"], 0);
    assert_eq!(v["preconditions"]["uid"], "u-1");
    assert_eq!(v["propagationPolicy"], "Orphan");
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    assert_eq!(decode(b"{}").unwrap_err(), Error::NoMagic);
    let e = decode(&envelope("v1", "Widget", W::default())).unwrap_err();
    assert!(e.to_string().contains("Widget"), "{e}");
    // Truncated inside a length-delimited field, and every prefix of a
    // real body.
    let body = envelope("v1", "ConfigMap", W::default().msg(1, meta("x")));
    for n in 0..body.len() {
        let _ = decode(&body[..n]);
    }
    let mut cut = envelope("v1", "ConfigMap", W::default().msg(1, meta("x")));
    cut.truncate(cut.len() - 3);
    assert!(matches!(decode(&cut), Err(Error::Malformed(_))));
    // Random bytes after the magic.
    let mut x: u32 = 12345;
    for _ in 0..2000 {
        let junk: Vec<u8> = (0..64)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        let _ = decode(&[MAGIC, &junk].concat());
    }
}

#[test]
fn the_schema_covers_every_served_kind() {
    for k in controlplane::Kind::ALL {
        if k.api_version().starts_with("knode.io") {
            continue;
        }
        assert!(
            message_of(k.api_version(), k.name()).is_some(),
            "{} {}",
            k.api_version(),
            k.name()
        );
    }
}
