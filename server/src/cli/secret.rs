//! `coffer secret ...`, shaped like `docker secret`: create, ls, inspect,
//! rotate, rm. Secret data goes in (from a file or standard input) and
//! never comes out: every answer is metadata. Every failure exits non-zero
//! with one line per failure on standard error.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use coffer_vault::secrets::DATA_BYTES_MAX;
use zeroize::Zeroizing;

use super::Format;
use crate::client::{Connection, Target};
use crate::pb;
use crate::status::failed;

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Creates a secret from FILE, or from standard input (`-` or no
    /// FILE); prints its id.
    Create {
        /// A label, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        name: String,
        file: Option<String>,
    },
    /// Lists secrets: ID, NAME, VERSION, CREATED, UPDATED.
    Ls {
        /// Only the ids.
        #[arg(short, long)]
        quiet: bool,
        /// name=PREFIX, id=PREFIX, label=KEY or label=KEY=VALUE
        /// (repeatable: filters on one field match any, on different
        /// fields all).
        #[arg(long = "filter", value_name = "FIELD=VALUE", value_parser = parse_filter)]
        filters: Vec<(String, String)>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Shows secrets' metadata (never their data): JSON, or text with
    /// --pretty.
    Inspect {
        #[arg(long)]
        pretty: bool,
        /// Names, ids or id prefixes.
        #[arg(required = true)]
        secrets: Vec<String>,
    },
    /// Adds a new version from FILE or standard input; prints the new
    /// version number. The last ten versions are kept.
    Rotate { name: String, file: Option<String> },
    /// Removes secrets and all their versions; prints each id.
    Rm {
        /// Names, ids or id prefixes.
        #[arg(required = true)]
        secrets: Vec<String>,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?}: a label is KEY=VALUE")),
    }
}

fn parse_filter(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((field @ ("name" | "id" | "label"), value)) => {
            Ok((field.to_string(), value.to_string()))
        }
        _ => Err(format!(
            "{text:?}: a filter is name=PREFIX, id=PREFIX, label=KEY or label=KEY=VALUE"
        )),
    }
}

/// The data from `file`, or from standard input for `-` or none; at most
/// one byte more than a secret may hold, so that the server says why.
fn read_data(file: Option<&str>) -> Result<Zeroizing<Vec<u8>>> {
    let mut data = Zeroizing::new(Vec::new());
    let limit = DATA_BYTES_MAX as u64 + 1;
    match file {
        None | Some("-") => {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut data)
                .context("reading the secret from standard input")?;
        }
        Some(path) => {
            let path = PathBuf::from(path);
            std::fs::File::open(&path)
                .and_then(|f| f.take(limit).read_to_end(&mut data))
                .with_context(|| format!("reading {}", path.display()))?;
        }
    }
    Ok(data)
}

