//! The file `coffer snapshot save` writes and `coffer snapshot restore`
//! reads: a store's snapshot frames, sealed under a key derived from an
//! operator's passphrase, independent of any node's keyring.
//!
//! ```text
//! header   "COFFER-SNAPSHOT\n" (16) | version u8 = 1
//!          | argon2id params: memory KiB u32, passes u32, lanes u32, salt 16
//!          | check 32 (keyed BLAKE3 of the derived key: a wrong passphrase
//!          |           is told from damage)
//!          | file id 16 (random: chunks of another file do not fit)
//! chunks   kind u8 (1 = frame, 2 = last frame) | length u32 BE | sealed frame
//!          (XChaCha20-Poly1305 as the store seals records, bound to the
//!           file id, the chunk's index and its kind)
//! trailer  BLAKE3 of every byte before it (32)
//! ```
//!
//! [`verify`] walks a file without the passphrase (header, chunk lengths,
//! the last chunk, the checksum, nothing after it): a flipped byte or a
//! truncation is refused before anything is decrypted or written.
//! [`BackupReader`] then checks the passphrase and opens each chunk.

use std::io::{self, Read, Write};

use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{Reader, Writer};
use crate::crypto::{derive_kek, Cipher, KdfParams, KeyId, SecretKey, RECORD_OVERHEAD_BYTES};
use crate::snapshot::MAX_FRAME_BYTES;

const MAGIC: &[u8; 16] = b"COFFER-SNAPSHOT\n";
const VERSION: u8 = 1;
const CHECK_CONTEXT: &str = "coffer snapshot file 2026 passphrase check";
const KIND_FRAME: u8 = 1;
const KIND_LAST: u8 = 2;
/// magic, version, params (12 + 16), check, file id.
const HEADER_BYTES: usize = 16 + 1 + 28 + 32 + 16;
const CHUNK_MAX: usize = MAX_FRAME_BYTES + RECORD_OVERHEAD_BYTES;
/// The shortest passphrase accepted.
pub const PASSPHRASE_MIN_BYTES: usize = 8;

/// Why a snapshot file was refused. No variant carries the passphrase or
/// any data.
#[derive(Debug, Error)]
pub enum BackupError {
    #[error("not a Coffer snapshot file")]
    NotASnapshot,
    #[error("snapshot file version {0} is not one this coffer reads (1)")]
    UnsupportedVersion(u8),
    #[error("the snapshot file is damaged: {0}")]
    Damaged(String),
    #[error("the snapshot file is truncated: {0}")]
    Truncated(String),
    #[error("wrong passphrase for this snapshot file")]
    WrongPassphrase,
    #[error("the passphrase is too short: at least {PASSPHRASE_MIN_BYTES} bytes")]
    WeakPassphrase,
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn check_value(key: &SecretKey) -> [u8; 32] {
    *blake3::keyed_hash(
        &blake3::derive_key(CHECK_CONTEXT, key.expose()),
        b"passphrase check",
    )
    .as_bytes()
}

fn cipher(key: &SecretKey) -> Result<Cipher, BackupError> {
    Cipher::new(KeyId(1), [(KeyId(1), key)], SecretKey::random())
        .map_err(|e| BackupError::Invalid(e.to_string()))
}

/// Where chunk `index` of kind `kind` in file `id` is sealed for.
fn location(id: &[u8; 16], index: u64, kind: u8) -> Vec<u8> {
    let mut l = b"coffer-snapshot-file\0".to_vec();
    l.extend_from_slice(id);
    l.extend_from_slice(&index.to_be_bytes());
    l.push(kind);
    l
}

fn derive(passphrase: &[u8], params: &KdfParams) -> Result<SecretKey, BackupError> {
    derive_kek(passphrase, params).map_err(|e| BackupError::Invalid(e.to_string()))
}

/// Writes a snapshot file frame by frame.
pub struct BackupWriter<W: Write> {
    out: W,
    hasher: blake3::Hasher,
    cipher: Cipher,
    id: [u8; 16],
    index: u64,
    last: bool,
}

impl<W: Write> std::fmt::Debug for BackupWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter")
            .field("chunks", &self.index)
            .finish()
    }
}

