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
