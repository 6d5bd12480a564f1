//! Openraft's type configuration for Coffer, and the binary encoding of the
//! openraft structures Coffer persists: log entries, votes, log ids,
//! memberships and snapshot metadata.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use crate::codec::{DecodeError, EncodeError, Reader, Writer};
use crate::command::{Command, Response, MAX_REQUEST_BYTES};
use crate::snapshot::SnapshotFile;

/// A member's id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Coffer's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = Vec<Response>,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = SnapshotFile,
);

/// Most voters or learners a membership may list.
pub const MAX_MEMBERS: usize = 1024;
/// Longest node address.
pub const MAX_ADDR_BYTES: usize = 1024;
const ENTRY_VERSION: u8 = 1;

pub fn encode_log_id(w: &mut Writer, id: &LogId<NodeId>) {
    w.u64(id.leader_id.term)
        .u64(id.leader_id.node_id)
        .u64(id.index);
}

pub fn decode_log_id(r: &mut Reader<'_>) -> Result<LogId<NodeId>, DecodeError> {
    let term = r.u64("log id term")?;
    let node_id = r.u64("log id node")?;
    let index = r.u64("log id index")?;
    Ok(LogId::new(CommittedLeaderId::new(term, node_id), index))
}

pub fn encode_opt_log_id(w: &mut Writer, id: &Option<LogId<NodeId>>) {
    match id {
        None => {
            w.bool(false);
        }
        Some(id) => {
            w.bool(true);
            encode_log_id(w, id);
        }
    }
}

pub fn decode_opt_log_id(r: &mut Reader<'_>) -> Result<Option<LogId<NodeId>>, DecodeError> {
    if r.bool("log id present")? {
        Ok(Some(decode_log_id(r)?))
    } else {
        Ok(None)
    }
}

pub fn encode_vote(w: &mut Writer, v: &Vote<NodeId>) {
    w.u64(v.leader_id.term)
        .u64(v.leader_id.node_id)
        .bool(v.committed);
}

pub fn decode_vote(r: &mut Reader<'_>) -> Result<Vote<NodeId>, DecodeError> {
    let term = r.u64("vote term")?;
    let node_id = r.u64("vote node")?;
    let committed = r.bool("vote committed")?;
    let mut v = Vote::new(term, node_id);
    v.committed = committed;
    Ok(v)
}

pub fn encode_membership(w: &mut Writer, m: &Membership<NodeId, BasicNode>) {
    let configs = m.get_joint_config();
    w.count(configs.len(), "membership config count");
    for set in configs {
        w.count(set.len(), "voter set count");
        for id in set {
            w.u64(*id);
        }
    }
    let nodes: Vec<_> = m.nodes().collect();
    w.count(nodes.len(), "node count");
    for (id, node) in nodes {
        w.u64(*id).str(&node.addr);
    }
}

pub fn decode_membership(r: &mut Reader<'_>) -> Result<Membership<NodeId, BasicNode>, DecodeError> {
    let n_configs = r.count(4, "membership configs")?;
    if n_configs > 2 {
        // A membership is a single config or a joint of two.
        return Err(DecodeError::Invalid {
            what: "membership",
            reason: "more than two joint configs",
        });
    }
    let mut configs = Vec::with_capacity(n_configs);
    for _ in 0..n_configs {
        let n = r.count_at_most(8, MAX_MEMBERS, "membership voters")?;
        let mut set = BTreeSet::new();
        for _ in 0..n {
            set.insert(r.u64("voter id")?);
        }
        configs.push(set);
    }
    let n_nodes = r.count_at_most(12, MAX_MEMBERS, "membership nodes")?;
    let mut nodes = BTreeMap::new();
    for _ in 0..n_nodes {
        let id = r.u64("node id")?;
        let addr = r.str(MAX_ADDR_BYTES, "node address")?.to_string();
        nodes.insert(id, BasicNode { addr });
    }
    // Every voter must have a node entry, or openraft would invent one.
    if configs.iter().flatten().any(|id| !nodes.contains_key(id)) {
        return Err(DecodeError::Invalid {
            what: "membership",
            reason: "a voter has no node entry",
        });
    }
    Ok(Membership::new(configs, nodes))
}

