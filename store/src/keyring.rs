//! The keyring file (`keys/keyring`) and the KEK file (`keys/kek`).
//!
//! ```text
//! keyring := header ‖ u32 BE len ‖ sealed body ‖ checksum (32 bytes)
//! header  := "CFKR" ‖ version u8 = 2 ‖ kek source u8 ‖ kdf params (28 bytes) ‖ check (32 bytes)
//! body    := active dek id u32 ‖ dek count u16 ‖ (id u32 ‖ created u64 ‖ key 32 bytes)* ‖ name key 32 bytes
//! ```
//!
//! `created` is when the key was made (Unix seconds; 0: unknown). Version
//! 1 files have no `created` field (every key's is unknown); they are read
//! as they are and written as version 2 the next time the keyring changes.
//!
//! The body is sealed under the key-encryption key (KEK) with the whole
//! header as associated data, so a header edited on disk (say, weaker KDF
//! parameters) makes the body fail to open. `check` is a keyed BLAKE3 hash of
//! a constant under the KEK: it tells "wrong key" apart from "corrupted
//! file" without revealing anything about the key. `checksum` is a plain
//! BLAKE3 hash of everything before it, so damage anywhere (the check value
//! included) is reported as corruption, never as a wrong key.
//!
//! The KEK comes from one of two sources, named in the header:
//! - [`KekSource::File`]: unlocked mode, a random key in `keys/kek` (0600);
//! - [`KekSource::UnlockKey`]: autolock, derived with argon2id from the
//!   cluster unlock key using the header's KDF parameters; never on disk.
//!
//! Several DEKs with ids make rotation a matter of adding a key and moving
//! `active`; the name key is kept across rotations because it addresses rows.

use std::collections::BTreeMap;

use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, Reader, Writer};
use crate::crypto::{self, Cipher, KdfParams, KeyId, OpenError, SecretKey, KEY_BYTES};

const KEYRING_MAGIC: &[u8; 4] = b"CFKR";
const KEYRING_VERSION: u8 = 2;
const KEK_MAGIC: &[u8; 4] = b"CFKK";
const KEK_VERSION: u8 = 1;
const CHECK_CONTEXT: &[u8] = b"coffer keyring kek check v1";
const BODY_LOCATION: &[u8] = b"coffer keyring body v1";
/// A keyring holds at most this many data keys; rotation retires old ones.
pub const DEKS_MAX: usize = 1024;
/// Larger files are refused before they are read.
pub const KEYRING_BYTES_MAX: usize = 64 * 1024;
/// Size of the KEK file.
pub const KEK_FILE_BYTES: usize = 4 + 1 + KEY_BYTES;

/// Where the KEK that wraps a keyring comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KekSource {
    /// A random key kept in `keys/kek`.
    File,
    /// Derived from the cluster unlock key with argon2id.
    UnlockKey(KdfParams),
}

