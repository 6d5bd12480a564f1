//! The keys directory: creating the KEK and keyring on first open, and
//! unwrapping the keyring afterwards.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::OpenError;
use crate::keyring::{self, KekSource, Keyring, KeyringError, KeyringFile};
use crate::snapshot::sync_dir;

pub const KEYS_DIR: &str = "keys";
pub const KEK_FILE: &str = "kek";
pub const KEYRING_FILE: &str = "keyring";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically with mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), OpenError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(io(dir))?;
    }
    Ok(())
}

fn read_limited(path: &Path, max: usize) -> Result<Vec<u8>, OpenError> {
    let len = fs::metadata(path).map_err(io(path))?.len();
    if len > max as u64 {
        return Err(OpenError::Corruption {
            path: path.to_path_buf(),
            detail: format!("{len} bytes, more than the {max} a key file can hold"),
        });
    }
    fs::read(path).map_err(io(path))
}

fn keyring_err(path: PathBuf, e: KeyringError) -> OpenError {
    match e {
        KeyringError::WrongKey => OpenError::WrongKey { path },
        other => OpenError::Corruption {
            path,
            detail: other.to_string(),
        },
    }
}

/// Opens the keyring under `dir/keys`, creating keys if `create` and none exist.
pub fn open_keyring(dir: &Path, create: bool) -> Result<Keyring, OpenError> {
    let keys = dir.join(KEYS_DIR);
    let kek_path = keys.join(KEK_FILE);
    let ring_path = keys.join(KEYRING_FILE);
    if !ring_path.exists() {
        if !create {
            return Err(OpenError::Inconsistent {
                path: ring_path,
                detail: "the data directory holds data but no keyring".into(),
            });
        }
        fs::create_dir_all(&keys).map_err(io(&keys))?;
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o700)).map_err(io(&keys))?;
        let kek = crate::crypto::SecretKey::random();
        write_private(&kek_path, &keyring::encode_kek_file(&kek))?;
        let ring = Keyring::generate();
        let sealed = ring
            .seal(&kek, KekSource::File)
            .map_err(|e| keyring_err(ring_path.clone(), e))?;
        write_private(&ring_path, &sealed)?;
        return Ok(ring);
    }
    let file = KeyringFile::parse(&read_limited(&ring_path, keyring::KEYRING_BYTES_MAX)?)
        .map_err(|e| keyring_err(ring_path.clone(), e))?;
    match file.source {
        KekSource::File => {
            let kek = keyring::decode_kek_file(&read_limited(&kek_path, keyring::KEK_FILE_BYTES)?)
                .map_err(|e| keyring_err(kek_path.clone(), e))?;
            file.unseal(&kek).map_err(|e| keyring_err(ring_path, e))
        }
        KekSource::UnlockKey(_) => Err(OpenError::Config(format!(
            "{} is sealed under a cluster unlock key (autolock); unlocking is done by the server",
            ring_path.display()
        ))),
    }
}

/// Whether the directory already holds a store.
pub fn has_data(dir: &Path) -> bool {
    File::open(dir.join("db").join("CURRENT")).is_ok()
}
