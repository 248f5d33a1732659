//! ServiceAccount tokens driven by a real kubectl: `kubectl create token`
//! (durations, audiences, bound objects), bearer-token requests allowed
//! and refused by RBAC, tokens refused once expired or once their
//! ServiceAccount or bound pod is gone, TokenReview,
//! LocalSubjectAccessReview and `kubectl auth can-i --as`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::Server;
use orchestrator_apiserver::satoken::{Claims, Keys, Private, Ref, issuer};
use serde_json::Value;

/// A kubeconfig that authenticates with `token` only (no client certificate).
fn token_kubeconfig(s: &Server, name: &str, token: &str) -> PathBuf {
    let path = s.dir.path().join(format!("{name}.kubeconfig"));
    let ca = s.dir.path().join("ca.crt");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"https://{}\", certificate-authority: {}}}\n\
         users:\n- name: u\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: x\n  context: {{cluster: c, user: u, namespace: default}}\n\
         current-context: x\n",
        s.address,
        ca.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn kubectl(s: &Server, kc: &Path, args: &[&str]) -> (bool, String, String) {
    let out = s.cmd(kc, args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `curl` to the API server with `token`: (HTTP code, body).
fn curl(s: &Server, token: &str, path: &str, extra: &[&str]) -> (u16, String) {
    let ca = s.dir.path().join("ca.crt");
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-H", &format!("Authorization: Bearer {token}"), "-w", "\n%{http_code}"])
        .args(extra)
        .arg(format!("https://{}{path}", s.address))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.trim().parse().unwrap_or(0), body.to_string())
}

const UNAUTHORIZED: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}"#;

fn assert_unauthorized(s: &Server, token: &str) {
    let (code, body) = curl(s, token, "/api/v1/namespaces/default/pods", &[]);
    assert_eq!(code, 401, "{body}");
    let got: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(got, serde_json::from_str::<Value>(UNAUTHORIZED).unwrap());
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn tokens_authenticate_and_rbac_allows_and_refuses() {
    let Some(s) = Server::start() else { return };
    s.ok(&["create", "serviceaccount", "bot"]);
    let token = s.ok(&["create", "token", "bot", "--duration=20m"]).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let kc = token_kubeconfig(&s, "bot", &token);

    // Authenticated as the ServiceAccount, refused by RBAC until bound.
    let (ok, _, err) = kubectl(&s, &kc, &["get", "pods"]);
    assert!(!ok);
    assert!(
        err.contains(
            "pods is forbidden: User \"system:serviceaccount:default:bot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    let who = s.cmd(&kc, &["auth", "whoami", "-o", "json"]).output().unwrap();
    let who = json_of(&String::from_utf8_lossy(&who.stdout));
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:default:bot");
    let groups = who["status"]["userInfo"]["groups"].to_string();
    for g in ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"] {
        assert!(groups.contains(&format!("\"{g}\"")), "{groups}");
    }
    let sa_uid = s.ok(&["get", "sa", "bot", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(who["status"]["userInfo"]["uid"], sa_uid.as_str());

    s.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pod-reader, namespace: default}\n\
         rules: [{apiGroups: [\"\"], resources: [pods], verbs: [get, list]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bot-pods, namespace: default}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}\n\
         subjects: [{kind: ServiceAccount, name: bot, namespace: default}]\n",
        &[],
    );
    s.until_ok(&kc, &["get", "pods"]);
    let (ok, _, err) = kubectl(&s, &kc, &["get", "secrets"]);
    assert!(!ok && err.contains("cannot list resource \"secrets\""), "{err}");
    let (code, body) = curl(&s, &token, "/api/v1/namespaces/default/secrets", &[]);
    assert_eq!(code, 403, "{body}");
    assert_eq!(json_of(&body)["reason"], "Forbidden");
    let (ok, _, err) = kubectl(&s, &kc, &["get", "pods", "-n", "kube-system"]);
    assert!(!ok && err.contains("Forbidden"), "{err}");

    // The same rules answer `auth can-i --as`.
    assert_eq!(s.ok(&["auth", "can-i", "list", "pods", "--as=system:serviceaccount:default:bot"]).trim(), "yes");
    let out = s.run(&["auth", "can-i", "list", "secrets", "--as=system:serviceaccount:default:bot"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");

    // A bad token is a 401 even beside nothing else; a client
    // certificate wins over a bad token, as upstream.
    assert_unauthorized(&s, "not-a-token");
    assert_unauthorized(&s, &format!("{token}x"));
    let cert = s.dir.path().join("admin.crt");
    let key = s.dir.path().join("admin.key");
    let ca = orchestrator_http::pki::load_ca(&s.dir.path().join("ca.crt"), &s.dir.path().join("ca.key")).unwrap();
    let admin = orchestrator_http::pki::issue_client(&ca, "admin", "system:masters").unwrap();
    std::fs::write(&cert, admin.cert_pem).unwrap();
    std::fs::write(&key, admin.key_pem).unwrap();
    let (code, body) = curl(
        &s,
        "not-a-token",
        "/api/v1/namespaces/default/secrets",
        &["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()],
    );
    assert_eq!(code, 200, "{body}");

    // A token for another audience does not reach the API.
    let other = s.ok(&["create", "token", "bot", "--audience=vault"]).trim().to_string();
    assert_unauthorized(&s, &other);

    // TokenReview answers for the API's audiences, or the ones asked.
    let review = |t: &str, audiences: &str| {
        let f = s.dir.path().join("review.yaml");
        std::fs::write(
            &f,
            format!(
                "apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: \"{t}\", audiences: {audiences}}}\n"
            ),
        )
        .unwrap();
        json_of(&s.ok(&["create", "-f", f.to_str().unwrap(), "-o", "json"]))
    };
    let r = review(&token, "[]");
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(r["status"]["user"]["username"], "system:serviceaccount:default:bot");
    assert_eq!(r["status"]["user"]["uid"], sa_uid.as_str());
    assert_eq!(r["status"]["audiences"], serde_json::json!([issuer()]));
    assert_eq!(review(&other, "[]")["status"]["authenticated"], false);
    let r = review(&other, "[vault]");
    assert_eq!(r["status"]["authenticated"], true, "{r}");
    assert_eq!(review("garbage", "[]")["status"]["authenticated"], false);

    // Bad requests: too short a duration, a missing bound object, a missing ServiceAccount.
    let err = s.fails(&["create", "token", "bot", "--duration=5m"]);
    assert!(
        err.contains("spec.expirationSeconds: Invalid value: 300: may not specify a duration less than 10 minutes"),
        "{err}"
    );
    let err = s.fails(&["create", "token", "bot", "--bound-object-kind=Pod", "--bound-object-name=nope"]);
    assert!(err.contains("pods \"nope\" not found"), "{err}");
    let err = s.fails(&["create", "token", "ghost"]);
    assert!(err.contains("serviceaccounts \"ghost\" not found"), "{err}");

    // Deleting the ServiceAccount ends its tokens, a new one of the same
    // name (another uid) does not revive them.
    s.ok(&["delete", "serviceaccount", "bot"]);
    assert_unauthorized(&s, &token);
    s.ok(&["create", "serviceaccount", "bot"]);
    assert_unauthorized(&s, &token);
}

#[test]
fn bound_and_expired_tokens_are_refused() {
    let Some(s) = Server::start() else { return };
    s.ok(&["create", "serviceaccount", "runner"]);
    s.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {serviceAccountName: runner, containers: [{name: c, image: busybox}]}\n",
        &[],
    );
    let token =
        s.ok(&["create", "token", "runner", "--bound-object-kind=Pod", "--bound-object-name=p"]).trim().to_string();
    let kc = token_kubeconfig(&s, "runner", &token);
    let who = s.until_ok(&kc, &["auth", "whoami", "-o", "json"]);
    let who = json_of(&who);
    assert_eq!(who["status"]["userInfo"]["extra"]["authentication.kubernetes.io/pod-name"][0], "p");
    // Only the pod's own ServiceAccount binds to it.
    s.ok(&["create", "serviceaccount", "other"]);
    let err = s.fails(&["create", "token", "other", "--bound-object-kind=Pod", "--bound-object-name=p"]);
    assert!(err.contains("to pod running with different serviceaccount name"), "{err}");
    s.ok(&["delete", "pod", "p", "--grace-period=0", "--force"]);
    assert_unauthorized(&s, &token);

    // A token signed with the cluster's key but past its expiry, beside
    // the same claims still valid: only the expiry differs.
    let keys = Keys::load_or_generate(&s.dir.path().join("sa.key")).unwrap();
    let uid = s.ok(&["get", "sa", "runner", "-o", "jsonpath={.metadata.uid}"]);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let claims = |exp: i64| Claims {
        iss: issuer(),
        sub: "system:serviceaccount:default:runner".into(),
        aud: vec![issuer()],
        exp,
        iat: now - 7200,
        nbf: now - 7200,
        jti: "test".into(),
        kubernetes: Private {
            namespace: "default".into(),
            serviceaccount: Ref { name: "runner".into(), uid: uid.clone() },
            pod: None,
            secret: None,
        },
    };
    let (code, body) = curl(
        &s,
        &keys.sign(&claims(now + 600)),
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        ],
    );
    assert_eq!(code, 201, "{body}");
    assert_unauthorized(&s, &keys.sign(&claims(now - 1)));
    // The same claims signed by another key are refused.
    let stranger = Keys::load_or_generate(&s.dir.path().join("stranger.key")).unwrap();
    assert_unauthorized(&s, &stranger.sign(&claims(now + 600)));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(s.dir.path().join("sa.key")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn local_subject_access_reviews_and_discovery() {
    let Some(s) = Server::start() else { return };
    s.ok(&["create", "namespace", "team"]);
    s.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: bot-view, namespace: team}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: ServiceAccount, name: bot, namespace: team}]\n",
        &[],
    );
    let lsar = |ns: &str, attr_ns: &str, verb: &str| {
        let f = s.dir.path().join("lsar.yaml");
        std::fs::write(
            &f,
            format!(
                "apiVersion: authorization.k8s.io/v1\nkind: LocalSubjectAccessReview\nmetadata: {{namespace: {ns}}}\n\
                 spec: {{user: \"system:serviceaccount:team:bot\", groups: [system:serviceaccounts], resourceAttributes: {{namespace: {attr_ns}, verb: {verb}, resource: pods}}}}\n"
            ),
        )
        .unwrap();
        s.run(&["create", "-f", f.to_str().unwrap(), "-o", "json"])
    };
    let start = Instant::now();
    loop {
        let out = lsar("team", "team", "list");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["status"]["allowed"] == true {
            assert_eq!(v["metadata"]["namespace"], "team");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{v} {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    }
    let v: Value = serde_json::from_slice(&lsar("team", "team", "delete").stdout).unwrap();
    assert_eq!(v["status"]["allowed"], false, "{v}");
    let out = lsar("team", "default", "list");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.resourceAttributes.namespace: Invalid value: \"default\": must match metadata.namespace"),
        "{err}"
    );

    let resources = s.ok(&["api-resources", "--api-group=authentication.k8s.io", "-o", "name"]);
    assert!(resources.contains("tokenreviews.authentication.k8s.io"), "{resources}");
    let resources = s.ok(&["api-resources", "--api-group=authorization.k8s.io", "--namespaced=true", "-o", "name"]);
    assert!(resources.contains("localsubjectaccessreviews.authorization.k8s.io"), "{resources}");
    let sub = s.ok(&["get", "--raw", "/api/v1"]);
    assert!(sub.contains(r#""name":"serviceaccounts/token""#), "{sub}");
}

fn pod_json(s: &Server, ns: &str, name: &str) -> Value {
    json_of(&s.ok(&["get", "pod", name, "-n", ns, "-o", "json"]))
}

#[test]
fn pods_get_the_token_volume_unless_opted_out() {
    let Some(s) = Server::start() else { return };
    s.ok(&["create", "namespace", "apps"]);
    // The root CA is published in every namespace, and put back.
    let ca = std::fs::read_to_string(s.dir.path().join("ca.crt")).unwrap();
    let get_ca = ["get", "configmap", "kube-root-ca.crt", "-n", "apps", "-o", "jsonpath={.data.ca\\.crt}"];
    s.wait_for(&get_ca, Duration::from_secs(20), |out| out == ca);
    s.ok(&["delete", "configmap", "kube-root-ca.crt", "-n", "apps"]);
    s.wait_for(&get_ca, Duration::from_secs(20), |out| out == ca);

    // A pod made right after its namespace waits for the `default` ServiceAccount.
    s.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: apps}\n\
         spec: {initContainers: [{name: i, image: busybox}], containers: [{name: c, image: busybox}, {name: d, image: busybox}]}\n",
        &[],
    );
    let p = pod_json(&s, "apps", "web");
    assert_eq!(p["spec"]["serviceAccountName"], "default");
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1, "{volumes:?}");
    let v = &volumes[0];
    let name = v["name"].as_str().unwrap();
    assert!(name.starts_with("kube-api-access-") && name.len() == "kube-api-access-".len() + 5, "{name}");
    assert_eq!(
        v["projected"],
        serde_json::json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}, "path": "namespace"}]}}]})
    );
    for list in ["initContainers", "containers"] {
        for c in p["spec"][list].as_array().unwrap() {
            assert_eq!(
                c["volumeMounts"],
                serde_json::json!([{"name": name, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]),
                "{c}"
            );
        }
    }

    // Opting out on the ServiceAccount or on the pod; the ServiceAccount's
    // imagePullSecrets are inherited.
    s.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: quiet, namespace: apps}\nautomountServiceAccountToken: false\n\
         imagePullSecrets: [{name: registry}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: apps}\nspec: {serviceAccountName: quiet, containers: [{name: c, image: busybox}]}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: optout, namespace: apps}\nspec: {automountServiceAccountToken: false, containers: [{name: c, image: busybox}]}\n",
        &[],
    );
    for pod in ["q", "optout"] {
        let p = pod_json(&s, "apps", pod);
        assert!(p["spec"].get("volumes").is_none(), "{p}");
        assert!(p["spec"]["containers"][0].get("volumeMounts").is_none(), "{p}");
    }
    let q = pod_json(&s, "apps", "q");
    assert_eq!(q["spec"]["imagePullSecrets"], serde_json::json!([{"name": "registry"}]));

    // A pod that mounts something at the token path keeps it.
    s.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: own, namespace: apps}\nspec:\n  containers: [{name: c, image: busybox, \
         volumeMounts: [{name: x, mountPath: /var/run/secrets/kubernetes.io/serviceaccount}]}]\n  volumes: [{name: x, emptyDir: {}}]\n",
        &[],
    );
    let p = pod_json(&s, "apps", "own");
    assert_eq!(p["spec"]["volumes"].as_array().unwrap().len(), 1, "{p}");

    // A missing ServiceAccount is refused, as upstream words it.
    let f = s.dir.path().join("ghost.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: g, namespace: apps}\nspec: {serviceAccountName: ghost, containers: [{name: c, image: busybox}]}\n").unwrap();
    let err = s.fails(&["create", "-f", f.to_str().unwrap()]);
    assert!(
        err.contains(
            "pods \"g\" is forbidden: error looking up service account apps/ghost: serviceaccount \"ghost\" not found"
        ),
        "{err}"
    );
}

