//! Heap accounting for `[mqtt] memory_limit`: `Counting` is a global allocator that counts
//! the bytes it hands out. The `tern` binary installs it; a program embedding the library
//! that wants `memory_limit` installs it too (the broker refuses to start with a limit and no
//! counter, rather than ignore the limit).
//!
//! It counts only once a broker started with a limit turned it on (`enable`): until then an
//! allocation costs one read of a flag, so a broker without a limit pays next to nothing.
//! Counting cannot start later (the frees of what was never counted would be subtracted), so
//! setting a limit where there was none needs a restart.
//!
//! Each thread adds up its own changes and moves them to the shared total once they pass
//! `FLUSH` bytes either way, so an allocation costs a thread-local add, not a contended
//! atomic; the total is off by at most `FLUSH` per thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The system allocator, counting (see the module doc).
pub struct Counting;

static USED: AtomicIsize = AtomicIsize::new(0);
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Bytes a thread's count may drift from the total before it is moved there.
const FLUSH: isize = 64 << 10;

thread_local! {
    static LOCAL: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let flushed = LOCAL.try_with(|local| {
        let v = local.get() + delta;
        if v.abs() >= FLUSH {
            USED.fetch_add(v, Ordering::Relaxed);
            local.set(0);
        } else {
            local.set(v);
        }
    });
    // A thread being torn down has no local count any more: straight to the total.
    if flushed.is_err() {
        USED.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed to `System` unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Heap bytes in use, as counted (0 without `Counting` installed).
pub fn used() -> usize {
    USED.load(Ordering::Relaxed).max(0) as usize
}

/// Heap bytes in use if counted, else the process's resident set size (0 where unknown): what
/// `$SYS/broker/heap/*` and `/metrics` report.
pub fn heap_or_resident() -> usize {
    if enabled() {
        return used();
    }
    resident().unwrap_or(0)
}

/// The resident set size, from `/proc/self/statm`.
fn resident() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).unwrap_or(4096)
}

#[cfg(not(unix))]
fn page_size() -> usize {
    4096
}

/// Turns counting on for the life of the process; false if `Counting` is not the global
/// allocator (found by trying: an allocation larger than `FLUSH` moves the total at once).
pub fn enable() -> bool {
    ENABLED.store(true, Ordering::Relaxed);
    let before = USED.load(Ordering::Relaxed);
    let probe = std::hint::black_box(vec![0u8; 4 * FLUSH as usize]);
    let moved = USED.load(Ordering::Relaxed) != before;
    drop(probe);
    if !moved {
        ENABLED.store(false, Ordering::Relaxed);
    }
    moved
}

/// True if the heap is being counted.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `memory_limit` is set in a program without `Counting` as its allocator.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mqtt.memory_limit needs the heap counted: install tern::memory::Counting as the global allocator (the tern binary does)")]
pub struct NotCounting;

/// Starts counting for a broker with a `memory_limit`; refuses a limit nothing would enforce.
pub fn start(memory_limit: usize) -> Result<(), NotCounting> {
    if memory_limit > 0 && !enabled() && !enable() {
        return Err(NotCounting);
    }
    Ok(())
}
