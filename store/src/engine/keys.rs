//! The keys directory: creating the KEK and keyring on first open, and
//! unwrapping the keyring afterwards.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use crate::crypto::Cipher;
use crate::error::{Error, OpenError};
use crate::keyring::{self, KekSource, Keyring, KeyringError, KeyringFile};
use crate::snapshot::sync_dir;
use zeroize::Zeroizing;

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
        .mode(KEY_FILE_MODE)
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

/// Mode of the keys directory: its owner alone may list or change it.
const KEYS_DIR_MODE: u32 = 0o700;
/// Mode of the key files.
const KEY_FILE_MODE: u32 = 0o600;

/// Refuses `path` if group or others have any access to it (as ssh does
/// for private keys), before anything is read from it.
fn check_private(path: &Path, want: u32) -> Result<(), OpenError> {
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(OpenError::Permissions {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

/// Reads a key file whole into a buffer that is wiped when dropped.
fn read_limited(path: &Path, max: usize) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    check_private(path, KEY_FILE_MODE)?;
    let mut file = File::open(path).map_err(io(path))?;
    let len = file.metadata().map_err(io(path))?.len();
    if len > max as u64 {
        return Err(OpenError::Corruption {
            path: path.to_path_buf(),
            detail: format!("{len} bytes, more than the {max} a key file can hold"),
        });
    }
    // Read into a buffer allocated once at its final size, so that no
    // reallocation leaves a copy of the key behind.
    let mut buf = Zeroizing::new(vec![0; max]);
    let mut filled = 0;
    loop {
        match file.read(&mut buf[filled..]).map_err(io(path))? {
            0 => break,
            n => filled += n,
        }
        if filled == max {
            // One byte more than a key file can hold is corruption too.
            let mut probe = [0u8; 1];
            if file.read(&mut probe).map_err(io(path))? != 0 {
                return Err(OpenError::Corruption {
                    path: path.to_path_buf(),
                    detail: format!("more than the {max} bytes a key file can hold"),
                });
            }
            break;
        }
    }
    buf.truncate(filled);
    Ok(buf)
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
        // Created with its final mode: there is no moment at which it is
        // open to others.
        fs::DirBuilder::new()
            .mode(KEYS_DIR_MODE)
            .create(&keys)
            .map_err(io(&keys))?;
        let kek = crate::crypto::SecretKey::random();
        write_private(&kek_path, &keyring::encode_kek_file(&kek))?;
        let ring = Keyring::generate();
        let sealed = ring
            .seal(&kek, KekSource::File)
            .map_err(|e| keyring_err(ring_path.clone(), e))?;
        write_private(&ring_path, &sealed)?;
        return Ok(ring);
    }
    check_private(&keys, KEYS_DIR_MODE)?;
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

/// Sealing for the files a node keeps outside its store (its TLS key,
/// say), under the data directory's keyring: from a [`crate::Store`]
/// (`Store::local_keys`), or on its own for a node that holds no store
/// (a worker) through [`LocalKeys::open`].
#[derive(Debug, Clone)]
pub struct LocalKeys {
    pub(crate) cipher: Arc<Cipher>,
}

impl LocalKeys {
    /// The keys of the data directory `dir`: created (with `dir`, mode
    /// 0700) if it holds none, and from then on the same keys a store
    /// opened on `dir` uses.
    pub fn open(dir: &Path) -> Result<LocalKeys, OpenError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let keyring = open_keyring(dir, !has_data(dir))?;
        let cipher = keyring.cipher().map_err(|e| OpenError::Corruption {
            path: dir.join(KEYS_DIR),
            detail: e.to_string(),
        })?;
        Ok(LocalKeys {
            cipher: Arc::new(cipher),
        })
    }

    /// Seals `plaintext`, bound to `purpose`: the record opens only
    /// through [`LocalKeys::open_sealed`] with the same purpose, under the same
    /// keyring. Nothing is written.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.cipher
            .seal(&local_location(purpose), plaintext)
            .map_err(|e| Error::InvalidArgument(e.to_string()))
    }

    /// Opens a record from [`LocalKeys::seal`]. A record that was
    /// changed, sealed for another purpose or under another keyring is
    /// `Corruption`.
    pub fn open_sealed(&self, purpose: &str, record: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        self.cipher
            .open(&local_location(purpose), record)
            .map_err(|e| Error::Corruption {
                location: format!("local record {purpose:?}"),
                detail: e.to_string(),
            })
    }
}

/// The location a local record is sealed for: a prefix no row location
/// has, so a local record can never be passed off as a row or back.
fn local_location(purpose: &str) -> Vec<u8> {
    let mut location = b"local-file\0".to_vec();
    location.extend_from_slice(purpose.as_bytes());
    location
}
