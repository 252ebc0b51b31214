//! TLS files given as flags (`--cacert`, `--cert`, `--key`), read and checked once at
//! start-up so a wrong path fails the process with a message, not the first request.

use std::path::Path;

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

fn read_pem(path: &Path, flag: &str, kind: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|err| format!("{flag} {}: cannot read: {err}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN") || !text.contains(kind) {
        return Err(format!(
            "{flag} {}: not a PEM file holding a {kind}",
            path.display()
        ));
    }
    Ok(bytes)
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

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }
}
