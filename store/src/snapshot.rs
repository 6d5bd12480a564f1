//! Snapshot files: a state machine image as a stream of bounded frames.
//!
//! ```text
//! file  := (u32 BE len ‖ sealed frame)*
//! frame := Header(meta, revision) · Leases((id, ttl)*)* · Records(kv*)*
//!          · End(frames, records)
//! ```
//!
//! Frame version 2 added the `Leases` frames and a lease id on every
//! record; version 1 frames (no leases) still decode, so a member still
//! receives a snapshot from one running the older build.
//!
//! Each frame is sealed on its own, with the file's local id and the frame's
//! position as associated data, so frames cannot be reordered, dropped or
//! spliced in from another file, and a missing `End` frame is reported as a
//! truncated snapshot. A frame holds about [`SNAPSHOT_CHUNK_BYTES`] of
//! records (one record may exceed that, up to the request limit), so neither
//! building, sending nor installing a snapshot ever holds more than one frame
//! in memory: a state of any size streams through.
//!
//! The frames' plaintexts are also what the network carries between
//! members: every node seals snapshots under its own keys, so a sender opens
//! its frames and a receiver validates each one ([`Frame::decode`]) and
//! seals it again under its own keys.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{BasicNode, SnapshotMeta};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::command::{KeyMeta, KeyValue, Value, MAX_KEY_BYTES, MAX_REQUEST_BYTES};
use crate::crypto::{Cipher, OpenError, RECORD_OVERHEAD_BYTES};
use crate::types::{decode_snapshot_meta, encode_snapshot_meta, NodeId};

/// Target plaintext size of one frame.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest frame plaintext accepted (one maximal record plus slack).
pub const MAX_FRAME_BYTES: usize = SNAPSHOT_CHUNK_BYTES + MAX_REQUEST_BYTES + 64 * 1024;
const FRAME_VERSION: u8 = 2;
/// Most leases in one `Leases` frame (16 bytes each).
pub const LEASES_PER_FRAME: usize = 4096;

/// A snapshot operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("snapshot {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("snapshot stream out of order: {0}")]
    Sequence(&'static str),
    #[error("snapshot frame: {0}")]
    Encode(#[from] crate::codec::EncodeError),
    #[error("snapshot frame: {0}")]
    Seal(#[from] crate::crypto::SealError),
}

/// Header of a snapshot: Raft's metadata and the state machine's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub revision: u64,
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Header(SnapshotHeader),
    /// Leases as `(id, ttl_secs)`; they come before every record, so a
    /// record's lease is known when it is installed.
    Leases(Vec<(u64, u64)>),
    Records(Vec<KeyValue>),
    End {
        frames: u64,
        records: u64,
    },
}

impl Frame {
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, EncodeError> {
        let mut w = Writer::with_capacity(256);
        w.u8(FRAME_VERSION);
        match self {
            Frame::Header(h) => {
                w.u8(1);
                encode_snapshot_meta(&mut w, &h.meta);
                w.u64(h.revision);
            }
            Frame::Records(kvs) => {
                w.u8(2);
                w.count(kvs.len(), "kv count");
                for kv in kvs {
                    encode_kv(&mut w, kv);
                }
            }
            Frame::End { frames, records } => {
                w.u8(3).u64(*frames).u64(*records);
            }
            Frame::Leases(leases) => {
                w.u8(4);
                w.count(leases.len(), "lease count");
                for (id, ttl) in leases {
                    w.u64(*id).u64(*ttl);
                }
            }
        }
        w.finish().map(Zeroizing::new)
    }

    /// Decodes and validates a frame's plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(DecodeError::TooLong {
                what: "snapshot frame",
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let layout = KvLayout::read(&mut r, 1, FRAME_VERSION, "snapshot frame version")?;
        let frame = match r.u8("frame tag")? {
            1 => Frame::Header(SnapshotHeader {
                meta: decode_snapshot_meta(&mut r)?,
                revision: r.u64("revision")?,
            }),
            2 => {
                let n = r.count(32, "record count")?;
                let mut kvs = Vec::with_capacity(n);
                for _ in 0..n {
                    kvs.push(decode_kv(&mut r, layout)?);
                }
                Frame::Records(kvs)
            }
            3 => Frame::End {
                frames: r.u64("frame count")?,
                records: r.u64("record count")?,
            },
            4 if layout == KvLayout::WithLease => {
                let n = r.count_at_most(16, LEASES_PER_FRAME, "lease count")?;
                let mut leases = Vec::with_capacity(n);
                for _ in 0..n {
                    leases.push((r.u64("lease id")?, r.u64("lease ttl")?));
                }
                Frame::Leases(leases)
            }
            tag => return Err(DecodeError::UnknownTag { what: "frame", tag }),
        };
        r.finish("snapshot frame")?;
        Ok(frame)
    }
}

