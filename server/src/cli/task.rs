//! `coffer task ...`: which secrets a task gets as files, and on which
//! node it runs. `attach` adds secrets to a task (creating it), `detach`
//! removes the task, `ls` and `inspect` show tasks (never secret data).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::Format;
use crate::client::{Connection, Target};
use crate::pb;
use crate::status::failed;

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Attaches secrets to TASK (creating it), each delivered as one file
    /// when the task's secrets are mounted. All or nothing: one bad
    /// --secret records none.
    Attach {
        task: String,
        /// The node that runs the task: its id or a prefix of it (`coffer
        /// node ls`). Default: the node that serves the command.
        #[arg(long)]
        node: Option<String>,
        /// source=NAME[@VERSION][,target=FILE][,uid=U][,gid=G][,mode=M]
        /// (repeatable; a bare NAME is source=NAME). Defaults: the
        /// current version, followed through rotations; target = the
        /// secret's name; uid 0, gid 0; mode 0444 (octal).
        #[arg(long = "secret", value_name = "SPEC", required = true, value_parser = parse_spec)]
        secrets: Vec<pb::SecretAttachment>,
    },
    /// Removes TASK and its references to secrets.
    Detach { task: String },
    /// Lists tasks: NAME, NODE, SECRETS (target=secret[@pinned version]).
    Ls {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Shows tasks as JSON.
    Inspect {
        #[arg(required = true)]
        tasks: Vec<String>,
    },
}

/// Parses `source=NAME[@V][,target=F][,uid=U][,gid=G][,mode=M]`.
pub fn parse_spec(text: &str) -> Result<pb::SecretAttachment, String> {
    let mut a = pb::SecretAttachment::default();
    let mut seen = std::collections::BTreeSet::new();
    for (i, field) in text.split(',').enumerate() {
        let (key, value) = match field.split_once('=') {
            Some(kv) => kv,
            None if i == 0 => ("source", field),
            None => return Err(format!("{field:?} in {text:?}: fields are KEY=VALUE")),
        };
        if !seen.insert(key) {
            return Err(format!("{key} is given twice in {text:?}"));
        }
        let number = |what: &str| {
            value
                .parse::<u32>()
                .map_err(|_| format!("{what}={value:?}: a number from 0 to 4294967294"))
        };
        match key {
            "source" => {
                let (name, version) = match value.rsplit_once('@') {
                    Some((name, v)) => match v.parse::<u64>() {
                        Ok(v) if v > 0 => (name, v),
                        _ => {
                            return Err(format!(
                                "source={value:?}: the version after '@' is a number from 1"
                            ))
                        }
                    },
                    None => (value, 0),
                };
                if name.is_empty() {
                    return Err(format!("{text:?} names no secret"));
                }
                a.source = name.to_string();
                a.version = version;
            }
            "target" => a.target = value.to_string(),
            "uid" => a.uid = number("uid")?,
            "gid" => a.gid = number("gid")?,
            "mode" => {
                let digits = value.strip_prefix("0o").unwrap_or(value);
                match u32::from_str_radix(digits, 8) {
                    Ok(mode) if !digits.is_empty() && !digits.starts_with('+') => {
                        a.mode = Some(mode)
                    }
                    _ => return Err(format!("mode={value:?}: an octal mode, as 0400")),
                }
            }
            _ => {
                return Err(format!(
                    "{key:?} in {text:?}: the fields are source, target, uid, gid and mode"
                ))
            }
        }
    }
    if a.source.is_empty() {
        return Err(format!("{text:?} names no secret: give source=NAME"));
    }
    Ok(a)
}

fn to_json(t: &pb::Task) -> serde_json::Value {
    serde_json::json!({
        "name": t.name,
        "node": t.node,
        "created": super::secret::timestamp(t.created_unix),
        "updated": super::secret::timestamp(t.updated_unix),
        "secrets": t.secrets.iter().map(|s| serde_json::json!({
            "secret_id": s.secret_id,
            "secret_name": s.secret_name,
            "version": if s.version == 0 { serde_json::Value::Null } else { s.version.into() },
            "target": s.target,
            "uid": s.uid,
            "gid": s.gid,
            "mode": format!("{:04o}", s.mode),
        })).collect::<Vec<_>>(),
    })
}

pub async fn run(target: &Target, cmd: TaskCommand) -> Result<ExitCode> {
    let mut c = Connection::open(target).await?;
    let outcome = command(&mut c, cmd).await;
    c.close().await?;
    outcome
}

