//! The certificate authority: a self-signed ECDSA P-256 root created on first start and persisted in a state
//! directory, or a plugged-in CA from Istio's `cacerts` files. Issues workload certificates (one SPIFFE URI
//! SAN) and the xDS serving certificate.
//!
//! Validity, serial and extensions are always set here, never taken from input: a caller names only the
//! identity (or DNS names) the certificate is for.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use super::{Error, SpiffeId};

/// Default workload certificate lifetime (istiod's `DEFAULT_WORKLOAD_CERT_TTL`).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Lifetime of the self-signed root (istiod's default: 10 years).
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Lifetime of the xDS serving certificate.
const SERVING_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this much in the past so a proxy whose clock is slightly behind accepts them.
const BACKDATE: Duration = Duration::from_secs(60);

/// File names of the self-signed root in the state directory, and of a plugged-in CA (Istio's `cacerts`).
pub const CA_CERT: &str = "ca-cert.pem";
/// Signing key file (mode 0600).
pub const CA_KEY: &str = "ca-key.pem";
/// Trust anchor of a plugged-in CA.
pub const ROOT_CERT: &str = "root-cert.pem";
/// Chain from the signing certificate up to the root, for a plugged-in CA.
pub const CERT_CHAIN: &str = "cert-chain.pem";

/// Where the CA comes from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum CaSource {
    /// Self-signed root, created on first start in this directory and reused afterwards.
    SelfSigned {
        /// State directory holding `ca-cert.pem` and `ca-key.pem`.
        state_dir: PathBuf,
    },
    /// Istio's plugged-in CA: `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem` in this directory.
    Plugged {
        /// The `cacerts` directory.
        dir: PathBuf,
    },
    /// Kubernetes mode, as istiod: the plugged-in CA of Secret `cacerts` when it exists, else the self-signed
    /// root persisted in Secret `istio-ca-secret` (created on first start), both in `namespace`. Loaded by
    /// [`super::kube_ca`], which needs a client; [`Ca::load`] refuses it.
    Kube {
        /// The root namespace holding both Secrets.
        namespace: String,
    },
}

/// The PEM texts of a plugged-in CA (Istio's `cacerts` files or Secret keys).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluggedPems {
    /// `ca-cert.pem`: the signing certificate.
    pub ca_cert: String,
    /// `ca-key.pem`: its private key.
    pub ca_key: String,
    /// `root-cert.pem`: the trust anchor.
    pub root_cert: String,
    /// `cert-chain.pem`: signing certificate up to the root, when given.
    pub cert_chain: Option<String>,
}

/// A signed certificate with its chain and freshly generated private key.
#[derive(Clone)]
pub struct Issued {
    /// PEM: the certificate, then the chain up to (and including) the root.
    pub chain_pem: String,
    /// PEM PKCS#8 private key. Never logged (the `Debug` impl leaves it out).
    pub key_pem: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Half the lifetime after issuance (the backdated start does not count): when rotation replaces it.
    pub refresh_at: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("refresh_at", &self.refresh_at)
            .finish_non_exhaustive()
    }
}

/// A loaded CA.
pub struct Ca {
    key: KeyPair,
    /// The signing certificate (DER), whose subject and key id become the issuer of what we sign.
    cert: CertificateDer<'static>,
    /// PEM chain appended to every issued certificate: signing cert and intermediates up to the root.
    chain_pem: String,
    /// PEM trust bundle (`ROOTCA`).
    root_pem: String,
    trust_domain: String,
    workload_ttl: Duration,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .field("workload_ttl", &self.workload_ttl)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Loads (or, for a self-signed CA seen for the first time, creates) the CA.
    pub fn load(
        source: &CaSource,
        trust_domain: &str,
        workload_ttl: Duration,
    ) -> Result<Ca, Error> {
        match source {
            CaSource::SelfSigned { state_dir } => {
                Self::self_signed(state_dir, trust_domain, workload_ttl)
            }
            CaSource::Plugged { dir } => Self::plugged(dir, trust_domain, workload_ttl),
            CaSource::Kube { namespace } => Err(Error::Kube(
                namespace.clone(),
                "the CA lives in Secrets; load it with security::kube_ca".into(),
            )),
        }
    }

    /// The self-signed root in `state_dir`, created there (key mode 0600) if absent.
    pub fn self_signed(
        state_dir: &Path,
        trust_domain: &str,
        workload_ttl: Duration,
    ) -> Result<Ca, Error> {
        let cert_path = state_dir.join(CA_CERT);
        let key_path = state_dir.join(CA_KEY);
        if !cert_path.exists() || !key_path.exists() {
            let (cert_pem, key_pem) = new_root(trust_domain)?;
            fs::create_dir_all(state_dir).map_err(|e| Error::Io(state_dir.to_owned(), e))?;
            // Key first and private from the start: never a moment where it is world-readable.
            write_private(&key_path, &key_pem)?;
            fs::write(&cert_path, &cert_pem).map_err(|e| Error::Io(cert_path.clone(), e))?;
            tracing::info!(dir = %state_dir.display(), "created self-signed root CA");
        }
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        Self::self_signed_from_pem(
            &cert_pem,
            &key_pem,
            &cert_path,
            &key_path,
            trust_domain,
            workload_ttl,
        )
    }

