//! helm against the API server: `helm create`'s chart installed, upgraded,
//! rolled back, upgraded with its HorizontalPodAutoscaler and Ingress
//! enabled, and uninstalled with Helm's own Go SDK (PyPI
//! `helm-python-sdk`, the library the helm CLI is built on, in the venv
//! scripts/setup-debian.sh fills). Its release storage is client-go's typed
//! Secrets client, which writes protobuf bodies (Secret updates,
//! DeleteOptions) and asks for protobuf with a JSON fallback. No kubelet:
//! nothing waits for pods to be Ready (no `--wait`).

mod common;

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
