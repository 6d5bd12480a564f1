//! Regenerates `server/src/pb/` from `proto/coffer/v1/*.proto` without a
//! system `protoc` (protox parses the files in Rust).
//!
//! `coffer-protogen` writes the files; `coffer-protogen --check` writes
//! them to a scratch directory and fails if they differ from the committed
//! ones, naming each file that does.

use std::path::{Path, PathBuf};


use anyhow::{bail, Context, Result};
use prost::Message;

/// The encoded `FileDescriptorSet` that server reflection serves.
const DESCRIPTOR_FILE: &str = "coffer.v1.bin";

fn main() -> Result<()> {
    let check = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--check") => true,
        Some(other) => bail!("unknown argument {other:?}; usage: coffer-protogen [--check]"),
    };
    // The repository is the working directory (scripts/protogen runs from
    // there); not this crate's build-time path, which a binary built from
    // another checkout sharing the target directory would carry.
    let root = std::env::current_dir().context("the working directory")?;
    if !root.join("proto/coffer/v1").is_dir() {
        bail!("run from the repository root (scripts/protogen does)");
    }
    let proto_dir = root.join("proto");
    let committed = root.join("server/src/pb");
    let protos = proto_files(&proto_dir.join("coffer/v1"))?;

    let out = if check {
        let dir = std::env::temp_dir().join(format!("coffer-protogen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        dir
    } else {
        committed.clone()
    };
    generate(&protos, &proto_dir, &out)?;

    if check {
        let stale = differing_files(&out, &committed)?;
        std::fs::remove_dir_all(&out).ok();
        if !stale.is_empty() {
            bail!(
                "server/src/pb/ is out of date with proto/ ({}); run scripts/protogen and commit the result",
                stale.join(", ")
            );
        }
    }
    Ok(())
}

fn proto_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn generate(protos: &[PathBuf], include: &Path, out: &Path) -> Result<()> {
    let fds = protox::compile(protos, [include]).context("compiling the protos")?;
    std::fs::write(out.join(DESCRIPTOR_FILE), fds.encode_to_vec())
        .with_context(|| format!("writing {DESCRIPTOR_FILE}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Channels are built by the server crate (Unix socket, mTLS).
        .build_transport(false)
        // Messages that carry secret data get a redacting `Debug` by hand
        // (server/src/pb.rs), never the derived one.
        .skip_debug([
            "coffer.v1.CreateSecretRequest",
            "coffer.v1.RotateSecretRequest",
            "coffer.v1.SecretFile",
            "coffer.v1.UnlockRequest",
            "coffer.v1.UnlockKeyResponse",
            "coffer.v1.UpdateClusterResponse",
            "coffer.v1.SnapshotFrame",
            "coffer.v1.SnapshotChunk",
            "coffer.v1.RotateCaRequest",
        ])
        .emit_rerun_if_changed(false)
        .out_dir(out)
        .compile_fds(fds)
        .context("generating Rust code")?;
    Ok(())
}

/// Files that differ between the two directories, either way.
fn differing_files(generated: &Path, committed: &Path) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for dir in [generated, committed] {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            names.insert(entry?.file_name());
        }
    }
    let mut stale = Vec::new();
    for name in names {
        let a = std::fs::read(generated.join(&name)).ok();
        let b = std::fs::read(committed.join(&name)).ok();
        if a != b {
            stale.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(stale)
}
