//! What the `tern store` tools print: a summary of a store (`stats`) and a readable listing of
//! every record (`dump`). Both read a stopped broker's store and change nothing in it; a
//! running broker holds the lock, and they say so.

use std::fmt;
use std::io::Write;
use std::path::Path;

use super::recover::{self, Recovered};
use super::StoreError;
use crate::message::Message;

/// A store as read from disk, for the operator tools.
pub struct Contents {
    /// Everything a restart would recover.
    pub recovered: Recovered,
    /// Bytes the store takes on disk, journals included.
    pub disk_bytes: u64,
    /// Bytes of those in journals (not yet flushed to tables).
    pub journal_bytes: u64,
}

/// Reads the store in `dir` without changing it.
pub fn inspect(dir: &Path) -> Result<Contents, StoreError> {
    let (spaces, recovered) = recover::open_existing(dir)?;
    let io = |e: fjall::Error| StoreError::Io {
        path: dir.to_owned(),
        reason: e.to_string(),
    };
    let disk_bytes = spaces.db.disk_space().map_err(io)?;
    let journal_bytes = spaces.db.journal_disk_space().map_err(io)?;
    Ok(Contents {
        recovered,
        disk_bytes,
        journal_bytes,
    })
}

/// The counts `tern store stats` prints.
#[derive(Debug, Default, PartialEq)]
pub struct Stats {
    /// Persistent sessions.
    pub sessions: usize,
    /// Of those, the ones detached when the broker stopped.
    pub detached: usize,
    /// Subscriptions of all sessions.
    pub subscriptions: usize,
    /// Distinct messages stored.
    pub messages: usize,
    /// Queue entries (a message owed to two sessions counts twice).
    pub queued: usize,
    /// Of those, sent and not yet acknowledged.
    pub inflight: usize,
    /// Inbound QoS 2 packet ids awaiting PUBREL.
    pub awaiting_rel: usize,
    /// Retained messages.
    pub retained: usize,
    /// Payload bytes of stored and retained messages.
    pub payload_bytes: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Bytes on disk in journals.
    pub journal_bytes: u64,
}

impl Contents {
    /// Counts what the store holds.
    pub fn stats(&self) -> Stats {
        let r = &self.recovered;
        let mut messages = std::collections::HashMap::new();
        let mut s = Stats {
            sessions: r.sessions.len(),
            retained: r.retained.len(),
            disk_bytes: self.disk_bytes,
            journal_bytes: self.journal_bytes,
            ..Stats::default()
        };
        for session in &r.sessions {
            s.detached += usize::from(session.detached_at_ms != 0);
            s.subscriptions += session.subscriptions.len();
            s.awaiting_rel += session.awaiting_rel.len();
            s.queued += session.queue.len();
            s.inflight += session.queue.iter().filter(|(_, _, e)| e.pkid != 0).count();
            for (id, msg, _) in &session.queue {
                messages.insert(*id, msg.payload.len() as u64);
            }
        }
        s.messages = messages.len();
        s.payload_bytes = messages.values().sum::<u64>()
            + r.retained
                .iter()
                .map(|(m, _)| m.payload.len() as u64)
                .sum::<u64>();
        s
    }

    /// Writes every record, a line each, sessions first, then retained messages.
    pub fn dump(&self, out: &mut impl Write, now_ms: u64) -> std::io::Result<()> {
        for s in &self.recovered.sessions {
            write!(out, "session {:?} sid {}", s.client_id, s.sid)?;
            if let Some(user) = &s.username {
                write!(out, " user {user:?}")?;
            }
            match s.detached_at_ms {
                0 => writeln!(out, " attached at shutdown")?,
                at => writeln!(out, " detached {} s ago", now_ms.saturating_sub(at) / 1000)?,
            }
            for (filter, qos) in &s.subscriptions {
                writeln!(out, "  subscription {filter:?} qos {}", *qos as u8)?;
            }
            for (id, msg, entry) in &s.queue {
                let state = match (entry.pkid, entry.released) {
                    (0, _) => "queued".to_string(),
                    (pkid, false) => format!("inflight pkid {pkid}"),
                    (pkid, true) => format!("PUBREC received pkid {pkid}"),
                };
                writeln!(
                    out,
                    "  message {id} {state} qos {} {}",
                    entry.qos as u8,
                    Shown(msg)
                )?;
            }
            for pkid in &s.awaiting_rel {
                writeln!(out, "  awaiting PUBREL pkid {pkid}")?;
            }
        }
        for (msg, from) in &self.recovered.retained {
            write!(out, "retained qos {} {}", msg.qos as u8, Shown(msg))?;
            match from {
                Some(p) => writeln!(out, " from {:?}", &*p.client_id)?,
                None => writeln!(out)?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "sessions:      {} ({} detached)",
            self.sessions, self.detached
        )?;
        writeln!(f, "subscriptions: {}", self.subscriptions)?;
        writeln!(
            f,
            "queued:        {} entries of {} messages ({} inflight)",
            self.queued, self.messages, self.inflight
        )?;
        writeln!(f, "awaiting rel:  {}", self.awaiting_rel)?;
        writeln!(f, "retained:      {}", self.retained)?;
        writeln!(f, "payload bytes: {}", self.payload_bytes)?;
        writeln!(
            f,
            "disk bytes:    {} ({} in journals)",
            self.disk_bytes, self.journal_bytes
        )
    }
}

/// A message as one readable, escaped fragment: topic, flags, size and the payload's start.
struct Shown<'a>(&'a Message);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Topics and payloads come from peers: escaped, so nothing reaches the terminal raw.
        const SHOWN: usize = 48;
        let m = self.0;
        let retain = if m.retain { " retain" } else { "" };
        let cut = &m.payload[..m.payload.len().min(SHOWN)];
        let more = if m.payload.len() > SHOWN { "..." } else { "" };
        write!(
            f,
            "topic {:?}{retain} published qos {} {} bytes \"{}{more}\"",
            m.topic_str(),
            m.qos as u8,
            m.payload.len(),
            cut.escape_ascii()
        )
    }
}
