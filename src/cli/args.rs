//! Validation of user input — ids, JSON, durations — before anything touches the store.
//!
//! Invariant kept here: every parser either returns a value the library accepts or an error that
//! exits 2 (bad input), so a command with bad input never opens or creates the store.

use std::io::Read;
use std::time::{Duration, SystemTime};

use jobdir::JobId;
use serde_json::Value;

use super::usage;

/// Parses a job id (a canonical UUID v7); anything else is bad input (exit 2).
pub fn job_id(text: &str) -> anyhow::Result<JobId> {
    Ok(text.parse::<JobId>()?)
}

/// Parses JSON given on the command line (`what` names it in the error).
pub fn json(text: &str, what: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).map_err(|e| usage(format!("{what} is not valid JSON: {e}")))
}

/// The JSON of an optional argument, read from stdin when it is absent or `-`.
pub fn json_or_stdin(arg: Option<&str>, what: &str) -> anyhow::Result<Value> {
    match arg {
        Some(text) if text != "-" => json(text, what),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| usage(format!("cannot read {what} from stdin: {e}")))?;
            serde_json::from_slice(&buf)
                .map_err(|e| usage(format!("{what} read from stdin is not valid JSON: {e}")))
        }
    }
}

/// A clap value parser for a number of seconds, fractions allowed (`0.5`).
pub fn seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a non-negative number of seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{text:?}: {e}"))
}

/// A clap value parser for a human duration (`7d`, `12h`, `90s`, `1h 30m`).
pub fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(seconds("3"), Ok(Duration::from_secs(3)));
        for bad in ["-1", "nan", "inf", "x", ""] {
            assert!(seconds(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(duration("soon").is_err());
    }

    #[test]
    fn ids_and_json_are_checked() {
        assert!(job_id("../x").is_err());
        assert!(json("{", "REQUEST").is_err());
        assert_eq!(json("[1]", "REQUEST").ok(), Some(serde_json::json!([1])));
    }
}

/// What `work` and `notify` both take: the grace period after a signal, and the program.
#[derive(clap::Args, Debug)]
pub struct ProgramArgs {
    /// After SIGINT/SIGTERM, how long running programs may take to finish before termination
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = seconds)]
    pub grace: std::time::Duration,
    /// The program to run (once per job for `work`, once per target for `notify`), and its
    /// arguments (after `--`)
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub program: Vec<std::ffi::OsString>,
}

/// What each worker of `work` and `pool` takes: its concurrency, lease, priority slots and
/// instance (`pool` passes them on to its `work` processes).
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// Number of jobs a worker runs at once (threads sharing one store)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(1..=1024)
    )]
    pub concurrency: u64,
    /// Lease length in seconds: a job whose holder stops heartbeating this long is taken over
    #[arg(long, value_name = "SECONDS", value_parser = seconds)]
    pub lease: Option<Duration>,
    /// Reserve slots for priority ranges: P:S,... gives priorities from P up (to the next P) S
    /// of the --concurrency slots; lower ranges never take them
    #[arg(long, value_name = "P:S,...", allow_hyphen_values = true)]
    pub priority_slots: Option<String>,
    /// With --priority-slots: a range beyond its own slots borrows only from the lowest range
    /// (proletariat's SACRED_GUARANTEES), so every other range keeps its slots
    #[arg(long, requires = "priority_slots")]
    pub strict_slots: bool,
    /// Take jobs allocated to no instance too (with --instance, or --instance-prefix of pool)
    #[arg(long)]
    pub unallocated: bool,
}

impl WorkerArgs {
    /// The priority slots asked for, checked (a usage error otherwise).
    pub fn slots(&self) -> anyhow::Result<Option<jobdir::PrioritySlots>> {
        self.priority_slots
            .as_deref()
            .map(|spec| {
                jobdir::PrioritySlots::parse(self.concurrency as usize, spec, self.strict_slots)
                    .map_err(|e| usage(format!("--priority-slots: {e}")))
            })
            .transpose()
    }
}

/// An RFC 3339 time (`2026-12-01T08:00:00Z`).
pub fn time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2026-12-01T08:00:00Z): {e}"))
}

/// An RFC 3339 time, or a duration from now (`1h`).
pub fn time_or_duration(text: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let d = duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration (30m, 2h, 1d)")
    })?;
    Ok(SystemTime::now() + d)
}
