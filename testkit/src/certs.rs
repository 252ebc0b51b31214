//! Test PKI: a CA, an etcd server certificate and a client certificate, written as PEM files.
//!
//! The server certificate carries both serverAuth and clientAuth: with `--client-cert-auth`
//! etcd's own gRPC gateway dials the server presenting the server certificate as a client
//! certificate, and rejects itself otherwise.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of a CA with one server and one client certificate it signed.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// Valid for `127.0.0.1` and `localhost`.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// CN `root`, clientAuth only.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// A CA that did not sign anything the servers trust, with a client certificate of its own,
/// for "wrong CA" / "unknown client" tests.
#[derive(Debug, Clone)]
pub struct UnrelatedCa {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Writes `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`, `client.pem`,
/// `client-key.pem` into `dir` (created if missing).
pub fn generate_tls(dir: &Path) -> Result<TlsFiles> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key, issuer) = new_ca("etcd-dr test CA")?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    server
        .distinguished_name
        .push(DnType::CommonName, "etcd-server");
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    server.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let server_pem = server.signed_by(&server_key, &issuer)?.pem();

    let (client_pem, client_key) = new_client(&issuer, "root")?;

    let files = TlsFiles {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    write(&files.ca_cert, &ca_pem)?;
    write(&files.ca_key, &ca_key.serialize_pem())?;
    write(&files.server_cert, &server_pem)?;
    write(&files.server_key, &server_key.serialize_pem())?;
    write(&files.client_cert, &client_pem)?;
    write(&files.client_key, &client_key.serialize_pem())?;
    Ok(files)
}

/// Writes `<prefix>-ca.pem`, `<prefix>-ca-key.pem`, `<prefix>-client.pem` and
/// `<prefix>-client-key.pem` into `dir`: a second CA unrelated to any other.
pub fn generate_unrelated_ca(dir: &Path, prefix: &str) -> Result<UnrelatedCa> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (ca_pem, ca_key, issuer) = new_ca(&format!("{prefix} unrelated CA"))?;
    let (client_pem, client_key) = new_client(&issuer, "stranger")?;
    let files = UnrelatedCa {
        ca_cert: dir.join(format!("{prefix}-ca.pem")),
        ca_key: dir.join(format!("{prefix}-ca-key.pem")),
        client_cert: dir.join(format!("{prefix}-client.pem")),
        client_key: dir.join(format!("{prefix}-client-key.pem")),
    };
    write(&files.ca_cert, &ca_pem)?;
    write(&files.ca_key, &ca_key.serialize_pem())?;
    write(&files.client_cert, &client_pem)?;
    write(&files.client_key, &client_key.serialize_pem())?;
    Ok(files)
}

fn new_ca(cn: &str) -> Result<(String, KeyPair, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let pem = params.self_signed(&key)?.pem();
    // The issuer needs its own copy of the key; the caller writes the original out.
    let issuer_key = KeyPair::from_pem(&key.serialize_pem())?;
    Ok((pem, key, Issuer::new(params, issuer_key)))
}

fn new_client(issuer: &Issuer<'_, KeyPair>, cn: &str) -> Result<(String, KeyPair)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let pem = params.signed_by(&key, issuer)?.pem();
    Ok((pem, key))
}

fn write(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