    /// A self-signed root from PEM text (e.g. Secret `istio-ca-secret`); `cert_at`/`key_at` name where the PEM
    /// came from in errors.
    pub fn self_signed_from_pem(
        cert_pem: &str,
        key_pem: &str,
        cert_at: &Path,
        key_at: &Path,
        trust_domain: &str,
        workload_ttl: Duration,
    ) -> Result<Ca, Error> {
        let key = load_key_pem(key_at, key_pem)?;
        let cert = first_cert(cert_at, cert_pem)?;
        Ok(Ca {
            key,
            cert,
            chain_pem: ensure_newline(cert_pem),
            root_pem: ensure_newline(cert_pem),
            trust_domain: trust_domain.to_owned(),
            workload_ttl,
        })
    }

    /// Istio's plugged-in CA files. `cert-chain.pem` (signing cert … root) is optional; without it the chain
    /// is `ca-cert.pem` followed by the root unless they are the same.
    pub fn plugged(dir: &Path, trust_domain: &str, workload_ttl: Duration) -> Result<Ca, Error> {
        let chain_path = dir.join(CERT_CHAIN);
        let pems = PluggedPems {
            ca_cert: read(&dir.join(CA_CERT))?,
            ca_key: read(&dir.join(CA_KEY))?,
            root_cert: read(&dir.join(ROOT_CERT))?,
            cert_chain: if chain_path.exists() {
                Some(read(&chain_path)?)
            } else {
                None
            },
        };
        Self::plugged_from_pem(&pems, dir, trust_domain, workload_ttl)
    }

    /// A plugged-in CA from PEM text (the `cacerts` files or Secret); `at` names the directory or Secret in
    /// errors, each file being `at/<file name>`.
    pub fn plugged_from_pem(
        pems: &PluggedPems,
        at: &Path,
        trust_domain: &str,
        workload_ttl: Duration,
    ) -> Result<Ca, Error> {
        let cert_pem = &pems.ca_cert;
        let key = load_key_pem(&at.join(CA_KEY), &pems.ca_key)?;
        let root_pem = &pems.root_cert;
        let cert = first_cert(&at.join(CA_CERT), cert_pem)?;
        let root = first_cert(&at.join(ROOT_CERT), root_pem)?;
        let chain_pem = match &pems.cert_chain {
            Some(chain) if !chain.trim().is_empty() => chain.clone(),
            _ if cert == root => cert_pem.clone(),
            _ => format!("{}{}", ensure_newline(cert_pem), root_pem),
        };
        // The signing key must belong to the signing certificate, or every certificate we issue is garbage.
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| Error::BadCa(at.to_owned(), format!("{CA_CERT}: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(Error::BadCa(
                at.to_owned(),
                format!("{CA_KEY} does not match the public key of {CA_CERT}"),
            ));
        }
        if !parsed.is_ca() {
            return Err(Error::BadCa(
                at.to_owned(),
                format!("{CA_CERT} is not a CA certificate (basicConstraints CA:TRUE missing)"),
            ));
        }
        Ok(Ca {
            key,
            cert,
            chain_pem: ensure_newline(&chain_pem),
            root_pem: ensure_newline(root_pem),
            trust_domain: trust_domain.to_owned(),
            workload_ttl,
        })
    }

    /// Whether `other` signs with the same certificate and chain.
    pub fn same_signer(&self, other: &Ca) -> bool {
        self.cert == other.cert && self.chain_pem == other.chain_pem
    }

    /// The trust bundle (PEM).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The trust domain of issued SPIFFE ids.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Configured workload certificate lifetime.
    pub fn workload_ttl(&self) -> Duration {
        self.workload_ttl
    }

    /// A workload certificate for `namespace/service_account` with exactly one URI SAN, the SPIFFE id.
    pub fn issue_workload(&self, namespace: &str, service_account: &str) -> Result<Issued, Error> {
        let id = SpiffeId::new(&self.trust_domain, namespace, service_account);
        let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(Error::Generate)?;
        let mut params = CertificateParams::default();
        // Istio leaves the subject empty; the identity is the SAN alone.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign_leaf(params, self.workload_ttl)
    }

    /// The xDS serving certificate for `dns_names` (e.g. `istiod.istio-system.svc`).
    pub fn issue_serving(&self, dns_names: &[String]) -> Result<Issued, Error> {
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(Error::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign_leaf(params, SERVING_TTL)
    }

    fn sign_leaf(&self, mut params: CertificateParams, ttl: Duration) -> Result<Issued, Error> {
        let now = SystemTime::now();
        let not_before = now - BACKDATE;
        let not_after = now + ttl;
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        params.serial_number = Some(random_serial()?);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key).map_err(Error::Generate)?;
        let cert = params
            .signed_by(&leaf_key, &issuer)
            .map_err(Error::Generate)?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: leaf_key.serialize_pem(),
            // X.509 keeps whole seconds; report what the certificate says.
            not_before: truncate_secs(not_before),
            not_after: truncate_secs(not_after),
            refresh_at: now + ttl / 2,
        })
    }
}

