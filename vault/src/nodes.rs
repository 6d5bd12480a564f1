//! The cluster's node records (SwarmKit's node objects): one per node
//! ever admitted, under `\0coffer/nodes/<id in hex>`, with the role the
//! cluster wants it to have, where it listens, and whether it was
//! removed. A removed node keeps its record as a tombstone: its id is
//! never issued again and its certificate is refused for good.
//!
//! Managers are also the store's Raft members; the record is what the
//! cluster *wants* (a promoted worker is a manager here before it holds a
//! replica), the membership what *is*.

use std::collections::BTreeSet;

use coffer_store::{Consistency, Store};

use crate::ca::Role;
use crate::record::{Reader, Writer};
use crate::VaultError;

const NODES_PREFIX: &[u8] = b"\0coffer/nodes/";
/// 1: id, role, address, state; 2: and the root its certificate is from.
const NODE_VERSION: u8 = 2;
/// An address longer than this is not `HOST:PORT`.
pub const ADDR_BYTES_MAX: usize = 1024;

/// Whether a node is part of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Active,
    /// Removed with `node rm`: its id and certificate are refused forever.
    Removed,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u64,
    /// The role the cluster wants the node to have.
    pub role: Role,
    /// Where the node listens (`HOST:PORT`), as it advertised it.
    pub addr: String,
    pub state: NodeState,
    /// The digest of the root CA that issued the certificate the node
    /// last said it holds (its agent says so with every ask); empty until
    /// it has. A root rotation is done when every node's is the new root.
    pub cert_root: String,
}

/// A certificate digest is 64 hex digits.
const DIGEST_BYTES_MAX: usize = 64;

fn key(id: u64) -> Vec<u8> {
    let mut key = NODES_PREFIX.to_vec();
    key.extend_from_slice(format!("{id:016x}").as_bytes());
    key
}

impl NodeRecord {
    /// A node just admitted.
    pub fn active(id: u64, role: Role, addr: &str) -> Result<NodeRecord, VaultError> {
        if addr.len() > ADDR_BYTES_MAX {
            return Err(VaultError::Denied(format!(
                "the node address is {} bytes; at most {ADDR_BYTES_MAX}",
                addr.len()
            )));
        }
        Ok(NodeRecord {
            id,
            role,
            addr: addr.to_string(),
            state: NodeState::Active,
            cert_root: String::new(),
        })
    }

    pub fn is_removed(&self) -> bool {
        self.state == NodeState::Removed
    }

    fn encode(&self) -> Vec<u8> {
        let state: &[u8] = match self.state {
            NodeState::Active => b"active",
            NodeState::Removed => b"removed",
        };
        Writer::new(NODE_VERSION)
            .bytes(&self.id.to_be_bytes())
            .bytes(self.role.unit().as_bytes())
            .bytes(self.addr.as_bytes())
            .bytes(state)
            .bytes(self.cert_root.as_bytes())
            .finish()
    }

    /// Decodes a node record.
    pub fn decode(record: &[u8]) -> Result<NodeRecord, VaultError> {
        const WHAT: &str = "node record";
        let corrupt = |detail: &str| VaultError::Corrupt {
            what: WHAT,
            detail: detail.to_string(),
        };
        let (mut r, version) = Reader::any_of(WHAT, 1..=NODE_VERSION, record)?;
        let id = u64::from_be_bytes(
            r.bytes("node id")?
                .try_into()
                .map_err(|_| corrupt("the node id is not 8 bytes"))?,
        );
        let role = Role::from_unit(&r.string("role")?).ok_or_else(|| corrupt("unknown role"))?;
        let addr = r.string("address")?;
        let state = match r.bytes("state")? {
            b"active" => NodeState::Active,
            b"removed" => NodeState::Removed,
            _ => return Err(corrupt("unknown state")),
        };
        let cert_root = if version >= 2 {
            r.string("certificate root")?
        } else {
            String::new()
        };
        r.finish()?;
        if addr.len() > ADDR_BYTES_MAX {
            return Err(corrupt("the address is too long"));
        }
        if cert_root.len() > DIGEST_BYTES_MAX || !cert_root.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(corrupt("the certificate root is not a digest"));
        }
        Ok(NodeRecord {
            id,
            role,
            addr,
            state,
            cert_root,
        })
    }

    /// Writes the record (replacing the node's earlier one).
    pub async fn save(&self, store: &Store) -> Result<(), VaultError> {
        store.put(&key(self.id), &self.encode()).await?;
        Ok(())
    }

    /// Records that node `id` holds a certificate from the root whose
    /// digest is `cert_root`, changing nothing else of its record (a
    /// compare-and-swap, tried again if the record changed meanwhile).
    /// `fallback` is the record to create if the node has none (a manager
    /// from before node records). Returns the record as it now is.
    pub async fn set_cert_root(
        store: &Store,
        id: u64,
        cert_root: &str,
        fallback: impl Fn() -> Result<NodeRecord, VaultError>,
    ) -> Result<NodeRecord, VaultError> {
        use coffer_store::{Check, CmpOp, Compare, Op, Txn, Value};
        for _ in 0..8 {
            let found = store.get(&key(id)).await?;
            let (mut record, check) = match &found {
                Some(raw) => (
                    NodeRecord::decode(raw)?,
                    Check::Value(CmpOp::Equal, Value(raw.to_vec())),
                ),
                None => (fallback()?, Check::Absent),
            };
            if found.is_some() && record.cert_root == cert_root {
                return Ok(record);
            }
            record.cert_root = cert_root.to_string();
            let answer = store
                .txn(Txn {
                    compares: vec![Compare {
                        key: key(id),
                        check,
                    }],
                    success: vec![Op::Put {
                        key: key(id),
                        value: Value(record.encode()),
                        lease: 0,
                    }],
                    failure: vec![],
                })
                .await?;
            if answer.succeeded {
                return Ok(record);
            }
        }
        Err(VaultError::Precondition(format!(
            "node {id:016x}'s record kept changing; try again"
        )))
    }

    /// The record of node `id`, if the cluster has one (a linearizable
    /// read).
    pub async fn load(store: &Store, id: u64) -> Result<Option<NodeRecord>, VaultError> {
        crate::objects::load(store, &key(id), NodeRecord::decode).await
    }

    /// Every node record, removed ones included, by id.
    pub async fn list(
        store: &Store,
        consistency: Consistency,
    ) -> Result<Vec<NodeRecord>, VaultError> {
        store
            .list(NODES_PREFIX, consistency)
            .await?
            .iter()
            .map(|kv| NodeRecord::decode(&kv.value))
            .collect()
    }

    /// The prefix a watch for node changes takes.
    pub fn prefix() -> &'static [u8] {
        NODES_PREFIX
    }
}

