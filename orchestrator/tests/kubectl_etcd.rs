//! The kubectl suite (`tests/kubectl.rs`) again, with every server on a
//! one-member etcd cluster instead of SQLite (`common::on_etcd`): the same
//! assertions on both stores, in the same nextest queue as the rest.

#[path = "kubectl.rs"]
mod suite;
