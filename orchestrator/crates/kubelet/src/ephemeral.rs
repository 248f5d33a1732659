//! Ephemeral containers (`kubectl debug`): the containers a user adds to a
//! running pod through `pods/ephemeralcontainers`. Each starts once in the
//! pod's sandbox and is never restarted (upstream); one with a
//! `targetContainerName` joins that container's PID namespace (CRI's
//! `NamespaceMode::TARGET`), so it sees the target's processes. Their
//! statuses are `status.ephemeralContainerStatuses`, never ready, and
//! count neither for the phase nor for readiness.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde_json::Value;

use crate::cri::v1;
use crate::pod::{Observed, Waiting};
use orchestrator_apimachinery::registry::str_at;

/// The ephemeral containers of a pod's spec.
pub fn specs(p: &Value) -> &[Value] {
    p.pointer("/spec/ephemeralContainers").and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// Joins the PID namespace of the container `target_id` (CRI `NamespaceMode::TARGET`).
pub fn share_pid(config: &mut v1::ContainerConfig, target_id: &str) {
    let ctx = config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    let ns = ctx.namespace_options.get_or_insert_with(Default::default);
    ns.pid = v1::NamespaceMode::Target as i32;
    ns.target_id = target_id.to_string();
}

/// The running attempt of the container an ephemeral container targets, when it names one.
pub fn target_of<'a>(c: &Value, observed: &'a HashMap<String, Vec<Observed>>) -> Result<Option<&'a str>, Waiting> {
    let target = str_at(c, "/targetContainerName");
    if target.is_empty() {
        return Ok(None);
    }
    let running =
        observed.get(target).and_then(|h| h.first()).filter(|o| o.state == v1::ContainerState::ContainerRunning);
    match running {
        Some(o) => Ok(Some(o.id.as_str())),
        None => Err(Waiting {
            reason: "ContainerCreating".into(),
            message: format!("target container \"{target}\" is not running"),
        }),
    }
}

/// The statuses of a pod's ephemeral containers from their `container_status`es: never ready.
pub fn statuses(mut all: Vec<Value>) -> Vec<Value> {
    for s in &mut all {
        s["ready"] = false.into();
    }
    all
}

impl crate::Kubelet {
    /// Starts the ephemeral containers of `p` the runtime has not seen in
    /// `sandbox_id` (one attempt each); why one could not start goes to `waiting`.
    pub(crate) async fn start_ephemeral(
        &self,
        p: &Value,
        sandbox_id: &str,
        sandbox_cfg: &v1::PodSandboxConfig,
        observed: &HashMap<String, Vec<Observed>>,
        vols: &BTreeMap<String, PathBuf>,
        waiting: &mut HashMap<String, Waiting>,
    ) {
        for c in specs(p) {
            let name = str_at(c, "/name");
            if observed.contains_key(name) {
                continue;
            }
            let started = match target_of(c, observed) {
                Ok(target) => self.start_container(p, c, sandbox_id, sandbox_cfg, 0, vols, target).await,
                Err(w) => Err(w),
            };
            if let Err(w) = started {
                // Tried again shortly (a pull back-off keeps its own, later, time).
                let soon = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                self.remember(str_at(p, "/metadata/uid"), |m| m.due = Some(m.due.map_or(soon, |d| d.max(soon))));
                waiting.insert(name.to_string(), w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn observed(state: v1::ContainerState) -> HashMap<String, Vec<Observed>> {
        let o = Observed {
            id: "abc".into(),
            attempt: 0,
            state,
            created_at: 0,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: String::new(),
            image_ref: String::new(),
        };
        HashMap::from([("app".to_string(), vec![o])])
    }

    #[test]
    fn a_target_shares_its_pid_namespace_once_running() {
        let c = json!({"name": "debugger", "image": "busybox", "targetContainerName": "app"});
        let running = observed(v1::ContainerState::ContainerRunning);
        assert_eq!(target_of(&c, &running), Ok(Some("abc")));
        let exited = observed(v1::ContainerState::ContainerExited);
        assert_eq!(target_of(&c, &exited).unwrap_err().message, "target container \"app\" is not running");
        assert_eq!(target_of(&json!({"name": "d"}), &exited), Ok(None));
        let mut cfg = v1::ContainerConfig::default();
        share_pid(&mut cfg, "abc");
        let ns = cfg.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!((ns.pid, ns.target_id.as_str()), (v1::NamespaceMode::Target as i32, "abc"));
        assert_eq!(statuses(vec![json!({"ready": true})]), vec![json!({"ready": false})]);
    }
}
