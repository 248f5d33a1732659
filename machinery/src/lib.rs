//! Plinth's shared contract. No I/O beyond parsing: config types and
//! validation, signing, the machine API, roles and PKI, the upgrade bundle
//! format and the A/B slot state machine.

pub mod board;
pub mod boot_steps;
pub mod bundle;
pub mod config;
pub mod layout;
pub mod pe;
pub mod pki;
pub mod roles;
pub mod signing;
pub mod slots;

/// The machine API (`plinth.machine.v1`), generated from
/// `proto/plinth/machine/v1/machine.proto` at build time.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("plinth.machine.v1");
}

/// The Plinth release this build belongs to.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
