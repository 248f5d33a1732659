//! CronJob: a Job from `spec.jobTemplate` at each time of `spec.schedule`
//! (in `spec.timeZone`), as upstream's controller v2 does: the most recent
//! missed start runs (unless older than `startingDeadlineSeconds`), more
//! than 100 missed starts raise a warning, `concurrencyPolicy` Forbid skips
//! a start while a Job runs and Replace deletes the running ones first,
//! finished Jobs beyond the history limits go, oldest first. The clock is a
//! parameter ([`reconcile_at`]) so tests move time instead of waiting.

use jiff::Timestamp;
use k8s_openapi::Resource;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job, JobSpec};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::{
    controller_ref, create_typed, event, is_deleting, list_typed, name, owned_by, reference, rt, uid, write_status,
};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::{DeleteOptions, Propagation, Registry};
use orchestrator_apimachinery::schedule::Schedule;

const COMPONENT: &str = "cronjob-controller";
/// The annotation upstream puts on each Job with the time it was due.
const SCHEDULED_AT: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// More missed starts than this raise the TooManyMissedTimes warning.
const MISSED_WARNING: usize = 100;

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    reconcile_at(reg, Timestamp::now())
}

/// Whether a Job finished, and how: `Some(true)` Complete, `Some(false)` Failed.
fn finished(job: &Job) -> Option<bool> {
    let conds = job.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let has = |t: &str| conds.iter().any(|c| c.type_ == t && c.status == "True");
    if has("Complete") {
        Some(true)
    } else if has("Failed") {
        Some(false)
    } else {
        None
    }
}

fn delete_job(reg: &Registry, cj: &CronJob, job: &Job) {
    let opts = DeleteOptions { propagation: Some(Propagation::Background), ..Default::default() };
    let jname = name(&job.metadata);
    match reg.delete(rt(Job::KIND), job.metadata.namespace.as_deref(), jname, &opts) {
        Ok(_) => event(reg, &reference(cj), "Normal", "SuccessfulDelete", &format!("Deleted job {jname}"), COMPONENT),
        Err(e) => tracing::debug!("cronjob: delete job {jname}: {e}"),
    }
}

/// Every start due in `(earliest, now]`: the most recent and how many.
fn missed(schedule: &Schedule, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, usize) {
    let (mut last, mut count, mut t) = (None, 0, earliest);
    while let Some(next) = schedule.next_after(t).filter(|n| *n <= now) {
        last = Some(next);
        count += 1;
        t = next;
    }
    (last, count)
}

pub fn reconcile_at(reg: &Registry, now: Timestamp) -> Result<(), ApiError> {
    let jobs: Vec<Job> = list_typed(reg)?;
    for cj in list_typed::<CronJob>(reg)? {
        if is_deleting(&cj.metadata) {
            continue;
        }
        let Some(spec) = cj.spec.as_ref() else { continue };
        let ns = cj.metadata.namespace.as_deref();
        let mut owned: Vec<&Job> = jobs
            .iter()
            .filter(|j| j.metadata.namespace.as_deref() == ns && owned_by(&j.metadata, uid(&cj.metadata)))
            .filter(|j| !is_deleting(&j.metadata))
            .collect();
        owned.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let old = cj.status.clone().unwrap_or_default();
        let mut status = CronJobStatus {
            last_schedule_time: old.last_schedule_time.clone(),
            last_successful_time: old.last_successful_time.clone(),
            ..Default::default()
        };
        for j in &owned {
            if finished(j) == Some(true)
                && let Some(done) = j.status.as_ref().and_then(|s| s.completion_time.clone())
                && status.last_successful_time.as_ref().is_none_or(|t| t.0 < done.0)
            {
                status.last_successful_time = Some(done);
            }
        }
        let mut active: Vec<&Job> = owned.iter().copied().filter(|j| finished(j).is_none()).collect();

        // History limits: the oldest finished Jobs beyond each limit go.
        for (ok, limit) in [(true, spec.successful_jobs_history_limit), (false, spec.failed_jobs_history_limit)] {
            let done: Vec<&&Job> = owned.iter().filter(|j| finished(j) == Some(ok)).collect();
            let keep = limit.map_or(if ok { 3 } else { 1 }, |l| l.max(0) as usize);
            for j in done.iter().take(done.len().saturating_sub(keep)) {
                delete_job(reg, &cj, j);
            }
        }

        if spec.suspend != Some(true)
            && let Ok(schedule) = Schedule::parse(&spec.schedule, spec.time_zone.as_deref())
        {
            let created = cj.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
            let mut earliest = old.last_schedule_time.as_ref().map_or(created, |t| t.0);
            if let Some(d) = spec.starting_deadline_seconds {
                earliest = earliest.max(now - jiff::SignedDuration::from_secs(d));
            }
            let (due, count) = missed(&schedule, earliest, now);
            if count > MISSED_WARNING {
                let m = format!(
                    "too many missed start times: {count}. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
                );
                event(reg, &reference(&cj), "Warning", "TooManyMissedTimes", &m, COMPONENT);
            }
            if let Some(due) = due {
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if policy == "Forbid" && !active.is_empty() {
                    tracing::debug!("cronjob {}: a Job still runs and concurrencyPolicy is Forbid", name(&cj.metadata));
                } else {
                    if policy == "Replace" {
                        for j in active.drain(..) {
                            delete_job(reg, &cj, j);
                        }
                    }
                    let job = job_for(&cj, &spec.job_template.metadata, spec.job_template.spec.clone(), due);
                    let jname = name(&job.metadata).to_string();
                    match create_typed(reg, ns, &job) {
                        Ok(j) => {
                            let m = format!("Created job {jname}");
                            event(reg, &reference(&cj), "Normal", "SuccessfulCreate", &m, COMPONENT);
                            status.active.get_or_insert_default().push(reference(&j));
                        }
                        // Made by an earlier pass whose status write was lost.
                        Err(e) if e.code == 409 => {}
                        Err(e) => return Err(e),
                    }
                    status.last_schedule_time = Some(Time(due));
                }
            }
        }
        let mut refs: Vec<ObjectReference> = active.iter().map(|j| reference(*j)).collect();
        refs.extend(status.active.take().unwrap_or_default());
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        status.active = (!refs.is_empty()).then_some(refs);
        write_status(reg, &cj, cj.status.as_ref(), status, |o: &mut CronJob| &mut o.status)?;
    }
    Ok(())
}

