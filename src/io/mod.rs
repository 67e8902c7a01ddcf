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

/// Overwrites `len` bytes of `file` from `at` with zeros, flushing after
/// each chunk. The zeros come from a block-aligned buffer, so `file` may be
/// opened `O_DIRECT` (then `at` and `len` must be whole blocks).
///
/// The flushes are for the journals beside it: on a disk with a write-back
/// cache every journal flush also flushes whatever else was written since,
/// so unflushed zeros (a spare segment being filled runs at the disk's full
/// speed) made the journals' flushes up to milliseconds slower. Flushed a
/// chunk at a time, a journal flush carries at most one chunk of them.
pub fn write_zeros(file: &File, at: u64, len: u64) -> io::Result<()> {
    use crate::constants::ZERO_FILL_CHUNK_BYTES;
    use std::os::unix::fs::FileExt;
    let zeros = AlignedBuf::zeroed(ZERO_FILL_CHUNK_BYTES);
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(ZERO_FILL_CHUNK_BYTES as u64) as usize;
        file.write_all_at(&zeros[..chunk], at + done)?;
        file.sync_data()?;
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

/// Tries to take an exclusive (write) OFD lock on the whole of `file`
/// without waiting: `Ok(true)` when this open file description now holds
/// it, `Ok(false)` when another one does (`EAGAIN` / `EACCES`).
///
/// OFD ("open file description") locks belong to the `open()` that made the
/// descriptor, not to the process: two opens of one file conflict even
/// inside one process, the lock is not shared with a `fork` child (std opens
/// with `O_CLOEXEC` and we never `dup`), and unlike classic POSIX locks it is
/// not dropped when some other descriptor of the same file is closed. It goes
/// away on [`ofd_unlock`] or when the description's last descriptor closes
/// (a killed process included). Linux forwards them to the server on NFSv4.
/// Taking it again while holding it succeeds and changes nothing.
pub fn ofd_try_lock(file: &File) -> io::Result<bool> {
    match ofd_setlk(file, libc::F_WRLCK) {
        Ok(()) => Ok(true),
        Err(error) if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// Releases the OFD lock [`ofd_try_lock`] took on `file`; a no-op when this
/// description holds none.
pub fn ofd_unlock(file: &File) -> io::Result<()> {
    ofd_setlk(file, libc::F_UNLCK)
}

/// `fcntl(F_OFD_SETLK)` of `kind` over the whole file, retried on `EINTR`.
fn ofd_setlk(file: &File, kind: libc::c_int) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `flock` is a plain C struct of integers; all zeros is a valid
    // value, and the fields that matter are set below.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // Start 0 and length 0 cover the whole file however far it grows.
    lock.l_start = 0;
    lock.l_len = 0;
    // OFD requests must carry l_pid 0, or the kernel answers EINVAL.
    lock.l_pid = 0;
    loop {
        // SAFETY: fcntl on a descriptor `file` owns; F_OFD_SETLK only reads
        // the `flock`, which lives for the whole call.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Waits up to `timeout` for `fd` to become readable (for a listener: a
/// connection is waiting to be accepted). `Ok(false)` when the time ran out
/// or a signal interrupted the wait; callers loop and re-check their own
/// state either way. A timeout is rounded up to whole milliseconds so a
/// short one never turns into a busy loop.
pub fn wait_readable(
    fd: std::os::fd::BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let timeout_ms = timeout
        .as_nanos()
        .div_ceil(1_000_000)
        .min(libc::c_int::MAX as u128) as libc::c_int;
    let mut entry = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes one live pollfd for the whole call; the
    // descriptor is borrowed, so it stays open meanwhile.
    match unsafe { libc::poll(&mut entry, 1, timeout_ms) } {
        n if n < 0 => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
        0 => Ok(false),
        // POLLERR / POLLHUP count as ready too: the next accept or read
        // reports what happened.
        _ => Ok(true),
    }
}

/// Reads what a socket already holds into `buf`, without waiting:
/// `Ok(None)` when it holds nothing (`Ok(Some(0))` is end of stream). One
/// system call where a zero-timeout wait and a read would take two.
pub fn read_ready(fd: std::os::fd::BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which is
        // borrowed mutably for the call; the descriptor is borrowed, so it
        // stays open meanwhile.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(error),
        }
    }
}

/// Fills `buf` from the kernel's CSPRNG (`getrandom(2)`), waiting at boot
/// until it is seeded. For secrets and handshake nonces only: these must be
/// unpredictable, so they never come from the seeded RNG that simulations
/// inject.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`,
        // which is live and exclusively borrowed for the whole call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // Large requests may be cut short by a signal; take what came.
        filled += n as usize;
    }
    Ok(())
}
