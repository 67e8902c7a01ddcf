//! The io_uring ring of one thread, with typed completion tokens.

use super::AlignedBuf;
use io_uring::{IoUring, opcode, squeue};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in a ring's registered-buffer table.
const FIXED_BUFFER_SLOTS: u32 = 64;

static NEXT_RING_ID: AtomicU64 = AtomicU64::new(1);

/// Which component of a shard loop a submission belongs to. The owner rides
/// in the top byte of the 64-bit user data so the loop can route completions
/// without a lookup table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Owner {
    Journal = 1,
    /// The shard's client listener.
    Accept = 2,
    /// A connection's receive; id = connection sequence.
    Recv = 3,
    /// A connection's send; id = connection sequence.
    Send = 4,
    /// The shard's eventfd read (cross-shard wake-up).
    Wake = 5,
    /// A replication stream's I/O; id = the stream's generation above a
    /// 4-bit tag (send, receive, or a catch-up read slot).
    Replica = 6,
}

/// A completion token: owner in the top byte, owner-defined id below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    const ID_BITS: u32 = 56;

    pub fn new(owner: Owner, id: u64) -> Token {
        assert!(id < 1 << Self::ID_BITS, "token id {id} too large");
        Token((owner as u64) << Self::ID_BITS | id)
    }

    pub fn owner(self) -> Option<Owner> {
        Some(match self.0 >> Self::ID_BITS {
            1 => Owner::Journal,
            2 => Owner::Accept,
            3 => Owner::Recv,
            4 => Owner::Send,
            5 => Owner::Wake,
            6 => Owner::Replica,
            _ => return None,
        })
    }

    pub fn id(self) -> u64 {
        self.0 & ((1 << Self::ID_BITS) - 1)
    }
}

/// One completed operation: its token and the kernel's result (bytes or
/// `-errno`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub token: Token,
    pub result: i32,
}

/// Why io_uring cannot be used on this machine.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The kernel refused to create a ring.
    #[error("io_uring is unavailable: {source} ({hint}). twinmq needs io_uring for its data path")]
    Unavailable {
        source: io::Error,
        hint: &'static str,
    },
    /// The kernel lacks an operation the journal uses.
    #[error("io_uring on this kernel does not support {0}; twinmq needs Linux 5.6 or newer")]
    MissingOpcode(&'static str),
}

/// State of a ring's registered-buffer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FixedTable {
    /// Not created yet.
    Absent,
    /// The kernel refused it; operations use plain buffers.
    Refused,
    /// A sparse table with this many slots handed out.
    Sparse { used: u32 },
}

/// A thread's io_uring instance.
pub struct Ring {
    uring: IoUring,
    id: u64,
    fixed: FixedTable,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("entries", &self.uring.params().sq_entries())
            .finish()
    }
}

impl Ring {
    /// Creates a ring with room for `entries` submissions.
    pub fn new(entries: u32) -> Result<Ring, RingError> {
        let uring = IoUring::new(entries).map_err(unavailable)?;
        Ok(Ring {
            uring,
            id: NEXT_RING_ID.fetch_add(1, Ordering::Relaxed),
            fixed: FixedTable::Absent,
        })
    }

    /// A process-unique identity, so a component can tell whether buffers
    /// it registered belong to this ring.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Registers `bufs` as fixed buffers, so direct I/O from them skips
    /// pinning their pages on every operation. Returns the table index of
    /// the first (the rest follow in order), or `None` when the kernel or
    /// the memlock limit refuses, or the table is full: then use plain
    /// operations.
    ///
    /// # Safety
    /// Each buffer's memory must stay allocated for as long as operations
    /// name its index. (The kernel holds its own page references, so freeing
    /// it early cannot corrupt the kernel, only the data of such an operation.)
    pub unsafe fn register_buffers(&mut self, bufs: &[&AlignedBuf]) -> Option<u16> {
        if self.fixed == FixedTable::Absent {
            self.fixed = match self
                .uring
                .submitter()
                .register_buffers_sparse(FIXED_BUFFER_SLOTS)
            {
                Ok(()) => FixedTable::Sparse { used: 0 },
                Err(error) => {
                    tracing::info!(%error, "io_uring fixed buffers unavailable; using plain buffers");
                    FixedTable::Refused
                }
            };
        }
        let FixedTable::Sparse { used } = self.fixed else {
            return None;
        };
        let count = u32::try_from(bufs.len()).ok()?;
        if used + count > FIXED_BUFFER_SLOTS {
            return None;
        }
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .map(|buf| libc::iovec {
                iov_base: buf.as_ptr() as *mut libc::c_void,
                iov_len: buf.len(),
            })
            .collect();
        // SAFETY: the iovecs describe live buffers; the caller keeps them
        // allocated while their indices are used.
        match unsafe {
            self.uring
                .submitter()
                .register_buffers_update(used, &iovecs, None)
        } {
            Ok(()) => {
                self.fixed = FixedTable::Sparse { used: used + count };
                Some(used as u16)
            }
            Err(error) => {
                tracing::info!(%error, "io_uring refused to register buffers; using plain buffers");
                None
            }
        }
    }

