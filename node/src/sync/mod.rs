//! Moving entries between stores: the [`engine`] (one pass between any two stores) and the node's
//! [`links`] to upstreams and peers. The background loop that drives them for a node lives with the
//! node (`roles::replication`).

pub mod engine;
pub mod links;