/// Why a keyring or KEK file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("the key-encryption key does not match this keyring (wrong key or unlock key)")]
    WrongKey,
    #[error("the keyring body failed authentication: the file is corrupted")]
    Corrupted,
    #[error("the keyring checksum does not match: the file is corrupted")]
    Checksum,
    #[error("the keyring body: {0}")]
    Body(&'static str),
    #[error("the keyring already holds {DEKS_MAX} data keys, the most it can; re-encrypt and drop old keys first")]
    Full,
    #[error("data key ids are exhausted")]
    IdsExhausted,
    #[error("cannot write the keyring: {0}")]
    Encode(#[from] crate::codec::EncodeError),
    #[error("cannot write the keyring: {0}")]
    Seal(#[from] crypto::SealError),
}

/// The parsed but still sealed keyring file. Parsing needs no key.
#[derive(Debug, Clone)]
pub struct KeyringFile {
    pub source: KekSource,
    version: u8,
    header: Vec<u8>,
    check: [u8; 32],
    sealed_body: Vec<u8>,
}

/// The unwrapped key material.
#[derive(Debug)]
pub struct Keyring {
    pub active: KeyId,
    deks: BTreeMap<KeyId, Dek>,
    name_key: SecretKey,
}

#[derive(Debug)]
struct Dek {
    key: SecretKey,
    /// Unix seconds; 0: unknown (a version 1 keyring).
    created: u64,
}

impl Dek {
    fn new() -> Self {
        Dek {
            key: SecretKey::random(),
            created: unix_now(),
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_value(kek: &SecretKey) -> [u8; 32] {
    *blake3::keyed_hash(kek.expose(), CHECK_CONTEXT).as_bytes()
}

impl Keyring {
    /// A new keyring with one random data key and a random name key.
    pub fn generate() -> Self {
        let mut deks = BTreeMap::new();
        deks.insert(KeyId(1), Dek::new());
        Keyring {
            active: KeyId(1),
            deks,
            name_key: SecretKey::random(),
        }
    }

    /// Adds a fresh data key and makes it the one new records use. Records
    /// sealed under older keys still open until they are rewritten.
    /// Fails, changing nothing, when the keyring already holds
    /// [`DEKS_MAX`] keys or the next id would wrap (ids are never reused:
    /// a reused id could open a record sealed under the key it replaced).
    pub fn rotate(&mut self) -> Result<KeyId, KeyringError> {
        if self.deks.len() >= DEKS_MAX {
            return Err(KeyringError::Full);
        }
        let next = match self.deks.keys().next_back() {
            None => KeyId(1),
            Some(last) => KeyId(last.0.checked_add(1).ok_or(KeyringError::IdsExhausted)?),
        };
        self.deks.insert(next, Dek::new());
        self.active = next;
        Ok(next)
    }

    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.deks.keys().copied()
    }

    /// The active data key.
    pub fn active_key(&self) -> Option<&SecretKey> {
        self.deks.get(&self.active).map(|d| &d.key)
    }

    /// When the active key was made (Unix seconds), if known.
    pub fn active_created(&self) -> Option<u64> {
        self.deks
            .get(&self.active)
            .map(|d| d.created)
            .filter(|c| *c > 0)
    }

    /// Drops every data key but the active one: records sealed under them
    /// no longer open.
    pub fn retain_active(&mut self) {
        let active = self.active;
        self.deks.retain(|id, _| *id == active);
    }

    /// The cipher for records.
    pub fn cipher(&self) -> Result<Cipher, OpenError> {
        Cipher::new(
            self.active,
            self.deks.iter().map(|(id, d)| (*id, &d.key)),
            self.name_key.clone(),
        )
    }

    /// A cipher that stores records in the clear (benchmarks only).
    pub fn danger_plaintext_cipher(&self) -> Cipher {
        Cipher::danger_plaintext(self.name_key.clone())
    }

    /// The file bytes, sealed under `kek`.
    pub fn seal(&self, kek: &SecretKey, source: KekSource) -> Result<Vec<u8>, KeyringError> {
        self.seal_as(kek, source, KEYRING_VERSION)
    }

    /// The file bytes in format `version` (1 only for tests of migration).
    fn seal_as(
        &self,
        kek: &SecretKey,
        source: KekSource,
        version: u8,
    ) -> Result<Vec<u8>, KeyringError> {
        let mut header = Writer::with_capacity(96);
        header.raw(KEYRING_MAGIC).u8(version);
        match source {
            KekSource::File => {
                header.u8(1);
                KdfParams {
                    memory_kib: 0,
                    iterations: 0,
                    parallelism: 0,
                    salt: [0; 16],
                }
                .encode(&mut header);
            }
            KekSource::UnlockKey(params) => {
                header.u8(2);
                params.encode(&mut header);
            }
        }
        header.raw(&check_value(kek));
        let header = header.finish()?;

        let mut body =
            Writer::with_capacity(8 + self.deks.len() * (12 + KEY_BYTES) + KEY_BYTES);
        body.u32(self.active.0);
        // `rotate` and `decode` keep the count within DEKS_MAX.
        body.u16(u16::try_from(self.deks.len()).map_err(|_| KeyringError::Full)?);
        for (id, dek) in &self.deks {
            body.u32(id.0);
            if version >= 2 {
                body.u64(dek.created);
            }
            body.raw(dek.key.expose());
        }
        body.raw(self.name_key.expose());
        let body = Zeroizing::new(body.finish()?);
        let sealed = crypto::wrap(kek, &body_location(&header), &body)?;

        let mut out = Writer::with_capacity(header.len() + 4 + sealed.len() + 32);
        out.raw(&header).bytes(&sealed);
        let mut out = out.finish()?;
        let checksum = blake3::hash(&out);
        out.extend_from_slice(checksum.as_bytes());
        Ok(out)
    }
}

fn body_location(header: &[u8]) -> Vec<u8> {
    let mut loc = BODY_LOCATION.to_vec();
    loc.extend_from_slice(header);
    loc
}

impl KeyringFile {
    /// Parses the file's structure. Nothing is decrypted yet.
    pub fn parse(bytes: &[u8]) -> Result<Self, KeyringError> {
        if bytes.len() > KEYRING_BYTES_MAX {
            return Err(DecodeError::TooLong {
                what: "keyring file",
                len: bytes.len(),
                max: KEYRING_BYTES_MAX,
            }
            .into());
        }
        let mut r = Reader::new(bytes);
        if r.array::<4>("keyring magic")? != *KEYRING_MAGIC {
            return Err(DecodeError::Invalid {
                what: "keyring",
                reason: "not a Coffer keyring (bad magic)",
            }
            .into());
        }
        let version = r.u8("keyring version")?;
        if !(1..=KEYRING_VERSION).contains(&version) {
            return Err(DecodeError::UnknownVersion {
                what: "keyring",
                version,
            }
            .into());
        }
        let source = match r.u8("kek source")? {
            1 => {
                // The params field is present but unused: it must be zero.
                let raw = r.take(28, "kdf params")?;
                if raw.iter().any(|b| *b != 0) {
                    return Err(DecodeError::Invalid {
                        what: "keyring",
                        reason: "kdf parameters set on a file-KEK keyring",
                    }
                    .into());
                }
                KekSource::File
            }
            2 => KekSource::UnlockKey(KdfParams::decode(&mut r)?),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "kek source",
                    tag,
                }
                .into())
            }
        };
        let check: [u8; 32] = r.array("kek check")?;
        let header_len = bytes.len() - r.remaining();
        let header = bytes[..header_len].to_vec();
        let sealed_body = r.bytes(KEYRING_BYTES_MAX, "keyring body")?.to_vec();
        let checksum: [u8; 32] = r.array("keyring checksum")?;
        r.finish("keyring")?;
        if blake3::hash(&bytes[..bytes.len() - 32]).as_bytes() != &checksum {
            return Err(KeyringError::Checksum);
        }
        Ok(KeyringFile {
            source,
            version,
            header,
            check,
            sealed_body,
        })
    }

    /// Opens the body with `kek`.
    pub fn unseal(&self, kek: &SecretKey) -> Result<Keyring, KeyringError> {
        if !bool::from(check_value(kek).ct_eq(&self.check)) {
            return Err(KeyringError::WrongKey);
        }
        let body = crypto::unwrap(kek, &body_location(&self.header), &self.sealed_body)
            .map_err(|_| KeyringError::Corrupted)?;
        let mut r = Reader::new(&body);
        let active = KeyId(r.u32("active key id")?);
        let n = usize::from(r.u16("key count")?);
        if n == 0 || n > DEKS_MAX {
            return Err(KeyringError::Body("key count out of range"));
        }
        let mut deks = BTreeMap::new();
        for _ in 0..n {
            let id = KeyId(r.u32("key id")?);
            let created = if self.version >= 2 {
                r.u64("key creation time")?
            } else {
                0
            };
            let key = SecretKey::from_bytes(r.array("data key")?);
            if deks.insert(id, Dek { key, created }).is_some() {
                return Err(KeyringError::Body("duplicate key id"));
            }
        }
        let name_key = SecretKey::from_bytes(r.array("name key")?);
        r.finish("keyring body")?;
        if !deks.contains_key(&active) {
            return Err(KeyringError::Body("active key id names no key"));
        }
        Ok(Keyring {
            active,
            deks,
            name_key,
        })
    }
}

/// Encodes the KEK file.
pub fn encode_kek_file(kek: &SecretKey) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(KEK_FILE_BYTES));
    out.extend_from_slice(KEK_MAGIC);
    out.push(KEK_VERSION);
    out.extend_from_slice(kek.expose());
    out
}

