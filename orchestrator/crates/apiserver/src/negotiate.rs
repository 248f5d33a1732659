//! Response content negotiation for resource requests, as upstream's
//! apimachinery does it: the `Accept` media ranges with their q-values; a
//! range of weight 0 is refused; a range the server can produce is
//! answered, and when none is the answer is upstream's `406
//! NotAcceptable`. Resource responses are JSON (plain, `as=Table`, or
//! metadata only: `as=PartialObjectMetadata[List]`) or Kubernetes protobuf
//! (`application/vnd.kubernetes.protobuf`, built-in kinds, and any kind's
//! metadata only): the acceptable range of highest weight wins, ties in the
//! client's order, so client-go's "protobuf, else JSON" gets protobuf and
//! a custom object falls back to JSON. YAML alone is a 406. `/api` and
//! `/apis` also offer aggregated discovery, in JSON or protobuf (`discovery`).

use http::{HeaderMap, header};
use orchestrator_apimachinery::errors::ApiError;

/// The media types the server produces for resources, as the 406 names them.
const PRODUCED: &str = "application/json, application/vnd.kubernetes.protobuf";

/// One media range of an `Accept` header.
struct Range<'a> {
    kind: &'a str,
    params: Vec<(&'a str, &'a str)>,
    q: f32,
}

fn ranges(accept: &str) -> Vec<Range<'_>> {
    accept
        .split(',')
        .filter_map(|r| {
            let mut parts = r.split(';').map(str::trim);
            let kind = parts.next().filter(|k| !k.is_empty())?;
            let (mut params, mut q) = (Vec::new(), 1.0);
            for p in parts {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                if k.eq_ignore_ascii_case("q") {
                    q = v.trim().parse().unwrap_or(1.0);
                } else {
                    params.push((k.trim(), v.trim()));
                }
            }
            Some(Range { kind, params, q })
        })
        .collect()
}

/// Whether a JSON response satisfies one media range.
fn json_satisfies(r: &Range<'_>) -> bool {
    let kind = r.kind.to_ascii_lowercase();
    if !matches!(kind.as_str(), "application/json" | "application/*" | "*/*") {
        return false;
    }
    // `as=Table` and the metadata-only conversions (meta.k8s.io) are produced.
    r.params.iter().all(|(k, v)| !k.eq_ignore_ascii_case("as") || *v == "Table" || is_metadata(v))
}

/// `PartialObjectMetadata` (a get, each watch event) or
/// `PartialObjectMetadataList` (a list): what client-go's metadata client
/// and informers, and kube-rs' `*_metadata` calls, ask for.
fn is_metadata(conversion: &str) -> bool {
    matches!(conversion, "PartialObjectMetadata" | "PartialObjectMetadataList")
}

/// Whether a protobuf response satisfies one media range: no conversion,
/// or a metadata-only one (Tables are JSON only, as upstream).
fn protobuf_satisfies(r: &Range<'_>) -> bool {
    r.kind.eq_ignore_ascii_case(orchestrator_apimachinery::protobuf::MEDIA_TYPE)
        && r.params.iter().all(|(k, v)| !k.eq_ignore_ascii_case("as") || is_metadata(v))
}

/// Whether the request asks for metadata only (`as=PartialObjectMetadata`
/// or `…List` of group `meta.k8s.io` in an acceptable range).
pub fn wants_metadata(headers: &HeaderMap) -> bool {
    ranges(&accept_header(headers)).iter().any(|r| {
        r.q > 0.0
            && r.params.iter().any(|(k, v)| k.eq_ignore_ascii_case("as") && is_metadata(v))
            && r.params.iter().all(|(k, v)| !k.eq_ignore_ascii_case("g") || *v == "meta.k8s.io")
    })
}

/// How a resource response is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    /// Protobuf where the kind has an encoding; `json_fallback` when the
    /// client also accepts JSON (for kinds without one: custom objects).
    Protobuf {
        json_fallback: bool,
    },
}