async fn command(c: &mut Connection, cmd: TaskCommand) -> Result<ExitCode> {
    match cmd {
        TaskCommand::Attach {
            task,
            node,
            secrets,
        } => {
            let request = pb::AttachRequest {
                task,
                node: node.unwrap_or_default(),
                secrets,
            };
            let answer = c.tasks.attach(request).await.map_err(failed)?;
            let task = task_of(answer.into_inner())?;
            println!("{}", task.name);
        }
        TaskCommand::Detach { task } => {
            let answer = c.tasks.detach(pb::TaskRef { task }).await.map_err(failed)?;
            println!("{}", task_of(answer.into_inner())?.name);
        }
        TaskCommand::Ls { format } => {
            let answer = c
                .tasks
                .list_tasks(pb::ListTasksRequest {})
                .await
                .map_err(failed)?;
            let tasks = answer.into_inner().tasks;
            if format == Format::Json {
                let all: Vec<_> = tasks.iter().map(to_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!("{:<32}  {:<16}  SECRETS", "NAME", "NODE");
                for t in &tasks {
                    let secrets: Vec<String> = t
                        .secrets
                        .iter()
                        .map(|s| match s.version {
                            0 => format!("{}={}", s.target, s.secret_name),
                            v => format!("{}={}@{v}", s.target, s.secret_name),
                        })
                        .collect();
                    println!("{:<32}  {:<16}  {}", t.name, t.node, secrets.join(","));
                }
            }
        }
        TaskCommand::Inspect { tasks } => {
            let mut found = Vec::new();
            let mut failures = 0;
            for task in tasks {
                match c.tasks.inspect_task(pb::TaskRef { task }).await {
                    Ok(answer) => found.push(to_json(&task_of(answer.into_inner())?)),
                    Err(e) => {
                        eprintln!("coffer: {}", failed(e));
                        failures += 1;
                    }
                }
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::Value::Array(found))?
            );
            if failures > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dir` as an absolute path, for the server (whose working directory is
/// its own).
fn absolute(dir: &Path) -> Result<String> {
    let path = std::path::absolute(dir)
        .with_context(|| format!("{}: not a usable path", dir.display()))?;
    match path.to_str() {
        Some(text) => Ok(text.to_string()),
        None => bail!("{}: the path is not UTF-8", dir.display()),
    }
}

/// `coffer mount TASK DIR`: prints the directory.
pub async fn mount(target: &Target, task: String, dir: &Path) -> Result<ExitCode> {
    let dir = absolute(dir)?;
    let mut c = Connection::open(target).await?;
    let outcome = c.tasks.mount(pb::MountRequest { task, dir }).await;
    c.close().await?;
    let mounted = outcome.map_err(failed)?.into_inner();
    println!("{}", mounted.dir);
    Ok(ExitCode::SUCCESS)
}

/// `coffer unmount DIR`: prints the task that was mounted there.
pub async fn unmount(target: &Target, dir: &Path) -> Result<ExitCode> {
    let dir = absolute(dir)?;
    let mut c = Connection::open(target).await?;
    let outcome = c.tasks.unmount(pb::UnmountRequest { dir }).await;
    c.close().await?;
    println!("{}", outcome.map_err(failed)?.into_inner().task);
    Ok(ExitCode::SUCCESS)
}

fn task_of(answer: pb::TaskResponse) -> Result<pb::Task> {
    match answer.task {
        Some(task) => Ok(task),
        None => bail!("the server answered without the task"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_docker_writes_them() {
        let a = parse_spec("source=db@3,target=db_password,uid=1000,gid=50,mode=0400").unwrap();
        assert_eq!(
            (a.source.as_str(), a.version, a.target.as_str()),
            ("db", 3, "db_password")
        );
        assert_eq!((a.uid, a.gid, a.mode), (1000, 50, Some(0o400)));
        let bare = parse_spec("my_password").unwrap();
        assert_eq!(
            (bare.source.as_str(), bare.version, bare.mode),
            ("my_password", 0, None)
        );
        for bad in [
            "",
            "source=",
            "target=x",
            "source=db@0",
            "source=db@x",
            "source=db,mode=0999",
            "source=db,mode=",
            "source=db,uid=-1",
            "source=db,size=3",
            "source=db,source=x",
            "source=db,junk",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad:?}");
        }
    }
}
