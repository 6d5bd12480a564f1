//! The cluster's root CA and the certificates it issues (rcgen, ECDSA
//! P-256), after SwarmKit's `ca/`: a node certificate names the node in its
//! common name (16 hex digits), its role in its organizational unit
//! (`coffer-manager` or `coffer-worker`) and the cluster in its
//! organization; its DNS names are the role's (`coffer-manager`, what
//! peers verify when they dial a manager, whatever its address) and the
//! node's own (`coffer-node-<id>`).
//!
//! Private keys live in [`Zeroizing`] buffers (PKCS#8 DER) whose `Debug`
//! prints `[redacted]`; rcgen's key pair is built from them only for the
//! moment a signature needs it.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::VaultError;

/// How long a node certificate is valid (SwarmKit's default too).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 3600);
/// How long the generated root CA is valid.
pub const ROOT_CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Certificates start this long before they are issued, for clocks that
/// run a little behind the CA's.
const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
const ROOT_CA_NAME: &str = "coffer root CA";

/// What a node may do: a manager holds a replica of the store and votes; a
/// worker holds only its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    /// The certificate's organizational unit, and its role DNS name.
    pub fn unit(self) -> &'static str {
        match self {
            Role::Manager => "coffer-manager",
            Role::Worker => "coffer-worker",
        }
    }

    pub(crate) fn from_unit(unit: &str) -> Option<Role> {
        match unit {
            "coffer-manager" => Some(Role::Manager),
            "coffer-worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        })
    }
}

/// The DNS name a client verifies when it dials a manager.
pub const MANAGER_SERVER_NAME: &str = "coffer-manager";

/// The DNS name a client verifies when it dials node `node` (any role).
pub fn node_server_name(node: u64) -> String {
    format!("coffer-node-{node:016x}")
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as DER integers for serials must be.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

fn key_pair(der: &[u8]) -> Result<KeyPair, VaultError> {
    KeyPair::try_from(der).map_err(|e| VaultError::Certificate(format!("loading a key: {e}")))
}

/// A node's private key (ECDSA P-256, PKCS#8 DER).
#[derive(Clone)]
pub struct NodeKey(Zeroizing<Vec<u8>>);

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey([redacted])")
    }
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, VaultError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        Ok(NodeKey(Zeroizing::new(key.serialize_der())))
    }

    pub fn from_pkcs8_der(der: Zeroizing<Vec<u8>>) -> Result<NodeKey, VaultError> {
        key_pair(&der)?;
        Ok(NodeKey(der))
    }

    /// The PKCS#8 DER, for TLS and for sealing.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.0
    }

    /// The public half, for the CA to certify.
    pub fn public_key_der(&self) -> Result<Vec<u8>, VaultError> {
        Ok(key_pair(&self.0)?.subject_public_key_info())
    }
}

/// The cluster's root CA: its certificate and its private key.
#[derive(Clone)]
pub struct RootCa {
    cluster_id: String,
    cert_der: Vec<u8>,
    key_der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCa")
            .field("cluster_id", &self.cluster_id)
            .field("digest", &self.digest())
            .field("key", &"[redacted]")
            .finish()
    }
}

