//! helm against the API server: `helm create`'s chart installed, upgraded,
//! rolled back, upgraded with its HorizontalPodAutoscaler and Ingress
//! enabled, and uninstalled with Helm's own Go SDK (PyPI
//! `helm-python-sdk`, the library the helm CLI is built on, in the venv
//! scripts/setup-debian.sh fills). Its release storage is client-go's typed
//! Secrets client, which writes protobuf bodies (Secret updates,
//! DeleteOptions) and asks for protobuf with a JSON fallback. No kubelet:
//! nothing waits for pods to be Ready (no `--wait`).
//!
//! Then, on a node running pods (containerd, runc, the kubelet), a chart
//! written for the test (`tests/helm/stateful`): a StatefulSet with a claim
//! per replica, a CronJob, a ServiceAccount with a Role and RoleBinding, a
//! CRD in `crds/` and one of its objects, installed, upgraded (a second
//! replica, a new schedule), refused an object its CRD's schema rejects,
//! rolled back and uninstalled, install and upgrade waiting with helm 4's
//! watcher (kstatus over watches) for pods Ready and claims Bound.

mod common;
mod kubelet_support;

#[test]
fn helm_installs_upgrades_rolls_back_and_uninstalls_a_chart() {
    let (Some(server), Some(py)) = (common::Server::start(), common::venv_python("helm_python")) else { return };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/helm/lifecycle.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .arg(&server.kubectl)
        .arg(server.kubeconfig())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm lifecycle failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("helm: ok"), "{stdout}");
}

#[test]
fn helm_manages_a_stateful_chart_with_a_cronjob_rbac_and_a_crd_on_a_node() {
    let Some(c) = kubelet_support::Cluster::start() else { return };
    let Some(py) = common::venv_python("helm_python") else { return };
    let dir = env!("CARGO_MANIFEST_DIR");
    let out = std::process::Command::new(py)
        .arg(format!("{dir}/tests/helm/stateful.py"))
        .arg(&c.kubectl)
        .arg(c.data.path().join("admin.kubeconfig"))
        .arg(format!("{dir}/tests/helm/stateful"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "helm stateful chart failed:\n{stdout}\n{stderr}\n{}", c.server_log());
    assert!(stdout.contains("helm stateful: ok"), "{stdout}");
}
