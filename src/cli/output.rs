//! What the CLI prints: a job as JSON, raw result bytes, human durations.
//!
//! Invariant kept here: a job's JSON has one shape everywhere (`get`, `ls --json`), and result
//! bytes are printed exactly as stored.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use base64::Engine;
use jobdir::JobInfo;
use serde::Serialize;
use serde_json::Value;

/// A job as `jobdir get` prints it.
#[derive(Serialize)]
pub struct JobJson<'a> {
    id: String,
    state: &'static str,
    priority: i32,
    request: &'a Value,
    attempts: u64,
    created_at: String,
    waiting: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    fulfilled_at: Option<String>,
    /// When a delayed job becomes pending.
    #[serde(skip_serializing_if = "Option::is_none")]
    run_at: Option<String>,
    /// When it finished in any way.
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    /// The final error of a failed, cancelled or expired job.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    /// The errors of failed attempts, oldest first.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [jobdir::AttemptError],
    /// The result when it is UTF-8 text.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a str>,
    /// The result, base64-encoded, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    result_base64: Option<String>,
    /// The latest progress its worker reported, while it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<&'a Value>,
    /// The de-duplication key it was created with.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
    /// The group it was created in.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    /// The instance it is allocated to.
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<&'a str>,
    /// Whether that allocation is sticky (only with an instance).
    #[serde(skip_serializing_if = "Option::is_none")]
    sticky: Option<bool>,
}

impl<'a> JobJson<'a> {
    pub fn new(info: &'a JobInfo) -> JobJson<'a> {
        let bytes = info.result.as_deref();
        let text = bytes.and_then(|b| std::str::from_utf8(b).ok());
        JobJson {
            id: info.id.to_string(),
            state: info.state.as_str(),
            priority: info.priority,
            request: &info.request,
            attempts: info.attempts,
            created_at: rfc3339(info.created_at),
            waiting: &info.waiting,
            fulfilled_at: info.fulfilled_at.map(rfc3339),
            run_at: info.run_at.map(rfc3339),
            finished_at: info.finished_at.map(rfc3339),
            error: info.error.as_deref(),
            errors: &info.errors,
            result: text,
            result_base64: match (bytes, text) {
                (Some(b), None) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
                _ => None,
            },
            progress: info.progress.as_ref(),
            key: info.key.as_deref(),
            group: info.group.as_ref().map(|g| g.as_str()),
            instance: info.instance.as_ref().map(|i| i.as_str()),
            sticky: info.instance.as_ref().map(|_| info.sticky),
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Prints a job as one line of JSON.
pub fn print_job(out: &mut impl Write, info: &JobInfo) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &JobJson::new(info))?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Prints bytes to stdout exactly (no newline added).
pub fn print_raw(bytes: &[u8]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()
}

/// A duration for humans: milliseconds below a second, seconds with two decimals below a
/// minute, else to the second (`3m 12s`).
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(12)), "12ms");
        assert_eq!(human(Duration::from_millis(1_500)), "1.50s");
        assert_eq!(human(Duration::from_millis(192_400)), "3m 12s");
    }
}
