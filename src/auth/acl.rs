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
//! A subscription filter is refused only when no topic the client may read can match it: it
//! lies wholly inside a `deny` rule, or shares no topic with any rule that grants reading.
//! Every other filter is granted (so a logger subscribing to `#` works with `topic read
//! sec/#`), and every message is checked against the subscriber's rules before it is
//! delivered, so a wide filter never leaks a topic the client may not read.
//!
//! A pattern is skipped for a client whose id (for `%c`) or user name (for `%u`) holds `+`,
//! `#` or `/`: substituted, such a value would be a wildcard or reach into another client's
//! subtree (client `+` would read `clients/+/#`; CVE-2017-7650 in Mosquitto, which skips `+`
//! and `#`). Substitution happens level by level while matching, so a check allocates nothing.

use std::collections::HashMap;
use std::path::Path;

use super::{Access, AuthError};
use crate::routing::topic;

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
    /// The filter names `%c` / `%u` (patterns only).
    uses_client: bool,
    uses_user: bool,
}

impl Rule {
    /// For a pattern: true if it may be applied to this client (see the module doc).
    fn applies_to(&self, client_id: &str, username: Option<&str>) -> bool {
        let safe = |v: &str| !v.contains(['+', '#', '/']);
        (!self.uses_client || safe(client_id)) && (!self.uses_user || username.is_some_and(safe))
    }
}

/// True if the pattern level `pattern`, with `%c` and `%u` replaced, is exactly `level`.
fn expands_to(pattern: &str, client_id: &str, username: &str, level: &[u8]) -> bool {
    let (mut pattern, mut level) = (pattern, level);
    loop {
        let Some(i) = pattern.find('%') else {
            return level == pattern.as_bytes();
        };
        let Some(rest) = level.strip_prefix(&pattern.as_bytes()[..i]) else {
            return false;
        };
        let tail = &pattern[i..];
        let (value, skip) = if tail.starts_with("%c") {
            (client_id, 2)
        } else if tail.starts_with("%u") {
            (username, 2)
        } else {
            ("%", 1)
        };
        let Some(rest) = rest.strip_prefix(value.as_bytes()) else {
            return false;
        };
        level = rest;
        pattern = &tail[skip..];
    }
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
        let name = topic.as_bytes();
        let own = own.iter().filter(|r| topic::matches(&r.filter, name));
        let user = username.unwrap_or("");
        let patterns = self.patterns.iter().filter(|p| {
            p.applies_to(client_id, username)
                && topic::matches_by(&p.filter, name, |f, n| expands_to(f, client_id, user, n))
        });
        let mut granted = false;
        for rule in own.chain(patterns) {
            if rule.grant == Grant::Deny {
                return false;
            }
            granted |= rule.grant.allows(access);
        }
        granted
    }
}

impl AclFile {
    /// True if the client may subscribe to `filter`: some topic it matches may be read (see
    /// the module doc).
    pub fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        let own = match username {
            Some(u) => self.users.get(u).map(Vec::as_slice).unwrap_or(&[]),
            None => &self.anonymous,
        };
        let user = username.unwrap_or("");
        let own = own.iter().map(|r| (r.grant, r.filter.clone()));
        let patterns = self
            .patterns
            .iter()
            .filter(|p| p.applies_to(client_id, username))
            .map(|p| (p.grant, expand(&p.filter, client_id, user)));
        let mut readable = false;
        for (grant, rule) in own.chain(patterns) {
            if grant == Grant::Deny && topic::covers(&rule, filter) {
                return false;
            }
            readable |= grant.allows(Access::Read) && topic::intersects(&rule, filter);
        }
        readable
    }
}

