//! RBAC driven by a real kubectl: each rule kind allows and refuses,
//! ClusterRole aggregation, escalation prevention, impersonation
//! (`--as`, `--as-group`) and the access reviews (`auth can-i`,
//! `auth can-i --list`, `auth whoami`, SubjectAccessReview).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Server;
use orchestrator_http::pki;

/// A kubeconfig for a client certificate of `user` (in `group`, if any).
fn kubeconfig_for(s: &Server, user: &str, group: &str) -> PathBuf {
    let ca = pki::load_or_generate_ca(&s.dir.path().join("ca.crt"), &s.dir.path().join("ca.key")).unwrap();
    let cert = pki::issue_client(&ca, user, group).unwrap();
    let path = s.dir.path().join(format!("{user}.kubeconfig"));
    std::fs::write(&path, pki::kubeconfig(&format!("https://{}", s.address), &ca, &cert, user)).unwrap();
    path
}

/// Runs kubectl as the user of `kc`: (success, stdout, stderr).
fn as_user(s: &Server, kc: &Path, args: &[&str]) -> (bool, String, String) {
    let out = s.cmd(kc, args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Bindings reach the authorizer through its watch: waits until `args` succeed.
fn until_allowed(s: &Server, kc: &Path, args: &[&str]) -> String {
    s.until_ok(kc, args)
}

fn refused(s: &Server, kc: &Path, args: &[&str]) -> String {
    let (ok, out, err) = as_user(s, kc, args);
    assert!(!ok, "kubectl {args:?} should be refused: {out}");
    assert!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");
    err
}

/// Applies a Role `name` in `ns` with `rules` (YAML flow list) and binds it to User `user`.
fn role_for_user(s: &Server, ns: &str, name: &str, rules: &str, user: &str) {
    s.apply(
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: {name}, namespace: {ns}}}\nrules: {rules}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {user}-{name}, namespace: {ns}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}\n\
             subjects: [{{kind: User, name: {user}, apiGroup: rbac.authorization.k8s.io}}]\n"
        ),
        &[],
    );
}

#[test]
fn roles_and_bindings_allow_and_refuse_per_rule() {
    let Some(s) = Server::start() else { return };
    let alice = kubeconfig_for(&s, "alice", "");
    // Nothing bound: refused, with upstream's message.
    let err = refused(&s, &alice, &["get", "pods"]);
    assert!(
        err.contains(
            "pods is forbidden: User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
        ),
        "{err}"
    );
    s.ok(&["create", "namespace", "team"]);
    s.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: default}
rules:
- {apiGroups: [""], resources: ["pods", "pods/log"], verbs: ["get", "list"]}
- {apiGroups: [""], resources: ["configmaps"], resourceNames: ["one"], verbs: ["get"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-reads, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]
"#,
        &[],
    );
    s.ok(&["create", "configmap", "one", "--from-literal=a=b"]);
    s.ok(&["create", "configmap", "two", "--from-literal=a=b"]);
    // verbs and resources
    until_allowed(&s, &alice, &["get", "pods"]);
    refused(&s, &alice, &["delete", "pod", "absent"]);
    refused(&s, &alice, &["get", "secrets"]);
    // a Role binds in its namespace only
    refused(&s, &alice, &["get", "pods", "-n", "team"]);
    // resourceNames
    until_allowed(&s, &alice, &["get", "configmap", "one"]);
    let err = refused(&s, &alice, &["get", "configmap", "two"]);
    assert!(err.contains("configmaps \"two\" is forbidden"), "{err}");
    refused(&s, &alice, &["get", "configmaps"]);

    // ClusterRole + ClusterRoleBinding (apiGroups, a subresource, nonResourceURLs).
    s.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: deploy-scaler}
rules:
- {apiGroups: ["apps"], resources: ["deployments", "deployments/scale"], verbs: ["get", "list", "patch", "update"]}
- {nonResourceURLs: ["/"], verbs: ["get"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: alice-scales}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: deploy-scaler}
subjects: [{kind: Group, name: scalers, apiGroup: rbac.authorization.k8s.io}]
"#,
        &[],
    );
    s.ok(&["create", "deployment", "web", "-n", "team", "--image=nginx:1.25"]);
    let scaler = kubeconfig_for(&s, "sam", "scalers");
    until_allowed(&s, &scaler, &["scale", "deployment", "web", "-n", "team", "--replicas=3"]);
    refused(&s, &scaler, &["delete", "deployment", "web", "-n", "team"]);
    refused(&s, &scaler, &["get", "daemonsets", "-A"]);
    assert!(as_user(&s, &scaler, &["get", "--raw", "/"]).0, "nonResourceURLs \"/\" granted");
    let err = refused(&s, &alice, &["get", "--raw", "/"]);
    assert!(err.contains("cannot get path \"/\""), "{err}");
    // Every authenticated user gets discovery (system:discovery).
    assert!(as_user(&s, &alice, &["get", "--raw", "/apis"]).0);

    // A ServiceAccount subject (its user, impersonated here), refused outside its Role.
    s.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot-reads, namespace: default}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: robot, namespace: default}]
