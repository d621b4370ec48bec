//! Reading manifests: plain Kubernetes YAML (or JSON), several documents
//! separated by `---`, into `Object`s. Errors name the source, the document
//! and the line. It decodes only; defaulting and validation come after.

use std::fmt;

use serde_json::Value;

use crate::objects::Object;

/// Why a manifest could not be read; always says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file name (or `-` for stdin).
    pub source: String,
    /// 1-based document number within the source.
    pub document: usize,
    /// 1-based line in the source, when known.
    pub line: Option<usize>,
    pub msg: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.source, self.document)?;
        if let Some(l) = self.line {
            write!(f, " (line {l})")?;
        }
        write!(f, ": {}", self.msg)
    }
}

impl std::error::Error for ManifestError {}

/// Splits `text` into documents at `---` lines; returns each with its first line number.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let is_sep = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if is_sep {
            docs.push((start, std::mem::take(&mut cur)));
            start = i + 2;
            // A separator may carry content after it (`--- {a: 1}`).
            if let Some(rest) = line.strip_prefix("---").map(str::trim) {
                if !rest.is_empty() && !rest.starts_with('#') {
                    cur.push_str(rest);
                    cur.push('\n');
                    start = i + 1;
                }
            }
        } else {
            cur.push_str(line);
            cur.push('\n');
        }
    }
    docs.push((start, cur));
    docs
}

/// Parses every object in `text`. Empty documents (only comments or
/// whitespace) are skipped; `kind: List` expands its `items`.
pub fn parse(source: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    let mut n = 0;
    for (first_line, doc) in documents(text) {
        if doc
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        n += 1;
        let err = |line: Option<usize>, msg: String| ManifestError {
            source: source.to_string(),
            document: n,
            line,
            msg,
        };
        let yaml: serde_yaml::Value = serde_yaml::from_str(&doc).map_err(|e| {
            let line = e.location().map(|l| first_line + l.line() - 1);
            err(line, format!("invalid YAML: {e}"))
        })?;
        let json: Value = serde_json::to_value(&yaml).map_err(|e| {
            err(
                Some(first_line),
                format!("not a JSON-compatible document: {e}"),
            )
        })?;
        let items = match json.get("kind").and_then(Value::as_str) {
            Some("List") => json
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            _ => vec![json],
        };
        for item in items {
            if !item.is_object() {
                return Err(err(
                    Some(first_line),
                    "a manifest document must be a mapping".into(),
                ));
            }
            out.push(Object::from_value(item).map_err(|e| err(Some(first_line), e.to_string()))?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Kind;

    const TWO: &str = "\
# the seed's redis-master example
apiVersion: v1
kind: Service
metadata:
  name: redis-master
spec:
  selector: {app: redis}
  ports:
  - port: 6379
---
apiVersion: v1
kind: Pod
metadata:
  name: redis
  labels: {app: redis}
spec:
  containers:
  - name: redis
    image: redis
";

    #[test]
    fn several_documents_parse_in_order() {
        let objs = parse("redis.yaml", TWO).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(
            (objs[0].kind(), objs[0].name()),
            (Kind::Service, "redis-master")
        );
        assert_eq!((objs[1].kind(), objs[1].name()), (Kind::Pod, "redis"));
    }

    #[test]
    fn bad_yaml_names_document_and_line() {
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n";
        let e = parse("bad.yaml", text).unwrap_err();
        assert_eq!(e.document, 2);
        assert!(matches!(e.line, Some(l) if (8..=9).contains(&l)), "{e}");
        assert!(
            e.to_string().starts_with("bad.yaml: document 2 (line "),
            "{e}"
        );
    }

    #[test]
    fn unknown_kind_names_the_document() {
        let text = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: d}\n";
        let e = parse("d.yaml", text).unwrap_err();
        assert_eq!((e.document, e.line), (1, Some(2)));
        assert!(e.msg.contains("Ingress"), "{e}");
    }

    #[test]
    fn empty_documents_and_lists() {
        let text = "---\n# nothing\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: a}}\n- {apiVersion: v1, kind: Namespace, metadata: {name: b}}\n";
        let objs = parse("l.yaml", text).unwrap();
        assert_eq!(
            objs.iter().map(|o| o.name()).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(parse("e.yaml", "").unwrap().is_empty());
        let e = parse("s.yaml", "just a string\n").unwrap_err();
        assert!(e.msg.contains("mapping"), "{e}");
    }
}
