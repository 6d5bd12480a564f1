//! The cluster's autolock setting, under `\0coffer/autolock` (sealed on
//! disk like every record): on with its unlock key, or off. Every manager
//! follows it, sealing its own keyring under the key it holds
//! (`coffer_store::reseal_keyring`); `coffer unlock-key` reads it, and
//! `--rotate` replaces the key. A cluster with no record (one made before
//! the setting existed) leaves every keyring as it is.

use coffer_store::{Store, UnlockKey};

use crate::record::{Reader, Writer};
use crate::VaultError;

const AUTOLOCK_KEY: &[u8] = b"\0coffer/autolock";
const AUTOLOCK_VERSION: u8 = 1;

/// The cluster's autolock setting: `None` when it has never been set (a
/// linearizable read). `Some(None)`: off; `Some(Some(key))`: on.
pub async fn setting(store: &Store) -> Result<Option<Option<UnlockKey>>, VaultError> {
    crate::objects::load(store, AUTOLOCK_KEY, decode).await
}

/// The cluster's unlock key, if autolock is on.
pub async fn unlock_key(store: &Store) -> Result<Option<UnlockKey>, VaultError> {
    Ok(setting(store).await?.flatten())
}

/// Turns autolock on with `key` (or to a new key), or off (`None`).
pub async fn set_unlock_key(store: &Store, key: Option<&UnlockKey>) -> Result<(), VaultError> {
    store.put(AUTOLOCK_KEY, &encode(key)).await?;
    Ok(())
}

/// The key a watch for autolock changes takes.
pub fn key() -> &'static [u8] {
    AUTOLOCK_KEY
}

/// The setting: the key's text, empty for off.
fn encode(key: Option<&UnlockKey>) -> zeroize::Zeroizing<Vec<u8>> {
    let text = key.map(UnlockKey::to_text).unwrap_or_default();
    zeroize::Zeroizing::new(
        Writer::new(AUTOLOCK_VERSION)
            .bytes(text.as_bytes())
            .finish(),
    )
}

fn decode(record: &[u8]) -> Result<Option<UnlockKey>, VaultError> {
    let mut r = Reader::new("autolock", AUTOLOCK_VERSION, record)?;
    let text = zeroize::Zeroizing::new(r.string("unlock key")?);
    r.finish()?;
    if text.is_empty() {
        return Ok(None);
    }
    UnlockKey::parse(&text)
        .map(Some)
        .map_err(|e| VaultError::Corrupt {
            what: "autolock",
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_store::Config;

    #[test]
    fn damaged_records_are_errors() {
        let key = UnlockKey::generate();
        let record = encode(Some(&key));
        assert_eq!(
            decode(&record).unwrap().unwrap().to_text().as_str(),
            key.to_text().as_str()
        );
        crate::record::assert_decoder_survives_damage(&record, decode);
        assert!(decode(&encode(None)).unwrap().is_none());
    }

    #[tokio::test]
    async fn the_key_is_set_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(Config::new(dir.path())).await.unwrap();
        assert!(setting(&store).await.unwrap().is_none());
        let first = UnlockKey::generate();
        set_unlock_key(&store, Some(&first)).await.unwrap();
        let read = unlock_key(&store).await.unwrap().unwrap();
        assert_eq!(read.to_text().as_str(), first.to_text().as_str());
        let second = UnlockKey::generate();
        set_unlock_key(&store, Some(&second)).await.unwrap();
        let read = unlock_key(&store).await.unwrap().unwrap();
        assert_eq!(read.to_text().as_str(), second.to_text().as_str());
        set_unlock_key(&store, None).await.unwrap();
        assert!(matches!(setting(&store).await.unwrap(), Some(None)));
        assert!(unlock_key(&store).await.unwrap().is_none());
        store.shutdown().await.unwrap();
    }
}
