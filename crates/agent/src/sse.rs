//! Server-sent events, incrementally: feed bytes as they arrive (split anywhere, even inside a
//! UTF-8 character or a CRLF), get whole events out. Follows the WHATWG event-stream rules that
//! matter for model APIs: `event:` and `data:` fields, multi-line data joined by `\n`, comments
//! (`:`), `\r\n`, `\r` or `\n` line ends, an optional single space after the colon, and an event
//! dispatched on a blank line.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when absent.
    pub event: String,
    pub data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("event stream line is not valid UTF-8")]
    InvalidUtf8,
    #[error("event stream line exceeds {0} bytes")]
    LineTooLong(usize),
}

/// The incremental parser.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// A `\r` ended the previous chunk; a `\n` starting the next one belongs to it.
    pending_cr: bool,
    event: Option<String>,
    data: Option<String>,
    max_line: usize,
}

impl SseParser {
    pub fn new() -> Self {
        Self {
            max_line: 16 * 1024 * 1024,
            ..Self::default()
        }
    }

    /// Feeds a chunk and returns every event it completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        if self.pending_cr && chunk.first() == Some(&b'\n') {
            start = 1;
            i = 1;
        }
        self.pending_cr = false;
        while i < chunk.len() {
            let b = chunk[i];
            if b == b'\n' || b == b'\r' {
                self.buf.extend_from_slice(&chunk[start..i]);
                // Reuse the line buffer's allocation for the next line.
                let mut line = std::mem::take(&mut self.buf);
                let result = self.line(&line, &mut out);
                line.clear();
                self.buf = line;
                result?;
                if b == b'\r' {
                    if i + 1 < chunk.len() {
                        if chunk[i + 1] == b'\n' {
                            i += 1;
                        }
                    } else {
                        self.pending_cr = true;
                    }
                }
                start = i + 1;
            }
            i += 1;
        }
        self.buf.extend_from_slice(&chunk[start.min(chunk.len())..]);
        if self.buf.len() > self.max_line {
            return Err(SseError::LineTooLong(self.max_line));
        }
        Ok(out)
    }

    /// True when a partial event or line is buffered: the stream ended mid-event.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.data.is_some() || self.event.is_some()
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            if let Some(data) = self.data.take() {
                out.push(SseEvent {
                    event: self.event.take().unwrap_or_else(|| "message".into()),
                    data,
                });
            } else {
                self.event = None;
            }
            return Ok(());
        }
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            // id and retry do not matter for a single request's stream.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const STREAM: &str = "event: message_start\r\ndata: {\"a\":1}\r\n\r\n: a comment\n\nevent: ping\ndata: {}\n\ndata: line one\ndata:line two\n\nevent: content_block_delta\rdata: {\"t\":\"héllo 🎉\"}\r\r";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: "message_start".into(),
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: "ping".into(),
                data: "{}".into(),
            },
            SseEvent {
                event: "message".into(),
                data: "line one\nline two".into(),
            },
            SseEvent {
                event: "content_block_delta".into(),
                data: "{\"t\":\"héllo 🎉\"}".into(),
            },
        ]
    }

    #[test]
    fn whole_stream() {
        let mut p = SseParser::new();
        assert_eq!(p.feed(STREAM.as_bytes()).unwrap(), expected());
        assert!(!p.has_partial());
    }

    /// Every split point, including inside CRLF pairs and multi-byte characters.
    #[test]
    fn every_split_point_gives_the_same_events() {
        let bytes = STREAM.as_bytes();
        for cut in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut events = p.feed(&bytes[..cut]).unwrap();
            events.extend(p.feed(&bytes[cut..]).unwrap());
            assert_eq!(events, expected(), "split at {cut}");
        }
        // And byte by byte.
        let mut p = SseParser::new();
        let mut events = Vec::new();
        for b in bytes {
            events.extend(p.feed(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(events, expected());
    }

    #[test]
    fn truncated_and_invalid() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: x\ndata: par").unwrap().is_empty());
        assert!(p.has_partial());
        let mut p = SseParser::new();
        assert_eq!(p.feed(b"data: \xff\xfe\n\n"), Err(SseError::InvalidUtf8));
    }
}