impl RootCa {
    /// A new root CA for cluster `cluster_id`.
    pub fn generate(cluster_id: &str) -> Result<RootCa, VaultError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, ROOT_CA_NAME);
        name.push(DnType::OrganizationName, cluster_id);
        params.distinguished_name = name;
        // It signs node certificates, and one CA below it: its successor's
        // certificate cross-signed during a root rotation, so that a node
        // trusting only this root accepts certificates from the new one.
        // (Roots made before CA rotation say 0; see `RootCa::cross_sign`.)
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now() - CLOCK_SKEW;
        params.not_after = now() + ROOT_CA_VALIDITY;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(RootCa {
            cluster_id: cluster_id.to_string(),
            cert_der: cert.der().to_vec(),
            key_der: Zeroizing::new(key.serialize_der()),
        })
    }

    /// The operator's own CA (`coffer server --ca-cert F --ca-key K`), a
    /// root or an intermediate, for cluster `cluster_id`: `cert_pem` holds
    /// its certificate (PEM), `key_pem` its private key (unencrypted
    /// PKCS#8 PEM: ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192
    /// bits). Refused with a reason (never the key) unless the certificate
    /// is a CA's, valid at `now_unix`, allowed to sign certificates, and
    /// the key is its own; then it signs a trial certificate that must
    /// verify.
    pub fn from_operator(
        cluster_id: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
        now_unix: i64,
    ) -> Result<RootCa, VaultError> {
        let bad = |m: String| VaultError::Invalid(m);
        let certs = pem::parse_many(cert_pem)
            .map_err(|e| bad(format!("the CA certificate is not PEM: {e}")))?;
        let cert_der = match certs.as_slice() {
            [one] if one.tag() == "CERTIFICATE" => one.contents().to_vec(),
            [other] => {
                return Err(bad(format!(
                    "the CA certificate file holds a {:?} block, not a CERTIFICATE",
                    other.tag()
                )))
            }
            [] => return Err(bad("the CA certificate file holds no PEM block".into())),
            more => {
                return Err(bad(format!(
                "the CA certificate file holds {} PEM blocks: give the CA's own certificate alone",
                more.len()
            )))
            }
        };
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| bad(format!("the CA certificate does not parse: {e}")))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(bad(
                "the certificate is not a CA's: its basic constraints do not say CA:TRUE".into(),
            ));
        }
        if let Ok(Some(usage)) = cert.key_usage() {
            if !usage.value.key_cert_sign() {
                return Err(bad(
                    "the CA certificate's key usage does not allow it to sign certificates (keyCertSign)".into(),
                ));
            }
        }
        let validity = cert.validity();
        if validity.not_before.timestamp() > now_unix {
            return Err(bad(format!(
                "the CA certificate is not valid before {}",
                validity.not_before
            )));
        }
        if validity.not_after.timestamp() <= now_unix {
            return Err(bad(format!(
                "the CA certificate expired on {}",
                validity.not_after
            )));
        }
        let keys = pem::parse_many(key_pem).map_err(|_| bad("the CA key is not PEM".into()))?;
        let key_der = match keys.as_slice() {
            [one] if one.tag() == "PRIVATE KEY" => Zeroizing::new(one.contents().to_vec()),
            [one] if one.tag() == "ENCRYPTED PRIVATE KEY" => {
                return Err(bad(
                    "the CA key is encrypted: give it decrypted (`openssl pkcs8 -in K -out K.plain`) in a file only you can read".into(),
                ))
            }
            [one] if one.tag() == "EC PRIVATE KEY" || one.tag() == "RSA PRIVATE KEY" => {
                return Err(bad(format!(
                    "the CA key is a {:?} block: convert it to PKCS#8 (`openssl pkcs8 -topk8 -nocrypt -in K -out K.p8`)",
                    one.tag()
                )))
            }
            [] | [_] => return Err(bad("the CA key file holds no PRIVATE KEY block".into())),
            blocks => {
                return Err(bad(format!(
                    "the CA key file holds {} PEM blocks: give the CA's private key alone",
                    blocks.len()
                )))
            }
        };
        let pair = KeyPair::try_from(key_der.as_slice()).map_err(|_| {
            bad("the CA key is not a key Coffer can sign with (ECDSA P-256 or P-384, Ed25519, RSA 2048 to 8192 bits)".into())
        })?;
        if pair.subject_public_key_info() != cert.public_key().raw {
            return Err(bad("the CA key is not the key of the CA certificate".into()));
        }
        drop(pair);
        let ca = RootCa::from_parts(cluster_id.to_string(), cert_der, key_der)?;
        // A trial: a certificate it issues must verify under it.
        let trial_key = NodeKey::generate()?;
        let trial = ca.issue(
            &trial_key.public_key_der()?,
            1,
            Role::Manager,
            Duration::from_secs(3600),
        )?;
        NodeCert::verify(&trial, &ca).map_err(|e| {
            bad(format!(
                "a certificate this CA signed does not verify under it: {e}"
            ))
        })?;
        Ok(ca)
    }

    pub(crate) fn from_parts(
        cluster_id: String,
        cert_der: Vec<u8>,
        key_der: Zeroizing<Vec<u8>>,
    ) -> Result<RootCa, VaultError> {
        let ca = RootCa {
            cluster_id,
            cert_der,
            key_der,
        };
        ca.issuer()?;
        Ok(ca)
    }

    /// The same CA (certificate and key) for cluster `cluster_id`: the
    /// operator's CA, checked once, given to a new cluster; a restored
    /// cluster's CA under its new id.
    pub fn with_cluster_id(&self, cluster_id: &str) -> RootCa {
        RootCa {
            cluster_id: cluster_id.to_string(),
            ..self.clone()
        }
    }

    pub(crate) fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert_der)
    }

    /// When the CA's certificate ends.
    pub fn not_after(&self) -> Option<OffsetDateTime> {
        let (_, cert) = x509_parser::parse_x509_certificate(&self.cert_der).ok()?;
        OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp()).ok()
    }

    /// The SHA-256 of the certificate (DER), in hex: what join tokens carry
    /// so that a joiner can pin the CA before it trusts anything.
    pub fn digest(&self) -> String {
        cert_digest(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, VaultError> {
        let cert = CertificateDer::from(self.cert_der.clone());
        Issuer::from_ca_cert_der(&cert, key_pair(&self.key_der)?)
            .map_err(|e| VaultError::Certificate(format!("loading the root CA: {e}")))
    }

    /// Issues a certificate for `node` in `role` over the public key
    /// `public_key_der` (a SubjectPublicKeyInfo), valid for `validity`.
    pub fn issue(
        &self,
        public_key_der: &[u8],
        node: u64,
        role: Role,
        validity: Duration,
    ) -> Result<Vec<u8>, VaultError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("{node:016x}"));
        name.push(DnType::OrganizationalUnitName, role.unit());
        name.push(DnType::OrganizationName, self.cluster_id.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = vec![
            SanType::DnsName(role.unit().try_into()?),
            SanType::DnsName(node_server_name(node).try_into()?),
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now() - CLOCK_SKEW;
        // Never past the CA's own end (an operator's CA may end sooner
        // than a node certificate would): verifiers refuse such chains.
        params.not_after = match self.not_after() {
            Some(ca_end) => (now() + validity).min(ca_end),
            None => now() + validity,
        };
        params.serial_number = Some(random_serial());
        let public_key = SubjectPublicKeyInfo::from_der(public_key_der)
            .map_err(|e| VaultError::InvalidCertificate(format!("the public key: {e}")))?;
        let cert = params.signed_by(&public_key, &self.issuer()?)?;
        Ok(cert.der().to_vec())
    }
}

impl RootCa {
    /// The certificate of `next` (its subject and public key) signed by
    /// this CA: during a root rotation, nodes present it after a
    /// certificate `next` issued, so that a peer that still trusts only
    /// this root can build the chain. It lasts as long as both CAs do, and
    /// may sign node certificates only. A verifier that enforces path
    /// lengths accepts the chain only below a root that allows one CA
    /// (this build's roots do; older ones said none, and nodes then accept
    /// the new root by [`verify_cross_signed`] instead).
    pub fn cross_sign(&self, next: &RootCa) -> Result<Vec<u8>, VaultError> {
        let (_, next_cert) = x509_parser::parse_x509_certificate(&next.cert_der)
            .map_err(|e| VaultError::InvalidCertificate(format!("the new CA: {e}")))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = same_name(next_cert.subject())?;
        // The new root's own key identifier, so that certificates it issues
        // (which name it) chain through this one.
        if let Some(ski) = next_cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                    Some(id.0.to_vec())
                }
                _ => None,
            })
        {
            params.key_identifier_method = rcgen::KeyIdMethod::PreSpecified(ski);
        }
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now() - CLOCK_SKEW;
        params.not_after = match (self.not_after(), next.not_after()) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => now() + ROOT_CA_VALIDITY,
        };
        params.serial_number = Some(random_serial());
        let next_key = key_pair(&next.key_der)?;
        let cert = params.signed_by(&next_key, &self.issuer()?)?;
        let der = cert.der().to_vec();
        verify_cross_signed(&self.cert_der, &next.cert_der, &der)?;
        Ok(der)
    }

    /// Issues a certificate for `node` in `role` over the key of a PKCS#10
    /// request, whose signature proves the requester holds that key. The
    /// request's own subject is ignored: the CA names the node.
    pub fn issue_for_csr(
        &self,
        csr_der: &[u8],
        node: u64,
        role: Role,
        validity: Duration,
    ) -> Result<Vec<u8>, VaultError> {
        let csr = rustls_pki_types::CertificateSigningRequestDer::from(csr_der);
        let request = rcgen::CertificateSigningRequestParams::from_der(&csr)
            .map_err(|e| VaultError::InvalidCertificate(format!("the signing request: {e}")))?;
        self.issue(
            &request.public_key.subject_public_key_info(),
            node,
            role,
            validity,
        )
    }
}

