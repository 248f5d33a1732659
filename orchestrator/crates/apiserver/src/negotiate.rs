//! Response content negotiation for resource requests, as upstream's
//! apimachinery does it: the `Accept` media ranges with their q-values; a
//! range of weight 0 is refused; a range the server can produce is
//! answered, and when none is the answer is upstream's `406
//! NotAcceptable`. Resource responses are JSON (plain, or
//! `as=Table`), so a client that lists protobuf first and JSON as its
//! fallback — client-go's default, as helm and kubectl ≥1.32 send — gets
//! JSON, and one that accepts only protobuf or YAML gets the 406.

use http::{HeaderMap, header};
use orchestrator_apimachinery::errors::ApiError;

/// The media types the server produces for resources, as the 406 names them.
const PRODUCED: &str = "application/json";

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
    // `as=Table` (meta.k8s.io) is produced; other conversions are not.
    r.params.iter().all(|(k, v)| !k.eq_ignore_ascii_case("as") || *v == "Table")
}

/// Checks that the request accepts what the server produces; `Ok` means
/// answer JSON.
pub fn check_accept(headers: &HeaderMap) -> Result<(), ApiError> {
    let values: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    let accept = values.join(",");
    if accept.trim().is_empty() {
        return Ok(());
    }
    let acceptable = ranges(&accept).iter().any(|r| r.q > 0.0 && json_satisfies(r));
    if acceptable {
        return Ok(());
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
        assert_eq!(accept("application/vnd.kubernetes.protobuf"), Err(406));
        assert_eq!(accept("application/yaml"), Err(406));
        assert_eq!(accept("application/json;q=0, application/vnd.kubernetes.protobuf"), Err(406));
        assert_eq!(accept("application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"), Err(406));
        assert_eq!(accept(""), Ok(()));
    }
}
