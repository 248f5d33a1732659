//! Defaulting and validation as upstream does for the fields clients read:
//! names (DNS-1123), required fields, selectors matching templates, and
//! immutable fields. Works on the JSON after it decoded through its type.
//! What a node turns into rules and file names is checked in `node_fields`.

use serde_json::{Map, Value, json};

use crate::selector::LabelSelector;

/// Field path → message, as `Status.details.causes`.
pub type Causes = Vec<(String, String)>;

pub(crate) const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
pub(crate) const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";

fn label_ok(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_dns1123_label(s: &str) -> bool {
    label_ok(s)
}

/// A DNS-1035 label: a DNS-1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    label_ok(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(label_ok)
}

/// Checks a name for a resource: services and namespaces need a label,
/// the rest a subdomain.
pub fn check_name(kind: &str, name: &str) -> Option<String> {
    let label = matches!(kind, "Namespace" | "Service");
    if name.is_empty() {
        return Some("Required value: name or generateName is required".into());
    }
    // RBAC names are path segments (upstream's `ValidateRBACName`): `system:...` is valid.
    if matches!(kind, "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding") {
        return match name {
            "." | ".." => Some(format!("Invalid value: \"{name}\": may not be '{name}'")),
            _ => ["/", "%"]
                .iter()
                .find(|c| name.contains(*c))
                .map(|c| format!("Invalid value: \"{name}\": may not contain '{c}'")),
        };
    }
    let (ok, msg) =
        if label { (is_dns1123_label(name), LABEL_MSG) } else { (is_dns1123_subdomain(name), SUBDOMAIN_MSG) };
    (!ok).then(|| format!("Invalid value: \"{name}\": {msg}"))
}

pub(crate) fn obj<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v.get(key).is_some_and(Value::is_object) {
        v[key] = json!({});
    }
    v[key].as_object_mut().expect("just made an object")
}

pub(crate) fn default(m: &mut Map<String, Value>, key: &str, value: Value) {
    m.entry(key.to_string()).or_insert(value);
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        "IfNotPresent"
    } else if !last.contains(':') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    }
}

/// Upstream's pod spec defaults.
pub fn default_pod_spec(spec: &mut Value) {
    let m = match spec.as_object_mut() {
        Some(m) => m,
        None => return,
    };
    default(m, "restartPolicy", "Always".into());
    default(m, "terminationGracePeriodSeconds", 30.into());
    default(m, "dnsPolicy", "ClusterFirst".into());
    default(m, "securityContext", json!({}));
    default(m, "schedulerName", "default-scheduler".into());
    default(m, "enableServiceLinks", true.into());
    // As upstream's DefaultTolerationSeconds admission: 5 minutes on a lost node.
    let tolerations = m.entry("tolerations").or_insert_with(|| json!([]));
    if let Some(ts) = tolerations.as_array_mut() {
        for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            if !ts.iter().any(|t| t["key"] == key) {
                ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
            }
        }
    }
    default(m, "serviceAccountName", "default".into());
    let sa = m["serviceAccountName"].clone();
    default(m, "serviceAccount", sa);
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in m.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            let Some(c) = c.as_object_mut() else { continue };
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default().to_string();
            default(c, "imagePullPolicy", image_pull_policy(&image).into());
            default(c, "terminationMessagePath", "/dev/termination-log".into());
            default(c, "terminationMessagePolicy", "File".into());
            default(c, "resources", json!({}));
            for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(p) = p.as_object_mut() {
                    default(p, "protocol", "TCP".into());
                }
            }
            for e in c.get_mut("env").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(fr) = e.pointer_mut("/valueFrom/fieldRef").and_then(Value::as_object_mut) {
                    default(fr, "apiVersion", "v1".into());
                }
            }
        }
    }
}

pub(crate) fn default_template(spec: &mut Value) {
    if let Some(t) = spec.get_mut("template") {
        if !t.get("spec").is_some_and(Value::is_object) {
            t["spec"] = json!({});
        }
        default_pod_spec(&mut t["spec"]);
        obj(t, "metadata");
    }
}

