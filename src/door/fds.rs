//! Grows the process's file descriptor table once, at startup.
//!
//! Linux doubles a process's descriptor table when a new descriptor does not fit, and in a
//! multi-threaded process every doubling waits for an RCU grace period (about 10 ms here) while
//! the accept or socket call that needed the slot stalls. A burst of 15,000 connections crossed
//! six doublings: 60-100 ms in which no client was accepted. Grown before the runtime starts its
//! threads, the table never needs that wait up to the reserved size.

use std::io;

/// Most slots reserved up front: the table costs 8 bytes of kernel memory per slot (512 KiB
/// at this size, none of it in the broker's RSS); beyond it the kernel doubles as before.
pub const MAX_RESERVED: usize = 65_536;

/// Makes room for `count` descriptors without keeping any open, capped by `MAX_RESERVED` and the
/// soft `RLIMIT_NOFILE`. Call it while the process has one thread. Returns the slots reserved.
#[cfg(unix)]
pub fn reserve(count: usize) -> io::Result<usize> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    let target = count.min(MAX_RESERVED).min(soft_limit()?);
    if target == 0 {
        return Ok(0);
    }
    let any = std::fs::File::open("/dev/null")?;
    let highest = libc::c_int::try_from(target - 1).map_err(io::Error::other)?;
    // SAFETY: duplicates a descriptor we own into the lowest free slot at or above `highest`
    // (below the soft limit, so the kernel accepts it); the result is checked before use.
    let dup = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` is a new descriptor that nothing else holds; dropping it closes it. The
    // table keeps its size after the close.
    drop(unsafe { OwnedFd::from_raw_fd(dup) });
    Ok(target)
}

/// Without Unix descriptor tables there is nothing to reserve.
#[cfg(not(unix))]
pub fn reserve(_count: usize) -> io::Result<usize> {
    Ok(0)
}

/// The soft limit on open descriptors.
#[cfg(unix)]
fn soft_limit() -> io::Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The table's size, from /proc/self/status.
    fn fd_size() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("FDSize:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("FDSize line")
    }

    #[test]
    fn the_table_grows_to_the_reserved_size_and_keeps_no_descriptor() {
        let want = (fd_size() * 4).min(soft_limit().expect("rlimit"));
        let got = reserve(want).expect("reserve");
        assert_eq!(got, want);
        assert!(fd_size() >= want, "FDSize {} < {want}", fd_size());
        let top = format!("/proc/self/fd/{}", want - 1);
        assert!(
            std::fs::symlink_metadata(top).is_err(),
            "the descriptor that grew the table is closed"
        );
    }

    #[test]
    fn the_soft_limit_caps_the_reservation() {
        let limit = soft_limit().expect("rlimit");
        let got = reserve(usize::MAX).expect("reserve");
        assert_eq!(got, limit.min(MAX_RESERVED));
    }
}
