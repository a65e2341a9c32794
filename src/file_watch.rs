//! Change notification for the config file, through Linux inotify on its directory.
//!
//! The directory is watched rather than the file, because editors and deployment tools
//! replace a file by renaming a new one over it, and Kubernetes swaps a ConfigMap volume's
//! `..data` symbolic link. Both leave the old file's inode untouched, so a watch on it stays
//! silent. Events count when they name the file itself or an entry starting with `..` (the
//! ConfigMap links), so log files written in the same directory do not. The caller compares
//! the file's content to decide whether to reload.

use std::ffi::{CString, OsString};
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
    file_name: OsString,
}

impl DirectoryWatch {
    /// Watches the directory that contains `file`.
    pub fn new(file: &Path) -> io::Result<Self> {
        let dir = file
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file_name = file
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path names no file"))?
            .to_owned();
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
        Ok(DirectoryWatch { fd, file_name })
    }

    /// Waits until an event concerning the file has arrived, consuming every queued event.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let drained = guard.try_io(|fd| drain(fd.get_ref().as_raw_fd(), &self.file_name));
            match drained {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Size of `struct inotify_event` without its name.
const EVENT_HEADER: usize = std::mem::size_of::<libc::inotify_event>();

/// Reads every queued event from the inotify descriptor and returns whether one concerned
/// `file_name`. Returns `WouldBlock` when nothing was queued.
fn drain(fd: RawFd, file_name: &OsString) -> io::Result<bool> {
    // Room for many events; each is 16 bytes plus its NUL-padded name.
    let mut buffer = [0u8; 8192];
    let mut read_any = false;
    let mut relevant = false;
    loop {
        // SAFETY: the buffer is valid for writes of its whole length.
        let n = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if n > 0 {
            read_any = true;
            relevant |= concerns_file(&buffer[..n as usize], file_name);
            continue;
        }
        let error = io::Error::last_os_error();
        if n < 0 && error.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n < 0 && error.kind() == io::ErrorKind::WouldBlock && !read_any {
            return Err(error);
        }
        if n < 0 && error.kind() != io::ErrorKind::WouldBlock {
            return Err(error);
        }
        return Ok(relevant);
    }
}

/// Checks whether any event in `events` (whole events, as one read returns them) names
/// `file_name`, an entry starting with `..`, or the watched directory itself.
fn concerns_file(events: &[u8], file_name: &OsString) -> bool {
    let mut offset = 0;
    while offset + EVENT_HEADER <= events.len() {
        // `len` is the last u32 of the header: wd (i32), mask, cookie, len.
        let len_bytes: [u8; 4] = events[offset + 12..offset + 16]
            .try_into()
            .expect("four bytes");
        let name_len = u32::from_ne_bytes(len_bytes) as usize;
        let name_start = offset + EVENT_HEADER;
        let name_end = (name_start + name_len).min(events.len());
        let name = &events[name_start..name_end];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name.is_empty() || name == file_name.as_bytes() || name.starts_with(b"..") {
            return true;
        }
        offset = name_start + name_len;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes one inotify event the way the kernel does, with the name NUL-padded to 16.
    fn event(name: &str) -> Vec<u8> {
        let padded = if name.is_empty() { 0 } else { 16 };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&1i32.to_ne_bytes());
        bytes.extend_from_slice(&libc::IN_MODIFY.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&(padded as u32).to_ne_bytes());
        let mut name_bytes = name.as_bytes().to_vec();
        name_bytes.resize(padded, 0);
        bytes.extend_from_slice(&name_bytes);
        bytes
    }

    #[test]
    fn events_on_other_files_are_ignored() {
        let file = OsString::from("gateway.yaml");
        let mut events = event("stdout.log");
        events.extend(event(".gateway.yaml.new"));
        assert!(!concerns_file(&events, &file));
        events.extend(event("gateway.yaml"));
        assert!(concerns_file(&events, &file));
    }

    #[test]
    fn configmap_links_count() {
        let file = OsString::from("gateway.yaml");
        assert!(concerns_file(&event("..data"), &file));
        assert!(concerns_file(&event(""), &file));
    }
}