/// The QoS class of a pod spec: Guaranteed, Burstable or BestEffort.
pub fn qos_class(spec: &Value) -> &'static str {
    let containers = spec.get("containers").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut any = false;
    let mut all_guaranteed = !containers.is_empty();
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        any |= req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty());
        let full =
            |m: Option<&Map<String, Value>>| m.is_some_and(|m| m.contains_key("cpu") && m.contains_key("memory"));
        let eq = match (req, lim) {
            (Some(r), Some(l)) => r.iter().all(|(k, v)| l.get(k) == Some(v)),
            (None, Some(_)) => true,
            _ => false,
        };
        all_guaranteed &= full(lim) && eq;
    }
    if all_guaranteed {
        "Guaranteed"
    } else if any {
        "Burstable"
    } else {
        "BestEffort"
    }
}

/// Defaults for `kind` (after the object decoded through its type).
pub fn apply_defaults(kind: &str, o: &mut Value) {
    match kind {
        "Pod" => {
            let spec = if o.get("spec").is_some_and(Value::is_object) { &mut o["spec"] } else { return };
            default_pod_spec(spec);
            let qos = qos_class(&o["spec"]);
            let status = obj(o, "status");
            default(status, "phase", "Pending".into());
            default(status, "qosClass", qos.into());
        }
        "Deployment" => {
            let spec = obj(o, "spec");
            default(spec, "replicas", 1.into());
            default(spec, "revisionHistoryLimit", 10.into());
            default(spec, "progressDeadlineSeconds", 600.into());
            let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
            if let Some(s) = strategy.as_object_mut() {
                default(s, "type", "RollingUpdate".into());
                if s["type"] == "RollingUpdate" {
                    let ru = s.entry("rollingUpdate").or_insert_with(|| json!({}));
                    if let Some(ru) = ru.as_object_mut() {
                        default(ru, "maxSurge", "25%".into());
                        default(ru, "maxUnavailable", "25%".into());
                    }
                }
            }
            default_template(&mut o["spec"]);
        }
        "ReplicaSet" => {
            default(obj(o, "spec"), "replicas", 1.into());
            default_template(&mut o["spec"]);
        }
        "ReplicationController" => {
            // An empty selector (and labels) default to the template's labels, as upstream.
            let template_labels = o.pointer("/spec/template/metadata/labels").cloned();
            let spec = obj(o, "spec");
            default(spec, "replicas", 1.into());
            if let Some(l) = template_labels.filter(|l| l.as_object().is_some_and(|m| !m.is_empty())) {
                if spec.get("selector").and_then(Value::as_object).is_none_or(|m| m.is_empty()) {
                    spec.insert("selector".into(), l.clone());
                }
                if o.pointer("/metadata/labels").and_then(Value::as_object).is_none_or(|m| m.is_empty()) {
                    obj(o, "metadata").insert("labels".into(), l);
                }
            }
            default_template(&mut o["spec"]);
        }
        "DaemonSet" => {
            let spec = obj(o, "spec");
            default(spec, "revisionHistoryLimit", 10.into());
            default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
            default_template(&mut o["spec"]);
        }
        "Job" => {
            let spec = obj(o, "spec");
            default(spec, "completions", 1.into());
            default(spec, "parallelism", 1.into());
            default(spec, "backoffLimit", 6.into());
            default(spec, "completionMode", "NonIndexed".into());
            default(spec, "suspend", false.into());
            default_template(&mut o["spec"]);
        }
        "CronJob" => {
            let spec = obj(o, "spec");
            default(spec, "concurrencyPolicy", "Allow".into());
            default(spec, "suspend", false.into());
            default(spec, "successfulJobsHistoryLimit", 3.into());
            default(spec, "failedJobsHistoryLimit", 1.into());
            obj(&mut o["spec"], "jobTemplate");
            let job = obj(&mut o["spec"]["jobTemplate"], "spec");
            default(job, "backoffLimit", 6.into());
            default(job, "completionMode", "NonIndexed".into());
            default(job, "suspend", false.into());
            default_template(&mut o["spec"]["jobTemplate"]["spec"]);
        }
        "Service" => {
            let spec = obj(o, "spec");
            default(spec, "type", "ClusterIP".into());
            default(spec, "sessionAffinity", "None".into());
            if spec["type"] != "ExternalName" {
                default(spec, "ipFamilies", json!(["IPv4"]));
                default(spec, "ipFamilyPolicy", "SingleStack".into());
                default(spec, "internalTrafficPolicy", "Cluster".into());
            }
            for p in spec.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                if let Some(p) = p.as_object_mut() {
                    default(p, "protocol", "TCP".into());
                    let port = p.get("port").cloned().unwrap_or(Value::Null);
                    default(p, "targetPort", port);
                }
            }
            obj(o, "status").entry("loadBalancer").or_insert_with(|| json!({}));
        }
        "Namespace" => {
            let name = o.pointer("/metadata/name").cloned().unwrap_or_default();
            let labels = obj(&mut o["metadata"], "labels");
            labels.insert("kubernetes.io/metadata.name".into(), name);
            default(obj(o, "spec"), "finalizers", json!(["kubernetes"]));
            default(obj(o, "status"), "phase", "Active".into());
        }
        "Secret" => {
            default(o.as_object_mut().expect("objects are maps"), "type", "Opaque".into());
        }
        _ => {}
    }
}