/// Which layout a key/value record has: the first format's, or the one
/// with the key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvLayout {
    /// Key, value, create revision, mod revision, version.
    V1,
    /// [`KvLayout::V1`] then the lease id.
    WithLease,
}

impl KvLayout {
    /// Reads the version byte of a container of records (a frame, an
    /// events row, a `kv` row): `without_lease` is the last version whose
    /// records had no lease, `with_lease` the one that added it; any other
    /// version is refused.
    pub fn read(
        r: &mut Reader<'_>,
        without_lease: u8,
        with_lease: u8,
        what: &'static str,
    ) -> Result<KvLayout, DecodeError> {
        match r.u8(what)? {
            v if v == without_lease => Ok(KvLayout::V1),
            v if v == with_lease => Ok(KvLayout::WithLease),
            version => Err(DecodeError::UnknownVersion { what, version }),
        }
    }
}

/// Encodes a key/value record (also the plaintext of a `kv` row and of an
/// event), in the [`KvLayout::WithLease`] layout.
pub fn encode_kv(w: &mut Writer, kv: &KeyValue) {
    w.bytes(&kv.key)
        .bytes(&kv.value)
        .u64(kv.meta.create_revision)
        .u64(kv.meta.mod_revision)
        .u64(kv.meta.version)
        .u64(kv.meta.lease);
}

/// Decodes a record in `layout` ([`encode_kv`] writes the latest).
pub fn decode_kv(r: &mut Reader<'_>, layout: KvLayout) -> Result<KeyValue, DecodeError> {
    let key = r.bytes(MAX_KEY_BYTES, "key")?.to_vec();
    if key.is_empty() {
        return Err(DecodeError::Invalid {
            what: "key",
            reason: "empty",
        });
    }
    Ok(KeyValue {
        key,
        value: Value(r.bytes(MAX_REQUEST_BYTES, "value")?.to_vec()),
        meta: KeyMeta {
            create_revision: r.u64("create revision")?,
            mod_revision: r.u64("mod revision")?,
            version: r.u64("version")?,
            lease: match layout {
                KvLayout::V1 => 0,
                KvLayout::WithLease => r.u64("lease")?,
            },
        },
    })
}

fn frame_location(id: &str, index: u64) -> Vec<u8> {
    let mut loc = Vec::with_capacity(24 + id.len());
    loc.extend_from_slice(b"coffer-snapshot/");
    loc.extend_from_slice(id.as_bytes());
    loc.extend_from_slice(&index.to_be_bytes());
    loc
}

/// A finished snapshot file on disk and the keys that open it: openraft's
/// `SnapshotData`.
#[derive(Clone)]
pub struct SnapshotFile {
    path: PathBuf,
    id: String,
    cipher: Arc<Cipher>,
}

