//! Job (pods up to `parallelism` until `completions` succeed, or Failed
//! after `backoffLimit` failures or past `activeDeadlineSeconds`; deleted
//! with its pods `ttlSecondsAfterFinished` after it finished; the clock is
//! a parameter of [`reconcile_jobs_at`]) and DaemonSet (one pod per Ready node the
//! template fits, replaced one at a time when the template changes).

use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::batch::v1::{Job, JobStatus, UncountedTerminatedPods};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::deployment::template_hash;
use crate::indexed;
use crate::replicaset::{labels, nonzero, pod_available, pod_from_template};
use crate::scheduler::{node_ready, repels, selected};
use crate::{
    create_typed, is_deleting, list_typed, name, node_name, owned_by, phase, pod_active, pod_ready, rt, set_condition,
    uid, write_status,
};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Propagation, Registry};

fn delete_pod(reg: &Registry, p: &Pod) -> Result<(), ApiError> {
    reg.delete(rt(Pod::KIND), p.metadata.namespace.as_deref(), name(&p.metadata), &DeleteOptions::default()).map(|_| ())
}

pub fn reconcile_jobs(reg: &Registry) -> Result<(), ApiError> {
    reconcile_jobs_at(reg, jiff::Timestamp::now())
}

/// When a finished Job finished: its completion time, or when it failed.
fn finished_at(job: &Job) -> Option<jiff::Timestamp> {
    let status = job.status.as_ref()?;
    let failed = status.conditions.iter().flatten().find(|c| c.type_ == "Failed" && c.status == "True");
    status.completion_time.as_ref().or(failed.and_then(|c| c.last_transition_time.as_ref())).map(|t| t.0)
}

/// The TTL-after-finished controller: a finished Job whose
/// `ttlSecondsAfterFinished` passed is deleted with its pods (foreground,
/// as upstream).
fn expire(reg: &Registry, job: &Job, now: jiff::Timestamp) -> Result<bool, ApiError> {
    let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else { return Ok(false) };
    let Some(done) = finished_at(job) else { return Ok(false) };
    if done + jiff::SignedDuration::from_secs(i64::from(ttl)) > now {
        return Ok(false);
    }
    let opts = DeleteOptions { propagation: Some(Propagation::Foreground), ..Default::default() };
    reg.delete(rt(Job::KIND), job.metadata.namespace.as_deref(), name(&job.metadata), &opts)?;
    Ok(true)
}

pub fn reconcile_jobs_at(reg: &Registry, now: jiff::Timestamp) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    for job in list_typed::<Job>(reg)? {
        if is_deleting(&job.metadata) || expire(reg, &job, now)? {
            continue;
        }
        let ns = job.metadata.namespace.as_deref();
        let owned: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == ns && owned_by(&p.metadata, uid(&job.metadata)))
            .collect();
        let pods_succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active: Vec<&Pod> = owned.iter().copied().filter(|p| pod_active(p)).collect();
        let spec = job.spec.as_ref();
        let completions = spec.and_then(|s| s.completions).map_or(1, i64::from);
        let parallelism = spec.and_then(|s| s.parallelism).map_or(1, i64::from);
        let backoff = spec.and_then(|s| s.backoff_limit).map_or(6, i64::from);
        let suspended = spec.and_then(|s| s.suspend) == Some(true);
        let done_indexes = indexed::is_indexed(&job).then(|| indexed::completed(&owned, completions));
        let succeeded = done_indexes.as_ref().map_or(pods_succeeded, |d| d.len() as i64);
        let old = job.status.clone().unwrap_or_default();
        let mut conds = old.conditions.clone().unwrap_or_default();
        let finished = conds.iter().any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True");
        let start = old.start_time.clone().unwrap_or(Time(now));
        let deadline = spec.and_then(|s| s.active_deadline_seconds);
        let overdue = !suspended && deadline.is_some_and(|d| start.0 + jiff::SignedDuration::from_secs(d) <= now);
        let mut status = JobStatus {
            start_time: Some(start),
            active: nonzero(active.len() as i64),
            succeeded: nonzero(pods_succeeded),
            completed_indexes: done_indexes.as_ref().map(indexed::format),
            failed: nonzero(failed),
            ready: Some(active.iter().filter(|p| pod_ready(p)).count() as i32),
            terminating: Some(0),
            uncounted_terminated_pods: Some(UncountedTerminatedPods::default()),
            ..Default::default()
        };
        if !finished {
            if succeeded >= completions {
                let msg = "Reached expected number of succeeded pods";
                set_condition(&mut conds, "SuccessCriteriaMet", "True", "CompletionsReached", msg, false);
                set_condition(&mut conds, "Complete", "True", "CompletionsReached", msg, false);
                status.completion_time = Some(Time(now));
            } else if failed > backoff || overdue {
                let (reason, msg) = if overdue {
                    ("DeadlineExceeded", "Job was active longer than specified deadline")
                } else {
                    ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
                };
                set_condition(&mut conds, "FailureTarget", "True", reason, msg, false);
                set_condition(&mut conds, "Failed", "True", reason, msg, false);
                for p in &active {
                    let _ = delete_pod(reg, p);
                }
            } else if !suspended {
                let want = parallelism.min(completions - succeeded) - active.len() as i64;
                let template = spec.map(|s| &s.template);
                if let Some(done) = &done_indexes {
                    let running: Vec<i64> = active.iter().filter_map(|p| indexed::index_of(p)).collect();
                    let missing = (0..completions).filter(|i| !done.contains(i) && !running.contains(i));
                    for i in missing.take(want.max(0) as usize) {
                        create_typed(reg, ns, &indexed::pod(&job, i))?;
                    }
                } else {
                    for _ in 0..want.max(0) {
                        create_typed(reg, ns, &pod_from_template(&job, template))?;
                    }
                }
            }
        } else {
            status.completion_time = old.completion_time.clone();
        }
        if !conds.is_empty() {
            status.conditions = Some(conds);
        }
        write_status(reg, &job, job.status.as_ref(), status, |o: &mut Job| &mut o.status)?;
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

