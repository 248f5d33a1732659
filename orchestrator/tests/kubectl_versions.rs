//! apply / get / delete with every kubectl build this machine has: the
//! PyPI one (1.37, required under CI) and the pinned 1.27–1.33 builds
//! where present (they need /openapi/v2 in protobuf, ≥1.28 /openapi/v3).

mod common;

use common::{APP, Server};

#[test]
fn apply_get_delete_with_each_kubectl() {
    let Some(builds) = common::kubectl_builds(27..=33) else { return };
    for kubectl in builds {
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl.clone());
        let which = kubectl.display().to_string();
        let out = s.apply(APP, &[]);
        assert_eq!(out.matches("created").count(), 3, "{which}: {out}");
        let out = s.apply(APP, &[]);
        assert_eq!(out.matches("unchanged").count(), 3, "{which}: {out}");
        let get = s.ok(&["get", "deploy", "web"]);
        assert!(get.contains("UP-TO-DATE"), "{which}: {get}");
        let out = s.ok(&["delete", "-f", s.dir.path().join("manifest-0.yaml").to_str().unwrap()]);
        assert_eq!(out.matches("deleted").count(), 3, "{which}: {out}");
    }
}

/// kubectl ≥1.32 sends every `create` (and `run`, `debug --copy-to`) as a
/// protobuf body and does not retry JSON on a 415: each kind it makes is
/// decoded and stored with the fields asked for, zero values that mean
/// something (`--replicas=0`, `--min-available=0`) included.
#[test]
fn protobuf_creates_of_every_kind_with_kubectl_1_32_and_later() {
    let Some(builds) = common::kubectl_builds(32..=33) else { return };
    for kubectl in builds {
        let s = Server::start_in(tempfile::tempdir().unwrap(), kubectl.clone());
        let which = kubectl.display().to_string();
        let image = "--image=busybox:1.36";
        for args in [
            &["create", "namespace", "team"][..],
            &["create", "serviceaccount", "robot"],
            &["create", "token", "robot"],
            &["create", "configmap", "c1", "--from-literal=a=b"],
            &["create", "deployment", "idle", image, "--replicas=0"],
            &["create", "job", "once", image, "--", "true"],
            &["create", "cronjob", "nightly", image, "--schedule=0 3 * * *", "--", "true"],
            &["create", "job", "by-hand", "--from=cronjob/nightly"],
            &["create", "role", "reader", "--verb=get,list", "--resource=pods"],
            &["create", "rolebinding", "reader", "--role=reader", "--serviceaccount=default:robot"],
            &["create", "clusterrole", "nodes", "--verb=get", "--resource=nodes"],
            &["create", "clusterrolebinding", "nodes", "--clusterrole=nodes", "--user=ann"],
            &["create", "quota", "q", "--hard=pods=10,requests.cpu=2", "-n", "team"],
            &["create", "priorityclass", "high", "--value=1000", "--description=important"],
            &["create", "poddisruptionbudget", "pdb", "--selector=app=web", "--min-available=0"],
            &["create", "ingress", "web", "--rule=web.example/=web:80"],
            &["create", "service", "nodeport", "np", "--tcp=5678:8080"],
            &["run", "solo", image, "--restart=Never", "--labels=app=solo", "--", "sleep", "3600"],
            &["debug", "solo", "--copy-to=solo-copy", "--container=debugger", image, "--", "true"],
        ] {
            s.ok(args);
        }
        let get = |args: &[&str], path: &str| s.ok(&[&["get"], args, &["-o", &format!("jsonpath={path}")]].concat());
        let checks = [
            (get(&["deploy", "idle"], "{.spec.replicas}"), "0"),
            (get(&["job", "once"], "{.spec.template.spec.containers[0].image}"), "busybox:1.36"),
            (get(&["cronjob", "nightly"], "{.spec.schedule}"), "0 3 * * *"),
            (get(&["job", "by-hand"], "{.metadata.ownerReferences[0].name}"), "nightly"),
            (get(&["role", "reader"], "{.rules[0].verbs}"), r#"["get","list"]"#),
            (get(&["rolebinding", "reader"], "{.subjects[0].name}"), "robot"),
            (get(&["clusterrolebinding", "nodes"], "{.roleRef.name} {.subjects[0].name}"), "nodes ann"),
            (get(&["quota", "q", "-n", "team"], "{.spec.hard.pods} {.spec.hard.requests\\.cpu}"), "10 2"),
            (get(&["priorityclass", "high"], "{.value} {.description}"), "1000 important"),
            (get(&["pdb", "pdb"], "{.spec.minAvailable}"), "0"),
            (
                get(
                    &["ingress", "web"],
                    "{.spec.rules[0].host} {.spec.rules[0].http.paths[0].backend.service.port.number}",
                ),
                "web.example 80",
            ),
            (
                get(&["svc", "np"], "{.spec.type} {.spec.ports[0].port} {.spec.ports[0].targetPort}"),
                "NodePort 5678 8080",
            ),
            (get(&["pod", "solo"], "{.spec.containers[0].args}"), r#"["sleep","3600"]"#),
            (get(&["pod", "solo-copy"], "{.spec.containers[*].name}"), "solo debugger"),
        ];
        for (got, want) in checks {
            assert_eq!(got, want, "{which}");
        }
    }
}
