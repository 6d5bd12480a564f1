//! Join tokens, as SwarmKit's (`ca/config.go`): `CFTKN-1-<digest>-<secret>`,
//! where the digest is the SHA-256 of the root CA certificate (64 hex
//! digits: a joiner pins the CA by it before it trusts anything) and the
//! secret is 128 random bits (32 hex digits), one for workers and one for
//! managers. The secrets live in the store under `\0coffer/tokens`; a
//! presented secret is compared in constant time.

use std::fmt;

use coffer_store::Store;
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::ca::{Role, RootCa};
use crate::objects::load_or_create;
use crate::record::{Reader, Writer};
use crate::VaultError;

const TOKENS_KEY: &[u8] = b"\0coffer/tokens";
const TOKENS_VERSION: u8 = 1;
const PREFIX: &str = "CFTKN";
const TOKEN_VERSION: &str = "1";
const DIGEST_HEX: usize = 64;
const SECRET_HEX: usize = 32;

/// Why a token string was refused. Messages never repeat the secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("not a Coffer join token (they look like CFTKN-1-<64 hex digits>-<32 hex digits>)")]
    Malformed,
    #[error("join token version {0:?} is not one this build knows (it knows version 1)")]
    UnknownVersion(String),
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The SHA-256 of the root CA certificate, lower-case hex.
    pub ca_digest: String,
    secret: Zeroizing<String>,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"[redacted]")
            .finish()
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    pub fn parse(token: &str) -> Result<JoinToken, TokenError> {
        let mut parts = token.trim().splitn(4, '-');
        let (Some(prefix), Some(version), Some(digest), Some(secret)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        if version != TOKEN_VERSION {
            return Err(TokenError::UnknownVersion(
                version.chars().take(8).collect(),
            ));
        }
        if !is_lower_hex(digest, DIGEST_HEX) || !is_lower_hex(secret, SECRET_HEX) {
            return Err(TokenError::Malformed);
        }
        Ok(JoinToken {
            ca_digest: digest.to_string(),
            secret: Zeroizing::new(secret.to_string()),
        })
    }

    /// The token as operators pass it around.
    pub fn to_token_string(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{PREFIX}-{TOKEN_VERSION}-{}-{}",
            self.ca_digest,
            self.secret.as_str()
        ))
    }
}

fn random_secret() -> Zeroizing<String> {
    let bytes: Zeroizing<[u8; SECRET_HEX / 2]> = Zeroizing::new(rand::random());
    Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The cluster's two join secrets.
#[derive(Clone)]
pub struct JoinTokens {
    worker: Zeroizing<String>,
    manager: Zeroizing<String>,
}

impl fmt::Debug for JoinTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinTokens([redacted])")
    }
}

impl JoinTokens {
    fn generate() -> JoinTokens {
        JoinTokens {
            worker: random_secret(),
            manager: random_secret(),
        }
    }

    /// The token for `role` under `ca`.
    pub fn token(&self, role: Role, ca: &RootCa) -> JoinToken {
        JoinToken {
            ca_digest: ca.digest(),
            secret: match role {
                Role::Worker => self.worker.clone(),
                Role::Manager => self.manager.clone(),
            },
        }
    }

    /// The role a presented token admits to, if it is one of this
    /// cluster's current tokens under `ca`. Constant time in the secret.
    pub fn role_of(&self, token: &JoinToken, ca: &RootCa) -> Option<Role> {
        if token.ca_digest != ca.digest() {
            return None;
        }
        let presented = token.secret.as_bytes();
        let worker = self.worker.as_bytes().ct_eq(presented);
        let manager = self.manager.as_bytes().ct_eq(presented);
        if bool::from(manager) {
            Some(Role::Manager)
        } else if bool::from(worker) {
            Some(Role::Worker)
        } else {
            None
        }
    }

    fn encode(&self) -> Vec<u8> {
        Writer::new(TOKENS_VERSION)
            .bytes(self.worker.as_bytes())
            .bytes(self.manager.as_bytes())
            .finish()
    }

    fn decode(record: &[u8]) -> Result<JoinTokens, VaultError> {
        let mut r = Reader::new("join tokens", TOKENS_VERSION, record)?;
        let worker = Zeroizing::new(r.string("worker secret")?);
        let manager = Zeroizing::new(r.string("manager secret")?);
        r.finish()?;
        Ok(JoinTokens { worker, manager })
    }

    /// The cluster's tokens, created if it has none yet.
    pub async fn init_or_load(store: &Store) -> Result<JoinTokens, VaultError> {
        load_or_create(store, TOKENS_KEY, "join tokens", JoinTokens::decode, || {
            let tokens = JoinTokens::generate();
            let encoded = tokens.encode();
            Ok((tokens, encoded))
        })
        .await
    }

    pub async fn load(store: &Store) -> Result<Option<JoinTokens>, VaultError> {
        crate::objects::load(store, TOKENS_KEY, JoinTokens::decode).await
    }

    /// Replaces `role`'s secret: the old token stops working at once.
    pub async fn rotate(store: &Store, role: Role) -> Result<JoinTokens, VaultError> {
        let mut tokens = JoinTokens::init_or_load(store).await?;
        match role {
            Role::Worker => tokens.worker = random_secret(),
            Role::Manager => tokens.manager = random_secret(),
        }
        store.put(TOKENS_KEY, &tokens.encode()).await?;
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_admit_only_their_role_under_their_ca() {
        let ca = RootCa::generate("c").unwrap();
        let tokens = JoinTokens::generate();
        let manager = tokens.token(Role::Manager, &ca).to_token_string();
        let parsed = JoinToken::parse(&manager).unwrap();
        assert_eq!(tokens.role_of(&parsed, &ca), Some(Role::Manager));
        let worker = JoinToken::parse(&tokens.token(Role::Worker, &ca).to_token_string()).unwrap();
        assert_eq!(tokens.role_of(&worker, &ca), Some(Role::Worker));
        let other_ca = RootCa::generate("c").unwrap();
        assert_eq!(tokens.role_of(&parsed, &other_ca), None);
        let rotated = JoinTokens::generate();
        assert_eq!(rotated.role_of(&parsed, &ca), None);
        assert!(!format!("{parsed:?} {tokens:?}").contains(&manager[72..]));

        let mut tampered = manager.to_string();
        tampered.pop();
        assert_eq!(JoinToken::parse(&tampered), Err(TokenError::Malformed));
        tampered.push('g');
        assert_eq!(JoinToken::parse(&tampered), Err(TokenError::Malformed));
        assert_eq!(
            JoinToken::parse(&manager.replacen("-1-", "-2-", 1)),
            Err(TokenError::UnknownVersion("2".into()))
        );
        for bad in ["", "CFTKN", "SWMTKN-1-abc-def", "CFTKN-1-", "cftkn-1-00-00"] {
            assert!(JoinToken::parse(bad).is_err(), "{bad:?}");
        }
        let record = tokens.encode();
        crate::record::assert_decoder_survives_damage(&record, JoinTokens::decode);
    }
}
