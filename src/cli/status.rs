//! `jobdir status` (counts, once or watched) and `jobdir recover` (repair, reported).
//!
//! Invariant kept here: both only report what the library returns (`Store::counts`,
//! `Store::recover_with`); `status` never changes the store.

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use clap::Args;
use jobdir::{Counts, JobState, RecoverOptions, RecoveryReport, Store};
use serde::Serialize;

use super::output::human;
use super::shutdown::Shutdown;
use super::{args, open_existing};

pub const STATUS_ABOUT: &str = "Show how many jobs are pending, delayed, running, fulfilled, \
    failed, cancelled and expired, how many finished jobs have notification targets waiting, \
    how many items recovery quarantined, and the age of the oldest pending job.\n\n\
    --json prints one object with the keys pending, running, fulfilled, notifications, \
    quarantined and oldest_pending_age_seconds (a number, or null when nothing is pending), \
    and delayed, failed, cancelled and expired when some job is in that state (the text \
    output shows those lines likewise only when not zero). --watch redraws every second until interrupted.\n\n\
    --progress (implied by --watch in text form) adds the running jobs, one line each with \
    the latest progress its worker reported (`-` when none), at most 20; with --json it adds \
    the key running_jobs: [{\"id\":..,\"progress\":<JSON or null>}, ...] (all of them).";

pub const RECOVER_ABOUT: &str = "Repair the store now: end the leases of dead holders (their \
    jobs are pending again), quarantine corrupt or foreign files with the reason (moved to \
    quarantine/, never deleted), remove abandoned temporary files older than --temp-grace, and \
    re-index every job. Safe to run at any time, also while workers run; run it from cron or \
    after a crash. Prints what it did (--json: the full report).";

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print one JSON object
    #[arg(long)]
    json: bool,
    /// Redraw every second until interrupted (text: with the running jobs' progress)
    #[arg(long)]
    watch: bool,
    /// Also show each running job's latest progress
    #[arg(long)]
    progress: bool,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Leave temporary files younger than this alone (a live writer may be using them)
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = args::duration)]
    temp_grace: Duration,
}

/// The counts as `status --json` prints them.
#[derive(Serialize)]
struct StatusJson {
    pending: u64,
    #[serde(skip_serializing_if = "is_zero")]
    delayed: u64,
    running: u64,
    fulfilled: u64,
    #[serde(skip_serializing_if = "is_zero")]
    failed: u64,
    #[serde(skip_serializing_if = "is_zero")]
    cancelled: u64,
    #[serde(skip_serializing_if = "is_zero")]
    expired: u64,
    notifications: u64,
    quarantined: u64,
    oldest_pending_age_seconds: Option<f64>,
    /// With `--progress` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    running_jobs: Option<Vec<RunningJson>>,
}

/// A running job and its latest progress (`status --progress`).
#[derive(Serialize)]
struct RunningJson {
    id: String,
    progress: Option<serde_json::Value>,
}

/// Most running jobs listed in the text output.
const RUNNING_SHOWN: usize = 20;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl From<&Counts> for StatusJson {
    fn from(c: &Counts) -> StatusJson {
        StatusJson {
            pending: c.pending,
            delayed: c.delayed,
            running: c.running,
            fulfilled: c.fulfilled,
            failed: c.failed,
            cancelled: c.cancelled,
            expired: c.expired,
            notifications: c.notifications,
            quarantined: c.quarantined,
            oldest_pending_age_seconds: c
                .oldest_pending_age
                .map(|d| (d.as_millis() as f64) / 1000.0),
            running_jobs: None,
        }
    }
}