impl<W: Write> BackupWriter<W> {
    /// Starts a file on `out` sealed under `passphrase` (argon2id, 64 MiB,
    /// 3 passes, a random salt).
    pub fn new(out: W, passphrase: &[u8]) -> Result<Self, BackupError> {
        if passphrase.len() < PASSPHRASE_MIN_BYTES {
            return Err(BackupError::WeakPassphrase);
        }
        let params = KdfParams::generate();
        let key = derive(passphrase, &params)?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&SecretKey::random().expose()[..16]);
        let mut header = Writer::with_capacity(HEADER_BYTES);
        header.raw(MAGIC).u8(VERSION);
        params.encode(&mut header);
        header.raw(&check_value(&key)).raw(&id);
        let header = header
            .finish()
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        let mut writer = BackupWriter {
            out,
            hasher: blake3::Hasher::new(),
            cipher: cipher(&key)?,
            id,
            index: 0,
            last: false,
        };
        writer.write(&header)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), BackupError> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Seals and writes one frame; `last` for the final one.
    pub fn frame(&mut self, plain: &[u8], last: bool) -> Result<(), BackupError> {
        if self.last {
            return Err(BackupError::Invalid("a frame after the last".into()));
        }
        if plain.len() > MAX_FRAME_BYTES {
            return Err(BackupError::Invalid(format!(
                "a frame of {} bytes, more than {MAX_FRAME_BYTES}",
                plain.len()
            )));
        }
        let kind = if last { KIND_LAST } else { KIND_FRAME };
        let sealed = self
            .cipher
            .seal(&location(&self.id, self.index, kind), plain)
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        let len = u32::try_from(sealed.len())
            .map_err(|_| BackupError::Invalid("a frame too large".into()))?;
        self.write(&[kind])?;
        self.write(&len.to_be_bytes())?;
        self.write(&sealed)?;
        self.index += 1;
        self.last = last;
        Ok(())
    }

    /// Writes the checksum; returns the output, flushed.
    pub fn finish(mut self) -> Result<W, BackupError> {
        if !self.last {
            return Err(BackupError::Invalid(
                "the last frame was not written".into(),
            ));
        }
        let sum = *self.hasher.finalize().as_bytes();
        self.out.write_all(&sum)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// The header of a file, read and checked.
struct Header {
    params: KdfParams,
    check: [u8; 32],
    id: [u8; 16],
}

fn read_exact_or(
    input: &mut impl Read,
    buf: &mut [u8],
    what: impl FnOnce() -> String,
) -> Result<(), BackupError> {
    input.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BackupError::Truncated(what())
        } else {
            BackupError::Io(e)
        }
    })
}

fn read_header(input: &mut impl Read, hasher: &mut blake3::Hasher) -> Result<Header, BackupError> {
    let mut bytes = [0u8; HEADER_BYTES];
    match input.read_exact(&mut bytes[..17]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(BackupError::NotASnapshot)
        }
        Err(e) => return Err(e.into()),
    }
    if &bytes[..16] != MAGIC {
        return Err(BackupError::NotASnapshot);
    }
    if bytes[16] != VERSION {
        return Err(BackupError::UnsupportedVersion(bytes[16]));
    }
    read_exact_or(input, &mut bytes[17..], || "inside the header".into())?;
    hasher.update(&bytes);
    let mut r = Reader::new(&bytes[17..]);
    let damaged = |e: crate::codec::DecodeError| BackupError::Damaged(format!("header: {e}"));
    let params = KdfParams::decode(&mut r).map_err(damaged)?;
    let check = r.array("check").map_err(damaged)?;
    let id = r.array("file id").map_err(damaged)?;
    r.finish("header").map_err(damaged)?;
    Ok(Header { params, check, id })
}

