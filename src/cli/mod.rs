//! The command line: parsing (clap), dispatch to one module per concern, and the mapping of
//! errors to one `error:` line and an exit status.
//!
//! Invariant kept here: the CLI holds no protocol logic — every change to the store goes through
//! the library — and a command that fails changes nothing: ids and JSON are validated before the
//! store is opened (or created).

mod args;
mod child;
mod control;
mod demo;
mod events;
mod groups;
mod instances;
mod jobs;
mod log;
mod lookup;
mod notify;
mod output;
mod pool;
mod progress;
mod shutdown;
mod status;
mod work;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use jobdir::{Error, Store};

/// Exit status of a usage error or bad input (invalid JSON, invalid id, bad option).
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the job does not exist.
pub const EXIT_NOT_FOUND: i32 = 3;
/// Exit status of `result` when the job is not fulfilled yet.
pub const EXIT_NOT_FULFILLED: i32 = 4;
/// Exit status of `result`/`wait` when the job finished without a result (failed, cancelled,
/// expired).
pub const EXIT_UNFULFILLED: i32 = 5;
/// Exit status of a timeout (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status of any other failure.
pub const EXIT_FAILURE: i32 = 1;

/// The store directory used when neither `--dir` nor `JOBDIR` is given.
const DEFAULT_DIR: &str = ".jobdir";

