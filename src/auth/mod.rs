//! Who may connect, publish and subscribe: the `Authenticator` and `Acl` seams and `Policy`,
//! their implementation from `[auth]`: `allow_anonymous`, a Mosquitto password file and a
//! Mosquitto ACL file. `Authz` puts an embedding application's `authorize` hook in front of
//! the ACL file.

pub mod acl;
pub mod passwd;

use std::path::{Path, PathBuf};

use crate::codec::ConnectReturnCode;
use crate::config::AuthConfig;
use crate::hooks::{Action, ClientRef, Hooks, Verdict};

pub use acl::AclFile;
pub use passwd::PasswordFile;

/// A password or ACL file that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}{}: {msg}", path.display(), if *line > 0 { format!(":{line}") } else { String::new() })]
pub struct AuthError {
    /// The file.
    pub path: PathBuf,
    /// 1-based line, or 0 for the whole file.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl AuthError {
    fn file(path: &Path, line: usize, msg: String) -> AuthError {
        AuthError {
            path: path.to_owned(),
            line,
            msg,
        }
    }
}

/// Reads `path` and parses it with `parse`, naming the file (and line) in any error.
fn load_file<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, (usize, String)>,
) -> Result<T, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError::file(path, 0, format!("cannot read: {e}")))?;
    parse(&text).map_err(|(line, msg)| AuthError::file(path, line, msg))
}

/// The credentials a CONNECT carried.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Client identifier (after any assignment).
    pub client_id: &'a str,
    /// User name, if present.
    pub username: Option<&'a str>,
    /// Password, if present.
    pub password: Option<&'a [u8]>,
}

/// Decides whether a CONNECT is accepted.
pub trait Authenticator: Send + Sync {
    /// `Ok(())` to accept, or the CONNACK code to refuse with (0x04 or 0x05).
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<(), ConnectReturnCode>;
}

/// The kind of access a topic check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receiving messages: SUBSCRIBE filters and deliveries.
    Read,
    /// PUBLISH, including wills.
    Write,
}

/// Decides whether a client may publish to a topic or subscribe to a filter.
pub trait Acl: Send + Sync {
    /// True if the client may access `topic`, a topic name.
    fn allowed(&self, client_id: &str, username: Option<&str>, access: Access, topic: &str)
        -> bool;

    /// True if the client may subscribe to `filter`: some topic it matches may be read.
    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool;
}

/// True if the client may publish to `topic`. `$SYS` belongs to the broker, as in Mosquitto:
/// a client's PUBLISH there is acknowledged and dropped [MQTT-3.3.5-2].
pub fn may_publish(acl: &dyn Acl, client_id: &str, username: Option<&str>, topic: &str) -> bool {
    if topic == "$SYS" || topic.starts_with("$SYS/") {
        return false;
    }
    acl.allowed(client_id, username, Access::Write, topic)
}

/// True for the one `$SYS` branch another broker's bridge may publish to: its connection
/// state (Mosquitto's bridge notifications, `$SYS/broker/connection/NAME/state`).
pub fn is_bridge_state(topic: &str) -> bool {
    topic.starts_with("$SYS/broker/connection/")
}

/// `[auth]` in force: anonymous access, the password file and the ACL file, if configured.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Accept clients that give no user name.
    pub allow_anonymous: bool,
    /// Users and password hashes; without a file any user name is accepted.
    pub passwords: Option<PasswordFile>,
    /// Topic rules; without a file every topic is allowed.
    pub acl: Option<AclFile>,
}

impl Policy {
    /// Loads the files `[auth]` names.
    pub fn load(cfg: &AuthConfig) -> Result<Policy, AuthError> {
        Ok(Policy {
            allow_anonymous: cfg.allow_anonymous,
            passwords: cfg
                .password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()?,
            acl: cfg.acl_file.as_deref().map(AclFile::load).transpose()?,
        })
    }

    /// True if deliveries must be checked against an ACL file.
    pub fn checks_reads(&self) -> bool {
        self.acl.is_some()
    }
}

impl Authenticator for Policy {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<(), ConnectReturnCode> {
        match (creds.username, &self.passwords) {
            (None, _) if !self.allow_anonymous => Err(ConnectReturnCode::NotAuthorized),
            (None, _) | (Some(_), None) => Ok(()),
            (Some(user), Some(file)) => {
                if file.verify(user, creds.password.unwrap_or_default()) {
                    Ok(())
                } else {
                    Err(ConnectReturnCode::BadUserNameOrPassword)
                }
            }
        }
    }
}

