//! The kinds charts create alongside workloads (issue 14 item 5):
//! PodDisruptionBudget, HorizontalPodAutoscaler, NetworkPolicy, Ingress,
//! IngressClass, PriorityClass, LimitRange, ResourceQuota, the webhook
//! configurations and APIService — upstream's defaults, validation (field paths and
//! wording from `pkg/apis/*/validation`) and `kubectl get` columns (from
//! `pkg/printers/internalversion/printers.go`). What enforces them lives
//! elsewhere: eviction and the disruption controller (PDB), pod admission
//! (LimitRange, ResourceQuota, PriorityClass); the rest is stored only.
//! An APIService is stored with its `Available` condition: `Local` for one
//! with no service; one naming a service is never proxied to (this API
//! server aggregates nothing) and says so, and it stays out of discovery.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{APIService, APIServiceCondition, APIServiceSpec};
use serde_json::{Value, json};

use crate::quantity::Quantity;
use crate::selector::LabelSelector;
use crate::validation::{Causes, default, is_dns1035_label, is_dns1123_subdomain, obj};

/// Upstream's `HighestUserDefinablePriority`.
pub const HIGHEST_USER_PRIORITY: i64 = 1_000_000_000;
/// The built-in classes (upstream's `SystemPriorityClasses`).
pub const SYSTEM_CLASSES: &[(&str, i64, &str)] = &[
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

/// An `IntOrString` as upstream reads it: a count, or a percentage of something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i64),
    Percent(i64),
}

impl IntOrPercent {
    pub fn parse(v: &Value) -> Result<IntOrPercent, String> {
        match v {
            Value::Number(n) => {
                n.as_i64().map(IntOrPercent::Int).ok_or_else(|| format!("Invalid value: {n}: must be an integer"))
            }
            Value::String(s) => s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse().ok())
                .map(IntOrPercent::Percent)
                .ok_or_else(|| format!("Invalid value: {s:?}: {PERCENT_MSG}")),
            other => Err(format!("Invalid value: {other}: must be an integer or percentage")),
        }
    }

    /// Upstream's `GetScaledValueFromIntOrPercent`.
    pub fn scaled(self, total: i64, round_up: bool) -> i64 {
        match self {
            IntOrPercent::Int(i) => i,
            IntOrPercent::Percent(p) if round_up => (p * total + 99) / 100,
            IntOrPercent::Percent(p) => p * total / 100,
        }
    }
}

/// Upstream's `ValidatePositiveIntOrPercent` and `IsNotMoreThan100Percent`.
fn check_int_or_percent(v: Option<&Value>, field: &str, causes: &mut Causes) {
    let Some(v) = v.filter(|v| !v.is_null()) else { return };
    match IntOrPercent::parse(v) {
        Err(m) => causes.push((field.into(), m)),
        Ok(IntOrPercent::Int(i)) if i < 0 => {
            causes.push((field.into(), format!("Invalid value: {i}: must be greater than or equal to 0")))
        }
        Ok(IntOrPercent::Percent(p)) if p > 100 => {
            causes.push((field.into(), format!("Invalid value: \"{p}%\": must not be greater than 100%")))
        }
        Ok(_) => {}
    }
}

fn unsupported(field: impl Into<String>, got: &str, supported: &[&str]) -> (String, String) {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    (field.into(), format!("Unsupported value: {got:?}: supported values: {}", list.join(", ")))
}

fn check_selector(sel: Option<&Value>, field: &str, causes: &mut Causes) {
    let Some(sel) = sel.filter(|s| !s.is_null()) else { return };
    for (i, e) in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let op = e.get("operator").and_then(Value::as_str).unwrap_or_default();
        let values = e.get("values").and_then(Value::as_array).map_or(0, Vec::len);
        let path = format!("{field}.matchExpressions[{i}]");
        match op {
            "In" | "NotIn" if values == 0 => causes.push((
                format!("{path}.values"),
                "Required value: must be specified when `operator` is 'In' or 'NotIn'".into(),
            )),
            "Exists" | "DoesNotExist" if values > 0 => causes.push((
                format!("{path}.values"),
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'".into(),
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => causes
                .push((format!("{path}.operator"), format!("Invalid value: {other:?}: not a valid selector operator"))),
        }
    }
}

/// An APIService's `Available` condition: what upstream's availability
/// controller would say of a local one, and why one naming a service is
/// not available here.
fn api_service_available(spec: &APIServiceSpec) -> APIServiceCondition {
    let (status, reason, message) = match &spec.service {
        None => ("True", "Local", "Local APIServices are always available".to_string()),
        Some(svc) => (
            "False",
            "FailedDiscoveryCheck",
            format!(
                "this API server does not proxy to aggregated API servers: service {}/{} is not called",
                svc.namespace.as_deref().unwrap_or_default(),
                svc.name.as_deref().unwrap_or_default()
            ),
        ),
    };
    APIServiceCondition {
        type_: "Available".into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(jiff::Timestamp::now())),
    }
}

/// The typed APIService of an admitted object (the registry's round trip
/// has already decoded it once, so this does not fail on one).
fn api_service(o: &Value) -> Option<APIService> {
    serde_json::from_value(o.clone()).ok()
}

