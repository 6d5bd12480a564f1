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
const CLUSTER_VERSION: u8 = 1;

/// The cluster's identity and CA.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub ca: RootCa,
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
        };
        store.put(CLUSTER_KEY, &cluster.encode()).await?;
        Ok(Some(cluster))
    }

    fn encode(&self) -> Vec<u8> {
        Writer::new(CLUSTER_VERSION)
            .bytes(self.ca.cluster_id().as_bytes())
            .bytes(self.ca.cert_der())
            .bytes(self.ca.key_der())
            .finish()
    }

    /// Decodes a cluster record.
    pub fn decode(record: &[u8]) -> Result<Cluster, VaultError> {
        let mut r = Reader::new("cluster record", CLUSTER_VERSION, record)?;
        let cluster_id = r.string("cluster id")?;
        let cert = r.bytes("CA certificate")?.to_vec();
        let key = Zeroizing::new(r.bytes("CA key")?.to_vec());
        r.finish()?;
        Ok(Cluster {
            ca: RootCa::from_parts(cluster_id, cert, key)?,
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

    #[test]
    fn damaged_records_are_errors() {
        let cluster = Cluster {
            ca: RootCa::generate("abc").unwrap(),
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
