//! The replicated commands (what a Raft log entry carries) and their results.
//!
//! `Debug` on every type that can hold a value prints its length, never its
//! bytes: values are secrets.

use std::fmt;

use zeroize::Zeroize;

use crate::codec::{DecodeError, EncodeError, Reader, Writer};

/// Largest encoded request accepted: 1.5 MiB.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Longest key name.
pub const MAX_KEY_BYTES: usize = 8 * 1024;
/// Most compares plus operations in one transaction.
pub const MAX_TXN_OPS: usize = 1024;
/// Most requests batched into one log entry.
pub const MAX_BATCH_REQUESTS: usize = 1024;

const COMMAND_VERSION: u8 = 1;
/// Request option flags (tags 4 to 6).
const FLAG_PREV_KV: u8 = 1;
/// A put's options byte: a lease id (u64) follows.
const FLAG_LEASE: u8 = 2;
/// Longest lease time-to-live, in seconds (etcd's limit).
pub const MAX_LEASE_TTL_SECS: u64 = 9_000_000_000;

/// An options byte: unknown bits are refused, so a later option is never
/// silently dropped by an older build.
fn flags(r: &mut Reader<'_>, known: u8) -> Result<u8, DecodeError> {
    let f = r.u8("request flags")?;
    if f & !known != 0 {
        return Err(DecodeError::Invalid {
            what: "request flags",
            reason: "unknown option bits",
        });
    }
    Ok(f)
}

/// A value. Values are secrets: `Debug` prints only the length, and the
/// bytes are wiped when the value is dropped, so a decrypted value leaves
/// no copy behind on the read path. It reads as a byte slice (`Deref`);
/// [`Value::into_vec`] hands the bytes over to a caller that takes on
/// wiping them.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Value(pub Vec<u8>);

impl Value {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, as a plain `Vec` the caller now owns (and wipes, if it
    /// cares to).
    pub fn into_vec(mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value([redacted; {} bytes])", self.0.len())
    }
}

impl std::ops::Deref for Value {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value(v)
    }
}

impl From<&[u8]> for Value {
    fn from(v: &[u8]) -> Self {
        Value(v.to_vec())
    }
}

impl PartialEq<[u8]> for Value {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl PartialEq<&[u8]> for Value {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Vec<u8>> for Value {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.0 == *other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for Value {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.0 == other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for Value {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.0 == *other
    }
}

/// One key's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyMeta {
    /// Revision of the put that created the key.
    pub create_revision: u64,
    /// Revision of the last put.
    pub mod_revision: u64,
    /// Number of puts since creation (1 after the first).
    pub version: u64,
    /// The lease the key is attached to (0: none): the key is deleted when
    /// the lease expires or is revoked.
    pub lease: u64,
}

/// A key with its value and metadata.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Value,
    pub meta: KeyMeta,
}

impl fmt::Debug for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyValue")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field(
                "value",
                &format_args!("[redacted; {} bytes]", self.value.len()),
            )
            .field("meta", &self.meta)
            .finish()
    }
}

/// How a compare relates the key's current field to the given one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    /// The current field is less than the given one.
    Less,
    /// The current field is greater than the given one.
    Greater,
}

impl CmpOp {
    /// Whether `current` relates to `given` as this operator says.
    pub fn holds<T: Ord + ?Sized>(self, current: &T, given: &T) -> bool {
        let ord = current.cmp(given);
        match self {
            CmpOp::Equal => ord.is_eq(),
            CmpOp::NotEqual => ord.is_ne(),
            CmpOp::Less => ord.is_lt(),
            CmpOp::Greater => ord.is_gt(),
        }
    }

    fn tag(self) -> u8 {
        match self {
            CmpOp::Equal => 1,
            CmpOp::NotEqual => 2,
            CmpOp::Less => 3,
            CmpOp::Greater => 4,
        }
    }

    fn from_tag(tag: u8) -> Result<Self, DecodeError> {
        Ok(match tag {
            1 => CmpOp::Equal,
            2 => CmpOp::NotEqual,
            3 => CmpOp::Less,
            4 => CmpOp::Greater,
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "compare operator",
                    tag,
                })
            }
        })
    }
}