/// Upstream's defaults for the kinds of this module.
pub fn apply_defaults(kind: &str, o: &mut Value) {
    match kind {
        "APIService" => {
            let Some(mut a) = api_service(o) else { return };
            let spec = a.spec.get_or_insert_default();
            if let Some(svc) = spec.service.as_mut() {
                svc.port.get_or_insert(443);
            }
            let want = api_service_available(spec);
            let conditions = a.status.get_or_insert_default().conditions.get_or_insert_default();
            match conditions.iter_mut().find(|c| c.type_ == "Available") {
                // The transition time moves only when the status does.
                Some(c) if c.status == want.status && c.reason == want.reason => {}
                Some(c) => *c = want,
                None => conditions.push(want),
            }
            if let Ok(v) = serde_json::to_value(a) {
                *o = v;
            }
        }
        "PodDisruptionBudget" => {
            obj(o, "spec");
        }
        "HorizontalPodAutoscaler" => {
            let spec = obj(o, "spec");
            default(spec, "minReplicas", 1.into());
            if spec.get("metrics").is_none_or(|m| m.as_array().is_none_or(Vec::is_empty)) {
                spec.insert(
                    "metrics".into(),
                    json!([{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]),
                );
            }
        }
        "NetworkPolicy" => {
            let spec = obj(o, "spec");
            default(spec, "podSelector", json!({}));
            if spec.get("policyTypes").is_none_or(|p| p.as_array().is_none_or(Vec::is_empty)) {
                let mut types = vec![json!("Ingress")];
                if spec.get("egress").is_some_and(|e| !e.is_null()) {
                    types.push(json!("Egress"));
                }
                spec.insert("policyTypes".into(), Value::Array(types));
            }
            for list in ["ingress", "egress"] {
                for rule in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    for p in rule.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
                        if let Some(p) = p.as_object_mut() {
                            default(p, "protocol", "TCP".into());
                        }
                    }
                }
            }
        }
        "LimitRange" => {
            // Upstream's `SetDefaults_LimitRangeItem`: a container's default
            // limit from max, its default request from the default limit, else min.
            for item in o.pointer_mut("/spec/limits").and_then(Value::as_array_mut).into_iter().flatten() {
                if item.get("type").and_then(Value::as_str) != Some("Container") {
                    continue;
                }
                for (from, to) in [("max", "default"), ("default", "defaultRequest"), ("min", "defaultRequest")] {
                    let source = item.get(from).and_then(Value::as_object).cloned().unwrap_or_default();
                    if source.is_empty() {
                        continue;
                    }
                    let target = obj(item, to);
                    for (r, q) in source {
                        target.entry(r).or_insert(q);
                    }
                }
            }
        }
        "PriorityClass" => {
            default(o.as_object_mut().expect("objects are maps"), "preemptionPolicy", "PreemptLowerPriority".into());
        }
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
            let mutating = kind == "MutatingWebhookConfiguration";
            for w in o.get_mut("webhooks").and_then(Value::as_array_mut).into_iter().flatten() {
                let Some(m) = w.as_object_mut() else { continue };
                default(m, "failurePolicy", "Fail".into());
                default(m, "matchPolicy", "Equivalent".into());
                default(m, "namespaceSelector", json!({}));
                default(m, "objectSelector", json!({}));
                default(m, "timeoutSeconds", 10.into());
                if mutating {
                    default(m, "reinvocationPolicy", "Never".into());
                }
                for r in m.get_mut("rules").and_then(Value::as_array_mut).into_iter().flatten() {
                    if let Some(r) = r.as_object_mut() {
                        default(r, "scope", "*".into());
                    }
                }
                if let Some(s) = w.pointer_mut("/clientConfig/service").and_then(Value::as_object_mut) {
                    default(s, "port", 443.into());
                }
            }
        }
        _ => {}
    }
}

