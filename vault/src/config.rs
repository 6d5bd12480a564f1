//! The cluster's settings (SwarmKit's cluster spec), set when the cluster
//! is created: so far how long node certificates last
//! (`coffer server --cert-expiry`). Stored under `\0coffer/config`; a
//! cluster created before the record existed reads the defaults.

use std::time::Duration;

use coffer_store::Store;

use crate::ca::NODE_CERT_VALIDITY;
use crate::objects::load_or_create;
use crate::record::{Reader, Writer};
use crate::VaultError;

const CONFIG_KEY: &[u8] = b"\0coffer/config";
const CONFIG_VERSION: u8 = 1;
/// The shortest node certificate validity accepted. SwarmKit's floor is an
/// hour; shorter ones are for trying renewal out.
pub const CERT_EXPIRY_MIN: Duration = Duration::from_secs(30);
/// The longest: ten years.
pub const CERT_EXPIRY_MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How long a node certificate is valid; nodes renew at 60% of it.
    pub cert_expiry: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            cert_expiry: NODE_CERT_VALIDITY,
        }
    }
}

impl ClusterConfig {
    /// Settings with `cert_expiry`, if it is within the bounds.
    pub fn new(cert_expiry: Duration) -> Result<ClusterConfig, VaultError> {
        if !(CERT_EXPIRY_MIN..=CERT_EXPIRY_MAX).contains(&cert_expiry) {
            return Err(VaultError::Invalid(format!(
                "a certificate expiry of {}s: it must be between {}s and {}s",
                cert_expiry.as_secs(),
                CERT_EXPIRY_MIN.as_secs(),
                CERT_EXPIRY_MAX.as_secs()
            )));
        }
        Ok(ClusterConfig { cert_expiry })
    }

    /// The cluster's settings, stored as `initial` if it has none yet.
    pub async fn init_or_load(
        store: &Store,
        initial: ClusterConfig,
    ) -> Result<ClusterConfig, VaultError> {
        load_or_create(
            store,
            CONFIG_KEY,
            "cluster config",
            ClusterConfig::decode,
            || Ok((initial, initial.encode())),
        )
        .await
    }

    /// The cluster's settings, or the defaults if it has none stored (a
    /// linearizable read).
    pub async fn load(store: &Store) -> Result<ClusterConfig, VaultError> {
        Ok(
            crate::objects::load(store, CONFIG_KEY, ClusterConfig::decode)
                .await?
                .unwrap_or_default(),
        )
    }

    /// Stores these settings in place of the cluster's.
    pub async fn save(&self, store: &Store) -> Result<(), VaultError> {
        store.put(CONFIG_KEY, &self.encode()).await?;
        Ok(())
    }

    fn encode(&self) -> Vec<u8> {
        Writer::new(CONFIG_VERSION)
            .bytes(&self.cert_expiry.as_secs().to_be_bytes())
            .finish()
    }

    /// Decodes a config record.
    pub fn decode(record: &[u8]) -> Result<ClusterConfig, VaultError> {
        let mut r = Reader::new("cluster config", CONFIG_VERSION, record)?;
        let secs: [u8; 8] =
            r.bytes("certificate expiry")?
                .try_into()
                .map_err(|_| VaultError::Corrupt {
                    what: "cluster config",
                    detail: "the certificate expiry is not 8 bytes".into(),
                })?;
        r.finish()?;
        ClusterConfig::new(Duration::from_secs(u64::from_be_bytes(secs))).map_err(|e| {
            VaultError::Corrupt {
                what: "cluster config",
                detail: e.to_string(),
            }
        })
    }
}

/// Reads a duration as operators write one: a sequence of numbers with
/// units `d`, `h`, `m` or `s` (`90d`, `2160h`, `2160h0m0s`, `45s`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration: write it as 90d, 2160h, 1h30m or 45s");
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|secs| total.checked_add(secs))
            .ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() || text.trim().is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::Config;

    #[test]
    fn durations_parse_as_operators_write_them() {
        let secs = |t| parse_duration(t).map(|d| d.as_secs());
        assert_eq!(secs("90d"), Ok(90 * 86_400));
        assert_eq!(secs("2160h0m0s"), Ok(2160 * 3600));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("45s"), Ok(45));
        for bad in ["", "90", "d", "1x", "1.5h", "-1h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_expiry_is_bounded_and_damage_is_an_error() {
        assert!(ClusterConfig::new(Duration::from_secs(29)).is_err());
        assert!(ClusterConfig::new(CERT_EXPIRY_MAX + Duration::from_secs(1)).is_err());
        let config = ClusterConfig::new(Duration::from_secs(45)).unwrap();
        let record = config.encode();
        assert_eq!(ClusterConfig::decode(&record).unwrap(), config);
        for cut in 0..record.len() {
            assert!(ClusterConfig::decode(&record[..cut]).is_err());
        }
        let tiny = ClusterConfig {
            cert_expiry: Duration::from_secs(1),
        };
        assert!(ClusterConfig::decode(&tiny.encode()).is_err());
        crate::record::assert_decoder_survives_damage(&record, ClusterConfig::decode);
    }

    #[tokio::test]
    async fn a_cluster_keeps_the_settings_it_was_created_with() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        assert_eq!(
            ClusterConfig::load(&store).await.unwrap(),
            ClusterConfig::default()
        );
        let short = ClusterConfig::new(Duration::from_secs(60)).unwrap();
        assert_eq!(
            ClusterConfig::init_or_load(&store, short).await.unwrap(),
            short
        );
        let later = ClusterConfig::init_or_load(&store, ClusterConfig::default()).await;
        assert_eq!(later.unwrap(), short);
        assert_eq!(ClusterConfig::load(&store).await.unwrap(), short);
        store.shutdown().await.unwrap();
    }
}
