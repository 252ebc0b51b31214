//! How the remediator talks to etcd: where it is ([`EtcdAccess`]), what can go wrong
//! ([`EtcdError`]), and the deadline every call gets ([`bounded`], [`bounded_long`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dr_common::reload::Reloading;
use dr_common::tls::TlsMaterial;
use etcd_client::Client;

/// Read (never written) only for the revision in the response header.
const REVISION_PROBE_KEY: &str = "/etcd-dr/revision-probe";

/// How to reach etcd: the configured endpoints and the TLS files, shared by every action.
#[derive(Clone, Debug)]
pub struct EtcdAccess {
    pub endpoints: Vec<String>,
    /// Read again when the files change: every client is built with what they hold then.
    pub tls: Option<Arc<Reloading<TlsMaterial>>>,
    pub timeout: Duration,
    /// Assumed for members that do not report their quota (etcd before 3.6).
    pub default_quota_bytes: u64,
}

/// A failed exchange with etcd. The text is what the audit log and the HTTP answers show;
/// it names the cause, so no variant also returns it as `source()` (it would print twice).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No answer within the deadline. `after` is shown for the long calls, whose deadline
    /// is worth reading; an empty `what` is named by the endpoint around it.
    #[error("{}", timed_out(.what, *.after))]
    Timeout {
        what: String,
        after: Option<Duration>,
    },
    /// A member did not answer Status within the deadline while looking for a live one.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
    /// etcd, or the way to it, refused the call; `what` names the call and the member.
    #[error("{what}: {error}")]
    Request {
        what: String,
        error: etcd_client::Error,
    },
    /// etcd refuses writes because its database is full (NOSPACE), for every client alike.
    #[error("{what}: {error}")]
    Nospace {
        what: String,
        error: etcd_client::Error,
    },
    /// One endpoint's failure, where each endpoint is tried on its own.
    #[error("{endpoint}: {error}")]
    At {
        endpoint: String,
        error: Box<EtcdError>,
    },
    /// No configured endpoint's member answers.
    #[error("no etcd endpoint answers: {}", joined(.0))]
    NoEndpoint(Vec<EtcdError>),
    /// The call answered, but not with what it must.
    #[error("{0}")]
    Unexpected(&'static str),
}

fn timed_out(what: &str, after: Option<Duration>) -> String {
    match (what.is_empty(), after) {
        (true, Some(after)) => format!("timed out after {after:?}"),
        (false, Some(after)) => format!("{what} timed out after {after:?}"),
        (_, None) => format!("{what} timed out"),
    }
}