fn check_containers(spec: &Value, path: &str, causes: &mut Causes) {
    let containers = spec.get("containers").and_then(Value::as_array);
    match containers {
        None => causes.push((format!("{path}.containers"), "Required value".into())),
        Some(cs) if cs.is_empty() => causes.push((format!("{path}.containers"), "Required value".into())),
        Some(cs) => {
            let mut seen = std::collections::HashSet::new();
            for (i, c) in cs.iter().enumerate() {
                let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
                let at = format!("{path}.containers[{i}]");
                if name.is_empty() {
                    causes.push((format!("{at}.name"), "Required value".into()));
                } else if !is_dns1123_label(name) {
                    causes.push((format!("{at}.name"), format!("Invalid value: \"{name}\": {LABEL_MSG}")));
                } else if !seen.insert(name) {
                    causes.push((format!("{at}.name"), format!("Duplicate value: \"{name}\"")));
                }
                if c.get("image").and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()) {
                    causes.push((format!("{at}.image"), "Required value".into()));
                }
                for (j, p) in c.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                    let port = p.get("containerPort").and_then(Value::as_i64).unwrap_or(0);
                    if !(1..=65535).contains(&port) {
                        causes.push((
                            format!("{at}.ports[{j}].containerPort"),
                            format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
                        ));
                    }
                }
            }
        }
    }
}

/// A ReplicationController after defaulting: a selector (a plain map)
/// that the template's labels match, a template with containers, replicas
/// not negative — upstream's `ValidateReplicationControllerSpec`.
fn check_replication_controller(o: &Value, causes: &mut Causes) {
    let selector = o.pointer("/spec/selector").cloned().unwrap_or(json!({}));
    let s = LabelSelector::of_workload("ReplicationController", &selector);
    if s.is_empty() {
        causes.push(("spec.selector".into(), "Required value".into()));
    }
    match o.pointer("/spec/template") {
        None => causes.push(("spec.template".into(), "Required value".into())),
        Some(t) => {
            let labels = t.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            if !s.is_empty() && !s.matches_object(&json!({"metadata": {"labels": labels}})) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    format!("Invalid value: {labels}: `selector` does not match template `labels`"),
                ));
            }
            match t.get("spec") {
                Some(spec) => check_containers(spec, "spec.template.spec", causes),
                None => causes.push(("spec.template.spec.containers".into(), "Required value".into())),
            }
        }
    }
    if o.pointer("/spec/replicas").and_then(Value::as_i64).is_some_and(|r| r < 0) {
        causes.push(("spec.replicas".into(), "Invalid value: must be greater than or equal to 0".into()));
    }
}

