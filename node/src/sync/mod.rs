//! Moving entries between stores: the [`engine`] (one pass between any two stores) and the node's
//! [`links`] to upstreams and peers, with what is known about each: its [`link_state`] (current,
//! catching up, stalled, down) and its replication delays ([`delay_window`]). The background loop
//! that drives them for a node lives with the node (`roles::replication`).

pub mod delay_window;
pub mod engine;
pub mod link_state;
pub mod links;