"#,
        &[],
    );
    let robot = "--as=system:serviceaccount:default:robot";
    until_allowed(&s, &s.kubeconfig(), &["get", "pods", robot]);
    let err = s.fails(&["get", "secrets", robot]);
    assert!(err.contains("User \"system:serviceaccount:default:robot\" cannot list resource \"secrets\""), "{err}");
    s.fails(&["get", "pods", "-n", "team", robot]);
}

#[test]
fn defaults_aggregation_and_read_only() {
    let Some(s) = Server::start() else { return };
    // The bootstrap policy, labelled as upstream's.
    let roles = s.ok(&["get", "clusterroles", "-l", "kubernetes.io/bootstrapping=rbac-defaults", "-o", "name"]);
    for r in
        ["cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user", "system:public-info-viewer"]
    {
        assert!(roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{r}\n")), "{r} in {roles}");
    }
    // view is aggregated (from system:aggregate-to-view), edit includes view's rules.
    let view = s.ok(&["get", "clusterrole", "view", "-o", "jsonpath={.rules[*].resources}"]);
    assert!(view.contains("pods") && !view.contains("secrets"), "{view}");
    let edit = s.ok(&["get", "clusterrole", "edit", "-o", "jsonpath={.rules[*].resources}"]);
    assert!(edit.contains("endpointslices") && edit.contains("secrets"), "{edit}");

    // A new labelled ClusterRole joins an aggregated one, and leaves it when deleted.
    s.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: monitoring}
aggregationRule:
  clusterRoleSelectors: [{matchLabels: {example.com/aggregate-to-monitoring: "true"}}]
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: monitoring-leases, labels: {example.com/aggregate-to-monitoring: "true"}}
rules: [{apiGroups: ["coordination.k8s.io"], resources: ["leases"], verbs: ["list"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: mon}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: monitoring}
subjects: [{kind: User, name: mo, apiGroup: rbac.authorization.k8s.io}]
"#,
        &[],
    );
    let mo = kubeconfig_for(&s, "mo", "");
    until_allowed(&s, &mo, &["get", "leases", "-A"]);
    assert!(s.ok(&["get", "clusterrole", "monitoring", "-o", "jsonpath={.rules}"]).contains("leases"));
    refused(&s, &mo, &["get", "pods", "-A"]);
    s.ok(&["delete", "clusterrole", "monitoring-leases"]);
    s.wait_for(&["get", "clusterrole", "monitoring", "-o", "jsonpath={.rules}"], Duration::from_secs(20), |o| {
        !o.contains("leases")
    });
    let start = Instant::now();
    while as_user(&s, &mo, &["get", "leases", "-A"]).0 {
        assert!(start.elapsed() < Duration::from_secs(20), "still allowed after the aggregated rule went");
        std::thread::sleep(Duration::from_millis(100));
    }

    // The read-only kubeconfig: bound to view.
    let ro = s.read_only_kubeconfig();
    assert!(as_user(&s, &ro, &["get", "pods", "-A"]).0);
    let err = refused(&s, &ro, &["get", "secrets"]);
    assert!(err.contains("User \"viewer\" cannot list resource \"secrets\""), "{err}");
    refused(&s, &ro, &["create", "configmap", "x"]);
    refused(&s, &ro, &["get", "clusterroles"]);
}

