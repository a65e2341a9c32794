//! Change notification for the config file, through Linux inotify on its directory.
//!
//! The directory is watched rather than the file, because editors and deployment tools
//! replace a file by renaming a new one over it, and Kubernetes swaps a ConfigMap volume's
//! `..data` symbolic link; both leave a watch on the old file's inode silent. Any event in the
//! directory counts, and the caller compares the file's content to decide whether to reload.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use tokio::io::unix::AsyncFd;

/// Events that may change what the config path reads.
const WATCHED_EVENTS: u32 = libc::IN_CLOSE_WRITE
    | libc::IN_MODIFY
    | libc::IN_MOVED_TO
    | libc::IN_MOVED_FROM
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_ATTRIB;

/// An inotify watch on one directory, readable from async code.
pub struct DirectoryWatch {
    fd: AsyncFd<OwnedFd>,
}

impl DirectoryWatch {
    /// Watches the directory that contains `file`.
    pub fn new(file: &Path) -> io::Result<Self> {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir_c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        // SAFETY: inotify_init1 takes only flags and returns a new descriptor or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor this function just opened and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is a live inotify descriptor and `dir_c` a NUL-terminated path.
        let watch =
            unsafe { libc::inotify_add_watch(fd.as_raw_fd(), dir_c.as_ptr(), WATCHED_EVENTS) };
        if watch < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which alone owns it from here on, so
        // the descriptor stays open and the same for the `AsyncFd`'s whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(DirectoryWatch { fd })
    }

    /// Waits until at least one event has arrived, and consumes every queued event.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| drain(fd.get_ref().as_raw_fd())) {
                Ok(Ok(0)) => continue,
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Reads every queued event from the inotify descriptor and returns the bytes read. Returns
/// `WouldBlock` when nothing was queued.
fn drain(fd: RawFd) -> io::Result<usize> {
    // Room for many events; each is 16 bytes plus the file name.
    let mut buffer = [0u8; 8192];
    let mut total = 0;
    loop {
        // SAFETY: the buffer is valid for writes of its whole length.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n > 0 {
            total += n as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        if n < 0 && error.kind() == io::ErrorKind::WouldBlock {
            return if total > 0 { Ok(total) } else { Err(error) };
        }
        if n < 0 && error.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return if n == 0 { Ok(total) } else { Err(error) };
    }
}