/// A PKCS#10 request for `key` (its subject is ignored by the CA).
pub fn signing_request(key: &NodeKey) -> Result<Vec<u8>, VaultError> {
    let pair = key_pair(key.pkcs8_der())?;
    let request = CertificateParams::default().serialize_request(&pair)?;
    Ok(request.der().to_vec())
}

/// Whether the CA certificate `der` is a root (self-issued and
/// self-signed), not an intermediate that nodes present after their own
/// certificate so that clients trusting the root above it accept them.
pub fn is_self_signed(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der).is_ok_and(|(_, cert)| {
        cert.subject().as_raw() == cert.issuer().as_raw() && cert.verify_signature(None).is_ok()
    })
}

/// `name` as rcgen writes it: each attribute with its type and string
/// kind, so the encoding comes out byte for byte the same (checked by the
/// caller).
fn same_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, VaultError> {
    use rcgen::DnValue;
    use x509_parser::der_parser::asn1_rs::Tag;
    let bad = |why: &str| VaultError::InvalidCertificate(format!("the new CA's name: {why}"));
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("a name part with other than one attribute"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| bad("an attribute type out of range"))?
            .collect();
        let data = attr.attr_value().data;
        let text = || std::str::from_utf8(data).map_err(|_| bad("not text"));
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => DnValue::PrintableString(
                text()?
                    .try_into()
                    .map_err(|_| bad("not a printable string"))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into().map_err(|_| bad("not IA5"))?),
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            _ => return Err(bad("a string kind this build cannot reproduce")),
        };
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

