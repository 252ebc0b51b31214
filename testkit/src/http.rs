//! A tiny blocking HTTP/1.0 client for readiness checks and tests.
//!
//! HTTP/1.0 with `Connection: close` means the server closes the connection after the
//! body and never uses chunked encoding, so "read to EOF" is the whole parser. Plain
//! `http://` only; TLS endpoints are checked with the real clients (etcdctl, the services).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Connect and read/write timeout for one request: loopback servers answer in milliseconds,
/// so a longer wait means the server is stuck, and callers poll anyway.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// `GET url` → `(status, body)`. Any status is `Ok`; only transport failures are errors.
pub fn http_get(url: &str) -> Result<(u16, String)> {
    http_request("GET", url, None, &[])
}

/// `POST url` with a body (may be empty).
pub fn http_post(url: &str, content_type: &str, body: &[u8]) -> Result<(u16, String)> {
    http_request("POST", url, Some(body), &[("Content-Type", content_type)])
}

/// `PUT url` with a body, e.g. a Pushgateway push of text-format metrics.
pub fn http_put(url: &str, content_type: &str, body: &[u8]) -> Result<(u16, String)> {
    http_request("PUT", url, Some(body), &[("Content-Type", content_type)])
}

/// One request with any method and extra headers.
pub fn http_request(
    method: &str,
    url: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> Result<(u16, String)> {
    let (host_port, path) = split_url(url)?;
    let addr = host_port
        .to_socket_addrs()
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .with_context(|| format!("connecting to {url}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;

    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host_port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .and_then(|()| stream.write_all(body.unwrap_or_default()))
        .with_context(|| format!("sending {method} {url}"))?;

    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the response to {method} {url}"))?;
    parse_response(&raw).with_context(|| format!("parsing the response to {method} {url}"))
}

/// `http://host:port/path?q` → (`host:port`, `/path?q`).
fn split_url(url: &str) -> Result<(&str, &str)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs are supported by this helper, got {url:?}");
    };
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

fn parse_response(raw: &[u8]) -> Result<(u16, String)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let body = String::from_utf8_lossy(&raw[head_end + 4..]).into_owned();
    Ok((status, body))
}

/// Percent-encodes a query parameter value (for PromQL in `/api/v1/query?query=`).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9/a?b=c").unwrap(),
            ("127.0.0.1:9", "/a?b=c")
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/"));
        assert!(split_url("https://h:1/").is_err());
    }

    #[test]
    fn parses_responses() {
        let (s, b) = parse_response(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\nhello").unwrap();
        assert_eq!((s, b.as_str()), (200, "hello"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn encodes() {
        assert_eq!(url_encode("up{job=\"x\"}"), "up%7Bjob%3D%22x%22%7D");
    }
}
