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

/// What etcd answers a write (put, txn, lease grant, lock) with while its backend is at
/// its quota or the NOSPACE alarm is raised: `etcdserver: mvcc: database space exceeded`.
const NOSPACE_MESSAGE: &str = "database space exceeded";

/// What etcd answers a compaction to a revision that is already compacted.
const COMPACTED_MESSAGE: &str = "required revision has been compacted";

/// True when etcd refused the call because its database is full (NOSPACE). The message
/// decides, not the code: etcd sends `ResourceExhausted`, a code it also uses for "too many
/// requests" (and gRPC for an oversized message), and the lock service may pass the error
/// on with another code.
pub fn is_nospace(err: &etcd_client::Error) -> bool {
    status_message(err).is_some_and(is_nospace_message)
}

/// True when a compaction asked for a revision that is already compacted.
pub fn is_compacted(err: &etcd_client::Error) -> bool {
    status_message(err).is_some_and(|message| message.contains(COMPACTED_MESSAGE))
}

fn status_message(err: &etcd_client::Error) -> Option<&str> {
    match err {
        etcd_client::Error::GRpcStatus(status) => Some(status.message()),
        _ => None,
    }
}

fn is_nospace_message(message: &str) -> bool {
    message.contains(NOSPACE_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nospace_is_told_by_etcds_message() {
        // As etcd 3.4 to 3.6 send it (rpctypes.ErrGRPCNoSpace); the real answer is
        // checked against etcd in the remediator's lock test.
        assert!(is_nospace_message(
            "etcdserver: mvcc: database space exceeded"
        ));
        // The other ResourceExhausted answers are not NOSPACE.
        assert!(!is_nospace_message("etcdserver: too many requests"));
        assert!(!is_nospace_message(
            "grpc: received message larger than max (2200000 vs. 2097152)"
        ));
    }

    #[test]
    fn errors_that_are_not_grpc_answers_are_neither() {
        let err =
            etcd_client::Error::InvalidArgs("etcdserver: mvcc: database space exceeded".into());
        assert!(
            !is_nospace(&err),
            "only etcd's answer counts, not text that looks like it"
        );
        assert!(!is_compacted(&etcd_client::Error::Internal(
            COMPACTED_MESSAGE.into()
        )));
    }
}
