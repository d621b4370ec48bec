//! Who is asking and what they may do. Authentication: a client
//! certificate verified by the TLS layer against the cluster CA (CN is the
//! user, each O a group), or a bearer token from kube-apiserver's static
//! token file. Authorization is a trait so that RBAC slots in later; the
//! agent serves with [`crate::authz::Cluster`] (masters, discovery, the
//! Node authorizer's rules).

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::{Error, Result};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl User {
    /// The user a client certificate names.
    pub fn from_cert(subject: crate::x509::Subject) -> User {
        let mut groups = subject.organizations;
        groups.push("system:authenticated".into());
        User {
            name: subject.common_name,
            uid: String::new(),
            groups,
        }
    }
}

/// Static bearer tokens, as kube-apiserver's `--token-auth-file` reads
/// them: `token,user,uid,"group1,group2"` per line.
#[derive(Debug, Clone, Default)]
pub struct TokenFile {
    users: HashMap<String, User>,
}

/// Splits one CSV line, honouring double quotes.
fn csv_fields(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

impl TokenFile {
    /// Parses the file's text; a line with fewer than three fields is an
    /// error naming its line number (never the token).
    pub fn parse(text: &str) -> Result<TokenFile> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f = csv_fields(line);
            if f.len() < 3 || f[0].is_empty() || f[1].is_empty() {
                return Err(Error::Config(format!(
                    "token file line {}: want token,user,uid[,\"groups\"]",
                    i + 1
                )));
            }
            let mut groups: Vec<String> = f
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            groups.push("system:authenticated".into());
            users.insert(
                f[0].clone(),
                User {
                    name: f[1].clone(),
                    uid: f[2].clone(),
                    groups,
                },
            );
        }
        Ok(TokenFile { users })
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<TokenFile> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("read token file {}: {e}", path.display())))?;
        TokenFile::parse(&text)
    }

    /// The user of an `Authorization: Bearer` token.
    pub fn user(&self, token: &str) -> Option<&User> {
        self.users.get(token)
    }
}

/// What a request wants to do, in the authorizer's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// get, list, watch, create, update, patch, delete; or the HTTP verb
    /// lower-cased for non-resource paths.
    pub verb: String,
    /// The API group ("" for core).
    pub group: String,
    /// The resource (`pods`), empty for non-resource paths.
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The path, for non-resource requests (`/version`).
    pub path: String,
}

/// Decides whether a user may do something (it may read the cluster to
/// decide: the Node authorizer looks at pods).
#[async_trait::async_trait]
pub trait Authorizer: Send + Sync {
    /// `Ok(())` to allow; `Err(reason)` to refuse (the reason may be empty).
    async fn authorize(&self, user: &User, attrs: &Attributes) -> std::result::Result<(), String>;
}

/// `system:masters` may do everything; everyone else nothing.
pub struct MastersOnly;

#[async_trait::async_trait]
impl Authorizer for MastersOnly {
    async fn authorize(&self, user: &User, _: &Attributes) -> std::result::Result<(), String> {
        if user.groups.iter().any(|g| g == "system:masters") {
            Ok(())
        } else {
            Err(String::new())
        }
    }
}

/// The 401 Status for a request without credentials.
pub fn unauthorized() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
}

/// The 403 Status, worded as kube-apiserver words it.
pub fn forbidden(user: &User, a: &Attributes, why: &str) -> Value {
    let message = if a.resource.is_empty() {
        format!(
            "forbidden: User \"{}\" cannot {} path \"{}\"",
            user.name, a.verb, a.path
        )
    } else {
        let res = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let what = if a.name.is_empty() {
            res.clone()
        } else {
            format!("{res} \"{}\"", a.name)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", a.namespace)
        };
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{res}\" in API group \"{}\" {scope}",
            user.name, a.verb, a.group
        )
    };
    let message = if why.is_empty() {
        message
    } else {
        format!("{message}: {why}")
    };
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": "Forbidden",
           "details": {"name": a.name, "group": a.group, "kind": a.resource}, "code": 403})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_reads_kube_apiservers_csv() {
        let f = TokenFile::parse("# comment\nabc,alice,u1,\"dev,ops\"\nxyz,bob,u2\n").unwrap();
        let alice = f.user("abc").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert_eq!(f.user("xyz").unwrap().groups, ["system:authenticated"]);
        assert!(f.user("nope").is_none());
        let e = TokenFile::parse("secret-token-value\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && !e.contains("secret-token-value"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn only_masters_are_allowed_and_refusals_name_user_verb_and_resource() {
        let bob = User {
            name: "bob".into(),
            uid: String::new(),
            groups: vec!["dev".into()],
        };
        let a = Attributes {
            verb: "list".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: String::new(),
            namespace: "default".into(),
            name: String::new(),
            path: "/api/v1/namespaces/default/pods".into(),
        };
        assert!(MastersOnly.authorize(&bob, &a).await.is_err());
        let admin = User {
            groups: vec!["system:masters".into()],
            ..bob.clone()
        };
        assert!(MastersOnly.authorize(&admin, &a).await.is_ok());
        assert_eq!(
            forbidden(&bob, &a, "")["message"],
            "pods is forbidden: User \"bob\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        );
    }
}
