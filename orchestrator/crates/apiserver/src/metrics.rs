//! `metrics.k8s.io/v1beta1` (`kubectl top`) without a metrics-server: the
//! API server reads the kubelets' `/metrics/resource` (cumulative CPU
//! seconds and working sets, kubelet `metrics`) when asked, and answers
//! NodeMetrics and PodMetrics. CPU is a rate between two samples of one
//! node: the last one kept from an earlier request when it is 1–60 s
//! old, else a second read one second after the first; `window` is the
//! time between them. Nothing is stored. Authorization is RBAC's on
//! `nodes`/`pods` in `metrics.k8s.io` (the `view` role aggregates them, as
//! metrics-server's `system:aggregated-metrics-reader`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::Response;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use orchestrator_apimachinery::discovery::{METRICS_GROUP, METRICS_VERSION};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::format_time;
use orchestrator_apimachinery::selector::LabelSelector;
use orchestrator_apimachinery::{resources, typed};
use orchestrator_http::{Body, param};

use crate::{State, User, allowed, respond, streaming};

/// A series' cumulative value and its time (Unix ms).
type Point = (f64, i64);

/// One read of a kubelet's `/metrics/resource`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub node_cpu: Option<Point>,
    pub node_memory: Option<u64>,
    /// (namespace, pod, container) → (CPU seconds at a time, working set).
    pub containers: HashMap<(String, String, String), (Point, u64)>,
}

/// The last read of each node, for the next request's rate.
#[derive(Default)]
pub struct Samples(Mutex<HashMap<String, Scrape>>);

fn labels(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let (mut value, mut chars, mut end) = (String::new(), after.char_indices(), after.len());
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Parses the Prometheus text the kubelet serves; unknown series are skipped.
pub fn parse(doc: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in doc.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = match line.find('{') {
            Some(i) => match line[i..].find('}') {
                Some(j) => (&line[..i + j + 1], &line[i + j + 1..]),
                None => continue,
            },
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        let mut fields = rest.split_whitespace();
        let (Some(Ok(value)), Some(Ok(at))) = (fields.next().map(str::parse::<f64>), fields.next().map(str::parse))
        else {
            continue;
        };
        let (name, l) = series.split_once('{').map_or((series, HashMap::new()), |(n, l)| (n, labels(l)));
        let key = || {
            let get = |k: &str| l.get(k).cloned().unwrap_or_default();
            (get("namespace"), get("pod"), get("container"))
        };
        match name {
            "node_cpu_usage_seconds_total" => s.node_cpu = Some((value, at)),
            "node_memory_working_set_bytes" => s.node_memory = Some(value as u64),
            "container_cpu_usage_seconds_total" => s.containers.entry(key()).or_default().0 = (value, at),
            "container_memory_working_set_bytes" => s.containers.entry(key()).or_default().1 = value as u64,
            _ => {}
        }
    }
    s
}

/// Nanocores between two points, and the window in ms (none when the counter went back: a new container).
pub fn rate(before: Point, after: Point) -> Option<(u64, i64)> {
    let window = after.1 - before.1;
    (window > 0 && after.0 >= before.0)
        .then(|| (((after.0 - before.0) / (window as f64 / 1000.0) * 1e9) as u64, window))
}

/// A window as Go prints a duration under a minute (`1.5s`).
fn window(ms: i64) -> String {
    let s = format!("{}.{:03}", ms / 1000, ms % 1000);
    format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
}

fn time_of(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).map(format_time).unwrap_or_default()
}

fn usage(nanocores: u64, bytes: u64) -> Value {
    json!({"cpu": format!("{nanocores}n"), "memory": format!("{}Ki", bytes / 1024)})
}