/// One request on a kept-alive TLS connection: the status code, or `None`
/// when the server closed it.
async fn status_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    conn: &mut tokio::io::BufReader<S>,
    token: &str,
) -> Option<u16> {
    use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
    let head = format!("GET /api HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    conn.get_mut().write_all(head.as_bytes()).await.ok()?;
    conn.get_mut().flush().await.ok()?;
    let mut line = String::new();
    if conn.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let code = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut len = 0;
    loop {
        line.clear();
        conn.read_line(&mut line).await.ok()?;
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    conn.read_exact(&mut body).await.ok()?;
    Some(code)
}

/// A connection authenticated by a token leaves the anonymous budget, as
/// one with a certificate does: a flood of anonymous connections from
/// its address closes the oldest anonymous ones, not it.
#[test]
fn token_connections_are_not_closed_to_make_room_for_anonymous_ones() {
    use rustls::pki_types::pem::PemObject as _;
    let Some(s) = Server::start() else { return };
    s.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: steady}\n", &[]);
    let token = s.ok(&["create", "token", "steady"]).trim().to_string();
    let ca = std::fs::read(s.dir.path().join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&ca).unwrap()).unwrap();
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(&s.address).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            tokio::io::BufReader::new(tls.connect(name, tcp).await.unwrap())
        };
        let mut with_token = connect().await;
        assert_eq!(status_on(&mut with_token, &token).await, Some(200));
        let mut anonymous = Vec::new();
        for _ in 0..100 {
            anonymous.push(connect().await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(status_on(&mut with_token, &token).await, Some(200), "the token's connection was closed");
        // The flood did close the oldest anonymous connections.
        let first = &mut anonymous[0];
        assert_eq!(status_on(first, "").await, None);
    });
}

