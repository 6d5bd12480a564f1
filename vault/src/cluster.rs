//! The cluster record: the cluster's id and its root CA, created once by
//! the first server of a new cluster and read by every later start.
//!
//! Stored under `\0coffer/cluster` (see [`crate::SYSTEM_PREFIX`]), sealed
//! on disk like every other record, created with a compare-and-swap so
//! that two racing initialisations cannot both win.

use coffer_store::Store;
use zeroize::Zeroizing;

use crate::ca::RootCa;
use crate::objects::load_or_create;
use crate::record::{Reader, Writer};
use crate::VaultError;

const CLUSTER_KEY: &[u8] = b"\0coffer/cluster";
/// 1: the id and the root CA; 2: and a root rotation under way, if any.
const CLUSTER_VERSION: u8 = 2;

/// The cluster's identity and CA.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub ca: RootCa,
    /// A root CA rotation under way (`coffer ca rotate`).
    pub rotation: Option<CaRotation>,
}

/// A root CA rotation under way: the next root (with its key), and its
/// certificate cross-signed by the current root, which nodes present with
/// certificates from the next root until every node holds one.
#[derive(Debug, Clone)]
pub struct CaRotation {
    pub next: RootCa,
    pub cross_signed: Vec<u8>,
    /// When it began (Unix seconds).
    pub started_unix: i64,
}

impl CaRotation {
    /// A rotation from `current` to `next`.
    pub fn new(current: &RootCa, next: RootCa, now_unix: i64) -> Result<CaRotation, VaultError> {
        let cross_signed = current.cross_sign(&next)?;
        Ok(CaRotation {
            next,
            cross_signed,
            started_unix: now_unix,
        })
    }
}

impl Cluster {
    /// The cluster this store holds, created (with a new root CA) if it
    /// holds none yet.
    pub async fn init_or_load(store: &Store) -> Result<Cluster, VaultError> {
        Cluster::init_or_load_with(store, RootCa::generate).await
    }

    /// The cluster this store holds, created if it holds none yet with a
    /// new cluster id and the CA `ca_for` gives for it (the operator's
    /// own, say: [`RootCa::from_operator`]).
    pub async fn init_or_load_with(
        store: &Store,
        ca_for: impl FnOnce(&str) -> Result<RootCa, VaultError>,
    ) -> Result<Cluster, VaultError> {
        load_or_create(
            store,
            CLUSTER_KEY,
            "cluster record",
            Cluster::decode,
            || {
                let cluster = Cluster {
                    ca: ca_for(&new_cluster_id())?,
                    rotation: None,
                };
                let encoded = cluster.encode();
                Ok((cluster, encoded))
            },
        )
        .await
    }

    /// The cluster this store holds, if any (a linearizable read).
    pub async fn load(store: &Store) -> Result<Option<Cluster>, VaultError> {
        crate::objects::load(store, CLUSTER_KEY, Cluster::decode).await
    }

    /// Gives the cluster this store holds a new id, keeping its CA: a
    /// restored snapshot becomes a cluster of its own (its nodes' new
    /// certificates name the new id). `None` if the store holds no
    /// cluster.
    pub async fn reidentify(store: &Store) -> Result<Option<Cluster>, VaultError> {
        let Some(old) = Cluster::load(store).await? else {
            return Ok(None);
        };
        let cluster = Cluster {
            ca: old.ca.with_cluster_id(&new_cluster_id()),
            rotation: None,
        };
        store.put(CLUSTER_KEY, &cluster.encode()).await?;
        Ok(Some(cluster))
    }

    /// The CA that issues node certificates now: the next root while a
    /// rotation is under way.
    pub fn issuing_ca(&self) -> &RootCa {
        self.rotation.as_ref().map_or(&self.ca, |r| &r.next)
    }

    /// Starts a root rotation to `next` (`coffer ca rotate`): refused while
    /// another is under way. Returns the cluster as it now is.
    pub async fn start_rotation(
        store: &Store,
        next: RootCa,
        now_unix: i64,
    ) -> Result<Cluster, VaultError> {
        let current = Cluster::load(store)
            .await?
            .ok_or_else(|| VaultError::Precondition("the store holds no cluster".into()))?;
        if let Some(r) = &current.rotation {
            return Err(VaultError::Precondition(format!(
                "a root CA rotation to {} is already under way",
                &r.next.digest()[..12]
            )));
        }
        let next = next.with_cluster_id(current.ca.cluster_id());
        let rotated = Cluster {
            rotation: Some(CaRotation::new(&current.ca, next, now_unix)?),
            ca: current.ca.clone(),
        };
        rotated.replace(store, &current).await?;
        Ok(rotated)
    }