/// Chooses the response encoding: the acceptable range of highest
/// weight, ties in the client's order; no `Accept` is JSON.
pub fn format(headers: &HeaderMap) -> Result<Format, ApiError> {
    let accept = accept_header(headers);
    if accept.trim().is_empty() {
        return Ok(Format::Json);
    }
    let mut ranges = ranges(&accept);
    ranges.retain(|r| r.q > 0.0);
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    let json_ok = ranges.iter().any(json_satisfies);
    for r in &ranges {
        if protobuf_satisfies(r) {
            return Ok(Format::Protobuf { json_fallback: json_ok });
        }
        if json_satisfies(r) {
            return Ok(Format::Json);
        }
    }
    Err(ApiError::new(406, "NotAcceptable", format!("only the following media types are accepted: {PRODUCED}")))
}

fn accept_header(headers: &HeaderMap) -> String {
    let values: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    values.join(",")
}

/// Checks that the request accepts what the server produces (`format`).
pub fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    format(headers).map(|_| ())
}

/// What `/api` and `/apis` answer a request with, and in which encoding
/// (`protobuf`: Kubernetes protobuf, else JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// `APIVersions` / `APIGroupList`.
    Plain { protobuf: bool },
    /// An `APIGroupDiscoveryList` of `apidiscovery.k8s.io` in this version.
    Aggregated { version: &'static str, protobuf: bool },
}

impl Discovery {
    /// The `Content-Type` naming what was served.
    pub fn content_type(self) -> String {
        let media =
            |protobuf| if protobuf { orchestrator_apimachinery::protobuf::MEDIA_TYPE } else { "application/json" };
        match self {
            Discovery::Plain { protobuf } => media(protobuf).into(),
            Discovery::Aggregated { version, protobuf } => {
                format!("{};g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList", media(protobuf))
            }
        }
    }
}

