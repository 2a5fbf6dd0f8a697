//! `pids/<id>.pid`: present, holding `"<pid>\n"`, exactly while the process runs.

use std::path::{Path, PathBuf};

/// The `pids/` directory.
#[derive(Debug, Clone)]
pub struct PidFiles {
    dir: PathBuf,
}

impl PidFiles {
    /// The PID files kept in `dir`, which is created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<PidFiles> {
        let dir = dir.into();
        crate::create_dir(&dir)?;
        Ok(PidFiles { dir })
    }

    /// Where process `id`'s PID file lives: `<dir>/<id>.pid`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.pid"))
    }

    /// Writes `"<pid>\n"` for process `id`, atomically, so a reader never sees half a file.
    pub fn write(&self, id: &str, pid: u32) -> std::io::Result<()> {
        crate::write_atomic(&self.path(id), format!("{pid}\n").as_bytes())
    }

    /// Removes the file; a file that is already gone is fine.
    pub fn remove(&self, id: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The recorded PID, if the file exists and holds one.
    pub fn read(&self, id: &str) -> Option<u32> {
        read_pid(&self.path(id))
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_and_directories_are_not_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pids = PidFiles::new(dir.path().join("pids")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir.path().join("pids")), 0o750);
        pids.write("web", 1).unwrap();
        assert_eq!(mode(&pids.path("web")), 0o640);
    }

    #[test]
    fn write_read_remove() {
        let dir = tempfile::tempdir().unwrap();
        let pids = PidFiles::new(dir.path().join("pids")).unwrap();
        pids.write("web", 4242).unwrap();
        assert_eq!(std::fs::read_to_string(pids.path("web")).unwrap(), "4242\n");
        assert_eq!(pids.read("web"), Some(4242));
        pids.remove("web").unwrap();
        pids.remove("web").unwrap();
        assert_eq!(pids.read("web"), None);
    }
}