/// Two reads of a node, the older first: the kept one when fresh enough, else a second read.
async fn two_reads(state: &State, samples: &Samples, node: &Node) -> Result<(Scrape, Scrape), ApiError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let read = || async {
        let body = streaming::kubelet_get(state, node, "/metrics/resource").await?;
        Ok::<_, ApiError>(parse(&String::from_utf8_lossy(&body)))
    };
    let now = read().await?;
    let kept = samples.0.lock().expect("not poisoned").get(&name).cloned();
    let age = |s: &Scrape| now.node_cpu.zip(s.node_cpu).map_or(0, |(n, k)| n.1 - k.1);
    let (before, after) = match kept {
        Some(k) if (1000..60_000).contains(&age(&k)) => (k, now),
        _ => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            (now, read().await?)
        }
    };
    samples.0.lock().expect("not poisoned").insert(name, after.clone());
    Ok((before, after))
}

/// What a metrics request is about: the Nodes, or the Pods (typed, as stored).
enum Subject {
    Node(Node),
    Pod(Pod),
}

impl Subject {
    fn meta(&self) -> &ObjectMeta {
        match self {
            Subject::Node(n) => &n.metadata,
            Subject::Pod(p) => &p.metadata,
        }
    }

    fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    /// The node whose kubelet has its samples: the Node itself, or the pod's.
    fn node_name(&self) -> &str {
        match self {
            Subject::Node(_) => self.name(),
            Subject::Pod(p) => p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default(),
        }
    }

    fn metrics(&self, before: &Scrape, after: &Scrape) -> Option<Value> {
        match self {
            Subject::Node(n) => node_metrics(n, before, after),
            Subject::Pod(p) => pod_metrics(p, before, after),
        }
    }
}

