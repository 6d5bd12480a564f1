//! rustls (ring provider) for the node's one TCP port: TLS 1.3 only, h2,
//! the node's certificate from a resolver that can be swapped while the
//! server runs (renewal without a restart), and client certificates
//! verified against the cluster's root CA but not required at the TLS
//! layer: a joiner has none yet, so every call checks the peer
//! certificate itself ([`crate::auth`]).

use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context, Result};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use coffer_vault::ca::NodeKey;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a node trusts and presents: the CA certificates whose node
/// certificates it accepts (the cluster's, then the next root during a
/// root rotation), and the CA certificates it presents after its own so
/// that peers trusting a root above them accept it (an operator's
/// intermediate CA; the next root cross-signed by the current one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub roots: Vec<Vec<u8>>,
    pub chain: Vec<Vec<u8>>,
}

impl Trust {
    /// The cluster's CA alone: a root, or an operator's intermediate,
    /// which is then presented too.
    pub fn of(ca_der: &[u8]) -> Trust {
        Trust {
            roots: vec![ca_der.to_vec()],
            chain: if coffer_vault::ca::is_self_signed(ca_der) {
                Vec::new()
            } else {
                vec![ca_der.to_vec()]
            },
        }
    }

    /// The cluster's current CA (the first root).
    pub fn current(&self) -> &[u8] {
        self.roots.first().map_or(&[], Vec::as_slice)
    }

    fn root_store(&self) -> Result<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        for der in &self.roots {
            roots
                .add(CertificateDer::from(der.clone()))
                .context("a root CA certificate")?;
        }
        Ok(Arc::new(roots))
    }

    /// The node certificate `cert_der` if one of the roots issued it, with
    /// that root's digest.
    pub fn verify(&self, cert_der: &[u8]) -> Result<(coffer_vault::ca::NodeCert, String)> {
        let mut last = None;
        for root in &self.roots {
            match coffer_vault::ca::NodeCert::verify_with(cert_der, root) {
                Ok(cert) => return Ok((cert, coffer_vault::ca::cert_digest(root))),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => anyhow!(e),
            None => anyhow!("no root CA to verify against"),
        })
    }
}

fn certified_key(cert_der: &[u8], key: &NodeKey, trust: &Trust) -> Result<Arc<CertifiedKey>> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let mut chain = vec![CertificateDer::from(cert_der.to_vec())];
    chain.extend(trust.chain.iter().map(|c| CertificateDer::from(c.clone())));
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| anyhow!("the node certificate and key do not go together: {e}"))?;
    Ok(Arc::new(certified))
}

/// The node's certificate, swappable while connections are served, with
/// the chain its trust presents after it ([`Trust::chain`]).
#[derive(Debug)]
pub struct NodeCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl NodeCertResolver {
    /// The resolver of a node whose certificate is `cert_der` (with `key`).
    pub fn new(cert_der: &[u8], key: &NodeKey, trust: &Trust) -> Result<Arc<NodeCertResolver>> {
        let current = RwLock::new(certified_key(cert_der, key, trust)?);
        Ok(Arc::new(NodeCertResolver { current }))
    }

    /// New handshakes present this certificate from now on.
    pub fn replace(&self, cert_der: &[u8], key: &NodeKey, trust: &Trust) -> Result<()> {
        let next = certified_key(cert_der, key, trust)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

/// The client certificate verifier of the node's port, whose roots change
/// while it serves (a root CA rotation).
#[derive(Debug)]
pub struct ClientVerifier {
    inner: RwLock<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

fn client_verifier(trust: &Trust) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    WebPkiClientVerifier::builder_with_provider(trust.root_store()?, provider())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")
}

impl ClientVerifier {
    pub fn new(trust: &Trust) -> Result<Arc<ClientVerifier>> {
        Ok(Arc::new(ClientVerifier {
            inner: RwLock::new(client_verifier(trust)?),
        }))
    }

    /// New handshakes accept client certificates from these roots.
    pub fn replace(&self, trust: &Trust) -> Result<()> {
        let next = client_verifier(trust)?;
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn get(&self) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl rustls::server::danger::ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.get().offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.get().client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // Hints are optional; the roots change under a lock.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.get()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.get().supported_verify_schemes()
    }
}

impl ResolvesServerCert for NodeCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The server side of the node's port.
pub fn server_config(
    verifier: Arc<ClientVerifier>,
    certs: Arc<NodeCertResolver>,
) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client of a node's port: trusts only the cluster's root CAs, and
/// presents `identity` (certificate and key, then the trust's chain) when
/// given.
pub fn client_config(trust: &Trust, identity: Option<(&[u8], &NodeKey)>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(trust.root_store()?);
    let mut config = match identity {
        Some((cert_der, key)) => builder
            .with_client_auth_cert(
                std::iter::once(cert_der)
                    .chain(trust.chain.iter().map(Vec::as_slice))
                    .map(|c| CertificateDer::from(c.to_vec()))
                    .collect(),
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec())),
            )
            .context("the client certificate")?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Accepts any server certificate. Used for one call only: a joiner
/// fetching the root CA before it has any trust root, after which it
/// compares the CA's digest with its join token's and trusts nothing
/// that does not chain to it (SwarmKit does the same).
#[derive(Debug)]
struct DangerAcceptAnyServer(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for DangerAcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that trusts any server, presenting no certificate: for a
/// joiner's root CA fetch alone (see [`DangerAcceptAnyServer`]).
pub fn danger_unverified_client_config() -> Result<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(DangerAcceptAnyServer(provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
