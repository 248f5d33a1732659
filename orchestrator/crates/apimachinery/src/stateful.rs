//! StatefulSets and storage (PersistentVolume, PersistentVolumeClaim,
//! StorageClass): upstream's defaults, validation and immutable fields, the
//! default class given to claims that name none (upstream's
//! DefaultStorageClass admission) and the built-in `local-path` class every
//! cluster starts with. Works on the JSON after it decoded through its type,
//! as [`crate::validation`] does for the other kinds.

use serde_json::{Map, Value, json};

use crate::validation::{Causes, default, obj};

/// The annotation that makes a StorageClass the default.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The built-in class and its provisioner (named as k3s names them).
pub const LOCAL_PATH_CLASS: &str = "local-path";
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";
/// Set on a Node by its kubelet: where local-path volumes live on it.
pub const LOCAL_PATH_ROOT: &str = "storage.plinth.dev/local-path-root";
/// Names the provisioner of a dynamically provisioned volume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";

const ACCESS_MODES: &[&str] = &["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"];
const STS_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];
const STS_FORBIDDEN: &str = "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden";
const PVC_FORBIDDEN: &str = "Forbidden: spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims";

fn unsupported(got: &str, allowed: &[&str]) -> String {
    let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
    format!("Unsupported value: \"{got}\": supported values: {}", list.join(", "))
}

fn str_at<'a>(o: &'a Value, ptr: &str) -> Option<&'a str> {
    o.pointer(ptr).and_then(Value::as_str)
}

/// Defaults for the kinds of this module; other kinds are left alone.
pub fn apply_defaults(kind: &str, o: &mut Value) {
    match kind {
        "StatefulSet" => {
            let spec = obj(o, "spec");
            default(spec, "replicas", 1.into());
            default(spec, "podManagementPolicy", "OrderedReady".into());
            default(spec, "revisionHistoryLimit", 10.into());
            default(spec, "updateStrategy", json!({"type": "RollingUpdate"}));
            if let Some(u) = spec.get_mut("updateStrategy").and_then(Value::as_object_mut)
                && u.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            {
                default(obj_in(u, "rollingUpdate"), "partition", 0.into());
            }
            default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            for t in spec.get_mut("volumeClaimTemplates").and_then(Value::as_array_mut).into_iter().flatten() {
                default(obj(t, "spec"), "volumeMode", "Filesystem".into());
                default(obj(t, "status"), "phase", "Pending".into());
            }
            crate::validation::default_template(&mut o["spec"]);
        }
        "PersistentVolumeClaim" => {
            default(obj(o, "spec"), "volumeMode", "Filesystem".into());
        }
        "PersistentVolume" => {
            let spec = obj(o, "spec");
            default(spec, "persistentVolumeReclaimPolicy", "Retain".into());
            default(spec, "volumeMode", "Filesystem".into());
        }
        "StorageClass" => {
            let m = o.as_object_mut().expect("objects are maps");
            default(m, "reclaimPolicy", "Delete".into());
            default(m, "volumeBindingMode", "Immediate".into());
        }
        _ => {}
    }
}

fn obj_in<'a>(m: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    if !m.get(key).is_some_and(Value::is_object) {
        m.insert(key.into(), json!({}));
    }
    m.get_mut(key).and_then(Value::as_object_mut).expect("just made an object")
}

/// A claim spec's access modes and storage request (at `path`).
fn check_claim_spec(spec: Option<&Value>, path: &str, causes: &mut Causes) {
    let modes = spec.and_then(|s| s.get("accessModes")).and_then(Value::as_array);
    match modes {
        Some(m) if !m.is_empty() => {
            for a in m.iter().filter_map(Value::as_str).filter(|a| !ACCESS_MODES.contains(a)) {
                causes.push((format!("{path}.accessModes"), unsupported(a, ACCESS_MODES)));
            }
        }
        _ => causes.push((format!("{path}.accessModes"), "Required value: at least 1 access mode is required".into())),
    }
    if spec.and_then(|s| s.pointer("/resources/requests/storage")).is_none() {
        causes.push((format!("{path}.resources[storage]"), "Required value".into()));
    }
}