/// The running jobs and their progress, in creation order (reads every job's state, as
/// `jobdir ls` does, then one small file per running job; changes nothing).
fn running_jobs(store: Option<&Store>) -> anyhow::Result<Vec<RunningJson>> {
    let Some(store) = store else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for job in store.list()? {
        if job.state != JobState::Running {
            continue;
        }
        let progress = match store.progress(&job.id) {
            Ok(p) => p,
            Err(jobdir::Error::NotFound(_)) => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        out.push(RunningJson {
            id: job.id.to_string(),
            progress,
        });
    }
    Ok(out)
}

fn render(c: &Counts, json: bool, running: Option<Vec<RunningJson>>) -> anyhow::Result<String> {
    if json {
        let mut j = StatusJson::from(c);
        j.running_jobs = running;
        return Ok(serde_json::to_string(&j)?);
    }
    let mut text = render_counts(c);
    if let Some(running) = running {
        text.push_str("\nrunning jobs");
        if running.is_empty() {
            text.push_str("    -");
        }
        for r in running.iter().take(RUNNING_SHOWN) {
            let p = r
                .progress
                .as_ref()
                .map_or_else(|| "-".to_string(), |v| v.to_string());
            text.push_str(&format!("\n  {}  {p}", r.id));
        }
        if running.len() > RUNNING_SHOWN {
            text.push_str(&format!(
                "\n  ... and {} more",
                running.len() - RUNNING_SHOWN
            ));
        }
    }
    Ok(text)
}

fn render_counts(c: &Counts) -> String {
    let oldest = c.oldest_pending_age.map_or_else(|| "-".to_string(), human);
    // The issue-6 states appear only when some job is in them, so that the output of a store
    // that does not use them is what it always was.
    let extra = |name: &str, n: u64| {
        if n == 0 {
            String::new()
        } else {
            format!("{name:<16}{n}\n")
        }
    };
    format!(
        "pending         {}\n\
         {}running         {}\n\
         fulfilled       {}\n\
         {}{}{}notifications   {}\n\
         quarantined     {}\n\
         oldest pending  {oldest}",
        c.pending,
        extra("delayed", c.delayed),
        c.running,
        c.fulfilled,
        extra("failed", c.failed),
        extra("cancelled", c.cancelled),
        extra("expired", c.expired),
        c.notifications,
        c.quarantined
    )
}

pub fn status(dir: &Path, a: StatusArgs) -> anyhow::Result<()> {
    let store = open_existing(dir)?;
    let counts = || -> anyhow::Result<Counts> {
        match &store {
            Some(s) => Ok(s.counts()?),
            None => Ok(Counts::default()),
        }
    };
    // Progress only when asked for (`--watch` asks in text form), so the JSON stays the same.
    let with_progress = a.progress || (a.watch && !a.json);
    let running = || -> anyhow::Result<Option<Vec<RunningJson>>> {
        if with_progress {
            Ok(Some(running_jobs(store.as_ref())?))
        } else {
            Ok(None)
        }
    };
    if !a.watch {
        writeln!(
            io::stdout().lock(),
            "{}",
            render(&counts()?, a.json, running()?)?
        )?;
        return Ok(());
    }
    let shutdown = Shutdown::register(Duration::ZERO)?;
    let redraw = io::stdout().is_terminal() && !a.json;
    while !shutdown.requested() {
        let started = Instant::now();
        let text = render(&counts()?, a.json, running()?)?;
        let mut out = io::stdout().lock();
        if redraw {
            // Clear the screen and home the cursor, then draw.
            write!(out, "\x1b[2J\x1b[H{}\n\n(every 1s; Ctrl-C to stop)\n", text)?;
        } else {
            writeln!(out, "{text}")?;
        }
        out.flush()?;
        drop(out);
        while !shutdown.requested() && started.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

pub fn recover(dir: &Path, a: RecoverArgs) -> anyhow::Result<()> {
    let report = match open_existing(dir)? {
        Some(store) => store.recover_with(&RecoverOptions::default().temp_grace(a.temp_grace))?,
        None => RecoveryReport::default(),
    };
    let mut out = io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    let q = &report.quarantined;
    writeln!(out, "leases reclaimed         {}", report.leases_reclaimed)?;
    writeln!(
        out,
        "lease files removed      {}",
        report.lease_files_removed
    )?;
    writeln!(
        out,
        "leases of other hosts    {}",
        report.leases_of_other_hosts
    )?;
    writeln!(out, "temporary files removed  {}", report.temp_removed)?;
    writeln!(out, "index entries added      {}", report.entries_added)?;
    writeln!(out, "index entries removed    {}", report.entries_removed)?;
    writeln!(out, "instances removed        {}", report.instances_removed)?;
    writeln!(
        out,
        "allocations released     {}",
        report.allocations_released
    )?;
    writeln!(out, "quarantined              {}", q.len())?;
    for item in q {
        writeln!(
            out,
            "  {} -> {}: {}",
            item.path.display(),
            item.now_at.display(),
            item.reason
        )?;
    }
    Ok(())
}
