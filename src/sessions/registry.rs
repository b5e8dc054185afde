//! Client id -> session: open, resume, discard and takeover decisions, made atomically.

use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::message::{ClientId, SessionId};
use crate::sessions::handover::Handover;
use crate::sessions::mailbox::Mailbox;
use crate::sessions::Shared;
use crate::sessions::{Admin, ConnLink, Kick, Session, SessionCmd};

/// How long a session has to answer an export before it is ended without moving.
const EXPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A cloneable reference to a running session actor.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// The session's id; a registry entry or route carrying an older one is stale.
    pub id: SessionId,
    /// The session's mailbox, also holding its discard flag and its inbound QoS 2 state (ids
    /// awaiting PUBREL), which so survives reconnects with the session: every connection
    /// attached to it checks that directly instead of asking the actor for each QoS 2 PUBLISH.
    pub mailbox: Arc<Mailbox>,
    /// True for clean_session = 0: the session outlives its connections.
    pub persistent: bool,
    /// Its id in the store (a persistent session with `[persistence]` on): the connection
    /// writes the inbound QoS 2 state under it.
    pub stored: Option<u64>,
}

/// What `Registry::open` found.
#[derive(Debug)]
pub enum Opened {
    /// A new session, already attached to the connection (session present = 0); its CONNACK
    /// waits for the store's LSN beside it (0 = nothing to wait for).
    Fresh(SessionHandle, u64),
    /// A stored persistent session to attach to with the returned link (session present = 1).
    Existing(SessionHandle, ConnLink),
}

/// A registered session and the user name it belongs to.
struct Registered {
    handle: SessionHandle,
    /// The user name of the CONNECT that made the session; only the same user resumes it.
    username: Option<Arc<str>>,
}

/// Every live session by client id.
#[derive(Default)]
pub struct Registry {
    sessions: DashMap<ClientId, Registered>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of sessions, connected or not.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True if there is no session.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// The session of `client_id`, if there is one.
    pub fn get(&self, client_id: &str) -> Option<SessionHandle> {
        self.sessions.get(client_id).map(|r| r.handle.clone())
    }

    /// Every session's client id and handle, sorted by client id (for paging).
    pub fn sorted(&self) -> Vec<(ClientId, SessionHandle)> {
        let mut all: Vec<_> = self
            .sessions
            .iter()
            .map(|e| (e.key().clone(), e.value().handle.clone()))
            .collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Messages queued for sessions and messages in flight, added up over every session.
    pub fn backlogs(&self) -> (usize, usize) {
        self.sessions.iter().fold((0, 0), |(q, i), e| {
            let b = e.value().handle.mailbox.backlog();
            (q + b.pending(), i + b.inflight())
        })
    }

    /// Finds or creates the session for a CONNECT.
    ///
    /// A persistent session is resumed by a clean_session = 0 CONNECT of the same user name
    /// [MQTT-3.1.2-4]: the link is handed back for an `Attach`. In every other case an existing
    /// session is discarded and a new one started already attached to `link` [MQTT-3.1.2-6]:
    /// another user taking the client id gets a fresh session (session present 0), never the
    /// messages that were checked against the previous user's ACL. Runs under the map's entry
    /// lock, so two CONNECTs for one id cannot both create.
    pub fn open(
        &self,
        shared: &Arc<Shared>,
        client_id: &ClientId,
        clean: bool,
        link: ConnLink,
    ) -> Opened {
        let username = link.username.clone();
        let mut lsn = 0;
        let mut spawn = |link| {
            let (handle, stored) = Session::spawn(shared, client_id.clone(), !clean, link);
            lsn = stored;
            Registered {
                handle,
                username: username.clone(),
            }
        };
        let handle = match self.sessions.entry(client_id.clone()) {
            Entry::Occupied(mut e) => {
                let old = e.get();
                if !clean
                    && old.handle.persistent
                    && old.username == username
                    && !old.handle.mailbox.is_closed()
                {
                    return Opened::Existing(old.handle.clone(), link);
                }
                let new = spawn(link);
                let handle = new.handle.clone();
                e.insert(new).handle.mailbox.discard(Kick::Discarded);
                handle
            }
            Entry::Vacant(e) => e.insert(spawn(link)).handle.clone(),
        };
        // Shutdown cancels, then `discard_all` walks the map under its locks: either it saw
        // the entry just inserted, or the cancel came before it and is seen here.
        if shared.shutdown.is_cancelled() {
            handle.mailbox.discard(Kick::Shutdown);
        }
        Opened::Fresh(handle, lsn)
    }

    /// Registers a persistent session read back from the store (at start, before any client).
    pub fn restore(&self, shared: &Arc<Shared>, stored: crate::store::RecoveredSession) {
        let client_id = stored.client_id.clone();
        let username = stored.username.clone();
        let handle = Session::restore(shared, stored);
        self.sessions
            .insert(client_id, Registered { handle, username });
    }

    /// Removes the entry for `client_id` only if it is still session `id`.
    pub fn remove_if(&self, client_id: &str, id: SessionId) {
        self.sessions.remove_if(client_id, |_, r| r.handle.id == id);
    }

    /// Ends `client_id`'s session here, if there is one, because a connection on another node
    /// of the cluster took the id over: its connection closes with its will.
    pub fn take_over(&self, client_id: &str) -> bool {
        match self.sessions.remove(client_id) {
            Some((_, r)) => {
                r.handle.mailbox.discard(Kick::TakenOver);
                true
            }
            None => false,
        }
    }

    /// Hands `client_id`'s session to another node of the cluster: a persistent one (unless
    /// the new CONNECT is `clean`) is exported and ends here; any other is just ended. Either
    /// way its connection closes with its will.
    pub async fn hand_over(&self, client_id: &str, clean: bool) -> Option<Handover> {
        let handle = self.get(client_id)?;
        if clean || !handle.persistent {
            self.take_over(client_id);
            return None;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let asked = SessionCmd::Admin(Box::new(Admin::Export(tx)));
        let exported = match handle.mailbox.try_send(asked) {
            Ok(()) => tokio::time::timeout(EXPORT_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        if exported.is_none() {
            // Busy or ending: it does not move, but it does end here.
            handle.mailbox.discard(Kick::TakenOver);
        }
        self.sessions
            .remove_if(client_id, |_, r| r.handle.id == handle.id);
        exported
    }

    /// Registers a session another node handed over, detached, for the CONNECT that asked
    /// for it to attach to; the LSN its records are durable at (0 without a store).
    pub fn adopt(&self, shared: &Arc<Shared>, h: Handover) -> u64 {
        let client_id = h.client_id.clone();
        let username = h.username.clone();
        let (handle, lsn) = Session::adopt(shared, h);
        if let Some(old) = self
            .sessions
            .insert(client_id, Registered { handle, username })
        {
            old.handle.mailbox.discard(Kick::Discarded);
        }
        lsn
    }

    /// Closes every connection, its will published, keeping no session (a node that lost its
    /// cluster fences itself so).
    pub fn kick_all(&self) {
        for entry in self.sessions.iter() {
            entry.value().handle.mailbox.discard(Kick::Kicked);
        }
        self.sessions.clear();
    }

    /// Discards every session (broker shutdown).
    pub fn discard_all(&self) {
        for entry in self.sessions.iter() {
            entry.value().handle.mailbox.discard(Kick::Shutdown);
        }
        self.sessions.clear();
    }
}
