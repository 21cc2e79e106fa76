//! Commands about instances and sticky allocations (after atributo): `instance available`,
//! `instance unavailable`, `instance ls`, `instance jobs`, `instance join`, `allocate`,
//! `deallocate`, `allocation`.
//!
//! Invariant kept here: names are validated before the store is opened (bad ones exit 2), and
//! commands that only read never create a store.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use clap::{Args, Subcommand};
use jobdir::{
    Allocation, AllocationRule, Choice, HashRule, InstanceId, InstanceInfo, JobKey, Removal,
};
use serde::Serialize;

use super::child::{Program, describe};
use super::{EXIT_FAILURE, EXIT_NOT_FOUND, args, fail, open, open_existing};

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Make an instance available for new allocations (created if needed)
    Available(NameArg),
    /// Stop new allocations to an instance; optionally remove it
    #[command(
        long_about = "Stop new allocations to an instance (created unavailable if unknown). Its \
            existing allocations stay and `allocate` still returns them. --remove deletes its \
            allocations and removes it now; --remove-when-idle removes it once its last \
            allocation is deallocated (now if it has none)."
    )]
    Unavailable(UnavailableArgs),
    /// List instances: `NAME available|unavailable|removing live|dead|absent`
    #[command(
        long_about = "List instances sorted by name, one `NAME AVAILABILITY LIVENESS` line each: \
            availability is available, unavailable or removing (unavailable, removed once idle); \
            liveness is live (a process joined as it heartbeats), dead (it joined and stopped \
            heartbeating) or absent (no process joined). Another host's dead process is seen only \
            after watching its heartbeat for a lease: use --observe."
    )]
    Ls(InstanceLsArgs),
    /// List the jobs allocated to an instance, one key per line
    Jobs(NameArg),
    /// Run PROGRAM as an instance: available and live while it runs
    #[command(
        long_about = "Make the instance available and join as it (a heartbeated presence) while \
            PROGRAM runs, with JOBDIR_INSTANCE and JOBDIR_DIR in its environment. Fails if a live \
            process has already joined as it. Exits with PROGRAM's status; leaving keeps the \
            instance and its allocations. SIGINT/SIGTERM are passed on to PROGRAM.",
        override_usage = "jobdir instance join [OPTIONS] <NAME> -- <PROGRAM> [ARGS]..."
    )]
    Join(JoinArgs),
}

#[derive(Args, Debug)]
pub struct NameArg {
    /// The instance name: 1 to 128 characters of A-Z a-z 0-9 . _ -, starting with a letter or
    /// digit
    #[arg(value_name = "NAME")]
    name: String,
}

#[derive(Args, Debug)]
pub struct UnavailableArgs {
    /// The instance name
    #[arg(value_name = "NAME")]
    name: String,
    /// Delete its allocations and remove it now
    #[arg(long, conflicts_with = "remove_when_idle")]
    remove: bool,
    /// Remove it once it has no allocations left
    #[arg(long)]
    remove_when_idle: bool,
}

#[derive(Args, Debug)]
pub struct InstanceLsArgs {
    /// One JSON object per line: id, available, remove_when_idle, liveness
    #[arg(long)]
    json: bool,
    /// Watch presence heartbeats this many seconds before listing, so that another host's
    /// stalled process can be judged dead (it takes the lease length, default 30 s)
    #[arg(long, value_name = "SECONDS", value_parser = args::seconds)]
    observe: Option<Duration>,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The instance name
    #[arg(value_name = "NAME")]
    name: String,
    /// The program to run as the instance, and its arguments (after `--`)
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    program: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct AllocateArgs {
    /// The job key: any 1 to 128 characters of A-Z a-z 0-9 . _ - starting with a letter or
    /// digit (a job id is one)
    #[arg(value_name = "JOB")]
    job: String,
    /// Persist a new allocation only if it goes to this instance (atributo's "persist only my
    /// own allocations"); otherwise print the choice without recording it
    #[arg(long, value_name = "INSTANCE")]
    only_for: Option<String>,
    /// Print one JSON object: job, instance, persisted, existing
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct JobArg {
    /// The job key
    #[arg(value_name = "JOB")]
    job: String,
}

pub fn instance(dir: &Path, cmd: InstanceCommand) -> anyhow::Result<()> {
    match cmd {
        InstanceCommand::Available(a) => {
            let id = InstanceId::new(a.name)?;
            Ok(open(dir)?.available(&id)?)
        }
        InstanceCommand::Unavailable(a) => {
            let id = InstanceId::new(a.name)?;
            let removal = if a.remove {
                Removal::Now
            } else if a.remove_when_idle {
                Removal::WhenIdle
            } else {
                Removal::Keep
            };
            Ok(open(dir)?.unavailable(&id, removal)?)
        }
        InstanceCommand::Ls(a) => ls(dir, a),
        InstanceCommand::Jobs(a) => {
            let id = InstanceId::new(a.name)?;
            let Some(store) = open_existing(dir)? else {
                return Ok(());
            };
            let mut out = io::stdout().lock();
            for key in store.jobs(&id)? {
                writeln!(out, "{key}")?;
            }
            Ok(())
        }
        InstanceCommand::Join(a) => join(dir, a),
    }
}

fn ls(dir: &Path, a: InstanceLsArgs) -> anyhow::Result<()> {
    let Some(store) = open_existing(dir)? else {
        return Ok(());
    };
    if let Some(watch) = a.observe {
        // Judging another host's heartbeat takes two looks a lease apart.
        store.instances()?;
        let step = Duration::from_millis(250);
        let mut waited = Duration::ZERO;
        while waited < watch {
            let nap = step.min(watch - waited);
            thread::sleep(nap);
            waited += nap;
            store.instances()?;
        }
    }
    let mut out = io::stdout().lock();
    for info in store.instances()? {
        if a.json {
            serde_json::to_writer(&mut out, &info)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{} {} {}",
                info.id,
                availability(&info),
                info.liveness.as_str()
            )?;
        }
    }
    Ok(())
}

fn availability(info: &InstanceInfo) -> &'static str {
    if info.available {
        "available"
    } else if info.remove_when_idle {
        "removing"
    } else {
        "unavailable"
    }
}

