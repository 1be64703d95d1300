//! How requests reach another node. [`Transport`] is deliberately small (one request → one
//! response) so that transports other than HTTP can be added; [`HttpTransport`] is reqwest over
//! HTTP/1.1 or HTTPS (rustls, system roots plus an optional CA bundle, re-read when its file
//! changes); a failed request is described down to its cause (a refused certificate says so).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::ca_bundle::{self, FileStamp};
use super::tls_error;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Connection refused, reset, DNS, TLS handshake, timeout: worth retrying.
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("invalid transport configuration: {0}")]
    Config(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

/// One request, relative to the transport's base URL.
#[derive(Debug, Clone)]
pub struct TransportRequest {
    pub method: Method,
    /// Path and query, starting with `/`.
    pub path: String,
    pub bearer: Option<String>,
    /// `(content type, body)`.
    pub body: Option<(&'static str, Bytes)>,
    pub via: String,
}

#[derive(Debug, Clone)]
pub struct TransportResponse {
    pub status: u16,
    pub content_type: String,
    pub retry_after_secs: Option<u64>,
    pub body: Body,
}

/// A response body in the chunks the connection delivered: a binary decoder reads entries from
/// them in place, so that a large body is not first copied into one buffer; [`Body::to_bytes`]
/// joins them for a JSON parser (without a copy when there is one chunk).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body(Vec<Bytes>);

impl Body {
    pub fn from_chunks(chunks: Vec<Bytes>) -> Self {
        Body(chunks)
    }

    pub fn to_bytes(&self) -> Bytes {
        match self.0.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                for chunk in many {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        }
    }

    pub fn into_chunks(self) -> Vec<Bytes> {
        self.0
    }
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// Base URL, for messages.
    fn base_url(&self) -> &str;
    async fn send(&self, request: TransportRequest) -> Result<TransportResponse, TransportError>;
    /// A long-lived response (the SSE change feed): its status and the body as it arrives.
    async fn stream(&self, request: TransportRequest) -> Result<ByteStream, TransportError>;
}

pub struct ByteStream {
    pub status: u16,
    pub body: BoxStream<'static, Result<Bytes, TransportError>>,
}

pub struct HttpTransport {
    base: String,
    timeout: Duration,
    /// Swapped for new ones when the CA bundle changes.
    clients: RwLock<Arc<Clients>>,
    ca: Option<CaWatch>,
}

/// One reqwest client with a total timeout, one without: change feeds stay open for hours.
struct Clients {
    client: reqwest::Client,
    stream_client: reqwest::Client,
}

/// The CA bundle's file, and its stamp when last read and checked.
struct CaWatch {
    path: PathBuf,
    seen: Mutex<(Option<FileStamp>, Instant)>,
}

/// How often a request may look at the CA bundle's file (one `stat`) for a change.
const CA_RECHECK: Duration = Duration::from_secs(1);

impl HttpTransport {
    pub fn new(
        base_url: &str,
        ca_file: Option<&Path>,
        timeout: Duration,
    ) -> Result<Self, TransportError> {
        let (certificates, ca) = match ca_file {
            Some(path) => {
                let stamp = FileStamp::of(path);
                let certificates =
                    ca_bundle::read(path).map_err(|e| TransportError::Config(e.to_string()))?;
                let watch = CaWatch {
                    path: path.to_path_buf(),
                    seen: Mutex::new((stamp, Instant::now())),
                };
                (certificates, Some(watch))
            }
            None => (Vec::new(), None),
        };
        Ok(HttpTransport {
            base: base_url.trim_end_matches('/').to_string(),
            timeout,
            clients: RwLock::new(Arc::new(Clients::build(timeout, &certificates)?)),
            ca,
        })
    }

    /// The clients to use now: rebuilt first when the CA bundle changed since it was read (new
    /// connections then verify against the new bundle; a bundle that cannot be read or parsed
    /// leaves the previous clients in place).
    fn clients(&self) -> Arc<Clients> {
        if let Some(ca) = &self.ca {
            let mut seen = ca.seen.lock().expect("CA watch");
            if seen.1.elapsed() >= CA_RECHECK {
                seen.1 = Instant::now();
                let stamp = FileStamp::of(&ca.path);
                if stamp != seen.0 {
                    seen.0 = stamp;
                    let rebuilt = ca_bundle::read(&ca.path)
                        .map_err(|e| TransportError::Config(e.to_string()))
                        .and_then(|certificates| Clients::build(self.timeout, &certificates));
                    match rebuilt {
                        Ok(clients) => {
                            tracing::info!(upstream = %self.base, path = %ca.path.display(), "CA bundle reloaded");
                            *self.clients.write().expect("clients") = Arc::new(clients);
                        }
                        Err(e) => tracing::warn!(
                            upstream = %self.base, error = %e,
                            "CA bundle changed but cannot be used; keeping the previous one"
                        ),
                    }
                }
            }
        }
        self.clients.read().expect("clients").clone()
    }
}

impl Clients {
    fn build(
        timeout: Duration,
        certificates: &[reqwest::Certificate],
    ) -> Result<Self, TransportError> {
        let build = |total: Option<Duration>| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .pool_idle_timeout(Duration::from_secs(60))
                .user_agent(concat!("syncrelay-node/", env!("CARGO_PKG_VERSION")));
            if let Some(t) = total {
                builder = builder.timeout(t);
            }
            for cert in certificates {
                builder = builder.add_root_certificate(cert.clone());
            }
            builder
                .build()
                .map_err(|e| TransportError::Config(e.to_string()))
        };
        Ok(Clients {
            client: build(Some(timeout))?,
            stream_client: build(None)?,
        })
    }
}

/// A request error in words ([`tls_error::explain`]).
fn unreachable(url: &str, e: &reqwest::Error) -> TransportError {
    TransportError::Unreachable {
        url: url.to_string(),
        detail: tls_error::explain(e, url),
    }
}

#[async_trait]
impl Transport for HttpTransport {
    fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(&self, request: TransportRequest) -> Result<TransportResponse, TransportError> {
        let url = format!("{}{}", self.base, request.path);
        let clients = self.clients();
        let response = self
            .prepare(&clients.client, &url, request)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("content-type").unwrap_or_default();
        let retry_after_secs = header("retry-after").and_then(|v| v.trim().parse().ok());
        let mut chunks = Vec::new();
        let mut response = response;
        while let Some(chunk) = response.chunk().await.map_err(|e| unreachable(&url, &e))? {
            chunks.push(chunk);
        }
        let body = Body::from_chunks(chunks);
        Ok(TransportResponse {
            status,
            content_type,
            retry_after_secs,
            body,
        })
    }

    async fn stream(&self, request: TransportRequest) -> Result<ByteStream, TransportError> {
        let url = format!("{}{}", self.base, request.path);
        let clients = self.clients();
        let response = self
            .prepare(&clients.stream_client, &url, request)
            .header("accept", "text/event-stream")
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let status = response.status().as_u16();
        let body = response
            .bytes_stream()
            .map_err(move |e| unreachable(&url, &e))
            .boxed();
        Ok(ByteStream { status, body })
    }
}

impl HttpTransport {
    fn prepare(
        &self,
        client: &reqwest::Client,
        url: &str,
        request: TransportRequest,
    ) -> reqwest::RequestBuilder {
        let mut builder = match request.method {
            Method::Get => client.get(url),
            Method::Post => client.post(url),
        };
        builder = builder.header(super::VIA_HEADER, &request.via);
        if let Some(token) = &request.bearer {
            builder = builder.bearer_auth(token);
        }
        if let Some((content_type, body)) = request.body {
            builder = builder.header("content-type", content_type).body(body);
        }
        builder
    }
}

/// Incremental parser of an SSE body (LF framing, spec §4.17): complete `(event, data)` messages
/// out of the chunks fed so far; comments and incomplete messages are kept back or dropped.
#[derive(Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<(String, String)> {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        let mut out = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let message: String = self.buffer.drain(..end + 2).collect();
            let mut event = String::from("message");
            let mut data = Vec::new();
            for line in message.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.strip_prefix(' ').unwrap_or(v).to_string());
                }
            }
            if !data.is_empty() {
                out.push((event, data.join("\n")));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::SseParser;

    #[test]
    fn sse_messages_across_chunks() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: hello\ndata: {\"a\":1}").is_empty());
        let got = p.feed(b"\n\n: heartbeat 1\n\nevent: change\ndata: x\ndata: y\n\nevent: cha");
        assert_eq!(
            got,
            vec![
                ("hello".to_string(), "{\"a\":1}".to_string()),
                ("change".to_string(), "x\ny".to_string())
            ]
        );
        assert_eq!(
            p.feed(b"nge\ndata: z\n\n"),
            vec![("change".into(), "z".into())]
        );
    }
}