impl fmt::Debug for SnapshotFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SnapshotFile {
    /// A handle on an existing file `<dir>/<id>.snap`.
    pub fn new(dir: &Path, id: &str, cipher: Arc<Cipher>) -> Self {
        SnapshotFile {
            path: dir.join(format!("{id}.snap")),
            id: id.to_string(),
            cipher,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cipher(&self) -> &Arc<Cipher> {
        &self.cipher
    }

    /// Reads the frames back, checking their order and the end marker.
    pub fn reader(&self) -> Result<SnapshotReader, SnapshotError> {
        let file = File::open(&self.path).map_err(|source| SnapshotError::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(SnapshotReader {
            file: BufReader::with_capacity(256 * 1024, file),
            path: self.path.clone(),
            id: self.id.clone(),
            cipher: self.cipher.clone(),
            index: 0,
            records: 0,
            done: false,
        })
    }

    /// The distinct key ids the file's frames are sealed under.
    pub fn key_ids(&self) -> Result<std::collections::BTreeSet<crate::crypto::KeyId>, SnapshotError> {
        Ok(frame_key_ids(&self.path)?.into_iter().collect())
    }

    /// Reads only the header frame.
    pub fn header(&self) -> Result<SnapshotHeader, SnapshotError> {
        let mut r = self.reader()?;
        match r.next_frame()? {
            Some((Frame::Header(h), _)) => Ok(h),
            _ => Err(SnapshotError::Corrupt {
                path: self.path.clone(),
                detail: "no header frame".into(),
            }),
        }
    }
}

/// The key id of every frame of the file at `path`, read from the frames'
/// headers without opening them. A file cut short (one being written)
/// yields the frames it holds so far; a file that vanished, none.
pub fn frame_key_ids(path: &Path) -> Result<Vec<crate::crypto::KeyId>, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut r = BufReader::with_capacity(64 * 1024, file);
    let mut ids = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if r.read_exact(&mut len).is_err() {
            return Ok(ids);
        }
        let len = u32::from_be_bytes(len) as u64;
        let mut head = [0u8; 5];
        let head_len = len.min(5) as usize;
        if r.read_exact(&mut head[..head_len]).is_err() {
            return Ok(ids);
        }
        // A plaintext record (a store with encryption off) names no key.
        if head[0] != crate::crypto::PLAINTEXT_RECORD_VERSION {
            match crate::crypto::record_key_id(&head[..head_len]) {
                Some(id) => ids.push(id),
                None => {
                    return Err(SnapshotError::Corrupt {
                        path: path.to_path_buf(),
                        detail: format!("frame {} is not a sealed record", ids.len()),
                    })
                }
            }
        }
        let skip = i64::try_from(len - head_len as u64).map_err(|_| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            detail: "frame length out of range".into(),
        })?;
        r.seek_relative(skip).map_err(io)?;
    }
}

/// A decoded frame with its plaintext bytes (what a transport sends).
pub type FrameBytes = (Frame, Zeroizing<Vec<u8>>);

/// Reads a snapshot file frame by frame.
pub struct SnapshotReader {
    file: BufReader<File>,
    path: PathBuf,
    id: String,
    cipher: Arc<Cipher>,
    index: u64,
    records: u64,
    done: bool,
}

impl fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("path", &self.path)
            .field("frame", &self.index)
            .finish()
    }
}

impl SnapshotReader {
    fn corrupt(&self, detail: impl Into<String>) -> SnapshotError {
        SnapshotError::Corrupt {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    /// The next frame, decoded and as plaintext bytes; `None` after `End`.
    pub fn next_frame(&mut self) -> Result<Option<FrameBytes>, SnapshotError> {
        if self.done {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        if let Err(e) = self.file.read_exact(&mut len) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt(format!(
                    "truncated before frame {} (no end marker)",
                    self.index
                ))
            } else {
                SnapshotError::Io {
                    path: self.path.clone(),
                    source: e,
                }
            });
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME_BYTES + RECORD_OVERHEAD_BYTES {
            return Err(self.corrupt(format!("frame {} claims {len} bytes", self.index)));
        }
        let mut sealed = vec![0u8; len];
        if let Err(e) = self.file.read_exact(&mut sealed) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                self.corrupt(format!("truncated inside frame {}", self.index))
            } else {
                SnapshotError::Io {
                    path: self.path.clone(),
                    source: e,
                }
            });
        }
        let plain = self
            .cipher
            .open(&frame_location(&self.id, self.index), &sealed)
            .map_err(|e: OpenError| self.corrupt(format!("frame {}: {e}", self.index)))?;
        let frame = Frame::decode(&plain)
            .map_err(|e| self.corrupt(format!("frame {}: {e}", self.index)))?;
        match (&frame, self.index) {
            (Frame::Header(_), 0) => {}
            (Frame::Header(_), _) => return Err(self.corrupt("header frame after the first")),
            (_, 0) => return Err(self.corrupt("first frame is not a header")),
            (Frame::Leases(_), _) if self.records > 0 => {
                return Err(self.corrupt("leases frame after records"))
            }
            (Frame::Leases(_), _) => {}
            (Frame::Records(kvs), _) => self.records += kvs.len() as u64,
            (Frame::End { frames, records }, i) => {
                if *frames != i || *records != self.records {
                    return Err(self.corrupt("end marker does not match the frames read"));
                }
                self.done = true;
            }
        }
        self.index += 1;
        Ok(Some((frame, plain)))
    }
}

