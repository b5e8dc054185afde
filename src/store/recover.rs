//! Opening the store and reading it back: every persistent session with its subscriptions,
//! queue (in message-id order, so each publisher's order is kept), inflight packet ids and
//! awaited PUBREL ids, and the retained messages. Messages no queue entry refers to any more
//! are dropped; a record that does not decode refuses the start.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use super::records::{self, QueueEntry, SessionRecord};
use super::StoreError;
use crate::message::{Message, Publisher, QoS};

/// The database and its keyspaces.
#[derive(Clone)]
pub(super) struct Spaces {
    pub(super) db: Database,
    pub(super) sessions: Keyspace,
    pub(super) subs: Keyspace,
    pub(super) msgs: Keyspace,
    pub(super) queue: Keyspace,
    pub(super) await_rel: Keyspace,
    pub(super) retained: Keyspace,
    pub(super) meta: Keyspace,
}

/// A persistent session as the store had it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredSession {
    /// Its client id.
    pub client_id: Arc<str>,
    /// Its id in the store.
    pub sid: u64,
    /// The user name that made it.
    pub username: Option<Arc<str>>,
    /// When it was detached (wall-clock ms); 0 if it was attached when the broker stopped.
    pub detached_at_ms: u64,
    /// Its subscriptions.
    pub subscriptions: Vec<(Arc<str>, QoS)>,
    /// Its messages in the order they were stored: (message id, message, where it stands).
    pub queue: Vec<(u64, Arc<Message>, QueueEntry)>,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub awaiting_rel: Vec<u16>,
}

/// Everything the store held.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Persistent sessions, by session id.
    pub sessions: Vec<RecoveredSession>,
    /// Retained messages and their publishers.
    pub retained: Vec<(Message, Option<Publisher>)>,
    /// The next session id to use (above every stored one).
    pub next_sid: u64,
    /// The next message id to use (above every stored one).
    pub next_message_id: u64,
    /// The number of the last batch the store holds (the writer numbers on from it).
    pub(super) batches: u64,
}

impl Recovered {
    /// Queue entries per message, for the writer's reference counts.
    pub(super) fn message_refs(&self) -> super::writer::Refs {
        let mut refs = super::writer::Refs::default();
        for s in &self.sessions {
            for (id, _, _) in &s.queue {
                *refs.entry(*id).or_default() += 1;
            }
        }
        refs
    }
}

fn io(dir: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        path: dir.to_owned(),
        reason: e.to_string(),
    }
}

fn corrupt(dir: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: dir.to_owned(),
        what: e.to_string(),
    }
}

/// Opens the database in `dir` (creating it) and reads everything back.
pub(super) fn open(dir: &Path) -> Result<(Spaces, Recovered), StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, format!("cannot create: {e}")))?;
    let before = journal_contents(dir);
    let db = Database::builder(dir)
        .max_journaling_size(MAX_JOURNALS)
        .open()
        .map_err(|e| open_error(dir, e))?;
    let spaces = spaces(dir, db)?;
    // fjall drops a batch that was cut off mid-write (it cannot be whole) and truncates the
    // journal there; a batch before the last one that fails its checksum fails the open, and
    // the note of the last synced batch catches one cut away for damage of another kind.
    held_batches(dir, &spaces)?;
    for (file, size) in journal_sizes(dir) {
        if let Some(old) = before.get(&file).filter(|&&old| old > size) {
            tracing::warn!(
                journal = %file.display(),
                dropped_bytes = old - size,
                "store: a torn last batch was dropped (cut off mid-write by a crash)"
            );
        }
    }
    let recovered = read(dir, &spaces, Tidy::Yes)?;
    Ok((spaces, recovered))
}

/// Whether reading the store also deletes what nothing refers to any more.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Tidy {
    /// Delete leftovers (the broker, before it serves).
    Yes,
    /// Change nothing (the `tern store` tools).
    No,
}

/// Opens an existing store in `dir` and reads it without changing it.
pub(super) fn open_existing(dir: &Path) -> Result<(Spaces, Recovered), StoreError> {
    if !dir.is_dir() {
        return Err(io(dir, "no store here (the directory does not exist)"));
    }
    let db = Database::builder(dir)
        .open()
        .map_err(|e| open_error(dir, e))?;
    let spaces = spaces(dir, db)?;
    let recovered = read(dir, &spaces, Tidy::No)?;
    Ok((spaces, recovered))
}

/// How much journal fjall keeps before it flushes memtables so older journals can go: the
/// least it allows. Acknowledged messages are deleted soon after they are written, so most of
/// a journal is dead by the time it rotates; a small limit keeps that dead weight on disk
/// small (fjall's default is 512 MiB).
const MAX_JOURNALS: u64 = 64 * 1024 * 1024;

/// The journal files in the store's directory.
fn journals(dir: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
}

/// The size of each journal file.
fn journal_sizes(dir: &Path) -> HashMap<std::path::PathBuf, u64> {
    journals(dir)
        .filter_map(|p| Some((p.clone(), std::fs::metadata(&p).ok()?.len())))
        .collect()
}

/// How far each journal holds written bytes: fjall grows a journal ahead of its writes with
/// zeros, and trims them when it opens the store, which is not a loss.
fn journal_contents(dir: &Path) -> HashMap<std::path::PathBuf, u64> {
    journals(dir)
        .filter_map(|p| Some((p.clone(), written_len(&p).ok()?)))
        .collect()
}

