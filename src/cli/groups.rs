//! `jobdir wait-group` and `jobdir group ls`: jobs created in one group (`create --group`,
//! FORMAT.md §12.5).
//!
//! Invariant kept here: the group name is checked before the store is opened, and these
//! commands never create a store.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use clap::{Args, Subcommand};
use jobdir::{Error, GroupId, JobInfo};
use serde::Serialize;

use super::output::{print_job, rfc3339};
use super::{args, open_existing};

pub const WAIT_GROUP_ABOUT: &str = "Wait until every job of a group (made with `jobdir create \
    --group GROUP`) has finished, printing one JSON line per job as it finishes (jobs already \
    finished first): {\"id\":..,\"state\":..,\"finished_at\":..} with `result` (or \
    `result_base64` when it is not UTF-8) for a fulfilled job and `error` for a failed, \
    cancelled or expired one, as `jobdir get` prints them.\n\n\
    Exits 0 when all have finished (whatever their states), 124 when --timeout passes first \
    (the lines printed so far stand), 3 if no job was ever created in the group. Jobs added to \
    the group while it waits are waited for too.";

#[derive(Args, Debug)]
pub struct WaitGroupArgs {
    /// The group
    #[arg(value_name = "GROUP")]
    group: String,
    /// Give up after this many seconds (fractions allowed) and exit 124; default: wait forever
    #[arg(long, value_name = "SECONDS", value_parser = args::seconds)]
    timeout: Option<Duration>,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List the groups, or with GROUP its jobs as `ID STATE` lines (exit 3 if no such group)
    Ls {
        /// The group
        #[arg(value_name = "GROUP")]
        group: Option<String>,
        /// With GROUP: one JSON object per job, as `jobdir get` prints it
        #[arg(long)]
        json: bool,
    },
}

/// One finished job as `wait-group` prints it: the fields of `jobdir get` that say how it
/// ended.
#[derive(Serialize)]
struct Item<'a> {
    id: String,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    result_base64: Option<String>,
}

fn print_item(out: &mut impl Write, info: &JobInfo) -> anyhow::Result<()> {
    let bytes = info.result.as_deref();
    let text = bytes.and_then(|b| std::str::from_utf8(b).ok());
    let item = Item {
        id: info.id.to_string(),
        state: info.state.as_str(),
        finished_at: info.finished_at.map(rfc3339),
        error: info.error.as_deref(),
        result: text,
        result_base64: match (bytes, text) {
            (Some(b), None) => Some(base64::engine::general_purpose::STANDARD.encode(b)),
            _ => None,
        },
    };
    serde_json::to_writer(&mut *out, &item)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

pub fn wait_group(dir: &Path, a: WaitGroupArgs) -> anyhow::Result<()> {
    let group = GroupId::new(a.group)?;
    let store = open_existing(dir)?.ok_or_else(|| Error::GroupNotFound(group.clone()))?;
    let mut out = io::stdout().lock();
    let mut broken = None;
    let waited =
        store.wait_group_each(
            &group,
            a.timeout.unwrap_or(Duration::MAX),
            |info| match print_item(&mut out, &info) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    broken = Some(e);
                    ControlFlow::Break(())
                }
            },
        );
    if let Some(e) = broken {
        return Err(e);
    }
    Ok(waited?)
}

pub fn group(dir: &Path, c: GroupCommand) -> anyhow::Result<()> {
    match c {
        GroupCommand::Ls { group, json } => {
            let group = group.map(GroupId::new).transpose()?;
            let Some(store) = open_existing(dir)? else {
                return match group {
                    Some(g) => Err(Error::GroupNotFound(g).into()),
                    None => Ok(()),
                };
            };
            let mut out = io::BufWriter::new(io::stdout().lock());
            match group {
                None => {
                    for g in store.groups()? {
                        writeln!(out, "{g}")?;
                    }
                }
                Some(g) => {
                    for id in store.group_members(&g)? {
                        let info = match store.get(&id) {
                            Ok(info) => info,
                            Err(Error::NotFound(_)) => continue, // removed meanwhile
                            Err(e) => return Err(e.into()),
                        };
                        if json {
                            print_job(&mut out, &info)?;
                        } else {
                            writeln!(out, "{} {}", info.id, info.state)?;
                        }
                    }
                }
            }
            out.flush()?;
            Ok(())
        }
    }
}