/// The node `text` names among `nodes`: its id in hex (leading zeros or
/// not), else a prefix of one id's 16 digits.
pub fn resolve(
    mut nodes: std::collections::BTreeMap<u64, NodeRecord>,
    text: &str,
) -> Result<NodeRecord, VaultError> {
    let wanted = text.trim().to_ascii_lowercase();
    if wanted.is_empty() || wanted.len() > 16 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(VaultError::Invalid(format!(
            "{text:?} is not a node id: `coffer node ls` shows them (hex)"
        )));
    }
    if let Some(node) = u64::from_str_radix(&wanted, 16)
        .ok()
        .and_then(|id| nodes.remove(&id))
    {
        return Ok(node);
    }
    let mut found = nodes
        .into_values()
        .filter(|n| format!("{:016x}", n.id).starts_with(&wanted));
    match (found.next(), found.next()) {
        (Some(node), None) => Ok(node),
        (None, _) => Err(VaultError::NotFound(format!(
            "no node {wanted} in this cluster"
        ))),
        (Some(_), Some(_)) => Err(VaultError::Invalid(format!(
            "{wanted} names more than one node: give more of the id"
        ))),
    }
}

/// The ids of every node ever admitted, removed ones included: ids a new
/// node must not get.
pub async fn ids_taken(store: &Store) -> Result<BTreeSet<u64>, VaultError> {
    Ok(NodeRecord::list(store, Consistency::Linearizable)
        .await?
        .into_iter()
        .map(|n| n.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::Config;

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let mut node = NodeRecord::active(0xabc, Role::Worker, "10.0.0.1:6465").unwrap();
        assert_eq!(NodeRecord::decode(&node.encode()).unwrap(), node);
        node.state = NodeState::Removed;
        node.role = Role::Manager;
        let record = node.encode();
        assert_eq!(NodeRecord::decode(&record).unwrap(), node);
        for cut in 0..record.len() {
            assert!(NodeRecord::decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        let mut other_state = record.clone();
        let last = other_state.len() - 1;
        other_state[last] = b'x';
        assert!(NodeRecord::decode(&other_state).is_err());
        crate::record::assert_decoder_survives_damage(&record, NodeRecord::decode);
        assert!(NodeRecord::active(1, Role::Worker, &"a".repeat(ADDR_BYTES_MAX + 1)).is_err());
        node.cert_root = "ab".repeat(32);
        assert_eq!(NodeRecord::decode(&node.encode()).unwrap(), node);
        // Version 1 (no certificate root) still reads.
        let v1 = Writer::new(1)
            .bytes(&node.id.to_be_bytes())
            .bytes(b"coffer-manager")
            .bytes(node.addr.as_bytes())
            .bytes(b"removed")
            .finish();
        let read = NodeRecord::decode(&v1).unwrap();
        assert_eq!((read.id, read.cert_root.as_str()), (node.id, ""));
    }

    #[tokio::test]
    async fn records_are_listed_and_removed_ones_stay_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        let worker = NodeRecord::active(7, Role::Worker, "127.0.0.1:1").unwrap();
        worker.save(&store).await.unwrap();
        let mut gone = NodeRecord::active(9, Role::Worker, "127.0.0.1:2").unwrap();
        gone.state = NodeState::Removed;
        gone.save(&store).await.unwrap();
        assert_eq!(NodeRecord::load(&store, 7).await.unwrap().unwrap(), worker);
        assert!(NodeRecord::load(&store, 8).await.unwrap().is_none());
        let all = NodeRecord::list(&store, Consistency::Stale).await.unwrap();
        assert_eq!(all, vec![worker, gone]);
        assert_eq!(ids_taken(&store).await.unwrap(), BTreeSet::from([7, 9]));
        // The certificate root is set alone, and a record made if none.
        let digest = "cd".repeat(32);
        let set = NodeRecord::set_cert_root(&store, 7, &digest, || unreachable!())
            .await
            .unwrap();
        assert_eq!(
            (set.role, set.cert_root.as_str()),
            (Role::Worker, digest.as_str())
        );
        let made = NodeRecord::set_cert_root(&store, 11, &digest, || {
            NodeRecord::active(11, Role::Manager, "127.0.0.1:3")
        })
        .await
        .unwrap();
        assert_eq!(NodeRecord::load(&store, 11).await.unwrap().unwrap(), made);
        store.shutdown().await.unwrap();
    }
}