/// A pattern with `%c` and `%u` replaced (`%` before anything else stays).
fn expand(pattern: &str, client_id: &str, username: &str) -> String {
    pattern
        .split('/')
        .map(|level| {
            let mut out = String::new();
            let mut rest = level;
            while let Some(i) = rest.find('%') {
                out.push_str(&rest[..i]);
                let tail = &rest[i..];
                if let Some(after) = tail.strip_prefix("%c") {
                    out.push_str(client_id);
                    rest = after;
                } else if let Some(after) = tail.strip_prefix("%u") {
                    out.push_str(username);
                    rest = after;
                } else {
                    out.push('%');
                    rest = &tail[1..];
                }
            }
            out.push_str(rest);
            out
        })
        .collect::<Vec<_>>()
        .join("/")
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
        uses_client: filter.contains("%c"),
        uses_user: filter.contains("%u"),
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
    fn patterns_skip_ids_and_users_with_wildcards_or_slashes() {
        let a = AclFile::parse(
            "pattern readwrite clients/%c/#\npattern write devices/%c/cmd\npattern read u/%u/#\n",
        )
        .expect("parses");
        for id in ["+", "#", "a/b", "x+", "#y", "/"] {
            for topic in [
                "clients/victim/secret",
                "clients/+/#",
                "clients/#",
                "clients/a/b/c",
            ] {
                assert!(!a.allowed(id, None, Access::Read, topic), "{id} {topic}");
            }
            assert!(
                !a.allowed(id, None, Access::Write, "devices/victim/cmd"),
                "{id}"
            );
            assert!(
                !a.allowed("c", Some(id), Access::Read, "u/victim/x"),
                "{id}"
            );
        }
        // The ordinary case still works, and a value with % or other punctuation is literal.
        assert!(a.allowed("a", None, Access::Read, "clients/a/b"));
        assert!(
            !a.allowed("a", None, Access::Read, "clients/+/b"),
            "a wildcard topic"
        );
        assert!(a.allowed("50%u", Some("bob"), Access::Read, "clients/50%u/x"));
        assert!(!a.allowed("50%u", Some("bob"), Access::Read, "clients/50bob/x"));
        assert!(a.allowed("c", Some("b-o.b"), Access::Read, "u/b-o.b/x"));
    }

    #[test]
    fn pattern_levels_expand_in_place() {
        assert!(expands_to("%c", "dev", "", b"dev"));
        assert!(expands_to("x-%c-%u", "dev", "bob", b"x-dev-bob"));
        assert!(!expands_to("x-%c-%u", "dev", "bob", b"x-dev-bo"));
        assert!(!expands_to("%c", "dev", "", b"devx"));
        assert!(expands_to("100%", "", "", b"100%"));
        assert!(expands_to("%%c", "d", "", b"%d"));
    }

    #[test]
    fn a_filter_is_refused_only_when_nothing_it_matches_may_be_read() {
        let a = acl();
        let sub = |user, filter| a.may_subscribe("dev1", user, filter);
        assert!(sub(Some("alice"), "alice/#"));
        assert!(sub(Some("alice"), "sensors/+/temp"));
        assert!(sub(Some("alice"), "#"), "wide, filtered per message");
        assert!(sub(Some("alice"), "sensors/#"));
        assert!(sub(Some("alice"), "+/secret"), "only partly denied");
        assert!(!sub(Some("alice"), "alice/secret"), "wholly denied");
        assert!(
            !sub(Some("alice"), "other/#"),
            "shares nothing with a grant"
        );
        assert!(
            !sub(Some("alice"), "$SYS/#"),
            "`#` rules do not reach $ topics"
        );
        assert!(!sub(Some("bob"), "bob/out"), "write-only");
        assert!(sub(None, "#"), "anonymous: public/#");
        assert!(sub(None, "clients/dev1/x"), "pattern for this client");
        assert!(!sub(None, "clients/dev2/x"), "another client's");
        assert!(sub(None, "clients/+/x"), "meets clients/dev1/#");
        assert!(
            !a.may_subscribe("+", None, "clients/+/x"),
            "unsafe id: no pattern"
        );
        assert_eq!(expand("a/%c-%u/100%/%%c", "d", "u"), "a/d-u/100%/%d");
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