/// Validation of a whole object of one of this module's kinds.
pub fn validate(kind: &str, o: &Value) -> Causes {
    let mut causes = Causes::new();
    let spec = o.get("spec").cloned().unwrap_or(json!({}));
    match kind {
        "PodDisruptionBudget" => {
            let (min, max) = (
                spec.get("minAvailable").filter(|v| !v.is_null()),
                spec.get("maxUnavailable").filter(|v| !v.is_null()),
            );
            if min.is_some() && max.is_some() {
                causes.push((
                    "spec".into(),
                    format!("Invalid value: {spec}: minAvailable and maxUnavailable cannot be both set"),
                ));
            }
            check_int_or_percent(min, "spec.minAvailable", &mut causes);
            check_int_or_percent(max, "spec.maxUnavailable", &mut causes);
            check_selector(spec.get("selector"), "spec.selector", &mut causes);
            if let Some(p) = spec.get("unhealthyPodEvictionPolicy").and_then(Value::as_str) {
                let ok = ["AlwaysAllow", "IfHealthyBudget"];
                if !ok.contains(&p) {
                    causes.push(unsupported("spec.unhealthyPodEvictionPolicy", p, &ok));
                }
            }
        }
        "HorizontalPodAutoscaler" => {
            let min = spec.get("minReplicas").and_then(Value::as_i64).unwrap_or(1);
            let max = spec.get("maxReplicas").and_then(Value::as_i64).unwrap_or(0);
            if min < 1 {
                causes.push((
                    "spec.minReplicas".into(),
                    format!("Invalid value: {min}: must be greater than or equal to 1"),
                ));
            }
            if max < 1 {
                causes.push(("spec.maxReplicas".into(), format!("Invalid value: {max}: must be greater than 0")));
            } else if max < min {
                causes.push((
                    "spec.maxReplicas".into(),
                    format!("Invalid value: {max}: must be greater than or equal to `minReplicas`"),
                ));
            }
            for f in ["kind", "name"] {
                if spec.pointer(&format!("/scaleTargetRef/{f}")).and_then(Value::as_str).is_none_or(str::is_empty) {
                    causes.push((format!("spec.scaleTargetRef.{f}"), "Required value".into()));
                }
            }
            let types = ["ContainerResource", "External", "Object", "Pods", "Resource"];
            for (i, m) in spec.get("metrics").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
                if ty.is_empty() {
                    causes.push((
                        format!("spec.metrics[{i}].type"),
                        "Required value: must specify a metric source type".into(),
                    ));
                } else if !types.contains(&ty) {
                    causes.push(unsupported(format!("spec.metrics[{i}].type"), ty, &types));
                }
            }
        }
        "NetworkPolicy" => {
            check_selector(spec.get("podSelector"), "spec.podSelector", &mut causes);
            for (i, t) in spec.get("policyTypes").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let t = t.as_str().unwrap_or_default();
                if !["Ingress", "Egress"].contains(&t) {
                    causes.push(unsupported(format!("spec.policyTypes[{i}]"), t, &["Egress", "Ingress"]));
                }
            }
            for (list, peers) in [("ingress", "from"), ("egress", "to")] {
                for (i, rule) in spec.get(list).and_then(Value::as_array).into_iter().flatten().enumerate() {
                    for (j, p) in rule.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                        if !["TCP", "UDP", "SCTP"].contains(&proto) {
                            causes.push(unsupported(
                                format!("spec.{list}[{i}].ports[{j}].protocol"),
                                proto,
                                &["SCTP", "TCP", "UDP"],
                            ));
                        }
                    }
                    for (j, peer) in rule.get(peers).and_then(Value::as_array).into_iter().flatten().enumerate() {
                        let path = format!("spec.{list}[{i}].{peers}[{j}]");
                        let set = ["podSelector", "namespaceSelector", "ipBlock"]
                            .iter()
                            .filter(|k| peer.get(**k).is_some_and(|v| !v.is_null()))
                            .count();
                        if set == 0 {
                            causes.push((path.clone(), "Required value: must specify a peer".into()));
                        }
                        if let Some(cidr) = peer.pointer("/ipBlock/cidr").and_then(Value::as_str)
                            && !is_cidr(cidr)
                        {
                            causes.push((format!("{path}.ipBlock.cidr"), format!("Invalid value: {cidr:?}: must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")));
                        }
                    }
                }
            }
        }
        "Ingress" => validate_ingress(&spec, &mut causes),
        "APIService" => {
            if let Some(a) = api_service(o) {
                validate_api_service(&a, &mut causes)
            }
        }
        "IngressClass" => {
            let c = spec.get("controller").and_then(Value::as_str).unwrap_or_default();
            if c.is_empty() {
                causes.push(("spec.controller".into(), "Required value".into()));
            } else if !c.split_once('/').is_some_and(|(d, p)| is_dns1123_subdomain(d) && !p.is_empty()) {
                causes.push((
                    "spec.controller".into(),
                    format!("Invalid value: {c:?}: must be a domain-prefixed path (such as \"acme.io/foo\")"),
                ));
            }
        }
        "PriorityClass" => {
            let name = o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
            let system = SYSTEM_CLASSES.iter().find(|c| c.0 == name);
            let value = o.get("value").and_then(Value::as_i64).unwrap_or(0);
            match system {
                Some((_, v, _)) if *v != value => causes.push((
                    "metadata.name".into(),
                    format!("Invalid value: {name:?}: is a known system priority class with value {v}; it cannot have value {value}"),
                )),
                Some(_) => {}
                None if name.starts_with("system-") => causes.push((
                    "metadata.name".into(),
                    format!("Invalid value: {name:?}: priority class names with 'system-' prefix are reserved for system use only"),
                )),
                None if value > HIGHEST_USER_PRIORITY => causes.push((
                    "value".into(),
                    format!("Forbidden: maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"),
                )),
                None => {}
            }
            let p = o.get("preemptionPolicy").and_then(Value::as_str).unwrap_or_default();
            if !["Never", "PreemptLowerPriority"].contains(&p) {
                causes.push(unsupported("preemptionPolicy", p, &["Never", "PreemptLowerPriority"]));
            }
        }
        "LimitRange" => validate_limit_range(&spec, &mut causes),
        "ResourceQuota" => {
            for (r, q) in spec.get("hard").and_then(Value::as_object).into_iter().flatten() {
                check_quota_quantity(&format!("spec.hard[{r}]"), r, q, &mut causes);
            }
            for (i, s) in spec.get("scopes").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let s = s.as_str().unwrap_or_default();
                let ok = [
                    "BestEffort",
                    "CrossNamespacePodAffinity",
                    "NotBestEffort",
                    "NotTerminating",
                    "PriorityClass",
                    "Terminating",
                ];
                if !ok.contains(&s) {
                    causes.push(unsupported(format!("spec.scopes[{i}]"), s, &ok));
                }
            }
        }
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => validate_webhooks(o, &mut causes),
        _ => {}
    }
    causes
}

/// Fields that may not change once set.
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Causes {
    let mut causes = Causes::new();
    match kind {
        "PriorityClass" if old.get("value") != new.get("value") => {
            causes.push(("value".into(), "Forbidden: may not be changed in an update.".into()))
        }
        "PriorityClass" if old.get("preemptionPolicy") != new.get("preemptionPolicy") => {
            causes.push(("preemptionPolicy".into(), "Invalid value: field is immutable".into()))
        }
        "IngressClass" if old.pointer("/spec/controller") != new.pointer("/spec/controller") => {
            causes.push(("spec.controller".into(), "Invalid value: field is immutable".into()))
        }
        _ => {}
    }
    causes
}

