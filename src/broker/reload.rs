//! Reloading on SIGHUP: the configuration file is read again with the files it names
//! (password, ACL, TLS certificates, keys, CAs and CRLs), and if all of them can be used the
//! broker switches to them at once. What cannot change while running (a listener's address,
//! protocol, connection limit, or whether it speaks TLS) keeps its old value and is reported.
//! Anything that fails to load keeps the whole previous configuration.

use std::sync::Arc;

use crate::auth::{AuthError, Policy};
use crate::broker::{Doors, Shared};
use crate::config::{Config, ListenerConfig, LoadError};
use crate::door::listener::Door;
use crate::door::tls::TlsError;
use crate::http::HttpHandle;
use crate::observability::memory;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration file cannot be read or is invalid.
    #[error("{0}")]
    Config(#[from] LoadError),
    /// The password or ACL file cannot be used.
    #[error("{0}")]
    Auth(#[from] AuthError),
    /// A listener's certificate, key, CA or CRL file cannot be used.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// `[http] password_file` cannot be used.
    #[error("http.password_file: {0}")]
    HttpUsers(AuthError),
}

/// What a successful reload did that the caller may act on.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// The new `[log] level`, if it changed (the binary owns the log subscriber).
    pub log_level: Option<String>,
    /// Changed settings that need a restart, as `listener[i].key`; their old values stay.
    pub need_restart: Vec<String>,
}

/// Reloads the configuration while the broker runs.
#[derive(Clone)]
pub struct Reloader {
    shared: Arc<Shared>,
    doors: Doors,
    http: Option<HttpHandle>,
}

impl Reloader {
    /// A reloader for one broker, its listeners' doors and its HTTP server, if any.
    pub fn new(shared: Arc<Shared>, doors: Doors, http: Option<HttpHandle>) -> Self {
        Reloader {
            shared,
            doors,
            http,
        }
    }

    /// Reads the configuration and its files again and puts them in force; on error nothing
    /// changes.
    pub fn reload(&self) -> Result<Reloaded, ReloadError> {
        let shared = &self.shared;
        let old = shared.config.load_full();
        let mut new = old.reread()?;
        let mut need_restart = keep_running_listeners(&old, &mut new);
        if new.persistence != old.persistence {
            // The store is opened once, before the listeners.
            new.persistence = old.persistence.clone();
            need_restart.push("persistence".into());
        }
        if new.mqtt.memory_limit > 0 && !memory::enabled() {
            // The heap was not counted from the start: a limit now would count wrong.
            new.mqtt.memory_limit = 0;
            need_restart.push("mqtt.memory_limit (none was set at start)".into());
        }
        if new.bridge != old.bridge {
            // Each bridge is one task started with the broker.
            new.bridge = old.bridge.clone();
            need_restart.push("bridge".into());
        }
        if new.cluster != old.cluster {
            // The node joined its cluster at start, under its name.
            new.cluster = old.cluster.clone();
            need_restart.push("cluster".into());
        }
        if new.http.bind != old.http.bind {
            new.http = old.http.clone();
            need_restart.push("http.bind".into());
        }
        let users = match &self.http {
            Some(_) => Some(crate::http::load_users(&new.http).map_err(ReloadError::HttpUsers)?),
            None => None,
        };
        let policy = Policy::load(&new.auth)?;
        let doors = new
            .listener
            .iter()
            .map(Door::new)
            .collect::<Result<Vec<_>, _>>()?;
        // Everything loaded: switch.
        for (slot, door) in self.doors.iter().zip(doors) {
            slot.store(Arc::new(door));
        }
        shared.policy.store(Arc::new(policy));
        if let (Some(http), Some(users)) = (&self.http, users) {
            http.users.replace(users);
        }
        shared.router.configure(&new);
        let log_level = (new.log.level != old.log.level).then(|| new.log.level.clone());
        shared.config.store(Arc::new(new));
        shared.reloaded.notify_waiters();
        Ok(Reloaded {
            log_level,
            need_restart,
        })
    }
}

/// Puts back, in `new`, the listener settings that only a restart can change, and names them.
fn keep_running_listeners(old: &Config, new: &mut Config) -> Vec<String> {
    if new.listener.len() != old.listener.len() {
        new.listener = old.listener.clone();
        return vec!["listener (number of listeners)".into()];
    }
    let mut changed = Vec::new();
    for (i, (n, o)) in new.listener.iter_mut().zip(&old.listener).enumerate() {
        let tls = |l: &ListenerConfig| l.certfile.is_some();
        let mut differs = Vec::new();
        if n.bind != o.bind {
            differs.push("bind");
        }
        if n.protocol != o.protocol {
            differs.push("protocol");
        }
        if n.max_connections != o.max_connections {
            differs.push("max_connections");
        }
        if tls(n) != tls(o) {
            differs.push("certfile");
        }
        if !differs.is_empty() {
            changed.extend(differs.iter().map(|k| format!("listener[{i}].{k}")));
            *n = o.clone();
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_addresses_and_protocols_stay_until_a_restart() {
        let old = Config::default();
        let mut new = Config::default();
        new.listener[0].bind.set_port(1999);
        new.listener[0].max_connections = 5;
        let kept = keep_running_listeners(&old, &mut new);
        assert_eq!(kept, ["listener[0].bind", "listener[0].max_connections"]);
        assert_eq!(new.listener, old.listener);
        let mut more = Config::default();
        more.listener.push(ListenerConfig::default());
        assert_eq!(keep_running_listeners(&old, &mut more).len(), 1);
        assert_eq!(more.listener, old.listener);
        let mut same = Config::default();
        assert!(keep_running_listeners(&old, &mut same).is_empty());
    }
}
