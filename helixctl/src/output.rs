//! How answers are printed: one JSON document on stdout with `--json`, tables otherwise.

use std::fmt::Display;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::{Table, presets};
use serde::Serialize;

use crate::error::{CliError, CliResult};

/// Where answers go, and in which form.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Out {
    /// Whether to print JSON for machines instead of text for people.
    pub(crate) json: bool,
}

impl Out {
    /// Prints `value` as one JSON document, or the text `human` makes of it.
    pub(crate) fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> CliResult {
        if self.json {
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| CliError::Failed(format!("cannot write the answer as JSON: {e}")))?;
            write_line(&text)
        } else {
            let text = human(value);
            write_line(text.trim_end_matches('\n'))
        }
    }

    /// Prints `value` as one line of JSON, or the text `human` makes of it: for answers that
    /// stream (`events --follow`).
    pub(crate) fn print_line<T: Serialize>(&self, value: &T, human: impl FnOnce(&T) -> String) -> CliResult {
        if self.json {
            let text = serde_json::to_string(value)
                .map_err(|e| CliError::Failed(format!("cannot write the answer as JSON: {e}")))?;
            write_line(&text)
        } else {
            write_line(human(value).trim_end_matches('\n'))
        }
    }
}

fn write_line(text: &str) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|e| CliError::Failed(format!("cannot write to stdout: {e}")))
}

/// A table of plain aligned columns under a header, as `kubectl get` prints them.
pub(crate) fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table.load_preset(presets::NOTHING).set_header(header);
    table
}

/// A table as text: columns two spaces apart, no trailing blanks.
pub(crate) fn table_text(table: &Table) -> String {
    table
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(&line).trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cell for an optional value: the value, or `-`.
pub(crate) fn or_dash<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// An instant for people: RFC 3339 in UTC, to the second.
pub(crate) fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A span for people, to the millisecond: `2s 512ms`.
pub(crate) fn span(duration: Duration) -> String {
    let ms = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(ms).to_string()
}

/// How far `at` is from `now`: `in 2s 512ms` or `3s ago`.
pub(crate) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    match (at - now).to_std() {
        Ok(ahead) => format!("in {}", span(ahead)),
        Err(_) => format!("{} ago", span((now - at).to_std().unwrap_or_default())),
    }
}

/// Milliseconds from `now` to `at`, negative when `at` has passed.
pub(crate) fn millis_until(at: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
    (at - now).num_milliseconds()
}

/// A duration in whole milliseconds, for JSON.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
