//! TLS material: the scheduler's identity and how clients decide to trust it.
//!
//! The scheduler presents a certificate (self-signed and generated at start unless one
//! is configured). A client trusts it either because its SHA-256 fingerprint equals the
//! one pinned in the scheduler file, or because it chains to a CA the client was given.
//! There is no path that skips verification.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::NetError;

/// The scheduler's certificate and key.
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// A fresh self-signed certificate for `localhost`, the loopback addresses and
    /// `extra_names` (host names or IP addresses the scheduler is reached by).
    pub fn self_signed(extra_names: &[String]) -> Result<Self, NetError> {
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        names.extend(extra_names.iter().filter(|n| !n.is_empty()).cloned());
        names.sort();
        names.dedup();
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| NetError::Tls(format!("could not generate a certificate: {e}")))?;
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        Ok(Self { chain: vec![certified.cert.der().clone()], key: key.into() })
    }

    /// Loads a PEM certificate chain and private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, NetError> {
        use rustls::pki_types::pem::PemObject;
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| NetError::Tls(format!("cannot read certificate {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(NetError::Tls(format!("no certificate in {}", cert.display())));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| NetError::Tls(format!("cannot read private key {}: {e}", key.display())))?;
        Ok(Self { chain, key })
    }

    /// `sha256:<hex>` of the leaf certificate, as pinned in scheduler files.
    pub fn fingerprint(&self) -> String {
        self.chain.first().map(|c| fingerprint(c)).unwrap_or_default()
    }
}

/// `sha256:<hex>` of a DER certificate.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(cert.as_ref())))
}

/// How a client decides to trust the scheduler's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// The leaf certificate must have exactly this `sha256:<hex>` fingerprint.
    Fingerprint(String),
    /// The certificate must chain to a CA in this PEM file (and name the host).
    CaFile(std::path::PathBuf),
}

/// The crypto provider used everywhere (ring: no C build toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls client configuration for a trust decision.
pub fn client_config(trust: &ServerTrust) -> Result<rustls::ClientConfig, NetError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = match trust {
        ServerTrust::Fingerprint(expected) => builder
            .dangerous() // a custom verifier: pinning is a full verification, see PinnedCert
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                expected: expected.to_ascii_lowercase(),
                provider,
            }))
            .with_no_client_auth(),
        ServerTrust::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| NetError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
            for cert in certs {
                roots.add(cert).map_err(|e| NetError::Tls(format!("bad CA certificate in {}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    Ok(config)
}

/// rustls server configuration for the scheduler.
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, NetError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| NetError::Tls(format!("certificate and key do not fit: {e}")))?;
    config.alpn_protocols = vec![crate::proto::ALPN.to_vec()];
    Ok(config)
}

/// Trusts exactly one certificate, by fingerprint. The handshake signature is still
/// verified against that certificate's key, so a peer must hold the private key.
#[derive(Debug)]
struct PinnedCert {
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "scheduler certificate {got} does not match the pinned {}; hint: use the scheduler file of this scheduler run",
                self.expected
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