/// Reads one chunk's kind and sealed bytes; `Ok(None)` is impossible: a
/// file ends only after its last chunk and checksum.
fn read_chunk(
    input: &mut impl Read,
    hasher: &mut blake3::Hasher,
    index: u64,
) -> Result<(u8, Vec<u8>), BackupError> {
    let mut head = [0u8; 5];
    read_exact_or(input, &mut head, || {
        format!("it ends before chunk {index} and its last chunk")
    })?;
    let kind = head[0];
    if kind != KIND_FRAME && kind != KIND_LAST {
        return Err(BackupError::Damaged(format!(
            "chunk {index} has an unknown kind"
        )));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if !(RECORD_OVERHEAD_BYTES..=CHUNK_MAX).contains(&len) {
        return Err(BackupError::Damaged(format!(
            "chunk {index} claims {len} bytes"
        )));
    }
    let mut sealed = vec![0u8; len];
    read_exact_or(input, &mut sealed, || format!("inside chunk {index}"))?;
    hasher.update(&head);
    hasher.update(&sealed);
    Ok((kind, sealed))
}

fn check_trailer(input: &mut impl Read, hasher: &blake3::Hasher) -> Result<(), BackupError> {
    let mut sum = [0u8; 32];
    read_exact_or(input, &mut sum, || "inside the checksum".into())?;
    if &sum != hasher.finalize().as_bytes() {
        return Err(BackupError::Damaged(
            "the checksum does not match its contents".into(),
        ));
    }
    let mut more = [0u8; 1];
    if input.read(&mut more)? != 0 {
        return Err(BackupError::Damaged("bytes after the checksum".into()));
    }
    Ok(())
}

/// Walks a whole file without its passphrase: header, every chunk's
/// framing, the last chunk, the checksum and nothing after it. Returns
/// the number of chunks.
pub fn verify(mut input: impl Read) -> Result<u64, BackupError> {
    let mut hasher = blake3::Hasher::new();
    read_header(&mut input, &mut hasher)?;
    let mut index = 0u64;
    loop {
        let (kind, _) = read_chunk(&mut input, &mut hasher, index)?;
        index += 1;
        if kind == KIND_LAST {
            break;
        }
    }
    check_trailer(&mut input, &hasher)?;
    Ok(index)
}

/// Reads a snapshot file's frames.
pub struct BackupReader<R: Read> {
    input: R,
    hasher: blake3::Hasher,
    cipher: Cipher,
    id: [u8; 16],
    index: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for BackupReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupReader")
            .field("chunk", &self.index)
            .finish()
    }
}