    /// Ends the rotation to the root whose digest is `next_digest`: it
    /// becomes the cluster's root. Returns the cluster as it now is, or
    /// `None` if no such rotation is under way (another caller ended it).
    pub async fn finish_rotation(
        store: &Store,
        next_digest: &str,
    ) -> Result<Option<Cluster>, VaultError> {
        let Some(current) = Cluster::load(store).await? else {
            return Ok(None);
        };
        let Some(rotation) = current
            .rotation
            .as_ref()
            .filter(|r| r.next.digest() == next_digest)
        else {
            return Ok(None);
        };
        let done = Cluster {
            ca: rotation.next.clone(),
            rotation: None,
        };
        match done.replace(store, &current).await {
            Ok(()) => Ok(Some(done)),
            Err(VaultError::Precondition(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes this record in place of `was`, if the store still holds
    /// `was` (else `Precondition`).
    async fn replace(&self, store: &Store, was: &Cluster) -> Result<(), VaultError> {
        use coffer_store::{Check, CmpOp, Compare, Op, Txn, Value};
        let answer = store
            .txn(Txn {
                compares: vec![Compare {
                    key: CLUSTER_KEY.to_vec(),
                    check: Check::Value(CmpOp::Equal, Value(was.encode())),
                }],
                success: vec![Op::Put {
                    key: CLUSTER_KEY.to_vec(),
                    value: Value(self.encode()),
                    lease: 0,
                }],
                failure: vec![],
            })
            .await?;
        if !answer.succeeded {
            return Err(VaultError::Precondition(
                "the cluster record changed meanwhile; try again".into(),
            ));
        }
        Ok(())
    }

    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new(CLUSTER_VERSION);
        w.bytes(self.ca.cluster_id().as_bytes())
            .bytes(self.ca.cert_der())
            .bytes(self.ca.key_der());
        match &self.rotation {
            None => w.u64(0),
            Some(r) => w
                .u64(1)
                .bytes(r.next.cert_der())
                .bytes(r.next.key_der())
                .bytes(&r.cross_signed)
                .i64(r.started_unix),
        };
        w.finish()
    }

    /// Decodes a cluster record (version 1 or 2).
    pub fn decode(record: &[u8]) -> Result<Cluster, VaultError> {
        let (mut r, version) = Reader::any_of("cluster record", 1..=CLUSTER_VERSION, record)?;
        let cluster_id = r.string("cluster id")?;
        let cert = r.bytes("CA certificate")?.to_vec();
        let key = Zeroizing::new(r.bytes("CA key")?.to_vec());
        let tag = if version >= 2 { r.u64("rotation")? } else { 0 };
        let rotation = match tag {
            0 => None,
            1 => {
                let next_cert = r.bytes("next CA certificate")?.to_vec();
                let next_key = Zeroizing::new(r.bytes("next CA key")?.to_vec());
                let cross_signed = r.bytes("cross-signed certificate")?.to_vec();
                let started_unix = r.i64("rotation start")?;
                Some(CaRotation {
                    next: RootCa::from_parts(cluster_id.clone(), next_cert, next_key)?,
                    cross_signed,
                    started_unix,
                })
            }
            other => {
                return Err(VaultError::Corrupt {
                    what: "cluster record",
                    detail: format!("unknown rotation tag {other}"),
                })
            }
        };
        r.finish()?;
        Ok(Cluster {
            ca: RootCa::from_parts(cluster_id, cert, key)?,
            rotation,
        })
    }
}

/// A new cluster id: 128 random bits in hex.
fn new_cluster_id() -> String {
    let id: [u8; 16] = rand::random();
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::Config;

    #[tokio::test]
    async fn the_first_start_creates_the_ca_and_later_ones_keep_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        assert!(Cluster::load(&store).await.unwrap().is_none());
        let first = Cluster::init_or_load(&store).await.unwrap();
        let again = Cluster::init_or_load(&store).await.unwrap();
        assert_eq!(first.ca.digest(), again.ca.digest());
        assert_eq!(first.ca.cluster_id(), again.ca.cluster_id());
        store.shutdown().await.unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        let reopened = Cluster::load(&store).await.unwrap().unwrap();
        assert_eq!(reopened.ca.digest(), first.ca.digest());
        // A new id, the same CA.
        let renamed = Cluster::reidentify(&store).await.unwrap().unwrap();
        assert_ne!(renamed.ca.cluster_id(), first.ca.cluster_id());
        assert_eq!(renamed.ca.digest(), first.ca.digest());
        let reloaded = Cluster::load(&store).await.unwrap().unwrap();
        assert_eq!(reloaded.ca.cluster_id(), renamed.ca.cluster_id());
        store.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_rotation_starts_once_and_finishes_into_the_new_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        let first = Cluster::init_or_load(&store).await.unwrap();
        assert_eq!(first.issuing_ca().digest(), first.ca.digest());
        let next = RootCa::generate("other").unwrap();
        let rotating = Cluster::start_rotation(&store, next.clone(), 1)
            .await
            .unwrap();
        let r = rotating.rotation.as_ref().unwrap();
        assert_eq!(r.next.digest(), next.digest());
        // The next root serves this cluster (its id), and issues now.
        assert_eq!(r.next.cluster_id(), first.ca.cluster_id());
        assert_eq!(rotating.issuing_ca().digest(), next.digest());
        assert!(matches!(
            Cluster::start_rotation(&store, RootCa::generate("x").unwrap(), 2).await,
            Err(VaultError::Precondition(_))
        ));
        assert!(Cluster::finish_rotation(&store, &first.ca.digest())
            .await
            .unwrap()
            .is_none());
        let done = Cluster::finish_rotation(&store, &next.digest())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.ca.digest(), next.digest());
        assert!(done.rotation.is_none());
        let loaded = Cluster::load(&store).await.unwrap().unwrap();
        assert_eq!(loaded.ca.digest(), next.digest());
        assert_eq!(loaded.ca.cluster_id(), first.ca.cluster_id());
        assert!(Cluster::finish_rotation(&store, &next.digest())
            .await
            .unwrap()
            .is_none());
        store.shutdown().await.unwrap();
    }

    #[test]
    fn a_rotation_round_trips_and_version_1_records_still_read() {
        let ca = RootCa::generate("abc").unwrap();
        let v1 = Writer::new(1)
            .bytes(b"abc")
            .bytes(ca.cert_der())
            .bytes(ca.key_der())
            .finish();
        let read = Cluster::decode(&v1).unwrap();
        assert_eq!(read.ca.digest(), ca.digest());
        assert!(read.rotation.is_none());
        let next = RootCa::generate("abc").unwrap();
        let cluster = Cluster {
            rotation: Some(CaRotation::new(&ca, next.clone(), 1_700_000_000).unwrap()),
            ca,
        };
        let record = cluster.encode();
        let back = Cluster::decode(&record).unwrap();
        let rotation = back.rotation.unwrap();
        assert_eq!(rotation.next.digest(), next.digest());
        assert_eq!(rotation.next.cluster_id(), "abc");
        assert_eq!(rotation.started_unix, 1_700_000_000);
        crate::ca::verify_cross_signed(
            back.ca.cert_der(),
            rotation.next.cert_der(),
            &rotation.cross_signed,
        )
        .unwrap();
        crate::record::assert_decoder_survives_damage(&record, Cluster::decode);
    }

    #[test]
    fn damaged_records_are_errors() {
        let cluster = Cluster {
            ca: RootCa::generate("abc").unwrap(),
            rotation: None,
        };
        let record = cluster.encode();
        assert_eq!(
            Cluster::decode(&record).unwrap().ca.digest(),
            cluster.ca.digest()
        );
        for cut in [0, 1, 10, record.len() - 1] {
            assert!(Cluster::decode(&record[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = record.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0xff;
        assert!(Cluster::decode(&flipped).is_err());
        crate::record::assert_decoder_survives_damage(&record, Cluster::decode);
    }
}