/// Writes a new snapshot file; it becomes visible under its final name only
/// once complete and synced.
pub struct SnapshotWriter {
    file: BufWriter<File>,
    tmp: PathBuf,
    dir: PathBuf,
    id: String,
    cipher: Arc<Cipher>,
    frames: u64,
    records: u64,
    ended: bool,
    pending: Vec<KeyValue>,
    pending_bytes: usize,
}

impl fmt::Debug for SnapshotWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotWriter")
            .field("tmp", &self.tmp)
            .field("frames", &self.frames)
            .finish()
    }
}

impl SnapshotWriter {
    /// Starts `<dir>/<id>.snap` (written as `<id>.snap.tmp` until finished).
    pub fn create(dir: &Path, id: &str, cipher: Arc<Cipher>) -> Result<Self, SnapshotError> {
        let tmp = dir.join(format!("{id}.snap.tmp"));
        let file = File::create(&tmp).map_err(|source| SnapshotError::Io {
            path: tmp.clone(),
            source,
        })?;
        Ok(SnapshotWriter {
            file: BufWriter::with_capacity(256 * 1024, file),
            tmp,
            dir: dir.to_path_buf(),
            id: id.to_string(),
            cipher,
            frames: 0,
            records: 0,
            ended: false,
            pending: Vec::new(),
            pending_bytes: 0,
        })
    }

