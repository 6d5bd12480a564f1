//! `coffer kv ...`: each command parses its arguments, makes its gRPC
//! calls and formats the answer. Exit codes: 0 done, 1 the key or lease
//! does not exist, 2 any other failure (one line on standard error).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{KvCommand, LeaseCommand};
use crate::client::{Connection, Target};
use crate::pb;
use crate::signals::Interrupts;
use crate::status::{failed, Failed};

/// Standard input, at most one byte more than a request may carry.
fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .take(coffer_store::MAX_REQUEST_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading standard input")?;
    Ok(buf)
}

pub async fn run(target: &Target, cmd: KvCommand) -> Result<ExitCode> {
    // A lease command on a lease that does not exist exits 1 (as `get`
    // and `del` of a missing key); anything else that is not found, such
    // as a put's lease, is a failure.
    let lease_command = matches!(cmd, KvCommand::Lease(_));
    let mut connection = Connection::open(target).await?;
    let result = command(&mut connection, cmd).await;
    let closed = connection.close().await;
    let code = match result {
        Ok(code) => code,
        Err(e) => match e.downcast_ref::<Failed>() {
            Some(f) if lease_command && f.is_not_found() => {
                eprintln!("coffer: {f}");
                ExitCode::FAILURE
            }
            _ => return Err(e),
        },
    };
    closed?;
    Ok(code)
}

fn not_found(key: &str) -> ExitCode {
    eprintln!("coffer: key {key:?} not found");
    ExitCode::FAILURE
}

async fn command(c: &mut Connection, cmd: KvCommand) -> Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match cmd {
        KvCommand::Get { stale, key } => {
            let request = pb::GetRequest {
                key: key.clone().into_bytes(),
                stale,
            };
            match c.kv.get(request).await.map_err(failed)?.into_inner().kv {
                Some(kv) => out.write_all(&kv.value)?,
                None => return Ok(not_found(&key)),
            }
        }
        KvCommand::Put { lease, key, value } => {
            let value = match value.as_deref() {
                None | Some("-") => read_stdin()?,
                Some(v) => v.as_bytes().to_vec(),
            };
            if value.len() > coffer_store::MAX_REQUEST_BYTES {
                bail!(
                    "value is larger than the {} byte request limit",
                    coffer_store::MAX_REQUEST_BYTES
                );
            }
            let request = pb::PutRequest {
                key: key.into_bytes(),
                value,
                prev_kv: false,
                lease: lease.unwrap_or(0),
            };
            let put = c.kv.put(request).await.map_err(failed)?.into_inner();
            writeln!(out, "{}", put.revision)?;
        }
        KvCommand::Del { prefix: true, key } => {
            let prefix = key.into_bytes();
            let request = pb::DeleteRangeRequest {
                range: Some(pb::KeyRange {
                    end: coffer_store::prefix_end(&prefix),
                    start: prefix,
                }),
                prev_kv: false,
            };
            let deleted = c.kv.delete_range(request).await.map_err(failed)?;
            writeln!(out, "{}", deleted.into_inner().deleted)?;
        }
        KvCommand::Del { prefix: false, key } => {
            let request = pb::DeleteRequest {
                key: key.clone().into_bytes(),
                prev_kv: false,
            };
            if !c
                .kv
                .delete(request)
                .await
                .map_err(failed)?
                .into_inner()
                .deleted
            {
                return Ok(not_found(&key));
            }
        }
        KvCommand::Ls {
            limit,
            keys_only,
            revision,
            stale,
            prefix,
        } => {
            let listing = Listing {
                limit,
                keys_only,
                revision,
                stale,
            };
            ls(c, &mut out, listing, prefix).await?
        }
        KvCommand::Lease(cmd) => return lease(c, cmd, &mut out).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// What `kv ls` was asked for.
#[derive(Debug)]
struct Listing {
    limit: usize,
    keys_only: bool,
    revision: u64,
    stale: bool,
}

/// Lists a prefix page by page, every page at the first one's revision so
/// that the listing is one consistent view however long it is.
async fn ls(
    c: &mut Connection,
    out: &mut impl Write,
    listing: Listing,
    prefix: String,
) -> Result<()> {
    let Listing {
        limit,
        keys_only,
        mut revision,
        stale,
    } = listing;
    let prefix = prefix.into_bytes();
    let end = coffer_store::prefix_end(&prefix);
    let mut start = prefix;
    let mut shown = 0usize;
    loop {
        let left = if limit == 0 { 0 } else { limit - shown };
        let request = pb::RangeRequest {
            range: Some(pb::KeyRange {
                start: start.clone(),
                end: end.clone(),
            }),
            limit: left as u64,
            keys_only,
            count_only: false,
            revision,
            stale,
        };
        let page = c.kv.range(request).await.map_err(failed)?.into_inner();
        revision = page.revision;
        for kv in &page.kvs {
            write!(out, "{}", kv.key.escape_ascii())?;
            if !keys_only {
                write!(out, "\t{}", kv.value.escape_ascii())?;
            }
            writeln!(out)?;
        }
        shown += page.kvs.len();
        match page.next {
            Some(next) if page.more && (limit == 0 || shown < limit) => start = next,
            _ => {
                if page.more {
                    // `count` is the whole range from this page's start.
                    let not_shown = page.count.saturating_sub(page.kvs.len() as u64);
                    eprintln!("coffer: {not_shown} more keys not shown (--limit {limit})");
                }
                return Ok(());
            }
        }
    }
}

async fn lease(c: &mut Connection, cmd: LeaseCommand, out: &mut impl Write) -> Result<ExitCode> {
    match cmd {
        LeaseCommand::Grant { seconds } => {
            let request = pb::LeaseGrantRequest {
                ttl_seconds: seconds,
                id: 0,
            };
            let lease = c.kv.lease_grant(request).await.map_err(failed)?;
            writeln!(out, "{:016x}", lease.into_inner().id)?;
        }
        LeaseCommand::Revoke { id } => {
            let request = pb::LeaseRevokeRequest { id };
            let revoked = c.kv.lease_revoke(request).await.map_err(failed)?;
            writeln!(out, "{}", revoked.into_inner().deleted)?;
        }
        LeaseCommand::KeepAlive { once: true, id } => {
            let request = pb::LeaseKeepAliveRequest { id };
            let renewed = c.kv.lease_keep_alive(request).await.map_err(failed)?;
            writeln!(out, "{}", renewed.into_inner().ttl_seconds)?;
        }
        LeaseCommand::KeepAlive { once: false, id } => {
            // Listening before the first renewal is printed: a signal sent
            // once that line is out always ends the loop cleanly.
            let mut signals = Interrupts::listen()?;
            loop {
                let request = pb::LeaseKeepAliveRequest { id };
                let renewed = c.kv.lease_keep_alive(request).await.map_err(failed)?;
                let ttl = Duration::from_secs(renewed.into_inner().ttl_seconds);
                writeln!(out, "{}", ttl.as_secs())?;
                out.flush()?;
                tokio::select! {
                    () = signals.next() => return Ok(ExitCode::SUCCESS),
                    _ = tokio::time::sleep((ttl / 3).max(Duration::from_millis(500))) => {}
                }
            }
        }
        LeaseCommand::Ls => {
            let request = pb::LeaseListRequest { stale: false };
            let listed = c.kv.lease_list(request).await.map_err(failed)?;
            for l in listed.into_inner().leases {
                writeln!(
                    out,
                    "{:016x}\t{}\t{}\t{}",
                    l.id, l.ttl_seconds, l.remaining_seconds, l.keys
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