const REVISION_LABEL: &str = "controller-revision-hash";

pub fn reconcile_daemonsets(reg: &Registry) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    let nodes: Vec<Node> = list_typed(reg)?;
    let now_s = time::OffsetDateTime::now_utc().unix_timestamp();
    for ds in list_typed::<DaemonSet>(reg)? {
        if is_deleting(&ds.metadata) {
            continue;
        }
        let Some(spec) = ds.spec.as_ref() else { continue };
        let ns = ds.metadata.namespace.as_deref();
        let hash = template_hash(&spec.template);
        let current = |p: &Pod| labels(&p.metadata).get(REVISION_LABEL) == Some(&hash);
        let owned: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == ns && owned_by(&p.metadata, uid(&ds.metadata)))
            .filter(|p| pod_active(p))
            .collect();
        let eligible: Vec<&str> = nodes
            .iter()
            .filter(|n| node_fits(spec.template.spec.as_ref(), n))
            .map(|n| n.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let on_node = |p: &Pod, node: &str| node_name(p) == Some(node);
        // A number only: a percentage counts as one, as before.
        let budget = spec.update_strategy.as_ref().and_then(|u| u.rolling_update.as_ref());
        let mut outdated_budget = match budget.and_then(|r| r.max_unavailable.as_ref()) {
            Some(IntOrString::Int(n)) => i64::from(*n),
            _ => 0,
        }
        .max(1);
        for node in &eligible {
            let on: Vec<&&Pod> = owned.iter().filter(|p| on_node(p, node)).collect();
            if on.is_empty() {
                let mut pod = pod_from_template(&ds, Some(&spec.template));
                pod.spec.get_or_insert_default().node_name = Some(node.to_string());
                pod.metadata.labels.get_or_insert_default().insert(REVISION_LABEL.into(), hash.clone());
                create_typed(reg, ns, &pod)?;
            } else if on.iter().all(|p| !current(p)) && outdated_budget > 0 {
                outdated_budget -= 1;
                for p in on {
                    delete_pod(reg, p)?;
                }
            }
        }
        // Pods on nodes that no longer qualify go.
        for p in &owned {
            if !eligible.iter().any(|n| on_node(p, n)) {
                delete_pod(reg, p)?;
            }
        }
        let on_eligible: Vec<&&Pod> = owned.iter().filter(|p| eligible.iter().any(|n| on_node(p, n))).collect();
        let min_ready = spec.min_ready_seconds.map_or(0, i64::from);
        let count = |f: &dyn Fn(&Pod) -> bool| on_eligible.iter().filter(|p| f(p)).count() as i32;
        let available = count(&|p| pod_available(p, min_ready, now_s));
        let status = DaemonSetStatus {
            desired_number_scheduled: eligible.len() as i32,
            current_number_scheduled: on_eligible.len() as i32,
            number_misscheduled: (owned.len() - on_eligible.len()) as i32,
            number_ready: count(&pod_ready),
            updated_number_scheduled: Some(count(&current)),
            number_available: Some(available),
            number_unavailable: Some((eligible.len() as i32 - available).max(0)),
            observed_generation: ds.metadata.generation,
            ..Default::default()
        };
        write_status(reg, &ds, ds.status.as_ref(), status, |o: &mut DaemonSet| &mut o.status)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modify_typed;
    use crate::test_registry as registry;
    use jiff::{SignedDuration, Timestamp};
    use orchestrator_apimachinery::registry::{Part, WriteOptions};
    use serde_json::json;

    fn job(reg: &Registry, name: &str, spec: serde_json::Value) {
        let mut o = json!({"metadata": {"name": name}, "spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
        o["spec"].as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        reg.create(rt(Job::KIND), Some("default"), o, &WriteOptions::default()).unwrap();
    }

    fn get(reg: &Registry, name: &str) -> Option<Job> {
        let o = reg.get(rt(Job::KIND), Some("default"), name).ok()?;
        Some(orchestrator_apimachinery::typed::decode(o, "Job").unwrap())
    }

    fn failed_reason(reg: &Registry, name: &str) -> Option<String> {
        let j = get(reg, name)?;
        let conds = j.status?.conditions?;
        conds.into_iter().find(|c| c.type_ == "Failed" && c.status == "True").and_then(|c| c.reason)
    }

    fn pods_of(reg: &Registry, job: &str) -> Vec<Pod> {
        let mut ps: Vec<Pod> = list_typed(reg).unwrap();
        ps.retain(|p| !is_deleting(&p.metadata) && name(&p.metadata).starts_with(&format!("{job}-")));
        ps
    }

    fn end_pods(reg: &Registry, job: &str, phase: &str) {
        for p in pods_of(reg, job) {
            modify_typed(reg, Some("default"), name(&p.metadata), Part::Status, |p: &mut Pod| {
                p.status.get_or_insert_default().phase = Some(phase.into());
                true
            })
            .unwrap();
        }
    }

    #[test]
    fn backoff_limit_and_active_deadline_fail_the_job() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let now = Timestamp::now();
        job(&reg, "flaky", json!({"backoffLimit": 1}));
        for _ in 0..2 {
            reconcile_jobs_at(&reg, now).unwrap();
            assert_eq!(failed_reason(&reg, "flaky"), None);
            assert_eq!(pods_of(&reg, "flaky").iter().filter(|p| pod_active(p)).count(), 1);
            end_pods(&reg, "flaky", "Failed");
        }
        reconcile_jobs_at(&reg, now).unwrap();
        assert_eq!(failed_reason(&reg, "flaky").as_deref(), Some("BackoffLimitExceeded"));

        job(&reg, "slow", json!({"activeDeadlineSeconds": 30}));
        reconcile_jobs_at(&reg, now).unwrap();
        reconcile_jobs_at(&reg, now + SignedDuration::from_secs(29)).unwrap();
        assert_eq!(failed_reason(&reg, "slow"), None);
        reconcile_jobs_at(&reg, now + SignedDuration::from_secs(31)).unwrap();
        assert_eq!(failed_reason(&reg, "slow").as_deref(), Some("DeadlineExceeded"));
        assert!(pods_of(&reg, "slow").is_empty(), "the running pod is deleted");
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let now = Timestamp::now();
        job(&reg, "idx", json!({"completionMode": "Indexed", "completions": 3, "parallelism": 2}));
        reconcile_jobs_at(&reg, now).unwrap();
        let index = |p: &Pod| {
            let env = &p.spec.as_ref().unwrap().containers[0].env.as_ref().unwrap()[0];
            assert_eq!(env.name, "JOB_COMPLETION_INDEX");
            env.value.clone().unwrap()
        };
        let mut first: Vec<String> = pods_of(&reg, "idx").iter().map(index).collect();
        first.sort();
        assert_eq!(first, ["0", "1"]);
        end_pods(&reg, "idx", "Succeeded");
        reconcile_jobs_at(&reg, now).unwrap();
        let j = get(&reg, "idx").unwrap();
        assert_eq!(j.status.as_ref().unwrap().completed_indexes.as_deref(), Some("0-1"));
        let third: Vec<String> = pods_of(&reg, "idx").iter().filter(|p| pod_active(p)).map(index).collect();
        assert_eq!(third, ["2"]);
        end_pods(&reg, "idx", "Succeeded");
        reconcile_jobs_at(&reg, now).unwrap();
        let st = get(&reg, "idx").unwrap().status.unwrap();
        assert_eq!(st.completed_indexes.as_deref(), Some("0-2"));
        assert!(st.conditions.unwrap().iter().any(|c| c.type_ == "Complete" && c.status == "True"));
    }

    #[test]
    fn finished_jobs_go_after_their_ttl() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let now = Timestamp::now();
        job(&reg, "brief", json!({"ttlSecondsAfterFinished": 60}));
        job(&reg, "kept", json!({}));
        reconcile_jobs_at(&reg, now).unwrap();
        end_pods(&reg, "brief", "Succeeded");
        end_pods(&reg, "kept", "Succeeded");
        reconcile_jobs_at(&reg, now).unwrap();
        assert!(get(&reg, "brief").unwrap().status.unwrap().completion_time.is_some());
        reconcile_jobs_at(&reg, now + SignedDuration::from_secs(59)).unwrap();
        assert!(get(&reg, "brief").is_some_and(|j| !is_deleting(&j.metadata)));
        reconcile_jobs_at(&reg, now + SignedDuration::from_secs(61)).unwrap();
        for _ in 0..3 {
            crate::gc::reconcile(&reg).unwrap();
        }
        assert!(get(&reg, "brief").is_none(), "the Job is gone");
        assert!(pods_of(&reg, "brief").is_empty(), "with its pods");
        assert!(get(&reg, "kept").is_some(), "no TTL: kept");
    }
}
