//! syncrelay-operator: reconciles `SyncNode` and `SyncChain` resources (group `syncrelay.io`,
//! version `v1alpha1`) into running syncrelay nodes.
//!
//! Layout follows the reconcile pipeline: [`crd`] (the resource types), [`validate`] (pure checks of
//! a chain's topology), [`render`] (pure builders of every child object and of the node config, the
//! one `syncrelay_node::config::NodeConfig` type the node reads).

pub mod check;
pub mod controller;
pub mod crd;
pub mod leader;
pub mod metrics;
pub mod render;
pub mod run;
pub mod validate;
