//! The keys directory: creating the KEK and keyring on first open, and
//! unwrapping the keyring afterwards.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use crate::crypto::{Cipher, KeyId, SecretKey};
use crate::error::{Error, OpenError};
use crate::keyring::{self, KekSource, Keyring, KeyringError, KeyringFile};
use crate::snapshot::sync_dir;
use crate::unlock::UnlockKey;
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

/// Seals `ring` under a key-encryption key of its own: one derived from
/// `unlock` (autolock; `keys/kek` removed), or a new random one written
/// to `keys/kek` first. The keyring file is replaced atomically; a crash
/// between the two files leaves the previous sealing in force, and any
/// `keys/kek` a keyring sealed under an unlock key does not use is
/// removed on the next open.
fn seal_keyring(
    keys: &Path,
    ring: &Keyring,
    unlock: Option<&UnlockKey>,
) -> Result<Sealing, OpenError> {
    let kek_path = keys.join(KEK_FILE);
    let ring_path = keys.join(KEYRING_FILE);
    let seal_err = |e| keyring_err(ring_path.clone(), e);
    match unlock {
        Some(key) => {
            let params = crate::crypto::KdfParams::generate();
            let kek = key
                .derive_kek(&params)
                .map_err(|e| OpenError::Config(e.to_string()))?;
            let source = KekSource::UnlockKey(params);
            let sealed = ring.seal(&kek, source).map_err(seal_err)?;
            write_private(&ring_path, &sealed)?;
            remove_stale_kek(keys)?;
            Ok(Sealing { kek, source })
        }
        None => {
            let kek = SecretKey::random();
            write_private(&kek_path, &keyring::encode_kek_file(&kek))?;
            let sealed = ring.seal(&kek, KekSource::File).map_err(seal_err)?;
            write_private(&ring_path, &sealed)?;
            Ok(Sealing {
                kek,
                source: KekSource::File,
            })
        }
    }
}

/// The key-encryption key a keyring file is sealed under, and where it
/// comes from: what a change of the keyring's data keys seals it under
/// again.
#[derive(Debug)]
struct Sealing {
    kek: SecretKey,
    source: KekSource,
}

/// One per keys directory in this process: every change of a keyring
/// file (a new data key, old ones dropped, a new unlock key) holds its
/// lock, so that no change overwrites another, and it remembers the
/// sealing the file was last read or written with (a keyring sealed under
/// an unlock key cannot be rewritten without it).
type Keeper = Arc<Mutex<Option<Sealing>>>;

fn keeper(keys: &Path) -> Keeper {
    static KEEPERS: OnceLock<Mutex<BTreeMap<PathBuf, Keeper>>> = OnceLock::new();
    let path = fs::canonicalize(keys).unwrap_or_else(|_| keys.to_path_buf());
    let mut all = KEEPERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    all.entry(path).or_default().clone()
}

fn lock_keeper(keeper: &Keeper) -> std::sync::MutexGuard<'_, Option<Sealing>> {
    keeper.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes `keys/kek` (a keyring sealed under an unlock key uses none).
fn remove_stale_kek(keys: &Path) -> Result<(), OpenError> {
    let kek_path = keys.join(KEK_FILE);
    match fs::remove_file(&kek_path) {
        Ok(()) => sync_dir(keys).map_err(io(keys)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&kek_path)(e)),
    }
}

/// Opens the keyring under `dir/keys`, creating keys if `create` and none
/// exist (sealed under `unlock` when given). A keyring sealed under an
/// unlock key needs it: `Locked` without, `WrongUnlockKey` with another.
pub fn open_keyring(
    dir: &Path,
    create: bool,
    unlock: Option<&UnlockKey>,
) -> Result<Keyring, OpenError> {
    let keys = dir.join(KEYS_DIR);
    if !keys.join(KEYRING_FILE).exists() && create {
        // Created with its final mode: there is no moment at which it is
        // open to others.
        fs::DirBuilder::new()
            .mode(KEYS_DIR_MODE)
            .create(&keys)
            .map_err(io(&keys))?;
    }
    let keeper = keeper(&keys);
    let mut sealing = lock_keeper(&keeper);
    let (ring, sealed_as) = read_keyring(dir, create, unlock)?;
    *sealing = Some(sealed_as);
    Ok(ring)
}

/// [`open_keyring`] without the keeper: its caller holds it.
fn read_keyring(
    dir: &Path,
    create: bool,
    unlock: Option<&UnlockKey>,
) -> Result<(Keyring, Sealing), OpenError> {
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
        let ring = Keyring::generate();
        let sealing = seal_keyring(&keys, &ring, unlock)?;
        return Ok((ring, sealing));
    }
    check_private(&keys, KEYS_DIR_MODE)?;
    let file = KeyringFile::parse(&read_limited(&ring_path, keyring::KEYRING_BYTES_MAX)?)
        .map_err(|e| keyring_err(ring_path.clone(), e))?;
    match file.source {
        KekSource::File => {
            let kek = keyring::decode_kek_file(&read_limited(&kek_path, keyring::KEK_FILE_BYTES)?)
                .map_err(|e| keyring_err(kek_path.clone(), e))?;
            let ring = file.unseal(&kek).map_err(|e| keyring_err(ring_path, e))?;
            Ok((
                ring,
                Sealing {
                    kek,
                    source: KekSource::File,
                },
            ))
        }
        KekSource::UnlockKey(params) => {
            let Some(key) = unlock else {
                return Err(OpenError::Locked { path: ring_path });
            };
            let kek = key
                .derive_kek(&params)
                .map_err(|e| OpenError::Config(e.to_string()))?;
            let ring = file.unseal(&kek).map_err(|e| match e {
                KeyringError::WrongKey => OpenError::WrongUnlockKey {
                    path: ring_path.clone(),
                },
                other => keyring_err(ring_path.clone(), other),
            })?;
            remove_stale_kek(&keys)?;
            Ok((
                ring,
                Sealing {
                    kek,
                    source: file.source,
                },
            ))
        }
    }
}