    /// Queues one submission, flushing the submission queue first when full.
    ///
    /// # Safety
    /// Every buffer and file descriptor the entry refers to must stay valid
    /// and unmoved until its completion has been reaped.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded to the caller's contract.
            if unsafe { self.uring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit()?;
        }
    }

    /// Hands queued submissions to the kernel without waiting.
    pub fn submit(&mut self) -> io::Result<usize> {
        self.submit_and_wait(0)
    }

    /// Hands queued submissions to the kernel and waits for at least `want`
    /// completions. Interrupted waits are retried.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        loop {
            match self.uring.submit_and_wait(want) {
                Err(error) if error.raw_os_error() == Some(libc::EINTR) => continue,
                Err(error) if error.raw_os_error() == Some(libc::EBUSY) && want > 0 => {
                    // The completion queue is full: the caller must reap first.
                    return Ok(0);
                }
                other => return other,
            }
        }
    }

    /// Submits and waits for at least `want` completions or until `timeout`
    /// passes, whichever comes first.
    pub fn submit_and_wait_timeout(
        &mut self,
        want: usize,
        timeout: std::time::Duration,
    ) -> io::Result<()> {
        let ts = io_uring::types::Timespec::from(timeout);
        let args = io_uring::types::SubmitArgs::new().timespec(&ts);
        loop {
            match self.uring.submitter().submit_with_args(want, &args) {
                Ok(_) => return Ok(()),
                Err(error) => match error.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ETIME) | Some(libc::EBUSY) => return Ok(()),
                    _ => return Err(error),
                },
            }
        }
    }

    /// Moves every available completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.uring.completion().map(|cqe| Completion {
            token: Token(cqe.user_data()),
            result: cqe.result(),
        }));
    }
}

fn unavailable(source: io::Error) -> RingError {
    let hint = match source.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel was built without io_uring (Linux 5.6 or newer needed)",
        Some(libc::EPERM) => {
            "blocked by a seccomp profile (for example a container runtime's default) \
             or by the kernel.io_uring_disabled sysctl"
        }
        Some(libc::ENOMEM) => "locked-memory limit too low (raise ulimit -l)",
        _ => "unexpected error creating a ring",
    };
    RingError::Unavailable { source, hint }
}

/// Checks at start-up that io_uring works here and supports what the journal
/// needs, so that a forbidden io_uring fails with a clear message instead of
/// a mysterious error on the first write.
pub fn probe() -> Result<(), RingError> {
    let ring = Ring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.uring
        .submitter()
        .register_probe(&mut probe)
        .map_err(unavailable)?;
    for (code, name) in [
        (opcode::Write::CODE, "IORING_OP_WRITE"),
        (opcode::Fsync::CODE, "IORING_OP_FSYNC"),
        (opcode::Read::CODE, "IORING_OP_READ"),
    ] {
        if !probe.is_supported(code) {
            return Err(RingError::MissingOpcode(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_owner_and_id() {
        let token = Token::new(Owner::Journal, 12345);
        assert_eq!(token.owner(), Some(Owner::Journal));
        assert_eq!(token.id(), 12345);
        assert_eq!(Token(7).owner(), None);
    }

    #[test]
    fn fixed_buffers_get_consecutive_slots_until_the_table_is_full() {
        let mut ring = Ring::new(8).unwrap();
        let a = AlignedBuf::zeroed(4096);
        let b = AlignedBuf::zeroed(8192);
        // SAFETY: a and b outlive every use of their indices (none here).
        unsafe {
            assert_eq!(ring.register_buffers(&[&a, &b]), Some(0));
            assert_eq!(ring.register_buffers(&[&a, &b]), Some(2));
            for _ in 2..FIXED_BUFFER_SLOTS / 2 {
                assert!(ring.register_buffers(&[&a, &b]).is_some());
            }
            assert_eq!(ring.register_buffers(&[&a]), None, "table full");
        }
        assert_ne!(Ring::new(8).unwrap().id(), ring.id());
    }

    #[test]
    fn probe_succeeds_on_this_machine() {
        probe().expect("io_uring must be usable where the tests run");
    }
}