/// The Job a CronJob starts for the time `due`, named as upstream does
/// (`<cronjob>-<minutes since the epoch>`).
fn job_for(cj: &CronJob, template: &Option<ObjectMeta>, spec: Option<JobSpec>, due: Timestamp) -> Job {
    let t = template.clone().unwrap_or_default();
    let mut annotations = t.annotations.unwrap_or_default();
    let zone = cj.spec.as_ref().and_then(|s| s.time_zone.as_deref()).and_then(|z| jiff::tz::TimeZone::get(z).ok());
    let stamp = match zone {
        Some(z) => due.to_zoned(z).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        None => due.to_string(),
    };
    annotations.insert(SCHEDULED_AT.into(), stamp);
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", name(&cj.metadata), due.as_second() / 60)),
            namespace: cj.metadata.namespace.clone(),
            labels: t.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..Default::default()
        },
        spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_registry as registry;
    use orchestrator_apimachinery::registry::WriteOptions;
    use serde_json::json;

    fn cronjob(reg: &Registry, name: &str, extra: serde_json::Value) -> Timestamp {
        let mut spec = json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let o = json!({"metadata": {"name": name}, "spec": spec});
        let made = reg.create(rt("CronJob"), Some("default"), o, &WriteOptions::default()).unwrap().object;
        made["metadata"]["creationTimestamp"].as_str().unwrap().parse().unwrap()
    }

    fn jobs(reg: &Registry) -> Vec<Job> {
        let mut js: Vec<Job> = list_typed(reg).unwrap();
        js.retain(|j| !is_deleting(&j.metadata));
        js.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        js
    }

    fn finish(reg: &Registry, job: &Job, ty: &str) {
        let n = name(&job.metadata);
        crate::modify_typed(
            reg,
            Some("default"),
            n,
            orchestrator_apimachinery::registry::Part::Status,
            |j: &mut Job| {
                let s = j.status.get_or_insert_default();
                s.completion_time = Some(crate::time_now());
                s.conditions = Some(vec![k8s_openapi::api::batch::v1::JobCondition {
                    type_: ty.into(),
                    status: "True".into(),
                    ..Default::default()
                }]);
                true
            },
        )
        .unwrap();
    }

    fn minutes(m: i64) -> jiff::SignedDuration {
        jiff::SignedDuration::from_mins(m)
    }

    fn cj_status(reg: &Registry, name: &str) -> CronJobStatus {
        let o: CronJob =
            orchestrator_apimachinery::typed::decode(reg.get(rt("CronJob"), Some("default"), name).unwrap(), "CronJob")
                .unwrap();
        o.status.unwrap_or_default()
    }

    #[test]
    fn starts_on_schedule_with_allow_and_records_status() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let t0 = cronjob(&reg, "tick", json!({}));
        reconcile_at(&reg, t0).unwrap();
        assert!(jobs(&reg).is_empty(), "nothing is due at creation");
        // Ten minutes on: two starts were due; only the most recent runs.
        let later = t0 + minutes(10);
        reconcile_at(&reg, later).unwrap();
        let js = jobs(&reg);
        assert_eq!(js.len(), 1);
        let due = Schedule::parse("*/5 * * * *", None).unwrap();
        let (last, _) = missed(&due, t0, later);
        let last = last.unwrap();
        assert_eq!(js[0].metadata.name.as_deref(), Some(format!("tick-{}", last.as_second() / 60).as_str()));
        assert_eq!(js[0].metadata.annotations.as_ref().unwrap()[SCHEDULED_AT], last.to_string());
        let st = cj_status(&reg, "tick");
        assert_eq!(st.last_schedule_time.map(|t| t.0), Some(last));
        assert_eq!(st.active.unwrap().len(), 1);
        // The same time again starts nothing new; the next slot starts a second (Allow).
        reconcile_at(&reg, later).unwrap();
        assert_eq!(jobs(&reg).len(), 1);
        reconcile_at(&reg, last + minutes(5)).unwrap();
        assert_eq!(jobs(&reg).len(), 2);
        finish(&reg, &jobs(&reg)[0], "Complete");
        reconcile_at(&reg, last + minutes(5)).unwrap();
        let st = cj_status(&reg, "tick");
        assert!(st.last_successful_time.is_some());
        assert_eq!(st.active.unwrap().len(), 1);
    }

    #[test]
    fn forbid_skips_and_replace_deletes_the_running_job() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let t0 = cronjob(&reg, "solo", json!({"concurrencyPolicy": "Forbid"}));
        reconcile_at(&reg, t0 + minutes(5)).unwrap();
        reconcile_at(&reg, t0 + minutes(10)).unwrap();
        assert_eq!(jobs(&reg).len(), 1, "Forbid: no second Job while the first runs");
        let t1 = cronjob(&reg, "swap", json!({"concurrencyPolicy": "Replace"}));
        reconcile_at(&reg, t1 + minutes(5)).unwrap();
        let first: Vec<String> = jobs(&reg).iter().filter_map(|j| j.metadata.name.clone()).collect();
        reconcile_at(&reg, t1 + minutes(10)).unwrap();
        let swaps: Vec<String> =
            jobs(&reg).iter().filter_map(|j| j.metadata.name.clone()).filter(|n| n.starts_with("swap-")).collect();
        assert_eq!(swaps.len(), 1, "Replace: the running Job went: {swaps:?}");
        assert!(!first.contains(&swaps[0]), "a new Job replaced the old one");
    }

    #[test]
    fn history_limits_suspend_and_starting_deadline() {
        let d = tempfile::tempdir().unwrap();
        let reg = registry(&d);
        let t0 = cronjob(&reg, "hist", json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 0}));
        for k in 1..=3 {
            reconcile_at(&reg, t0 + minutes(5 * k)).unwrap();
            let js = jobs(&reg);
            finish(&reg, js.last().unwrap(), if k == 3 { "Failed" } else { "Complete" });
        }
        reconcile_at(&reg, t0 + minutes(15)).unwrap();
        let js = jobs(&reg);
        assert_eq!(js.len(), 1, "one Complete kept, the Failed one and the older Complete gone");
        assert_eq!(finished(&js[0]), Some(true));

        let t1 = cronjob(&reg, "paused", json!({"suspend": true}));
        reconcile_at(&reg, t1 + minutes(30)).unwrap();
        assert!(!jobs(&reg).iter().any(|j| name(&j.metadata).starts_with("paused-")));

        // Long after the last start with a short deadline: the start is missed only if
        // the deadline window holds no due time; 1000 minutes of misses without one warn.
        let t2 = cronjob(&reg, "late", json!({"schedule": "* * * * *"}));
        reconcile_at(&reg, t2 + minutes(1000)).unwrap();
        let events: Vec<k8s_openapi::api::core::v1::Event> = list_typed(&reg).unwrap();
        assert!(
            events.iter().any(|e| e.reason.as_deref() == Some("TooManyMissedTimes")
                && e.message.as_deref().is_some_and(|m| m.starts_with("too many missed start times: "))),
            "the warning event"
        );
        let t3 = cronjob(&reg, "window", json!({"schedule": "0 0 1 1 *", "startingDeadlineSeconds": 10}));
        reconcile_at(&reg, t3 + minutes(60 * 24 * 400)).unwrap();
        assert!(
            !jobs(&reg).iter().any(|j| name(&j.metadata).starts_with("window-")),
            "the yearly start is older than the 10 s deadline"
        );
    }
}
