//! Who may connect, publish and subscribe: the `Authenticator` and `Acl` seams.
//!
//! Implementations form an emqttd-style chain later (password and ACL files); for now the
//! broker uses `AnonymousPolicy`, which applies `allow_anonymous` and permits every topic.

use crate::codec::ConnectReturnCode;

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
    /// True if the client may access `topic` (a name, or a filter for `Read`).
    fn allowed(&self, client_id: &str, username: Option<&str>, access: Access, topic: &str)
        -> bool;
}

/// `allow_anonymous` without password or ACL files: everything is allowed to those admitted.
#[derive(Debug, Clone, Copy)]
pub struct AnonymousPolicy {
    /// Accept clients that give no user name.
    pub allow_anonymous: bool,
}

impl Authenticator for AnonymousPolicy {
    fn authenticate(&self, creds: &Credentials<'_>) -> Result<(), ConnectReturnCode> {
        if creds.username.is_none() && !self.allow_anonymous {
            return Err(ConnectReturnCode::NotAuthorized);
        }
        Ok(())
    }
}

impl Acl for AnonymousPolicy {
    fn allowed(&self, _: &str, _: Option<&str>, _: Access, _: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_policy() {
        let creds = Credentials {
            client_id: "c",
            username: None,
            password: None,
        };
        let open = AnonymousPolicy {
            allow_anonymous: true,
        };
        let closed = AnonymousPolicy {
            allow_anonymous: false,
        };
        assert_eq!(open.authenticate(&creds), Ok(()));
        assert_eq!(
            closed.authenticate(&creds),
            Err(ConnectReturnCode::NotAuthorized)
        );
        let named = Credentials {
            username: Some("u"),
            ..creds
        };
        assert_eq!(closed.authenticate(&named), Ok(()));
        assert!(open.allowed("c", None, Access::Write, "a/b"));
    }
}
