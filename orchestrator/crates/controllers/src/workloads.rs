//! Job (pods up to `parallelism` until `completions` succeed, or Failed
//! after `backoffLimit` failures) and DaemonSet (one pod per Ready node the
//! template fits, replaced one at a time when the template changes).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PodSpec};
use serde_json::{Value, json};

use crate::deployment::template_hash;
use crate::replicaset::{pod_available, pod_from_template};
use crate::scheduler::{node_ready, repels, selected};
use crate::{decode, int, is_deleting, list_all, list_typed, owned_by, pod_active, pod_ready, rt, set_condition};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{
    DeleteOptions, Part, Registry, WriteOptions, name_of, namespace_of, now, uid_of,
};

fn phase(p: &Value) -> &str {
    p.pointer("/status/phase").and_then(Value::as_str).unwrap_or_default()
}

fn write_status(reg: &Registry, kind: &str, o: &Value, status: Value) -> Result<(), ApiError> {
    if o.get("status") == Some(&status) {
        return Ok(());
    }
    reg.modify(rt(kind), namespace_of(o), name_of(o), Part::Status, &WriteOptions::default(), |cur| {
        cur["status"] = status.clone();
        Ok(true)
    })
    .map(|_| ())
}

pub fn reconcile_jobs(reg: &Registry) -> Result<(), ApiError> {
    let pods = list_all(reg, "Pod")?;
    for job in list_all(reg, "Job")? {
        if is_deleting(&job) {
            continue;
        }
        let ns = namespace_of(&job);
        let owned: Vec<&Value> =
            pods.iter().filter(|p| namespace_of(p) == ns && owned_by(p, uid_of(&job)).is_some()).collect();
        let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active: Vec<&&Value> = owned.iter().filter(|p| pod_active(p)).collect();
        let completions = job.pointer("/spec/completions").and_then(Value::as_i64).unwrap_or(1);
        let parallelism = job.pointer("/spec/parallelism").and_then(Value::as_i64).unwrap_or(1);
        let backoff = job.pointer("/spec/backoffLimit").and_then(Value::as_i64).unwrap_or(6);
        let suspended = job.pointer("/spec/suspend") == Some(&json!(true));
        let old = job.get("status").cloned().unwrap_or(json!({}));
        let mut conds = old.get("conditions").cloned().unwrap_or(json!([]));
        let finished = conds
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True");
        let mut status = json!({"startTime": old.get("startTime").cloned().unwrap_or(json!(now())), "active": active.len(),
            "succeeded": succeeded, "failed": failed, "ready": active.iter().filter(|p| pod_ready(p)).count(),
            "terminating": 0, "uncountedTerminatedPods": {}});
        if !finished {
            if succeeded >= completions {
                conds = set_condition(
                    &conds,
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    false,
                );
                conds = set_condition(
                    &conds,
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    false,
                );
                status["completionTime"] = now().into();
            } else if failed > backoff {
                conds = set_condition(
                    &conds,
                    "FailureTarget",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    false,
                );
                conds = set_condition(
                    &conds,
                    "Failed",
                    "True",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    false,
                );
                for p in &active {
                    let _ = reg.delete(rt("Pod"), ns, name_of(p), &DeleteOptions::default());
                }
            } else if !suspended {
                let want = parallelism.min(completions - succeeded) - active.len() as i64;
                for _ in 0..want.max(0) {
                    reg.create(rt("Pod"), ns, pod_from_template(&job), &WriteOptions::default())?;
                }
            }
        } else if let Some(t) = old.get("completionTime") {
            status["completionTime"] = t.clone();
        }
        if conds.as_array().is_some_and(|c| !c.is_empty()) {
            status["conditions"] = conds;
        }
        if let Some(m) = status.as_object_mut() {
            m.retain(|k, v| !(matches!(k.as_str(), "active" | "succeeded" | "failed") && v.as_i64() == Some(0)));
        }
        write_status(reg, "Job", &job, status)?;
    }
    Ok(())
}