#[test]
fn escalation_is_refused() {
    let Some(s) = Server::start() else { return };
    s.ok(&["create", "namespace", "team"]);
    role_for_user(
        &s,
        "team",
        "rbac-manager",
        r#"[{apiGroups: ["rbac.authorization.k8s.io"], resources: ["roles", "rolebindings"],
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]}, {apiGroups: [""], resources: ["pods"], verbs: ["get", "list"]}]"#,
        "bob",
    );
    let bob = kubeconfig_for(&s, "bob", "");
    let held = s.dir.path().join("held.yaml");
    std::fs::write(
        &held,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: pods, namespace: team}\nrules: [{apiGroups: [\"\"], resources: [\"pods\"], verbs: [\"list\"]}]\n",
    )
    .unwrap();
    until_allowed(&s, &bob, &["apply", "-f", held.to_str().unwrap()]);
    let more = s.dir.path().join("more.yaml");
    std::fs::write(
        &more,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: secrets, namespace: team}\nrules: [{apiGroups: [\"\"], resources: [\"secrets\"], verbs: [\"get\"]}]\n",
    )
    .unwrap();
    let err = refused(&s, &bob, &["apply", "-f", more.to_str().unwrap()]);
    assert!(err.contains("is attempting to grant RBAC permissions not currently held"), "{err}");
    assert!(err.contains("Resources:[\"secrets\"]"), "{err}");
    assert!(s.fails(&["get", "role", "secrets", "-n", "team"]).contains("not found"));
    // Binding a role with more than bob holds (edit) is refused; one he holds is not.
    let err = refused(&s, &bob, &["create", "rolebinding", "b1", "-n", "team", "--clusterrole=edit", "--user=bob"]);
    assert!(err.contains("not currently held"), "{err}");
    as_user(&s, &bob, &["create", "rolebinding", "b2", "-n", "team", "--role=pods", "--user=carol"]);
    assert!(s.ok(&["get", "rolebinding", "b2", "-n", "team", "-o", "name"]).contains("b2"));
    // Widening a role by patch is refused too.
    let err = refused(
        &s,
        &bob,
        &[
            "patch",
            "role",
            "pods",
            "-n",
            "team",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/rules/0/verbs/-","value":"delete"}]"#,
        ],
    );
    assert!(err.contains("not currently held"), "{err}");
}

#[test]
fn access_reviews_and_impersonation() {
    let Some(s) = Server::start() else { return };
    role_for_user(
        &s,
        "default",
        "pod-reader",
        r#"[{apiGroups: [""], resources: ["pods"], verbs: ["get", "list"]}]"#,
        "alice",
    );
    let alice = kubeconfig_for(&s, "alice", "");
    until_allowed(&s, &alice, &["get", "pods"]);
    // can-i as alice herself, and as alice by an admin impersonating her.
    assert_eq!(as_user(&s, &alice, &["auth", "can-i", "list", "pods"]).1.trim(), "yes");
    assert_eq!(as_user(&s, &alice, &["auth", "can-i", "delete", "pods"]).1.trim(), "no");
    assert_eq!(s.run(&["auth", "can-i", "list", "pods", "--as=alice"]).stdout, b"yes\n");
    assert_eq!(s.run(&["auth", "can-i", "list", "pods", "-n", "kube-system", "--as=alice"]).stdout, b"no\n");
    assert_eq!(s.run(&["auth", "can-i", "list", "pods", "--as=zed", "--as-group=plinth:read-only"]).stdout, b"yes\n");
    assert_eq!(s.run(&["auth", "can-i", "get", "secrets", "--as=zed", "--as-group=plinth:read-only"]).stdout, b"no\n");
    // alice may not impersonate.
    let err = refused(&s, &alice, &["get", "pods", "--as=admin"]);
    assert!(
        err.contains("users \"admin\" is forbidden: User \"alice\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    // can-i --list (SelfSubjectRulesReview) and whoami (SelfSubjectReview).
    let (_, list, err) = as_user(&s, &alice, &["auth", "can-i", "--list"]);
    assert!(list.lines().any(|l| l.starts_with("pods ") && l.contains("[get list]")), "{list}{err}");
    let me = as_user(
        &s,
        &alice,
        &["auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}"],
    );
    assert_eq!(me.1, "alice [\"system:authenticated\"]", "{}", me.2);
    // SubjectAccessReview: admins ask about others; alice may not.
    let sar = s.dir.path().join("sar.yaml");
    std::fs::write(
        &sar,
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  resourceAttributes: {namespace: default, verb: list, resource: pods}\n",
    )
    .unwrap();
    let f = sar.to_str().unwrap();
    assert_eq!(s.ok(&["create", "-f", f, "-o", "jsonpath={.status.allowed}"]), "true");
    std::fs::write(&sar, std::fs::read_to_string(&sar).unwrap().replace("verb: list", "verb: delete")).unwrap();
    assert_eq!(s.ok(&["create", "-f", f, "-o", "jsonpath={.status.allowed}"]), "false");
    let err = refused(&s, &alice, &["create", "-f", f]);
    assert!(err.contains("cannot create resource \"subjectaccessreviews\""), "{err}");
}
