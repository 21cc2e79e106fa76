//! Commands about individual jobs: create, get, result, wait, queue, unqueue, ls, remove, prune.
//!
//! Invariant kept here: input (ids, JSON) is parsed before the store is opened, and commands
//! about an existing job never create a store.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use clap::{Args, ValueEnum};
use jobdir::{CreateOptions, DedupKey, Error, GroupId, InstanceId, JobState, RetryPolicy};

use super::output::{print_job, print_raw};
use super::{EXIT_NOT_FULFILLED, args, fail, open, open_existing, open_for_job};

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Priority: higher is pulled first; FIFO within a priority
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// Not pullable before this much time has passed (`30s`, `5m`, `1h`)
    #[arg(long, value_name = "DURATION", value_parser = args::duration, conflicts_with = "at")]
    delay: Option<Duration>,
    /// Not pullable before this time (RFC 3339, for example `2026-12-01T08:00:00Z`)
    #[arg(long, value_name = "TIME", value_parser = args::time)]
    at: Option<SystemTime>,
    /// Attempts allowed in all before the job is failed (default 5)
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Backoff before the first retry, doubling per failure, with jitter (default 1s)
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    backoff: Option<Duration>,
    /// Largest backoff between retries (default 1h)
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    max_backoff: Option<Duration>,
    /// The longest one attempt may run; past it the worker is stopped and the attempt fails
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    run_timeout: Option<Duration>,
    /// Past this time (RFC 3339) or duration from now (`1h`) the job expires wherever it is
    #[arg(long, value_name = "TIME|DURATION", value_parser = args::time_or_duration)]
    deadline: Option<SystemTime>,
    /// A job no worker pulled within this long (after it became pullable) expires
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    pickup_timeout: Option<Duration>,
    /// De-duplication key: while a job created with KEY has not finished, print its id and
    /// make no job (any text of 1 to 1024 bytes without control characters)
    #[arg(long, value_name = "KEY")]
    key: Option<String>,
    /// Keep KEY taken this long after the job has finished (`10m`, `1h`): creates meanwhile
    /// print the finished job's id
    #[arg(long, value_name = "DURATION", value_parser = args::duration, requires = "key")]
    keep_key: Option<Duration>,
    /// Create the job in this group (see `wait-group`); with --key, an existing job printed
    /// instead joins the group
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Create the job for this instance: `work --instance NAME` runs it first, and no other
    /// worker takes it while NAME runs (or, unless --sticky, until NAME is dead)
    #[arg(long, value_name = "NAME", conflicts_with = "allocate")]
    instance: Option<String>,
    /// Allocate the job on creation to an available instance by the default rule (as
    /// `jobdir allocate`), then as --instance
    #[arg(long)]
    allocate: bool,
    /// With --instance or --allocate: the job waits for its instance, dead or not, until
    /// `jobdir deallocate ID`
    #[arg(long)]
    sticky: bool,
    /// Print {"id":..,"existing":..} instead of the id alone (existing: true when --key
    /// found a job and none was made)
    #[arg(long)]
    json: bool,
    /// The request as JSON; read from stdin when absent or `-`
    #[arg(value_name = "REQUEST", allow_negative_numbers = true)]
    request: Option<String>,
}

#[derive(Args, Debug)]
pub struct IdArg {
    /// The job id (as printed by `jobdir create`)
    #[arg(value_name = "ID")]
    id: String,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    /// The job id
    #[arg(value_name = "ID")]
    id: String,
    /// Give up after this many seconds (fractions allowed) and exit 124; default: wait forever
    #[arg(long, value_name = "SECONDS", value_parser = args::seconds)]
    timeout: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// The job id
    #[arg(value_name = "ID")]
    id: String,
    /// The notification target as JSON (for example an address or a callback description)
    #[arg(value_name = "TARGET", allow_negative_numbers = true)]
    target: String,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only jobs in this state
    #[arg(long, value_enum)]
    state: Option<StateArg>,
    /// One JSON object per line, as `jobdir get` prints it
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum StateArg {
    Pending,
    Delayed,
    Running,
    Fulfilled,
    Failed,
    Cancelled,
    Expired,
}

impl StateArg {
    fn state(self) -> JobState {
        match self {
            StateArg::Pending => JobState::Pending,
            StateArg::Delayed => JobState::Delayed,
            StateArg::Running => JobState::Running,
            StateArg::Fulfilled => JobState::Fulfilled,
            StateArg::Failed => JobState::Failed,
            StateArg::Cancelled => JobState::Cancelled,
            StateArg::Expired => JobState::Expired,
        }
    }
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    /// The job id
    #[arg(value_name = "ID")]
    id: String,
    /// Why (kept as the job's error, shown to waiters)
    #[arg(long, value_name = "TEXT", default_value = "cancelled")]
    reason: String,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Remove jobs finished (fulfilled, failed, cancelled, expired) longer ago than this
    /// (`7d`, `12h`, `30m`)
    #[arg(long, value_name = "DURATION", value_parser = args::duration)]
    older_than: Duration,
}

pub fn create(dir: &Path, a: CreateArgs) -> anyhow::Result<()> {
    let request = args::json_or_stdin(a.request.as_deref(), "REQUEST")?;
    let mut opts = CreateOptions::default().priority(a.priority);
    if let Some(d) = a.delay {
        opts = opts.delay(d);
    }
    if let Some(t) = a.at {
        opts = opts.run_at(t);
    }
    if a.max_attempts.is_some() || a.backoff.is_some() || a.max_backoff.is_some() {
        let mut policy = RetryPolicy::default();
        if let Some(n) = a.max_attempts {
            if n == 0 {
                return Err(
                    Error::InvalidOption("--max-attempts must be at least 1".into()).into(),
                );
            }
            policy = policy.with_max_attempts(n);
        }
        let first = a.backoff.unwrap_or(policy.backoff_for(1));
        let max = a
            .max_backoff
            .unwrap_or(Duration::from_secs(3600))
            .max(first);
        opts = opts.retry(policy.with_backoff(first, max));
    }
    if let Some(d) = a.run_timeout {
        opts = opts.run_timeout(d);
    }
    if let Some(t) = a.deadline {
        opts = opts.deadline(t);
    }
    if let Some(d) = a.pickup_timeout {
        opts = opts.pickup_timeout(d);
    }
    // Keys and groups (FORMAT.md §12), checked before the store is opened.
    if let Some(k) = a.key {
        opts = opts.key(DedupKey::new(k)?);
    }
    if let Some(ttl) = a.keep_key {
        opts = opts.keep_key_for(ttl);
    }
    if let Some(g) = a.group {
        opts = opts.group(GroupId::new(g)?);
    }
    // Work affinity (FORMAT.md §9.11).
    if let Some(name) = a.instance {
        opts = opts.instance(InstanceId::new(name)?);
    } else if a.allocate {
        opts = opts.allocate();
    } else if a.sticky {
        return Err(
            Error::InvalidOption("--sticky needs --instance NAME or --allocate".into()).into(),
        );
    }
    opts = opts.sticky(a.sticky);
    let store = open(dir)?;
    let created = store.create_keyed(&request, opts)?;
    let mut out = io::stdout().lock();
    if a.json {
        serde_json::to_writer(&mut out, &created)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", created.id)?;
    }
    Ok(())
}

pub fn get(dir: &Path, a: IdArg) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    let info = open_for_job(dir, &id)?.get(&id)?;
    print_job(&mut io::stdout().lock(), &info)
}

