//! `--history FILE`: every change the load sends, and what it was told, one
//! JSON object per line, for [`super::check`] to compare with the final
//! state (Jepsen's way: the client's history against the database).
//!
//! The first line is the run (`"kind": "run"`: its products and their stock
//! at start, the prefix of its request ids); then one line per change
//! request (`"kind": "op"`), written when its answer came: its own id (sent
//! as `X-Request-Id`, so the line's history on the server names it), what
//! it targeted, when it started and ended (milliseconds since the run
//! started), the HTTP status (0: no answer) and its outcome. Reads are not
//! recorded: they change nothing.

use super::mix::Op;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Mutex;

/// What a client can conclude from an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// 2xx: the change was committed.
    Ok,
    /// 4xx: refused; nothing was changed.
    Failed,
    /// No answer (timeout, connection broken) or 5xx: it may or may not
    /// have been committed (a commit whose acknowledgement was lost ends as
    /// a 503 too).
    Unknown,
}

impl Outcome {
    pub fn of(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            400..=499 => Outcome::Failed,
            _ => Outcome::Unknown,
        }
    }
}

/// The run: what the history is checked from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub kind: String,
    /// Every request id of the run starts with it.
    pub prefix: String,
    /// Product id → stock at start.
    pub products: BTreeMap<i64, i64>,
}

/// One change request and what came of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kind: String,
    /// The `X-Request-Id` it was sent with.
    pub id: String,
    pub op: String,
    /// What it targeted (0: nothing of that kind).
    pub order: i64,
    pub line: i64,
    pub product: i64,
    pub quantite: i32,
    pub start_ms: u64,
    pub end_ms: u64,
    pub status: u16,
    pub outcome: Outcome,
    /// The id the answer gave (an order or line created).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<i64>,
    /// The line as the answer gave it (product, quantity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<(i64, i32)>,
}

impl Record {
    pub fn op(&self) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == self.op)
    }
}

/// A history read back.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub run: Run,
    pub records: Vec<Record>,
}

/// Appends records to the file as answers come, a line at a time (a
/// crash of the load keeps every record written).
pub struct Writer {
    file: Mutex<std::io::LineWriter<std::fs::File>>,
}

impl Writer {
    pub fn create(path: &Path, run: &Run) -> anyhow::Result<Writer> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        let writer = Writer {
            file: Mutex::new(std::io::LineWriter::new(file)),
        };
        writer.line(&serde_json::to_string(run)?)?;
        Ok(writer)
    }

    pub fn record(&self, record: &Record) -> anyhow::Result<()> {
        self.line(&serde_json::to_string(record)?)
    }

    fn line(&self, text: &str) -> anyhow::Result<()> {
        let mut file = self.file.lock().expect("history file");
        writeln!(file, "{text}")?;
        Ok(())
    }

    pub fn finish(&self) -> anyhow::Result<()> {
        self.file.lock().expect("history file").flush()?;
        Ok(())
    }
}

/// Reads a history file; a line that is not a record says where.
pub fn read(path: &Path) -> anyhow::Result<History> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines();
    let first = lines
        .next()
        .ok_or_else(|| anyhow::anyhow!("{}: empty", path.display()))??;
    let run: Run = serde_json::from_str(&first)
        .map_err(|e| anyhow::anyhow!("{}:1: not a run: {e}", path.display()))?;
    let mut records = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}:{}: not a record: {e}", path.display(), n + 2))?;
        records.push(record);
    }
    Ok(History { run, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_says_committed_refused_or_unknown() {
        assert_eq!(Outcome::of(201), Outcome::Ok);
        assert_eq!(Outcome::of(204), Outcome::Ok);
        assert_eq!(Outcome::of(409), Outcome::Failed);
        assert_eq!(Outcome::of(429), Outcome::Failed);
        for unknown in [0, 500, 502, 503, 504] {
            assert_eq!(Outcome::of(unknown), Outcome::Unknown, "{unknown}");
        }
    }

    #[test]
    fn a_history_reads_back_as_written() {
        let dir = std::env::temp_dir().join(format!("ordersys-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.jsonl");
        let run = Run {
            kind: "run".into(),
            prefix: "h1-".into(),
            products: BTreeMap::from([(1, 10)]),
        };
        let record = Record {
            kind: "op".into(),
            id: "h1-7".into(),
            op: "create_line".into(),
            order: 3,
            line: 0,
            product: 1,
            quantite: 2,
            start_ms: 5,
            end_ms: 9,
            status: 201,
            outcome: Outcome::Ok,
            created: Some(44),
            answer: Some((1, 2)),
        };
        let writer = Writer::create(&path, &run).unwrap();
        writer.record(&record).unwrap();
        writer.finish().unwrap();
        let history = read(&path).unwrap();
        assert_eq!(history.run, run);
        assert_eq!(history.records, std::slice::from_ref(&record));
        assert_eq!(record.op(), Some(Op::CreateLine));
        std::fs::write(
            &path,
            "{\"kind\":\"run\",\"prefix\":\"x\",\"products\":{}}\nnot json\n",
        )
        .unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(
            error.ends_with("h.jsonl:2: not a record: expected ident at line 1 column 2"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
