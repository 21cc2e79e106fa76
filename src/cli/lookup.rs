//! `jobdir lookup set|get|ls|rm` (shared lookup tables) and `jobdir broadcast` (control
//! messages to every worker).
//!
//! Invariant kept here: input (names, keys, JSON, the message) is checked before the store is
//! opened, and commands that only read never create a store.

use std::io::{self, Write};
use std::path::Path;

use clap::{Args, Subcommand};
use jobdir::{Control, Store};

use super::{EXIT_NOT_FOUND, args, fail, open, open_existing, usage};

pub const LOOKUP_ABOUT: &str = "Shared lookup tables: small named maps from a text key to a \
    JSON value, kept in the store (DIR/lookups/) for every process to read, such as reference \
    data a worker's PROGRAM needs (it finds the store in $JOBDIR).\n\n\
    A table name is 1 to 128 ASCII letters, digits, '_', '-' or '.', not starting with '.'; a \
    key is any text of 1 to 1024 bytes without control characters. `set` replaces a value \
    atomically: a reader sees the old value or the new one.\n\n\
    Example: jobdir lookup set fruits a '\"apple\"' && jobdir lookup get fruits a";

pub const BROADCAST_ABOUT: &str = "Send a control message to every `jobdir work` and `jobdir \
    pool` running on the store, on any host, and print its id.\n\n\
    pause: finish running jobs, pull no more until resume (a worker that starts later is \
    paused too: the latest pause or resume applies). resume: pull again. drain: finish running \
    jobs, then exit 0 (a pool stops when its workers did); workers started later are not \
    affected. Any other JSON value is a custom message: each running worker appends it, as one \
    line {\"at\":..,\"id\":..,\"message\":<JSON>}, to the file named by $JOBDIR_CONTROL in its \
    PROGRAM's environment.\n\n\
    Messages are files in DIR/control/; those older than an hour are removed by the next \
    broadcast or recover (the latest pause or resume is kept).\n\n\
    Example: jobdir broadcast pause; jobdir broadcast '{\"reload\": \"prices\"}'";

#[derive(Args, Debug)]
pub struct LookupArgs {
    #[command(subcommand)]
    command: LookupCommand,
}

#[derive(Subcommand, Debug)]
enum LookupCommand {
    /// Set KEY in table NAME to VALUE (JSON; from stdin when absent or `-`)
    Set {
        /// The table
        name: String,
        /// The key
        key: String,
        /// The value, as JSON
        value: Option<String>,
    },
    /// Print the value of KEY in table NAME as JSON (exit 3 if absent)
    Get {
        /// The table
        name: String,
        /// The key
        key: String,
    },
    /// List the tables, or with NAME that table's entries as `KEY<TAB>VALUE` lines
    Ls {
        /// The table
        name: Option<String>,
        /// With NAME: print the table as one JSON object
        #[arg(long)]
        json: bool,
    },
    /// Remove KEY from table NAME (exit 3 if absent)
    Rm {
        /// The table
        name: String,
        /// The key
        key: String,
    },
}

#[derive(Args, Debug)]
pub struct BroadcastArgs {
    /// pause, resume, drain, or any JSON value (a custom message)
    message: String,
}

pub fn lookup(dir: &Path, a: LookupArgs) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match a.command {
        LookupCommand::Set { name, key, value } => {
            Store::check_lookup_names(&name, &key)?;
            let value = args::json_or_stdin(value.as_deref(), "VALUE")?;
            open(dir)?.lookup_set(&name, &key, &value)?;
        }
        LookupCommand::Get { name, key } => {
            Store::check_lookup_names(&name, &key)?;
            let value = match open_existing(dir)? {
                Some(store) => store.lookup_get(&name, &key)?,
                None => None,
            };
            let value = value.ok_or_else(|| absent(&name, &key))?;
            serde_json::to_writer(&mut out, &value)?;
            writeln!(out)?;
        }
        LookupCommand::Ls { name: None, .. } => {
            if let Some(store) = open_existing(dir)? {
                for table in store.lookup_tables()? {
                    writeln!(out, "{table}")?;
                }
            }
        }
        LookupCommand::Ls {
            name: Some(name),
            json,
        } => {
            Store::check_lookup_names(&name, "-")?;
            let table = match open_existing(dir)? {
                Some(store) => store.lookup_table(&name)?,
                None => Default::default(),
            };
            if json {
                serde_json::to_writer(&mut out, &table)?;
                writeln!(out)?;
            } else {
                for (key, value) in &table {
                    writeln!(out, "{key}\t{value}")?;
                }
            }
        }
        LookupCommand::Rm { name, key } => {
            Store::check_lookup_names(&name, &key)?;
            let removed = match open_existing(dir)? {
                Some(store) => store.lookup_remove(&name, &key)?,
                None => false,
            };
            if !removed {
                return Err(absent(&name, &key));
            }
        }
    }
    Ok(())
}

fn absent(name: &str, key: &str) -> anyhow::Error {
    fail(
        EXIT_NOT_FOUND,
        format!("no key {key:?} in lookup table {name:?}"),
    )
}

pub fn broadcast(dir: &Path, a: BroadcastArgs) -> anyhow::Result<()> {
    let message = match a.message.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "drain" => Control::Drain,
        text => Control::from_json(serde_json::from_str(text).map_err(|e| {
            usage(format!(
                "MESSAGE must be pause, resume, drain or valid JSON: {e}"
            ))
        })?),
    };
    let sent = open(dir)?.broadcast(&message)?;
    writeln!(io::stdout().lock(), "{}", sent.id)?;
    Ok(())
}