/// Chooses between aggregated and plain discovery, in JSON or protobuf, as
/// upstream does: the acceptable range of highest weight wins, ties in
/// the client's order; an aggregated range names group
/// `apidiscovery.k8s.io`, a served version and `as=APIGroupDiscoveryList`;
/// plain JSON is the fallback kubectl lists last. Nothing acceptable is
/// upstream's 406.
pub fn discovery(headers: &HeaderMap, versions: &[&'static str]) -> Result<Discovery, ApiError> {
    let accept = accept_header(headers);
    if accept.trim().is_empty() {
        return Ok(Discovery::Plain { protobuf: false });
    }
    let mut ranges = ranges(&accept);
    ranges.sort_by(|a, b| b.q.total_cmp(&a.q));
    for r in ranges.iter().filter(|r| r.q > 0.0) {
        let param = |name: &str| r.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v);
        let protobuf = r.kind.eq_ignore_ascii_case(orchestrator_apimachinery::protobuf::MEDIA_TYPE);
        match param("as") {
            Some("APIGroupDiscoveryList") => {
                let known = protobuf || r.kind.eq_ignore_ascii_case("application/json");
                if let (true, Some("apidiscovery.k8s.io"), Some(v)) = (known, param("g"), param("v"))
                    && let Some(version) = versions.iter().find(|s| **s == v)
                {
                    return Ok(Discovery::Aggregated { version, protobuf });
                }
            }
            None if protobuf => return Ok(Discovery::Plain { protobuf: true }),
            None if json_satisfies(r) => return Ok(Discovery::Plain { protobuf: false }),
            _ => {}
        }
    }
    Err(ApiError::new(406, "NotAcceptable", format!("only the following media types are accepted: {PRODUCED}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> Result<(), u16> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        check_accept(&h).map_err(|e| e.code)
    }

    #[test]
    fn json_fallbacks_wildcards_and_q_values() {
        assert_eq!(accept("application/vnd.kubernetes.protobuf, application/json"), Ok(()));
        assert_eq!(accept("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"), Ok(()));
        assert_eq!(accept("*/*"), Ok(()));
        assert_eq!(accept("application/*;q=0.5, text/plain"), Ok(()));
        assert_eq!(accept("application/yaml"), Err(406));
        assert_eq!(accept("application/json;q=0, application/yaml"), Err(406));
        assert_eq!(accept("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"), Ok(()));
        assert_eq!(accept("application/json;as=APIGroupDiscoveryList;g=apidiscovery.k8s.io;v=v2"), Err(406));
        assert_eq!(accept(""), Ok(()));
    }

    fn format_for(v: &str) -> Result<Format, u16> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        format(&h).map_err(|e| e.code)
    }

    #[test]
    fn protobuf_is_chosen_by_weight_then_order() {
        const PB: &str = "application/vnd.kubernetes.protobuf";
        assert_eq!(format_for(&format!("{PB}, application/json")), Ok(Format::Protobuf { json_fallback: true }));
        assert_eq!(format_for(PB), Ok(Format::Protobuf { json_fallback: false }));
        assert_eq!(format_for(&format!("application/json;q=0, {PB}")), Ok(Format::Protobuf { json_fallback: false }));
        assert_eq!(format_for(&format!("application/json, {PB}")), Ok(Format::Json));
        assert_eq!(format_for(&format!("{PB};q=0.5, application/json")), Ok(Format::Json));
        assert_eq!(
            format_for(&format!("{PB};as=Table;v=v1;g=meta.k8s.io, application/json;as=Table;v=v1;g=meta.k8s.io")),
            Ok(Format::Json)
        );
        assert_eq!(format_for(&format!("{PB};q=0, application/yaml")), Err(406));
    }

    #[test]
    fn metadata_only_in_protobuf_or_json() {
        const PB: &str = "application/vnd.kubernetes.protobuf";
        let headers = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, v.parse().unwrap());
            h
        };
        // client-go's metadata client.
        let client_go = format!(
            "{PB};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
        );
        assert_eq!(format_for(&client_go), Ok(Format::Protobuf { json_fallback: true }));
        assert!(wants_metadata(&headers(&client_go)));
        let kube_rs = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1";
        assert_eq!(format_for(kube_rs), Ok(Format::Json));
        assert!(wants_metadata(&headers(kube_rs)));
        assert!(!wants_metadata(&headers("application/json;as=Table;v=v1;g=meta.k8s.io")));
        assert!(!wants_metadata(&headers(
            "application/json;as=PartialObjectMetadata;g=meta.k8s.io;q=0, application/json"
        )));
        assert!(!wants_metadata(&headers(&format!("{PB}, application/json"))));
    }

    fn discovery_for(v: &str) -> Result<Discovery, u16> {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, v.parse().unwrap());
        discovery(&h, &["v2", "v2beta1"]).map_err(|e| e.code)
    }

    #[test]
    fn discovery_prefers_aggregated_then_falls_back_to_plain() {
        const V2: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
        const V2BETA1: &str = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";
        const PLAIN: Discovery = Discovery::Plain { protobuf: false };
        let v2 = Discovery::Aggregated { version: "v2", protobuf: false };
        assert_eq!(discovery_for(&format!("{V2},{V2BETA1},application/json")), Ok(v2));
        assert_eq!(
            discovery_for(&format!("{V2BETA1},application/json")),
            Ok(Discovery::Aggregated { version: "v2beta1", protobuf: false })
        );
        assert_eq!(discovery_for(&format!("{V2};q=0.5,application/json")), Ok(PLAIN));
        assert_eq!(
            discovery_for("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList,application/json"),
            Ok(PLAIN)
        );
        // client-go's `profile=nopeer` asks for the same document.
        assert_eq!(discovery_for(&format!("{V2};profile=nopeer,application/json")), Ok(v2));
        let v2_pb = Discovery::Aggregated { version: "v2", protobuf: true };
        assert_eq!(
            discovery_for(
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
            ),
            Ok(v2_pb)
        );
        assert_eq!(
            discovery_for("application/vnd.kubernetes.protobuf, application/json"),
            Ok(Discovery::Plain { protobuf: true })
        );
        assert_eq!(discovery_for("application/json, */*"), Ok(PLAIN));
        assert_eq!(discovery_for("application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList"), Err(406));
        assert_eq!(discovery_for("application/yaml"), Err(406));
        assert_eq!(v2.content_type(), "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
        assert_eq!(
            v2_pb.content_type(),
            "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        );
    }
}
