//! ServiceAccount tokens in pods on a real containerd: the admission's
//! `kube-api-access-*` volume and a projected volume with all four kinds
//! of source, written by the kubelet (the token through TokenRequest,
//! bound to the pod), the in-cluster environment and the `kubernetes`
//! Service from the pod. The token a pod reads is then used against the
//! API: allowed by its Role, refused Secrets. Needs what `tests/kubelet.rs` needs.

mod common;
mod kubelet_support;

use std::process::Command;
use std::time::Duration;

use kubelet_support::{BUSYBOX, Cluster};

/// The text between `begin` and `end` lines in `log`.
fn between<'a>(log: &'a str, begin: &str, end: &str) -> &'a str {
    let start = log.find(begin).map(|i| i + begin.len() + 1).unwrap_or_else(|| panic!("no {begin} in {log}"));
    let stop = log[start..].find(end).map(|i| start + i).unwrap_or_else(|| panic!("no {end} in {log}"));
    &log[start..stop]
}

#[test]
fn a_pod_reads_its_token_ca_and_namespace_and_its_role_decides() {
    let Some(c) = Cluster::start_reachable_from_pods() else { return };
    c.apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: default}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{mode: fast}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [sh, -c, 'd=/var/run/secrets/kubernetes.io/serviceaccount; echo @TOKEN; cat $d/token; echo; echo @END;
      echo @CA; cat $d/ca.crt; echo @END; echo @NS; cat $d/namespace; echo; echo @END;
      echo @ENV; echo "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT $KUBERNETES_SERVICE_PORT_HTTPS"; echo @END;
      echo @ALL; cat /all/mode /all/password /all/app /all/vault-token | wc -c; cat /all/mode /all/password /all/app; echo; ls -lL /all/; echo @END;
      api=https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT; auth="Authorization: Bearer $(cat $d/token)";
      echo @PODS; wget -q -O - --no-check-certificate --header "$auth" $api/api/v1/namespaces/$(cat $d/namespace)/pods 2>&1; echo; echo @END;

      sleep 3600']
    volumeMounts: [{{name: all, mountPath: /all}}]
  volumes:
  - name: all
    projected:
      defaultMode: 0440
      sources:
      - configMap: {{name: settings}}
      - secret: {{name: creds}}
      - downwardAPI: {{items: [{{path: app, fieldRef: {{fieldPath: "metadata.labels['app']"}}}}]}}
      - serviceAccountToken: {{path: vault-token, audience: vault, expirationSeconds: 600}}
"#
    ));
    c.wait_for(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"], Duration::from_secs(60), |s| {
        s == "Running"
    });
    let log = c.wait_for(&["logs", "client"], Duration::from_secs(30), |s| s.matches("@END").count() >= 6);

    let token = between(&log, "@TOKEN", "@END").trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{log}");
    let ca = std::fs::read_to_string(c.data.path().join("ca.crt")).unwrap();
    assert_eq!(between(&log, "@CA", "@END"), ca, "the mounted ca.crt is the cluster CA");
    assert_eq!(between(&log, "@NS", "@END").trim(), "default");
    assert_eq!(between(&log, "@ENV", "@END").trim(), "10.96.0.1:443 443");
    // In the pod, `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`
    // leads through the service proxy to the API server's TLS: the server
    // answers (busybox's small TLS client and rustls then agree on no
    // handshake, alert 40), so the requests themselves are made with the
    // pod's token from the host below.
    let pods = between(&log, "@PODS", "@END");
    assert!(pods.contains("TLS error from peer (alert code 40)"), "{log}");
    let all = between(&log, "@ALL", "@END");
    assert!(all.contains("fasthunter2client"), "{all}");
    assert!(all.contains("-r--r-----") && all.contains("vault-token"), "{all}");

    // The pod's token is the ServiceAccount's, bound to the pod: its Role
    // lets it list pods, and Secrets are refused.
    let kubeconfig = std::fs::read_to_string(c.data.path().join("admin.kubeconfig")).unwrap();
    let server = kubeconfig.lines().find_map(|l| l.trim().strip_prefix("server: ")).unwrap().trim().to_string();
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(c.data.path().join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{server}{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.trim().to_string(), body.to_string())
    };
    let (code, body) = curl("/api/v1/namespaces/default/pods");
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("\"client\""), "{body}");
    let (code, body) = curl("/api/v1/namespaces/default/secrets");
    assert_eq!(code, "403", "{body}");
    assert!(
        body.contains("User \\\"system:serviceaccount:default:reader\\\" cannot list resource \\\"secrets\\\""),
        "{body}"
    );

    // Deleting the pod ends its token.
    c.ok(&["delete", "pod", "client", "--grace-period=1"]);
    c.wait_for(&["get", "pods", "-o", "name"], Duration::from_secs(60), |s| !s.contains("client"));
    let (code, body) = curl("/api/v1/namespaces/default/pods");
    assert_eq!(code, "401", "{body}");
}

