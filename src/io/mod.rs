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
