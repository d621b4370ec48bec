//! Objects by (namespace, label pair): which pods carry a Service's
//! selector, and which Services select a pod, without scanning the
//! namespace. A Service is checked against only the pods carrying its
//! selector's rarest pair, and a pod event looks only at the Services
//! whose selectors share one of its labels (with 10k Services and 50k pods
//! in one namespace a full scan is 500M selector checks).

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub type Labels = BTreeMap<String, String>;

/// Objects of one kind by (namespace, label pair), and the labels (or, for
/// Services, the selector) each was last recorded with.
#[derive(Debug, Default)]
pub struct LabelIndex {
    /// namespace -> "key\0value" -> names.
    by_pair: HashMap<String, HashMap<String, BTreeSet<String>>>,
    /// (namespace, name) -> labels.
    labels: HashMap<(String, String), Labels>,
}

fn pair(k: &str, v: &str) -> String {
    format!("{k}\0{v}")
}

impl LabelIndex {
    /// Records `labels` for `ns/name` (`None`: the object is gone) and
    /// returns what was recorded before.
    pub fn set(&mut self, ns: &str, name: &str, labels: Option<Labels>) -> Option<Labels> {
        let key = (ns.to_string(), name.to_string());
        let before = self.labels.remove(&key);
        if let Some(old) = &before {
            if let Some(pairs) = self.by_pair.get_mut(ns) {
                for (k, v) in old {
                    let p = pair(k, v);
                    if let Some(names) = pairs.get_mut(&p) {
                        names.remove(name);
                        if names.is_empty() {
                            pairs.remove(&p);
                        }
                    }
                }
                if pairs.is_empty() {
                    self.by_pair.remove(ns);
                }
            }
        }
        if let Some(new) = labels {
            let pairs = self.by_pair.entry(ns.to_string()).or_default();
            for (k, v) in &new {
                pairs
                    .entry(pair(k, v))
                    .or_default()
                    .insert(name.to_string());
            }
            self.labels.insert(key, new);
        }
        before
    }

    /// The labels recorded for `ns/name`.
    pub fn get(&self, ns: &str, name: &str) -> Option<&Labels> {
        self.labels.get(&(ns.to_string(), name.to_string()))
    }

    /// The names in `ns` carrying the rarest pair of `selector`: a superset
    /// of those carrying all of it (empty for an empty selector, which
    /// selects nothing).
    pub fn candidates(&self, ns: &str, selector: &Labels) -> Vec<&str> {
        let Some(pairs) = self.by_pair.get(ns) else {
            return Vec::new();
        };
        let mut rarest: Option<&BTreeSet<String>> = None;
        for (k, v) in selector {
            match pairs.get(&pair(k, v)) {
                // Nothing carries this pair: nothing carries all of them.
                None => return Vec::new(),
                Some(names) if rarest.is_none_or(|r| names.len() < r.len()) => rarest = Some(names),
                Some(_) => {}
            }
        }
        rarest
            .map(|r| r.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The names in `ns` whose recorded labels share a pair with `labels`.
    pub fn sharing(&self, ns: &str, labels: &Labels) -> BTreeSet<&str> {
        let Some(pairs) = self.by_pair.get(ns) else {
            return BTreeSet::new();
        };
        labels
            .iter()
            .filter_map(|(k, v)| pairs.get(&pair(k, v)))
            .flatten()
            .map(String::as_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_index_narrows_to_the_rarest_pair_and_forgets_old_labels() {
        let mut ix = LabelIndex::default();
        for i in 0..10 {
            ix.set("a", &format!("p{i}"), Some(labels(&[("tier", "web")])));
        }
        ix.set("a", "p3", Some(labels(&[("tier", "web"), ("app", "x")])));
        ix.set("b", "q", Some(labels(&[("tier", "web"), ("app", "x")])));
        let sel = labels(&[("tier", "web"), ("app", "x")]);
        assert_eq!(
            ix.candidates("a", &sel),
            ["p3"],
            "the rarer pair, this namespace"
        );
        assert!(ix.candidates("a", &labels(&[("app", "y")])).is_empty());
        assert!(
            ix.candidates("a", &Labels::new()).is_empty(),
            "empty selects nothing"
        );
        assert_eq!(ix.candidates("a", &labels(&[("tier", "web")])).len(), 10);

        // Relabelled: the old pair no longer finds it; gone: nothing does.
        let before = ix.set("a", "p3", Some(labels(&[("tier", "db")])));
        assert_eq!(before, Some(sel.clone()));
        assert!(ix.candidates("a", &sel).is_empty());
        assert_eq!(ix.candidates("a", &labels(&[("tier", "web")])).len(), 9);
        ix.set("a", "p3", None);
        assert!(ix.candidates("a", &labels(&[("tier", "db")])).is_empty());

        let shared = ix.sharing("b", &labels(&[("app", "x"), ("zone", "z")]));
        assert_eq!(shared.into_iter().collect::<Vec<_>>(), ["q"]);
        for i in 0..10 {
            ix.set("a", &format!("p{i}"), None);
        }
        ix.set("b", "q", None);
        assert!(
            ix.by_pair.is_empty() && ix.labels.is_empty(),
            "nothing left behind"
        );
    }
}
