//! The node's own TLS identity on disk: `<data-dir>/identity/node.crt`
//! (the certificate, PEM: public), `<data-dir>/identity/ca.crt` (the
//! cluster's root CA certificate, PEM: public) and
//! `<data-dir>/identity/node.key` (the private key, sealed under the
//! data directory's keys, `keys/`: unreadable without them; a worker
//! has those keys and no store). The public files tell a
//! restarting node who it is before it opens its store.
//!
//! The first node of a cluster issues its own certificate from the CA it
//! created, again when the one it has is not from the current CA or is
//! due for renewal; a joining node gets its certificate from the cluster
//! it joins. Renewals while a node runs are the agent's (`crate::agent`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use coffer_store::LocalKeys;
use coffer_vault::ca::{pem, NodeCert, NodeKey, Role, RootCa};

use crate::tls::Trust;
use tracing::info;

const IDENTITY_DIR: &str = "identity";
const CERT_FILE: &str = "node.crt";
/// The root CA certificates the node trusts (PEM): the cluster's, then
/// the next root during a root rotation.
const CA_FILE: &str = "ca.crt";
/// The CA certificates the node presents after its own (PEM, possibly
/// none); absent in a directory from before root rotation, where they
/// follow from `ca.crt` ([`Trust::of`]).
const CHAIN_FILE: &str = "chain.crt";
const KEY_FILE: &str = "node.key";
/// What the key is sealed for (see `LocalKeys::seal`).
const KEY_PURPOSE: &str = "node-tls-key";
/// Certificates or keys larger than this are damage, not data.
const FILE_BYTES_MAX: u64 = 64 << 10;

/// A node's certificate and key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub key: NodeKey,
    pub cert: NodeCert,
}

fn paths(data_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let dir = data_dir.join(IDENTITY_DIR);
    (dir.join(CERT_FILE), dir.join(KEY_FILE), dir)
}

