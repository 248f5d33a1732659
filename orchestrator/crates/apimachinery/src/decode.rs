//! Request bodies to JSON values, with upstream's bounds: a body is at most
//! [`MAX_REQUEST_BYTES`] (kube-apiserver's 3 MiB); a YAML body is checked
//! for nesting deeper than [`MAX_DEPTH`] before it is parsed (the parser's
//! time grows with depth × size), and its aliases may not expand it past
//! [`MAX_REQUEST_BYTES`] of values ("billion laughs"). JSON bodies get the
//! same depth bound from serde_json's recursion limit (128).

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::errors::ApiError;

/// The largest request body, as upstream's `MaxRequestBodyBytes`.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// The deepest nesting of a YAML body (serde_json's limit for JSON ones).
pub const MAX_DEPTH: usize = 128;

/// 413 for a body over [`MAX_REQUEST_BYTES`], in upstream's words.
pub fn body_too_large() -> ApiError {
    ApiError::too_large(format!("Request entity too large: limit is {MAX_REQUEST_BYTES}"))
}

pub fn json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Parses a YAML body (JSON is YAML too) within the bounds above. CPU-bound
/// on big bodies: the API server calls it off its async threads.
pub fn yaml(body: &[u8]) -> Result<Value, ApiError> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(body_too_large());
    }
    let depth = yaml_depth(body);
    if depth > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the request body is not valid YAML: it nests {depth} levels deep (limit {MAX_DEPTH})"
        )));
    }
    let budget = Cell::new(MAX_REQUEST_BYTES);
    let de = serde_norway::Deserializer::from_slice(body);
    Bounded(&budget).deserialize(de).map_err(|e| {
        if budget.get() == 0 {
            ApiError::too_large(format!(
                "the request body's YAML aliases expand it past {MAX_REQUEST_BYTES} bytes: Request entity too large: limit is {MAX_REQUEST_BYTES}"
            ))
        } else {
            ApiError::bad_request(format!("the request body is not valid YAML: {e}"))
        }
    })
}

/// How deep a YAML text nests: block indentation levels (and `- ` items)
/// plus flow brackets, outside quotes, comments and block scalars. An
/// upper bound on what the parser will see, read in one pass.
fn yaml_depth(text: &[u8]) -> usize {
    let mut deepest = 0;
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    // The indentation of a block scalar's header line while in its body.
    let mut scalar_above: Option<usize> = None;
    for line in text.split(|&b| b == b'\n') {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let rest = &line[indent..];
        if rest.is_empty() || rest[0] == b'#' || rest == b"\r" {
            continue;
        }
        if let Some(above) = scalar_above {
            if indent > above {
                continue;
            }
            scalar_above = None;
        }
        if flow == 0 {
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut dashes = 0;
        let mut i = 0;
        let mut token_start = true;
        while i < rest.len() {
            let c = rest[i];
            match c {
                b'-' if flow == 0 && token_start && rest.get(i + 1).is_none_or(|n| *n == b' ') => dashes += 1,
                b'#' if token_start => break,
                b'"' | b'\'' if token_start => {
                    i += 1;
                    while i < rest.len() && rest[i] != c {
                        i += if rest[i] == b'\\' && c == b'"' { 2 } else { 1 };
                    }
                }
                b'[' | b'{' => {
                    flow += 1;
                    deepest = deepest.max(indents.len() + dashes + flow);
                }
                b']' | b'}' => flow = flow.saturating_sub(1),
                _ => {}
            }
            token_start = matches!(c, b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-');
            i += 1;
        }
        deepest = deepest.max(indents.len() + dashes + flow);
        let trimmed = rest.trim_ascii_end();
        let header = trimmed.iter().rposition(|b| matches!(b, b'|' | b'>')).is_some_and(|p| {
            trimmed[p + 1..].iter().all(|b| matches!(b, b'-' | b'+' | b'0'..=b'9'))
                && (p == 0 || trimmed[p - 1] == b' ')
        });
        if header && flow == 0 {
            scalar_above = Some(indent);
        }
    }
    deepest
}

/// Builds a JSON value from any deserializer, charging every scalar's
/// size (and 8 bytes per node) to a budget; an exhausted budget is an
/// error, so an alias bomb stops at the budget, not at memory's end.
struct Bounded<'a>(&'a Cell<usize>);

impl Bounded<'_> {
    fn charge<E: serde::de::Error>(&self, bytes: usize) -> Result<(), E> {
        match self.0.get().checked_sub(bytes + 8) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => {
                self.0.set(0);
                Err(E::custom("the document expands past the size limit"))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-compatible value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(v.into())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.charge(0)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.charge(v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.charge(0)?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Bounded(self.0))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.charge(0)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(Bounded(self.0))? {
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let v = map.next_value_seed(Bounded(self.0))?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_yaml_parses_as_before() {
        let v = yaml(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: {x: \"1\"}\ndata:\n  k: v # c\n  script: |\n    if [ -f x ]; then\n      echo '[[[' \n    fi\n").unwrap();
        assert_eq!(v["metadata"]["labels"]["x"], "1");
        assert_eq!(v["data"]["k"], "v");
        assert!(v["data"]["script"].as_str().unwrap().contains("echo '[[['"));
        let list = yaml(b"items:\n- - - a\n  - b\n").unwrap();
        assert_eq!(list["items"][0][0][0], "a");
    }

    #[test]
    fn depth_counts_blocks_dashes_and_flows() {
        assert_eq!(yaml_depth(b"a: 1\n"), 1);
        assert_eq!(yaml_depth(b"a:\n  b:\n    c: [1, {d: 2}]\n"), 5);
        assert_eq!(yaml_depth(b"a: \"[[[[\"\nb: '{{{'\n"), 1);
        assert_eq!(yaml_depth(b"s: |\n  [[[[[[\n   {{{{{\nt: 1\n"), 1);
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!("data: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let e = yaml(deep.as_bytes()).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("nests 100001 levels deep (limit 128)"), "{}", e.message);
        let block: String = (0..200).map(|i| format!("{}k{i}:\n", " ".repeat(i))).collect();
        assert_eq!(yaml(block.as_bytes()).unwrap_err().code, 400);
    }

    #[test]
    fn alias_bombs_stop_at_the_budget() {
        // A 64 KB string, 100 times over through two levels of aliases:
        // 6.4 MB of values from a 64 KB body.
        let bomb = format!(
            "l0: &l0 \"{}\"\nl1: &l1 [{}]\nl2: [{}]\n",
            "x".repeat(64 * 1024),
            ["*l0"; 10].join(", "),
            ["*l1"; 10].join(", ")
        );
        let e = yaml(bomb.as_bytes()).unwrap_err();
        assert_eq!((e.code, e.reason), (413, "RequestEntityTooLarge"), "{}", e.message);
        // Many small aliases: the parser's own repetition limit.
        let mut laughs = String::from("l0: &l0 \"lol\"\n");
        for i in 1..9 {
            laughs.push_str(&format!("l{i}: &l{i} [{}]\n", vec![format!("*l{}", i - 1); 10].join(", ")));
        }
        assert_eq!(yaml(laughs.as_bytes()).unwrap_err().code, 400);
    }
}
