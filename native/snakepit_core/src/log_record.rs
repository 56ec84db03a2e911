//! Python log records in a worker's output.
//!
//! A worker's logging handler (`snakepit_bridge.log_forwarding`) writes each
//! record of Python's `logging` (and `warnings`) as one stderr line: [`PREFIX`],
//! then a JSON object with `levelno`, `logger`, `message` and, when there
//! are, `traceback`, `tool`, `session_id` and `metadata` (string to string).
//! [`parse`] turns such a line into a [`LogRecord`], so that the owner logs it
//! at its level with its fields; any other line (a `print`, a malformed
//! record, one cut at the line limit) stays a plain line of output.
//!
//! Records travel the output path of every other line, with its rate limits
//! and bounded queue ([`crate::output`]).

use serde_json::{Map, Value};

/// What starts a log record's line: an ASCII record separator, then a tag.
pub const PREFIX: &str = "\u{1e}snakepit-log ";

/// A record's level, from Python's `levelno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `DEBUG` and below.
    Debug,
    /// `INFO`.
    Info,
    /// `WARNING` (and `warnings.warn`).
    Warning,
    /// `ERROR`.
    Error,
    /// `CRITICAL` and above.
    Critical,
}

impl Level {
    /// The level of Python's `levelno`: each standard level and the custom
    /// ones up to it.
    pub fn from_levelno(levelno: i64) -> Self {
        match levelno {
            i64::MIN..=10 => Level::Debug,
            11..=20 => Level::Info,
            21..=30 => Level::Warning,
            31..=40 => Level::Error,
            _ => Level::Critical,
        }
    }

    /// Its name, as Elixir's `Logger` levels are named.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Critical => "critical",
        }
    }
}

/// One Python log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its level.
    pub level: Level,
    /// The Python logger's name (`"py.warnings"` for warnings).
    pub logger: String,
    /// The formatted message.
    pub message: String,
    /// The exception's traceback, for records logged with one.
    pub traceback: Option<String>,
    /// The tool being served when the record was made.
    pub tool: Option<String>,
    /// The session of that call, if it has one.
    pub session_id: Option<String>,
    /// The call's metadata (string to string), in key order.
    pub metadata: Vec<(String, String)>,
}

impl LogRecord {
    /// The record as a plain log line, as Python's default format writes
    /// it: `LEVEL logger: message`, then the traceback, if any.
    pub fn to_plain(&self) -> String {
        let mut text = format!(
            "{} {}: {}",
            self.level.as_str().to_uppercase(),
            self.logger,
            self.message
        );
        if let Some(traceback) = &self.traceback {
            text.push('\n');
            text.push_str(traceback);
        }
        text
    }
}

/// The record a line holds, or `None` for a line of plain output.
pub fn parse(line: &str) -> Option<LogRecord> {
    let json = line.strip_prefix(PREFIX)?;
    let Value::Object(fields) = serde_json::from_str::<Value>(json).ok()? else {
        return None;
    };
    Some(LogRecord {
        level: Level::from_levelno(fields.get("levelno")?.as_i64()?),
        logger: text(&fields, "logger")?,
        message: text(&fields, "message")?,
        traceback: text(&fields, "traceback"),
        tool: text(&fields, "tool").filter(|tool| !tool.is_empty()),
        session_id: text(&fields, "session_id").filter(|id| !id.is_empty()),
        metadata: match fields.get("metadata") {
            Some(Value::Object(map)) => map
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
            _ => Vec::new(),
        },
    })
}

fn text(fields: &Map<String, Value>, key: &str) -> Option<String> {
    fields.get(key)?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> String {
        format!("{PREFIX}{json}")
    }

    #[test]
    fn a_full_record() {
        let record = parse(&line(
            r#"{"levelno": 30, "logger": "app.model", "message": "slow\nbatch", "traceback": "Traceback ...", "tool": "predict", "session_id": "s1", "metadata": {"trace_id": "abc", "n": 1}}"#,
        ))
        .unwrap();
        assert_eq!(record.level, Level::Warning);
        assert_eq!(record.logger, "app.model");
        assert_eq!(record.message, "slow\nbatch");
        assert_eq!(record.traceback.as_deref(), Some("Traceback ..."));
        assert_eq!(record.tool.as_deref(), Some("predict"));
        assert_eq!(record.session_id.as_deref(), Some("s1"));
        // Only string values are metadata.
        assert_eq!(
            record.metadata,
            vec![("trace_id".to_owned(), "abc".to_owned())]
        );
    }

    #[test]
    fn as_a_plain_line() {
        let record = parse(&line(
            r#"{"levelno": 40, "logger": "app", "message": "failed", "traceback": "Traceback ..."}"#,
        ))
        .unwrap();
        assert_eq!(record.to_plain(), "ERROR app: failed\nTraceback ...");
    }

    #[test]
    fn outside_a_tool() {
        let record = parse(&line(
            r#"{"levelno": 20, "logger": "root", "message": "hi", "tool": "", "session_id": ""}"#,
        ))
        .unwrap();
        assert_eq!(record.level, Level::Info);
        assert_eq!(
            (record.tool, record.session_id, record.traceback),
            (None, None, None)
        );
    }

    #[test]
    fn levels() {
        let levels: Vec<Level> = [0, 5, 10, 15, 20, 25, 30, 40, 50, 60]
            .into_iter()
            .map(Level::from_levelno)
            .collect();
        use Level::*;
        assert_eq!(
            levels,
            [Debug, Debug, Debug, Info, Info, Warning, Warning, Error, Critical, Critical]
        );
    }

    #[test]
    fn plain_and_broken_lines_are_not_records() {
        for text in [
            "hello".to_owned(),
            r#"{"levelno": 20, "logger": "x", "message": "m"}"#.to_owned(),
            line(r#"{"levelno": 20, "logger": "x""#),
            line(r#"{"levelno": "20", "logger": "x", "message": "m"}"#),
            line(r#"{"levelno": 20, "message": "m"}"#),
            line(r#"[1, 2]"#),
            line(""),
        ] {
            assert_eq!(parse(&text), None, "{text:?}");
        }
    }
}
