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

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .context("the root CA certificate")?;
    Ok(Arc::new(roots))
}

fn certified_key(
    cert_der: &[u8],
    key: &NodeKey,
    issuer: Option<&CertificateDer<'static>>,
) -> Result<Arc<CertifiedKey>> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().to_vec()));
    let mut chain = vec![CertificateDer::from(cert_der.to_vec())];
    chain.extend(issuer.cloned());
    let certified = CertifiedKey::from_der(chain, key_der, &provider())
        .map_err(|e| anyhow!("the node certificate and key do not go together: {e}"))?;
    Ok(Arc::new(certified))
}

/// The node's certificate, swappable while connections are served. When
/// the cluster's CA is an intermediate (an operator's own), the chain
/// goes on with it, so that clients trusting the root above it accept the
/// node.
#[derive(Debug)]
pub struct NodeCertResolver {
    current: RwLock<Arc<CertifiedKey>>,
    issuer: Option<CertificateDer<'static>>,
}

impl NodeCertResolver {
    /// The resolver of a node whose certificate `cert_der` (with `key`)
    /// the cluster's CA `ca_der` issued.
    pub fn new(cert_der: &[u8], key: &NodeKey, ca_der: &[u8]) -> Result<Arc<NodeCertResolver>> {
        let issuer = (!coffer_vault::ca::is_self_signed(ca_der))
            .then(|| CertificateDer::from(ca_der.to_vec()));
        let current = RwLock::new(certified_key(cert_der, key, issuer.as_ref())?);
        Ok(Arc::new(NodeCertResolver { current, issuer }))
    }

    /// New handshakes present this certificate from now on.
    pub fn replace(&self, cert_der: &[u8], key: &NodeKey) -> Result<()> {
        let next = certified_key(cert_der, key, self.issuer.as_ref())?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
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
pub fn server_config(ca_der: &[u8], certs: Arc<NodeCertResolver>) -> Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider())
        .allow_unauthenticated()
        .build()
        .context("building the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client of a node's port: trusts only the cluster's root CA, and
/// presents `identity` (certificate and key) when given.
pub fn client_config(ca_der: &[u8], identity: Option<(&[u8], &NodeKey)>) -> Result<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(roots(ca_der)?);
    let mut config = match identity {
        Some((cert_der, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(cert_der.to_vec())],
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
