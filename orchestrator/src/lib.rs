//! Plinth's embedded control plane: a Kubernetes-compatible API server over
//! a revisioned SQLite store.

pub mod controllers;
pub mod cri;
pub mod discovery;
pub mod dns;
pub mod errors;
pub mod health;
pub mod kubelet;
pub mod patch;
pub mod pki;
pub mod protobuf;
pub mod proxy;
pub mod registry;
pub mod resources;
pub mod selector;
pub mod server;
pub mod smp;
pub mod store;
pub mod streaming;
pub mod table;
pub mod validation;
