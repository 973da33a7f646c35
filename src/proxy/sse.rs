//! Server-sent event framing, as relayed from upstreams (WHATWG HTML §9.2.6): lines end with
//! CRLF, LF or CR; an empty line ends an event; `field: value` with one optional space.

/// The first complete event named `name` in `buf`: its byte range and its data lines joined
/// with `\n`. Events before it are passed over; an incomplete one at the end is not read.
pub fn find_event(buf: &[u8], name: &str) -> Option<(usize, usize, String)> {
    let mut start = 0;
    while let Some(end) = event_end(&buf[start..]).map(|e| start + e) {
        let (mut event, mut data) = ("message".to_string(), Vec::<String>::new());
        for line in lines(&buf[start..end]) {
            let line = String::from_utf8_lossy(line);
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            match field {
                "event" => event = value.to_string(),
                "data" => data.push(value.to_string()),
                _ => {}
            }
        }
        if event == name {
            return Some((start, end, data.join("\n")));
        }
        start = end;
    }
    None
}

/// Where the first event of `buf` ends (just past its blank line), if it is complete.
fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut line_empty = true;
    while i < buf.len() {
        let eol = match buf[i] {
            b'\r' if buf.get(i + 1) == Some(&b'\n') => 2,
            // A CR at the very end may be the first half of a CRLF still to come.
            b'\r' if i + 1 == buf.len() => return None,
            b'\r' | b'\n' => 1,
            _ => {
                line_empty = false;
                i += 1;
                continue;
            }
        };
        i += eol;
        if line_empty {
            return Some(i);
        }
        line_empty = true;
    }
    None
}

/// The lines of one event, without their endings.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = rest
            .iter()
            .position(|b| *b == b'\r' || *b == b'\n')
            .unwrap_or(rest.len());
        let line = &rest[..cut];
        let skip = match (rest.get(cut), rest.get(cut + 1)) {
            (Some(b'\r'), Some(b'\n')) => 2,
            (Some(_), _) => 1,
            (None, _) => 0,
        };
        rest = &rest[cut + skip..];
        Some(line)
    })
}

/// Whether a stream whose bytes so far end with `tail` (its last bytes, oldest first) stands
/// between two events, where a keep-alive comment may be inserted.
pub fn at_event_boundary(tail: &[u8]) -> bool {
    tail.ends_with(b"\n\n")
        || tail.ends_with(b"\r\r")
        || tail.ends_with(b"\r\n\r\n")
        || tail.ends_with(b"\n\r\n")
        || tail.ends_with(b"\r\n\n")
}

/// Keeps the last four bytes of a stream, to tell [`at_event_boundary`].
#[derive(Debug, Clone, Copy)]
pub struct Tail {
    bytes: [u8; 4],
}

impl Default for Tail {
    /// Nothing sent yet counts as a boundary.
    fn default() -> Self {
        Self {
            bytes: *b"\n\n\n\n",
        }
    }
}

impl Tail {
    pub fn push(&mut self, data: &[u8]) {
        for b in data.iter().rev().take(4).rev() {
            self.bytes.rotate_left(1);
            self.bytes[3] = *b;
        }
    }
    pub fn at_boundary(&self) -> bool {
        at_event_boundary(&self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_end_with_any_line_ending() {
        for sep in ["\n", "\r\n", "\r"] {
            let s = format!(
                "event: message{sep}data: x{sep}{sep}event: endpoint{sep}data: /messages?session_id=1{sep}{sep}rest"
            );
            let (start, end, data) = find_event(s.as_bytes(), "endpoint").unwrap();
            assert_eq!(data, "/messages?session_id=1");
            assert!(s[start..end].starts_with("event: endpoint"));
            assert_eq!(&s[end..], "rest");
        }
        assert!(find_event(b"event: endpoint\ndata: x\n", "endpoint").is_none());
        assert!(find_event(b"event: endpoint\r\ndata: x\r\n\r", "endpoint").is_none());
        let (_, _, d) = find_event(b"event:endpoint\ndata:a\ndata: b\n\n", "endpoint").unwrap();
        assert_eq!(d, "a\nb");
    }

    #[test]
    fn boundaries() {
        let mut t = Tail::default();
        assert!(t.at_boundary());
        t.push(b"data: x\n");
        assert!(!t.at_boundary());
        t.push(b"\n");
        assert!(t.at_boundary());
        t.push(b"data: y\r\n\r\n");
        assert!(t.at_boundary());
        t.push(b"data: y\r");
        assert!(!t.at_boundary());
        t.push(b"\r");
        assert!(t.at_boundary());
    }
}
