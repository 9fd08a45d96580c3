//! Events appended as JSON lines to a local file, fsynced before the cursor
//! moves. After a crash the file may end in a torn line (cut off) or hold
//! events whose delivery was not yet acknowledged: on open we cut the torn
//! line and remember the ids in the file's tail, so those events are not
//! written twice.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{DeliverFuture, Retry, Sink, SinkError, SinkSettings, retry};
use crate::outbound::OutboxEvent;

/// `[[sink]] kind = "file"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    /// Appends one JSON event per line (relative to the config file).
    pub path: PathBuf,
    #[serde(default)]
    pub name: Option<String>,
}

impl SinkSettings for FileSettings {
    fn configured_name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    fn default_name(&self) -> String {
        format!("file:{}", self.path.display())
    }
    fn resolve_paths(&mut self, base: &Path) {
        self.path = base.join(&self.path);
    }
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }
    fn local_file(&self) -> Option<&Path> {
        Some(&self.path)
    }
    fn open(
        &self,
        name: String,
        _aws: Option<&super::AwsConfig>,
    ) -> Result<Box<dyn Sink>, SinkError> {
        Ok(Box::new(FileSink::open(name, &self.path)?))
    }
}

/// How much of the file's end is scanned for already-written event ids: far
/// more than the events that can be written but not yet acknowledged.
const TAIL_BYTES: u64 = 4 << 20;

pub struct FileSink {
    name: String,
    path: PathBuf,
    file: File,
    written: HashSet<String>,
}

impl FileSink {
    pub fn open(name: String, path: &Path) -> Result<Self, SinkError> {
        let fail = |message: String| {
            let message = format!("{}: {message}", path.display());
            SinkError::new(&name, Retry::Never, message)
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| fail(format!("cannot create folder: {e}")))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| fail(format!("cannot open: {e}")))?;
        let written =
            recover_tail(&mut file).map_err(|e| fail(format!("cannot read its tail: {e}")))?;
        Ok(FileSink {
            name,
            path: path.to_owned(),
            file,
            written,
        })
    }
}

/// Cuts a torn last line and returns the ids found in the file's tail.
fn recover_tail(file: &mut File) -> std::io::Result<HashSet<String>> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < tail.len() {
        // The last line never got its newline: the write was cut short.
        file.set_len(start + complete as u64)?;
        file.sync_all()?;
    }
    let mut lines = tail[..complete].split(|b| *b == b'\n');
    if start > 0 {
        lines.next(); // Probably a partial line: we started mid-file.
    }
    Ok(lines
        .filter_map(|line| serde_json::from_slice::<serde_json::Value>(line).ok())
        .filter_map(|v| v.get("id").and_then(|id| id.as_str()).map(str::to_owned))
        .collect())
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver<'a>(&'a mut self, events: &'a [OutboxEvent]) -> DeliverFuture<'a> {
        Box::pin(async move {
            let mut buf = Vec::new();
            for event in events.iter().filter(|e| !self.written.contains(&e.id)) {
                buf.extend_from_slice(event.payload.as_bytes());
                buf.push(b'\n');
            }
            if buf.is_empty() {
                return retry::all(events.len(), Ok(()));
            }
            let result = tokio::task::block_in_place(|| {
                self.file.write_all(&buf)?;
                self.file.sync_data()
            });
            let result = result.map_err(|e| {
                let message = format!("{}: {e}", self.path.display());
                SinkError::new(&self.name, Retry::Later, message)
            });
            retry::all(events.len(), result)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> OutboxEvent {
        OutboxEvent {
            seq: 1,
            id: id.into(),
            set_id: "S".into(),
            detail_type: "t".into(),
            payload: format!(r#"{{"id":"{id}"}}"#),
            created_ms: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn recovers_torn_lines_and_skips_ids_already_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c").unwrap();
        let mut sink = FileSink::open("file".into(), &path).unwrap();
        let results = sink.deliver(&[event("b"), event("c"), event("d")]).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n{\"id\":\"d\"}\n"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn torn_only_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"id\":").unwrap();
        let mut sink = FileSink::open("file".into(), &path).unwrap();
        assert!(sink.deliver(&[event("x")]).await[0].is_ok());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"id\":\"x\"}\n");
    }
}
