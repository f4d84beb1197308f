//! The one place that calls into libc directly (DESIGN.md rule 9).
#![allow(unsafe_code)]

/// The effective user id of this process.
#[cfg(unix)]
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory and cannot fail (POSIX).
    unsafe { libc::geteuid() }
}

/// How many more file descriptors this process may open: its soft limit less those open now
/// (counted in `/proc/self/fd`). `None` where either cannot be read.
#[cfg(unix)]
pub(crate) fn spare_file_descriptors() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through the valid pointer it is given and reads
    // nothing else (POSIX).
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let soft = usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX);
    Some(soft.saturating_sub(open))
}

#[cfg(not(unix))]
pub(crate) fn spare_file_descriptors() -> Option<usize> {
    None
}