/// Validation of a whole object of the kinds of this module.
pub fn validate(kind: &str, o: &Value) -> Causes {
    let mut causes = Causes::new();
    match kind {
        "StatefulSet" => {
            if let Some(p) =
                str_at(o, "/spec/podManagementPolicy").filter(|p| !["OrderedReady", "Parallel"].contains(p))
            {
                causes.push(("spec.podManagementPolicy".into(), unsupported(p, &["OrderedReady", "Parallel"])));
            }
            if let Some(t) =
                str_at(o, "/spec/updateStrategy/type").filter(|t| !["RollingUpdate", "OnDelete"].contains(t))
            {
                causes.push(("spec.updateStrategy.type".into(), unsupported(t, &["OnDelete", "RollingUpdate"])));
            }
            if let Some(p) = o.pointer("/spec/updateStrategy/rollingUpdate/partition").and_then(Value::as_i64)
                && p < 0
            {
                causes.push((
                    "spec.updateStrategy.rollingUpdate.partition".into(),
                    format!("Invalid value: {p}: must be greater than or equal to 0"),
                ));
            }
            let rp = str_at(o, "/spec/template/spec/restartPolicy").unwrap_or("Always");
            if rp != "Always" {
                causes.push(("spec.template.spec.restartPolicy".into(), unsupported(rp, &["Always"])));
            }
            let templates = o.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array);
            for (i, t) in templates.into_iter().flatten().enumerate() {
                let at = format!("spec.volumeClaimTemplates[{i}]");
                if str_at(t, "/metadata/name").is_none_or(str::is_empty) {
                    causes.push((
                        format!("{at}.metadata.name"),
                        "Required value: name or generateName is required".into(),
                    ));
                }
                check_claim_spec(t.get("spec"), &format!("{at}.spec"), &mut causes);
            }
        }
        "PersistentVolumeClaim" => check_claim_spec(o.get("spec"), "spec", &mut causes),
        "PersistentVolume" => {
            let spec = o.get("spec");
            if spec.and_then(|s| s.pointer("/capacity/storage")).is_none() {
                causes.push(("spec.capacity".into(), "Required value".into()));
            }
            if spec.and_then(|s| s.get("accessModes")).and_then(Value::as_array).is_none_or(Vec::is_empty) {
                causes.push(("spec.accessModes".into(), "Required value: must specify at least 1 access mode".into()));
            }
            let sources = spec.and_then(Value::as_object).into_iter().flatten().filter(|(k, _)| is_source(k)).count();
            if sources == 0 {
                causes.push(("spec".into(), "Required value: must specify a volume type".into()));
            } else if sources > 1 {
                causes.push(("spec".into(), "Forbidden: may not specify more than 1 volume type".into()));
            }
            if let Some(p) = str_at(o, "/spec/hostPath/path").or(str_at(o, "/spec/local/path"))
                && !p.starts_with('/')
            {
                let field =
                    if o.pointer("/spec/hostPath").is_some() { "spec.hostPath.path" } else { "spec.local.path" };
                causes.push((field.into(), format!("Invalid value: \"{p}\": must be an absolute path")));
            }
            let policy = str_at(o, "/spec/persistentVolumeReclaimPolicy").unwrap_or_default();
            if !["Delete", "Recycle", "Retain"].contains(&policy) {
                causes.push((
                    "spec.persistentVolumeReclaimPolicy".into(),
                    unsupported(policy, &["Delete", "Recycle", "Retain"]),
                ));
            }
        }
        "StorageClass" => {
            if str_at(o, "/provisioner").is_none_or(str::is_empty) {
                causes.push(("provisioner".into(), "Required value".into()));
            }
            let policy = str_at(o, "/reclaimPolicy").unwrap_or_default();
            if !["Delete", "Retain"].contains(&policy) {
                causes.push(("reclaimPolicy".into(), unsupported(policy, &["Delete", "Retain"])));
            }
            let mode = str_at(o, "/volumeBindingMode").unwrap_or_default();
            if !["Immediate", "WaitForFirstConsumer"].contains(&mode) {
                causes.push(("volumeBindingMode".into(), unsupported(mode, &["Immediate", "WaitForFirstConsumer"])));
            }
        }
        _ => {}
    }
    causes
}

/// The PersistentVolume spec fields that say where the data is.
fn is_source(field: &str) -> bool {
    !matches!(
        field,
        "capacity"
            | "accessModes"
            | "claimRef"
            | "persistentVolumeReclaimPolicy"
            | "storageClassName"
            | "mountOptions"
            | "volumeMode"
            | "nodeAffinity"
            | "volumeAttributesClassName"
    )
}