impl<R: Read> BackupReader<R> {
    /// Reads the header and checks `passphrase` against it.
    pub fn open(mut input: R, passphrase: &[u8]) -> Result<Self, BackupError> {
        let mut hasher = blake3::Hasher::new();
        let header = read_header(&mut input, &mut hasher)?;
        let key = derive(passphrase, &header.params)?;
        let check = check_value(&key);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&check[..], &header.check[..])) {
            return Err(BackupError::WrongPassphrase);
        }
        Ok(BackupReader {
            input,
            hasher,
            cipher: cipher(&key)?,
            id: header.id,
            index: 0,
            done: false,
        })
    }

    /// The next frame's plaintext; `None` once the last frame was read
    /// and the checksum matched.
    pub fn next_frame(&mut self) -> Result<Option<Zeroizing<Vec<u8>>>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let index = self.index;
        let (kind, sealed) = read_chunk(&mut self.input, &mut self.hasher, index)?;
        let plain = self
            .cipher
            .open(&location(&self.id, index, kind), &sealed)
            .map_err(|_| BackupError::Damaged(format!("chunk {index} does not open")))?;
        self.index += 1;
        if kind == KIND_LAST {
            check_trailer(&mut self.input, &self.hasher)?;
            self.done = true;
        }
        Ok(Some(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(frames: &[&[u8]], passphrase: &[u8]) -> Vec<u8> {
        let mut w = BackupWriter::new(Vec::new(), passphrase).unwrap();
        for (i, f) in frames.iter().enumerate() {
            w.frame(f, i + 1 == frames.len()).unwrap();
        }
        w.finish().unwrap()
    }

    fn read_all(bytes: &[u8], passphrase: &[u8]) -> Result<Vec<Vec<u8>>, BackupError> {
        verify(bytes)?;
        let mut r = BackupReader::open(bytes, passphrase)?;
        let mut out = Vec::new();
        while let Some(f) = r.next_frame()? {
            out.push(f.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn round_trips_and_refuses_damage_truncation_and_a_wrong_passphrase() {
        let frames: [&[u8]; 3] = [b"header CANARY-backup", b"records", b"end"];
        let bytes = file(&frames, b"correct horse");
        assert_eq!(read_all(&bytes, b"correct horse").unwrap(), frames);
        assert_eq!(verify(&bytes[..]).unwrap(), 3);
        // Sealed: no plaintext in the file.
        assert!(!bytes.windows(13).any(|w| w == b"CANARY-backup"));

        assert!(matches!(
            read_all(&bytes, b"wrong horse"),
            Err(BackupError::WrongPassphrase)
        ));
        for cut in [
            0,
            10,
            HEADER_BYTES,
            HEADER_BYTES + 3,
            bytes.len() - 33,
            bytes.len() - 1,
        ] {
            let err = read_all(&bytes[..cut], b"correct horse").unwrap_err();
            assert!(
                matches!(err, BackupError::Truncated(_) | BackupError::NotASnapshot),
                "cut at {cut}: {err}"
            );
        }
        for at in [
            20,
            HEADER_BYTES - 5,
            HEADER_BYTES + 2,
            HEADER_BYTES + 40,
            bytes.len() - 40,
            bytes.len() - 2,
        ] {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert!(
                verify(&flipped[..]).is_err(),
                "a flip at {at} passed verification"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(verify(&longer[..]), Err(BackupError::Damaged(_))));
        assert!(matches!(
            verify(&b"not a snapshot at all, just text"[..]),
            Err(BackupError::NotASnapshot)
        ));
        let mut future = bytes.clone();
        future[16] = 9;
        assert!(matches!(
            verify(&future[..]),
            Err(BackupError::UnsupportedVersion(9))
        ));
        // The passphrase never shows in an error.
        let err = read_all(&bytes, b"wrong horse").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("horse"));
    }

    #[test]
    fn chunks_are_bound_to_their_file_place_and_kind() {
        let a = file(&[b"one", b"two"], b"passphrase");
        let b = file(&[b"one", b"two"], b"passphrase");
        // Another file's chunks behind this header (the checksum fixed):
        // they were sealed under another key and id, and do not open.
        let mut mixed = a[..HEADER_BYTES].to_vec();
        mixed.extend_from_slice(&b[HEADER_BYTES..b.len() - 32]);
        let sum = *blake3::hash(&mixed).as_bytes();
        mixed.extend_from_slice(&sum);
        assert!(verify(&mixed[..]).is_ok());
        let mut r = BackupReader::open(&mixed[..], b"passphrase").unwrap();
        assert!(matches!(r.next_frame(), Err(BackupError::Damaged(_))));
        assert!(matches!(
            BackupWriter::new(Vec::new(), b"short"),
            Err(BackupError::WeakPassphrase)
        ));
    }

    #[test]
    fn random_damage_never_panics() {
        let bytes = file(&[b"a frame", b"another frame", b"the end"], b"passphrase");
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        for _ in 0..2_000 {
            let mut damaged = bytes.clone();
            let at = rng.gen_range(0..damaged.len());
            damaged[at] ^= rng.gen::<u8>() | 1;
            let cut = rng.gen_range(0..=damaged.len());
            let _ = verify(&damaged[..cut]);
        }
    }
}
