//! The event journal: `events.jsonl`, one JSON event a line, `seq` continuing across
//! manager restarts.

use hsu_common::{Event, EventKind, EventSink};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
#[error("event journal {path}: {source}")]
pub struct JournalError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Appends events to `events.jsonl`. Cheap to share (`Arc<Journal>`); one line per write
/// call so concurrent readers never see a torn line.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Live followers (the API's `events?follow=true`); sent after each line is written.
    live: tokio::sync::broadcast::Sender<Event>,
}

struct Inner {
    file: File,
    next_seq: u64,
}

impl Journal {
    /// Opens (or creates) the journal at `path`, continuing after the last `seq` in it.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let err = |source| JournalError {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(err)?;
        let last = last_seq(&mut file).map_err(err)?;
        // A crash mid-write leaves a torn last line; start the next event on a line of
        // its own so it is not glued to the fragment.
        if !ends_with_newline(&mut file).map_err(err)? {
            file.write_all(b"\n").map_err(err)?;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                next_seq: last.map_or(1, |s| s + 1),
            }),
            live: tokio::sync::broadcast::channel(1024).0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event and returns it as written.
    pub fn append(&self, id: Option<&str>, kind: EventKind) -> Result<Event, JournalError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let event = Event {
            seq: inner.next_seq,
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            id: id.map(str::to_owned),
            kind,
        };
        let mut line = serde_json::to_vec(&event).expect("events always serialize");
        line.push(b'\n');
        inner.file.write_all(&line).map_err(|source| JournalError {
            path: self.path.clone(),
            source,
        })?;
        inner.next_seq += 1;
        // Sent under the lock so followers see events in `seq` order.
        let _ = self.live.send(event.clone());
        Ok(event)
    }

    /// Events appended from now on. A follower that falls more than 1024 events behind
    /// is told how many it missed (`RecvError::Lagged`).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// Every event in the journal file, oldest first; unreadable lines are skipped.
    pub fn read_all(&self) -> Result<Vec<Event>, JournalError> {
        let text = std::fs::read(&self.path).map_err(|source| JournalError {
            path: self.path.clone(),
            source,
        })?;
        Ok(String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl EventSink for Journal {
    fn emit(&self, id: Option<&str>, kind: EventKind) {
        let name = kind.name();
        match self.append(id, kind) {
            Ok(event) => tracing::debug!(seq = event.seq, id, kind = name, "event"),
            Err(e) => tracing::error!("{e}"),
        }
    }
}

fn ends_with_newline(file: &mut File) -> std::io::Result<bool> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Reads the `seq` of the last complete line; a torn last line (crash mid-write) is skipped.
fn last_seq(file: &mut File) -> std::io::Result<Option<u64>> {
    const TAIL: u64 = 64 * 1024;
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
    let mut bytes = Vec::new();
    file.take(TAIL).read_to_end(&mut bytes)?;
    // The tail may start inside a multi-byte character: only whole lines are parsed.
    let tail = String::from_utf8_lossy(&bytes);
    Ok(tail
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("seq").and_then(|s| s.as_u64())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited() -> EventKind {
        EventKind::Exited {
            code: Some(1),
            signal: None,
        }
    }

    #[test]
    fn seq_continues_across_reopen_and_skips_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.append(Some("a"), exited()).unwrap().seq, 1);
        assert_eq!(j.append(None, exited()).unwrap().seq, 2);
        drop(j);
        // A crash mid-write leaves half a line behind.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"seq\":3,\"ts")
            .unwrap();
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.append(Some("a"), exited()).unwrap().seq, 3);
        let text = std::fs::read_to_string(&path).unwrap();
        let first: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.id.as_deref(), Some("a"));
        assert_eq!(first.kind, exited());
        assert!(first.ts.ends_with('Z'));
        assert_eq!(
            j.read_all()
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn followers_get_new_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&dir.path().join("events.jsonl")).unwrap();
        j.append(None, exited()).unwrap();
        let mut rx = j.subscribe();
        j.append(Some("b"), exited()).unwrap();
        j.append(Some("c"), exited()).unwrap();
        assert_eq!(rx.try_recv().unwrap().seq, 2);
        assert_eq!(rx.try_recv().unwrap().seq, 3);
        assert!(rx.try_recv().is_err());
    }
}