/// Checks that `cross_signed` certifies the CA certificate `next_der` (the
/// same subject and public key) and carries `trusted_der`'s signature: how
/// a node that trusts only the old root learns to trust the new one
/// during a root rotation, whatever path length the old root allows.
pub fn verify_cross_signed(
    trusted_der: &[u8],
    next_der: &[u8],
    cross_signed: &[u8],
) -> Result<(), VaultError> {
    let parse = |der, what: &str| {
        x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c)
            .map_err(|e| VaultError::InvalidCertificate(format!("{what}: {e}")))
    };
    let trusted = parse(trusted_der, "the trusted root")?;
    let next = parse(next_der, "the new root")?;
    let cross = parse(cross_signed, "the cross-signed certificate")?;
    cross
        .verify_signature(Some(trusted.public_key()))
        .map_err(|_| {
            VaultError::InvalidCertificate(
                "the cross-signed certificate is not signed by the trusted root".into(),
            )
        })?;
    if cross.subject().as_raw() != next.subject().as_raw()
        || cross.public_key().raw != next.public_key().raw
    {
        return Err(VaultError::InvalidCertificate(
            "the cross-signed certificate is not the new root's".into(),
        ));
    }
    if !next.is_ca() || !is_self_signed(next_der) {
        return Err(VaultError::InvalidCertificate(
            "the new root is not a self-signed CA certificate".into(),
        ));
    }
    Ok(())
}

/// The SHA-256 of a certificate's DER, in hex.
pub fn cert_digest(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PEM armour around DER.
pub fn pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// What a node certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub node: u64,
    pub role: Role,
    pub cluster_id: String,
    /// Seconds since the Unix epoch (backdated by the CA's allowance for
    /// clock skew).
    pub not_before_unix: i64,
    /// Seconds since the Unix epoch.
    pub not_after_unix: i64,
}

