//! Moving entries between stores: the [`engine`] (one pass between any two stores), the node's
//! [`links`] to upstreams and peers, the background [`service`] of relays and peers, and the
//! node's [`status`] report built from all of it.

pub mod engine;
pub mod links;
pub mod service;
pub mod status;