    /// The id the finished file will have.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn io(&self, source: io::Error) -> SnapshotError {
        SnapshotError::Io {
            path: self.tmp.clone(),
            source,
        }
    }

    fn seal_and_write(&mut self, plain: &[u8]) -> Result<(), SnapshotError> {
        let sealed = self
            .cipher
            .seal(&frame_location(&self.id, self.frames), plain)?;
        let len =
            u32::try_from(sealed.len()).map_err(|_| SnapshotError::Sequence("frame too large"))?;
        self.file
            .write_all(&len.to_be_bytes())
            .map_err(|e| self.io(e))?;
        self.file.write_all(&sealed).map_err(|e| self.io(e))?;
        self.frames += 1;
        Ok(())
    }

    /// Writes one frame received as plaintext, after validating it and its
    /// place in the stream.
    pub fn write_frame(&mut self, plain: &[u8]) -> Result<(), SnapshotError> {
        let frame = Frame::decode(plain).map_err(|e| SnapshotError::Corrupt {
            path: self.tmp.clone(),
            detail: format!("received frame {}: {e}", self.frames),
        })?;
        self.check_order(&frame)?;
        self.seal_and_write(plain)
    }

    fn check_order(&mut self, frame: &Frame) -> Result<(), SnapshotError> {
        if self.ended {
            return Err(SnapshotError::Sequence("frame after the end marker"));
        }
        match (frame, self.frames) {
            (Frame::Header(_), 0) => Ok(()),
            (Frame::Header(_), _) => Err(SnapshotError::Sequence("second header frame")),
            (_, 0) => Err(SnapshotError::Sequence("first frame is not a header")),
            (Frame::Leases(_), _) if self.records > 0 || !self.pending.is_empty() => {
                Err(SnapshotError::Sequence("leases frame after records"))
            }
            (Frame::Leases(_), _) => Ok(()),
            (Frame::Records(kvs), _) => {
                self.records += kvs.len() as u64;
                Ok(())
            }
            (Frame::End { frames, records }, n) => {
                if *frames != n || *records != self.records {
                    return Err(SnapshotError::Sequence(
                        "end marker does not match the frames sent",
                    ));
                }
                self.ended = true;
                Ok(())
            }
        }
    }

    /// Writes the header frame (the first call on a builder).
    pub fn header(&mut self, header: SnapshotHeader) -> Result<(), SnapshotError> {
        let frame = Frame::Header(header);
        self.check_order(&frame)?;
        self.seal_and_write(&frame.encode()?)
    }

    /// Writes leases as `(id, ttl_secs)`, in frames of at most
    /// [`LEASES_PER_FRAME`]; every lease comes before the first record.
    pub fn leases(&mut self, leases: &[(u64, u64)]) -> Result<(), SnapshotError> {
        for chunk in leases.chunks(LEASES_PER_FRAME) {
            let frame = Frame::Leases(chunk.to_vec());
            self.check_order(&frame)?;
            self.seal_and_write(&frame.encode()?)?;
        }
        Ok(())
    }

    /// Adds a record, writing a frame whenever a chunk's worth is pending.
    pub fn push(&mut self, kv: KeyValue) -> Result<(), SnapshotError> {
        self.pending_bytes += kv.key.len() + kv.value.len() + 32;
        self.pending.push(kv);
        if self.pending_bytes >= SNAPSHOT_CHUNK_BYTES {
            self.flush_records()?;
        }
        Ok(())
    }

    fn flush_records(&mut self) -> Result<(), SnapshotError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let frame = Frame::Records(std::mem::take(&mut self.pending));
        self.pending_bytes = 0;
        self.check_order(&frame)?;
        self.seal_and_write(&frame.encode()?)
    }

    /// Ends the stream (if the frames so far did not), syncs the file and
    /// moves it to its final name.
    pub fn finish(mut self) -> Result<SnapshotFile, SnapshotError> {
        if !self.ended {
            self.flush_records()?;
            let end = Frame::End {
                frames: self.frames,
                records: self.records,
            };
            self.check_order(&end)?;
            self.seal_and_write(&end.encode()?)?;
        }
        self.file.flush().map_err(|e| self.io(e))?;
        self.file.get_ref().sync_all().map_err(|e| self.io(e))?;
        let done = SnapshotFile::new(&self.dir, &self.id, self.cipher.clone());
        fs::rename(&self.tmp, &done.path).map_err(|e| self.io(e))?;
        sync_dir(&self.dir).map_err(|e| self.io(e))?;
        Ok(done)
    }

    /// Whether the received stream has ended (its `End` frame was written).
    pub fn is_complete(&self) -> bool {
        self.ended
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // An unfinished snapshot leaves no file behind; after `finish` the
        // temporary name no longer exists and this is a no-op.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Makes a rename or creation in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyId, SecretKey};
    use openraft::StoredMembership;

    fn cipher() -> Arc<Cipher> {
        let k = SecretKey::random();
        Arc::new(Cipher::new(KeyId(1), [(KeyId(1), &k)], SecretKey::random()).unwrap())
    }

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            meta: SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: "s1".into(),
            },
            revision: 42,
        }
    }

    fn kv(i: usize, len: usize) -> KeyValue {
        KeyValue {
            key: format!("key-{i:06}").into_bytes(),
            value: Value(vec![b'v'; len]),
            meta: KeyMeta {
                create_revision: i as u64 + 1,
                mod_revision: i as u64 + 1,
                version: 1,
                lease: 0,
            },
        }
    }

    fn write(dir: &Path, c: &Arc<Cipher>, n: usize) -> SnapshotFile {
        let mut w = SnapshotWriter::create(dir, "a", c.clone()).unwrap();
        w.header(header()).unwrap();
        for i in 0..n {
            w.push(kv(i, 10_000)).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn streams_in_bounded_frames_and_re_seals_on_receive() {
        let dir = tempfile::tempdir().unwrap();
        let c = cipher();
        let f = write(dir.path(), &c, 400); // ~4 MB: several frames
        let mut r = f.reader().unwrap();
        let other = cipher();
        let mut recv = SnapshotWriter::create(dir.path(), "b", other.clone()).unwrap();
        let mut frames = 0;
        let mut n = 0;
        while let Some((frame, plain)) = r.next_frame().unwrap() {
            assert!(plain.len() <= MAX_FRAME_BYTES);
            if let Frame::Records(kvs) = &frame {
                n += kvs.len();
            }
            recv.write_frame(&plain).unwrap();
            frames += 1;
        }
        assert_eq!(n, 400);
        assert!(frames >= 5, "expected several frames, got {frames}");
        assert!(recv.is_complete());
        let got = recv.finish().unwrap();
        assert_eq!(got.header().unwrap(), header());
        let bytes = fs::read(got.path()).unwrap();
        assert!(
            !bytes.windows(10).any(|w| w == b"key-000001"),
            "snapshot is readable on disk"
        );
    }

    #[test]
    fn truncation_and_flips_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let c = cipher();
        let f = write(dir.path(), &c, 250);
        let good = fs::read(f.path()).unwrap();
        let read_all = |bytes: &[u8]| -> Result<usize, SnapshotError> {
            fs::write(f.path(), bytes).unwrap();
            let mut r = f.reader()?;
            let mut n = 0;
            while r.next_frame()?.is_some() {
                n += 1;
            }
            Ok(n)
        };
        assert!(read_all(&good).is_ok());
        for cut in [0, 3, 100, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(read_all(&good[..cut]), Err(SnapshotError::Corrupt { .. })),
                "truncation at {cut} accepted"
            );
        }
        let mut flipped = good.clone();
        flipped[good.len() / 3] ^= 4;
        assert!(matches!(
            read_all(&flipped),
            Err(SnapshotError::Corrupt { .. })
        ));
    }

    #[test]
    fn receiver_refuses_out_of_order_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), "x", cipher()).unwrap();
        let recs = Frame::Records(vec![kv(1, 1)]).encode().unwrap();
        assert!(matches!(
            w.write_frame(&recs),
            Err(SnapshotError::Sequence(_))
        ));
        w.write_frame(&Frame::Header(header()).encode().unwrap())
            .unwrap();
        let bad_end = Frame::End {
            frames: 9,
            records: 0,
        }
        .encode()
        .unwrap();
        assert!(matches!(
            w.write_frame(&bad_end),
            Err(SnapshotError::Sequence(_))
        ));
        assert!(w.write_frame(&[1, 2, 3]).is_err());
    }

    /// Leases come after the header and before every record; a version 1
    /// frame (from before leases) still decodes, its records on no lease.
    #[test]
    fn leases_precede_records_and_first_format_frames_decode() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SnapshotWriter::create(dir.path(), "l", cipher()).unwrap();
        w.header(header()).unwrap();
        w.leases(&[(5, 60), (6, 1)]).unwrap();
        w.push(kv(1, 1)).unwrap();
        let f = w.finish().unwrap();
        let mut r = f.reader().unwrap();
        let mut seen = Vec::new();
        while let Some((frame, _)) = r.next_frame().unwrap() {
            seen.push(frame);
        }
        assert_eq!(seen[1], Frame::Leases(vec![(5, 60), (6, 1)]));
        assert!(matches!(&seen[2], Frame::Records(kvs) if kvs.len() == 1));

        let mut late = SnapshotWriter::create(dir.path(), "m", cipher()).unwrap();
        late.header(header()).unwrap();
        late.write_frame(&Frame::Records(vec![kv(1, 1)]).encode().unwrap())
            .unwrap();
        assert!(matches!(
            late.write_frame(&Frame::Leases(vec![(1, 1)]).encode().unwrap()),
            Err(SnapshotError::Sequence(_))
        ));

        let mut v1 = Writer::default();
        v1.u8(1).u8(2).count(1, "kvs");
        v1.bytes(b"k").bytes(b"v").u64(1).u64(2).u64(3);
        let v1 = v1.finish().unwrap();
        let Frame::Records(kvs) = Frame::decode(&v1).unwrap() else {
            panic!("not records");
        };
        assert_eq!(
            kvs[0].meta,
            KeyMeta {
                create_revision: 1,
                mod_revision: 2,
                version: 3,
                lease: 0
            }
        );
        let mut v1_leases = Writer::default();
        v1_leases.u8(1).u8(4).count(0, "leases");
        assert!(Frame::decode(&v1_leases.finish().unwrap()).is_err());
    }
}
