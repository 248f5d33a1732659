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
pub mod verity;

/// The machine API (`plinth.machine.v1`), generated from
/// `proto/plinth/machine/v1/machine.proto` at build time.
#[allow(clippy::all, missing_docs)]
pub mod api {
    tonic::include_proto!("plinth.machine.v1");
}

/// The Plinth release this build belongs to.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// HTTP/2 flow-control windows of the machine API (osctl, apid and init's
/// socket, both ends): h2's default 64 KiB lets one stream carry 64 KiB per
/// round trip, a few MB/s on a link with milliseconds of latency; an
/// upgrade's 1 MiB chunks need several in flight.
pub const H2_STREAM_WINDOW: u32 = 8 << 20;
pub const H2_CONNECTION_WINDOW: u32 = 16 << 20;

/// The security version of this build (image-builder's default for
/// `--security-version`): raise it in a release that fixes a vulnerability,
/// and a node that committed it refuses every older-security bundle and
/// rollback (`bundle::BundleManifest::check_for`). At 0 the manifest omits
/// the field, so releases made before the floor existed (which refuse
/// unknown manifest fields) can still install this one: the first release
/// that raises it must be installed from a floor-aware one.
pub const SECURITY_VERSION: u64 = 0;
