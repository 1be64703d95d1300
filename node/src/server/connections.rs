//! Connection admission: at most `maxConnections` open connections in all and
//! `maxConnectionsPerIp` per client address (IPv6 per /56). A connection over either limit gets a
//! complete `503 {error}` answer and is closed at once, so a flood of idle or half-sent
//! connections cannot take the sockets, tasks and memory that valid clients need. Slow clients are
//! bounded by the HTTP layer's header timeout and the body deadline ([`super::body`]); a client
//! that sends nothing at all by [`FirstByteDeadline`], because the server's protocol sniffing reads
//! the first bytes before that header timeout starts.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// Counts open connections, in all and per address.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    metrics: Arc<Metrics>,
}

/// Why a connection was refused (the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Total => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
        }
    }
}

/// An admitted connection's place; released when the connection is dropped.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().expect("connection counts");
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.key);
            }
        }
        self.limits.metrics.open_connections.set(open.0 as i64);
    }
}

/// Addresses that count as one client: an IPv4 address, an IPv6 /56 (what one subscriber gets).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut s = v6.segments();
            s[3] &= 0xff00;
            s[4..].fill(0);
            IpAddr::from(s)
        }
    }
}

impl ConnectionLimits {
    pub fn new(max_total: u32, max_per_ip: u32, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total: max_total.max(1) as usize,
            max_per_ip: max_per_ip.max(1) as usize,
            open: Mutex::new((0, HashMap::new())),
            metrics,
        })
    }

    /// Takes a place for a connection from `ip`, or says which limit it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = client_key(ip);
        let mut open = self.open.lock().expect("connection counts");
        if open.0 >= self.max_total {
            return Err(Refusal::Total);
        }
        let per_ip = open.1.entry(key).or_insert(0);
        if *per_ip >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *per_ip += 1;
        open.0 += 1;
        self.metrics.open_connections.set(open.0 as i64);
        Ok(Slot {
            limits: self.clone(),
            key,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("connection counts").0
    }
}

/// The answer a refused connection gets before it is closed.
fn refusal_response(refusal: Refusal) -> Vec<u8> {
    let body = match refusal {
        Refusal::Total => {
            r#"{"error":"Too many open connections to this server, try again shortly"}"#
        }
        Refusal::PerIp => {
            r#"{"error":"Too many open connections from your address, try again shortly"}"#
        }
    };
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The `AsyncWrite` methods of a wrapper that writes straight through to its `inner` stream
/// (the wrappers here only act on reads, or on being dropped).
macro_rules! write_through_inner {
    () => {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.inner.is_write_vectored()
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    };
}

/// Accepts a TCP connection only when [`ConnectionLimits`] has room; used in front of the plain
/// HTTP server and under the TLS acceptor alike.
#[derive(Clone)]
pub struct LimitedAcceptor {
    pub limits: Arc<ConnectionLimits>,
}

impl<S: Send + 'static> Accept<TcpStream, S> for LimitedAcceptor {
    type Stream = LimitedStream;
    type Service = S;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<(LimitedStream, S)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let limits = self.limits.clone();
        Box::pin(async move {
            let ip = stream.peer_addr()?.ip();
            match limits.admit(ip) {
                Ok(slot) => {
                    let _ = stream.set_nodelay(true);
                    Ok((
                        LimitedStream {
                            inner: stream,
                            _slot: slot,
                        },
                        service,
                    ))
                }
                Err(refusal) => {
                    limits
                        .metrics
                        .connections_refused
                        .with_label_values(&[refusal.label()])
                        .inc();
                    // Best effort, never waiting on the refused client for long.
                    let answer = refusal_response(refusal);
                    let _ = tokio::time::timeout(Duration::from_millis(200), async {
                        stream.write_all(&answer).await?;
                        stream.shutdown().await
                    })
                    .await;
                    Err(io::Error::other(format!(
                        "connection from {ip} refused: {}",
                        refusal.label()
                    )))
                }
            }
        })
    }
}

/// Closes a connection that has sent no byte within `within` of being accepted (after the TLS
/// handshake, where there is one). axum-server hands connections to hyper's version sniffing,
/// which waits for the first bytes with no deadline; hyper's header timeout only starts once
/// HTTP/1 is chosen, so without this a silent connection would hold its place for ever.
#[derive(Clone)]
pub struct FirstByteDeadline<A> {
    inner: A,
    within: Duration,
    metrics: Arc<Metrics>,
}

impl<A> FirstByteDeadline<A> {
    pub fn new(inner: A, within: Duration, metrics: Arc<Metrics>) -> Self {
        FirstByteDeadline {
            inner,
            within,
            metrics,
        }
    }
}

impl<A, I, S> Accept<I, S> for FirstByteDeadline<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
{
    type Stream = AwaitingFirstByte<A::Stream>;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let within = self.within;
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((
                AwaitingFirstByte {
                    inner: stream,
                    deadline: Some(Box::pin(tokio::time::sleep(within))),
                    metrics,
                },
                service,
            ))
        })
    }
}

/// A stream whose reads fail with `TimedOut` if its first byte does not arrive by the deadline.
pub struct AwaitingFirstByte<S> {
    inner: S,
    /// Dropped once a byte has arrived.
    deadline: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<S: AsyncRead + Unpin> AsyncRead for AwaitingFirstByte<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &read {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.deadline = None,
            Poll::Pending => {
                if let Some(deadline) = self.deadline.as_mut() {
                    if deadline.as_mut().poll(cx).is_ready() {
                        self.deadline = None;
                        self.metrics
                            .connections_refused
                            .with_label_values(&["no_request"])
                            .inc();
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no request within the header timeout",
                        )));
                    }
                }
            }
            _ => {}
        }
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AwaitingFirstByte<S> {
    write_through_inner!();
}

/// A TCP stream holding its connection's place until it is dropped.
pub struct LimitedStream {
    inner: TcpStream,
    _slot: Slot,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedStream {
    write_through_inner!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_in_all_and_per_address_and_given_back() {
        let limits = ConnectionLimits::new(3, 2, Arc::new(Metrics::new()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).err(), Some(Refusal::PerIp));
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).err(), Some(Refusal::Total));
        drop(a1);
        assert_eq!(limits.open(), 2);
        assert!(
            limits.admit(a).is_ok(),
            "a closed connection frees its place"
        );
    }

    #[test]
    fn ipv6_clients_count_per_56() {
        let limits = ConnectionLimits::new(10, 1, Arc::new(Metrics::new()));
        let _one = limits.admit("2001:db8:1:100::1".parse().unwrap()).unwrap();
        assert_eq!(
            limits.admit("2001:db8:1:1ff::2".parse().unwrap()).err(),
            Some(Refusal::PerIp)
        );
        assert!(limits.admit("2001:db8:1:200::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn the_refusal_is_a_complete_http_answer() {
        let text = String::from_utf8(refusal_response(Refusal::Total)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(parsed["error"].as_str().unwrap().contains("connections"));
    }
}