pub fn encode_stored_membership(w: &mut Writer, m: &StoredMembership<NodeId, BasicNode>) {
    encode_opt_log_id(w, m.log_id());
    encode_membership(w, m.membership());
}

pub fn decode_stored_membership(
    r: &mut Reader<'_>,
) -> Result<StoredMembership<NodeId, BasicNode>, DecodeError> {
    let log_id = decode_opt_log_id(r)?;
    let membership = decode_membership(r)?;
    Ok(StoredMembership::new(log_id, membership))
}

pub fn encode_snapshot_meta(w: &mut Writer, m: &SnapshotMeta<NodeId, BasicNode>) {
    encode_opt_log_id(w, &m.last_log_id);
    encode_stored_membership(w, &m.last_membership);
    w.str(&m.snapshot_id);
}

pub fn decode_snapshot_meta(
    r: &mut Reader<'_>,
) -> Result<SnapshotMeta<NodeId, BasicNode>, DecodeError> {
    Ok(SnapshotMeta {
        last_log_id: decode_opt_log_id(r)?,
        last_membership: decode_stored_membership(r)?,
        snapshot_id: r.str(256, "snapshot id")?.to_string(),
    })
}

/// Encodes a log entry (the plaintext of a sealed log record).
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::with_capacity(64);
    w.u8(ENTRY_VERSION);
    encode_log_id(&mut w, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => {
            w.u8(0);
        }
        EntryPayload::Normal(cmd) => {
            w.u8(1);
            cmd.encode(&mut w);
        }
        EntryPayload::Membership(m) => {
            w.u8(2);
            encode_membership(&mut w, m);
        }
    }
    w.finish()
}

/// Decodes a log entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry<TypeConfig>, DecodeError> {
    if bytes.len() > MAX_REQUEST_BYTES + 4096 {
        return Err(DecodeError::TooLong {
            what: "log entry",
            len: bytes.len(),
            max: MAX_REQUEST_BYTES + 4096,
        });
    }
    let mut r = Reader::new(bytes);
    let version = r.u8("entry version")?;
    if version != ENTRY_VERSION {
        return Err(DecodeError::UnknownVersion {
            what: "log entry",
            version,
        });
    }
    let log_id = decode_log_id(&mut r)?;
    let payload = match r.u8("entry payload tag")? {
        0 => EntryPayload::Blank,
        1 => EntryPayload::Normal(Command::decode(&mut r)?),
        2 => EntryPayload::Membership(decode_membership(&mut r)?),
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "entry payload",
                tag,
            })
        }
    };
    r.finish("log entry")?;
    Ok(Entry { log_id, payload })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Request, Value};

    #[test]
    fn entries_round_trip() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        let nodes: BTreeMap<u64, BasicNode> = [
            (1, BasicNode::new("a:1")),
            (2, BasicNode::new("b:2")),
            (3, BasicNode::new("c:3")),
        ]
        .into();
        let entries = vec![
            Entry::<TypeConfig> {
                log_id,
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id,
                payload: EntryPayload::Normal(Command {
                    quota_bytes: 5,
                    requests: vec![Request::Put {
                        key: b"k".to_vec(),
                        value: Value(b"v".to_vec()),
                        prev_kv: false,
                        lease: 0,
                    }],
                }),
            },
            Entry {
                log_id,
                payload: EntryPayload::Membership(Membership::new(
                    vec![[1, 2].into(), [2, 3].into()],
                    nodes,
                )),
            },
        ];
        for e in entries {
            let back = decode_entry(&encode_entry(&e).unwrap()).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn votes_round_trip() {
        let mut v = Vote::new(9, 4);
        v.commit();
        let mut w = Writer::default();
        encode_vote(&mut w, &v);
        let bytes = w.finish().unwrap();
        assert_eq!(decode_vote(&mut Reader::new(&bytes)).unwrap(), v);
    }
}
