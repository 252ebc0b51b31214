//! TLS files given as flags (`--cacert`, `--cert`, `--key`), read and checked at start-up
//! so a wrong path fails the process with a message, not the first request; with
//! [`TlsMaterial::reloading`], read again when they change (see [`crate::reload`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::reload::Reloading;

/// The PEM contents of the TLS flags. The CA alone verifies a server; the certificate and
/// key together prove the client (etcd's client port wants both with `--client-cert-auth`).
#[derive(Clone, Default)]
pub struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    pub identity: Option<ClientIdentity>,
}

#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsMaterial {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

impl TlsMaterial {
    /// Reads the files. `cert` and `key` come together or not at all.
    pub fn from_files(
        cacert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Option<Self>, String> {
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(ClientIdentity {
                cert_pem: read_pem(cert, "--cert", "CERTIFICATE")?,
                key_pem: read_pem(key, "--key", "PRIVATE KEY")?,
            }),
            (Some(_), None) => return Err("--cert needs --key".into()),
            (None, Some(_)) => return Err("--key needs --cert".into()),
        };
        let ca_pem = cacert
            .map(|path| read_pem(path, "--cacert", "CERTIFICATE"))
            .transpose()?;
        if ca_pem.is_none() && identity.is_none() {
            return Ok(None);
        }
        Ok(Some(TlsMaterial { ca_pem, identity }))
    }

    /// The client identity as one PEM buffer (certificate then key), the form reqwest takes.
    pub fn identity_pem(&self) -> Option<Vec<u8>> {
        self.identity.as_ref().map(|id| {
            let mut pem = id.cert_pem.clone();
            if !pem.ends_with(b"\n") {
                pem.push(b'\n');
            }
            pem.extend_from_slice(&id.key_pem);
            pem
        })
    }
}

impl TlsMaterial {
    /// Like [`from_files`](Self::from_files), kept current: the files are read again when
    /// they change, checked at most once per `min_interval`. A new set is taken only whole:
    /// each file PEM of its kind, and the key the certificate's (so a certificate renewed
    /// before its key is written keeps the old pair until both are there).
    pub fn reloading(
        cacert: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        min_interval: Duration,
    ) -> Result<Option<Reloading<TlsMaterial>>, String> {
        // The pairing rules and the first read's messages are from_files'.
        if Self::from_files(cacert, cert, key)?.is_none() {
            return Ok(None);
        }
        let has_ca = cacert.is_some();
        let paths: Vec<PathBuf> = [cacert, cert, key]
            .into_iter()
            .flatten()
            .map(Path::to_path_buf)
            .collect();
        let names = paths.clone();
        let load = move |contents: &[Vec<u8>]| {
            let (ca, identity) = if has_ca {
                (contents.first(), contents.get(1..))
            } else {
                (None, contents.get(0..))
            };
            let ca_pem = ca
                .map(|ca| check_pem(ca, &names[0], "--cacert", "CERTIFICATE"))
                .transpose()?;
            let identity = match identity {
                Some([cert, key]) => {
                    let at = usize::from(has_ca);
                    let cert_pem = check_pem(cert, &names[at], "--cert", "CERTIFICATE")?;
                    let key_pem = check_pem(key, &names[at + 1], "--key", "PRIVATE KEY")?;
                    certified_key(&cert_pem, &key_pem)
                        .map_err(|err| format!("--cert/--key: {err}"))?;
                    Some(ClientIdentity { cert_pem, key_pem })
                }
                _ => None,
            };
            Ok(TlsMaterial { ca_pem, identity })
        };
        Reloading::new("etcd_client_tls", paths, min_interval, load).map(Some)
    }
}

/// The certificate chain and its key, checked to belong together.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("not a usable certificate: {err}"))?;
    if chain.is_empty() {
        return Err("no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|err| format!("not a usable private key: {err}"))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|err| format!("not a usable private key: {err}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key cannot tell its public half; the handshake will tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(_) => Err("the private key is not the certificate's".into()),
    }
}

/// The one crypto provider the workspace builds rustls with (reqwest's too).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, flag: &str, kind: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|err| format!("{flag} {}: cannot read: {err}", path.display()))?;
    check_pem(&bytes, path, flag, kind)
}