#[derive(Parser, Debug)]
#[command(
    name = "jobdir",
    version,
    about = "A resilient job store in one shared directory: create jobs, run workers, deliver results.",
    long_about = "A resilient job store in one shared directory.\n\n\
        Jobs, results and notification queues are files in one directory, written atomically and \
        claimed under heartbeated, fenced leases. Any number of processes, on one host or on \
        several hosts sharing a filesystem, can create jobs, run workers and deliver results, and \
        carry on after any of them crashes.\n\n\
        Start with `jobdir demo`. Exit status: 0 success, 1 failure, 2 bad usage or input, \
        3 no such job (or allocation, or group), 4 job not fulfilled yet (`result`), 5 job finished without a result (failed, cancelled, expired: `result`, `wait`), 124 timeout.",
    after_help = "The store is created on first use. Logs go to stderr (-v, -vv, or RUST_LOG)."
)]
struct Cli {
    /// Store directory [default: $JOBDIR, else ./.jobdir]
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a job from a JSON request and print its id
    #[command(
        long_about = "Create a job from a JSON request and print its id alone on one line.\n\n\
            The request is read from the REQUEST argument, or from stdin when it is absent or `-`. \
            The job is durable (fsynced) when the id is printed.\n\n\
            With --key KEY, while a job created with the same key has not finished (or, with \
            --keep-key, finished less than that long ago), no job is made and that job's id is \
            printed instead, exit 0 (--json tells which: {\"id\":..,\"existing\":true}); \
            processes creating with one key at once all print the same id. --group GROUP makes \
            the job a member of GROUP, for `jobdir wait-group`."
    )]
    Create(jobs::CreateArgs),
    /// Print everything known about a job as one JSON object
    #[command(
        long_about = "Print everything known about a job as one JSON object: id, state (pending, \
            running, fulfilled), priority, request, attempts, created_at, waiting (notification \
            targets) and, once fulfilled, fulfilled_at and the result (`result` when it is UTF-8 \
            text, else `result_base64`); while it runs, the latest `progress` its worker reported; `key` and `group` when it was created with them."
    )]
    Get(jobs::IdArg),
    /// Print a fulfilled job's result bytes exactly (exit 4 if not fulfilled yet)
    Result(jobs::IdArg),
    /// Wait until a job is fulfilled, then print its result bytes exactly
    #[command(
        long_about = "Block until the job is fulfilled (woken by file events, not a sleep loop), \
            then print its result bytes exactly. Exits 124 when --timeout passes first."
    )]
    Wait(jobs::WaitArgs),
    /// Run a program once per pulled job; its stdout becomes the job's result
    #[command(
        long_about = work::LONG_ABOUT,
        override_usage = "jobdir work [OPTIONS] -- <PROGRAM> [ARGS]..."
    )]
    Work(work::WorkArgs),
    /// Queue a notification target (JSON) on a job
    #[command(
        long_about = "Queue a notification target (any JSON value) on a job, before or after it \
            is fulfilled. Once the job has its result, `jobdir notify` delivers it to every \
            waiting target. Queueing an equal target twice keeps one."
    )]
    Queue(jobs::TargetArgs),
    /// Remove a waiting notification target from a job
    Unqueue(jobs::TargetArgs),
    /// Cancel a job that has not finished (a running one's worker is stopped)
    #[command(
        long_about = "Cancel a job that has not finished. A pending or delayed job is cancelled at \
            once; a running one's lease is ended, so its worker is told (`jobdir work` stops \
            PROGRAM) and its result is refused. Waiters get exit status 5. Cancelling a \
            finished job fails (exit 1)."
    )]
    Cancel(jobs::CancelArgs),
    /// Run a failed, cancelled or expired job again, with a fresh attempt budget
    Retry(jobs::IdArg),
    /// Run a program once per waiting notification target of fulfilled jobs
    #[command(
        long_about = notify::LONG_ABOUT,
        override_usage = "jobdir notify [OPTIONS] -- <PROGRAM> [ARGS]..."
    )]
    Notify(notify::NotifyArgs),
    /// List jobs, one `ID STATE` line each
    #[command(
        long_about = "List jobs in creation order, one `ID STATE` line each, or with --json one \
            JSON object per line as `jobdir get` prints it."
    )]
    Ls(jobs::LsArgs),
    /// Show counts per state and the age of the oldest pending job
    #[command(long_about = status::STATUS_ABOUT)]
    Status(status::StatusArgs),
    /// Delete a job in any state, with its result and waiting targets
    Remove(jobs::IdArg),
    /// Delete fulfilled jobs with no waiting targets, fulfilled longer ago than a duration
    #[command(
        long_about = "Delete fulfilled jobs that have no notification targets waiting and whose \
            result was written longer ago than --older-than, so that long-running stores do not \
            run out of inodes. Prints how many jobs were removed."
    )]
    Prune(jobs::PruneArgs),
    /// Print one JSON line per job state change, as it happens
    #[command(long_about = events::LONG_ABOUT)]
    Events(events::EventsArgs),
    /// Reclaim dead workers' leases, quarantine foreign files, remove stale temporaries
    #[command(long_about = status::RECOVER_ABOUT)]
    Recover(status::RecoverArgs),
    /// Run N worker processes, restart crashed ones, add up their statistics
    #[command(
        long_about = pool::LONG_ABOUT,
        override_usage = "jobdir pool [OPTIONS] -- <PROGRAM> [ARGS]..."
    )]
    Pool(pool::PoolArgs),
    /// Shared lookup tables: set, get, ls, rm
    #[command(long_about = lookup::LOOKUP_ABOUT)]
    Lookup(lookup::LookupArgs),
    /// Send pause, resume, drain or a custom JSON message to every worker
    #[command(long_about = lookup::BROADCAST_ABOUT)]
    Broadcast(lookup::BroadcastArgs),
    /// Show the store surviving a killed worker: jobs, worker processes, notifications
    #[command(long_about = demo::LONG_ABOUT)]
    Demo(demo::DemoArgs),
    /// A worker process of `jobdir demo` (internal)
    #[command(hide = true)]
    DemoWorker(demo::WorkerArgs),
    /// Instances that jobs are allocated to: available, unavailable, ls, jobs, join
    #[command(subcommand)]
    Instance(instances::InstanceCommand),
    /// Print the instance a job is allocated to, allocating it first if needed
    #[command(
        long_about = "Print `INSTANCE persisted` (allocated now), `INSTANCE existing` (allocated \
            before, kept even if the instance is unavailable) or `INSTANCE not-persisted` (with \
            --only-for another instance). A new allocation goes to an available instance chosen \
            by atributo's rule: MD5 of the job key, its first 4 bytes as a big-endian integer, \
            modulo the number of available instances sorted by name. Processes allocating the \
            same job at once agree. Exits 1 if no instance is available."
    )]
    Allocate(instances::AllocateArgs),
    /// Wait until every job of a group has finished, printing one JSON line per job
    #[command(long_about = groups::WAIT_GROUP_ABOUT)]
    WaitGroup(groups::WaitGroupArgs),
    /// Groups of jobs (`create --group`): ls
    #[command(subcommand)]
    Group(groups::GroupCommand),
    /// Remove a job's allocation (exit 3 if it has none)
    Deallocate(instances::JobArg),
    /// Print the instance a job is allocated to (exit 3 if none); allocates nothing
    Allocation(instances::JobArg),
}

/// A failure with a chosen exit status; its message is the whole `error:` line.
#[derive(Debug)]
pub struct Failure {
    code: i32,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// An error that exits with `code`.
pub fn fail(code: i32, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        code,
        message: message.into(),
    })
}

/// A usage or input error (exit 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    fail(EXIT_USAGE, message)
}

