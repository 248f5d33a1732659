//! Ephemeral containers (`kubectl debug`): the containers a user adds to a
//! running pod through `pods/ephemeralcontainers`. Each starts once in the
//! pod's sandbox and is never restarted (upstream); one with a
//! `targetContainerName` joins that container's PID namespace (CRI's
//! `NamespaceMode::TARGET`), so it sees the target's processes. Their
//! statuses are `status.ephemeralContainerStatuses`, never ready, and
//! count neither for the phase nor for readiness.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, EphemeralContainer, Pod};

use crate::cri::v1;
use crate::pod::{self, Observed, Waiting};

/// The container an ephemeral container runs: the same fields, without
/// the target (which is not a container's field).
fn as_container(e: &EphemeralContainer) -> Container {
    Container {
        args: e.args.clone(),
        command: e.command.clone(),
        env: e.env.clone(),
        env_from: e.env_from.clone(),
        image: e.image.clone(),
        image_pull_policy: e.image_pull_policy.clone(),
        lifecycle: e.lifecycle.clone(),
        name: e.name.clone(),
        security_context: e.security_context.clone(),
        stdin: e.stdin,
        stdin_once: e.stdin_once,
        termination_message_path: e.termination_message_path.clone(),
        termination_message_policy: e.termination_message_policy.clone(),
        tty: e.tty,
        volume_devices: e.volume_devices.clone(),
        volume_mounts: e.volume_mounts.clone(),
        working_dir: e.working_dir.clone(),
        // Ports, probes, resources and restart policies are refused on
        // ephemeral containers by the API server's validation.
        ..Default::default()
    }
}

fn ephemeral(p: &Pod) -> impl Iterator<Item = &EphemeralContainer> {
    p.spec.iter().flat_map(|s| s.ephemeral_containers.iter().flatten())
}

/// The ephemeral containers of a pod's spec, as the containers they run.
pub fn containers(p: &Pod) -> Vec<Container> {
    ephemeral(p).map(as_container).collect()
}

/// Joins the PID namespace of the container `target_id` (CRI `NamespaceMode::TARGET`).
pub fn share_pid(config: &mut v1::ContainerConfig, target_id: &str) {
    let ctx = config.linux.get_or_insert_with(Default::default).security_context.get_or_insert_with(Default::default);
    let ns = ctx.namespace_options.get_or_insert_with(Default::default);
    ns.pid = v1::NamespaceMode::Target as i32;
    ns.target_id = target_id.to_string();
}

/// The running attempt of the container an ephemeral container targets, when it names one.
pub fn target_of<'a>(
    target: Option<&str>,
    observed: &'a HashMap<String, Vec<Observed>>,
) -> Result<Option<&'a str>, Waiting> {
    let Some(target) = target.filter(|t| !t.is_empty()) else { return Ok(None) };
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
pub fn statuses(mut all: Vec<ContainerStatus>) -> Vec<ContainerStatus> {
    for s in &mut all {
        s.ready = false;
    }
    all
}

impl crate::Kubelet {
    /// Starts the ephemeral containers of `p` the runtime has not seen in
    /// `sandbox_id` (one attempt each); why one could not start goes to `waiting`.
    pub(crate) async fn start_ephemeral(
        &self,
        p: &Pod,
        sandbox_id: &str,
        sandbox_cfg: &v1::PodSandboxConfig,
        observed: &HashMap<String, Vec<Observed>>,
        vols: &BTreeMap<String, PathBuf>,
        waiting: &mut HashMap<String, Waiting>,
    ) {
        for e in ephemeral(p) {
            if observed.contains_key(&e.name) {
                continue;
            }
            let started = match target_of(e.target_container_name.as_deref(), observed) {
                Ok(target) => self.start_container(p, &as_container(e), sandbox_id, sandbox_cfg, 0, vols, target).await,
                Err(w) => Err(w),
            };
            if let Err(w) = started {
                // Tried again shortly (a pull back-off keeps its own, later, time).
                let soon = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
                self.remember(pod::ids(p).2, |m| m.due = Some(m.due.map_or(soon, |d| d.max(soon))));
                waiting.insert(e.name.clone(), w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let running = observed(v1::ContainerState::ContainerRunning);
        assert_eq!(target_of(Some("app"), &running), Ok(Some("abc")));
        let exited = observed(v1::ContainerState::ContainerExited);
        assert_eq!(target_of(Some("app"), &exited).unwrap_err().message, "target container \"app\" is not running");
        assert_eq!(target_of(None, &exited), Ok(None));
        let mut cfg = v1::ContainerConfig::default();
        share_pid(&mut cfg, "abc");
        let ns = cfg.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!((ns.pid, ns.target_id.as_str()), (v1::NamespaceMode::Target as i32, "abc"));
        let ready = ContainerStatus { name: "debugger".into(), ready: true, ..Default::default() };
        assert_eq!(statuses(vec![ready]), vec![ContainerStatus { name: "debugger".into(), ..Default::default() }]);
    }
}