pub fn result(dir: &Path, a: IdArg) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    match open_for_job(dir, &id)?.result(&id)? {
        Some(bytes) => Ok(print_raw(&bytes)?),
        None => Err(fail(
            EXIT_NOT_FULFILLED,
            format!("job {id} is not fulfilled yet"),
        )),
    }
}

pub fn wait(dir: &Path, a: WaitArgs) -> anyhow::Result<()> {
    /// Without --timeout, wait in slices of this length, forever.
    const SLICE: Duration = Duration::from_secs(3600);
    let id = args::job_id(&a.id)?;
    let store = open_for_job(dir, &id)?;
    let bytes = match a.timeout {
        Some(t) => store.wait(&id, t)?,
        None => loop {
            match store.wait(&id, SLICE) {
                Err(Error::Timeout) => continue,
                other => break other?,
            }
        },
    };
    Ok(print_raw(&bytes)?)
}

pub fn queue(dir: &Path, a: TargetArgs) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    let target = args::json(&a.target, "TARGET")?;
    open_for_job(dir, &id)?.queue(&id, &target)?;
    Ok(())
}

pub fn unqueue(dir: &Path, a: TargetArgs) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    let target = args::json(&a.target, "TARGET")?;
    open_for_job(dir, &id)?.unqueue(&id, &target)?;
    Ok(())
}

pub fn ls(dir: &Path, a: LsArgs) -> anyhow::Result<()> {
    let Some(store) = open_existing(dir)? else {
        return Ok(());
    };
    let want = a.state.map(StateArg::state);
    let mut out = io::BufWriter::new(io::stdout().lock());
    for job in store.list()? {
        if want.is_some_and(|s| s != job.state) {
            continue;
        }
        if a.json {
            match store.get(&job.id) {
                // The state may have moved on since the listing; print what it is now.
                Ok(info) => print_job(&mut out, &info)?,
                Err(Error::NotFound(_)) => continue, // removed meanwhile
                Err(e) => return Err(e.into()),
            }
        } else {
            writeln!(out, "{} {}", job.id, job.state)?;
        }
    }
    out.flush()?;
    Ok(())
}

pub fn cancel(dir: &Path, a: CancelArgs) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    open_for_job(dir, &id)?.cancel(&id, &a.reason)?;
    Ok(())
}

pub fn retry(dir: &Path, a: IdArg) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    open_for_job(dir, &id)?.retry(&id)?;
    Ok(())
}

pub fn remove(dir: &Path, a: IdArg) -> anyhow::Result<()> {
    let id = args::job_id(&a.id)?;
    open_for_job(dir, &id)?.remove(&id)?;
    Ok(())
}

pub fn prune(dir: &Path, a: PruneArgs) -> anyhow::Result<()> {
    let mut removed = 0u64;
    if let Some(store) = open_existing(dir)? {
        let cutoff = SystemTime::now()
            .checked_sub(a.older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for job in store.list()? {
            if !job.state.is_finished() {
                continue;
            }
            let info = match store.get(&job.id) {
                Ok(info) => info,
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            let old = info.finished_at.is_some_and(|t| t < cutoff);
            if old && info.waiting.is_empty() {
                match store.remove(&job.id) {
                    Ok(()) => removed += 1,
                    Err(Error::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let noun = if removed == 1 { "job" } else { "jobs" };
    writeln!(io::stdout().lock(), "removed {removed} {noun}")?;
    Ok(())
}