/// Whether a DaemonSet's pods belong on `node`: Ready, selected, no taint
/// its template does not tolerate.
fn node_fits(template: Option<&PodSpec>, node: &Node) -> bool {
    let tolerations = template.and_then(|s| s.tolerations.as_deref()).unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    node_ready(node)
        && selected(template.and_then(|s| s.node_selector.as_ref()), node)
        && !taints.iter().any(|t| repels(tolerations, t))
}

fn node_name(n: &Node) -> &str {
    n.metadata.name.as_deref().unwrap_or_default()
}

const REVISION_LABEL: &str = "controller-revision-hash";

pub fn reconcile_daemonsets(reg: &Registry) -> Result<(), ApiError> {
    let pods = list_all(reg, "Pod")?;
    let nodes: Vec<Node> = list_typed(reg)?;
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    for ds in list_all(reg, "DaemonSet")? {
        // The template is hashed and copied as stored JSON (`template_hash`,
        // `pod_from_template`); its scheduling fields are read typed.
        let typed: DaemonSet = decode(ds.clone())?;
        let template = typed.spec.as_ref().and_then(|s| s.template.spec.as_ref());
        if is_deleting(&ds) {
            continue;
        }
        let ns = namespace_of(&ds);
        let hash = template_hash(&ds["spec"]["template"]);
        let owned: Vec<&Value> = pods
            .iter()
            .filter(|p| namespace_of(p) == ns && owned_by(p, uid_of(&ds)).is_some() && pod_active(p))
            .collect();
        let eligible: Vec<&Node> = nodes.iter().filter(|n| node_fits(template, n)).collect();
        let mut outdated_budget = int(&ds, "/spec/updateStrategy/rollingUpdate/maxUnavailable").max(1);
        for node in &eligible {
            let on: Vec<&&Value> = owned.iter().filter(|p| p["spec"]["nodeName"] == node_name(node)).collect();
            if on.is_empty() {
                let mut pod = pod_from_template(&ds);
                pod["spec"]["nodeName"] = node_name(node).into();
                pod["metadata"]["labels"][REVISION_LABEL] = hash.clone().into();
                reg.create(rt("Pod"), ns, pod, &WriteOptions::default())?;
            } else if on.iter().all(|p| p["metadata"]["labels"][REVISION_LABEL] != hash.as_str()) && outdated_budget > 0
            {
                outdated_budget -= 1;
                for p in on {
                    reg.delete(rt("Pod"), ns, name_of(p), &DeleteOptions::default())?;
                }
            }
        }
        // Pods on nodes that no longer qualify go.
        for p in &owned {
            if !eligible.iter().any(|n| p["spec"]["nodeName"] == node_name(n)) {
                reg.delete(rt("Pod"), ns, name_of(p), &DeleteOptions::default())?;
            }
        }
        let on_eligible: Vec<&&Value> =
            owned.iter().filter(|p| eligible.iter().any(|n| p["spec"]["nodeName"] == node_name(n))).collect();
        let min_ready = int(&ds, "/spec/minReadySeconds");
        let mut status = json!({
            "desiredNumberScheduled": eligible.len(),
            "currentNumberScheduled": on_eligible.len(),
            "numberMisscheduled": owned.len() - on_eligible.len(),
            "numberReady": on_eligible.iter().filter(|p| pod_ready(p)).count(),
            "updatedNumberScheduled": on_eligible.iter().filter(|p| p["metadata"]["labels"][REVISION_LABEL] == hash.as_str()).count(),
            "numberAvailable": on_eligible.iter().filter(|p| pod_available(p, min_ready, now_s)).count(),
            "observedGeneration": ds["metadata"]["generation"],
        });
        let unavailable = eligible.len() as i64 - status["numberAvailable"].as_i64().unwrap_or(0);
        status["numberUnavailable"] = unavailable.max(0).into();
        write_status(reg, "DaemonSet", &ds, status)?;
    }
    Ok(())
}