/// Seals the keyring of the data directory `dir` anew: under the unlock
/// key `to` (autolock on, or a new unlock key), or under a random
/// key-encryption key in `keys/kek` (`None`: autolock off). `from` is the
/// unlock key it is sealed under now (`None` if it is not). The data keys
/// stay the same, so a store open on `dir` keeps running, and the files
/// sealed with [`LocalKeys`] stay readable.
pub fn reseal_keyring(
    dir: &Path,
    from: Option<&UnlockKey>,
    to: Option<&UnlockKey>,
) -> Result<(), OpenError> {
    let keys = dir.join(KEYS_DIR);
    let keeper = keeper(&keys);
    let mut sealing = lock_keeper(&keeper);
    let (ring, _) = read_keyring(dir, false, from)?;
    *sealing = Some(seal_keyring(&keys, &ring, to)?);
    Ok(())
}

/// Changes the data keys of the keyring of `dir` with `change` and writes
/// it (atomically, synced) under the sealing it was last opened with in
/// this process; returns what `change` returned and the new keyring.
/// Nothing is written if `change` fails.
pub(crate) fn change_keyring<R>(
    dir: &Path,
    change: impl FnOnce(&mut Keyring) -> Result<R, KeyringError>,
) -> Result<(R, Keyring), OpenError> {
    let keys = dir.join(KEYS_DIR);
    let ring_path = keys.join(KEYRING_FILE);
    let keeper = keeper(&keys);
    let sealing = lock_keeper(&keeper);
    let Some(sealing) = sealing.as_ref() else {
        return Err(OpenError::Config(
            "the keyring was not opened in this process".into(),
        ));
    };
    check_private(&keys, KEYS_DIR_MODE)?;
    let file = KeyringFile::parse(&read_limited(&ring_path, keyring::KEYRING_BYTES_MAX)?)
        .map_err(|e| keyring_err(ring_path.clone(), e))?;
    let mut ring = file.unseal(&sealing.kek).map_err(|e| match e {
        KeyringError::WrongKey => OpenError::Inconsistent {
            path: ring_path.clone(),
            detail: "the keyring was sealed again under a key this process does not hold".into(),
        },
        other => keyring_err(ring_path.clone(), other),
    })?;
    let out = change(&mut ring).map_err(|e| keyring_err(ring_path.clone(), e))?;
    let bytes = ring
        .seal(&sealing.kek, sealing.source)
        .map_err(|e| keyring_err(ring_path.clone(), e))?;
    write_private(&ring_path, &bytes)?;
    Ok((out, ring))
}

/// The active data key's id and key after a rotation.
pub(crate) fn rotate_keyring(dir: &Path) -> Result<(KeyId, SecretKey), OpenError> {
    let (id, ring) = change_keyring(dir, |ring| ring.rotate())?;
    let key = ring
        .active_key()
        .cloned()
        .ok_or_else(|| OpenError::Corruption {
            path: dir.join(KEYS_DIR).join(KEYRING_FILE),
            detail: "the active key id names no key".into(),
        })?;
    Ok((id, key))
}

/// Whether the keyring of `dir` is sealed under an unlock key (autolock).
pub fn is_autolocked(dir: &Path) -> Result<bool, OpenError> {
    let ring_path = dir.join(KEYS_DIR).join(KEYRING_FILE);
    let file = KeyringFile::parse(&read_limited(&ring_path, keyring::KEYRING_BYTES_MAX)?)
        .map_err(|e| keyring_err(ring_path.clone(), e))?;
    Ok(matches!(file.source, KekSource::UnlockKey(_)))
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
        LocalKeys::open_with(dir, None)
    }

    /// [`LocalKeys::open`] for a data directory that may be sealed under
    /// the unlock key `unlock` (autolock).
    pub fn open_with(dir: &Path, unlock: Option<&UnlockKey>) -> Result<LocalKeys, OpenError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let keyring = open_keyring(dir, !has_data(dir), unlock)?;
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

    /// `record` sealed again under the active key for the same `purpose`,
    /// or `None` if it already is: what a [`crate::LocalResealer`] writes
    /// back in place of its file.
    pub fn reseal(&self, purpose: &str, record: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.cipher
            .reseal(&local_location(purpose), record)
            .map_err(|e| Error::Corruption {
                location: format!("local record {purpose:?}"),
                detail: e.to_string(),
            })
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

/// How many records and snapshot frames of the data directory `dir` are
/// sealed under each data key, read from their headers (no key is
/// needed). For a stopped store: it opens the database read-only.
pub fn key_census(dir: &Path) -> Result<BTreeMap<KeyId, u64>, OpenError> {
    let db_path = dir.join("db");
    let opts = rocksdb::Options::default();
    let db = rocksdb::DB::open_cf_for_read_only(&opts, &db_path, crate::engine::db::ALL_CFS, false)
        .map_err(|e| OpenError::Engine(format!("{}: {}", db_path.display(), e.into_string())))?;
    let mut counts = BTreeMap::new();
    crate::engine::rekey::census_rows(&db, &mut counts)
        .map_err(|e| OpenError::Engine(format!("{}: {e}", db_path.display())))?;
    crate::engine::snapshots::census_dir(&dir.join("snapshots"), &mut counts)
        .map_err(|e| OpenError::Engine(e.to_string()))?;
    Ok(counts)
}
