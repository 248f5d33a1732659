//! Endpoints and EndpointSlices for Services with a selector: the matching
//! pods' IPs (ready ones as addresses, others as not ready) and the
//! service's ports resolved against the pods' named container ports.

use serde_json::{Value, json};

use crate::{controller_ref, is_deleting, list_all, pod_ready, rt};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{Part, Registry, WriteOptions, name_of, namespace_of, uid_of};
use orchestrator_apimachinery::selector::LabelSelector;

fn target_port(port: &Value, pod: Option<&Value>) -> i64 {
    match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(name)) => pod
            .and_then(|p| p.pointer("/spec/containers").and_then(Value::as_array))
            .into_iter()
            .flatten()
            .flat_map(|c| c.get("ports").and_then(Value::as_array).cloned().unwrap_or_default())
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or(0),
        _ => port["port"].as_i64().unwrap_or(0),
    }
}

/// Creates or replaces an object's content (everything but metadata).
fn upsert(reg: &Registry, kind: &str, ns: &str, desired: Value) -> Result<(), ApiError> {
    let name = name_of(&desired).to_string();
    match reg.get(rt(kind), Some(ns), &name) {
        Err(e) if e.code == 404 => reg.create(rt(kind), Some(ns), desired, &WriteOptions::default()).map(|_| ()),
        Err(e) => Err(e),
        Ok(cur) => {
            let mut next = cur.clone();
            for (k, v) in desired.as_object().into_iter().flatten() {
                if k == "metadata" {
                    next["metadata"]["labels"] = v["labels"].clone();
                    if !v["ownerReferences"].is_null() {
                        next["metadata"]["ownerReferences"] = v["ownerReferences"].clone();
                    }
                } else {
                    next[k] = v.clone();
                }
            }
            if next == cur {
                return Ok(());
            }
            reg.update(rt(kind), Some(ns), &name, next, Part::Main, &WriteOptions::default()).map(|_| ())
        }
    }
}

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods = list_all(reg, "Pod")?;
    for svc in list_all(reg, "Service")? {
        let Some(sel) = svc.pointer("/spec/selector").and_then(Value::as_object).filter(|s| !s.is_empty()) else {
            continue;
        };
        if is_deleting(&svc) {
            continue;
        }
        let ns = namespace_of(&svc).unwrap_or("default").to_string();
        let selector = LabelSelector::from_json(&json!({"matchLabels": sel}));
        let mut members: Vec<&Value> = pods
            .iter()
            .filter(|p| namespace_of(p) == Some(&ns) && selector.matches_object(p) && !is_deleting(p))
            .filter(|p| p.pointer("/status/podIP").and_then(Value::as_str).is_some_and(|ip| !ip.is_empty()))
            .collect();
        members.sort_by_key(|p| name_of(p).to_string());
        let ports: Vec<Value> = svc.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
        let address = |p: &Value| {
            let mut a = json!({"ip": p["status"]["podIP"], "targetRef": {"kind": "Pod", "namespace": ns, "name": name_of(p), "uid": uid_of(p)}});
            if let Some(n) = p.pointer("/spec/nodeName") {
                a["nodeName"] = n.clone();
            }
            a
        };
        let ready: Vec<Value> = members.iter().filter(|p| pod_ready(p)).map(|p| address(p)).collect();
        let not_ready: Vec<Value> = members.iter().filter(|p| !pod_ready(p)).map(|p| address(p)).collect();
        let ep_ports: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut e = json!({"port": target_port(p, members.first().copied()), "protocol": p.get("protocol").cloned().unwrap_or(json!("TCP"))});
                if let Some(n) = p.get("name") {
                    e["name"] = n.clone();
                }
                e
            })
            .collect();
        let mut subset = json!({"ports": ep_ports});
        if !ready.is_empty() {
            subset["addresses"] = json!(ready);
        }
        if !not_ready.is_empty() {
            subset["notReadyAddresses"] = json!(not_ready);
        }
        let subsets = if members.is_empty() { json!([]) } else { json!([subset]) };
        let svc_name = name_of(&svc).to_string();
        let endpoints = json!({"apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": svc_name, "namespace": ns, "labels": svc["metadata"].get("labels").cloned().unwrap_or(json!({}))},
            "subsets": subsets});
        upsert(reg, "Endpoints", &ns, endpoints)?;

        let slice_endpoints: Vec<Value> = members
            .iter()
            .map(|p| {
                let r = pod_ready(p);
                json!({"addresses": [p["status"]["podIP"]], "conditions": {"ready": r, "serving": r, "terminating": false},
                    "nodeName": p.pointer("/spec/nodeName"), "targetRef": {"kind": "Pod", "namespace": ns, "name": name_of(p), "uid": uid_of(p)}})
            })
            .collect();
        // kubectl describe dereferences every slice port's name: always set it.
        let slice_ports: Vec<Value> = ep_ports
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["name"] = p.get("name").cloned().unwrap_or(json!(""));
                p
            })
            .collect();
        let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc_name}-{}", &uid_of(&svc)[..5]), "namespace": ns,
                "labels": {"kubernetes.io/service-name": svc_name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                "ownerReferences": [controller_ref(&svc)]},
            "addressType": "IPv4", "endpoints": slice_endpoints, "ports": slice_ports});
        upsert(reg, "EndpointSlice", &ns, slice)?;
    }
    Ok(())
}
