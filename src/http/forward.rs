//! Queries forwarded to the other instances of the group: one hop, with a timeout. A
//! forwarded request carries [`HEADER_FORWARDED`], and is answered from the receiving
//! instance's own partitions only, so a query never travels further.

use std::time::Duration;

use axum::http::{header, HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// Header on a forwarded request: answer from local partitions only.
pub const HEADER_FORWARDED: &str = "x-mallquest-forwarded";

/// Header: the partitions an answer covers (`0,3,4`): those its instance holds.
pub const HEADER_PARTITIONS: &str = "x-mallquest-partitions";

/// What another instance answered.
#[derive(Debug)]
pub(super) struct Answer {
    /// Its status.
    pub(super) status: StatusCode,
    /// Its headers.
    pub(super) headers: HeaderMap,
    /// Its body.
    pub(super) body: Bytes,
}

impl Answer {
    /// The partitions the answer says it covers.
    pub(super) fn partitions(&self) -> Vec<i32> {
        self.headers
            .get(HEADER_PARTITIONS)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
}

/// Why a forwarded query got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    /// No answer in time.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout {
        /// The instance.
        addr: String,
        /// The time it had.
        timeout: Duration,
    },
    /// No connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The instance.
        addr: String,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("{addr}: {source}")]
    Http {
        /// The instance.
        addr: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The request could not be built (a path that is not a URI).
    #[error("{addr}: {source}")]
    Request {
        /// The instance.
        addr: String,
        /// What the builder said.
        #[source]
        source: axum::http::Error,
    },
}

/// `GET path` on the instance at `addr` (`host:port`), within `timeout`.
pub(super) async fn get(
    addr: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Answer, ForwardError> {
    tokio::time::timeout(timeout, get_inner(addr, path, token))
        .await
        .map_err(|_| ForwardError::Timeout {
            addr: addr.to_owned(),
            timeout,
        })?
}

async fn get_inner(addr: &str, path: &str, token: Option<&str>) -> Result<Answer, ForwardError> {
    let http = |source| ForwardError::Http {
        addr: addr.to_owned(),
        source,
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ForwardError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    tokio::spawn(conn);
    let mut req = Request::get(path)
        .header(header::HOST, addr)
        .header(HEADER_FORWARDED, "1");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|source| ForwardError::Request {
            addr: addr.to_owned(),
            source,
        })?;
    let resp = sender.send_request(req).await.map_err(http)?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(http)?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
