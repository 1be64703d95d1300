//! A loopback HTTP proxy in front of a node, for tests that need an upstream which answers but
//! misbehaves: it forwards every request, or, when told to, refuses every entry transfer
//! (`getEntries*`, 503) while it keeps answering heads and scans (a link that then stalls), holds
//! transfers for a while, or answers 502 to everything (a gateway whose upstream is gone).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

struct ProxyState {
    upstream: String,
    refuse_transfers: AtomicBool,
    refused: AtomicU64,
    /// Answer every request 502, as a gateway whose upstream is gone.
    down: AtomicBool,
    /// Hold every entry transfer this long (ms) before forwarding it.
    transfer_delay_ms: AtomicU64,
    http: reqwest::Client,
}

/// A loopback HTTP proxy on its own runtime and thread: stopping it drops the runtime, which
/// closes the listener and every open connection (the relay's pooled ones included).
pub struct Proxy {
    pub url: String,
    state: Arc<ProxyState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy forwarding to `upstream` (a base URL).
    pub fn start(upstream: &str) -> Proxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_string(),
            refuse_transfers: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            down: AtomicBool::new(false),
            transfer_delay_ms: AtomicU64::new(0),
            http: reqwest::Client::new(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let served = state.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let app = axum::Router::new().fallback(forward).with_state(served);
                tokio::select! {
                    r = axum::serve(listener, app) => r.unwrap(),
                    _ = stopped => {}
                }
            });
            // Dropping the runtime here ends every connection task.
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Proxy {
            url: format!("http://{addr}"),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Refuse (503) every entry transfer, `getEntries*`, or forward them again.
    pub fn refuse_transfers(&self, refuse: bool) {
        self.state.refuse_transfers.store(refuse, Ordering::SeqCst);
    }

    /// Answer everything 502, or forward again.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// Hold every entry transfer for `delay` before forwarding it.
    pub fn delay_transfers(&self, delay: Duration) {
        self.state
            .transfer_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Entry transfers refused so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn forward(State(p): State<Arc<ProxyState>>, request: Request) -> Response {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    if p.down.load(Ordering::SeqCst) {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    let delay = p.transfer_delay_ms.load(Ordering::SeqCst);
    if delay > 0 && path.contains("/getEntries") {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if p.refuse_transfers.load(Ordering::SeqCst) && path.contains("/getEntries") {
        p.refused.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "entry transfers refused by the test proxy"})),
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut outgoing = p
        .http
        .request(parts.method, format!("{}{path}", p.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name, value);
        }
    }
    let Ok(answer) = outgoing.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != header::TRANSFER_ENCODING
            && name != header::CONTENT_LENGTH
            && name != header::CONNECTION
        {
            response = response.header(name, value);
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .unwrap()
}
