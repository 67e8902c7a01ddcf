//! io_uring glue: the ring wrapper every shard loop owns, completion tokens,
//! block-aligned buffers for direct I/O, and the start-up probe.
//!
//! All `unsafe` of the data path lives here, each block with a `// SAFETY:`
//! note. This module knows nothing about journals or protocols: it moves
//! submission entries in and completions out.

mod aligned;
mod ring;

pub use aligned::AlignedBuf;
pub use ring::{Completion, Owner, Ring, RingError, Token, probe};

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens a file for reading and writing, with `O_DIRECT` when `direct`.
///
/// Returns `Ok(None)` when the filesystem refuses `O_DIRECT` (tmpfs on old
/// kernels, some network filesystems) so the caller can fall back.
pub fn open_rw(path: &Path, direct: bool) -> io::Result<Option<File>> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    match options.open(path) {
        Ok(file) => Ok(Some(file)),
        Err(error) if direct && error.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Flushes a directory so that file creations, renames and removals in it
/// survive a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `buf` at `offset` with `RWF_DSYNC` (durable on return), as one
/// `pwritev2` call. Used to measure the raw floor the journal is held to.
pub fn pwrite_dsync(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: iov points at `buf`, valid for reads for the whole call.
    let written = unsafe {
        libc::pwritev2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_DSYNC,
        )
    };
    match written {
        n if n < 0 => Err(io::Error::last_os_error()),
        n if n as usize != buf.len() => Err(io::Error::other(format!(
            "short write: {n} of {} bytes",
            buf.len()
        ))),
        _ => Ok(()),
    }
}

/// Reserves `len` bytes for `file` with plain `fallocate` (unwritten extents).
pub fn fallocate(file: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an fd we own; no memory is involved.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Overwrites `len` bytes of `file` from `at` with zeros (buffered; the
/// caller flushes).
pub fn write_zeros(file: &File, at: u64, len: u64) -> io::Result<()> {
    use crate::constants::ZERO_FILL_CHUNK_BYTES;
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; ZERO_FILL_CHUNK_BYTES];
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..chunk], at + done)?;
        done += chunk as u64;
    }
    Ok(())
}

/// Drops a file's clean pages from the page cache (`POSIX_FADV_DONTNEED`).
pub fn drop_cache(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fadvise on an fd we own; no memory is involved.
    match unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } {
        0 => Ok(()),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// A non-blocking eventfd: how one shard wakes another's ring.
#[derive(Debug)]
pub struct EventFd {
    fd: std::os::fd::OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: eventfd takes no pointers; on success we own the new fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        Ok(EventFd {
            fd: unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Adds one to the counter, waking a pending read.
    pub fn wake(&self) {
        use std::os::fd::AsRawFd;
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
        // means a wake-up is already pending, which is all we need.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread and every thread it
/// spawns afterwards, so that `wait_termination_signal` can take them.
pub fn block_termination_signals() -> io::Result<()> {
    // SAFETY: the sigset is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Waits for SIGINT or SIGTERM (blocked first with
/// `block_termination_signals`) and returns its number.
pub fn wait_termination_signal() -> io::Result<i32> {
    // SAFETY: the sigset is initialised by sigemptyset before use; sigwait
    // writes the signal number into a live i32.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let mut signal = 0;
        match libc::sigwait(&set, &mut signal) {
            0 => Ok(signal),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }
}
