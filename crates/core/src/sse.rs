//! Server-sent events: an incremental parser, an event-boundary scanner and a writer.
//!
//! The parser follows the WHATWG event-stream rules: lines end with LF, CRLF or CR;
//! `data:` lines of one event are joined with `\n`; `:` starts a comment (`: ping`);
//! a blank line dispatches; an event without data is dropped; a leading BOM is skipped;
//! an incomplete event at end of stream is discarded. It produces the same events
//! whatever the chunk boundaries, including a CRLF or a multi-byte UTF-8 character
//! split across reads, because a line is only decoded once it is complete.
//!
//! [`SseBoundary`] answers a cheaper question for relays: where does the last complete
//! event in the bytes seen so far end? A relay that forwards only up to that point
//! never leaves a client with half an event when it must append an error event.

use bytes::{BufMut, Bytes, BytesMut};
use memchr::memchr2;

/// The terminating event of an OpenAI stream.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The `id:` field, if this event carried one.
    pub id: Option<String>,
    /// The `retry:` field in milliseconds, if this event carried one.
    pub retry: Option<u64>,
}

/// Incremental event-stream parser. Feed it bytes as they arrive.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current, not yet terminated, line.
    line: Vec<u8>,
    /// The previous chunk ended with CR: a leading LF in the next one belongs to it.
    skip_lf: bool,
    /// Whether the first line (which may start with a BOM) has been seen.
    started: bool,
    data: String,
    has_data: bool,
    event: String,
    id: Option<String>,
    retry: Option<u64>,
    /// Any field seen since the last dispatch.
    pending: bool,
}

/// Finds where complete events end in a byte stream, across chunk boundaries.
#[derive(Clone, Debug, Default)]
pub struct SseBoundary {
    /// Bytes in the current line so far.
    line_len: usize,
    /// The last terminator was a CR: an LF right after it is part of the same terminator.
    after_cr: bool,
    /// That CR ended a blank line, so its LF belongs to the event boundary too.
    blank_cr: bool,
}

impl SseEvent {
    /// An event with only data.
    pub fn data(data: impl Into<String>) -> Self {
        SseEvent { data: data.into(), ..SseEvent::default() }
    }

    /// Whether this is OpenAI's end-of-stream marker, `data: [DONE]`.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }

    /// Append this event's wire form to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        if let Some(id) = &self.id {
            put_field(out, b"id", id);
        }
        if let Some(retry) = self.retry {
            put_field(out, b"retry", &retry.to_string());
        }
        encode_event(out, self.event.as_deref(), &self.data);
    }
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feed the next chunk; returns the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.feed_into(chunk, &mut events);
        events
    }

    /// Feed the next chunk, appending completed events to `events`.
    pub fn feed_into(&mut self, mut chunk: &[u8], events: &mut Vec<SseEvent>) {
        if self.skip_lf && !chunk.is_empty() {
            self.skip_lf = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        let mut start = 0;
        while let Some(offset) = memchr2(b'\n', b'\r', &chunk[start..]) {
            let end = start + offset;
            let terminator = chunk[end];
            if self.line.is_empty() {
                self.process_line(&chunk[start..end], events);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&chunk[start..end]);
                self.process_line(&line, events);
                line.clear();
                self.line = line;
            }
            start = end + 1;
            if terminator == b'\r' {
                match chunk.get(start) {
                    Some(b'\n') => start += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
        }
        self.line.extend_from_slice(&chunk[start..]);
    }

    /// The stream ended. Returns `true` if an incomplete event was discarded,
    /// which means the stream was cut mid-event.
    pub fn finish(&mut self) -> bool {
        let truncated = self.pending || !self.line.is_empty();
        *self = SseParser::default();
        truncated
    }

    fn process_line(&mut self, mut line: &[u8], events: &mut Vec<SseEvent>) {
        if !self.started {
            self.started = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(events);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        self.pending = true;
        match field {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
                self.has_data = true;
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, events: &mut Vec<SseEvent>) {
        self.pending = false;
        let event = std::mem::take(&mut self.event);
        let id = self.id.take();
        let retry = self.retry.take();
        if !self.has_data {
            return;
        }
        self.has_data = false;
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        events.push(SseEvent { event: (!event.is_empty()).then_some(event), data, id, retry });
    }
}

impl SseBoundary {
    /// A scanner at the start of a stream.
    pub fn new() -> Self {
        SseBoundary::default()
    }

    /// Scan the next chunk. Returns how many leading bytes of `chunk` end at an event
    /// boundary (0 if no event completes in it); everything seen before those bytes is
    /// complete too.
    pub fn scan(&mut self, chunk: &[u8]) -> usize {
        let mut boundary = 0;
        let mut start = 0;
        while let Some(offset) = memchr2(b'\n', b'\r', &chunk[start..]) {
            let at = start + offset;
            if offset > 0 {
                self.line_len += offset;
                self.after_cr = false;
                self.blank_cr = false;
            }
            let byte = chunk[at];
            if byte == b'\n' && self.after_cr {
                // The LF of a CRLF pair: the line already ended at the CR.
                self.after_cr = false;
                if self.blank_cr {
                    self.blank_cr = false;
                    boundary = at + 1;
                }
            } else {
                let blank = self.line_len == 0;
                if blank {
                    boundary = at + 1;
                }
                self.line_len = 0;
                self.after_cr = byte == b'\r';
                self.blank_cr = blank && self.after_cr;
            }
            start = at + 1;
        }
        if start < chunk.len() {
            self.line_len += chunk.len() - start;
            self.after_cr = false;
            self.blank_cr = false;
        }
        boundary
    }

    /// Whether the bytes scanned so far end exactly at an event boundary.
    pub fn at_boundary(&self) -> bool {
        self.line_len == 0 && (self.blank_cr || !self.after_cr)
    }
}

/// Append one event with optional `event:` type and `data` (split into one `data:`
/// line per line of `data`) to `out`.
pub fn encode_event(out: &mut BytesMut, event: Option<&str>, data: &str) {
    if let Some(event) = event {
        put_field(out, b"event", event);
    }
    let mut lines = data.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        put_field(out, b"data", line);
        if lines.peek().is_none() {
            break;
        }
    }
    out.put_u8(b'\n');
}

/// One `data:` event as bytes: the common case for OpenAI chunks.
pub fn data_event(data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
    out.freeze()
}

fn put_field(out: &mut BytesMut, name: &[u8], value: &str) {
    out.reserve(name.len() + value.len() + 3);
    out.put_slice(name);
    out.put_slice(b": ");
    // A field value cannot hold a line break; replace rather than corrupt the stream.
    for (i, part) in value.split(['\n', '\r']).enumerate() {
        if i > 0 {
            out.put_u8(b' ');
        }
        out.put_slice(part.as_bytes());
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed_into(chunk, &mut events);
        }
        let truncated = parser.finish();
        (events, truncated)
    }

    fn split_at_points(bytes: &[u8], points: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = points.iter().map(|p| p % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut last = 0;
        for cut in cuts {
            chunks.push(bytes[last..cut].to_vec());
            last = cut;
        }
        chunks.push(bytes[last..].to_vec());
        chunks
    }

    #[test]
    fn parses_openai_stream_with_comments_and_done() {
        let stream = b": ping\n\ndata: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n";
        let (events, truncated) = parse_all(&[stream]);
        assert!(!truncated);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].data, "{\"a\":1}");
        assert!(events[2].is_done());
    }

    #[test]
    fn joins_multiline_data_and_keeps_event_type_and_id() {
        let stream = b"event: message_start\nid: 7\nretry: 1500\ndata: line one\ndata:line two\n\n";
        let (events, _) = parse_all(&[stream]);
        assert_eq!(
            events,
            vec![SseEvent {
                event: Some("message_start".into()),
                data: "line one\nline two".into(),
                id: Some("7".into()),
                retry: Some(1500),
            }]
        );
    }

    #[test]
    fn crlf_and_bare_cr_terminate_lines() {
        let (events, _) = parse_all(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]);
        let data: Vec<_> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a", "b", "c"]);
    }

    #[test]
    fn crlf_split_across_chunks_is_one_terminator() {
        let (events, _) = parse_all(&[b"data: a\r", b"\n", b"\r", b"\ndata: b\n\n"]);
        let data: Vec<_> = events.iter().map(|e| e.data.as_str()).collect();
        assert_eq!(data, ["a", "b"]);
    }

    #[test]
    fn utf8_split_across_chunks_decodes_whole() {
        let text = "data: héllo – 世界 🚀\n\n".as_bytes();
        for cut in 0..text.len() {
            let (events, _) = parse_all(&[&text[..cut], &text[cut..]]);
            assert_eq!(events[0].data, "héllo – 世界 🚀", "cut at {cut}");
        }
    }

    #[test]
    fn bom_is_skipped_and_event_without_data_is_dropped() {
        let (events, _) = parse_all(&[b"\xEF\xBB", b"\xBFevent: x\n\ndata: y\n\n"]);
        assert_eq!(events, vec![SseEvent::data("y")]);
    }

    #[test]
    fn incomplete_event_at_end_is_discarded_and_reported() {
        let (events, truncated) = parse_all(&[b"data: a\n\ndata: partial"]);
        assert_eq!(events.len(), 1);
        assert!(truncated);
        let (_, truncated) = parse_all(&[b"data: a\n\ndata: b\n"]);
        assert!(truncated, "a data line without the blank line is incomplete");
    }

    #[test]
    fn field_without_colon_and_unknown_fields() {
        let (events, _) = parse_all(&[b"data\nfoo: bar\n\n"]);
        assert_eq!(events, vec![SseEvent::data("")]);
    }

    #[test]
    fn encode_splits_multiline_data() {
        let mut out = BytesMut::new();
        encode_event(&mut out, Some("error"), "a\nb");
        assert_eq!(&out[..], b"event: error\ndata: a\ndata: b\n\n");
        assert_eq!(&data_event(b"[DONE]")[..], DONE_EVENT);
    }

    #[test]
    fn boundary_finds_last_complete_event() {
        let mut b = SseBoundary::new();
        assert_eq!(b.scan(b"data: a\n\ndata: b"), 9);
        assert!(!b.at_boundary());
        assert_eq!(b.scan(b"\n"), 0);
        assert_eq!(b.scan(b"\ndata: c\r\n\r"), 11);
        assert!(b.at_boundary());
        assert_eq!(b.scan(b"\n"), 1);
        assert!(b.at_boundary());
    }

    fn arb_text() -> impl Strategy<Value = String> {
        // Printable text with multi-byte characters; no line breaks (they become data lines).
        proptest::string::string_regex("[a-zA-Z0-9 {}\":,éß世界🚀\\[\\]]{0,24}").unwrap()
    }

    fn arb_event() -> impl Strategy<Value = SseEvent> {
        (
            proptest::option::of("[a-z_]{1,12}"),
            proptest::collection::vec(arb_text(), 1..4),
            proptest::option::of("[0-9]{1,4}"),
        )
            .prop_map(|(event, lines, id)| SseEvent {
                event,
                data: lines.join("\n"),
                id,
                retry: None,
            })
    }

    proptest! {
        #[test]
        fn same_events_whatever_the_chunk_boundaries(
            events in proptest::collection::vec(arb_event(), 0..8),
            crlf in any::<bool>(),
            ping in any::<bool>(),
            points in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = BytesMut::new();
            for event in &events {
                if ping {
                    wire.put_slice(b": ping\n\n");
                }
                event.encode(&mut wire);
            }
            let mut wire = wire.to_vec();
            if crlf {
                let mut converted = Vec::with_capacity(wire.len() * 2);
                for byte in wire {
                    if byte == b'\n' {
                        converted.extend_from_slice(b"\r\n");
                    } else {
                        converted.push(byte);
                    }
                }
                wire = converted;
            }
            let chunks = split_at_points(&wire, &points);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let (parsed, truncated) = parse_all(&refs);
            prop_assert!(!truncated);
            prop_assert_eq!(parsed, events);

            // The boundary scanner ends exactly at the end of the stream.
            let mut boundary = SseBoundary::new();
            let mut complete = 0;
            let mut offset = 0;
            for chunk in &chunks {
                let n = boundary.scan(chunk);
                if n > 0 {
                    complete = offset + n;
                }
                offset += chunk.len();
            }
            if !wire.is_empty() {
                prop_assert_eq!(complete, wire.len());
                prop_assert!(boundary.at_boundary());
            }
        }

        #[test]
        fn parser_never_panics_on_arbitrary_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            points in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = parse_all(&[&bytes]).0;
            let chunks = split_at_points(&bytes, &points);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(parse_all(&refs).0, whole);
        }

        #[test]
        fn boundary_prefix_parses_to_complete_events_only(
            events in proptest::collection::vec(arb_event(), 1..6),
            cut in any::<usize>(),
        ) {
            let mut wire = BytesMut::new();
            for event in &events {
                event.encode(&mut wire);
            }
            let cut = cut % (wire.len() + 1);
            let prefix = &wire[..cut];
            let complete = SseBoundary::new().scan(prefix);
            let (parsed, truncated) = parse_all(&[&prefix[..complete]]);
            prop_assert!(!truncated);
            prop_assert_eq!(&parsed[..], &events[..parsed.len()]);
            // Everything after the boundary is a partial event at most.
            let (rest, _) = parse_all(&[prefix]);
            prop_assert_eq!(rest.len(), parsed.len());
        }
    }
}