/// Decodes the KEK file.
pub fn decode_kek_file(bytes: &[u8]) -> Result<SecretKey, KeyringError> {
    let mut r = Reader::new(bytes);
    if r.array::<4>("kek magic")? != *KEK_MAGIC {
        return Err(DecodeError::Invalid {
            what: "kek file",
            reason: "not a Coffer key file (bad magic)",
        }
        .into());
    }
    let version = r.u8("kek version")?;
    if version != KEK_VERSION {
        return Err(DecodeError::UnknownVersion {
            what: "kek file",
            version,
        }
        .into());
    }
    let key = SecretKey::from_bytes(r.array("kek")?);
    r.finish("kek file")?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_kek_round_trip() {
        let kek = SecretKey::random();
        let ring = Keyring::generate();
        let bytes = ring.seal(&kek, KekSource::File).unwrap();
        let parsed = KeyringFile::parse(&bytes).unwrap();
        assert_eq!(parsed.source, KekSource::File);
        let back = parsed.unseal(&kek).unwrap();
        assert_eq!(back.active, ring.active);
        // Records sealed with one open with the other.
        let rec = ring.cipher().unwrap().seal(b"l", b"v").unwrap();
        assert_eq!(
            back.cipher().unwrap().open(b"l", &rec).unwrap().as_slice(),
            b"v"
        );
        let kek_bytes = encode_kek_file(&kek);
        assert_eq!(decode_kek_file(&kek_bytes).unwrap(), kek);
    }

    #[test]
    fn wrong_kek_and_corruption_are_told_apart() {
        let kek = SecretKey::random();
        let bytes = Keyring::generate().seal(&kek, KekSource::File).unwrap();
        let parsed = KeyringFile::parse(&bytes).unwrap();
        assert_eq!(
            parsed.unseal(&SecretKey::random()).unwrap_err(),
            KeyringError::WrongKey
        );
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            match KeyringFile::parse(&bad) {
                Err(KeyringError::Checksum) | Err(KeyringError::Decode(_)) => {}
                other => panic!("flip at {i}: {other:?}"),
            }
        }
        for n in 0..bytes.len() {
            assert!(KeyringFile::parse(&bytes[..n]).is_err());
        }
    }

    #[test]
    fn unlock_key_source_uses_argon2id_params_from_the_header() {
        let params = KdfParams {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
            salt: [9; 16],
        };
        let kek = crypto::derive_kek(b"CFKEY-1-abc", &params).unwrap();
        let mut ring = Keyring::generate();
        let old = ring.active;
        let new = ring.rotate().unwrap();
        assert_ne!(old, new);
        let bytes = ring.seal(&kek, KekSource::UnlockKey(params)).unwrap();
        let parsed = KeyringFile::parse(&bytes).unwrap();
        let KekSource::UnlockKey(read) = parsed.source else {
            panic!("source lost");
        };
        let again = crypto::derive_kek(b"CFKEY-1-abc", &read).unwrap();
        let back = parsed.unseal(&again).unwrap();
        assert_eq!(back.active, new);
        assert_eq!(back.key_ids().count(), 2);
        let wrong = crypto::derive_kek(b"CFKEY-1-abd", &read).unwrap();
        assert_eq!(parsed.unseal(&wrong).unwrap_err(), KeyringError::WrongKey);
        // Weakening the header's KDF parameters, even with the checksum
        // recomputed, breaks the body's authentication.
        let mut tampered = bytes.clone();
        tampered[6 + 7] ^= 2; // `iterations` 1 -> 3
        let n = tampered.len() - 32;
        let sum = *blake3::hash(&tampered[..n]).as_bytes();
        tampered[n..].copy_from_slice(&sum);
        let p = KeyringFile::parse(&tampered).unwrap();
        assert_eq!(p.unseal(&kek).unwrap_err(), KeyringError::Corrupted);
    }

    #[test]
    fn a_version_1_keyring_reads_with_unknown_creation_times() {
        let kek = SecretKey::random();
        let mut ring = Keyring::generate();
        ring.rotate().unwrap();
        let v1 = ring.seal_as(&kek, KekSource::File, 1).unwrap();
        let back = KeyringFile::parse(&v1).unwrap().unseal(&kek).unwrap();
        assert_eq!(back.active, ring.active);
        assert_eq!(back.key_ids().count(), 2);
        assert_eq!(back.active_created(), None);
        let rec = ring.cipher().unwrap().seal(b"l", b"v").unwrap();
        assert_eq!(
            back.cipher().unwrap().open(b"l", &rec).unwrap().as_slice(),
            b"v"
        );
        // Written again, it is version 2 and keeps what it knew.
        let v2 = back.seal(&kek, KekSource::File).unwrap();
        assert_eq!(v2[4], 2);
        let again = KeyringFile::parse(&v2).unwrap().unseal(&kek).unwrap();
        assert_eq!(again.active_created(), None);
        assert!(ring.active_created().is_some());
    }

    #[test]
    fn retain_active_drops_the_old_keys() {
        let kek = SecretKey::random();
        let mut ring = Keyring::generate();
        let old_rec = ring.cipher().unwrap().seal(b"l", b"v").unwrap();
        let new = ring.rotate().unwrap();
        ring.retain_active();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), vec![new]);
        let back = KeyringFile::parse(&ring.seal(&kek, KekSource::File).unwrap())
            .unwrap()
            .unseal(&kek)
            .unwrap();
        assert!(back.cipher().unwrap().open(b"l", &old_rec).is_err());
    }

    /// Regression (issue 5, fault 4): `rotate` had no `DEKS_MAX` check and
    /// its id could wrap to 0 and collide; both are now refused, changing
    /// nothing.
    #[test]
    fn rotation_stops_at_deks_max_and_never_wraps_an_id() {
        let mut ring = Keyring::generate();
        for _ in 1..DEKS_MAX {
            ring.rotate().unwrap();
        }
        assert_eq!(ring.key_ids().count(), DEKS_MAX);
        let active = ring.active;
        assert_eq!(ring.rotate().unwrap_err(), KeyringError::Full);
        assert_eq!((ring.active, ring.key_ids().count()), (active, DEKS_MAX));

        let mut ring = Keyring::generate();
        let top = KeyId(u32::MAX);
        ring.deks.insert(top, Dek::new());
        ring.active = top;
        assert_eq!(ring.rotate().unwrap_err(), KeyringError::IdsExhausted);
        assert_eq!(ring.active, top);
        assert_eq!(ring.key_ids().count(), 2);
    }
}
