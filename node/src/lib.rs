//! syncrelay-node: a MindooDB sync-v5 node.
//!
//! Layers, bottom up: [`wire`] (the protocol's types and codecs), [`crypto`] and [`bloom`] (pure
//! functions over them), [`store`] (the `ContentAddressedStore` trait with in-memory and sled
//! implementations), [`directory`] and [`auth`] (who may do what), [`server`] (the HTTP surface),
//! [`config`] (the one configuration type, also rendered by the operator) and [`metrics`].

pub mod bloom;
pub mod crypto;
pub mod testdata;
pub mod wire;
pub mod store;
pub mod auth;
pub mod config;
pub mod directory;
pub mod metrics;
pub mod node;
pub mod server;