/// The offset just past the last non-zero byte of `file`.
fn written_len(file: &Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    const CHUNK: u64 = 64 * 1024;
    let mut f = std::fs::File::open(file)?;
    let mut end = f.metadata()?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b != 0) {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

fn open_error(dir: &Path, e: fjall::Error) -> StoreError {
    match e {
        fjall::Error::Locked => StoreError::Locked {
            path: dir.to_owned(),
        },
        fjall::Error::Io(e) => io(dir, e),
        other => corrupt(dir, other),
    }
}

fn spaces(dir: &Path, db: Database) -> Result<Spaces, StoreError> {
    let space = |name: &str| {
        db.keyspace(name, KeyspaceCreateOptions::default)
            .map_err(|e| io(dir, e))
    };
    Ok(Spaces {
        sessions: space(records::SESSIONS)?,
        subs: space(records::SUBS)?,
        msgs: space(records::MSGS)?,
        queue: space(records::QUEUE)?,
        await_rel: space(records::AWAIT_REL)?,
        retained: space(records::RETAINED)?,
        meta: space(records::META)?,
        db: db.clone(),
    })
}

/// The number of the last batch the database holds; refused if the note beside it says a
/// later one was synced (see `mark`).
fn held_batches(dir: &Path, s: &Spaces) -> Result<u64, StoreError> {
    let held = match s.meta.get(super::mark::BATCH).map_err(|e| io(dir, e))? {
        Some(v) => <[u8; 8]>::try_from(&v[..])
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt(dir, "batch number"))?,
        None => 0,
    };
    super::mark::check(dir, held)?;
    Ok(held)
}

fn read(dir: &Path, s: &Spaces, tidy: Tidy) -> Result<Recovered, StoreError> {
    let mut by_sid: BTreeMap<u64, RecoveredSession> = BTreeMap::new();
    for kv in s.sessions.iter() {
        let (key, value) = kv.into_inner().map_err(|e| io(dir, e))?;
        let client_id = std::str::from_utf8(&key).map_err(|_| corrupt(dir, "session key"))?;
        let r = SessionRecord::decode(&value).map_err(|e| corrupt(dir, e))?;
        by_sid.insert(
            r.sid,
            RecoveredSession {
                client_id: client_id.into(),
                sid: r.sid,
                username: r.username,
                detached_at_ms: r.detached_at_ms,
                subscriptions: Vec::new(),
                queue: Vec::new(),
                awaiting_rel: Vec::new(),
            },
        );
    }
    let mut batch = s.db.batch();
    for kv in s.subs.iter() {
        let (key, value) = kv.into_inner().map_err(|e| io(dir, e))?;
        let (sid, filter) =
            records::split_session_key(&key, "subscription").map_err(|e| corrupt(dir, e))?;
        let Some(session) = by_sid.get_mut(&sid) else {
            batch.remove(&s.subs, key);
            continue;
        };
        let filter =
            std::str::from_utf8(filter).map_err(|_| corrupt(dir, "subscription filter"))?;
        let qos = value
            .first()
            .and_then(|&q| QoS::from_u8(q))
            .ok_or_else(|| corrupt(dir, "subscription QoS"))?;
        session.subscriptions.push((filter.into(), qos));
    }
    let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
    let mut max_message_id = 0;
    for kv in s.msgs.iter() {
        let (key, value) = kv.into_inner().map_err(|e| io(dir, e))?;
        let id = <[u8; 8]>::try_from(&key[..]).map_err(|_| corrupt(dir, "message key"))?;
        let id = u64::from_be_bytes(id);
        max_message_id = max_message_id.max(id);
        let msg = records::decode_message(&value).map_err(|e| corrupt(dir, e))?;
        messages.insert(id, Arc::new(msg));
    }
    let mut used: HashMap<u64, ()> = HashMap::new();
    for kv in s.queue.iter() {
        let (key, value) = kv.into_inner().map_err(|e| io(dir, e))?;
        let (sid, rest) = records::split_session_key(&key, "queue").map_err(|e| corrupt(dir, e))?;
        let id = <[u8; 8]>::try_from(rest).map_err(|_| corrupt(dir, "queue key"))?;
        let id = u64::from_be_bytes(id);
        let entry = QueueEntry::decode(&value).map_err(|e| corrupt(dir, e))?;
        match (by_sid.get_mut(&sid), messages.get(&id)) {
            (Some(session), Some(msg)) => {
                session.queue.push((id, msg.clone(), entry));
                used.insert(id, ());
            }
            // An entry of an ended session, or of a message already gone: left over.
            _ => batch.remove(&s.queue, key),
        }
    }
    for id in messages.keys() {
        if !used.contains_key(id) {
            batch.remove(&s.msgs, id.to_be_bytes());
        }
    }
    for kv in s.await_rel.iter() {
        let (key, _) = kv.into_inner().map_err(|e| io(dir, e))?;
        let (sid, rest) =
            records::split_session_key(&key, "await_rel").map_err(|e| corrupt(dir, e))?;
        let pkid = <[u8; 2]>::try_from(rest).map_err(|_| corrupt(dir, "await_rel key"))?;
        match by_sid.get_mut(&sid) {
            Some(session) => session.awaiting_rel.push(u16::from_be_bytes(pkid)),
            None => batch.remove(&s.await_rel, key),
        }
    }
    let mut retained = Vec::new();
    for kv in s.retained.iter() {
        let (key, value) = kv.into_inner().map_err(|e| io(dir, e))?;
        retained.push(records::decode_retained(&key, &value).map_err(|e| corrupt(dir, e))?);
    }
    let batches = held_batches(dir, s)?;
    // Leftovers go now, as one batch; a crash before it only means doing it again.
    if tidy == Tidy::Yes {
        batch.commit().map_err(|e| io(dir, e))?;
    }
    let next_sid = by_sid.keys().next_back().map_or(1, |m| m + 1);
    Ok(Recovered {
        sessions: by_sid.into_values().collect(),
        retained,
        next_sid,
        next_message_id: max_message_id + 1,
        batches,
    })
}