impl NodeCert {
    /// Reads a certificate after checking that `ca` signed it for `ca`'s
    /// cluster.
    pub fn verify(der: &[u8], ca: &RootCa) -> Result<NodeCert, VaultError> {
        let cert = NodeCert::verify_with(der, ca.cert_der())?;
        if cert.cluster_id != ca.cluster_id {
            return Err(VaultError::InvalidCertificate(
                "issued for another cluster".into(),
            ));
        }
        Ok(cert)
    }

    /// Reads a certificate after checking that the CA certificate
    /// `ca_der` signed it. Which cluster it names is the caller's to
    /// check: an operator's CA may serve several clusters.
    pub fn verify_with(der: &[u8], ca_der: &[u8]) -> Result<NodeCert, VaultError> {
        let (_, ca_cert) = x509_parser::parse_x509_certificate(ca_der)
            .map_err(|e| VaultError::InvalidCertificate(format!("the root CA: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| VaultError::InvalidCertificate(e.to_string()))?;
        cert.verify_signature(Some(ca_cert.public_key()))
            .map_err(|_| {
                VaultError::InvalidCertificate("not signed by this cluster's CA".into())
            })?;
        NodeCert::parse(der)
    }

    /// Reads a certificate this cluster's CA issued (the caller has
    /// verified its signature, as TLS does): its node id, role, cluster and
    /// expiry.
    pub fn parse(der: &[u8]) -> Result<NodeCert, VaultError> {
        let invalid = |m: &str| VaultError::InvalidCertificate(m.to_string());
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| VaultError::InvalidCertificate(e.to_string()))?;
        let subject = cert.subject();
        let one = |values: Vec<&str>, what: &str| match values.as_slice() {
            [v] => Ok(v.to_string()),
            _ => Err(invalid(&format!("the subject needs exactly one {what}"))),
        };
        let cn = one(
            subject
                .iter_common_name()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "common name",
        )?;
        let unit = one(
            subject
                .iter_organizational_unit()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "organizational unit",
        )?;
        let cluster_id = one(
            subject
                .iter_organization()
                .filter_map(|a| a.as_str().ok())
                .collect(),
            "organization",
        )?;
        let node = match u64::from_str_radix(&cn, 16) {
            Ok(n) if cn.len() == 16 && n != 0 => n,
            _ => return Err(invalid("the common name is not a node id")),
        };
        let role = Role::from_unit(&unit).ok_or_else(|| invalid("unknown role"))?;
        Ok(NodeCert {
            node,
            role,
            cluster_id,
            not_before_unix: cert.validity().not_before.timestamp(),
            not_after_unix: cert.validity().not_after.timestamp(),
        })
    }

    /// Whether the certificate should be renewed at `now_unix`: once 60%
    /// of the validity it was issued with has passed (SwarmKit renews
    /// between 50% and 80%), so a renewal has 40% of it to succeed.
    pub fn renewal_due(&self, now_unix: i64) -> bool {
        let skew = i64::try_from(CLOCK_SKEW.as_secs()).unwrap_or(0);
        let issued = self.not_before_unix.saturating_add(skew);
        let validity = self.not_after_unix.saturating_sub(issued).max(0);
        now_unix >= issued.saturating_add(validity / 5 * 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_node_role_and_cluster() {
        let ca = RootCa::generate("c0ffee").unwrap();
        let key = NodeKey::generate().unwrap();
        let der = ca
            .issue(
                &key.public_key_der().unwrap(),
                0x2a,
                Role::Manager,
                NODE_CERT_VALIDITY,
            )
            .unwrap();
        let cert = NodeCert::parse(&der).unwrap();
        assert_eq!(cert.node, 0x2a);
        assert_eq!(cert.role, Role::Manager);
        assert_eq!(cert.cluster_id, "c0ffee");
        let days = (cert.not_after_unix - now().unix_timestamp()) / 86_400;
        assert!((89..=90).contains(&days), "{days} days");
        // The CA's own certificate is no node certificate.
        assert!(NodeCert::parse(ca.cert_der()).is_err());
        assert_eq!(ca.digest().len(), 64);
        assert!(!format!("{ca:?} {key:?}").contains("BEGIN"));
        assert_eq!(NodeCert::verify(&der, &ca).unwrap(), cert);
        let other = RootCa::generate("c0ffee").unwrap();
        assert!(NodeCert::verify(&der, &other).is_err());

        let joiner = NodeKey::generate().unwrap();
        let csr = signing_request(&joiner).unwrap();
        let issued = ca
            .issue_for_csr(&csr, 7, Role::Worker, NODE_CERT_VALIDITY)
            .unwrap();
        let cert = NodeCert::verify(&issued, &ca).unwrap();
        assert_eq!((cert.node, cert.role), (7, Role::Worker));
        let mut forged = csr.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(ca
            .issue_for_csr(&forged, 7, Role::Worker, NODE_CERT_VALIDITY)
            .is_err());
        assert!(ca
            .issue_for_csr(b"junk", 7, Role::Worker, NODE_CERT_VALIDITY)
            .is_err());
    }

    #[test]
    fn a_cross_signed_new_root_chains_to_the_old_one() {
        let old = RootCa::generate("c0ffee").unwrap();
        let new = RootCa::generate("c0ffee").unwrap();
        let cross = old.cross_sign(&new).unwrap();
        verify_cross_signed(old.cert_der(), new.cert_der(), &cross).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&cross).unwrap();
        let (_, n) = x509_parser::parse_x509_certificate(new.cert_der()).unwrap();
        let (_, o) = x509_parser::parse_x509_certificate(old.cert_der()).unwrap();
        assert_eq!(c.subject().as_raw(), n.subject().as_raw());
        assert_eq!(c.issuer().as_raw(), o.subject().as_raw());
        assert!(c.is_ca());
        assert!(!is_self_signed(&cross));
        // A node certificate from the new root verifies under the
        // cross-signed certificate (the same key), which the old root
        // signed.
        let key = NodeKey::generate().unwrap();
        let leaf = new
            .issue(
                &key.public_key_der().unwrap(),
                5,
                Role::Manager,
                NODE_CERT_VALIDITY,
            )
            .unwrap();
        assert_eq!(NodeCert::verify_with(&leaf, &cross).unwrap().node, 5);
        assert!(NodeCert::verify(&leaf, &old).is_err());
        // Another root's signature, another root's subject, or a damaged
        // certificate are refused.
        let stranger = RootCa::generate("c0ffee").unwrap();
        assert!(verify_cross_signed(stranger.cert_der(), new.cert_der(), &cross).is_err());
        assert!(verify_cross_signed(old.cert_der(), stranger.cert_der(), &cross).is_err());
        let mut bad = cross.clone();
        let at = bad.len() - 3;
        bad[at] ^= 1;
        assert!(verify_cross_signed(old.cert_der(), new.cert_der(), &bad).is_err());
        // The operator's own CA as the new root.
        let (cert, key_pem) = operator_ca(|_| {});
        let theirs = RootCa::from_operator(
            "c0ffee",
            cert.as_bytes(),
            key_pem.as_bytes(),
            now().unix_timestamp(),
        )
        .unwrap();
        let cross = old.cross_sign(&theirs).unwrap();
        verify_cross_signed(old.cert_der(), theirs.cert_der(), &cross).unwrap();
    }

    /// A CA certificate (PEM) and its key (PKCS#8 PEM) as an operator's
    /// tools make them, with `edit` applied to the certificate's params.
    fn operator_ca(edit: impl FnOnce(&mut CertificateParams)) -> (String, String) {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "Example Corp issuing CA");
        name.push(DnType::OrganizationName, "Example Corp");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now() - Duration::from_secs(3600);
        params.not_after = now() + Duration::from_secs(365 * 86_400);
        edit(&mut params);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn an_operators_ca_signs_for_the_cluster_after_its_checks() {
        let t = now().unix_timestamp();
        let (cert, key) = operator_ca(|_| {});
        let ca = RootCa::from_operator("c0ffee", cert.as_bytes(), key.as_bytes(), t).unwrap();
        assert_eq!(ca.cluster_id(), "c0ffee");
        assert_eq!(ca.cert_pem().trim(), cert.trim());
        let node = NodeKey::generate().unwrap();
        let worker_9 = |ca: &RootCa| {
            ca.issue(
                &node.public_key_der().unwrap(),
                9,
                Role::Worker,
                NODE_CERT_VALIDITY,
            )
            .unwrap()
        };
        let der = worker_9(&ca);
        let issued = NodeCert::verify(&der, &ca).unwrap();
        assert_eq!((issued.node, issued.role), (9, Role::Worker));
        assert_eq!(issued.cluster_id, "c0ffee");
        // The same CA for another cluster: its certificates are not this
        // cluster's.
        let other = RootCa::from_operator("beef", cert.as_bytes(), key.as_bytes(), t).unwrap();
        assert!(NodeCert::verify(&der, &other).is_err());
        assert!(NodeCert::verify_with(&der, other.cert_der()).is_ok());

        let key_body = key.lines().nth(1).unwrap().to_string();
        let refused = |cert: &str, key: &str, at: i64, why: &str| {
            let err = RootCa::from_operator("c0ffee", cert.as_bytes(), key.as_bytes(), at)
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err:?} does not say {why:?}");
            assert!(!err.contains(&key_body), "the key is in {err:?}");
        };
        let (leaf, leaf_key) = operator_ca(|p| p.is_ca = IsCa::NoCa);
        refused(&leaf, &leaf_key, t, "not a CA's");
        let (no_sign, no_sign_key) =
            operator_ca(|p| p.key_usages = vec![KeyUsagePurpose::DigitalSignature]);
        refused(&no_sign, &no_sign_key, t, "keyCertSign");
        refused(&cert, &key, t + 366 * 86_400, "expired");
        refused(&cert, &key, t - 2 * 3600, "not valid before");
        let (_, another_key) = operator_ca(|_| {});
        refused(&cert, &another_key, t, "not the key of the CA certificate");
        refused(&format!("{cert}{cert}"), &key, t, "2 PEM blocks");
        refused(&key, &key, t, "not a CERTIFICATE");
        refused("junk", &key, t, "no PEM block");
        refused(&cert, "junk", t, "no PRIVATE KEY");
        refused(&cert, &cert, t, "no PRIVATE KEY");
        let sec1 = key.replace("PRIVATE KEY", "EC PRIVATE KEY");
        refused(&cert, &sec1, t, "convert it to PKCS#8");
        let encrypted = key.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY");
        refused(&cert, &encrypted, t, "encrypted");
        let mangled = pem("PRIVATE KEY", b"not a key at all");
        refused(&cert, &mangled, t, "not a key Coffer can sign with");

        // A CA that ends in two days: node certificates end with it.
        let (short, short_key) =
            operator_ca(|p| p.not_after = now() + Duration::from_secs(2 * 86_400));
        let ca =
            RootCa::from_operator("c0ffee", short.as_bytes(), short_key.as_bytes(), t).unwrap();
        let issued = NodeCert::verify(&worker_9(&ca), &ca).unwrap();
        assert_eq!(
            issued.not_after_unix,
            ca.not_after().unwrap().unix_timestamp()
        );
    }

    #[test]
    fn renewal_is_due_at_sixty_percent_of_the_validity() {
        let ca = RootCa::generate("c0ffee").unwrap();
        let key = NodeKey::generate().unwrap();
        let validity = Duration::from_secs(100);
        let der = ca
            .issue(&key.public_key_der().unwrap(), 7, Role::Worker, validity)
            .unwrap();
        let cert = NodeCert::parse(&der).unwrap();
        let issued = cert.not_after_unix - 100;
        assert!(!cert.renewal_due(issued));
        assert!(!cert.renewal_due(issued + 59));
        assert!(cert.renewal_due(issued + 60));
        assert!(cert.renewal_due(cert.not_after_unix + 1));
        let long = NodeCert::parse(
            &ca.issue(
                &key.public_key_der().unwrap(),
                7,
                Role::Worker,
                NODE_CERT_VALIDITY,
            )
            .unwrap(),
        )
        .unwrap();
        assert!(!long.renewal_due(now().unix_timestamp()));
    }
}
