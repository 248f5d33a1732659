//! `/api` and `/apis` as the `Accept` header asks (`negotiate::discovery`):
//! aggregated discovery — one `apidiscovery.k8s.io` `APIGroupDiscoveryList`
//! with every resource, what kubectl ≥1.26 and client libraries ask for
//! first — or the plain `APIVersions` / `APIGroupList`, each in JSON or in
//! Kubernetes protobuf. The `Content-Type`
//! names what was served; `Vary: Accept`, and an ETag (the document's
//! SHA-256) answered with 304 when `If-None-Match` carries it.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use orchestrator_apimachinery::discovery;
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::protobuf;
use orchestrator_apimachinery::resources::ResourceType;
use orchestrator_http::Body;

use crate::negotiate::{self, Discovery};

/// The discovery document of `/api` (`core`) or `/apis`.
pub fn serve(
    headers: &HeaderMap,
    core: bool,
    address: &str,
    custom: &[Arc<ResourceType>],
) -> Result<Response<Body>, ApiError> {
    let format = negotiate::discovery(headers, discovery::AGGREGATED_VERSIONS)?;
    let (doc, protobuf) = match format {
        Discovery::Plain { protobuf } if core => (discovery::api_versions(address), protobuf),
        Discovery::Plain { protobuf } => (discovery::api_group_list(custom), protobuf),
        Discovery::Aggregated { version, protobuf } => (discovery::aggregated(core, version, custom), protobuf),
    };
    let bytes = if protobuf {
        protobuf::encode(&doc).map_err(|e| ApiError::internal(format!("encoding {}: {e}", doc["kind"])))?
    } else {
        serde_json::to_vec(&doc).unwrap_or_default()
    };
    Ok(cached(headers, bytes, &format.content_type()))
}

/// A document with its ETag (the SHA-256 of `bytes`), `Vary: Accept`, and
/// 304 with no body when `If-None-Match` carries the tag.
pub fn cached(headers: &HeaderMap, bytes: Vec<u8>, content_type: &str) -> Response<Body> {
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let etag: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    let etag = format!("\"{etag}\"");
    let matches = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim() == etag || t.trim() == "*");
    let mut r = if matches {
        let mut r = Response::new(Body::Full(None));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        Response::new(Body::Full(Some(Bytes::from(bytes))))
    };
    let h = r.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(tag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, tag);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}
