//! Request bodies in `application/vnd.kubernetes.protobuf`, decoded to the
//! JSON the rest of the server reads. client-go's typed clients send
//! built-in kinds this way (`kubectl create configmap|secret|deployment`,
//! controllers' leader election, typed deletes) and do not fall back to
//! JSON when refused, so a server that only reads JSON loses them.
//!
//! The wire format: the bytes `k8s\0`, then a `runtime.Unknown` message
//! whose `typeMeta` names apiVersion and kind and whose `raw` is the
//! object's own message. Messages are decoded generically, by the table in
//! `schema.txt` (field numbers, JSON names and types, read from
//! Kubernetes' generated.proto and types.go by
//! `scripts/gen-protobuf-schema.py`), plus the few types that have their
//! own JSON form: Time, MicroTime, IntOrString, Quantity, RawExtension,
//! FieldsV1 and bytes (base64).
//!
//! Go's encoder writes every non-pointer scalar even when it is zero; Go's
//! JSON would leave a zero `omitempty` field out, so zero scalars are
//! dropped unless the schema marks the field as one whose zero is kept (a
//! pointer, or no omitempty): `replicas: 0` survives, `generateName: ""`
//! does not.

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{Map, Value};

/// The magic prefix of a Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// A field of a message, as `schema.txt` describes it.
#[derive(Debug)]
struct Field {
    json: &'static str,
    card: Card,
    ty: &'static str,
    /// For maps: the value type (`ty` is the key type).
    value: &'static str,
    keep_zero: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Card {
    One,
    Repeated,
    Map,
}

type Schema = HashMap<&'static str, HashMap<u64, Field>>;

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| parse_schema(include_str!("schema.txt")))
}

fn parse_schema(text: &'static str) -> Schema {
    let mut out: Schema = HashMap::new();
    let mut cur: Option<&'static str> = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let w: Vec<&'static str> = line.split(' ').collect();
        match w.as_slice() {
            ["M", name] => {
                cur = Some(name);
                out.entry(name).or_default();
            }
            [num, json, card, ty, rest @ ..] => {
                let (Some(m), Ok(num)) = (cur, num.parse()) else {
                    continue;
                };
                let (card, value, keep_zero) = match (*card, rest) {
                    ("m", [v]) => (Card::Map, *v, false),
                    ("r", _) => (Card::Repeated, "", false),
                    (_, z) => (Card::One, "", z == ["z"]),
                };
                out.entry(m).or_default().insert(
                    num,
                    Field {
                        json,
                        card,
                        ty,
                        value,
                        keep_zero,
                    },
                );
            }
            _ => {}
        }
    }
    out
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("not a Kubernetes protobuf body (no k8s\\0 prefix)")]
    NoMagic,
    #[error("truncated or malformed protobuf at byte {0}")]
    Malformed(usize),
    #[error("apiVersion {api_version:?} kind {kind:?} cannot be read as protobuf (send JSON)")]
    Unsupported { api_version: String, kind: String },
    #[error("the body's content encoding {0:?} is not supported")]
    Encoding(String),
}

/// Decodes a whole body (`k8s\0` + runtime.Unknown) into the object's
/// JSON, with `apiVersion` and `kind` set.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let rest = body.strip_prefix(MAGIC).ok_or(Error::NoMagic)?;
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    for f in Fields::new(rest) {
        let (num, v) = f?;
        match (num, v) {
            (1, Wire::Bytes(tm)) => {
                for f in Fields::new(tm) {
                    match f? {
                        (1, Wire::Bytes(b)) => api_version = String::from_utf8_lossy(b).into(),
                        (2, Wire::Bytes(b)) => kind = String::from_utf8_lossy(b).into(),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = b,
            (3, Wire::Bytes(b)) => encoding = String::from_utf8_lossy(b).into(),
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(Error::Encoding(encoding));
    }
    let message = message_of(&api_version, &kind).ok_or_else(|| Error::Unsupported {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let mut v = decode_message(raw, message)?;
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
    }
    Ok(v)
}

/// The message of `kind` in `apiVersion`, if the schema has it.
fn message_of(api_version: &str, kind: &str) -> Option<&'static str> {
    let package = match kind {
        // Options ride in the caller's group/version.
        "DeleteOptions" => META.to_string(),
        _ => {
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            let group = match group {
                "" => "core",
                g => g.strip_suffix(".k8s.io").unwrap_or(g),
            };
            format!("k8s.io.api.{group}.{version}")
        }
    };
    let name = format!("{package}.{kind}");
    schema().get_key_value(name.as_str()).map(|(k, _)| *k)
}

/// One field's value on the wire.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// The fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Fields<'a> {
        Fields {
            buf,
            pos: 0,
            failed: false,
        }
    }

    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn next_field(&mut self) -> Option<(u64, Wire<'a>)> {
        let key = self.varint()?;
        let v = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).ok()?;
                let end = self.pos.checked_add(len)?;
                let b = self.buf.get(self.pos..end)?;
                self.pos = end;
                Wire::Bytes(b)
            }
            1 => {
                self.pos = self.pos.checked_add(8).filter(|p| *p <= self.buf.len())?;
                Wire::Fixed
            }
            5 => {
                self.pos = self.pos.checked_add(4).filter(|p| *p <= self.buf.len())?;
                Wire::Fixed
            }
            _ => return None,
        };
        Some((key >> 3, v))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let at = self.pos;
        match self.next_field() {
            Some(f) => Some(Ok(f)),
            None => {
                self.failed = true;
                Some(Err(Error::Malformed(at)))
            }
        }
    }
}

