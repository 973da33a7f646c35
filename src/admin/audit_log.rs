//! Reading the audit log back: the newest records of the JSON-lines file that `[audit] path`
//! names, filtered by the fields operators ask about. Only the file's tail is read (a log
//! is never rotated by the gateway and can grow large); a line that is not JSON (a record
//! cut short by a full disk, something another program wrote) is skipped, not an error.

use std::io::{BufRead, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::{Map, Value};

/// How much of the file's end is read.
pub const TAIL_BYTES: u64 = 8 * 1024 * 1024;
/// The most records returned at once.
pub const MAX_RECORDS: usize = 500;

/// Which records: every field given must match exactly. `user` matches the fields that name
/// a person (`user`, `user_id`) or who acted (`actor`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub user: Option<String>,
    pub client: Option<String>,
    pub flow: Option<String>,
}

impl AuditFilter {
    fn matches(&self, record: &Map<String, Value>) -> bool {
        let is = |key: &str, want: &Option<String>| match want {
            None => true,
            Some(w) => record.get(key).and_then(Value::as_str) == Some(w.as_str()),
        };
        let user_ok = match &self.user {
            None => true,
            Some(u) => ["user", "user_id", "actor"]
                .iter()
                .any(|k| record.get(*k).and_then(Value::as_str) == Some(u.as_str())),
        };
        is("action", &self.action)
            && is("client", &self.client)
            && is("flow", &self.flow)
            && user_ok
    }
}

/// The newest `limit` records (at most [`MAX_RECORDS`]) that match, newest first, from the
/// last [`TAIL_BYTES`] of the file. A file that does not exist yet holds no records.
pub fn read_recent(
    path: &Path,
    filter: &AuditFilter,
    limit: usize,
) -> std::io::Result<Vec<Map<String, Value>>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut reader = std::io::BufReader::new(file.take(len - start));
    if start > 0 {
        // The first line read is probably the end of a longer one.
        let mut partial = Vec::new();
        reader.read_until(b'\n', &mut partial)?;
    }
    let limit = limit.clamp(1, MAX_RECORDS);
    let mut found = std::collections::VecDeque::with_capacity(limit);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        if filter.matches(&record) {
            if found.len() == limit {
                found.pop_front();
            }
            found.push_back(record);
        }
    }
    Ok(found.into_iter().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_filtered_and_tolerant_of_broken_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!(
                "{{\"ts\":\"t{i}\",\"action\":\"token_issued\",\"client\":\"c{}\",\"flow\":\"f{i}\"}}\n",
                i % 2
            ));
        }
        text.push_str(
            "not json\n{\"action\":\"client_blocked\",\"actor\":\"console:ann\"}\n{\"cut",
        );
        std::fs::write(&path, text).unwrap();
        let all = read_recent(&path, &AuditFilter::default(), 100).unwrap();
        assert_eq!(all.len(), 11);
        assert_eq!(all[0]["action"], "client_blocked");
        let c1 = AuditFilter {
            client: Some("c1".into()),
            ..Default::default()
        };
        let got = read_recent(&path, &c1, 2).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["ts"], "t9");
        assert_eq!(got[1]["ts"], "t7");
        let by = AuditFilter {
            user: Some("console:ann".into()),
            ..Default::default()
        };
        assert_eq!(read_recent(&path, &by, 10).unwrap().len(), 1);
        let missing = dir.path().join("none.jsonl");
        assert!(read_recent(&missing, &c1, 10).unwrap().is_empty());
    }
}