/// The Python `kubernetes` client in a pod, with its in-cluster
/// configuration (`config.load_incluster_config()`: the projected token
/// and CA, `KUBERNETES_SERVICE_HOST`, certificate checked against the
/// `kubernetes` Service's address): it lists pods as its ServiceAccount's
/// Role allows and is refused Secrets with a 403. No registry: the pod is
/// the busybox image with the host's interpreter and the venv that
/// scripts/setup-debian.sh fills mounted read-only by hostPath volumes
/// (the interpreter's libraries through `/usr`, `/lib` and `/lib64`; its
/// own `lib` first, as the container has no `ld.so.cache`).
#[test]
fn the_python_client_in_a_pod_uses_its_service_account() {
    let Some(py) = common::venv_python("kubernetes") else { return };
    let Some(c) = Cluster::start_reachable_from_pods() else { return };
    let venv = py.parent().and_then(|b| b.parent()).unwrap().to_path_buf();
    // The interpreter the venv runs (pyenv's, or /usr/bin's), and its prefix.
    let real = std::fs::canonicalize(&py).unwrap();
    let prefix = real.parent().and_then(|b| b.parent()).unwrap().to_path_buf();
    let mut mounts = vec![("usr", "/usr".to_string(), "/usr".to_string()), ("lib", "/usr/lib".into(), "/lib".into())];
    if std::path::Path::new("/usr/lib64").is_dir() {
        mounts.push(("lib64", "/usr/lib64".into(), "/lib64".into()));
    }
    if !prefix.starts_with("/usr") {
        mounts.push(("prefix", prefix.display().to_string(), prefix.display().to_string()));
    }
    mounts.push(("venv", venv.display().to_string(), venv.display().to_string()));
    let volume_mounts: String =
        mounts.iter().map(|(n, _, at)| format!("{{name: {n}, mountPath: {at:?}, readOnly: true}},")).collect();
    let volumes: String = mounts
        .iter()
        .map(|(n, from, _)| format!("{{name: {n}, hostPath: {{path: {from:?}, type: Directory}}}},"))
        .collect();
    let script = "from kubernetes import client, config\\n\
        from kubernetes.client.rest import ApiException\\n\
        config.load_incluster_config()\\n\
        v1 = client.CoreV1Api()\\n\
        print('PODS', ' '.join(sorted(p.metadata.name for p in v1.list_namespaced_pod('default').items)))\\n\
        try:\\n    v1.list_namespaced_secret('default'); print('SECRETS listed')\\n\
        except ApiException as e:\\n    print('SECRETS', e.status, e.reason)\\n";
    c.apply(&format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: lister}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-lister}}
rules: [{{apiGroups: [""], resources: [pods], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: lister-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-lister}}
subjects: [{{kind: ServiceAccount, name: lister, namespace: default}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: hunter2}}
---
apiVersion: v1
kind: Pod
metadata: {{name: py-client}}
spec:
  serviceAccountName: lister
  restartPolicy: Never
  containers:
  - name: c
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: [{py:?}, -c, "{script}"]
    env: [{{name: LD_LIBRARY_PATH, value: "{prefix}/lib:/usr/lib/x86_64-linux-gnu"}}]
    volumeMounts: [{volume_mounts}]
  volumes: [{volumes}]
"#,
        py = py.display().to_string(),
        prefix = prefix.display(),
    ));
    let phase =
        c.wait_for(&["get", "pod", "py-client", "-o", "jsonpath={.status.phase}"], Duration::from_secs(90), |s| {
            s == "Succeeded" || s == "Failed"
        });
    let log = c.ok(&["logs", "py-client"]);
    assert_eq!(phase, "Succeeded", "{log}");
    assert!(log.contains("PODS py-client\n"), "{log}");
    assert!(log.contains("SECRETS 403 Forbidden"), "{log}");
}