/// Decodes one message of type `message` into JSON.
fn decode_message(buf: &[u8], message: &str) -> Result<Value, Error> {
    if let Some(v) = special(buf, message)? {
        return Ok(v);
    }
    let Some(fields) = schema().get(message) else {
        return Ok(Value::Object(Map::new()));
    };
    let mut out = Map::new();
    for f in Fields::new(buf) {
        let (num, wire) = f?;
        let Some(field) = fields.get(&num) else {
            continue;
        };
        match field.card {
            Card::One => {
                if let Some(v) = value(&wire, field.ty)? {
                    out.insert(field.json.into(), v);
                }
            }
            Card::Repeated => {
                let list = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else { continue };
                match (&wire, field.ty) {
                    // Packed varints (proto3 style): several in one field.
                    (Wire::Bytes(b), "int32" | "int64" | "bool") => {
                        let mut r = Fields::new(b);
                        while r.pos < b.len() {
                            let n = r.varint().ok_or(Error::Malformed(r.pos))?;
                            list.push(scalar(n, field.ty));
                        }
                    }
                    _ => list.extend(value(&wire, field.ty)?),
                }
            }
            Card::Map => {
                let Wire::Bytes(entry) = wire else { continue };
                let (mut k, mut v) = (None, None);
                for f in Fields::new(entry) {
                    match f? {
                        (1, w) => k = value(&w, field.ty)?,
                        (2, w) => v = value(&w, field.value)?,
                        _ => {}
                    }
                }
                let key = match k {
                    Some(Value::String(s)) => s,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let map = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(map) = map {
                    map.insert(key, v.unwrap_or_else(|| empty_of(field.value)));
                }
            }
        }
    }
    // Zero scalars Go wrote only because it writes every non-pointer one.
    out.retain(|k, v| {
        let keep = fields
            .values()
            .find(|f| f.json == k)
            .is_none_or(|f| f.card != Card::One || f.keep_zero);
        keep || !is_zero(v)
    });
    Ok(Value::Object(out))
}

/// The JSON of a map value the wire left out (proto omits empty values).
fn empty_of(ty: &str) -> Value {
    match ty {
        "string" | "bytes" => Value::String(String::new()),
        "bool" => Value::Bool(false),
        "int32" | "int64" => 0.into(),
        _ => Value::Object(Map::new()),
    }
}

fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0),
        _ => false,
    }
}

fn scalar(n: u64, ty: &str) -> Value {
    match ty {
        "bool" => Value::Bool(n != 0),
        // int32 negatives are sign-extended to 64 bits on the wire.
        "int32" => (n as i64 as i32).into(),
        _ => (n as i64).into(),
    }
}

/// One wire value of type `ty` as JSON; `None` for what has no JSON form
/// (a zero time).
fn value(wire: &Wire, ty: &str) -> Result<Option<Value>, Error> {
    Ok(match (wire, ty) {
        (Wire::Varint(n), _) => Some(scalar(*n, ty)),
        (Wire::Bytes(b), "string") => Some(Value::String(String::from_utf8_lossy(b).into())),
        (Wire::Bytes(b), "bytes") => Some(Value::String(
            base64::engine::general_purpose::STANDARD.encode(b),
        )),
        (Wire::Bytes(b), message) => {
            let v = decode_message(b, message)?;
            (!v.is_null()).then_some(v)
        }
        (Wire::Fixed, _) => None,
    })
}

/// The types with a JSON form of their own; `Ok(None)` for the others.
/// A zero Time becomes `null` (Go writes a zero time as null).
fn special(buf: &[u8], message: &str) -> Result<Option<Value>, Error> {
    let short = message.rsplit('.').next().unwrap_or_default();
    let package = &message[..message.len() - short.len()];
    let known = matches!(
        (package, short),
        (
            "k8s.io.apimachinery.pkg.apis.meta.v1.",
            "Time" | "MicroTime" | "FieldsV1"
        ) | ("k8s.io.apimachinery.pkg.util.intstr.", "IntOrString")
            | ("k8s.io.apimachinery.pkg.api.resource.", "Quantity")
            | ("k8s.io.apimachinery.pkg.runtime.", "RawExtension")
    );
    if !known {
        return Ok(None);
    }
    let mut ints = [0i64; 3];
    let mut bytes: [&[u8]; 4] = [&[]; 4];
    for f in Fields::new(buf) {
        match f? {
            (n @ 1..=3, Wire::Varint(v)) => ints[n as usize - 1] = v as i64,
            (n @ 1..=3, Wire::Bytes(b)) => bytes[n as usize] = b,
            _ => {}
        }
    }
    Ok(Some(match short {
        "Time" | "MicroTime" => {
            let (secs, nanos) = (ints[0], ints[1] as i32);
            if secs == 0 && nanos == 0 {
                Value::Null
            } else {
                let t = jiff::Timestamp::new(secs, nanos).map_err(|_| Error::Malformed(0))?;
                Value::String(if short == "Time" {
                    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
                } else {
                    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
                })
            }
        }
        // type 0: int, 1: string.
        "IntOrString" if ints[0] == 1 => Value::String(String::from_utf8_lossy(bytes[3]).into()),
        "IntOrString" => (ints[1] as i32).into(),
        "Quantity" => Value::String(String::from_utf8_lossy(bytes[1]).into()),
        // RawExtension and FieldsV1: JSON bytes in field 1.
        _ if bytes[1].is_empty() => Value::Null,
        _ => serde_json::from_slice(bytes[1]).unwrap_or(Value::Null),
    }))
}

#[cfg(test)]
mod tests;