/// Upstream's APIService validation (kube-aggregator): the name is
/// `<version>.<group>`, priorities in range, a service named in full.
fn validate_api_service(a: &APIService, causes: &mut Causes) {
    let unset = APIServiceSpec::default();
    let spec = a.spec.as_ref().unwrap_or(&unset);
    let (group, version) = (spec.group.as_deref().unwrap_or_default(), spec.version.as_deref().unwrap_or_default());
    let want = format!("{version}.{group}");
    let name = a.metadata.name.as_deref().unwrap_or_default();
    if !name.is_empty() && name != want {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: {name:?}: must be `spec.version+\".\"+spec.group`: {want:?}"),
        ));
    }
    if group.is_empty() && version != "v1" {
        causes.push((
            "spec.group".into(),
            "Required value: only v1 may have an empty group and it better be legacy kube".into(),
        ));
    } else if !group.is_empty() && !is_dns1123_subdomain(group) {
        causes.push(("spec.group".into(), format!("Invalid value: {group:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character")));
    }
    if !is_dns1035_label(version) {
        causes.push(("spec.version".into(), format!("Invalid value: {version:?}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character")));
    }
    for (field, v, max) in [
        ("groupPriorityMinimum", spec.group_priority_minimum, 20_000),
        ("versionPriority", spec.version_priority, 1_000),
    ] {
        if v <= 0 || v > max {
            causes.push((format!("spec.{field}"), format!("Invalid value: {v}: must be positive and less than {max}")));
        }
    }
    let ca = spec.ca_bundle.as_ref().is_some_and(|c| !c.0.is_empty());
    let insecure = spec.insecure_skip_tls_verify.unwrap_or(false);
    let Some(svc) = &spec.service else {
        if ca {
            causes.push((
                "spec.caBundle".into(),
                "Invalid value: \"(bytes)\": local APIServices may not have a caBundle".into(),
            ));
        }
        if insecure {
            causes.push((
                "spec.insecureSkipTLSVerify".into(),
                "Invalid value: true: local APIServices may not have insecureSkipTLSVerify".into(),
            ));
        }
        return;
    };
    for (field, value) in [("namespace", &svc.namespace), ("name", &svc.name)] {
        if value.as_deref().unwrap_or_default().is_empty() {
            causes.push((format!("spec.service.{field}"), "Required value".into()));
        }
    }
    let port = svc.port.unwrap_or(443);
    if !(1..=65_535).contains(&port) {
        causes.push((
            "spec.service.port".into(),
            format!("Invalid value: {port}: port is not valid: must be between 1 and 65535, inclusive"),
        ));
    }
    if insecure && ca {
        causes.push((
            "spec.insecureSkipTLSVerify".into(),
            "Invalid value: true: may not be true if caBundle is present".into(),
        ));
    }
}

fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else { return false };
    match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

fn validate_ingress(spec: &Value, causes: &mut Causes) {
    let rules = spec.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
    if rules.is_empty() && spec.get("defaultBackend").is_none_or(Value::is_null) {
        causes
            .push(("spec".into(), "Invalid value: \"\": either `defaultBackend` or `rules` must be specified".into()));
    }
    if let Some(b) = spec.get("defaultBackend").filter(|b| !b.is_null()) {
        check_backend(b, "spec.defaultBackend", causes);
    }
    for (i, r) in rules.iter().enumerate() {
        if let Some(h) = r.get("host").and_then(Value::as_str).filter(|h| !h.is_empty()) {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if !is_dns1123_subdomain(bare) || h.parse::<std::net::IpAddr>().is_ok() {
                causes.push((
                    format!("spec.rules[{i}].host"),
                    format!("Invalid value: {h:?}: {}", crate::validation::SUBDOMAIN_MSG),
                ));
            }
        }
        for (j, p) in r.pointer("/http/paths").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let path = format!("spec.rules[{i}].http.paths[{j}]");
            let types = ["Exact", "ImplementationSpecific", "Prefix"];
            match p.get("pathType").and_then(Value::as_str) {
                None | Some("") => {
                    causes.push((format!("{path}.pathType"), "Required value: pathType must be specified".into()))
                }
                Some(t) if !types.contains(&t) => causes.push(unsupported(format!("{path}.pathType"), t, &types)),
                Some(t) => {
                    let v = p.get("path").and_then(Value::as_str).unwrap_or_default();
                    if t != "ImplementationSpecific" && !v.starts_with('/') {
                        causes
                            .push((format!("{path}.path"), format!("Invalid value: {v:?}: must be an absolute path")));
                    }
                }
            }
            match p.get("backend").filter(|b| !b.is_null()) {
                Some(b) => check_backend(b, &format!("{path}.backend"), causes),
                None => causes.push((format!("{path}.backend"), "Required value".into())),
            }
        }
    }
}

fn check_backend(b: &Value, path: &str, causes: &mut Causes) {
    match (b.get("service").filter(|s| !s.is_null()), b.get("resource").filter(|r| !r.is_null())) {
        (Some(_), Some(_)) => {
            causes.push((path.into(), "Invalid value: \"\": cannot set both resource and service backends".into()))
        }
        (None, None) => {
            causes.push((path.into(), "Invalid value: \"\": resource or service backend is required".into()))
        }
        (Some(s), None) => {
            let (name, number) = (s.pointer("/port/name"), s.pointer("/port/number"));
            match (name.and_then(Value::as_str).filter(|n| !n.is_empty()), number.and_then(Value::as_i64)) {
                (Some(_), Some(_)) => causes.push((
                    format!("{path}.service.port"),
                    "Invalid value: \"\": cannot set both port name & port number".into(),
                )),
                (None, None) => causes.push((
                    format!("{path}.service.port"),
                    "Invalid value: \"\": port name or number is required".into(),
                )),
                (None, Some(n)) if !(1..=65535).contains(&n) => causes.push((
                    format!("{path}.service.port.number"),
                    format!("Invalid value: {n}: must be between 1 and 65535, inclusive"),
                )),
                _ => {}
            }
        }
        (None, Some(_)) => {}
    }
}

/// The resources a quota may name: standard ones, `count/<resource>`,
/// `requests.<extended>` and hugepages.
fn quota_resource_ok(r: &str) -> bool {
    const STANDARD: &[&str] = &[
        "pods",
        "services",
        "replicationcontrollers",
        "resourcequotas",
        "secrets",
        "configmaps",
        "persistentvolumeclaims",
        "services.nodeports",
        "services.loadbalancers",
        "cpu",
        "memory",
        "ephemeral-storage",
        "storage",
        "requests.cpu",
        "requests.memory",
        "requests.storage",
        "requests.ephemeral-storage",
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
    ];
    STANDARD.contains(&r) || r.starts_with("count/") || r.starts_with("requests.") || r.contains('/')
}