/// What a transaction checks before it runs, as etcd's `Compare` does. On
/// an absent key, version and both revisions read as 0, and a value
/// compare fails whatever its operator (there is no value to compare).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key does not exist.
    Absent,
    /// The key exists.
    Exists,
    /// The key exists and its value compares so (bytewise) with this one.
    Value(CmpOp, Value),
    /// Puts since the key's creation (0: absent) compare so.
    Version(CmpOp, u64),
    /// The revision that created the key (0: absent) compares so.
    CreateRevision(CmpOp, u64),
    /// The revision of the key's last change (0: absent) compares so.
    ModRevision(CmpOp, u64),
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub check: Check,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A put; `lease` attaches the key to a lease (0: none), which must
    /// exist or the whole transaction is refused.
    Put {
        key: Vec<u8>,
        value: Value,
        lease: u64,
    },
    Delete {
        key: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

/// A compare-and-swap transaction: if every compare holds, run `success`,
/// else run `failure`; either way atomically, at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

impl Op {
    /// A put with no lease.
    pub fn put(key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: Value(value.into()),
            lease: 0,
        }
    }
}

/// A state-changing request. `prev_kv` asks for the key's previous value
/// and metadata in the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Puts `value` under `key`; `lease` attaches the key to a lease (0:
    /// none, which also detaches it from a lease it had).
    Put {
        key: Vec<u8>,
        value: Value,
        prev_kv: bool,
        lease: u64,
    },
    Delete {
        key: Vec<u8>,
        prev_kv: bool,
    },
    /// Deletes every key in `[start, end)` (`end: None`: every key from
    /// `start` on), at one revision; at most [`MAX_DELETE_RANGE_KEYS`].
    DeleteRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
        prev_kv: bool,
    },
    Txn(Txn),
    /// Drops the watch history up to and including `revision` on every
    /// member (etcd's `Compact`); watches from there on fail with
    /// `Compacted`. A revision past the store's is refused.
    Compact {
        revision: u64,
    },
    /// Creates lease `id` (chosen by the proposer, never 0) with a
    /// time-to-live in seconds. The member that leads counts it down and
    /// revokes it through Raft once it has gone `ttl_secs` without a grant
    /// or keep-alive.
    LeaseGrant {
        id: u64,
        ttl_secs: u64,
    },
    /// Deletes lease `id` and every key attached to it, at one revision.
    LeaseRevoke {
        id: u64,
    },
    /// Restarts lease `id`'s countdown.
    LeaseKeepAlive {
        id: u64,
    },
}

/// Most keys one range delete removes; a range holding more is refused
/// (nothing is deleted) and must be deleted in smaller ranges.
pub const MAX_DELETE_RANGE_KEYS: usize = 1024;

/// What a Raft log entry carries: a batch of requests from concurrent
/// callers (applied in order, each at its own revision) and the quota the
/// proposing leader enforces, so that every member decides alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub quota_bytes: u64,
    pub requests: Vec<Request>,
}

/// The result of one transaction operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Put,
    Delete { deleted: bool },
    Get(Option<KeyValue>),
}

/// Why the state machine refused a command (it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    QuotaExceeded {
        used_bytes: u64,
        requested_bytes: u64,
        quota_bytes: u64,
    },
    /// A range delete over more than [`MAX_DELETE_RANGE_KEYS`] keys.
    TooManyKeys { keys: u64, limit: u64 },
    /// A compaction past the store's revision.
    FutureRevision { requested: u64, current: u64 },
    /// The lease named does not exist (it expired, was revoked, or never
    /// was).
    LeaseNotFound { id: u64 },
    /// A grant named a lease id that is taken.
    LeaseExists { id: u64 },
}