/// Legacy `kubernetes.io/service-account-token` Secrets are filled as
/// upstream's token controller fills them; the token ends with the Secret.
#[test]
fn legacy_token_secrets_are_filled_and_end_with_their_secret() {
    use base64::Engine as _;
    let Some(s) = Server::start() else { return };
    s.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: old-style}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: old-style-token, annotations: {kubernetes.io/service-account.name: old-style}}\n\
         type: kubernetes.io/service-account-token\n",
        &[],
    );
    let out = s.wait_for(&["get", "secret", "old-style-token", "-o", "json"], Duration::from_secs(20), |o| {
        o.contains("\"token\"")
    });
    let secret = json_of(&out);
    let field = |k: &str| {
        let v = secret["data"][k].as_str().unwrap_or_else(|| panic!("no {k}: {secret}"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(v).unwrap()).unwrap()
    };
    assert_eq!(field("ca.crt"), std::fs::read_to_string(s.dir.path().join("ca.crt")).unwrap());
    assert_eq!(field("namespace"), "default");
    let sa_uid = s.ok(&["get", "sa", "old-style", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(secret["metadata"]["annotations"]["kubernetes.io/service-account.uid"], sa_uid.as_str());
    let token = field("token");
    let kc = token_kubeconfig(&s, "old-style", &token);
    let who = json_of(&s.until_ok(&kc, &["auth", "whoami", "-o", "json"]));
    assert_eq!(who["status"]["userInfo"]["username"], "system:serviceaccount:default:old-style");
    s.ok(&["delete", "secret", "old-style-token"]);
    assert_unauthorized(&s, &token);
}
