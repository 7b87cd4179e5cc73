//! Append-only audit log: one JSON object per line for every admin mutation
//! and every denial:
//!
//! ```text
//! {"time":"2026-11-24T07:01:02.123456Z","principal":"alice","action":"CreateStream",
//!  "resource":"stream:orders","result":"ok"}
//! ```
//!
//! `result` is `ok`, `denied: <why>` or `error: <why>`.
//!
//! Durability policy: the file is opened with `O_APPEND` (each line is one
//! `write(2)`, so concurrent writers never interleave partial lines) and every
//! line is followed by `fdatasync` before the admin call answers, so an
//! answered call is on disk. Admin calls are rare (a few per second at most),
//! so the sync per line costs nothing that matters. The log is never
//! truncated or rewritten by the control plane; rotate it externally
//! (move the file; the next write reopens it only on restart).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Longest field written (longer values are cut, marked with `...`).
pub const AUDIT_FIELD_BYTES_MAX: usize = 1024;

#[derive(Debug, Error)]
pub enum AuditOpenError {
    #[error(
        "could not open the audit log {} for appending: {source}; check the directory exists \
         and is writable",
        path.display()
    )]
    Open { path: PathBuf, source: io::Error },
}

#[derive(Debug, Error)]
#[error("could not append to the audit log {}: {source}; check free space", path.display())]
pub struct AuditWriteError {
    pub path: PathBuf,
    pub source: io::Error,
}

/// The outcome of an audited action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditResult {
    Ok,
    Denied(String),
    Error(String),
}

impl AuditResult {
    fn render(&self) -> String {
        match self {
            AuditResult::Ok => "ok".to_string(),
            AuditResult::Denied(why) => format!("denied: {why}"),
            AuditResult::Error(why) => format!("error: {why}"),
        }
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub principal: String,
    pub action: String,
    pub resource: String,
    pub result: String,
}

/// The audit log of one node.
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

fn cut(s: &str) -> String {
    if s.len() <= AUDIT_FIELD_BYTES_MAX {
        return s.to_string();
    }
    let mut end = AUDIT_FIELD_BYTES_MAX - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl AuditLog {
    /// Opens (creating, mode 0600) `path` for appending.
    pub fn open(path: &Path) -> Result<AuditLog, AuditOpenError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| AuditOpenError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and syncs it (see the module docs).
    pub fn record(
        &self,
        principal: &str,
        action: &str,
        resource: &str,
        result: &AuditResult,
    ) -> Result<(), AuditWriteError> {
        let time = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_else(|_| "unknown".to_string());
        let record = AuditRecord {
            time,
            principal: cut(principal),
            action: cut(action),
            resource: cut(resource),
            result: cut(&result.render()),
        };
        let mut line = serde_json::to_vec(&record).expect("strings always serialize");
        line.push(b'\n');
        let err = |source| AuditWriteError {
            path: self.path.clone(),
            source,
        };
        // A poisoned lock only means another writer panicked mid-call; the
        // file itself is still an append-only descriptor.
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line).map_err(err)?;
        file.sync_data().map_err(err)
    }

    /// Reads every record of the log at `path` (for tests and `msctl`).
    pub fn read_all(path: &Path) -> io::Result<Vec<AuditRecord>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_appended_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        {
            let log = AuditLog::open(&path).unwrap();
            log.record("alice", "CreateStream", "stream:a", &AuditResult::Ok)
                .unwrap();
        }
        let log = AuditLog::open(&path).unwrap();
        log.record(
            "bob",
            "DeleteStream",
            "stream:a",
            &AuditResult::Denied("no Delete ACL".into()),
        )
        .unwrap();
        let records = AuditLog::read_all(&path).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].principal, "alice");
        assert_eq!(records[0].result, "ok");
        assert_eq!(records[1].action, "DeleteStream");
        assert_eq!(records[1].result, "denied: no Delete ACL");
        assert!(records[1].time.ends_with('Z'), "{}", records[1].time);
    }

    #[test]
    fn long_and_odd_fields_stay_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let long = "é\n\"".repeat(2000);
        log.record(&long, "x", &long, &AuditResult::Error(long.clone()))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1);
        let records = AuditLog::read_all(&path).unwrap();
        assert!(records[0].principal.len() <= AUDIT_FIELD_BYTES_MAX);
    }
}