/// The result of applying one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Put {
        revision: u64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        revision: u64,
        deleted: bool,
        prev_kv: Option<KeyValue>,
    },
    DeleteRange {
        revision: u64,
        deleted: u64,
        /// The deleted keys as they were, when asked for.
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        revision: u64,
        succeeded: bool,
        results: Vec<OpResult>,
    },
    /// The history up to `compacted` is being dropped; `revision` is the
    /// store's (a compaction changes no key and takes no revision).
    Compact {
        revision: u64,
        compacted: u64,
    },
    /// A lease was granted (a grant changes no key and takes no revision).
    LeaseGrant {
        id: u64,
        ttl_secs: u64,
    },
    /// A lease was revoked, with `deleted` keys, at `revision` (the
    /// store's, if it had no keys).
    LeaseRevoke {
        revision: u64,
        deleted: u64,
    },
    /// A lease's countdown restarted from its full time-to-live.
    LeaseKeepAlive {
        id: u64,
        ttl_secs: u64,
    },
    Rejected(Rejection),
}

impl Request {
    fn check_key(key: &[u8]) -> Result<(), &'static str> {
        if key.is_empty() {
            return Err("key is empty");
        }
        if key.len() > MAX_KEY_BYTES {
            return Err("key is longer than 8 KiB");
        }
        Ok(())
    }

    /// Checks what no state could make valid: empty or long keys, oversized
    /// transactions.
    pub fn validate(&self) -> Result<(), &'static str> {
        match self {
            Request::Put { key, .. } | Request::Delete { key, .. } => Self::check_key(key),
            Request::DeleteRange { start, end, .. } => crate::range::Range {
                start: start.clone(),
                end: end.clone(),
                ..crate::range::Range::default()
            }
            .validate(),
            Request::Compact { .. } => Ok(()),
            Request::LeaseGrant { id: 0, .. }
            | Request::LeaseRevoke { id: 0 }
            | Request::LeaseKeepAlive { id: 0 } => {
                Err("lease id 0 is reserved (it means no lease)")
            }
            Request::LeaseGrant { ttl_secs, .. }
                if *ttl_secs == 0 || *ttl_secs > MAX_LEASE_TTL_SECS =>
            {
                Err("lease time-to-live must be 1 to 9,000,000,000 seconds")
            }
            Request::LeaseGrant { .. }
            | Request::LeaseRevoke { .. }
            | Request::LeaseKeepAlive { .. } => Ok(()),
            Request::Txn(t) => {
                if t.compares.len() + t.success.len() + t.failure.len() > MAX_TXN_OPS {
                    return Err("transaction has more than 1024 compares and operations");
                }
                for c in &t.compares {
                    Self::check_key(&c.key)?;
                }
                for op in t.success.iter().chain(&t.failure) {
                    match op {
                        Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => {
                            Self::check_key(key)?
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn encode_op(w: &mut Writer, op: &Op) {
    match op {
        Op::Put {
            key,
            value,
            lease: 0,
        } => w.u8(1).bytes(key).bytes(&value.0),
        Op::Put { key, value, lease } => w.u8(4).bytes(key).bytes(&value.0).u64(*lease),
        Op::Delete { key } => w.u8(2).bytes(key),
        Op::Get { key } => w.u8(3).bytes(key),
    };
}

fn decode_op(r: &mut Reader<'_>) -> Result<Op, DecodeError> {
    Ok(match r.u8("op tag")? {
        tag @ (1 | 4) => Op::Put {
            key: r.bytes(MAX_KEY_BYTES, "key")?.to_vec(),
            value: Value(r.bytes(MAX_REQUEST_BYTES, "value")?.to_vec()),
            lease: if tag == 4 { r.u64("lease")? } else { 0 },
        },
        2 => Op::Delete {
            key: r.bytes(MAX_KEY_BYTES, "key")?.to_vec(),
        },
        3 => Op::Get {
            key: r.bytes(MAX_KEY_BYTES, "key")?.to_vec(),
        },
        tag => return Err(DecodeError::UnknownTag { what: "op", tag }),
    })
}

fn encode_ops(w: &mut Writer, ops: &[Op]) {
    w.count(ops.len(), "op count");
    for op in ops {
        encode_op(w, op);
    }
}

fn decode_ops(r: &mut Reader<'_>) -> Result<Vec<Op>, DecodeError> {
    let n = r.count_at_most(5, MAX_TXN_OPS, "op count")?;
    (0..n).map(|_| decode_op(r)).collect()
}

impl Request {
    pub fn encode(&self, w: &mut Writer) {
        match self {
            // Requests without options keep their first encodings (tags 1
            // and 2); options take the later tags.
            Request::Put {
                key,
                value,
                prev_kv: false,
                lease: 0,
            } => w.u8(1).bytes(key).bytes(&value.0),
            Request::Put {
                key,
                value,
                prev_kv,
                lease,
            } => {
                let mut f = if *prev_kv { FLAG_PREV_KV } else { 0 };
                if *lease != 0 {
                    f |= FLAG_LEASE;
                }
                w.u8(4).bytes(key).bytes(&value.0).u8(f);
                if *lease != 0 {
                    w.u64(*lease);
                }
                w
            }
            Request::Delete {
                key,
                prev_kv: false,
            } => w.u8(2).bytes(key),
            Request::Delete { key, prev_kv: true } => w.u8(5).bytes(key).u8(FLAG_PREV_KV),
            Request::DeleteRange {
                start,
                end,
                prev_kv,
            } => {
                w.u8(6).bytes(start);
                match end {
                    None => w.bool(false),
                    Some(end) => w.bool(true).bytes(end),
                };
                w.u8(if *prev_kv { FLAG_PREV_KV } else { 0 })
            }
            Request::Compact { revision } => w.u8(7).u64(*revision),
            Request::LeaseGrant { id, ttl_secs } => w.u8(8).u64(*id).u64(*ttl_secs),
            Request::LeaseRevoke { id } => w.u8(9).u64(*id),
            Request::LeaseKeepAlive { id } => w.u8(10).u64(*id),
            Request::Txn(t) => {
                w.u8(3);
                w.count(t.compares.len(), "compare count");
                for c in &t.compares {
                    w.bytes(&c.key);
                    match &c.check {
                        Check::Absent => w.u8(1),
                        Check::Exists => w.u8(2),
                        Check::Value(op, v) => w.u8(6).u8(op.tag()).bytes(&v.0),
                        Check::Version(op, n) => w.u8(7).u8(op.tag()).u64(*n),
                        Check::CreateRevision(op, rev) => w.u8(8).u8(op.tag()).u64(*rev),
                        Check::ModRevision(op, rev) => w.u8(9).u8(op.tag()).u64(*rev),
                    };
                }
                encode_ops(w, &t.success);
                encode_ops(w, &t.failure);
                w
            }
        };
    }

    /// Bytes this request takes in a log entry.
    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::with_capacity(64);
        self.encode(&mut w);
        w.len()
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(match r.u8("request tag")? {
            tag @ (1 | 4) => {
                let key = r.bytes(MAX_KEY_BYTES, "key")?.to_vec();
                let value = Value(r.bytes(MAX_REQUEST_BYTES, "value")?.to_vec());
                let f = if tag == 4 {
                    flags(r, FLAG_PREV_KV | FLAG_LEASE)?
                } else {
                    0
                };
                let lease = if f & FLAG_LEASE != 0 {
                    r.u64("lease")?
                } else {
                    0
                };
                Request::Put {
                    key,
                    value,
                    prev_kv: f & FLAG_PREV_KV != 0,
                    lease,
                }
            }
            tag @ (2 | 5) => Request::Delete {
                key: r.bytes(MAX_KEY_BYTES, "key")?.to_vec(),
                prev_kv: tag == 5 && flags(r, FLAG_PREV_KV)? & FLAG_PREV_KV != 0,
            },
            6 => Request::DeleteRange {
                start: r.bytes(MAX_KEY_BYTES + 1, "range start")?.to_vec(),
                end: if r.bool("range end present")? {
                    Some(r.bytes(MAX_KEY_BYTES + 1, "range end")?.to_vec())
                } else {
                    None
                },
                prev_kv: flags(r, FLAG_PREV_KV)? & FLAG_PREV_KV != 0,
            },
            7 => Request::Compact {
                revision: r.u64("compact revision")?,
            },
            8 => Request::LeaseGrant {
                id: r.u64("lease id")?,
                ttl_secs: r.u64("lease ttl")?,
            },
            9 => Request::LeaseRevoke {
                id: r.u64("lease id")?,
            },
            10 => Request::LeaseKeepAlive {
                id: r.u64("lease id")?,
            },
            3 => {
                let n = r.count_at_most(5, MAX_TXN_OPS, "compare count")?;
                let mut compares = Vec::with_capacity(n);
                for _ in 0..n {
                    let key = r.bytes(MAX_KEY_BYTES, "key")?.to_vec();
                    let check = match r.u8("check tag")? {
                        1 => Check::Absent,
                        2 => Check::Exists,
                        // Tags 3 to 5 are the equality-only compares of the
                        // first format; entries holding them still decode.
                        3 => Check::Value(
                            CmpOp::Equal,
                            Value(r.bytes(MAX_REQUEST_BYTES, "value")?.to_vec()),
                        ),
                        4 => Check::ModRevision(CmpOp::Equal, r.u64("revision")?),
                        5 => Check::Version(CmpOp::Equal, r.u64("version")?),
                        6 => {
                            let op = CmpOp::from_tag(r.u8("compare operator")?)?;
                            Check::Value(op, Value(r.bytes(MAX_REQUEST_BYTES, "value")?.to_vec()))
                        }
                        7 => Check::Version(
                            CmpOp::from_tag(r.u8("compare operator")?)?,
                            r.u64("version")?,
                        ),
                        8 => Check::CreateRevision(
                            CmpOp::from_tag(r.u8("compare operator")?)?,
                            r.u64("revision")?,
                        ),
                        9 => Check::ModRevision(
                            CmpOp::from_tag(r.u8("compare operator")?)?,
                            r.u64("revision")?,
                        ),
                        tag => return Err(DecodeError::UnknownTag { what: "check", tag }),
                    };
                    compares.push(Compare { key, check });
                }
                let success = decode_ops(r)?;
                let failure = decode_ops(r)?;
                Request::Txn(Txn {
                    compares,
                    success,
                    failure,
                })
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "request",
                    tag,
                })
            }
        })
    }
}

impl Command {
    pub fn encode(&self, w: &mut Writer) {
        w.u8(COMMAND_VERSION).u64(self.quota_bytes);
        w.count(self.requests.len(), "request count");
        for request in &self.requests {
            request.encode(w);
        }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::with_capacity(64);
        self.encode(&mut w);
        w.finish()
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let version = r.u8("command version")?;
        if version != COMMAND_VERSION {
            return Err(DecodeError::UnknownVersion {
                what: "command",
                version,
            });
        }
        let quota_bytes = r.u64("quota")?;
        let n = r.count_at_most(5, MAX_BATCH_REQUESTS, "request count")?;
        let requests = (0..n)
            .map(|_| Request::decode(r))
            .collect::<Result<_, _>>()?;
        Ok(Command {
            quota_bytes,
            requests,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let c = Self::decode(&mut r)?;
        r.finish("command")?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        // Every put encoding: plain, prev_kv, lease, both.
        let puts = [(false, 0), (true, 0), (false, 42), (true, 42)].map(|(prev_kv, lease)| {
            Request::Put {
                key: b"a".to_vec(),
                value: Value(b"1".to_vec()),
                prev_kv,
                lease,
            }
        });
        let others = [
            Request::Delete {
                key: b"b".to_vec(),
                prev_kv: false,
            },
            Request::Delete {
                key: b"b".to_vec(),
                prev_kv: true,
            },
            Request::DeleteRange {
                start: b"p/".to_vec(),
                end: Some(b"p0".to_vec()),
                prev_kv: true,
            },
            Request::DeleteRange {
                start: b"q".to_vec(),
                end: None,
                prev_kv: false,
            },
            Request::Compact { revision: 12 },
            Request::LeaseGrant {
                id: 42,
                ttl_secs: 10,
            },
            Request::LeaseRevoke { id: 42 },
            Request::LeaseKeepAlive { id: 42 },
            Request::Txn(Txn {
                compares: vec![
                    Compare {
                        key: b"a".to_vec(),
                        check: Check::Value(CmpOp::Less, Value(b"1".to_vec())),
                    },
                    Compare {
                        key: b"c".to_vec(),
                        check: Check::ModRevision(CmpOp::Greater, 9),
                    },
                    Compare {
                        key: b"c".to_vec(),
                        check: Check::CreateRevision(CmpOp::NotEqual, 3),
                    },
                    Compare {
                        key: b"c".to_vec(),
                        check: Check::Version(CmpOp::Equal, 2),
                    },
                    Compare {
                        key: b"d".to_vec(),
                        check: Check::Absent,
                    },
                ],
                success: vec![
                    Op::Get { key: b"a".to_vec() },
                    Op::Put {
                        key: b"a".to_vec(),
                        value: Value(b"2".to_vec()),
                        lease: 42,
                    },
                    Op::put(b"b".to_vec(), b"3".to_vec()),
                ],
                failure: vec![Op::Delete { key: b"a".to_vec() }],
            }),
        ];
        let cmds: Vec<Request> = puts.into_iter().chain(others).collect();
        for request in cmds.clone() {
            let c = Command {
                quota_bytes: 77,
                requests: vec![request],
            };
            assert_eq!(Command::from_bytes(&c.to_bytes().unwrap()).unwrap(), c);
        }
        let batch = Command {
            quota_bytes: 1,
            requests: cmds,
        };
        assert_eq!(
            Command::from_bytes(&batch.to_bytes().unwrap()).unwrap(),
            batch
        );
    }

    #[test]
    fn debug_never_shows_values() {
        let c = Request::Put {
            key: b"k".to_vec(),
            value: Value(b"hunter2".to_vec()),
            prev_kv: true,
            lease: 0,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: Value(b"hunter2".to_vec()),
            meta: KeyMeta::default(),
        };
        assert!(!format!("{kv:?}").contains("hunter2"));
    }

    /// Entries written by the first format (plain put and delete, the
    /// equality-only compares with tags 3 to 5) still decode, as what they
    /// meant; unknown option bits are refused.
    #[test]
    fn first_format_requests_still_decode() {
        let mut w = Writer::default();
        w.u8(1).bytes(b"k").bytes(b"v");
        w.u8(2).bytes(b"k");
        w.u8(3).count(3, "compares");
        w.bytes(b"k").u8(3).bytes(b"v");
        w.bytes(b"k").u8(4).u64(7);
        w.bytes(b"k").u8(5).u64(2);
        w.count(0, "ops").count(0, "ops");
        let bytes = w.finish().unwrap();
        let mut r = Reader::new(&bytes);
        assert_eq!(
            Request::decode(&mut r).unwrap(),
            Request::Put {
                key: b"k".to_vec(),
                value: Value(b"v".to_vec()),
                prev_kv: false,
                lease: 0
            }
        );
        assert_eq!(
            Request::decode(&mut r).unwrap(),
            Request::Delete {
                key: b"k".to_vec(),
                prev_kv: false
            }
        );
        let Request::Txn(t) = Request::decode(&mut r).unwrap() else {
            panic!("not a txn");
        };
        let checks: Vec<Check> = t.compares.into_iter().map(|c| c.check).collect();
        assert_eq!(
            checks,
            vec![
                Check::Value(CmpOp::Equal, Value(b"v".to_vec())),
                Check::ModRevision(CmpOp::Equal, 7),
                Check::Version(CmpOp::Equal, 2),
            ]
        );
        let mut bad = Writer::default();
        bad.u8(4).bytes(b"k").bytes(b"v").u8(0x80);
        let bad = bad.finish().unwrap();
        assert!(Request::decode(&mut Reader::new(&bad)).is_err());
    }
}
