//! ReplicationController (core v1): the ReplicaSet logic (`keep_replicas`)
//! over the older kind, whose selector is a plain map of labels; its
//! status carries the same counts.

use k8s_openapi::api::core::v1::{Pod, ReplicationController, ReplicationControllerStatus};

use crate::replicaset::{ReplicaSpec, keep_replicas};
use crate::{list_typed, write_status};
use orchestrator_apimachinery::errors::ApiError;
use orchestrator_apimachinery::registry::Registry;
use orchestrator_apimachinery::selector::LabelSelector;

pub fn reconcile(reg: &Registry) -> Result<(), ApiError> {
    let pods: Vec<Pod> = list_typed(reg)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for rc in list_typed::<ReplicationController>(reg)? {
        let spec = rc.spec.as_ref();
        let selector = spec.and_then(|s| s.selector.as_ref()).map(|m| serde_json::json!(m)).unwrap_or_default();
        let want = ReplicaSpec {
            selector: LabelSelector::of_workload("ReplicationController", &selector),
            replicas: spec.and_then(|s| s.replicas).map_or(0, i64::from),
            template: spec.and_then(|s| s.template.as_ref()),
            min_ready: spec.and_then(|s| s.min_ready_seconds).map_or(0, i64::from),
        };
        let got = keep_replicas(reg, &pods, &rc, &want, now)?;
        let status = ReplicationControllerStatus {
            replicas: got.replicas,
            fully_labeled_replicas: got.fully_labeled,
            ready_replicas: got.ready,
            available_replicas: got.available,
            observed_generation: rc.metadata.generation.filter(|g| *g != 0),
            ..Default::default()
        };
        write_status(reg, &rc, rc.status.as_ref(), status, |o: &mut ReplicationController| &mut o.status)?;
    }
    Ok(())
}
