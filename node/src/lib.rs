//! syncrelay-node: a MindooDB sync-v5 node.
//!
//! Modules depend one way (README "Design notes"; `tests/layers.rs` enforces it): [`server`] (the
//! HTTP surface) → [`roles`] (the node: which store serves a request, readiness, replication,
//! `/status`) → [`sync`] (engine, links) → [`client`] (transport, session, remote store, edge
//! cache) → [`store`] (the `ContentAddressedStore` trait, memory and sled) → [`wire`] and [`crypto`].
//! Beside them and below `client`: [`ingest`] (entry checks), [`config`], [`directory`], [`auth`],
//! [`metrics`], [`status`], [`bloom`], [`clock`], [`cpu`]. On top: [`node`] (start-up), [`demo`],
//! [`tools`], [`backup`].

pub mod auth;
pub mod backup;
pub mod bloom;
pub mod client;
pub mod clock;
pub mod config;
pub mod cpu;
pub mod crypto;
pub mod demo;
pub mod directory;
pub mod ingest;
pub mod metrics;
pub mod node;
pub mod roles;
pub mod server;
pub mod status;
pub mod store;
pub mod sync;
pub mod testdata;
pub mod tools;
pub mod wire;