/// Fields of these kinds that may not change on update.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Causes {
    let mut causes = Causes::new();
    let empty = json!({});
    let spec = |o: &Value| o.get("spec").cloned().unwrap_or(json!({}));
    match kind {
        "StatefulSet" => {
            let without = |o: &Value| {
                let mut s = spec(o);
                if let Some(m) = s.as_object_mut() {
                    m.retain(|k, _| !STS_MUTABLE.contains(&k.as_str()));
                }
                s
            };
            if without(old) != without(new) {
                causes.push(("spec".into(), STS_FORBIDDEN.into()));
            }
        }
        "PersistentVolumeClaim" => {
            let (mut o, mut n) = (spec(old), spec(new));
            // The binder sets the volume name once; a bound claim may grow.
            if str_at(&o, "/volumeName").is_none_or(str::is_empty) {
                o["volumeName"] = n.get("volumeName").cloned().unwrap_or(Value::Null);
            }
            let bound = str_at(old, "/status/phase") == Some("Bound");
            if bound {
                let grown = n.pointer("/resources/requests/storage").cloned();
                let was = o.pointer("/resources/requests/storage").cloned();
                if let (Some(g), Some(w)) = (&grown, &was)
                    && quantity(g) < quantity(w)
                {
                    causes.push((
                        "spec.resources.requests.storage".into(),
                        "Forbidden: field can not be less than previous value".into(),
                    ));
                }
                if let Some(r) = n.pointer_mut("/resources/requests") {
                    *r = o.pointer("/resources/requests").cloned().unwrap_or(Value::Null);
                }
            }
            let clean = |v: &mut Value| {
                if let Some(m) = v.as_object_mut() {
                    m.retain(|_, x| !x.is_null());
                }
            };
            clean(&mut o);
            clean(&mut n);
            if o != n {
                causes.push(("spec".into(), PVC_FORBIDDEN.into()));
            }
        }
        "PersistentVolume" => {
            let sources = |o: &Value| {
                let s = spec(o);
                s.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, _)| is_source(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Map<_, _>>()
            };
            if sources(old) != sources(new) {
                causes.push((
                    "spec.persistentvolumesource".into(),
                    "Forbidden: spec.persistentvolumesource is immutable after creation".into(),
                ));
            }
            let affinity = |o: &Value| o.pointer("/spec/nodeAffinity").cloned();
            if affinity(old).is_some() && affinity(old) != affinity(new) {
                causes.push(("spec.nodeAffinity".into(), "Invalid value: field is immutable".into()));
            }
        }
        "StorageClass" => {
            for f in ["parameters", "provisioner", "reclaimPolicy"] {
                if old.get(f).unwrap_or(&empty) != new.get(f).unwrap_or(&empty) {
                    causes.push((f.into(), format!("Forbidden: updates to {f} are forbidden.")));
                }
            }
            if old.get("volumeBindingMode") != new.get("volumeBindingMode") {
                causes.push(("volumeBindingMode".into(), "Invalid value: field is immutable".into()));
            }
        }
        _ => {}
    }
    causes
}

fn quantity(v: &Value) -> f64 {
    v.as_str().and_then(parse_quantity).unwrap_or(0.0)
}

/// A quantity ("100m", "1.5", "128Mi", "1G", "2e3") in base units.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E').unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let m = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        _ => return None,
    };
    Some(n * m)
}

/// Upstream's DefaultStorageClass admission: a claim created without
/// `storageClassName` gets the default class among `classes` (the newest,
/// if several say so); without a default class it keeps none.
pub fn default_class(classes: &[Value], claim: &mut Value) {
    if claim.pointer("/spec/storageClassName").is_some_and(|c| !c.is_null()) {
        return;
    }
    let is_default = |c: &&Value| {
        c.pointer("/metadata/annotations").and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION)) == Some(&json!("true"))
    };
    let default = classes
        .iter()
        .filter(is_default)
        .max_by_key(|c| str_at(c, "/metadata/creationTimestamp").unwrap_or_default().to_string());
    if let Some(name) = default.and_then(|c| str_at(c, "/metadata/name")) {
        obj(claim, "spec").insert("storageClassName".into(), name.into());
    }
}

