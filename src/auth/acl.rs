//! Mosquitto-compatible ACL files.
//!
//! ```text
//! # rules before any `user` line apply to anonymous clients
//! topic read public/#
//! user alice
//! topic readwrite alice/#        # access may be read, write, readwrite (default) or deny
//! topic deny alice/secret
//! pattern read clients/%c/#      # patterns apply to every client; %c = client id, %u = user
//! ```
//! With an ACL file, access is denied unless a rule grants it; a matching `deny` rule wins.
//! A subscription filter is checked as if it were a topic name (so `sensors/#` is granted by a
//! rule `sensors/#` but not by `sensors/+`), and every message is checked again against the
//! subscriber's rules before it is delivered, so wildcards never leak a denied topic.

use std::collections::HashMap;
use std::path::Path;

use super::{Access, AuthError};
use crate::topic;

/// What a rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    filter: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl AclFile {
    /// Reads an ACL file; errors name the file and line.
    pub fn load(path: &Path) -> Result<AclFile, AuthError> {
        super::load_file(path, AclFile::parse)
    }

    /// Parses ACL text: `Err((line, problem))`.
    pub fn parse(text: &str) -> Result<AclFile, (usize, String)> {
        let mut acl = AclFile::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |msg: String| (i + 1, msg);
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a user name".into()));
                    }
                    user = Some(rest.to_string());
                    acl.users.entry(rest.to_string()).or_default();
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else if let Some(u) = &user {
                        acl.users.entry(u.clone()).or_default().push(rule);
                    } else {
                        acl.anonymous.push(rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword {other:?}; expected user, topic or pattern"
                    )))
                }
            }
        }
        Ok(acl)
    }

    /// True if the client may `access` `topic` (a topic name, or a subscription filter read as
    /// one).
    pub fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        access: Access,
        topic: &str,
    ) -> bool {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let patterns = self.patterns.iter().filter_map(|p| {
            // A pattern naming %u does not apply to a client without a user name.
            if username.is_none() && p.filter.contains("%u") {
                return None;
            }
            let filter = p
                .filter
                .replace("%c", client_id)
                .replace("%u", username.unwrap_or(""));
            Some(Rule {
                grant: p.grant,
                filter,
            })
        });
        let mut granted = false;
        for rule in own.iter().cloned().chain(patterns) {
            if !topic::matches(&rule.filter, topic.as_bytes()) {
                continue;
            }
            if rule.grant == Grant::Deny {
                return false;
            }
            granted |= rule.grant.allows(access);
        }
        granted
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, after) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (grant, filter) = match first {
        "read" => (Grant::Read, after.trim()),
        "write" => (Grant::Write, after.trim()),
        "readwrite" => (Grant::ReadWrite, after.trim()),
        "deny" => (Grant::Deny, after.trim()),
        // Access omitted: read and write, as Mosquitto.
        _ => (Grant::ReadWrite, rest),
    };
    if filter.is_empty() || !topic::valid_filter(filter) {
        return Err(format!("invalid topic filter {filter:?}"));
    }
    Ok(Rule {
        grant,
        filter: filter.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "\
# anonymous clients
topic read public/#

user alice
topic readwrite alice/#
topic deny alice/secret
topic sensors/+/temp

user bob
topic write bob/out

pattern read clients/%c/#
pattern write users/%u/inbox
";

    fn acl() -> AclFile {
        AclFile::parse(ACL).expect("parses")
    }

    #[test]
    fn anonymous_section() {
        let a = acl();
        assert!(a.allowed("c", None, Access::Read, "public/x"));
        assert!(!a.allowed("c", None, Access::Write, "public/x"));
        assert!(!a.allowed("c", None, Access::Read, "alice/x"));
        // Users do not get the anonymous rules.
        assert!(!a.allowed("c", Some("bob"), Access::Read, "public/x"));
    }

    #[test]
    fn user_rules_and_deny() {
        let a = acl();
        assert!(a.allowed("c", Some("alice"), Access::Write, "alice/x"));
        assert!(a.allowed("c", Some("alice"), Access::Read, "alice/x/y"));
        assert!(!a.allowed("c", Some("alice"), Access::Read, "alice/secret"));
        assert!(!a.allowed("c", Some("alice"), Access::Write, "alice/secret"));
        assert!(
            a.allowed("c", Some("alice"), Access::Write, "sensors/k/temp"),
            "default readwrite"
        );
        assert!(a.allowed("c", Some("bob"), Access::Write, "bob/out"));
        assert!(!a.allowed("c", Some("bob"), Access::Read, "bob/out"));
        assert!(
            !a.allowed("c", Some("carol"), Access::Read, "alice/x"),
            "unknown user"
        );
    }

    #[test]
    fn patterns_substitute_client_and_user() {
        let a = acl();
        assert!(a.allowed("dev1", None, Access::Read, "clients/dev1/cmd"));
        assert!(!a.allowed("dev1", None, Access::Read, "clients/dev2/cmd"));
        assert!(a.allowed("c", Some("bob"), Access::Write, "users/bob/inbox"));
        assert!(!a.allowed("c", Some("bob"), Access::Write, "users/alice/inbox"));
        assert!(
            !a.allowed("c", None, Access::Write, "users//inbox"),
            "%u needs a user"
        );
    }

    #[test]
    fn subscription_filters_are_checked_as_topics() {
        let a = acl();
        assert!(a.allowed("c", Some("alice"), Access::Read, "alice/#"));
        assert!(a.allowed("c", Some("alice"), Access::Read, "sensors/+/temp"));
        assert!(!a.allowed("c", Some("alice"), Access::Read, "#"));
        assert!(!a.allowed("c", Some("alice"), Access::Read, "sensors/#"));
    }

    #[test]
    fn errors_have_line_numbers() {
        assert_eq!(AclFile::parse("user\n").expect_err("no name").0, 1);
        assert_eq!(
            AclFile::parse("\n\ntopic read a/#/b\n")
                .expect_err("bad filter")
                .0,
            3
        );
        assert_eq!(AclFile::parse("topic\n").expect_err("no filter").0, 1);
        assert_eq!(AclFile::parse("allow all\n").expect_err("keyword").0, 1);
    }
}