fn metadata(o: &ObjectMeta) -> Value {
    let mut m = json!({"name": o.name.as_deref().unwrap_or_default(), "creationTimestamp": time_of(now_ms())});
    if let Some(ns) = &o.namespace {
        m["namespace"] = ns.as_str().into();
    }
    if let Some(l) = &o.labels {
        m["labels"] = json!(l);
    }
    m
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn node_metrics(node: &Node, before: &Scrape, after: &Scrape) -> Option<Value> {
    let (cpu, ms) = rate(before.node_cpu?, after.node_cpu?)?;
    Some(json!({
        "metadata": metadata(&node.metadata),
        "timestamp": time_of(after.node_cpu?.1),
        "window": window(ms),
        "usage": usage(cpu, after.node_memory?),
    }))
}

fn pod_metrics(pod: &Pod, before: &Scrape, after: &Scrape) -> Option<Value> {
    let meta = &pod.metadata;
    let (ns, name) = (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
    let mut containers = Vec::new();
    let (mut at, mut span) = (0, 0);
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        let cname = c.name.as_str();
        let key = (ns.to_string(), name.to_string(), cname.to_string());
        let (Some((old, _)), Some((new, memory))) = (before.containers.get(&key), after.containers.get(&key)) else {
            continue;
        };
        let Some((cpu, ms)) = rate(*old, *new) else { continue };
        (at, span) = (at.max(new.1), span.max(ms));
        containers.push(json!({"name": cname, "usage": usage(cpu, *memory)}));
    }
    (!containers.is_empty()).then(|| {
        json!({"metadata": metadata(meta), "timestamp": time_of(at), "window": window(span), "containers": containers})
    })
}

fn forbidden(user: &User, verb: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> ApiError {
    let scope = ns.map_or("at the cluster scope".to_string(), |n| format!("in the namespace \"{n}\""));
    let what = match name {
        Some(n) => format!("{resource}.{METRICS_GROUP} \"{n}\""),
        None => format!("{resource}.{METRICS_GROUP}"),
    };
    ApiError::forbidden(format!(
        "{what} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{METRICS_GROUP}\" {scope}",
        user.name
    ))
}

/// `GET /apis/metrics.k8s.io/v1beta1/<rest>`.
pub async fn serve(
    state: &State,
    samples: &Samples,
    user: &User,
    rest: &[&str],
    q: &[(String, String)],
) -> Result<Response<Body>, ApiError> {
    let (resource, ns, name) = match rest {
        ["nodes"] => ("nodes", None, None),
        ["nodes", n] => ("nodes", None, Some(*n)),
        ["pods"] => ("pods", None, None),
        ["namespaces", ns, "pods"] => ("pods", Some(*ns), None),
        ["namespaces", ns, "pods", n] => ("pods", Some(*ns), Some(*n)),
        _ => return Err(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    };
    let verb = if name.is_some() { "get" } else { "list" };
    if !allowed(state, user, verb, ns, METRICS_GROUP, resource, name) {
        return Err(forbidden(user, verb, resource, ns, name));
    }
    let selector = LabelSelector::parse(param(q, "labelSelector").unwrap_or_default())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let reg = &state.registry;
    let nodes: Vec<Node> = typed::list(reg, resources::by_kind("Node").expect("served"), None)?;
    let (kind, singular) =
        if resource == "nodes" { ("NodeMetrics", "nodemetrics") } else { ("PodMetrics", "podmetrics") };
    let subjects: Vec<Subject> = if resource == "nodes" {
        nodes.iter().cloned().map(Subject::Node).collect()
    } else {
        let pods: Vec<Pod> = typed::list(reg, resources::by_kind("Pod").expect("served"), ns)?;
        pods.into_iter().map(Subject::Pod).collect()
    };
    let subjects: Vec<Subject> = subjects
        .into_iter()
        .filter(|s| name.is_none_or(|x| x == s.name()))
        .filter(|s| selector.matches(s.meta().labels.as_ref().unwrap_or(&Default::default())))
        .collect();
    // Each node read once, for the nodes themselves or the pods on them.
    let mut reads: HashMap<String, (Scrape, Scrape)> = HashMap::new();
    for s in &subjects {
        let node_name = s.node_name();
        if node_name.is_empty() || reads.contains_key(node_name) {
            continue;
        }
        let Some(node) = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node_name)) else { continue };
        match two_reads(state, samples, node).await {
            Ok(r) => {
                reads.insert(node_name.to_string(), r);
            }
            Err(e) => tracing::debug!(node = node_name, "metrics: {}", e.message),
        }
    }
    let items: Vec<Value> = subjects
        .iter()
        .filter_map(|s| {
            let (before, after) = reads.get(s.node_name())?;
            s.metrics(before, after)
        })
        .map(|mut m| {
            m["kind"] = kind.into();
            m["apiVersion"] = format!("{METRICS_GROUP}/{METRICS_VERSION}").into();
            m
        })
        .collect();
    match name {
        Some(n) => match items.into_iter().next() {
            Some(m) => Ok(respond(200, &m, &[])),
            None => Err(ApiError::new(404, "NotFound", format!("{singular}.{METRICS_GROUP} \"{n}\" not found"))),
        },
        None => {
            let list = json!({"kind": format!("{kind}List"), "apiVersion": format!("{METRICS_GROUP}/{METRICS_VERSION}"),
                "metadata": {}, "items": items});
            Ok(respond(200, &list, &[]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_parse_and_become_rates() {
        let doc = "# TYPE node_cpu_usage_seconds_total counter\nnode_cpu_usage_seconds_total 10.5 1000\n\
                   node_memory_working_set_bytes 2048 1000\n\
                   container_cpu_usage_seconds_total{container=\"c\",namespace=\"default\",pod=\"p\"} 0.25 900\n\
                   container_memory_working_set_bytes{container=\"c\",namespace=\"default\",pod=\"p\"} 4096 900\n";
        let s = parse(doc);
        assert_eq!((s.node_cpu, s.node_memory), (Some((10.5, 1000)), Some(2048)));
        let key = ("default".to_string(), "p".to_string(), "c".to_string());
        assert_eq!(s.containers[&key], ((0.25, 900), 4096));
        assert_eq!(labels(r#"a="x\"y",b="z""#), HashMap::from([("a".into(), "x\"y".into()), ("b".into(), "z".into())]));
        // Half a core over two seconds.
        assert_eq!(rate((10.0, 1000), (11.0, 3000)), Some((500_000_000, 2000)));
        assert_eq!(rate((11.0, 1000), (1.0, 3000)), None, "a restarted container's counter starts again");
        assert_eq!((window(1500), window(2000), window(1002)), ("1.5s".into(), "2s".into(), "1.002s".into()));
        assert_eq!(usage(5, 4096), json!({"cpu": "5n", "memory": "4Ki"}));
    }
}