/// A new self-signed ECDSA P-256 root: `(cert PEM, key PEM)`.
pub fn new_root(trust_domain: &str) -> Result<(String, String), Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Generate)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // istiod's self-signed root: O=<trust domain>.
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "rudder root CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = OffsetDateTime::from(now - BACKDATE);
    params.not_after = OffsetDateTime::from(now + ROOT_TTL);
    params.serial_number = Some(random_serial()?);
    let cert = params.self_signed(&key).map_err(Error::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 128 random bits, positive (top bit clear) as RFC 5280 requires.
fn random_serial() -> Result<SerialNumber, Error> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Error::Generate(rcgen::Error::RingUnspecified))?;
    bytes[0] &= 0x7f;
    // A leading zero byte would be dropped by DER and shorten the serial; keep it non-zero.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn truncate_secs(t: SystemTime) -> SystemTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(|e| Error::Io(path.to_owned(), e))
}

fn ensure_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_owned()
    } else {
        format!("{pem}\n")
    }
}

/// Writes `contents` to a new file readable by the owner only.
fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| Error::Io(path.to_owned(), e))?;
    f.write_all(contents.as_bytes())
        .map_err(|e| Error::Io(path.to_owned(), e))
}

fn first_cert(path: &Path, pem: &str) -> Result<CertificateDer<'static>, Error> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| Error::BadPem(path.to_owned(), "no CERTIFICATE block".into()))?
        .map_err(|e| Error::BadPem(path.to_owned(), e.to_string()))
}

/// Loads a signing key in any of the PEM forms CA tooling writes: PKCS#8 (`PRIVATE KEY`), PKCS#1
/// (`RSA PRIVATE KEY`, Istio's sample `cacerts`) or SEC1 (`EC PRIVATE KEY`, `openssl ecparam -genkey`).
/// ring reads PKCS#8 only, so the other two are wrapped into PKCS#8 first.
pub fn load_key(path: &Path) -> Result<KeyPair, Error> {
    load_key_pem(path, &read(path)?)
}

/// [`load_key`] of PEM text; `path` names where it came from in errors.
pub fn load_key_pem(path: &Path, pem: &str) -> Result<KeyPair, Error> {
    let bad = |m: String| Error::BadPem(path.to_owned(), m);
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let candidates: Vec<Vec<u8>> = match &der {
        PrivateKeyDer::Pkcs8(k) => vec![k.secret_pkcs8_der().to_vec()],
        PrivateKeyDer::Pkcs1(k) => vec![pkcs8::wrap_rsa(k.secret_pkcs1_der())],
        PrivateKeyDer::Sec1(k) => vec![
            pkcs8::wrap_ec(k.secret_sec1_der(), pkcs8::OID_P256),
            pkcs8::wrap_ec(k.secret_sec1_der(), pkcs8::OID_P384),
        ],
        _ => return Err(bad("unsupported private key format".into())),
    };
    candidates
        .iter()
        .find_map(|der| KeyPair::try_from(der.as_slice()).ok())
        .ok_or_else(|| bad("unsupported key (want RSA, ECDSA P-256 or P-384)".into()))
}

/// Just enough DER to wrap a PKCS#1 or SEC1 key into a PKCS#8 `PrivateKeyInfo`.
mod pkcs8 {
    /// rsaEncryption (1.2.840.113549.1.1.1).
    const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// id-ecPublicKey (1.2.840.10045.2.1).
    const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// prime256v1 (1.2.840.10045.3.1.7).
    pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// secp384r1 (1.3.132.0.34).
    pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(body);
        out
    }

    fn wrap(alg_id: Vec<u8>, key: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x02, &[0]); // version 0
        body.extend(tlv(0x30, &alg_id));
        body.extend(tlv(0x04, key));
        tlv(0x30, &body)
    }

    pub fn wrap_rsa(pkcs1: &[u8]) -> Vec<u8> {
        let mut alg = tlv(0x06, OID_RSA);
        alg.extend([0x05, 0x00]); // NULL parameters
        wrap(alg, pkcs1)
    }

    pub fn wrap_ec(sec1: &[u8], curve: &[u8]) -> Vec<u8> {
        let mut alg = tlv(0x06, OID_EC);
        alg.extend(tlv(0x06, curve));
        wrap(alg, sec1)
    }
}

#[cfg(test)]
mod tests;