fn check_workload(o: &Value, causes: &mut Causes, needs_selector: bool) {
    let selector = o.pointer("/spec/selector");
    let labels = o.pointer("/spec/template/metadata/labels").cloned().unwrap_or(json!({}));
    match selector {
        None if needs_selector => causes.push(("spec.selector".into(), "Required value".into())),
        Some(sel) => {
            let s = LabelSelector::from_json(sel);
            if s.is_empty() {
                causes.push((
                    "spec.selector".into(),
                    "Invalid value: {}: empty selector is invalid for deployment".into(),
                ));
            } else if !s.matches_object(&json!({"metadata": {"labels": labels}})) {
                causes.push((
                    "spec.template.metadata.labels".into(),
                    format!("Invalid value: {labels}: `selector` does not match template `labels`"),
                ));
            }
        }
        None => {}
    }
    match o.pointer("/spec/template/spec") {
        Some(spec) => check_containers(spec, "spec.template.spec", causes),
        None => causes.push(("spec.template.spec.containers".into(), "Required value".into())),
    }
    for f in ["replicas", "parallelism", "completions"] {
        if o.pointer(&format!("/spec/{f}")).and_then(Value::as_i64).is_some_and(|r| r < 0) {
            causes.push((format!("spec.{f}"), "Invalid value: must be greater than or equal to 0".into()));
        }
    }
}

