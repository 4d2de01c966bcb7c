//! One log line in Docker's json-file format, the same bytes `docker logs`
//! reads: `{"log":"out\n","stream":"stdout","time":"2026-12-03T11:00:00.123456789Z"}`.
//! Pure: no IO.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which of the task's outputs a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// fd 1.
    Stdout,
    /// fd 2.
    Stderr,
}

/// One line of output (or a piece of a very long one, as Docker splits
/// them) with when it was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Where it came from.
    pub stream: Stream,
    /// When the writer read it.
    pub time: SystemTime,
    /// The bytes, with the trailing newline if the line had one.
    pub line: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Json<'a> {
    #[serde(borrow)]
    log: std::borrow::Cow<'a, str>,
    stream: Stream,
    #[serde(borrow)]
    time: std::borrow::Cow<'a, str>,
}

/// RFC 3339 with nanoseconds, UTC (`2026-12-03T11:00:00.123456789Z`).
pub fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// Appends `e` as one json line (with its `\n`) to `out`. Bytes that are
/// not UTF-8 become U+FFFD, as in Docker's logs.
pub fn encode(e: &Entry, out: &mut Vec<u8>) {
    let j = Json {
        log: String::from_utf8_lossy(&e.line),
        stream: e.stream,
        time: rfc3339(e.time).into(),
    };
    serde_json::to_writer(&mut *out, &j).expect("writing json into a Vec cannot fail");
    out.push(b'\n');
}

/// Parses one json line (without or with its `\n`); `None` for a line that
/// is not one of ours (a torn last line after a crash, say).
pub fn decode(line: &[u8]) -> Option<Entry> {
    let j: Json = serde_json::from_slice(line.trim_ascii_end()).ok()?;
    Some(Entry {
        stream: j.stream,
        time: parse_rfc3339(&j.time)?,
        line: j.log.into_owned().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trip_and_docker_shape() {
        let e = Entry {
            stream: Stream::Stderr,
            time: SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789),
            line: b"say \"hi\"\t\x01\n".to_vec(),
        };
        let mut out = Vec::new();
        encode(&e, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"log\":\"say \\\"hi\\\"\\t\\u0001\\n\",\"stream\":\"stderr\",\
             \"time\":\"2027-01-15T08:00:00.123456789Z\"}\n"
        );
        assert_eq!(decode(&out), Some(e));
    }

    #[test]
    fn bad_bytes_and_bad_lines() {
        let e = Entry {
            stream: Stream::Stdout,
            time: SystemTime::UNIX_EPOCH,
            line: vec![b'a', 0xff, b'\n'],
        };
        let mut out = Vec::new();
        encode(&e, &mut out);
        assert_eq!(decode(&out).unwrap().line, "a\u{fffd}\n".as_bytes());
        assert_eq!(decode(b"{\"log\":\"x"), None);
        assert_eq!(decode(b"plain text\n"), None);
    }
}
