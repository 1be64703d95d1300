//! syncrelay-node: a MindooDB sync-v5 node.
//!
//! Layers, bottom up: [`wire`] (the protocol's types and codecs), [`crypto`] and [`bloom`] (pure
//! functions over them), [`store`] (the `ContentAddressedStore` trait with in-memory and sled
//! implementations), [`directory`] and [`auth`] (who may do what), [`server`] (the HTTP surface),
//! [`config`] (the one configuration type, also rendered by the operator) and [`metrics`]. Above
//! them: [`client`] (this node as a client of another: transport, session, remote store) and
//! [`sync`] (the engine, links, the relay/peer loop, `/status`).

pub mod auth;
pub mod bloom;
pub mod client;
pub mod config;
pub mod cpu;
pub mod crypto;
pub mod demo;
pub mod directory;
pub mod metrics;
pub mod node;
pub mod server;
pub mod status;
pub mod store;
pub mod sync;
pub mod testdata;
pub mod tools;
pub mod wire;