/// Validation of a whole object of `kind` (after defaulting).
pub fn validate(kind: &str, o: &Value) -> Causes {
    let mut causes = Causes::new();
    let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if let Some(m) = check_name(kind, name) {
        causes.push(("metadata.name".into(), m));
    }
    for (k, _) in o.pointer("/metadata/labels").and_then(Value::as_object).into_iter().flatten() {
        let (prefix, n) = k.rsplit_once('/').unwrap_or(("", k));
        let ok_name = !n.is_empty()
            && n.len() <= 63
            && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok_name || (!prefix.is_empty() && !is_dns1123_subdomain(prefix)) {
            causes.push((
                "metadata.labels".into(),
                format!("Invalid value: \"{k}\": name part must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
    }
    match kind {
        "Pod" => match o.get("spec") {
            Some(spec) => check_containers(spec, "spec", &mut causes),
            None => causes.push(("spec.containers".into(), "Required value".into())),
        },
        "Deployment" | "ReplicaSet" | "DaemonSet" => check_workload(o, &mut causes, true),
        "ReplicationController" => check_replication_controller(o, &mut causes),
        "Job" => {
            check_workload(o, &mut causes, false);
            let rp = o.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str).unwrap_or_default();
            if rp != "OnFailure" && rp != "Never" {
                causes.push((
                    "spec.template.spec.restartPolicy".into(),
                    format!("Unsupported value: \"{rp}\": supported values: \"OnFailure\", \"Never\""),
                ));
            }
        }
        "CronJob" => {
            let schedule = o.pointer("/spec/schedule").and_then(Value::as_str).unwrap_or_default();
            let tz = o.pointer("/spec/timeZone").and_then(Value::as_str);
            if schedule.is_empty() {
                causes.push(("spec.schedule".into(), "Required value".into()));
            } else if let Err((field, m)) = crate::schedule::Schedule::parse(schedule, tz) {
                causes.push((field.into(), m));
            }
            let policy = o.pointer("/spec/concurrencyPolicy").and_then(Value::as_str).unwrap_or_default();
            if !["Allow", "Forbid", "Replace"].contains(&policy) {
                causes.push((
                    "spec.concurrencyPolicy".into(),
                    format!("Unsupported value: \"{policy}\": supported values: \"Allow\", \"Forbid\", \"Replace\""),
                ));
            }
            match o.pointer("/spec/jobTemplate/spec/template/spec") {
                Some(spec) => check_containers(spec, "spec.jobTemplate.spec.template.spec", &mut causes),
                None => causes.push(("spec.jobTemplate.spec.template.spec.containers".into(), "Required value".into())),
            }
        }
        "Service" => {
            let ty = o.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP");
            let headless = o.pointer("/spec/clusterIP").and_then(Value::as_str) == Some("None");
            let ports = o.pointer("/spec/ports").and_then(Value::as_array).cloned().unwrap_or_default();
            if ports.is_empty() && ty != "ExternalName" && !headless {
                causes.push(("spec.ports".into(), "Required value".into()));
            }
            for (i, p) in ports.iter().enumerate() {
                if ports.len() > 1 && p.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push((format!("spec.ports[{i}].name"), "Required value".into()));
                }
            }
        }
        "StatefulSet" => check_workload(o, &mut causes, true),
        "CertificateSigningRequest" => {
            // `<domain>/<path>`: a DNS-1123 subdomain, then a path without empty segments.
            let signer = o.pointer("/spec/signerName").and_then(Value::as_str).unwrap_or_default();
            let qualified = signer.split_once('/').is_some_and(|(domain, path)| {
                is_dns1123_subdomain(domain) && !path.is_empty() && path.split('/').all(|p| !p.is_empty())
            });
            if !signer.is_empty() && !qualified {
                causes.push((
                    "spec.signerName".into(),
                    format!("Invalid value: {signer:?}: must be a fully qualified domain and path of the form 'example.com/signer-name'"),
                ));
            }
            crate::certificates::validate(o, &mut causes);
        }
        _ => {}
    }
    causes
}

/// Fields that may not change on update.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Causes {
    let mut causes = Causes::new();
    let immutable: &[&str] = match kind {
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" => &["/spec/selector"],
        "Service" => &["/spec/clusterIP"],
        "Job" => &["/spec/selector", "/spec/completions"],
        _ => &[],
    };
    for p in immutable {
        if old.pointer(p) != new.pointer(p) && !(kind == "Service" && new.pointer(p).is_none()) {
            let field = p.trim_start_matches('/').replace('/', ".");
            causes.push((field, "Invalid value: field is immutable".into()));
        }
    }
    if kind == "CertificateSigningRequest" {
        crate::certificates::validate_update(old, new, &mut causes);
    }
    causes
}

/// Upstream's rule for a pod's spec on update: only the containers' and
/// init containers' images, `activeDeadlineSeconds` (set, or lowered),
/// `tolerations` (additions), `terminationGracePeriodSeconds` (to 1 from a
/// negative value) and `schedulingGates` (removals) change. Everything
/// else — the service account, volumes, nodeName, security contexts,
/// ephemeral containers (their own subresource adds them) — is fixed at
/// creation, which the Node authorizer and the kubelet rely on. Empty and
/// absent fields compare equal, as upstream's semantic equality, and the
/// stored pod is compared with its defaults applied (a pod stored before a
/// default existed keeps its updates). For updates of the pod itself, not
/// of its subresources.
pub fn pod_spec_update(old: &Value, new: &Value, causes: &mut Causes) {
    let mut defaulted = old.clone();
    apply_defaults("Pod", &mut defaulted);
    let (Some(old), Some(new)) = (defaulted.get("spec"), new.get("spec")) else { return };
    for list in ["containers", "initContainers"] {
        let count = |s: &Value| s.get(list).and_then(Value::as_array).map_or(0, Vec::len);
        if count(old) != count(new) {
            causes.push((format!("spec.{list}"), "Forbidden: pod updates may not add or remove containers".into()));
            return;
        }
    }
    let mut munged = new.clone();
    let set = |m: &mut Value, field: &str, to: Option<&Value>| match (m.as_object_mut(), to) {
        (Some(o), Some(v)) => {
            o.insert(field.into(), v.clone());
        }
        (Some(o), None) => {
            o.remove(field);
        }
        _ => {}
    };
    for list in ["containers", "initContainers"] {
        let olds = old.get(list).and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(news) = munged.get_mut(list).and_then(Value::as_array_mut) {
            for (o, n) in olds.iter().zip(news) {
                set(n, "image", o.get("image"));
            }
        }
    }
    let deadline = |s: &Value| s.get("activeDeadlineSeconds").and_then(Value::as_i64);
    match (deadline(old), deadline(new)) {
        (Some(_), None) => causes.push((
            "spec.activeDeadlineSeconds".into(),
            "Invalid value: \"null\": must not update from a positive integer to nil value".into(),
        )),
        (Some(o), Some(n)) if n > o => causes.push((
            "spec.activeDeadlineSeconds".into(),
            format!("Invalid value: {n}: must be less than or equal to previous value"),
        )),
        _ => {}
    }
    set(&mut munged, "activeDeadlineSeconds", old.get("activeDeadlineSeconds"));
    let items = |s: &Value, f: &str| s.get(f).and_then(Value::as_array).cloned().unwrap_or_default();
    let (old_tol, new_tol) = (items(old, "tolerations"), items(new, "tolerations"));
    if old_tol.iter().all(|t| new_tol.contains(t)) {
        set(&mut munged, "tolerations", old.get("tolerations"));
    } else {
        causes.push((
            "spec.tolerations".into(),
            "Forbidden: existing toleration can not be modified except its tolerationSeconds".into(),
        ));
    }
    let grace = |s: &Value| s.get("terminationGracePeriodSeconds").and_then(Value::as_i64);
    if grace(old).is_some_and(|g| g < 0) && grace(new) == Some(1) {
        set(&mut munged, "terminationGracePeriodSeconds", old.get("terminationGracePeriodSeconds"));
    }
    let (old_gates, new_gates) = (items(old, "schedulingGates"), items(new, "schedulingGates"));
    match new_gates.iter().find(|g| !old_gates.contains(g)) {
        Some(g) => causes.push((
            "spec.schedulingGates".into(),
            format!(
                "Forbidden: only deletion is allowed, but found new scheduling gate '{}'",
                g.get("name").and_then(Value::as_str).unwrap_or_default()
            ),
        )),
        None => set(&mut munged, "schedulingGates", old.get("schedulingGates")),
    }
    if !causes.is_empty() {
        return;
    }
    let (old_fields, new_fields) = (semantic(old), semantic(&munged));
    if old_fields != new_fields {
        let mut changed: Vec<&String> = old_fields
            .as_object()
            .into_iter()
            .chain(new_fields.as_object())
            .flat_map(|o| o.keys())
            .filter(|k| old_fields.get(k.as_str()) != new_fields.get(k.as_str()))
            .collect();
        changed.sort();
        changed.dedup();
        let changed: Vec<String> = changed.iter().map(|k| format!("spec.{k}")).collect();
        causes.push((
            "spec".into(),
            format!(
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,\
                 `spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions \
                 to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was \
                 previously negative) (changed: {})",
                changed.join(", ")
            ),
        ));
    }
}

/// `v` without nulls, empty lists and empty maps, so that a field sent
/// empty and one left out compare equal.
fn semantic(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), semantic(v))).filter(|(_, v)| !is_empty(v)).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(semantic).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_spec_changes_only_where_upstream_lets_it() {
        let pod = json!({"spec": {
            "serviceAccountName": "default",
            "containers": [{"name": "c", "image": "busybox:1"}],
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "activeDeadlineSeconds": 60,
            "schedulingGates": [{"name": "g"}],
            "volumes": [],
        }});
        let with = |f: &dyn Fn(&mut Value)| {
            let mut p = pod.clone();
            f(&mut p);
            apply_defaults("Pod", &mut p);
            let mut causes = Causes::new();
            pod_spec_update(&pod, &p, &mut causes);
            causes
        };
        // What may change.
        assert!(with(&|p| p["spec"]["containers"][0]["image"] = json!("busybox:2")).is_empty());
        assert!(with(&|p| p["spec"]["tolerations"].as_array_mut().unwrap().push(json!({"key": "b"}))).is_empty());
        assert!(with(&|p| p["spec"]["activeDeadlineSeconds"] = json!(30)).is_empty());
        assert!(with(&|p| p["spec"]["schedulingGates"] = json!([])).is_empty());
        assert!(
            with(&|p| {
                p["spec"].as_object_mut().unwrap().remove("volumes");
            })
            .is_empty()
        );
        // What may not.
        let fields = |c: Causes| c.into_iter().map(|(f, m)| format!("{f}: {m}")).collect::<Vec<_>>().join("\n");
        let sa = fields(with(&|p| p["spec"]["serviceAccountName"] = json!("admin")));
        assert!(sa.starts_with("spec: Forbidden: pod updates may not change fields other than"), "{sa}");
        assert!(sa.contains("spec.serviceAccountName"), "{sa}");
        let node = fields(with(&|p| p["spec"]["nodeName"] = json!("n2")));
        assert!(node.contains("spec.nodeName"), "{node}");
        let eph = fields(with(&|p| p["spec"]["ephemeralContainers"] = json!([{"name": "d", "image": "busybox"}])));
        assert!(eph.contains("spec.ephemeralContainers"), "{eph}");
        let vol = fields(with(&|p| p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/"}}])));
        assert!(vol.contains("spec.volumes"), "{vol}");
        let more = fields(with(&|p| p["spec"]["containers"].as_array_mut().unwrap().push(json!({"name": "d"}))));
        assert_eq!(more, "spec.containers: Forbidden: pod updates may not add or remove containers");
        let name = fields(with(&|p| p["spec"]["containers"][0]["name"] = json!("x")));
        assert!(name.contains("spec.containers"), "{name}");
        let longer = fields(with(&|p| p["spec"]["activeDeadlineSeconds"] = json!(90)));
        assert_eq!(
            longer,
            "spec.activeDeadlineSeconds: Invalid value: 90: must be less than or equal to previous value"
        );
        let dropped = fields(with(&|p| p["spec"]["tolerations"] = json!([])));
        assert!(dropped.starts_with("spec.tolerations: Forbidden"), "{dropped}");
        let gate = fields(with(&|p| p["spec"]["schedulingGates"] = json!([{"name": "g"}, {"name": "h"}])));
        assert_eq!(
            gate,
            "spec.schedulingGates: Forbidden: only deletion is allowed, but found new scheduling gate 'h'"
        );
    }

    #[test]
    fn csr_signer_names_are_domain_and_path() {
        let csr = |signer: &str| json!({"metadata": {"name": "c"}, "spec": {"signerName": signer, "usages": ["client auth"]}});
        let signer_causes = |signer: &str| {
            validate("CertificateSigningRequest", &csr(signer))
                .into_iter()
                .filter(|(f, _)| f == "spec.signerName")
                .count()
        };
        assert_eq!(signer_causes("example.com/edge"), 0);
        assert_eq!(signer_causes("kubernetes.io/kube-apiserver-client-kubelet"), 0);
        for bad in ["edge", "Example.com/edge", "example.com/", "example.com//x", ""] {
            assert_eq!(signer_causes(bad), 1, "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("web.example-1"));
        assert!(!is_dns1123_subdomain("Web"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_label("a.b"));
        assert!(check_name("Service", "a.b").is_some());
        assert!(check_name("ConfigMap", "a.b").is_none());
        assert!(check_name("Pod", "-x").unwrap().starts_with("Invalid value: \"-x\": a lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn deployment_defaults_and_selector_check() {
        let mut d = json!({"metadata": {"name": "web"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx",
            "ports": [{"containerPort": 80}]}]}}}});
        apply_defaults("Deployment", &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!((c["imagePullPolicy"].as_str(), c["ports"][0]["protocol"].as_str()), (Some("Always"), Some("TCP")));
        assert!(validate("Deployment", &d).is_empty());
        d["spec"]["template"]["metadata"]["labels"]["app"] = "other".into();
        assert_eq!(validate("Deployment", &d)[0].0, "spec.template.metadata.labels");
        let mut bad = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "c"}]}});
        apply_defaults("Pod", &mut bad);
        assert_eq!(validate("Pod", &bad), vec![("spec.containers[0].image".to_string(), "Required value".to_string())]);
        assert_eq!(bad["status"]["qosClass"], "BestEffort");
    }

    #[test]
    fn service_defaults_ports_and_immutable_cluster_ip() {
        let mut s = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        apply_defaults("Service", &mut s);
        assert_eq!(s["spec"]["ports"][0], json!({"port": 80, "protocol": "TCP", "targetPort": 80}));
        assert!(validate("Service", &s).is_empty());
        let old = json!({"spec": {"clusterIP": "10.96.0.10"}});
        assert_eq!(validate_update("Service", &old, &json!({"spec": {"clusterIP": "10.96.0.11"}})).len(), 1);
        assert!(validate("Service", &json!({"metadata": {"name": "x"}, "spec": {}}))[0].0 == "spec.ports");
    }

    #[test]
    fn qos() {
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&g), "Guaranteed");
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&b), "Burstable");
    }
}
