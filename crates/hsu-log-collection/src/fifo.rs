//! The platform edge: the named pipes a process's output travels through. Everything
//! here is Linux (`mkfifo`, `F_SETPIPE_SZ`); elsewhere each call says `Unsupported` and
//! the collector falls back to handing the child its capture file directly.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;
use tokio::net::unix::pipe::Receiver;

/// The pipe buffer asked for: 1 MiB, the default `/proc/sys/fs/pipe-max-size`. A child
/// whose manager is gone writes this much before a write blocks.
pub(crate) const PIPE_BUFFER: usize = 1024 * 1024;

#[cfg(target_os = "linux")]
mod imp {
    use super::*;
    use nix::fcntl::{fcntl, FcntlArg};
    use nix::sys::stat::Mode;
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileTypeExt;

    /// Makes sure a named pipe exists at `path` (mode 0600), replacing anything else found
    /// there. An existing pipe is kept: a running process may be writing into it.
    pub(crate) fn ensure(path: &Path) -> io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_fifo() => return Ok(()),
            Ok(_) => std::fs::remove_file(path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `path` is a named pipe.
    pub(crate) fn exists(path: &Path) -> bool {
        std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
    }

    /// The manager's end: read-only and non-blocking, registered with the runtime (which
    /// must be running). Opening never waits for a writer, and reading sees end-of-file
    /// once no writer is left.
    pub(crate) fn open_reader(path: &Path) -> io::Result<Receiver> {
        tokio::net::unix::pipe::OpenOptions::new().open_receiver(path)
    }

    /// Reads what the pipe holds now, past the runtime's idea of whether it is ready
    /// (for the synchronous drains); `WouldBlock` when it is empty.
    pub(crate) fn read_now(pipe: &Receiver, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(pipe, buf)?)
    }

    /// The device and inode of an open file, to tell whether it is still the one at a
    /// path.
    pub(crate) fn identity(fd: impl AsFd) -> Option<(u64, u64)> {
        let st = nix::sys::stat::fstat(fd).ok()?;
        Some((st.st_dev as u64, st.st_ino as u64))
    }

    /// The child's end: read *and* write, blocking. Because the child itself holds the
    /// pipe open for reading, a write never fails with EPIPE (nor raises SIGPIPE) while
    /// no manager reads; it only blocks once the pipe buffer is full.
    pub(crate) fn open_child_end(path: &Path) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(path)
    }

    /// Grows the pipe's buffer towards [`PIPE_BUFFER`] (halving the request while the
    /// kernel refuses it: a per-user limit on pipe memory); returns the size it has.
    pub(crate) fn grow(pipe: impl AsFd) -> io::Result<usize> {
        let current = fcntl(pipe.as_fd(), FcntlArg::F_GETPIPE_SZ)? as usize;
        let mut want = PIPE_BUFFER;
        while want > current {
            if let Ok(got) = fcntl(pipe.as_fd(), FcntlArg::F_SETPIPE_SZ(want as i32)) {
                return Ok(got as usize);
            }
            want /= 2;
        }
        Ok(current)
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    fn unsupported() -> io::Error {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "named-pipe capture is implemented for Linux only",
        )
    }

    pub(crate) fn ensure(_: &Path) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn exists(_: &Path) -> bool {
        false
    }

    pub(crate) fn open_reader(_: &Path) -> io::Result<Receiver> {
        Err(unsupported())
    }

    pub(crate) fn read_now(_: &Receiver, _: &mut [u8]) -> io::Result<usize> {
        Err(unsupported())
    }

    pub(crate) fn identity(_: impl AsFd) -> Option<(u64, u64)> {
        None
    }

    pub(crate) fn open_child_end(_: &Path) -> io::Result<File> {
        Err(unsupported())
    }

    pub(crate) fn grow(_: impl AsFd) -> io::Result<usize> {
        Err(unsupported())
    }
}

pub(crate) use imp::{ensure, exists, grow, identity, open_child_end, open_reader, read_now};

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test]
    async fn the_child_end_never_sees_a_broken_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.stdout");
        ensure(&path).unwrap();
        ensure(&path).unwrap();
        assert!(exists(&path));
        // No reader at all but the child's own end: the write succeeds.
        let mut child = open_child_end(&path).unwrap();
        assert!(grow(&child).unwrap() >= 64 * 1024);
        child.write_all(b"kept\n").unwrap();
        // A reader that comes later finds it.
        let reader = open_reader(&path).unwrap();
        let mut buf = [0; 16];
        let n = read_now(&reader, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept\n");
        // Empty while a writer holds it: would block, not end-of-file.
        assert_eq!(
            read_now(&reader, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(child);
        assert_eq!(read_now(&reader, &mut buf).unwrap(), 0);
        let st = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(identity(&reader), Some((st.dev(), st.ino())));
    }

    #[test]
    fn something_else_in_the_way_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.stdout");
        std::fs::write(&path, b"not a pipe").unwrap();
        assert!(!exists(&path));
        ensure(&path).unwrap();
        assert!(exists(&path));
    }
}
