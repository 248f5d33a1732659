//! The scheduler: binds pending pods (no nodeName, default scheduler) to a
//! Ready, schedulable node that fits — nodeSelector, taints the pod does
//! not tolerate, requests against allocatable (cpu, memory, pods) — scoring
//! the least allocated; unschedulable pods get a PodScheduled=False
//! condition and a FailedScheduling event.

use serde_json::{Value, json};

use crate::{event, list_all, pod_active, rt, set_condition};
use orch_apimachinery::errors::ApiError;
use orch_apimachinery::registry::{Part, Registry, WriteOptions, name_of, namespace_of};

/// A quantity ("100m", "1.5", "128Mi", "1G", "2e3") in base units.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some(n * m)
}

fn quantity(v: &Value) -> f64 {
    match v {
        Value::String(s) => parse_quantity(s).unwrap_or(0.0),
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A pod's requests: (cpu cores, memory bytes).
fn requests(pod: &Value) -> (f64, f64) {
    let mut cpu = 0.0;
    let mut mem = 0.0;
    for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
        let r = c.pointer("/resources/requests").or(c.pointer("/resources/limits"));
        cpu += r.and_then(|r| r.get("cpu")).map_or(0.0, quantity);
        mem += r.and_then(|r| r.get("memory")).map_or(0.0, quantity);
    }
    (cpu, mem)
}

fn node_ready(n: &Value) -> bool {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

pub(crate) fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod.pointer("/spec/tolerations").and_then(Value::as_array).into_iter().flatten().any(|t| {
        let key_ok = match t.get("key").and_then(Value::as_str) {
            None | Some("") => t.get("operator").and_then(Value::as_str) == Some("Exists"),
            Some(k) => taint["key"] == k,
        };
        let value_ok = t.get("operator").and_then(Value::as_str) == Some("Exists")
            || t.get("value").and_then(Value::as_str).unwrap_or_default()
                == taint["value"].as_str().unwrap_or_default();
        let effect_ok = t.get("effect").and_then(Value::as_str).is_none_or(|e| e.is_empty() || taint["effect"] == e);
        key_ok && value_ok && effect_ok
    })
}

/// Why `node` cannot take `pod`, or its score (higher is better).
fn fit(pod: &Value, node: &Value, on_node: &[&Value]) -> Result<f64, &'static str> {
    if !node_ready(node) {
        return Err("node(s) were not ready");
    }
    if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
        return Err("node(s) were unschedulable");
    }
    for t in node.pointer("/spec/taints").and_then(Value::as_array).into_iter().flatten() {
        if matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute")) && !tolerates(pod, t) {
            return Err("node(s) had untolerated taint(s)");
        }
    }
    if let Some(sel) = pod.pointer("/spec/nodeSelector").and_then(Value::as_object)
        && !sel.iter().all(|(k, v)| node.pointer("/metadata/labels").and_then(|l| l.get(k)) == Some(v))
    {
        return Err("node(s) didn't match Pod's node affinity/selector");
    }
    let alloc = node.pointer("/status/allocatable").cloned().unwrap_or(json!({}));
    let (cpu_cap, mem_cap) =
        (alloc.get("cpu").map_or(f64::MAX, quantity), alloc.get("memory").map_or(f64::MAX, quantity));
    let pods_cap = alloc.get("pods").map_or(110.0, quantity);
    let (mut cpu, mut mem) = requests(pod);
    for p in on_node {
        let (c, m) = requests(p);
        cpu += c;
        mem += m;
    }
    if on_node.len() as f64 + 1.0 > pods_cap {
        return Err("Too many pods");
    }
    if cpu > cpu_cap {
        return Err("Insufficient cpu");
    }
    if mem > mem_cap {
        return Err("Insufficient memory");
    }
    let free = |used: f64, cap: f64| if cap == f64::MAX || cap == 0.0 { 1.0 } else { (cap - used) / cap };
    Ok((free(cpu, cpu_cap) + free(mem, mem_cap)) / 2.0)
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods = list_all(reg, "Pod")?;
    let nodes = list_all(reg, "Node")?;
    let mut assigned: Vec<(String, Value)> = pods
        .iter()
        .filter(|p| pod_active(p))
        .filter_map(|p| {
            p.pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(|n| (n.to_string(), p.clone()))
        })
        .collect();
    for pod in &pods {
        let pending = pod.pointer("/spec/nodeName").and_then(Value::as_str).is_none_or(str::is_empty)
            && pod_active(pod)
            && pod.pointer("/spec/schedulerName").and_then(Value::as_str).unwrap_or("default-scheduler")
                == "default-scheduler";
        if !pending {
            continue;
        }
        let mut best: Option<(f64, &str)> = None;
        let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
        for n in &nodes {
            let name = name_of(n);
            let on: Vec<&Value> = assigned.iter().filter(|(nn, _)| nn == name).map(|(_, p)| p).collect();
            match fit(pod, n, &on) {
                Ok(score) if best.is_none_or(|(b, _)| score > b) => best = Some((score, name)),
                Ok(_) => {}
                Err(r) => *reasons.entry(r).or_default() += 1,
            }
        }
        let ns = namespace_of(pod);
        match best {
            Some((_, node)) => {
                orch_apimachinery::patch::bind(
                    reg,
                    ns,
                    name_of(pod),
                    &json!({"target": {"kind": "Node", "name": node}}),
                )?;
                let msg = format!("Successfully assigned {}/{} to {node}", ns.unwrap_or_default(), name_of(pod));
                event(reg, pod, "Normal", "Scheduled", &msg, "default-scheduler");
                assigned.push((node.to_string(), pod.clone()));
            }
            None => {
                let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                let msg = if nodes.is_empty() {
                    "no nodes available to schedule pods".to_string()
                } else {
                    format!("0/{} nodes are available: {}.", nodes.len(), detail.join(", "))
                };
                let conds = pod.pointer("/status/conditions").cloned().unwrap_or(json!([]));
                let already = conds
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "PodScheduled" && c["message"] == msg.as_str());
                if !already {
                    let new = set_condition(&conds, "PodScheduled", "False", "Unschedulable", &msg, false);
                    reg.modify(rt("Pod"), ns, name_of(pod), Part::Status, &WriteOptions::default(), |o| {
                        o["status"]["conditions"] = new.clone();
                        Ok(true)
                    })?;
                    event(reg, pod, "Warning", "FailedScheduling", &msg, "default-scheduler");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cpu: &str, taint: Option<Value>) -> Value {
        json!({"metadata": {"name": name, "labels": {"disk": "ssd"}}, "spec": {"taints": taint.into_iter().collect::<Vec<_>>()},
            "status": {"allocatable": {"cpu": cpu, "memory": "1Gi", "pods": "10"}, "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn pod(cpu: &str) -> Value {
        json!({"spec": {"containers": [{"resources": {"requests": {"cpu": cpu, "memory": "100Mi"}}}]}})
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("100m"), Some(0.1));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("128Mi"), Some(134217728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn fit_checks_resources_taints_selector_and_scores_least_allocated() {
        let p = pod("500m");
        let small = node("a", "1", None);
        let big = node("b", "4", None);
        assert!(fit(&p, &big, &[]).unwrap() > fit(&p, &small, &[]).unwrap());
        let busy = pod("800m");
        assert_eq!(fit(&p, &small, &[&busy]), Err("Insufficient cpu"));
        let tainted = node("c", "4", Some(json!({"key": "dedicated", "value": "x", "effect": "NoSchedule"})));
        assert_eq!(fit(&p, &tainted, &[]), Err("node(s) had untolerated taint(s)"));
        let mut tolerant = p.clone();
        tolerant["spec"]["tolerations"] = json!([{"key": "dedicated", "operator": "Equal", "value": "x"}]);
        assert!(fit(&tolerant, &tainted, &[]).is_ok());
        let mut picky = p.clone();
        picky["spec"]["nodeSelector"] = json!({"disk": "hdd"});
        assert!(fit(&picky, &big, &[]).is_err());
        let mut not_ready = big.clone();
        not_ready["status"]["conditions"][0]["status"] = "Unknown".into();
        assert_eq!(fit(&p, &not_ready, &[]), Err("node(s) were not ready"));
    }
}