fn join(dir: &Path, a: JoinArgs) -> anyhow::Result<()> {
    let id = InstanceId::new(a.name)?;
    let program = Program::resolve(&a.program)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let store = open(dir)?;
    let presence = store.join(&id)?;
    let mut child = program
        .command()
        .env("JOBDIR_INSTANCE", id.as_str())
        .env("JOBDIR_DIR", store.dir())
        .spawn()
        .map_err(|e| {
            fail(
                EXIT_FAILURE,
                format!("cannot start {}: {e}", program.name()),
            )
        })?;
    let mut forwarded = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if !forwarded && stop.load(Ordering::SeqCst) {
            // SAFETY: kill(2) on our own child, not yet reaped (its pid cannot be reused).
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            forwarded = true;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let lost = presence.is_lost();
    drop(presence);
    if lost {
        return Err(fail(
            EXIT_FAILURE,
            format!(
                "instance {id}: its presence was lost while {} ran (removed, or taken over after a stall)",
                program.name()
            ),
        ));
    }
    if !status.success() {
        let code = status.code().filter(|c| *c != 0).unwrap_or(EXIT_FAILURE);
        return Err(fail(
            code,
            format!("{} ended with {}", program.name(), describe(status)),
        ));
    }
    Ok(())
}

/// atributo's example allocator: the default rule's choice, persisted only for one instance.
struct OnlyFor(InstanceId);

impl AllocationRule for OnlyFor {
    fn choose(&self, job: &JobKey, available: &[InstanceInfo]) -> Option<Choice> {
        let mut choice = HashRule.choose(job, available)?;
        choice.persist = choice.instance == self.0;
        Some(choice)
    }
}

#[derive(Serialize)]
struct AllocationJson<'a> {
    job: &'a JobKey,
    #[serde(flatten)]
    allocation: &'a Allocation,
}

pub fn allocate(dir: &Path, a: AllocateArgs) -> anyhow::Result<()> {
    let job = JobKey::new(a.job)?;
    let only = a.only_for.map(InstanceId::new).transpose()?;
    let store = open(dir)?;
    let allocation = match only {
        Some(me) => store.allocate_with(&job, &OnlyFor(me))?,
        None => store.allocate(&job)?,
    };
    let mut out = io::stdout().lock();
    if a.json {
        let line = AllocationJson {
            job: &job,
            allocation: &allocation,
        };
        serde_json::to_writer(&mut out, &line)?;
        writeln!(out)?;
    } else {
        let how = if allocation.persisted {
            "persisted"
        } else if allocation.existing {
            "existing"
        } else {
            "not-persisted"
        };
        writeln!(out, "{} {how}", allocation.instance)?;
    }
    Ok(())
}

pub fn deallocate(dir: &Path, a: JobArg) -> anyhow::Result<()> {
    let job = JobKey::new(a.job)?;
    let freed = match open_existing(dir)? {
        Some(store) => store.deallocate(&job)?,
        None => None,
    };
    match freed {
        Some(_) => Ok(()),
        None => Err(fail(EXIT_NOT_FOUND, format!("job {job} is not allocated"))),
    }
}

pub fn allocation(dir: &Path, a: JobArg) -> anyhow::Result<()> {
    let job = JobKey::new(a.job)?;
    let instance = match open_existing(dir)? {
        Some(store) => store.instance(&job)?,
        None => None,
    };
    match instance {
        Some(i) => {
            writeln!(io::stdout().lock(), "{i}")?;
            Ok(())
        }
        None => Err(fail(EXIT_NOT_FOUND, format!("job {job} is not allocated"))),
    }
}