/// `a; b; c`: several endpoints' failures in one line.
pub fn joined(errors: &[EtcdError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl EtcdError {
    /// `what` failed with `err`; NOSPACE is told apart here, where etcd's answer is.
    pub fn request(what: impl Into<String>, err: etcd_client::Error) -> Self {
        let what = what.into();
        if dr_common::etcd::is_nospace(&err) {
            EtcdError::Nospace { what, error: err }
        } else {
            EtcdError::Request { what, error: err }
        }
    }

    /// True when etcd refused the call for lack of space.
    pub fn is_nospace(&self) -> bool {
        match self {
            EtcdError::Nospace { .. } => true,
            EtcdError::At { error, .. } => error.is_nospace(),
            _ => false,
        }
    }

    /// This failure, as one of several endpoints' answers.
    pub fn at(self, endpoint: &str) -> Self {
        EtcdError::At {
            endpoint: endpoint.to_owned(),
            error: Box::new(self),
        }
    }
}

/// What a bounded call's own failure becomes: an etcd answer is named by the call, a
/// failure of a group of calls already names itself.
pub trait IntoEtcdError {
    fn into_etcd_error(self, what: String) -> EtcdError;
}

impl IntoEtcdError for etcd_client::Error {
    fn into_etcd_error(self, what: String) -> EtcdError {
        EtcdError::request(what, self)
    }
}

impl IntoEtcdError for EtcdError {
    fn into_etcd_error(self, _what: String) -> EtcdError {
        self
    }
}

/// `call` bounded by `timeout`: "`what` timed out" when it does not answer in time,
/// "`what`: `err`" when etcd refuses it.
pub async fn bounded<T, E: IntoEtcdError>(
    what: impl Into<String>,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, EtcdError> {
    bound(what.into(), timeout, None, call).await
}

/// Like [`bounded`], for calls whose deadline is worth reading in the message
/// ("`what` timed out after 5m0s").
pub async fn bounded_long<T, E: IntoEtcdError>(
    what: impl Into<String>,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, EtcdError> {
    bound(what.into(), timeout, Some(timeout), call).await
}

async fn bound<T, E: IntoEtcdError>(
    what: String,
    timeout: Duration,
    after: Option<Duration>,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, EtcdError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(err.into_etcd_error(what)),
        Err(_) => Err(EtcdError::Timeout { what, after }),
    }
}

impl EtcdAccess {
    /// A client on the first configured endpoint whose member answers Status. A client
    /// over all endpoints keeps sending some calls to a dead member, and a lost member must
    /// not look like a lost cluster.
    pub async fn client(&self) -> Result<Client, EtcdError> {
        self.live_client(self.timeout).await
    }

    /// Like [`client`](Self::client), with its own per-call deadline for long calls.
    pub async fn live_client(&self, timeout: Duration) -> Result<Client, EtcdError> {
        let mut errors = Vec::new();
        for endpoint in &self.endpoints {
            let attempt = async {
                let mut client = self
                    .client_for(std::slice::from_ref(endpoint), timeout)
                    .await?;
                client
                    .status()
                    .await
                    .map_err(|err| EtcdError::request(endpoint.as_str(), err))?;
                Ok::<_, EtcdError>(client)
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(err)) => errors.push(err),
                Err(_) => errors.push(EtcdError::NoAnswer(self.timeout).at(endpoint)),
            }
        }
        Err(EtcdError::NoEndpoint(errors))
    }

    /// A client for the given endpoints with its own per-call deadline.
    pub async fn client_for(
        &self,
        endpoints: &[String],
        timeout: Duration,
    ) -> Result<Client, EtcdError> {
        let tls = self.tls.as_ref().map(|tls| tls.current());
        dr_common::etcd::connect(endpoints, tls.as_deref(), self.timeout, timeout)
            .await
            .map_err(|err| {
                EtcdError::request(format!("connecting to {}", endpoints.join(",")), err)
            })
    }
}

/// The cluster's revision now, from the header of a read that costs etcd nothing.
pub async fn current_revision(client: &mut Client, timeout: Duration) -> Result<i64, EtcdError> {
    let response = bounded(
        "reading the revision",
        timeout,
        client.get(REVISION_PROBE_KEY, None),
    )
    .await?;
    Ok(response.header().map(|h| h.revision()).unwrap_or_default())
}

/// The revision of the member `client` talks to, read serializably: it needs no quorum,
/// so a snapshot (named by it) can still be taken from the last member that answers.
pub async fn local_revision(client: &mut Client, timeout: Duration) -> Result<i64, EtcdError> {
    let options = etcd_client::GetOptions::new().with_serializable();
    let response = bounded(
        "reading the revision",
        timeout,
        client.get(REVISION_PROBE_KEY, Some(options)),
    )
    .await?;
    Ok(response.header().map(|h| h.revision()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_the_audit_log_has_always_shown_them() {
        let quiet = EtcdError::Timeout {
            what: "member list".into(),
            after: None,
        };
        assert_eq!(quiet.to_string(), "member list timed out");
        let long = EtcdError::Timeout {
            what: "defrag of http://a".into(),
            after: Some(Duration::from_secs(300)),
        };
        assert_eq!(long.to_string(), "defrag of http://a timed out after 300s");
        let sentinel = EtcdError::Timeout {
            what: String::new(),
            after: Some(Duration::from_secs(10)),
        };
        assert_eq!(
            sentinel.at("http://b").to_string(),
            "http://b: timed out after 10s"
        );
        let none = EtcdError::NoEndpoint(vec![
            EtcdError::NoAnswer(Duration::from_secs(5)).at("http://a"),
            EtcdError::Unexpected("sentinel missing after write").at("http://b"),
        ]);
        assert_eq!(
            none.to_string(),
            "no etcd endpoint answers: http://a: no answer within 5s; \
             http://b: sentinel missing after write"
        );
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_a_timeout_naming_it() {
        let never = std::future::pending::<Result<(), etcd_client::Error>>();
        let err = bounded("alarm list", Duration::from_millis(10), never)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EtcdError::Timeout { after: None, .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "alarm list timed out");
        let refused = async { Err::<(), _>(etcd_client::Error::InvalidArgs("bad".into())) };
        let err = bounded("alarm list", Duration::from_secs(1), refused)
            .await
            .unwrap_err();
        assert!(!err.is_nospace());
        assert_eq!(err.to_string(), "alarm list: invalid arguments: bad");
    }
}