fn check_quota_quantity(field: &str, resource: &str, q: &Value, causes: &mut Causes) {
    if !quota_resource_ok(resource) {
        causes.push((field.into(), format!("Invalid value: {resource:?}: must be a standard resource for quota")));
    }
    check_quantity(field, q, causes);
}

fn check_quantity(field: &str, q: &Value, causes: &mut Causes) {
    let text = q.as_str().map(str::to_string).unwrap_or_else(|| q.to_string());
    match Quantity::parse(&text) {
        Some(v) if v.is_negative() => {
            causes.push((field.into(), format!("Invalid value: {text:?}: must be greater than or equal to 0")))
        }
        Some(_) => {}
        None => causes.push((
            field.into(),
            format!("Invalid value: {text:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"),
        )),
    }
}

fn validate_limit_range(spec: &Value, causes: &mut Causes) {
    let items = spec.get("limits").and_then(Value::as_array).cloned().unwrap_or_default();
    if items.is_empty() {
        causes.push(("spec.limits".into(), "Required value".into()));
    }
    for (i, item) in items.iter().enumerate() {
        let path = format!("spec.limits[{i}]");
        let ty = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let types = ["Container", "PersistentVolumeClaim", "Pod"];
        if !types.contains(&ty) {
            causes.push(unsupported(format!("{path}.type"), ty, &types));
        }
        let get =
            |f: &str, r: &str| item.get(f).and_then(|m| m.get(r)).and_then(Value::as_str).and_then(Quantity::parse);
        let mut resources: Vec<&String> = Vec::new();
        for f in ["max", "min", "default", "defaultRequest", "maxLimitRequestRatio"] {
            for (r, q) in item.get(f).and_then(Value::as_object).into_iter().flatten() {
                check_quantity(&format!("{path}.{f}[{r}]"), q, causes);
                if !resources.contains(&r) {
                    resources.push(r);
                }
            }
            if ty == "Pod"
                && matches!(f, "default" | "defaultRequest")
                && item.get(f).is_some_and(|m| m.as_object().is_some_and(|m| !m.is_empty()))
            {
                causes.push((format!("{path}.{f}"), "Forbidden: may not be specified when `type` is 'Pod'".into()));
            }
        }
        for r in resources {
            let (min, max, def, req) = (get("min", r), get("max", r), get("default", r), get("defaultRequest", r));
            let text =
                |f: &str| item.get(f).and_then(|m| m.get(r)).and_then(Value::as_str).unwrap_or_default().to_string();
            if let (Some(a), Some(b)) = (min, max)
                && a > b
            {
                causes.push((
                    format!("{path}.min[{r}]"),
                    format!(
                        "Invalid value: {:?}: min value {} is greater than max value {}",
                        text("min"),
                        text("min"),
                        text("max")
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (req, max)
                && a > b
            {
                causes.push((
                    format!("{path}.defaultRequest[{r}]"),
                    format!(
                        "Invalid value: {:?}: default request value {} is greater than max value {}",
                        text("defaultRequest"),
                        text("defaultRequest"),
                        text("max")
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (min, req)
                && a > b
            {
                causes.push((
                    format!("{path}.defaultRequest[{r}]"),
                    format!(
                        "Invalid value: {:?}: min value {} is greater than default request value {}",
                        text("defaultRequest"),
                        text("min"),
                        text("defaultRequest")
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (req, def)
                && a > b
            {
                causes.push((
                    format!("{path}.defaultRequest[{r}]"),
                    format!(
                        "Invalid value: {:?}: default request value {} is greater than default limit value {}",
                        text("defaultRequest"),
                        text("defaultRequest"),
                        text("default")
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (def, max)
                && a > b
            {
                causes.push((
                    format!("{path}.default[{r}]"),
                    format!(
                        "Invalid value: {:?}: default value {} is greater than max value {}",
                        text("default"),
                        text("default"),
                        text("max")
                    ),
                ));
            }
            if let (Some(a), Some(b)) = (min, def)
                && a > b
            {
                causes.push((
                    format!("{path}.default[{r}]"),
                    format!(
                        "Invalid value: {:?}: min value {} is greater than default value {}",
                        text("default"),
                        text("min"),
                        text("default")
                    ),
                ));
            }
        }
    }
}

fn validate_webhooks(o: &Value, causes: &mut Causes) {
    let mut names: Vec<&str> = Vec::new();
    for (i, w) in o.get("webhooks").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let path = format!("webhooks[{i}]");
        let name = w.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            causes.push((format!("{path}.name"), "Required value".into()));
        } else if !is_dns1123_subdomain(name) || name.split('.').count() < 3 {
            causes.push((
                format!("{path}.name"),
                format!("Invalid value: {name:?}: should be a domain with at least three segments separated by dots"),
            ));
        } else if names.contains(&name) {
            causes.push((format!("{path}.name"), format!("Duplicate value: {name:?}")));
        }
        names.push(name);
        let cc = w.get("clientConfig").cloned().unwrap_or(json!({}));
        match (cc.get("url").and_then(Value::as_str), cc.get("service").filter(|s| !s.is_null())) {
            (Some(_), Some(_)) | (None, None) => causes.push((
                format!("{path}.clientConfig"),
                "Required value: exactly one of url or service is required".into(),
            )),
            (Some(u), None) if !u.starts_with("https://") => causes.push((
                format!("{path}.clientConfig.url"),
                "Unsupported value: \"http\": supported values: \"https\"".into(),
            )),
            (None, Some(s)) => {
                for f in ["namespace", "name"] {
                    if s.get(f).and_then(Value::as_str).is_none_or(str::is_empty) {
                        causes.push((
                            format!("{path}.clientConfig.service.{f}"),
                            format!("Required value: service {f} is required"),
                        ));
                    }
                }
            }
            _ => {}
        }
        match w.get("sideEffects").and_then(Value::as_str) {
            None | Some("") => causes
                .push((format!("{path}.sideEffects"), "Required value: must specify one of None, NoneOnDryRun".into())),
            Some(s) if !["None", "NoneOnDryRun"].contains(&s) => {
                causes.push(unsupported(format!("{path}.sideEffects"), s, &["None", "NoneOnDryRun"]))
            }
            Some(_) => {}
        }
        let versions = w.get("admissionReviewVersions").and_then(Value::as_array).cloned().unwrap_or_default();
        if !versions.iter().any(|v| v == "v1" || v == "v1beta1") {
            causes.push((
                format!("{path}.admissionReviewVersions"),
                "Required value: must specify one of v1, v1beta1".into(),
            ));
        }
        let fp = w.get("failurePolicy").and_then(Value::as_str).unwrap_or_default();
        if !["Fail", "Ignore"].contains(&fp) {
            causes.push(unsupported(format!("{path}.failurePolicy"), fp, &["Fail", "Ignore"]));
        }
        if let Some(t) = w.get("timeoutSeconds").and_then(Value::as_i64)
            && !(1..=30).contains(&t)
        {
            causes.push((
                format!("{path}.timeoutSeconds"),
                format!("Invalid value: {t}: the timeout value must be between 1 and 30 seconds"),
            ));
        }
    }
}

/// `kubectl get` columns of this module's kinds (after Name; Age where upstream has it).
pub(crate) fn columns(kind: &str) -> Option<Vec<(&'static str, &'static str, u8, &'static str)>> {
    let age = (
        "Age",
        "string",
        0,
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
    );
    Some(match kind {
        "PodDisruptionBudget" => vec![
            (
                "Min Available",
                "string",
                0,
                "The minimum number of pods that must be available simultaneously. This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
            ),
            (
                "Max Unavailable",
                "string",
                0,
                "The maximum number of pods that may be unavailable simultaneously. This can be either an integer or a string specifying a percentage, e.g. \"28%\".",
            ),
            ("Allowed Disruptions", "integer", 0, "Calculated number of pods that may be disrupted at this time."),
            age,
        ],
        "HorizontalPodAutoscaler" => vec![
            ("Reference", "string", 0, "Reference to the scaled resource."),
            ("Targets", "string", 0, "Current and target metric values."),
            (
                "MinPods",
                "string",
                0,
                "Lower limit for the number of pods that can be set by the autoscaler, default 1.",
            ),
            ("MaxPods", "integer", 0, "Upper limit for the number of pods that can be set by the autoscaler."),
            ("Replicas", "integer", 0, "Current number of replicas of pods managed by this autoscaler."),
            age,
        ],
        "NetworkPolicy" => {
            vec![("Pod-Selector", "string", 0, "Selects the pods to which this NetworkPolicy object applies."), age]
        }
        "Ingress" => vec![
            ("Class", "string", 0, "The name of the IngressClass resource that should be used for this Ingress."),
            ("Hosts", "string", 0, "Hosts that incoming requests are matched against before the ingress rule"),
            ("Address", "string", 0, "Address is a list containing ingress points for the load-balancer"),
            ("Ports", "string", 0, "Ports of TLS configurations that open"),
            age,
        ],
        "APIService" => vec![
            ("Service", "string", 0, "The reference to the service that hosts this API endpoint."),
            ("Available", "string", 0, "Whether this service is available."),
            age,
        ],
        "IngressClass" => vec![
            ("Controller", "string", 0, "Controller that is responsible for handling this class"),
            ("Parameters", "string", 0, "A reference to a resource with additional parameters"),
            age,
        ],
        "PriorityClass" => vec![
            (
                "Value",
                "integer",
                0,
                "The value of this priority class. This is the actual priority that pods receive when they have the name of this class in their pod spec.",
            ),
            (
                "Global-Default",
                "boolean",
                0,
                "globalDefault specifies whether this PriorityClass should be considered as the default priority for pods that do not have any priority class.",
            ),
            age,
            (
                "PreemptionPolicy",
                "string",
                0,
                "PreemptionPolicy is the Policy for preempting pods with lower priority.",
            ),
        ],
        "ResourceQuota" => vec![
            age,
            ("Request", "string", 0, "Request represents a minimum amount of cpu/memory that a container may consume."),
            (
                "Limit",
                "string",
                0,
                "Limits control the maximum amount of cpu/memory that a container may use independent of contention on the node.",
            ),
        ],
        "LimitRange" => vec![(
            "Created At",
            "date",
            0,
            "CreationTimestamp is a timestamp representing the server time when this object was created.",
        )],
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
            vec![("Webhooks", "integer", 0, "Webhooks indicates the number of webhooks in this configuration."), age]
        }
        _ => return None,
    })
}

/// The string at a JSON pointer, "" when absent.
fn s<'a>(o: &'a Value, ptr: &str) -> &'a str {
    o.pointer(ptr).and_then(Value::as_str).unwrap_or_default()
}

fn int_or_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "N/A".into(),
    }
}

/// The row cells after Name (and with `age` where the columns put it).
pub(crate) fn cells(kind: &str, o: &Value, age: Value) -> Option<Vec<Value>> {
    Some(match kind {
        "PodDisruptionBudget" => vec![
            json!(int_or_string(o.pointer("/spec/minAvailable"))),
            json!(int_or_string(o.pointer("/spec/maxUnavailable"))),
            json!(o.pointer("/status/disruptionsAllowed").and_then(Value::as_i64).unwrap_or(0)),
            age,
        ],
        "HorizontalPodAutoscaler" => {
            let reference = format!("{}/{}", s(o, "/spec/scaleTargetRef/kind"), s(o, "/spec/scaleTargetRef/name"));
            let min =
                o.pointer("/spec/minReplicas").and_then(Value::as_i64).map_or("<unset>".into(), |m| m.to_string());
            vec![
                json!(reference),
                json!(hpa_targets(o)),
                json!(min),
                json!(o.pointer("/spec/maxReplicas").and_then(Value::as_i64).unwrap_or(0)),
                json!(o.pointer("/status/currentReplicas").and_then(Value::as_i64).unwrap_or(0)),
                age,
            ]
        }
        "NetworkPolicy" => {
            let sel =
                o.pointer("/spec/podSelector").map(|s| LabelSelector::from_json(s).to_string()).unwrap_or_default();
            vec![json!(if sel.is_empty() { "<none>".into() } else { sel }), age]
        }
        "Ingress" => {
            let class =
                o.pointer("/spec/ingressClassName").and_then(Value::as_str).map_or("<none>".into(), str::to_string);
            let hosts: Vec<&str> = o
                .pointer("/spec/rules")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("host").and_then(Value::as_str))
                .filter(|h| !h.is_empty())
                .collect();
            let hosts = match hosts.len() {
                0 => "*".to_string(),
                n if n > 4 => format!("{} + {} more...", hosts[..3].join(","), n - 3),
                _ => hosts.join(","),
            };
            let address: Vec<&str> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i.get("ip").or(i.get("hostname")).and_then(Value::as_str))
                .collect();
            let tls = o.pointer("/spec/tls").and_then(Value::as_array).is_some_and(|t| !t.is_empty());
            vec![json!(class), json!(hosts), json!(address.join(",")), json!(if tls { "80, 443" } else { "80" }), age]
        }
        "APIService" => {
            let a = api_service(o).unwrap_or_default();
            let service = match a.spec.and_then(|s| s.service) {
                None => "Local".to_string(),
                Some(svc) => format!("{}/{}", svc.namespace.unwrap_or_default(), svc.name.unwrap_or_default()),
            };
            let conditions = a.status.and_then(|s| s.conditions).unwrap_or_default();
            let available =
                conditions.iter().find(|c| c.type_ == "Available").map_or("Unknown".to_string(), |c| {
                    match c.status.as_str() {
                        "True" => "True".to_string(),
                        other => format!("{other} ({})", c.reason.as_deref().unwrap_or_default()),
                    }
                });
            vec![json!(service), json!(available), age]
        }
        "IngressClass" => {
            let params = match o.pointer("/spec/parameters").filter(|p| !p.is_null()) {
                None => "<none>".to_string(),
                Some(p) => {
                    let group = p.get("apiGroup").and_then(Value::as_str).map(|g| format!(".{g}")).unwrap_or_default();
                    format!("{}{group}/{}", s(p, "/kind"), s(p, "/name"))
                }
            };
            vec![json!(s(o, "/spec/controller")), json!(params), age]
        }
        "PriorityClass" => vec![
            json!(o.get("value").and_then(Value::as_i64).unwrap_or(0)),
            json!(o.get("globalDefault").and_then(Value::as_bool).unwrap_or(false)),
            age,
            json!(s(o, "/preemptionPolicy")),
        ],
        "ResourceQuota" => {
            let (mut requests, mut limits) = (Vec::new(), Vec::new());
            for (r, hard) in o.pointer("/spec/hard").and_then(Value::as_object).into_iter().flatten() {
                let used = o.pointer("/status/used").and_then(|u| u.get(r)).and_then(Value::as_str).unwrap_or("0");
                let cell = format!("{r}: {used}/{}", hard.as_str().unwrap_or_default());
                if r.starts_with("limits.") { limits.push(cell) } else { requests.push(cell) }
            }
            vec![age, json!(requests.join(", ")), json!(limits.join(", "))]
        }
        "LimitRange" => vec![o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null)],
        "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration" => {
            vec![json!(o.get("webhooks").and_then(Value::as_array).map_or(0, Vec::len)), age]
        }
        _ => return None,
    })
}

/// Upstream's `formatHPAMetrics`: "cpu: <unknown>/80%", at most three shown.
fn hpa_targets(o: &Value) -> String {
    let metrics = o.pointer("/spec/metrics").and_then(Value::as_array).cloned().unwrap_or_default();
    if metrics.is_empty() {
        return "<none>".into();
    }
    let current = o.pointer("/status/currentMetrics").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut list = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        let ty = s(m, "/type");
        let key = match ty {
            "Resource" => "resource",
            "ContainerResource" => "containerResource",
            "Pods" => "pods",
            "Object" => "object",
            _ => "external",
        };
        let src = m.get(key).cloned().unwrap_or(json!({}));
        let cur = current.get(i).and_then(|c| c.get(key)).cloned();
        let target = &src["target"];
        let (want, have) = if let Some(u) = target.get("averageUtilization").and_then(Value::as_i64) {
            let have = cur.as_ref().and_then(|c| c.pointer("/current/averageUtilization")).and_then(Value::as_i64);
            (format!("{u}%"), have.map_or("<unknown>".into(), |h| format!("{h}%")))
        } else {
            let t = target.get("averageValue").or(target.get("value")).and_then(Value::as_str).unwrap_or_default();
            let have = cur
                .as_ref()
                .and_then(|c| c.pointer("/current/averageValue").or(c.pointer("/current/value")))
                .and_then(Value::as_str);
            (t.to_string(), have.map_or("<unknown>".into(), str::to_string))
        };
        let prefix = match ty {
            "Resource" | "ContainerResource" => format!("{}: ", s(&src, "/name")),
            _ => String::new(),
        };
        let avg = if ty != "Resource" && ty != "ContainerResource" && target.get("averageValue").is_some() {
            " (avg)"
        } else {
            ""
        };
        list.push(format!("{prefix}{have}/{want}{avg}"));
    }
    if list.len() > 3 {
        let more = list.len() - 2;
        list.truncate(2);
        return format!("{} + {more} more...", list.join(", "));
    }
    list.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_scales_as_upstream() {
        assert_eq!(IntOrPercent::parse(&json!(2)), Ok(IntOrPercent::Int(2)));
        assert_eq!(IntOrPercent::parse(&json!("50%")), Ok(IntOrPercent::Percent(50)));
        assert!(IntOrPercent::parse(&json!("50")).unwrap_err().contains("a valid percent string"));
        assert_eq!(IntOrPercent::Percent(50).scaled(3, true), 2);
        assert_eq!(IntOrPercent::Percent(50).scaled(3, false), 1);
        assert_eq!(IntOrPercent::Percent(100).scaled(7, true), 7);
        assert_eq!(IntOrPercent::Int(4).scaled(1, true), 4);
    }

    #[test]
    fn pdb_validation_names_fields() {
        let pdb = |spec: Value| json!({"metadata": {"name": "p"}, "spec": spec});
        assert!(validate("PodDisruptionBudget", &pdb(json!({"minAvailable": "50%"}))).is_empty());
        let both = validate("PodDisruptionBudget", &pdb(json!({"minAvailable": 1, "maxUnavailable": 1})));
        assert_eq!(both[0].0, "spec");
        assert!(both[0].1.ends_with("minAvailable and maxUnavailable cannot be both set"));
        let neg = validate("PodDisruptionBudget", &pdb(json!({"minAvailable": -1})));
        assert_eq!(
            neg,
            vec![(
                "spec.minAvailable".to_string(),
                "Invalid value: -1: must be greater than or equal to 0".to_string()
            )]
        );
        let over = validate("PodDisruptionBudget", &pdb(json!({"maxUnavailable": "120%"})));
        assert_eq!(over[0].1, "Invalid value: \"120%\": must not be greater than 100%");
    }

    #[test]
    fn priority_classes_reserve_the_system_prefix() {
        let pc = |name: &str, value: i64| {
            let mut o = json!({"metadata": {"name": name}, "value": value});
            apply_defaults("PriorityClass", &mut o);
            validate("PriorityClass", &o)
        };
        assert!(pc("high", 1000).is_empty());
        assert!(pc("system-node-critical", 2_000_001_000).is_empty());
        assert!(pc("system-mine", 1)[0].1.contains("reserved for system use only"));
        assert_eq!(pc("huge", 2_000_000_000)[0].0, "value");
    }

    #[test]
    fn api_services_are_validated_and_say_whether_they_are_available() {
        let svc = |name: &str, spec: Value| {
            let mut o = json!({"metadata": {"name": name}, "spec": spec});
            apply_defaults("APIService", &mut o);
            (validate("APIService", &o), o)
        };
        let wardle = json!({"group": "wardle.k8s.io", "version": "v1alpha1", "groupPriorityMinimum": 1000,
            "versionPriority": 15, "service": {"namespace": "wardle", "name": "api"}, "insecureSkipTLSVerify": true});
        let (causes, o) = svc("v1alpha1.wardle.k8s.io", wardle.clone());
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(o.pointer("/spec/service/port"), Some(&json!(443)));
        let available = &o["status"]["conditions"][0];
        assert_eq!((available["type"].as_str(), available["status"].as_str()), (Some("Available"), Some("False")));
        assert!(available["message"].as_str().unwrap().contains("service wardle/api"), "{available}");
        let row = cells("APIService", &o, json!("1s")).unwrap();
        assert_eq!(row, vec![json!("wardle/api"), json!("False (FailedDiscoveryCheck)"), json!("1s")]);

        let (causes, o) = svc(
            "v1.example.com",
            json!({"group": "example.com", "version": "v1",
            "groupPriorityMinimum": 100, "versionPriority": 1}),
        );
        assert!(causes.is_empty(), "{causes:?}");
        assert_eq!(o["status"]["conditions"][0]["reason"], "Local");
        assert_eq!(cells("APIService", &o, json!("1s")).unwrap()[..2], [json!("Local"), json!("True")]);

        let (causes, _) = svc(
            "wrong",
            json!({"group": "example.com", "version": "V1", "groupPriorityMinimum": 0,
            "versionPriority": 1001, "service": {"port": 70000}, "caBundle": "Zm9v", "insecureSkipTLSVerify": true}),
        );
        let fields: Vec<&str> = causes.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.version",
                "spec.groupPriorityMinimum",
                "spec.versionPriority",
                "spec.service.namespace",
                "spec.service.name",
                "spec.service.port",
                "spec.insecureSkipTLSVerify"
            ]
        );
        assert_eq!(
            causes[0].1,
            "Invalid value: \"wrong\": must be `spec.version+\".\"+spec.group`: \"V1.example.com\""
        );
    }

    #[test]
    fn limit_ranges_order_min_default_max() {
        let lr = json!({"metadata": {"name": "l"}, "spec": {"limits": [{"type": "Container",
            "max": {"cpu": "1"}, "default": {"cpu": "2"}}]}});
        let c = validate("LimitRange", &lr);
        assert_eq!(c[0].0, "spec.limits[0].default[cpu]");
        assert_eq!(c[0].1, "Invalid value: \"2\": default value 2 is greater than max value 1");
    }

    #[test]
    fn rows_as_kubectl_prints_them() {
        let pdb = json!({"spec": {"minAvailable": 2}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(
            cells("PodDisruptionBudget", &pdb, json!("1m")).unwrap(),
            vec![json!("2"), json!("N/A"), json!(1), json!("1m")]
        );
        let q = json!({"spec": {"hard": {"limits.cpu": "2", "pods": "3"}}, "status": {"used": {"pods": "1"}}});
        assert_eq!(
            cells("ResourceQuota", &q, json!("1m")).unwrap(),
            vec![json!("1m"), json!("pods: 1/3"), json!("limits.cpu: 0/2")]
        );
        let hpa = json!({"spec": {"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}});
        let row = cells("HorizontalPodAutoscaler", &hpa, json!("1m")).unwrap();
        assert_eq!(row[..2], [json!("Deployment/web"), json!("cpu: <unknown>/80%")]);
    }
}
