//! Reading and creating vault objects in the store: a linearizable get,
//! and a create that only the first of racing callers wins (a compare that
//! the key is absent), so every caller ends with the same object.

use coffer_store::{Check, Compare, Op, Store, Txn, Value};

use crate::VaultError;

/// The object under `key`, decoded, if there is one.
pub(crate) async fn load<T>(
    store: &Store,
    key: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, VaultError>,
) -> Result<Option<T>, VaultError> {
    match store.get(key).await? {
        Some(value) => Ok(Some(decode(&value)?)),
        None => Ok(None),
    }
}

/// The object under `key`; if there is none, `create` makes one (the
/// object and its encoding) and it is stored unless another caller stored
/// one first, in which case that one is returned.
pub(crate) async fn load_or_create<T>(
    store: &Store,
    key: &[u8],
    what: &'static str,
    decode: impl Fn(&[u8]) -> Result<T, VaultError>,
    create: impl FnOnce() -> Result<(T, Vec<u8>), VaultError>,
) -> Result<T, VaultError> {
    if let Some(found) = load(store, key, &decode).await? {
        return Ok(found);
    }
    let (made, encoded) = create()?;
    let created = store
        .txn(Txn {
            compares: vec![Compare {
                key: key.to_vec(),
                check: Check::Absent,
            }],
            success: vec![Op::Put {
                key: key.to_vec(),
                value: Value(encoded),
                lease: 0,
            }],
            failure: vec![],
        })
        .await?;
    if created.succeeded {
        return Ok(made);
    }
    load(store, key, &decode).await?.ok_or(VaultError::Corrupt {
        what,
        detail: "present for the compare, gone for the read".into(),
    })
}
