//! An etcd client built from endpoint URLs and the TLS flags.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::tls::TlsMaterial;

/// Connects to the given endpoints (`https://` ones with `tls`). `request_timeout` bounds
/// each call; long calls (defrag, snapshot) set their own.
pub async fn connect(
    endpoints: &[String],
    tls: Option<&TlsMaterial>,
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<Client, etcd_client::Error> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(connect_timeout)
        .with_timeout(request_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let Some(tls) = tls {
        let mut tls_options = TlsOptions::new();
        if let Some(ca) = &tls.ca_pem {
            tls_options = tls_options.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some(id) = &tls.identity {
            tls_options = tls_options.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
        }
        options = options.with_tls(tls_options);
    }
    Client::connect(endpoints, Some(options)).await
}
