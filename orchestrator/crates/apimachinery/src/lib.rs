//! Kubernetes object semantics over the store: the registry (decode,
//! defaulting, validation, versions, finalizers, watches), patches,
//! selectors, bounded request decoding, Status errors, the served kinds, discovery, OpenAPI schemas and Tables. Used by
//! the API server, the controllers and, through the client, the kubelet.

pub mod bootstrap_token;
pub mod certificates;
pub mod cluster;
pub mod crd;
pub mod decode;
pub mod discovery;
pub mod ephemeral;
pub mod errors;
pub mod events;
pub mod gnostic;
pub mod housekeeping;
pub mod node_fields;
pub mod openapi;
pub mod patch;
pub mod policy;
pub mod protobuf;
pub mod quantity;
pub mod quota;
pub mod registry;
pub mod resources;
pub mod schedule;
pub mod schema;
pub mod selector;
pub mod smp;
pub mod stateful;
pub mod table;
pub mod typed;
pub mod validation;