impl Acl for Policy {
    fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        access: Access,
        topic: &str,
    ) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.allowed(client_id, username, access, topic))
    }

    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        self.acl
            .as_ref()
            .is_none_or(|acl| acl.may_subscribe(client_id, username, filter))
    }
}

/// The ACL in force: an `authorize` hook's verdict first, the ACL file for `Verdict::Next`.
#[derive(Clone, Copy)]
pub struct Authz<'a> {
    policy: &'a Policy,
    hooks: Option<&'a dyn Hooks>,
}

impl<'a> Authz<'a> {
    /// `policy`, behind `hooks` if there are any.
    pub fn new(policy: &'a Policy, hooks: Option<&'a dyn Hooks>) -> Self {
        Authz { policy, hooks }
    }

    /// True if deliveries must be checked (an ACL file, or a hook that may deny them).
    pub fn checks_reads(&self) -> bool {
        self.hooks.is_some() || self.policy.checks_reads()
    }

    fn ask(&self, client_id: &str, username: Option<&str>, action: Action, topic: &str) -> Verdict {
        match self.hooks {
            Some(h) => h.authorize(
                ClientRef {
                    client_id,
                    username,
                },
                action,
                topic,
            ),
            None => Verdict::Next,
        }
    }
}

impl Acl for Authz<'_> {
    fn allowed(
        &self,
        client_id: &str,
        username: Option<&str>,
        access: Access,
        topic: &str,
    ) -> bool {
        let action = match access {
            Access::Read => Action::Receive,
            Access::Write => Action::Publish,
        };
        match self.ask(client_id, username, action, topic) {
            Verdict::Allow => true,
            Verdict::Deny => false,
            Verdict::Next => self.policy.allowed(client_id, username, access, topic),
        }
    }

    fn may_subscribe(&self, client_id: &str, username: Option<&str>, filter: &str) -> bool {
        match self.ask(client_id, username, Action::Subscribe, filter) {
            Verdict::Allow => true,
            Verdict::Deny => false,
            Verdict::Next => self.policy.may_subscribe(client_id, username, filter),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Policy {
        Policy {
            allow_anonymous: true,
            ..Policy::default()
        }
    }

    #[test]
    fn sys_is_read_only() {
        assert!(!may_publish(&open(), "c", None, "$SYS/x"));
        assert!(may_publish(&open(), "c", None, "$SYSTEM"));
        assert!(may_publish(&open(), "c", None, "a"));
    }

    fn creds<'a>(username: Option<&'a str>, password: Option<&'a [u8]>) -> Credentials<'a> {
        Credentials {
            client_id: "c",
            username,
            password,
        }
    }

    #[test]
    fn anonymous_rule() {
        let open = Policy {
            allow_anonymous: true,
            ..Policy::default()
        };
        let closed = Policy::default();
        assert_eq!(open.authenticate(&creds(None, None)), Ok(()));
        assert_eq!(
            closed.authenticate(&creds(None, None)),
            Err(ConnectReturnCode::NotAuthorized)
        );
        assert_eq!(
            closed.authenticate(&creds(Some("u"), None)),
            Ok(()),
            "no password file"
        );
        assert!(open.allowed("c", None, Access::Write, "a/b"), "no ACL file");
    }

    #[test]
    fn password_file_rule() {
        let mut file = PasswordFile::default();
        file.set("alice", b"secret").expect("set");
        let p = Policy {
            allow_anonymous: false,
            passwords: Some(file),
            acl: None,
        };
        assert_eq!(
            p.authenticate(&creds(Some("alice"), Some(b"secret"))),
            Ok(())
        );
        let bad = Err(ConnectReturnCode::BadUserNameOrPassword);
        assert_eq!(p.authenticate(&creds(Some("alice"), Some(b"nope"))), bad);
        assert_eq!(p.authenticate(&creds(Some("alice"), None)), bad);
        assert_eq!(
            p.authenticate(&creds(Some("mallory"), Some(b"secret"))),
            bad
        );
        assert_eq!(
            p.authenticate(&creds(None, None)),
            Err(ConnectReturnCode::NotAuthorized)
        );
    }
}
