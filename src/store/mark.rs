//! The store's own check that the journal kept everything that was synced. fjall refuses to
//! open a journal whose batch fails its checksum, but a journal damaged in its structure (a
//! mangled entry header, say) is cut at the damage, and everything after it is dropped as if
//! it were a torn last write: acknowledged state would be lost without a word.
//!
//! So every batch the writer commits carries its number (`records::META`), and after each
//! sync the writer notes the last number synced in a small file beside the database. On open,
//! a database that holds an older number than the file says was synced has lost batches, and
//! the start stops. The file is written after the sync it reports and is never synced
//! itself: after a power loss it may be older than the truth, never newer, so the check can
//! miss damage but never refuse a store that is whole.

use std::fs::File;
use std::path::Path;

use super::StoreError;

/// The file beside the database.
const FILE: &str = "tern-synced";

/// The key of the last batch's number in `records::META`.
pub(super) const BATCH: &[u8] = b"batch";

/// The note of the last batch synced, kept open by the writer.
pub(super) struct Mark {
    file: Option<File>,
}

impl Mark {
    /// Opens (or creates) the note in `dir`.
    pub(super) fn open(dir: &Path) -> Result<Mark, StoreError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(FILE))
            .map_err(|e| StoreError::Io {
                path: dir.to_owned(),
                reason: format!("cannot open {FILE}: {e}"),
            })?;
        Ok(Mark { file: Some(file) })
    }

    /// A note that notes nothing (for tests of the writer alone).
    #[cfg(test)]
    pub(super) fn none() -> Mark {
        Mark { file: None }
    }

    /// Every batch up to `batch` is synced.
    pub(super) fn synced(&mut self, batch: u64) {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else { return };
        if let Err(e) = file.write_all_at(&encode(batch), 0) {
            // Only the check of the next start is weaker for it; the data is synced.
            tracing::warn!(error = %e, "store: cannot note the last synced batch; the next start checks less");
            self.file = None;
        }
    }
}

fn encode(batch: u64) -> [u8; 16] {
    let mut out = [0; 16];
    out[..8].copy_from_slice(&batch.to_be_bytes());
    out[8..].copy_from_slice(&(!batch).to_be_bytes());
    out
}

/// The last batch the note in `dir` says was synced: 0 if there is none, or it is torn.
fn read(dir: &Path) -> u64 {
    let Ok(bytes) = std::fs::read(dir.join(FILE)) else {
        return 0;
    };
    let half = |r: std::ops::Range<usize>| {
        bytes
            .get(r)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
    };
    match (half(0..8), half(8..16)) {
        (Some(batch), Some(check)) if check == !batch => batch,
        _ => 0,
    }
}

/// Refuses a database holding batches up to `held` when the note in `dir` says more were
/// synced.
pub(super) fn check(dir: &Path, held: u64) -> Result<(), StoreError> {
    let synced = read(dir);
    if held >= synced {
        return Ok(());
    }
    Err(StoreError::Corrupt {
        path: dir.to_owned(),
        what: format!(
            "the journal lost synced batches (it holds up to batch {held}, batch {synced} was \
             synced): it is damaged before its last write"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_is_read_back_and_a_torn_or_missing_one_says_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(read(dir.path()), 0);
        let mut mark = Mark::open(dir.path()).expect("opens");
        mark.synced(7);
        assert_eq!(read(dir.path()), 7);
        assert!(check(dir.path(), 7).is_ok());
        assert!(check(dir.path(), 8).is_ok());
        let refused = check(dir.path(), 6).expect_err("batch 7 is missing");
        assert!(
            refused.to_string().contains("batch 7 was synced"),
            "{refused}"
        );
        std::fs::write(dir.path().join(FILE), &encode(9)[..12]).expect("write");
        assert_eq!(read(dir.path()), 0, "torn");
    }
}