/// Seconds since the epoch as RFC 3339 UTC (the civil-from-days
/// algorithm of Howard Hinnant's date library).
pub(super) fn timestamp(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn to_json(s: &pb::Secret) -> serde_json::Value {
    let labels: BTreeMap<&String, &String> = s.labels.iter().collect();
    serde_json::json!({
        "id": s.id,
        "name": s.name,
        "labels": labels,
        "version": s.version,
        "created": timestamp(s.created_unix),
        "updated": timestamp(s.updated_unix),
        "versions": s.versions.iter().map(|v| serde_json::json!({
            "version": v.version,
            "created": timestamp(v.created_unix),
            "size": v.size,
        })).collect::<Vec<_>>(),
    })
}

fn matches(s: &pb::Secret, filters: &[(String, String)]) -> bool {
    let mut by_field: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (field, value) in filters {
        by_field.entry(field).or_default().push(value);
    }
    by_field.iter().all(|(field, values)| {
        values.iter().any(|value| match *field {
            "name" => s.name.starts_with(value),
            "id" => s.id.starts_with(value),
            _ => match value.split_once('=') {
                Some((k, v)) => s.labels.get(k).is_some_and(|have| have == v),
                None => s.labels.contains_key(*value),
            },
        })
    })
}

pub async fn run(target: &Target, cmd: SecretCommand) -> Result<ExitCode> {
    let mut c = Connection::open(target).await?;
    let outcome = command(&mut c, cmd).await;
    c.close().await?;
    outcome
}

async fn command(c: &mut Connection, cmd: SecretCommand) -> Result<ExitCode> {
    match cmd {
        SecretCommand::Create { labels, name, file } => {
            let data = read_data(file.as_deref())?;
            let request = pb::CreateSecretRequest {
                name,
                labels: labels.into_iter().collect(),
                data: data.to_vec(),
            };
            let answer = c.secrets.create_secret(request).await.map_err(failed)?;
            println!("{}", secret_of(answer.into_inner())?.id);
        }
        SecretCommand::Ls {
            quiet,
            filters,
            format,
        } => {
            let answer = c
                .secrets
                .list_secrets(pb::ListSecretsRequest {})
                .await
                .map_err(failed)?;
            let mut secrets: Vec<pb::Secret> = answer
                .into_inner()
                .secrets
                .into_iter()
                .filter(|s| matches(s, &filters))
                .collect();
            secrets.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                for s in &secrets {
                    println!("{}", s.id);
                }
            } else if format == Format::Json {
                let all: Vec<_> = secrets.iter().map(to_json).collect();
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!(
                    "{:<25}  {:<32}  {:<7}  {:<20}  UPDATED",
                    "ID", "NAME", "VERSION", "CREATED"
                );
                for s in &secrets {
                    println!(
                        "{:<25}  {:<32}  {:<7}  {:<20}  {}",
                        s.id,
                        s.name,
                        s.version,
                        timestamp(s.created_unix),
                        timestamp(s.updated_unix)
                    );
                }
            }
        }
        SecretCommand::Inspect { pretty, secrets } => {
            let mut found = Vec::new();
            let mut failures = 0;
            for name in secrets {
                let request = pb::SecretRef { secret: name };
                match c.secrets.inspect_secret(request).await.map_err(failed) {
                    Ok(answer) => found.push(secret_of(answer.into_inner())?),
                    Err(e) => {
                        eprintln!("coffer: {e}");
                        failures += 1;
                    }
                }
            }
            if pretty {
                for s in &found {
                    println!(
                        "ID:        {}\nName:      {}\nVersion:   {}",
                        s.id, s.name, s.version
                    );
                    println!(
                        "Created:   {}\nUpdated:   {}",
                        timestamp(s.created_unix),
                        timestamp(s.updated_unix)
                    );
                    for (k, v) in &s.labels {
                        println!("Label:     {k}={v}");
                    }
                    for v in &s.versions {
                        println!(
                            "Version {}: {} bytes, {}",
                            v.version,
                            v.size,
                            timestamp(v.created_unix)
                        );
                    }
                    println!();
                }
            } else {
                let all: Vec<_> = found.iter().map(to_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::Value::Array(all))?
                );
            }
            if failures > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        SecretCommand::Rotate { name, file } => {
            let data = read_data(file.as_deref())?;
            let request = pb::RotateSecretRequest {
                secret: name,
                data: data.to_vec(),
            };
            let answer = c.secrets.rotate_secret(request).await.map_err(failed)?;
            println!("{}", secret_of(answer.into_inner())?.version);
        }
        SecretCommand::Rm { secrets } => {
            let mut failures = 0;
            for name in secrets {
                let request = pb::SecretRef { secret: name };
                match c.secrets.remove_secret(request).await.map_err(failed) {
                    Ok(answer) => println!("{}", secret_of(answer.into_inner())?.id),
                    Err(e) => {
                        eprintln!("coffer: {e}");
                        failures += 1;
                    }
                }
            }
            if failures > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn secret_of(answer: pb::SecretResponse) -> Result<pb::Secret> {
    match answer.secret {
        Some(secret) => Ok(secret),
        None => bail!("the server answered without the secret"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(timestamp(1_796_330_096), "2026-12-03T20:34:56Z");
    }
}
