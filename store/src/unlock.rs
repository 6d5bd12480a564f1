//! The cluster unlock key of autolock: `CFKEY-1-` and 64 hex digits (32
//! random bytes). With autolock on, a data directory's key-encryption key
//! is derived from it with argon2id (the parameters and salt are in the
//! keyring's header), so a copy of the directory reveals nothing without
//! it; it is never written to disk.

use std::fmt;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::{self, KdfError, KdfParams, SecretKey};

/// What every unlock key starts with.
pub const UNLOCK_KEY_PREFIX: &str = "CFKEY-1-";
const KEY_BYTES: usize = 32;

/// A cluster unlock key. Its bytes are wiped when dropped; `Debug` and
/// every error leave them out.
///
/// The key remembers the last key-encryption key it gave (shared by its
/// clones): checking a key and then opening the store with it derives
/// the KEK once, not twice (argon2id costs a few hundred milliseconds).
/// The remembered KEK is as secret as the key itself and is wiped with it.
#[derive(Clone)]
pub struct UnlockKey {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
    derived: Arc<Mutex<Option<(KdfParams, SecretKey)>>>,
}

/// Text that is not an unlock key (the text itself is never repeated).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("not an unlock key: an unlock key is {UNLOCK_KEY_PREFIX} followed by 64 hex digits")]
pub struct UnlockKeyError;

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl UnlockKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> UnlockKey {
        UnlockKey::from_bytes(Zeroizing::new(*SecretKey::random().expose()))
    }

    fn from_bytes(bytes: Zeroizing<[u8; KEY_BYTES]>) -> UnlockKey {
        UnlockKey {
            bytes,
            derived: Arc::default(),
        }
    }

    /// Parses `CFKEY-1-<64 hex digits>`, ignoring surrounding whitespace
    /// (a trailing newline from a file or a prompt).
    pub fn parse(text: &str) -> Result<UnlockKey, UnlockKeyError> {
        let digits = text
            .trim()
            .strip_prefix(UNLOCK_KEY_PREFIX)
            .ok_or(UnlockKeyError)?
            .as_bytes();
        if digits.len() != 2 * KEY_BYTES {
            return Err(UnlockKeyError);
        }
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_digit(pair[0]), hex_digit(pair[1])) else {
                return Err(UnlockKeyError);
            };
            *byte = hi << 4 | lo;
        }
        Ok(UnlockKey::from_bytes(key))
    }

    /// Whether `other` is the same key, compared in constant time.
    pub fn same_as(&self, other: &UnlockKey) -> bool {
        use subtle::ConstantTimeEq;
        self.bytes.ct_eq(&*other.bytes).into()
    }

    /// The key as an operator types it: `CFKEY-1-` and 64 lowercase hex
    /// digits, in a buffer wiped when dropped.
    pub fn to_text(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = Zeroizing::new(String::with_capacity(UNLOCK_KEY_PREFIX.len() + 64));
        text.push_str(UNLOCK_KEY_PREFIX);
        for b in self.bytes.iter() {
            text.push(char::from(HEX[usize::from(b >> 4)]));
            text.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        text
    }

    /// The key-encryption key this unlock key gives under `params`:
    /// derived with argon2id, or the one remembered from the last
    /// derivation under the same parameters (salt included).
    pub(crate) fn derive_kek(&self, params: &KdfParams) -> Result<SecretKey, KdfError> {
        // A poisoned lock only means a derivation panicked: derive again.
        let mut derived = self
            .derived
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((p, kek)) = derived.as_ref() {
            if p == params {
                return Ok(kek.clone());
            }
        }
        let kek = crypto::derive_kek(&self.bytes[..], params)?;
        *derived = Some((*params, kek.clone()));
        Ok(kek)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_anything_else() {
        let key = UnlockKey::generate();
        let text = key.to_text();
        assert!(text.starts_with(UNLOCK_KEY_PREFIX) && text.len() == 8 + 64);
        let again = UnlockKey::parse(&format!("  {}\n", text.as_str())).unwrap();
        assert_eq!(again.to_text().as_str(), text.as_str());
        // Hex digits in either case; the prefix exactly.
        let upper = format!("{UNLOCK_KEY_PREFIX}{}", text[8..].to_uppercase());
        assert_eq!(
            UnlockKey::parse(&upper).unwrap().to_text().as_str(),
            text.as_str()
        );
        assert!(UnlockKey::parse(&text.to_lowercase()).is_err());
        for bad in [
            "",
            "CFKEY-1-",
            "CFKEY-2-00",
            &text[..text.len() - 1],
            &format!("{}0", text.as_str()),
            &format!("{}g", &text[..text.len() - 1]),
            &text.replace(UNLOCK_KEY_PREFIX, "CFTKN-1-"),
        ] {
            let err = UnlockKey::parse(bad).unwrap_err();
            assert!(!err.to_string().contains(&text[8..]));
        }
        assert_eq!(format!("{key:?}"), "UnlockKey(..)");
        assert!(key.same_as(&again) && !key.same_as(&UnlockKey::generate()));
    }

    #[test]
    fn a_remembered_kek_is_the_one_its_parameters_give() {
        let small = |salt: u8| KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            salt: [salt; 16],
        };
        let key = UnlockKey::generate();
        let clone = key.clone();
        let (a, b) = (small(1), small(2));
        let direct = |p: &KdfParams| crypto::derive_kek(&key.bytes[..], p).unwrap();
        assert!(key.derive_kek(&a).unwrap() == direct(&a));
        // A clone shares what was derived...
        assert!(clone.derived.lock().unwrap().as_ref().map(|(p, _)| *p) == Some(a));
        assert!(clone.derive_kek(&a).unwrap() == direct(&a));
        // ... and other parameters (another salt) derive anew.
        assert!(clone.derive_kek(&b).unwrap() == direct(&b));
        assert!(key.derive_kek(&b).unwrap() != direct(&a));
        assert!(key.derive_kek(&a).unwrap() == direct(&a));
        // Another key never gets this key's KEK.
        assert!(UnlockKey::generate().derive_kek(&a).unwrap() != direct(&a));
    }
}