/// Parses the command line and runs the command; returns the process exit status.
pub fn run() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's message starts with `error:`; help and version exit 0.
            let _ = e.print();
            return e.exit_code();
        }
    };
    log::init(cli.verbose);
    let result = dispatch(cli);
    let flushed = io::Write::flush(&mut io::stdout());
    match result.and(flushed.map_err(anyhow::Error::from)) {
        Ok(()) => 0,
        Err(e) => report(&e),
    }
}

/// Prints the one `error:` line and picks the exit status.
fn report(e: &anyhow::Error) -> i32 {
    if e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
    {
        // The reader of our output went away (`jobdir ls | head`): nothing to say.
        return 0;
    }
    let message = one_line(e);
    log::suspend_bar(|| eprintln!("error: {message}"));
    exit_code(e)
}

/// The error and its causes on one line, each cause once (a library error may already quote
/// its source in its own message).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}

fn exit_code(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(err) = cause.downcast_ref::<Error>() {
            return match err {
                Error::InvalidId(_)
                | Error::InvalidName { .. }
                | Error::InvalidOption(_)
                | Error::TooLarge { .. }
                | Error::Encode { .. } => EXIT_USAGE,
                Error::NotFound(_) | Error::GroupNotFound(_) => EXIT_NOT_FOUND,
                Error::Timeout => EXIT_TIMEOUT,
                Error::Unfulfilled { .. } => EXIT_UNFULFILLED,
                _ => EXIT_FAILURE,
            };
        }
    }
    EXIT_FAILURE
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    // Only an explicit --dir sends the demo somewhere: $JOBDIR is the user's real store.
    let explicit = cli.dir.is_some();
    let dir = store_dir(cli.dir);
    match cli.command {
        Command::Create(a) => jobs::create(&dir, a),
        Command::Get(a) => jobs::get(&dir, a),
        Command::Result(a) => jobs::result(&dir, a),
        Command::Wait(a) => jobs::wait(&dir, a),
        Command::Work(a) => work::run(&dir, a),
        Command::Queue(a) => jobs::queue(&dir, a),
        Command::Unqueue(a) => jobs::unqueue(&dir, a),
        Command::Cancel(a) => jobs::cancel(&dir, a),
        Command::Retry(a) => jobs::retry(&dir, a),
        Command::Notify(a) => notify::run(&dir, a),
        Command::Ls(a) => jobs::ls(&dir, a),
        Command::Status(a) => status::status(&dir, a),
        Command::Remove(a) => jobs::remove(&dir, a),
        Command::Prune(a) => jobs::prune(&dir, a),
        Command::Recover(a) => status::recover(&dir, a),
        Command::Events(a) => events::run(&dir, a),
        Command::Pool(a) => pool::run(&dir, cli.verbose, a),
        Command::Lookup(a) => lookup::lookup(&dir, a),
        Command::Broadcast(a) => lookup::broadcast(&dir, a),
        Command::Demo(a) => demo::run(explicit.then_some(dir.as_path()), a),
        Command::DemoWorker(a) => demo::worker(&dir, a),
        Command::Instance(c) => instances::instance(&dir, c),
        Command::Allocate(a) => instances::allocate(&dir, a),
        Command::WaitGroup(a) => groups::wait_group(&dir, a),
        Command::Group(c) => groups::group(&dir, c),
        Command::Deallocate(a) => instances::deallocate(&dir, a),
        Command::Allocation(a) => instances::allocation(&dir, a),
    }
}

/// `--dir`, else `$JOBDIR`, else `./.jobdir`; made absolute (programs run by `work` and
/// `notify` get it as JOBDIR_DIR, and the library cannot create a one-component relative path).
fn store_dir(flag: Option<PathBuf>) -> PathBuf {
    let dir = flag
        .or_else(|| {
            std::env::var_os("JOBDIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Opens the store, creating it on first use.
pub fn open(dir: &Path) -> anyhow::Result<Store> {
    Ok(Store::open(dir)?)
}

/// Opens the store only if it already exists (or cannot be created silently): `None` when the
/// directory is missing or empty, so that commands about an existing job create nothing.
pub fn open_existing(dir: &Path) -> anyhow::Result<Option<Store>> {
    if std::fs::symlink_metadata(dir.join("jobdir.json")).is_err() {
        let empty = match std::fs::read_dir(dir) {
            Err(e) => e.kind() == io::ErrorKind::NotFound,
            Ok(mut entries) => entries.next().is_none(),
        };
        if empty {
            return Ok(None);
        }
        // Not empty, or not a directory: let the library say what it is.
    }
    Ok(Some(Store::open(dir)?))
}

/// Opens an existing store to act on job `id`; a missing store has no such job.
pub fn open_for_job(dir: &Path, id: &jobdir::JobId) -> anyhow::Result<Store> {
    open_existing(dir)?.ok_or_else(|| Error::NotFound(*id).into())
}
