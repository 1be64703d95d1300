//! The node as a client of another node (or of a MindooDB server): the transport trait and its HTTP
//! implementation, an authenticated session per (upstream, tenant), and [`RemoteStore`], a
//! `ContentAddressedStore` over the sync-v5 endpoints (the seed's `ClientNetworkContentAddressedStore`),
//! and the edge role's [`cache`] in front of it.

pub mod ca_bundle;
pub mod cache;
pub mod remote_store;
pub mod session;
pub mod tls_error;
pub mod transport;

pub use remote_store::RemoteStore;
pub use session::{RemoteSession, SessionOptions};
pub use transport::{
    Body, HttpTransport, Transport, TransportError, TransportRequest, TransportResponse,
};

/// Header carrying the ids of the nodes a request has passed through, so that a node refuses to
/// join a cycle (it finds its own id).
pub const VIA_HEADER: &str = "x-syncrelay-via";

tokio::task_local! {
    /// The `x-syncrelay-via` chain of the client request being served, forwarded on upstream calls.
    pub static INCOMING_VIA: String;
}

/// The via chain to send upstream: the incoming chain (if serving a request) plus this node.
pub fn outgoing_via(node_id: &str) -> String {
    match INCOMING_VIA.try_with(|v| v.clone()) {
        Ok(v) if !v.is_empty() => format!("{v},{node_id}"),
        _ => node_id.to_string(),
    }
}
