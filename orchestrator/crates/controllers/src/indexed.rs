//! Indexed Jobs (`completionMode: Indexed`): each pod carries its index
//! (annotation and label `batch.kubernetes.io/job-completion-index`, env
//! `JOB_COMPLETION_INDEX`, hostname `<job>-<index>`); the Job is complete
//! when every index below `completions` has a succeeded pod, and
//! `status.completedIndexes` lists them as upstream does (`1,3-5`).

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, Pod};

use crate::phase;
use crate::replicaset::pod_from_template;

const INDEX: &str = "batch.kubernetes.io/job-completion-index";

pub(crate) fn is_indexed(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.completion_mode.as_deref()) == Some("Indexed")
}

pub(crate) fn index_of(p: &Pod) -> Option<i64> {
    p.metadata.annotations.as_ref()?.get(INDEX)?.parse().ok()
}

/// The indexes below `completions` with a succeeded pod.
pub(crate) fn completed(pods: &[&Pod], completions: i64) -> BTreeSet<i64> {
    pods.iter().filter(|p| phase(p) == "Succeeded").filter_map(|p| index_of(p)).filter(|i| *i < completions).collect()
}

/// `0,2-4`: runs of consecutive indexes as ranges.
pub(crate) fn format(set: &BTreeSet<i64>) -> String {
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for &i in set {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == i => *end = i,
            _ => runs.push((i, i)),
        }
    }
    let run = |(a, b): (i64, i64)| if a == b { a.to_string() } else { format!("{a}-{b}") };
    runs.into_iter().map(run).collect::<Vec<_>>().join(",")
}

/// The pod of index `i`.
pub(crate) fn pod(job: &Job, i: i64) -> Pod {
    let mut pod = pod_from_template(job, job.spec.as_ref().map(|s| &s.template));
    let job_name = crate::name(&job.metadata);
    pod.metadata.generate_name = Some(format!("{job_name}-{i}-"));
    pod.metadata.annotations.get_or_insert_default().insert(INDEX.into(), i.to_string());
    pod.metadata.labels.get_or_insert_default().insert(INDEX.into(), i.to_string());
    let spec = pod.spec.get_or_insert_default();
    spec.hostname = Some(format!("{job_name}-{i}"));
    for c in &mut spec.containers {
        let env = EnvVar { name: "JOB_COMPLETION_INDEX".into(), value: Some(i.to_string()), value_from: None };
        c.env.get_or_insert_default().push(env);
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_print_as_ranges() {
        assert_eq!(format(&BTreeSet::new()), "");
        assert_eq!(format(&[0, 2, 3, 4, 7].into_iter().collect()), "0,2-4,7");
    }
}
