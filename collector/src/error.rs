//! Why a scrape or a push failed, in one line an operator can act on.

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("scrape {url}: etcd unreachable: {detail}")]
    EtcdUnreachable { url: String, detail: String },
    #[error("scrape {url}: TLS failure: {detail}")]
    EtcdTls { url: String, detail: String },
    #[error("scrape {url}: HTTP {status}: {body}")]
    EtcdStatus {
        url: String,
        status: u16,
        body: String,
    },
    #[error("scrape {url}: not an exposition page: {detail}")]
    NotExposition { url: String, detail: String },
    #[error("push {url}: Pushgateway unreachable: {detail}")]
    PushgatewayUnreachable { url: String, detail: String },
    #[error("push {url}: Pushgateway refused with HTTP {status}: {body}")]
    PushgatewayRefused {
        url: String,
        status: u16,
        body: String,
    },
}