fn read_limited(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(m) if m.len() > FILE_BYTES_MAX => {
            bail!("{} is {} bytes: damaged", path.display(), m.len())
        }
        Ok(_) => {}
    }
    Ok(Some(
        fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

/// Writes a file atomically (temporary file, fsync, rename) with `mode`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

fn pem_to_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .ok()
        .map(|der| der.to_vec())
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Whether a certificate is due for renewal now (see
/// [`NodeCert::renewal_due`]).
pub fn due_for_renewal(cert: &NodeCert) -> bool {
    cert.renewal_due(unix_now())
}

fn read_pem(path: &Path) -> Result<Option<Vec<u8>>> {
    match read_limited(path)? {
        None => Ok(None),
        Some(pem) => match pem_to_der(&pem) {
            Some(der) => Ok(Some(der)),
            None => bail!("{} is not a PEM certificate", path.display()),
        },
    }
}

/// Every certificate of a PEM file (`None`: no file).
fn read_pem_all(path: &Path) -> Result<Option<Vec<Vec<u8>>>> {
    use rustls::pki_types::pem::PemObject;
    let Some(pem) = read_limited(path)? else {
        return Ok(None);
    };
    rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .map(|c| c.map(|der| der.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{} is not a PEM certificate file: {e}", path.display()))
}

fn pem_all(ders: &[Vec<u8>]) -> String {
    ders.iter().map(|d| pem("CERTIFICATE", d)).collect()
}

/// What the node trusts and presents, from its public files.
fn trust_on_disk(dir: &Path) -> Result<Option<Trust>> {
    let Some(roots) = read_pem_all(&dir.join(CA_FILE))? else {
        return Ok(None);
    };
    let Some(first) = roots.first() else {
        bail!("{} holds no certificate", dir.join(CA_FILE).display());
    };
    let chain = match read_pem_all(&dir.join(CHAIN_FILE))? {
        Some(chain) => chain,
        None => Trust::of(first).chain,
    };
    Ok(Some(Trust { roots, chain }))
}

/// Who this data directory's node is, from its public files: its
/// certificate and what it trusts, or `None` before it has an identity.
pub fn on_disk(data_dir: &Path) -> Result<Option<(NodeCert, Trust)>> {
    let (cert_path, _, dir) = paths(data_dir);
    if dir.exists() {
        let _files = files_lock();
        finish_swap(&dir)?;
    }
    let (Some(cert_der), Some(trust)) = (read_pem(&cert_path)?, trust_on_disk(&dir)?) else {
        return Ok(None);
    };
    let cert =
        NodeCert::parse(&cert_der).with_context(|| format!("reading {}", cert_path.display()))?;
    Ok(Some((cert, trust)))
}

/// The identity on disk, if it is there and from `ca`.
fn load_from(data_dir: &Path, keys: &LocalKeys, ca: &RootCa) -> Result<Option<Identity>> {
    let (cert_path, key_path, _) = paths(data_dir);
    let (Some(cert_der), Some(sealed)) = (read_pem(&cert_path)?, read_limited(&key_path)?) else {
        return Ok(None);
    };
    let cert = match NodeCert::verify(&cert_der, ca) {
        Ok(cert) => cert,
        // Issued by an earlier CA: issue a new one.
        Err(_) => return Ok(None),
    };
    open_key(&key_path, &sealed, keys, cert_der, cert).map(Some)
}

/// The identity on disk (see [`on_disk`] for who it is).
pub fn load(data_dir: &Path, keys: &LocalKeys) -> Result<Identity> {
    let (cert_path, key_path, _) = paths(data_dir);
    let (Some(cert_der), Some(sealed)) = (read_pem(&cert_path)?, read_limited(&key_path)?) else {
        bail!("{} holds no identity", data_dir.display());
    };
    let cert = NodeCert::parse(&cert_der)?;
    open_key(&key_path, &sealed, keys, cert_der, cert)
}

fn open_key(
    key_path: &Path,
    sealed: &[u8],
    keys: &LocalKeys,
    cert_der: Vec<u8>,
    cert: NodeCert,
) -> Result<Identity> {
    let key_der = keys
        .open_sealed(KEY_PURPOSE, sealed)
        .with_context(|| format!("opening {}", key_path.display()))?;
    let key = NodeKey::from_pkcs8_der(key_der)
        .with_context(|| format!("reading the key in {}", key_path.display()))?;
    Ok(Identity {
        cert_der,
        key,
        cert,
    })
}

/// Marks a complete set of `.new` identity files: while it exists, the
/// set replaces the current files (see [`save`]).
const SWAP_FILE: &str = "swap";
/// The identity files, in the order a swap renames them.
const IDENTITY_FILES: [&str; 4] = [KEY_FILE, CA_FILE, CHAIN_FILE, CERT_FILE];

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Finishes a swap a crash interrupted (every `.new` file was complete
/// once the marker existed), or drops `.new` files from a save that never
/// got that far: the key and the certificate on disk always belong
/// together.
fn finish_swap(dir: &Path) -> Result<()> {
    let marker = dir.join(SWAP_FILE);
    let swapping = marker.exists();
    for name in IDENTITY_FILES {
        let staged = dir.join(format!("{name}.new"));
        if !staged.exists() {
            continue;
        }
        if swapping {
            fs::rename(&staged, dir.join(name))
                .with_context(|| format!("renaming {}", staged.display()))?;
        } else {
            fs::remove_file(&staged).with_context(|| format!("removing {}", staged.display()))?;
        }
    }
    if swapping {
        sync_dir(dir)?;
        fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        sync_dir(dir)?;
    }
    Ok(())
}

/// Held by every change of identity files in this process: a renewal's
/// [`save`] and a key rotation's [`reseal`] never interleave.
static FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn files_lock() -> std::sync::MutexGuard<'static, ()> {
    // Guards no data: a panic elsewhere leaves it usable.
    FILES.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a store opened on `data_dir` calls after a data-key rotation,
/// before it deletes the old key: [`reseal`]. Every store this program
/// opens on a node's data directory is given it.
pub fn resealer(data_dir: &Path) -> coffer_store::LocalResealer {
    let dir = data_dir.to_path_buf();
    coffer_store::LocalResealer(std::sync::Arc::new(move |keys| {
        reseal(&dir, keys).map_err(|e| coffer_store::Error::Engine(format!("{e:#}")))
    }))
}

/// After a data-key rotation: seals the node's TLS key file again under
/// the active key (the key and certificate stay the same). Called by the
/// store before it deletes the old key.
pub fn reseal(data_dir: &Path, keys: &LocalKeys) -> Result<()> {
    let _files = files_lock();
    let (_, key_path, dir) = paths(data_dir);
    if dir.exists() {
        finish_swap(&dir)?;
    }
    let Some(sealed) = read_limited(&key_path)? else {
        return Ok(());
    };
    let again = keys
        .reseal(KEY_PURPOSE, &sealed)
        .with_context(|| format!("sealing {} again", key_path.display()))?;
    if let Some(again) = again {
        write_atomic(&key_path, &again, 0o600)?;
        info!("sealed this node's TLS key under the new data key");
    }
    Ok(())
}

/// Writes a node's identity so that a crash at any point leaves the old
/// one or the new one, never a key beside another key's certificate: the
/// three files are written as `.new`, a marker says the set is complete,
/// then they are renamed into place and the marker goes.
pub fn save(
    data_dir: &Path,
    keys: &LocalKeys,
    cert_der: &[u8],
    key: &NodeKey,
    trust: &Trust,
) -> Result<()> {
    let _files = files_lock();
    let (_, _, dir) = paths(data_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    finish_swap(&dir)?;
    let sealed = keys.seal(KEY_PURPOSE, key.pkcs8_der())?;
    let staged = |name: &str| dir.join(format!("{name}.new"));
    write_atomic(&staged(KEY_FILE), &sealed, 0o600)?;
    write_atomic(&staged(CA_FILE), pem_all(&trust.roots).as_bytes(), 0o644)?;
    write_atomic(&staged(CHAIN_FILE), pem_all(&trust.chain).as_bytes(), 0o644)?;
    write_atomic(
        &staged(CERT_FILE),
        pem("CERTIFICATE", cert_der).as_bytes(),
        0o644,
    )?;
    write_atomic(&dir.join(SWAP_FILE), b"", 0o600)?;
    finish_swap(&dir)
}

/// Replaces what the node trusts and presents (a root rotation began or
/// ended), keeping its certificate and key.
pub fn save_trust(data_dir: &Path, trust: &Trust) -> Result<()> {
    let _files = files_lock();
    let (_, _, dir) = paths(data_dir);
    finish_swap(&dir)?;
    let staged = |name: &str| dir.join(format!("{name}.new"));
    write_atomic(&staged(CA_FILE), pem_all(&trust.roots).as_bytes(), 0o644)?;
    write_atomic(&staged(CHAIN_FILE), pem_all(&trust.chain).as_bytes(), 0o644)?;
    write_atomic(&dir.join(SWAP_FILE), b"", 0o600)?;
    finish_swap(&dir)
}

/// The managers' addresses this node last heard of (`identity/managers`,
/// one per line): where a worker, or a manager that is not a member yet,
/// asks first.
const MANAGERS_FILE: &str = "managers";

pub fn load_managers(data_dir: &Path) -> Result<Vec<String>> {
    let path = data_dir.join(IDENTITY_DIR).join(MANAGERS_FILE);
    Ok(match read_limited(&path)? {
        None => Vec::new(),
        Some(bytes) => String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

pub fn save_managers(data_dir: &Path, managers: &[String]) -> Result<()> {
    let mut text = managers.join("\n");
    text.push('\n');
    write_atomic(
        &data_dir.join(IDENTITY_DIR).join(MANAGERS_FILE),
        text.as_bytes(),
        0o644,
    )
}

/// This manager's identity: the one on disk, or a new key and a
/// certificate issued by `ca` for node `node`, valid for `validity` (see
/// the module doc).
pub fn load_or_issue(
    data_dir: &Path,
    keys: &LocalKeys,
    ca: &RootCa,
    node: u64,
    validity: Duration,
) -> Result<Identity> {
    if let Some(identity) = load_from(data_dir, keys, ca)? {
        if identity.cert.node == node && !due_for_renewal(&identity.cert) {
            return Ok(identity);
        }
    }
    let key = NodeKey::generate()?;
    let cert_der = ca.issue(&key.public_key_der()?, node, Role::Manager, validity)?;
    let cert = NodeCert::verify(&cert_der, ca)?;
    save(data_dir, keys, &cert_der, &key, &Trust::of(ca.cert_der()))?;
    info!(
        node = format_args!("{node:016x}"),
        expires_in_days = (cert.not_after_unix - unix_now()) / 86_400,
        "issued this node's certificate"
    );
    Ok(Identity {
        cert_der,
        key,
        cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_read_back_from_pem() {
        let pem = coffer_vault::ca::pem("CERTIFICATE", &[1, 2, 3, 250, 251]);
        assert_eq!(pem_to_der(pem.as_bytes()).unwrap(), vec![1, 2, 3, 250, 251]);
        assert!(pem_to_der(b"not pem").is_none());
    }

    /// A crash at any point of a save leaves the old identity or the new
    /// one: `.new` files without the marker are dropped; with it, they
    /// replace the old ones at the next read.
    #[test]
    fn an_interrupted_save_leaves_one_whole_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let keys = LocalKeys::open(dir).unwrap();
        let ca = RootCa::generate("c").unwrap();
        let issue = |node| {
            let key = NodeKey::generate().unwrap();
            let cert = ca
                .issue(
                    &key.public_key_der().unwrap(),
                    node,
                    Role::Worker,
                    coffer_vault::ca::NODE_CERT_VALIDITY,
                )
                .unwrap();
            (key, cert)
        };
        let (old_key, old_cert) = issue(7);
        save(dir, &keys, &old_cert, &old_key, &Trust::of(ca.cert_der())).unwrap();
        let (new_key, new_cert) = issue(7);
        save(dir, &keys, &new_cert, &new_key, &Trust::of(ca.cert_der())).unwrap();
        let files = dir.join(IDENTITY_DIR);
        // The state a crash leaves mid-save: the new set staged.
        let stage = |marker: bool| {
            let sealed = keys.seal(KEY_PURPOSE, old_key.pkcs8_der()).unwrap();
            fs::write(files.join("node.key.new"), sealed).unwrap();
            fs::write(files.join("ca.crt.new"), pem("CERTIFICATE", ca.cert_der())).unwrap();
            fs::write(files.join("node.crt.new"), pem("CERTIFICATE", &old_cert)).unwrap();
            if marker {
                fs::write(files.join(SWAP_FILE), b"").unwrap();
            }
        };
        // Renamed half-way without the marker's say: dropped.
        stage(false);
        on_disk(dir).unwrap().unwrap();
        assert_eq!(load(dir, &keys).unwrap().cert_der, new_cert);
        assert!(!files.join("node.key.new").exists());
        // The key renamed, then a crash: finished at the next read.
        stage(true);
        fs::rename(files.join("node.key.new"), files.join(KEY_FILE)).unwrap();
        on_disk(dir).unwrap().unwrap();
        let loaded = load(dir, &keys).unwrap();
        assert_eq!(loaded.cert_der, old_cert);
        assert_eq!(loaded.key.pkcs8_der(), old_key.pkcs8_der());
        assert!(!files.join(SWAP_FILE).exists());
    }
}
