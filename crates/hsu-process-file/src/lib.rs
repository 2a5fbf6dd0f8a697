//! Files under the manager's base directory: the event journal, PID files, the durable
//! state file and the manager lock.
//!
//! Everything here is plain file I/O with no knowledge of processes beyond their ids and
//! PIDs. Writes that others read while we run (PID files) are atomic (write, then rename),
//! so a reader never sees half a file. Nothing here may panic on what it reads back: files
//! under the base directory can be edited, truncated or left behind by a crash.

mod journal;
mod lock;
mod pid_file;
mod state_file;
mod writer;

pub use journal::{Follow, Journal, JournalError, JournalOptions};
pub use lock::{LockError, ManagerLock};
pub use pid_file::PidFiles;
pub use state_file::{
    recorded_journal_seq, BudgetRecord, Definition, Desired, ProcessRecord, RestartRecord,
    RunRecord, SeqSource, StateFile,
};
pub use writer::FileWriter;

/// Mode of the files the manager creates under its base directory: the operator's group
/// may read them, nobody else (the process umask may narrow it further).
pub const FILE_MODE: u32 = 0o640;
/// Mode of the directories the manager creates under its base directory.
pub const DIR_MODE: u32 = 0o750;

/// Creates `dir` and its missing parents with [`DIR_MODE`].
pub fn create_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Writes `contents` to `path` through a temporary file, a sync and a rename, then syncs
/// the directory so the rename itself survives a power loss.
pub(crate) fn write_atomic(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&tmp)?
    };
    f.write_all(contents)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Some filesystems refuse to sync a directory; the file itself is already safe.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}