/// The built-in `local-path` class (the default) every cluster starts with.
pub fn local_path_class() -> Value {
    json!({"metadata": {"name": LOCAL_PATH_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": LOCAL_PATH_PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> Value {
        json!({"metadata": {"name": "db"}, "spec": {"serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}]}})
    }

    #[test]
    fn statefulset_defaults_validation_and_immutable_spec() {
        let mut s = sts();
        apply_defaults("StatefulSet", &mut s);
        assert_eq!(s["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(s["spec"]["updateStrategy"], json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
        assert_eq!(s["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"], "Retain");
        assert_eq!(s["spec"]["volumeClaimTemplates"][0]["spec"]["volumeMode"], "Filesystem");
        assert!(validate("StatefulSet", &s).is_empty());
        let mut scaled = s.clone();
        scaled["spec"]["replicas"] = 5.into();
        scaled["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx".into();
        assert!(validate_update("StatefulSet", &s, &scaled).is_empty());
        let mut bigger = s.clone();
        bigger["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] = "2Gi".into();
        let causes = validate_update("StatefulSet", &s, &bigger);
        assert_eq!(causes, vec![("spec".to_string(), STS_FORBIDDEN.to_string())]);
        let mut bad = s.clone();
        bad["spec"]["podManagementPolicy"] = "Random".into();
        bad["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"] = json!([]);
        let fields: Vec<String> = validate("StatefulSet", &bad).into_iter().map(|c| c.0).collect();
        assert_eq!(fields, ["spec.podManagementPolicy", "spec.volumeClaimTemplates[0].spec.accessModes"]);
    }

    #[test]
    fn a_claim_spec_is_immutable_but_a_bound_claim_may_grow() {
        let pending = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "local-path"}, "status": {"phase": "Pending"}});
        let mut named = pending.clone();
        named["spec"]["volumeName"] = "pvc-1".into();
        assert!(validate_update("PersistentVolumeClaim", &pending, &named).is_empty(), "the binder names the volume");
        let mut grown = pending.clone();
        grown["spec"]["resources"]["requests"]["storage"] = "2Gi".into();
        assert_eq!(validate_update("PersistentVolumeClaim", &pending, &grown)[0].1, PVC_FORBIDDEN);
        let mut bound = named.clone();
        bound["status"]["phase"] = "Bound".into();
        let mut bound_grown = bound.clone();
        bound_grown["spec"]["resources"]["requests"]["storage"] = "2Gi".into();
        assert!(validate_update("PersistentVolumeClaim", &bound, &bound_grown).is_empty());
        let mut other_class = bound.clone();
        other_class["spec"]["storageClassName"] = "fast".into();
        assert_eq!(validate_update("PersistentVolumeClaim", &bound, &other_class)[0].0, "spec");
        let mut shrunk = bound.clone();
        shrunk["spec"]["resources"]["requests"]["storage"] = "512Mi".into();
        assert_eq!(validate_update("PersistentVolumeClaim", &bound, &shrunk)[0].0, "spec.resources.requests.storage");
    }

    #[test]
    fn volumes_and_classes_are_checked() {
        let mut pv = json!({"metadata": {"name": "v"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": "/srv/v"}}});
        apply_defaults("PersistentVolume", &mut pv);
        assert_eq!(pv["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert!(validate("PersistentVolume", &pv).is_empty());
        let mut moved = pv.clone();
        moved["spec"]["hostPath"]["path"] = "/srv/w".into();
        assert_eq!(validate_update("PersistentVolume", &pv, &moved)[0].0, "spec.persistentvolumesource");
        let bare = json!({"spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain"}});
        assert_eq!(validate("PersistentVolume", &bare)[0].1, "Required value: must specify a volume type");
        let mut sc = json!({"metadata": {"name": "x"}, "provisioner": "p"});
        apply_defaults("StorageClass", &mut sc);
        assert_eq!(
            (sc["reclaimPolicy"].as_str(), sc["volumeBindingMode"].as_str()),
            (Some("Delete"), Some("Immediate"))
        );
        assert!(validate("StorageClass", &sc).is_empty());
        let mut other = sc.clone();
        other["provisioner"] = "q".into();
        assert_eq!(
            validate_update("StorageClass", &sc, &other)[0].1,
            "Forbidden: updates to provisioner are forbidden."
        );
    }
}