fn check_pem(bytes: &[u8], path: &Path, flag: &str, kind: &str) -> Result<Vec<u8>, String> {
    let text = String::from_utf8_lossy(bytes);
    if !text.contains("-----BEGIN") || !text.contains(kind) {
        return Err(format!(
            "{flag} {}: not a PEM file holding a {kind}",
            path.display()
        ));
    }
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn no_flags_means_no_tls() {
        assert!(TlsMaterial::from_files(None, None, None).unwrap().is_none());
    }

    #[test]
    fn cert_without_key_is_refused() {
        let dir = tempdir();
        let dir = dir.path();
        let cert = write(dir, "c.pem", CERT);
        let err = TlsMaterial::from_files(None, Some(&cert), None).unwrap_err();
        assert_eq!(err, "--cert needs --key");
    }

    #[test]
    fn reads_all_three_and_joins_the_identity() {
        let dir = tempdir();
        let dir = dir.path();
        let ca = write(dir, "ca.pem", CERT);
        let cert = write(dir, "c.pem", CERT);
        let key = write(dir, "k.pem", KEY);
        let tls = TlsMaterial::from_files(Some(&ca), Some(&cert), Some(&key))
            .unwrap()
            .unwrap();
        let identity = String::from_utf8(tls.identity_pem().unwrap()).unwrap();
        assert!(identity.starts_with("-----BEGIN CERTIFICATE"));
        assert!(identity.contains("PRIVATE KEY"));
        assert!(!format!("{tls:?}").contains("MIIE"), "Debug leaks the key");
    }

    #[test]
    fn a_file_that_is_not_pem_is_named() {
        let dir = tempdir();
        let dir = dir.path();
        let ca = write(dir, "ca.pem", "hello");
        let err = TlsMaterial::from_files(Some(&ca), None, None).unwrap_err();
        assert!(
            err.starts_with("--cacert ") && err.contains("not a PEM"),
            "{err}"
        );
        let missing = dir.join("missing.pem");
        let err = TlsMaterial::from_files(Some(&missing), None, None).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }

    /// A self-signed certificate and its key, as PEM.
    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_reloaded_pair_is_taken_only_when_the_key_is_the_certificates() {
        let dir = tempdir();
        let dir = dir.path();
        let (cert_a, key_a) = pair("a");
        let (cert_b, key_b) = pair("b");
        let ca = write(dir, "ca.pem", &cert_a);
        let cert = write(dir, "c.pem", &cert_a);
        let key = write(dir, "k.pem", &key_b);
        let err =
            TlsMaterial::reloading(Some(&ca), Some(&cert), Some(&key), Duration::ZERO).unwrap_err();
        assert!(err.contains("not the certificate's"), "{err}");

        write(dir, "k.pem", &key_a);
        let tls = TlsMaterial::reloading(Some(&ca), Some(&cert), Some(&key), Duration::ZERO)
            .unwrap()
            .unwrap();
        let first = tls.current();
        // The certificate renewed before its key: the old pair stays.
        write(dir, "c.pem", &cert_b);
        let now = tls.current();
        assert_eq!(now.identity.as_ref().unwrap().cert_pem, cert_a.as_bytes());
        assert!(Arc::ptr_eq(&first, &now));
        // Then the key: the new pair is taken, the CA kept.
        write(dir, "k.pem", &key_b);
        let now = tls.current();
        assert_eq!(now.identity.as_ref().unwrap().cert_pem, cert_b.as_bytes());
        assert_eq!(now.ca_pem.as_deref(), Some(cert_a.as_bytes()));
    }

    #[test]
    fn reloading_without_a_ca_or_without_files() {
        let dir = tempdir();
        let dir = dir.path();
        let (cert_a, key_a) = pair("a");
        let cert = write(dir, "c.pem", &cert_a);
        let key = write(dir, "k.pem", &key_a);
        let tls = TlsMaterial::reloading(None, Some(&cert), Some(&key), Duration::ZERO)
            .unwrap()
            .unwrap();
        assert!(tls.current().ca_pem.is_none());
        assert!(tls.current().identity.is_some());
        assert!(
            TlsMaterial::reloading(None, None, None, Duration::ZERO)
                .unwrap()
                .is_none()
        );
        let err = TlsMaterial::reloading(None, Some(&cert), None, Duration::ZERO).unwrap_err();
        assert_eq!(err, "--cert needs --key");
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
